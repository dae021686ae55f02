"""Capacity planning: the cheapest deployment of a model that meets latency targets at
an offered load (``gpusim plan``).

Built on ``serving`` (the simulator that judges finalists) and, for the analytic
screen, ``step`` and ``speculative``; never below ``step``. One responsibility per
module: ``space`` (what is searched: options, limits, deployments, SLOs), ``workload``
(the offered load and one replica's share of it), ``screen`` (closed-form step times
and queueing approximations), ``finalists`` (serving simulations and their verdicts),
``search`` (screen, simulate, confirm), ``pareto`` (front, per-GPU reasons,
sensitivity) and ``planner`` (``plan``: all of it for one request).
"""

from gpusim.plan.finalists import Verdict
from gpusim.plan.planner import PlanRequest, PlanResult, plan
from gpusim.plan.space import Deployment, Hardware, Limits, Option, Slo, SpecChoice

__all__ = ["Deployment", "Hardware", "Limits", "Option", "PlanRequest", "PlanResult",
           "Slo", "SpecChoice", "Verdict", "plan"]

"""gpusim: LLM inference performance simulator.

Data flow (one direction): specs/loader -> ops -> cost -> engine -> step ->
speculative / serving / planner / sweep -> report -> cli.
"""

__version__ = "0.1.0"

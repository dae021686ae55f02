"""The executors a sweep runs on, all ``concurrent.futures.Executor``: in this process
(one worker), a local process pool (the default), or Dask distributed (a LocalCluster
of N worker processes, or a running scheduler's workers) through
``Client.get_executor()``. Each is a context manager yielding ``(executor, workers)``
and shutting everything it started down on exit.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any

from gpusim.errors import FieldError, bad

WORKER_MODULE = "gpusim.sweep.evaluate"   # what a local worker imports before it forks


class InlineExecutor(Executor):
    """Runs each task when it is submitted, in this process (a sweep of one worker:
    no process start, easy to debug). Exceptions land in the returned future."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:
            future.set_exception(exc)
        return future


def default_workers() -> int:
    """The CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@contextmanager
def local_executor(workers: int | None = None) -> Iterator[tuple[Executor, int]]:
    """``workers`` local processes (default: the CPUs available); one worker runs in
    this process. Workers start from a fork server that has imported the simulator
    once, so each starts in milliseconds and none inherits this process's threads.
    Raises FieldError for ``workers`` < 1."""
    n = default_workers() if workers is None else workers
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 1024:
        raise FieldError("workers", f"workers={n!r} must be an integer in 1..1024")
    if n == 1:
        yield InlineExecutor(), 1
        return
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    if ctx.get_start_method() == "forkserver":
        ctx.set_forkserver_preload([WORKER_MODULE])
    pool = ProcessPoolExecutor(max_workers=n, mp_context=ctx)
    try:
        yield pool, n
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _distributed(option: str):  # type: ignore[no-untyped-def]
    try:
        import distributed
    except ImportError:
        raise bad(option, "needs Dask distributed: pip install 'gpusim[sweep]'") from None
    return distributed


@contextmanager
def dask_executor(n_workers: int | None = None, address: str | None = None
                  ) -> Iterator[tuple[Executor, int]]:
    """A Dask executor: a LocalCluster of ``n_workers`` single-threaded worker
    processes, or the workers of the scheduler at ``address`` (``tcp://HOST:PORT``;
    they need gpusim installed, with the same data files). Raises ConfigError (naming
    ``--dask`` or ``--scheduler``) when Dask is missing or the scheduler cannot be
    reached, FieldError for ``n_workers`` < 1."""
    option = "--scheduler" if address is not None else "--dask"
    distributed = _distributed(option)
    cluster = None
    n = 0
    if address is None:
        n = n_workers if n_workers is not None else default_workers()
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 1024:
            raise FieldError("dask", f"dask={n!r} must be an integer in 1..1024")
        cluster = distributed.LocalCluster(
            n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
            silence_logs=logging.ERROR)
        client = distributed.Client(cluster)
    else:
        try:
            client = distributed.Client(address, timeout="10s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise bad("--scheduler", f"cannot reach the Dask scheduler: {exc}") from None
    try:
        workers = n if cluster is not None else \
            max(1, len(client.scheduler_info().get("workers", {})))
        yield client.get_executor(), workers
    finally:
        client.close()
        if cluster is not None:
            cluster.close()

"""Run independent tasks on local processes or a Dask cluster: the one executor layer of every study and comparison.

An executor runs ``function(*task)`` for every task and calls back, in this
process, as each task finishes, so that a study can record results as they
come; the returned list is in task order whatever the completion order, so
the same tasks give the same list on any executor with any number of workers.
``function`` must be a module-level function (workers import it by name).

- :class:`LocalPool` (the default): processes started with ``spawn`` (a
  forked JAX or torch process can deadlock in its thread pools); one worker
  runs the tasks in this process.
- :class:`DaskCluster`: an existing Dask distributed cluster (its scheduler's
  address) or a ``LocalCluster`` of worker processes started for the call
  (the ``dask`` extra). Workers of an existing cluster must be able to import
  this package.

Every worker runs one BLAS/XLA thread (so that ``workers`` processes on as
many cores do not oversubscribe them), so the numbers do not depend on which
worker ran a task; tasks run in this process give the same numbers when it
called :func:`limit_threads` before loading JAX (as ``python -m phases.sweep``
does). The first exception, or an interrupt of this process, stops every
task at once and is raised here: no worker started for a call outlives it.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import signal
from collections.abc import Callable, Sequence

_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_XLA_SINGLE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"

OnResult = Callable[[int, object], None]


def limit_threads() -> None:
    """One BLAS/XLA thread in this process (what every worker runs). The XLA flag acts only if JAX is not yet
    imported here; a command line that runs tasks in its own process calls this first, so that its numbers are
    those of a worker."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "multi_thread_eigen" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {_XLA_SINGLE_THREAD}".strip()
    for name in _THREAD_VARIABLES:
        os.environ.setdefault(name, "1")
    # numpy may already be loaded (spawn re-imports the parent's main module): limit its BLAS pool directly.
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def _single_threaded_worker() -> None:
    limit_threads()
    # Ctrl-C reaches the whole process group: the parent decides, and terminates the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class LocalPool:
    """``workers`` local processes (``None``: the core count; 1: the tasks run in this process)."""

    def __init__(self, workers: int | None = None):
        self.workers = workers

    def run(self, function: Callable, tasks: Sequence[tuple], on_result: OnResult | None = None) -> list:
        """``[function(*task) for task in tasks]``; ``on_result(index, result)`` as each task finishes."""
        workers = max(1, min(len(tasks), self.workers or os.cpu_count() or 1))
        results = [None] * len(tasks)
        if workers == 1:
            for index, task in enumerate(tasks):
                results[index] = function(*task)
                if on_result is not None:
                    on_result(index, results[index])
            return results
        finished = queue.SimpleQueue()
        pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_single_threaded_worker)
        try:
            for index, task in enumerate(tasks):
                pool.apply_async(function, task, callback=lambda result, i=index: finished.put((i, result, None)),
                                 error_callback=lambda error, i=index: finished.put((i, None, error)))
            for _ in tasks:
                index, result, error = finished.get()
                if error is not None:
                    raise error
                results[index] = result
                if on_result is not None:
                    on_result(index, result)
            pool.close()
        finally:
            pool.terminate()
            pool.join()
        return results


def _call_single_threaded(function: Callable, task: tuple):
    """``function(*task)`` on a Dask worker, after limiting its threads (a worker of an existing cluster may
    have been started without the limit)."""
    limit_threads()
    return function(*task)


class DaskCluster:
    """Dask distributed: the cluster whose scheduler is at ``scheduler`` (``tcp://HOST:PORT``), or, without one,
    a ``LocalCluster`` of ``workers`` processes (``None``: the core count) with one thread each, started and
    closed by every :meth:`run`."""

    def __init__(self, scheduler: str | None = None, workers: int | None = None):
        if scheduler is not None and workers is not None:
            raise ValueError("give a scheduler address or a number of local Dask workers, not both")
        self.scheduler, self.workers = scheduler, workers

    def run(self, function: Callable, tasks: Sequence[tuple], on_result: OnResult | None = None) -> list:
        """``[function(*task) for task in tasks]``; ``on_result(index, result)`` as each task finishes."""
        from distributed import Client, LocalCluster, as_completed

        results = [None] * len(tasks)
        with contextlib.ExitStack() as stack:
            if self.scheduler is None:
                workers = max(1, min(len(tasks), self.workers or os.cpu_count() or 1))
                cluster = stack.enter_context(LocalCluster(
                    n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                    env={"XLA_FLAGS": _XLA_SINGLE_THREAD}))
                client = stack.enter_context(Client(cluster))
            else:
                try:
                    client = stack.enter_context(Client(self.scheduler))
                except OSError as error:
                    raise ConnectionError(f"cannot reach the Dask scheduler at {self.scheduler}: {error}") from None
            futures = [client.submit(_call_single_threaded, function, task, pure=False) for task in tasks]
            index_of = {future.key: index for index, future in enumerate(futures)}
            try:
                for future, result in as_completed(futures, with_results=True):
                    index = index_of[future.key]
                    results[index] = result
                    if on_result is not None:
                        on_result(index, result)
            finally:
                client.cancel(futures)
        return results


def run_tasks(function: Callable, tasks: Sequence[tuple], *, workers: int | None = None,
              on_result: OnResult | None = None, executor: LocalPool | DaskCluster | None = None) -> list:
    """``[function(*task) for task in tasks]`` on ``executor`` (default: a :class:`LocalPool` of ``workers``).

    ``on_result(index, result)`` is called in this process as each task finishes, in completion order.
    """
    if executor is not None and workers is not None:
        raise ValueError("give workers or an executor, not both")
    return (executor or LocalPool(workers)).run(function, tasks, on_result)

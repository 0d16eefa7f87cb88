"""Run independent tasks on a pool of local processes: the one executor of every study and comparison.

Workers are started with ``spawn`` (a forked JAX or torch process can deadlock
in its thread pools) and run one BLAS/XLA thread each, so that ``workers``
processes on as many cores do not oversubscribe them. Results come back in
task order whatever the completion order, so the same tasks give the same
list with any number of workers.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
from collections.abc import Callable, Sequence

_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _single_threaded_worker() -> None:
    # Set before the worker imports numpy, JAX or torch: a fresh spawned process has not yet.
    flags = os.environ.get("XLA_FLAGS", "")
    if "multi_thread_eigen" not in flags:
        os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()
    for name in _THREAD_VARIABLES:
        os.environ.setdefault(name, "1")
    # numpy may already be loaded (spawn re-imports the parent's main module): limit its BLAS pool directly.
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    # Ctrl-C reaches the whole process group: the parent decides, and terminates the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_tasks(function: Callable, tasks: Sequence[tuple], *, workers: int | None = None,
              on_result: Callable[[int, object], None] | None = None) -> list:
    """``[function(*task) for task in tasks]``, on ``workers`` processes (``None``: the core count; 1: here).

    ``function`` must be importable by name (a module-level function). ``on_result(index, result)`` is called
    in this process as each task finishes, in completion order. The first exception (or an interrupt of this
    process) terminates every worker at once and is raised here: no worker outlives the call.
    """
    workers = max(1, min(len(tasks), workers or os.cpu_count() or 1))
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

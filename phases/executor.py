"""Run independent tasks on a pool of local processes: the one executor of every study and comparison.

Workers are started with ``spawn`` (a forked JAX or torch process can deadlock
in its thread pools) and run one BLAS/XLA thread each, so that ``workers``
processes on as many cores do not oversubscribe them. Results come back in
task order whatever the completion order, so the same tasks give the same
list with any number of workers.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
from collections.abc import Callable, Sequence

_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _single_threaded_worker() -> None:
    # Set before the worker imports numpy, JAX or torch: a fresh spawned process has not yet.
    flags = os.environ.get("XLA_FLAGS", "")
    if "multi_thread_eigen" not in flags:
        os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()
    for name in _THREAD_VARIABLES:
        os.environ.setdefault(name, "1")


def run_tasks(function: Callable, tasks: Sequence[tuple], *, workers: int | None = None,
              on_result: Callable[[int, object], None] | None = None) -> list:
    """``[function(*task) for task in tasks]``, on ``workers`` processes (``None``: the core count; 1: here).

    ``function`` must be importable by name (a module-level function). ``on_result(index, result)`` is called
    in this process as each task finishes, in completion order. The first exception cancels what has not
    started and is raised here.
    """
    workers = max(1, min(len(tasks), workers or os.cpu_count() or 1))
    results = [None] * len(tasks)
    if workers == 1:
        for index, task in enumerate(tasks):
            results[index] = function(*task)
            if on_result is not None:
                on_result(index, results[index])
        return results
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context,
                                                initializer=_single_threaded_worker) as pool:
        futures = {pool.submit(function, *task): index for index, task in enumerate(tasks)}
        try:
            for future in concurrent.futures.as_completed(futures):
                index = futures[future]
                results[index] = future.result()
                if on_result is not None:
                    on_result(index, results[index])
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return results

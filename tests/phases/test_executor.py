"""``phases.executor``: results in task order, a callback per finished task, the first error raised, no worker left.

(The sweep's tests run real simulations on the local pool and on a Dask LocalCluster and compare their records.)
"""

import math
import multiprocessing

import pytest

from phases.executor import DaskCluster, LocalPool, run_tasks


@pytest.mark.parametrize("workers", [1, 2])
def test_results_in_task_order_and_one_callback_per_task(workers):
    finished = []
    tasks = [(base, 2) for base in range(6)]
    assert run_tasks(pow, tasks, workers=workers, on_result=lambda i, r: finished.append((i, r))) == \
        [base ** 2 for base in range(6)]
    assert sorted(finished) == [(i, i ** 2) for i in range(6)]


def test_the_first_error_is_raised_and_no_worker_outlives_the_call():
    with pytest.raises(ValueError, match="math domain error"):
        LocalPool(2).run(math.sqrt, [(4.0,), (-1.0,), (9.0,)])
    assert multiprocessing.active_children() == []


def test_an_executor_is_given_one_way():
    with pytest.raises(ValueError, match="workers or an executor"):
        run_tasks(pow, [(2, 2)], workers=2, executor=LocalPool(2))
    with pytest.raises(ValueError, match="not both"):
        DaskCluster("tcp://127.0.0.1:8786", workers=2)

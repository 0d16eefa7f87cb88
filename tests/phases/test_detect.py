"""Phase detection on constructed signals whose boundaries are known (docs/theory.md section 5)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from phases.detect import PhaseParams, detect


def _signals(steps, rise_end, plateau_start, every=1):
    """Clean mean weight rising linearly to 1 at ``rise_end``; loss falling linearly until ``plateau_start``.

    The loss falls by 2% of its initial value per window (window = 5% of the run) while it falls, so the
    plateau test (drop < 1% over the window) first passes once less than half the window still falls:
    about half a window after ``plateau_start``.
    """
    step = np.arange(0, steps + 1, every)
    mean_w_clean = np.minimum(0.5 + 0.5 * step / max(rise_end, 1), 1.0)
    window = max(10, int(np.ceil(0.05 * step[-1])))
    slope = 0.02 / window
    clean_loss = 1.0 - slope * np.minimum(step, plateau_start)
    return step, mean_w_clean, clean_loss, window


@given(steps=st.integers(400, 3000), rise=st.integers(1, 60), plateau=st.integers(100, 300))
def test_known_boundaries(steps, rise, plateau):
    step, w, loss, window = _signals(steps, rise, plateau)
    # w reaches 0.99 of its max at 0.5 + 0.5 t / rise >= 0.99, i.e. t = ceil(0.98 rise).
    expected_align = int(np.ceil(0.98 * rise - 1e-12))
    phases = detect(step, w, loss, has_noise=True)
    assert phases.T_align == expected_align
    assert phases.window == window
    brute_force = next(t for t in range(len(step)) if t >= max(window, expected_align)
                       and loss[t - window] - loss[t] < 0.01 * loss[0])
    assert phases.T_filter == brute_force
    assert abs(phases.T_filter - (plateau + window / 2)) <= 1
    alignment, filtering, post = phases.phases
    assert (alignment.start, alignment.end) == (0, expected_align)
    assert (filtering.start, filtering.end) == (expected_align, phases.T_filter)
    assert (post.start, post.end) == (phases.T_filter, steps + 1)


@given(every=st.integers(1, 7))
def test_recording_interval_only_coarsens_the_boundaries(every):
    exact = detect(*_signals(2000, 20, 300)[:3], has_noise=True)
    coarse = detect(*_signals(2000, 20, 300, every)[:3], has_noise=True)
    assert exact.T_align <= coarse.T_align < exact.T_align + every
    # The window start is read at the latest record at or before t - W, so the plateau can also shift by a record.
    assert abs(coarse.T_filter - exact.T_filter) < 2 * every


def test_no_noise_means_nothing_to_filter():
    step, w, loss, window = _signals(1000, 10, 200)
    phases = detect(step, w, loss, has_noise=False)
    assert phases.T_filter is None
    assert phases["filtering"].empty and "no noisy" in phases["filtering"].reason
    assert phases["post-filtering"].start == phases.plateau
    assert abs(phases.plateau - (200 + window / 2)) <= 1


def test_run_too_short_has_no_post_filtering():
    step = np.arange(201)
    loss = 1.0 - 0.004 * step  # falls by 4% of L(0) per 10-step window, to the end
    phases = detect(step, np.minimum(0.5 + step / 20, 1.0), loss, has_noise=True)
    assert phases.T_filter is None and phases.plateau is None
    assert phases["post-filtering"].empty and "too short" in phases["post-filtering"].reason
    assert not phases["filtering"].empty


def test_weights_at_their_maximum_from_the_start_leave_alignment_empty():
    step, _, loss, _ = _signals(500, 10, 100)
    phases = detect(step, np.linspace(0.5, 0.2, len(step)), loss, has_noise=True)
    assert phases.T_align == 0
    assert phases["alignment"].empty and phases["alignment"].reason


def test_constant_loss_plateaus_as_soon_as_a_window_fits():
    step = np.arange(0, 301)
    phases = detect(step, np.full(301, 0.5), np.full(301, 0.3), has_noise=True)
    assert phases.plateau == phases.window == 15


def test_masks_partition_the_recorded_steps():
    step, w, loss, _ = _signals(1000, 30, 250, every=3)
    phases = detect(step, w, loss, has_noise=True)
    total = sum(mask.astype(int) for mask in phases.masks(step).values())
    np.testing.assert_array_equal(total, np.ones(len(step), int))


@pytest.mark.parametrize("kwargs", [{"align_fraction": 0}, {"window_fraction": 1.5}, {"min_window": 0}, {"tau": 0}])
def test_bad_parameters(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        PhaseParams(**kwargs)


def test_bad_series():
    with pytest.raises(ValueError, match="start at 0"):
        detect(np.array([1, 2]), np.ones(2), np.ones(2), True)
    with pytest.raises(ValueError, match="one length"):
        detect(np.arange(3), np.ones(2), np.ones(3), True)

"""Claims that can fail (docs/theory.md section 4.1): each verdict is checked on constructed trajectories where
the claim holds and where it fails, and the measurements against independent computations."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from dynamics.trajectory import Trajectory
from phases.claims import (
    FAILS,
    HOLDS,
    IDENTITY,
    NOT_APPLICABLE,
    PROBLEM,
    THEORY,
    RatePrediction,
    Thresholds,
    c3_alignment,
    c4_scaling,
    c5_rate,
    c6_filtering,
    c7_sensitivity,
    c12_discrimination,
    check_claims,
    discrimination,
)
from phases.detect import PhaseParams, detect_phases

T, N = 401, 40
NOISY = np.arange(N) >= 30  # 10 noisy examples


def _trajectory(w=None, score=None, clean_loss=None, flip_rate=None, label_similarity=None, **config):
    """A trajectory of 400 steps whose phases are: alignment [0, 10), filtering [10, ~100), post-filtering after.

    By default: clean weights rise to 1 by step 10 and stay, noisy weights fall to 0 by step 80; the clean-subset
    loss falls geometrically (rate 0.97) to step 100, then slowly (0.99); the velocity is proportional to
    sqrt(L_meta); the first score ranks clean above noisy.
    """
    step = np.arange(T)
    if w is None:
        w = np.empty((T, N))
        w[:, ~NOISY] = np.minimum(0.5 + 0.05 * step, 1.0)[:, None]
        w[:, NOISY] = np.maximum(0.5 - 0.5 * step / 80, 0.0)[:, None]
    if clean_loss is None:
        clean_loss = np.where(step < 100, 0.97 ** step, 0.97 ** 100 * 0.99 ** (step - 100))
    if score is None:
        score = np.sqrt(clean_loss)[:, None] * np.where(NOISY, -1.0, 1.0)[None, :]
    if flip_rate is None:
        flip_rate = np.where(step < 10, 0.0, np.where(step < 100, 0.05, 0.2))
    if label_similarity is None:
        label_similarity = np.where(NOISY, 1.0, 3.0)
    resolved = {"beta": 1.0, "m": 10, "n": N, "eta": 0.01, "lambda_joint": 100.0, "gamma": 1.0, "loss": "mse",
                "variant": "meta", "init": "zero", "perturb_eps": 0.01, "perturb_draws": 4} | config
    zeros = np.zeros(T)
    return Trajectory(step=step, w=w, score=score, residual_norm=np.ones((T, N)), clean_loss=clean_loss,
                      coupling_norm=np.sqrt(clean_loss), train_loss_clean=zeros, train_loss_noisy=zeros,
                      test_loss=zeros, test_accuracy=zeros, flip_rate=flip_rate, noisy=NOISY,
                      label_similarity=label_similarity, k_meta_norm=np.ones(N), outputs=np.zeros((N, 2)),
                      meta_outputs=np.zeros((10, 2)), test_outputs=np.zeros((5, 2)), config=resolved)


def _verdict(claim_fn, trajectory, *args):
    return claim_fn(trajectory, detect_phases(trajectory), *args, Thresholds())


def test_the_constructed_run_has_the_intended_phases_and_every_theory_claim_holds():
    trajectory = _trajectory()
    phases = detect_phases(trajectory)
    assert phases.T_align == 10 and 100 <= phases.T_filter <= 130 and phases.T_freeze is not None
    claims = {claim.id: claim for claim in check_claims(trajectory, phases)}
    for id in ("C3", "C4'", "C6", "C6-end", "C7"):
        assert claims[id].verdict == HOLDS, claims[id]
    assert claims["C5'"].verdict == NOT_APPLICABLE  # no prediction given
    assert {claim.kind for claim in claims.values()} == {THEORY, IDENTITY, PROBLEM}
    assert [claims[id].kind for id in ("C2", "C4", "C5")] == [IDENTITY] * 3 and claims["C9"].kind == PROBLEM


def test_c3_fails_when_the_first_step_ignores_the_labels():
    blind = _trajectory(score=np.tile(np.linspace(1, 2, N), (T, 1))[:, ::-1])
    assert c3_alignment(_trajectory(), Thresholds()).verdict == HOLDS
    reversed_scores = _trajectory(score=np.tile(np.where(NOISY, 1.0, -1.0), (T, 1)))
    claim = c3_alignment(reversed_scores, Thresholds())
    assert claim.verdict == FAILS and claim.measured["first_step_auc"] == 0.0
    assert c3_alignment(blind, Thresholds()).measured["first_step_auc"] == pytest.approx(
        roc_auc_score(~NOISY, blind.score[0]))


def test_c4_scaling_fails_when_the_velocity_does_not_follow_sqrt_loss():
    holds = _trajectory()
    assert _verdict(c4_scaling, holds).verdict == HOLDS
    loss = holds.clean_loss
    # The velocity stays constant while the loss contracts: neither proportional nor vanishing.
    constant = _trajectory(score=np.tile(np.where(NOISY, -1.0, 1.0), (T, 1)))
    claim = _verdict(c4_scaling, constant)
    assert claim.verdict == FAILS and claim.measured["velocity_fall"] == 1.0
    # With gamma = 0 the theory says the velocity must NOT vanish: the default (vanishing) run fails there.
    assert _verdict(c4_scaling, _trajectory(gamma=0.0)).verdict == FAILS
    assert _verdict(c4_scaling, _trajectory(score=np.sqrt(loss)[:, None] * np.ones(N), gamma=0.0)).verdict == FAILS


def test_c5_rate_fails_when_the_prediction_is_off():
    trajectory = _trajectory()
    phases = detect_phases(trajectory)
    post = phases.masks(trajectory.step)["post-filtering"]
    right = RatePrediction(0.5, 0.99, trajectory.step[post], trajectory.clean_loss[post])
    wrong = RatePrediction(5.0, 0.9, trajectory.step[post], 0.9 ** (trajectory.step[post] - trajectory.step[post][0]))
    holds, fails = c5_rate(trajectory, phases, right, Thresholds()), c5_rate(trajectory, phases, wrong, Thresholds())
    assert holds.verdict == HOLDS and holds.measured["rho_measured"] == pytest.approx(0.99, abs=1e-12)
    assert fails.verdict == FAILS and fails.measured["relative_error_of_1_minus_rho"] == pytest.approx(9.0, rel=1e-9)
    assert c5_rate(_trajectory(gamma=0.0), phases, None, Thresholds()).verdict == NOT_APPLICABLE


def test_c6_fails_at_either_end_when_clean_examples_are_zeroed():
    w = _trajectory().w.copy()
    w[300:, :8] = 0.0  # post-filtering drift zeroes 8 of 30 clean examples
    drifted = _trajectory(w=w)
    assert _verdict(c6_filtering, drifted).verdict == HOLDS
    end = c6_filtering(drifted, detect_phases(drifted), Thresholds(), at_end=True)
    assert end.verdict == FAILS and end.measured["frac_clean_zero"] == pytest.approx(8 / 30)
    w = _trajectory().w.copy()
    w[:, NOISY] = 0.4  # the noisy examples are never filtered
    assert _verdict(c6_filtering, _trajectory(w=w)).verdict == FAILS


def test_c7_fails_when_sensitivity_does_not_rise_and_skips_an_empty_alignment():
    assert _verdict(c7_sensitivity, _trajectory()).verdict == HOLDS
    falling = _trajectory(flip_rate=np.where(np.arange(T) < 100, 0.2, 0.05))
    assert _verdict(c7_sensitivity, falling).verdict == FAILS
    w = _trajectory().w.copy()
    w[:, ~NOISY] = 1.0  # clean weights at their maximum from step 0: alignment is empty
    claim = _verdict(c7_sensitivity, _trajectory(w=w))
    assert "alignment" not in claim.measured["mean_flip_rate"] and "alignment" not in claim.threshold


def test_c12_fails_when_discrimination_keeps_improving():
    saturated = _verdict(c12_discrimination, _trajectory())  # every weight at 0 or 1 at T_filter: nothing to read
    assert saturated.verdict == NOT_APPLICABLE and "strictly inside" in saturated.detail
    # Noisy weights that keep separating until the very end: the AUC peaks at the end, not by T_filter.
    step = np.arange(T)
    w = np.empty((T, N))
    w[:, ~NOISY] = np.linspace(0.5, 0.99, N - 10)[None, :] * np.ones((T, 1))
    w[:, NOISY] = (np.linspace(0.3, 0.9, 10)[None, :] * (1 - step / T)[:, None])
    claim = _verdict(c12_discrimination, _trajectory(w=w))
    assert claim.verdict == FAILS and claim.measured["peak_step"] > detect_phases(_trajectory(w=w)).T_filter


def test_c12_holds_when_post_filtering_undoes_the_separation():
    step = np.arange(T)
    separation = np.minimum(step / 50, 1.0)
    drift = np.maximum(step - 50, 0) / 350  # after step 50, noisy weights creep up and clean ones down
    clean, noisy = np.linspace(0.5, 1, N - 10), np.linspace(0.5, 1, 10)
    w = np.empty((T, N))
    w[:, ~NOISY] = 0.5 + (0.4 * separation - 0.5 * drift)[:, None] * clean[None, :]
    w[:, NOISY] = 0.5 + (-0.4 * separation + 0.7 * drift)[:, None] * noisy[None, :]
    claim = _verdict(c12_discrimination, _trajectory(w=w))
    assert claim.verdict == HOLDS, claim
    assert claim.measured["auc_end"] == 0.0 and claim.measured["post_filtering_change_auc"] == 0.0


def test_c12_measurements_equal_an_independent_auc():
    trajectory = _trajectory()
    phases = detect_phases(trajectory)
    measured = discrimination(trajectory, phases)
    aucs = [roc_auc_score(~NOISY, row) for row in trajectory.w]
    assert measured["auc_peak"] == pytest.approx(max(aucs), abs=1e-12)
    assert measured["auc_end"] == pytest.approx(aucs[-1], abs=1e-12)
    assert measured["auc_at_T_filter"] == pytest.approx(aucs[phases.T_filter], abs=1e-12)


@pytest.mark.parametrize("variant", ["fixed", "l2rw"])
def test_variants_without_persistent_weights_report_na(variant):
    trajectory = _trajectory(variant=variant)
    phases = detect_phases(trajectory)
    assert phases.T_align is None and all(phase.empty for phase in phases.phases)
    claims = {claim.id: claim for claim in check_claims(trajectory, phases)}
    for id in ("C4'", "C5'", "C6", "C6-end", "C7", "C12"):
        assert claims[id].verdict == NOT_APPLICABLE and claims[id].detail, id
    assert (claims["C3"].verdict == NOT_APPLICABLE) == (variant == "fixed")


def test_t_freeze_is_where_the_noisy_share_at_zero_stops_growing():
    trajectory = _trajectory()
    phases = detect_phases(trajectory, PhaseParams())
    # Noisy weights reach 0 together at step 80 and stay there: from step 80 on the share never grows again.
    assert phases.T_freeze == 80
    w = trajectory.w.copy()
    w[200:, NOISY] = 0.0
    w[80:200, 30] = 0.1  # one noisy example (10% of them) comes back until step 200
    assert detect_phases(_trajectory(w=w)).T_freeze == 200


def _frozen_recurrence(problem, K, trajectory, phases, outputs, gamma, steps) -> np.ndarray:
    """The clean-subset loss at ``steps`` by iterating ``E <- E - eta K diag(w, gamma) E`` (MSE), weights frozen at
    ``T_filter``: the plain oracle of C5''s eigen-expansion."""
    n, m, _ = problem.sizes
    D = np.concatenate([trajectory.w[phases.T_filter], np.full(m, gamma)])
    Y = np.eye(problem.num_classes)[np.concatenate([problem.y_noisy, problem.y_meta])]
    E, losses = outputs - Y, {}
    for t in range(int(trajectory.step[-1]) - phases.T_filter + 1):
        losses[phases.T_filter + t] = 0.5 * np.sum(E[n:] ** 2) / m
        E = E - trajectory.config["eta"] * K @ (D[:, None] * E)
    return np.array([losses[int(step)] for step in steps])


def test_the_spectral_prediction_equals_iterating_the_frozen_dynamics():
    """C5''s eigen-expansion against the plain recurrence E <- E - eta K_joint diag(w, gamma) E (MSE)."""
    import dataclasses

    from dynamics.simulator import KernelBlocks, simulate
    from kernels import KernelSpec, kernel
    from phases.claims import predict_post_filtering_rate
    from phases.experiments import SimulationConfig

    config = SimulationConfig(n=60, m=12, p=20, dim=8, steps=300, perturb_draws=0, seed=3)
    problem = config.problem()
    blocks = KernelBlocks.from_problem(problem, lambda a, b: kernel(KernelSpec(), a, b))
    trajectory = simulate(problem, blocks, config.meta_config(), seed=3)
    phases = detect_phases(trajectory)
    assert phases.T_filter is not None and phases.T_filter < 250
    head = simulate(problem, blocks, dataclasses.replace(config.meta_config(), eta=trajectory.config["eta"],
                                                         steps=phases.T_filter, record_every=phases.T_filter,
                                                         perturb_draws=0), seed=3)
    outputs = np.concatenate([head.outputs, head.meta_outputs])
    prediction = predict_post_filtering_rate(problem, blocks, trajectory, phases, outputs)

    K = np.block([[blocks.K_XX, blocks.K_VX.T], [blocks.K_VX, blocks.K_VV]])
    expected = _frozen_recurrence(problem, K, trajectory, phases, outputs, gamma=1.0, steps=prediction.frozen_step)
    np.testing.assert_allclose(prediction.frozen_loss, expected, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("dim, gamma", [(6, 1.0), (90, 0.5)])  # D < n + m (a null space) and D > n + m
def test_the_spectral_prediction_on_features_equals_iterating_the_frozen_dynamics(dim, gamma):
    """C5' on explicit features, in the D-dimensional parameter space, against the plain recurrence on the
    (n + m, n + m) kernel K = Phi_joint Phi_joint^T (formed here only) and against the dense route."""
    import dataclasses

    from dynamics.problem import gaussian_mixture
    from dynamics.simulator import FeatureKernel, KernelBlocks, MetaConfig, simulate
    from phases.claims import predict_post_filtering_rate

    problem = gaussian_mixture(np.random.default_rng(3), n=60, m=12, p=20, num_classes=3, dim=dim, noise_rate=0.4)
    features = FeatureKernel(problem.X, problem.X_meta, problem.X_test)
    meta = MetaConfig(steps=300, perturb_draws=0, gamma=gamma)
    trajectory = simulate(problem, features, meta, seed=3)
    phases = detect_phases(trajectory)
    assert phases.T_filter is not None and phases.T_filter < 250
    head = simulate(problem, features, dataclasses.replace(meta, eta=trajectory.config["eta"], steps=phases.T_filter,
                                                           record_every=phases.T_filter), seed=3)
    outputs = np.concatenate([head.outputs, head.meta_outputs])
    prediction = predict_post_filtering_rate(problem, features, trajectory, phases, outputs)

    joint = np.concatenate([problem.X, problem.X_meta])
    expected = _frozen_recurrence(problem, joint @ joint.T, trajectory, phases, outputs, gamma, prediction.frozen_step)
    np.testing.assert_allclose(prediction.frozen_loss, expected, rtol=1e-9, atol=1e-15)

    X, V, T = problem.X, problem.X_meta, problem.X_test
    dense = predict_post_filtering_rate(problem, KernelBlocks(X @ X.T, V @ X.T, V @ V.T, T @ X.T, T @ V.T),
                                        trajectory, phases, outputs)
    np.testing.assert_allclose(prediction.frozen_loss, dense.frozen_loss, rtol=1e-9, atol=1e-15)
    np.testing.assert_array_equal(prediction.frozen_step, dense.frozen_step)
    # The dominant direction: the same eigenvalue, or both in the null space (0 here, rounding there).
    assert prediction.lambda_star == pytest.approx(dense.lambda_star, rel=1e-8, abs=1e-10 * trajectory.config[
        "lambda_joint"])


def test_c9_on_features_uses_the_top_singular_vectors():
    """C9's eigenvectors from the features' SVD span the top eigen-directions of K_XX = Phi Phi^T."""
    from dynamics.problem import gaussian_mixture
    from dynamics.simulator import FeatureKernel
    from kernels import eigh_kernel
    from kernels.spectral import top_energy_share
    from phases.claims import feature_eigenvectors

    problem = gaussian_mixture(np.random.default_rng(4), n=80, m=12, p=10, num_classes=4, dim=12, noise_rate=0.3)
    U = feature_eigenvectors(FeatureKernel(problem.X, problem.X_meta, problem.X_test), 4)
    _, V = eigh_kernel(problem.X @ problem.X.T)
    np.testing.assert_allclose(U.T @ U, np.eye(4), atol=1e-10)
    np.testing.assert_allclose(np.abs(U.T @ V[:, :4]), np.eye(4), atol=1e-8)
    Y = np.eye(4)[problem.y_true]
    assert top_energy_share(U, Y, 4) == pytest.approx(top_energy_share(V, Y, 4), rel=1e-10)


@pytest.mark.parametrize("name, value", [("c3_first_step_auc", 1.5), ("c4_velocity_fall", 0.5),
                                         ("c6_clean_zero", -0.1), ("c12_auc_drop", float("nan"))])
def test_a_threshold_outside_its_range_is_refused(name, value):
    with pytest.raises(ValueError, match=name):
        Thresholds(**{name: value})

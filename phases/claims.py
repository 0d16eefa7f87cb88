"""The claims of docs/theory.md sections 4 and 4.1, measured on one trajectory.

Each check returns a :class:`Claim`: what was measured, the threshold it is
held to, the verdict (``holds``, ``fails`` or ``n/a`` with the reason), the
margin (positive when the claim holds, in the units of the measurement; a
claim with several parts reports its smallest margin) and its ``kind``:

- ``identity``: holds by construction (C2 by clipping, C4's inequality by
  Cauchy-Schwarz, C5's stability condition by the default step size); a
  failure means a bug, a success is no evidence for the theory;
- ``problem``: a property of the data and the kernel alone (C9);
- ``theory``: a prediction that a wrong theory would miss (C3, C4', C5',
  C6 at ``T_filter`` and at the end, C7, C12). Only these carry evidence.

Thresholds are the fields of :class:`Thresholds` (documented defaults; settable per run).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from threadpoolctl import threadpool_limits

from kernels.spectral import top_energy_share
from phases.detect import NO_PHASES, Phases

HOLDS, FAILS, NOT_APPLICABLE = "holds", "fails", "n/a"
IDENTITY, PROBLEM, THEORY = "identity", "problem", "theory"


#: Each threshold of :class:`Thresholds`: its meaning and unit, and the range of values that make sense.
THRESHOLD_DOCS = {
    "c3_first_step_auc": ("C3: least AUC of the first weight step as a clean-vs-noisy score (a step blind to the "
                          "labels scores 1/2)", 0.0, 1.0),
    "c4_velocity_fall": ("C4': least factor by which the largest weight velocity falls over the run when gamma > 0 "
                         "(and most, when gamma = 0)", 1.0, math.inf),
    "c4_ratio_spread": ("C4': largest max/min over post-filtering of velocity / sqrt(L_meta) (1: exact "
                        "proportionality)", 1.0, math.inf),
    "c5_rate_error": ("C5': largest error of the predicted post-filtering contraction rate rho, as a fraction of "
                      "1 - rho", 0.0, math.inf),
    "c6_noisy_zero": ("C6: least share of noisy examples at w = 0, at T_filter and at the end", 0.0, 1.0),
    "c6_clean_zero": ("C6: largest share of clean examples at w = 0, at T_filter and at the end", 0.0, 1.0),
    "c7_alignment_flip": ("C7: largest mean flip rate of the weight velocity's sign in alignment", 0.0, 1.0),
    "c12_auc_drop": ("C12: least fall of the AUC of w from its peak to the end", 0.0, 1.0),
}


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """What each claim under test is held to (docs/theory.md section 4.1), each chosen so that a wrong theory misses.

    :data:`THRESHOLD_DOCS` gives each field's meaning, unit and sensible range; ``python -m phases.simulate``
    sets them with ``--c3-first-step-auc`` and so on. The C5' rate error is relative because the kernel's
    eigenvalues span orders of magnitude, so a wrong spectrum or moving weights miss by far more.
    """

    c3_first_step_auc: float = 0.75
    c4_velocity_fall: float = 10.0
    c4_ratio_spread: float = 2.0
    c5_rate_error: float = 0.5
    c6_noisy_zero: float = 0.5
    c6_clean_zero: float = 0.1
    c7_alignment_flip: float = 0.01
    c12_auc_drop: float = 0.02

    def __post_init__(self):
        for name, (_, low, high) in THRESHOLD_DOCS.items():
            value = getattr(self, name)
            if not low <= value <= high or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number in [{low:g}, {high:g}], got {value!r}")


@dataclasses.dataclass(frozen=True)
class Claim:
    id: str
    name: str
    measured: dict
    threshold: str
    verdict: str
    margin: float | None
    detail: str = ""
    kind: str = THEORY


def _claim(id, name, measured, threshold, margin, detail="", kind=THEORY):
    return Claim(id, name, measured, threshold, HOLDS if margin >= 0 else FAILS, float(margin), detail, kind)


def _not_applicable(id, name, reason, kind=THEORY):
    return Claim(id, name, {}, "", NOT_APPLICABLE, None, reason, kind)


def _at(trajectory, step):
    return int(np.searchsorted(trajectory.step, step))


def _variant(trajectory) -> str:
    return trajectory.config.get("variant", "meta")


def _auc(scores: np.ndarray, positive: np.ndarray) -> float:
    from dynamics.trajectory import weight_stats

    return float(weight_stats(scores[None, :], ~positive)["auc"][0])


# ----------------------------------------------------------------------------- identities and the problem


def c2_box(trajectory) -> Claim:
    low, high = float(trajectory.w.min()), float(trajectory.w.max())
    return _claim("C2", "weights stay in [0, 1]", {"min_w": low, "max_w": high}, "0 <= w <= 1 at every recorded step",
                  min(low, 1.0 - high), "holds by clipping", IDENTITY)


def c4_bound(trajectory) -> np.ndarray:
    """(T, n) the C4 bound on ``|score_i|``: ``||r_i|| ||k(x_i, X_meta)||_2 ||R_meta_hat||_F``.

    Times ``beta / m`` it bounds the weight velocity.
    """
    return trajectory.residual_norm * trajectory.k_meta_norm[None, :] * trajectory.coupling_norm[:, None]


def c4_inequality(trajectory, phases: Phases) -> Claim:
    bound = c4_bound(trajectory)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(bound > 0, np.abs(trajectory.score) / bound, np.where(trajectory.score == 0, 0.0, np.inf))
    step_ratio = ratio.max(axis=1)
    per_phase = {name: float(step_ratio[mask].max()) for name, mask in phases.masks(trajectory.step).items()
                 if mask.any()}
    scale = trajectory.config["beta"] / trajectory.config["m"]
    largest_bound = scale * bound.max(axis=1)
    return _claim("C4", "|velocity_i| <= (beta/m) ||r_i|| ||k(x_i, X_meta)|| ||R_meta_hat||_F",
                  {"max_ratio_per_phase": per_phase, "bound_start": float(largest_bound[0]),
                   "bound_end": float(largest_bound[-1])},
                  "observed / bound <= 1 at every step and example", 1.0 - float(step_ratio.max()),
                  "Cauchy-Schwarz; the bound is loosest, not tightest, late in the run", IDENTITY)


def c5_stability(trajectory) -> Claim:
    stable = trajectory.config["eta"] * trajectory.config["lambda_joint"]
    return _claim("C5", "the step size is stable on the weighted joint kernel", {"eta_times_lambda_max": stable},
                  "eta * lambda_max < 2", 2.0 - stable, "enforced by the default step size", IDENTITY)


def c9_spectral(problem, eigenvectors: np.ndarray | None) -> Claim:
    name = "label noise sits lower in the kernel spectrum than the clean signal"
    if problem is None or eigenvectors is None:
        return _not_applicable("C9", name, "needs the problem with its true labels and the top C eigenvectors of "
                               "K_XX (features of rank below C have fewer)", PROBLEM)
    if not problem.noisy.any():
        return _not_applicable("C9", name, "no label noise", PROBLEM)
    C = problem.num_classes
    if eigenvectors.shape[1] < C:
        return _not_applicable("C9", name, f"K_XX has {eigenvectors.shape[1]} eigen-directions, fewer than C = {C}",
                               PROBLEM)
    Y_true = problem.encode(problem.y_true)  # one-hot rows, or +-1 in one column (the binary setting)
    noise = problem.encode(problem.y_noisy) - Y_true
    clean_share, noise_share = top_energy_share(eigenvectors, Y_true, C), top_energy_share(eigenvectors, noise, C)
    return _claim("C9", name, {"k": C, "clean_top_k_share": clean_share, "noise_top_k_share": noise_share},
                  f"noise share < clean share in the top k = C = {C} eigen-directions", clean_share - noise_share,
                  "depends on the data and the kernel only", PROBLEM)


# ----------------------------------------------------------------------------- the theory under test


def c3_alignment(trajectory, thresholds: Thresholds) -> Claim:
    name = "the first weight step separates clean from noisy examples"
    if _variant(trajectory) == "fixed":
        return _not_applicable("C3", name, NO_PHASES["fixed"])
    if trajectory.config.get("init", "zero") != "zero" or trajectory.step[0] != 0:
        return _not_applicable("C3", name, "stated at initialisation with zero initial outputs")
    noisy = trajectory.noisy
    if noisy.all() or not noisy.any():
        return _not_applicable("C3", name, "needs both clean and noisy examples")
    first, a = trajectory.score[0], trajectory.label_similarity
    auc = _auc(first, ~noisy)
    measured = {"first_step_auc": auc,
                "noisy_first_step_negative": float(np.mean(first[noisy] < 0)),
                "clean_first_step_negative": float(np.mean(first[~noisy] < 0)),
                "a_positive": float(np.mean(a > 0))}
    detail = ("every a_i > 0 here, so under MSE every weight rises at the first step; only relatively do "
              "conflicting examples go down" if measured["a_positive"] == 1.0 else "")
    return _claim("C3", name, measured, f"AUC of the first step as a clean score >= {thresholds.c3_first_step_auc:g}",
                  auc - thresholds.c3_first_step_auc, detail)


def _post_filtering(trajectory, phases: Phases) -> np.ndarray:
    return phases.masks(trajectory.step)["post-filtering"]


def c4_scaling(trajectory, phases: Phases, thresholds: Thresholds) -> Claim:
    name = "the weight velocity scales like sqrt(L_meta) and vanishes with it"
    variant = _variant(trajectory)
    if variant in NO_PHASES:
        return _not_applicable("C4'", name, NO_PHASES[variant])
    post = _post_filtering(trajectory, phases) & (trajectory.clean_loss > 0)
    if post.sum() < 2:
        return _not_applicable("C4'", name, phases["post-filtering"].reason or "post-filtering too short")
    ratio = trajectory.max_velocity[post] / np.sqrt(trajectory.clean_loss[post])
    spread = float(ratio.max() / ratio.min()) if ratio.min() > 0 else math.inf
    fall = float(trajectory.max_velocity[0] / trajectory.max_velocity[-1]) if trajectory.max_velocity[-1] > 0 \
        else math.inf
    gamma = trajectory.config["gamma"]
    # gamma > 0: the clean loss contracts to 0, so the velocity must fall; gamma = 0: the loss plateaus, so it must not.
    fall_margin = math.log10(fall / thresholds.c4_velocity_fall) if gamma > 0 else \
        math.log10(thresholds.c4_velocity_fall / fall)
    measured = {"ratio_min": float(ratio.min()), "ratio_max": float(ratio.max()), "ratio_spread": spread,
                "velocity_start": float(trajectory.max_velocity[0]), "velocity_end": float(trajectory.max_velocity[-1]),
                "velocity_fall": fall}
    side = "at least" if gamma > 0 else "less than"
    return _claim("C4'", name, measured,
                  f"post-filtering max/min of velocity/sqrt(L_meta) <= {thresholds.c4_ratio_spread:g}; velocity "
                  f"falls {side} {thresholds.c4_velocity_fall:g}x over the run (gamma = {gamma:g})",
                  min(math.log10(thresholds.c4_ratio_spread / spread), fall_margin),
                  "margin in decades (log10 of the factor to each threshold)")


def _fitted_rate(step: np.ndarray, loss: np.ndarray) -> float:
    """Per-step geometric rate ``rho`` of ``loss`` over ``step`` (least squares of ``log loss``)."""
    keep = loss > 0
    if keep.sum() < 2:
        return math.nan
    return float(np.exp(np.polyfit(step[keep], np.log(loss[keep]), 1)[0]))


@dataclasses.dataclass(frozen=True)
class RatePrediction:
    """The C5' spectral prediction of the post-filtering contraction rate (docs/theory.md section 4.1).

    With the weights frozen at ``T_filter`` and ``D = diag(w, gamma)``, MSE residuals ``E = F - Y`` of
    the training and clean sets evolve as ``D^1/2 E <- (I - eta M) D^1/2 E`` with ``M = D^1/2 K_joint
    D^1/2``. ``lambda_star`` is the eigenvalue of ``M`` whose direction carries most of the clean
    residual's energy at ``T_filter`` (``||V[meta, k]||^2 ||c_k||^2``, ``c = V^T D^1/2 E``), and
    ``rho_spectral = (1 - eta lambda_star)^2``, the one-direction simplification. ``frozen_loss (W,)`` is the
    clean-subset loss the frozen dynamics give, through every eigen-direction, at the recorded post-filtering steps
    ``frozen_step``: the prediction C5' is judged on.
    """

    lambda_star: float
    rho_spectral: float
    frozen_step: np.ndarray
    frozen_loss: np.ndarray


def predict_post_filtering_rate(problem, blocks, trajectory, phases: Phases, outputs_at_filter: np.ndarray
                                ) -> RatePrediction | None:
    """The C5' prediction from the kernel and the outputs ``(n + m, C)`` of the run at ``T_filter``.

    ``blocks``: the dense kernel blocks (:class:`dynamics.operators.KernelBlocks`), or explicit features
    (:class:`dynamics.operators.FeatureKernel`), for which the prediction is made in the ``D``-dimensional
    parameter space without forming the ``(n + m, n + m)`` kernel (:func:`_predict_on_features`).
    ``None`` where C5' says nothing (:func:`_no_rate_reason`).
    """
    if _no_rate_reason(trajectory, phases):
        return None
    if hasattr(blocks, "Phi"):
        return _predict_on_features(problem, blocks, trajectory, phases, outputs_at_filter)
    config = trajectory.config
    n, m, _ = problem.sizes
    eta, gamma = config["eta"], config["gamma"]
    w = trajectory.w[_at(trajectory, phases.T_filter)]
    root = np.sqrt(np.concatenate([w, np.full(m, gamma)]))
    K = np.block([[blocks.K_XX, blocks.K_VX.T], [blocks.K_VX, blocks.K_VV]]).astype(np.float64, copy=False)
    with threadpool_limits(1):  # as phases.experiments._top_eigenvectors: threads only slow eigh down here
        eigenvalues, V = np.linalg.eigh(root[:, None] * K * root[None, :])
    Y = problem.encode(np.concatenate([problem.y_noisy, problem.y_meta]))
    coefficients = V.T @ (root[:, None] * (outputs_at_filter - Y))  # (n + m, C)
    energy = np.sum(V[n:] ** 2, axis=0) * np.sum(coefficients ** 2, axis=1)
    lambda_star = float(eigenvalues[np.argmax(energy)])
    post = _post_filtering(trajectory, phases)
    steps = trajectory.step[post] - phases.T_filter
    decay = (1.0 - eta * eigenvalues)[None, :] ** steps[:, None]  # (W, n + m)
    # optimize: contracted pairwise through BLAS (57x faster than the default three-operand loop here)
    meta_residual = np.einsum("mk,tk,kc->tmc", V[n:], decay, coefficients, optimize=True) / np.sqrt(gamma)
    frozen_loss = 0.5 * np.sum(meta_residual ** 2, axis=(1, 2)) / m
    return RatePrediction(lambda_star, (1.0 - eta * lambda_star) ** 2, trajectory.step[post], frozen_loss)


def _predict_on_features(problem, features, trajectory, phases: Phases, outputs_at_filter: np.ndarray
                         ) -> RatePrediction:
    """C5' for the linear kernel of features ``Phi (n, D)``, ``Psi (m, D)`` (docs/theory.md section 8).

    With ``A = D^1/2 [Phi; Psi] : (n + m, D)``, ``M = D^1/2 K_joint D^1/2 = A A^T`` shares its nonzero spectrum
    with ``B = A^T A = Phi^T diag(w) Phi + gamma Psi^T Psi : (D, D) = V diag(lambda) V^T``; its eigenvectors
    are ``A V / sqrt(lambda)``. The frozen dynamics move the parameters, so after ``t`` steps the clean
    residual is ``E_meta - Psi V diag(phi_t(lambda)) V^T a`` with ``a = Phi^T (w E) + gamma Psi^T E_meta : (D,
    C)`` and ``phi_t(lambda) = (1 - (1 - eta lambda)^t) / lambda`` (``t eta`` at ``lambda = 0``): every
    direction of ``M``, the null space included, with no division by a small eigenvalue. ``lambda_star`` takes
    the energies ``||(A V)_meta,k||^2 ||c_k||^2 / lambda_k^2`` of the directions with ``lambda_k`` above
    rounding, and the null space of ``M`` (eigenvalue 0) as one more direction whose energy is the squared norm
    of the clean rows of the residual's null-space part (the dense route spreads it over a basis of that space).
    Cost ``O((n + m) D C + D^3)``.
    """
    config = trajectory.config
    n, m, _ = problem.sizes
    eta, gamma = config["eta"], config["gamma"]
    Phi, Psi = np.asarray(features.Phi, dtype=np.float64), np.asarray(features.Psi, dtype=np.float64)
    w = trajectory.w[_at(trajectory, phases.T_filter)]
    Y = problem.encode(np.concatenate([problem.y_noisy, problem.y_meta]))
    E = outputs_at_filter - Y
    E_train, E_meta = E[:n], E[n:]
    B = Phi.T @ (w[:, None] * Phi) + gamma * (Psi.T @ Psi)
    eigenvalues, V = np.linalg.eigh(B)
    eigenvalues = np.maximum(eigenvalues, 0.0)
    a = V.T @ (Phi.T @ (w[:, None] * E_train) + gamma * (Psi.T @ E_meta))  # (D, C), in the eigenbasis
    PsiV = Psi @ V  # (m, D)

    # lambda_star: the direction carrying most clean-residual energy (section 4.1).
    nonzero = eigenvalues > eigenvalues.max(initial=0.0) * max(B.shape[0], n + m) * np.finfo(np.float64).eps
    energy = gamma * np.sum(PsiV[:, nonzero] ** 2, axis=0) * np.sum(a[nonzero] ** 2, axis=1) / eigenvalues[nonzero] ** 2
    null_meta = np.sqrt(gamma) * (E_meta - PsiV[:, nonzero] @ (a[nonzero] / eigenvalues[nonzero, None]))
    candidates = np.concatenate([eigenvalues[nonzero], [0.0]])
    lambda_star = float(candidates[np.argmax(np.concatenate([energy, [np.sum(null_meta ** 2)]]))])

    post = _post_filtering(trajectory, phases)
    steps = (trajectory.step[post] - phases.T_filter).astype(np.float64)
    base = 1.0 - eta * eigenvalues
    with np.errstate(divide="ignore", invalid="ignore"):
        # 1 - (1 - eta lambda)^t, through expm1/log1p where 0 < 1 - eta lambda (accurate for small lambda).
        decayed = np.where(base[None, :] > 0,
                           -np.expm1(steps[:, None] * np.log1p(-eta * np.minimum(eigenvalues, 1.0 / eta))[None, :]),
                           1.0 - base[None, :] ** steps[:, None])
        phi = np.where(eigenvalues[None, :] > 0, decayed / eigenvalues[None, :], eta * steps[:, None])  # (W, D)
    meta_residual = E_meta[None] - np.einsum("mk,tk,kc->tmc", PsiV, phi, a, optimize=True)
    frozen_loss = 0.5 * np.sum(meta_residual ** 2, axis=(1, 2)) / m
    return RatePrediction(lambda_star, (1.0 - eta * lambda_star) ** 2, trajectory.step[post], frozen_loss)


def feature_eigenvectors(features, k: int) -> np.ndarray | None:
    """``(n, k)`` the top-``k`` eigenvectors of ``K_XX = Phi Phi^T``, descending, for C9 on explicit features.

    They are the top-``k`` left singular vectors of ``Phi (n, D)``: with ``Phi^T Phi = V S^2 V^T`` (the ``(D,
    D)`` Gram matrix the operator already holds for its step size), ``U = Phi V / S``. ``K`` is never formed.
    ``None`` when the features have rank below ``k``.
    """
    Phi = np.asarray(features.Phi, dtype=np.float64)
    gram = features._gram_train if hasattr(features, "_gram_train") else Phi.T @ Phi
    eigenvalues, V = np.linalg.eigh(gram)
    order = np.argsort(eigenvalues)[::-1][:k]
    top = eigenvalues[order]
    if len(order) < k or top[-1] <= top[0] * max(Phi.shape) * np.finfo(np.float64).eps:
        return None
    return Phi @ (V[:, order] / np.sqrt(top))


def _no_rate_reason(trajectory, phases: Phases) -> str:
    """Why C5' does not apply to a run ("" when it does)."""
    config = trajectory.config
    if _variant(trajectory) in NO_PHASES:
        return NO_PHASES[_variant(trajectory)]
    if config["loss"] != "mse":
        return "stated for MSE, whose residuals evolve linearly"
    if config["gamma"] <= 0:
        return "with gamma = 0 the clean-subset loss plateaus: there is no contraction rate to predict"
    if config.get("batch_size") is not None or config.get("meta_batch_size") is not None:
        return "the prediction is for full-batch steps"
    if phases.T_filter is None or phases.masks(trajectory.step)["post-filtering"].sum() < 2:
        return phases["post-filtering"].reason or "no post-filtering phase"
    return ""


def c5_rate(trajectory, phases: Phases, prediction: RatePrediction | None, thresholds: Thresholds) -> Claim:
    name = "the post-filtering contraction rate of L_meta matches the spectral prediction"
    masks = phases.masks(trajectory.step)
    per_phase = {phase: _fitted_rate(trajectory.step[mask], trajectory.clean_loss[mask])
                 for phase, mask in masks.items() if mask.sum() >= 2}
    if prediction is None:
        return _not_applicable("C5'", name, _no_rate_reason(trajectory, phases) or "no prediction was computed")
    post = masks["post-filtering"]
    measured_rho = _fitted_rate(trajectory.step[post], trajectory.clean_loss[post])
    spectral_rho = _fitted_rate(prediction.frozen_step, prediction.frozen_loss)
    error = abs(spectral_rho - measured_rho) / (1 - measured_rho)
    dominant_error = abs(prediction.rho_spectral - measured_rho) / (1 - measured_rho)
    return _claim("C5'", name,
                  {"rho_measured": measured_rho, "rho_spectral": spectral_rho,
                   "relative_error_of_1_minus_rho": error, "rho_dominant_direction": prediction.rho_spectral,
                   "lambda_star": prediction.lambda_star, "dominant_direction_error": dominant_error,
                   "rho_per_phase": per_phase},
                  f"|rho_spectral - rho_measured| <= {thresholds.c5_rate_error:g} (1 - rho_measured)",
                  thresholds.c5_rate_error - error,
                  "rho_spectral: the rate of L_meta under every eigen-direction of the kernel with the weights frozen "
                  "at T_filter; rho_dominant_direction = (1 - eta lambda*)^2 keeps only the direction with the most "
                  "clean-residual energy")


def c6_filtering(trajectory, phases: Phases, thresholds: Thresholds, at_end: bool = False) -> Claim:
    where = "at the end of the run" if at_end else "at the end of filtering"
    id = "C6-end" if at_end else "C6"
    name = f"noisy examples at w = 0, clean ones not, {where}"
    variant = _variant(trajectory)
    if variant in NO_PHASES:
        return _not_applicable(id, name, NO_PHASES[variant])
    if phases.T_filter is None:
        return _not_applicable(id, name, phases["filtering"].reason or "filtering has not ended")
    stats = trajectory.weight_stats()
    row = -1 if at_end else _at(trajectory, phases.T_filter)
    step = int(trajectory.step[row])
    noisy_zero, clean_zero = float(stats["frac_noisy_zero"][row]), float(stats["frac_clean_zero"][row])
    return _claim(id, name, {"step": step, "frac_noisy_zero": noisy_zero, "frac_clean_zero": clean_zero},
                  f"noisy at 0 >= {thresholds.c6_noisy_zero:g}, clean at 0 <= {thresholds.c6_clean_zero:g}",
                  min(noisy_zero - thresholds.c6_noisy_zero, thresholds.c6_clean_zero - clean_zero))


def c7_sensitivity(trajectory, phases: Phases, thresholds: Thresholds) -> Claim:
    name = "weight steps grow perturbation-sensitive after filtering"
    variant = _variant(trajectory)
    if variant in NO_PHASES:
        return _not_applicable("C7", name, NO_PHASES[variant])
    if np.all(np.isnan(trajectory.flip_rate)):
        return _not_applicable("C7", name, "the flip rate was not measured")
    rates = {phase: float(np.nanmean(trajectory.flip_rate[mask]))
             for phase, mask in phases.masks(trajectory.step).items() if mask.any()}
    if len(rates) < 2:
        return _not_applicable("C7", name, "fewer than two non-empty phases")
    ordered = list(rates.values())
    margins = [later - earlier for earlier, later in zip(ordered, ordered[1:])]
    threshold = "rising from phase to phase"
    if "alignment" in rates:  # an empty alignment has no flip rate to bound
        margins.append(thresholds.c7_alignment_flip - rates["alignment"])
        threshold = f"alignment <= {thresholds.c7_alignment_flip:g}, and {threshold}"
    return _claim("C7", name, {"mean_flip_rate": rates, "eps": trajectory.config.get("perturb_eps"),
                               "draws": trajectory.config.get("perturb_draws")}, threshold, min(margins))


def discrimination(trajectory, phases: Phases) -> dict:
    """C12's measurements: the AUC of ``w`` (clean vs noisy) at each boundary, its peak, and the AUC of the
    post-filtering weight change among the examples strictly inside ``(0, 1)`` at ``T_filter``."""
    auc = trajectory.weight_stats()["auc"]
    peak = int(np.nanargmax(auc))
    measured = {"auc_peak": float(auc[peak]), "peak_step": int(trajectory.step[peak]), "auc_end": float(auc[-1])}
    for name, boundary in (("T_align", phases.T_align), ("T_filter", phases.T_filter)):
        measured[f"auc_at_{name}"] = None if boundary is None else float(auc[_at(trajectory, boundary)])
    if phases.T_filter is not None:
        w_filter, w_end = trajectory.w[_at(trajectory, phases.T_filter)], trajectory.w[-1]
        free = (w_filter > 0) & (w_filter < 1)
        measured["free_at_T_filter"] = int(free.sum())
        clean = ~trajectory.noisy[free]
        measured["post_filtering_change_auc"] = _auc(w_end[free] - w_filter[free], clean) \
            if clean.any() and (~clean).any() else None
    return measured


def c12_discrimination(trajectory, phases: Phases, thresholds: Thresholds) -> Claim:
    name = "discrimination peaks early: the AUC of w is highest by T_filter and post-filtering motion undoes it"
    variant = _variant(trajectory)
    if variant in NO_PHASES:
        return _not_applicable("C12", name, NO_PHASES[variant])
    if phases.T_filter is None or not trajectory.noisy.any():
        return _not_applicable("C12", name, phases["filtering"].reason or "filtering has not ended")
    measured = discrimination(trajectory, phases)
    if measured["post_filtering_change_auc"] is None:
        return _not_applicable("C12", name, "no clean and noisy examples strictly inside (0, 1) at T_filter")
    margins = [(phases.T_filter - measured["peak_step"]) / phases.window,
               measured["auc_peak"] - measured["auc_end"] - thresholds.c12_auc_drop,
               0.5 - measured["post_filtering_change_auc"]]
    return _claim("C12", name, measured,
                  f"peak at or before T_filter; AUC falls by >= {thresholds.c12_auc_drop:g} from peak to end; "
                  "AUC of the post-filtering change among free examples < 1/2",
                  min(margins), "margin: the smallest of (T_filter - peak step) in windows and the two AUC margins")


def check_claims(trajectory, phases: Phases, *, problem=None, eigenvectors: np.ndarray | None = None,
                 rate_prediction: RatePrediction | None = None, thresholds: Thresholds = Thresholds()) -> list[Claim]:
    """Every claim of docs/theory.md section 4.1 on one run: identities, the problem's property, the theory.

    ``eigenvectors : (n, n)`` of ``K_XX``, descending (for C9); ``rate_prediction`` from
    :func:`predict_post_filtering_rate` (for C5').
    """
    return [
        c2_box(trajectory),
        c4_inequality(trajectory, phases),
        c5_stability(trajectory),
        c9_spectral(problem, eigenvectors),
        c3_alignment(trajectory, thresholds),
        c4_scaling(trajectory, phases, thresholds),
        c5_rate(trajectory, phases, rate_prediction, thresholds),
        c6_filtering(trajectory, phases, thresholds),
        c6_filtering(trajectory, phases, thresholds, at_end=True),
        c7_sensitivity(trajectory, phases, thresholds),
        c12_discrimination(trajectory, phases, thresholds),
    ]

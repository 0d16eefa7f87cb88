"""The claims of docs/theory.md section 4, measured on one trajectory.

Each check returns a :class:`Claim`: what was measured, the bound or threshold
it is held to, the verdict (``holds``, ``fails`` or ``n/a`` with the reason)
and the margin (positive when the claim holds, in the units of the
measurement). Thresholds are the documented defaults of :class:`Thresholds`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.stats import spearmanr

from kernels.spectral import top_energy_share
from phases.detect import Phases

HOLDS, FAILS, NOT_APPLICABLE = "holds", "fails", "n/a"


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """What each measured claim is held to.

    c3_rank_correlation : least Spearman correlation between the first weight
        step and the label-signed similarity ``a`` (at ``eta -> 0`` they are
        equal; at the default ``eta`` the step is ``a`` plus an ``O(eta)`` term).
    c6_noisy_zero, c6_clean_zero : least share of noisy and largest share of
        clean examples at ``w = 0`` at the end of filtering.
    c7_alignment_flip : largest mean C7 flip rate in alignment.
    """

    c3_rank_correlation: float = 0.9
    c6_noisy_zero: float = 0.5
    c6_clean_zero: float = 0.1
    c7_alignment_flip: float = 0.01


@dataclasses.dataclass(frozen=True)
class Claim:
    id: str
    name: str
    measured: dict
    threshold: str
    verdict: str
    margin: float | None
    detail: str = ""


def _claim(id, name, measured, threshold, margin, detail=""):
    return Claim(id, name, measured, threshold, HOLDS if margin >= 0 else FAILS, float(margin), detail)


def _not_applicable(id, name, reason):
    return Claim(id, name, {}, "", NOT_APPLICABLE, None, reason)


def _at(trajectory, step):
    return int(np.searchsorted(trajectory.step, step))


def c2_box(trajectory) -> Claim:
    low, high = float(trajectory.w.min()), float(trajectory.w.max())
    return _claim("C2", "weights stay in [0, 1]", {"min_w": low, "max_w": high}, "0 <= w <= 1 at every recorded step",
                  min(low, 1.0 - high))


def c3_alignment(trajectory, thresholds: Thresholds) -> Claim:
    name = "first weight step follows the label-signed similarity a"
    config = trajectory.config
    if config["loss"] != "mse" or config.get("init", "zero") != "zero" or trajectory.step[0] != 0:
        return _not_applicable("C3", name, "stated for MSE with zero initial outputs")
    first, a = trajectory.score[0], trajectory.label_similarity
    correlation = float(spearmanr(first, a)[0])
    deviation = float(np.linalg.norm(first - a) / np.linalg.norm(a))
    agrees = float(np.mean(np.sign(first) == np.sign(a)))
    return _claim("C3", name, {"rank_correlation": correlation, "relative_deviation": deviation, "sign_agreement": agrees},
                  f"Spearman correlation >= {thresholds.c3_rank_correlation:g}",
                  correlation - thresholds.c3_rank_correlation,
                  f"the step equals a only as eta -> 0; at eta={config['eta']:.3g} it deviates by {deviation:.2f} (relative)")


def c4_bound(trajectory) -> np.ndarray:
    """(T, n) the C4 bound on ``|score_i|``: ``||r_i|| ||k(x_i, X_meta)||_2 ||R_meta_hat||_F``.

    Times ``beta / m`` it bounds the weight velocity.
    """
    return trajectory.residual_norm * trajectory.k_meta_norm[None, :] * trajectory.coupling_norm[:, None]


def c4_vanishing_coupling(trajectory, phases: Phases) -> Claim:
    bound = c4_bound(trajectory)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(bound > 0, np.abs(trajectory.score) / bound, np.where(trajectory.score == 0, 0.0, np.inf))
    step_ratio = ratio.max(axis=1)
    per_phase = {name: float(step_ratio[mask].max()) for name, mask in phases.masks(trajectory.step).items()
                 if mask.any()}
    scale = trajectory.config["beta"] / trajectory.config["m"]
    largest_bound = scale * bound.max(axis=1)
    measured = {
        "max_ratio_per_phase": per_phase,
        "bound_start": float(largest_bound[0]),
        "bound_end": float(largest_bound[-1]),
        "max_velocity_start": float(trajectory.max_velocity[0]),
        "max_velocity_end": float(trajectory.max_velocity[-1]),
        "clean_loss_start": float(trajectory.clean_loss[0]),
        "clean_loss_end": float(trajectory.clean_loss[-1]),
    }
    return _claim("C4", "|velocity_i| <= (beta/m) ||r_i|| ||k(x_i, X_meta)|| ||R_meta_hat||_F", measured,
                  "observed / bound <= 1 at every step and example", 1.0 - float(step_ratio.max()),
                  f"the bound's largest value falls from {largest_bound[0]:.3g} to {largest_bound[-1]:.3g} "
                  "as the clean-subset loss contracts")


def c5_contraction(trajectory, phases: Phases) -> Claim:
    config = trajectory.config
    loss = trajectory.clean_loss
    stable = config["eta"] * config["lambda_joint"]
    # gamma > 0: L_meta contracts towards 0; gamma = 0: towards its plateau (the run's smallest value).
    floor = 0.0 if config["gamma"] > 0 else float(loss.min())
    end = phases.plateau if phases.plateau is not None else int(trajectory.step[-1])
    keep = (trajectory.step <= end) & (loss - floor > 0)
    if keep.sum() < 2:
        return _not_applicable("C5", "clean-subset loss contracts geometrically", "fewer than two points above the floor")
    slope = np.polyfit(trajectory.step[keep], np.log(loss[keep] - floor), 1)[0]
    rho = float(np.exp(slope))
    return _claim("C5", "clean-subset loss contracts geometrically",
                  {"rho": rho, "eta_times_lambda_max": stable, "floor": floor, "fitted_until_step": end},
                  "eta * lambda_max < 2 and rho < 1", min(2.0 - stable, 1.0 - rho),
                  "towards 0 (gamma > 0)" if config["gamma"] > 0 else "towards a plateau (gamma = 0)")


def c6_filtering(trajectory, phases: Phases, thresholds: Thresholds) -> Claim:
    name = "noisy examples at w = 0, clean ones not, at the end of filtering"
    if phases.T_filter is None:
        return _not_applicable("C6", name, phases["filtering"].reason or "filtering has not ended")
    stats = trajectory.weight_stats()
    at = _at(trajectory, phases.T_filter)
    noisy_zero, clean_zero = float(stats["frac_noisy_zero"][at]), float(stats["frac_clean_zero"][at])
    return _claim("C6", name, {"step": phases.T_filter, "frac_noisy_zero": noisy_zero, "frac_clean_zero": clean_zero},
                  f"noisy at 0 >= {thresholds.c6_noisy_zero:g}, clean at 0 <= {thresholds.c6_clean_zero:g}",
                  min(noisy_zero - thresholds.c6_noisy_zero, thresholds.c6_clean_zero - clean_zero))


def c7_sensitivity(trajectory, phases: Phases, thresholds: Thresholds) -> Claim:
    name = "weight steps grow perturbation-sensitive after filtering"
    if np.all(np.isnan(trajectory.flip_rate)):
        return _not_applicable("C7", name, "the flip rate was not measured")
    rates = {phase: float(np.nanmean(trajectory.flip_rate[mask]))
             for phase, mask in phases.masks(trajectory.step).items() if mask.any()}
    if len(rates) < 2:
        return _not_applicable("C7", name, "fewer than two non-empty phases")
    ordered = list(rates.values())
    margin = min([thresholds.c7_alignment_flip - rates.get("alignment", 0.0)]
                 + [later - earlier for earlier, later in zip(ordered, ordered[1:])])
    return _claim("C7", name, {"mean_flip_rate": rates, "eps": trajectory.config.get("perturb_eps"),
                               "draws": trajectory.config.get("perturb_draws")},
                  f"alignment <= {thresholds.c7_alignment_flip:g}, and rising from phase to phase", margin)


def c9_spectral(problem, eigenvectors: np.ndarray | None) -> Claim:
    name = "label noise sits lower in the kernel spectrum than the clean signal"
    if problem is None or eigenvectors is None:
        return _not_applicable("C9", name, "needs the problem and the eigenvectors of K_XX")
    if not problem.noisy.any():
        return _not_applicable("C9", name, "no label noise")
    C = problem.num_classes
    Y_true = np.eye(C)[problem.y_true]
    noise = np.eye(C)[problem.y_noisy] - Y_true
    clean_share, noise_share = top_energy_share(eigenvectors, Y_true, C), top_energy_share(eigenvectors, noise, C)
    return _claim("C9", name, {"k": C, "clean_top_k_share": clean_share, "noise_top_k_share": noise_share},
                  f"noise share < clean share in the top k = C = {C} eigen-directions", clean_share - noise_share)


def check_claims(trajectory, phases: Phases, *, problem=None, eigenvectors: np.ndarray | None = None,
                 thresholds: Thresholds = Thresholds()) -> list[Claim]:
    """C2-C7 and C9 on one run. ``eigenvectors : (n, n)`` of ``K_XX``, descending (for C9)."""
    return [
        c2_box(trajectory),
        c3_alignment(trajectory, thresholds),
        c4_vanishing_coupling(trajectory, phases),
        c5_contraction(trajectory, phases),
        c6_filtering(trajectory, phases, thresholds),
        c7_sensitivity(trajectory, phases, thresholds),
        c9_spectral(problem, eigenvectors),
    ]

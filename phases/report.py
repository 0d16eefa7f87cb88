"""Per-phase statistics, the run summary, and the tables a person reads in the terminal."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from phases.claims import Claim
from phases.detect import Phases

# What each phase's row reports, read at the phase's last step (its end boundary).
_AT_BOUNDARY = ("mean_w_clean", "mean_w_noisy", "frac_noisy_zero", "frac_clean_zero", "clean_loss", "test_accuracy")


def _number(value):
    value = float(value)
    return None if math.isnan(value) else value


def phase_statistics(trajectory, phases: Phases) -> list[dict]:
    """One dict per phase: boundaries, duration, the state at its start and end, its largest velocity."""
    stats = trajectory.weight_stats() | {"clean_loss": trajectory.clean_loss, "test_accuracy": trajectory.test_accuracy}
    masks = phases.masks(trajectory.step)
    rows = []
    for phase in phases.phases:
        row = {"name": phase.name, "empty": phase.empty, "reason": phase.reason or None,
               "start": phase.start, "end": phase.end, "duration": None if phase.empty else phase.end - phase.start}
        mask = masks[phase.name]
        if not phase.empty and mask.any():
            first, last = np.flatnonzero(mask)[[0, -1]]
            row["at_start"] = {key: _number(stats[key][first]) for key in _AT_BOUNDARY}
            row["at_end"] = {key: _number(stats[key][last]) for key in _AT_BOUNDARY}
            row["max_velocity"] = _number(trajectory.max_velocity[mask].max())
            row["mean_flip_rate"] = _number(np.nanmean(trajectory.flip_rate[mask])) \
                if np.isfinite(trajectory.flip_rate[mask]).any() else None
        rows.append(row)
    return rows


def summary(trajectory, phases: Phases, claims: list[Claim]) -> dict:
    """Everything ``summary.json`` holds (deterministic for fixed inputs)."""
    stats = trajectory.weight_stats()
    config = trajectory.config
    batch = config.get("batch_size")
    steps_per_epoch = None if batch is None else config["n"] / batch
    return {
        "T_align": phases.T_align,
        "T_filter": phases.T_filter,
        "T_freeze": phases.T_freeze,
        "plateau": phases.plateau,
        "steps_per_epoch": steps_per_epoch,
        "in_epochs": None if steps_per_epoch is None else {
            name: None if value is None else value / steps_per_epoch
            for name, value in (("T_align", phases.T_align), ("T_filter", phases.T_filter),
                                ("T_freeze", phases.T_freeze), ("end", int(trajectory.step[-1])))},
        "phase_parameters": dataclasses.asdict(phases.params) | {"window_steps": phases.window},
        "phases": phase_statistics(trajectory, phases),
        "claims": [dataclasses.asdict(claim) for claim in claims],
        "final": {
            "step": int(trajectory.step[-1]),
            "test_accuracy": _number(trajectory.test_accuracy[-1]),
            "auc": _number(stats["auc"][-1]),
            "precision": _number(stats["precision"][-1]),
            "recall": _number(stats["recall"][-1]),
            "frac_noisy_zero": _number(stats["frac_noisy_zero"][-1]),
            "frac_clean_zero": _number(stats["frac_clean_zero"][-1]),
            "clean_loss": _number(trajectory.clean_loss[-1]),
        },
    }


def _fmt(value, spec=".3f"):
    return "-" if value is None else format(value, spec)


def phase_table(rows: list[dict]) -> str:
    """The phase table, with a legend of its columns."""
    header = (f"{'phase':<15}{'steps':>12}{'length':>8}{'w clean':>9}{'w noisy':>9}{'noisy@0':>9}{'clean@0':>9}"
              f"{'L_meta':>10}{'max vel':>10}{'flip':>7}{'test acc':>9}")
    lines = [header, "-" * len(header)]
    for row in rows:
        if row["empty"]:
            lines.append(f"{row['name']:<15}{'empty':>12}  ({row['reason']})")
            continue
        end = row["at_end"]
        span = f"{row['start']}-{row['end'] - 1}"
        lines.append(
            f"{row['name']:<15}{span:>12}{row['duration']:>8}"
            f"{_fmt(end['mean_w_clean']):>9}{_fmt(end['mean_w_noisy']):>9}{_fmt(end['frac_noisy_zero']):>9}"
            f"{_fmt(end['frac_clean_zero']):>9}{_fmt(end['clean_loss'], '.2e'):>10}{_fmt(row['max_velocity'], '.2e'):>10}"
            f"{_fmt(row['mean_flip_rate']):>7}{_fmt(end['test_accuracy']):>9}")
    lines.append("steps: first-last step of the phase; length in steps. At the phase's last step: mean weight of clean and "
                 "noisy examples,")
    lines.append("share of noisy / clean examples at w = 0, clean-subset loss L_meta. Over the phase: largest |weight "
                 "velocity| per step,")
    lines.append("mean C7 flip rate (share of weight steps that change sign under a 1% perturbation). Test accuracy at "
                 "the phase's last step.")
    return "\n".join(lines)


def _measured_text(claim: dict) -> str:
    def show(value):
        if isinstance(value, dict):
            return "{" + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
        if isinstance(value, float):
            return f"{value:.3g}"
        return str(value)

    return ", ".join(f"{key}={show(value)}" for key, value in claim["measured"].items())


def claims_table(claims: list) -> str:
    """The claims table: what was measured, the threshold, the verdict and its margin.

    ``claims`` : what :func:`phases.claims.check_claims` returns (``Claim`` objects), or their dicts as saved
    in ``summary.json``.
    """
    claims = [claim if isinstance(claim, dict) else dataclasses.asdict(claim) for claim in claims]
    lines = [f"{'claim':<8}{'verdict':<9}{'margin':>9}  what / threshold / measured", "-" * 100]
    for kind, title in _KINDS:
        group = [claim for claim in claims if claim.get("kind", "theory") == kind]
        if group:
            lines.append(title)
        for claim in group:
            lines += _claim_lines(claim)
    lines.append("margin: distance to the threshold in the measurement's units (positive: the claim holds).")
    return "\n".join(lines)


_KINDS = (("theory", "theory under test (a wrong theory would miss these thresholds):"),
          ("identity", "identities and sanity checks (true by construction; no evidence for the theory):"),
          ("problem", "properties of the problem (data and kernel alone):"))


def _claim_lines(claim: dict) -> list[str]:
    lines = []
    margin = "-" if claim["margin"] is None else f"{claim['margin']:+.3g}"
    lines.append(f"{claim['id']:<8}{claim['verdict']:<9}{margin:>9}  {claim['name']}")
    if claim["threshold"]:
        lines.append(f"{'':<28}threshold: {claim['threshold']}")
    if claim["measured"]:
        lines.append(f"{'':<28}measured: {_measured_text(claim)}")
    if claim["detail"]:
        lines.append(f"{'':<28}{claim['detail']}")
    return lines


def boundaries_line(summary: dict) -> str:
    """The boundaries in one line: ``T_align``, ``T_filter``, ``T_freeze`` (and in epochs for mini-batch runs)."""
    parts = [f"{name}={'-' if summary[name] is None else summary[name]}" for name in ("T_align", "T_filter", "T_freeze")]
    text = "Boundaries (steps): " + ", ".join(parts)
    if summary.get("in_epochs"):
        epochs = summary["in_epochs"]
        text += "; in epochs: " + ", ".join(f"{name}={'-' if value is None else format(value, '.2f')}"
                                           for name, value in epochs.items())
    if summary["T_filter"] is not None and summary["T_freeze"] is not None:
        text += f"; T_freeze - T_filter = {summary['T_freeze'] - summary['T_filter']} steps"
    return text + "."


def final_line(final: dict) -> str:
    """One sentence on the final state: accuracy and how well ``w`` separates clean from noisy examples."""
    return (f"Final: test accuracy {_fmt(final['test_accuracy'])}, AUC of w (clean vs noisy) {_fmt(final['auc'])}, "
            f"precision {_fmt(final['precision'])} / recall {_fmt(final['recall'])} of {{w > 0}} as the clean set.")


def seeds_table(rows: list[dict], seeds: list[int]) -> str:
    """Claims over seeds: verdict counts and the margin's mean +- standard deviation (over seeds) and minimum /
    median / maximum, theory first."""
    header = (f"{'claim':<8}{'holds':>7}{'fails':>7}{'n/a':>5}{'margin mean +- std':>22}{'min':>10}{'median':>10}"
              f"{'max':>10}  failed at seeds")
    lines = [f"Claims over {len(seeds)} seeds ({seeds[0]}-{seeds[-1]}):" if seeds == list(range(seeds[0], seeds[-1] + 1))
             else f"Claims over seeds {seeds}:", header, "-" * len(header)]
    for kind, title in _KINDS:
        group = [row for row in rows if row["kind"] == kind]
        if group:
            lines.append(title)
        for row in group:
            margin = row["margin"] or {}
            spread = f"{_fmt(margin.get('mean'), '+.3g')} +- {_fmt(margin.get('std'), '.2g')}" if margin else "n/a"
            cells = f"{spread:>22}" + "".join(f"{_fmt(margin.get(key), '+.3g'):>{width}}"
                                              for key, width in (("min", 10), ("median", 10), ("max", 10)))
            failed = ", ".join(map(str, row["failed_seeds"])) or "-"
            lines.append(f"{row['id']:<8}{row['holds']:>7}{row['fails']:>7}{row['n/a']:>5}{cells}  {failed}")
    return "\n".join(lines)

"""The kernel's sign pattern (``phases/sign_pattern.py``, docs/theory.md section 9) against a loop over entries, and
``python -m phases.simulate`` on a binary dataset."""

import dataclasses
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dynamics.operators import FeatureKernel, KernelBlocks
from dynamics.problem import Problem
from phases.sign_pattern import problem_sign_pattern, sign_pattern, sign_pattern_lines
from phases.simulate import main, parse_config


def _oracle(Phi, Psi, y_noisy, y_true, y_meta, num_classes, centred):
    """The statistics by brute force: one entry at a time, the centring done on the features themselves."""
    if centred:
        present = sorted(set(y_meta.tolist()))
        mu = sum(np.mean([Psi[j] for j in range(len(y_meta)) if y_meta[j] == c], axis=0) for c in present) / len(present)
        Phi, Psi = Phi - mu, Psi - mu
    result = {}
    for block, columns, col_labels, col_true in (("K_VX", Psi, y_meta, y_meta), ("K_XX", Phi, y_noisy, y_true)):
        counts = {}
        for i in range(len(Phi)):
            group = "clean" if y_noisy[i] == y_true[i] else "noisy"
            for j in range(len(columns)):
                if block == "K_XX" and i == j:
                    continue
                k = float(Phi[i] @ columns[j])
                kind = "same_class" if y_true[i] == col_true[j] else "different_class"
                signed = k > 0 if y_noisy[i] == col_labels[j] else k < 0
                for g in ("all", group):
                    for statistic, hit in ((kind, k > 0), ("label_signed", signed)):
                        total, hits = counts.get((g, statistic), (0, 0))
                        counts[(g, statistic)] = (total + 1, hits + hit)
        # rows: is the mean over the columns of the row's own true class strictly the largest class mean?
        for i in range(len(Phi)):
            group = "clean" if y_noisy[i] == y_true[i] else "noisy"
            values = {}
            for j in range(len(columns)):
                if not (block == "K_XX" and i == j):
                    values.setdefault(col_true[j], []).append(float(Phi[i] @ columns[j]))
            if not values:
                continue
            means = {c: np.mean(v) for c, v in values.items()}
            hit = y_true[i] in means and all(means[y_true[i]] > mean for c, mean in means.items() if c != y_true[i])
            for g in ("all", group):
                total, hits = counts.get((g, "class_mean_separates"), (0, 0))
                counts[(g, "class_mean_separates")] = (total + 1, hits + hit)
        result[block] = {g: {statistic: (counts[(g, statistic)][1] / counts[(g, statistic)][0]
                                         if (g, statistic) in counts else None)
                             for statistic in ("same_class", "different_class", "label_signed",
                                               "class_mean_separates")}
                         for g in ("all", "clean", "noisy")}
    return result


def _assert_same(actual, expected):
    for block in expected:
        for group in expected[block]:
            for statistic, value in expected[block][group].items():
                got = actual[block][group][statistic]
                assert (got is None) == (value is None), (block, group, statistic, got, value)
                if value is not None:
                    assert got == pytest.approx(value, abs=1e-12), (block, group, statistic)


@st.composite
def small_problems(draw):
    """A few examples of random features (so entries of both signs), ``C`` classes, some labels flipped (possibly
    none), every class in the clean subset."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    C, n, D = draw(st.integers(2, 4)), draw(st.integers(3, 12)), draw(st.integers(1, 5))
    m = C + draw(st.integers(0, 4))
    y_true = rng.integers(0, C, n)
    flip = rng.random(n) < draw(st.sampled_from([0.0, 0.4]))
    y_noisy = np.where(flip, (y_true + rng.integers(1, C, n)) % C, y_true)
    y_meta = np.concatenate([np.arange(C), rng.integers(0, C, m - C)])
    shift = draw(st.sampled_from([0.0, 1.5]))  # a shifted feature cloud: mostly positive raw entries
    Phi, Psi, T = (rng.standard_normal((size, D)) + shift for size in (n, m, 2))
    problem = Problem(Phi, y_noisy, y_true, Psi, y_meta, T, rng.integers(0, C, 2), C, np.eye(C),
                      targets="signed" if C == 2 and draw(st.booleans()) else "one-hot")
    return problem


@given(problem=small_problems())
def test_the_sign_pattern_equals_a_loop_over_entries(problem):
    Phi, Psi = problem.X, problem.X_meta
    blocks = KernelBlocks.from_problem(problem, lambda a, b: a @ b.T)
    features = FeatureKernel(problem.X, problem.X_meta, problem.X_test)
    args = (problem.y_noisy, problem.y_true, problem.y_meta, problem.num_classes)
    dense = sign_pattern(blocks.K_VX, blocks.K_XX, blocks.K_VV, *args)
    for route in (dense, problem_sign_pattern(problem, blocks), problem_sign_pattern(problem, features)):
        for kind in ("raw", "centred"):
            _assert_same(route[kind], _oracle(Phi, Psi, *args, centred=kind == "centred"))
    record = problem_sign_pattern(problem, features)
    assert record["binary"] == (problem.targets == "signed")
    assert record["examples"] == {"train": problem.sizes[0], "of_train": problem.sizes[0], "clean": problem.sizes[1],
                                  "of_clean": problem.sizes[1], "subsample_seed": None}
    # Without y_true only the label-signed share over all rows is measured.
    blind = problem_sign_pattern(problem, blocks, has_y_true=False)["raw"]["K_VX"]
    assert blind["all"]["label_signed"] == dense["raw"]["K_VX"]["all"]["label_signed"]
    assert blind["all"]["same_class"] is None and set(blind["noisy"].values()) == {None}


def test_a_subsample_is_the_same_examples_on_both_routes_and_is_recorded():
    rng = np.random.default_rng(5)
    n, m, C = 40, 12, 3
    y_true = rng.integers(0, C, n)
    problem = Problem(rng.standard_normal((n, 4)), np.where(rng.random(n) < 0.3, (y_true + 1) % C, y_true), y_true,
                      rng.standard_normal((m, 4)), np.arange(m) % C, rng.standard_normal((3, 4)), np.zeros(3, int),
                      C, np.eye(C))
    blocks = KernelBlocks.from_problem(problem, lambda a, b: a @ b.T)
    features = FeatureKernel(problem.X, problem.X_meta, problem.X_test)
    dense, feature = (problem_sign_pattern(problem, operator, limit=10, seed=3) for operator in (blocks, features))
    for kind in ("raw", "centred"):
        _assert_same(dense[kind], feature[kind])
    assert dense["examples"] == {"train": 10, "of_train": n, "clean": 10, "of_clean": m, "subsample_seed": 3}
    assert "subsample of 40 x 12, seed 3" in sign_pattern_lines(dense)[0]


def test_a_binary_run_of_the_main_command_writes_its_sign_pattern(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--dataset", "digits-binary", "--n", "50", "--m", "10", "--noise", "0.3", "--steps", "60",
                 "--perturb-draws", "0", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "digits 1 vs 7 (+-1" in printed and "Kernel sign pattern" in printed and "y_i y_j k > 0" in printed
    summary = json.loads((out / "summary.json").read_text())
    pattern = summary["sign_pattern"]
    assert pattern["binary"] is True and pattern["examples"]["train"] == 50 and pattern["examples"]["clean"] == 10
    assert set(pattern) >= {"raw", "centred", "examples", "definitions"}
    assert set(pattern["centred"]["K_XX"]["noisy"]) == {"same_class", "different_class", "label_signed",
                                                        "class_mean_separates"}
    # What the raw NTK cannot show: every raw entry is positive, while the centred kernel is positive within the
    # classes and negative across them for most pairs, and the label-signed share tells clean from noisy rows.
    raw, centred = pattern["raw"]["K_VX"]["all"], pattern["centred"]["K_VX"]
    assert raw["same_class"] == raw["different_class"] == 1.0 and raw["class_mean_separates"] > 0.8
    assert centred["all"]["same_class"] > 0.5 > centred["all"]["different_class"]
    assert centred["clean"]["label_signed"] > 0.5 > centred["noisy"]["label_signed"]
    config = json.loads((out / "config.json").read_text())
    assert config["settings"]["pair"] == [1, 7] and config["problem"]["targets"] == "signed"
    assert config["problem"]["num_classes"] == 2
    with np.load(out / "problem.npz") as saved:
        assert str(saved["targets"]) == "signed" and set(saved["y_noisy"]) <= {0, 1}
    # the saved settings repeat the run: the pair comes back as a tuple, and as a flag
    repeated, _ = parse_config(["--config", str(out / "config.json")])
    assert repeated.pair == (1, 7) and repeated.dataset == "digits-binary"
    assert repeated.argv()[repeated.argv().index("--pair") + 1] == "1,7"
    assert dataclasses.replace(repeated, pair=(7, 1)).pair == (7, 1)


@pytest.mark.parametrize("args, message", [
    (["--dataset", "digits-binary", "--pair", "3,3"], "--pair must name two different classes, got 3,3"),
    (["--dataset", "digits-binary", "--pair", "1,10"], "--pair must name two classes in [0, 9], got 1,10"),
    (["--dataset", "digits-binary", "--pair", "1"], "--pair: must be two class indices A,B"),
    (["--dataset", "digits", "--pair", "1,7"], "--pair applies to the binary datasets"),
    (["--pair", "1,7"], "--pair applies to the binary datasets"),
])
def test_a_bad_pair_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    assert main([*args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()

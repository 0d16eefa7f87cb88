"""Benchmark the surrogate reweighter against exact bi-level meta-reweighting and against cleanlab.

    python bench/surrogate.py [--out FILE] [--repeats 7] [--threads 1] [--sections ...] [--cleanlab-n N]

A script, not a timed test (docs/architecture.md, convention 11): it prints one
table per section and writes a JSON file (atomically) with every number, the
configuration, the load average and the package versions. Every ratio is
measured side by side in one process, the contenders interleaved round by
round in an order rotated every round; the reported ratio is the median over
rounds of the per-round ratio, so a change of load between rounds cancels.
In section 1 every call follows, untimed, what precedes it in training (a
model update before a surrogate pass, a meta step before a meta step): a
sub-millisecond call costs up to twice as much after a training step.

1. **Weighting cost at equal batch.** For one training batch of ``b`` examples
   and one clean batch of ``b_m``, on the same network, device and dtype:

   - *surrogate pass*, what per-batch surrogate training runs for every batch
     (the reference protocol, docs/theory.md section 6):
     :func:`dynamics.recipes.surrogate_batch_weights`, the batch's penultimate
     features (one forward, no gradient, evaluation mode), then the weights
     against the clean subset's :class:`dynamics.surrogate.CleanReference`,
     built once per epoch. That per-epoch cost (the clean subset's features and
     class directions at the reference's ``m = 2000``) is measured too and
     added, amortised over the reference's ``n / b`` batches of an epoch
     (``n = 45,000``);
   - *surrogate on the step's features* (networks without BatchNorm or
     dropout, :func:`dynamics.recipes.mode_free`: here the MLP): the same
     weights from the features that the training step's own forward has just
     computed (``surrogate_batch_weights(..., batch_features=h)``), so the
     pass is its scoring alone; asserted equal to the pass's weights. A
     network with BatchNorm (the CNN) needs the evaluation-mode forward;
   - *surrogate with the clean batch*: :func:`dynamics.methods.surrogate_weights`,
     features of both batches (one forward) and :func:`dynamics.surrogate.reweight`,
     i.e. the clean side recomputed for every batch (what this bench timed before);
   - *exact meta step*: :func:`dynamics.bilevel.meta_step`, the full step of
     docs/theory.md section 2 that ``meta`` training runs: forward and backward
     with ``create_graph`` at ``theta``, the clean forward at ``theta_hat``,
     backward through the look-ahead to ``w``, the clipped weight update, and
     the model update with the new weights (training-mode BatchNorm); also its
     weight part alone (:func:`dynamics.bilevel.meta_weight_gradient` and the
     clip), since a surrogate-weighted step still pays for its own model update;
   - for scale, a plain ERM step (forward, backward and SGD update on both
     batches), and the evaluation-mode forward of the batch alone, which every
     surrogate pass contains: ``meta step / forward`` bounds ``meta step /
     surrogate pass`` from above.

   Networks: the 0.5-width ``SmallCNN`` of the CPU CIFAR profile on 32 x 32
   images, and the two-layer MLP of the gmm / digits problems. Inputs are
   random (costs do not depend on values).

2. **Class similarities.** :func:`dynamics.surrogate.class_similarities` with
   the linear kernel, ``S = (Phi - mu) (M - mu)^T`` at ``O(n D C)``, against
   the same similarities through the explicit ``(n, m)`` kernel matrix
   (``kernel=lambda a, b: a @ b.T``, formed in blocks of 1024 rows and averaged
   per class, ``O(n m D)``); the two are asserted equal.

3. **Detection against cleanlab on the same features** (skipped, with a
   message, when cleanlab is not installed). :func:`dynamics.surrogate.reweight`
   (training and clean features in, weights out) against cleanlab's standard
   pipeline on the training features: out-of-fold predicted probabilities of
   a 5-fold standardised logistic regression
   (:func:`dynamics.methods.cleanlab.out_of_fold_probabilities`, scikit-learn's
   ``cross_val_predict``), then ``cleanlab.filter.find_label_issues``. Each
   stage is timed (wall and CPU seconds); both detectors are scored against the
   true noise mask: precision, recall and F1 of the flagged set as a detector
   of noisy labels, and the AUC of the score (the surrogate's ``d``, cleanlab's
   self-confidence). Problems: digits (40% symmetric noise), and CIFAR-10N
   ``worse`` on the cached EfficientNet-Lite0 embeddings (the reference split:
   45,000 noisy and 2,000 clean, D = 1,280; ``--cleanlab-n`` subsamples the
   training set; skipped with a message when the data or the cache is absent). cleanlab does not use the clean subset;
   the surrogate does (that is its design).

4. **Time and memory at n = 50,000, D = 512, C = 10.** :func:`reweight`
   (float64 and float32 features), the plain formula with the explicit centred
   ``(n, D)`` copy, ``(Phi - mu) @ (M - mu).T`` (asserted equal), and
   cleanlab's ``find_label_issues`` given predicted probabilities ``(n, C)``
   (``n_jobs=1``). Peak memory beyond the inputs is tracemalloc's peak over
   the call (numpy registers its allocations with tracemalloc), outputs
   included; times are medians of untraced runs.

The machine's CPUs may be shared: the load average is recorded at the start
and the end; compare ratios, not seconds.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import os
import statistics
import sys
import time
import tracemalloc

import numpy as np
import torch
from torch.nn import functional as F


from dynamics.bilevel import meta_step, meta_weight_gradient
from dynamics.cnn import SmallCNN
from dynamics.methods import FeatureMLP, surrogate_weights
from dynamics.recipes import clean_subset_features, mode_free, penultimate_features, surrogate_batch_weights
from dynamics.surrogate import class_similarities, clean_reference, modulated_scores, reweight, weights_from_scores
from phases.cli import ArgumentParser, HelpFormatter, positive_int, run_main, versions, write_json

PROG = "bench/surrogate.py"

BATCHES = ((128, 32), (128, 128), (256, 256))
SIMILARITY_SIZES = ((10000, 1000, 64, 10), (49000, 1000, 128, 10), (20000, 4000, 256, 10))
SECTIONS = ("weighting", "similarities", "cleanlab", "memory")
#: The reference setup (docs/theory.md section 6): clean subset and training set, for the amortised per-epoch cost.
REFERENCE_M, REFERENCE_N = 2000, 45000
MEMORY_SIZE = (50_000, 1000, 512, 10)  # n, m, D, C


def _time(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _interleaved(contenders: dict, repeats: int, context: dict | None = None) -> dict[str, list[float]]:
    """Seconds of every contender in each of ``repeats`` rounds; within a round the contenders run one after the
    other, in an order rotated every round (so a change of load hits them alike).

    Rotation keeps the cyclic order, so each contender would always follow the same one; a call of a few hundred
    microseconds costs up to twice as much after a training step as after a light call (cold caches). So
    ``context[key]``, when given, runs untimed just before every call of ``key``: what precedes it in training.
    """
    keys = list(contenders)
    context = context or {}
    times = {key: [] for key in keys}
    for round_ in range(repeats):
        shift = round_ % len(keys)
        for key in keys[shift:] + keys[:shift]:
            if key in context:
                context[key]()
            times[key].append(_time(contenders[key]))
    return times


def _timed(fn):
    """``(result, wall seconds, CPU seconds of this process)``."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def _peak_bytes(fn) -> int:
    """tracemalloc's peak over ``fn()``: what it allocates beyond what exists before, its outputs included."""
    gc.collect()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _cleanlab():
    """``cleanlab`` (its ``filter`` and ``rank`` modules loaded), or None when it is not installed."""
    try:
        importlib.import_module("cleanlab.filter")
        importlib.import_module("cleanlab.rank")
    except ImportError:
        return None
    return sys.modules["cleanlab"]


def _networks(seed: int):
    generator = torch.Generator().manual_seed(seed)
    return {
        "SmallCNN(width=0.5), 32x32 images": (SmallCNN(10, width=0.5, generator=generator), (3, 32, 32), 10),
        "MLP(256, 256), d=32": (FeatureMLP(32, 4, hidden=(256, 256), generator=generator), (32,), 4),
    }


# ----------------------------------------------------------------------------- 1. weighting cost at equal batch


def _clean_epoch_seconds(model, input_shape, C, repeats, generator) -> float:
    """Median seconds of the per-epoch clean side at the reference's m: features and class directions."""
    x_clean = torch.randn(REFERENCE_M, *input_shape, generator=generator)
    y_clean = (torch.arange(REFERENCE_M) % C).numpy()
    times = [_time(lambda: clean_reference(y_clean, clean_subset_features(model, x_clean)))
             for _ in range(max(3, repeats // 2))]
    return statistics.median(times)


def bench_weighting(repeats: int, seed: int) -> list[dict]:
    rows = []
    for name, (model, input_shape, C) in _networks(seed).items():
        generator = torch.Generator().manual_seed(seed + 1)
        optimiser = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        model.train()
        clean_epoch_s = _clean_epoch_seconds(model, input_shape, C, repeats, generator)
        for b, b_m in BATCHES:
            x = torch.randn(b, *input_shape, generator=generator)
            y = torch.randint(0, C, (b,), generator=generator)
            x_meta = torch.randn(b_m, *input_shape, generator=generator)
            y_meta = torch.arange(b_m) % C  # every class in the clean batch, as reweight requires
            w = torch.full((b,), 0.5)
            lr, beta, clean_weight = 0.05, 1.0, b_m / b
            # Once per epoch in training (here: of the clean batch, so both passes weight against the same set).
            reference = clean_reference(y_meta.numpy(), clean_subset_features(model, x_meta))

            def surrogate_pass():
                return surrogate_batch_weights(model, x, y, reference, alpha0=0.0)

            step_features = []  # what the training step's forward computed, with its graph

            def step_forward():  # a model update, then the next step's forward (untimed context)
                erm_step()
                step_features[:] = [model.features(x)]

            def surrogate_on_step_features():
                return surrogate_batch_weights(model, x, y, reference, alpha0=0.0, batch_features=step_features[0])

            def surrogate_with_clean_batch():
                return surrogate_weights(model, x, y, x_meta, y_meta, C, alpha0=0.0)

            def forward():
                return penultimate_features(model, x)

            def meta_weights():
                grad_w, _ = meta_weight_gradient(model, x, y, w, x_meta, y_meta, lr=lr, clean_weight=clean_weight)
                return (w - beta * b / lr * grad_w).clamp(0, 1)

            def full_meta_step():
                return meta_step(model, optimiser, x, y, w, x_meta, y_meta, lr=lr, clean_weight=clean_weight,
                                 beta=beta)

            def erm_step():
                optimiser.zero_grad(set_to_none=True)
                (F.cross_entropy(model(x), y) + clean_weight * F.cross_entropy(model(x_meta), y_meta)).backward()
                optimiser.step()

            contenders = {"surrogate": surrogate_pass, "surrogate_clean_batch": surrogate_with_clean_batch,
                          "forward": forward, "meta_weights": meta_weights, "meta_step": full_meta_step,
                          "erm": erm_step}
            fused = mode_free(model)
            if fused:
                contenders["surrogate_step_features"] = surrogate_on_step_features
                step_forward()
                assert torch.equal(surrogate_on_step_features(), surrogate_pass())
            for fn in contenders.values():  # warm-up: allocator, oneDNN primitives
                fn()
            # The clean side built once gives the weights of recomputing it with every batch, bit for bit.
            meta_features = clean_subset_features(model, x_meta)
            assert torch.equal(surrogate_batch_weights(model, x, y, clean_reference(y_meta.numpy(), meta_features),
                                                       alpha0=0.0),
                               surrogate_batch_weights(model, x, y, meta_features, y_meta, alpha0=0.0))
            # As in training: a surrogate pass (and the forward that bounds it) follows a model update, a meta
            # step the meta step before.
            context = {"surrogate": erm_step, "surrogate_clean_batch": erm_step, "forward": erm_step,
                       "meta_weights": full_meta_step, "meta_step": full_meta_step, "erm": erm_step,
                       "surrogate_step_features": step_forward}
            times = _interleaved(contenders, repeats, context)
            amortised = clean_epoch_s * b / REFERENCE_N
            per_round = {
                "meta_step_over_surrogate": [s / (p + amortised) for s, p in zip(times["meta_step"],
                                                                                  times["surrogate"])],
                "meta_step_over_surrogate_clean_batch": [s / p for s, p in zip(times["meta_step"],
                                                                               times["surrogate_clean_batch"])],
                "meta_weights_over_surrogate": [s / (p + amortised) for s, p in zip(times["meta_weights"],
                                                                                     times["surrogate"])],
                "meta_step_over_forward": [s / f for s, f in zip(times["meta_step"], times["forward"])],
                "meta_step_over_surrogate_step": [s / (p + amortised + e) for s, p, e in
                                                  zip(times["meta_step"], times["surrogate"], times["erm"])],
                "meta_step_over_erm": [s / e for s, e in zip(times["meta_step"], times["erm"])],
                "forward_share_of_surrogate": [f / p for f, p in zip(times["forward"], times["surrogate"])],
            }
            if fused:
                per_round["meta_step_over_surrogate_step_features"] = [
                    s / (p + amortised) for s, p in zip(times["meta_step"], times["surrogate_step_features"])]
            rows.append({
                "network": name, "b": b, "b_m": b_m, "surrogate_step_features_s": None,
                "meta_step_over_surrogate_step_features": None,
                **{f"{key}_s": statistics.median(values) for key, values in times.items()},
                "clean_epoch_s": clean_epoch_s, "clean_amortised_s": amortised,
                **{key: statistics.median(values) for key, values in per_round.items()},
                "per_round": per_round, "times": times,
            })
            print(f"  {name}, b={b}, b_m={b_m}: meta step / surrogate pass = "
                  f"{rows[-1]['meta_step_over_surrogate']:.1f} (with the clean batch: "
                  f"{rows[-1]['meta_step_over_surrogate_clean_batch']:.1f})", file=sys.stderr, flush=True)
    return rows


# ----------------------------------------------------------------------------- 2. class similarities


def bench_similarities(repeats: int, seed: int) -> list[dict]:
    rows = []
    rng = np.random.default_rng(seed)
    for n, m, D, C in SIMILARITY_SIZES:
        features = rng.standard_normal((n, D))
        meta_features = rng.standard_normal((m, D))
        meta_labels = np.arange(m) % C

        def fast():
            return class_similarities(features, meta_labels, meta_features, C)

        def explicit():
            return class_similarities(features, meta_labels, meta_features, C, kernel=lambda a, b: a @ b.T)

        S_fast, S_explicit = fast(), explicit()
        error = float(np.max(np.abs(S_fast - S_explicit)) / np.max(np.abs(S_explicit)))
        assert error < 1e-8, f"the O(n D C) path disagrees with the (n, m) matrix by {error:.2e}"
        times = _interleaved({"ndc": fast, "nm": explicit}, repeats)
        rows.append({"n": n, "m": m, "D": D, "C": C, "ndc_s": statistics.median(times["ndc"]),
                     "nm_s": statistics.median(times["nm"]),
                     "nm_over_ndc": statistics.median([a / b for a, b in zip(times["nm"], times["ndc"])]),
                     "max_relative_difference": error, "nm_matrix_mb": n * m * 8 / 2 ** 20,
                     "block_matrix_mb": min(n, 1024) * m * 8 / 2 ** 20, "times": times})
        print(f"  n={n}, m={m}, D={D}: (n, m) / O(nDC) = {rows[-1]['nm_over_ndc']:.1f}", file=sys.stderr, flush=True)
    return rows


# ----------------------------------------------------------------------------- 3. detection against cleanlab


def _detection(flagged: np.ndarray, score: np.ndarray, noisy: np.ndarray) -> dict:
    """Flagged set as a detector of noisy labels (precision, recall, F1); AUC of ``score`` (higher = cleaner)."""
    from sklearn.metrics import roc_auc_score

    hits = int(np.count_nonzero(flagged & noisy))
    precision = hits / max(int(flagged.sum()), 1)
    recall = hits / max(int(noisy.sum()), 1)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"flagged": float(flagged.mean()), "precision": precision, "recall": recall, "f1": f1,
            "auc": float(roc_auc_score(noisy, -score))}


def _detection_problems(seed: int, cleanlab_n: int, data_dir):
    """``(name, X, y_noisy, X_meta, y_meta, noisy, note)`` for each problem available offline."""
    from dynamics.problem import digits

    problem = digits(np.random.default_rng(seed), n=1400, m=200, noise_rate=0.4)
    yield ("digits, 40% symmetric noise", problem.X, problem.y_noisy, problem.X_meta, problem.y_meta,
           problem.noisy, "n = 1400, m = 200, D = 64")
    from pathlib import Path

    from dynamics.cifar import DEFAULT_DATA_DIR, DataError, _label_file, load_cifar10n_labels, verify_checksums
    from dynamics.embeddings import cifar10_embeddings, cifar10n_feature_problem, make_extractor

    data_dir = Path(DEFAULT_DATA_DIR if data_dir is None else data_dir)
    try:
        label_file = _label_file(data_dir)
        verify_checksums(data_dir, [label_file])
        labels = load_cifar10n_labels(data_dir / label_file)
        extractor = make_extractor()
        # Only a cache hit is used: extracting the 60,000 embeddings takes about half an hour.
        embeddings = cifar10_embeddings(extractor, data_dir=data_dir, progress=_refuse_extraction)
    except (DataError, OSError, ValueError, RuntimeError, ImportError) as error:
        print(f"  CIFAR-10N skipped: {str(error).splitlines()[0]}", file=sys.stderr, flush=True)
        return
    rng = np.random.default_rng(seed)
    problem, _, _ = cifar10n_feature_problem("worse", embeddings, labels, rng, p=1000)
    total = len(problem.y_noisy)
    n = total if cleanlab_n == 0 else min(cleanlab_n, total)
    keep = np.sort(rng.choice(total, n, replace=False)) if n < total else np.arange(total)
    size = f"n = {n}" if n == total else f"n = {n} of {total} (uniform subsample)"
    yield ("CIFAR-10N worse, EfficientNet-Lite0 embeddings", problem.X[keep], problem.y_noisy[keep],
           problem.X_meta, problem.y_meta, problem.noisy[keep],
           f"{size}, m = {len(problem.y_meta)}, D = {problem.X.shape[1]}")


def _refuse_extraction(done: int, total: int) -> None:
    raise RuntimeError("the CIFAR-10 embeddings are not cached (python -m phases.simulate --dataset "
                       "cifar10n-worse builds the cache)")


def bench_detection(repeats: int, seed: int, cleanlab_n: int, folds: int, data_dir=None) -> list[dict]:
    cleanlab = _cleanlab()
    if cleanlab is None:
        print("  skipped: cleanlab is not installed (optional, AGPL-3.0): pip install -e \".[cleanlab]\"",
              file=sys.stderr, flush=True)
        return []
    from dynamics.methods.cleanlab import out_of_fold_probabilities

    rows = []
    for name, X, y, X_meta, y_meta, noisy, note in _detection_problems(seed, cleanlab_n, data_dir):
        C = int(max(y.max(), y_meta.max())) + 1
        row = {"problem": name, "note": note, "n": len(y), "D": X.shape[1], "noise_rate": float(noisy.mean())}
        for alpha0, key in ((None, "reweight"), (0.0, "reweight_alpha0_zero")):
            runs = [_timed(lambda: reweight(y, X, y_meta, X_meta, alpha0=alpha0)) for _ in range(repeats)]
            result = runs[0][0]
            row[key] = {"wall_s": statistics.median(r[1] for r in runs), "cpu_s": statistics.median(r[2] for r in runs),
                        **_detection(result.is_label_issue, result.score, noisy)}
        print(f"  {name}: cross-validated probabilities ({folds} folds) ...", file=sys.stderr, flush=True)
        pred_probs, cv_wall, cv_cpu = _timed(lambda: out_of_fold_probabilities(X, y, C, folds,
                                                                               np.random.default_rng(seed)))
        runs = [_timed(lambda: cleanlab.filter.find_label_issues(y, pred_probs, n_jobs=1)) for _ in range(repeats)]
        issues = np.asarray(runs[0][0], dtype=bool)
        quality = cleanlab.rank.get_label_quality_scores(y, pred_probs)
        find_wall, find_cpu = statistics.median(r[1] for r in runs), statistics.median(r[2] for r in runs)
        row["cleanlab"] = {"cross_val_wall_s": cv_wall, "cross_val_cpu_s": cv_cpu, "find_wall_s": find_wall,
                           "find_cpu_s": find_cpu, "wall_s": cv_wall + find_wall, "cpu_s": cv_cpu + find_cpu,
                           "folds": folds, **_detection(issues, quality, noisy)}
        rows.append(row)
        print(f"  {name}: F1 reweight {row['reweight']['f1']:.3f}, cleanlab {row['cleanlab']['f1']:.3f}",
              file=sys.stderr, flush=True)
    return rows


# ----------------------------------------------------------------------------- 4. time and memory at n = 50,000


def _centred_copy_reweight(labels, features, meta_labels, meta_features, C):
    """The plain formula: centre an ``(n, D)`` copy of the features, multiply, then the same score and rule."""
    class_means = np.stack([meta_features[meta_labels == k].mean(axis=0) for k in range(C)])
    mu = class_means.mean(axis=0)
    S = (features - mu) @ (class_means - mu).T
    return weights_from_scores(modulated_scores(S, labels, 1.0 / (C - 1))), S


def bench_memory(repeats: int, seed: int) -> list[dict]:
    n, m, D, C = MEMORY_SIZE
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((C, D))
    y_true, y_meta = rng.integers(0, C, n), np.arange(m) % C
    noisy = rng.random(n) < 0.4
    y = np.where(noisy, (y_true + rng.integers(1, C, n)) % C, y_true)
    X = means[y_true] + 2.0 * rng.standard_normal((n, D))
    X_meta = means[y_meta] + 2.0 * rng.standard_normal((m, D))
    X32, X_meta32 = X.astype(np.float32), X_meta.astype(np.float32)
    w_copy, S_copy = _centred_copy_reweight(y, X, y_meta, X_meta, C)
    result = reweight(y, X, y_meta, X_meta)
    error = float(np.max(np.abs(result.similarities - S_copy)) / np.max(np.abs(S_copy)))
    weight_difference = float(np.max(np.abs(result.weights - w_copy)))
    assert error < 1e-12 and weight_difference < 1e-9, (f"reweight and the centred-copy formula disagree: S by "
                                                        f"{error:.1e}, weights by {weight_difference:.1e}")
    del result, w_copy, S_copy
    contenders = {
        "reweight, float64 features": lambda: reweight(y, X, y_meta, X_meta),
        "reweight, float32 features": lambda: reweight(y, X32, y_meta, X_meta32),
        "plain formula with the centred (n, D) copy": lambda: _centred_copy_reweight(y, X, y_meta, X_meta, C),
    }
    cleanlab = _cleanlab()
    if cleanlab is None:
        print("  cleanlab's find_label_issues skipped: cleanlab is not installed", file=sys.stderr, flush=True)
    else:
        # Predicted probabilities of a synthetic classifier (the cost depends on n and C, hardly on the values).
        logits = rng.standard_normal((n, C))
        logits[np.arange(n), y_true] += 2.0
        pred_probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        pred_probs /= pred_probs.sum(axis=1, keepdims=True)
        contenders["cleanlab find_label_issues given pred_probs (n_jobs=1)"] = (
            lambda: cleanlab.filter.find_label_issues(y, pred_probs, n_jobs=1))
    for fn in contenders.values():
        fn()
    times = _interleaved(contenders, repeats)
    rows = []
    for key, fn in contenders.items():
        peak = _peak_bytes(fn)
        rows.append({"contender": key, "n": n, "m": m, "D": D, "C": C, "seconds": statistics.median(times[key]),
                     "peak_mb": peak / 1e6, "times": times[key]})
        print(f"  {key}: {rows[-1]['seconds']:.3f} s, peak {peak / 1e6:.1f} MB", file=sys.stderr, flush=True)
    inputs_mb = {"features float64": X.nbytes / 1e6, "features float32": X32.nbytes / 1e6}
    for row in rows:
        row |= {"inputs_mb": inputs_mb, "similarities_relative_difference": error,
                "weights_max_difference": weight_difference}
    return rows


# ----------------------------------------------------------------------------- the command


def section_list(text: str) -> tuple[str, ...]:
    chosen = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [part for part in chosen if part not in SECTIONS]
    if unknown or not chosen:
        raise ValueError(f"sections must be a comma-separated subset of {','.join(SECTIONS)}, got {text!r}")
    return chosen


def _print_weighting(rows):
    print("Weighting cost at equal batch (median seconds over rounds; ratios: median of per-round ratios):")
    print(f"{'network':34s} {'b':>4s} {'b_m':>4s} {'surr':>7s} {'+clean':>7s} {'fwd':>7s} {'meta w':>7s} "
          f"{'meta':>7s} {'ERM':>7s} {'meta/surr':>9s} {'(+clean)':>8s} {'w/surr':>6s} {'meta/fwd':>8s} "
          f"{'meta/(surr+ERM)':>15s} {'step fts':>8s} {'meta/step fts':>13s}")
    for row in rows:
        print(f"{row['network']:34s} {row['b']:4d} {row['b_m']:4d} {row['surrogate_s']:7.4f} "
              f"{row['surrogate_clean_batch_s']:7.4f} {row['forward_s']:7.4f} {row['meta_weights_s']:7.4f} "
              f"{row['meta_step_s']:7.4f} {row['erm_s']:7.4f} {row['meta_step_over_surrogate']:9.1f} "
              f"{row['meta_step_over_surrogate_clean_batch']:8.1f} {row['meta_weights_over_surrogate']:6.1f} "
              f"{row['meta_step_over_forward']:8.1f} {row['meta_step_over_surrogate_step']:15.2f} "
              + (f"{row['surrogate_step_features_s']:8.5f} {row['meta_step_over_surrogate_step_features']:13.1f}"
                 if row["surrogate_step_features_s"] is not None else f"{'n/a':>8s} {'n/a':>13s}"))
    print("surr: surrogate pass per batch (batch features + weights against the epoch's CleanReference; its per-epoch "
          "cost at m = 2000 is added amortised over 45,000 / b batches in every ratio); +clean: the same with the "
          "clean batch's features and class means recomputed every batch; fwd: the batch's eval-mode forward alone "
          "(meta/fwd bounds meta/surr); meta w: look-ahead + meta-gradient + clip; meta: the full step of "
          "docs/theory.md section 2 (that and the model update), as trained; meta/(surr+ERM): against a "
          "surrogate-weighted training step; step fts: the surrogate pass on the features the training step's own "
          "forward computed, i.e. its scoring alone (mode-free networks only: n/a with BatchNorm).")


def _print_detection(rows):
    print("Detection on the same features: reweight() against cleanlab's cross-validated pipeline "
          "(noisy-label detection; AUC of the score):")
    print(f"{'problem / detector':52s} {'wall s':>8s} {'CPU s':>8s} {'flagged':>8s} {'prec.':>6s} {'recall':>6s} "
          f"{'F1':>6s} {'AUC':>6s}")
    for row in rows:
        print(f"{row['problem']} ({row['note']}; noise {row['noise_rate']:.3f})")
        lab = row["cleanlab"]
        for key, label in (("reweight", "  reweight(), alpha0 = 1/(C-1)"), ("reweight_alpha0_zero",
                                                                           "  reweight(), alpha0 = 0"),
                           ("cleanlab", f"  cleanlab: {lab['folds']}-fold LR + find_label_issues")):
            entry = row[key]
            print(f"{label:52s} {entry['wall_s']:8.3f} {entry['cpu_s']:8.3f} {entry['flagged']:8.3f} "
                  f"{entry['precision']:6.3f} {entry['recall']:6.3f} {entry['f1']:6.3f} {entry['auc']:6.3f}")
        print(f"{'    of which cross_val_predict':52s} {lab['cross_val_wall_s']:8.3f} {lab['cross_val_cpu_s']:8.3f}")
        print(f"{'    of which find_label_issues':52s} {lab['find_wall_s']:8.3f} {lab['find_cpu_s']:8.3f}")
        print(f"  cleanlab pipeline / reweight(): {lab['wall_s'] / row['reweight']['wall_s']:.0f}x wall, "
              f"{lab['cpu_s'] / max(row['reweight']['cpu_s'], 1e-9):.0f}x CPU")


def _print_memory(rows):
    n, m, D, C = MEMORY_SIZE
    inputs = rows[0]["inputs_mb"]
    print(f"Time and peak memory beyond the inputs at n = {n}, D = {D}, C = {C}, m = {m} (tracemalloc peak, "
          f"outputs included; inputs: {inputs['features float64']:.0f} MB of float64 features):")
    print(f"{'contender':58s} {'seconds':>8s} {'peak MB':>8s}")
    for row in rows:
        print(f"{row['contender']:58s} {row['seconds']:8.3f} {row['peak_mb']:8.1f}")


def run(argv=None) -> None:
    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    parser.add_argument("--out", default="bench/surrogate.json", help="JSON file for every number (written atomically)")
    parser.add_argument("--repeats", type=positive_int, default=7, help="timed rounds per contender (median reported)")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="torch / BLAS threads (1 is fastest on a shared 2-core machine)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the networks and the random inputs")
    parser.add_argument("--sections", type=section_list, default=",".join(SECTIONS),
                        help=f"comma-separated sections to run, of {','.join(SECTIONS)}")
    parser.add_argument("--cleanlab-n", type=int, default=0,
                        help="training examples of CIFAR-10N in section 3: a uniform subsample, or 0 for all 45,000 "
                             "(the cross-validated logistic regression then takes 1-3 minutes on one core)")
    parser.add_argument("--folds", type=positive_int, default=5, help="cross-validation folds of cleanlab's pipeline")
    parser.add_argument("--data-dir", default=None, help="the CIFAR-10 / CIFAR-10N data directory (default: "
                        "dynamics.cifar.DEFAULT_DATA_DIR)")
    args = parser.parse_args(argv)
    if args.cleanlab_n < 0:
        parser.error(f"--cleanlab-n must be >= 0, got {args.cleanlab_n}")
    torch.set_num_threads(args.threads)
    with contextlib.suppress(ImportError):
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)
    load_start = os.getloadavg()
    results = {}
    steps = {"weighting": lambda: bench_weighting(args.repeats, args.seed),
             "similarities": lambda: bench_similarities(args.repeats, args.seed),
             "cleanlab": lambda: bench_detection(args.repeats, args.seed, args.cleanlab_n, args.folds, args.data_dir),
             "memory": lambda: bench_memory(args.repeats, args.seed)}
    for number, section in enumerate(SECTIONS, 1):
        if section in args.sections:
            print(f"{number}. {section}", file=sys.stderr, flush=True)
            results[section] = steps[section]()
    payload = {"config": {**vars(args), "sections": list(args.sections)}, "versions": versions(),
               "load_average_start": load_start, "load_average_end": os.getloadavg(), **results}
    write_json(args.out, payload)

    if results.get("weighting"):
        print()
        _print_weighting(results["weighting"])
    if results.get("similarities"):
        print()
        print("Class similarities S (n, C): O(n D C) linear path against the explicit (n, m) kernel matrix:")
        print(f"{'n':>6s} {'m':>5s} {'D':>4s} {'C':>3s} {'O(nDC) s':>10s} {'(n, m) s':>10s} {'ratio':>7s} "
              f"{'rel. diff':>10s}")
        for row in results["similarities"]:
            print(f"{row['n']:6d} {row['m']:5d} {row['D']:4d} {row['C']:3d} {row['ndc_s']:10.4f} "
                  f"{row['nm_s']:10.4f} {row['nm_over_ndc']:7.1f} {row['max_relative_difference']:10.1e}")
    if "cleanlab" in results:
        print()
        if results["cleanlab"]:
            _print_detection(results["cleanlab"])
        else:
            print("Detection against cleanlab: skipped (cleanlab is not installed).")
    if results.get("memory"):
        print()
        _print_memory(results["memory"])
    print(f"\nload average {load_start[0]:.1f} at the start, {payload['load_average_end'][0]:.1f} at the end; "
          f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(run_main(PROG, run))

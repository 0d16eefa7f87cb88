"""The record every run returns (docs/theory.md section 3), saved compactly and loaded back."""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile

import numpy as np

# Per recorded step, shape (T,) or (T, n).
_SERIES = (
    "step", "w", "score", "residual_norm", "clean_loss", "coupling_norm",
    "train_loss_clean", "train_loss_noisy", "test_loss", "test_accuracy", "flip_rate",
)
# Stored as float32 (see Trajectory.save): under NAME + _DELTA, the byte planes of the differences along time of
# their bit patterns. Files of earlier versions hold the planes of the bit patterns themselves: the three high ones
# under NAME + _PLANES and the low one under NAME + _LOW_PLANE, or all four under NAME + _PLANES.
_FLOAT32 = ("w", "score", "residual_norm")
_DELTA = "_f32delta"
_PLANES = "_f32planes"
_LOW_PLANE = "_f32low"
# Once per run.
_STATIC = ("noisy", "label_similarity", "k_meta_norm", "outputs", "meta_outputs", "test_outputs")


@dataclasses.dataclass(frozen=True)
class Trajectory:
    """What one meta-reweighting run recorded, at steps ``step`` (docs/theory.md section 3).

    Row ``t`` describes the state *entering* step ``step[t]``: ``w[t]`` is the
    weight vector before that step's meta update (``w[0] = w0``), ``score[t]``
    the meta score computed from that state (so the weights move by
    ``clip(w + velocity)`` next), and the losses are those of the outputs at
    that state. The last row is the final state.

    Attributes
    ----------
    step : (T,) int64, the step index of each record.
    w : (T, n), per-example weights.
    score : (T, n), full-batch meta score ``s_i = <r_i, c_i>``; the raw weight
        velocity is ``(beta / m) * score`` (:attr:`velocity`).
    residual_norm : (T, n), ``||r_i||`` of each training example.
    clean_loss : (T,), ``L_meta`` at the clean-subset outputs (no look-ahead).
    coupling_norm : (T,), ``||R_meta_hat||_F`` (look-ahead clean residual).
    train_loss_clean, train_loss_noisy : (T,), mean training loss over clean /
        noisy examples against their observed labels (NaN when a group is empty).
    test_loss, test_accuracy : (T,).
    flip_rate : (T,), fraction of examples whose weight velocity changes sign
        under the C7 perturbation (mean over draws; NaN if not measured).
    noisy : (n,) bool, the noise mask (for scoring).
    label_similarity : (n,), ``a_i = sum_j k(x_i, x^v_j) <e(y_noisy_i), e(y_meta_j)>``.
    k_meta_norm : (n,), ``||k(x_i, X_meta)||_2`` (the C4 bound's kernel factor).
    outputs, meta_outputs, test_outputs : (n, C), (m, C), (p, C) final outputs.
    config : every resolved parameter of the run (JSON-serialisable).
    """

    step: np.ndarray
    w: np.ndarray
    score: np.ndarray
    residual_norm: np.ndarray
    clean_loss: np.ndarray
    coupling_norm: np.ndarray
    train_loss_clean: np.ndarray
    train_loss_noisy: np.ndarray
    test_loss: np.ndarray
    test_accuracy: np.ndarray
    flip_rate: np.ndarray
    noisy: np.ndarray
    label_similarity: np.ndarray
    k_meta_norm: np.ndarray
    outputs: np.ndarray
    meta_outputs: np.ndarray
    test_outputs: np.ndarray
    config: dict

    @property
    def velocity(self) -> np.ndarray:
        """(T, n) raw (unclipped) weight velocity ``(beta / m) * score``."""
        return self.config["beta"] / self.config["m"] * self.score

    @property
    def max_velocity(self) -> np.ndarray:
        """(T,) largest ``|velocity|`` over examples."""
        return np.abs(self.velocity).max(axis=1)

    def weight_stats(self) -> dict[str, np.ndarray]:
        """Per-record scores of ``w`` as a clean-vs-noisy detector (docs/theory.md section 3).

        Returns arrays of shape (T,): ``mean_w_clean``, ``mean_w_noisy``,
        ``frac_noisy_zero`` (noisy examples at ``w = 0``), ``frac_clean_zero``,
        ``frac_clean_one``, ``auc`` (of ``w`` as a clean score; NaN without both
        groups), ``precision`` and ``recall`` of ``{w > 0}`` as the clean set.
        Computed once per record (the AUC ranks every row) and cached.
        """
        if "_weight_stats" not in self.__dict__:
            object.__setattr__(self, "_weight_stats", weight_stats(self.w, self.noisy))
        return self.__dict__["_weight_stats"]

    def save(self, path) -> None:
        """Write ``path``: an npz archive (deflated members) that :meth:`load` reads back.

        Storage precision: the ``(T, n)`` series ``w``, ``score`` and
        ``residual_norm`` are stored as float32 (relative rounding <= 6e-8),
        everything else as computed. The dynamics run in float64; a run's
        summary, phases and claims come from the in-memory float64 record, so
        the rounding touches only what is read back later (figures, reloaded
        runs). Rounding keeps the sets that phases are read from: a weight
        that is exactly 0 or 1 stays so, and one strictly between stays
        strictly between (it is moved to the nearest float32 inside (0, 1)).

        Why: float64 series carry 4-5 bytes of entropy per value in their low
        mantissa bits, so the default run's 48 MB of series compress only to
        36 MB losslessly. Each float32 series is stored as uint8 ``(4, n, T)``
        under ``NAME_f32delta``: the bit patterns of each example's values,
        read as int32, differenced along time (the first value kept; the
        differences wrap modulo 2^32, so the cumulative sum restores every bit),
        then split into byte planes (the shuffle filter of HDF5 and Blosc: plane
        ``k`` holds byte ``k`` of every difference). A series that moves slowly
        changes its sign, exponent and high mantissa bits rarely, so the high
        planes are nearly all zeros, and fast deflate (level 1) takes the
        default run's series to 6.7 MB in 0.2 s; the planes of the values
        themselves took 7.7 MB and 0.8 s with bzip2 (the previous layout, which
        still loads, as does the one before it). Every other field is a plain
        array. Not atomic on its own: the commands write into a staging
        directory that :class:`phases.cli.OutputDirectory` publishes whole.
        """
        with open(path, "wb") as handle:
            handle.write(self.archive())

    def archive(self) -> bytes:
        """The bytes :meth:`save` writes (about 0.2 s for the default run; zlib releases the GIL, so a thread can
        do it beside other work)."""
        arrays = {name: np.asarray(getattr(self, name)) for name in _SERIES + _STATIC if name not in _FLOAT32}
        for name in _FLOAT32:
            arrays[f"{name}{_DELTA}"] = _delta_planes(getattr(self, name), exact_ends=name == "w")
        arrays["config"] = np.array(json.dumps(self.config, sort_keys=True))
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
            for name, array in arrays.items():
                with archive.open(f"{name}.npy", "w", force_zip64=True) as handle:
                    np.lib.format.write_array(handle, array, allow_pickle=False)
        return buffer.getvalue()

    @classmethod
    def load(cls, path) -> Trajectory:
        """Read a file written by :meth:`save` (this version: float32 series, read back as float64; earlier
        versions: every field a plain float64 array).

        Raises ``ValueError`` naming the file and the problem when it is not such a file (unreadable, a key
        missing, arrays of inconsistent shapes, a configuration that is not JSON).
        """
        try:
            with np.load(path, allow_pickle=False) as data:
                missing = [name for name in (*_SERIES, *_STATIC, "config") if name not in data.files
                           and not {f"{name}{_DELTA}", f"{name}{_PLANES}"} & set(data.files)]
                if missing:
                    raise ValueError(f"lacks {', '.join(missing[:5])}")
                fields = {name: _field(data, name) for name in _SERIES + _STATIC}
                config = json.loads(str(data["config"]))
        except (OSError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as error:
            raise ValueError(f"{path} is not a saved trajectory: {' '.join(str(error).split())[:200]}") from None
        except ValueError as error:
            raise ValueError(f"{path} is not a saved trajectory: {' '.join(str(error).split())[:200]}") from None
        T, n = fields["w"].shape if fields["w"].ndim == 2 else (None, None)
        shapes = {"step": (T,), "score": (T, n), "residual_norm": (T, n), "clean_loss": (T,), "noisy": (n,),
                  "label_similarity": (n,), "k_meta_norm": (n,)}
        wrong = [name for name, shape in shapes.items() if T is None or fields[name].shape != shape]
        if wrong or not isinstance(config, dict):
            raise ValueError(f"{path} is not a saved trajectory: inconsistent arrays "
                             f"({', '.join(wrong) or 'config'}) for w of shape {fields['w'].shape}")
        return cls(**fields, config=config)


def _float32(series, exact_ends: bool) -> np.ndarray:
    """``(T, n)`` values -> ``(n, T)`` little-endian float32, each example's values contiguous.

    ``exact_ends``: values strictly inside (0, 1) stay strictly inside (float32 would round 1 - 1e-9 up to 1 and
    1e-50 down to 0, changing which weights count as saturated).
    """
    series = np.asarray(series, dtype=np.float64)
    single = series.astype("<f4")
    if exact_ends:
        inside = (series > 0) & (series < 1)
        single = np.where(inside & (single == 0), np.float32(np.finfo(np.float32).smallest_subnormal), single)
        single = np.where(inside & (single == 1), np.nextafter(np.float32(1), np.float32(0)), single).astype("<f4")
    return np.ascontiguousarray(single.T)


def _delta_planes(series, exact_ends: bool) -> np.ndarray:
    """``(T, n)`` values -> ``(4, n, T)`` uint8: the byte planes of the int32 differences along time of their
    float32 bit patterns (:func:`_float32`; the first value's pattern itself). The differences wrap modulo 2^32."""
    bits = _float32(series, exact_ends).view("<i4")
    n, T = bits.shape
    delta = np.diff(bits, axis=1, prepend=np.zeros((n, 1), "<i4"))
    return np.ascontiguousarray(delta.view(np.uint8).reshape(n, T, 4).transpose(2, 0, 1))


def _words(planes: np.ndarray, dtype: str) -> np.ndarray:
    """``(4, n, T)`` uint8 byte planes -> ``(n, T)`` 4-byte little-endian words of ``dtype`` (``"<i4"``,
    ``"<f4"``), byte ``k`` of each from plane ``k``."""
    if planes.dtype != np.uint8 or planes.ndim != 3 or planes.shape[0] != 4:
        raise ValueError(f"byte planes of shape {planes.shape} and type {planes.dtype}")
    return np.ascontiguousarray(planes.transpose(1, 2, 0)).view(dtype)[..., 0]


def _field(data, name: str) -> np.ndarray:
    """Field ``name`` of an open npz file of any version; a float32 series comes back ``(T, n)`` float64."""
    if name in data.files:
        return np.ascontiguousarray(data[name])
    if f"{name}{_DELTA}" in data.files:
        single = np.cumsum(_words(data[f"{name}{_DELTA}"], "<i4"), axis=1, dtype="<i4").view("<f4")
    else:
        single = _words(_all_planes(data, name), "<f4")
    return np.ascontiguousarray(single.T, dtype=np.float64)


def _all_planes(data, name: str) -> np.ndarray:
    """The ``(4, n, T)`` byte planes of the values of series ``name`` in a file of the two previous layouts (the
    low plane stored apart, or with the others)."""
    planes = data[f"{name}{_PLANES}"]
    if f"{name}{_LOW_PLANE}" not in data.files:
        return planes
    low = data[f"{name}{_LOW_PLANE}"]
    if planes.ndim != 3 or low.shape != planes.shape[1:]:
        raise ValueError(f"byte planes of shapes {planes.shape} and {low.shape}")
    return np.concatenate([low[None], planes])


def weight_stats(w: np.ndarray, noisy: np.ndarray) -> dict[str, np.ndarray]:
    """Detection scores of weights ``w : (T, n)`` against the noise mask ``noisy : (n,)``."""
    w = np.atleast_2d(w)
    clean = ~noisy
    T = w.shape[0]
    nan = np.full(T, np.nan)

    def mean_over(mask, values):
        return values[:, mask].mean(axis=1) if mask.any() else nan

    kept = w > 0
    kept_count = kept.sum(axis=1)
    true_kept = (kept & clean).sum(axis=1)
    precision = np.where(kept_count > 0, true_kept / np.maximum(kept_count, 1), np.nan)
    recall = true_kept / clean.sum() if clean.any() else nan
    return {
        "mean_w_clean": mean_over(clean, w),
        "mean_w_noisy": mean_over(noisy, w),
        "frac_noisy_zero": mean_over(noisy, (w == 0).astype(float)),
        "frac_clean_zero": mean_over(clean, (w == 0).astype(float)),
        "frac_clean_one": mean_over(clean, (w == 1).astype(float)),
        "auc": _auc(w, clean),
        "precision": precision,
        "recall": recall,
    }


def _auc(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """(T,) ROC AUC of each row of ``scores`` (T, n) with ties counted as 1/2 (Mann-Whitney): for every positive
    entry, the negatives of its row below it plus half of those equal to it, counted by two binary searches in
    the row's sorted negatives (``O(n log n)`` per row, a quarter of the time of ranking every row)."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return np.full(scores.shape[0], np.nan)
    negatives, positives = np.sort(scores[:, ~positive], axis=1), scores[:, positive]
    twice_u = np.array([np.searchsorted(row, values, "left").sum() + np.searchsorted(row, values, "right").sum()
                        for row, values in zip(negatives, positives)], dtype=np.float64)
    return twice_u / (2.0 * n_pos * n_neg)

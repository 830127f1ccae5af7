"""Datasets as in-memory arrays, the validation split, and on-device batching and augmentation.

Two halves:

* Host side (NumPy): `load(config, seed)` reads MNIST, Fashion-MNIST or CIFAR-10 (through TFDS without
  TensorFlow, or from the original files, fetched into the data cache by `lth_jax.download` where
  they are nowhere local) or makes a synthetic dataset, holds out a validation split, normalises per
  channel, and returns a frozen `Dataset` of NumPy arrays. Every problem with the data raises
  `DatasetError`, whose message names the file or config field at fault and says how to get the data.
  Only source="auto" downloads, and only the original files, verified by their SHA-256; never TFDS
  (offline, a TFDS download retries for minutes).

* Device side (JAX, pure and jittable): `batch_indices` gives the example indices of a training step,
  `epoch_permutation` the whole order of an epoch, `augment` the CIFAR-10 flip-and-crop augmentation.
  They take explicit keys and hold no state, so they can run inside `lax.scan` under `jax.jit` and be
  `jax.vmap`ped over trials. The data order depends only on the key (and the step), never on the host.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gzip
import logging
import math
import os
import pickle
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lth_jax import download

__all__ = [
    "DatasetError",
    "DatasetInfo",
    "Dataset",
    "load",
    "epoch_permutation",
    "batch_indices",
    "augment",
    "needs_augmentation",
    "SYSTEM_DATA_DIRS",
    "DATA_ENV_VAR",
]


class DatasetError(ValueError):
    """A dataset cannot be loaded: missing or malformed files, a bad config field, an unprepared TFDS
    dataset. The message names the file or field at fault and how to get the data."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What was loaded and how it was normalised.

    Attributes:
      name: dataset name ("mnist", "fashion_mnist", "cifar10", or the synthetic dataset's name).
      source: "tfds", "files" or "synthetic": where the data came from (source="auto" resolves to
        "tfds" or "files"; downloaded files are read as "files").
      image_shape: (H, W, C) of one example.
      num_classes: labels lie in [0, num_classes).
      mean, std: per-channel statistics (of pixels scaled to [0, 1]; raw values for synthetic data)
        computed over the training part after the validation split; every split was transformed by
        (x - mean) / std. Undo with x * std + mean.
      location: where the data came from (folder read, TFDS data dir), for the record; "" if none.
    """

    name: str
    source: str
    image_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    location: str = ""


# eq=False: NumPy arrays have no single truth value, so a generated __eq__ would raise.
@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """All splits as read-only host arrays.

    Images are float32 [N, H, W, C], normalised per channel as recorded in `info`; labels are int32 [N].
    The validation split is held out of the source's training split; both keep the source's order.
    The test split is the source's test split in its original order.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    validation_images: np.ndarray
    validation_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    info: DatasetInfo


# ----------------------------------------------------------------------------------------------------
# Config

_SOURCES = ("auto", "tfds", "files", "synthetic")
# The real datasets this module knows: image shape and number of classes.
_KNOWN: dict[str, tuple[tuple[int, int, int], int]] = {
    "mnist": ((28, 28, 1), 10),
    "fashion_mnist": ((28, 28, 1), 10),
    "cifar10": ((32, 32, 3), 10),
}
_PRETTY = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "cifar10": "CIFAR-10"}
# Other spellings of a dataset's folder name (Debian installs Fashion-MNIST as "fashion-mnist").
_HYPHENATED = {"fashion_mnist": "fashion-mnist", "cifar10": "cifar-10"}

DATA_ENV_VAR = download.DATA_ENV_VAR
# Searched after the data cache (download.cache_dir(): $LTH_JAX_DATA, else the user's cache) when
# config.dataset.path is not set. A module constant so that tests (and unusual installs) can point
# it elsewhere.
SYSTEM_DATA_DIRS: tuple[str, ...] = ("/usr/share/datasets",)

_DEFAULTS: dict[str, Any] = {
    "name": None,
    "source": "auto",
    "path": None,
    "data_dir": None,
    "mirror": "",  # base URL of a mirror for source="auto"'s downloads; "" = the official locations
    "validation_size": 5000,
    "train_subset": None,  # None or 0: every training example kept after the validation hold-out
    # synthetic only
    "image_shape": None,  # None or (): the named dataset's shape if it is a known one, else 28x28x1
    "num_classes": 10,
    "train_size": 60000,
    "test_size": 10000,
    "noise": None,  # per-pixel noise std; None = chosen from the image size (see _synthetic)
}

# Independent NumPy streams derived from the seed, one per purpose.
_SPLIT_STREAM = 0
_SYNTHETIC_STREAM = 1


# Fields whose "" means "not set", as the experiment config writes them.
_EMPTY_IS_UNSET = ("path", "data_dir")


def _field(config: Any, field: str) -> Any:
    """config.<field> from a ConfigDict, a mapping or an attribute object; a missing or None field
    (or "" for a folder field) gets its default."""
    if isinstance(config, Mapping) or hasattr(config, "get"):
        value = config.get(field, None)
    else:
        value = getattr(config, field, None)
    if value is None or (field in _EMPTY_IS_UNSET and value == ""):
        return _DEFAULTS[field]
    return value


def _int_field(config: Any, field: str, minimum: int) -> int:
    value = _field(config, field)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DatasetError(
            f"config.dataset.{field} must be an integer >= {minimum}, got {value!r}."
        )
    return int(value)


# ----------------------------------------------------------------------------------------------------
# load


def load(config: Any, seed: int = 0) -> Dataset:
    """Load the dataset described by `config` (the `dataset` group of an experiment config).

    Args:
      config: an `ml_collections.ConfigDict`, a mapping, or an object with attributes. Fields:
        name: "mnist", "fashion_mnist", "cifar10" (any name for synthetic data).
        source: "auto" (default), "tfds", "files" or "synthetic". "auto" takes, in order: a
          prepared TFDS dataset (in data_dir, else TFDS's default; read only if prepared in the
          array_record format, and probed without TFDS's warnings), the files in the data cache or
          a system folder (as source="files" searches them), else downloads the official files
          into the data cache (`lth_jax.download.fetch`: verified by SHA-256, progress on stderr)
          and reads them. With `path` set, "auto" reads that folder as "files" does.
        path: folder holding the files (source="files"); None or "" searches the data cache
          (`lth_jax.download.cache_dir()`: $LTH_JAX_DATA, else ~/.cache/lth_jax/datasets or
          $XDG_CACHE_HOME/lth_jax/datasets) for <name>, then /usr/share/datasets/<name>, each also
          with the hyphenated name ("fashion-mnist").
        data_dir: TFDS data dir (source="tfds" or "auto"); None or "" uses TFDS's default.
        mirror: base URL the downloads of source="auto" come from ("" = the official locations;
          see `lth_jax.download.file_url` for the layout).
        validation_size: examples held out of the training split (default 5000; 0 allowed).
        train_subset: train on only the first N (in the source's order) of the examples left after
          the validation hold-out; None or 0 (default) keeps them all. The validation and test
          examples do not change with it.
        synthetic only: image_shape (default: the shape of the dataset `name` if it is a known
          one, e.g. 32x32x3 for "cifar10", else (28, 28, 1)), num_classes (10), train_size (60000),
          test_size (10000), noise (per-pixel std; default sqrt(H*W*C / 196)).
        Missing or None fields get these defaults; unknown fields are ignored.
      seed: non-negative int. Picks the validation split (and the synthetic data). The same
        (config, seed) and the same files give bit-identical arrays.

    Returns:
      A `Dataset`: float32 NHWC images normalised per channel with the training part's statistics,
      int32 labels. Host memory only; nothing is put on a device.

    Raises:
      DatasetError: unknown source or name, bad field, missing/malformed files, unprepared TFDS
        dataset, a split with 0 examples, labels out of range, validation_size >= the training
        split's size, train_subset larger than what is left of it, and (source="auto") a download
        that failed: unreachable (one line, within seconds: a refused or unresolvable connection
        is not retried), a checksum mismatch (nothing cached), an interrupted transfer (resumed
        by the next run).

    Only source="auto" downloads, and never through TFDS: an unprepared TFDS dataset raises at
    once instead of hanging offline.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DatasetError(f"seed must be a non-negative integer, got {seed!r}.")
    seed = int(seed)
    source = _field(config, "source")
    if source not in _SOURCES:
        raise DatasetError(
            f"config.dataset.source={source!r} is unknown; use one of {', '.join(_SOURCES)}."
        )
    name = _field(config, "name")
    validation_size = _int_field(config, "validation_size", 0)

    if source == "synthetic":
        name = "synthetic" if name is None else str(name)
        raw = _synthetic(config, seed)
        location = ""
    else:
        if name not in _KNOWN:
            raise DatasetError(
                f"config.dataset.name={name!r} is unknown for source={source!r}; use one of "
                f"{', '.join(_KNOWN)}, or config.dataset.source='synthetic' for made-up data."
            )
        if source == "tfds":
            raw, location = _load_tfds(name, _field(config, "data_dir"))
        elif source == "files":
            raw, location = _load_files(name, _field(config, "path"))
        else:
            raw, location, source = _load_auto(name, config)

    train_x, train_y, test_x, test_y, num_classes = raw
    n = len(train_y)
    if validation_size >= n:
        raise DatasetError(
            f"config.dataset.validation_size={validation_size} must be smaller than the "
            f"{n} examples of {name}'s training split."
        )
    # Hold out the validation examples by a seeded permutation; sorting keeps the source order inside
    # each part, so the data order during training comes only from the batching key.
    perm = np.random.default_rng([seed, _SPLIT_STREAM]).permutation(n)
    val_idx = np.sort(perm[:validation_size])
    train_idx = np.sort(perm[validation_size:])
    subset = _field(config, "train_subset") or 0
    if subset:
        subset = _int_field(config, "train_subset", 0)
        if subset > len(train_idx):
            raise DatasetError(
                f"config.dataset.train_subset={subset} is larger than the {len(train_idx)} training "
                f"examples of {name} left after the validation hold-out."
            )
        train_idx = train_idx[:subset]

    train_images = _to_float(train_x[train_idx])
    validation_images = _to_float(train_x[val_idx])
    test_images = _to_float(test_x)
    mean, std = _channel_stats(train_images)
    for images in (train_images, validation_images, test_images):
        _normalise_inplace(images, mean, std)

    info = DatasetInfo(
        name=name,
        source=source,
        image_shape=tuple(int(d) for d in train_x.shape[1:]),  # type: ignore[arg-type]
        num_classes=int(num_classes),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        location=location,
    )
    return Dataset(
        train_images=_frozen(train_images),
        train_labels=_frozen(train_y[train_idx].astype(np.int32)),
        validation_images=_frozen(validation_images),
        validation_labels=_frozen(train_y[val_idx].astype(np.int32)),
        test_images=_frozen(test_images),
        test_labels=_frozen(np.asarray(test_y, dtype=np.int32)),
        info=info,
    )


_Raw = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]


def _frozen(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)  # Dataset is frozen; so are its arrays
    return array


def _to_float(images: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [0, 1]; float data (synthetic) -> float32 copy."""
    if images.dtype == np.uint8:
        return np.divide(images, np.float32(255.0), dtype=np.float32)
    return np.array(images, dtype=np.float32)


def _channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (population) of float32 NHWC images, accumulated in float64 over
    chunks so that no full-size float64 copy is made (CIFAR-10 would need 1.2 GB)."""
    channels = images.shape[-1]
    flat = images.reshape(-1, channels)
    total = np.zeros(channels, np.float64)
    total_sq = np.zeros(channels, np.float64)
    chunk = 1 << 20
    for start in range(0, len(flat), chunk):
        part = flat[start : start + chunk].astype(np.float64)
        total += part.sum(axis=0)
        total_sq += np.square(part).sum(axis=0)
    count = max(len(flat), 1)
    mean = total / count
    var = np.maximum(total_sq / count - np.square(mean), 0.0)
    std = np.sqrt(var)
    # A constant channel would divide by zero; leave its scale alone instead.
    std = np.where(std > 1e-12, std, 1.0)
    return mean, std


def _normalise_inplace(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> None:
    images -= mean.astype(np.float32)
    images /= std.astype(np.float32)


def _check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)]
        raise DatasetError(
            f"{where}: labels must lie in [0, {num_classes}), found {int(bad[0])} "
            f"({bad.size} out of range)."
        )


# The original files of each dataset, as `source="files"` reads them.
_ORIGINAL_FILES = {
    "mnist": "the four IDX files {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]",
    "fashion_mnist": "the four IDX files {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]",
    "cifar10": "cifar-10-python.tar.gz extracted (its cifar-10-batches-py folder)",
}


def _how_to_get(name: str) -> str:
    """The ways to get dataset `name`: only those that give this dataset (Debian packages
    Fashion-MNIST alone, so only its message suggests apt-get)."""
    ways = []
    if name == "fashion_mnist":
        ways.append("Debian/Ubuntu: apt-get install dataset-fashion-mnist, then "
                    "--config.dataset.source=files (files land in /usr/share/datasets/fashion-mnist)")
    ways.append(f"{_ORIGINAL_FILES.get(name, 'the original files')}: --config.dataset.source=files "
                f"--config.dataset.path=FOLDER, or put them in ${DATA_ENV_VAR}/{name} (the data "
                f"cache, now {download.cache_dir() / name})")
    ways.append("TFDS: with internet, pip install 'lth_jax[tfds-prepare]' (TensorFlow) and prepare "
                f"it once: tfds build {name} --file_format=array_record [--data_dir=DIR], then "
                "--config.dataset.source=tfds [--config.dataset.data_dir=DIR]")
    ways.append("with internet: --config.dataset.source=auto downloads the original files into "
                "the data cache")
    ways.append("no data at all: --config.dataset.source=synthetic")
    return "How to get the data (this machine may be offline):\n" + ";\n".join(
        f"  - {way}" for way in ways) + "."


def _offline_ways(name: str) -> str:
    """`_how_to_get` in one line, for the error of a download that failed."""
    ways = []
    if name == "fashion_mnist":
        ways.append("apt-get install dataset-fashion-mnist")
    ways.append(f"{_ORIGINAL_FILES[name]} in {download.cache_dir() / name} (${DATA_ENV_VAR}/{name})")
    ways.append("--config.dataset.source=files --config.dataset.path=FOLDER")
    ways.append(f"tfds build {name} --file_format=array_record (pip install 'lth_jax[tfds-prepare]')")
    ways.append("--config.dataset.mirror=URL")
    return "; ".join(ways)


# ----------------------------------------------------------------------------------------------------
# source="auto": a prepared TFDS dataset, else local files, else a download


def _load_auto(name: str, config: Any) -> tuple[_Raw, str, str]:
    """(raw arrays, location, the source they came from: "tfds" or "files")."""
    path = _field(config, "path")
    if path is not None:  # the user said where the files are: nothing to search or fetch
        return (*_load_files(name, path), "files")
    data_dir = _field(config, "data_dir")
    if _tfds_prepared(name, data_dir):
        return (*_load_tfds(name, data_dir), "tfds")
    try:
        return (*_load_files(name, None), "files")
    except _FilesNotFound:
        pass  # malformed files raise on: a download must not hide (or overwrite) them
    folder = download.cache_dir() / name
    mirror = _field(config, "mirror")
    if not isinstance(mirror, str):
        raise DatasetError(f"config.dataset.mirror must be a URL string, got {mirror!r}.")
    try:
        download.fetch(name, folder, mirror=mirror)
    except download.UnreachableError as err:
        raise DatasetError(
            f"{_PRETTY[name]} is not on this machine and cannot be downloaded ({err}). "
            f"Other ways to get it: {_offline_ways(name)}."
        ) from None
    except download.DownloadError as err:
        raise DatasetError(f"{_PRETTY[name]} download failed: {err}") from None
    return (*_load_files(name, folder), "files")


def _tfds_root(data_dir: str | os.PathLike | None) -> Path:
    """The TFDS data dir that `tfds.data_source` reads: data_dir, else $TFDS_DATA_DIR, else
    ~/tensorflow_datasets (TFDS's own default, tensorflow_datasets.core.constants)."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    return Path(os.environ.get("TFDS_DATA_DIR") or Path.home() / "tensorflow_datasets")


def _tfds_prepared(name: str, data_dir: str | os.PathLike | None) -> bool:
    """Whether TFDS's current version of `name` is prepared in the array_record format (what
    `_load_tfds` reads) under the TFDS data dir. Looks at the files first, so that where nothing
    is prepared TFDS is not even imported (and prints nothing)."""
    folder = _tfds_root(data_dir) / name
    prepared = {
        version.name
        for version in (folder.iterdir() if folder.is_dir() else ())
        if (version / "dataset_info.json").is_file() and any(version.glob("*.array_record*"))
    }
    if not prepared:
        return False
    with _quiet_tfds():
        import tensorflow_datasets as tfds

        try:
            current = str(tfds.builder_cls(name).VERSION)
        except Exception:  # a TFDS without this builder: nothing it could read
            return False
    return current in prepared


@contextlib.contextmanager
def _quiet_tfds():
    """Keeps TFDS's absl warnings (e.g. "Variant folder ... has no dataset_info.json", printed
    while it looks for a dataset) off stderr: what they say, our own error says in its words."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        logger.setLevel(level)


# ----------------------------------------------------------------------------------------------------
# TFDS, read without TensorFlow


def _load_tfds(name: str, data_dir: str | None) -> tuple[_Raw, str]:
    """Read a *prepared* TFDS dataset through `tfds.data_source` (random-access ArrayRecord files,
    decoded with NumPy/PIL: no TensorFlow). Never downloads (download=False)."""
    # Imported here: it is slow to import and only this source needs it.
    import tensorflow_datasets as tfds

    image_shape, num_classes = _KNOWN[name]
    data_dir = None if data_dir is None else os.fspath(Path(data_dir).expanduser())
    try:
        with _quiet_tfds():
            train_source, test_source = tfds.data_source(
                name, split=["train", "test"], data_dir=data_dir, download=False
            )
            train_x, train_y = _read_tfds_split(train_source, name, "train", image_shape)
            test_x, test_y = _read_tfds_split(test_source, name, "test", image_shape)
    except DatasetError:
        raise
    except Exception as err:  # TFDS raises many types here; all mean "cannot read it"
        with _quiet_tfds():
            raise _tfds_error(tfds, name, data_dir, err) from err
    for labels, split in ((train_y, "train"), (test_y, "test")):
        _check_labels(labels, num_classes, f"TFDS {name} split {split!r}")
    location = data_dir or os.fspath(tfds.core.constants.DATA_DIR)
    return (train_x, train_y, test_x, test_y, num_classes), location


def _tfds_error(tfds: Any, name: str, data_dir: str | None, err: Exception) -> DatasetError:
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        prepared = builder.is_prepared()
        root, variant = os.fspath(builder.data_dir_root), os.fspath(builder.data_dir)
    except Exception:  # the builder itself failing is reported through `err` below
        prepared, root, variant = False, data_dir or "TFDS's default data dir", "?"
    if not prepared:
        what = (
            f"TFDS dataset {name!r} is not prepared in {root} (looked for {variant}); lth_jax does "
            "not download it (offline, a TFDS download hangs retrying)."
        )
    else:
        what = (
            f"TFDS dataset {name!r} is prepared in {variant} but could not be read. Reading without "
            "TensorFlow needs the array_record file format; TensorFlow prepares TFRecord by default: "
            f"re-prepare it with tfds build {name} --file_format=array_record."
        )
    return DatasetError(f"{what}\n{_how_to_get(name)}\n(TFDS said: {type(err).__name__}: {err})")


def _read_tfds_split(
    source: Any, name: str, split: str, image_shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """All examples of a TFDS data source as uint8 [N, H, W, C] images and int64 labels."""
    n = len(source)
    if n == 0:
        raise DatasetError(f"TFDS {name} split {split!r} has 0 examples: nothing to "
                           f"{'train' if split == 'train' else 'test'} on.")
    images = np.empty((n, *image_shape), np.uint8)
    labels = np.empty((n,), np.int64)
    read = _batched_reader(source)
    chunk = 4096  # batched reads let ArrayRecord fetch records in parallel
    for start in range(0, n, chunk):
        keys = list(range(start, min(n, start + chunk)))
        for i, example in zip(keys, read(keys)):
            image = np.asarray(example["image"])
            if image.shape != image_shape:
                raise DatasetError(
                    f"TFDS {name} split {split!r} example {i}: image shape {image.shape}, "
                    f"expected {image_shape}."
                )
            images[i] = image
            labels[i] = example["label"]
    return images, labels


def _batched_reader(source: Any) -> Callable[[list[int]], Sequence[Any]]:
    """`source.__getitems__` when it works, else one `source[i]` at a time (some data sources, and
    tfds.testing.mock_data in TFDS 4.9, have no working batched read)."""
    def one_by_one(keys: list[int]) -> Sequence[Any]:
        return [source[k] for k in keys]

    getitems = getattr(source, "__getitems__", None)
    if getitems is None or len(source) == 0:
        return one_by_one
    try:
        getitems([0])
    except (TypeError, NotImplementedError, AttributeError):
        return one_by_one
    return getitems


# ----------------------------------------------------------------------------------------------------
# Local files: MNIST-format IDX files and CIFAR-10 python batches

_IDX_STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_CIFAR_SUBDIR = "cifar-10-batches-py"
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = "test_batch"


def _candidate_dirs(name: str, path: str | os.PathLike | None) -> list[Path]:
    """Folders to search, in order: `path` alone if given, else the data cache, then the system
    folders."""
    if path is not None:
        return [Path(path).expanduser()]
    spellings = [name] + ([_HYPHENATED[name]] if name in _HYPHENATED else [])
    roots = [download.cache_dir()]
    roots.extend(Path(root) for root in SYSTEM_DATA_DIRS)
    return [root / spelling for root in roots for spelling in spellings]


def _load_files(name: str, path: str | os.PathLike | None) -> tuple[_Raw, str]:
    if name == "cifar10":
        return _load_cifar10(_candidate_dirs(name, path))
    return _load_idx_dataset(name, _candidate_dirs(name, path))


class _FilesNotFound(DatasetError):
    """No folder searched holds the dataset's files (as opposed to files there but malformed)."""


def _not_found(name: str, wanted: str, tried: list[str]) -> DatasetError:
    listing = "\n".join(f"  {line}" for line in tried)
    return _FilesNotFound(
        f"{_PRETTY[name]} files not found (source='files'). Looked for {wanted} in:\n{listing}\n"
        f"{_how_to_get(name)}"
    )


def _load_idx_dataset(name: str, dirs: list[Path]) -> tuple[_Raw, str]:
    tried = []
    for folder in dirs:
        if not folder.is_dir():
            tried.append(f"{folder} (no such folder)")
            continue
        files = {key: _idx_file(folder, stem) for key, stem in _IDX_STEMS.items()}
        missing = [_IDX_STEMS[key] + "[.gz]" for key, file in files.items() if file is None]
        if missing:
            tried.append(f"{folder} (missing {', '.join(missing)})")
            continue
        image_shape, num_classes = _KNOWN[name]
        splits = []
        for split in ("train", "test"):
            images_file, labels_file = files[f"{split}_images"], files[f"{split}_labels"]
            images = _read_idx(images_file, 3)
            if len(images) == 0:
                raise DatasetError(f"{images_file}: 0 images: the {split} split would be empty.")
            if images.shape[1:] != image_shape[:2]:
                raise DatasetError(
                    f"{images_file}: images are {images.shape[1]}x{images.shape[2]}, "
                    f"{_PRETTY[name]} has {image_shape[0]}x{image_shape[1]}."
                )
            labels = _read_idx(labels_file, 1)
            if len(labels) != len(images):
                raise DatasetError(
                    f"{labels_file}: {len(labels)} labels but {images_file} has "
                    f"{len(images)} images."
                )
            _check_labels(labels, num_classes, str(labels_file))
            splits += [images[..., None], labels]
        return (*splits, num_classes), os.fspath(folder)  # type: ignore[return-value]
    wanted = ", ".join(f"{stem}[.gz]" for stem in _IDX_STEMS.values())
    raise _not_found(name, wanted, tried)


def _idx_file(folder: Path, stem: str) -> Path | None:
    # Prefer the uncompressed file: nothing to decompress.
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes with `ndim` dimensions (gzipped if its name ends in .gz)."""
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError
        raise DatasetError(f"{path}: cannot read it ({type(err).__name__}: {err}).") from err
    if len(raw) < 4:
        raise DatasetError(f"{path}: truncated IDX file ({len(raw)} bytes, no header).")
    magic = int.from_bytes(raw[:4], "big")
    expected = 0x0800 | ndim  # 0x00 0x00, type 0x08 = unsigned byte, number of dimensions
    if magic != expected:
        kind = "image" if ndim == 3 else "label"
        raise DatasetError(
            f"{path}: wrong IDX magic number 0x{magic:08x}, expected 0x{expected:08x} "
            f"(unsigned bytes, {ndim} dimension{'s' if ndim > 1 else ''}: an MNIST-format "
            f"{kind} file)."
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated IDX file ({len(raw)} bytes, header needs {header}).")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    size = math.prod(dims)
    if len(raw) - header != size:
        problem = "truncated" if len(raw) - header < size else "has trailing bytes"
        raise DatasetError(
            f"{path}: {problem}: header says {'x'.join(map(str, dims))} = {size} bytes of data, "
            f"the file holds {len(raw) - header}."
        )
    return np.frombuffer(raw, np.uint8, count=size, offset=header).reshape(dims)


def _load_cifar10(dirs: list[Path]) -> tuple[_Raw, str]:
    tried = []
    names = (*_CIFAR_TRAIN, _CIFAR_TEST)
    for base in dirs:
        # Accept the batches folder itself or its parent (where cifar-10-python.tar.gz was extracted).
        for folder in (base, base / _CIFAR_SUBDIR):
            if not folder.is_dir():
                tried.append(f"{folder} (no such folder)")
                continue
            missing = [n for n in names if not (folder / n).is_file()]
            if missing:
                tried.append(f"{folder} (missing {', '.join(missing)})")
                continue
            train = [_read_cifar_batch(folder / n) for n in _CIFAR_TRAIN]
            test_x, test_y = _read_cifar_batch(folder / _CIFAR_TEST)
            train_x = np.concatenate([x for x, _ in train])
            train_y = np.concatenate([y for _, y in train])
            return (train_x, train_y, test_x, test_y, 10), os.fspath(folder)
    wanted = ", ".join(names) + f" (the {_CIFAR_SUBDIR} folder of cifar-10-python.tar.gz)"
    raise _not_found("cifar10", wanted, tried)


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR-10 batch holds (dicts, lists, bytes, NumPy uint8 arrays): a
    pickle can run arbitrary code, and a data folder is not trusted code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes pickled by Python 3 at protocol 2
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 batch")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            # Pickles from NumPy 1 name numpy.core, a deprecated alias in NumPy 2.
            module = "numpy._core." + module[len("numpy.core.") :]
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch -> uint8 [n, 32, 32, 3] images, int64 [n] labels."""
    try:
        with open(path, "rb") as f:
            # encoding="bytes": the original batches were pickled by Python 2 (keys are b"data"...).
            batch = _CifarUnpickler(f, encoding="bytes").load()
    except Exception as err:  # unpickling garbage raises almost anything
        raise DatasetError(
            f"{path}: not a CIFAR-10 python batch ({type(err).__name__}: {err})."
        ) from err
    if not isinstance(batch, dict):
        raise DatasetError(f"{path}: a CIFAR-10 batch is a pickled dict, got {type(batch).__name__}.")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise DatasetError(f"{path}: a CIFAR-10 batch needs keys b'data' and b'labels'.")
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DatasetError(
            f"{path}: b'data' must be uint8 [n, 3072], got {data.dtype} {list(data.shape)}."
        )
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as err:
        raise DatasetError(f"{path}: b'labels' is not a list of integers ({err}).") from err
    if labels.shape != (len(data),):
        raise DatasetError(
            f"{path}: {labels.size} labels for {len(data)} images (b'labels' must be a flat list)."
        )
    if len(data) == 0:
        raise DatasetError(f"{path}: 0 images: a CIFAR-10 batch holds 10000.")
    _check_labels(labels, 10, str(path))
    # Rows are channel-major 3x32x32 (all red, then green, then blue); we want NHWC.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


# ----------------------------------------------------------------------------------------------------
# Synthetic


def _synthetic(config: Any, seed: int) -> _Raw:
    """Each class has a fixed random prototype image (uniform in [0, 1)); an example is its class's
    prototype plus Gaussian noise. Nearest-prototype (a linear rule) is the best classifier; the
    default noise sqrt(D / 196) (D = H*W*C, i.e. 2.0 for 28x28x1) keeps its accuracy near 98% for
    any image size, so a linear model beats chance clearly but not trivially. Deterministic in
    (config, seed)."""
    shape = _field(config, "image_shape")
    if shape is None or (isinstance(shape, (tuple, list)) and len(shape) == 0):
        # Synthetic stand-in for a real dataset: the real one's shape (a CIFAR-10 config gets
        # 32x32x3 images, so its model and FLOPs are the real ones).
        shape = _KNOWN.get(str(_field(config, "name")), ((28, 28, 1), 10))[0]
    try:
        shape = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise DatasetError(
            f"config.dataset.image_shape must be (H, W, C) of positive ints, got "
            f"{_field(config, 'image_shape')!r}."
        )
    num_classes = _int_field(config, "num_classes", 2)
    train_size = _int_field(config, "train_size", 1)
    test_size = _int_field(config, "test_size", 1)
    dim = math.prod(shape)
    noise = _field(config, "noise")
    noise = math.sqrt(dim / 196.0) if noise is None else noise
    if not isinstance(noise, (int, float)) or isinstance(noise, bool) or noise < 0:
        raise DatasetError(f"config.dataset.noise must be a number >= 0, got {noise!r}.")

    rng = np.random.default_rng([seed, _SYNTHETIC_STREAM])
    prototypes = rng.random((num_classes, *shape), dtype=np.float32)

    def examples(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.permutation(np.arange(n) % num_classes)  # balanced classes
        images = rng.standard_normal((n, *shape), dtype=np.float32)
        images *= np.float32(noise)
        images += prototypes[labels]
        return images, labels

    train_x, train_y = examples(train_size)
    test_x, test_y = examples(test_size)
    return train_x, train_y, test_x, test_y, num_classes


# ----------------------------------------------------------------------------------------------------
# On-device batching
#
# The order of an epoch is a keyed pseudo-random permutation of [0, n) evaluated *pointwise*: a
# Feistel network on the smallest even number of bits covering n, with cycle-walking to stay below n.
# So a step costs O(batch_size), not O(n): `jax.random.permutation` of n = 55,000 inside a scanned
# train step sorts all n every step, which costs more than a LeNet step itself
# (docs/performance.md, "LeNet-300-100 on a CPU: one device per core").

_FEISTEL_ROUNDS = 8


def _check_static(num_examples: Any, batch_size: Any = None) -> None:
    def is_int(v: Any) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    if not is_int(num_examples):
        raise DatasetError(
            f"num_examples must be a static Python int (it fixes array shapes), got {num_examples!r}."
        )
    if num_examples < 1:
        raise DatasetError(f"num_examples must be >= 1, got {num_examples}.")
    if batch_size is None:
        return
    if not is_int(batch_size):
        raise DatasetError(f"batch_size must be a static Python int, got {batch_size!r}.")
    if not 1 <= batch_size <= num_examples:
        raise DatasetError(
            f"batch_size={batch_size} must be between 1 and the number of examples ({num_examples})."
        )


def _half_bits(num_examples: int) -> int:
    bits = max(2, (num_examples - 1).bit_length())
    return (bits + 1) // 2


def _round_keys(key: jax.Array, epoch: Any) -> jax.Array:
    return jax.random.bits(jax.random.fold_in(key, epoch), (_FEISTEL_ROUNDS,), jnp.uint32)


def _mix32(x: jax.Array) -> jax.Array:
    # MurmurHash3's 32-bit finaliser: full avalanche, uint32 arithmetic wraps.
    x = x ^ (x >> 16)
    x = x * np.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * np.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def _feistel(x: jax.Array, round_keys: jax.Array, half: int) -> jax.Array:
    """A bijection of [0, 2**(2*half)) (balanced Feistel network), elementwise on uint32."""
    mask = np.uint32((1 << half) - 1)
    left, right = x >> half, x & mask
    for i in range(_FEISTEL_ROUNDS):
        left, right = right, left ^ (_mix32(right ^ round_keys[i]) & mask)
    return (left << half) | right


# Jitted so that eager calls compile once per shape instead of dispatching op by op; inside an outer
# jit it is simply inlined.
@functools.partial(jax.jit, static_argnums=3)
def _permute(positions: jax.Array, key: jax.Array, epoch: Any, num_examples: int) -> jax.Array:
    """Entries `positions` of the epoch's permutation of [0, num_examples), as int32."""
    half = _half_bits(num_examples)
    round_keys = _round_keys(key, epoch)
    n = np.uint32(num_examples)
    y = _feistel(positions.astype(jnp.uint32), round_keys, half)

    # Cycle-walking: re-apply the bijection until the value falls in [0, n). The domain is < 4n, so
    # this takes few iterations, and it yields a bijection of [0, n).
    def outside(y: jax.Array) -> jax.Array:
        return jnp.any(y >= n)

    def walk(y: jax.Array) -> jax.Array:
        return jnp.where(y >= n, _feistel(y, round_keys, half), y)

    return lax.while_loop(outside, walk, y).astype(jnp.int32)


def epoch_permutation(key: jax.Array, epoch: int | jax.Array, num_examples: int) -> jax.Array:
    """The order of the training examples in epoch `epoch`: int32[num_examples], a permutation of
    [0, num_examples) determined only by (key, epoch).

    Pure and jittable; `key` (a typed or raw PRNG key) and `epoch` may be traced, `num_examples`
    must be a static Python int. Costs O(num_examples); a train step should use `batch_indices`,
    which evaluates only its own entries of this permutation.
    """
    _check_static(num_examples)
    positions = jnp.arange(num_examples, dtype=jnp.uint32)
    return _permute(positions, key, epoch, num_examples)


def batch_indices(
    key: jax.Array, step: int | jax.Array, num_examples: int, batch_size: int
) -> jax.Array:
    """Indices of the training examples in step `step`'s batch: int32[batch_size].

    Equal to `epoch_permutation(key, step // spe, num_examples)[(step % spe) * batch_size:][:batch_size]`
    with spe = num_examples // batch_size steps per epoch (an epoch's last partial batch is dropped),
    so every epoch visits each example at most once, and exactly once when batch_size divides
    num_examples. The data order depends only on `key`: the same key gives the same batches on any
    host, and different trials get different orders from different keys.

    Pure and jittable, O(batch_size) work: `step` and `key` may be traced (scan carry, vmap over
    keys); `num_examples` and `batch_size` must be static Python ints, checked here
    (batch_size > num_examples raises DatasetError).
    """
    _check_static(num_examples, batch_size)
    steps_per_epoch = num_examples // batch_size
    epoch = step // steps_per_epoch
    start = (step % steps_per_epoch) * batch_size
    positions = start + jnp.arange(batch_size, dtype=jnp.int32)
    return _permute(positions, key, epoch, num_examples)


# ----------------------------------------------------------------------------------------------------
# Augmentation

_CROP_PADDING = 4


def augment(key: jax.Array, images: jax.Array) -> jax.Array:
    """CIFAR-10 training augmentation of an NHWC batch: each image independently is mirrored
    left-right with probability 1/2, then zero-padded by 4 pixels on each side and cropped back to
    H x W at a uniformly random offset (each of 9 x 9 positions equally likely).

    Returns an array of the same shape and dtype. The padding is 0 in the array's units: with
    normalised images that is the mean colour. Pure, jittable and vmappable (vmap over keys and
    batches for trials); the same key and images give the same output.
    """
    images = jnp.asarray(images)
    if images.ndim != 4:
        raise DatasetError(f"augment expects an NHWC batch, got shape {images.shape}.")
    batch, height, width, channels = images.shape
    pad = _CROP_PADDING
    flip_key, crop_key = jax.random.split(key)
    flips = jax.random.bernoulli(flip_key, 0.5, (batch,))
    offsets = jax.random.randint(crop_key, (batch, 2), 0, 2 * pad + 1)
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

    def one(image: jax.Array, flip: jax.Array, offset: jax.Array) -> jax.Array:
        image = jnp.where(flip, image[:, ::-1, :], image)
        return lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, channels))

    return jax.vmap(one)(padded, flips, offsets)


def needs_augmentation(info: DatasetInfo) -> bool:
    """Whether the paper trains on this data with `augment`: CIFAR-10 and other 32x32 RGB data,
    not MNIST-like data."""
    return info.name == "cifar10" or tuple(info.image_shape) == (32, 32, 3)

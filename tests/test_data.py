"""Tests for lth_jax.data: loading (TFDS under mock_data, IDX and CIFAR-10 files the tests write,
synthetic), the validation split, normalisation, on-device batching and augmentation, and errors.

No network, no TensorFlow: TFDS is only ever mocked or pointed at an empty temp dir, with downloads
patched to fail loudly and a deadline so that a hang fails the test instead of stalling the suite.
"""

from __future__ import annotations

import contextlib
import gzip
import pickle
import signal
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lth_jax import data
from lth_jax.data import DatasetError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

# ----------------------------------------------------------------------------------------------------
# Helpers


class _Hung(BaseException):
    """Raised by the deadline; a BaseException so that no `except Exception` in the code under test
    can turn a hang into a passing DatasetError."""


class _DownloadAttempted(BaseException):
    """Raised if anything tries a TFDS download (BaseException for the same reason)."""


@contextlib.contextmanager
def _deadline(seconds: float):
    def on_alarm(signum, frame):
        raise _Hung(f"took longer than {seconds}s: offline this would hang")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    array = np.asarray(array, np.uint8)
    magic = (0x0800 | array.ndim) if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def _write(path: Path, payload: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload) if path.name.endswith(".gz") else payload)
    return path


def _write_mnist(folder: Path, *, n_train=40, n_test=12, gz=True, seed=0, shape=(28, 28)):
    """Random IDX files in MNIST layout; returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, (n_train,), dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, (n_test,), dtype=np.uint8),
    }
    for stem, array in arrays.items():
        _write(folder / (stem + (".gz" if gz else "")), _idx_bytes(array))
    return arrays


def _write_cifar(folder: Path, *, per_batch=6, n_test=8, seed=0):
    """Random CIFAR-10 python batches; returns ([(data, labels)] * 5, (test_data, test_labels))."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    batches = []
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        batch_data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"data": batch_data, b"labels": labels}, f)
        batches.append((batch_data, np.array(labels)))
    return batches[:5], batches[5]


def _pixels(images: np.ndarray, info: data.DatasetInfo) -> np.ndarray:
    """Undo the normalisation of real (uint8-sourced) data: back to uint8 pixel values."""
    x = images * np.asarray(info.std, np.float32) + np.asarray(info.mean, np.float32)
    return np.rint(x * 255.0).astype(np.uint8)


def _check_split_roundtrip(ds: data.Dataset, source_images: np.ndarray, source_labels: np.ndarray):
    """train and validation together are exactly the source's training split, each in source order."""
    position = {img.tobytes(): i for i, img in enumerate(source_images)}
    assert len(position) == len(source_images)  # random images: all distinct
    seen = []
    for images, labels in [(ds.train_images, ds.train_labels), (ds.validation_images, ds.validation_labels)]:
        pixels = _pixels(images, ds.info)
        where = [position[p.tobytes()] for p in pixels]
        assert where == sorted(where)
        np.testing.assert_array_equal(labels, source_labels[where])
        seen += where
    assert sorted(seen) == list(range(len(source_images)))


@pytest.fixture
def no_data_dirs(monkeypatch, tmp_path):
    """No $LTH_JAX_DATA, an empty user cache and an empty stand-in for /usr/share/datasets."""
    monkeypatch.delenv(data.DATA_ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    system = tmp_path / "system-datasets"
    monkeypatch.setattr(data, "SYSTEM_DATA_DIRS", (str(system),))
    return system


def _synthetic(**overrides):
    config = dict(name="toy", source="synthetic", image_shape=(8, 8, 1), num_classes=4,
                  train_size=60, test_size=20, validation_size=10)
    config.update(overrides)
    return config


# ----------------------------------------------------------------------------------------------------
# Files: IDX


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_idx_roundtrip(tmp_path, gz):
    arrays = _write_mnist(tmp_path / "mnist", gz=gz)
    ds = data.load({"name": "mnist", "source": "files", "path": str(tmp_path / "mnist"),
                    "validation_size": 7}, seed=3)
    assert ds.train_images.shape == (33, 28, 28, 1) and ds.validation_images.shape == (7, 28, 28, 1)
    assert ds.test_images.shape == (12, 28, 28, 1)
    for images, labels in [(ds.train_images, ds.train_labels), (ds.test_images, ds.test_labels)]:
        assert images.dtype == np.float32 and labels.dtype == np.int32
    # Test split: exact pixels, labels and order.
    np.testing.assert_array_equal(_pixels(ds.test_images, ds.info)[..., 0], arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(ds.test_labels, arrays["t10k-labels-idx1-ubyte"])
    _check_split_roundtrip(
        ds, arrays["train-images-idx3-ubyte"][..., None], arrays["train-labels-idx1-ubyte"]
    )
    info = ds.info
    assert (info.name, info.source, info.image_shape, info.num_classes) == ("mnist", "files", (28, 28, 1), 10)
    assert info.location == str(tmp_path / "mnist")
    assert not ds.train_images.flags.writeable


def test_normalisation_uses_training_part(tmp_path):
    _write_mnist(tmp_path / "m", n_train=60)
    ds = data.load({"name": "mnist", "source": "files", "path": tmp_path / "m", "validation_size": 20})
    train01 = _pixels(ds.train_images, ds.info).astype(np.float64) / 255.0
    np.testing.assert_allclose(ds.info.mean, [train01.mean()], rtol=1e-6)
    np.testing.assert_allclose(ds.info.std, [train01.std()], rtol=1e-6)
    assert abs(ds.train_images.mean()) < 1e-5 and abs(ds.train_images.std() - 1.0) < 1e-4


def test_files_search_order(tmp_path, no_data_dirs, monkeypatch):
    # Only the system dir, under Debian's hyphenated name.
    system_arrays = _write_mnist(no_data_dirs / "fashion-mnist", seed=1)
    config = {"name": "fashion_mnist", "source": "files", "validation_size": 0}
    ds = data.load(config)
    assert ds.info.location == str(no_data_dirs / "fashion-mnist")
    np.testing.assert_array_equal(ds.test_labels, system_arrays["t10k-labels-idx1-ubyte"])
    # $LTH_JAX_DATA comes first (underscore spelling here).
    env = tmp_path / "env"
    env_arrays = _write_mnist(env / "fashion_mnist", seed=2, gz=False)
    monkeypatch.setenv(data.DATA_ENV_VAR, str(env))
    ds = data.load(config)
    assert ds.info.location == str(env / "fashion_mnist")
    np.testing.assert_array_equal(ds.test_labels, env_arrays["t10k-labels-idx1-ubyte"])
    # An explicit path beats both.
    path_arrays = _write_mnist(tmp_path / "explicit", seed=3)
    ds = data.load({**config, "path": str(tmp_path / "explicit")})
    np.testing.assert_array_equal(ds.test_labels, path_arrays["t10k-labels-idx1-ubyte"])


def test_missing_files_lists_paths_and_remedy(tmp_path, no_data_dirs, monkeypatch):
    monkeypatch.setenv(data.DATA_ENV_VAR, str(tmp_path / "env"))
    partial = tmp_path / "env" / "fashion-mnist"
    _write(partial / "train-images-idx3-ubyte.gz", _idx_bytes(np.zeros((2, 28, 28))))
    with pytest.raises(DatasetError) as err:
        data.load({"name": "fashion_mnist", "source": "files"})
    message = str(err.value)
    for tried in [tmp_path / "env" / "fashion_mnist", partial, no_data_dirs / "fashion_mnist",
                  no_data_dirs / "fashion-mnist"]:
        assert str(tried) in message
    assert "t10k-labels-idx1-ubyte" in message  # what the partial folder lacks
    assert "apt-get install dataset-fashion-mnist" in message
    assert "--config.dataset.path" in message


def test_files_found_in_user_cache(tmp_path, no_data_dirs):
    # Without $LTH_JAX_DATA the data cache is $XDG_CACHE_HOME/lth_jax/datasets: where source="auto"
    # downloads, and where source="files" looks.
    cache = tmp_path / "xdg-cache" / "lth_jax" / "datasets" / "mnist"
    arrays = _write_mnist(cache)
    ds = data.load({"name": "mnist", "source": "files", "validation_size": 5, "path": ""})
    assert ds.info.location == str(cache)
    np.testing.assert_array_equal(ds.test_labels, arrays["t10k-labels-idx1-ubyte"])


def test_missing_explicit_path(tmp_path):
    with pytest.raises(DatasetError, match="--config.dataset.path=FOLDER") as err:
        data.load({"name": "mnist", "source": "files", "path": str(tmp_path / "nowhere")})
    assert str(tmp_path / "nowhere") in str(err.value)
    assert "apt-get" not in str(err.value) and "fashion" not in str(err.value)  # Debian has no MNIST


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_truncated_idx(tmp_path, gz):
    _write_mnist(tmp_path, gz=gz)
    stem = "t10k-images-idx3-ubyte" + (".gz" if gz else "")
    payload = (tmp_path / stem).read_bytes()
    (tmp_path / stem).write_bytes(payload[: len(payload) // 2])
    with pytest.raises(DatasetError, match=stem):
        data.load({"name": "mnist", "source": "files", "path": tmp_path, "validation_size": 5})


def test_idx_header_cut_short(tmp_path):
    _write_mnist(tmp_path, gz=False)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(3))[:6])
    with pytest.raises(DatasetError, match="train-labels-idx1-ubyte.*truncated"):
        data.load({"name": "mnist", "source": "files", "path": tmp_path, "validation_size": 5})


def test_wrong_idx_magic(tmp_path):
    arrays = _write_mnist(tmp_path)
    # A label file where an image file belongs: magic 0x801, not 0x803.
    _write(tmp_path / "train-images-idx3-ubyte.gz", _idx_bytes(arrays["train-labels-idx1-ubyte"]))
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte.gz: wrong IDX magic number 0x00000801"):
        data.load({"name": "mnist", "source": "files", "path": tmp_path, "validation_size": 5})


def test_wrong_idx_dims(tmp_path):
    _write_mnist(tmp_path, shape=(27, 28))
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.gz: images are 27x28"):
        data.load({"name": "mnist", "source": "files", "path": tmp_path, "validation_size": 5})


def test_idx_count_mismatch(tmp_path):
    _write_mnist(tmp_path)
    _write(tmp_path / "t10k-labels-idx1-ubyte.gz", _idx_bytes(np.zeros(5)))
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte.gz: 5 labels but"):
        data.load({"name": "mnist", "source": "files", "path": tmp_path, "validation_size": 5})


@pytest.mark.parametrize("split", ["train", "t10k"])
def test_idx_split_with_zero_examples(tmp_path, split):
    # A consistent header of 0 images (and 0 labels): refused, naming the file, on one line.
    _write_mnist(tmp_path)
    _write(tmp_path / f"{split}-images-idx3-ubyte.gz", _idx_bytes(np.zeros((0, 28, 28))))
    _write(tmp_path / f"{split}-labels-idx1-ubyte.gz", _idx_bytes(np.zeros(0)))
    with pytest.raises(DatasetError) as err:
        data.load({"name": "mnist", "source": "files", "path": tmp_path, "validation_size": 5})
    assert str(err.value) == (f"{tmp_path / f'{split}-images-idx3-ubyte.gz'}: 0 images: the "
                              f"{'train' if split == 'train' else 'test'} split would be empty.")


def test_idx_labels_out_of_range(tmp_path):
    arrays = _write_mnist(tmp_path)
    labels = arrays["train-labels-idx1-ubyte"].copy()
    labels[3] = 10
    _write(tmp_path / "train-labels-idx1-ubyte.gz", _idx_bytes(labels))
    with pytest.raises(DatasetError, match=r"train-labels-idx1-ubyte.gz: labels must lie in \[0, 10\)"):
        data.load({"name": "mnist", "source": "files", "path": tmp_path, "validation_size": 5})


# ----------------------------------------------------------------------------------------------------
# Files: CIFAR-10


def _cifar_reference(batch_data: np.ndarray) -> np.ndarray:
    """Row layout, written out: pixel (h, w) of channel c is row[c * 1024 + h * 32 + w]."""
    n = len(batch_data)
    out = np.empty((n, 32, 32, 3), np.uint8)
    for c in range(3):
        for h in range(32):
            out[:, h, :, c] = batch_data[:, c * 1024 + h * 32 : c * 1024 + h * 32 + 32]
    return out


@pytest.mark.parametrize("layout", ["parent", "batches_folder"])
def test_cifar_roundtrip(tmp_path, layout):
    train, (test_data, test_labels) = _write_cifar(tmp_path / "cifar10" / "cifar-10-batches-py")
    path = tmp_path / "cifar10" if layout == "parent" else tmp_path / "cifar10" / "cifar-10-batches-py"
    ds = data.load({"name": "cifar10", "source": "files", "path": str(path), "validation_size": 4})
    assert ds.train_images.shape == (26, 32, 32, 3) and ds.validation_images.shape == (4, 32, 32, 3)
    assert len(ds.info.mean) == 3 and len(ds.info.std) == 3
    np.testing.assert_array_equal(_pixels(ds.test_images, ds.info), _cifar_reference(test_data))
    np.testing.assert_array_equal(ds.test_labels, test_labels)
    train_images = _cifar_reference(np.concatenate([d for d, _ in train]))
    _check_split_roundtrip(ds, train_images, np.concatenate([l for _, l in train]))
    assert data.needs_augmentation(ds.info)


def test_cifar_found_via_env(tmp_path, no_data_dirs, monkeypatch):
    _write_cifar(tmp_path / "env" / "cifar10" / "cifar-10-batches-py")
    monkeypatch.setenv(data.DATA_ENV_VAR, str(tmp_path / "env"))
    ds = data.load({"name": "cifar10", "source": "files", "validation_size": 2})
    assert ds.info.location == str(tmp_path / "env" / "cifar10" / "cifar-10-batches-py")


class _NotAllowed:  # pickled by reference: a global the CIFAR unpickler must refuse
    pass


@pytest.mark.parametrize(
    "payload, match",
    [
        (b"this is not a pickle", "not a CIFAR-10 python batch"),
        (pickle.dumps([1, 2, 3]), "pickled dict"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}), "needs keys"),
        (pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}), r"uint8 \[n, 3072\]"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}), "1 labels for 2 images"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}), r"labels must lie in"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1], b"x": _NotAllowed()}),
         "not allowed"),
    ],
    ids=["garbage", "not_dict", "missing_labels", "wrong_shape", "count_mismatch", "label_range", "global"],
)
def test_malformed_cifar_batch(tmp_path, payload, match):
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar(folder)
    (folder / "data_batch_3").write_bytes(payload)
    with pytest.raises(DatasetError, match=match) as err:
        data.load({"name": "cifar10", "source": "files", "path": folder, "validation_size": 2})
    assert "data_batch_3" in str(err.value)


def test_cifar_batch_with_zero_examples(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar(folder)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((0, 3072), np.uint8), b"labels": []}, f)
    with pytest.raises(DatasetError) as err:
        data.load({"name": "cifar10", "source": "files", "path": folder, "validation_size": 2})
    assert str(err.value) == f"{folder / 'test_batch'}: 0 images: a CIFAR-10 batch holds 10000."


def test_cifar_missing_batch(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar(folder)
    (folder / "test_batch").unlink()
    with pytest.raises(DatasetError, match="missing test_batch"):
        data.load({"name": "cifar10", "source": "files", "path": tmp_path})


# ----------------------------------------------------------------------------------------------------
# TFDS (mocked; never TensorFlow, never the network)


@pytest.fixture
def no_tfds_download(monkeypatch):
    import tensorflow_datasets as tfds

    def refuse(*args, **kwargs):
        raise _DownloadAttempted("lth_jax.data must never download")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", refuse)
    return tfds


@pytest.mark.parametrize("name, shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_tfds_mock_roundtrip(tmp_path, no_tfds_download, name, shape):
    tfds = no_tfds_download
    with tfds.testing.mock_data(num_examples=20, policy=tfds.testing.MockPolicy.USE_CODE):
        with _deadline(60):
            ds = data.load({"name": name, "source": "tfds", "data_dir": str(tmp_path),
                            "validation_size": 5}, seed=1)
        source = tfds.data_source(name, split="test", data_dir=str(tmp_path), download=False)
        expected = [source[i] for i in range(len(source))]
    assert ds.info.source == "tfds" and ds.info.image_shape == shape
    assert ds.train_images.shape == (15, *shape) and ds.validation_images.shape == (5, *shape)
    np.testing.assert_array_equal(_pixels(ds.test_images, ds.info), np.stack([e["image"] for e in expected]))
    np.testing.assert_array_equal(ds.test_labels, [e["label"] for e in expected])
    assert ds.test_labels.dtype == np.int32
    assert "tensorflow" not in sys.modules  # read without TensorFlow


def test_tfds_not_prepared_fails_fast(tmp_path, no_tfds_download):
    start = time.monotonic()
    with _deadline(60), pytest.raises(DatasetError) as err:
        data.load({"name": "mnist", "source": "tfds", "data_dir": str(tmp_path)})
    assert time.monotonic() - start < 30
    message = str(err.value)
    assert "not prepared" in message and str(tmp_path) in message
    assert "lth_jax[tfds-prepare]" in message
    assert "apt-get" not in message  # only Fashion-MNIST's message names Debian's package
    assert "--config.dataset.path" in message


def test_tfds_split_with_zero_examples(tmp_path, no_tfds_download):
    tfds = no_tfds_download
    with tfds.testing.mock_data(num_examples=0, policy=tfds.testing.MockPolicy.USE_CODE):
        with _deadline(60), pytest.raises(DatasetError) as err:
            data.load({"name": "mnist", "source": "tfds", "data_dir": str(tmp_path),
                       "validation_size": 0})
    assert str(err.value) == "TFDS mnist split 'train' has 0 examples: nothing to train on."


def test_tfds_warnings_silenced(tmp_path, no_tfds_download, caplog):
    # TFDS logs "Variant folder ... has no dataset_info.json" (absl, to stderr) while it looks;
    # our error says it. (caplog sees every record that reaches a handler.)
    (tmp_path / "mnist" / "3.0.1").mkdir(parents=True)
    with _deadline(60), pytest.raises(DatasetError, match="not prepared"):
        data.load({"name": "mnist", "source": "tfds", "data_dir": str(tmp_path)})
    assert [r.getMessage() for r in caplog.records if r.levelno >= 30] == []


# ----------------------------------------------------------------------------------------------------
# Synthetic data, split, config errors


def test_split_sizes_and_determinism():
    ds = data.load(_synthetic(), seed=0)
    assert ds.train_images.shape == (50, 8, 8, 1) and ds.validation_images.shape == (10, 8, 8, 1)
    assert ds.test_images.shape == (20, 8, 8, 1) and ds.info.num_classes == 4
    again = data.load(_synthetic(), seed=0)
    for field in ["train_images", "train_labels", "validation_images", "validation_labels", "test_images"]:
        np.testing.assert_array_equal(getattr(ds, field), getattr(again, field))
    assert ds.info == again.info


def test_different_seed_different_split(tmp_path):
    _write_mnist(tmp_path, n_train=50)
    config = {"name": "mnist", "source": "files", "path": tmp_path, "validation_size": 10}
    a, b = data.load(config, seed=0), data.load(config, seed=1)
    assert not np.array_equal(_pixels(a.validation_images, a.info), _pixels(b.validation_images, b.info))
    np.testing.assert_array_equal(a.test_labels, b.test_labels)  # test split untouched by the seed


def test_validation_size_zero():
    ds = data.load(_synthetic(validation_size=0))
    assert ds.train_images.shape == (60, 8, 8, 1)
    assert ds.validation_images.shape == (0, 8, 8, 1) and ds.validation_labels.shape == (0,)
    assert ds.validation_images.dtype == np.float32 and ds.validation_labels.dtype == np.int32


def test_validation_size_too_big():
    with pytest.raises(DatasetError, match="validation_size=60"):
        data.load(_synthetic(validation_size=60))


def test_train_subset_is_the_first_examples_of_the_training_part(tmp_path):
    arrays = _write_mnist(tmp_path, n_train=50)
    config = {"name": "mnist", "source": "files", "path": tmp_path, "validation_size": 10}
    full = data.load(config, seed=3)
    for zero in (0, None):
        np.testing.assert_array_equal(data.load({**config, "train_subset": zero}, seed=3).train_images,
                                      full.train_images)
    part = data.load({**config, "train_subset": 15}, seed=3)
    assert part.train_images.shape == (15, 28, 28, 1) and part.train_labels.shape == (15,)
    # the first 15 of the 40 kept by the hold-out, in file order; their own normalisation
    np.testing.assert_array_equal(_pixels(part.train_images, part.info),
                                  _pixels(full.train_images, full.info)[:15])
    np.testing.assert_array_equal(part.train_labels, full.train_labels[:15])
    first = _pixels(part.train_images, part.info)[:, :, :, 0]
    rows = [int(np.flatnonzero((arrays["train-images-idx3-ubyte"] == img).all(axis=(1, 2)))[0])
            for img in first]
    assert rows == sorted(rows)
    expected_mean = arrays["train-images-idx3-ubyte"][rows].astype(np.float64).mean() / 255.0
    assert part.info.mean[0] == pytest.approx(expected_mean, rel=1e-5)
    # validation and test examples do not change
    np.testing.assert_array_equal(part.validation_labels, full.validation_labels)
    np.testing.assert_array_equal(part.test_labels, full.test_labels)
    np.testing.assert_array_equal(_pixels(part.validation_images, part.info),
                                  _pixels(full.validation_images, full.info))
    with pytest.raises(DatasetError, match="train_subset=41 is larger than the 40 training"):
        data.load({**config, "train_subset": 41}, seed=3)
    with pytest.raises(DatasetError, match="config.dataset.train_subset"):
        data.load({**config, "train_subset": -2}, seed=3)


def test_synthetic_is_learnable_but_not_trivial():
    ds = data.load(_synthetic(image_shape=(28, 28, 1), num_classes=10, train_size=2000,
                              test_size=1000, validation_size=0))
    flat = ds.train_images.reshape(len(ds.train_images), -1)
    centroids = np.stack([flat[ds.train_labels == k].mean(0) for k in range(10)])
    test = ds.test_images.reshape(len(ds.test_images), -1)
    predicted = np.argmin(((test[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
    accuracy = (predicted == ds.test_labels).mean()
    assert 0.6 < accuracy < 1.0  # a linear rule, far above the 0.1 of chance, yet makes mistakes


def test_config_dict_and_defaults():
    ml_collections = pytest.importorskip("ml_collections")
    config = ml_collections.ConfigDict(_synthetic())
    config.path = None  # None fields take their defaults
    ds = data.load(config, seed=2)
    assert ds.info.name == "toy" and ds.info.source == "synthetic"
    assert not data.needs_augmentation(ds.info)


@pytest.mark.parametrize(
    "config, match",
    [
        ({"name": "mnist", "source": "ftp"}, "config.dataset.source='ftp'"),
        ({"name": "imagenet", "source": "files"}, "config.dataset.name='imagenet'"),
        ({"name": "svhn"}, "config.dataset.name='svhn'"),
        ({**_synthetic(), "validation_size": -1}, "config.dataset.validation_size"),
        ({**_synthetic(), "image_shape": (8, 8)}, "config.dataset.image_shape"),
        ({**_synthetic(), "num_classes": 1}, "config.dataset.num_classes"),
    ],
)
def test_config_errors(config, match):
    with pytest.raises(DatasetError, match=match):
        data.load(config)


def test_bad_seed():
    with pytest.raises(DatasetError, match="seed"):
        data.load(_synthetic(), seed=-1)


# ----------------------------------------------------------------------------------------------------
# Batching


def test_batch_indices_cover_each_example_once_per_epoch():
    key = jax.random.key(0)
    n, batch = 100, 10
    for epoch in range(3):
        steps = range(epoch * 10, epoch * 10 + 10)
        seen = np.concatenate([np.asarray(data.batch_indices(key, s, n, batch)) for s in steps])
        assert sorted(seen.tolist()) == list(range(n))
    # A partial last batch is dropped: 103 // 10 = 10 steps per epoch, 100 distinct examples.
    seen = np.concatenate([np.asarray(data.batch_indices(key, s, 103, batch)) for s in range(10)])
    assert len(set(seen.tolist())) == 100 and seen.max() < 103


def test_batch_indices_equal_slice_of_epoch_permutation():
    key = jax.random.key(7)
    n, batch = 37, 5  # 7 steps per epoch, 2 examples dropped per epoch
    for step in [0, 1, 6, 7, 13, 14, 50]:
        epoch, offset = step // 7, (step % 7) * batch
        expected = np.asarray(data.epoch_permutation(key, epoch, n))[offset : offset + batch]
        got = data.batch_indices(key, step, n, batch)
        assert got.dtype == jnp.int32 and got.shape == (batch,)
        np.testing.assert_array_equal(got, expected)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 3000), epoch=st.integers(0, 10**6), seed=st.integers(0, 2**31 - 1))
def test_epoch_permutation_is_a_permutation(n, epoch, seed):
    perm = np.asarray(data.epoch_permutation(jax.random.key(seed), epoch, n))
    assert perm.dtype == np.int32
    np.testing.assert_array_equal(np.sort(perm), np.arange(n))


def test_epoch_permutation_depends_on_key_and_epoch():
    key = jax.random.key(0)
    p = np.asarray(data.epoch_permutation(key, 0, 500))
    np.testing.assert_array_equal(p, data.epoch_permutation(jax.random.key(0), 0, 500))
    assert not np.array_equal(p, data.epoch_permutation(key, 1, 500))
    assert not np.array_equal(p, data.epoch_permutation(jax.random.key(1), 0, 500))
    assert not np.array_equal(p, np.arange(500))
    # Legacy uint32[2] keys work too.
    data.epoch_permutation(jax.random.PRNGKey(0), 0, 10)


def test_batch_indices_under_jit_scan_and_vmap():
    n, batch, steps = 64, 8, 20

    @jax.jit
    def run(key):
        def body(carry, step):  # `step` is traced here
            return carry, data.batch_indices(key, step, n, batch)
        return jax.lax.scan(body, 0, jnp.arange(steps))[1]

    key = jax.random.key(3)
    eager = np.stack([data.batch_indices(key, s, n, batch) for s in range(steps)])
    np.testing.assert_array_equal(run(key), eager)
    keys = jax.random.split(jax.random.key(4), 3)
    vmapped = jax.vmap(run)(keys)
    assert vmapped.shape == (3, steps, batch)
    for i in range(3):
        np.testing.assert_array_equal(vmapped[i], run(keys[i]))
    assert not np.array_equal(vmapped[0], vmapped[1])  # trials get different orders


def test_batch_size_checks():
    key = jax.random.key(0)
    with pytest.raises(DatasetError, match="batch_size=11"):
        data.batch_indices(key, 0, 10, 11)
    with pytest.raises(DatasetError, match="batch_size=0"):
        data.batch_indices(key, 0, 10, 0)
    with pytest.raises(DatasetError, match="static"):
        jax.jit(lambda n: data.batch_indices(key, 0, n, 2))(10)


# ----------------------------------------------------------------------------------------------------
# Augmentation


def _augment_candidates(image: np.ndarray) -> dict[tuple[bool, int, int], np.ndarray]:
    """Every output the augmentation may give for one HWC image: mirror or not, then a crop of the
    4-pixel zero-padded image at offset (dy, dx)."""
    h, w, _ = image.shape
    out = {}
    for flip in (False, True):
        src = image[:, ::-1] if flip else image
        padded = np.zeros((h + 8, w + 8, image.shape[2]), image.dtype)
        padded[4 : 4 + h, 4 : 4 + w] = src
        for dy in range(9):
            for dx in range(9):
                out[flip, dy, dx] = padded[dy : dy + h, dx : dx + w]
    return out


def test_augment_is_mirror_and_zero_filled_shift():
    rng = np.random.default_rng(0)
    images = rng.standard_normal((64, 32, 32, 3)).astype(np.float32) + 5.0  # no pixel is 0
    out = np.asarray(data.augment(jax.random.key(0), images))
    assert out.shape == images.shape and out.dtype == np.float32
    used = []
    for image, result in zip(images, out):
        matches = [k for k, c in _augment_candidates(image).items() if np.array_equal(c, result)]
        assert len(matches) == 1, "output is not one flip+shift of its input"
        used.append(matches[0])
    flips = [f for f, _, _ in used]
    assert 0 < sum(flips) < len(flips)  # both mirrored and plain images
    assert len({(dy, dx) for _, dy, dx in used}) > 10  # many offsets


def test_augment_deterministic_jittable_vmappable():
    images = jnp.asarray(np.random.default_rng(1).standard_normal((6, 32, 32, 3)), jnp.float32)
    key = jax.random.key(5)
    a = data.augment(key, images)
    np.testing.assert_array_equal(a, data.augment(key, images))
    np.testing.assert_array_equal(a, jax.jit(data.augment)(key, images))
    assert not np.array_equal(a, data.augment(jax.random.key(6), images))
    keys = jax.random.split(key, 2)
    both = jax.vmap(data.augment)(keys, jnp.stack([images, images]))
    np.testing.assert_array_equal(both[1], data.augment(keys[1], images))


def test_needs_augmentation():
    info = data.DatasetInfo("mnist", "files", (28, 28, 1), 10, (0.1,), (0.3,))
    assert not data.needs_augmentation(info)
    rgb = dict(image_shape=(32, 32, 3), num_classes=10, mean=(0.0,) * 3, std=(1.0,) * 3)
    assert data.needs_augmentation(data.DatasetInfo(name="cifar10", source="tfds", **rgb))
    assert data.needs_augmentation(data.DatasetInfo(name="toy", source="synthetic", **rgb))


# ----------------------------------------------------------------------------------------------------
# The real thing, where Debian's dataset-fashion-mnist is installed


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_debian_fashion_mnist():
    ds = data.load({"name": "fashion_mnist", "source": "files", "path": str(FASHION_MNIST_DIR)})
    assert ds.train_images.shape == (55000, 28, 28, 1)
    assert ds.validation_images.shape == (5000, 28, 28, 1)
    assert ds.test_images.shape == (10000, 28, 28, 1)
    assert ds.info.num_classes == 10
    assert set(np.unique(ds.train_labels)) == set(range(10))
    assert set(np.unique(ds.test_labels)) == set(range(10))

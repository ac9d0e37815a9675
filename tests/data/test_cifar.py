from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from tcl_fast.data import build_datasets


def _dump(path: Path, obj: dict) -> None:
    # Protocol 2 with a numpy uint8 array: the same pickle shape the official release holds.
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _images(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8)


def write_cifar10(root: Path, per_batch: int = 4, n_test: int = 5) -> dict:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for i in range(1, 6):
        data = _images(rng, per_batch)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        _dump(folder / f"data_batch_{i}", {"batch_label": f"training batch {i} of 5", "labels": labels,
                                           "data": data, "filenames": [f"img{i}_{k}.png" for k in range(per_batch)]})
        written[f"data_batch_{i}"] = (data, labels)
    data = _images(rng, n_test)
    labels = [int(v) for v in rng.integers(0, 10, n_test)]
    _dump(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": labels, "data": data,
                                  "filenames": [f"t{k}.png" for k in range(n_test)]})
    written["test_batch"] = (data, labels)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _dump(folder / "batches.meta", {"label_names": names, "num_cases_per_batch": per_batch, "num_vis": 3072})
    return written


def write_cifar100(root: Path, n_train: int = 6, n_test: int = 3) -> dict:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    written = {}
    for split, n in (("train", n_train), ("test", n_test)):
        data = _images(rng, n)
        fine = [int(v) for v in rng.integers(0, 100, n)]
        _dump(folder / split, {"filenames": [f"{split}{k}.png" for k in range(n)], "batch_label": split,
                               "fine_labels": fine, "coarse_labels": [v // 5 for v in fine], "data": data})
        written[split] = (data, fine)
    _dump(folder / "meta", {"fine_label_names": [f"c{k}" for k in range(100)],
                            "coarse_label_names": [f"s{k}" for k in range(20)]})
    return written


CIFAR10_MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)
CIFAR10_STD = torch.tensor([0.2470, 0.2435, 0.2616]).view(3, 1, 1)


def _expected(row: np.ndarray, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    img = torch.from_numpy(row.reshape(3, 32, 32).astype(np.float32) / 255.0)
    return (img - mean) / std


def test_cifar10_reads_release_format(tmp_path):
    written = write_cifar10(tmp_path)
    b = build_datasets("cifar10", tmp_path)
    assert (len(b.train), len(b.test)) == (20, 5)
    assert (b.num_classes, b.in_channels, b.image_size, b.time_steps) == (10, 3, 32, None)
    assert b.train.classes[0] == "airplane"
    # Test items are exactly the stored pixels, channel-major, normalised, in file order.
    data, labels = written["test_batch"]
    for i in range(5):
        x, y = b.test[i]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert y == labels[i] and isinstance(y, int)
        torch.testing.assert_close(x, _expected(data[i], CIFAR10_MEAN, CIFAR10_STD))
    # Train batches concatenate in order 1..5.
    data3, labels3 = written["data_batch_3"]
    x, y = build_datasets("cifar10", tmp_path, augment=False).train[2 * 4 + 1]
    assert y == labels3[1]
    torch.testing.assert_close(x, _expected(data3[1], CIFAR10_MEAN, CIFAR10_STD))


def test_cifar10_two_views_augment_train_only(tmp_path):
    written = write_cifar10(tmp_path)
    b = build_datasets("cifar10", tmp_path, two_views=True)
    torch.manual_seed(0)
    pairs = [b.train[i] for i in range(10)]
    for (x1, x2), y in pairs:
        assert x1.shape == x2.shape == (3, 32, 32) and isinstance(y, int)
    assert any(not torch.equal(x1, x2) for (x1, x2), _ in pairs)
    torch.manual_seed(0)
    again = [b.train[i] for i in range(10)]
    assert all(torch.equal(a[0][0], c[0][0]) and torch.equal(a[0][1], c[0][1]) for a, c in zip(pairs, again))
    # Test items are the stored pixels, normalised, unshifted and unflipped, at any random state.
    data, _ = written["test_batch"]
    for seed in range(3):
        torch.manual_seed(seed)
        for i in range(5):
            x, _ = b.test[i]
            assert isinstance(x, torch.Tensor)
            torch.testing.assert_close(x, _expected(data[i], CIFAR10_MEAN, CIFAR10_STD))


def test_cifar100_reads_release_format(tmp_path):
    written = write_cifar100(tmp_path)
    b = build_datasets("cifar100", tmp_path, augment=False)
    assert (len(b.train), len(b.test)) == (6, 3)
    assert (b.num_classes, b.in_channels, b.image_size) == (100, 3, 32)
    data, fine = written["train"]
    mean = torch.tensor([0.5071, 0.4865, 0.4409]).view(3, 1, 1)
    std = torch.tensor([0.2673, 0.2564, 0.2762]).view(3, 1, 1)
    x, y = b.train[4]
    assert y == fine[4]
    torch.testing.assert_close(x, _expected(data[4], mean, std))


def test_cifar_accepts_root_pointing_at_batch_folder(tmp_path):
    write_cifar10(tmp_path)
    b = build_datasets("cifar10", tmp_path / "cifar-10-batches-py")
    assert len(b.test) == 5


def test_cifar_missing_files_message_says_where(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        build_datasets("cifar10", tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "cifar-10-batches-py") in msg
    assert "data_batch_1" in msg and "test_batch" in msg and "download" in msg

    write_cifar100(tmp_path)
    (tmp_path / "cifar-100-python" / "meta").unlink()
    with pytest.raises(FileNotFoundError, match="missing: meta"):
        build_datasets("cifar100", tmp_path)


def test_cifar_requires_data_root():
    with pytest.raises(ValueError, match="data_root"):
        build_datasets("cifar100", None)


def test_cifar_rejects_malformed_batch(tmp_path):
    write_cifar10(tmp_path)
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    _dump(bad, {"labels": [0, 1], "data": np.zeros((2, 100), dtype=np.uint8)})
    with pytest.raises(ValueError, match="data_batch_2"):
        build_datasets("cifar10", tmp_path)
    bad.write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="data_batch_2"):
        build_datasets("cifar10", tmp_path)

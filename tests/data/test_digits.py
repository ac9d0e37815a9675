from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from tcl_fast.data import DATASETS, DatasetBundle, build_datasets


def test_registry_lists_expected_names():
    assert DATASETS == ("digits", "cifar10", "cifar100", "dvs-cifar10")


def test_unknown_name_raises_listing_datasets():
    with pytest.raises(ValueError) as err:
        build_datasets("mnist")
    for name in DATASETS:
        assert name in str(err.value)


def test_digits_bundle_facts():
    b = build_datasets("digits", data_root="/nonexistent/is/ignored")
    assert isinstance(b, DatasetBundle)
    assert (len(b.train), len(b.test)) == (1347, 450)
    assert (b.num_classes, b.in_channels, b.image_size, b.time_steps) == (10, 1, 8, None)
    x, y = b.test[0]
    assert x.dtype == torch.float32 and x.shape == (1, 8, 8)
    assert isinstance(y, int) and 0 <= y < 10
    # Every class appears in both splits (stratified).
    assert set(b.train.labels.tolist()) == set(range(10)) == set(b.test.labels.tolist())


def test_digits_normalised_with_train_statistics():
    b = build_datasets("digits", augment=False)
    x = torch.stack([b.train[i][0] for i in range(len(b.train))])
    assert abs(x.mean().item()) < 1e-4
    assert abs(x.std(unbiased=False).item() - 1.0) < 1e-4


def test_digits_split_is_fixed():
    a = build_datasets("digits")
    b = build_datasets("digits")
    assert torch.equal(a.test.images, b.test.images)
    assert torch.equal(a.train.labels, b.train.labels)


def test_digits_test_set_is_deterministic_and_unaugmented():
    # Each test item is its stored image normalised with the train statistics,
    # whatever the random state: no shift (a shift of the stored image would
    # equal another draw 1 time in 9, but never the stored image itself).
    b = build_datasets("digits", two_views=True)
    mean = b.train.images.double().mean()
    std = b.train.images.double().std(unbiased=False)
    for seed in range(5):
        torch.manual_seed(seed)
        for i in (0, 3, 449):
            x, y = b.test[i]
            want = ((b.test.images[i].double() - mean) / std).float()
            torch.testing.assert_close(x, want, rtol=1e-5, atol=1e-5)
            assert y == int(b.test.labels[i])


def test_digits_two_views_differ_and_reproduce_under_seed():
    b = build_datasets("digits", two_views=True)

    def draw():
        return [b.train[i] for i in range(20)]

    torch.manual_seed(123)
    first = draw()
    torch.manual_seed(123)
    second = draw()
    for ((a1, a2), ya), ((b1, b2), yb) in zip(first, second):
        assert ya == yb and torch.equal(a1, b1) and torch.equal(a2, b2)
        assert a1.shape == a2.shape == (1, 8, 8)
    # Random shifts: out of 20 pairs, some views must differ.
    assert any(not torch.equal(v1, v2) for (v1, v2), _ in first)


def test_digits_augment_false_gives_fixed_train_items():
    b = build_datasets("digits", augment=False)
    assert torch.equal(b.train[5][0], b.train[5][0])


def test_digits_shift_is_at_most_one_pixel():
    b = build_datasets("digits", augment=False)
    aug = build_datasets("digits", augment=True)
    base = b.train[0][0]
    for _ in range(30):
        x = aug.train[0][0]
        # Some shift in [-1, 1]^2 (zero-filled in pixel space) reproduces the view.
        background = b.train.transform(torch.zeros(1, 8, 8))
        ok = False
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                shifted = background.clone()
                src = base[:, max(0, -dy):8 - max(0, dy), max(0, -dx):8 - max(0, dx)]
                shifted[:, max(0, dy):8 - max(0, -dy), max(0, dx):8 - max(0, -dx)] = src
                ok |= torch.allclose(shifted, x)
        assert ok


def test_digits_two_view_batches_collate():
    b = build_datasets("digits", two_views=True)
    (x1, x2), y = next(iter(DataLoader(b.train, batch_size=16, shuffle=False)))
    assert x1.shape == x2.shape == (16, 1, 8, 8)
    assert y.shape == (16,) and y.dtype == torch.int64


def test_digits_split_cache_equals_the_computed_split_and_survives_a_bad_file(tmp_path, monkeypatch):
    import numpy as np
    from tcl_fast.data import digits

    monkeypatch.setenv("TCL_FAST_CACHE", str(tmp_path))
    path = digits._split_cache_path()
    assert str(tmp_path) in path
    computed = digits._compute_split()
    first = digits._load_split()  # computes and writes the cache
    assert (tmp_path / path.split("/")[-1]).exists()
    with np.load(path) as f:  # the file holds exactly the split
        assert all(np.array_equal(f[k], c) for k, c in zip(digits._SPLIT_KEYS, computed))
    for bad in (b"", b"not an npz"):  # truncated / garbage: recomputed and rewritten
        with open(path, "wb") as f:
            f.write(bad)
        again = digits._load_split()
        assert all(np.array_equal(a, c) and a.dtype == c.dtype for a, c in zip(again, computed))
    assert all(np.array_equal(a, c) for a, c in zip(first, computed))
    assert [p.name for p in tmp_path.iterdir()] == [path.split("/")[-1]]  # no temporary files left

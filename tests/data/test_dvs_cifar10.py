from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tcl_fast.data import build_datasets
from tcl_fast.data.dvs_cifar10 import CLASSES, decode_cifar10dvs_address, events_to_frames

from optional_deps import require  # tonic: skip here when missing, fail under CI=true


# ----------------------------------------------------------------------------- writers

def encode_address(x: np.ndarray, y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Inverse of the CIFAR10-DVS address mapping: image (x, y, p) -> raw jAER address."""
    row, col = 127 - np.asarray(x), 127 - np.asarray(y)
    return ((row << 8) | (col << 1) | (1 - np.asarray(p))).astype(np.uint32)


def write_aedat2(path: Path, x, y, p, t=None) -> None:
    """Write a jAER AEDAT 2.0 file: '#' header lines (CRLF), then big-endian uint32 (address, timestamp)."""
    x = np.asarray(x)
    t = np.arange(x.shape[0], dtype=np.uint32) * 10 if t is None else np.asarray(t, dtype=np.uint32)
    records = np.empty(x.shape[0], dtype=[("address", ">u4"), ("timeStamp", ">u4")])
    records["address"] = encode_address(x, y, p)
    records["timeStamp"] = t
    header = (
        b"#!AER-DAT2.0\r\n"
        b"# This is a raw AE data file - do not edit\r\n"
        b"# Data format is int32 address, int32 timestamp (8 bytes total), repeated for each event\r\n"
        b"# Timestamps tick is 1 us\r\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + records.tobytes())


FRAMES = 4
# Frame i of every sample fires at column XS[i] (row 32) with polarity i % 2.
XS = (16, 40, 72, 104)


def sample_events(label: int, per_frame: int = 3):
    xs, ys, ps = [], [], []
    for i, col in enumerate(XS):
        xs += [col] * per_frame
        ys += [32 + 4 * label] * per_frame
        ps += [i % 2] * per_frame
    return np.array(xs), np.array(ys), np.array(ps)


def write_event_dataset(root: Path, names=("cifar10_{c}_2", "cifar10_{c}_10", "cifar10_{c}_11")) -> None:
    for label, cls in enumerate(CLASSES):
        for name in names:
            write_aedat2(root / cls / (name.format(c=cls) + ".aedat"), *sample_events(label))


def write_frame_dataset(root: Path, size: int = 48, frames: int = FRAMES, per_class: int = 2) -> dict:
    rng = np.random.default_rng(0)
    stored = {}
    for cls in CLASSES:
        for k in range(per_class):
            arr = rng.integers(0, 5, size=(frames, 2, size, size)).astype(np.float32)
            (root / cls).mkdir(parents=True, exist_ok=True)
            np.savez_compressed(root / cls / f"{k}.npz", frames=arr)
            stored[(cls, k)] = arr
    return stored


def scaled(col: int) -> float:
    """Centre of pixel ``col`` (128 grid) in 48-grid pixel units."""
    return (col + 0.5) * 48 / 128 - 0.5


# ----------------------------------------------------------------------------- pure helpers

def test_decode_known_address():
    # 0x0203: bit0 = 1, bits1-7 (sensor col) = 1, bits8-14 (sensor row) = 2
    #   -> x = 127 - row = 125, y = 127 - col = 126, polarity 1 - bit0 = 0 (SpikingJelly's mapping).
    x, y, p = decode_cifar10dvs_address(np.array([0x0203, 0x7FFE, 0x10000], dtype=np.uint32))
    assert x.tolist() == [125, 0, 127] and y.tolist() == [126, 0, 127] and p.tolist() == [0, 1, 1]


def test_events_to_frames_splits_by_count():
    n = 23  # 5 frames of 23 // 5 = 4 events; the last frame also takes the remaining 3
    x = np.arange(n) % 7
    y = np.arange(n) % 5
    p = np.arange(n) % 2
    out = events_to_frames(x, y, p, frames=5, height=8, width=8)
    assert out.shape == (5, 2, 8, 8) and out.dtype == torch.float32
    assert out.sum(dim=(1, 2, 3)).tolist() == [4, 4, 4, 4, 7]
    for i in range(n):
        t = min(i // 4, 4)
        assert out[t, p[i], y[i], x[i]] >= 1
    # Repeated events accumulate counts.
    twice = events_to_frames([3, 3], [2, 2], [1, 1], frames=1, height=8, width=8)
    assert twice[0, 1, 2, 3] == 2 and twice.sum() == 2


def test_events_to_frames_edge_cases():
    assert events_to_frames([], [], [], frames=3, height=4, width=4).abs().sum() == 0
    few = events_to_frames([1, 2], [0, 0], [0, 1], frames=3, height=4, width=4)
    assert few.sum(dim=(1, 2, 3)).tolist() == [0, 0, 2]  # fewer events than frames: all in the last
    with pytest.raises(ValueError, match="out of range"):
        events_to_frames([9], [0], [0], frames=1, height=4, width=4)
    with pytest.raises(ValueError, match="frames"):
        events_to_frames([0], [0], [0], frames=0)


# ----------------------------------------------------------------------------- event layout

def test_event_files_end_to_end(tmp_path):
    require("tonic.io")
    write_event_dataset(tmp_path)
    b = build_datasets("dvs-cifar10", tmp_path, frames=FRAMES, augment=False)
    assert (b.num_classes, b.in_channels, b.image_size, b.time_steps) == (10, 2, 48, FRAMES)
    # 3 files per class -> 3 * 9 // 10 = 2 train, 1 test; lexicographic order puts "_2" last.
    assert (len(b.train), len(b.test)) == (20, 10)
    assert [f.name for f in b.test.files[:1]] == ["cifar10_airplane_2.aedat"]
    assert b.test.targets == list(range(10))

    for label in (0, 7):
        x, y = b.test[label]
        assert y == label and x.shape == (FRAMES, 2, 48, 48) and x.dtype == torch.float32
        for i, col in enumerate(XS):
            on, off = x[i, i % 2], x[i, 1 - i % 2]
            assert on.sum() > 0 and off.abs().sum() == 0  # polarity kept, one slice per frame
            r, c = divmod(int(on.argmax()), 48)
            assert abs(c - scaled(col)) <= 1 and abs(r - scaled(32 + 4 * label)) <= 1


def test_event_files_in_spikingjelly_extract_folder(tmp_path):
    require("tonic.io")
    write_event_dataset(tmp_path / "extract", names=("a", "b"))
    b = build_datasets("dvs-cifar10", tmp_path, frames=2)
    assert (len(b.train), len(b.test)) == (10, 10)  # 2 * 9 // 10 = 1 train per class
    x, y = b.test[3]
    assert x.shape == (2, 2, 48, 48) and y == 3


def test_corrupt_event_file_names_path(tmp_path):
    require("tonic.io")
    write_event_dataset(tmp_path, names=("a",))
    bad = tmp_path / "cat" / "a.aedat"
    bad.write_bytes(b"\x00\x01\x02\x03garbage!")
    b = build_datasets("dvs-cifar10", tmp_path, frames=2)
    with pytest.raises(ValueError, match="a.aedat"):
        b.test[CLASSES.index("cat")]


def test_missing_tonic_gives_clear_error(tmp_path, monkeypatch):
    write_event_dataset(tmp_path, names=("a",))
    monkeypatch.setitem(sys.modules, "tonic", None)
    monkeypatch.setitem(sys.modules, "tonic.io", None)
    with pytest.raises(ImportError, match="pip install tonic"):
        build_datasets("dvs-cifar10", tmp_path, frames=2)


def test_aedat4_files_go_through_tonic_reader(tmp_path, monkeypatch):
    # Writing AEDAT 4 (flatbuffers + LZ4) is out of scope; this checks our handling of
    # what tonic.io.read_aedat4 returns for the re-released files (fields t, x, y, on).
    tonic_io = require("tonic.io")
    for cls in CLASSES:
        (tmp_path / "CIFAR10DVS" / cls).mkdir(parents=True)
        (tmp_path / "CIFAR10DVS" / cls / "s.aedat4").write_bytes(b"")
    events = np.zeros(4, dtype=[("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("on", "?")])
    events["x"], events["y"], events["on"] = [0, 127, 64, 64], [0, 0, 127, 127], [True, False, True, True]
    seen = []

    def fake_read(path):
        seen.append(path)
        return events

    monkeypatch.setattr(tonic_io, "read_aedat4", fake_read)
    b = build_datasets("dvs-cifar10", tmp_path, frames=2, augment=False)
    x, y = b.test[5]
    assert y == 5 and seen and seen[0].endswith("s.aedat4")
    assert x.shape == (2, 2, 48, 48)
    assert x[0, 1].sum() > 0 and x[0, 0].sum() > 0 and x[1, 0].sum() == 0 and x[1, 1].sum() > 0


# ----------------------------------------------------------------------------- frame layout

def test_npz_frames_read_back_exactly(tmp_path):
    stored = write_frame_dataset(tmp_path, size=48, per_class=10)
    b = build_datasets("dvs-cifar10", tmp_path, frames=FRAMES)
    assert (len(b.train), len(b.test)) == (90, 10)  # 9:1 per class
    assert b.time_steps == FRAMES
    for label, cls in enumerate(CLASSES):
        x, y = b.test[label]
        assert y == label
        # The test item is the class's last sorted file ("9.npz"), unaugmented and untouched at 48x48.
        assert torch.equal(x, torch.from_numpy(stored[(cls, 9)]))


def test_npz_frames_are_resized_to_48(tmp_path):
    # 128x128 frames become torchvision's antialiased bilinear Resize((48, 48))
    # of the stored counts (the test item of a class is its last file, "1.npz").
    resize = require("torchvision.transforms.v2.functional").resize
    root = tmp_path / f"frames_number_{FRAMES}_split_by_number"
    stored = write_frame_dataset(root, size=128, per_class=2)
    b = build_datasets("dvs-cifar10", tmp_path, frames=FRAMES)
    for label in (0, 6):
        x, y = b.test[label]
        assert y == label and x.shape == (FRAMES, 2, 48, 48)
        want = resize(torch.from_numpy(stored[(CLASSES[label], 1)]), [48, 48], antialias=True)
        torch.testing.assert_close(x, want, rtol=1e-5, atol=1e-5)


def test_npz_frame_count_mismatch(tmp_path):
    write_frame_dataset(tmp_path, size=48, frames=3, per_class=2)
    with pytest.raises(ValueError, match="T=3"):
        build_datasets("dvs-cifar10", tmp_path, frames=FRAMES)


def test_npz_bad_contents(tmp_path):
    write_frame_dataset(tmp_path, size=48, per_class=2)
    np.savez(tmp_path / "dog" / "1.npz", events=np.zeros(3))
    b = build_datasets("dvs-cifar10", tmp_path, frames=FRAMES)
    with pytest.raises(ValueError, match="no 'frames'"):
        b.test[CLASSES.index("dog")]
    (tmp_path / "dog" / "1.npz").write_bytes(b"not an npz at all")
    with pytest.raises(ValueError, match=r"1\.npz is not a readable"):
        b.test[CLASSES.index("dog")]


def _is_flip_roll_of(view: torch.Tensor, base: torch.Tensor) -> bool:
    for flipped in (base, torch.flip(base, dims=(-1,))):
        for dy in range(-5, 6):
            for dx in range(-5, 6):
                if torch.equal(torch.roll(flipped, shifts=(dy, dx), dims=(-2, -1)), view):
                    return True
    return False


def test_two_views_are_flip_roll_augmentations(tmp_path):
    write_frame_dataset(tmp_path, size=48, per_class=10)
    plain = build_datasets("dvs-cifar10", tmp_path, frames=FRAMES, augment=False)
    b = build_datasets("dvs-cifar10", tmp_path, frames=FRAMES, two_views=True)
    torch.manual_seed(0)
    differ = False
    for i in (0, 17, 42):
        (v1, v2), y = b.train[i]
        base, y0 = plain.train[i]
        assert y == y0 and v1.shape == (FRAMES, 2, 48, 48)
        assert _is_flip_roll_of(v1, base) and _is_flip_roll_of(v2, base)
        differ |= not torch.equal(v1, v2)
    assert differ
    # Seeded runs reproduce; the test split is plain.
    torch.manual_seed(0)
    (w1, _), _ = b.train[0]
    torch.manual_seed(0)
    (u1, _), _ = b.train[0]
    assert torch.equal(w1, u1)
    assert torch.equal(b.test[2][0], plain.test[2][0])


def test_batches_are_batch_time_channel_first(tmp_path):
    write_frame_dataset(tmp_path, size=48, per_class=2)
    b = build_datasets("dvs-cifar10", tmp_path, frames=FRAMES)
    x, y = next(iter(DataLoader(b.test, batch_size=4)))
    assert x.shape == (4, FRAMES, 2, 48, 48) and y.tolist() == [0, 1, 2, 3]


# ----------------------------------------------------------------------------- errors

def test_missing_data_message_says_where(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        build_datasets("dvs-cifar10", tmp_path / "nowhere")
    msg = str(err.value)
    assert str(tmp_path / "nowhere") in msg
    assert "airplane" in msg and ".aedat" in msg and ".npz" in msg and "'frames'" in msg


def test_incomplete_class_set_is_missing(tmp_path):
    write_frame_dataset(tmp_path, size=48, per_class=2)
    for f in (tmp_path / "truck").iterdir():
        f.unlink()
    with pytest.raises(FileNotFoundError, match="missing or empty class folders: truck"):
        build_datasets("dvs-cifar10", tmp_path, frames=FRAMES)


def test_bad_arguments(tmp_path):
    write_frame_dataset(tmp_path, size=48, per_class=2)
    with pytest.raises(ValueError, match="frames"):
        build_datasets("dvs-cifar10", tmp_path, frames=0)
    with pytest.raises(ValueError, match="download"):
        build_datasets("dvs-cifar10", tmp_path, frames=FRAMES, download=True)
    with pytest.raises(ValueError, match="data_root"):
        build_datasets("dvs-cifar10")

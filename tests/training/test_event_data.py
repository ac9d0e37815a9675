"""The training loop on event-style data ([B, frames, C, H, W] batches), with a synthetic dataset."""
from __future__ import annotations

import json
import os

import pytest
import torch
from torch.utils.data import Dataset

import tcl_fast.data
from tcl_fast.cli import main
from tcl_fast.data import DatasetBundle


class _Events(Dataset):
    """Class-dependent spike-like frames so a few steps of training have something to learn."""

    def __init__(self, n, frames, two_views, seed):
        g = torch.Generator().manual_seed(seed)
        self.y = torch.arange(n) % 3
        base = torch.rand(3, 2, 12, 12, generator=g)
        self.x = (torch.rand(n, frames, 2, 12, 12, generator=g) < base[self.y].unsqueeze(1)).float()
        self.two_views = two_views

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        x = self.x[i]
        return ((x, x.flip(-1)) if self.two_views else x), int(self.y[i])


@pytest.fixture
def fake_events(monkeypatch):
    calls = []

    def build(name, data_root=None, *, two_views=False, frames=10, download=False, augment=True):
        calls.append(dict(name=name, frames=frames, two_views=two_views))
        return DatasetBundle(_Events(24, frames, two_views, 0), _Events(12, frames, False, 1), 3, 2, 12, frames)

    monkeypatch.setattr(tcl_fast.data, "build_datasets", build)
    return calls


@pytest.mark.parametrize("loss", ["tcl", "stcl"])
def test_event_batches_train_and_evaluate(tmp_path, fake_events, loss):
    out = str(tmp_path / loss)
    argv = ["train", "--dataset", "dvs-cifar10", "--data-root", str(tmp_path), "--model", "small",
            "--loss", loss, "--T", "3", "--frames", "5", "--epochs", "1", "--batch-size", "8",
            "--no-progress", "--backend", "torch", "--out", out]
    assert main(argv) == 0
    assert fake_events[0] == dict(name="dvs-cifar10", frames=5, two_views=loss == "stcl")
    with open(os.path.join(out, "latency.json")) as f:
        assert set(json.load(f)["accuracy"]) == {"1", "2", "3"}
    # Evaluate with more steps than training used (the data then needs that many frames).
    assert main(["eval", "--checkpoint", out, "--T", "5"]) == 0
    assert fake_events[-1]["frames"] == 5 and not fake_events[-1]["two_views"]
    with open(os.path.join(out, "eval_T5.json")) as f:
        assert set(json.load(f)["accuracy"]) == {"1", "2", "3", "4", "5"}


def test_too_few_frames_is_a_user_error(tmp_path, fake_events, capsys):
    argv = ["train", "--dataset", "dvs-cifar10", "--data-root", str(tmp_path), "--T", "4", "--frames", "2"]
    assert main(argv) == 2
    assert "frames (2) must be >= T (4)" in capsys.readouterr().err

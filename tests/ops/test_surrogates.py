"""The surrogate table: one list of names, the kernels' ids and the reference's formulas agree."""
from __future__ import annotations

import math
import os
import re

import pytest
import torch

from tcl_fast.ops.lif_reference import (DEFAULT_ALPHA, DEFAULT_BETA, SURROGATES, surrogate_grad,
                                        surrogate_primitive)

HEADER = os.path.join(os.path.dirname(__file__), "..", "..", "csrc", "lif_math.h")


def _snake(camel: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", camel).lower()


def test_kernel_enum_matches_python_table():
    """csrc/lif_math.h's Surrogate ids are the positions in SURROGATES."""
    text = open(HEADER).read()
    body = re.search(r"enum Surrogate : int \{(.*?)\};", text, re.S).group(1)
    entries = re.findall(r"k(\w+) = (\d+)", body)
    kernel = {int(i): _snake(n).replace("re_lu", "relu") for n, i in entries}  # ReLU: one word
    assert [kernel[i] for i in range(len(kernel))] == list(SURROGATES)
    count = int(re.search(r"constexpr int kNumSurrogates = (\d+);", text).group(1))
    assert count == len(SURROGATES)


def test_every_surrogate_has_defaults():
    assert set(DEFAULT_ALPHA) == set(SURROGATES)
    assert set(DEFAULT_BETA) <= set(SURROGATES)


@pytest.mark.parametrize("surrogate", SURROGATES)
def test_grad_is_the_primitives_derivative(surrogate):
    # G' = surrogate_grad, checked by autograd at points away from the kinks
    # (|u| = alpha or alpha/2 for the piecewise ones, where G' jumps).
    alpha = DEFAULT_ALPHA[surrogate] * 0.8
    beta = DEFAULT_BETA.get(surrogate, 0.0) * 3
    u = torch.linspace(-3.1, 3.1, 401, dtype=torch.float64)
    kinks = torch.tensor([alpha, alpha / 2], dtype=torch.float64)
    u = u[((u.abs().unsqueeze(1) - kinks).abs() > 1e-3).all(1)].requires_grad_()
    (g,) = torch.autograd.grad(surrogate_primitive(u, surrogate, alpha, beta).sum(), u)
    torch.testing.assert_close(g, surrogate_grad(u.detach(), surrogate, alpha, beta), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("surrogate", SURROGATES)
def test_primitive_is_a_step_stand_in(surrogate):
    # G rises through 1/2 at u = 0 (so the smooth test mode fires like the step there).
    alpha = DEFAULT_ALPHA[surrogate]
    g0 = surrogate_primitive(torch.zeros(1, dtype=torch.float64), surrogate, alpha,
                             DEFAULT_BETA.get(surrogate, 0.0))
    assert math.isclose(g0.item(), 0.5, abs_tol=1e-15)
    assert surrogate_grad(torch.zeros(1, dtype=torch.float64), surrogate, alpha).item() > 0

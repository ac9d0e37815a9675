"""supcon_loss / tcl_loss against pytorch-metric-learning's SupConLoss, the
implementation many users already train with. PML normalises rows (cosine
similarity), averages the log-probability over each anchor's positives and
leaves anchors without a positive out of the mean (AvgNonZeroReducer), which is
the definition supcon_loss documents. Its only difference is a 1e-16-sized
guard added to the positive count, far below float64 test tolerances."""
import pytest
import torch

from optional_deps import require
from tcl_fast.losses import tcl_loss
from tcl_fast.ops.supcon import supcon_loss

pml_losses = require("pytorch_metric_learning.losses")


def _case(n, d, n_classes, seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    labels = torch.randint(0, n_classes, (n,), generator=g)
    labels[0] = n_classes + 5  # a class of one: an anchor without positives
    return z, labels


@pytest.mark.parametrize("backend", ["blocked", "reference"])
@pytest.mark.parametrize("n,d,n_classes,temperature", [(7, 3, 2, 0.1), (33, 16, 5, 0.5), (64, 128, 10, 0.07)])
def test_supcon_matches_pml_values_and_gradients(backend, n, d, n_classes, temperature):
    z, labels = _case(n, d, n_classes, seed=n)
    z_ours = z.clone().requires_grad_()
    z_pml = z.clone().requires_grad_()

    ours = supcon_loss(z_ours, labels, temperature, backend=backend)
    theirs = pml_losses.SupConLoss(temperature=temperature)(z_pml, labels)
    ours.backward()
    theirs.backward()

    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(z_ours.grad, z_pml.grad, rtol=1e-8, atol=1e-12)


def test_tcl_matches_pml_on_flattened_steps():
    t, b, d = 4, 6, 8
    g = torch.Generator().manual_seed(3)
    features = torch.randn(t, b, d, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 2, 1, 3])  # class 3 has one sample, but T = 4 steps of it
    ours = tcl_loss(features, labels, temperature=0.2)
    theirs = pml_losses.SupConLoss(temperature=0.2)(features.reshape(t * b, d), labels.repeat(t))
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)

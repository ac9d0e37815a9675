"""SpikingJelly zoo models built small for CPU tests, shared by the zoo parity
tests (tests/nn/test_spikingjelly_zoo.py) and the BN-fusion tests
(tests/test_convert_fuse.py). Import after ``optional_deps.require("spikingjelly...")``.
Each builder returns ``(model, input height/width)``."""
from __future__ import annotations

import torch
from spikingjelly.activation_based import layer, surrogate
from spikingjelly.activation_based import neuron as sj_neuron
from spikingjelly.activation_based.model import parametric_lif_net, sew_resnet, spiking_resnet, spiking_vgg


def resnet18():  # LIFNode, Sigmoid, hard reset
    return spiking_resnet.spiking_resnet18(
        spiking_neuron=sj_neuron.LIFNode, surrogate_function=surrogate.Sigmoid(), num_classes=10), 8


def sew_resnet18():  # ATan, detach_reset
    return sew_resnet.sew_resnet18(
        cnf="ADD", spiking_neuron=sj_neuron.LIFNode, surrogate_function=surrogate.ATan(),
        detach_reset=True, num_classes=10), 8


def vgg11_bn():  # tau 3, soft reset, decay_input=False, PiecewiseQuadratic
    # The zoo's 25088x4096 classifier is 100M+ weights: keep its neurons, shrink its layers.
    # Built on the meta device, so those weights are never allocated nor initialised (that
    # took 3-7 s per model), then given memory and the zoo's own initialisation.
    with torch.device("meta"):
        net = spiking_vgg.spiking_vgg11_bn(spiking_neuron=sj_neuron.LIFNode, num_classes=10, tau=3.0, v_reset=None,
                                           decay_input=False,
                                           surrogate_function=surrogate.PiecewiseQuadratic(alpha=1.5))
        net.avgpool = layer.AdaptiveAvgPool2d((1, 1))
        net.classifier[0] = layer.Linear(512, 32)
        net.classifier[3] = layer.Linear(32, 32)
        net.classifier[6] = layer.Linear(32, 10)
    net.to_empty(device="cpu")
    net._initialize_weights()
    for i in (0, 3, 6):  # as before: the shrunk layers keep torch's default initialisation
        net.classifier[i].reset_parameters()
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
    assert not any(t.is_meta for t in [*net.parameters(), *net.buffers()])
    return net, 32


def plif_cifar10():  # ParametricLIFNode
    return parametric_lif_net.CIFAR10Net(
        channels=4, spiking_neuron=sj_neuron.ParametricLIFNode,
        surrogate_function=surrogate.ATan(), detach_reset=True), 32

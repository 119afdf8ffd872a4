"""MobileNetV1 laid out like the Caffe model of the Latent Replay paper.

The paper cuts an ImageNet MobileNetV1 (input 128x128) at named Caffe layers such as
``conv5_4/dw``. This module rebuilds that network with the same layer names so that
those names can be used as latent layers:

``conv1``, ``conv2_1/dw``, ``conv2_1/sep``, ..., ``conv5_6/sep``, ``conv6/dw``,
``conv6/sep``, ``pool6`` and the classifier ``fc7``.

Every convolutional layer is ``Conv2d`` (no bias) -> ``BatchNorm2d`` -> ``ReLU``, held in
an ``nn.Sequential`` with children ``conv``, ``bn`` and ``relu``. Module attribute names
cannot contain ``/``, so the attribute of ``conv5_4/dw`` is ``conv5_4_dw``
(:func:`caffe_to_attr` and :func:`attr_to_caffe` convert). ``pool6`` is a global average
pool (output ``[N, 1024, 1, 1]``) and ``fc7`` a ``Linear(1024, num_classes)`` applied to
the flattened pool.

No pretrained weights ship with this module: load a ``state_dict`` saved in this
module's naming (``conv1.conv.weight``, ``conv5_4_dw.bn.running_mean``, ``fc7.weight``,
...).
"""

from collections import OrderedDict
from typing import List, Tuple

import torch
from torch import nn

# (Caffe name, input channels, output channels, stride, depthwise?) in network order.
_LAYOUT: Tuple[Tuple[str, int, int, int, bool], ...] = (
    ('conv1', 3, 32, 2, False),
    ('conv2_1/dw', 32, 32, 1, True),
    ('conv2_1/sep', 32, 64, 1, False),
    ('conv2_2/dw', 64, 64, 2, True),
    ('conv2_2/sep', 64, 128, 1, False),
    ('conv3_1/dw', 128, 128, 1, True),
    ('conv3_1/sep', 128, 128, 1, False),
    ('conv3_2/dw', 128, 128, 2, True),
    ('conv3_2/sep', 128, 256, 1, False),
    ('conv4_1/dw', 256, 256, 1, True),
    ('conv4_1/sep', 256, 256, 1, False),
    ('conv4_2/dw', 256, 256, 2, True),
    ('conv4_2/sep', 256, 512, 1, False),
    ('conv5_1/dw', 512, 512, 1, True),
    ('conv5_1/sep', 512, 512, 1, False),
    ('conv5_2/dw', 512, 512, 1, True),
    ('conv5_2/sep', 512, 512, 1, False),
    ('conv5_3/dw', 512, 512, 1, True),
    ('conv5_3/sep', 512, 512, 1, False),
    ('conv5_4/dw', 512, 512, 1, True),
    ('conv5_4/sep', 512, 512, 1, False),
    ('conv5_5/dw', 512, 512, 1, True),
    ('conv5_5/sep', 512, 512, 1, False),
    ('conv5_6/dw', 512, 512, 2, True),
    ('conv5_6/sep', 512, 1024, 1, False),
    ('conv6/dw', 1024, 1024, 1, True),
    ('conv6/sep', 1024, 1024, 1, False),
)

#: Latent layer names in input-to-output order (Caffe spelling).
LAYER_NAMES: Tuple[str, ...] = tuple(row[0] for row in _LAYOUT) + ('pool6',)

FEATURE_DIM = 1024


def caffe_to_attr(name: str) -> str:
    """Return the attribute name of a Caffe layer name (``conv5_4/dw`` -> ``conv5_4_dw``)."""
    return name.replace('/', '_')


def attr_to_caffe(attr: str) -> str:
    """Return the Caffe layer name of an attribute name (``conv5_4_dw`` -> ``conv5_4/dw``)."""
    for name in LAYER_NAMES:
        if caffe_to_attr(name) == attr:
            return name
    raise KeyError(attr)


def _conv_bn_relu(c_in: int, c_out: int, stride: int, depthwise: bool) -> nn.Sequential:
    if depthwise:
        conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, groups=c_in, bias=False)
    elif c_in == 3:     # conv1: full 3x3 convolution on the image
        conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
    else:               # pointwise ('sep') convolution
        conv = nn.Conv2d(c_in, c_out, 1, bias=False)
    return nn.Sequential(OrderedDict([
        ('conv', conv),
        ('bn', nn.BatchNorm2d(c_out)),
        ('relu', nn.ReLU(inplace=True)),
    ]))


class MobileNetV1(nn.Module):
    """MobileNetV1 (width 1.0) with the Caffe model's layer names as attributes.

    ``forward`` maps ``[N, 3, S, S]`` normalised images to ``[N, num_classes]`` logits.
    """

    def __init__(self, num_classes: int = 1000):
        """Build the network with PyTorch's default random initialisation."""
        super().__init__()
        for name, c_in, c_out, stride, depthwise in _LAYOUT:
            self.add_module(caffe_to_attr(name), _conv_bn_relu(c_in, c_out, stride, depthwise))
        self.pool6 = nn.AdaptiveAvgPool2d(1)
        self.fc7 = nn.Linear(FEATURE_DIM, num_classes)

    def layers(self) -> List[Tuple[str, str, nn.Module]]:
        """Return ``(caffe_name, attribute_name, module)`` for every layer up to ``pool6``."""
        return [(name, caffe_to_attr(name), getattr(self, caffe_to_attr(name)))
                for name in LAYER_NAMES]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits of a batch of normalised images."""
        for _, _, module in self.layers():
            x = module(x)
        return self.fc7(torch.flatten(x, 1))

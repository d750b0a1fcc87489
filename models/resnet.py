"""ResNet-18/50 on torchvision's implementation, optionally with a stem for small images and a narrower width.

Stems: `imagenet` (7x7 conv stride 2, max-pool: 32 px images reach layer4 at 1 x 1), `cifar` (3x3 conv stride 1, no
max-pool: layer1 at the image's size, 16x the compute at 32 px), `cifar_s2` (3x3 conv stride 2, no max-pool: layer1
at half the image's size, 4x the compute of `imagenet`, layer4 at 2 x 2 for 32 px). `width` is layer1's channels
(torchvision: 64), doubled at every later stage; the feature dimension is 8 x width for ResNet-18."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from models.backbone import Backbone


class ResNet(Backbone):
    """torchvision ResNet without its fc layer; parameter names match torchvision's state dicts.

    Taps (as in mmselfsup's ResNet with out_indices 0..4): Feature1 after conv1+bn+relu (before the max-pool),
    Feature2..Feature5 after layer1..layer4.
    """

    def __init__(
        self, depth: int, sobel: bool = False, cifar_stem: bool = False, stem: str | None = None, width: int = 64
    ) -> None:
        super().__init__(sobel)
        stem = stem or ("cifar" if cifar_stem else "imagenet")
        net = {18: torchvision.models.resnet18, 50: torchvision.models.resnet50}[depth](weights=None)
        if width != 64:
            narrow(net, width)
        if stem in ("cifar", "cifar_s2"):
            stride = 1 if stem == "cifar" else 2
            net.conv1 = nn.Conv2d(self.in_channels, width, kernel_size=3, stride=stride, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif sobel:
            net.conv1 = nn.Conv2d(2, width, kernel_size=7, stride=2, padding=3, bias=False)
        if sobel or stem != "imagenet":
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.conv1, self.bn1, self.relu, self.maxpool = (
            net.conv1,
            net.bn1,
            net.relu,
            net.maxpool,
        )
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = net.fc.in_features if width == 64 else 8 * width * (4 if depth == 50 else 1)
        self.head_activation = nn.Identity()  # pooled ResNet features are already post-ReLU

    def forward_taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.relu(self.bn1(self.conv1(self._front(x))))
        taps = [x]
        x = self.maxpool(x)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            taps.append(x)
        return taps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.avgpool(self.forward_taps(x)[-1]), 1)


def narrow(net: torchvision.models.ResNet, width: int) -> None:
    """Rebuild a torchvision ResNet's stem and four stages with `width` channels in layer1 (doubled per stage), with
    torchvision's own initialisation; the parameter names stay torchvision's."""
    block = type(net.layer1[0])
    depths = [len(layer) for layer in (net.layer1, net.layer2, net.layer3, net.layer4)]
    net.inplanes = width
    net.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    net.bn1 = nn.BatchNorm2d(width)
    net.layer1 = net._make_layer(block, width, depths[0])
    net.layer2 = net._make_layer(block, 2 * width, depths[1], stride=2)
    net.layer3 = net._make_layer(block, 4 * width, depths[2], stride=2)
    net.layer4 = net._make_layer(block, 8 * width, depths[3], stride=2)
    for module in net.modules():  # as torchvision's ResNet.__init__ initialises
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.constant_(module.weight, 1)
            nn.init.constant_(module.bias, 0)

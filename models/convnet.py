"""AlexNet-BN and VGG16-BN as used in the DeepCluster paper (section 4, "Architectures")."""

from __future__ import annotations

import torch
from torch import nn

from models.backbone import Backbone

# (out_channels, kernel, stride, padding) per conv; "M" is a 3x3/2 max-pool. Paper: AlexNet with 96-256-384-384-256
# filters, local response normalisation replaced by batch normalisation.
ALEXNET_CFG = [
    (96, 11, 4, 2),
    "M",
    (256, 5, 1, 2),
    "M",
    (384, 3, 1, 1),
    (384, 3, 1, 1),
    (256, 3, 1, 1),
    "M",
]
VGG16_CFG = [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]]


def _init_weights(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


def _fc_stack(in_features: int, leading_dropout: bool) -> nn.Sequential:
    """fc6 -> ReLU -> Dropout -> fc7; the features are fc7 before its ReLU, the ReLU is the head's activation (the
    original code strips that last ReLU before extracting features). AlexNet also drops out before fc6 (original
    AlexNet classifier: Dropout-Linear-ReLU-Dropout-Linear-ReLU); VGG16 does not (Linear-ReLU-Dropout-Linear-ReLU)."""
    layers: list[nn.Module] = [nn.Dropout(0.5)] if leading_dropout else []
    layers += [nn.Linear(in_features, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(4096, 4096)]
    return nn.Sequential(*layers)


class AlexNet(Backbone):
    """AlexNet-BN. Taps Feature1..Feature5: conv1..conv5 after BN+ReLU."""

    def __init__(self, sobel: bool = False) -> None:
        super().__init__(sobel)
        self.convs = nn.ModuleList()
        self.pools = nn.ModuleList()
        in_ch = self.in_channels
        for item in ALEXNET_CFG:
            if item == "M":
                self.pools[-1] = nn.MaxPool2d(3, 2)
                continue
            out_ch, kernel, stride, pad = item
            self.convs.append(
                nn.Sequential(
                    nn.Conv2d(in_ch, out_ch, kernel, stride, pad),
                    nn.BatchNorm2d(out_ch),
                    nn.ReLU(True),
                )
            )
            self.pools.append(nn.Identity())
            in_ch = out_ch
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))  # makes the fc stack independent of the input size
        self.classifier = _fc_stack(256 * 6 * 6, leading_dropout=True)
        self.feature_dim = 4096
        self.head_activation = nn.ReLU(inplace=True)
        _init_weights(self)

    def forward_taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self._run(x)[0]

    def _run(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        x = self._front(x)
        taps = []
        for conv, pool in zip(self.convs, self.pools, strict=True):
            x = conv(x)
            taps.append(x)
            x = pool(x)
        return taps, x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._run(x)[1]
        return self.classifier(torch.flatten(self.avgpool(x), 1))


class VGG16(Backbone):
    """VGG16-BN. Taps Feature1..Feature5: the output of each of the five blocks, after its max-pool."""

    def __init__(self, sobel: bool = False) -> None:
        super().__init__(sobel)
        self.blocks = nn.ModuleList()
        in_ch = self.in_channels
        for widths in VGG16_CFG:
            layers: list[nn.Module] = []
            for out_ch in widths:
                layers += [
                    nn.Conv2d(in_ch, out_ch, 3, padding=1),
                    nn.BatchNorm2d(out_ch),
                    nn.ReLU(True),
                ]
                in_ch = out_ch
            layers.append(nn.MaxPool2d(2, 2))
            self.blocks.append(nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = _fc_stack(512 * 7 * 7, leading_dropout=False)
        self.feature_dim = 4096
        self.head_activation = nn.ReLU(inplace=True)
        _init_weights(self)

    def forward_taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self._front(x)
        taps = []
        for block in self.blocks:
            x = block(x)
            taps.append(x)
        return taps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_taps(x)[-1]
        return self.classifier(torch.flatten(self.avgpool(x), 1))


def _conv_bn(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(True))


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn(channels, channels), _conv_bn(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResNet9(Backbone):
    """The layout of fast CIFAR-10 training (the DAWNBench "ResNet-9" of D. Page, 2018): a 3x3 prep conv, three
    stages of conv + 2x2 max-pool with widths 2w, 4w, 8w, a residual block of two convs after the first and the third;
    global average pool. At 32 px its last maps are 4 x 4. Taps Feature1..Feature5: prep (32 px), stage 1 with its
    residual (16), stage 2 (8), stage 3 before (4) and after its residual (4)."""

    def __init__(self, sobel: bool = False, width: int = 32) -> None:
        super().__init__(sobel)
        self.prep = _conv_bn(self.in_channels, width)
        self.layer1 = nn.Sequential(_conv_bn(width, 2 * width), nn.MaxPool2d(2), _Residual(2 * width))
        self.layer2 = nn.Sequential(_conv_bn(2 * width, 4 * width), nn.MaxPool2d(2))
        self.layer3 = nn.Sequential(_conv_bn(4 * width, 8 * width), nn.MaxPool2d(2))
        self.layer4 = _Residual(8 * width)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = 8 * width
        self.head_activation = nn.Identity()  # pooled features are already non-negative
        _init_weights(self)

    def forward_taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = [self.prep(self._front(x))]
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            taps.append(layer(taps[-1]))
        return taps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.avgpool(self.forward_taps(x)[-1]), 1)

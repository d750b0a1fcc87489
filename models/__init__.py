"""Architectures by name. Every model is a `Backbone`: pooled features + five layer taps."""

from __future__ import annotations

from collections.abc import Callable

from models.backbone import Backbone
from models.convnet import VGG16, AlexNet
from models.resnet import ResNet

ARCHS: dict[str, Callable[[bool], Backbone]] = {
    "resnet18": lambda sobel: ResNet(18, sobel),
    "resnet50": lambda sobel: ResNet(50, sobel),
    "resnet18_cifar": lambda sobel: ResNet(18, sobel, cifar_stem=True),
    "resnet50_cifar": lambda sobel: ResNet(50, sobel, cifar_stem=True),
    "alexnet": lambda sobel: AlexNet(sobel),
    "vgg16": lambda sobel: VGG16(sobel),
}


def build_model(arch: str, sobel: bool = False) -> Backbone:
    """A randomly initialised backbone. `sobel` prepends the fixed Sobel front end (2 input channels)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHS)}")
    return ARCHS[arch](sobel)


__all__ = ["ARCHS", "Backbone", "build_model"]

"""Architectures by name. Every model is a `Backbone`: pooled features + five layer taps."""

from __future__ import annotations

from collections.abc import Callable

import torch

from models.backbone import Backbone
from models.convnet import VGG16, AlexNet, ResNet9
from models.resnet import ResNet
from util.errors import UserError

ARCHS: dict[str, Callable[[bool], Backbone]] = {
    "resnet18": lambda sobel: ResNet(18, sobel),
    "resnet50": lambda sobel: ResNet(50, sobel),
    "resnet18_cifar": lambda sobel: ResNet(18, sobel, cifar_stem=True),
    "resnet50_cifar": lambda sobel: ResNet(50, sobel, cifar_stem=True),
    "resnet18_s2": lambda sobel: ResNet(18, sobel, stem="cifar_s2"),
    "resnet18_cifar_w32": lambda sobel: ResNet(18, sobel, stem="cifar", width=32),
    "resnet18_cifar_w16": lambda sobel: ResNet(18, sobel, stem="cifar", width=16),
    "resnet9_w32": lambda sobel: ResNet9(sobel, width=32),
    "resnet9_w64": lambda sobel: ResNet9(sobel, width=64),
    "alexnet": lambda sobel: AlexNet(sobel),
    "vgg16": lambda sobel: VGG16(sobel),
}


def build_model(arch: str, sobel: bool = False) -> Backbone:
    """A randomly initialised backbone. `sobel` prepends the fixed Sobel front end (2 input channels)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHS)}")
    return ARCHS[arch](sobel)


def _runs_at(model: Backbone, size: int) -> bool:
    try:
        with torch.no_grad():
            model.forward_taps(torch.zeros(1, 3, size, size, device=next(model.parameters()).device))
    except RuntimeError:  # a pooling or convolution window larger than its input
        return False
    return True


def check_image_size(model: Backbone, arch: str, size: int) -> None:
    """Refuse an --image-size the architecture cannot run at, naming the smallest one it can."""
    training = model.training
    model.eval()  # BatchNorm in train mode refuses a batch of one 1x1 map
    try:
        if _runs_at(model, size):
            return
        low, high = size, max(2 * size, 8)
        while not _runs_at(model, high):
            low, high = high, 2 * high
        while high - low > 1:  # smallest size that runs, in (low, high]
            middle = (low + high) // 2
            low, high = (low, middle) if _runs_at(model, middle) else (middle, high)
    finally:
        model.train(training)
    raise UserError(f"--arch {arch} cannot run on {size} px images: use --image-size {high} or larger")


__all__ = ["ARCHS", "Backbone", "build_model", "check_image_size"]

"""torch.hub entry points: one per architecture, loading any checkpoint this repository's evaluations load.

    model = torch.hub.load("OWNER/deepcluster", "deepcluster_resnet50", pretrained="https://.../checkpoint.pth")
    model = torch.hub.load("/path/to/this/clone", "deepcluster_resnet18", source="local", pretrained="ckpt.pth")

`pretrained` is a local path or a URL (downloaded once into torch.hub's checkpoint folder) in any supported layout
(this repository's checkpoints, mmselfsup, the original DeepCluster, SwAV / DeepCluster-v2, torchvision); None gives
a randomly initialised network. The model returns the pooled backbone features (B, model.feature_dim);
`model.forward_taps(x)` returns Feature1..Feature5. The classifier / clustering head of a checkpoint is dropped.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from urllib.parse import urlparse

dependencies = ["torch", "torchvision", "numpy"]

logger = logging.getLogger("deepcluster")


def _local_file(pretrained: str, progress: bool) -> str:
    if urlparse(pretrained).scheme in ("http", "https", "file"):
        import torch

        folder = Path(torch.hub.get_dir()) / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        tag = hashlib.sha256(pretrained.encode()).hexdigest()[:16]  # runs/a/ and runs/b/checkpoint.pth differ
        target = folder / f"{tag}-{Path(urlparse(pretrained).path).name}"
        if not target.exists():
            torch.hub.download_url_to_file(pretrained, str(target), progress=progress)
        return str(target)
    return pretrained


def _build(arch: str, pretrained: str | None, sobel: bool | None, progress: bool):
    import torch

    from models import build_model
    from util.eval.pretrained import load_backbone

    if pretrained is None:
        return build_model(arch, bool(sobel))
    model = load_backbone(_local_file(pretrained, progress), arch, sobel, torch.device("cpu"))
    for param in model.parameters():
        param.requires_grad_(True)  # load_backbone freezes for evaluation; a hub model is for any use
    logger.info("deepcluster %s from %s: backbone only, the classifier head is dropped", arch, pretrained)
    return model.train()


def deepcluster_resnet18(pretrained: str | None = None, sobel: bool | None = None, progress: bool = True):
    """ResNet-18 (ImageNet stem)."""
    return _build("resnet18", pretrained, sobel, progress)


def deepcluster_resnet50(pretrained: str | None = None, sobel: bool | None = None, progress: bool = True):
    """ResNet-50 (ImageNet stem), the network of mmselfsup's DeepCluster ResNet-50 + Sobel config."""
    return _build("resnet50", pretrained, sobel, progress)


def deepcluster_resnet18_cifar(pretrained: str | None = None, sobel: bool | None = None, progress: bool = True):
    """ResNet-18 with the CIFAR stem (3x3 conv, no max-pool)."""
    return _build("resnet18_cifar", pretrained, sobel, progress)


def deepcluster_resnet50_cifar(pretrained: str | None = None, sobel: bool | None = None, progress: bool = True):
    """ResNet-50 with the CIFAR stem."""
    return _build("resnet50_cifar", pretrained, sobel, progress)


def deepcluster_resnet9_w32(pretrained: str | None = None, sobel: bool | None = None, progress: bool = True):
    """The DAWNBench-style ResNet-9 at width 32, the small-data rule's network for images of at most 64 px."""
    return _build("resnet9_w32", pretrained, sobel, progress)


def deepcluster_alexnet(pretrained: str | None = None, sobel: bool | None = None, progress: bool = True):
    """The paper's AlexNet (with BatchNorm; Sobel front end when the checkpoint has it)."""
    return _build("alexnet", pretrained, sobel, progress)


def deepcluster_vgg16(pretrained: str | None = None, sobel: bool | None = None, progress: bool = True):
    """The paper's VGG-16 (with BatchNorm; Sobel front end when the checkpoint has it)."""
    return _build("vgg16", pretrained, sobel, progress)

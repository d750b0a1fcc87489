"""Published checkpoint layouts -> this repository's backbone state dicts, with a report of every key.

Layouts (key names from the public sources):
- `deepcluster`: main_deepcluster.py's own checkpoints ({"backbone": ..., "arch": ...}).
- `mmselfsup`: {"state_dict": {"backbone.*", "neck.*", "head.*"}}; DeepCluster's fixed Sobel front end lives
  outside the backbone as `sobel_layer.0` (grayscale 1x1 conv) and `sobel_layer.1` (the two 3x3 Sobel filters).
- `original`: facebookresearch/deepcluster's AlexNet / VGG16 `checkpoint.pth.tar`: {"state_dict": ...} with the
  conv stack wrapped in DataParallel (`features.module.<i>`), `classifier.<i>`, the cluster head `top_layer`, and the
  Sobel front end as `sobel.0` / `sobel.1`.
- `swav`: the SwAV / DeepCluster-v2 ResNet-50 checkpoints (torchvision names under a DDP `module.` prefix, with
  `projection_head.*` and `prototypes.*`), and the torch.hub models (plain torchvision names).
- `torchvision`: a torchvision state dict (its `fc` classifier is dropped).
The fixed Sobel filters of a checkpoint are checked against this repository's, then dropped: they are buffers here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from models.convnet import ALEXNET_CFG, VGG16_CFG
from models.sobel import Sobel
from util.errors import UserError

logger = logging.getLogger("deepcluster")


@dataclass
class Converted:
    state: dict[str, torch.Tensor]
    layout: str
    sobel: bool | None  # None: the layout does not say (torchvision: no Sobel)
    renamed: dict[str, str] = field(default_factory=dict)  # checkpoint key -> our key, where they differ
    dropped: list[str] = field(default_factory=list)

    def summary(self, name: str) -> str:
        kept = len(self.state) - len(self.renamed)
        dropped = ", ".join(_summarise(self.dropped)) or "none"
        counts = f"{kept} keys kept, {len(self.renamed)} renamed, {len(self.dropped)} dropped ({dropped})"
        return f"{name}: {self.layout} layout; {counts}"


def _summarise(keys: list[str]) -> list[str]:
    """Dropped keys grouped by their first component: `head.* (4)`."""
    groups: dict[str, int] = {}
    for key in keys:
        groups[key.split(".")[0]] = groups.get(key.split(".")[0], 0) + 1
    return [f"{group}.* ({count})" if count > 1 else group for group, count in groups.items()]


def detect_layout(ckpt: dict) -> str:
    if "backbone" in ckpt and "arch" in ckpt:
        return "deepcluster"
    state = ckpt.get("state_dict", ckpt)
    keys = list(state)
    if any(k.startswith("backbone.") for k in keys):
        return "mmselfsup"
    if any(k.startswith(("features.module.", "top_layer.")) for k in keys):
        return "original"
    if any(k.removeprefix("module.").startswith(("projection_head.", "prototypes.")) for k in keys):
        return "swav"
    return "torchvision"


def convert_checkpoint(ckpt: dict, arch: str) -> Converted:
    """The backbone weights of a checkpoint in any supported layout, named as `build_model(arch)` names them."""
    layout = detect_layout(ckpt)
    if layout == "deepcluster":
        return Converted(dict(ckpt["backbone"]), layout, ckpt.get("sobel"))
    state = {k.removeprefix("module."): v for k, v in ckpt.get("state_dict", ckpt).items()}
    if layout == "mmselfsup":
        converted = _from_mmselfsup(state)
    elif layout == "original":
        converted = _from_original(state, arch)
    else:
        drop = ("fc.", "projection_head.", "prototypes.")
        dropped = [k for k in state if k.startswith(drop)]
        converted = Converted({k: v for k, v in state.items() if not k.startswith(drop)}, layout, None, dropped=dropped)
    if converted.sobel:  # checked equal to ours by the converter; here they are buffers of the backbone
        converted.state.update({f"sobel.{k}": v for k, v in Sobel().state_dict().items()})
    return converted


def add_missing_bn_counters(state: dict, expected: dict) -> list[str]:
    """Checkpoints saved before PyTorch 0.4.1 (the original DeepCluster's) have no BatchNorm `num_batches_tracked`;
    it only drives momentum=None averaging, unused here. Adds zeros for the missing ones; returns their names."""
    added = [k for k in expected if k.endswith("num_batches_tracked") and k not in state]
    state.update({k: torch.zeros((), dtype=torch.long) for k in added})
    return added


def _check_sobel(grayscale: torch.Tensor, filters: torch.Tensor, source: str) -> None:
    """A checkpoint's fixed Sobel front end must be this repository's (grayscale weights 1/3, the x / y kernels)."""
    ours = Sobel()
    if not (
        torch.allclose(grayscale.float().reshape(1, 3, 1, 1), ours.gray_weight)
        and torch.allclose(filters.float().reshape(2, 1, 3, 3), ours.sobel_weight)
    ):
        raise UserError(f"the Sobel filters in {source} differ from this repository's fixed ones: cannot load it")


def _from_mmselfsup(state: dict) -> Converted:
    out, renamed, dropped = {}, {}, []
    for key, value in state.items():
        if key.startswith("backbone."):
            out[key.removeprefix("backbone.")] = value
            renamed[key] = key.removeprefix("backbone.")
        else:
            dropped.append(key)
    sobel = "sobel_layer.0.weight" in state
    if sobel:
        _check_sobel(state["sobel_layer.0.weight"], state["sobel_layer.1.weight"], "the mmselfsup checkpoint")
    return Converted(out, "mmselfsup", sobel, renamed, dropped)


def _original_feature_names(arch: str) -> dict[int, str]:
    """Index in the original `features` Sequential (conv, BN, ReLU per conv; max-pools) -> our module path."""
    names: dict[int, str] = {}
    index = 0
    if arch == "alexnet":
        conv = 0
        for item in ALEXNET_CFG:
            if item == "M":
                index += 1
                continue
            names[index], names[index + 1] = f"convs.{conv}.0", f"convs.{conv}.1"
            index, conv = index + 3, conv + 1
        return names
    for block, widths in enumerate(VGG16_CFG):
        for position in range(len(widths)):
            names[index], names[index + 1] = f"blocks.{block}.{3 * position}", f"blocks.{block}.{3 * position + 1}"
            index += 3
        index += 1  # the block's max-pool
    return names


# The original classifiers: AlexNet Dropout-Linear-ReLU-Dropout-Linear-ReLU (fc6 = 1, fc7 = 4); VGG16
# Linear-ReLU-Dropout-Linear-ReLU (fc6 = 0, fc7 = 3). Our stacks keep the same indices (models/convnet.py).
def _from_original(state: dict, arch: str) -> Converted:
    if arch not in ("alexnet", "vgg16"):
        raise UserError(f"an original DeepCluster checkpoint holds an AlexNet or a VGG16, not --arch {arch}")
    features = _original_feature_names(arch)
    out, renamed, dropped = {}, {}, []
    for key, value in state.items():
        if key.startswith("features.module."):
            index, _, rest = key.removeprefix("features.module.").partition(".")
            if int(index) not in features:
                raise UserError(f"checkpoint key {key} is not a layer of the original {arch}: check --arch")
            ours = f"{features[int(index)]}.{rest}"
            out[ours], renamed[key] = value, ours
        elif key.startswith("classifier."):
            out[key] = value
        else:
            dropped.append(key)  # top_layer (the cluster head) and the Sobel filters
    sobel = "sobel.0.weight" in state
    if sobel:
        _check_sobel(state["sobel.0.weight"], state["sobel.1.weight"], "the original DeepCluster checkpoint")
    return Converted(out, "original", sobel, renamed, dropped)

"""Backbone weights in the formats of the transfer tools: torchvision, detectron2, mmdetection / mmsegmentation.

Every format holds a plain ImageNet-stem ResNet (torchvision's parameter names, which this repository's ResNets
keep); the classifier / clustering head is never part of a backbone and is not exported. A network whose first
convolution these formats cannot hold (the Sobel front end's 2 input channels, the 3x3 CIFAR stem) or that is not a
ResNet is refused with one line.
"""

from __future__ import annotations

import pickle
from typing import Any

import torch

from util.errors import UserError

FORMATS = ("torchvision", "detectron2", "mmdet")
EXPORTABLE_ARCHS = ("resnet18", "resnet50")  # the ImageNet-stem ResNets torchvision, detectron2 and mmcv build


def check_exportable(arch: str, sobel: bool, fmt: str) -> None:
    """Refuse, in one line, a network that the format cannot hold."""
    if sobel:
        raise UserError(
            f"--format {fmt} needs a 3-channel first convolution; this network has the Sobel front end "
            "(2 channels): export a network trained without --sobel"
        )
    if arch not in EXPORTABLE_ARCHS:
        raise UserError(
            f"--format {fmt} holds torchvision's ImageNet-stem ResNets ({', '.join(EXPORTABLE_ARCHS)}), "
            f"not --arch {arch}: use this repository's checkpoint directly (--pretrained) for {arch}"
        )


def torchvision_state(backbone: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The backbone's state dict as torchvision names it (it loads with strict=True into torchvision's
    resnet18() / resnet50() once `fc` is removed); BatchNorm counters included, as torchvision saves them."""
    state = {k: v.detach().cpu().clone() for k, v in backbone.state_dict().items()}
    unexpected = [k for k in state if k.split(".")[0] not in {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4"}]
    if unexpected:
        raise UserError(f"the backbone holds keys torchvision's ResNet does not ({', '.join(unexpected[:3])})")
    return state


def detectron2_name(key: str) -> str:
    """torchvision ResNet name -> detectron2 ResNet name, by detectron2's published renaming rules
    (tools/convert-torchvision-to-d2.py; the same rules MoCo's detection conversion uses): stem.* outside the
    stages, layerN -> res(N+1), bnK -> convK.norm, downsample.0 -> shortcut, downsample.1 -> shortcut.norm."""
    if "layer" not in key:
        key = "stem." + key
    for stage in (1, 2, 3, 4):
        key = key.replace(f"layer{stage}", f"res{stage + 1}")
    for conv in (1, 2, 3):
        key = key.replace(f"bn{conv}", f"conv{conv}.norm")
    return key.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")


def detectron2_checkpoint(state: dict[str, torch.Tensor], author: str) -> dict[str, Any]:
    """detectron2's pickled format: numpy arrays under "model", with matching_heuristics so that detectron2 maps
    these names onto its backbone (and its `backbone.bottom_up.` prefix for FPN models)."""
    model = {detectron2_name(k): v.numpy() for k, v in state.items()}
    return {"model": model, "__author__": author, "matching_heuristics": True}


def mmcv_checkpoint(state: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """mmdetection / mmsegmentation backbone weights: mmcv's ResNet uses torchvision's names, loaded through the
    backbone's init_cfg=dict(type='Pretrained', checkpoint=PATH) from a {"state_dict": ...} file (the layout of
    mmselfsup's extract_backbone_weights)."""
    return {"state_dict": state, "meta": meta}


def write_export(state: dict[str, torch.Tensor], fmt: str, handle, meta: dict[str, Any]) -> None:
    """Write one format to an open binary file."""
    if fmt == "torchvision":
        torch.save(state, handle)
    elif fmt == "detectron2":
        pickle.dump(detectron2_checkpoint(state, meta.get("author", "deepcluster")), handle)
    elif fmt == "mmdet":
        torch.save(mmcv_checkpoint(state, meta), handle)
    else:
        raise UserError(f"--format {fmt} unknown: choose from {', '.join(FORMATS)}")

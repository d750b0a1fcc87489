"""Backbones for evaluation: a main_deepcluster.py checkpoint, a torchvision-format state dict, or random init."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch

from models import ARCHS, Backbone, build_model
from util.checkpoint import load_checkpoint, load_state_strict
from util.errors import UserError

logger = logging.getLogger("deepcluster")

RANDOM = "random"


def resolve_arch(pretrained: str, arch: str | None, sobel: bool | None) -> tuple[str, bool, dict | None]:
    """The arch and Sobel flag to build: from the checkpoint when it records them, which must agree with the flags."""
    if pretrained == RANDOM:
        if arch is None:
            raise UserError("--pretrained random needs --arch (the architecture of the random network)")
        return arch, bool(sobel), None
    ckpt = load_checkpoint(pretrained)
    if isinstance(ckpt, dict) and "backbone" in ckpt and "arch" in ckpt:
        if arch is not None and arch != ckpt["arch"]:
            raise UserError(
                f"checkpoint {pretrained} is a {ckpt['arch']} network, not --arch {arch}: drop --arch or fix it"
            )
        if sobel is not None and sobel != ckpt["sobel"]:
            raise UserError(f"checkpoint {pretrained} was trained with sobel={ckpt['sobel']}: drop --sobel/--no-sobel")
        return ckpt["arch"], ckpt["sobel"], ckpt
    if arch is None:
        raise UserError(f"{pretrained} is a plain state dict: pass its --arch ({', '.join(sorted(ARCHS))})")
    return arch, bool(sobel), ckpt


def backbone_state(ckpt: dict) -> tuple[dict, list[str]]:
    """The backbone weights of a checkpoint, and the classifier keys dropped from a torchvision state dict."""
    if "backbone" in ckpt:
        return ckpt["backbone"], []
    state = ckpt.get("state_dict", ckpt)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    dropped = [k for k in state if k.startswith("fc.")]  # torchvision's ImageNet classifier: not part of the backbone
    return {k: v for k, v in state.items() if k not in dropped}, dropped


def load_backbone(pretrained: str, arch: str | None, sobel: bool | None, device: torch.device) -> Backbone:
    """Build the backbone and load its weights strictly; frozen (no grad) and in eval mode."""
    arch, sobel, ckpt = resolve_arch(pretrained, arch, sobel)
    model = build_model(arch, sobel)
    if ckpt is not None:
        state, dropped = backbone_state(ckpt)
        if dropped:
            logger.info("ignoring the classifier keys of %s: %s", Path(pretrained).name, ", ".join(dropped))
        load_state_strict(model, state, f"weights {pretrained}")
    for param in model.parameters():
        param.requires_grad_(False)
    return model.to(device).eval()


def networks_to_evaluate(pretrained: str, baseline: str) -> list[tuple[str, str]]:
    """(name, weights) pairs: the pretrained network, then the random-init baseline of the same arch."""
    if pretrained == RANDOM:
        return [("random_init", RANDOM)]
    return [("pretrained", pretrained)] + ([("random_init", RANDOM)] if baseline == "random" else [])


def weights_sha256(weights: str, arch: str, sobel: bool, seed: int) -> str:
    """The content hash that keys every piece of evaluation state and every reported number.

    A file: sha256 of its bytes (a checkpoint overwritten by further training gets a new hash, whatever its mtime).
    `random`: sha256 of the random-init network's tensors, as the evaluations build it (seeded with `seed`)."""
    digest = hashlib.sha256()
    if weights != RANDOM:
        with open(weights, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        return digest.hexdigest()
    torch.manual_seed(seed)
    for name, tensor in build_model(arch, sobel).state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()

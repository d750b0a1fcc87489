"""Backbones for evaluation: a main_deepcluster.py checkpoint, a torchvision-format state dict, or random init."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch

from models import ARCHS, Backbone, build_model
from util.checkpoint import load_checkpoint, load_state_strict
from util.errors import UserError
from util.eval.layouts import add_missing_bn_counters, convert_checkpoint, detect_layout
from util.precision import to_channels_last
from util.tracking import Lineage, lineage_of

logger = logging.getLogger("deepcluster")

RANDOM = "random"


def resolve_arch(pretrained: str, arch: str | None, sobel: bool | None) -> tuple[str, bool, dict | None]:
    """The arch and Sobel flag to build: from the checkpoint when it records them, which must agree with the flags."""
    if pretrained == RANDOM:
        if arch is None:
            raise UserError("--pretrained random needs --arch (the architecture of the random network)")
        return arch, bool(sobel), None
    ckpt = load_checkpoint(pretrained)
    if not isinstance(ckpt, dict):
        raise UserError(f"{pretrained} holds a {type(ckpt).__name__}, not a checkpoint or state dict")
    layout = detect_layout(ckpt)
    if layout == "deepcluster":
        if arch is not None and arch != ckpt["arch"]:
            raise UserError(
                f"checkpoint {pretrained} is a {ckpt['arch']} network, not --arch {arch}: drop --arch or fix it"
            )
        if sobel is not None and sobel != ckpt["sobel"]:
            raise UserError(f"checkpoint {pretrained} was trained with sobel={ckpt['sobel']}: drop --sobel/--no-sobel")
        return ckpt["arch"], ckpt["sobel"], ckpt
    if arch is None:
        raise UserError(f"{pretrained} is a {layout} checkpoint: pass its --arch ({', '.join(sorted(ARCHS))})")
    has_sobel = convert_checkpoint(ckpt, arch).sobel
    if has_sobel is not None and sobel is not None and sobel != has_sobel:
        raise UserError(
            f"{pretrained} ({layout}) {'has' if has_sobel else 'has no'} Sobel front end: drop --sobel/--no-sobel"
        )
    return arch, bool(has_sobel if has_sobel is not None else sobel), ckpt


def load_backbone(
    pretrained: str, arch: str | None, sobel: bool | None, device: torch.device, channels_last: bool = False
) -> Backbone:
    """Build the backbone and load its weights strictly (any layout of util/eval/published.py, with a printed report of
    the kept, renamed and dropped keys); frozen (no grad) and in eval mode; in channels_last when asked."""
    arch, sobel, ckpt = resolve_arch(pretrained, arch, sobel)
    model = build_model(arch, sobel)
    if ckpt is not None:
        converted = convert_checkpoint(ckpt, arch)
        added = add_missing_bn_counters(converted.state, model.state_dict())
        if converted.layout != "deepcluster" or added:
            note = f"; {len(added)} BatchNorm counters added (saved before PyTorch 0.4.1)" if added else ""
            logger.info("%s%s", converted.summary(Path(pretrained).name), note)
        load_state_strict(model, converted.state, f"weights {pretrained}")
    for param in model.parameters():
        param.requires_grad_(False)
    return to_channels_last(model.to(device), channels_last).eval()


def resolve_pretrained(args) -> Lineage | None:
    """--arch and --sobel from what --pretrained records (when not given), and the W&B lineage of the checkpoint (its
    pretraining run, group and project), for every evaluation script."""
    args.arch, args.sobel, ckpt = resolve_arch(args.pretrained, args.arch, args.sobel)
    return lineage_of(ckpt, args.pretrained)


def networks_to_evaluate(pretrained: str, baseline: str) -> list[tuple[str, str]]:
    """(name, weights) pairs: the pretrained network, then the random-init baseline of the same arch."""
    if pretrained == RANDOM:
        return [("random_init", RANDOM)]
    return [("pretrained", pretrained)] + ([("random_init", RANDOM)] if baseline == "random" else [])


def weights_identities(networks: list[tuple[str, str]], arch: str, sobel: bool, seed: int) -> dict[str, dict]:
    """{name: {path, sha256}} of the networks an evaluation runs: what results.json and every table row cite."""
    return {
        name: {
            "path": path if path == RANDOM else str(Path(path).resolve()),
            "sha256": weights_sha256(path, arch, sobel, seed),
        }
        for name, path in networks
    }


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

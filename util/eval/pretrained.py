"""Backbones for evaluation: a main_deepcluster.py checkpoint, a torchvision-format state dict, or random init."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from torch import nn

from models import ARCHS, Backbone, build_model
from util.batchnorm import recompute_batchnorm
from util.checkpoint import load_checkpoint, load_state_strict
from util.data import ImageSource
from util.errors import UserError
from util.eval.layouts import add_missing_bn_counters, convert_checkpoint, detect_layout
from util.precision import to_channels_last
from util.tracking import Lineage, lineage_of

logger = logging.getLogger("deepcluster")

RANDOM = "random"
PIXELS = "pixels"  # the "weights" of the pixel baseline: no network, the input images themselves (util/pixels.py)

# Every network an evaluation scores, and the prefix of its keys in results.json. The random-init network is scored
# twice, as the pretraining monitor does: with BatchNorm's initial statistics and with statistics recomputed on the
# evaluation's training images; a gain over random init is over the higher of the two, key by key.
NETWORK_PREFIXES = {
    "pretrained": "",
    "random_init": "random_init_",
    "random_init_recomputed_bn": "random_init_recomputed_bn_",
    "pixels": "pixels_",
}
RANDOM_NETWORKS = ("random_init", "random_init_recomputed_bn")
NETWORK_LABELS = {
    "random_init": "random init",
    "random_init_recomputed_bn": "random init, BatchNorm recomputed",
    "pixels": "pixels",
}


def network_of(key: str) -> tuple[str, str]:
    """(network, unprefixed key) of a results key: the longest network prefix it starts with."""
    for network, prefix in sorted(NETWORK_PREFIXES.items(), key=lambda item: -len(item[1])):
        if key.startswith(prefix):
            return network, key[len(prefix) :]
    raise AssertionError("the pretrained prefix is empty")


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
    """(name, weights) pairs: the pretrained network, then the baselines --baseline asks for: the random-init network
    of the same arch both ways (`random`, `all`) and the pixels (`all`)."""
    if pretrained == RANDOM:
        return [("random_init", RANDOM)]
    networks = [("pretrained", pretrained)]
    if baseline in ("random", "all"):
        networks += [(network, RANDOM) for network in RANDOM_NETWORKS]
    if baseline == "all":
        networks.append(("pixels", PIXELS))
    return networks


class PixelNet(nn.Module):
    """The pixel baseline in place of a backbone: one tap, the input images flattened as (B, 3 S S, 1, 1), so the
    AvgPool probe and the kNN read the pixels (util/pixels.py's `input` view) where they read a network's pooled
    features. It has no multi-head taps."""

    feature_dim = None

    def forward_taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x.float().flatten(1)[:, :, None, None]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().flatten(1)


def evaluated_network(
    network: str,
    weights: str,
    arch: str,
    sobel: bool,
    device: torch.device,
    train: ImageSource,
    channels_last: bool = False,
) -> nn.Module:
    """The frozen network an evaluation scores: the checkpoint's or the random-init backbone (seeded by the caller),
    the random one with its BatchNorm statistics recomputed on `train` for random_init_recomputed_bn, or PixelNet."""
    if network == "pixels":
        return PixelNet().eval()
    backbone = load_backbone(weights, arch, sobel, device, channels_last)
    if network == "random_init_recomputed_bn":
        backbone = recompute_batchnorm(backbone, train, device)
    return backbone


def weights_identities(networks: list[tuple[str, str]], arch: str, sobel: bool, seed: int) -> dict[str, dict]:
    """{name: {path, sha256}} of the networks an evaluation runs: what results.json and every table row cite. The
    random network with recomputed BatchNorm statistics is named by the random weights' hash and the recomputation
    (its statistics depend on the evaluation's training images, part of every task's key); the pixels by a constant."""
    identities, hashes = {}, {}
    for name, path in networks:
        if name == "pixels":
            identities[name] = {"path": PIXELS, "sha256": hashlib.sha256(b"pixels").hexdigest()}
            continue
        sha = hashes[path] = hashes.get(path) or weights_sha256(path, arch, sobel, seed)  # the random weights once
        if name == "random_init_recomputed_bn":
            sha = hashlib.sha256(f"{sha}:batchnorm-recomputed".encode()).hexdigest()
        identities[name] = {"path": path if path == RANDOM else str(Path(path).resolve()), "sha256": sha}
    return identities


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

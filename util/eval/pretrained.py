"""Backbones for evaluation: a main_deepcluster.py checkpoint, a torchvision-format state dict, or random init."""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from models import ARCHS, Backbone, build_model
from util.batchnorm import recompute_batchnorm
from util.checkpoint import load_state_strict
from util.data import ImageSource
from util.errors import UserError
from util.eval.layouts import add_missing_bn_counters, convert_checkpoint, detect_layout
from util.pixels import pixel_skip_reason
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


@dataclass(frozen=True)
class Checkpoint:
    """A weights file read once: its path, the sha256 of its bytes (what keys every result and every piece of
    evaluation state), and its content (a main_deepcluster.py checkpoint or a state dict of a known layout)."""

    path: str
    sha256: str
    content: dict

    @property
    def identity(self) -> dict:
        """The {path, sha256} record results.json and every table row cite."""
        return {"path": str(Path(self.path).resolve()), "sha256": self.sha256}


def read_checkpoint(weights: str) -> Checkpoint:
    """Read a weights file once: hashed and loaded from the same bytes."""
    path = Path(weights)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist: check the path given to --pretrained")
    data = path.read_bytes()
    try:
        content = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except Exception as err:
        raise UserError(
            f"checkpoint {path} cannot be read ({type(err).__name__}): it is damaged or not a checkpoint"
        ) from err
    if not isinstance(content, dict):
        raise UserError(f"{path} holds a {type(content).__name__}, not a checkpoint or state dict")
    return Checkpoint(weights, hashlib.sha256(data).hexdigest(), content)


def resolve_arch(checkpoint: Checkpoint | None, arch: str | None, sobel: bool | None) -> tuple[str, bool]:
    """The arch and Sobel flag to build: from the checkpoint when it records them, which must agree with the flags;
    for the random network (no checkpoint), the flags."""
    if checkpoint is None:
        if arch is None:
            raise UserError("--pretrained random needs --arch (the architecture of the random network)")
        return arch, bool(sobel)
    ckpt, path = checkpoint.content, checkpoint.path
    layout = detect_layout(ckpt)
    if layout == "deepcluster":
        if arch is not None and arch != ckpt["arch"]:
            raise UserError(f"checkpoint {path} is a {ckpt['arch']} network, not --arch {arch}: drop --arch or fix it")
        if sobel is not None and sobel != ckpt["sobel"]:
            raise UserError(f"checkpoint {path} was trained with sobel={ckpt['sobel']}: drop --sobel/--no-sobel")
        return ckpt["arch"], ckpt["sobel"]
    if arch is None:
        raise UserError(f"{path} is a {layout} checkpoint: pass its --arch ({', '.join(sorted(ARCHS))})")
    has_sobel = convert_checkpoint(ckpt, arch).sobel
    if has_sobel is not None and sobel is not None and sobel != has_sobel:
        raise UserError(
            f"{path} ({layout}) {'has' if has_sobel else 'has no'} Sobel front end: drop --sobel/--no-sobel"
        )
    return arch, bool(has_sobel if has_sobel is not None else sobel)


def load_backbone(
    weights: str | Checkpoint, arch: str | None, sobel: bool | None, device: torch.device, channels_last: bool = False
) -> Backbone:
    """Build the backbone and load its weights strictly (any layout of util/eval/layouts.py, with a printed report of
    the kept, renamed and dropped keys); `random`: as initialised (seeded by the caller). Frozen (no grad) and in eval
    mode; in channels_last when asked."""
    checkpoint = read_checkpoint(weights) if isinstance(weights, str) and weights != RANDOM else weights
    checkpoint = checkpoint if isinstance(checkpoint, Checkpoint) else None
    arch, sobel = resolve_arch(checkpoint, arch, sobel)
    model = build_model(arch, sobel)
    if checkpoint is not None:
        converted = convert_checkpoint(checkpoint.content, arch)
        added = add_missing_bn_counters(converted.state, model.state_dict())
        if converted.layout != "deepcluster" or added:
            note = f"; {len(added)} BatchNorm counters added (saved before PyTorch 0.4.1)" if added else ""
            logger.info("%s%s", converted.summary(Path(checkpoint.path).name), note)
        load_state_strict(model, converted.state, f"weights {checkpoint.path}")
    for param in model.parameters():
        param.requires_grad_(False)
    return to_channels_last(model.to(device), channels_last).eval()


def resolve_pretrained(args) -> tuple[Checkpoint | None, Lineage | None]:
    """--pretrained read once (None for `random`), --arch and --sobel from what it records (when not given), and the
    W&B lineage of the checkpoint (its pretraining run, group and project), for every evaluation script."""
    checkpoint = None if args.pretrained == RANDOM else read_checkpoint(args.pretrained)
    args.arch, args.sobel = resolve_arch(checkpoint, args.arch, args.sobel)
    return checkpoint, lineage_of(None if checkpoint is None else checkpoint.content, args.pretrained)


def networks_to_evaluate(checkpoint: Checkpoint | None, baseline: str) -> list[tuple[str, Checkpoint | str]]:
    """(name, weights) pairs: the pretrained network (its checkpoint, read once), then the baselines --baseline asks
    for: the random-init network of the same arch both ways (`random`, `all`) and the pixels (`all`). No checkpoint
    (--pretrained random): the random network alone."""
    if checkpoint is None:
        return [("random_init", RANDOM)]
    networks: list[tuple[str, Checkpoint | str]] = [("pretrained", checkpoint)]
    if baseline in ("random", "all"):
        networks += [(network, RANDOM) for network in RANDOM_NETWORKS]
    if baseline == "all":
        networks.append(("pixels", PIXELS))
    return networks


def measurable_networks(
    networks: list[tuple[str, Checkpoint | str]], num_train: int, num_test: int, image_size: int
) -> tuple[list[tuple[str, Checkpoint | str]], str | None]:
    """The networks without the pixels where they are too large to be a baseline (util/pixels.py), and why (None:
    kept, or never asked for); said in a log line."""
    if ("pixels", PIXELS) not in networks:
        return networks, None
    skipped = pixel_skip_reason(num_train, num_test, image_size)
    if skipped is None:
        return networks, None
    logger.info("pixel baseline not measured: %s", skipped)
    return [network for network in networks if network[0] != "pixels"], skipped


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
    weights: Checkpoint | str,
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


def network_identities(
    networks: list[tuple[str, Checkpoint | str]], arch: str, sobel: bool, seed: int
) -> dict[str, dict]:
    """{name: identity} of the networks an evaluation runs, each identity the {path, sha256} record results.json and
    every table row cite: the checkpoint's (hashed when it was read), the random weights' (hashed once for both
    BatchNorm variants; the recomputed one is named by that hash and the recomputation, whose statistics depend on
    the evaluation's training images, part of every task's key), the pixels' (a constant)."""
    identities, random_sha = {}, None
    for name, weights in networks:
        if name == "pixels":
            identities[name] = {"path": PIXELS, "sha256": hashlib.sha256(b"pixels").hexdigest()}
        elif isinstance(weights, Checkpoint):
            identities[name] = weights.identity
        else:
            random_sha = random_sha or random_sha256(arch, sobel, seed)
            sha = random_sha
            if name == "random_init_recomputed_bn":
                sha = hashlib.sha256(f"{sha}:batchnorm-recomputed".encode()).hexdigest()
            identities[name] = {"path": RANDOM, "sha256": sha}
    return identities


def random_sha256(arch: str, sobel: bool, seed: int) -> str:
    """sha256 of the random-init network's tensors, as the evaluations build it (seeded with `seed`): the content
    hash that keys the random network's evaluation state and numbers, as a file's bytes key a checkpoint's."""
    digest = hashlib.sha256()
    torch.manual_seed(seed)
    for name, tensor in build_model(arch, sobel).state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()

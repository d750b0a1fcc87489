"""Training augmentations and the deterministic extraction view, per sample (PIL) and batched (tensors).

Both paths implement one `AugmentSpec`. The batched path augments a whole uint8 batch at once on its device
(CPU or GPU) with one affine `grid_sample` per batch: it is what in-memory datasets use, so that small
datasets pay neither JPEG decoding nor per-image Python. Its random parameters are drawn on the device of the
generator it is given, and its constants are made once per device: on a GPU a batch costs no host-to-device copy
and no host wait. Its departures from torchvision's per-image
transforms: bilinear resampling without antialiasing, and the colour jitter applied in a fixed order
(brightness, contrast, saturation, hue) rather than a random one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import torch
import torch.nn.functional as F
from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# AlexNet-style PCA lighting noise (Krizhevsky et al. 2012): the eigenvalues / eigenvectors of ImageNet's RGB
# covariance (pixels in [0, 1]), the values every Lighting transform uses (fb.resnet.torch, mmselfsup).
LIGHTING_EIGVAL = (0.2175, 0.0188, 0.0045)
LIGHTING_EIGVEC = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))


@dataclass(frozen=True)
class AugmentSpec:
    size: int  # output crop size (px)
    scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop area range
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    rotation: float = 0.0  # degrees, uniform in [-rotation, rotation]
    jitter: tuple[float, float, float, float] = (
        0.0,
        0.0,
        0.0,
        0.0,
    )  # brightness, contrast, saturation, hue
    jitter_p: float = 0.0
    grayscale_p: float = 0.0
    lighting: float = 0.0  # std of the AlexNet PCA lighting noise (0: off)
    blur_p: float = 0.0  # Gaussian blur probability, sigma uniform in BLUR_SIGMA px (SwAV's PIL blur radius)


def augment_preset(name: str, size: int) -> AugmentSpec:
    """The presets of docs/recipes.md: `paper` (crop + flip), `mmselfsup` (mmselfsup's DeepCluster config), `cifar`
    (32 px), `noflip` (digits); `linear`: the training view of mmselfsup's multi-head linear evaluation (crop + flip +
    ColorJitter(0.4, 0.4, 0.4) + Lighting)."""
    if name == "paper":
        return AugmentSpec(size)
    if name == "linear":
        return AugmentSpec(size, jitter=(0.4, 0.4, 0.4, 0.0), jitter_p=1.0, lighting=0.1)
    if name == "mmselfsup":
        return AugmentSpec(
            size,
            rotation=2.0,
            jitter=(0.4, 0.4, 1.0, 0.5),
            jitter_p=1.0,
            grayscale_p=0.2,
        )
    if name == "cifar":
        return AugmentSpec(
            size,
            scale=(0.2, 1.0),
            jitter=(0.4, 0.4, 0.4, 0.1),
            jitter_p=0.8,
            grayscale_p=0.2,
        )
    if name == "noflip":  # for classes a mirror image changes (digits, letters, symbols): no flip, milder crops
        return AugmentSpec(
            size,
            scale=(0.4, 1.0),
            flip=False,
            rotation=10.0,
            jitter=(0.4, 0.4, 0.4, 0.1),
            jitter_p=0.8,
            grayscale_p=0.2,
        )
    raise ValueError(f"unknown augmentation preset {name!r}")


AUGMENT_PRESETS = ("paper", "mmselfsup", "cifar", "noflip")  # for pretraining; `linear` is the evaluations' own
BLUR_SIGMA = (0.1, 2.0)
BLUR_KERNEL = 13  # taps of the blur kernel: +-3 sigma at the largest sigma


def multicrop_specs(
    nmb_crops: list[int],
    sizes: list[int],
    min_scales: list[float],
    max_scales: list[float],
    blur: bool,
    flip: bool = True,
) -> list[AugmentSpec]:
    """One spec per crop (SwAV's multi-crop): random resized crop at its size and scale range, flip, colour
    jitter (0.8, 0.8, 0.8, 0.2) with p=0.8, grayscale p=0.2, and Gaussian blur p=0.5 when `blur` (ImageNet)."""
    specs = []
    for count, size, low, high in zip(nmb_crops, sizes, min_scales, max_scales, strict=True):
        spec = AugmentSpec(
            size,
            scale=(low, high),
            flip=flip,
            jitter=(0.8, 0.8, 0.8, 0.2),
            jitter_p=0.8,
            grayscale_p=0.2,
            blur_p=0.5 if blur else 0.0,
        )
        specs.extend([spec] * count)
    return specs


# ------------------------------------------------------------------------------------ per-sample (PIL)
def train_transform(spec: AugmentSpec) -> T.Compose:
    ops: list = [T.RandomResizedCrop(spec.size, scale=spec.scale, ratio=spec.ratio)]
    if spec.flip:
        ops.append(T.RandomHorizontalFlip())
    if spec.rotation:
        ops.append(T.RandomRotation(spec.rotation))
    if spec.jitter_p > 0:
        ops.append(T.RandomApply([T.ColorJitter(*spec.jitter)], p=spec.jitter_p))
    if spec.grayscale_p > 0:
        ops.append(T.RandomGrayscale(spec.grayscale_p))
    if spec.blur_p > 0:
        ops.append(T.RandomApply([T.GaussianBlur(BLUR_KERNEL, BLUR_SIGMA)], p=spec.blur_p))
    ops.append(T.ToTensor())
    if spec.lighting > 0:
        ops.append(Lighting(spec.lighting))
    ops.append(T.Normalize(IMAGENET_MEAN, IMAGENET_STD))
    return T.Compose(ops)


@cache
def constant(values: tuple, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A tensor of fixed values, made once per device and dtype (a GPU pays its copy once, not once per batch)."""
    return torch.tensor(values, dtype=dtype, device=device)


def lighting_shift(alpha: torch.Tensor) -> torch.Tensor:
    """alpha (B, 3) ~ N(0, std) -> the RGB shift (B, 3) = eigvec @ (alpha * eigval) added to every pixel."""
    eigval = constant(LIGHTING_EIGVAL, alpha.device, alpha.dtype)
    eigvec = constant(LIGHTING_EIGVEC, alpha.device, alpha.dtype)
    return (alpha * eigval) @ eigvec.T


class Lighting:
    """AlexNet PCA lighting noise on a (3, H, W) tensor in [0, 1] (per-image path; torch's global RNG)."""

    def __init__(self, std: float) -> None:
        self.std = std

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return image + lighting_shift(torch.randn(1, 3) * self.std)[0][:, None, None]


def resize_size(crop: int) -> int:
    """The resize before the center crop: 256 for 224 (the ImageNet convention), identity at 32 px."""
    return crop if crop <= 64 else round(crop * 256 / 224)


def eval_transform(crop: int, square: bool = False) -> T.Compose:
    """Deterministic view: resize then center crop (or a plain square resize, for VOC07 SVMs)."""
    resize = T.Resize((crop, crop)) if square else T.Resize(resize_size(crop))
    return T.Compose(
        [
            resize,
            T.CenterCrop(crop),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


# --------------------------------------------------------------------------------------- batched
def normalize_uint8(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> float normalised with the ImageNet statistics."""
    mean = constant(IMAGENET_MEAN, images.device)[:, None, None]
    std = constant(IMAGENET_STD, images.device)[:, None, None]
    return (images.float() / 255.0 - mean) / std


def center_crop_batch(images: torch.Tensor, crop: int) -> torch.Tensor:
    """(B, 3, S, S) uint8 stored at resize_size(crop) -> normalised (B, 3, crop, crop)."""
    top = (images.shape[-2] - crop) // 2
    left = (images.shape[-1] - crop) // 2
    return normalize_uint8(images[..., top : top + crop, left : left + crop])


class BatchAugment:
    """Batched `AugmentSpec` for (B, 3, H, W) uint8 tensors; randomness from the given generator, on its device."""

    def __init__(self, spec: AugmentSpec) -> None:
        self.spec = spec

    def __call__(self, images: torch.Tensor, gen: torch.Generator, rank: int = 0, world_size: int = 1) -> torch.Tensor:
        """images: (B, 3, H, W) uint8 on the generator's device. Distributed: every rank draws the parameters of the
        whole global batch (B x world_size) from the same generator and keeps rows rank::world_size, so a run on N
        processes augments each image exactly as a single process with an N-times larger batch would."""
        if images.device != gen.device:
            raise ValueError(f"images on {images.device} but the generator on {gen.device}: draw where the images are")
        batch, device = images.shape[0], images.device
        total = batch * world_size
        mine = slice(rank, None, world_size)
        x = images.float() / 255.0
        theta = self._affine(total, gen)[mine]
        grid = F.affine_grid(theta, [batch, 3, self.spec.size, self.spec.size], align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        if self.spec.jitter_p > 0:
            x = self._jitter(x, gen, total, mine)
        if self.spec.grayscale_p > 0:
            gray = (_uniform(total, gen, 0, 1) < self.spec.grayscale_p)[mine]
            x = torch.where(gray[:, None, None, None], _gray(x).expand_as(x), x)
        if self.spec.blur_p > 0:
            blurred = (_uniform(total, gen, 0, 1) < self.spec.blur_p)[mine]
            sigma = _uniform(total, gen, *BLUR_SIGMA)[mine]
            x = torch.where(blurred[:, None, None, None], _blur(x, sigma), x)
        if self.spec.lighting > 0:
            alpha = torch.randn(total, 3, generator=gen, device=device)[mine] * self.spec.lighting
            x = x + lighting_shift(alpha)[:, :, None, None]
        mean = constant(IMAGENET_MEAN, device)[:, None, None]
        std = constant(IMAGENET_STD, device)[:, None, None]
        return (x - mean) / std

    def _affine(self, batch: int, gen: torch.Generator) -> torch.Tensor:
        """Per-image (2, 3) maps from output to input coordinates: crop box, flip and rotation."""
        spec, device = self.spec, gen.device
        attempts = 10
        area = _uniform((batch, attempts), gen, *spec.scale)
        log_ratio = _uniform((batch, attempts), gen, math.log(spec.ratio[0]), math.log(spec.ratio[1]))
        width, height = (area * log_ratio.exp()).sqrt(), (area / log_ratio.exp()).sqrt()
        valid = (width <= 1) & (height <= 1)
        found = valid.any(1)
        first = torch.where(found, valid.float().argmax(1), torch.zeros(batch, dtype=torch.long, device=device))
        rows = torch.arange(batch, device=device)
        ones = torch.ones(batch, device=device)
        width = torch.where(found, width[rows, first], ones)  # fallback: whole image
        height = torch.where(found, height[rows, first], ones)
        center_x = (1 - width) * (2 * _uniform(batch, gen, 0, 1) - 1)  # crop fully inside [-1, 1]
        center_y = (1 - height) * (2 * _uniform(batch, gen, 0, 1) - 1)
        sign_x = torch.where(_uniform(batch, gen, 0, 1) < 0.5, -1.0, 1.0) if spec.flip else ones
        angle = _uniform(batch, gen, -spec.rotation, spec.rotation) * math.pi / 180
        cos, sin = angle.cos(), angle.sin()
        row_x = torch.stack([cos * width * sign_x, -sin * height, center_x], 1)
        row_y = torch.stack([sin * width * sign_x, cos * height, center_y], 1)
        return torch.stack([row_x, row_y], 1)  # (batch, 2, 3)

    def _jitter(self, x: torch.Tensor, gen: torch.Generator, total: int, mine: slice) -> torch.Tensor:
        brightness, contrast, saturation, hue = self.spec.jitter
        apply = (_uniform(total, gen, 0, 1) < self.spec.jitter_p)[mine][:, None, None, None]

        def factor(strength: float) -> torch.Tensor:
            return _uniform(total, gen, max(0.0, 1 - strength), 1 + strength)[mine][:, None, None, None]

        y = x
        if brightness:
            y = (y * factor(brightness)).clamp(0, 1)
        if contrast:
            mean = _gray(y).mean((1, 2, 3), keepdim=True)
            y = ((y - mean) * factor(contrast) + mean).clamp(0, 1)
        if saturation:
            gray = _gray(y)
            y = ((y - gray) * factor(saturation) + gray).clamp(0, 1)
        if hue:
            y = _shift_hue(y, _uniform(total, gen, -hue, hue)[mine])
        return torch.where(apply, y, x)


def _uniform(shape: int | tuple[int, ...], gen: torch.Generator, low: float, high: float) -> torch.Tensor:
    shape = (shape,) if isinstance(shape, int) else shape
    return torch.rand(shape, generator=gen, device=gen.device) * (high - low) + low


def _gray(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma, as torchvision's rgb_to_grayscale. (B, 3, H, W) -> (B, 1, H, W)."""
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).clamp(0, 1)


def _shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of (B, 3, H, W) RGB in [0, 1] by shift (B,) turns, through HSV."""
    max_c, argmax_c = x.max(1)
    min_c = x.min(1).values
    delta = max_c - min_c
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    hue = torch.where(
        argmax_c == 0,
        ((g - b) / safe) % 6,
        torch.where(argmax_c == 1, (b - r) / safe + 2, (r - g) / safe + 4),
    )
    hue = torch.where(delta > 0, hue / 6, torch.zeros_like(hue))
    hue = (hue + shift[:, None, None]) % 1.0
    sat = torch.where(max_c > 0, delta / max_c.clamp_min(1e-12), torch.zeros_like(max_c))
    # HSV -> RGB: channel n gets v - v s max(0, min(k, 4 - k, 1)), k = (n + 6 h) mod 6, n = 5, 3, 1.
    out = []
    for n in (5.0, 3.0, 1.0):
        k = (n + hue * 6) % 6
        out.append(max_c - max_c * sat * torch.clamp(torch.minimum(k, 4 - k), 0, 1))
    return torch.stack(out, 1)


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of (B, 3, H, W) with one sigma (B,) per image, BLUR_KERNEL taps, reflected borders."""
    batch, channels, height, width = x.shape
    offsets = torch.arange(BLUR_KERNEL, device=x.device, dtype=x.dtype) - BLUR_KERNEL // 2
    taps = torch.exp(-0.5 * (offsets[None] / sigma[:, None]) ** 2)
    taps = (taps / taps.sum(1, keepdim=True)).repeat_interleave(channels, 0)  # (B * 3, K)
    pad = BLUR_KERNEL // 2
    y = x.reshape(1, batch * channels, height, width)
    y = F.conv2d(F.pad(y, (pad, pad, 0, 0), mode="reflect"), taps[:, None, None, :], groups=batch * channels)
    y = F.conv2d(F.pad(y, (0, 0, pad, pad), mode="reflect"), taps[:, None, :, None], groups=batch * channels)
    return y.reshape(batch, channels, height, width)

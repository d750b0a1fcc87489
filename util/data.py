"""Datasets: any ImageFolder tree, the bundled CIFAR-10, and in-memory uint8 copies of small datasets."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from util.augment import (
    AugmentSpec,
    BatchAugment,
    center_crop_batch,
    eval_transform,
    resize_size,
    train_transform,
)
from util.datasets import default_cache_dir, is_named, named_image_size, named_root
from util.errors import UserError
from util.loaders import PersistentLoader, SeededImages, epoch_seeds

logger = logging.getLogger("deepcluster")


def resolve_split(data: str, split: str, cache_dir: Path) -> Path:
    """A named dataset (cifar10, sklearn-digits) -> its split; else data itself (or data/split when it exists and
    split is given)."""
    if is_named(data):
        return named_root(data, cache_dir) / split
    root = Path(data).expanduser()
    if not root.exists():
        raise UserError(f"data folder {root} does not exist: pass an ImageFolder path with --data, or --data cifar10")
    if not root.is_dir():
        raise UserError(f"--data {root} is not a folder: pass an ImageFolder root (one sub-folder per class)")
    return root / split if split and (root / split).is_dir() else root


@dataclass
class ImageList:
    """Paths and labels of an ImageFolder tree, in its (sorted) order."""

    root: Path
    paths: list[str]
    targets: np.ndarray  # (N,) int64 class index
    classes: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: np.ndarray) -> ImageList:
        return ImageList(
            self.root,
            [self.paths[i] for i in indices],
            self.targets[indices],
            self.classes,
        )


def list_images(root: Path) -> ImageList:
    """List an ImageFolder tree; an empty or flat folder is a user error."""
    try:
        classes, class_to_idx = find_classes(str(root))
        samples = make_dataset(str(root), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    except FileNotFoundError as err:
        raise UserError(
            f"data folder {root} has no class sub-folders: lay it out as {root}/<class>/<image>.jpg"
        ) from err
    if not samples:
        raise UserError(f"data folder {root} holds no images ({', '.join(IMG_EXTENSIONS[:4])}, ...): check --data")
    return ImageList(
        root,
        [p for p, _ in samples],
        np.array([t for _, t in samples], dtype=np.int64),
        classes,
    )


def evaluation_split(data: str) -> str:
    """The split an evaluation reports on: a named dataset's test split, else the folder's val/ (or test/)."""
    if is_named(data):
        return "test"
    for split in ("val", "test"):
        if (Path(data) / split).is_dir():
            return split
    raise UserError(f"{data} needs train/ and val/ (or test/) sub-folders for evaluation")


SMALL_IMAGE = 64  # px: images at most this large are used at their own size, not resized to ImageNet's 224
IN_MEMORY_BYTES = 4 * 2**30  # small images are kept in memory (uint8) by default when they fit in this
PROFILE_SAMPLE = 32  # images whose headers are read to measure a folder's image size


@dataclass(frozen=True)
class DataProfile:
    """What the defaults depend on: the number of images (after --subset) and their median shorter side (px)."""

    num_images: int
    image_size: int
    num_classes: int  # class folders


def profile_data(data: str, split: str, subset: int | None, cache_dir: Path) -> DataProfile:
    """Count the images of a split and read the size of a fixed sample of them (headers only)."""
    images = list_images(resolve_split(data, split, cache_dir))
    num = min(len(images), subset) if subset else len(images)
    if is_named(data):
        return DataProfile(num, named_image_size(data), len(images.classes))
    sides = []
    for row in np.random.default_rng(0).permutation(len(images))[:PROFILE_SAMPLE]:
        try:
            with Image.open(images.paths[row]) as img:
                sides.append(min(img.size))
        except OSError:
            continue  # an unreadable file is reported with its path when it is decoded
    return DataProfile(num, int(np.median(sides)) if sides else 224, len(images.classes))


def resolve_image_defaults(args, profile: DataProfile) -> None:
    """--image-size and --in-memory when not given: small images (<= SMALL_IMAGE px) at their own size and kept in
    memory when they fit in IN_MEMORY_BYTES; larger ones at 224 px (ImageNet's crop), decoded per step."""
    small = profile.image_size <= SMALL_IMAGE
    if args.image_size is None:
        args.image_size = profile.image_size if small else 224
    if args.in_memory is None:
        args.in_memory = small and profile.num_images * 3 * resize_size(args.image_size) ** 2 <= IN_MEMORY_BYTES


def resolve_data_defaults(args, split: str = "train") -> None:
    """An evaluation's --image-size and --in-memory when not given: resolve_image_defaults on its --data split."""
    if args.image_size is None or args.in_memory is None:
        cache = Path(args.data_cache) if args.data_cache else default_cache_dir()
        resolve_image_defaults(args, profile_data(args.data, split, getattr(args, "subset", None), cache))


def subset_indices(num_images: int, subset: int | None) -> np.ndarray:
    """The first `subset` of a fixed random permutation (seed 0, whatever --seed), in dataset order."""
    if not subset or subset >= num_images:
        return np.arange(num_images)
    if subset < 1:
        raise UserError(f"--subset {subset} must be positive")
    return np.sort(np.random.default_rng(0).permutation(num_images)[:subset])


EXTRACTION_ORDER_SEED = 12345  # fixed: the order never depends on --seed


def extraction_order(num: int) -> np.ndarray:
    """A fixed random permutation of the images, the order of every pass over them in the deterministic view: its
    first M images are a uniform sample (the PCA fit, the BatchNorm recomputation)."""
    return np.random.default_rng(EXTRACTION_ORDER_SEED).permutation(num)


def load_image(path: str) -> Image.Image:
    """Open an RGB image; a file that does not decode is reported with its path."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except Exception as err:
        raise UserError(f"cannot decode image {path} ({type(err).__name__}): remove or replace the file") from err


# -------------------------------------------------------------------------------------------- in memory
def decode_to_uint8(images: ImageList, store_size: int, workers: int = 4, square: bool = False) -> torch.Tensor:
    """Decode every image once, resized (shorter side, or both sides when square) and center-cropped to
    store_size: (N, 3, S, S) uint8."""
    resize = eval_transform(store_size, square=square).transforms[:2]  # Resize + CenterCrop, no normalisation

    def decode(path: str) -> np.ndarray:
        img = load_image(path)
        for op in resize:
            img = op(img)
        return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        arrays = list(pool.map(decode, images.paths, chunksize=256))
    return torch.from_numpy(np.stack(arrays))


def cached_uint8(
    images: ImageList, store_size: int, cache_file: Path | None, workers: int, square: bool = False
) -> torch.Tensor:
    """decode_to_uint8, memoised in an .npy file (used for the bundled CIFAR-10, whose files never change)."""
    if cache_file is not None and cache_file.is_file():
        array = np.load(cache_file, mmap_mode="r")
        if array.shape[0] == len(images):
            return torch.from_numpy(np.array(array))  # a writable copy of the memory map
    tensor = decode_to_uint8(images, store_size, workers, square)
    if cache_file is not None:
        tmp = cache_file.with_suffix(f".tmp{os.getpid()}.npy")
        np.save(tmp, tensor.numpy())
        os.replace(tmp, cache_file)
    return tensor


# ------------------------------------------------------------------------------------------ datasets
class ImageDataset(torch.utils.data.Dataset):
    """Per-image decoding with a torchvision transform; returns (image, index)."""

    def __init__(self, images: ImageList, transform) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(load_image(self.images.paths[index])), index


DEVICE_MEMORY_SHARE = 0.25  # in-memory images move to the GPU when they take at most this share of its free memory


@dataclass
class ImageSource:
    """A training set with two ways to read it: a deterministic view (extraction) and augmented batches.

    `memory` holds the (N, 3, S, S) uint8 images when the set is kept in memory (on the host, or on the GPU after
    place()); else images are decoded per item by DataLoader workers.
    """

    images: ImageList
    crop: int
    augment: AugmentSpec
    memory: torch.Tensor | None
    workers: int
    square: bool = False  # deterministic view = plain (crop x crop) resize instead of resize + center crop
    _loaders: dict = field(default_factory=dict, repr=False)  # persistent training loaders, by their transforms

    def __len__(self) -> int:
        return len(self.images)

    @property
    def targets(self) -> np.ndarray:
        return self.images.targets

    def place(self, device: torch.device) -> None:
        """In-memory images on a GPU: moved there when they fit in DEVICE_MEMORY_SHARE of its free memory (then
        batches are gathered and augmented there, with no copy from the host), else pinned for asynchronous copies."""
        if self.memory is None or device.type != "cuda" or self.memory.device == device:
            return
        free, _ = torch.cuda.mem_get_info(device)
        if self.memory.numel() <= DEVICE_MEMORY_SHARE * free:
            self.memory = self.memory.to(device)
            logger.info("kept the %d images on %s (%.0f MB)", len(self), device, self.memory.numel() / 2**20)
        else:
            self.memory = self.memory.pin_memory()
            logger.info("kept the %d images in pinned host memory: too large for %s", len(self), device)

    def eval_batches(
        self, indices: np.ndarray, batch_size: int, device: torch.device
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(normalised images on device, dataset indices on the host) over `indices`, deterministic view."""
        if self.memory is not None:
            order = torch.from_numpy(indices).to(self.memory.device)  # one copy for the whole pass
            for start in range(0, len(indices), batch_size):
                images = self._gather(order[start : start + batch_size], device)
                yield center_crop_batch(images, self.crop), torch.from_numpy(indices[start : start + batch_size])
            return
        transform = eval_transform(self.crop, square=self.square)
        dataset = torch.utils.data.Subset(ImageDataset(self.images, transform), indices.tolist())
        yield from self._loader(dataset, batch_size, device)

    def train_batches(
        self,
        indices: np.ndarray,
        batch_size: int,
        device: torch.device,
        gen: torch.Generator,
        rank: int = 0,
        world_size: int = 1,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(augmented images on device, dataset indices) in the order of `indices` (this rank's shard); drops the
        last partial batch. In memory, augmentations are drawn for the global batch (see BatchAugment), and the
        indices come on the images' device."""
        for views, idx in self.multicrop_batches(indices, [self.augment], batch_size, device, gen, rank, world_size):
            yield views[0], idx

    def multicrop_batches(
        self,
        indices: np.ndarray,
        specs: list[AugmentSpec],
        batch_size: int,
        device: torch.device,
        gen: torch.Generator,
        rank: int = 0,
        world_size: int = 1,
    ) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]:
        """(one augmented batch per spec, dataset indices) in the order of `indices` (this rank's shard), as
        train_batches but with several crops of every image (multi-crop); drops the last partial batch.

        In memory, one copy of the epoch's indices goes to the images' device, and the augmentation's parameters are
        drawn there: from `gen` itself on the CPU, from a device generator seeded by one draw of `gen` on a GPU."""
        num_batches = len(indices) // batch_size
        if self.memory is not None:
            augments = [BatchAugment(spec) for spec in specs]
            order = torch.from_numpy(indices[: num_batches * batch_size]).to(self.memory.device)
            draws = gen if device.type == "cpu" else device_generator(gen, device)
            for b in range(num_batches):
                idx = order[b * batch_size : (b + 1) * batch_size]
                images = self._gather(idx, device)
                yield [augment(images, draws, rank, world_size) for augment in augments], idx
            return
        key = tuple(specs)
        if key not in self._loaders:
            dataset = SeededImages(self._load, [train_transform(spec) for spec in specs])
            self._loaders[key] = PersistentLoader(dataset, self.workers, pin_memory=device.type == "cuda")
        seeds = epoch_seeds(gen, rank, len(indices))
        for views, idx in self._loaders[key].batches(indices, seeds, batch_size):
            views = views if isinstance(views, list) else [views]
            yield [view.to(device, non_blocking=True) for view in views], idx

    def _load(self, index: int) -> Image.Image:
        return load_image(self.images.paths[index])

    def _gather(self, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
        """The uint8 images of `idx` (on the memory's device) on `device`."""
        return self.memory.index_select(0, idx).to(device, non_blocking=True)

    def _loader(self, dataset, batch_size: int, device: torch.device):
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=False,
            num_workers=self.workers,
            pin_memory=device.type == "cuda",
            generator=torch.Generator().manual_seed(0),  # the workers' base seed: not from the caller's RNG
        )
        for images, idx in loader:
            yield images.to(device, non_blocking=True), idx


def device_generator(gen: torch.Generator, device: torch.device) -> torch.Generator:
    """A generator on `device` seeded by one draw of the host generator `gen` (one host draw per epoch)."""
    return torch.Generator(device=device).manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))


def build_source(
    data: str,
    split: str,
    crop: int,
    augment: AugmentSpec,
    subset: int | None,
    in_memory: bool,
    workers: int,
    cache_dir: Path,
) -> ImageSource:
    """The images of a run: `--data` resolved, subset taken, optionally decoded once into memory (a named dataset's
    decoded copy is kept in the cache folder: its files never change)."""
    images = list_images(resolve_split(data, split, cache_dir))
    images = images.subset(subset_indices(len(images), subset))
    cache_file = None
    if is_named(data):
        cache_file = cache_dir / f"{data}-{split}-{resize_size(crop)}px-{len(images)}-{_digest(images.paths)}.npy"
    return make_source(images, crop, augment, in_memory, workers, cache_file)


def make_source(
    images: ImageList,
    crop: int,
    augment: AugmentSpec,
    in_memory: bool,
    workers: int,
    cache_file: Path | None = None,
    square: bool = False,
) -> ImageSource:
    memory = None
    if in_memory:
        store = crop if square else resize_size(crop)
        memory = cached_uint8(images, store, cache_file, max(1, workers), square)
        logger.info("kept %d images in memory as uint8 (%.0f MB)", len(images), memory.numel() / 2**20)
    return ImageSource(images, crop, augment, memory, workers, square)


def _digest(paths: list[str]) -> str:
    import hashlib

    return hashlib.sha1("\n".join(os.path.relpath(p, Path(p).parents[2]) for p in paths).encode()).hexdigest()[:10]

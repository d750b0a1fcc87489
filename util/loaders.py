"""DataLoaders for images decoded per item (folders too large to keep in memory).

Training loaders are persistent: their worker processes live for the whole run and each epoch only hands them a new
list of batches. Every training item carries its own seed, drawn per epoch from the run's generator: the
augmentation of an image depends on the epoch and its position, never on which worker decoded it or how many
workers there are, so a resumed run draws what the uninterrupted run drew.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from util.seeds import derive_seed

SEED_RANGE = 2**62


class SeededImages(torch.utils.data.Dataset):
    """Items are (dataset index, seed): the image decoded and passed through every transform under that seed, in a
    forked torch RNG (the caller's RNG is untouched, with or without workers). One transform: (tensor, index);
    several: ([tensor per transform], index)."""

    def __init__(self, load: Callable, transforms: list) -> None:
        self.load, self.transforms = load, transforms

    def __getitem__(self, item: tuple[int, int]) -> tuple:
        index, seed = item
        image = self.load(index)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            views = [transform(image) for transform in self.transforms]
        return (views[0] if len(views) == 1 else views), index


class BatchList(torch.utils.data.Sampler):
    """The batches of the coming epoch, replaced before each pass (a persistent loader's sampler lives in the main
    process and is iterated afresh every pass)."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, int]]] = []

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def epoch_seeds(gen: torch.Generator, rank: int, count: int) -> np.ndarray:
    """One seed per item of this rank's epoch: a draw of the epoch's generator, then this rank's own stream."""
    draw = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
    rank_gen = torch.Generator().manual_seed(derive_seed(draw, "loader-rank", rank))
    return torch.randint(0, SEED_RANGE, (count,), generator=rank_gen).numpy()


class PersistentLoader:
    """A DataLoader over SeededImages whose workers persist across epochs (when there are workers)."""

    def __init__(self, dataset: SeededImages, workers: int, pin_memory: bool) -> None:
        self.sampler = BatchList()
        self.loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=self.sampler,
            num_workers=workers,
            pin_memory=pin_memory,
            persistent_workers=workers > 0,
            generator=torch.Generator().manual_seed(0),  # the workers' base seed: not from the caller's RNG
        )

    def batches(self, indices: np.ndarray, seeds: np.ndarray, batch_size: int) -> Iterator:
        """(collated views, dataset indices) over full batches of `indices` in order (the last partial one dropped)."""
        count = len(indices) // batch_size * batch_size
        items = list(zip(indices[:count].tolist(), seeds[:count].tolist(), strict=True))
        self.sampler.batches = [items[s : s + batch_size] for s in range(0, count, batch_size)]
        yield from self.loader

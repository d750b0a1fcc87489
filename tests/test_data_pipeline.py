"""The training data pipeline: folder data augmented the same whatever the workers, with workers that persist across
epochs; in-memory batches whose augmentation is drawn where the images are."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from util.augment import BatchAugment, augment_preset, multicrop_specs
from util.data import list_images, make_source


def epoch(source, seed: int, indices: np.ndarray, batch_size: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return list(source.train_batches(indices, batch_size, torch.device("cpu"), gen))


def same_batches(a: list, b: list) -> bool:
    pairs = zip(a, b, strict=False)
    return len(a) == len(b) and all(torch.equal(x, y) and torch.equal(i, j) for (x, i), (y, j) in pairs)


def test_folder_batches_depend_on_the_epoch_seed_not_on_the_workers(tiny_folder):
    images = list_images(tiny_folder)
    spec = augment_preset("cifar", 32)
    indices = np.random.default_rng(0).permutation(len(images))[:60]
    no_workers = make_source(images, 32, spec, in_memory=False, workers=0)
    two_workers = make_source(images, 32, spec, in_memory=False, workers=2)
    state = torch.get_rng_state()
    first = epoch(no_workers, 7, indices)
    assert torch.equal(torch.get_rng_state(), state), "the per-item seeds must not touch the caller's RNG"
    assert same_batches(first, epoch(two_workers, 7, indices))
    assert [len(i) for _, i in first] == [8] * 7  # the last partial batch dropped
    assert torch.equal(torch.cat([i for _, i in first]), torch.from_numpy(indices[:56]))
    assert not same_batches(first, epoch(two_workers, 8, indices))  # another epoch, other views


def test_folder_training_workers_persist_across_epochs(tiny_folder):
    source = make_source(list_images(tiny_folder), 32, augment_preset("cifar", 32), in_memory=False, workers=2)
    indices = np.arange(len(source))
    epoch(source, 1, indices)
    (loader,) = source._loaders.values()
    workers = loader.loader._iterator._workers
    assert len(workers) == 2 and all(w.is_alive() for w in workers)
    epoch(source, 2, indices)
    assert loader.loader._iterator._workers == workers, "a second epoch started new worker processes"


def test_folder_multicrop_views_follow_their_specs(tiny_folder):
    source = make_source(list_images(tiny_folder), 32, augment_preset("paper", 32), in_memory=False, workers=0)
    specs = multicrop_specs([2, 1], [32, 16], [0.3, 0.1], [1.0, 0.3], blur=False)
    gen = torch.Generator().manual_seed(0)
    crops, idx = next(source.multicrop_batches(np.arange(len(source)), specs, 4, torch.device("cpu"), gen))
    assert [tuple(c.shape) for c in crops] == [(4, 3, 32, 32), (4, 3, 32, 32), (4, 3, 16, 16)]
    assert not torch.equal(crops[0], crops[1])  # two independent views of the same images
    assert torch.equal(idx, torch.arange(4))


def test_in_memory_batches_draw_from_the_generator_given(tiny_folder):
    images = list_images(tiny_folder)
    spec = augment_preset("cifar", 32)
    source = make_source(images, 32, spec, in_memory=True, workers=0)
    source.place(torch.device("cpu"))  # a no-op on the CPU: the images stay where they are
    indices = np.arange(len(images))[::-1].copy()
    batches = epoch(source, 5, indices)
    gen = torch.Generator().manual_seed(5)
    for images_b, idx in batches:  # the same draws, batch after batch, as BatchAugment on the stored images
        assert torch.equal(images_b, BatchAugment(spec)(source.memory[idx], gen))


def test_batch_augment_refuses_a_generator_on_another_device():
    images = torch.zeros(2, 3, 8, 8, dtype=torch.uint8, device="meta")
    with pytest.raises(ValueError, match="draw where the images are"):
        BatchAugment(augment_preset("paper", 8))(images, torch.Generator())

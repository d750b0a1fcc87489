"""DeepCluster-v2's parts against independent references: the memory bank's bookkeeping against a dictionary, the
spherical k-means against a float64 numpy transcription of SwAV's algorithm, the loss against a per-row loop, LARS
against its formula, the batched blur against torchvision's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import functional as TF

from main_deepclusterv2 import dcv2_loss
from util.augment import BLUR_KERNEL, _blur
from util.pretrain.bank import MemoryBank, last_occurrences
from util.pretrain.lars import LARS
from util.pretrain.schedule import warmup_cosine
from util.pretrain.spherical import IGNORE, spherical_kmeans


def test_bank_keeps_the_last_write_of_every_image_and_clusters_only_the_previous_epochs():
    rng = np.random.default_rng(0)
    num, dim, views = 40, 3, 2
    bank = MemoryBank(views, num, dim, torch.device("cpu"))
    reference: dict[int, np.ndarray] = {}  # image -> (views, dim), the last written
    for epoch in range(3):
        bank.rotate()
        written: set[int] = set()
        for _ in range(4):
            idx = rng.integers(0, num, size=9)  # duplicates inside a step too
            values = rng.normal(size=(views, 9, dim)).astype(np.float32)
            bank.write(torch.from_numpy(idx), torch.from_numpy(values))
            for position, image in enumerate(idx):
                reference[int(image)] = values[:, position]  # later positions overwrite earlier ones
                written.add(int(image))
        assert set(np.flatnonzero(bank.fresh.numpy())) == written, epoch
        for image, expected in reference.items():
            assert np.array_equal(bank.embeddings[:, image].numpy(), expected)
        usable_before = bank.fresh.clone()
        bank.rotate()
        assert torch.equal(bank.usable, usable_before) and not bank.fresh.any()
        restored = MemoryBank(views, num, dim, torch.device("cpu"))
        restored.load_state_dict(bank.state_dict())
        assert torch.equal(restored.embeddings, bank.embeddings) and torch.equal(restored.usable, bank.usable)


def test_last_occurrences():
    idx = torch.tensor([5, 1, 5, 2, 1, 7])
    assert last_occurrences(idx, 8).tolist() == [2, 4, 2, 3, 4, 5]


def swav_kmeans_reference(points: np.ndarray, usable: np.ndarray, initial: np.ndarray, niter: int) -> list[np.ndarray]:
    """SwAV's cluster_memory in float64 numpy: argmax of dot products, centroid = normalised mean, an empty
    cluster keeps its centroid; the assignments of every iteration and the final one."""
    x = points[usable]
    centroids = points[initial].copy()
    history = []
    for iteration in range(niter + 1):
        assignments = (x @ centroids.T).argmax(1)
        history.append(assignments)
        if iteration == niter:
            break
        for c in range(len(centroids)):
            members = x[assignments == c]
            if len(members):
                mean = members.sum(0) / len(members)
                centroids[c] = mean / np.linalg.norm(mean)
    return history


def separated_points(num: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    """Unit points around well separated directions: every dot-product comparison of the reference is decided by
    a margin far above float32 rounding (asserted), so float32 and float64 must agree exactly."""
    rng = np.random.default_rng(seed)
    centres = np.linalg.qr(rng.normal(size=(dim, dim)))[0][:clusters]
    points = centres[rng.integers(0, clusters, num)] + 0.05 * rng.normal(size=(num, dim))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32).astype(np.float64)


def test_spherical_kmeans_equals_swavs_algorithm_in_float64():
    num, dim, k = 300, 16, 6
    points = separated_points(num, dim, 8, seed=1)
    usable = np.ones(num, dtype=bool)
    usable[::7] = False  # images the previous epoch did not see: left out, assigned IGNORE
    seed = 3
    result = spherical_kmeans(torch.from_numpy(points).float(), torch.from_numpy(usable), k, 10, seed)
    candidates = np.flatnonzero(usable)
    initial = candidates[torch.randperm(len(candidates), generator=torch.Generator().manual_seed(seed))[:k].numpy()]
    history = swav_kmeans_reference(points, usable, initial, 10)
    expected = np.full(num, IGNORE)
    expected[usable] = history[-1]
    assert np.array_equal(result.assignments.numpy(), expected)
    assert np.array_equal(result.counts.numpy(), np.bincount(history[-1], minlength=k))
    # the precondition that makes exact equality a guarantee: every decision is far from a tie
    x = points[usable]
    centroids = points[initial]
    scores = np.sort(x @ centroids.T, axis=1)
    assert (scores[:, -1] - scores[:, -2]).min() > 1e-4


def test_spherical_kmeans_keeps_the_centroid_of_an_empty_cluster():
    points = torch.tensor([[0.6, 0.8]] * 4 + [[0.8, -0.6]] * 2)
    usable = torch.tensor([True] * 5 + [False])
    result = spherical_kmeans(points, usable, 3, 4, seed=0)  # three centroids from five points of two values
    assert result.counts.tolist().count(0) >= 1  # ties go to the first centroid: a duplicate one stays empty
    empty = int(torch.nonzero(result.counts == 0)[0])
    assert result.centroids[empty].tolist() in points.tolist()  # the row it was initialised with, unchanged
    assert result.assignments[5] == IGNORE and result.counts.sum() == 5


def test_loss_equals_a_per_row_loop_and_ignores_unseen_images():
    gen = torch.Generator().manual_seed(0)
    scores = [torch.randn(6, 5, generator=gen), torch.randn(6, 4, generator=gen)]
    targets = [torch.tensor([0, 4, IGNORE, 2, 2, 1]), torch.tensor([IGNORE] * 6)]
    loss = dcv2_loss(scores, targets, 0.1)
    rows = [-(F.log_softmax(scores[0][i] / 0.1, 0)[t]) for i, t in enumerate(targets[0].tolist()) if t != IGNORE]
    expected = (torch.stack(rows).mean() + 0.0) / 2  # the second head has no target: it adds zero
    assert torch.allclose(loss, expected, rtol=1e-6)


def branchy_lars_step(params, grads, buffers, lr, momentum, wd, trust, clip, exclude_1d) -> None:
    """The update with a Python branch per tensor, in the parameters' dtype (a second implementation)."""
    for i, (p, g) in enumerate(zip(params, grads, strict=True)):
        w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
        if not (exclude_1d and p.ndim == 1) and w_norm > 0 and g_norm > 0:
            ratio = trust * w_norm / (g_norm + wd * w_norm + 1e-8)
            ratio = torch.clamp(ratio / lr, max=1.0) if clip else ratio
            g = (g + wd * p) * ratio
        buffers[i] = g.clone() if buffers[i] is None else buffers[i].mul_(momentum).add_(g)
        p.add_(buffers[i], alpha=-lr)


@pytest.mark.parametrize("clip, exclude_1d", [(False, False), (True, True)])
def test_lars_step_equals_its_formula(clip, exclude_1d):
    gen = torch.Generator().manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(4, 3, generator=gen))
    bias = torch.nn.Parameter(torch.randn(4, generator=gen))
    zero = torch.nn.Parameter(torch.zeros(2, 2))  # a zero weight norm at the first step: no ratio, no weight decay
    lr, wd, trust, momentum = 0.5, 1e-2, 0.02, 0.9
    optimizer = LARS([weight, bias, zero], lr, momentum, wd, trust, clip=clip, exclude_1d=exclude_1d)
    params = [t.detach().double().clone() for t in (weight, bias, zero)]
    branchy = [t.detach().clone() for t in (weight, bias, zero)]
    buffers, branchy_buffers = [None] * 3, [None] * 3
    for step in range(3):
        grads = [torch.randn(4, 3, generator=gen), torch.randn(4, generator=gen), torch.randn(2, 2, generator=gen)]
        if step == 1:
            grads[0] = torch.zeros(4, 3)  # a zero gradient norm
        weight.grad, bias.grad, zero.grad = (g.clone() for g in grads)
        optimizer.step()
        branchy_lars_step(branchy, grads, branchy_buffers, lr, momentum, wd, trust, clip, exclude_1d)
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            g = g.double()
            if not (exclude_1d and p.ndim == 1) and p.norm() > 0 and g.norm() > 0:
                ratio = trust * p.norm() / (g.norm() + wd * p.norm() + 1e-8)
                ratio = min(ratio / lr, 1.0) if clip else ratio
                g = (g + wd * p) * ratio
            buffers[i] = g.clone() if buffers[i] is None else momentum * buffers[i] + g
            params[i] = p - lr * buffers[i]
    for ours, formula, second in zip((weight, bias, zero), params, branchy, strict=True):
        assert torch.allclose(ours.double(), formula, rtol=1e-5, atol=1e-6)  # the formula in float64
        assert torch.equal(ours.detach(), second)  # the branchy update, the same float32 operations: bit for bit


def test_warmup_then_cosine():
    schedule = warmup_cosine(1.0, 0.001, epochs=10, steps_per_epoch=5, warmup_epochs=2, start_warmup=0.1)
    assert len(schedule) == 50
    assert (
        schedule[0] == pytest.approx(0.1) and schedule[9] == pytest.approx(1.0) and schedule[10] == pytest.approx(1.0)
    )
    assert schedule[-1] > 0.001 and np.all(np.diff(schedule[10:]) <= 0)
    assert schedule[10 + 20] == pytest.approx(0.001 + 0.5 * 0.999 * (1 + np.cos(np.pi * 20 / 40)))


def test_batched_blur_equals_torchvision():
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 20, 20, generator=gen)
    sigmas = torch.tensor([0.1, 0.7, 2.0])
    blurred = _blur(images, sigmas)
    for image, sigma, ours in zip(images, sigmas, blurred, strict=True):
        expected = TF.gaussian_blur(image, [BLUR_KERNEL, BLUR_KERNEL], [float(sigma), float(sigma)])
        assert torch.allclose(ours, expected, atol=1e-5)

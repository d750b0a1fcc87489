"""The sharded primitives with 3 gloo processes on uneven shards (odd N) against one process: gathered rows,
streaming PCA, the sharded map, torch k-means, DeepCluster-v2's spherical k-means and memory bank must give exactly
the single-process results."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import free_port
from util import dist as dist_util
from util.augment import augment_preset
from util.data import ImageList, ImageSource

pytestmark = pytest.mark.slow

NUM = 101  # 34 + 34 + 33 over 3 processes, and one wrapped-around duplicate


def tiny_source() -> ImageSource:
    gen = torch.Generator().manual_seed(0)
    memory = torch.randint(0, 256, (NUM, 3, 10, 10), dtype=torch.uint8, generator=gen)
    images = ImageList(Path("."), [f"{i}.jpg" for i in range(NUM)], np.arange(NUM) % 3, ["a", "b", "c"])
    return ImageSource(images, 8, augment_preset("paper", 8), memory, 0)


def per_image(images: torch.Tensor) -> torch.Tensor:
    """A feature of each image that does not depend on which others share its batch."""
    flat = images.flatten(1)
    return torch.stack([flat[:, i::24].mean(1) for i in range(24)], 1) + flat[:, :24] ** 2


def _run(rank: int, world: int, port: int, out: str) -> None:
    import os

    from util.pretrain.bank import MemoryBank
    from util.pretrain.clustering import PCAWhitening, torch_kmeans
    from util.pretrain.features import Extraction, extract_features
    from util.pretrain.spherical import spherical_kmeans

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    if world > 1:
        torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    source, cpu = tiny_source(), torch.device("cpu")
    result = {
        "raw": extract_features(per_image, source, Extraction(8, cpu)),
        "pca_streamed": extract_features(per_image, source, Extraction(8, cpu), pca=PCAWhitening(6, fit_samples=40)),
        "pca_all": extract_features(per_image, source, Extraction(5, cpu), pca=PCAWhitening(6)),
    }
    (mapped,) = dist_util.sharded_map(
        np.arange(NUM), lambda shard: source.eval_batches(shard, 7, cpu), lambda x: [per_image(x)], NUM
    )
    result["mapped"] = mapped
    info = dist_util.current()
    rows = torch.from_numpy(dist_util.shard(np.arange(NUM), info, wrap=False))
    points = result["pca_streamed"]
    local = torch_kmeans(points[rows], 9, 15, seed=4, distributed=info.distributed, rows=rows, num_total=NUM)
    result["kmeans"] = dist_util.gather_rows_by_index(rows, torch.from_numpy(local.assignments), NUM)
    result["reseeded"] = local.reseeded_clusters
    wide = torch.nn.functional.normalize(torch.randn(NUM, 256, generator=torch.Generator().manual_seed(5)), dim=1)
    local = torch_kmeans(wide[rows], 40, 10, seed=6, distributed=info.distributed, rows=rows, num_total=NUM)
    result["kmeans_256d"] = dist_util.gather_rows_by_index(rows, torch.from_numpy(local.assignments), NUM)
    pair = torch.from_numpy(dist_util.shard(np.arange(2), info, wrap=False))  # with 3 processes, rank 2 has none
    local = torch_kmeans(wide[pair], 2, 5, seed=1, distributed=info.distributed, rows=pair, num_total=2)
    result["kmeans_empty_rank"] = dist_util.gather_rows_by_index(pair, torch.from_numpy(local.assignments), 2)
    usable = torch.ones(NUM, dtype=torch.bool)
    usable[::5] = False
    spherical = spherical_kmeans(wide, usable, 12, 10, seed=7)  # DeepCluster-v2's k-means of the memory bank
    result["spherical"], result["spherical_centroids"] = spherical.assignments, spherical.centroids
    # The memory bank: 3 ranks each write their own batch of a step; one process writes the three in rank order.
    bank = MemoryBank(2, NUM, 256, cpu)
    for step in range(3):
        batches = [torch.arange(step * 9 + r * 3, step * 9 + r * 3 + 4) % 20 for r in range(3)]  # overlapping
        views = [torch.stack([wide[b] * (step + 1 + 10 * r), -wide[b]]) for r, b in enumerate(batches)]
        if world > 1:
            bank.write(batches[rank], views[rank])
        else:
            bank.write(torch.cat(batches), torch.cat(views, 1))  # an image in two batches: the later rank's copy
    result["bank"] = bank.embeddings
    if rank == 0:
        torch.save(result, out)
    if world > 1:
        torch.distributed.destroy_process_group()


def test_three_uneven_processes_equal_one(tmp_path):
    import torch.multiprocessing as mp

    port = free_port()
    mp.spawn(_run, args=(1, port, str(tmp_path / "one.pt")), nprocs=1, join=True)  # threads and env stay here
    mp.spawn(_run, args=(3, port, str(tmp_path / "three.pt")), nprocs=3, join=True)
    one, three = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "three.pt")
    keys = ("raw", "pca_streamed", "pca_all", "mapped", "kmeans", "kmeans_256d", "kmeans_empty_rank", "spherical")
    for key in (*keys, "spherical_centroids", "bank"):
        assert torch.equal(one[key], three[key]), key
    assert len(torch.unique(one["spherical"])) > 2
    assert one["reseeded"] == three["reseeded"]
    assert torch.equal(one["raw"], one["mapped"])  # the two sharded passes agree
    assert len(torch.unique(one["kmeans"])) > 1


def test_streaming_pca_is_fit_on_the_first_images_of_the_extraction_order():
    """--pca-fit-samples M: the PCA is fit on exactly the first M images of the fixed order (whatever the batch
    size), then applied to every image, whose rows are L2-normalised."""
    from util.data import extraction_order
    from util.knn import l2_normalize
    from util.pretrain.clustering import PCAWhitening
    from util.pretrain.features import Extraction, extract_features

    source, cpu = tiny_source(), torch.device("cpu")
    raw = extract_features(per_image, source, Extraction(8, cpu))
    expected = l2_normalize(PCAWhitening(6).fit(raw[extraction_order(NUM)[:40]]).apply(raw))
    for batch_size in (8, 13):
        streamed = extract_features(per_image, source, Extraction(batch_size, cpu), pca=PCAWhitening(6, 40))
        torch.testing.assert_close(streamed, expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(streamed.norm(dim=1), torch.ones(NUM), rtol=0, atol=1e-5)


def test_shard_positions_cover_every_position_once_plus_wrapped_duplicates():
    for num in (1, 2, 7, 101):
        for world in (1, 2, 3, 8):
            shards = [dist_util.shard_positions(num, dist_util.DistInfo(r, world)) for r in range(world)]
            assert len({len(s) for s in shards}) == 1  # equal shards
            every = np.concatenate(shards)
            assert sorted(every[every < num]) == list(range(num)) and (every >= num).sum() < world
            unwrapped = [dist_util.shard_positions(num, dist_util.DistInfo(r, world), wrap=False) for r in range(world)]
            assert sorted(np.concatenate(unwrapped)) == list(range(num))

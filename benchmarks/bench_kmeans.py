"""k-means on CPU (or GPU when present): faiss as it loads by default, faiss with its OpenBLAS on the kernels the
CPU allows (util/blas.py, what the scripts do), the torch backend, and scikit-learn, side by side in one run, with
every library's BLAS kernels printed.

Each (size, method) runs in its own process, since OpenBLAS picks its kernels when it loads. Every method does the
same number of Lloyd iterations from random initial centroids (faiss's early stop disabled; scikit-learn: one init,
lloyd, tol 0). Usage:
    .venv/bin/python benchmarks/bench_kmeans.py                       # 100k x 256 k=1000, 300k k=3000, 1M k=10000
    .venv/bin/python benchmarks/bench_kmeans.py --sizes 20000:64:100 --iters 5
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

METHODS = ("faiss-default", "faiss-tuned", "torch", "sklearn")


def run_one(method: str, num: int, dim: int, k: int, iters: int, device: str) -> dict:
    import numpy as np
    import torch

    x = np.random.default_rng(0).standard_normal((num, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    if method.startswith("faiss"):
        if method == "faiss-tuned":
            from util.blas import import_faiss

            faiss = import_faiss()
        else:
            import faiss
        start = time.perf_counter()
        kmeans = faiss.Clustering(dim, k)
        kmeans.niter, kmeans.seed, kmeans.max_points_per_centroid = iters, 1, num + 1
        if hasattr(kmeans, "early_stop_threshold"):
            kmeans.early_stop_threshold = -1  # every iteration, for comparable timings
        use_gpu = device == "cuda" and faiss.get_num_gpus() > 0
        index = faiss.GpuIndexFlatL2(faiss.StandardGpuResources(), dim) if use_gpu else faiss.IndexFlatL2(dim)
        kmeans.train(x, index)
        index.search(x, 1)
    elif method == "torch":
        from util.pretrain.clustering import torch_kmeans

        points = torch.from_numpy(x).to(device)
        start = time.perf_counter()
        torch_kmeans(points, k, iters, seed=1)
        if device == "cuda":
            torch.cuda.synchronize()
    else:
        from sklearn.cluster import KMeans

        start = time.perf_counter()
        KMeans(k, init="random", n_init=1, max_iter=iters, tol=0, algorithm="lloyd", random_state=1).fit(x)
    seconds = time.perf_counter() - start
    from util.blas import blas_kernels

    on_gpu = (use_gpu if method.startswith("faiss") else device == "cuda") if method != "sklearn" else False
    return {"seconds": seconds, "on_gpu": on_gpu, "kernels": blas_kernels()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--sizes", default="100000:256:1000,300000:256:3000,1000000:256:10000", help="comma-separated N:dim:k"
    )
    parser.add_argument("--iters", type=int, default=5, help="Lloyd iterations of every method")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--device", default="cpu", help="cpu or cuda (faiss on the GPU needs faiss-gpu)")
    parser.add_argument("--json", default=None, help="also write every timing here")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # method:N:dim:k, in a child process
    args = parser.parse_args()
    if args.one:
        method, num, dim, k = args.one.split(":")
        print(json.dumps(run_one(method, int(num), int(dim), int(k), args.iters, args.device)))
        return
    env = {key: value for key, value in os.environ.items() if key != "OPENBLAS_CORETYPE"}
    print(f"{os.cpu_count()} CPUs, {args.iters} iterations, device {args.device}")
    print(f"{'N':>8} {'dim':>4} {'k':>6} {'method':14} {'seconds':>8} {'vs best':>8}  BLAS kernels")
    found = []
    for size in args.sizes.split(","):
        num, dim, k = (int(v) for v in size.split(":"))
        rows = {}
        for method in args.methods.split(","):
            cmd = [
                sys.executable,
                __file__,
                "--one",
                f"{method}:{num}:{dim}:{k}",
                "--iters",
                str(args.iters),
                "--device",
                args.device,
            ]
            rows[method] = json.loads(subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout)
        best = min(r["seconds"] for r in rows.values())
        for method, r in rows.items():
            kernels = ", ".join(f"{name.split('-')[0].split('.')[0]}={arch}" for name, arch in r["kernels"].items())
            print(f"{num:>8} {dim:>4} {k:>6} {method:14} {r['seconds']:>8.1f} {r['seconds'] / best:>7.2f}x  {kernels}")
            found.append({"num": num, "dim": dim, "k": k, "method": method, **r})
    if args.json:
        Path(args.json).write_text(json.dumps({"device": args.device, "iters": args.iters, "rows": found}, indent=2))


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# DeepCluster-v2's GPU target, run on a lent GPU machine (CI has none): solo-learn's CIFAR-10 recipe (ResNet-18 CIFAR
# stem, its LARS options, given as flags; otherwise main_deepclusterv2.py's cifar10 defaults: 2 x 32 px crops,
# 3 x 3000 prototypes, LARS lr 0.6, batch 256) on all 50k
# images with bf16, the kNN monitor every 5 epochs. Target: kNN >= 80 % within 10 minutes of training. Writes
# $OUT/dcv2_gpu_cifar10.json: the GPU's name, and per measured epoch the cumulative training + clustering seconds
# and the kNN top-1 beside the random network's.
#   EPOCHS=60 bash benchmarks/dcv2_gpu_cifar10.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/dcv2-gpu}
mkdir -p "$OUT"
export DEEPCLUSTER_CACHE=${DEEPCLUSTER_CACHE:-/tmp/dc-cache} PYTHONUNBUFFERED=1
PY=${PY:-python3}
timeout "${TIMEOUT_S:-900}" $PY main_deepclusterv2.py --data cifar10 --epochs "${EPOCHS:-60}" --amp --knn-every 5 \
  --arch resnet18_cifar --trust 0.02 --lars-clip --lars-exclude-1d --workers 16 --wandb-mode disabled --output-dir "$OUT/run" 2>&1 | tee "$OUT/pretrain.log" | grep -E "epoch|error"
$PY - "$OUT" <<'PY'
import json, sys, torch
from pathlib import Path
out = Path(sys.argv[1])
records = [json.loads(line) for line in (out / "run" / "log.jsonl").read_text().splitlines()]
elapsed, rows = 0.0, []
for r in records:
    if r.get("knn_top1") is not None:
        rows.append({"epoch": r["epoch"], "training_s": round(elapsed, 1), "knn_top1": r["knn_top1"]})
    elapsed += r["time_train"] + r["time_cluster"]
result = {"gpu": torch.cuda.get_device_name(), "knn_floor": records[0]["knn_top1"], "measured": rows,
          "knn_within_600s": max([r["knn_top1"] for r in rows if r["training_s"] <= 600], default=None)}
(out / "dcv2_gpu_cifar10.json").write_text(json.dumps(result, indent=2) + "\n")
print(json.dumps(result, indent=2))
PY

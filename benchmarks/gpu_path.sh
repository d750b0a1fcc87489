#!/usr/bin/env bash
# The GPU path once, on a lent GPU machine (CI has none), in about 5 minutes: DeepCluster-v1 for two epochs on CUDA in
# bf16 with each k-means backend (faiss-gpu, torch); a run killed mid-epoch and resumed against the same run never
# interrupted (both --deterministic); eval_linear (kNN), eval_svm and eval_semisup on CUDA on the torch run's weights.
# Writes $OUT/gpu_path.json (default OUT=/tmp/gpu-path). Prepare the wheels as benchmarks/gpu_check.sh says, then:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; \
#   bash benchmarks/gpu_path.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-path}
mkdir -p "$OUT"
export DEEPCLUSTER_CACHE=${DEEPCLUSTER_CACHE:-/tmp/dc-cache} PYTHONUNBUFFERED=1
PY=${PY:-python3}
A=(--data cifar10 --subset 10000 --arch resnet18_cifar --epochs 2 --knn-every 1 --wandb-mode disabled --workers 16
   --cluster-images-every 0)
E=(--data cifar10 --wandb-mode disabled --workers 16)
for backend in faiss torch; do
  timeout 90 $PY main_deepcluster.py "${A[@]}" --amp --kmeans-backend "$backend" --output-dir "$OUT/v1-$backend" \
    > "$OUT/v1-$backend.log" 2>&1; echo "v1 $backend exit $?"
done
D=("${A[@]}" --kmeans-backend torch --deterministic)
timeout 90 $PY main_deepcluster.py "${D[@]}" --output-dir "$OUT/whole" > "$OUT/whole.log" 2>&1; echo "whole exit $?"
DEEPCLUSTER_FAULT=mid-step@50 timeout 90 $PY main_deepcluster.py "${D[@]}" --output-dir "$OUT/killed" \
  > "$OUT/killed.log" 2>&1; echo "killed exit $? (137: the injected kill)"
timeout 90 $PY main_deepcluster.py "${D[@]}" --output-dir "$OUT/killed" >> "$OUT/killed.log" 2>&1; echo "resumed exit $?"
W="$OUT/v1-torch/checkpoint.pth"
timeout 60 $PY eval_linear.py --pretrained "$W" "${E[@]}" --protocol knn --output-dir "$OUT/knn" > "$OUT/knn.log" 2>&1
echo "eval_linear exit $?"
timeout 90 $PY eval_svm.py --pretrained "$W" "${E[@]}" --subset 2000 --protocol full --output-dir "$OUT/svm" \
  > "$OUT/svm.log" 2>&1; echo "eval_svm exit $?"
timeout 90 $PY eval_semisup.py --pretrained "$W" "${E[@]}" --percent 1 --epochs 2 --output-dir "$OUT/semisup" \
  > "$OUT/semisup.log" 2>&1; echo "eval_semisup exit $?"
$PY - "$OUT" <<'PY'
import json, sys
from pathlib import Path
import torch

out = Path(sys.argv[1])

def log(run):
    path = out / run / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else None

def results(run):
    path = out / run / "results.json"
    return {k: v for k, v in json.loads(path.read_text()).items() if isinstance(v, (int, float))} if path.is_file() else None

keys = ("epoch", "loss", "nmi_labels", "knn_top1")
whole, killed = log("whole"), log("killed")
same = None
if whole and killed:
    same = [{k: (a.get(k), b.get(k)) for k in keys} for a, b in zip(whole, killed)]
weights = {}
for name in ("whole", "killed"):
    path = out / name / "checkpoint.pth"
    if path.is_file():
        weights[name] = torch.load(path, map_location="cpu", weights_only=False)["backbone"]
identical = None
if len(weights) == 2:
    identical = all(torch.equal(weights["whole"][k], weights["killed"][k]) for k in weights["whole"])
result = {
    "gpu": torch.cuda.get_device_name(),
    "v1_faiss": [{k: r.get(k) for k in keys} for r in log("v1-faiss") or []],
    "v1_torch": [{k: r.get(k) for k in keys} for r in log("v1-torch") or []],
    "kill_and_resume": {"records (whole, resumed)": same, "weights_bit_identical": identical},
    "eval_linear_knn": results("knn"),
    "eval_svm": results("svm"),
    "eval_semisup": results("semisup"),
}
(out / "gpu_path.json").write_text(json.dumps(result, indent=2) + "\n")
print(json.dumps(result, indent=2))
PY

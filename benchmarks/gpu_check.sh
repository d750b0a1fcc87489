#!/usr/bin/env bash
# GPU smoke and speed check, run on a lent GPU machine (CI has no GPU). Writes logs under $OUT (default /tmp/gpu-check).
#   bash benchmarks/gpu_check.sh
# 1. pretraining on all 50k CIFAR-10 training images, CIFAR-stem ResNet-18, bf16, torch k-means on the GPU;
# 2. resume of that run for one more epoch; 3. eval_linear (cached features) on its checkpoint with the random-init
# baseline; 4. the SVM solver benchmark with the batched solver on the GPU against liblinear on the host CPUs.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export DEEPCLUSTER_CACHE=/tmp/dc-cache PYTHONUNBUFFERED=1
PY=${PY:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
$PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"
PRE=(--data cifar10 --arch resnet18_cifar --k 100 --batch-size 256 --amp --kmeans-backend torch --wandb-mode disabled
     --workers 16 --output-dir "$OUT/pre")
timeout 200 $PY main_deepcluster.py "${PRE[@]}" --epochs 5 2>&1 | tee "$OUT/pretrain.log" | grep -E "epoch|error|Error|kept"
timeout 60 $PY main_deepcluster.py "${PRE[@]}" --epochs 6 2>&1 | tee "$OUT/resume.log" | grep -E "resumed|epoch 5|error|Error"
cp "$OUT/pre/log.jsonl" "$OUT/pretrain_log.jsonl" 2>/dev/null
timeout 150 $PY eval_linear.py --pretrained "$OUT/pre/checkpoint.pth" --data cifar10 --cached-features --epochs 10 \
  --wandb-mode disabled --workers 16 --output-dir "$OUT/lin" 2>&1 | tee "$OUT/linear.log" | grep -E "knn|top-1|Feature|pretrained|random|error|Error" | tail -8
cp "$OUT/lin/results.json" "$OUT/linear_results.json" 2>/dev/null
timeout 240 $PY benchmarks/svm_solvers.py --pretrained "$OUT/pre/checkpoint.pth" --device cuda --train 3000 --test 2000 \
  --layers feature5,feature3 --lowshot-ks 1,8,96 2>&1 | grep -v -i warn | tee "$OUT/svm_bench.log"
rm -rf "$OUT/pre" "$OUT/lin"

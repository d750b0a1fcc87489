#!/usr/bin/env bash
# Seed page (mmselfsup deepcluster_resnet50_8xb64-steplr-200e): ResNet-50 + Sobel, k=10000, PCA 256,
# 8 GPUs x 64 images, SGD lr 0.1 momentum 0.9 wd 1e-5 constant, head without momentum, 200 epochs.
# Usage: IMAGENET=/path/to/imagenet PARTITION=gpu bash slurm/recipes/pretrain_seed_resnet50.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-runs/seed-r50}
python slurm/submit.py main_deepcluster.py ${DRY_RUN:+--dry-run} --nodes 1 --gpus-per-node 8 --cpus-per-task 10 --mem-gb 480 \
  ${PARTITION:+--partition "$PARTITION"} --timeout-min "${TIMEOUT_MIN:-4320}" --name dc-seed-r50 \
  -- --config slurm/recipes/pretrain_seed_resnet50.yaml --data "${IMAGENET:?set IMAGENET to an ImageNet root with train/}/train" --output-dir "$OUT"

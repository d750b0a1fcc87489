#!/usr/bin/env bash
# DeepCluster-v2, SwAV's scripts/deepclusterv2_800ep_pretrain.sh: ResNet-50, 2 x 224 (scale 0.14-1) + 6 x 96
# (0.05-0.14), 3 x 3000 prototypes, T 0.1, 64 GPUs x 64 = 4096, LARS (trust 0.001) lr 4.8 -> 0.0048 cosine after
# 10 warmup epochs from 0.3, wd 1e-6, SyncBN, 800 epochs. Published: 75.2 % ImageNet linear top-1 (SwAV README, Model Zoo).
# Usage: IMAGENET=/path/to/imagenet PARTITION=gpu bash slurm/recipes/pretrain_dcv2_imagenet_800ep.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-runs/dcv2-800ep}
python slurm/submit.py main_deepclusterv2.py ${DRY_RUN:+--dry-run} --nodes 8 --gpus-per-node 8 --cpus-per-task 8 \
  --mem-gb 450 ${PARTITION:+--partition "$PARTITION"} --timeout-min "${TIMEOUT_MIN:-2400}" --name dcv2-800ep \
  -- --config slurm/recipes/pretrain_dcv2_imagenet_800ep.yaml --data "${IMAGENET:?set IMAGENET to an ImageNet root with train/}/train" --output-dir "$OUT"

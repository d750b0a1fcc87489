#!/usr/bin/env bash
# DeepCluster-v2, SwAV's scripts/deepclusterv2_400ep_pretrain.sh: ResNet-50, 2 x 160 (scale 0.08-1) + 4 x 96
# (0.05-0.14), 3 x 3000 prototypes, 64 GPUs x 64 = 4096, LARS lr 4.8 -> 0.0048, 10 warmup epochs from 0.3, 400 epochs.
# Published: 74.3 % ImageNet linear top-1 (SwAV README, Model Zoo).
# Usage: IMAGENET=/path/to/imagenet PARTITION=gpu bash slurm/recipes/pretrain_dcv2_imagenet_400ep.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-runs/dcv2-400ep}
python slurm/submit.py main_deepclusterv2.py ${DRY_RUN:+--dry-run} --nodes 8 --gpus-per-node 8 --cpus-per-task 8 \
  --mem-gb 450 ${PARTITION:+--partition "$PARTITION"} --timeout-min "${TIMEOUT_MIN:-1500}" --name dcv2-400ep \
  -- --config slurm/recipes/pretrain_dcv2_imagenet_400ep.yaml --data "${IMAGENET:?set IMAGENET to an ImageNet root with train/}/train" --output-dir "$OUT"

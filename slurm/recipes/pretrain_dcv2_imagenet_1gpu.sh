#!/usr/bin/env bash
# DeepCluster-v2 on ONE GPU (not a SwAV script): ResNet-50, 2 x 160 + 4 x 96 crops, batch 256, lr 0.3 x 256/256
# = 0.3 (SwAV's linear scaling of 4.8 at 4096), 3 x 3000 prototypes, 100 epochs. Expect less than the 4096-batch
# recipes; the lr scaling is this repository's choice.
# Usage: IMAGENET=/path/to/imagenet PARTITION=gpu bash slurm/recipes/pretrain_dcv2_imagenet_1gpu.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-runs/dcv2-1gpu}
python slurm/submit.py main_deepclusterv2.py ${DRY_RUN:+--dry-run} --nodes 1 --gpus-per-node 1 --cpus-per-task 16 \
  --mem-gb 120 ${PARTITION:+--partition "$PARTITION"} --timeout-min "${TIMEOUT_MIN:-4320}" --name dcv2-1gpu \
  -- --config slurm/recipes/pretrain_dcv2_imagenet_1gpu.yaml --data "${IMAGENET:?set IMAGENET to an ImageNet root with train/}/train" --output-dir "$OUT"

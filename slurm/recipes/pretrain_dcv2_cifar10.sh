#!/usr/bin/env bash
# DeepCluster-v2 on the bundled CIFAR-10, one GPU: ResNet-18 with the CIFAR stem, two 32 px crops (scale 0.08-1, no blur),
# 3 x 3000 prototypes, batch 256, LARS (solo-learn's options: trust 0.02, clipped, no adaptation of biases/BN)
# lr 0.6 warmup + cosine, 200 epochs; the kNN monitor every 10 epochs: solo-learn's CIFAR-10 recipe, the one measured
# on a GPU (docs/experiments.md). main_deepclusterv2.py's own defaults for small images differ in the network
# (resnet9_w32) and the LARS options (SwAV's): the flags are written out so the recipe reads on its own.
# Usage: PARTITION=gpu bash slurm/recipes/pretrain_dcv2_cifar10.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-runs/dcv2-cifar10}
python slurm/submit.py main_deepclusterv2.py ${DRY_RUN:+--dry-run} --nodes 1 --gpus-per-node 1 --cpus-per-task 8 \
  --mem-gb 32 ${PARTITION:+--partition "$PARTITION"} --timeout-min "${TIMEOUT_MIN:-600}" --name dcv2-cifar10 \
  -- --config slurm/recipes/pretrain_dcv2_cifar10.yaml --output-dir "$OUT"

#!/usr/bin/env bash
# The paper: AlexNet-BN + Sobel, k=10000, batch 256, SGD lr 0.05 momentum 0.9 wd 1e-5, 500 epochs (one GPU in the
# paper; here 4 GPUs x 64 keeps the batch at 256). Use --arch vgg16 for the paper's VGG16-BN.
# Usage: IMAGENET=/path/to/imagenet PARTITION=gpu bash slurm/recipes/pretrain_paper_alexnet.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-runs/paper-alexnet}
python slurm/submit.py main_deepcluster.py ${DRY_RUN:+--dry-run} --nodes 1 --gpus-per-node 4 --cpus-per-task 10 --mem-gb 240 \
  ${PARTITION:+--partition "$PARTITION"} --timeout-min "${TIMEOUT_MIN:-4320}" --name dc-paper-alexnet \
  -- --config slurm/recipes/pretrain_paper_alexnet.yaml --data "${IMAGENET:?set IMAGENET to an ImageNet root with train/}/train" --arch "${ARCH:-alexnet}" --output-dir "$OUT"

#!/usr/bin/env bash
# Multi-head linear evaluation (Feature1..Feature5) and AvgPool (100 epochs, lr 30) and kNN, with the random-init
# baseline, on ImageNet, Places205 or iNaturalist 2018 laid out as train/ and val/ folders. SCHEDULE picks the
# multi-head schedule: imagenet (default; 90 epochs, steps 30/60), places205 (28; 7/14/21), inat18 (84; 24/48/72).
# Usage: DATA=/path/to/places205 SCHEDULE=places205 CKPT=runs/seed-r50/checkpoint.pth PARTITION=gpu \
#        bash slurm/recipes/eval_linear_multihead.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-$(dirname "${CKPT:?set CKPT}")/linear-$(basename "${DATA:?set DATA}")}
python slurm/submit.py eval_linear.py ${DRY_RUN:+--dry-run} --nodes 1 --gpus-per-node 8 --cpus-per-task 10 --mem-gb 480 \
  ${PARTITION:+--partition "$PARTITION"} --timeout-min "${TIMEOUT_MIN:-4320}" --name dc-linear \
  -- --config slurm/recipes/eval_linear_multihead.yaml --pretrained "$CKPT" --data "$DATA" --schedule "${SCHEDULE:-imagenet}" --output-dir "$OUT"

#!/usr/bin/env bash
# VOC07 SVM + low-shot SVM (k=1..96) with the random-init baseline, one GPU for feature extraction.
# Usage: VOC2007=/path/to/VOCdevkit/VOC2007 CKPT=runs/seed-r50/checkpoint.pth PARTITION=gpu bash slurm/recipes/eval_voc07_svm.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-$(dirname "${CKPT:?set CKPT}")/voc07-svm}
python slurm/submit.py eval_svm.py ${DRY_RUN:+--dry-run} --nodes 1 --gpus-per-node 1 --cpus-per-task 16 --mem-gb 120 \
  ${PARTITION:+--partition "$PARTITION"} --timeout-min "${TIMEOUT_MIN:-1440}" --name dc-voc07 \
  -- --config slurm/recipes/eval_voc07_svm.yaml --pretrained "$CKPT" --data "${VOC2007:?set VOC2007}" --output-dir "$OUT"

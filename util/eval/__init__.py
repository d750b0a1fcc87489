"""Evaluation only (eval_linear.py, eval_svm.py, eval_semisup.py, export_weights.py).

pretrained       the evaluated backbones: our checkpoints, torchvision state dicts, published layouts, random init
layouts          published checkpoint layouts (mmselfsup, the original DeepCluster, SwAV) -> our state dicts
probes           per-tap pooling (Feature1..Feature5) and the linear heads
probe_features   the probes' inputs: features computed live (the protocol) or cached once (fast mode)
svm              the VOC07 SVM protocol (full and low-shot) and its two solvers
newton_svm       the batched, certified SVM solver
voc              VOC2007 (or ImageFolder one-vs-rest) targets
semisup          the labelled subsets and presets of semi-supervised fine-tuning
results          results.json, the console table and the W&B table
export           backbone weights for torchvision, detectron2, mmdetection / mmsegmentation
"""

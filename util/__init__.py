"""Shared by every entry script, one module per concern.

args       argument groups shared by the scripts      augment   training augmentations, per image and batched
data       ImageFolder trees, subsets, in-memory uint8 copies, image defaults from the data
datasets   the named datasets: cifar10 (bundled), sklearn-digits (made from scikit-learn)
dist       process groups, the one split formula, sharded passes    checkpoint  atomic writes, strict loads, RNG states
knn        weighted kNN (streamed)                    metrics    NMI, ARI, cluster accuracy, purity, top-k
logging    console, log.jsonl, provenance, protocol notes            tracking   Weights & Biases
runtime    start-up: device, seeds, output folder     seeds      every random stream derived from --seed
errors     one-line user errors                       faults     fault injection for the fault-matrix tests
blas       faiss's OpenBLAS kernels
"""

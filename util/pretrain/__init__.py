"""Pretraining only (main_deepcluster.py, main_deepclusterv2.py).

features        extraction over a whole dataset in a fixed order, streaming PCA-whitening
clustering      PCA-whitening, k-means (faiss or torch), Power Iteration Clustering, pseudo-labels
sampler         the uniform-over-clusters sample of an epoch
recipe          the small-data rule: defaults chosen from the number and size of the training images
monitor         the kNN monitor, its floor (both BatchNorm statistics), the held-out clustering metric
clock           the run's estimated time, said after its first training steps
epoch_log       an epoch's console line and W&B record
outputs         cluster images and checkpoint artifacts every few epochs
cluster_images  the cluster grid of an epoch (also drawn by report.py)
bank            DeepCluster-v2's memory bank
spherical       DeepCluster-v2's spherical k-means
lars            LARS (SwAV's apex LARC, or solo-learn's options)
schedule        DeepCluster-v2's warmup + cosine learning rate
"""

"""Pretraining only: feature extraction for clustering, PCA-whitening, k-means / PIC, the uniform sampler."""

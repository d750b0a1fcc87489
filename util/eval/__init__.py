"""Evaluation only: loading published weights, probes and their inputs, SVMs (VOC07, low-shot), semi-supervised
subsets, result tables, weight export."""

"""report.py's parts: tables shaped like mmselfsup's DeepCluster model-zoo page, and figures, from run folders and
W&B runs.

sources    what a report is made of: run folders, offline W&B run folders, online runs
tables     the page's tables (VOC07 SVM + low-shot, linear, kNN, semi-supervised)
plots      the report's figures
published  the published DeepCluster numbers printed beside ours, each with its source
"""

"""Reports: the reference page's tables, plots and cluster images from run folders and W&B runs."""

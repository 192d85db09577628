"""Sample quality: FID, Inception Score and precision/recall by the published protocol, in JAX.

resize.py           uint8 -> TF1 bilinear resize to 299 -> (x - 128) / 128
inception.py        the FID Inception-v3 (Flax) and loading pytorch-fid's weights
torch_pickle.py     reads a torch .pth state dict without torch
features.py         data-parallel feature extraction in fixed, padded batches
metrics.py          float64 streaming statistics, Frechet distance, IS, precision/recall
reference_stats.py  dataset statistics files (mu, sigma, count, a feature subset)
inception_metric.py the 'inception' metric backend (FID, IS, precision/recall)
digits_metric.py    the 'digits' backend: a small classifier's FD and accuracy, no downloads
evaluator.py        eval.metrics -> backends
run.py              --mode=eval, --mode=fid_stats, periodic evaluation in training
throughput.py       Inception images/s with random weights

Weights, statistics, caches and results are read and written through cm/io/fileio.py, so every
path may be local or on a bucket (gs://).
"""

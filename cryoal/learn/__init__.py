"""The model's life: training, metrics, checkpoints, calibration, inference and devices.

Modules: `train` (fit a classifier or segmenter on a pool's labels), `metrics` (confusion,
accuracy, IoU), `checkpoint` (save/load weights and the benchmark's weight states),
`calibration` (fit and apply the temperature), `inference` (model input, probabilities),
`device` (device choice, seeding, threads), `distributed` and `ddp` (several ranks).
Nothing here imports the command-line layer or the root's stage modules.
"""

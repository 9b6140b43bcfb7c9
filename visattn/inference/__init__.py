"""Trained models for inference: shipped weights or training checkpoints, loaded with their labels (or
vocabulary) and preprocessing, and the commands that run them on image files.

Nothing here imports Lightning or torchmetrics, which training and scoring (:mod:`visattn.tasks`) need:
`visattn classify`, `explain`, `caption` and `detect` start a second sooner without them.
"""

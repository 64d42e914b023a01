"""Distillation stage: models, data, losses, training and evaluation (needs PyTorch)."""

__version__ = "0.1.0"

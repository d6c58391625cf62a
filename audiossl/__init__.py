"""audiossl: self-supervised pretraining and fine-tuning of audio transformers."""

__version__ = "0.1.0"

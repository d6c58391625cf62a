"""Encoders (a registry over one configurable ViT), decoders, heads (the classifier and the probe heads), and
running any of them over audio (`inference`, `runners`)."""

from audiossl.models.encoder import (
    AudioEncoder,
    EncoderConfig,
    build_encoder,
    create_encoder,
    encoder_config,
    list_encoders,
    register_encoder,
)

__all__ = [
    "AudioEncoder",
    "EncoderConfig",
    "build_encoder",
    "create_encoder",
    "encoder_config",
    "list_encoders",
    "register_encoder",
]

"""audiossl: self-supervised pretraining and fine-tuning of audio transformers."""

__version__ = "0.1.0"


def __getattr__(name):  # lazy: keep `import audiossl` light
    if name == "load_model":
        from audiossl.hub.export import load_model

        return load_model
    raise AttributeError(f"module 'audiossl' has no attribute {name!r}")

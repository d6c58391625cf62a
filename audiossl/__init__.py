"""audiossl: self-supervised pretraining and fine-tuning of audio transformers.

The public API, imported lazily so that ``import audiossl`` stays light (no torch until a name is used)::

    audiossl.load_model(DIR)                    an exported or converted model (``AudioClassifier``)
    audiossl.save_model / audiossl.export_onnx  write the export format / an ONNX graph
    audiossl.create_encoder / list_encoders     the encoder registry (``AudioEncoder``, ``EncoderConfig``)
    audiossl.kaldi_fbank / FrontEnd             the front end (``FrontEndConfig``)
    audiossl.load_audio                         any audio file or bytes -> mono float32 at a rate

The rooms, in the order data flows through them: ``frontend`` -> ``data`` -> ``models`` -> ``objectives`` /
``tasks`` -> ``hub`` / ``convert``, and ``cli`` over all of them (the README's "Layout").
"""

from audiossl.version import __version__

# public name -> (module, attribute)
_API = {
    "load_model": ("audiossl.hub.reader", "load_model"),
    "save_model": ("audiossl.hub.export", "save_model"),
    "export_onnx": ("audiossl.hub.export", "export_onnx"),
    "AudioClassifier": ("audiossl.models.classifier", "AudioClassifier"),
    "AudioEncoder": ("audiossl.models.encoder", "AudioEncoder"),
    "EncoderConfig": ("audiossl.models.encoder", "EncoderConfig"),
    "create_encoder": ("audiossl.models.encoder", "create_encoder"),
    "list_encoders": ("audiossl.models.encoder", "list_encoders"),
    "kaldi_fbank": ("audiossl.frontend.features", "kaldi_fbank"),
    "FrontEnd": ("audiossl.frontend.features", "FrontEnd"),
    "FrontEndConfig": ("audiossl.frontend.features", "FrontEndConfig"),
    "load_audio": ("audiossl.frontend.audio", "load"),
}

__all__ = ["__version__", *_API]


def __getattr__(name):
    if name in _API:
        import importlib

        module, attr = _API[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value  # resolved once
        return value
    raise AttributeError(f"module 'audiossl' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_API))

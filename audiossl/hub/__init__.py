"""Model files: reading and writing them, and serving them to the evaluation suites.

* ``reader``             checkpoints and export directories -> models, never unpickling code (``load_model``)
* ``checkpoint_writer``  atomic checkpoint writes and the training runs' checkpoint callbacks
* ``export``             the export format (``model.safetensors`` + ``config.json``) and ONNX
* ``hear``               the HEAR 2021 API over any exported model
"""

"""Runners: a normalised fbank batch ``[B, T, F]`` (and real frames per row) through a model, in PyTorch or with
ONNX Runtime, as ``{"logits", "embedding", "frame_embeddings"}``. A runner knows the model only by its methods
(``outputs``), so this module sits below the classifier, the export and the inference code."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch


# --- runners: normalised fbank [B, T, F] -> outputs ------------------------------------------------------------------
class TorchRunner:
    """Runs the PyTorch model; ``run(fbank, num_frames=None)`` -> ``{"logits", "embedding", "frame_embeddings"}``
    (CPU tensors); ``num_frames [B]``: real frames per row (the padding mask)."""

    def __init__(self, model, device: str | torch.device | None = None):
        self.model = model.eval()
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model.to(self.device)

    @torch.inference_mode()
    def run(self, fbank: torch.Tensor, want_frames: bool = False, num_frames: torch.Tensor | None = None) -> dict:
        x = fbank.to(self.device, non_blocking=True)
        n = None if num_frames is None else num_frames.to(self.device)
        logits, emb, frames = self.model.outputs(x, n)
        out = {"embedding": emb.float().cpu()}
        if want_frames:
            out["frame_embeddings"] = frames.float().cpu()
        if logits is not None:
            out["logits"] = logits.float().cpu()
        return out


class OnnxRunner:
    """Runs ``model.onnx`` with onnxruntime; ``run(fbank)`` -> dict of numpy arrays by output name (all outputs)."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None, providers: list[str] | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise RuntimeError("ONNX inference needs onnxruntime: pip install 'audiossl[onnx]'") from None
        if not Path(path).exists():
            raise FileNotFoundError(f"no ONNX model at {path} (audiossl export CKPT --out DIR --onnx writes one)")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), opts, providers=providers or ["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.takes_frames = "num_frames" in {i.name for i in self.session.get_inputs()}

    def run(self, fbank, want_frames: bool = True, num_frames=None) -> dict:
        """``num_frames [B]``: real frames per row, for graphs exported with a padding mask (default: all real)."""
        x = fbank.detach().cpu().numpy() if torch.is_tensor(fbank) else np.asarray(fbank)
        feed = {"fbank": x.astype(np.float32, copy=False)}
        if self.takes_frames:
            n = np.full(x.shape[0], x.shape[1]) if num_frames is None else (
                num_frames.cpu().numpy() if torch.is_tensor(num_frames) else np.asarray(num_frames))
            feed["num_frames"] = n.astype(np.int64)
        return dict(zip(self.output_names, self.session.run(None, feed)))


class _TorchOut:
    """Adapts an ``OnnxRunner`` to the ``TorchRunner`` interface (tensors out)."""

    def __init__(self, runner: OnnxRunner):
        self.runner = runner

    def run(self, fbank: torch.Tensor, want_frames: bool = False, num_frames: torch.Tensor | None = None) -> dict:
        return {k: torch.from_numpy(v) for k, v in self.runner.run(fbank, num_frames=num_frames).items()}


def make_runner(model, runner=None, device=None):
    if runner is None:
        return TorchRunner(model, device)
    if isinstance(runner, OnnxRunner):
        return _TorchOut(runner)
    return runner

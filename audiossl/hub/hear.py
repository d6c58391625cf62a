"""The HEAR 2021 API over any audiossl model, so ``hear-eval-kit`` can evaluate it: ``import audiossl.hub.hear``.

    model = audiossl.hub.hear.load_model("model_dir/")       # an export/convert directory (or a .ckpt)
    model.sample_rate, model.scene_embedding_size, model.timestamp_embedding_size
    audiossl.hub.hear.get_scene_embeddings(audio, model)     # audio [n_sounds, n_samples] in [-1, 1] -> [n_sounds, D]
    audiossl.hub.hear.get_timestamp_embeddings(audio, model) # -> ([n_sounds, n_timestamps, D], [n_sounds, n_timestamps])

Which tokens. Audio is cut into back-to-back windows of the model's ``target_length`` frames (10.24 s for the AudioSet
recipes; the last window holds the padding, which the encoder masks). The *scene* embedding is the model's clip
embedding (the final layer's CLS token for EAT/SSLAM-style models, the mean of its patch tokens otherwise, the same
as ``model.embed``) averaged over windows. The *timestamp* embeddings are the final layer's patch tokens averaged over
the frequency patches: one ``D``-vector per time patch (16 frames, 160 ms). To reach a finer hop than a patch, the
encoder also runs on the log-mel shifted by ``16 / shifts`` frames; the ``shifts`` sequences are interleaved, giving a
hop of ``160 / shifts`` ms (default 4 shifts: 40 ms, under the 50 ms HEAR suggests for onset tasks; ``shifts=1``
costs a quarter). A timestamp is the centre of its patch's frames in milliseconds (frame ``i`` spans samples
``[hop * i, hop * i + window)``); only patches that hold audio are returned.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from audiossl.hub.reader import load_model as _load
from audiossl.errors import UserError
from audiossl.models.inference import tiled_starts, window_batch
from audiossl.models.classifier import AudioClassifier


class HearModel(nn.Module):
    """An audiossl model with the attributes the HEAR API asks for."""

    def __init__(self, model: AudioClassifier, shifts: int = 4, batch_size: int = 16):
        super().__init__()
        p = model.encoder.config
        if p.patch_stride != p.patch_size or p.patch_order != "time":
            raise UserError("the HEAR timestamp embeddings need non-overlapping, time-major patches (not AST's layout)")
        if shifts < 1 or p.patch_size % shifts:
            raise UserError(f"shifts must divide the patch size ({p.patch_size}), got {shifts}")
        self.model = model.eval()
        self.shifts = int(shifts)
        self.batch_size = int(batch_size)
        self.sample_rate = int(model.front_end.config.sample_rate)
        self.scene_embedding_size = int(model.encoder.embed_dim)
        self.timestamp_embedding_size = int(model.encoder.embed_dim)

    @property
    def hop_ms(self) -> float:
        c = self.model.front_end.config
        return self.model.encoder.config.patch_size * c.frame_shift / self.shifts


def load_model(model_file_path: str = "", shifts: int = 4, batch_size: int = 16, device: str | None = None) -> HearModel:
    """A ``HearModel`` from an audiossl export directory (``audiossl export`` / ``convert``) or checkpoint."""
    if not model_file_path:
        raise UserError("audiossl.hub.hear.load_model needs model_file_path: an audiossl export directory "
                        "(audiossl export CKPT --out DIR, or audiossl convert ...); nothing is downloaded")
    m = HearModel(_load(model_file_path), shifts=shifts, batch_size=batch_size)
    return m.to(device) if device else m


def _windows(model: HearModel, audio: torch.Tensor, offset: int):
    """Log-mel of every sound from frame ``offset`` on, cut into back-to-back windows and run through the encoder.
    Yields (sound index, window index, clip embedding ``[D]``, per-time-patch embeddings ``[t, D]`` of real patches)."""
    m = model.model
    fe, enc = m.front_end, m.encoder
    device = next(m.parameters()).device
    feats = fe.fbank(audio.to(device=device, dtype=torch.float32))[:, offset:]  # [n, T, F], un-normalised
    window = fe.config.target_length
    starts = tiled_starts(feats.shape[1], window)
    jobs = [(i, w) for i in range(audio.shape[0]) for w in range(len(starts))]
    gf = enc.num_freq_patches
    for k in range(0, len(jobs), model.batch_size):
        part = jobs[k : k + model.batch_size]
        pieces = [window_batch(fe, feats[i], [starts[w]], window) for i, w in part]
        x = torch.cat([p[0] for p in pieces])
        n = None if pieces[0][1] is None else torch.cat([p[1] for p in pieces])
        with torch.inference_mode():
            emb, tokens = m.forward_features(x.to(device), None if n is None else n.to(device))
        gt = tokens.shape[1] // gf
        per_time = tokens.reshape(len(part), gt, gf, -1).mean(dim=2)  # [b, gt, D]: mean over frequency patches
        for j, (i, w) in enumerate(part):
            keep = gt if n is None else -(-int(n[j]) // enc.config.patch_size)  # time patches holding audio
            yield i, w, emb[j].float(), per_time[j, :keep].float()


def _check(audio, model: HearModel) -> torch.Tensor:
    if not isinstance(model, HearModel):
        raise UserError("pass the model returned by audiossl.hub.hear.load_model")
    if not torch.is_tensor(audio) or audio.dim() != 2 or audio.shape[1] == 0:
        raise UserError(f"audio must be a tensor [n_sounds, n_samples], got {getattr(audio, 'shape', type(audio))}")
    c = model.model.front_end.config
    if audio.shape[1] < int(c.sample_rate * c.frame_length / 1000):
        raise UserError(f"the sounds are shorter than one {c.frame_length} ms frame")
    return audio


def get_scene_embeddings(audio: torch.Tensor, model: HearModel) -> torch.Tensor:
    """``[n_sounds, n_samples]`` at ``model.sample_rate`` -> ``[n_sounds, scene_embedding_size]`` float32."""
    audio = _check(audio, model)
    sums = torch.zeros(audio.shape[0], model.scene_embedding_size)
    counts = torch.zeros(audio.shape[0], 1)
    for i, _, emb, _ in _windows(model, audio, 0):
        sums[i] += emb.cpu()
        counts[i] += 1
    return (sums / counts).to(audio.device)


def get_timestamp_embeddings(audio: torch.Tensor, model: HearModel) -> tuple[torch.Tensor, torch.Tensor]:
    """``[n_sounds, n_samples]`` -> (embeddings ``[n_sounds, n_timestamps, timestamp_embedding_size]`` float32,
    timestamps ``[n_sounds, n_timestamps]`` in ms, evenly spaced by ``model.hop_ms``)."""
    audio = _check(audio, model)
    c = model.model.front_end.config
    p = model.model.encoder.config.patch_size
    step = p // model.shifts  # frames between two shifts
    seqs = []  # per shift: [n_sounds, t_s, D]
    for s in range(model.shifts):
        per_sound: dict[int, list] = {}
        for i, w, _, toks in _windows(model, audio, s * step):
            per_sound.setdefault(i, []).append((w, toks.cpu()))
        seqs.append([torch.cat([t for _, t in sorted(per_sound[i], key=lambda x: x[0])]) for i in range(audio.shape[0])])
    t = min(seq[i].shape[0] for seq in seqs for i in range(audio.shape[0]))  # the same count for every shift
    emb = torch.stack([torch.stack([seq[i][:t] for seq in seqs], dim=1) for i in range(audio.shape[0])])  # [n,t,S,D]
    emb = emb.reshape(audio.shape[0], t * model.shifts, -1)  # patch j of shift s -> timestamp j * S + s
    win_ms = c.frame_length
    index = torch.arange(t * model.shifts, dtype=torch.float64)
    first_frame = index * step  # the first frame of each timestamp's patch
    centre = first_frame * c.frame_shift + (p - 1) / 2 * c.frame_shift + win_ms / 2  # ms
    stamps = centre.to(torch.float32)[None].expand(audio.shape[0], -1).contiguous()
    return emb.to(audio.device), stamps.to(audio.device)

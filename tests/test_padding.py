"""Variable length end to end: the real length of every clip becomes a patch padding mask, and padding changes no
embedding, no prediction, no mask draw and no loss."""

import numpy as np
import pytest
import soundfile as sf
import torch
from test_objectives import make

from audiossl.hub.export import export_onnx, load_model, save_model
from audiossl.frontend.features import FrontEnd
from audiossl.objectives.masking import inverse_block_mask, jepa_masks, random_mask, split_with_fillers
from audiossl.models.classifier import AudioClassifier
from audiossl.objectives import OBJECTIVES

TINY = {"name": "vit_tiny", "depth": 2, "embed_dim": 64, "num_heads": 4}


def _batch(lengths, total, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(len(lengths), total, generator=g) * 0.1
    for i, n in enumerate(lengths):
        w[i, n:] = 0.0  # what the data pipeline's zero padding looks like
    return w, torch.tensor(lengths)


def _alone(model, wave):
    """The clip on its own: its log-mel padded only to its last whole patch, no mask needed."""
    fe = model.front_end
    real = min(int(fe.real_frames(torch.tensor([wave.numel()]))), fe.config.target_length)
    p = model.encoder.config.patch_size
    own = FrontEnd(fe.config, target_length=-(-real // p) * p)
    with torch.no_grad():
        return model.forward_features(own(wave[None]))


@pytest.mark.parametrize("style", ["pre", "post"])
@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_mixed_length_batch_gives_each_clip_its_own_embedding_and_logits(style, pool):
    torch.manual_seed(0)
    model = AudioClassifier({**TINY, "block_style": style}, {"num_classes": 5, "pool": pool},
                            {"target_length": 192}).eval()
    lengths = [32000, 5000, 12345, 800, 401]  # full window, partial patches, one frame
    w, n = _batch(lengths, 32000)
    with torch.no_grad():
        x, frames = model.front_end(w, num_samples=n, return_frames=True)
        emb, tokens = model.forward_features(x, frames)
        logits = model(x, frames)
        unmasked = model.forward_features(x)[0]
    assert frames.tolist() == [192, 29, 75, 3, 1]
    for i, L in enumerate(lengths):
        ref_emb, ref_tok = _alone(model, w[i, :L])
        assert (emb[i] - ref_emb[0]).abs().max() < 1e-5, (i, L)
        assert (tokens[i, : ref_tok.shape[1]] - ref_tok[0]).abs().max() < 1e-5
        assert (logits[i] - model.head(ref_emb)[0]).abs().max() < 1e-5
    # without the mask the padding would have diluted every short clip
    assert all((emb[i] - unmasked[i]).abs().max() > 1e-3 for i in range(1, len(lengths)))
    assert torch.allclose(emb[0], unmasked[0], atol=1e-6)


def test_no_padding_no_mask_and_the_switch_turns_it_off():
    model = AudioClassifier(TINY, {"num_classes": 3}, {"target_length": 96})
    w, n = _batch([16000, 16000], 16000)
    _, frames = model.front_end(w, num_samples=n, return_frames=True)
    assert frames.tolist() == [96, 96] and model.encoder.patch_valid(frames, (6, 8)) is None  # full: flash-friendly
    off = FrontEnd(model.front_end.config, mask_padding=False)
    assert off(w, num_samples=n, return_frames=True)[1] is None


def test_short_file_prediction_does_not_depend_on_the_window(tmp_path):
    """The same weights with a 1.28 s and a 2.56 s window predict a 0.7 s file alike: padding changes nothing."""
    torch.manual_seed(1)
    a = AudioClassifier(TINY, {"num_classes": 4}, {"target_length": 128}, label_names=list("abcd"))
    with torch.no_grad():
        for p in a.parameters():
            p.add_(0.3 * torch.randn_like(p))
    b = AudioClassifier.from_config_dict({**a.config_dict(), "front_end": {**a.config_dict()["front_end"],
                                                                           "target_length": 256}})
    b.load_state_dict(a.state_dict())
    save_model(a, tmp_path / "a")
    save_model(b, tmp_path / "b")
    path = tmp_path / "short.wav"
    t = np.arange(11200) / 16000
    sf.write(path, (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * np.random.default_rng(0).standard_normal(t.size))
             .astype(np.float32), 16000)
    pa = dict(load_model(tmp_path / "a").predict(str(path), top_k=4))
    pb = dict(load_model(tmp_path / "b").predict(str(path), top_k=4))
    assert all(abs(pa[k] - pb[k]) < 1e-5 for k in pa)
    export_onnx(b, tmp_path / "b" / "model.onnx")  # the ONNX graph takes the real frames too
    from audiossl.models.inference import OnnxRunner, predict

    po = dict(predict(load_model(tmp_path / "b"), str(path), top_k=4, runner=OnnxRunner(tmp_path / "b" / "model.onnx")))
    assert all(abs(pa[k] - po[k]) < 1e-4 for k in pa)


# --- masks ---------------------------------------------------------------------------------------------------------
def _valid(real_t, T=12, F=8):
    return (torch.arange(T)[None] < torch.tensor(real_t)[:, None]).repeat_interleave(F, dim=1)


@pytest.mark.parametrize("kind", ["random", "eat", "jepa"])
def test_masks_are_drawn_over_real_patches_and_fillers_are_padding(kind):
    T, F = 12, 8
    real_t = [12, 3, 7, 1, 9]
    valid = _valid(real_t, T, F)
    g = torch.Generator().manual_seed(0)
    if kind == "random":
        keep, masked = random_mask(5, T * F, 0.8, g, None, valid)
    elif kind == "eat":
        keep, masked = inverse_block_mask(5, (T, F), 0.8, 3, 0.07, g, None, valid)
    else:
        keep, targets = jepa_masks(5, (T, F), 0.5, None, g, None, valid)
        masked = torch.cat(targets, dim=1)
    kept_real = valid.gather(1, keep)
    for b, rt in enumerate(real_t):
        R = rt * F
        if kind != "jepa":
            assert int(kept_real[b].sum()) == max(1, int(R * 0.2))  # the reference proportion of *its* patches
            assert torch.equal(torch.cat([keep[b], masked[b]]).sort().values, torch.arange(T * F))
        fillers = keep[b][~kept_real[b]]
        assert (fillers >= R).all()  # every filler is a padding patch
        assert (masked[b][valid.gather(1, masked)[b]] < R).all()
    if kind == "jepa":  # targets and context are disjoint among real patches (rows with room for both)
        for b in [i for i, rt in enumerate(real_t) if rt >= 3]:
            c = set(keep[b][kept_real[b]].tolist())
            t = set(masked[b][valid.gather(1, masked)[b]].tolist())
            assert c and t and not (c & t)


def test_eat_padded_masks_keep_blocks_inside_the_real_grid():
    valid = _valid([12] * 50 + [6] * 50)
    keep, _ = inverse_block_mask(100, (12, 8), 0.8, 3, 0.07, torch.Generator().manual_seed(2), None, valid)
    t = keep // 8
    assert (t[50:][valid.gather(1, keep)[50:]] < 6).all()
    # without padding the draw is exactly the reference's
    a, _ = inverse_block_mask(4, (12, 8), 0.8, 3, 0.07, torch.Generator().manual_seed(5))
    b, _ = inverse_block_mask(4, (12, 8), 0.8, 3, 0.07, torch.Generator().manual_seed(5), None, None)
    assert torch.equal(a, b)


def test_split_with_fillers_trims_when_padding_cannot_top_up():
    valid = _valid([4, 2], T=4, F=1)  # row 0 has no padding patch
    sel = torch.tensor([[True, True, False, False], [True, True, False, False]])
    chosen, rest = split_with_fillers(sel, valid)
    assert chosen.tolist() == [[0, 1], [0, 1]]
    sel = torch.tensor([[True, False, False, False], [True, True, False, False]])
    chosen, _ = split_with_fillers(sel, valid, torch.Generator().manual_seed(0))
    assert chosen.shape == (2, 1) and chosen[0].tolist() == [0]  # row 0 cannot hold 2 with fillers: trimmed to 1


# --- losses --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_padding_content_cannot_change_a_loss(name):
    """Whatever the padding patches hold, the loss (and every logged term) is the same for the same draws."""
    torch.manual_seed(0)
    m = make(name)
    T = 128
    fb = torch.randn(4, T, 128)
    frames = torch.tensor([128, 40, 70, 17])
    other = fb.clone()
    for i, n in enumerate(frames.tolist()):
        start = -(-n // 16) * 16  # the first whole padding patch
        other[i, start:] = torch.randn(T - start, 128) * 5 + 3
    state = {k: v.clone() for k, v in m.state_dict().items()}  # objectives with state (a codebook) start alike
    b = m.compute_loss(other, torch.Generator().manual_seed(1), frames)
    m.load_state_dict(state)
    c = m.compute_loss(other, torch.Generator().manual_seed(1))  # no mask: the padding does leak in
    m.load_state_dict(state)
    a = m.compute_loss(fb, torch.Generator().manual_seed(1), frames)
    for k in a:
        assert torch.allclose(torch.as_tensor(a[k]).float(), torch.as_tensor(b[k]).float(), atol=1e-5), k
    assert abs(float(a["loss"].detach()) - float(c["loss"])) > 1e-4
    a["loss"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all()
               for n, p in m.named_parameters() if not n.startswith("teacher."))

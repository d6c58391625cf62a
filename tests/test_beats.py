"""BEATs on the shared encoder: the pieces (buckets, gate, convolutional positions, DeepNorm), sparse sequences, and
the importer's numerical parity with ESPnet 202511's ``espnet2/asr/encoder/beats_encoder.py`` (the unilm code as
ESPnet ships it) on random weights saved in the released ``{cfg, model, label_dict}`` layout, padded batches included."""

import math

import pytest
import torch

import audiossl
from audiossl.cli.main import main
from audiossl.convert import ConversionError, convert_beats
from audiossl.data.labels import audioset_labels
from audiossl.models import create_encoder
from audiossl.models.rel_pos import relative_buckets

# the released cfg of a pretrained checkpoint (22 keys), and a tiny one with the same structure
RELEASED = dict(input_patch_size=16, embed_dim=512, conv_bias=False, encoder_layers=12, encoder_embed_dim=768,
                encoder_ffn_embed_dim=3072, encoder_attention_heads=12, activation_fn="gelu", layer_norm_first=False,
                deep_norm=True, relative_position_embedding=True, num_buckets=320, max_distance=800, gru_rel_pos=True,
                conv_pos=128, conv_pos_groups=16, dropout=0.1, attention_dropout=0.1, activation_dropout=0.0,
                encoder_layerdrop=0.05, dropout_input=0.1, layer_wise_gradient_decay_ratio=1.0)
TINY = dict(RELEASED, embed_dim=32, encoder_layers=2, encoder_embed_dim=64, encoder_ffn_embed_dim=128,
            encoder_attention_heads=4)


# --- pieces --------------------------------------------------------------------------------------------------------
def test_t5_buckets_at_the_documented_points():
    rel = torch.tensor([0, -1, 1, -8, 8, 79, 80, -80, 495, 799, 800, 5000, -5000])
    got = relative_buckets(rel, 320, 800).tolist()
    # exact below 80 (positive distances offset by 160), log-spaced to 800, saturating at 159 per half
    assert got[:8] == [0, 1, 161, 8, 168, 239, 240, 80]
    assert got[8] == 160 + 80 + int(math.log(495 / 80) / math.log(10) * 80) == 303
    assert got[9:] == [319, 319, 319, 159]


def test_beats_base_has_the_released_parameter_count_and_no_cls():
    enc = create_encoder("beats_base")
    assert sum(p.numel() for p in enc.parameters()) == 90_311_792  # the paper's "90M": 250 stored tensors - 11 tables
    assert enc.num_prefix_tokens == 0 and enc.pos_table is None
    assert enc.blocks[0].alpha == pytest.approx(24**0.25)


def _tiny(**kw):
    torch.manual_seed(0)
    enc = create_encoder("beats_base", depth=2, embed_dim=64, num_heads=4, patch_proj_dim=32, **kw).eval()
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return enc


def test_dropped_tokens_keep_their_original_relative_positions_and_conv_context():
    """'original': the kept tokens see exactly what they see when the dropped ones are zero tokens that nobody
    attends to -- i.e. the full sequence with the dropped tokens zeroed and masked out as padding."""
    enc = _tiny()
    x = torch.randn(2, 160, 128)
    patches = enc.embed(x)  # [2, 80, 64]
    N = patches.shape[1]
    keep = torch.stack([torch.randperm(N, generator=torch.Generator().manual_seed(s))[:20].sort().values
                        for s in (1, 2)])
    with torch.no_grad():
        sparse = enc.forward_tokens(patches, keep=keep)  # [2, 20, 64]
        valid = torch.zeros(2, N, dtype=torch.bool).scatter(1, keep, True)
        dense = enc.forward_tokens(patches, valid=valid)  # dropped = padding: zeroed before the conv, keys masked
    ref = torch.gather(dense, 1, keep[..., None].expand(-1, -1, 64))
    assert (sparse - ref).abs().max() < 1e-5
    compact = _tiny(sparse_positions="compact")
    with torch.no_grad():
        squeezed = compact.forward_tokens(patches, keep=keep)
    assert (squeezed - sparse).abs().max() > 1e-2  # ESPnet's compaction moves the kept tokens: another model


def test_deep_norm_is_the_residual_weight_and_dropout_options_train():
    enc = _tiny()
    blk = enc.blocks[0]
    x = torch.randn(1, 24, 64)
    with torch.no_grad():
        a = blk.alpha
        h = blk.norm1(a * x + blk.attn(x))
        want = blk.norm2(a * h + blk.mlp(h))
        assert (blk(x)[0] - want).abs().max() < 1e-6
    enc.train()
    torch.manual_seed(3)
    y1 = enc(torch.randn(2, 64, 128))
    assert torch.isfinite(y1).all()
    y1.square().mean().backward()
    assert enc.conv_pos.weight_g.grad is not None and enc.rel_pos.table.weight.grad is not None


def test_partial_patches_are_dropped_and_count_as_padding():
    enc = _tiny()
    assert enc.grid_shape(998) == (62, 8) and enc.grid_shape(10) == (1, 8)
    valid = enc.patch_valid(torch.tensor([998, 40, 31]), (62, 8))
    assert valid.view(3, 62, 8)[:, :, 0].sum(1).tolist() == [62, 2, 1]


# --- import: synthetic files in the released layout ------------------------------------------------------------------
def _released_file(tmp_path, cfg, finetuned=False, seed=0):
    """Random weights in the released layout, from ESPnet's module (the unilm key names), and the module itself."""
    beats = pytest.importorskip("espnet2.asr.encoder.beats_encoder",
                                reason="espnet==202511 is not installed (requirements/parity.txt; make install)")
    torch.manual_seed(seed)
    ref = beats.BeatsEncoder(input_size=1, beats_config=cfg, fbank_mean=15.41663, fbank_std=6.55582).eval()
    with torch.no_grad():
        for p in ref.parameters():  # grep_a, biases and norms start at constants: make every weight count
            p.add_(0.05 * torch.randn_like(p))
    sd = ref.state_dict()
    obj = {"cfg": dict(cfg), "model": dict(sd)}
    head = None
    if finetuned:
        D = cfg["encoder_embed_dim"]
        head = (0.2 * torch.randn(527, D), 0.1 * torch.randn(527))
        obj["model"].update({"predictor.weight": head[0], "predictor.bias": head[1]})
        order = torch.randperm(527, generator=torch.Generator().manual_seed(seed + 7))  # file row i = class order[i]
        mids = audioset_labels().mids
        obj["label_dict"] = {i: mids[int(order[i])] for i in range(527)}
        obj["cfg"].update(finetuned_model=True, predictor_dropout=0.0, predictor_class=527,
                          layer_wise_gradient_decay_ratio=0.6, dropout=0.0)
        head = head + (order,)
    path = tmp_path / ("BEATs_finetuned.pt" if finetuned else "BEATs_iter3.pt")
    torch.save(obj, path)
    return path, ref, head


def _espnet_lengths(ours_frames, num_samples):
    """ESPnet's sample length at which its padding rule (frames by chunking the sample mask, then tokens by
    chunking the frame mask) keeps exactly our real tokens: the whole time patches of real audio."""
    T = 1 + (num_samples - 400) // 160
    chunk = num_samples // T
    return torch.tensor([16 * (int(n) // 16) * chunk for n in ours_frames])


@pytest.mark.parametrize("cfg,seconds", [(TINY, 10.0), (RELEASED, 2.0)], ids=["tiny-10s", "released-2s"])
def test_features_and_logits_match_espnet_on_padded_batches(tmp_path, cfg, seconds):
    path, ref, (W, b, order) = _released_file(tmp_path, cfg, finetuned=True)
    out = tmp_path / "out"
    assert main(["convert", "beats", str(path), "--out", str(out)]) == 0
    model = audiossl.load_model(out)
    assert model.front_end.config.window_type == "povey" and model.front_end.config.waveform_scale == 32768.0
    assert model.head_config.pool == "mean" and not model.head_config.norm
    N = int(seconds * 16000)
    lengths = [N, N - 3000, int(N * 0.55) + 77, 16000]  # full, a partial patch at the end, about half, 1 s
    g = torch.Generator().manual_seed(5)
    wave = torch.randn(len(lengths), N, generator=g) * 0.1
    for i, n in enumerate(lengths):
        wave[i, n:] = 0.0
    with torch.no_grad():
        x, frames = model.front_end(wave, num_samples=torch.tensor(lengths), return_frames=True)
        emb, tokens = model.forward_features(x, frames)
        logits = model.head(emb)
        ilens = _espnet_lengths(frames, N)
        pad = torch.arange(N)[None, :] >= ilens[:, None]
        ref_feats, ref_pad = ref.extract_features(wave, pad)  # [B, P, D], [B, P]
    P = ref_feats.shape[1]
    valid = ~ref_pad
    ours_valid = model.encoder.patch_valid(frames, (P // 8, 8))
    assert torch.equal(ours_valid, valid)  # the two rules mark the same tokens at these lengths
    assert valid.sum(1).tolist() == [8 * (int(f) // 16) for f in frames]
    diff = (tokens[:, :P] - ref_feats).abs()[valid].max()
    assert diff <= 1e-4, f"features differ by {diff:.2e}"
    # BEATs' head: per-token logits, padding zeroed, mean over real tokens; our rows are in AudioSet order
    per_token = ref_feats @ W.T + b
    ref_logits = (per_token * valid[..., None]).sum(1) / valid.sum(1, keepdim=True)
    ours_in_file_order = torch.empty_like(logits)
    ours_in_file_order[:, torch.argsort(order)] = logits  # our class j sits in file row i where order[i] = j
    assert (ours_in_file_order - ref_logits).abs().max() <= 1e-4
    assert (torch.sigmoid(logits) - torch.sigmoid(ref_logits[:, torch.argsort(order)])).abs().max() <= 1e-4
    # the full-length row needs no mask in either model; the unpadded reference agrees too
    with torch.no_grad():
        alone = ref.extract_features(wave[:1], None)[0]
    assert (tokens[0, :P] - alone[0]).abs().max() <= 1e-4


def test_pretrained_file_converts_to_an_encoder_only_model_with_predict_and_onnx(tmp_path):
    path, ref, _ = _released_file(tmp_path, TINY, finetuned=False)
    model, report = convert_beats(path, target_length=200)
    assert report.kind == "encoder-only" and model.pool == "mean"
    c = model.encoder.config
    assert (c.rel_pos_buckets, c.rel_pos_max_distance, c.conv_pos, c.conv_pos_groups, c.patch_proj_dim) == (
        320, 800, 128, 16, 32)
    assert (c.dropout, c.layerdrop, c.input_dropout) == (0.1, 0.05, 0.1)  # the released pretraining values
    wave = torch.randn(32000) * 0.1  # 2 s: 198 frames, 12 whole time patches
    with torch.no_grad():
        ref_feats = ref.extract_features(wave[None], None)[0]
    emb, frames = model.embed(wave)
    assert frames.shape[0] == 96 and (frames - ref_feats[0]).abs().max() <= 1e-4
    assert (emb - ref_feats[0].mean(0)).abs().max() <= 1e-4
    from audiossl.hub.export import export_onnx

    rep = export_onnx(model, tmp_path / "beats.onnx")  # dynamic time, padded rows, checked against PyTorch
    assert rep["dynamic_time"] and rep["max_abs_diff"] <= 1e-4


def test_finetuned_file_predicts_with_labels_in_audioset_order(tmp_path):
    path, ref, (W, b, order) = _released_file(tmp_path, TINY, finetuned=True, seed=2)
    out = tmp_path / "ft"
    assert main(["convert", "beats", str(path), "--out", str(out), "--target-length", "200"]) == 0
    model = audiossl.load_model(out)
    names = audioset_labels().names
    assert model.label_names == list(names) and model.multi_label
    assert model.encoder.config.grad_decay == 0.6
    wave = torch.randn(32000) * 0.1
    top = model.predict(wave, top_k=3)
    with torch.no_grad():
        feats = ref.extract_features(wave[None], None)[0][0]
    probs = torch.sigmoid(feats.mean(0) @ W.T + b)  # file order
    best = probs.topk(3).indices.tolist()
    assert [lab for lab, _ in top] == [names[int(order[i])] for i in best]
    assert all(abs(p - float(probs[i])) < 1e-4 for (_, p), i in zip(top, best))


def test_converter_errors_name_the_problem(tmp_path):
    path, _, _ = _released_file(tmp_path, TINY)
    obj = torch.load(path, weights_only=True)
    bad = dict(obj["model"])
    bad["encoder.layers.1.self_attn.relative_attention_bias.weight"] = torch.zeros(320, 4)
    torch.save({**obj, "model": bad}, tmp_path / "unshared.pt")
    with pytest.raises(ConversionError, match="layer 1's relative_attention_bias differs from layer 0's"):
        convert_beats(tmp_path / "unshared.pt")
    extra = {**obj["model"], "encoder.layers.0.self_attn.bias_k": torch.zeros(1, 1, 64)}
    torch.save({**obj, "model": extra}, tmp_path / "extra.pt")
    with pytest.raises(ConversionError, match=r"no place in the BEATs layout.*bias_k"):
        convert_beats(tmp_path / "extra.pt")
    torch.save({**obj, "cfg": {**obj["cfg"], "layer_norm_first": True}}, tmp_path / "preln.pt")
    with pytest.raises(ConversionError, match="post-LN"):
        convert_beats(tmp_path / "preln.pt")
    with pytest.raises(ConversionError, match="no classifier head"):
        convert_beats(path, num_classes=527)
    assert main(["convert", "beats", str(tmp_path / "preln.pt"), "--out", str(tmp_path / "x")]) == 1

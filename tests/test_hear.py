"""``audiossl.hub.hear``: the HEAR 2021 API's rules (what ``hear-validator`` checks: attributes, dtypes, shapes, regular
timestamps) and that the embeddings are the model's own tokens."""

import warnings

import pytest
import torch

import audiossl.hub.hear as hear
from audiossl.errors import UserError
from audiossl.hub.export import save_model
from audiossl.models.classifier import AudioClassifier

WINDOW = 128  # 1.28 s windows keep long sounds cheap


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    m = AudioClassifier({"name": "vit_tiny", "depth": 2, "embed_dim": 64, "num_heads": 4, "block_style": "post"},
                        head=None, front_end={"target_length": WINDOW}, pool="cls")
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.2 * torch.randn_like(p))
    d = tmp_path_factory.mktemp("hear") / "model"
    save_model(m, d)
    return d


def test_the_validator_rules(model_dir):
    model = hear.load_model(str(model_dir))
    assert isinstance(model, torch.nn.Module) and model.sample_rate in (16000, 22050, 44100, 48000)
    assert isinstance(model.scene_embedding_size, int) and isinstance(model.timestamp_embedding_size, int)
    audio = torch.rand(4, 2 * model.sample_rate) * 2 - 1  # the validator's timestamp batch
    emb, ts = hear.get_timestamp_embeddings(audio, model)
    assert emb.dtype == torch.float32 and emb.ndim == 3 and ts.ndim == 2
    assert emb.shape[0] == 4 and emb.shape[:2] == ts.shape and emb.shape[2] == model.timestamp_embedding_size
    diff = torch.diff(ts)
    assert diff.mean() <= 50.0 and torch.all((diff - diff.mean()).abs() < 1e-3)
    assert abs(float(diff.mean()) - 40.0) < 1e-4 and 0 < float(ts[0, 0]) < 160
    assert float(ts[0, -1]) <= 2000 + 160  # no timestamp beyond the sound (its last patch may overhang)
    scene = hear.get_scene_embeddings(torch.rand(8, int(3.74 * model.sample_rate)) * 2 - 1, model)
    assert scene.dtype == torch.float32 and scene.shape == (8, model.scene_embedding_size)
    assert torch.isfinite(scene).all() and torch.isfinite(emb).all()


def test_embeddings_are_the_models_tokens(model_dir):
    model = hear.load_model(str(model_dir), shifts=2)
    m = model.model
    g = torch.Generator().manual_seed(1)
    audio = torch.randn(2, 16000 * 3, generator=g) * 0.1  # 3 s: three 1.28 s windows, the last one padded
    scene = hear.get_scene_embeddings(audio, model)
    for i in range(2):
        assert torch.allclose(scene[i], m.embed(audio[i], 16000)[0], atol=1e-5)  # the model's clip embedding
    emb, ts = hear.get_timestamp_embeddings(audio, model)
    # shift 0, first window: the final-layer patch tokens averaged over frequency
    x = m.front_end(audio[:1])
    with torch.no_grad():
        _, tokens = m.forward_features(x)
    first = tokens[0].reshape(WINDOW // 16, 8, -1).mean(dim=1)  # [8 time patches, D]
    assert torch.allclose(emb[0, 0::2][:8], first, atol=1e-5)
    # shift 1 (8 frames later): the same computation on the log-mel from frame 8
    feats = m.front_end.fbank(audio[:1])[:, 8 : 8 + WINDOW]
    with torch.no_grad():
        _, t1 = m.forward_features(m.front_end.normalize(feats))
    assert torch.allclose(emb[0, 1::2][:8], t1[0].reshape(8, 8, -1).mean(dim=1), atol=1e-5)
    assert torch.allclose(torch.diff(ts[0]), torch.full((ts.shape[1] - 1,), 80.0))
    n_frames = 1 + (3 * 16000 - 400) // 160
    assert ts.shape[1] == 2 * min(-(-(n_frames - s) // 16) for s in (0, 8))  # every patch that holds audio


def test_bad_inputs(model_dir):
    with pytest.raises(UserError, match="model_file_path"):
        hear.load_model()
    model = hear.load_model(str(model_dir))
    with pytest.raises(UserError, match=r"\[n_sounds, n_samples\]"):
        hear.get_scene_embeddings(torch.zeros(16000), model)
    with pytest.raises(UserError, match="shorter than one"):
        hear.get_timestamp_embeddings(torch.zeros(2, 100), model)
    with pytest.raises(UserError, match="shifts must divide"):
        hear.load_model(str(model_dir), shifts=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hear.get_scene_embeddings(torch.zeros(1, 8000), model)  # silence is a valid sound

"""`audiossl demo` (make demo's command) end to end at toy size: every stage runs and writes its outputs."""

from __future__ import annotations

import json

from PIL import Image

from audiossl.demo import main


def test_demo_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["--out", str(out), "--unlabelled-clips", "48", "--labelled-clips", "32", "--eval-clips", "16",
                 "--pretrain-steps", "2", "--finetune-steps", "2", "--workers", "1"]) == 0
    text = capsys.readouterr().out
    assert "| fine-tuned (pretrained) |" in text and "| fine-tuned (scratch) |" in text and "| linear probe" in text
    res = json.loads((out / "results.json").read_text())
    assert set(res["results"]) == {"fine-tuned (pretrained)", "fine-tuned (scratch)", "linear probe (pretrained)"}
    for r in res["results"].values():
        assert r["num_clips"] == 16 and 0.0 <= r["mAP"] <= 1.0
    assert 0.0 < res["baseline_logreg_mean_logmel_mAP"] <= 1.0
    assert (out / "model" / "model.safetensors").is_file() and (out / "model" / "config.json").is_file()
    for png in ("pretrain_curves.png", "finetune_curves.png", "example_predictions.png"):
        with Image.open(out / "plots" / png) as im:
            assert im.size[0] > 500 and im.size[1] > 200
    assert (out / "results.md").read_text().startswith("# audiossl demo")

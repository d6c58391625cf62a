"""``audiossl compare`` at toy size on the synthetic corpus: the three outputs, the budget arithmetic, measured step
FLOPs, and that a rerun continues instead of starting again."""

import json
import os

import pytest
import torch
from helpers import synth_root  # noqa: F401  (fixture)

from audiossl.cli.compare import (
    PRETRAIN_CONFIG, count_step_flops, markdown, parse_budget, parse_encoder, recipe_configs, steps_for,
)
from audiossl.errors import UserError

ARGS = ["--objectives", "mae,eat", "--budget", "steps:4", "--finetune-steps", "2", "--probe-steps", "2",
        "--points", "2", "--encoder", "depth=2,embed_dim=64,num_heads=4", "--workers", "0"]


@pytest.fixture(scope="module")
def compared(synth_root, tmp_path_factory):
    from audiossl.cli.compare import main

    out = tmp_path_factory.mktemp("compare") / "out"
    assert main(["--data", synth_root, "--out", str(out), *ARGS]) == 0
    return out


def test_outputs(compared):
    s = json.loads((compared / "compare.json").read_text())
    assert s["budget"] == {"kind": "steps", "value": 4.0, "note": "optimizer steps"}
    for name in ("mae", "eat"):
        r = s[name]
        p = r["pretrain"]
        assert p["steps"] == 4 and p["flops"] == 4 * p["flops_per_step"] > 0
        assert p["seconds"] > 0 and p["clips_per_s"] > 0 and p["peak_mem_mb"] > 100
        for k in ("finetune", "linear_probe", "cgp"):
            assert 0.0 <= r[k]["accuracy"] <= 1.0 and 0.0 <= r[k]["mAP"] <= 1.0
        assert [c["steps"] for c in r["curve"]] == [2, 4]  # two checkpoints along the way, each probed
        assert r["curve"][-1]["linear_probe"] == r["linear_probe"]
    assert s["eat"]["pretrain"]["flops_per_step"] > s["mae"]["pretrain"]["flops_per_step"]  # 8 clones + a teacher
    assert set(s["scratch"]) >= {"accuracy", "mAP"} and 0 < s["baseline"]["mAP"] <= 1
    md = (compared / "compare.md").read_text()
    assert md.count("\n| mae |") == 1 and md.count("\n| eat |") == 1 and "scratch" in md and "steps 4" in md
    assert (compared / "compare.png").stat().st_size > 10_000


def test_rerun_continues(compared, synth_root):
    from audiossl.cli.compare import main

    before = json.loads((compared / "compare.json").read_text())
    os.remove(compared / "runs" / "eat" / "finetune" / "result.json")  # as if killed after training, before eval
    stamp = os.path.getmtime(compared / "runs" / "mae" / "pretrain" / "checkpoints" / "last.ckpt")
    assert main(["--data", synth_root, "--out", str(compared), *ARGS]) == 0
    after = json.loads((compared / "compare.json").read_text())
    assert os.path.getmtime(compared / "runs" / "mae" / "pretrain" / "checkpoints" / "last.ckpt") == stamp
    # re-evaluated, not retrained; its seconds: the training's and both evaluations'
    metrics = ("accuracy", "mAP", "mAUC")
    assert {k: after["eat"]["finetune"][k] for k in metrics} == {k: before["eat"]["finetune"][k] for k in metrics}
    spent = json.loads((compared / "runs" / "eat" / "finetune" / "elapsed_seconds.json").read_text())
    assert before["eat"]["finetune"]["seconds"] < after["eat"]["finetune"]["seconds"] <= spent
    assert after["stage_seconds"].keys() <= before["stage_seconds"].keys()
    # the table's total counts every run it rests on, the first invocation's included, not just this quick call
    assert after["untimed_runs"] == 0 and after["total_seconds"] > 2 * after["invocation_seconds"]
    assert abs(after["total_seconds"] - before["total_seconds"]) < 0.5 * before["total_seconds"]
    assert f"Total {after['total_seconds'] / 60:.1f} min of runs." in (compared / "compare.md").read_text()


def test_interrupted_invocations_count_toward_a_runs_seconds(tmp_path):
    import time

    from audiossl.cli.compare import _timed

    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt), _timed(run):  # Ctrl-C mid-run
        time.sleep(0.05)
        raise KeyboardInterrupt
    with _timed(run) as elapsed:  # the resumed invocation starts from the first one's time
        assert 0.05 <= elapsed() < 5
    assert json.loads((run / "elapsed_seconds.json").read_text()) >= 0.05
    (run / "elapsed_seconds.json").write_text("")  # a hard kill mid-write
    with _timed(run) as elapsed:
        assert elapsed() < 0.05


def test_budget_arithmetic_and_bad_flags():
    assert parse_budget("steps:600") == ("steps", 600.0) and parse_budget("flops:2e15") == ("flops", 2e15)
    assert steps_for("flops", 1e12, {"flops_per_step": 3e9}) == 333
    assert steps_for("seconds", 60, {"seconds_per_step": 0.25}) == 240
    assert parse_encoder("depth=4,embed_dim=128,num_heads=4") == {"depth": 4, "embed_dim": 128, "num_heads": 4}
    for bad in ("steps", "hours:3", "flops:-1", "steps:x"):
        with pytest.raises(UserError):
            parse_budget(bad)
    with pytest.raises(UserError):
        parse_encoder("width=3")


def test_step_flops_are_the_counted_matrix_products():
    """A linear "objective": one step of a [B, 10] @ [10, 3] layer is 2*B*10*3 forward and twice that backward
    (weight and input gradients) — 3x the forward, as the FLOP model says."""
    import lightning as L

    class Lin(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(10, 3, bias=False)

        def training_step(self, batch, batch_idx):
            return self.w(batch["audio"]).sum()

    m = Lin()
    batch = {"audio": torch.randn(8, 10, requires_grad=True)}
    assert count_step_flops(m, batch) == 3 * 2 * 8 * 10 * 3
    assert m.w.weight.grad is None


def test_markdown_states_the_budget_and_machine():
    row = {"pretrain": {"steps": 3, "flops": 3e9, "seconds": 30.0, "clips_per_s": 12.0, "peak_mem_mb": 500.0},
           "finetune": {"accuracy": 0.5, "mAP": 0.4}, "linear_probe": {"accuracy": 0.3, "mAP": 0.2}}
    s = {"budget": {"kind": "flops", "value": 9e9, "note": "n"}, "objectives": {"eat": row},
         "scratch": {"accuracy": 0.1, "mAP": 0.1}, "baseline": {"accuracy": 0.2, "mAP": 0.3},
         "data": {"description": "d"}, "settings": {"encoder": {}}, "machine": "2 CPU cores", "total_seconds": 60}
    md = markdown(s)
    assert "flops 9e+09" in md and "2 CPU cores" in md and "| eat | 3 | 3 | 0.5 | 12.0 | 500 | 0.500 / 0.400 |" in md


def test_recipes_name_existing_configs():
    """``--recipe base`` maps to the ViT-B AudioSet configs (each objective's *_base_as2m, AS-20K fine-tuning, CGP);
    tiny/small are suffixes; a recipe without a config is a one-line error before any run."""
    names = list(PRETRAIN_CONFIG)
    pre, ft, probe = recipe_configs("base", names)
    assert {p.name for p in pre.values()} == {f"{PRETRAIN_CONFIG[o]}_base_as2m.yaml" for o in names}
    assert (ft.name, probe.name) == ("as20k.yaml", "as20k_cgp.yaml")
    for recipe in ("tiny", "small"):
        pre, ft, probe = recipe_configs(recipe, names)
        assert pre["beats"].name == f"beats_iter1_{recipe}.yaml" and ft.name == probe.name == f"{recipe}.yaml"
    with pytest.raises(UserError, match="recipe 'huge'.*does not exist"):
        recipe_configs("huge", ["mae"])

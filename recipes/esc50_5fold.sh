#!/usr/bin/env bash
# ESC-50 five-fold cross-validation (the EAT recipe, configs/finetune/esc50.yaml): convert ESC-50-master once, then
# for each fold K fine-tune on the other four folds and evaluate on K; print per-fold and mean top-1 accuracy.
#
#   recipes/esc50_5fold.sh ESC-50-master PRETRAINED.ckpt OUT [extra fine-tuning overrides...]
#
# PRETRAINED.ckpt: an audiossl pretraining checkpoint, or an export/convert directory (e.g. `audiossl convert eat`).
# Environment: AUDIOSSL (the command, default `audiossl`), FINETUNE_CONFIG (default configs/finetune/esc50.yaml),
# FOLDS (default "1 2 3 4 5").
# A re-run resumes each fold from OUT/foldK/checkpoints/last.ckpt (a finished fold only re-evaluates).
set -euo pipefail
if [ $# -lt 3 ]; then
  sed -n '2,10p' "$0" >&2
  exit 2
fi
ESC_ROOT=$1 INIT=$2 OUT=$3
shift 3
AUDIOSSL=${AUDIOSSL:-audiossl}
HERE=$(cd "$(dirname "$0")/.." && pwd)
CONFIG=${FINETUNE_CONFIG:-$HERE/configs/finetune/esc50.yaml}
FOLDS=${FOLDS:-1 2 3 4 5}
DATA=$OUT/data

if [ ! -f "$DATA/manifest.json" ]; then
  $AUDIOSSL prep esc50 --root "$ESC_ROOT" --out "$DATA"
fi
for k in $FOLDS; do
  echo "=== fold $k: train on the other folds, evaluate on fold $k"
  $AUDIOSSL finetune --config "$CONFIG" --data.root "$DATA" --data.eval_fold "$k" --model.init_from "$INIT" \
    --trainer.default_root_dir "$OUT/fold$k" --ckpt_path last "$@"
  BEST=()
  if [ -f "$OUT/fold$k/checkpoints/best.ckpt" ]; then
    BEST=(--best_ckpt_path "$OUT/fold$k/checkpoints/best.ckpt")
  fi
  $AUDIOSSL evaluate --ckpt_path "$OUT/fold$k/checkpoints/last.ckpt" --data.root "$DATA" --data.eval_fold "$k" \
    --out "$OUT/fold$k/eval" "${BEST[@]}"
done
python3 - "$OUT" $FOLDS <<'PY'
import json, os, sys
out, folds = sys.argv[1], sys.argv[2:]
accs, best, history = [], [], {}
for k in folds:
    m = json.load(open(f"{out}/fold{k}/eval/metrics.json"))
    accs.append(m["accuracy"])
    b = m.get("best_test_selected")
    best.append(b["accuracy"] if b else None)
    extra = f", best (test-selected) {b['accuracy']:.4f} at step {b['step']}" if b else ""
    print(f"fold {k}: accuracy {m['accuracy']:.4f} ({m['num_clips']} clips){extra}")
    path = f"{out}/fold{k}/val_history.jsonl"
    if os.path.exists(path):
        for line in open(path):
            row = json.loads(line)
            history.setdefault(row["step"], {})[k] = row["accuracy"]  # a re-run step: the later line wins
mean = sum(accs) / len(accs)
print(f"mean accuracy over {len(accs)} folds: {mean:.4f} (last checkpoints)")
res = {"folds": dict(zip(folds, accs)), "mean_accuracy": mean}
if all(b is not None for b in best):
    res["best_test_selected"] = {"folds": dict(zip(folds, best)), "mean_accuracy": sum(best) / len(best),
                                 "selection": "per fold, the checkpoint with the best accuracy on its own test fold "
                                              "(EAT/SSLAM's best_checkpoint_metric); TEST-SELECTED"}
    print(f"mean accuracy, best checkpoint per fold (TEST-SELECTED, EAT/SSLAM style): {res['best_test_selected']['mean_accuracy']:.4f}")
steps = [s for s, accs_at in history.items() if len(accs_at) == len(folds) and None not in accs_at.values()]
if steps:  # AST's get_esc_result.py: the one validation point with the best accuracy averaged over the folds
    s = max(steps, key=lambda s: (sum(history[s].values()), -s))
    res["ast_best_step_test_selected"] = {"step": s, "mean_accuracy": sum(history[s].values()) / len(folds),
                                          "selection": "the validation step with the best mean accuracy over the test "
                                                       "folds (AST's get_esc_result.py); TEST-SELECTED, from the "
                                                       "in-training validations"}
    print(f"mean accuracy at the best step over folds (TEST-SELECTED, AST style): "
          f"{res['ast_best_step_test_selected']['mean_accuracy']:.4f} (step {s})")
json.dump(res, open(f"{out}/cv_results.json", "w"), indent=2)
PY

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
  $AUDIOSSL evaluate --ckpt_path "$OUT/fold$k/checkpoints/last.ckpt" --data.root "$DATA" --data.eval_fold "$k" \
    --out "$OUT/fold$k/eval"
done
python3 - "$OUT" $FOLDS <<'PY'
import json, sys
out, folds = sys.argv[1], sys.argv[2:]
accs = []
for k in folds:
    m = json.load(open(f"{out}/fold{k}/eval/metrics.json"))
    accs.append(m["accuracy"])
    print(f"fold {k}: accuracy {m['accuracy']:.4f} ({m['num_clips']} clips)")
mean = sum(accs) / len(accs)
print(f"mean accuracy over {len(accs)} folds: {mean:.4f}")
json.dump({"folds": dict(zip(folds, accs)), "mean_accuracy": mean}, open(f"{out}/cv_results.json", "w"), indent=2)
PY

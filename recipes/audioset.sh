#!/usr/bin/env bash
# AudioSet end to end: prep -> stats -> pretrain (EAT) -> fine-tune -> evaluate.
#
#   recipes/audioset.sh SEGMENTS_DIR AUDIO_DIR OUT
#
# SEGMENTS_DIR holds the official balanced_train_segments.csv, unbalanced_train_segments.csv (optional) and
# eval_segments.csv; AUDIO_DIR your downloaded clips (searched recursively). Everything lands under OUT:
# OUT/data (shards), OUT/pretrain, OUT/finetune, OUT/eval (last checkpoint; OUT/eval/best: the test-selected best).
# Environment (defaults in brackets): AUDIOSSL [audiossl], WORKERS [8],
# PRETRAIN_CONFIG [configs/pretrain/eat_base_as2m.yaml], FINETUNE_CONFIG [configs/finetune/as20k.yaml, or as2m.yaml
# when the unbalanced CSV is there], TRAIN_SPLIT [balanced_train(+unbalanced_train)],
# PRETRAIN_ARGS / FINETUNE_ARGS [extra overrides, e.g. "--trainer.devices 8"].
set -euo pipefail
if [ $# -lt 3 ]; then
  sed -n '2,12p' "$0" >&2
  exit 2
fi
SEGMENTS=$1 AUDIO=$2 OUT=$3
AUDIOSSL=${AUDIOSSL:-audiossl}
HERE=$(cd "$(dirname "$0")/.." && pwd)
WORKERS=${WORKERS:-8}
CSVS=("$SEGMENTS/balanced_train_segments.csv" "$SEGMENTS/eval_segments.csv")
SPLIT=balanced_train
FT_DEFAULT=$HERE/configs/finetune/as20k.yaml
if [ -f "$SEGMENTS/unbalanced_train_segments.csv" ]; then
  CSVS+=("$SEGMENTS/unbalanced_train_segments.csv")
  SPLIT=balanced_train+unbalanced_train
  FT_DEFAULT=$HERE/configs/finetune/as2m.yaml
fi
TRAIN_SPLIT=${TRAIN_SPLIT:-$SPLIT}
PRETRAIN_CONFIG=${PRETRAIN_CONFIG:-$HERE/configs/pretrain/eat_base_as2m.yaml}
FINETUNE_CONFIG=${FINETUNE_CONFIG:-$FT_DEFAULT}
read -r -a PRE_EXTRA <<< "${PRETRAIN_ARGS:-}"
read -r -a FT_EXTRA <<< "${FINETUNE_ARGS:-}"

if [ ! -f "$OUT/data/manifest.json" ]; then
  $AUDIOSSL prep audioset --segments "${CSVS[@]}" --audio-dir "$AUDIO" --out "$OUT/data" --workers "$WORKERS"
  $AUDIOSSL stats "$OUT/data" --split "${TRAIN_SPLIT%%+*}" --max-clips 20000
fi
$AUDIOSSL pretrain --config "$PRETRAIN_CONFIG" --data.root "$OUT/data" --data.train_split "$TRAIN_SPLIT" \
  --trainer.default_root_dir "$OUT/pretrain" --ckpt_path last "${PRE_EXTRA[@]}"
$AUDIOSSL finetune --config "$FINETUNE_CONFIG" --data.root "$OUT/data" --data.train_split "$TRAIN_SPLIT" \
  --data.eval_split eval --model.init_from "$OUT/pretrain/checkpoints/last.ckpt" \
  --trainer.default_root_dir "$OUT/finetune" --ckpt_path last "${FT_EXTRA[@]}"
BEST=()
if [ -f "$OUT/finetune/checkpoints/best.ckpt" ]; then
  BEST=(--best_ckpt_path "$OUT/finetune/checkpoints/best.ckpt")
fi
$AUDIOSSL evaluate --ckpt_path "$OUT/finetune/checkpoints/last.ckpt" --data.root "$OUT/data" --data.eval_split eval \
  --out "$OUT/eval" "${BEST[@]}"
python3 - "$OUT/eval/metrics.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
print(f"last checkpoint (step {m['checkpoint']['step']}): mAP {m['mAP']:.4f} on {m['num_clips']} clips")
b = m.get("best_test_selected")
if b:
    print(f"best checkpoint (step {b['step']}, TEST-SELECTED on this eval set, as the papers report): mAP {b['mAP']:.4f}")
PY

#!/usr/bin/env bash
# BEATs' iterations (Chen et al. 2023): iteration 1 with the random-projection tokenizer, then for each further
# iteration i: a tokenizer distilled from iteration i-1's encoder, and a new student on that tokenizer's labels;
# finally the last student is exported (encoder-only, for fine-tuning or embeddings).
#
#   recipes/beats_iterations.sh DATA OUT [ITERATIONS]       (ITERATIONS: default 3, as BEATs_iter3)
#
# DATA: shards from `audiossl prep`. OUT/iter1, OUT/tokenizer2, OUT/iter2, ... are the runs; OUT/export the model.
# Environment: AUDIOSSL (the command, default `audiossl`), ITER1_CONFIG, TOKENIZER_CONFIG, ITER_CONFIG (default the
# configs/pretrain/beats_*_base_as2m.yaml), PRETRAIN_ARGS / TOKENIZER_ARGS (extra overrides for the students / the
# tokenizers). A re-run resumes every stage from its last.ckpt (a finished stage returns at once).
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,11p' "$0" >&2
  exit 2
fi
DATA=$1 OUT=$2 ITERATIONS=${3:-3}
AUDIOSSL=${AUDIOSSL:-audiossl}
HERE=$(cd "$(dirname "$0")/.." && pwd)
ITER1_CONFIG=${ITER1_CONFIG:-$HERE/configs/pretrain/beats_iter1_base_as2m.yaml}
TOKENIZER_CONFIG=${TOKENIZER_CONFIG:-$HERE/configs/pretrain/beats_tokenizer_base_as2m.yaml}
ITER_CONFIG=${ITER_CONFIG:-$HERE/configs/pretrain/beats_iter2_base_as2m.yaml}
# word-split on purpose: each holds several overrides
read -r -a STUDENT_EXTRA <<< "${PRETRAIN_ARGS:-}"
read -r -a TOKENIZER_EXTRA <<< "${TOKENIZER_ARGS:-}"

echo "=== iteration 1: random-projection tokenizer"
$AUDIOSSL pretrain --config "$ITER1_CONFIG" --data.root "$DATA" --trainer.default_root_dir "$OUT/iter1" \
  --ckpt_path last ${STUDENT_EXTRA[@]+"${STUDENT_EXTRA[@]}"}
for ((i = 2; i <= ITERATIONS; i++)); do
  prev=$OUT/iter$((i - 1))/checkpoints/last.ckpt
  echo "=== iteration $i: tokenizer distilled from iteration $((i - 1))"
  $AUDIOSSL pretrain --config "$TOKENIZER_CONFIG" --data.root "$DATA" --model.init_args.teacher "$prev" \
    --trainer.default_root_dir "$OUT/tokenizer$i" --ckpt_path last ${TOKENIZER_EXTRA[@]+"${TOKENIZER_EXTRA[@]}"}
  echo "=== iteration $i: student on the tokenizer's labels"
  $AUDIOSSL pretrain --config "$ITER_CONFIG" --data.root "$DATA" \
    --model.init_args.tokenizer.checkpoint "$OUT/tokenizer$i/checkpoints/last.ckpt" \
    --trainer.default_root_dir "$OUT/iter$i" --ckpt_path last ${STUDENT_EXTRA[@]+"${STUDENT_EXTRA[@]}"}
done
$AUDIOSSL export "$OUT/iter$ITERATIONS/checkpoints/last.ckpt" --out "$OUT/export"
echo "BEATs iteration $ITERATIONS: $OUT/iter$ITERATIONS/checkpoints/last.ckpt, exported to $OUT/export"

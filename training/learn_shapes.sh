#!/usr/bin/env bash
# The proof that training teaches: synthetic shape bags -> dataset -> train the tiny model on CPU
# -> replay a held-out bag before and after -> score both against its reference.
#
#   training/learn_shapes.sh [WORK_DIR]      (default runs/learn_shapes; 4 min 49 s measured on 2 shared cores, training/README.md)
#
# TRAIN_BAGS, BAG_SECONDS, HELDOUT_SECONDS and EPOCHS override the sizes; extra `svlm train --set` values go in TRAIN_SET.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-runs/learn_shapes}
TRAIN_BAGS=${TRAIN_BAGS:-16}
SECONDS_PER_BAG=${BAG_SECONDS:-60}
HELDOUT_SECONDS=${HELDOUT_SECONDS:-120}
EPOCHS=${EPOCHS:-8}
PY=${PY:-.venv/bin/python}
SVLM=${SVLM:-.venv/bin/svlm}
# 56x84 frames at min_pixels 3136: 6 vision tokens a second, enough to see colour and side.
FRAMES=(--set frames.min_pixels=3136)
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

rm -rf "$WORK" && mkdir -p "$WORK/bags" "$WORK/heldout"
echo "== 1. synthetic bags: $TRAIN_BAGS x $SECONDS_PER_BAG s for training, 1 held out"
for k in $(seq 1 "$TRAIN_BAGS"); do
  "$SVLM" --log-level WARNING synth-bag "$WORK/bags/train$k" --seconds "$SECONDS_PER_BAG" --height 56 --width 84 --seed "$k" >/dev/null
done
"$SVLM" --log-level WARNING synth-bag "$WORK/heldout/heldout" --seconds "$HELDOUT_SECONDS" --height 56 --width 84 --seed 1000 >/dev/null

echo "== 2. dataset"
"$PY" -m training.build_dataset --log-level WARNING "$WORK/bags" "$WORK/heldout/heldout" --out "$WORK/dataset" \
  --config training/configs/shapes_cpu.yaml "${FRAMES[@]}" --overwrite

echo "== 3. train (tiny-random, CPU)"
"$PY" -m training.train --log-level WARNING --config training/configs/shapes_cpu.yaml --no-resume \
  --set data="$WORK/dataset" --set output_dir="$WORK/train" --set epochs="$EPOCHS" ${TRAIN_SET:-}

echo "== 4. replay the held-out bag before (tiny-random) and after (the fine-tune)"
for which in before after; do
  model=tiny-random; [ "$which" = after ] && model="$WORK/train/model"
  "$SVLM" --log-level WARNING replay "$WORK/heldout/heldout" --out "$WORK/replay_$which" --model "$model" \
    --device cpu "${FRAMES[@]}" --seed 0 --thumbnails 4 >/dev/null
done

echo "== 5. scores against the held-out bag's reference (10-s windows)"
REF="$WORK/heldout/heldout.reference.jsonl"
for which in before after; do
  echo "-- $which"
  "$SVLM" --log-level WARNING eval "$WORK/replay_$which" --reference "$REF" --no-semantic | grep -v '^wrote'
done
echo "-- after vs before (B - A, paired bootstrap 95% intervals)"
"$SVLM" --log-level WARNING eval "$WORK/replay_before" "$WORK/replay_after" --reference "$REF" --out "$WORK/compare"

#!/usr/bin/env bash
# The synthetic narrator: does a model trained by training/ see the video? Synthetic shape bags
# (three colour-shape pairs held out of every training bag) -> dataset -> the vision stage (the
# tower of `narrator-random` trained on synthetic scenes' truth, the held-out pairs in none of them)
# -> train the model on CPU twice, its tower frozen, once seeing the frames (grounded) and once with
# every frame blanked (video-blind)
# -> replay two held-out bags (one of only the held-out pairs, one of new seeds) with the untrained
# model, the video-blind and the grounded one (all with the real frames), and the grounded one again
# with the frames' red and blue swapped and with the frames 2 s late (`svlm perturb-bag`) -> the
# grounded score against the scenes' truth, and the differences (grounded - blind, perturbed -
# real) with 95% intervals.
#
#   training/narrator.sh [WORK_DIR]      (default runs/narrator)
#
# Resumable: a step whose output exists is skipped (an interrupted training resumes from its last
# checkpoint); remove WORK_DIR to start over. TRAIN_BAGS, BAG_SECONDS, HELDOUT_SECONDS, HOLDOUT
# (COLOUR:SHAPE,...), MAX_OBJECTS, SHAPE_SIZE, SPEED_SCALE and EPOCHS override the sizes; extra `svlm train --set`
# values go in TRAIN_SET, the vision stage's (NAME=VALUE ...) in STAGE_SET. The grounded and then the
# blind run train with all the cores each (on 2 cores one run with 2 threads takes 1.0 s a step, two side
# by side with one each 1.7 s: one after the other is faster).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-runs/narrator}
TRAIN_BAGS=${TRAIN_BAGS:-20}
SECONDS_PER_BAG=${BAG_SECONDS:-60}
HELDOUT_SECONDS=${HELDOUT_SECONDS:-60}
HOLDOUT=${HOLDOUT:-red:triangle,green:circle,blue:square}
EPOCHS=${EPOCHS:-16}  # 580 steps of 16 windows: about 10 min per model on 2 cores (the trained tower is read fast)
# The scene's easiest stage: one shape in view at a time, 56 px in 168x112 frames (28 px, 2x2
# patches, in the 84x56 the narrator sees), as `make demo`'s camera shows it.
SCENE=(--max-objects "${MAX_OBJECTS:-1}" --shape-size "${SHAPE_SIZE:-56}" --speed-scale "${SPEED_SCALE:-1}")
CONFIG=training/configs/narrator_cpu.yaml
PY=${PY:-.venv/bin/python}
SVLM=${SVLM:-.venv/bin/svlm}
# The narrator's node parameters (frames, cache, greedy decoding) build its dataset and replay it.
PARAMS=config/narrator.yaml
HEIGHT=112 WIDTH=168
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
START=$(date +%s)
stamp() { echo "   ($(( $(date +%s) - START )) s so far)"; }

mkdir -p "$WORK/bags" "$WORK/heldout"
echo "== 1. synthetic bags: $TRAIN_BAGS x $SECONDS_PER_BAG s without $HOLDOUT; held out: 2 x $HELDOUT_SECONDS s"
synth() {  # OUT SECONDS SEED PAIRS-OPTION
  [ -e "$1" ] && return 0
  # Written aside, then moved in with its sidecars: an interrupted bag is written again, never half used.
  local part="$WORK/.partial"; rm -rf "$part" && mkdir -p "$part"
  "$SVLM" --log-level WARNING synth-bag "$part/$(basename "$1")" --seconds "$2" --height $HEIGHT --width $WIDTH \
    --seed "$3" "${SCENE[@]}" "$4" "$HOLDOUT" >/dev/null
  mv "$part"/* "$(dirname "$1")/" && rmdir "$part"
}
for k in $(seq 1 "$TRAIN_BAGS"); do
  printf '\r   train%s' "$k"; synth "$WORK/bags/train$k" "$SECONDS_PER_BAG" "$k" --exclude-pairs
done; echo
synth "$WORK/heldout/heldout_novel" "$HELDOUT_SECONDS" 1000 --only-pairs      # objects no training bag shows
synth "$WORK/heldout/heldout_seen" "$HELDOUT_SECONDS" 1001 --exclude-pairs    # new seed, familiar objects
stamp

echo "== 2. dataset"
[ -e "$WORK/dataset/manifest.json" ] || "$PY" -m training.build_dataset --log-level WARNING "$WORK/bags" \
  --out "$WORK/dataset" --config "$CONFIG" --params "$PARAMS" --overwrite
stamp

echo "== 3. the vision stage: narrator-random's tower trained on the scenes' truth (none of $HOLDOUT)"
VISION=$WORK/vision/model
STAGE_OPTIONS=(); for item in ${STAGE_SET:-}; do STAGE_OPTIONS+=(--set "$item"); done
[ -e "$VISION/svlm_vision_stage.json" ] || OMP_NUM_THREADS=$(nproc) "$PY" -m training.vision_stage \
  --log-level WARNING --config "$CONFIG" --params "$PARAMS" --holdout "$HOLDOUT" --out "$WORK/vision" \
  "${STAGE_OPTIONS[@]}" >/dev/null
stamp

echo "== 4. train it (the tower frozen) for $EPOCHS epochs, grounded, then video-blind"
train() {  # RUN BLANK_FRAMES
  [ -e "$WORK/train_$1/model/svlm_training.json" ] || OMP_NUM_THREADS=$(nproc) "$PY" -m training.train \
    --log-level WARNING --config "$CONFIG" --set data="$WORK/dataset" --set output_dir="$WORK/train_$1" \
    --set model.model="$VISION" --set epochs="$EPOCHS" --set blank_frames="$2" ${TRAIN_SET:-}
}
train grounded false
stamp
train blind true
stamp

echo "== 5. replay the held-out bags (real frames) with the untrained, video-blind and grounded models"
replay() {  # RUN MODEL BAG...
  local run=$1 model=$2; shift 2
  if [ ! -e "$WORK/replay_$run/.done" ]; then  # a fleet run: one folder per bag in it
    rm -rf "$WORK/replay_$run"
    "$SVLM" --log-level WARNING replay "$@" --out "$WORK/replay_$run" --model "$model" --device cpu \
      --params "$PARAMS" --seed 0 --thumbnails 4 >/dev/null
    touch "$WORK/replay_$run/.done"
  fi
  echo "   $run done"; stamp
}
HELDOUT=(heldout_novel heldout_seen)
for run in untrained blind grounded; do
  model=$VISION; [ "$run" = untrained ] || model="$WORK/train_$run/model"  # untrained: the decoder
  replay "$run" "$model" "${HELDOUT[@]/#/$WORK/heldout/}"
done
# Does the score see the pixels? The grounded model on the same bags with red and blue swapped, and
# with every frame 2 s late (stamps and truth unchanged): colour, and timing, must be lost.
for change in swapped:--swap-red-blue late:--delay=2; do
  name=${change%%:*}
  mkdir -p "$WORK/heldout_$name"
  for bag in "${HELDOUT[@]}"; do
    [ -e "$WORK/heldout_$name/$bag" ] || "$SVLM" --log-level WARNING perturb-bag "$WORK/heldout/$bag" \
      "$WORK/heldout_$name/$bag" "${change#*:}" >/dev/null
  done
  replay "grounded_$name" "$WORK/train_grounded/model" "${HELDOUT[@]/#/$WORK/heldout_$name/}"
done

echo "== 6. grounded score against the scenes' truth (both held-out bags pooled)"
RUNS="untrained blind grounded grounded_swapped grounded_late"
for run in $RUNS; do
  "$SVLM" --log-level WARNING eval "$WORK/replay_$run" --no-semantic >/dev/null
done
"$PY" - "$WORK" $RUNS <<'PY'
import json, sys
from pathlib import Path
work, runs = Path(sys.argv[1]), sys.argv[2:]
names = ("color_accuracy", "shape_accuracy", "object_accuracy", "action_accuracy", "side_accuracy", "event_f1",
         "silence_agreement")
print("| model | " + " | ".join(n.replace("_accuracy", "") for n in names) + " |")
print("|---" * (len(names) + 1) + "|")
for run in runs:
    g = json.loads((work / f"replay_{run}" / "summary.json").read_text()).get("grounded") or {}
    print(f"| {run} | " + " | ".join("-" if g.get(n) is None else f"{g[n]:.2f}" for n in names) + " |")
PY
compare() {  # A B TITLE
  echo "-- $3 (B - A, paired bootstrap over seconds, 95% intervals)"
  "$SVLM" --log-level WARNING eval "$WORK/replay_$1" "$WORK/replay_$2" --no-semantic --out "$WORK/compare_$2" \
    | sed -n '/^Grounded/,$p'
}
compare blind grounded "grounded vs video-blind"
compare grounded grounded_swapped "red and blue swapped vs the real frames (grounded model)"
compare grounded grounded_late "frames 2 s late vs the real frames (grounded model)"
stamp

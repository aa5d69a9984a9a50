#!/usr/bin/env bash
# The robust phantom model, end to end: diverse cohort -> cache -> fit -> clean-up -> evaluation under shift
# -> model file. Training styles: classic, legacy, digital; the endemic style is never trained on, tuned on or
# validated on: it is the unseen centre (leave-one-style-out). Every figure comes from hntumorseg-train itself.
#
#   DATA=/scratch/hnts OUT_MODEL=HNTumorSegLib/models/NAME Training/recipes/robust_phantom_model.sh
#
# Sizes are environment variables, so a pilot runs the same path small: N_TRAIN=60 N_UNSEEN=8 EPOCHS=2 ...
set -euo pipefail

DATA=${DATA:?set DATA to a scratch folder (several GB)}
OUT_MODEL=${OUT_MODEL:-$DATA/model/hntumorseg_phantom_psam_robust}
N_TRAIN=${N_TRAIN:-300}          # cases of the training styles (a held-out share is kept by prepare's split)
N_TUNE=${N_TUNE:-60}             # further cases of the training styles, for choosing the clean-up only (20 proved too few)
N_UNSEEN=${N_UNSEEN:-40}         # cases of the unseen style
EPOCHS=${EPOCHS:-30}
STEPS=${STEPS:-100}              # samples per epoch = STEPS x batch size 2
LR=${LR:-2e-3}                   # peak learning rate; a fine-tune (INIT) may want less
WORKERS=${WORKERS:-2}
INIT=${INIT:-}                   # e.g. HNTumorSegLib/models/hntumorseg_phantom_psam.json: fine-tune instead
TRAIN_STYLES=${TRAIN_STYLES:-classic,legacy,digital}
UNSEEN_STYLE=${UNSEEN_STYLE:-endemic}
BIN=${BIN:-$(dirname "$(command -v hntumorseg-train)")}
run() { echo "+ $*" >&2; "$@"; }

run "$BIN/hntumorseg-train" phantoms --out "$DATA/train" --n "$N_TRAIN" --seed 11 --style "$TRAIN_STYLES"
run "$BIN/hntumorseg-train" phantoms --out "$DATA/tune" --n "$N_TUNE" --seed 12 --style "$TRAIN_STYLES"
run "$BIN/hntumorseg-train" phantoms --out "$DATA/unseen" --n "$N_UNSEEN" --seed 13 --style "$UNSEEN_STYLE"
run "$BIN/hntumorseg-train" prepare --data "$DATA/train" --out "$DATA/cache" --workers "$WORKERS" --no-progress
run "$BIN/hntumorseg-train" prepare --data "$DATA/tune" --out "$DATA/tune_cache" --workers "$WORKERS" --no-progress

run "$BIN/hntumorseg-train" fit --cache "$DATA/cache" --model psam --channels 8 16 32 64 128 --out "$DATA/run" \
  --patch-size 32 80 80 --batch-size 2 --samples-per-epoch $((STEPS * 2)) --epochs "$EPOCHS" --lr "$LR" \
  --warmup-epochs 1 --p-fg 0.5 --batch-dice --augment default --workers "$WORKERS" --val-every 0 \
  ${INIT:+--init-weights "$INIT"}
run "$BIN/hntumorseg-train" postprocess --run "$DATA/run" --weights last --cache "$DATA/tune_cache" --split all --quiet
run "$BIN/hntumorseg-train" evaluate --run "$DATA/run" --weights last --split val --quiet
run "$BIN/hntumorseg-train" evaluate --run "$DATA/run" --weights last --data "$DATA/unseen" --out "$DATA/eval_unseen" --quiet
run "$BIN/hntumorseg-train" export --run "$DATA/run" --weights last --out "$OUT_MODEL" \
  --evaluation "heldout_training_styles=$DATA/run/evaluation/val-last" --evaluation "unseen_style=$DATA/eval_unseen"

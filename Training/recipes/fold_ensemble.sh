#!/usr/bin/env bash
# An ensemble of cross-validation folds, end to end, as HECKTOR's winning teams build theirs: one network per
# fold -> one clean-up chosen on the ensemble's averaged output -> evaluation of the model file on the cases
# every fold held out (and on an unseen centre) -> the model file with those figures.
#
#   CACHE=/scratch/cache TUNE_CACHE=/scratch/tune_cache OUT=/scratch/folds FOLDS=5 \
#     OUT_MODEL=HNTumorSegLib/models/NAME Training/recipes/fold_ensemble.sh
#
# CACHE and TUNE_CACHE come from `hntumorseg-train prepare` (TUNE_CACHE: cases kept apart for choosing the
# clean-up, e.g. extra phantoms); UNSEEN, when set, is a folder of labelled cases of a centre never trained
# on. Each fold trains on the cache's training cases minus its own fold; the cache's validation cases are
# held out by every fold, so the ensemble is scored on them. Each network adds its inference time: `segment`
# prints the members' seconds, and the README's whole-body figures are for one network.
set -euo pipefail

CACHE=${CACHE:?set CACHE to a prepared cache}
TUNE_CACHE=${TUNE_CACHE:?set TUNE_CACHE to a prepared cache of tuning cases}
OUT=${OUT:?set OUT to a folder for the fold runs and evaluations}
OUT_MODEL=${OUT_MODEL:-$OUT/model/hntumorseg_fold_ensemble}
UNSEEN=${UNSEEN:-}
FOLDS=${FOLDS:-5}
EPOCHS=${EPOCHS:-30}
STEPS=${STEPS:-100}              # samples per epoch = STEPS x batch size 2
LR=${LR:-2e-3}
WORKERS=${WORKERS:-2}
DEVICE=${DEVICE:-auto}
BIN=${BIN:-$(dirname "$(command -v hntumorseg-train)")}
run() { echo "+ $*" >&2; "$@"; }

folds=()
for ((k = 0; k < FOLDS; k++)); do
  run "$BIN/hntumorseg-train" fit --cache "$CACHE" --fold "$k" --folds "$FOLDS" --model psam \
    --channels 8 16 32 64 128 --out "$OUT/fold_$k" --patch-size 32 80 80 --batch-size 2 \
    --samples-per-epoch $((STEPS * 2)) --epochs "$EPOCHS" --lr "$LR" --warmup-epochs 1 --p-fg 0.5 --batch-dice \
    --augment default --workers "$WORKERS" --val-every 0 --device "$DEVICE" --no-progress
  folds+=(--run "$OUT/fold_$k")
done

run "$BIN/hntumorseg-train" postprocess "${folds[@]}" --weights last --cache "$TUNE_CACHE" --split all \
  --device "$DEVICE" --quiet --out "$OUT/ensemble_rule.json"
run "$BIN/hntumorseg-train" export "${folds[@]}" --weights last --postprocess-rule "$OUT/ensemble_rule.json" \
  --unevaluated --out "$OUT_MODEL"
run "$BIN/hntumorseg-train" evaluate --model "$OUT_MODEL.json" --cache "$CACHE" --split val --device "$DEVICE" \
  --quiet --out "$OUT/eval_heldout"
evaluations=(--evaluation "heldout_training_styles=$OUT/eval_heldout")
if [ -n "$UNSEEN" ]; then
  run "$BIN/hntumorseg-train" evaluate --model "$OUT_MODEL.json" --data "$UNSEEN" --device "$DEVICE" --quiet \
    --out "$OUT/eval_unseen"
  evaluations+=(--evaluation "unseen_style=$OUT/eval_unseen")
fi
run "$BIN/hntumorseg-train" export "${folds[@]}" --weights last --postprocess-rule "$OUT/ensemble_rule.json" \
  "${evaluations[@]}" --out "$OUT_MODEL"

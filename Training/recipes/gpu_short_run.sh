#!/usr/bin/env bash
# One short GPU session, end to end inside a fixed wall-clock budget: the training-throughput figure
# (bf16, full 112 x 256 x 256 window, psam and unet at their default widths), then the bundled model's
# recipe trained from scratch on the GPU, in two patch sizes side by side, for as many epochs as the
# budget holds. What comes back is small (figures, each run's weights and logs); the clean-up choice,
# the evaluations and the export run afterwards on any machine, from the run folders.
#
#   OUT=results BUDGET_S=480 Training/recipes/gpu_short_run.sh
#
# With the package installed, or PYTHONPATH=.:Training from the repository root. RUNS picks the runs
# (default both); INIT=model.json fine-tunes from a model instead of starting from scratch, usually at a
# lower peak learning rate (LR, default 2e-3). A long fine-tune of the bundled model, one run, all loaders:
#   OUT=results BUDGET_S=560 THROUGHPUT=0 RUNS=p32x80 LR=1e-3 \
#     INIT=HNTumorSegLib/models/hntumorseg_phantom_psam.json Training/recipes/gpu_short_run.sh
#
# The data are drawn on the machine itself (seed 11, the bundled model's cohort: the same cases and
# the same held-out split as the bundled model's). Small sizes for a rehearsal on a CPU:
#   OUT=/tmp/r N_TRAIN=6 DEVICE=cpu THROUGHPUT=0 CALIBRATION_SAMPLES=8 BUDGET_S=200 ...
set -uo pipefail

OUT=${OUT:?set OUT to the folder for the results}
DATA=${DATA:-/tmp/hntumorseg_gpu_run}
N_TRAIN=${N_TRAIN:-220}
BUDGET_S=${BUDGET_S:-480}              # the whole script, from its start to the results in OUT
TAIL_S=${TAIL_S:-40}                   # kept free at the end for packing the results
DEVICE=${DEVICE:-cuda}
THROUGHPUT=${THROUGHPUT:-1}
CALIBRATION_SAMPLES=${CALIBRATION_SAMPLES:-400}
SAMPLES_PER_EPOCH=${SAMPLES_PER_EPOCH:-800}
PY=${PY:-python3}
CPUS=$(nproc)
started=$(date +%s)
elapsed() { echo $(( $(date +%s) - started )); }
pin() { if [ "$CPUS" -ge 4 ]; then taskset -c "$@"; else shift; "$@"; fi; }  # CPU list, command
DATA_WORKERS=$(( CPUS > 3 ? CPUS - 2 : 1 ))
log() { echo "[$(elapsed) s] $*" | tee -a "$OUT/session.log" >&2; }
mkdir -p "$OUT" "$DATA"

# The two runs: the bundled model's recipe (8-128 widths, batch-Dice soft Dice, default augmentation,
# lr 2e-3 unless LR says), with its 32 x 80 x 80 patch, and with a 48 x 112 x 112 patch: more context for telling a
# primary from a node, at the same sliding-window cost on the CPU (27 patches of 48 x 112 x 112 cover the
# window with overlap 0.25 in about the voxels of 80 patches of 32 x 80 x 80).
read -r -a RUNS <<<"${RUNS:-p32x80 p48x112}"
INIT=${INIT:-}
LR=${LR:-2e-3}
declare -A PATCH=([p32x80]="32 80 80" [p48x112]="48 112 112")
declare -A BATCH=([p32x80]=4 [p48x112]=2)
for name in "${RUNS[@]}"; do
  [ -n "${PATCH[$name]:-}" ] || { echo "RUNS: unknown run $name (known: ${!PATCH[*]})" >&2; exit 2; }
done
LOADERS=$(( CPUS / ${#RUNS[@]} - 1 > 0 ? CPUS / ${#RUNS[@]} - 1 : 0 ))  # loader processes per run
fit_run() {  # name out epochs samples_per_epoch [stop after seconds; 0: no stop]
  local name=$1 out=$2 epochs=$3 samples=$4 stop=${5:-0}
  # shellcheck disable=SC2086
  timeout "$stop" "$PY" -m HNTumorSegTraining.cli fit --cache "$DATA/cache" --model psam --channels 8 16 32 64 128 --out "$out" \
    --patch-size ${PATCH[$name]} --batch-size "${BATCH[$name]}" --samples-per-epoch "$samples" \
    --epochs "$epochs" --lr "$LR" --warmup-epochs 1 --p-fg 0.5 --batch-dice --augment default \
    --workers "$LOADERS" --val-every 0 --device "$DEVICE" --no-progress ${INIT:+--init-weights "$INIT"}
}

{ echo "started $(date -u +%FT%TZ) on $(hostname), $CPUS CPUs"; nvidia-smi -L 2>/dev/null
  "$PY" -c "import torch, SimpleITK, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'SimpleITK', SimpleITK.Version_VersionString(), 'numpy', numpy.__version__)"; } >"$OUT/session.log" 2>&1

# 1. Data (on all CPUs but two) while the throughput benchmark has the GPU (and the other two).
(
  pin 2-$((CPUS - 1)) "$PY" -m HNTumorSegTraining.cli phantoms --out "$DATA/train" --n "$N_TRAIN" \
    --seed 11 --style classic,legacy,digital --workers "$DATA_WORKERS" \
  && pin 2-$((CPUS - 1)) "$PY" -m HNTumorSegTraining.cli prepare --data "$DATA/train" \
    --out "$DATA/cache" --workers "$DATA_WORKERS" --no-progress
) >"$OUT/data.log" 2>&1 &
data_pid=$!
if [ "$THROUGHPUT" = 1 ]; then
  log "throughput"
  for bs in 1 2; do
    pin 0-1 "$PY" Testing/benchmarks/train_throughput.py --device "$DEVICE" --models psam unet \
      --batch-size "$bs" --warmup 3 --steps 10 >>"$OUT/throughput.log" 2>&1
  done
  log "throughput done"
fi
wait "$data_pid" || { log "data failed"; tail -5 "$OUT/data.log" >&2; exit 1; }
log "data: $(tail -1 "$OUT/data.log")"

# 2. Calibration: two short epochs of each run, side by side (as the real runs will share the GPU). The
#    first epoch carries the start-up (loader processes, kernel selection), the second is the rate.
for name in "${RUNS[@]}"; do
  fit_run "$name" "$DATA/calib_$name" 2 "$CALIBRATION_SAMPLES" >"$OUT/calib_$name.log" 2>&1 &
done
wait
declare -A EPOCHS
left=$(( BUDGET_S - TAIL_S - $(elapsed) ))
[ "$left" -gt 0 ] || { log "the budget is spent before the runs (BUDGET_S=$BUDGET_S)"; exit 1; }
for name in "${RUNS[@]}"; do
  epochs=$("$PY" - "$DATA/calib_$name/history.csv" "$CALIBRATION_SAMPLES" "$SAMPLES_PER_EPOCH" "$left" <<'PYEOF'
import csv, sys
try:
    with open(sys.argv[1], newline="") as f:
        first, second = [float(row["seconds"]) for row in csv.DictReader(f)][:2]
except (OSError, ValueError):
    sys.exit(1)
n, per_epoch, left = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
epoch = second / n * per_epoch
print(max(1, int((left - max(0.0, first - second) - 10) // epoch)), f"{epoch:.1f}")
PYEOF
  ) || { log "calibration of $name failed"; tail -5 "$OUT/calib_$name.log" >&2; exit 1; }
  EPOCHS[$name]=${epochs% *}
  log "$name: ${EPOCHS[$name]} epochs of $SAMPLES_PER_EPOCH samples (${epochs#* } s each) in ${left} s"
done

# 3. The runs, side by side; a hard stop keeps the packing inside the budget (the last finished
#    epoch's weights are in the run folder either way).
for name in "${RUNS[@]}"; do
  stop=$(( BUDGET_S - TAIL_S / 2 - $(elapsed) )); [ "$stop" -gt 0 ] || stop=1
  fit_run "$name" "$DATA/run_$name" "${EPOCHS[$name]}" "$SAMPLES_PER_EPOCH" "$stop" \
    >"$OUT/fit_$name.log" 2>&1 &
done
wait
log "fits done"

# 4. Pack: each run's settings, weights, history and curves (not the optimiser checkpoint), and the split.
for name in "${RUNS[@]}"; do
  tar -czf "$OUT/run_$name.tgz" -C "$DATA" --exclude checkpoint_last.pt "run_$name" cache/split.json 2>>"$OUT/session.log"
done
log "packed"

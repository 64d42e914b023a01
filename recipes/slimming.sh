#!/usr/bin/env bash
# Train gated students, export the one with usage target 0.5 as a gated bundle, and run the
# slimming benchmark. Usage:
#   bash recipes/slimming.sh DATA_DIR [RUNS_DIR]
# DATA_DIR holds clean/ and noise/ (e.g. ../shared/data). Every stage resumes where it stopped.
#
#   1. full width: gated-student with every gate on (--gate-warmup 1.0), spectral loss, a cosine
#      schedule over 15000 steps stopped at PRETRAIN (default 5000; raise it to train longer);
#   2. from those weights, side by side, SI-SDR loss for FINETUNE steps (default 1500): the full
#      width again (the reference every gated model is compared with), usage targets 0.3, 0.5
#      and 0.7, metric-guided targets (--mgt), and the trunk plus branch 1 with fixed gates
#      (--fixed-gates 0,1): the static student of matched MACs;
#   3. export of the 0.5 model to runtime/bundles/gated, then benchmarks.slimming on DEV_FILES
#      dev files (default 40) against the shipped static student.
# The step counts can be lowered (PRETRAIN=1000 FINETUNE=300 ...) for a quick run on a CPU.
set -euo pipefail
DATA=${1:?usage: bash recipes/slimming.sh DATA_DIR [RUNS_DIR]}
RUNS=${2:-runs}
PY=${PY:-.venv/bin/python}
PRETRAIN=${PRETRAIN:-5000}
FINETUNE=${FINETUNE:-1500}
DEV_FILES=${DEV_FILES:-40}
COMMON=(--clean "$DATA/clean" --noise "$DATA/noise"
        --exclude distill/splits/dev_clean.txt --exclude distill/splits/dev_noise.txt
        --val-dir data/devset --val-files 20 --threads 1 --resume --batch 16 --no-progress)

[ -f data/devset/meta.csv ] || $PY -m distill.devset render --clean "$DATA/clean" --noise "$DATA/noise" --out data/devset

$PY -m distill.train --model gated-student --gate-warmup 1.0 --steps 15000 --stop-at "$PRETRAIN" \
    --val-every 500 --out "$RUNS/gated_full" "${COMMON[@]}"

pids=()
trap 'kill -TERM "${pids[@]}" 2>/dev/null; wait' INT TERM
ft() {  # name, extra options
    local name=$1; shift
    $PY -m distill.train --init "$RUNS/gated_full/last.pt" --loss sisdr=1 --steps "$FINETUNE" --lr 1e-3 --warmup 50 \
        --val-every "$FINETUNE" --ckpt-every 100 --out "$RUNS/gated_$name" "${COMMON[@]}" "$@" > "$RUNS/gated_$name.log" 2>&1 &
    pids+=($!)
}
# Two at a time: one per core.
ft full_ft --gate-warmup 1.0
ft u50 --usage-target 0.5
wait "${pids[@]}"; pids=()
ft u30 --usage-target 0.3
ft u70 --usage-target 0.7
wait "${pids[@]}"; pids=()
ft mgt --mgt --mgt-pool 1000
ft static --fixed-gates 0,1
wait "${pids[@]}"; pids=()

$PY -m export --checkpoint "$RUNS/gated_u50/last.pt" --out runtime/bundles/gated --force \
    --devset data/devset --devset-files 20 \
    --note "Trained by recipes/slimming.sh on $DATA: noise includes UrbanSound8K (CC BY-NC 3.0), non-commercial use only."

$PY -m benchmarks.slimming --devset data/devset --files "$DEV_FILES" \
    --gated full="$RUNS/gated_full_ft/last.pt" u30="$RUNS/gated_u30/last.pt" u50="$RUNS/gated_u50/last.pt" \
            u70="$RUNS/gated_u70/last.pt" mgt="$RUNS/gated_mgt/last.pt" \
    --static student=assets/checkpoints/student.pt matched="$RUNS/gated_static/last.pt@0,1" --bundle runtime/bundles/gated

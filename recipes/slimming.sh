#!/usr/bin/env bash
# Train the gated students, export the one at usage target 0.6 as the gated bundle, and run the
# slimming benchmark. Usage:
#   bash recipes/slimming.sh DATA_DIR [RUNS_DIR]
# DATA_DIR holds clean/ and noise/ (e.g. ../shared/data). Every stage resumes where it stopped.
#
#   1. full width: gated-student with every gate on (--gate-warmup 1.0), spectral loss, a cosine
#      schedule over 15000 steps stopped at PRETRAIN (default 1500);
#   2. from those weights, two at a time (one per core), FINETUNE steps (default 1200) of SI-SDR
#      loss each: the full width again (the reference every gated model is compared with); the
#      trunk plus branch 1 with fixed gates (the static student of matched MACs); metric-guided
#      targets (--mgt, OVRL 1.4 -> usage 1.0, 2.8 -> 0.1, and a lower map: 0.9 -> 0.0);
#      batch-mean usage targets 0.6 and 0.4; the first metric-guided map and 0.6 again with the
#      policy's gradients stopped at the trunk (--detach-policy);
#   3. the 0.6 model stripped to assets/checkpoints/gated.pt and exported to runtime/bundles/gated,
#      then benchmarks.slimming on DEV_FILES dev files (default: all 140).
# These step counts are what two CPU cores allowed; raise them (PRETRAIN=5000 FINETUNE=3000 ...)
# where there is more compute.
set -euo pipefail
DATA=${1:?usage: bash recipes/slimming.sh DATA_DIR [RUNS_DIR]}
RUNS=${2:-runs}
PY=${PY:-.venv/bin/python}
PRETRAIN=${PRETRAIN:-1500}
FINETUNE=${FINETUNE:-1200}
DEV_FILES=${DEV_FILES:-140}
# The mixer these models were trained with: no augmentation, SNR -5...20 dB, level -35...-15 dBFS.
COMMON=(--clean "$DATA/clean" --noise "$DATA/noise" --no-augment --snr -5 20 --level -35 -15
        --val-dir data/devset --val-files 20 --threads 1 --resume --batch 16 --no-progress)
GATED=(--cost-weight 100 --policy-lr-scale 10)

[ -f data/devset/meta.csv ] || $PY -m distill.devset render --clean "$DATA/clean" --noise "$DATA/noise" --out data/devset

$PY -m distill.train --model gated-student --gate-warmup 1.0 --steps 15000 --stop-at "$PRETRAIN" \
    --val-every 500 --out "$RUNS/gated_full" "${COMMON[@]}"

pids=()
trap 'kill -TERM "${pids[@]}" 2>/dev/null; wait' INT TERM
ft() {  # name, extra options
    local name=$1; shift
    $PY -m distill.train --init "$RUNS/gated_full/last.pt" --loss sisdr=1 --steps "$FINETUNE" --lr 1e-3 --warmup 50 \
        --val-every 300 --ckpt-every 100 --out "$RUNS/g_$name" "${COMMON[@]}" "$@" > "$RUNS/g_$name.log" 2>&1 &
    pids+=($!)
}
ft full --gate-warmup 1.0
ft mgt --mgt --mgt-pool 2000 --mgt-usage 1.0 0.1 "${GATED[@]}"
wait "${pids[@]}"; pids=()
ft static --fixed-gates 0,1
ft u60 --usage-target 0.6 --cost-over batch "${GATED[@]}"
wait "${pids[@]}"; pids=()
ft u40 --usage-target 0.4 --cost-over batch "${GATED[@]}"
ft mgt_low --mgt --mgt-pool 2000 --mgt-usage 0.9 0.0 "${GATED[@]}"
wait "${pids[@]}"; pids=()
ft mgt_d --mgt --mgt-pool 2000 --mgt-usage 1.0 0.1 --detach-policy "${GATED[@]}"
ft u60_d --usage-target 0.6 --cost-over batch --detach-policy "${GATED[@]}"
wait "${pids[@]}"; pids=()

$PY -m distill.checkpoint strip "$RUNS/g_u60/last.pt" assets/checkpoints/gated.pt
$PY -m export --checkpoint assets/checkpoints/gated.pt --out runtime/bundles/gated --force \
    --devset data/devset --devset-files 20 \
    --note "gated-student: $PRETRAIN steps at full width (spectral loss, batch 16 x 4 s), then $FINETUNE steps of SI-SDR loss with a batch-mean usage target of 0.6 (--cost-over batch --cost-weight 100 --policy-lr-scale 10), by recipes/slimming.sh. Trained on $DATA: noise includes UrbanSound8K (CC BY-NC 3.0), non-commercial use only."

$PY -m benchmarks.slimming --devset data/devset --files "$DEV_FILES" \
    --static full="$RUNS/g_full/last.pt@1,1" matched="$RUNS/g_static/last.pt@0,1" \
    --gated u60="$RUNS/g_u60/last.pt" u40="$RUNS/g_u40/last.pt" mgt="$RUNS/g_mgt/last.pt" mgt_low="$RUNS/g_mgt_low/last.pt" \
    mgt_d="$RUNS/g_mgt_d/last.pt" u60_d="$RUNS/g_u60_d/last.pt" \
    --reference full --bundle runtime/bundles/gated

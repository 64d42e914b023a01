#!/usr/bin/env bash
# A distilled gated student (docs/slimming.md): does distillation let the gated student beat the
# static student of matched MACs? From one full-width pretraining (the one of recipes/slimming.sh),
# FINETUNE steps each, two at a time (one per core), same batches, differing only in their loss:
#   full       every gate on (the reference every gated model is compared with; also the teacher of u60_self)
#   matched    trunk + branch 1 with fixed gates (the static student of matched MACs)
#   u60        batch-mean usage target 0.6 (the shipped gated student's recipe)
#   u60_self   u60 + DISPatch from the pretrained model at full width (--teacher full@1,1)
#   u60_teach  u60 + DISPatch from TEACHER (default assets/checkpoints/teacher.pt)
# then benchmarks.slimming on all of them (DEV_FILES dev files, default 140). Usage:
#   bash recipes/slimming_kd.sh DATA_DIR [RUNS_DIR]
# Every run resumes where it stopped and is skipped when finished. SAVE_STATE=1 copies the runs to
# recipes/state/slimming-kd (compact: no optimiser moments), and a fresh clone continues from it.
set -euo pipefail
DATA=${1:?usage: bash recipes/slimming_kd.sh DATA_DIR [RUNS_DIR]}
RUNS=${2:-runs}
PY=${PY:-.venv/bin/python}
PRETRAIN=${PRETRAIN:-1500}
FINETUNE=${FINETUNE:-1200}
DEV_FILES=${DEV_FILES:-140}
TEACHER=${TEACHER:-assets/checkpoints/teacher.pt}
OUT="$RUNS/slimming_kd"
STATE=recipes/state/slimming-kd
RUNS_ALL="gated_full g_full g_matched g_u60 g_u60_self g_u60_teach"
# The mixer of recipes/slimming.sh: no augmentation, SNR -5...20 dB, level -35...-15 dBFS.
COMMON=(--clean "$DATA/clean" --noise "$DATA/noise" --no-augment --snr -5 20 --level -35 -15
        --val-dir data/devset --val-files 20 --threads 1 --resume --batch 16 --no-progress)
GATED=(--usage-target 0.6 --cost-over batch --cost-weight 100 --policy-lr-scale 10)
KD=(--kd dispatch --kd-weight 1)

source "$(dirname "$0")/state.sh"
if [ "${SAVE_STATE:-0}" = 1 ]; then
    for r in $RUNS_ALL; do save_state "$OUT/$r" "$STATE/$r"; done
    exit 0
fi
for r in $RUNS_ALL; do restore_state "$OUT/$r" "$STATE/$r"; done
[ -f data/devset/meta.csv ] || $PY -m distill.devset render --clean "$DATA/clean" --noise "$DATA/noise" --out data/devset

done_at() { grep -q "^$2," "$OUT/$1/train.csv" 2>/dev/null; }  # run, step
done_at gated_full "$PRETRAIN" || $PY -m distill.train --model gated-student --gate-warmup 1.0 --steps 15000 --stop-at "$PRETRAIN" \
    --val-every 500 --out "$OUT/gated_full" "${COMMON[@]}"

pids=()
trap 'kill -TERM "${pids[@]}" 2>/dev/null; wait' INT TERM
ft() {  # name, extra options
    local name=$1; shift
    done_at "$name" "$FINETUNE" && return 0
    $PY -m distill.train --init "$OUT/gated_full/last.pt" --loss sisdr=1 --steps "$FINETUNE" --lr 1e-3 --warmup 50 \
        --val-every 300 --ckpt-every 100 --out "$OUT/$name" "${COMMON[@]}" "$@" > "$OUT/$name.log" 2>&1 &
    pids+=($!)
}
ft g_u60_self "${GATED[@]}" --teacher "$OUT/gated_full/last.pt@1,1" "${KD[@]}"
ft g_u60 "${GATED[@]}"
wait "${pids[@]}"; pids=()
ft g_u60_teach "${GATED[@]}" --teacher "$TEACHER" "${KD[@]}"
ft g_matched --fixed-gates 0,1
wait "${pids[@]}"; pids=()
ft g_full --gate-warmup 1.0
wait "${pids[@]}"; pids=()

$PY -m benchmarks.slimming --devset data/devset --files "$DEV_FILES" \
    --static full="$OUT/g_full/last.pt@1,1" matched="$OUT/g_matched/last.pt@0,1" \
    --gated u60="$OUT/g_u60/last.pt" u60_self="$OUT/g_u60_self/last.pt" u60_teach="$OUT/g_u60_teach/last.pt" \
    --reference full --out benchmarks/results/slimming_kd

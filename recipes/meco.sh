#!/usr/bin/env bash
# Train a MeCo corrector (python -m distill.meco) on top of a frozen student and evaluate the
# student alone and student + corrector on the dev set. Usage:
#   bash recipes/meco.sh DATA_DIR [STUDENT] [RUNS_DIR] [more distill.meco train options]
# DATA_DIR holds clean/ and noise/ (e.g. ../shared/data); STUDENT defaults to the shipped
# assets/checkpoints/student.pt; SIZE=xs|s|m picks the corrector's width (default s). The run
# resumes where it stopped, so the recipe can be interrupted (Ctrl-C) and started again with the
# same command; extra options go to the training (e.g. --stop-at 2000 to stop early, --device cuda).
#
# The mixer is the one the shipped student was trained with (no augmentation, SNR -5...20 dB, level
# -35...-15 dBFS): the corrector learns the errors the student makes on that material. Give the
# options of your own student's mixing instead when it differs. DSO settings are the authors'
# defaults (docs/meco.md). Measured on a 2-core x86 CPU shared with two other trainings, size s
# at batch 8 x 2 s: about 3.4 s/step (about 0.8 s/step of one free core), so the 20000 steps are
# a job for a free machine or a GPU.
set -euo pipefail
DATA=${1:?usage: bash recipes/meco.sh DATA_DIR [STUDENT] [RUNS_DIR] [options]}
STUDENT=${2:-assets/checkpoints/student.pt}
RUNS=${3:-runs}
shift $(($# < 3 ? $# : 3))
PY=${PY:-.venv/bin/python}
SIZE=${SIZE:-s}
OUT="$RUNS/meco-$SIZE"

[ -f data/devset/meta.csv ] || $PY -m distill.devset render --clean "$DATA/clean" --noise "$DATA/noise" --out data/devset

$PY -m distill.meco train --student "$STUDENT" --size "$SIZE" --clean "$DATA/clean" --noise "$DATA/noise" --no-augment --snr -5 20 \
    --level -35 -15 --seconds 2 --batch 8 --steps 20000 --val-dir data/devset --val-files 40 --threads 1 --resume --out "$OUT" "$@"

if [ -f "$OUT/best.pt" ]; then
    $PY -m distill.evaluate --data data/devset --checkpoint "$STUDENT" "$OUT/best.pt" --json "$OUT/devset_results.json"
fi

#!/usr/bin/env bash
# Train the shipped teacher and default student from folders of clean speech and noise, render the
# dev test set and evaluate both on it. Usage:
#   bash recipes/default.sh DATA_DIR [RUNS_DIR]
# DATA_DIR holds clean/ and noise/ (e.g. ../shared/data). Every stage resumes where it stopped, so
# the recipe can be interrupted (Ctrl-C) and started again with the same command.
#
# Measured on a 2-core x86 CPU, both runs side by side with one thread each: the student at about
# 1.5 s/step and the teacher at about 4.5 s/step (batches of 16 x 4 s).
set -euo pipefail
DATA=${1:?usage: bash recipes/default.sh DATA_DIR [RUNS_DIR]}
RUNS=${2:-runs}
PY=${PY:-.venv/bin/python}
COMMON=(--clean "$DATA/clean" --noise "$DATA/noise"
        --exclude distill/splits/dev_clean.txt --exclude distill/splits/dev_noise.txt
        --val-dir data/devset --threads 1 --resume)

[ -f data/devset/meta.csv ] || $PY -m distill.devset render --clean "$DATA/clean" --noise "$DATA/noise" --out data/devset

$PY -m distill.train --model student --steps 15000 --out "$RUNS/student" "${COMMON[@]}" &
student=$!
$PY -m distill.train --model teacher --steps 10000 --out "$RUNS/teacher" "${COMMON[@]}" --no-progress &
teacher=$!
trap 'kill -TERM $student $teacher 2>/dev/null; wait' INT TERM
wait $student $teacher

$PY -m distill.evaluate --data data/devset --checkpoint "$RUNS/teacher/best.pt" "$RUNS/student/best.pt" --json "$RUNS/devset_results.json"

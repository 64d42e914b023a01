#!/usr/bin/env bash
# Train a MeCo corrector (python -m distill.meco) on top of a frozen student and evaluate the
# student alone and student + corrector on the dev set. Usage:
#   bash recipes/meco.sh DATA_DIR [STUDENT] [RUNS_DIR] [more distill.meco train options]
# DATA_DIR holds clean/ and noise/ (e.g. ../shared/data); STUDENT defaults to the shipped
# assets/checkpoints/student.pt; SIZE=xs|s|m picks the corrector's width (default s). The run
# resumes where it stopped, so the recipe can be interrupted (Ctrl-C) and started again with the
# same command; extra options go to the training (e.g. --stop-at 2000 to stop early, --device cuda).
# A resumed run keeps the corrector it was started with (its options come from its last.pt): give a
# run with other model options its own NAME (default meco-SIZE), e.g.
#   NAME=meco-xs-clean SIZE=xs bash recipes/meco.sh DATA_DIR assets/checkpoints/student.pt runs --predict clean
#
# The mixer is the one the shipped student was trained with (recipes/realworld.sh: rooms from
# DATA_DIR/rir and simulated ones, every augmentation at its default, SNR -10...25 dB, level
# -45...-10 dBFS): the corrector learns the errors the student makes on that material. For a
# student of recipes/default.sh give MIX=plain (no augmentation, SNR -5...20 dB, level -35...-15).
# Validation on 40 files of dev (picks best.pt) and of dev-ood (logged). DSO settings are the authors'
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
NAME=${NAME:-meco-$SIZE}  # the run's folder under RUNS and under recipes/state
OUT="$RUNS/$NAME"
STATE="recipes/state/$NAME"

# A run that spans sittings keeps its state in recipes/state/NAME (committed): SAVE_STATE=1
# copies it there (compact: no optimiser moments), and a fresh clone continues from it.
source "$(dirname "$0")/state.sh"
if [ "${SAVE_STATE:-0}" = 1 ]; then
    save_state "$OUT" "$STATE"
    exit 0
fi
restore_state "$OUT" "$STATE"

[ -f data/devset/meta.csv ] || $PY -m distill.devset render --clean "$DATA/clean" --noise "$DATA/noise" --out data/devset
[ -f data/dev-ood/meta.csv ] || $PY -m distill.devset render-ood --clean "$DATA/clean" --noise "$DATA/noise" --rir "$DATA/rir" --out data/dev-ood

case "${MIX:-realworld}" in
    realworld) MIXING=(--rir "$DATA/rir" --snr -10 25 --level -45 -10) ;;
    plain) MIXING=(--no-augment --snr -5 20 --level -35 -15) ;;
    *) echo "error: MIX must be realworld or plain, not '$MIX'" >&2; exit 2 ;;
esac
$PY -m distill.meco train --student "$STUDENT" --size "$SIZE" --clean "$DATA/clean" --noise "$DATA/noise" "${MIXING[@]}" \
    --seconds 2 --batch 8 --steps 20000 --val-dir data/devset --val-ood data/dev-ood --val-files 40 --threads 1 --resume \
    --out "$OUT" "$@"

if [ -f "$OUT/best.pt" ]; then
    $PY -m distill.evaluate --set dev=data/devset --set dev-ood=data/dev-ood --checkpoint "$STUDENT" "$OUT/best.pt" \
        --json "$OUT/results.json"
fi

#!/usr/bin/env bash
# ROSE-CD on this project's data: a score-based (diffusion) teacher, its one-step students, and all
# of them scored side by side on the dev sets. Usage:
#   bash recipes/rosecd.sh DATA_DIR [RUNS_DIR]
# DATA_DIR holds clean/ and noise/ (e.g. ../shared/data). Every stage resumes where it stopped, so
# the recipe can be interrupted (Ctrl-C) and started again with the same command.
#
#   1. teacher: denoising score matching of the U-Net (distill/models/score_unet.py) on the OUVE SDE;
#   2. three one-step models, each from the teacher's weights: ROSE-CD (the teacher's randomized
#      Heun step), plain CD (its deterministic step) and CT (no teacher at all);
#   3. evaluation on data/devset and data/dev-ood: the teacher with 30 and 10 predictor-corrector
#      steps (60 and 20 network evaluations) and with one evaluation, against the three students.
#
# Lengths (environment): TEACHER_STEPS (default 60000), STUDENT_STEPS (10000), LIMIT (files of each
# set at evaluation; empty: all). The students train at STUDENT_LR (1e-4) with a target network of
# decay STUDENT_EMA (0.999; give 0.99 to runs of a few thousand steps or fewer). The teacher's
# U-Net is TEACHER_CONFIG (default the small {"channels": [8, 16, 32]}; '{}' for the model's own
# default, 16/32/64) at TEACHER_LR (5e-4).
# Measured on a 2-core CPU beside two other trainings (batches of 8 x 2 s): the 16/32/64 U-Net at
# 3-4.5 s per teacher step, the 8/16/32 one at 0.8-2 s per teacher step and 1.5-2.2 s per student
# step; the step counts are days there. Smaller numbers give a first look (docs/rosecd.md: 500 +
# 200 steps).
#
# Runs that span sittings keep their state in recipes/state/rosecd-NAME (committed; NAME: teacher,
# rosecd, cd, ct): SAVE_STATE=1 copies them there (compact: no optimiser moments), and a fresh
# clone continues the teacher from it.
set -euo pipefail
DATA=${1:?usage: bash recipes/rosecd.sh DATA_DIR [RUNS_DIR]}
RUNS=${2:-runs}
PY=${PY:-.venv/bin/python}
TEACHER_STEPS=${TEACHER_STEPS:-60000}
STUDENT_STEPS=${STUDENT_STEPS:-10000}
LIMIT=${LIMIT:-}
STUDENT_LR=${STUDENT_LR:-1e-4}
STUDENT_EMA=${STUDENT_EMA:-0.999}
TEACHER_CONFIG=${TEACHER_CONFIG:-'{"channels": [8, 16, 32]}'}
TEACHER_LR=${TEACHER_LR:-5e-4}
COMMON=(--clean "$DATA/clean" --noise "$DATA/noise" --val-dir data/devset --val-files 8 --threads 1 --resume)

source "$(dirname "$0")/state.sh"
if [ "${SAVE_STATE:-0}" = 1 ]; then
    save_state "$RUNS/score_teacher" recipes/state/rosecd-teacher
    for run in rosecd rosecd_cd rosecd_ct; do save_state "$RUNS/$run" "recipes/state/rosecd-${run#rosecd_}"; done
    exit 0
fi
# Only the teacher comes back by itself: a student belongs to the teacher it was distilled from, and
# the teacher goes on training here. Put a kept student back by hand (cp -r recipes/state/rosecd-cd
# runs/rosecd_cd) only to use it with that teacher.
restore_state "$RUNS/score_teacher" recipes/state/rosecd-teacher

[ -f data/devset/meta.csv ] || $PY -m distill.devset render --clean "$DATA/clean" --noise "$DATA/noise" --out data/devset
[ -f data/dev-ood/meta.csv ] || $PY -m distill.devset render-ood --clean "$DATA/clean" --noise "$DATA/noise" --rir "$DATA/rir" --out data/dev-ood

$PY -m distill.rosecd teacher "${COMMON[@]}" --config "$TEACHER_CONFIG" --steps "$TEACHER_STEPS" --lr "$TEACHER_LR" --warmup 200 --val-every 1000 --out "$RUNS/score_teacher"
TEACHER="$RUNS/score_teacher/last.pt"  # the EMA weights at the end; best.pt is chosen on 8 files only

# PESQ term: torch-pesq where it imports (see docs/rosecd.md); --pesq-weight 0 keeps the three runs alike where it does not.
PESQ=(--pesq-weight 0)
$PY -c "import torch_pesq" 2>/dev/null && PESQ=(--pesq-weight 5e-4)
STUDENT=(--steps "$STUDENT_STEPS" --lr "$STUDENT_LR" --ema "$STUDENT_EMA" --val-every 1000 "${PESQ[@]}" "${COMMON[@]}")
$PY -m distill.rosecd distill --teacher "$TEACHER" "${STUDENT[@]}" --out "$RUNS/rosecd"
$PY -m distill.rosecd distill --teacher "$TEACHER" --deterministic "${STUDENT[@]}" --out "$RUNS/rosecd_cd"
$PY -m distill.rosecd ct --init "$TEACHER" "${STUDENT[@]}" --out "$RUNS/rosecd_ct"

$PY -m distill.rosecd evaluate --set dev=data/devset --set dev-ood=data/dev-ood ${LIMIT:+--limit "$LIMIT"} --threads 1 \
    --system "teacher-30=$TEACHER@30" --system "teacher-10=$TEACHER@10" --system "teacher-1=$TEACHER@one-step" \
    --system "rosecd=$RUNS/rosecd/last.pt" --system "cd=$RUNS/rosecd_cd/last.pt" --system "ct=$RUNS/rosecd_ct/last.pt" \
    --json "$RUNS/rosecd_results.json"

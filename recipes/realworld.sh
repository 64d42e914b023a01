#!/usr/bin/env bash
# Train the teacher and the ERB student on augmented mixtures (rooms, several noises, channel) for
# real-world noise, validate on both dev sets, and evaluate them side by side with the peers.
# Usage:
#   bash recipes/realworld.sh DATA_DIR [RUNS_DIR]
# DATA_DIR holds clean/, noise/ and rir/ (e.g. ../shared/data). Every stage resumes where it
# stopped: interrupt it (Ctrl-C) and run the same command again.
#
#   0. render the dev and dev-ood test sets (data/devset, data/dev-ood);
#   1. side by side, one thread each: the teacher-erb (batch 8, cosine over TEACHER_STEPS = 12000) and
#      the student-erb (batch 16, cosine over STUDENT_STEPS = 20000), spectral loss
#      (spec=1,sisdr=0.01), every augmentation at its default; validation every 500 steps on dev
#      (picks best.pt) and dev-ood (logged: the out-of-domain curve). STOP=N stops both at step N
#      (the schedule stays that of the full run; resume later);
#   2. both evaluated on both dev sets (runs/realworld_results.json), then benchmarks.peers.
#
# Training runs that span several sittings keep their state in recipes/state/NAME (last.pt and the
# logs, committed): a fresh clone copies it back into RUNS_DIR and resumes. `SAVE_STATE=1 bash
# recipes/realworld.sh ...` copies the runs' current state there (what a sitting ends with), without
# the optimiser's moments (`python -m distill.checkpoint compact`: the teacher's last.pt shrinks from
# 15 to 5 MB); the resumed run starts fresh moments under a 200-step learning-rate re-warm-up.
set -euo pipefail
DATA=${1:?usage: bash recipes/realworld.sh DATA_DIR [RUNS_DIR]}
RUNS=${2:-runs}
PY=${PY:-.venv/bin/python}
TEACHER_STEPS=${TEACHER_STEPS:-12000}
STUDENT_STEPS=${STUDENT_STEPS:-20000}
STATE=recipes/state
COMMON=(--clean "$DATA/clean" --noise "$DATA/noise" --rir "$DATA/rir"
        --val-dir data/devset --val-ood data/dev-ood --val-files 40 --val-every 500 --ckpt-every 100
        --threads 1 --resume --no-progress)

save_state() {
    for run in teacher13 student13; do
        [ -f "$RUNS/$run/last.pt" ] || continue
        mkdir -p "$STATE/$run"
        cp "$RUNS/$run"/{args.json,train.csv,val.csv} "$STATE/$run/"
        $PY -m distill.checkpoint compact "$RUNS/$run/last.pt" "$STATE/$run/last.pt"
    done
    echo "saved the runs' state in $STATE"
}
if [ "${SAVE_STATE:-0}" = 1 ]; then save_state; exit 0; fi

for run in teacher13 student13; do  # a fresh clone: continue the committed runs
    if [ -f "$STATE/$run/last.pt" ] && [ ! -f "$RUNS/$run/last.pt" ]; then
        mkdir -p "$RUNS/$run" && cp "$STATE/$run"/* "$RUNS/$run/"
        echo "restored $RUNS/$run from $STATE/$run"
    fi
done

[ -f data/devset/meta.csv ] || $PY -m distill.devset render --clean "$DATA/clean" --noise "$DATA/noise" --out data/devset
[ -f data/dev-ood/meta.csv ] || $PY -m distill.devset render-ood --clean "$DATA/clean" --noise "$DATA/noise" --rir "$DATA/rir" --out data/dev-ood

STOP_AT=()
[ -n "${STOP:-}" ] && STOP_AT=(--stop-at "$STOP")
pids=()
trap 'kill -TERM "${pids[@]}" 2>/dev/null; wait' INT TERM
$PY -m distill.train --model teacher-erb --steps "$TEACHER_STEPS" --batch 8 --out "$RUNS/teacher13" "${COMMON[@]}" "${STOP_AT[@]}" > "$RUNS/teacher13.log" 2>&1 & pids+=($!)
$PY -m distill.train --model student-erb --steps "$STUDENT_STEPS" --batch 16 --out "$RUNS/student13" "${COMMON[@]}" "${STOP_AT[@]}" > "$RUNS/student13.log" 2>&1 & pids+=($!)
echo "training teacher and student side by side; logs in $RUNS/teacher13.log and $RUNS/student13.log"
wait "${pids[@]}"

$PY -m distill.evaluate --set dev=data/devset --set dev-ood=data/dev-ood \
    --checkpoint "$RUNS/teacher13/last.pt" "$RUNS/student13/last.pt" --json "$RUNS/realworld_results.json"

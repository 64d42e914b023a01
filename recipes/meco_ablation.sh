#!/usr/bin/env bash
# The ablation of Data-Space Optimization's parts (docs/meco.md): correctors of one size trained
# on top of the same frozen student, on the same batches, for the same number of steps, differing
# only in their loss:
#   fm       flow matching alone (--xr-weight 0 --endpoint 0)
#   fm-xr    + the x_r loss with the JVP target (--endpoint 0)
#   dso      + the endpoint SI-SDR loss: the authors' defaults
#   dso-s0   dso on the deterministic path (--sigma-max 0: no path noise, eps plays no part)
#   dso-clean  dso with the last layer giving a correction of the estimate (--predict clean)
# then scores the student alone and every corrector on all of dev and dev-ood (distill.evaluate).
# Usage:
#   bash recipes/meco_ablation.sh DATA_DIR [STUDENT] [RUNS_DIR] [more distill.meco train options]
# Each run resumes where it stopped and is skipped when finished, so the recipe can be stopped and
# started again with the same command. STEPS (default 2000), SIZE (xs) and VARIANTS (all five, in
# the order above) set the scale; mixing as in recipes/meco.sh (the shipped student's).
set -euo pipefail
DATA=${1:?usage: bash recipes/meco_ablation.sh DATA_DIR [STUDENT] [RUNS_DIR] [options]}
STUDENT=${2:-assets/checkpoints/student.pt}
RUNS=${3:-runs}
shift $(($# < 3 ? $# : 3))
PY=${PY:-.venv/bin/python}
SIZE=${SIZE:-xs}
STEPS=${STEPS:-2000}
VARIANTS=${VARIANTS:-fm fm-xr dso dso-s0 dso-clean}
OUT="$RUNS/meco-ablation-$SIZE"
STATE="recipes/state/meco-ablation-$SIZE"

# Runs that span sittings keep their state in recipes/state/meco-ablation-SIZE (committed):
# SAVE_STATE=1 copies it there (last.pt compact: no optimiser moments; best.pt stripped), and a
# fresh clone continues from it.
source "$(dirname "$0")/state.sh"
if [ "${SAVE_STATE:-0}" = 1 ]; then
    for v in $VARIANTS; do
        [ -f "$OUT/$v/last.pt" ] || continue
        save_state "$OUT/$v" "$STATE/$v"
        [ ! -f "$OUT/$v/best.pt" ] || $PY -m distill.checkpoint strip "$OUT/$v/best.pt" "$STATE/$v/best.pt"
    done
    exit 0
fi

[ -f data/devset/meta.csv ] || $PY -m distill.devset render --clean "$DATA/clean" --noise "$DATA/noise" --out data/devset
[ -f data/dev-ood/meta.csv ] || $PY -m distill.devset render-ood --clean "$DATA/clean" --noise "$DATA/noise" --rir "$DATA/rir" --out data/dev-ood

checkpoints=()
for v in $VARIANTS; do
    case "$v" in
        fm) opts=(--xr-weight 0 --endpoint 0) ;;
        fm-xr) opts=(--endpoint 0) ;;
        dso) opts=() ;;
        dso-s0) opts=(--sigma-max 0) ;;
        dso-clean) opts=(--predict clean) ;;
        *) echo "error: unknown variant '$v' (fm, fm-xr, dso, dso-s0, dso-clean)" >&2; exit 2 ;;
    esac
    restore_state "$OUT/$v" "$STATE/$v"
    if ! grep -q "^$STEPS," "$OUT/$v/train.csv" 2>/dev/null; then
        $PY -m distill.meco train --student "$STUDENT" --size "$SIZE" --clean "$DATA/clean" --noise "$DATA/noise" \
            --rir "$DATA/rir" --snr -10 25 --level -45 -10 --seconds 2 --batch 8 --steps "$STEPS" --warmup 100 --ema 0.995 \
            --val-dir data/devset --val-ood data/dev-ood --val-files 40 --val-every 500 --threads 1 --resume \
            --out "$OUT/$v" "${opts[@]}" "$@"
    fi
    checkpoints+=("$OUT/$v/best.pt")
done

$PY -m distill.evaluate --set dev=data/devset --set dev-ood=data/dev-ood --checkpoint "$STUDENT" "${checkpoints[@]}" \
    --json "$OUT/results.json"

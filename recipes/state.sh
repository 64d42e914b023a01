# Sourced by the recipes whose runs span sittings: a run keeps its state in recipes/state/NAME
# (committed), and a fresh clone continues from it. Needs PY (the project's python).

# save_state RUN STATE: RUN's logs and its last.pt without the optimiser's moments (a third of the
# size; a resume starts fresh ones under a short learning-rate re-warm-up) into STATE.
save_state() {
    [ -f "$1/last.pt" ] || return 0
    mkdir -p "$2"
    for f in args.json train.csv val.csv; do [ ! -f "$1/$f" ] || cp "$1/$f" "$2/"; done
    $PY -m distill.checkpoint compact "$1/last.pt" "$2/last.pt"
}

# restore_state RUN STATE: a kept state back where the recipe resumes it, unless RUN has its own.
restore_state() {
    if [ -f "$2/last.pt" ] && [ ! -f "$1/last.pt" ]; then
        mkdir -p "$1" && cp "$2"/* "$1/" && echo "restored $1 from $2"
    fi
}

#!/usr/bin/env bash
# Check that the streaming runtime runs correctly on aarch64 (Raspberry Pi 4 class, Cortex-A72)
# from PyPI wheels alone, without a board: Debian 12 (bookworm) arm64 python3.11 unpacked into a
# sysroot, aarch64 wheels unpacked beside it, run under qemu-aarch64-static (user-mode emulation),
# and every output compared with the native x86 output of the same command.
#
#   bash runtime/arm64/check.sh [BUNDLE_DIR]      (default: runtime/bundles/default)
#
# Environment (all optional):
#   NATIVE_PYTHON      native interpreter with the runtime's packages (default: REPO/.venv/bin/python)
#   ARM64_CACHE        downloads, sysroot and outputs (default: REPO/.cache/arm64)
#   ARM64_INPUT        audio file to denoise (default: assets/sample/noisy.wav)
#   ARM64_SECONDS      only use the first N seconds of the input (default: all of it)
#   ARM64_RUN_TIMEOUT  seconds allowed per emulated run (default: 900)
#   ARM64_CONFIGS      backend:precision pairs to check (default: all five, see below)
#   DEBIAN_MIRROR      (default: http://deb.debian.org/debian)
#   DEBIAN_SECURITY    (default: http://deb.debian.org/debian-security)
#
# Exit status: 0 all comparisons pass; 1 an emulated run or a comparison failed; 2 setup error.
# Idempotent: every download and the sysroot are cached under ARM64_CACHE and reused.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO"

BUNDLE=${1:-runtime/bundles/default}
NATIVE_PYTHON=${NATIVE_PYTHON:-$REPO/.venv/bin/python}
CACHE=${ARM64_CACHE:-$REPO/.cache/arm64}
INPUT=${ARM64_INPUT:-assets/sample/noisy.wav}
SECONDS_LIMIT=${ARM64_SECONDS:-}
RUN_TIMEOUT=${ARM64_RUN_TIMEOUT:-900}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_SECURITY=${DEBIAN_SECURITY:-http://deb.debian.org/debian-security}
SUITE=bookworm   # Debian 12 = Raspberry Pi OS 12: glibc 2.36, python 3.11

# The runs to compare: backend:precision
read -r -a CONFIGS <<<"${ARM64_CONFIGS:-onnxruntime:fp32 onnxruntime:int8 litert:fp32 litert:int8 litert:int8io}"

# Debian arm64 packages that make up the sysroot: the interpreter, its standard library and the
# shared libraries it and the wheels load (the wheels bundle everything else they need).
DEBS=(python3.11-minimal libpython3.11-minimal libpython3.11-stdlib python3.11
      libc6 libgcc-s1 libstdc++6 zlib1g libexpat1 libffi8 libssl3 libbz2-1.0 liblzma5
      libsqlite3-0 libuuid1 libncursesw6 libtinfo6 libreadline8 libcrypt1)

# Python packages the runtime imports on the board, and what those import in turn. Versions are
# taken from NATIVE_PYTHON so that both sides run the same library versions.
PYPKGS=(numpy scipy soundfile cffi pycparser onnxruntime ai-edge-litert flatbuffers protobuf
        ml_dtypes typing_extensions tqdm backports.strenum packaging)

die() { echo "arm64 check: SETUP ERROR: $*" >&2; exit 2; }
step() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
# run_logged LOG CMD...: run quietly, show the log's tail if it fails
run_logged() {
    local log=$1; shift
    if ! "$@" >"$log" 2>&1; then
        tail -n 25 "$log" >&2
        return 1
    fi
}

# ---------------------------------------------------------------------------------------------
[[ -d $BUNDLE && -f $BUNDLE/manifest.json ]] || die "bundle '$BUNDLE' not found (no manifest.json); pass the bundle folder as the first argument"
BUNDLE=$(cd "$BUNDLE" && pwd)
[[ -x $NATIVE_PYTHON ]] || die "native python '$NATIVE_PYTHON' not found; set NATIVE_PYTHON"
[[ -f $INPUT ]] || die "input '$INPUT' not found"
for tool in apt-get dpkg dpkg-deb flock timeout; do
    command -v "$tool" >/dev/null || die "'$tool' is missing (this script needs a Debian/Ubuntu host)"
done
HOST_ARCH=$(dpkg --print-architecture)

mkdir -p "$CACHE"/{apt/state/lists/partial,apt/cache/archives/partial,apt/empty,debs,logs}
CACHE=$(cd "$CACHE" && pwd)
LOGS=$CACHE/logs
exec 9>"$CACHE/.lock"
flock -n 9 || { step "waiting for another check using $CACHE"; flock 9; }

T_START=$(date +%s)

# stamp_ok NAME KEY: the stage NAME was completed with KEY; stamp_set NAME KEY marks it so
stamp_ok() { [[ -f $CACHE/.stamp.$1 && $(cat "$CACHE/.stamp.$1") == "$2" ]]; }
stamp_set() { printf '%s' "$2" >"$CACHE/.stamp.$1"; }

# --- 1. Debian packages (private apt state; the system's apt configuration is not touched) ------
APTDIR=$CACHE/apt
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
SIGNED=""; [[ -f $KEYRING ]] && SIGNED="[signed-by=$KEYRING] "
cat >"$APTDIR/sources.list" <<EOF
deb ${SIGNED}$DEBIAN_MIRROR $SUITE main
deb ${SIGNED}$DEBIAN_MIRROR $SUITE-updates main
deb ${SIGNED}$DEBIAN_SECURITY $SUITE-security main
EOF
: >>"$APTDIR/state/status"
cat >"$APTDIR/apt.conf" <<EOF
APT::Architecture "arm64";
#clear APT::Architectures;
APT::Architectures { "arm64"; "$HOST_ARCH"; };
Dir::State "$APTDIR/state";
Dir::State::Lists "$APTDIR/state/lists";
Dir::State::status "$APTDIR/state/status";
Dir::Cache "$APTDIR/cache";
Dir::Etc::SourceList "$APTDIR/sources.list";
Dir::Etc::SourceParts "$APTDIR/empty";
Dir::Etc::Preferences "$APTDIR/empty/preferences";
Dir::Etc::PreferencesParts "$APTDIR/empty";
Acquire::Languages "none";
APT::Sandbox::User "root";
#clear APT::Update::Post-Invoke;
#clear APT::Update::Post-Invoke-Success;
#clear DPkg::Post-Invoke;
EOF
apt_() { apt-get -c "$APTDIR/apt.conf" "$@"; }

apt_update() {
    step "apt-get update (private arm64+$HOST_ARCH lists in $APTDIR)"
    run_logged "$LOGS/apt-update.log" apt_ update || die "apt-get update failed (see $LOGS/apt-update.log)"
    stamp_set apt-lists "$SUITE $DEBIAN_MIRROR $DEBIAN_SECURITY"
}
stamp_ok apt-lists "$SUITE $DEBIAN_MIRROR $DEBIAN_SECURITY" || apt_update

WANT=("${DEBS[@]}" "qemu-user-static:$HOST_ARCH")
if ! stamp_ok debs "${WANT[*]}"; then
    step "downloading ${#WANT[@]} Debian packages into $CACHE/debs"
    rm -f "$CACHE"/debs/*.deb
    if ! (cd "$CACHE/debs" && run_logged "$LOGS/apt-download.log" apt_ download "${WANT[@]}"); then
        apt_update   # the lists may be stale (a security update replaced a file); retry once
        (cd "$CACHE/debs" && run_logged "$LOGS/apt-download.log" apt_ download "${WANT[@]}") \
            || die "apt-get download failed (see $LOGS/apt-download.log)"
    fi
    stamp_set debs "${WANT[*]}"
fi
DEB_KEY=$(cd "$CACHE/debs" && ls -1 *.deb | sort | tr '\n' ' ')

# --- 2. qemu-aarch64-static from Debian's qemu-user-static, unpacked (no install, no binfmt) ----
QEMU=$CACHE/qemu/usr/bin/qemu-aarch64-static
if ! stamp_ok qemu "$DEB_KEY" || [[ ! -x $QEMU ]]; then
    step "unpacking qemu-aarch64-static"
    rm -rf "$CACHE/qemu"; mkdir -p "$CACHE/qemu"
    dpkg-deb --fsys-tarfile "$CACHE"/debs/qemu-user-static_*_"$HOST_ARCH".deb \
        | tar -x -C "$CACHE/qemu" ./usr/bin/qemu-aarch64-static
    stamp_set qemu "$DEB_KEY"
fi
[[ -x $QEMU ]] || die "qemu-aarch64-static not found in the qemu-user-static package"

# --- 3. the sysroot: the arm64 packages unpacked, plus a minimal /sys/devices/system/cpu --------
SYSROOT=$CACHE/sysroot
if ! stamp_ok sysroot "$DEB_KEY" || [[ ! -x $SYSROOT/usr/bin/python3.11 ]]; then
    step "building the arm64 sysroot in $SYSROOT"
    rm -rf "$SYSROOT" "$SYSROOT.new"
    mkdir -p "$SYSROOT.new"
    for deb in "$CACHE"/debs/*_arm64.deb; do dpkg-deb -x "$deb" "$SYSROOT.new"; done
    # onnxruntime (at import) and LiteRT/XNNPACK (creating an interpreter) read the CPU topology
    # from sysfs through cpuinfo and crash under qemu-user without it; qemu's -L prefix serves
    # these files in place of the host's.
    cpu=$SYSROOT.new/sys/devices/system/cpu
    mkdir -p "$cpu"/cpu{0,1,2,3}
    for f in possible present online; do echo 0-3 >"$cpu/$f"; done
    # Debian compiles the standard library at install time, which dpkg-deb -x skips; without .pyc
    # files every emulated start compiles it again (slow under emulation). Bytecode is the same
    # on every 3.11.x and every CPU, so the native interpreter compiles it.
    nice -n 10 "$NATIVE_PYTHON" -m compileall -q -j 1 "$SYSROOT.new/usr/lib/python3.11" >"$LOGS/compile-stdlib.log" 2>&1 || true
    mv "$SYSROOT.new" "$SYSROOT"
    stamp_set sysroot "$DEB_KEY"
fi

# --- 4. aarch64 wheels, pinned to the native versions, unpacked into a site-packages folder -----
REQS=$("$NATIVE_PYTHON" - "${PYPKGS[@]}" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version
out = []
for name in sys.argv[1:]:
    try:
        out.append(f"{name}=={version(name)}")
    except PackageNotFoundError:
        print(f"note: {name} is not installed natively; taking the newest aarch64 wheel", file=sys.stderr)
        out.append(name)
print(" ".join(out))
EOF
) || die "cannot run $NATIVE_PYTHON"
read -r -a REQ_ARR <<<"$REQS"
PLATFORMS=(--platform linux_aarch64 --platform manylinux2014_aarch64)
for m in $(seq 17 36); do PLATFORMS+=(--platform "manylinux_2_${m}_aarch64"); done  # glibc 2.36
PIP_TARGET_OPTS=(--only-binary=:all: --no-deps --python-version 3.11 --implementation cp
                 --abi cp311 --abi abi3 --abi none "${PLATFORMS[@]}" --platform any)
SITE=$CACHE/site-packages
if ! stamp_ok site "$REQS" || [[ ! -d $SITE ]]; then
    step "downloading aarch64 wheels: $REQS"
    mkdir -p "$CACHE/wheels"
    run_logged "$LOGS/pip-download.log" nice -n 10 "$NATIVE_PYTHON" -m pip download --disable-pip-version-check \
        -d "$CACHE/wheels" "${PIP_TARGET_OPTS[@]}" "${REQ_ARR[@]}" \
        || die "pip download of the aarch64 wheels failed (see $LOGS/pip-download.log)"
    step "unpacking the wheels into $SITE"
    rm -rf "$SITE" "$SITE.new"
    run_logged "$LOGS/pip-install.log" nice -n 10 "$NATIVE_PYTHON" -m pip install --disable-pip-version-check \
        --no-index --find-links "$CACHE/wheels" --target "$SITE.new" \
        "${PIP_TARGET_OPTS[@]}" "${REQ_ARR[@]}" \
        || die "unpacking the wheels failed (see $LOGS/pip-install.log)"
    mv "$SITE.new" "$SITE"
    stamp_set site "$REQS"
fi

# --- 5. the input (optionally trimmed) ----------------------------------------------------------
if [[ -n $SECONDS_LIMIT ]]; then
    TRIMMED=$CACHE/input/$(basename "${INPUT%.*}")_first${SECONDS_LIMIT}s.wav
    mkdir -p "$CACHE/input"
    "$NATIVE_PYTHON" - "$INPUT" "$TRIMMED" "$SECONDS_LIMIT" <<'EOF' || die "cannot trim $INPUT"
import sys
import soundfile as sf
src, dst, sec = sys.argv[1], sys.argv[2], float(sys.argv[3])
info = sf.info(src)
x, sr = sf.read(src, frames=int(sec * info.samplerate), dtype="int16" if info.subtype == "PCM_16" else "float32")
sf.write(dst, x, sr, subtype=info.subtype)
EOF
    INPUT=$TRIMMED
fi

T_SETUP=$(date +%s)
step "setup ready in $((T_SETUP - T_START)) s"

# --- 6. run every configuration natively and emulated --------------------------------------------
OUT=$CACHE/out
rm -rf "$OUT"; mkdir -p "$OUT"
EMUHOME=$CACHE/home; mkdir -p "$EMUHOME"
emulated() {
    env -i PATH=/usr/bin:/bin HOME="$EMUHOME" LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 \
        PYTHONPATH="$REPO:$SITE" \
        timeout "$RUN_TIMEOUT" nice -n 10 "$QEMU" -cpu cortex-a72 -L "$SYSROOT" \
        "$SYSROOT/usr/bin/python3.11" -s "$@"
}
native() { PYTHONPATH="$REPO" PYTHONDONTWRITEBYTECODE=1 nice -n 10 "$NATIVE_PYTHON" "$@"; }

RESULTS=()
for cfg in "${CONFIGS[@]}"; do
    b=${cfg%%:*}; p=${cfg#*:}
    for side in native arm; do
        name=${side}_${b}_${p}
        args=(-m runtime.stream --model "$BUNDLE" --input "$INPUT" --output "$OUT/$name.wav"
              --backend "$b" --precision "$p" --report "$OUT/$name.json")
        t0=$(date +%s); rc=0
        if [[ $side == native ]]; then native "${args[@]}" >"$OUT/$name.log" 2>&1 || rc=$?
        else emulated "${args[@]}" >"$OUT/$name.log" 2>&1 || rc=$?; fi
        step "$(printf '%-6s %-11s %-6s rc=%-3s %4s s' "$side" "$b" "$p" "$rc" "$(($(date +%s) - t0))")"
        if [[ $rc != 0 ]]; then
            [[ $rc == 124 ]] && echo "  timed out after $RUN_TIMEOUT s" >&2
            tail -n 15 "$OUT/$name.log" | sed 's/^/  | /' >&2
        fi
        if [[ $side == native ]]; then rc_native=$rc; else rc_arm=$rc; fi
    done
    RESULTS+=("$b $p $rc_native $rc_arm")
done
T_RUNS=$(date +%s)

# --- 7. compare ------------------------------------------------------------------------------------
set +e
"$NATIVE_PYTHON" - "$OUT" "${RESULTS[@]}" <<'EOF'
import json
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

FP32_MAX_ABS = 1e-4   # float kernels: ARM and x86 differ only in rounding
INT_MIN_SNR_DB = 30.0  # integer kernels may round a step differently



def snr_db(ref, x):
    err = float(np.sum((ref - x) ** 2))
    return float("inf") if err == 0 else float(10 * np.log10(np.sum(ref**2) / err))


out = Path(sys.argv[1])
rows, failures, summary = [], [], []
for item in sys.argv[2:]:
    b, p, rc_n, rc_a = item.split()
    tag = f"{b}/{p}"
    diff = snr = None
    ref = ""  # int8 rows: how close each side's output is to its own fp32 output, for context
    if rc_n != "0":
        verdict = f"FAIL (native run exit {rc_n})"
    elif rc_a != "0":
        verdict = "FAIL (emulated run timed out)" if rc_a == "124" else f"FAIL (emulated run exit {rc_a})"
    else:
        n, sr_n = sf.read(out / f"native_{b}_{p}.wav", dtype="float64")
        a, sr_a = sf.read(out / f"arm_{b}_{p}.wav", dtype="float64")
        rep = json.loads((out / f"arm_{b}_{p}.json").read_text())
        if rep["machine"]["arch"] != "aarch64":
            verdict = f"FAIL (emulated run reports arch {rep['machine']['arch']})"
        elif sr_n != sr_a or n.shape != a.shape:
            verdict = f"FAIL (shape/rate differ: {n.shape}@{sr_n} vs {a.shape}@{sr_a})"
        else:
            e = n - a
            diff = float(np.max(np.abs(e))) if e.size else 0.0
            snr = snr_db(n, a)
            if p != "fp32" and (out / f"arm_{b}_fp32.wav").is_file() and (out / f"native_{b}_fp32.wav").is_file():
                fn = sf.read(out / f"native_{b}_fp32.wav", dtype="float64")[0]
                fa = sf.read(out / f"arm_{b}_fp32.wav", dtype="float64")[0]
                if fn.shape == n.shape and fa.shape == a.shape:
                    ref = f"{snr_db(fn, n):.1f} / {snr_db(fa, a):.1f}"
            if p == "fp32":
                ok = diff <= FP32_MAX_ABS
                verdict = "ok" if ok else f"FAIL (max abs diff > {FP32_MAX_ABS:g})"
            else:
                ok = snr >= INT_MIN_SNR_DB
                verdict = "ok" if ok else f"FAIL (SNR < {INT_MIN_SNR_DB:g} dB)"
    if not verdict.startswith("ok"):
        failures.append(f"{tag}: {verdict[6:-1]}")
    rows.append((b, p, "-" if diff is None else f"{diff:.3g}", "-" if snr is None else ("inf" if snr == float("inf") else f"{snr:.1f}"), verdict, ref))
    summary.append({"backend": b, "precision": p, "max_abs_diff": diff, "snr_db": None if snr is None or snr == float("inf") else snr,
                    "identical": diff == 0.0, "verdict": verdict, "snr_vs_own_fp32_db_x86_arm": ref or None})

head = ("backend", "precision", "max abs diff", "SNR dB", "verdict", "(info: SNR vs own fp32, x86 / arm)")
w = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
print()
for r in [head] + rows:
    print("  ".join(str(c).ljust(w[i]) for i, c in enumerate(r)).rstrip())
print(f"(fp32: max abs diff <= {FP32_MAX_ABS:g}; int8/int8io: SNR of native vs (native - arm) >= {INT_MIN_SNR_DB:g} dB; "
      "outputs are 16-bit WAV, 1 LSB = 3.05e-05)")
(out / "summary.json").write_text(json.dumps(summary, indent=1))
if failures:
    (out / "failure.txt").write_text("; ".join(failures))
    sys.exit(1)
EOF
status=$?
set -e
T_END=$(date +%s)
echo "input $INPUT; outputs, logs and reports in $OUT"
echo "time: setup $((T_SETUP - T_START)) s, runs $((T_RUNS - T_SETUP)) s, total $((T_END - T_START)) s (emulated timings mean nothing)"
if [[ $status == 0 ]]; then
    echo "arm64 check passed: ${#CONFIGS[@]} configurations match the native x86 output"
elif [[ $status == 1 && -f $OUT/failure.txt ]]; then
    echo "arm64 check FAILED: $(cat "$OUT/failure.txt")"
else
    echo "arm64 check FAILED: the comparison script crashed (exit $status)"
    status=1
fi
exit $status

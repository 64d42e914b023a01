"""``python -m export --checkpoint CKPT --out DIR``: checkpoint -> verified model bundle.

Writes ONNX and TFLite models (fp32 and int8, plus an integer-I/O TFLite for microcontrollers),
its C array, golden vectors, ``manifest.json`` and a model card. A gated checkpoint becomes a gated
bundle instead: the trunk, the policy and each branch as separate graphs (``export/gated.py``); a
corrector's checkpoint a two-stage bundle: its student, then the corrector (``export/chain.py``). The bundle is built in a temporary
folder next to DIR and moved into place only when every check passed; a failed check prints a
report and exits 1, leaving DIR as it was. What converters and quantisers print goes to
``DIR.export.log`` beside the bundle.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
from pathlib import Path

from distill import need_torch; need_torch("export", __name__)  # noqa: E702 (before torch is imported: names the extra to install)
from distill import checkpoint
from distill.meco import Chain, load_chain
from distill.models.gated_crn import GatedCRN
from export import log_to
from runtime.audio import AudioError, list_audio, load
from runtime.bundle import BundleError, sha256

SAMPLE = Path(__file__).resolve().parent.parent / "assets" / "sample" / "noisy.wav"
SAMPLE_CLEAN = SAMPLE.with_name("clean.wav")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m export", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help="bundle folder to create")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--formats", default="onnx,tflite", help="comma-separated: onnx, tflite")
    p.add_argument("--calibration", nargs="*", type=Path, default=[], help="audio files or folders of real (noisy) speech for int8 calibration")
    p.add_argument("--calibration-frames", type=int, default=1000, help="frames (with their states) used to calibrate")
    p.add_argument("--parity-audio", type=Path, default=SAMPLE, help="real speech streamed for the parity check (default: the shipped sample)")
    p.add_argument("--devset", type=Path, help="folder with noisy/ and clean/: the verification pairs of the model check and the int8 quality "
                   "check (default: the shipped sample's noisy.wav and clean.wav, one 10 s pair)")  # fmt: skip
    p.add_argument("--devset-files", type=int, help="use this many dev files, spread over the set")
    p.add_argument("--allow-bad-model", action="store_true",
                   help="export even if the model check fails (output anti-correlated with clean speech, or worse than its input); "
                        "recorded in the manifest as overridden")  # fmt: skip
    p.add_argument("--parity-tolerance", type=float, default=1e-4)
    p.add_argument("--pesq-budget", type=float, default=0.10, help="largest allowed PESQ drop of int8 against fp32")
    p.add_argument("--sisdr-budget", type=float, default=0.5, help="largest allowed SI-SDR drop (dB) of int8 against fp32")
    p.add_argument("--golden-frames", type=int, default=200)
    p.add_argument("--note", default="", help="training data and licence, for the manifest and the model card")
    args = p.parse_args(argv)
    args.formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    bad = set(args.formats) - {"onnx", "tflite"}
    if bad or not args.formats:
        p.error(f"--formats takes onnx and/or tflite, got {args.formats}")
    for name in ("calibration_frames", "golden_frames", "devset_files"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def _audio(paths: list[Path], rate: int) -> list:
    files = []
    for p in paths:
        files += list_audio(p) if p.is_dir() else [p]
    if not files:
        raise AudioError(f"--calibration {' '.join(map(str, paths))}: no audio files found (.wav, .flac, .ogg)")
    return [load(f, rate) for f in files]


def _writable_parent(out: Path, force: bool) -> None:
    parent = out.resolve().parent
    if not parent.is_dir():
        raise BundleError(f"{out}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise BundleError(f"{out}: cannot write in {parent}")
    if out.exists() and not force:
        raise BundleError(f"{out} exists; pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise BundleError(f"{out} is a file, not a bundle folder; choose another --out")


def log_path(out: Path) -> Path:
    """The export log: beside the bundle, so that it survives a failed export."""
    return out.resolve().parent / f"{out.resolve().name}.export.log"


def say(msg: str) -> None:
    print(f"export: {msg}", flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    from export.build import ExportError, Options, build  # imports torch and the converters: after argument checks

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so a terminated export still removes its partial folder
    tmp = None
    try:
        _writable_parent(args.out, args.force)
        payload = checkpoint.read(args.checkpoint)
        kind = payload["model"]["name"]
        if kind not in ("crn", "gated_crn", "corrector"):  # a score model: no streaming graph
            raise ExportError(f"{args.checkpoint}: a {kind} checkpoint cannot be exported; bundles hold mask estimators (crn, gated_crn) "
                              "or a student with its corrector (a corrector's checkpoint)")  # fmt: skip
        model = load_chain(args.checkpoint) if kind == "corrector" else checkpoint.load_model(args.checkpoint)
        rate = model.config.stft.sample_rate
        parity = load(args.parity_audio, rate)
        from export import verify

        if args.devset:
            pairs, source = verify.load_pairs(args.devset, args.devset_files, rate), str(args.devset)
            if not pairs:
                raise AudioError(f"--devset {args.devset}: no readable noisy/clean pairs")
        else:
            pairs, source = verify.load_sample(SAMPLE, SAMPLE_CLEAN, rate), "the shipped sample (assets/sample/noisy.wav, clean.wav)"
        # Calibration takes --calibration-frames spread over the files, so 20 dev files are plenty; tracing
        # every file of a large dev set would only cost time and memory (every frame's states are kept).
        calib = _audio(args.calibration, rate) if args.calibration else [n for n, _ in pairs][:: -(-len(pairs) // 20)]
        if not args.devset:
            say(f"no --devset: verifying on {source} (pass --devset for a measurement over many files)")
        say(f"model check: PyTorch fp32 on {len(pairs)} verification pair(s)")
        check = verify.model_check(model, pairs, source)
        report_check(check)
        if not check["passed"]:
            if not args.allow_bad_model:
                print(f"error: verification failed: the model check refused it ({'; '.join(check['problems'])}); "
                      f"pass --allow-bad-model to export it anyway; {args.out} was left unchanged", file=sys.stderr)  # fmt: skip
                return 1
            check["overridden"] = True
            print(f"warning: exporting a model that failed the model check (--allow-bad-model): {'; '.join(check['problems'])}", file=sys.stderr)
        options = Options(
            formats=args.formats,
            parity_audio=parity,
            parity_name=args.parity_audio.name,
            calibration=calib,
            calibration_frames=args.calibration_frames,
            pairs=pairs,
            pairs_name=source,
            check=check,
            parity_tolerance=args.parity_tolerance,
            pesq_budget=args.pesq_budget,
            sisdr_budget=args.sisdr_budget,
            golden_frames=args.golden_frames,
            log=say,
        )
        info = {"name": payload["model"]["name"], "file": args.checkpoint.name, "sha256": sha256(args.checkpoint), "step": payload.get("step"), "note": args.note}
        tmp = args.out.resolve().parent / f".{args.out.name}.partial-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        log = log_path(args.out)
        say(f"messages of the converters and quantisers go to {log}")
        with log_to(log, "python -m export " + " ".join(map(str, sys.argv[1:] if argv is None else argv))):
            if isinstance(model, GatedCRN):
                from export.gated import build_gated

                manifest = build_gated(model, info, tmp, options)
            elif isinstance(model, Chain):
                from export.chain import build_chain

                manifest = build_chain(model, info, tmp, options)
            else:
                manifest = build(model, info, tmp, options)
    except (checkpoint.CheckpointError, AudioError, BundleError, ExportError) as e:
        print(f"error: {e}", file=sys.stderr)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        return 2
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    report(manifest)
    if not manifest["verification"]["passed"]:
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"error: verification failed (see above); {args.out} was left unchanged", file=sys.stderr)
        return 1
    if args.out.exists():
        old = args.out.resolve().parent / f".{args.out.name}.old-{os.getpid()}"
        os.replace(args.out, old)
        os.replace(tmp, args.out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, args.out)
    print(f"wrote {args.out} ({len(manifest['files'])} files)")
    return 0


def _verdict(passed: bool) -> str:
    return "ok" if passed else "FAILED"


def report_check(check: dict) -> None:
    ref = check["reference"]
    print(f"\nmodel check on {check['files']} pair(s) of {check['pairs']} (PyTorch fp32):")
    print(f"  SI-SDR {ref['si_sdr']:.2f} dB, noisy input {check['input_si_sdr']:.2f} dB ({check['si_sdr_gain']:+.2f} dB; must not be below the input)")
    print(f"  correlation with clean speech {ref['correlation']:+.3f}, polarity {check['polarity']} (must be positive)")
    state = "OVERRIDDEN (--allow-bad-model)" if check["overridden"] else _verdict(check["passed"])
    print(f"  PESQ {ref['pesq']:.3f}; model check {state}\n")


def _int8_parity(snr: float) -> str:
    return f"int8 vs fp32 mask SNR {snr:5.1f} dB (not a pass/fail: int8 is judged by its quality below)"


def report(manifest: dict) -> None:
    ver = manifest["verification"]
    print(f"\nparity: {ver['parity_audio']} streamed through every model, mask against PyTorch fp32:")
    width = max(map(len, ver["parity"]))  # the name column, as wide as its longest name
    for name, r in ver["parity"].items():
        if "gates" in r:  # a gated bundle: every way of driving the gates
            if r["tolerance"] is None:
                snr = ", ".join(f"{g} {v['mask_snr_db']:.1f}" for g, v in r["gates"].items())
                print(f"  {name:{width}s} int8 vs fp32 mask SNR by gates: {snr} dB (not a pass/fail: int8 is judged by its quality below)")
            else:
                err = ", ".join(f"{g} {v['mask_max_abs_error']:.2e}" for g, v in r["gates"].items())
                print(f"  {name:{width}s} max abs error by gates: {err} (tolerance {r['tolerance']:g}) {_verdict(r['passed'])}")
            print(f"  {'':{width}s} branch usage from the policy {r['gates']['policy']['branch_usage']} (PyTorch {r['pytorch_branch_usage']})")
            continue
        if "corrected_max_abs_error" in r:  # a two-stage bundle: the student's mask and the corrector's output
            if r["tolerance"] is None:
                print(f"  {name:{width}s} int8 vs fp32 SNR: mask {r['mask_snr_db']:.1f} dB, corrected {r['corrected_snr_db']:.1f} dB, enhanced "
                      f"{r['enhanced_snr_db']:.1f} dB (not a pass/fail: int8 is judged by its quality below)")  # fmt: skip
            else:
                print(f"  {name:{width}s} max abs error: mask {r['mask_max_abs_error']:.2e}, corrected {r['corrected_max_abs_error']:.2e} "
                      f"(tolerance {r['tolerance']:g}) {_verdict(r['passed'])}")  # fmt: skip
            continue
        if r["tolerance"] is None:
            print(f"  {name:{width}s} {_int8_parity(r['mask_snr_db'])}")
        else:
            print(f"  {name:{width}s} max abs error {r['mask_max_abs_error']:.2e} (tolerance {r['tolerance']:g}) {_verdict(r['passed'])}")
    q = ver["quality"]
    ref, budget = q["reference"], q["budget"]
    print(f"\nint8 quality on {q['files']} pair(s) of {q['devset']} against fp32 PyTorch (PESQ {ref['pesq']:.3f}, SI-SDR {ref['si_sdr']:.2f} dB);")
    print(f"budget: PESQ drop <= {budget['pesq_drop']:g}, SI-SDR drop <= {budget['si_sdr_drop']:g} dB, same polarity as fp32:")
    width = max(map(len, q["results"]))
    for name, r in q["results"].items():
        setting = r["setting"] if "setting" in r else manifest["files"][name]["quantization"]["setting"]
        print(
            f"  {name:{width}s} PESQ {r['pesq']:.3f} (drop {r['pesq_drop']:+.3f})  SI-SDR {r['si_sdr']:.2f} dB (drop {r['si_sdr_drop']:+.2f})  "
            f"correlation {r['correlation']:+.2f}  [{setting}] {_verdict(r['passed'])}"
        )
    if "stages" in ver:
        s = ver["stages"]
        print(f"\nPyTorch fp32 on the same pairs (the bundle runs eps {s['eps']}):")
        width = max(map(len, s))
        for key, v in s.items():
            if isinstance(v, dict):
                print(f"  {key.replace('_', ' '):{width}s} PESQ {v['pesq']:.3f}  SI-SDR {v['si_sdr']:.2f} dB  correlation {v['correlation']:+.2f}")
    if "tflm" in ver:
        from export.verify_tflm import summary

        print()
        for line in summary(ver["tflm"], {name: f["tflm"] for name, f in manifest["files"].items() if "tflm" in f}):
            print(line)
    check = ver["model"]
    if check["overridden"]:
        print(f"\nmodel check OVERRIDDEN (--allow-bad-model): {'; '.join(check['problems'])}")


if __name__ == "__main__":
    sys.exit(main())

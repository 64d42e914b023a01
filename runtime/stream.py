"""Streaming denoiser: ``tiny-denoise`` (or ``python -m runtime.stream``) on files, folders, pipes and the microphone.

    tiny-denoise --input in.wav --output out.wav       a file, kept at its rate, channels and sample format
    tiny-denoise --input DIR --output DIR              every audio file below DIR, same relative paths
    tiny-denoise --input - --output - < in.wav > out.wav    a pipeline: WAV out, messages on stderr
    tiny-denoise --mic                                 live, default input to default output
    tiny-denoise --list-models | --list-devices

Files run through ``runtime.Enhancer`` (each channel on its own, the band above the model's kept
unless --drop-high-band). Ctrl-C stops the live stream and prints the report.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from runtime import models, report
from runtime.audio import AudioError, check_audio_output, check_writable, list_audio, read_clip, write, write_wav_stream
from runtime.backends import BACKENDS, GATE_MODES, STAGES
from runtime.bundle import BundleError
from runtime.enhancer import Enhancer

DEFAULT_BUNDLE = models.DEFAULT
PIPE = "-"


class DeviceError(Exception):
    """No usable audio device or audio library."""


def parse_args(argv):
    p = argparse.ArgumentParser(prog="tiny-denoise", description="Denoise speech in files, folders and pipes, or live from a microphone.",
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--mic", action="store_true", help="denoise the input device live to the output device")
    mode.add_argument("--input", help="audio file, folder (every .wav/.flac/.ogg below it), or - for stdin (needs --output)")
    mode.add_argument("--list-devices", action="store_true", help="list audio devices and exit")
    mode.add_argument("--list-models", action="store_true", help="list the shipped models (size, cost, quality) and exit")
    p.add_argument("--output", help="where --input's result goes: a file, a folder for a folder, or - for stdout (WAV)")
    p.add_argument("--model", default="default", help="a shipped model's name (see --list-models) or a bundle folder (default: default)")
    p.add_argument("--backend", default="auto", help=f"auto (the fastest measured: litert, else onnxruntime) or one of {', '.join(BACKENDS)}")
    p.add_argument("--precision", default="fp32", help="fp32, int8 (int8 inside, float I/O) or int8io (integer I/O)")
    p.add_argument("--threads", type=int, default=1, help="backend threads")
    p.add_argument("--gates", choices=GATE_MODES, default="policy", help="gated bundles: branches as the policy decides, or forced all on / all off")
    p.add_argument("--stages", choices=STAGES, help="two-stage bundles: student then corrector (all, the default), or the student alone (A/B listening)")
    p.add_argument("--blocksize", type=int, default=160, help="samples per block (at the input's rate for files; any size)")
    p.add_argument("--atten-limit-db", type=float, help="suppress by at most this many dB (keeps some of the noisy signal)")
    p.add_argument("--drop-high-band", action="store_true", help="files above 16 kHz: drop the band above 8 kHz instead of keeping it, scaled by the model's gain")
    p.add_argument("--seconds", type=float, help="--mic: stop after this much audio; files: denoise only their first SECONDS")
    p.add_argument("--device", help="--mic: input[,output] device index or name substring (see --list-devices)")
    p.add_argument("--mode", choices=("worker", "inline"), default="worker", help="--mic: engine in a worker thread or in the audio callback")
    p.add_argument("--stats", action="store_true", help="--mic: a live status line")
    p.add_argument("--report", type=Path, help="write the report as JSON here")
    args = p.parse_args(argv)
    if args.input is not None and not args.output:
        p.error("--input needs --output")
    if args.output is not None and args.input is None:
        p.error("--output goes with --input")
    if args.blocksize < 1:
        p.error("--blocksize must be positive")
    cores = os.cpu_count() or 1
    if not 1 <= args.threads <= cores:
        p.error(f"--threads must be between 1 and the {cores} cores of this machine")
    if args.atten_limit_db is not None and not (math.isfinite(args.atten_limit_db) and args.atten_limit_db >= 0):
        p.error("--atten-limit-db must be a finite number of dB >= 0 (e.g. 12)")
    if args.seconds is not None and not (math.isfinite(args.seconds) and args.seconds > 0):
        p.error("--seconds must be a positive number")
    if args.report and any(args.report.resolve() == Path(f).resolve() for f in (args.input, args.output) if f and f != PIPE):
        p.error("--report must be a different file from --input and --output")
    return args


def _sounddevice():
    try:
        import sounddevice as sd
    except ImportError:
        raise DeviceError("live audio needs the sounddevice package: pip install sounddevice") from None
    except OSError:
        raise DeviceError("PortAudio is not installed; on Debian/Raspberry Pi OS: sudo apt install libportaudio2") from None
    return sd


def _device(sd, spec: str | None):
    """(input, output) as sounddevice understands them, checked to exist; None for the defaults."""
    if not len(sd.query_devices()):
        raise DeviceError("no audio devices found; connect a microphone and speaker (see --list-devices)")
    if spec is None:
        ins, outs = sd.default.device
        if ins is None or ins < 0 or outs is None or outs < 0:
            raise DeviceError("no default input/output device; choose one with --device (see --list-devices)")
        return None
    parts = [int(s) if s.strip().isdigit() else s.strip() for s in spec.split(",")]
    pair = (parts[0], parts[0]) if len(parts) == 1 else tuple(parts[:2])
    for dev, kind in zip(pair, ("input", "output")):
        try:
            sd.query_devices(dev, kind)
        except ValueError:
            raise DeviceError(f"no {kind} device {dev!r}; see --list-devices") from None
    return pair


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def run_file(args, enh: Enhancer, src: str | Path, dst: str | Path, log) -> dict:
    """One file (or stdin/stdout) through the enhancer; returns its report."""
    name = "stdin" if src == PIPE else str(src)
    clip = read_clip(sys.stdin.buffer if src == PIPE else src, args.seconds)
    bad = int(np.count_nonzero(~np.isfinite(clip.samples)))
    if bad == clip.samples.size:
        raise AudioError(f"{name}: all {bad} samples are NaN or infinite; there is no audio to denoise")
    if bad:
        warn(f"{name}: {bad} of {clip.samples.size} samples are NaN or infinite; replaced by zeros")
    t0 = time.perf_counter()
    y = enh.enhance(clip.samples, clip.rate, block=args.blocksize)  # [L, C]
    wall = time.perf_counter() - t0
    if dst == PIPE:
        clipped = write_wav_stream(sys.stdout.buffer, y, clip.rate, clip.subtype)
    else:
        clipped = write(dst, y, clip.rate, clip.subtype)
    if clipped:
        warn(f"{dst if dst != PIPE else 'stdout'}: {clipped} output samples ({clipped / y.size:.2%}) were beyond full scale and clipped; lower the input's level")
    seconds = len(y) / clip.rate
    print(f"{name} ({seconds:.2f} s, {clip.rate} Hz, {y.shape[1]} ch, {clip.subtype}) -> {'stdout' if dst == PIPE else dst}", file=log)
    return enh.report(input=name, output=str(dst), wall_seconds=round(wall, 3), subtype=clip.subtype, clipped_samples=clipped)


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def run_folder(args, enh: Enhancer, log) -> tuple[dict, int]:
    """Every audio file below --input to the same relative path below --output; a file that fails
    is reported and skipped. Returns the report and how many files failed."""
    from tqdm import tqdm

    src, dst = Path(args.input), Path(args.output)
    if _inside(dst, src):
        raise AudioError(f"--output {dst} is --input {src} or inside it; write to a folder outside the input")
    if dst.exists() and not dst.is_dir():
        raise AudioError(f"--output {dst}: is a file; a folder input needs an output folder")
    files = list_audio(src)
    if not files:
        raise AudioError(f"{src}: no audio files (.wav, .flac, .ogg) in it or below it")
    print(f"{len(files)} files below {src} -> {dst}; {args.model} on {enh.backend} ({enh.precision})", file=log)
    done, failed, audio, t0 = [], [], 0.0, time.perf_counter()
    quiet = open(os.devnull, "w")
    with quiet, tqdm(files, unit="file", file=sys.stderr, disable=None) as bar:
        for f in bar:
            out = dst / f.relative_to(src)
            try:
                out.parent.mkdir(parents=True, exist_ok=True)
                r = run_file(args, enh, f, out, quiet)
            except (AudioError, OSError) as e:
                failed.append({"input": str(f), "error": str(e)})
                continue
            done.append({k: r[k] for k in ("input", "output", "audio_seconds", "wall_seconds", "real_time_factor", "sample_rate", "channels",
                                           "subtype", "clipped_samples", "nonfinite_samples_replaced")})  # fmt: skip
            audio += r["audio_seconds"]
    wall = time.perf_counter() - t0
    print(f"{len(done)} of {len(files)} files denoised into {dst}: {audio:.1f} s of audio in {wall:.1f} s (real-time factor {wall / max(audio, 1e-9):.3f})", file=log)
    for f in failed:
        print(f"failed: {f['error']}", file=sys.stderr)
    rep = {
        "backend": enh.backend, "backend_choice": args.backend, "precision": enh.precision, "threads": enh.threads,
        "input": str(src), "output": str(dst), "files": len(files), "done": done, "failed": failed,
        "audio_seconds": round(audio, 3), "wall_seconds": round(wall, 3), "real_time_factor": wall / audio if audio else None,
        "machine": enh.report()["machine"],
    }  # fmt: skip
    return rep, len(failed)


def run_mic(args, enh: Enhancer) -> dict:
    sd = _sounddevice()
    device = _device(sd, args.device)
    from runtime.mic import LiveStream

    engine = enh.engines[0]  # the device is opened at the model's rate, mono
    try:
        live = LiveStream(engine, device, args.blocksize, args.mode, args.seconds)
    except sd.PortAudioError as e:
        raise DeviceError(f"cannot open the audio device at {engine.rate} Hz mono ({e}); try another --device") from None
    print(f"denoising live with {args.model} ({enh.backend}, {args.precision}); Ctrl-C to stop", file=sys.stderr)
    try:
        with live:
            while live.active:
                time.sleep(0.5)
                if args.stats and engine.frames:
                    t = engine.frame_times_us()[-500:]
                    print(
                        f"\r{engine.frames / (engine.rate / engine.hop):7.1f} s | frame p95 {np.percentile(t, 95):6.0f} us | "
                        f"over {live.overflows} under {live.underflows} ",
                        end="",
                        file=sys.stderr,
                        flush=True,
                    )
    except KeyboardInterrupt:
        pass
    if args.stats:
        print(file=sys.stderr)
    return enh.report(live.captured / engine.rate, input_overflows=live.overflows, output_underflows=live.underflows, mode=args.mode)


def _check_pipes(args) -> None:
    if args.input == PIPE and sys.stdin.isatty():
        raise AudioError("--input -: stdin is a terminal; pipe audio in (e.g. tiny-denoise --input - --output out.wav < in.wav)")
    if args.output == PIPE and sys.stdout.isatty():
        raise AudioError("--output -: stdout is a terminal; redirect it (> out.wav) or pipe it into another program")


def main(argv=None) -> int:
    args = parse_args(argv)
    log = sys.stderr if args.output == PIPE else sys.stdout  # stdout carries the audio
    failures = 0
    try:
        if args.list_devices:
            devices = _sounddevice().query_devices()
            print(devices if len(devices) else "no audio devices found")
            return 0
        if args.list_models:
            print(models.listing())
            return 0
        folder = args.input not in (None, PIPE) and Path(args.input).is_dir()
        if folder and args.output == PIPE:
            raise AudioError(f"--input {args.input} is a folder; its output must be a folder too, not stdout")
        if args.input is not None and not folder:
            _check_pipes(args)
            if args.output != PIPE:
                check_audio_output(args.output, *([args.input] if args.input != PIPE else []))
        if args.report:
            check_writable(args.report)
        enh = Enhancer(args.model, args.backend, args.precision, atten_limit_db=args.atten_limit_db, threads=args.threads, gates=args.gates,
                       drop_high_band=args.drop_high_band, stages=args.stages)  # fmt: skip
        if args.mic:
            rep = run_mic(args, enh)
        elif folder:
            rep, failures = run_folder(args, enh, log)
        else:
            rep = run_file(args, enh, args.input, args.output, log)
    except (AudioError, BundleError, DeviceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rep["backend_choice"] = args.backend
    if not folder:
        print(report.summary(rep), file=log)
    if args.report:
        args.report.write_text(json.dumps(rep, indent=1))
    if failures:
        print(f"error: {failures} of {rep['files']} files failed (listed above); the others were written", file=sys.stderr)
        return 1
    return 0


def cli(argv=None) -> int:
    """The console script: ``main`` that exits quietly when the reader of its output goes away
    (``| head``) or on Ctrl-C."""
    try:
        code = main(argv)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # Python would report the failed flush at exit: point stdout at /dev/null first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13  # as a shell reports a process ended by SIGPIPE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(cli())

"""Streaming denoiser: ``python -m runtime.stream --mic`` (live) or ``--input in.wav --output out.wav``.

Both modes run the same engine on the shipped default bundle unless ``--model DIR`` names another.
Files of any sample rate and channel count are downmixed and resampled at the edge; the output is
written at the input's rate. Ctrl-C stops the live stream and prints the report.
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

from runtime import report
from runtime.audio import AudioError, check_audio_output, check_writable, finite, read, resample, to_mono, write
from runtime.backends import BACKENDS, GATE_MODES, open_runner
from runtime.bundle import Bundle, BundleError
from runtime.engine import Engine

DEFAULT_BUNDLE = Path(__file__).resolve().parent / "bundles" / "default"


class DeviceError(Exception):
    """No usable audio device or audio library."""


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m runtime.stream", description=__doc__.split("\n\n")[0])
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--mic", action="store_true", help="denoise the input device live to the output device")
    mode.add_argument("--input", type=Path, help="audio file to stream through the engine (needs --output)")
    mode.add_argument("--list-devices", action="store_true", help="list audio devices and exit")
    p.add_argument("--output", type=Path, help="where --input's result goes")
    p.add_argument("--model", type=Path, default=DEFAULT_BUNDLE, help="bundle folder (default: the shipped default model)")
    p.add_argument("--backend", default="onnxruntime", help=f"one of {', '.join(BACKENDS)}")
    p.add_argument("--precision", default="fp32", help="fp32, int8 (int8 inside, float I/O) or int8io (integer I/O)")
    p.add_argument("--threads", type=int, default=1, help="backend threads")
    p.add_argument("--gates", choices=GATE_MODES, default="policy", help="gated bundles: branches as the policy decides, or forced all on / all off")
    p.add_argument("--blocksize", type=int, default=160, help="samples per audio block (any size; 160 = one hop)")
    p.add_argument("--atten-limit-db", type=float, help="suppress by at most this many dB (keeps some of the noisy signal)")
    p.add_argument("--device", help="--mic: input[,output] device index or name substring (see --list-devices)")
    p.add_argument("--mode", choices=("worker", "inline"), default="worker", help="--mic: engine in a worker thread or in the audio callback")
    p.add_argument("--seconds", type=float, help="--mic: stop after this much audio")
    p.add_argument("--stats", action="store_true", help="--mic: a live status line")
    p.add_argument("--report", type=Path, help="write the report as JSON here")
    args = p.parse_args(argv)
    if args.input and not args.output:
        p.error("--input needs --output")
    if args.blocksize < 1:
        p.error("--blocksize must be positive")
    cores = os.cpu_count() or 1
    if not 1 <= args.threads <= cores:
        p.error(f"--threads must be between 1 and the {cores} cores of this machine")
    if args.atten_limit_db is not None and not (math.isfinite(args.atten_limit_db) and args.atten_limit_db >= 0):
        p.error("--atten-limit-db must be a finite number of dB >= 0 (e.g. 12)")
    if args.seconds is not None and not (math.isfinite(args.seconds) and args.seconds > 0):
        p.error("--seconds must be a positive number")
    if args.report and any(args.report.resolve() == Path(f).resolve() for f in (args.input, args.output) if f):
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


def run_file(args, engine: Engine) -> dict:
    check_audio_output(args.output, args.input)
    x, sr = read(args.input)
    x, bad = finite(x)  # before resampling, which would smear a NaN over its neighbours
    engine.nonfinite_samples += bad
    mono = resample(to_mono(x), sr, engine.rate)
    t0 = time.perf_counter()
    y = engine.run(mono, args.blocksize)
    wall = time.perf_counter() - t0
    write(args.output, resample(y, engine.rate, sr), sr)
    print(f"{args.input} ({len(mono) / engine.rate:.2f} s, {sr} Hz, {x.shape[1]} ch) -> {args.output}")
    return {"input": str(args.input), "output": str(args.output), "wall_seconds": round(wall, 3), "audio": len(mono) / engine.rate}


def run_mic(args, engine: Engine) -> dict:
    sd = _sounddevice()
    device = _device(sd, args.device)
    from runtime.mic import LiveStream

    try:
        live = LiveStream(engine, device, args.blocksize, args.mode, args.seconds)
    except sd.PortAudioError as e:
        raise DeviceError(f"cannot open the audio device at {engine.rate} Hz mono ({e}); try another --device") from None
    print(f"denoising live with {args.model.name} ({args.backend}, {args.precision}); Ctrl-C to stop", file=sys.stderr)
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
    return {"audio": live.captured / engine.rate, "input_overflows": live.overflows, "output_underflows": live.underflows, "mode": args.mode}


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.list_devices:
            devices = _sounddevice().query_devices()
            print(devices if len(devices) else "no audio devices found")
            return 0
        bundle = Bundle(args.model)
        runner = open_runner(bundle, args.backend, args.precision, args.threads, args.gates)
        engine = Engine(bundle, runner, args.atten_limit_db)
        if args.report:
            check_writable(args.report)
        info = run_mic(args, engine) if args.mic else run_file(args, engine)
    except (AudioError, BundleError, DeviceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    audio = info.pop("audio")
    rep = report.build(engine, args.backend, args.precision, args.threads, audio, **info)
    print(report.summary(rep))
    if args.report:
        args.report.write_text(json.dumps(rep, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

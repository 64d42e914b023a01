"""Train a model: ``python -m distill.train --model student --clean DIR --noise DIR --out runs/x``.

Progress on a tqdm bar, logs to ``train.csv`` / ``val.csv`` and TensorBoard (``tb/``), checkpoints
``last.pt`` (every ``--ckpt-every`` steps and on Ctrl-C/SIGTERM) and ``best.pt`` (best validation
SI-SDR among outputs of the right polarity). ``--resume`` continues from ``last.pt``; the batches of
a resumed run are exactly those an uninterrupted run would have drawn. An ``--out`` that holds a run
is refused unless ``--resume`` continues it or ``--force`` starts it over.

Started by ``torchrun --nproc_per_node N -m distill.train ...`` it trains on N processes through
DistributedDataParallel, each on its share of every ``--batch`` (see :mod:`distill.distributed`).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import difflib
from dataclasses import dataclass
import json
import logging
import math
import os
import signal
import sys
import time
from pathlib import Path

from distill import need_torch

need_torch("train", __name__)  # before torch is imported: a runtime-only install gets one line naming the extra

import numpy as np
import torch
from tqdm import tqdm

from distill import checkpoint, distributed, pool, teachers
from distill.augment import NONE, AugmentConfig, RoomConfig
from distill.data import AudioFolder, MixConfig, MixtureSampler, PairedSampler, PooledSampler, SyntheticSampler, paired_files, room_bank
from distill.devset import SPLITS, read_list
from distill.dsp import apply_mask, istft, stft
from distill.kd import METHODS, KDConfig, dfkd, dispatch_l2, gram_loss, output_kd
from distill.losses import correlation, parse_weights, si_sdr, sign_blind, supervised
from distill.models import MODELS, PRESETS, build, config_from_dict, cost, gated_cost
from runtime.audio import AudioError, load


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line: the full usage of this many options would bury the message."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except the empty ones (off, unset)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default == []:
            return action.help
        return super()._get_help_string(action)


def number(kind: type, low: float = 0.0, high: float = math.inf, low_open: bool = True):
    """An argparse type: a finite ``kind`` in (low, high], or [low, high] when not ``low_open``."""
    bounds = f"{'above' if low_open else 'at least'} {low:g}" + ("" if high == math.inf else f" and at most {high:g}")

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'a whole number' if kind is int else 'a number'}, got {text!r}") from None
        if not (math.isfinite(value) and (value > low if low_open else value >= low) and value <= high):
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text}")
        return value

    return parse


POSITIVE_INT, POSITIVE, COUNT, NON_NEGATIVE = number(int), number(float), number(int, low_open=False), number(float, low_open=False)
FRACTION = number(float, high=1.0, low_open=False)


def parse_args(argv=None) -> argparse.Namespace:
    p = _Parser(prog="python -m distill.train", description=__doc__.split("\n\n")[0], formatter_class=_Help)
    g = p.add_argument_group("model")
    g.add_argument("--model", default="student", help=f"preset ({', '.join(PRESETS)}) or registry name ({', '.join(MODELS)})")
    g.add_argument("--config", help='JSON object of model config fields overriding the preset, e.g. \'{"rnn_layers": 2}\'')
    g.add_argument("--init", help="start from this checkpoint's model and weights (fine-tuning; --model/--config ignored)")
    g = p.add_argument_group("data (one source)")
    g.add_argument("--clean", help="folder of clean speech (any depth, WAV/FLAC/OGG, any rate), or its index (python -m distill.data index DIR)")
    g.add_argument("--noise", help="folder of noise recordings, or its index")
    g.add_argument("--exclude", action="append", default=[], help="text file of file names to leave out; repeatable (the shipped splits are left out anyway)")
    g.add_argument("--include-held-out", action="store_true", help="train on the files of the shipped dev and dev-ood splits too (distill/splits/*.txt)")
    g.add_argument("--paired", nargs=2, metavar=("NOISY", "CLEAN"), help="paired noisy/clean folders instead of mixing")
    g.add_argument("--synthetic", action="store_true", help="procedural speech-like data (smoke tests)")
    g.add_argument("--seconds", type=POSITIVE, default=4.0, help="segment length")
    g.add_argument("--snr", type=float, nargs=2, default=(-10.0, 25.0), metavar=("LO", "HI"), help="speech-to-noise ratio range, dB")
    g.add_argument("--level", type=float, nargs=2, default=(-45.0, -10.0), metavar=("LO", "HI"), help="mixture RMS range, dBFS")
    g.add_argument("--val-dir", help="folder with noisy/ and clean/ (a rendered dev set) for validation")
    g.add_argument("--val-files", type=POSITIVE_INT, default=40, help="validation files taken evenly from --val-dir (and --val-ood)")
    g.add_argument("--val-ood", help="a second rendered set (e.g. dev-ood) scored at each validation and logged, never used to pick best.pt")
    a = AugmentConfig()
    g = p.add_argument_group("augmentation of --clean/--noise mixtures (probabilities; see docs/training.md: Augmentation)")
    g.add_argument("--no-augment", action="store_true", help="plain mixtures: one noise, no rooms, no channel (the mixer before augmentation)")
    g.add_argument("--rir", help="folder of measured room impulse responses (or its index), drawn beside the simulated rooms")
    g.add_argument("--rooms", type=COUNT, default=RoomConfig.rooms, help="shoebox rooms simulated once with pyroomacoustics (0: none)")
    g.add_argument("--room-cache", default="data/rooms", help="where simulated rooms are cached")
    g.add_argument("--reverb", type=float, default=a.reverb, help="mixtures whose speech is in a room")
    g.add_argument("--noise-room", type=float, default=a.noise_room, help="of those, mixtures whose noise is reverberant too")
    g.add_argument("--early-ms", type=NON_NEGATIVE, default=a.early_ms, help="the target keeps the direct path and reflections of this many ms")
    g.add_argument("--full-reverb-target", action="store_true", help="the target keeps all of the reverberation (no dereverberation)")
    g.add_argument("--sources", type=float, nargs=2, default=a.sources, metavar=("P2", "P3"), help="chance of a second and of a third noise source")
    g.add_argument("--envelope", type=float, default=a.envelope, help="noise sources with a random gain envelope")
    g.add_argument("--low-noise", type=float, default=a.low, help="mixtures with added rumble, mains hum or DC")
    g.add_argument("--eq", type=float, default=a.eq, help="mixtures with a random EQ (input and target)")
    g.add_argument("--band-limit", type=float, default=a.band, help="mixtures band-limited (telephone band or low-pass; input and target)")
    g.add_argument("--clipping", type=float, default=a.clip, help="mixtures whose input is driven into clipping")
    g.add_argument("--speech-highpass", type=NON_NEGATIVE, default=a.speech_highpass_hz, help="zero-phase high-pass of the clean speech, Hz (0: off)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=POSITIVE_INT, default=20000, help="length of the learning-rate schedule")
    g.add_argument("--stop-at", type=POSITIVE_INT, help="checkpoint and stop at this step, keeping the schedule of --steps (continue later with --resume)")
    g.add_argument("--batch", type=POSITIVE_INT, default=16, help="mixtures per step")
    g.add_argument("--lr", type=POSITIVE, default=1e-3, help="peak learning rate")
    g.add_argument("--optimizer", choices=("adam", "adamw"), default="adamw", help="optimiser")
    g.add_argument("--weight-decay", type=NON_NEGATIVE, default=1e-4, help="decoupled weight decay (adamw)")
    g.add_argument("--warmup", type=COUNT, default=500, help="linear warm-up steps before cosine decay")
    g.add_argument("--final-lr", type=FRACTION, default=0.02, help="cosine decay ends at this fraction of --lr")
    g.add_argument("--clip", type=POSITIVE, default=5.0, help="gradient norm clip")
    g.add_argument("--loss", default="spec=1,sisdr=0.01", help="weighted supervised terms: sisdr, snr, spec, psa (snr and spec see the sign of the output; sisdr and psa do not)")
    g = p.add_argument_group("distillation (see docs/training.md: Distillation)")
    g.add_argument("--teacher", help="frozen teacher: a checkpoint (white-box), or a black box (output-level KD only): a bundle folder, a peer "
                                      "(gtcrn, ulunas, dtln, dtln-int8 from --peers, or one of their files), rnnoise or deepfilternet3; a gated checkpoint with fixed gates: CKPT@1,1")
    g.add_argument("--peers", default=teachers.PEERS_DIR, metavar="DIR", help="folder of the peer models (gtcrn/, ulunas/, dtln/), relative to the working directory")
    g.add_argument("--pool", type=POSITIVE_INT, metavar="N", help="train on a fixed pool of this many mixtures, rendered once with the teacher's outputs "
                                                   "(see docs/training.md: Teachers and pools)")
    g.add_argument("--pool-dir", default="data/pools", metavar="DIR", help="where pools are rendered, one folder per definition")
    g.add_argument("--kd", choices=METHODS, default="none", help="KD method")
    g.add_argument("--kd-weight", type=NON_NEGATIVE, default=1.0, help="weight of the KD term added to the supervised loss")
    g.add_argument("--kd-topk", type=number(float, high=1.0), default=0.8, help="DISPatch: fraction of patches kept per utterance")
    g.add_argument("--kd-positive", action="store_true", help="DISPatch: keep only patches with KGS > 0")
    g.add_argument("--kd-sb", type=POSITIVE_INT, default=20, help="DISPatch-L2 patch width (bins)")
    g.add_argument("--kd-sb-low", type=POSITIVE_INT, help="DFKD low-band patch width (default 10 with MSSP, else 20)")
    g.add_argument("--kd-sb-high", type=POSITIVE_INT, help="DFKD high-band patch width (default 40 with MSSP, else 20)")
    g.add_argument("--kd-beta", type=FRACTION, default=0.5, help="DFKD: cosine weight in the high band")
    g.add_argument("--gram-layers", default=",".join(KDConfig.gram_layers), help="activations matched by Gram KD")
    g.add_argument("--gram-mode", choices=("f", "t", "tf"), default="f", help="per-frame FxF, TxT, or (TxF)^2 in blocks")
    g.add_argument("--gram-chunk", type=POSITIVE_INT, default=8, help="frames per block for --gram-mode tf")
    g.add_argument("--two-step-split", type=FRACTION, default=0.3, help="two-step: fraction of steps in step 1 (KD only)")
    g.add_argument("--step1-output-kd", type=NON_NEGATIVE, default=0.0, help="two-step: output-KD weight added in step 1")
    g = p.add_argument_group("dynamic slimming (gated models, see docs/slimming.md)")
    g.add_argument("--usage-target", type=FRACTION, default=0.5, help="target MAC-weighted usage of the gated branches")
    g.add_argument("--cost-weight", type=NON_NEGATIVE, default=1.0, help="weight of (usage - target)^2")
    g.add_argument("--policy-lr-scale", type=POSITIVE, default=10.0, help="the policy's learning rate as a multiple of --lr")
    g.add_argument("--tau", type=POSITIVE, nargs=2, default=(2.0, 0.2), metavar=("START", "END"), help="Gumbel temperature, annealed exponentially")
    g.add_argument("--gate-warmup", type=FRACTION, default=0.0, help="fraction of steps with every gate forced on (1: a static full-width run)")
    g.add_argument("--fixed-gates", type=gate_pattern, metavar="G0,G1,...",
                   help="every step with these gates (1 on, 0 off) and no cost: a static student of the trunk plus the chosen branches")
    g.add_argument("--cost-over", choices=("example", "batch"), default="example",
                   help="usage held to the target per example, or on average over the batch (lets the policy give some mixtures more than others)")
    g.add_argument("--detach-policy", action="store_true",
                   help="the policy's gradients (usage cost, straight-through gates) stop at the trunk output it reads instead of reshaping the trunk")
    g.add_argument("--mgt", action="store_true", help="metric-guided: per-mixture usage target from the DNSMOS OVRL of its noisy input")
    g.add_argument("--mgt-ovrl", type=float, nargs=2, default=(1.4, 2.8), metavar=("BAD", "GOOD"), help="OVRL range mapped onto --mgt-usage")
    g.add_argument("--mgt-usage", type=FRACTION, nargs=2, default=(1.0, 0.2), metavar=("AT_BAD", "AT_GOOD"), help="usage targets at the ends of --mgt-ovrl")
    g.add_argument("--mgt-pool", type=POSITIVE_INT, default=4000, help="mixtures drawn once and scored with DNSMOS for --mgt")
    g.add_argument("--mgt-cache", default="data/mgt_cache", help="where pool scores are cached")
    g = p.add_argument_group("run")
    g.add_argument("--out", required=True, help="run folder (checkpoints, logs)")
    g.add_argument("--resume", action="store_true", help="continue the run in OUT from its last.pt (starts it when OUT holds none)")
    g.add_argument("--force", action="store_true", help="start over in an OUT that holds a run: its checkpoints, logs and TensorBoard events are deleted")
    g.add_argument("--seed", type=COUNT, default=0, help="seed of the initial weights and of every batch")
    g.add_argument("--threads", type=COUNT, default=0, help="torch threads (0: torch default)")
    g.add_argument("--ckpt-every", type=POSITIVE_INT, default=250, help="steps between saves of last.pt")
    g.add_argument("--val-every", type=POSITIVE_INT, default=1000, help="steps between validations (and at the last step)")
    g.add_argument("--log-every", type=POSITIVE_INT, default=25, help="steps averaged into each row of train.csv")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (logs still written)")
    g = p.add_argument_group("devices and processes (see docs/scale.md)")
    g.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the model trains; under torchrun each process takes the GPU of its local rank")
    g.add_argument("--precision", choices=("fp32", "bf16"), help="bf16: forward passes under autocast (the default on CUDA); fp32: none (the default on CPU)")
    g.add_argument("--workers", type=COUNT, default=0, help="data-loading processes mixing batches ahead (0: one thread); the batches do not depend on it")
    g.add_argument("--accum", type=POSITIVE_INT, default=1, help="micro-batches per step: each process's share of --batch in this many parts (less memory, the same step)")
    g.add_argument("--sync-bn", action="store_true", help="BatchNorm statistics over every process's share (CUDA only: torch's SyncBatchNorm)")
    g.add_argument("--dist-timeout", type=POSITIVE, default=1800.0, help="seconds a process waits for the others before the run ends with an error")
    args = p.parse_args(argv)
    sources = sum([bool(args.clean or args.noise), bool(args.paired), args.synthetic])
    if sources != 1:
        p.error("give exactly one data source: --clean DIR --noise DIR, --paired NOISY CLEAN, or --synthetic")
    if bool(args.clean) != bool(args.noise):
        p.error("--clean and --noise go together")
    own = {"corrector": "python -m distill.meco train", "score_unet": "python -m distill.rosecd"}  # not mask estimators: trained by their own loops
    registry = PRESETS[args.model][0] if args.model in PRESETS else args.model
    if registry in own:
        p.error(f"--model {args.model} is trained with {own[registry]}, not distill.train")
    if (args.kd != "none") != bool(args.teacher):
        p.error("--kd METHOD and --teacher CKPT go together")
    if args.pool and args.mgt:
        p.error("--pool and --mgt each train on a fixed pool of their own: give one")
    if args.teacher:
        try:
            spec = teachers.resolve(args.teacher, args.peers)
        except teachers.TeacherError as e:
            p.error(str(e))
        if not spec.white_box and KDConfig(method=args.kd).needs_activations:
            seen = "a gated model, whose activations change with its gates" if spec.kind == "gated" else "a black box (seen only through its output)"
            p.error(f"--kd {args.kd} matches the teacher's activations, and --teacher {args.teacher} is {seen}: "
                    f"use --kd output, dispatch, dfkd or dispatch-mssp, or a checkpoint teacher")  # fmt: skip
    if args.resume and args.force:
        p.error("--resume continues the run in --out and --force starts it over: give one")
    if args.sync_bn and args.device != "cuda":
        p.error("--sync-bn needs --device cuda: torch's SyncBatchNorm runs on GPUs only")
    args.precision = args.precision or ("bf16" if args.device == "cuda" else "fp32")
    return args


def model_overrides(model: str, config: str | None) -> dict:
    """The ``--config`` fields, checked against the model's config class."""
    names = [*PRESETS, *MODELS]
    if model not in names:
        close = difflib.get_close_matches(model, names, n=1)
        raise ValueError(f"unknown model {model!r}" + (f" (did you mean {close[0]!r}?)" if close else "") + f"; choose from {', '.join(names)}")
    if not config:
        return {}
    try:
        overrides = json.loads(config)
    except json.JSONDecodeError as e:
        raise ValueError(f"--config is not valid JSON ({e.msg} at character {e.pos}); give an object such as '{{\"rnn_layers\": 2}}'") from None
    if not isinstance(overrides, dict):
        raise ValueError(f"--config must be a JSON object of config fields, got {type(overrides).__name__} {config!r}")
    fields = [f.name for f in dataclasses.fields(MODELS[PRESETS[model][0] if model in PRESETS else model][0])]
    for key in overrides:
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            raise ValueError(f"--config: {model} has no field {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "") + f"; fields: {', '.join(fields)}")
    return overrides


def gate_pattern(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 0s and 1s separated by commas, one per branch (e.g. 0,1); got {text!r}") from None


def kd_config(args) -> KDConfig | None:
    if args.kd == "none":
        return None
    return KDConfig(
        method=args.kd,
        weight=args.kd_weight,
        topk=args.kd_topk,
        positive_only=args.kd_positive,
        sb=args.kd_sb,
        sb_low=args.kd_sb_low,
        sb_high=args.kd_sb_high,
        beta=args.kd_beta,
        gram_layers=tuple(x.strip() for x in args.gram_layers.split(",") if x.strip()),
        gram_mode=args.gram_mode,
        gram_chunk=args.gram_chunk,
        split=args.two_step_split,
        step1_output_kd=args.step1_output_kd,
    )


def make_sampler(args, seed: int):
    base = _base_sampler(args, seed)
    if args.pool:  # the teacher's outputs go into the pool unless Gram KD needs it to run on every batch
        taught = args.teacher and not KDConfig(method=args.kd).needs_activations
        return pool.sampler(base, args.pool, seed, args.pool_dir, teachers.resolve(args.teacher, args.peers) if taught else None, not args.no_progress)
    if not args.mgt:
        return base
    source = "synthetic" if args.synthetic else str(args.paired or (args.clean, args.noise, sorted(args.exclude)))
    return PooledSampler(base, args.mgt_pool, Path(args.mgt_cache), seed, describe=source)


def augment_config(args) -> AugmentConfig:
    if args.no_augment:
        return NONE
    return AugmentConfig(reverb=args.reverb if args.rir or args.rooms else 0.0, noise_room=args.noise_room, early_ms=args.early_ms,
                         full_target=args.full_reverb_target, sources=tuple(args.sources), envelope=args.envelope, low=args.low_noise, eq=args.eq,
                         band=args.band_limit, clip=args.clipping, speech_highpass_hz=args.speech_highpass)  # fmt: skip


def excluded(args) -> set[str]:
    """File names training leaves out: the shipped splits (unless --include-held-out) and --exclude lists."""
    lists = [Path(f) for f in args.exclude] + ([] if args.include_held_out else sorted(SPLITS.glob("*.txt")))
    names: set[str] = set()
    for f in lists:
        names |= set(read_list(f))
    return names


def _base_sampler(args, seed: int):
    cfg = MixConfig(seconds=args.seconds, snr_db=tuple(args.snr), level_db=tuple(args.level))
    if args.synthetic:
        return SyntheticSampler(cfg, seed)
    if args.paired:
        return PairedSampler(*args.paired, cfg, seed)
    exclude = excluded(args)
    augment = augment_config(args)
    rooms = None
    if augment.reverb:
        rooms = room_bank(args.rir, RoomConfig(rooms=args.rooms), cfg.sample_rate, args.room_cache, exclude)
        print(f"rooms: {len(rooms.simulated)} simulated, {len(rooms.measured)} measured")
    return MixtureSampler(AudioFolder(args.clean, cfg.min_seconds, exclude), AudioFolder(args.noise, cfg.min_seconds, exclude), cfg, seed, augment, rooms)


def validation_set(args, sampler, sample_rate: int, folder: str | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    folder = folder or args.val_dir
    if folder:
        pairs = paired_files(Path(folder) / "noisy", Path(folder) / "clean")
        idx = np.linspace(0, len(pairs) - 1, min(args.val_files, len(pairs))).round().astype(int)
        return [(load(pairs[i][0], sample_rate), load(pairs[i][1], sample_rate)) for i in idx]
    noisy, clean = sampler.batch(0, 16, stream=1)[:2]  # a stream training never draws from
    return list(zip(noisy, clean))


@dataclass(frozen=True)
class GateConfig:
    """How a gated model is trained: Gumbel temperature schedule, usage target and its cost."""

    usage_target: float = 0.5
    cost_weight: float = 1.0
    tau: tuple[float, float] = (2.0, 0.2)
    warmup: float = 0.0  # fraction of steps with every gate on
    fixed: tuple[float, ...] | None = None  # gates of every frame of every step (a static run)
    scope: str = "example"  # "example": each mixture's usage held to its target; "batch": their mean
    mgt: bool = False
    mgt_ovrl: tuple[float, float] = (1.4, 2.8)
    mgt_usage: tuple[float, float] = (1.0, 0.2)
    detach_policy: bool = False  # the policy's gradients stop at the trunk output it reads

    def forced(self, progress: float, branches: int) -> tuple[float, ...] | None:
        """The gates of every frame at this point of training (0..1), or None where the policy chooses."""
        if self.fixed is not None:
            return self.fixed
        if progress < self.warmup:
            return (1.0,) * branches
        return None

    def target(self, ovrl: torch.Tensor | None, batch: int) -> torch.Tensor:
        """Per-example usage target: fixed, or a linear map of the input's OVRL (worse -> more)."""
        if not self.mgt:
            return torch.full((batch,), self.usage_target)
        (bad, good), (hi, lo) = self.mgt_ovrl, self.mgt_usage
        frac = ((ovrl - bad) / (good - bad)).clamp(0, 1)
        return hi + (lo - hi) * frac


class Objective:
    """The loss of one batch: supervised terms, plus a KD term against a frozen teacher whose
    outputs are computed once per batch (or come with the batch from a pool, ``taught``), plus for
    gated models the cost of the gates' usage. ``teacher``: a white-box model, a black-box
    ``distill.teachers.Teacher`` (output-level KD), or None when the batches bring its outputs.
    Two-step KD trains on the KD loss alone for the first ``split`` of the steps and on the
    supervised loss alone afterwards. With ``autocast`` (a device type) the forward passes of model
    and teacher run under bf16 autocast and the losses in fp32."""

    def __init__(self, weights: dict[str, float], kd: KDConfig | None = None, teacher: torch.nn.Module | None = None, total_steps: int = 0,
                 gating: GateConfig | None = None, branch_macs: list[int] | None = None, autocast: str | None = None):  # fmt: skip
        self.weights, self.kd, self.teacher, self.total_steps, self.autocast = weights, kd, teacher, total_steps, autocast
        if gating is not None and kd is not None and kd.needs_activations:
            raise ValueError("Gram KD needs activations, which gated models do not expose; use output, dispatch or dfkd KD")
        self.gating = gating
        self.share = torch.tensor(branch_macs, dtype=torch.float32) / sum(branch_macs) if branch_macs else None
        names = list(weights)
        if kd is not None:
            names += ["gram", "kd_out"] if kd.method == "two-step" else ["kd"]
        if gating is not None:
            names += ["cost"]
        self.term_names = names
        self.usage = None  # mean MAC-weighted usage of the last batch

    def _forward(self, net, *args, **kwargs):
        if self.autocast is None:
            return net(*args, **kwargs)
        with torch.autocast(self.autocast, dtype=torch.bfloat16):
            return _fp32(net(*args, **kwargs))

    def __call__(self, net, noisy, clean, step: int, ovrl: torch.Tensor | None = None, taught: torch.Tensor | None = None):
        """Returns the total, its terms and the batch SI-SDR (dB). ``net`` is the model or its
        DistributedDataParallel wrapper; ``taught``: the teacher's aligned outputs [B, L]."""
        model = net.module if isinstance(net, torch.nn.parallel.DistributedDataParallel) else net
        cfg = model.config.stft
        kd = self.kd
        method = kd.method if kd else "none"
        step1 = method == "two-step" and step < kd.split * self.total_steps
        taps = method == "gram" or step1
        ns, cs = stft(noisy, cfg), stft(clean, cfg)  # [B, T, F, 2]
        cost_term = None
        if self.gating is not None:
            g = self.gating
            progress = step / max(1, self.total_steps)
            tau = g.tau[0] * (g.tau[1] / g.tau[0]) ** progress
            pattern = g.forced(progress, len(model.branches))
            forced = None if pattern is None else torch.tensor(pattern, device=ns.device).expand(ns.shape[0], ns.shape[1], -1)  # [B, T, K]
            mask, gates, _ = self._forward(net, ns, tau=tau, gates=forced, detach_policy=g.detach_policy)  # gates [B, T, K]
            usage = (gates * self.share.to(gates.device)).sum(-1).mean(-1)  # [B]
            self.usage = usage.mean().item()
            if forced is None:
                target = g.target(ovrl, len(usage)).to(usage.device)  # [B]
                gap = usage - target if g.scope == "example" else usage.mean() - target.mean()
                cost_term = g.cost_weight * gap.square().mean()
            acts = None
        else:
            mask, acts = self._forward(net, ns, taps=True) if taps else (self._forward(net, ns), None)
        es = apply_mask(ns, mask)  # [B, T, F, 2]
        ew = istft(es, cfg, noisy.shape[-1])  # [B, L]
        terms = {} if step1 else supervised(self.weights, ew, clean, es, cs, ns)
        if method != "none" and (method != "two-step" or step1):
            with torch.no_grad():
                if taught is None and isinstance(self.teacher, torch.nn.Module):
                    t_mask, t_acts = self._forward(self.teacher, ns, taps=True) if taps else (self._forward(self.teacher, ns), None)
                    ts = apply_mask(ns, t_mask)
                    tw = istft(ts, cfg, noisy.shape[-1])
                else:  # a black box: its waveform, and our STFT of it
                    tw = taught if taught is not None else torch.from_numpy(self.teacher.enhance(noisy.float().cpu().numpy())).to(noisy.device)  # [B, L]
                    ts, t_acts = stft(tw, cfg), None  # [B, T, F, 2]
            if method == "output":
                terms["kd"] = kd.weight * output_kd(es, ts)
            elif method == "dispatch":
                terms["kd"] = kd.weight * dispatch_l2(ew, tw, clean, kd)
            elif method in ("dfkd", "dispatch-mssp"):
                terms["kd"] = kd.weight * dfkd(ew, tw, clean, kd)
            elif method == "gram":
                terms["kd"] = kd.weight * gram_loss(acts, t_acts, kd)
            else:
                terms["gram"] = kd.weight * gram_loss(acts, t_acts, kd)
                if kd.step1_output_kd:
                    terms["kd_out"] = kd.step1_output_kd * output_kd(es, ts)
        if cost_term is not None:
            terms["cost"] = cost_term
        return sum(terms.values()), terms, si_sdr(ew.detach(), clean).mean()


def _fp32(out):
    """Autocast outputs (tensors, or tuples and dicts of them) back in float32 for the losses."""
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, (tuple, list)):
        return type(out)(_fp32(x) for x in out)
    if isinstance(out, dict):
        return {k: _fp32(v) for k, v in out.items()}
    return out


@dataclass(frozen=True)
class Scores:
    """Means over the validation files."""

    sisdr: float  # dB
    sisdri: float  # dB over the noisy input
    polarity: float  # Pearson correlation of output and clean speech: negative for an inverted output
    usage: float | None  # gated models: MAC-weighted usage of the branches


@torch.no_grad()
def validate(model, val, share: torch.Tensor | None = None, pattern: tuple[float, ...] | None = None) -> Scores:
    """SI-SDR of the enhanced validation signals, its improvement over the noisy input, the output's
    polarity (which SI-SDR cannot see) and, for a gated model (``share``: each branch's part of the
    gated MACs), its usage: of the hard gates of inference (which can differ from the sampled gates
    of training), or of ``pattern``, the gates training forces (fixed gates, all on during warm-up)."""
    model.eval()
    cfg = model.config.stft
    device = next(model.parameters()).device
    out, gain, polarity, usage = [], [], [], []
    for noisy, clean in val:
        n, c = torch.from_numpy(noisy)[None].to(device), torch.from_numpy(clean)[None].to(device)
        spec = stft(n, cfg)  # [1, T, F, 2]
        res = model(spec) if pattern is None else model(spec, gates=torch.tensor(pattern, device=device).expand(1, spec.shape[1], -1))
        mask = res[0] if isinstance(res, tuple) else res
        if share is not None:
            usage.append((res[1] * share.to(device)).sum(-1).mean().item())  # res[1]: gates [1, T, K]
        est = istft(apply_mask(spec, mask), cfg, n.shape[-1])  # [1, L]
        s = si_sdr(est, c).item()
        out.append(s)
        gain.append(s - si_sdr(n, c).item())
        polarity.append(correlation(est, c).item())
    model.train()
    return Scores(float(np.mean(out)), float(np.mean(gain)), float(np.mean(polarity)), float(np.mean(usage)) if usage else None)


def param_groups(model: torch.nn.Module, lr: float, policy_scale: float) -> list[dict]:
    """One group, or for a gated model two: the policy learns ``policy_scale`` times faster. At
    the shared rate the task loss's push on the gates drowns the cost's per-mixture signal and the
    policy settles on a fixed choice of branches."""
    policy = getattr(model, "policy", None)
    if policy is None or policy_scale == 1:
        return [{"params": list(model.parameters())}]
    own = {id(p) for p in policy.parameters()}
    return [{"params": [p for p in model.parameters() if id(p) not in own]}, {"params": list(policy.parameters()), "lr": lr * policy_scale}]


def lr_factor(step: int, args) -> float:
    if step < args.warmup:
        return (step + 1) / args.warmup
    progress = min(1.0, (step - args.warmup) / max(1, args.steps - args.warmup))
    return args.final_lr + (1 - args.final_lr) * 0.5 * (1 + math.cos(math.pi * progress))


REWARM = 200  # steps: Adam's second moments settle within ~1/(1 - beta2) = 1000 steps; most of it in the first few hundred


def rewarm_factor(step: int, reset_at: int | None) -> float:
    """The learning-rate factor after the optimiser's moments were reset at ``reset_at``."""
    if reset_at is None:
        return 1.0
    return min(1.0, (step - reset_at + 1) / REWARM)


def moments_reset_at(state: dict | None) -> int | None:
    """The step a resumed run's optimiser moments started from scratch: a compact state's own step
    (it has none), or the one an earlier compact resume recorded; None for a run that never lost them."""
    if state is None:
        return None
    return state["step"] if "optimizer" not in state else state.get("moments_reset_at")


def fresh_moments(optimizer, scheduler, step: int, args, reset_at: int, last) -> None:
    """Resuming a compact state (no optimiser moments): the first step's learning rate is the
    re-warm-up's, which a scheduler restored from its state does not set."""
    factor = lr_factor(step, args) * rewarm_factor(step, reset_at)
    for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = base * factor
    print(f"{last} holds no optimiser moments: fresh ones from step {step}, learning rate re-warmed over {REWARM} steps")


class CsvLog:
    """Rows appended to a CSV file. A file from an earlier sitting of the run keeps its rows: columns
    it lacks (a newer version logs more) are added to the end of its header, empty in its old rows."""

    def __init__(self, path: Path, fields: list[str]):
        self.path, self.fields = path, fields
        rows = []
        if path.exists():
            with path.open(newline="") as f:
                rows = list(csv.reader(f))
        if rows:
            missing = [k for k in fields if k not in rows[0]]
            self.fields = rows[0] + missing
            if not missing:
                return
        width = len(self.fields)
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w", newline="") as f:
            csv.writer(f).writerows([self.fields] + [r + [""] * (width - len(r)) for r in rows[1:]])
        os.replace(tmp, path)  # the old file stays whole until the new one is

    def write(self, row: dict) -> None:
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow([row.get(k, "") for k in self.fields])


RUN_FILES = ("last.pt", "best.pt", "train.csv", "val.csv", "args.json")  # what a run writes besides tb/


def earlier_run(out: Path) -> list[Path]:
    """The files of a training run already in ``out``: checkpoints, logs, arguments, TensorBoard events."""
    if not out.is_dir():
        return []
    return [out / name for name in RUN_FILES if (out / name).is_file()] + sorted((out / "tb").glob("events.out.tfevents.*"))


def check_out(out: Path, args) -> list[Path]:
    """Raises ValueError when ``out`` holds a run that neither --resume nor --force names; returns
    the files --force will delete."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    found = earlier_run(out)
    if found and not (args.resume or args.force):
        raise ValueError(f"{out} already holds a training run ({_names(out, found)}); use --resume to continue it or --force to start over")
    return found if args.force else []


def _names(out: Path, files: list[Path]) -> str:
    return ", ".join(dict.fromkeys(f.name if f.parent == out else f"{f.parent.name}/" for f in files))


def setting_warnings(args, weights: dict[str, float]) -> list[str]:
    """Settings that train, but not as one likely meant."""
    found = []
    if args.warmup >= args.steps:
        found.append(f"--warmup {args.warmup} is not shorter than --steps {args.steps}: the learning rate is still rising when the schedule ends "
                     f"and never decays (lower --warmup)")  # fmt: skip
    if sign_blind(weights):
        found.append(f"--loss {args.loss} has no term that sees the sign of the output (SI-SDR and PSA cannot), so the model can learn an "
                     f"inverted output: add snr or spec, e.g. --loss snr=1 or --loss spec=1,sisdr=0.01")  # fmt: skip
    return found


class Failure(Exception):
    """Ends a run with one ``error:`` line and an exit status: 2 for input it cannot use, 1 for a run
    that failed on the way."""

    def __init__(self, message, code: int = 2):
        super().__init__(str(message))
        self.code = code


def _first_line(e: BaseException) -> str:
    """The first sentence of an error message (those of torch.distributed run on)."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0]


def micro_batches(batch: list[torch.Tensor], parts: int) -> list[list[torch.Tensor]]:
    """``batch`` cut into ``parts`` consecutive micro-batches (gradient accumulation)."""
    if parts == 1:
        return [batch]
    n = len(batch[0]) // parts
    return [[t[i * n : (i + 1) * n] for t in batch] for i in range(parts)]


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        rank, world, _ = distributed.launch()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    who = f"rank {rank}: " if world > 1 else ""
    logging.basicConfig(level=logging.INFO, format=f"%(levelname)s {who}%(name)s: %(message)s")
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet if rank else sys.stdout):  # process 0 alone reports
        try:
            return run(args, world)
        except Failure as e:
            print(f"error: {who}{e}", file=sys.stderr)
            return e.code


def run(args, world: int) -> int:
    """Check the inputs, join the other processes (if any) and train. Raises Failure."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.batch % (world * args.accum):
        raise Failure(f"--batch {args.batch} does not split into {world} process(es) x {args.accum} micro-batch(es) (--accum): "
                      f"give a multiple of {world * args.accum}")  # fmt: skip
    try:  # nothing is written to --out before every input has been checked
        replaced = check_out(Path(args.out), args)
        weights = parse_weights(args.loss)
        overrides = {} if args.init else model_overrides(args.model, args.config)
    except (ValueError, OSError) as e:
        raise Failure(e) from None
    try:
        ctx = distributed.setup(args.device, args.dist_timeout)
    except ValueError as e:
        raise Failure(e) from None
    except RuntimeError as e:
        raise Failure(f"cannot join the other processes of the run ({_first_line(e)})", 1) from None
    try:
        return fit(args, ctx, replaced, weights, overrides, shared_sampler(args, ctx))
    except RuntimeError as e:
        if ctx.world == 1:
            raise
        raise Failure(f"lost touch with the other processes of the run ({_first_line(e)}); the first error of the run says why "
                      f"(a process silent for --dist-timeout {args.dist_timeout:g} s counts as lost)", 1) from None  # fmt: skip
    finally:
        distributed.close(ctx)


def shared_sampler(args, ctx: distributed.Context):
    """The data source, made by process 0 before the others: it fills the caches (simulated rooms,
    pool scores) that the others then read, and its error, if any, ends every process alike."""
    sampler = error = None
    if ctx.main:
        try:
            sampler = make_sampler(args, args.seed)
        except (AudioError, ValueError, OSError) as e:
            error = str(e)
    error = distributed.from_main(ctx, error)
    if error:
        raise Failure(error)
    if not ctx.main:
        try:
            sampler = make_sampler(args, args.seed)
        except (AudioError, ValueError, OSError) as e:
            raise Failure(e) from None
    return sampler


def fit(args, ctx: distributed.Context, replaced: list[Path], weights: dict[str, float], overrides: dict, sampler) -> int:
    out = Path(args.out)
    last = out / "last.pt"
    device = ctx.device
    torch.manual_seed(args.seed)  # before the model is built: its initial weights come from this seed
    state = None
    if args.resume:
        found = None
        if ctx.main and last.exists():
            try:
                found = checkpoint.read(last)
            except checkpoint.CheckpointError as e:
                found = str(e)
        found = distributed.from_main(ctx, found)  # the other machines may not see --out
        if isinstance(found, str):
            raise Failure(found)
        state = found
    if state is not None:
        model = build(state["model"]["name"], config_from_dict(state["model"]["name"], state["model"]["config"]))
        model.load_state_dict(state["state_dict"])
    elif args.init:
        try:
            model = checkpoint.load_model(args.init).train()
        except checkpoint.CheckpointError as e:
            raise Failure(e) from None
    else:
        try:
            model = build(args.model, **overrides) if args.model in PRESETS else build(args.model, config_from_dict(args.model, overrides))
        except (TypeError, ValueError) as e:  # values of the wrong kind in --config
            raise Failure(f"cannot build {args.model} with --config {args.config}: {e}") from None
    model.train().to(device, memory_format=torch.channels_last)  # channels_last: 2x faster convs on CPU
    if args.sync_bn and ctx.world > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    opt_cls = torch.optim.AdamW if args.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(param_groups(model, args.lr, args.policy_lr_scale), lr=args.lr, weight_decay=args.weight_decay if args.optimizer == "adamw" else 0.0)
    if state is not None and "scheduler" not in state:
        raise Failure(f"{last} holds no training state to resume (a stripped checkpoint); start a run from it with --init")
    # A compact resume state (distill.checkpoint compact) has no optimiser moments: fresh ones start
    # at that step, under a short re-warm-up so their first, noisy estimates take small steps.
    reset_at = moments_reset_at(state)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, args) * rewarm_factor(s, reset_at))
    step, best, skipped = 0, -math.inf, 0
    if state is not None:
        if "optimizer" in state:
            try:
                optimizer.load_state_dict(state["optimizer"])
            except ValueError:
                raise Failure(f"{last} was saved with another optimiser layout (--policy-lr-scale 1 keeps one group); resume with the options it was started with") from None
        scheduler.load_state_dict(state["scheduler"])
        step, best, skipped = state["step"], state["best_val_sisdr"], state.get("skipped", 0)
        if "optimizer" not in state:
            fresh_moments(optimizer, scheduler, step, args, reset_at, last)
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        print(f"resuming {last} at step {step}")
    teacher = None
    if args.teacher and not getattr(sampler, "fields", ()):  # a pool holding the teacher's outputs needs no teacher
        try:
            teacher = teachers.resolve(args.teacher, args.peers).open()
        except teachers.TeacherError as e:
            raise Failure(e) from None
        if teacher.white_box:
            teacher = teacher.model.to(device, memory_format=torch.channels_last)
            print(f"teacher {args.teacher}: {cost(teacher)}")
        else:
            print(f"teacher {teacher.about}: teaches through its output, run on every batch (--pool N renders its outputs once)")
            for w in teacher.warnings:
                print(f"warning: {w}", file=sys.stderr)
    gated = hasattr(model, "branches")
    try:
        gating = branch_macs = None
        if gated:
            gating = GateConfig(args.usage_target, args.cost_weight, tuple(args.tau), args.gate_warmup, args.fixed_gates, args.cost_over,
                                args.mgt, tuple(args.mgt_ovrl), tuple(args.mgt_usage), args.detach_policy)  # fmt: skip
            branch_macs = gated_cost(model)["branches"]
            fixed = args.fixed_gates
            if fixed is not None and (len(fixed) != len(branch_macs) or any(v not in (0.0, 1.0) for v in fixed)):
                raise ValueError(f"--fixed-gates needs {len(branch_macs)} values of 0 or 1, one per branch; got {args.fixed_gates}")
        elif args.mgt or args.fixed_gates is not None:
            raise ValueError("--mgt and --fixed-gates need a gated model (e.g. --model gated-student)")
        objective = Objective(weights, kd_config(args), teacher, args.steps, gating, branch_macs, device.type if args.precision == "bf16" else None)
    except ValueError as e:
        raise Failure(e) from None

    c = cost(model)
    print(f"model {args.init or args.model}: {c}" + (f"; {ctx.world} processes on {device.type}" if ctx.world > 1 else ""))
    val = val_ood = tb = train_log = val_log = None
    if ctx.main:
        try:
            val = validation_set(args, sampler, model.config.stft.sample_rate)
            val_ood = validation_set(args, sampler, model.config.stft.sample_rate, args.val_ood) if args.val_ood else None
        except AudioError as e:
            raise Failure(e) from None
        try:
            for f in replaced:
                f.unlink()
            if replaced:
                if (out / "tb").is_dir() and not any((out / "tb").iterdir()):
                    (out / "tb").rmdir()
                print(f"--force: deleted the earlier run in {out} ({_names(out, replaced)})")
            out.mkdir(parents=True, exist_ok=True)
            (out / "args.json").write_text(json.dumps(vars(args), indent=2))
        except OSError as e:
            raise Failure(f"cannot write the run folder: {e}") from None
        for w in setting_warnings(args, weights):
            print(f"warning: {w}", file=sys.stderr)
        from torch.utils.tensorboard import SummaryWriter

        tb = SummaryWriter(str(out / "tb"))
        train_log = CsvLog(out / "train.csv", ["step", "time", "lr", "loss", *(f"loss_{k}" for k in objective.term_names), "sisdr", "grad_norm", "skipped",
                                                *(["usage"] if gated else []), "steps_per_s", "audio_s_per_s"])  # fmt: skip
        val_log = CsvLog(out / "val.csv", ["step", "time", "val_sisdr", "val_sisdri", "val_polarity", *(["val_usage"] if gated else []),
                                            *(["ood_sisdr", "ood_sisdri", "ood_polarity"] if val_ood else [])])  # fmt: skip
    net = model
    if ctx.world > 1:  # a gated model leaves the policy or a branch out of some steps' graphs
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=gated)

    def save(path):
        rng = {"cuda_rng": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {}
        checkpoint.save(
            path,
            model,
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(),
            step=step,
            best_val_sisdr=best,
            skipped=skipped,
            **({"moments_reset_at": reset_at} if reset_at is not None else {}),
            torch_rng=torch.get_rng_state(),
            **rng,
            train_args=vars(args),
            cost={"params": c.params, "macs_per_frame": c.macs_per_frame},
        )

    stop = {"now": False}

    def on_signal(signum, frame):
        stop["now"] = True

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    end = min(args.steps, args.stop_at or args.steps)
    feed = distributed.batches(sampler, step, end, args.batch, ctx, args.workers)
    fields = getattr(sampler, "fields", ("ovrl",))  # what a batch's arrays after (noisy, clean) are
    bar = tqdm(total=args.steps, initial=step, disable=args.no_progress or not ctx.main, dynamic_ncols=True, desc="train")
    t0, consecutive_bad, acc, stopping = time.time(), 0, {}, False
    busy, busy_steps = 0.0, 0  # seconds and steps of training since the last row of train.csv
    try:
        while step < end and not stopping:
            started = time.perf_counter()
            try:
                batch = [t.to(device) for t in next(feed)]
            except AudioError as e:
                raise Failure(e, 1) from None
            if ctx.world > 1:
                torch.manual_seed(distributed.step_seed(args.seed, step, ctx.rank))
            buffers = [b.clone() for b in model.buffers()]  # BatchNorm statistics, restored if this step goes bad
            optimizer.zero_grad(set_to_none=True)
            parts, bad = [], False
            for k, (noisy, clean, *extra) in enumerate(micro_batches(batch, args.accum)):
                with net.no_sync() if ctx.world > 1 and k < args.accum - 1 else contextlib.nullcontext():  # gradients meet at the last micro-batch
                    loss, terms, sisdr = objective(net, noisy, clean, step, **dict(zip(fields, extra)))
                    [bad] = distributed.any_of(ctx, not torch.isfinite(loss))
                    if bad:
                        break
                    (loss / args.accum if args.accum > 1 else loss).backward()
                parts.append({"loss": loss.item(), "sisdr": sisdr.item(), **{f"loss_{name}": t.item() for name, t in terms.items()}})
                if objective.usage is not None:
                    parts[-1]["usage"] = objective.usage
            if not bad:
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
                bad = not torch.isfinite(grad_norm)  # the gradients every process holds after they met: the same decision everywhere
            if bad:
                for b, saved in zip(model.buffers(), buffers):
                    b.copy_(saved)
                skipped += 1
                consecutive_bad += 1
                tqdm.write(f"step {step}: non-finite loss or gradient, update skipped ({skipped} so far)")
                if consecutive_bad >= 50:
                    raise Failure("50 consecutive non-finite steps; lower --lr or check the data", 1)
            else:
                consecutive_bad = 0
                optimizer.step()
                for key in parts[0]:
                    acc.setdefault(key, []).append(sum(p[key] for p in parts) / len(parts))  # mean over the micro-batches
                acc.setdefault("grad_norm", []).append(grad_norm.item())
            scheduler.step()
            step += 1
            busy += time.perf_counter() - started
            busy_steps += 1
            bar.update(1)
            if step % args.log_every == 0 and acc:
                row = dict(zip(acc, distributed.mean(ctx, [float(np.mean(v)) for v in acc.values()])))
                row.update(step=step, time=round(time.time() - t0, 1), lr=scheduler.get_last_lr()[0], skipped=skipped,
                           steps_per_s=round(busy_steps / busy, 4), audio_s_per_s=round(busy_steps * args.batch * args.seconds / busy, 2))  # fmt: skip
                busy, busy_steps, acc = 0.0, 0, {}
                if ctx.main:
                    train_log.write(row)
                    for k, v in row.items():
                        if k not in ("step", "time"):
                            tb.add_scalar(f"train/{k}", v, step)
                    bar.set_postfix(loss=f"{row['loss']:.4f}", sisdr=f"{row['sisdr']:.1f}dB", lr=f"{row['lr']:.1e}")
            if ctx.main and (step % args.val_every == 0 or step == args.steps):
                pattern = gating.forced(step / args.steps, len(model.branches)) if gated else None
                v = validate(model, val, objective.share, pattern)
                row = {"step": step, "time": round(time.time() - t0, 1), "val_sisdr": v.sisdr, "val_sisdri": v.sisdri, "val_polarity": v.polarity,
                       "val_usage": v.usage}  # fmt: skip
                if val_ood:
                    o = validate(model, val_ood, objective.share, pattern)
                    row.update(ood_sisdr=o.sisdr, ood_sisdri=o.sisdri, ood_polarity=o.polarity)
                    tb.add_scalar("ood/sisdr", o.sisdr, step)
                    tb.add_scalar("ood/polarity", o.polarity, step)
                    tqdm.write(f"step {step}: dev-ood SI-SDR {o.sisdr:.2f} dB ({o.sisdri:+.2f} dB over noisy)")
                val_log.write(row)
                tb.add_scalar("val/sisdr", v.sisdr, step)
                tb.add_scalar("val/sisdri", v.sisdri, step)
                tb.add_scalar("val/polarity", v.polarity, step)
                if v.usage is not None:
                    tb.add_scalar("val/usage", v.usage, step)
                tqdm.write(f"step {step}: validation SI-SDR {v.sisdr:.2f} dB ({v.sisdri:+.2f} dB over noisy), polarity {v.polarity:+.2f}"
                           + (f", usage {v.usage:.2f}" if v.usage is not None else ""))  # fmt: skip
                if v.polarity < 0:
                    tqdm.write(f"warning: step {step}: the output is inverted (it correlates at {v.polarity:+.2f} with the clean speech), so it is not "
                               f"kept as best.pt; SI-SDR cannot see the sign: train with snr or spec in --loss", file=sys.stderr)  # fmt: skip
                elif v.sisdr > best:
                    best = v.sisdr
                    save(out / "best.pt")
            if ctx.main and (step % args.ckpt_every == 0 or step == args.steps):
                save(last)
            [stopping] = distributed.any_of(ctx, stop["now"])  # every process stops after the same step
        bar.close()
        if ctx.main:
            save(last)
            tb.close()
    except checkpoint.CheckpointError as e:
        raise Failure(e, 1) from None
    finally:
        feed.close()
        for sig, handler in previous.items():  # callers (the KD ablation) must stay interruptible
            signal.signal(sig, handler)
    summary = f"best validation SI-SDR {best:.2f} dB" if best > -math.inf else "no best.pt yet (no validation of a non-inverted output)"
    if stopping:
        print(f"interrupted at step {step}; saved {last} (continue with --resume); {summary}")
        return 130
    if step < args.steps:
        print(f"stopped at step {step} of {args.steps} (--stop-at; continue with --resume); {summary}; checkpoints in {out}")
        return 0
    print(f"done: {step} steps, {summary}, checkpoints in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""MeCo: train a causal one-step MeanFlow corrector on top of a frozen student.

    python -m distill.meco train --student assets/checkpoints/student.pt --clean DIR --noise DIR --val-dir data/devset --out runs/meco

The student computes its estimate of every training batch on the fly (frozen, in eval mode); the
corrector learns to move that estimate onto clean speech in one network evaluation (see
:mod:`distill.meanflow`). Checkpoints are ``distill.checkpoint`` files of the corrector (its EMA
weights, which inference uses) that also carry the student they were trained on, so one file
rebuilds the two-stage enhancer; ``--resume`` continues a run exactly (the online weights,
optimiser, EMA and random state are in ``last.pt``). Logs go to ``train.csv``, ``val.csv`` and
TensorBoard (``tb/``); validation scores the student alone and student + corrector, with
eps = 0 and with seeded eps, in SI-SDR and polarity. ``python -m distill.enhance`` and
``python -m distill.evaluate`` take a corrector's checkpoint as they take a student's
(:func:`load_enhancer`): they run the two stages chained.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import signal
import sys
import time
from pathlib import Path

from distill import need_torch

need_torch("train", __name__)  # before torch is imported: a runtime-only install gets one line naming the extra

import numpy as np
import torch
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from distill import checkpoint, train
from distill.dsp import apply_mask, istft, predict_mask, stft
from distill.losses import correlation, si_sdr
from distill.meanflow import DSOConfig, dso_loss, from_flow, one_step, to_flow
from distill.models import build, config_from_dict, config_to_dict, cost, model_name
from distill.models.corrector import PREDICTS, SIZES, Corrector
from runtime.audio import AudioError
from runtime.noise import gaussian

NOISE_MODES = ("seeded", "zero")  # eps of the one-step inference: from a seeded generator, or none (z_1 = estimate)
DATA_KEYS = {  # options of distill.train's parser that MeCo training takes (data, augmentation, validation sets)
    "clean", "noise", "exclude", "include_held_out", "paired", "synthetic", "seconds", "snr", "level", "val_dir", "val_files", "val_ood",
    "no_augment", "rir", "rooms", "room_cache", "reverb", "noise_room", "early_ms", "full_reverb_target", "sources", "envelope", "low_noise",
    "eq", "band_limit", "clipping", "speech_highpass", "out",
}  # fmt: skip
Failure = train.Failure


class Chain(nn.Module):
    """Student, then corrector: the two-stage enhancer, offline over whole signals.

    Shape:
        forward: spec [B, T, F, 2] -> enhanced spectrum [B, T, F, 2]
        enhance: wav [B, L] -> [B, L]
    """

    returns = "spectrum"  # forward gives the enhanced spectrum itself, not a mask (export.verify reads this)

    def __init__(self, student: nn.Module, corrector: Corrector, noise: str = "seeded", seed: int = 0):
        super().__init__()
        if noise not in NOISE_MODES:
            raise ValueError(f"noise must be one of {NOISE_MODES}, got {noise!r}")
        if student.config.stft != corrector.config.stft:
            raise ValueError(f"the student's STFT {student.config.stft} differs from the corrector's {corrector.config.stft}")
        self.student, self.corrector, self.noise, self.seed = student, corrector, noise, seed
        self.config = student.config  # the signal contract (stft) of both stages

    def estimates(self, spec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The student's estimate (linear) and, compressed, the noisy input and that estimate.

        Shape: spec [B, T, F, 2] -> ([B, T, F, 2], ([B, T, F, 2], [B, T, F, 2]))
        """
        est = apply_mask(spec, predict_mask(self.student, spec))  # [B, T, F, 2]
        p = self.corrector.config.compress
        return est, (to_flow(spec, p), to_flow(est, p))

    def eps(self, like: torch.Tensor, noise: str | None = None) -> torch.Tensor | None:
        """eps of the one-step inference per ``noise`` (the chain's own mode when None): None for
        eps = 0, else every example the stream of ``runtime.noise.gaussian`` from ``seed``, the
        generator a bundle's runtime feeds its corrector with, so both see the same eps.

        Shape: like [B, T, F, 2] -> [B, T, F, 2]
        """
        if (noise or self.noise) != "seeded":
            return None
        B, T, F, _ = like.shape
        return torch.from_numpy(gaussian(self.seed, 0, T, F)).to(like).expand(B, T, F, 2)

    def correct(self, noisy_c: torch.Tensor, est_c: torch.Tensor, noise: str | None = None) -> torch.Tensor:
        """One-step correction of compressed estimates, back in the linear domain; eps per
        ``noise`` (see ``eps``), the same for every call.

        Shape: [B, T, F, 2] -> [B, T, F, 2]
        """
        return from_flow(one_step(self.corrector, est_c, noisy_c, self.eps(est_c, noise)), self.corrector.config.compress)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        _, (noisy_c, est_c) = self.estimates(spec)
        return self.correct(noisy_c, est_c)

    def enhance(self, wav: torch.Tensor) -> torch.Tensor:
        cfg = self.config.stft
        return istft(self(stft(wav, cfg)), cfg, wav.shape[-1])

    def frame_macs(self) -> int:
        """MACs per frame of both stages (what ``distill.models.cost`` reports for a chain)."""
        return cost(self.student).macs_per_frame + cost(self.corrector).macs_per_frame


def load_student(path: str | Path) -> nn.Module:
    """A frozen student from its checkpoint. Raises CheckpointError."""
    payload = checkpoint.read(path)
    if payload["model"]["name"] == "corrector":
        raise checkpoint.CheckpointError(f"{path}: a corrector's checkpoint; --student takes the student's own (e.g. assets/checkpoints/student.pt)")
    return checkpoint.load_model(path).requires_grad_(False)


def student_record(student: nn.Module, source: str) -> dict:
    """What a corrector's checkpoint keeps of its student: enough to rebuild it."""
    weights = {k: v.detach().cpu() for k, v in student.state_dict().items()}
    return {"model": {"name": model_name(student), "config": config_to_dict(student.config)}, "state_dict": weights, "source": source}


def student_from(record: dict, where: str) -> nn.Module:
    try:
        spec = record["model"]
        model = build(spec["name"], config_from_dict(spec["name"], spec["config"]))
        model.load_state_dict(record["state_dict"])
    except (TypeError, ValueError, RuntimeError, KeyError) as e:
        raise checkpoint.CheckpointError(f"{where}: its student does not rebuild ({str(e).splitlines()[0]})") from None
    return model.eval().requires_grad_(False)


def load_chain(path: str | Path, noise: str | None = None, seed: int | None = None) -> Chain:
    """Student and corrector from a corrector's checkpoint, in eval mode; ``noise`` and ``seed``
    default to those it was trained to use. Raises CheckpointError."""
    payload = checkpoint.read(path)
    if payload["model"]["name"] != "corrector":
        raise checkpoint.CheckpointError(f"{path}: a {payload['model']['name']} checkpoint, not a corrector's (python -m distill.meco train writes those)")
    if not isinstance(payload.get("student"), dict):
        raise checkpoint.CheckpointError(f"{path}: holds no student (a stripped copy?); use the checkpoint distill.meco train wrote")
    settings = payload.get("meco", {})
    try:
        return Chain(student_from(payload["student"], str(path)), checkpoint.load_model(path), noise or settings.get("noise", "seeded"),
                     settings.get("seed", 0) if seed is None else seed).eval()  # fmt: skip
    except ValueError as e:
        raise checkpoint.CheckpointError(f"{path}: {e}") from None


def set_noise(src: str | Path, dst: str | Path, noise: str, seed: int = 0) -> dict:
    """Copy a corrector's checkpoint (stripped of its training state) whose one-step inference
    uses ``noise`` ("seeded" from ``seed``, or "zero"): ``distill.evaluate`` and ``python -m
    export`` then score and export the chain with that eps. Raises CheckpointError."""
    if Path(dst).resolve() == Path(src).resolve():
        raise checkpoint.CheckpointError(f"{dst}: give a new file; the source is kept as it is")
    load_chain(src, noise, seed)
    settings = checkpoint.read(src).get("meco", {})
    return checkpoint.strip(src, dst, update={"meco": {**settings, "noise": noise, "seed": seed}})


def load_enhancer(path: str | Path) -> nn.Module:
    """A checkpoint's offline enhancer, in eval mode: its model, or for a corrector's checkpoint
    the student and the corrector chained. Raises CheckpointError."""
    if checkpoint.read(path)["model"]["name"] == "corrector":
        return load_chain(path)
    return checkpoint.load_model(path)


@torch.no_grad()
def validate(chain: Chain, val: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Means over the files: SI-SDR (dB) and polarity (correlation with the clean speech) of the
    noisy input, the student alone, and student + corrector with eps = 0 and with seeded eps."""
    cfg = chain.config.stft
    device = next(chain.corrector.parameters()).device
    scores: dict[str, list[float]] = {}
    for noisy, clean in val:
        n, c = torch.from_numpy(noisy)[None].to(device), torch.from_numpy(clean)[None].to(device)
        spec = stft(n, cfg)  # [1, T, F, 2]
        est, (noisy_c, est_c) = chain.estimates(spec)
        outputs = {"student": est, **{mode: chain.correct(noisy_c, est_c, mode) for mode in NOISE_MODES}}
        scores.setdefault("noisy_sisdr", []).append(si_sdr(n, c).item())
        for name, s in outputs.items():
            w = istft(s, cfg, n.shape[-1])  # [1, L]
            scores.setdefault(f"{name}_sisdr", []).append(si_sdr(w, c).item())
            scores.setdefault(f"{name}_polarity", []).append(correlation(w, c).item())
    return {k: float(np.mean(v)) for k, v in scores.items()}


VAL_FIELDS = ["noisy_sisdr", *(f"{n}_{m}" for n in ("student", *NOISE_MODES) for m in ("sisdr", "polarity"))]


# ----------------------------------------------------------------------------- command line


def _train_parser() -> argparse.ArgumentParser:
    p = train._Parser(prog="python -m distill.meco train", description="Train a MeanFlow corrector on top of a frozen student.",
                      formatter_class=train._Help, allow_abbrev=False,
                      epilog="Data, augmentation and validation-set options (--clean/--noise, --paired, --synthetic, --seconds, --snr, --level, "
                             "--val-dir, --val-files, --val-ood, --no-augment, --rir, ...) are those of python -m distill.train (see its --help).")  # fmt: skip
    g = p.add_argument_group("models")
    g.add_argument("--student", help="the frozen student's checkpoint (needed to start a run; a resumed run uses the one in last.pt)")
    g.add_argument("--size", choices=sorted(SIZES), default="s", help="corrector width: " + "; ".join(f"{k} {v['channels']}" for k, v in SIZES.items()))
    g.add_argument("--config", help='JSON object of corrector config fields overriding --size, e.g. \'{"rnn_layers": 2}\'')
    g.add_argument("--sigma-max", type=train.NON_NEGATIVE, default=0.487, help="path noise at the student end (t = 1)")
    g.add_argument("--t-eps", type=train.number(float, high=0.5), default=0.03, help="smallest t; the one-step inference jumps from 1 to it")
    g.add_argument("--predict", choices=PREDICTS, default="velocity",
                   help="the last layer gives u (velocity, MeCo's) or a correction d of the estimate with u = (z_t - estimate - d) / t (clean)")
    d = DSOConfig()
    g = p.add_argument_group("Data-Space Optimization (see docs/meco.md)")
    g.add_argument("--xr-weight", type=train.FRACTION, default=d.xr_weight, help="final weight of the x_r loss (0: none)")
    g.add_argument("--xr-ramp", type=train.FRACTION, default=d.xr_ramp, help="fraction of --steps over which the x_r weight rises from 0")
    g.add_argument("--cfm-only", type=train.FRACTION, default=d.cfm_only, help="fraction of --steps on flow matching alone")
    g.add_argument("--no-delta2", action="store_true", help="x_r loss on the velocity, not on Delta times it (no Delta^2 weighting)")
    g.add_argument("--xr-coef", type=train.NON_NEGATIVE, default=d.coef, help="c in u_tgt = v - c (t - r) JVP")
    g.add_argument("--jvp", choices=("fd", "exact"), default=d.jvp, help="JVP by central finite differences or by torch.func.jvp")
    g.add_argument("--jvp-step", type=train.POSITIVE, default=d.jvp_step, help="relative finite-difference step")
    g.add_argument("--jvp-clip", type=train.NON_NEGATIVE, default=d.jvp_clip, help="per-example L2 bound of the JVP (0: none)")
    g.add_argument("--gamma", type=train.POSITIVE, nargs=2, default=d.gamma, metavar=("START", "END"), help="r = t - U^gamma (t - t_eps), gamma annealed")
    g.add_argument("--gamma-ramp", type=train.FRACTION, default=d.gamma_ramp, help="fraction of --steps over which gamma anneals")
    g.add_argument("--r-equals-t", type=train.FRACTION, default=d.r_equals_t, help="probability of r = t in the x_r loss")
    g.add_argument("--endpoint", type=train.NON_NEGATIVE, default=d.endpoint, help="weight of the endpoint SI-SDR loss (0: none)")
    g.add_argument("--infer-noise", choices=NOISE_MODES, default="seeded",
                   help="eps of the one-step inference the checkpoint is used with (both are validated)")
    g.add_argument("--noise-seed", type=train.COUNT, default=0, help="seed of the inference's eps (--infer-noise seeded)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=train.POSITIVE_INT, default=20000, help="length of the schedules")
    g.add_argument("--stop-at", type=train.POSITIVE_INT, help="checkpoint and stop at this step, keeping the schedules of --steps")
    g.add_argument("--batch", type=train.POSITIVE_INT, default=8, help="mixtures per step")
    g.add_argument("--lr", type=train.POSITIVE, default=1e-3, help="peak learning rate (Adam)")
    g.add_argument("--warmup", type=train.COUNT, default=500, help="linear warm-up steps before cosine decay")
    g.add_argument("--final-lr", type=train.FRACTION, default=0.02, help="cosine decay ends at this fraction of --lr")
    g.add_argument("--clip", type=train.POSITIVE, default=1.0, help="gradient norm clip")
    g.add_argument("--ema", type=train.number(float, high=1.0, low_open=False), default=0.999,
                   help="decay of the weights' moving average (inference uses it)")
    g = p.add_argument_group("run")
    g.add_argument("--out", required=True, help="run folder (checkpoints, logs)")
    g.add_argument("--resume", action="store_true", help="continue the run in OUT from its last.pt (starts it when OUT holds none)")
    g.add_argument("--force", action="store_true", help="start over in an OUT that holds a run (its files are deleted)")
    g.add_argument("--seed", type=train.COUNT, default=0, help="seed of the initial weights, batches and path noise")
    g.add_argument("--threads", type=train.COUNT, default=0, help="torch threads (0: torch default)")
    g.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the student and corrector run")
    g.add_argument("--ckpt-every", type=train.POSITIVE_INT, default=250, help="steps between saves of last.pt")
    g.add_argument("--val-every", type=train.POSITIVE_INT, default=1000, help="steps between validations (and at the last step)")
    g.add_argument("--log-every", type=train.POSITIVE_INT, default=25, help="steps averaged into each row of train.csv")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (logs still written)")
    return p


def parse_train_args(argv) -> tuple[argparse.Namespace, argparse.Namespace]:
    """MeCo's options, and distill.train's namespace of the data options (the rest of ``argv``)."""
    p = _train_parser()
    args, rest = p.parse_known_args(argv)
    if args.resume and args.force:
        p.error("--resume continues the run in --out and --force starts it over: give one")
    if not args.student and not args.resume:
        p.error("--student CKPT is required: the frozen student whose estimates the corrector learns to correct")
    data = train.parse_args([*rest, "--out", args.out])
    defaults = train.parse_args(["--synthetic", "--out", args.out])
    foreign = sorted(k for k, v in vars(data).items() if k not in DATA_KEYS and v != getattr(defaults, k))
    if foreign:
        p.error(f"--{foreign[0].replace('_', '-')} is an option of distill.train that MeCo training does not take")
    return args, data


def dso_config(args) -> DSOConfig:
    return DSOConfig(xr_weight=args.xr_weight, xr_ramp=args.xr_ramp, cfm_only=args.cfm_only, delta2=not args.no_delta2, coef=args.xr_coef,
                     jvp=args.jvp, jvp_step=args.jvp_step, jvp_clip=args.jvp_clip, gamma=tuple(args.gamma), gamma_ramp=args.gamma_ramp,
                     r_equals_t=args.r_equals_t, endpoint=args.endpoint)  # fmt: skip


def corrector_config(args, student: nn.Module):
    """The corrector's config: --size, then --sigma-max/--t-eps, then --config; the student's STFT."""
    overrides = train.model_overrides("corrector", args.config)
    if "stft" in overrides:
        raise ValueError("--config: the corrector takes the student's STFT; leave stft out")
    fields = {**SIZES[args.size], "sigma_max": args.sigma_max, "t_eps": args.t_eps, "predict": args.predict, **overrides, "stft": dataclasses.asdict(student.config.stft)}
    return config_from_dict("corrector", fields)


def fit(args, data) -> int:
    out, last = Path(args.out), Path(args.out) / "last.pt"
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise Failure("--device cuda: no CUDA device is available to torch")
    device = torch.device(args.device)
    try:  # nothing is written to --out before every input has been checked
        replaced = train.check_out(out, args)
        dso = dso_config(args)
    except (ValueError, OSError) as e:
        raise Failure(e) from None
    state = None
    if args.resume and last.exists():
        try:
            state = checkpoint.read(last)
        except checkpoint.CheckpointError as e:
            raise Failure(e) from None
        if "online" not in state or "student" not in state:
            raise Failure(f"{last} holds no MeCo training state to resume (a stripped checkpoint, or another kind of run)")
    try:
        if state is not None:
            student = student_from(state["student"], str(last))
            if args.student and not _same_weights(student, load_student(args.student)):
                raise Failure(f"--student {args.student} is not the student {last} was trained on ({state['student']['source']}); "
                              "leave --student out to resume")
            source = state["student"]["source"]
        elif not args.student:
            raise Failure(f"--student CKPT is required: {out} holds no last.pt to resume")
        else:
            student, source = load_student(args.student), args.student
    except checkpoint.CheckpointError as e:
        raise Failure(e) from None
    torch.manual_seed(args.seed)  # before the corrector is built: its initial weights come from this seed
    if state is not None:
        model = build("corrector", config_from_dict("corrector", state["model"]["config"]))
        model.load_state_dict(state["online"])
    else:
        try:
            model = build("corrector", corrector_config(args, student))
        except (TypeError, ValueError) as e:
            raise Failure(f"cannot build the corrector: {e}") from None
    student.to(device)
    model.train().to(device)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(args.ema))
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    # A compact resume state (distill.checkpoint compact) has no optimiser moments: as in distill.train,
    # fresh ones start at that step under a short re-warm-up.
    reset_at = train.moments_reset_at(state)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: train.lr_factor(s, args) * train.rewarm_factor(s, reset_at))
    step, best, skipped = 0, -math.inf, 0
    if state is not None:
        scheduler.load_state_dict(state["scheduler"])
        ema.module.load_state_dict(state["state_dict"])
        ema.n_averaged.fill_(state["ema_updates"])
        step, best, skipped = state["step"], state["best_val_sisdr"], state["skipped"]
        if "optimizer" in state:
            optimizer.load_state_dict(state["optimizer"])
        else:
            train.fresh_moments(optimizer, scheduler, step, args, reset_at, last)
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        print(f"resuming {last} at step {step}")
    try:
        sampler = train.make_sampler(data, args.seed)
        val = train.validation_set(data, sampler, student.config.stft.sample_rate)
        val_ood = train.validation_set(data, sampler, student.config.stft.sample_rate, data.val_ood) if data.val_ood else None
    except (AudioError, ValueError, OSError) as e:
        raise Failure(e) from None
    c, sc = cost(model), cost(student)
    print(f"student {source}: {sc}")
    print(f"corrector: {c}; both stages {(c.macs_per_frame + sc.macs_per_frame) / 1e3:.1f} k MACs/frame")
    try:
        for f in replaced:
            f.unlink()
        out.mkdir(parents=True, exist_ok=True)
        (out / "args.json").write_text(json.dumps({**vars(data), **vars(args)}, indent=2))
    except OSError as e:
        raise Failure(f"cannot write the run folder: {e}") from None
    from torch.utils.tensorboard import SummaryWriter

    tb = SummaryWriter(str(out / "tb"))
    train_log = train.CsvLog(out / "train.csv", ["step", "time", "lr", "loss", "loss_cfm", "loss_xr", "loss_end", "xr_weight", "gamma", "grad_norm",
                                                 "skipped", "steps_per_s"])  # fmt: skip
    sets = {"val": val, **({"ood": val_ood} if val_ood else {})}
    val_log = train.CsvLog(out / "val.csv", ["step", "time", *(f"{s}_{k}" for s in sets for k in VAL_FIELDS)])
    record = student_record(student, source)
    settings = {"dso": dataclasses.asdict(dso), "noise": args.infer_noise, "seed": args.noise_seed}
    chain = Chain(student, ema.module, args.infer_noise, args.noise_seed)
    train_args = {**vars(data), **vars(args)}

    def save(path):
        rng = {"cuda_rng": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {}
        checkpoint.save(path, ema.module, online=model.state_dict(), ema_updates=int(ema.n_averaged.item()), optimizer=optimizer.state_dict(),
                        scheduler=scheduler.state_dict(), step=step, best_val_sisdr=best, skipped=skipped, torch_rng=torch.get_rng_state(), **rng,
                        train_args=train_args, cost={"params": c.params, "macs_per_frame": c.macs_per_frame}, student=record, meco=settings,
                        **({"moments_reset_at": reset_at} if reset_at is not None else {}))  # fmt: skip

    stop = {"now": False}
    previous = {sig: signal.signal(sig, lambda *_: stop.update(now=True)) for sig in (signal.SIGTERM, signal.SIGINT)}
    end = min(args.steps, args.stop_at or args.steps)
    bar = tqdm(total=args.steps, initial=step, disable=args.no_progress, dynamic_ncols=True, desc="meco")
    t0, acc, busy, busy_steps = time.time(), {}, 0.0, 0
    cfg = student.config.stft
    try:
        while step < end and not stop["now"]:
            started = time.perf_counter()
            try:
                noisy, clean = (torch.from_numpy(b).to(device) for b in sampler.batch(step, args.batch)[:2])
            except AudioError as e:
                raise Failure(e, 1) from None
            progress = step / args.steps
            with torch.no_grad():
                _, (noisy_c, est_c) = chain.estimates(stft(noisy, cfg))
                x = to_flow(stft(clean, cfg), model.config.compress)
            loss, terms = dso_loss(model, x, est_c, noisy_c, clean, progress, dso)
            optimizer.zero_grad(set_to_none=True)
            bad = not torch.isfinite(loss)
            if not bad:
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
                bad = not torch.isfinite(grad_norm)
            if bad:
                skipped += 1
                tqdm.write(f"step {step}: non-finite loss or gradient, update skipped ({skipped} so far)")
            else:
                optimizer.step()
                ema.update_parameters(model)
                row = {"loss": loss.item(), "grad_norm": grad_norm.item(), **{f"loss_{k}": v.item() for k, v in terms.items()}}
                for k, v in row.items():
                    acc.setdefault(k, []).append(v)
            scheduler.step()
            step += 1
            busy, busy_steps = busy + time.perf_counter() - started, busy_steps + 1
            bar.update(1)
            if step % args.log_every == 0 and acc:
                row = {k: float(np.mean(v)) for k, v in acc.items()}
                row.update(step=step, time=round(time.time() - t0, 1), lr=scheduler.get_last_lr()[0], xr_weight=dso.w(progress),
                           gamma=dso.gamma_at(progress), skipped=skipped, steps_per_s=round(busy_steps / busy, 4))  # fmt: skip
                acc, busy, busy_steps = {}, 0.0, 0
                train_log.write(row)
                for k, v in row.items():
                    if k not in ("step", "time"):
                        tb.add_scalar(f"train/{k}", v, step)
                bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{row['lr']:.1e}")
            if step % args.val_every == 0 or step == args.steps:
                row = {"step": step, "time": round(time.time() - t0, 1)}
                for name, files in sets.items():
                    scores = validate(chain, files)
                    row.update({f"{name}_{k}": v for k, v in scores.items()})
                    for k, v in scores.items():
                        tb.add_scalar(f"{name}/{k}", v, step)
                val_log.write(row)
                tqdm.write(f"step {step}: SI-SDR noisy {row['val_noisy_sisdr']:.2f} dB, student {row['val_student_sisdr']:.2f} dB "
                           f"(polarity {row['val_student_polarity']:+.2f}), + corrector eps=0 {row['val_zero_sisdr']:.2f} dB "
                           f"({row['val_zero_polarity']:+.2f}), seeded eps {row['val_seeded_sisdr']:.2f} dB ({row['val_seeded_polarity']:+.2f})")  # fmt: skip
                score, polarity = row[f"val_{args.infer_noise}_sisdr"], row[f"val_{args.infer_noise}_polarity"]
                if polarity > 0 and score > best:
                    best = score
                    save(out / "best.pt")
            if step % args.ckpt_every == 0 or step == args.steps:
                save(last)
        bar.close()
        save(last)
        tb.close()
    except checkpoint.CheckpointError as e:
        raise Failure(e, 1) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    summary = f"best validation SI-SDR (student + corrector, {args.infer_noise} eps) {best:.2f} dB" if best > -math.inf else "no best.pt yet"
    if stop["now"]:
        print(f"interrupted at step {step}; saved {last} (continue with --resume); {summary}")
        return 130
    if step < args.steps:
        print(f"stopped at step {step} of {args.steps} (--stop-at; continue with --resume); {summary}")
        return 0
    print(f"done: {step} steps, {summary}, checkpoints in {out}")
    return 0


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


def _noise_command(argv) -> int:
    p = argparse.ArgumentParser(prog="python -m distill.meco noise", description="Copy a corrector's checkpoint whose one-step inference uses another eps: to evaluate or export "
                                "the chain with eps = 0 and with seeded eps (docs/meco.md).")
    p.add_argument("src", type=Path, help="a corrector's checkpoint (best.pt of distill.meco train)")
    p.add_argument("dst", type=Path, help="the copy to write (without training state)")
    p.add_argument("--infer-noise", choices=NOISE_MODES, required=True, help="eps of the copy's one-step inference")
    p.add_argument("--noise-seed", type=train.COUNT, default=0, help="seed of the eps generator (--infer-noise seeded)")
    args = p.parse_args(argv)
    try:
        set_noise(args.src, args.dst, args.infer_noise, args.noise_seed)
    except checkpoint.CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.dst}: the chain of {args.src} with {args.infer_noise} eps" + (f" (seed {args.noise_seed})" if args.infer_noise == "seeded" else ""))
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"train": "train a corrector on top of a frozen student",
                "noise": "copy a corrector's checkpoint to run its one-step inference with another eps (seeded or zero)"}
    if not argv or argv[0] not in commands:
        if argv and argv[0] in ("-h", "--help"):
            print(__doc__.split("\n\n")[0] + "\n\ncommands:\n" + "\n".join(f"  {k:8} {v}" for k, v in commands.items()))
            return 0
        print(f"error: give a command: {' or '.join(commands)} (python -m distill.meco COMMAND --help)", file=sys.stderr)
        return 2
    if argv[0] == "noise":
        return _noise_command(argv[1:])
    args, data = parse_train_args(argv[1:])
    try:
        return fit(args, data)
    except Failure as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code


if __name__ == "__main__":
    sys.exit(main())

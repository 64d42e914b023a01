"""ROSE-CD: a score-based (diffusion) teacher made one-step by consistency distillation.

    python -m distill.rosecd teacher --clean DIR --noise DIR --val-dir data/devset --out runs/score
    python -m distill.rosecd distill --teacher runs/score/best.pt --clean DIR --noise DIR --val-dir data/devset --out runs/rosecd
    python -m distill.rosecd ct --init runs/score/best.pt --clean DIR --noise DIR --val-dir data/devset --out runs/ct
    python -m distill.rosecd evaluate --set dev=data/devset --system teacher=runs/score/best.pt@30 --system rosecd=runs/rosecd/best.pt

``teacher`` trains the U-Net of :mod:`distill.models.score_unet` by denoising score matching on the
OUVE SDE; it enhances with the N-step predictor-corrector sampler. ``distill`` trains a one-step
student, initialised from the teacher, to agree with an EMA copy of itself one step further along
the teacher's randomized trajectory (``--deterministic``: the teacher's deterministic step, plain
CD), plus time-domain PESQ and SI-SDR terms on its one-step estimate. ``ct`` is consistency
training: the same without a teacher. ``evaluate`` scores checkpoints and sampler settings side by
side on rendered sets (PESQ, ESTOI, SI-SDR, DNSMOS) with their cost and wall time.

Every command logs ``train.csv``/``val.csv`` and TensorBoard (``tb/``), saves ``last.pt`` (every
``--ckpt-every`` steps and on Ctrl-C) and ``best.pt`` (best validation SI-SDR of a non-inverted
output), and continues exactly with ``--resume``: each step's batch and noise are functions of
``(seed, step)``. The saved model is the EMA of the weights (for a student: its target network).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
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
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from distill import checkpoint, evaluate, sde as sdes, train
from distill.augment import NONE, AugmentConfig
from distill.data import AudioFolder, MixConfig, MixtureSampler, PairedSampler, SyntheticSampler
from distill.distributed import step_seed
from distill.losses import correlation, si_sdr, si_sdr_loss
from distill.models import build, config_from_dict, cost
from distill.models.score_unet import ScoreUNet
from distill.train import (COUNT, FRACTION, NON_NEGATIVE, POSITIVE, POSITIVE_INT, CsvLog, Failure, Scores, _Help, _Parser, check_out, excluded,
                           model_overrides, number, validation_set)  # fmt: skip
from runtime.audio import AudioError

PAPER_PESQ_WEIGHT = 5e-4  # ROSE-CD's weight of the PESQ term


def _common(p: argparse.ArgumentParser, lr: float) -> None:
    g = p.add_argument_group("data (one source)")
    g.add_argument("--clean", help="folder of clean speech (or its index)")
    g.add_argument("--noise", help="folder of noise recordings (or its index)")
    g.add_argument("--paired", nargs=2, metavar=("NOISY", "CLEAN"), help="paired noisy/clean folders instead of mixing")
    g.add_argument("--synthetic", action="store_true", help="procedural speech-like data (smoke tests)")
    g.add_argument("--exclude", action="append", default=[], help="text file of file names to leave out; repeatable (the shipped splits are left out anyway)")
    g.add_argument("--include-held-out", action="store_true", help="train on the files of the shipped dev and dev-ood splits too")
    g.add_argument("--no-augment", action="store_true", help="plain mixtures; otherwise distill.train's augmentation without rooms")
    g.add_argument("--seconds", type=POSITIVE, default=2.0, help="segment length")
    g.add_argument("--snr", type=float, nargs=2, default=(-5.0, 20.0), metavar=("LO", "HI"), help="speech-to-noise ratio range, dB")
    g.add_argument("--level", type=float, nargs=2, default=(-35.0, -15.0), metavar=("LO", "HI"), help="mixture RMS range, dBFS")
    g.add_argument("--val-dir", help="folder with noisy/ and clean/ (a rendered dev set) for validation")
    g.add_argument("--val-files", type=POSITIVE_INT, default=8, help="validation files taken evenly from --val-dir")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=POSITIVE_INT, default=100000, help="training steps")
    g.add_argument("--stop-at", type=POSITIVE_INT, help="checkpoint and stop at this step (continue later with --resume)")
    g.add_argument("--batch", type=POSITIVE_INT, default=8, help="segments per step")
    g.add_argument("--lr", type=POSITIVE, default=lr, help="Adam learning rate (constant after the warm-up)")
    g.add_argument("--warmup", type=COUNT, default=100, help="linear learning-rate warm-up steps")
    g.add_argument("--clip", type=POSITIVE, default=5.0, help="gradient norm clip")
    g.add_argument("--ema", type=FRACTION, default=0.999, help="decay of the weights' EMA, which is the saved model (and a student's target network)")
    g = p.add_argument_group("run")
    g.add_argument("--out", required=True, help="run folder (checkpoints, logs)")
    g.add_argument("--resume", action="store_true", help="continue the run in OUT from its last.pt (starts it when OUT holds none)")
    g.add_argument("--force", action="store_true", help="start over in an OUT that holds a run (its checkpoints and logs are deleted)")
    g.add_argument("--seed", type=COUNT, default=0, help="seed of the initial weights, every batch and every noise draw")
    g.add_argument("--threads", type=COUNT, default=0, help="torch threads (0: torch default)")
    g.add_argument("--ckpt-every", type=POSITIVE_INT, default=250, help="steps between saves of last.pt")
    g.add_argument("--val-every", type=POSITIVE_INT, default=1000, help="steps between validations (and at the last step)")
    g.add_argument("--log-every", type=POSITIVE_INT, default=25, help="steps averaged into each row of train.csv")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (logs still written)")


def _consistency(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("consistency")
    g.add_argument("--grid", type=number(int, low=2, low_open=False), default=30, help="times on the grid from T to t_eps; neighbours are compared")
    g.add_argument("--c-in", choices=("1", "edm"), default="1", help="the student's input scaling (ROSE-CD: none)")
    g.add_argument("--consistency-weight", type=NON_NEGATIVE, default=1.0, help="weight of |D(x_t, t) - D_target(x_t', t')|^2")
    g.add_argument("--pesq-weight", type=NON_NEGATIVE,
                   help=f"weight of the PESQ term on the one-step estimate (torch-pesq; default {PAPER_PESQ_WEIGHT:g} where it is installed, else off)")  # fmt: skip
    g.add_argument("--sisdr-weight", type=NON_NEGATIVE, default=5e-5, help="weight of the negative SI-SDR (dB) of the one-step estimate")


def parse_args(argv=None) -> argparse.Namespace:
    p = _Parser(prog="python -m distill.rosecd", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    t = sub.add_parser("teacher", help="train a score-based teacher (denoising score matching)", formatter_class=_Help)
    g = t.add_argument_group("model")
    g.add_argument("--config", help='JSON object of score_unet config fields, e.g. \'{"channels": [16, 32, 64]}\'')
    g.add_argument("--val-steps", type=POSITIVE_INT, help="predictor-corrector steps at validation (default: the model's, 30)")
    _common(t, 1e-4)
    d = sub.add_parser("distill", help="consistency distillation of a one-step student from a teacher (ROSE-CD)", formatter_class=_Help)
    d.add_argument("--teacher", required=True, help="score teacher checkpoint (from the teacher command); the student starts from its weights")
    d.add_argument("--deterministic", action="store_true", help="the teacher's deterministic step (plain CD) instead of the randomized one")
    _consistency(d)
    _common(d, 1e-4)
    c = sub.add_parser("ct", help="consistency training of a one-step model without a teacher", formatter_class=_Help)
    c.add_argument("--init", help="start from this score checkpoint's weights (else from --config)")
    c.add_argument("--config", help="JSON object of score_unet config fields (without --init)")
    _consistency(c)
    _common(c, 1e-4)
    e = sub.add_parser("evaluate", help="score checkpoints and sampler settings side by side, with cost and wall time", formatter_class=_Help)
    e.add_argument("--set", action="append", dest="sets", default=[], required=True, metavar="NAME=DIR", help="rendered set (noisy/, clean/); repeatable")
    e.add_argument("--system", action="append", default=[], required=True, metavar="NAME=CKPT[@STEPS|@one-step]",
                   help="a checkpoint with its own sampler, or a score model with N predictor-corrector steps or one step; repeatable")  # fmt: skip
    e.add_argument("--limit", type=POSITIVE_INT, help="N files of each set, spread evenly over it")
    e.add_argument("--no-dnsmos", action="store_true")
    e.add_argument("--threads", type=COUNT, default=0, help="torch threads (0: torch default)")
    e.add_argument("--json", type=Path, help="write every result here")
    args = p.parse_args(argv)
    if args.cmd != "evaluate":
        sources = sum([bool(args.clean or args.noise), bool(args.paired), args.synthetic])
        if sources != 1:
            p.error("give exactly one data source: --clean DIR --noise DIR, --paired NOISY CLEAN, or --synthetic")
        if bool(args.clean) != bool(args.noise):
            p.error("--clean and --noise go together")
        if args.cmd == "ct" and args.init and args.config:
            p.error("--init takes the model from the checkpoint; leave out --config")
    return args


def make_sampler(args):
    cfg = MixConfig(seconds=args.seconds, snr_db=tuple(args.snr), level_db=tuple(args.level))
    if args.synthetic:
        return SyntheticSampler(cfg, args.seed)
    if args.paired:
        return PairedSampler(*args.paired, cfg, args.seed)
    exclude = excluded(args)
    augment = NONE if args.no_augment else AugmentConfig(reverb=0.0)
    clean, noise = (AudioFolder(d, cfg.min_seconds, exclude) for d in (args.clean, args.noise))
    return MixtureSampler(clean, noise, cfg, args.seed, augment)


def pesq_term(weight: float | None):
    """torch-pesq's PESQ loss, or None when ``weight`` is 0 (or left unset without torch-pesq)."""
    if weight == 0:
        return None
    try:
        from torch_pesq import PesqLoss
    except Exception as e:  # ImportError, or the OSError of a torchaudio built for another torch
        if weight is None:
            print(f"warning: torch-pesq cannot be imported ({type(e).__name__}), so the PESQ term is off; pass --pesq-weight 0 to say so", file=sys.stderr)
            return None
        raise Failure(f"--pesq-weight {weight:g} needs torch-pesq, which cannot be imported here ({type(e).__name__}: {str(e).splitlines()[0]}); "
                      "install it (pip install torch-pesq, with a torchaudio that loads with this torch) or pass --pesq-weight 0") from None  # fmt: skip
    return PesqLoss(1.0, sample_rate=16000).eval().requires_grad_(False)


def load_score_model(path: str, flag: str) -> ScoreUNet:
    try:
        model = checkpoint.load_model(path)
    except checkpoint.CheckpointError as e:
        raise Failure(f"{flag}: {e}") from None
    if not isinstance(model, ScoreUNet):
        name = checkpoint.read(path)["model"]["name"]
        raise Failure(f"{flag} {path}: a {name} model, not a score model (train one with python -m distill.rosecd teacher)")
    return model


def prepare(model: ScoreUNet, noisy: torch.Tensor, clean: torch.Tensor):
    """Each mixture scaled to a noisy peak of one (as at enhancement), then transformed.

    Shape: noisy, clean [B, L] -> x0, y [B, T, F, 2] and the scaled clean [B, L]
    """
    peak = noisy.abs().amax(-1, keepdim=True).clamp_min(1e-8)  # [B, 1]
    return model.to_spec(clean / peak), model.to_spec(noisy / peak), clean / peak


class Objective:
    """One command's loss of a batch, as named terms."""

    def __init__(self, args, online: ScoreUNet, target: AveragedModel, teacher: ScoreUNet | None):
        self.args, self.online, self.target, self.teacher = args, online, target, teacher
        self.mode = None if args.cmd == "teacher" else "ct" if args.cmd == "ct" else "cd" if args.deterministic else "rosecd"
        self.pesq = None if self.mode is None else pesq_term(args.pesq_weight)
        if self.mode is not None and args.pesq_weight is None:
            args.pesq_weight = PAPER_PESQ_WEIGHT if self.pesq is not None else 0.0  # the weight in effect, as args.json records it

    def __call__(self, noisy: torch.Tensor, clean: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        m, sde = self.online, self.online.config.sde
        x0, y, ref = prepare(m, noisy, clean)
        if self.mode is None:
            return {"dsm": sdes.dsm_loss(m, x0, y, sde, m.config.sigma_data, generator)}
        a = self.args
        pair = sdes.consistency_pair(x0, y, sde, a.grid, self.mode, self.teacher, generator)
        est = m(pair.x_t, y, pair.t)  # [B, T, F, 2]
        with torch.no_grad():
            goal = self.target(pair.x_next, y, pair.t_next)
        terms = {"consistency": a.consistency_weight * sdes.bin_error(est, goal).mean()}
        if a.sisdr_weight or self.pesq is not None:
            wav = m.to_wave(est, ref.shape[-1])  # [B, L]
            if a.sisdr_weight:
                terms["sisdr"] = a.sisdr_weight * si_sdr_loss(wav, ref)
            if self.pesq is not None:
                terms["pesq"] = a.pesq_weight * self.pesq(ref, wav).mean()
        return terms


@torch.no_grad()
def validate(model: ScoreUNet, val, steps: int | None = None) -> Scores:
    """SI-SDR of the enhanced validation signals, its gain over the input, and the output's polarity."""
    out, gain, polarity = [], [], []
    for noisy, clean in val:
        n, c = torch.from_numpy(noisy)[None], torch.from_numpy(clean)[None]
        est = model.enhance(n, steps=steps)
        s = si_sdr(est, c).item()
        out.append(s)
        gain.append(s - si_sdr(n, c).item())
        polarity.append(correlation(est, c).item())
    return Scores(float(np.mean(out)), float(np.mean(gain)), float(np.mean(polarity)), None)


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 over a model's tensors by name: what a student was distilled from, unchanged when its
    checkpoint file is compacted or copied."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def build_models(args, state: dict | None) -> tuple[ScoreUNet, ScoreUNet | None]:
    """The model to train and, for ``distill``, the frozen teacher."""
    teacher = None
    if args.cmd == "distill":
        teacher = load_score_model(args.teacher, "--teacher").requires_grad_(False)
    if state is not None:
        spec = state["model"]
        model = build(spec["name"], config_from_dict(spec["name"], spec["config"]))
        model.load_state_dict(state["online"])
        return model.train(), teacher
    init = teacher if args.cmd == "distill" else load_score_model(args.init, "--init") if args.cmd == "ct" and args.init else None
    if init is None:
        try:
            model = build("score_unet", config_from_dict("score_unet", model_overrides("score_unet", args.config)))
        except (TypeError, ValueError) as e:
            raise Failure(f"--config: {e}") from None
    else:
        model = build("score_unet", init.config)
        model.load_state_dict(init.state_dict())
    if args.cmd != "teacher":
        model = _with_config(model, c_in=args.c_in, sampler="one-step")
    return model.train(), teacher


def _with_config(model: ScoreUNet, **changes) -> ScoreUNet:
    out = ScoreUNet(dataclasses.replace(model.config, **changes))
    out.load_state_dict(model.state_dict())
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        return run_evaluate(args) if args.cmd == "evaluate" else fit(args)
    except Failure as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code


def fit(args) -> int:
    out = Path(args.out)
    last = out / "last.pt"
    try:
        replaced = check_out(out, args)
        sampler = make_sampler(args)
    except (AudioError, ValueError, OSError) as e:
        raise Failure(e) from None
    torch.manual_seed(args.seed)  # the initial weights of a model built from --config
    state = None
    if args.resume and last.exists():
        try:
            state = checkpoint.read(last)
        except checkpoint.CheckpointError as e:
            raise Failure(e) from None
        if "online" not in state or state.get("train_args", {}).get("cmd") != args.cmd:
            raise Failure(f"{last} is not a resume state of python -m distill.rosecd {args.cmd}")
    online, teacher = build_models(args, state)
    digest = weights_digest(teacher) if teacher is not None else None  # once: the teacher is frozen
    if (state or {}).get("teacher_digest") not in (None, digest):
        raise Failure(f"{last} was distilled from other teacher weights than {args.teacher}'s "
                      f"(the teacher has trained on since?); resume it with that teacher, "
                      f"or start it again with --force instead of --resume")
    target = AveragedModel(online, multi_avg_fn=get_ema_multi_avg_fn(args.ema))
    target.requires_grad_(False)
    optimizer = torch.optim.Adam(online.parameters(), lr=args.lr)
    step, best = 0, -math.inf
    # A compact resume state (distill.checkpoint compact) has no optimiser moments: as in distill.train,
    # fresh ones start at that step under a short re-warm-up.
    reset_at = train.moments_reset_at(state)
    if state is None:
        target.update_parameters(online)  # the EMA starts at the initial weights (the teacher's, for a student)
    else:
        target.module.load_state_dict(state["state_dict"])
        target.n_averaged.fill_(state["ema_count"])
        step, best = state["step"], state["best_val_sisdr"]
        if "optimizer" in state:
            optimizer.load_state_dict(state["optimizer"])
        else:
            print(f"{last} holds no optimiser moments: fresh ones from step {step}, learning rate re-warmed over {train.REWARM} steps")
        print(f"resuming {last} at step {step}")
    objective = Objective(args, online, target, teacher)
    c = cost(online)
    print(f"{args.cmd}: {c} per network evaluation; enhancement takes {online.config.nfe} evaluation(s) ({online.config.sampler})")
    if teacher is not None:
        print(f"teacher {args.teacher}: {teacher.config.nfe} evaluations per enhancement; 2 per distillation step (Heun)")
    try:
        val = validation_set(args, sampler, online.config.stft.sample_rate)
    except AudioError as e:
        raise Failure(e) from None
    try:
        for f in replaced:
            f.unlink()
        out.mkdir(parents=True, exist_ok=True)
        (out / "args.json").write_text(json.dumps(vars(args), indent=2))
    except OSError as e:
        raise Failure(f"cannot write the run folder: {e}") from None
    from torch.utils.tensorboard import SummaryWriter

    tb = SummaryWriter(str(out / "tb"))
    names = ["dsm"] if objective.mode is None else ["consistency", "sisdr", "pesq"]
    train_log = CsvLog(out / "train.csv", ["step", "time", "lr", "loss", *(f"loss_{k}" for k in names), "grad_norm", "steps_per_s"])
    val_log = CsvLog(out / "val.csv", ["step", "time", "val_sisdr", "val_sisdri", "val_polarity"])

    def save(path: Path) -> None:
        checkpoint.save(path, target.module, online=online.state_dict(), ema_count=int(target.n_averaged), optimizer=optimizer.state_dict(),
                        step=step, best_val_sisdr=best, train_args=vars(args), cost={"params": c.params, "macs_per_frame": c.macs_per_frame},
                        **({"moments_reset_at": reset_at} if reset_at is not None else {}),
                        **({"teacher_digest": digest} if digest is not None else {}))  # fmt: skip

    stop = {"now": False}

    def on_signal(signum, frame):
        stop["now"] = True

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    end = min(args.steps, args.stop_at or args.steps)
    bar = tqdm(total=args.steps, initial=step, disable=args.no_progress, dynamic_ncols=True, desc=args.cmd)
    t0, acc, busy, busy_steps = time.time(), {}, 0.0, 0
    try:
        while step < end and not stop["now"]:
            started = time.perf_counter()
            noisy, clean = (torch.from_numpy(a) for a in sampler.batch(step, args.batch))
            generator = torch.Generator().manual_seed(step_seed(args.seed, step, 0))
            for group in optimizer.param_groups:
                group["lr"] = args.lr * min(1.0, (step + 1) / max(1, args.warmup)) * train.rewarm_factor(step, reset_at)
            terms = objective(noisy, clean, generator)
            loss = sum(terms.values())  # scalar
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(online.parameters(), args.clip)
            if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
                raise Failure(f"step {step}: non-finite loss or gradient; lower --lr", 1)
            optimizer.step()
            target.update_parameters(online)
            step += 1
            busy += time.perf_counter() - started
            busy_steps += 1
            for k, v in {"loss": loss, **{f"loss_{k}": v for k, v in terms.items()}, "grad_norm": grad_norm}.items():
                acc.setdefault(k, []).append(v.item())
            bar.update(1)
            if step % args.log_every == 0:
                row = {k: float(np.mean(v)) for k, v in acc.items()}
                row.update(step=step, time=round(time.time() - t0, 1), lr=optimizer.param_groups[0]["lr"],
                           steps_per_s=round(busy_steps / busy, 4))
                acc, busy, busy_steps = {}, 0.0, 0
                train_log.write(row)
                for k, v in row.items():
                    if k not in ("step", "time"):
                        tb.add_scalar(f"train/{k}", v, step)
                bar.set_postfix(loss=f"{row['loss']:.4g}")
            if step % args.val_every == 0 or step == args.steps:
                v = validate(target.module.eval(), val, getattr(args, "val_steps", None))
                val_log.write({"step": step, "time": round(time.time() - t0, 1), "val_sisdr": v.sisdr, "val_sisdri": v.sisdri,
                               "val_polarity": v.polarity})
                for k in ("sisdr", "sisdri", "polarity"):
                    tb.add_scalar(f"val/{k}", getattr(v, k), step)
                tqdm.write(f"step {step}: validation SI-SDR {v.sisdr:.2f} dB ({v.sisdri:+.2f} dB over noisy), polarity {v.polarity:+.2f}")
                if v.polarity >= 0 and v.sisdr > best:
                    best = v.sisdr
                    save(out / "best.pt")
            if step % args.ckpt_every == 0:
                save(last)
        bar.close()
        save(last)
        tb.close()
    except checkpoint.CheckpointError as e:
        raise Failure(e, 1) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    summary = f"best validation SI-SDR {best:.2f} dB" if best > -math.inf else "no best.pt yet"
    if stop["now"]:
        print(f"interrupted at step {step}; saved {last} (continue with --resume); {summary}")
        return 130
    print(f"{'done' if step >= args.steps else 'stopped'}: step {step} of {args.steps}, {summary}, checkpoints in {out}")
    return 0


def parse_system(text: str) -> tuple[str, Path, str | None, int | None]:
    """``NAME=CKPT[@STEPS|@one-step]`` -> (name, checkpoint, sampler or None, steps or None)."""
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise Failure(f"--system takes NAME=CKPT[@STEPS|@one-step], got {text!r}")
    path, at, how = rest.rpartition("@") if "@" in rest else (rest, "", "")
    if not at:
        return name, Path(path), None, None
    if how == "one-step":
        return name, Path(path), "one-step", None
    if how.isdigit() and int(how) > 0:
        return name, Path(path), "pc", int(how)
    raise Failure(f"--system {text}: after @ give a number of predictor-corrector steps or one-step, got {how!r}")


def run_evaluate(args) -> int:
    systems = [parse_system(s) for s in args.system]
    if len({s[0] for s in systems}) < len(systems):
        raise Failure("--system: two systems share a name")
    try:
        data = evaluate.read_eval_sets(evaluate.parse_sets(args.sets, "--set"), args.limit)
        models = {name: checkpoint.load_model(path) for name, path, _, _ in systems}
    except (AudioError, evaluate.SetError, checkpoint.CheckpointError) as e:
        raise Failure(e) from None
    for name, path, how, _ in systems:
        if how and not isinstance(models[name], ScoreUNet):
            raise Failure(f"--system {name}: {path} is not a score model; @ applies to score models only")
    costs, out = {}, {"sets": {}, "systems": {}}
    for name, path, how, steps in systems:
        model, c = models[name], cost(models[name])
        score_model = isinstance(model, ScoreUNet)
        sampler = (how or model.config.sampler) if score_model else None
        n = sdes.nfe(sampler, steps or model.config.steps, model.config.corrector_steps) if score_model else 1
        costs[name] = {"checkpoint": str(path), "sampler": sampler, "steps": steps or (model.config.steps if sampler == "pc" else None), "nfe": n,
                       "params": c.params, "macs_per_frame": c.macs_per_frame, "gmac_per_audio_s": c.mmacs_per_second * n / 1e3}  # fmt: skip
    for label, ds in data.items():
        results, timing = {"noisy": evaluate.score(ds.items, None, not args.no_dnsmos, f"{label}: noisy")}, {}
        audio_s = sum(len(noisy) for _, noisy, _ in ds.items) / 16000
        for name, path, how, steps in systems:
            model, spent = models[name], [0.0]

            def run(noisy, model=model, how=how, steps=steps, spent=spent):
                t = time.perf_counter()
                wav = torch.from_numpy(noisy)[None]  # [1, L]
                y = model.enhance(wav, how, steps)[0].numpy() if isinstance(model, ScoreUNet) else evaluate.enhancer(model)(noisy)
                spent[0] += time.perf_counter() - t
                return y

            results[name] = evaluate.score(ds.items, run, not args.no_dnsmos, f"{label}: {name}")
            timing[name] = spent[0] / audio_s
        summary = {name: ds.summarise(r) for name, r in results.items()}
        print("\n" + evaluate.report(label, ds, summary))
        print("\n" + cost_table(costs, timing) + "\n")
        out["sets"][label] = {"data": str(ds.noisy), "files": len(ds.items), "systems": summary, "seconds_per_audio_second": timing}
    out["systems"] = costs
    if args.json:
        try:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(out, indent=1))
        except OSError as e:
            raise Failure(f"--json {args.json}: cannot write ({e.strerror})") from None
        print(f"wrote {args.json}")
    return 0


def cost_table(costs: dict, timing: dict) -> str:
    """What each system spends: parameters, MACs per frame of one network evaluation, evaluations
    per enhancement, GMAC per second of audio, and the wall time measured in this run."""
    lines = ["| system | params | MMAC/frame/NFE | NFE | GMAC per audio s | wall s per audio s |", "|---|---:|---:|---:|---:|---:|"]
    for name, c in costs.items():
        lines.append(f"| {name} | {c['params'] / 1e3:.0f} k | {c['macs_per_frame'] / 1e6:.2f} | {c['nfe']} | {c['gmac_per_audio_s']:.2f} | {timing[name]:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

"""The development split and the dev test set rendered from it.

``python -m distill.devset render --clean DIR --noise DIR --out data/devset`` writes a
deterministic set of noisy/clean pairs (every dev utterance at SNRs -5, 0, 5, 10, 15 dB) with a
``meta.csv``. The split itself (which speakers and which noise recordings are held out) is the pair
of lists in ``distill/splits/``; ``python -m distill.devset split`` re-derives them from a data
folder and is how they were made.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import math
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from distill.data import mix, rms
from runtime.audio import AudioError, list_audio, load, write

SPLITS = Path(__file__).parent / "splits"
SNRS = (-5, 0, 5, 10, 15)


def speaker(name: str) -> str:
    """Speaker of a clean file, from the naming of LibriSpeech, VCTK, AISHELL and CMU ARCTIC."""
    for pattern in (r"libri_(\d+)-", r"vctk_(p\d+)_", r"aishell_BAC009(S\d+)W", r"cmu_arctic_\w+?_(\w+?)_[ab]\d+"):
        m = re.search(pattern, name)
        if m:
            return m.group(1)
    return Path(name).stem


def recording(name: str) -> tuple[str, str]:
    """(family, source recording) of a noise file; UrbanSound8K slices of one recording share a source."""
    m = re.match(r"us8k_(\D+?)_(\d+)-", name)
    if m:
        return f"us8k_{m.group(1)}", m.group(2)
    family = re.sub(r"[_-]?\d+$", "", Path(name).stem)
    family = family.split("_bg_")[0] if "_bg_" in family else family
    return family, Path(name).stem


def _rank(key: str) -> str:
    return hashlib.sha1(key.encode()).hexdigest()


def split(clean_dir: Path, noise_dir: Path, speakers: int = 25, fraction: float = 0.1) -> tuple[list[str], list[str]]:
    """Held-out clean files (``speakers`` LibriSpeech speakers plus one CMU ARCTIC speaker) and noise
    files (``fraction`` of the source recordings of every noise family, families of 5+ recordings)."""
    clean = [p.relative_to(clean_dir).as_posix() for p in list_audio(clean_dir)]
    libri = sorted({speaker(c) for c in clean if c.startswith("libri_")}, key=_rank)[:speakers]
    cmu = sorted({speaker(c) for c in clean if c.startswith("cmu_arctic")}, key=_rank)[:1]
    held = set(libri) | set(cmu)
    dev_clean = sorted(c for c in clean if speaker(c) in held and (c.startswith("libri_") or c.startswith("cmu_arctic")))

    noise = [p.relative_to(noise_dir).as_posix() for p in list_audio(noise_dir)]
    families: dict[str, set[str]] = defaultdict(set)
    for n in noise:
        fam, rec = recording(n)
        families[fam].add(rec)
    held_rec = set()
    for fam, recs in families.items():
        if len(recs) >= 5:
            held_rec |= {(fam, r) for r in sorted(recs, key=_rank)[: math.ceil(fraction * len(recs))]}
    dev_noise = sorted(n for n in noise if recording(n) in held_rec)
    return dev_clean, dev_noise


def read_list(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def render(clean_dir: Path, noise_dir: Path, out: Path, clean_list: list[str], noise_list: list[str], seconds: float, seed: int, sample_rate: int = 16000):
    """Write ``out/noisy``, ``out/clean`` and ``out/meta.csv``; deterministic for a given seed."""
    missing = [f for f in clean_list if not (clean_dir / f).is_file()] + [f for f in noise_list if not (noise_dir / f).is_file()]
    if missing:
        raise AudioError(f"{len(missing)} listed files are missing, e.g. {missing[0]}; is --clean/--noise the right folder?")
    noises = [load(noise_dir / f, sample_rate) for f in noise_list]
    (out / "noisy").mkdir(parents=True, exist_ok=True)
    (out / "clean").mkdir(parents=True, exist_ok=True)
    rows = []
    n = int(seconds * sample_rate)
    for i, name in enumerate(clean_list):
        speech = load(clean_dir / name, sample_rate)[:n]
        for snr in SNRS:
            rng = np.random.default_rng([seed, i, snr + 100])
            k = int(rng.integers(len(noises)))
            noise = noises[k]
            start = int(rng.integers(len(noise)))
            noise = np.tile(noise, math.ceil((len(speech) + start) / len(noise)))[start : start + len(speech)]
            level = float(rng.uniform(-35, -15))
            noisy, clean = mix(speech, noise if rms(noise) > 1e-7 else rng.standard_normal(len(speech)), snr, level, 0.99)
            stem = f"{Path(name).stem}_snr{snr:+03d}"
            write(out / "noisy" / f"{stem}.wav", noisy, sample_rate)
            write(out / "clean" / f"{stem}.wav", clean, sample_rate)
            rows.append({"file": f"{stem}.wav", "clean_source": name, "noise_source": noise_list[k], "snr_db": snr, "level_dbfs": round(level, 2)})
    with (out / "meta.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return rows


SAMPLE = {  # the shipped demo clip: CC BY 4.0 material only, speaker and noises from the dev split
    "speech": "libri_5022-29405-0000.flac",
    "tap": "speechcommands_bg_running_tap.flac",
    "babble": "babble6_libri_testother_01.flac",
}


def render_sample(clean_dir: Path, noise_dir: Path, out: Path, sample_rate: int = 16000) -> None:
    """10 s of dev-split speech under a running tap plus quieter 6-talker babble, 5 dB SNR, -24 dBFS."""
    speech = load(clean_dir / SAMPLE["speech"], sample_rate)[: 10 * sample_rate]
    tap = load(noise_dir / SAMPLE["tap"], sample_rate)[10 * sample_rate :][: len(speech)]
    babble = load(noise_dir / SAMPLE["babble"], sample_rate)[: len(speech)]
    noisy, clean = mix(speech, tap + 0.5 * babble * np.std(tap) / np.std(babble), 5.0, -24.0, 0.99)
    out.mkdir(parents=True, exist_ok=True)
    write(out / "noisy.wav", noisy, sample_rate)
    write(out / "clean.wav", clean, sample_rate)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m distill.devset", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("split", help="derive the dev lists from a data folder")
    s.add_argument("--clean", required=True, type=Path)
    s.add_argument("--noise", required=True, type=Path)
    s.add_argument("--out", type=Path, default=SPLITS)
    r = sub.add_parser("render", help="render the dev test set")
    r.add_argument("--clean", required=True, type=Path)
    r.add_argument("--noise", required=True, type=Path)
    r.add_argument("--out", required=True, type=Path)
    r.add_argument("--lists", type=Path, default=SPLITS, help="folder with dev_clean.txt and dev_noise.txt")
    r.add_argument("--seconds", type=float, default=10.0, help="longest utterance kept")
    r.add_argument("--seed", type=int, default=2026)
    m = sub.add_parser("sample", help="render the demo clip shipped in assets/sample")
    m.add_argument("--clean", required=True, type=Path)
    m.add_argument("--noise", required=True, type=Path)
    m.add_argument("--out", type=Path, default=Path("assets/sample"))
    args = p.parse_args(argv)
    try:
        if args.cmd == "sample":
            render_sample(args.clean, args.noise, args.out)
            print(f"wrote {args.out}/noisy.wav and clean.wav")
        elif args.cmd == "split":
            dev_clean, dev_noise = split(args.clean, args.noise)
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "dev_clean.txt").write_text("\n".join(dev_clean) + "\n")
            (args.out / "dev_noise.txt").write_text("\n".join(dev_noise) + "\n")
            print(f"{len(dev_clean)} clean and {len(dev_noise)} noise files held out -> {args.out}")
        else:
            rows = render(args.clean, args.noise, args.out, read_list(args.lists / "dev_clean.txt"), read_list(args.lists / "dev_noise.txt"), args.seconds, args.seed)
            print(f"wrote {len(rows)} noisy/clean pairs at SNRs {list(SNRS)} dB to {args.out}")
    except (AudioError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

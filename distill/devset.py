"""The development split and the dev test set rendered from it.

``python -m distill.devset render --clean DIR --noise DIR --out data/devset`` writes a
deterministic set of noisy/clean pairs (every dev utterance at SNRs -5, 0, 5, 10, 15 dB) with a
``meta.csv``. ``render-ood`` writes the out-of-domain set (dev-ood) the same way from material
training never sees: whole noise families, speakers of another language, held-out measured rooms
and rooms simulated with another seed. The splits themselves are the lists in
``distill/splits/`` (``dev_*.txt`` in-domain, ``ood_*.txt`` out-of-domain), which training leaves
out by default; ``python -m distill.devset split`` re-derives them from a data folder and is how
they were made. Each ``--clean``, ``--noise`` and ``--rir`` is a folder or its index
(``python -m distill.data index DIR``), which saves scanning a large corpus.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import math
import re
import sys
from collections import defaultdict
from fnmatch import fnmatch
from pathlib import Path

import numpy as np

from distill import augment as aug
from distill.data import audio_names, corpus_root, mix, rms
from runtime.audio import AudioError, load, write

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
    clean = audio_names(clean_dir)
    libri = sorted({speaker(c) for c in clean if c.startswith("libri_")}, key=_rank)[:speakers]
    cmu = sorted({speaker(c) for c in clean if c.startswith("cmu_arctic")}, key=_rank)[:1]
    held = set(libri) | set(cmu)
    dev_clean = sorted(c for c in clean if speaker(c) in held and (c.startswith("libri_") or c.startswith("cmu_arctic")))

    noise = audio_names(noise_dir)
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


# The out-of-domain split: whole noise families, speakers (a whole language among them) and
# measured rooms that training never sees. Families were chosen so that each has a relative left
# in training (typing vs clock ticks, a crying baby vs children playing, a siren vs car horns, a
# crowd vs babble, one music library vs another): what a user's unseen noise is like.
OOD_NOISE = (
    "keystroke_*", "tumult_office_machine_*", "tumult_computer_fan_*",  # office
    "esc10_crying_baby_*", "tumult_washing_machine_*", "tumult_kitchen_appliance_*", "speechcommands_bg_doing_the_dishes*",  # home
    "us8k_siren_*", "tumult_metro_station_*", "tumult_city_ambience_*", "tumult_crowd_*",  # street, transport, crowds
    "esc10_sea_waves_*", "librosa_*",  # outdoors, music
)  # fmt: skip
OOD_CLEAN = ("thorsten_*", "vctk_p226_*", "vctk_p228_*")  # German (a language never trained on), two English speakers
OOD_RIR = ("spatialaudio_seminar_room_clap*", "openair_terrys_typing_room*")  # a seminar room and an office-like room
OOD_ROOMS = aug.RoomConfig(rooms=40, seed=1001)  # simulated with a seed training never uses


def split_ood(clean_dir: Path, noise_dir: Path, rir_dir: Path) -> tuple[list[str], list[str], list[str]]:
    """The files of ``OOD_CLEAN``, ``OOD_NOISE`` and ``OOD_RIR`` found in the three folders."""

    def match(root: Path, patterns) -> list[str]:
        return sorted(n for n in audio_names(root) if any(fnmatch(Path(n).name, pat) for pat in patterns))

    return match(clean_dir, OOD_CLEAN), match(noise_dir, OOD_NOISE), match(rir_dir, OOD_RIR)


def render(clean_dir: Path, noise_dir: Path, out: Path, clean_list: list[str], noise_list: list[str], seconds: float, seed: int, sample_rate: int = 16000,
           rooms: dict[str, list[tuple[str, np.ndarray, np.ndarray]]] | None = None, early_ms: float = 50.0):  # fmt: skip
    """Write ``out/noisy``, ``out/clean`` and ``out/meta.csv``; deterministic for a given seed.

    With ``rooms`` (groups such as measured and simulated, each a list of (name, speech RIR, noise
    RIR)), each mixture is dry or in a room of one of the groups (dry and each group equally
    likely), its noise reverberant from the room's noise position, and half of them get a second
    noise source 0-12 dB below the first; the reference is then the direct path and early
    reflections (``early_ms``) of the speech, as in training. ``clean_dir`` and ``noise_dir`` may
    be indexes of the folders (``python -m distill.data index``)."""
    clean_dir, noise_dir = corpus_root(clean_dir), corpus_root(noise_dir)
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
            noise = _excerpt(rng, noises[k], len(speech))
            level = float(rng.uniform(-35, -15))
            row = {"file": "", "clean_source": name, "noise_source": noise_list[k], "snr_db": snr, "level_dbfs": round(level, 2)}
            reference = speech
            if rooms is not None:
                if rng.random() < 0.5:
                    j = int(rng.integers(len(noises)))
                    noise = noise / rms(noise) + _excerpt(rng, noises[j], len(speech)) / rms(noises[j]) * 10 ** (-rng.uniform(0, 12) / 20)
                    row["noise_source"] += f"+{noise_list[j]}"
                groups = [g for g in rooms.values() if g]
                g = int(rng.integers(len(groups) + 1))
                room = groups[g][int(rng.integers(len(groups[g])))] if g < len(groups) else None
                row["room"] = room[0] if room else "dry"
                if room:
                    _, rir_speech, rir_noise = room
                    reference = aug.reverberate(speech, aug.early(rir_speech, sample_rate, early_ms))
                    noise = aug.reverberate(noise, rir_noise)
                    wet = aug.reverberate(speech, rir_speech)
                else:
                    wet = speech
                noise = noise * (rms(wet) / rms(noise) * 10 ** (-snr / 20)) if rms(noise) > 1e-7 else rng.standard_normal(len(speech)) * rms(wet) * 10 ** (-snr / 20)
                noisy, clean = _level(wet + noise, reference, level)
            else:
                noisy, clean = mix(speech, noise if rms(noise) > 1e-7 else rng.standard_normal(len(speech)), snr, level, 0.99)
            stem = f"{Path(name).stem}_snr{snr:+03d}"
            write(out / "noisy" / f"{stem}.wav", noisy, sample_rate)
            write(out / "clean" / f"{stem}.wav", clean, sample_rate)
            row["file"] = f"{stem}.wav"
            rows.append(row)
    with (out / "meta.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return rows


def _excerpt(rng: np.random.Generator, noise: np.ndarray, length: int) -> np.ndarray:
    start = int(rng.integers(len(noise)))
    return np.tile(noise, math.ceil((length + start) / len(noise)))[start : start + length]


def _level(noisy: np.ndarray, reference: np.ndarray, level_db: float, peak: float = 0.99) -> tuple[np.ndarray, np.ndarray]:
    gain = min(10 ** (level_db / 20) / rms(noisy), peak / (np.abs(noisy).max() + 1e-12))
    return (noisy * gain).astype(np.float32), (reference * gain).astype(np.float32)


def ood_rooms(rir_dir: Path, rir_list: list[str], sample_rate: int, cache: Path | None) -> dict[str, list[tuple[str, np.ndarray, np.ndarray]]]:
    """The held-out measured rooms (the noise in each from another held-out measured room) and
    the ``OOD_ROOMS`` simulated ones."""
    rir_dir = corpus_root(rir_dir)
    measured = [(f, aug.trim_rir(load(rir_dir / f, sample_rate), sample_rate)) for f in rir_list]
    sim = aug.simulated_rooms(OOD_ROOMS, sample_rate, cache)
    return {
        "measured": [(name, rir, measured[(i + 1) % len(measured)][1]) for i, (name, rir) in enumerate(measured)],
        "simulated": [(f"sim{OOD_ROOMS.seed}_{i:02d}", s, n) for i, (s, n) in enumerate(sim)],
    }


SAMPLE = {  # the shipped demo clip: CC BY 4.0 material only, speaker and noises from the dev split
    "speech": "libri_5022-29405-0000.flac",
    "tap": "speechcommands_bg_running_tap.flac",
    "babble": "babble6_libri_testother_01.flac",
}


def render_sample(clean_dir: Path, noise_dir: Path, out: Path, sample_rate: int = 16000) -> None:
    """10 s of dev-split speech under a running tap plus quieter 6-talker babble, 5 dB SNR, -24 dBFS."""
    clean_dir, noise_dir = corpus_root(clean_dir), corpus_root(noise_dir)
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
    s = sub.add_parser("split", help="derive the dev lists (and with --rir the out-of-domain lists) from a data folder")
    s.add_argument("--clean", required=True, type=Path)
    s.add_argument("--noise", required=True, type=Path)
    s.add_argument("--rir", type=Path, help="folder of measured room impulse responses: also write the out-of-domain lists")
    s.add_argument("--out", type=Path, default=SPLITS)
    r = sub.add_parser("render", help="render the in-domain dev test set")
    o = sub.add_parser("render-ood", help="render the out-of-domain dev test set (dev-ood)")
    for q, seed in ((r, 2026), (o, 2027)):
        q.add_argument("--clean", required=True, type=Path, help="folder of clean speech, or its index (python -m distill.data index)")
        q.add_argument("--noise", required=True, type=Path, help="folder of noise recordings, or its index")
        q.add_argument("--out", required=True, type=Path)
        q.add_argument("--lists", type=Path, default=SPLITS, help="folder with the split lists")
        q.add_argument("--seconds", type=float, default=10.0, help="longest utterance kept")
        q.add_argument("--seed", type=int, default=seed)
    o.add_argument("--rir", required=True, type=Path, help="folder of measured room impulse responses, or its index")
    o.add_argument("--room-cache", type=Path, default=Path("data/rooms"), help="where simulated rooms are cached")
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
            lists = dict(zip(("dev_clean", "dev_noise"), split(args.clean, args.noise)))
            if args.rir:
                lists.update(zip(("ood_clean", "ood_noise", "ood_rir"), split_ood(args.clean, args.noise, args.rir)))
            args.out.mkdir(parents=True, exist_ok=True)
            for name, files in lists.items():
                (args.out / f"{name}.txt").write_text("\n".join(files) + "\n")
            print(", ".join(f"{name}: {len(files)}" for name, files in lists.items()) + f" files held out -> {args.out}")
        elif args.cmd == "render":
            rows = render(args.clean, args.noise, args.out, read_list(args.lists / "dev_clean.txt"), read_list(args.lists / "dev_noise.txt"), args.seconds, args.seed)
            print(f"wrote {len(rows)} noisy/clean pairs at SNRs {list(SNRS)} dB to {args.out}")
        else:
            rooms = ood_rooms(args.rir, read_list(args.lists / "ood_rir.txt"), 16000, args.room_cache)
            rows = render(args.clean, args.noise, args.out, read_list(args.lists / "ood_clean.txt"), read_list(args.lists / "ood_noise.txt"), args.seconds,
                          args.seed, rooms=rooms)  # fmt: skip
            print(f"wrote {len(rows)} out-of-domain noisy/clean pairs at SNRs {list(SNRS)} dB to {args.out}")
    except (AudioError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

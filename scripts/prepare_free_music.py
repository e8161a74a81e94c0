#!/usr/bin/env python3
"""Prepare the free music that musicembed may train and tune on (issue 4; docs/data.md).

Sources, and nothing else (shared DESIGN.md, "Data you may train and tune on"):

- the music files of a fixed list of Debian packages (installed by prepare_free_music.sh);
  tracker modules are played by openmpt123, MIDI files by the FluidSynth CLI with one of
  two Debian General MIDI soundfonts;
- works from a fixed list of music21 corpus parts, written to MIDI by music21 and rendered
  by FluidSynth the same way, each work with a seeded General MIDI program, tempo factor
  and transposition.

Everything becomes 16 kHz mono 16-bit FLAC under OUT_DIR/audio/<source>/<name>.flac.
OUT_DIR/manifest.csv lists every file (path, source, licence, duration_s, split, track_id).
The split is by source first: a seeded draw holds whole sources out of training (recorded
in OUT_DIR/holdout.json) and divides them into a ``select`` half (for choosing checkpoints
and settings) and a ``report`` half (for the final table); within the other sources a
seeded share of tracks per source is ``val`` (in-distribution validation), the rest
``train``. Each music21 work of ``val``, ``select`` and ``report`` is rendered again as
three "covers" (other program, other soundfont, other tempo and key) under
OUT_DIR/covers/<track_id>/v{1,2,3}.flac, listed with the original (version 0) in
OUT_DIR/covers.csv with its split. Each train music21 work is rendered in
``--train-versions`` more versions (other instrument families, both soundfonts, other
tempi and keys) under OUT_DIR/versions/<track_id>/v<k>.flac; OUT_DIR/train.csv lists the
manifest's train rows plus these versions under their work's track_id, so training can
pair two renders of one score as a positive pair. Works or files that fail are logged and
listed in OUT_DIR/skipped.csv. Reruns keep every file already written.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import hashlib
import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

LOG = logging.getLogger("prepare_free_music")

SAMPLE_RATE = 16000
MIN_SECONDS = 5.0
SILENCE_PEAK = 1e-3
RENDER_PEAK_DB = -1.0
ENVELOPE_RATE = 20  # frames per second of the envelope that finds looped tracks
LOOP_MIN_S = 20
LOOP_CORR = 0.9  # looped files score > 0.99, through-composed music < 0.7
TWIN_CORR = 0.7  # envelope correlation of two same-length files that are mixes of one piece
TWIN_TOLERANCE_S = 0.5
TASK_TIMEOUT_S = 1200
EXPAND_MAX_NOTES = 8000  # music21's repeat expansion of a whole quartet (11k notes) takes > 20 min
DOC_DIR = Path("/usr/share/doc")

AUDIO_EXTS = frozenset({".ogg", ".mp3", ".flac", ".wav", ".opus"})
MODULE_EXTS = frozenset({".xm", ".mod", ".s3m", ".it"})  # tracker modules, rendered by openmpt123
MIDI_EXTS = frozenset({".mid", ".midi"})  # rendered by FluidSynth with their own instruments

# Debian package -> path fragments that locate its music (None: all of its audio files).
DEBIAN_MUSIC: dict[str, tuple[str, ...] | None] = {
    "wesnoth-1.16-music": None,
    "warzone2100-music": None,
    "planetblupi-music-ogg": None,
    "drascula-music": None,
    "xblast-tnt-musics": None,
    "fb-music-high": None,
    "freedroidrpg-data": ("/sound/music/",),
    "supertuxkart-data": ("/data/music/",),
    "flare-game": ("/music/",),
    # freeorion-data has no music folder: its one music track lies among the sound effects.
    "freeorion-data": ("/data/sound/artificial_intelligence_v3.ogg",),
    "supertux-data": ("/music/",),
    "widelands-data": ("/data/music/",),
    "lincity-ng-data": ("/lincity-ng/music/",),
    # frozen-bubble's snd/ holds its three songs among the sound effects.
    "frozen-bubble-data": ("/snd/frozen-mainzik-1p.ogg", "/snd/frozen-mainzik-2p.ogg", "/snd/introzik.ogg"),
    # warmux: its music folder, plus the one tune among the sound effects.
    "warmux-data": ("/warmux/music/", "/sound/default/misc/frog_music.ogg"),
    "xmoto-data": ("/Textures/Musics/",),
    "scorched3d-data": ("/data/music/",),
    # ri-li's Sounds/ holds its three tracker modules among the sound effects (and
    # "language.It" is a language file, not an Impulse Tracker module).
    "ri-li-data": ("/Sounds/jeu1.xm", "/Sounds/jeu2.xm", "/Sounds/menu.mod"),
    "pingus-data": ("/data/music/",),
    # holotz-castle's sound/ mixes effects and jingles with its two themes (in several tempi).
    "holotz-castle-data": ("/sound/HCMainTitle", "/sound/HCCredits"),
    "tecnoballz-data": ("/tecnoballz/musics/",),
    "hex-a-hop-data": ("/hex-a-hop/music-",),
    "solarwolf": ("/data/music/",),
    # pangzero ships its one song as MP3 and as MIDI; the MP3 is used (the MIDI is the same piece).
    "pangzero": ("/Games-PangZero/UPiPang.mp3",),
    "funnyboat": ("/data/JDruid-Trip_on_the_Funny_Boat.ogg",),
    "openttd-openmsx": ("/baseset/openmsx/",),
}
# Allowed packages without music, so not used: trigger-rally-data (data.zip: engine, wind and
# co-driver sounds), neverball-data (levels only; the music is in neverball-common),
# pokerth-data (sound effects of at most 3.5 s), mirrormagic-data (sound effects of at most 5 s).
# Headerless sample files: package -> (sample rate, channels, libsndfile subtype).
# XBlast's sound server plays its songs as 8-bit unsigned stereo at 22050 Hz.
RAW_FORMATS: dict[str, tuple[int, int, str]] = {"xblast-tnt-musics": (22050, 2, "PCM_U8")}
# A file named like another one of its package plus this suffix is a variant of the same
# music (faster last-lap copy, remaster, older version); such tracks are kept out of val.
VARIANT_SUFFIX = re.compile(r"(_fast|_f|_enhanced|[-_]old|_Fast|_Slow|_UltraSlow)$")

# music21 corpus part -> (most works rendered, who wrote the music and when).
MUSIC21_PARTS: dict[str, tuple[int, str]] = {
    "bach": (80, "J. S. Bach, d. 1750"),
    "beethoven": (6, "L. van Beethoven, d. 1827"),
    "palestrina": (15, "G. P. da Palestrina, d. 1594"),
    "monteverdi": (15, "C. Monteverdi, d. 1643"),
    "trecento": (20, "14th-century Italian composers"),
    "josquin": (8, "Josquin des Prez, d. 1521"),
    "oneills1850": (60, "traditional Irish tunes, O'Neill's Music of Ireland, 1903"),
    "airdsAirs": (60, "traditional airs, Aird's Selection, 1782-1803"),
    "corelli": (1, "A. Corelli, d. 1713"),
    "handel": (1, "G. F. Handel, d. 1759"),
    "chopin": (1, "F. Chopin, d. 1849"),
    "verdi": (1, "G. Verdi, d. 1901"),
}
SCORE_EXTS = frozenset({".mxl", ".xml", ".musicxml", ".krn", ".abc"})  # not .rntxt analyses

# Soundfont name -> (Debian package, file).
SOUNDFONTS: dict[str, tuple[str, str]] = {
    "FluidR3_GM": ("fluid-soundfont-gm", "/usr/share/sounds/sf2/FluidR3_GM.sf2"),
    "TimGM6mb": ("timgm6mb-soundfont", "/usr/share/sounds/sf2/TimGM6mb.sf2"),
}
# Melodic General MIDI programs (0-based) that suit the corpus music.
GM_PROGRAMS: dict[int, str] = {
    0: "Acoustic Grand Piano", 1: "Bright Acoustic Piano", 4: "Electric Piano 1", 6: "Harpsichord",
    8: "Celesta", 11: "Vibraphone", 12: "Marimba", 16: "Drawbar Organ", 19: "Church Organ",
    21: "Accordion", 22: "Harmonica", 24: "Acoustic Guitar (nylon)", 25: "Acoustic Guitar (steel)",
    26: "Electric Guitar (jazz)", 40: "Violin", 41: "Viola", 42: "Cello", 45: "Pizzicato Strings",
    46: "Orchestral Harp", 48: "String Ensemble 1", 49: "String Ensemble 2", 52: "Choir Aahs",
    53: "Voice Oohs", 56: "Trumpet", 57: "Trombone", 60: "French Horn", 61: "Brass Section",
    64: "Soprano Sax", 65: "Alto Sax", 68: "Oboe", 69: "English Horn", 70: "Bassoon", 71: "Clarinet",
    73: "Flute", 74: "Recorder", 75: "Pan Flute", 79: "Ocarina", 80: "Lead 1 (square)",
    81: "Lead 2 (sawtooth)", 88: "Pad 1 (new age)", 89: "Pad 2 (warm)",
}
TEMPO_RANGE = (0.85, 1.15)
TRANSPOSE_RANGE = (-3, 3)
COVER_VERSIONS = 3
# Train versions each take another transposition than version 0 and each other.
MAX_TRAIN_VERSIONS = TRANSPOSE_RANGE[1] - TRANSPOSE_RANGE[0]
DEFAULT_TRAIN_VERSIONS = 4
FLUIDSYNTH_GAIN = 0.5
DRUM_CHANNEL = 9

# Held-out sources (see draw_holdout): together at least this many tracks and this share of
# all hours; no held-out source has fewer tracks than HOLDOUT_MIN_SOURCE_TRACKS; each half
# holds at least one music21 part and HOLDOUT_MIN_PACKAGES Debian packages.
HOLDOUT_MIN_TRACKS = 150
HOLDOUT_MIN_SHARE = 0.2
HOLDOUT_MIN_SOURCE_TRACKS = 10
HOLDOUT_MIN_PACKAGES = 3
HELD_OUT_SPLITS = ("select", "report")
SPLITS = ("train", "val") + HELD_OUT_SPLITS

MANIFEST_COLUMNS = ("path", "source", "licence", "duration_s", "split", "track_id")
RENDER_COLUMNS = ("version", "program", "soundfont", "tempo", "transpose")
COVERS_COLUMNS = ("track_id", "version", "path", "program", "soundfont", "tempo", "transpose", "split", "source")
TRAIN_COLUMNS = MANIFEST_COLUMNS + RENDER_COLUMNS


# ----------------------------------------------------------------------------- jobs


@dataclass(frozen=True)
class RenderParams:
    """How one MIDI file is played: GM program (None: the file's own programs), soundfont
    name, tempo factor, semitones."""

    program: int | None
    soundfont: str
    tempo: float
    transpose: int


@dataclass(frozen=True)
class DebianJob:
    """Convert one installed music file (``params``: how a MIDI file is rendered)."""

    package: str
    src: str
    out: Path
    params: RenderParams | None = None


@dataclass(frozen=True)
class Music21Job:
    """Render one corpus work (ABC tune ``number``, or all tunes merged as voices)."""

    score_file: str
    number: int | None
    merge_voices: bool
    midi: Path
    out: Path
    params: RenderParams


@dataclass(frozen=True)
class CoverJob:
    """Render an already written MIDI file again with other parameters."""

    midi: Path
    out: Path
    params: RenderParams


@dataclass(frozen=True)
class Entry:
    """One planned output file with its manifest data (split is decided later)."""

    rel_path: str
    source: str
    licence: str
    track_id: str
    variant: bool  # named like a variant of another file of its source
    job: DebianJob | Music21Job


# ----------------------------------------------------------------------------- audio


def write_flac(path: Path, audio: np.ndarray) -> float:
    """Write mono float audio as 16 kHz 16-bit FLAC atomically; return its duration (s)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    sf.write(tmp, np.clip(audio, -1.0, 1.0), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    os.replace(tmp, path)
    return audio.shape[0] / SAMPLE_RATE


def to_mono_16k(audio: np.ndarray, rate: int) -> np.ndarray:
    """Average the channels and resample to 16 kHz with soxr (very high quality)."""
    mono = audio.mean(axis=1) if audio.ndim == 2 else audio
    mono = np.ascontiguousarray(mono, dtype=np.float32)
    return mono if rate == SAMPLE_RATE else soxr.resample(mono, rate, SAMPLE_RATE, quality="VHQ")


def log_envelope(audio: np.ndarray) -> np.ndarray:
    """Standardised log RMS of 16 kHz audio at ENVELOPE_RATE frames per second."""
    hop = SAMPLE_RATE // ENVELOPE_RATE
    n = audio.shape[0] // hop
    env = np.log(np.sqrt(np.mean(audio[: n * hop].reshape(n, hop).astype(np.float64) ** 2, axis=1)) + 1e-4)
    return (env - env.mean()) / (env.std() + 1e-9)


def loop_period(audio: np.ndarray) -> float | None:
    """Shortest period (s) of at least LOOP_MIN_S at which a whole track repeats itself (game
    music looped in the file), from the autocorrelation of its log-energy envelope; None
    when no lag up to half the track correlates by LOOP_CORR or more."""
    env = log_envelope(audio)
    n = env.shape[0]
    lo = LOOP_MIN_S * ENVELOPE_RATE
    if n // 2 <= lo:
        return None
    spec = np.fft.rfft(env, 2 * n)
    corr = np.fft.irfft(spec * np.conj(spec))[:n] / np.arange(n, 0, -1)
    above = np.flatnonzero(corr[lo : n // 2] >= LOOP_CORR)
    if above.size == 0:
        return None
    first = lo + int(above[0])
    peak = first + int(np.argmax(corr[first : first + ENVELOPE_RATE]))
    return peak / ENVELOPE_RATE


def check_audible(audio: np.ndarray) -> None:
    """Raise ValueError for audio shorter than MIN_SECONDS or (near) silent."""
    if audio.shape[0] < MIN_SECONDS * SAMPLE_RATE:
        raise ValueError(f"shorter than {MIN_SECONDS:g} s ({audio.shape[0] / SAMPLE_RATE:.1f} s)")
    if float(np.max(np.abs(audio))) < SILENCE_PEAK:
        raise ValueError("silent")


def read_source_audio(package: str, src: str) -> tuple[np.ndarray, int]:
    """Decode a package's music file: audio formats with soundfile, raw samples with the
    package's known format, tracker modules by rendering them with openmpt123."""
    ext = Path(src).suffix.lower()
    if ext == ".raw":
        rate, channels, subtype = RAW_FORMATS[package]
        return sf.read(src, samplerate=rate, channels=channels, subtype=subtype, format="RAW", dtype="float32")
    if ext in MODULE_EXTS:
        with tempfile.TemporaryDirectory() as tmp:
            wav = Path(tmp) / "module.wav"
            run_tool(["openmpt123", "--batch", "--quiet", "--force", "--samplerate", str(SAMPLE_RATE),
                      "--channels", "1", "--output", str(wav), src])
            return sf.read(wav, dtype="float32")
    return sf.read(src, dtype="float32", always_2d=True)


def run_tool(cmd: list[str], timeout: float = TASK_TIMEOUT_S) -> None:
    """Run an external program; raise RuntimeError with its stderr tail on failure."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exited {proc.returncode}: {proc.stderr.strip()[-300:]}")


# ----------------------------------------------------------------------------- MIDI


def write_score_midi(job: Music21Job) -> None:
    """Parse the corpus work with music21 and write it as MIDI (atomically). Scores with more
    than EXPAND_MAX_NOTES notes, and scores whose repeats or layout music21 cannot expand, are
    written from their notes alone, without repeats."""
    from music21 import converter

    score = converter.parse(job.score_file, number=job.number) if job.number is not None \
        else converter.parse(job.score_file)
    if job.merge_voices and hasattr(score, "mergeScores"):
        score = score.mergeScores()
    job.midi.parent.mkdir(parents=True, exist_ok=True)
    tmp = job.midi.with_name(job.midi.name + ".tmp")
    notes = len(score.recurse().notes)
    if notes > EXPAND_MAX_NOTES:
        LOG.info("%s: %d notes; writing notes only", job.score_file, notes)
        notes_only(score).write("midi", fp=str(tmp))
    else:
        try:
            score.write("midi", fp=str(tmp))
        except TimeoutError:
            raise
        except Exception as exc:  # music21 raises many kinds on odd scores
            LOG.info("%s: %s; writing notes only", job.score_file, type(exc).__name__)
            notes_only(score).write("midi", fp=str(tmp))
    os.replace(tmp, job.midi)


def notes_only(score: Any) -> Any:
    """A copy of ``score`` with only notes, chords and tempo marks, one flat part per part."""
    import copy

    from music21 import chord, note, stream, tempo

    out = stream.Score()
    for part in score.parts:
        flat = part.flatten()
        new = stream.Part()
        for el in flat.getElementsByClass((note.Note, chord.Chord, tempo.MetronomeMark)):
            new.insert(flat.elementOffset(el), copy.deepcopy(el))
        out.insert(0, new)
    return out


def vary_midi(src: Path, dst: Path, params: RenderParams) -> float:
    """Copy a MIDI file with each (track, channel) on a channel of its own, every melodic
    channel on ``params.program`` (unless it is None: then the file keeps its own
    instruments), tempi scaled by ``params.tempo``, notes moved by
    ``params.transpose`` semitones (kept in range by octaves), and all sound switched off two
    beats after the last event (some soundfont voices never fall silent by themselves, and
    fluidsynth keeps rendering until they do). Return the copy's length (s)."""
    import mido

    midi = mido.MidiFile(src)
    free = [c for c in range(16) if c != DRUM_CHANNEL]
    channel_of: dict[tuple[int, int], int] = {}
    has_tempo = False
    for i, track in enumerate(midi.tracks):
        for msg in track:
            if hasattr(msg, "channel") and msg.channel != DRUM_CHANNEL:
                msg.channel = channel_of.setdefault((i, msg.channel), free[len(channel_of) % len(free)])
            if msg.type == "set_tempo":
                msg.tempo = max(1, round(msg.tempo / params.tempo))
                has_tempo = True
            elif msg.type in ("note_on", "note_off") and msg.channel != DRUM_CHANNEL:
                msg.note = fold_note(msg.note + params.transpose)
            elif msg.type == "program_change" and msg.channel != DRUM_CHANNEL and params.program is not None:
                msg.program = params.program
        if params.program is not None:
            for ch in sorted({c for (t, _), c in channel_of.items() if t == i}, reverse=True):
                track.insert(0, mido.Message("program_change", channel=ch, program=params.program, time=0))
    if not has_tempo:
        midi.tracks[0].insert(0, mido.MetaMessage("set_tempo", tempo=round(500000 / params.tempo), time=0))
    longest = max(midi.tracks, key=lambda t: sum(m.time for m in t))
    longest.append(mido.Message("control_change", channel=0, control=120, value=0, time=2 * midi.ticks_per_beat))
    longest += [mido.Message("control_change", channel=c, control=120, value=0, time=0) for c in range(1, 16)]
    midi.save(dst)
    return float(mido.MidiFile(dst).length)


def fold_note(note: int) -> int:
    """Move a MIDI note number into 0..127 by octaves."""
    while note > 127:
        note -= 12
    while note < 0:
        note += 12
    return note


def render_midi(midi: Path, params: RenderParams, out: Path) -> float:
    """Play ``midi`` with ``params`` through the fluidsynth CLI at 16 kHz, peak-normalise
    to RENDER_PEAK_DB and write FLAC; return the duration (s)."""
    with tempfile.TemporaryDirectory() as tmp:
        varied = Path(tmp) / "varied.mid"
        wav = Path(tmp) / "render.wav"
        seconds = vary_midi(midi, varied, params)
        run_tool(["fluidsynth", "-n", "-i", "-q", "-F", str(wav), "-r", str(SAMPLE_RATE),
                  "-g", str(FLUIDSYNTH_GAIN), "-O", "float", "-T", "wav",
                  SOUNDFONTS[params.soundfont][1], str(varied)], timeout=60 + seconds)
        audio, rate = sf.read(wav, dtype="float32", always_2d=True)
    mono = to_mono_16k(audio, rate)
    check_audible(mono)
    return write_flac(out, mono * (10 ** (RENDER_PEAK_DB / 20) / float(np.max(np.abs(mono)))))


# ----------------------------------------------------------------------------- workers


def _timeout(signum: int, frame: object) -> None:
    raise TimeoutError(f"took longer than {TASK_TIMEOUT_S} s")


def init_worker() -> None:
    """Quiet music21's warnings and arm the per-task time limit in a worker process."""
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    signal.signal(signal.SIGALRM, _timeout)


def run_job(job: DebianJob | Music21Job | CoverJob) -> float:
    """Do one job in a worker; return the written file's duration (s)."""
    signal.alarm(TASK_TIMEOUT_S)
    try:
        if isinstance(job, DebianJob) and job.params is not None:  # a package's MIDI file
            return render_midi(Path(job.src), job.params, job.out)
        if isinstance(job, DebianJob):
            audio, rate = read_source_audio(job.package, job.src)
            mono = to_mono_16k(audio, rate)
            period = loop_period(mono)
            if period is not None:
                LOG.info("%s repeats every %.1f s: keeping one period", job.src, period)
                mono = mono[: round(period * SAMPLE_RATE)]
            check_audible(mono)
            return write_flac(job.out, mono)
        if isinstance(job, Music21Job) and not job.midi.is_file():
            write_score_midi(job)
        return render_midi(job.midi, job.params, job.out)
    finally:
        signal.alarm(0)


# ----------------------------------------------------------------------------- licences


def detect_licence(text: str) -> str | None:
    """Short name of the licence that free text grants (GPL/LGPL with version, MIT, CC-BY)."""
    flat = " ".join(text.split())
    gpl = re.search(r"GNU (Lesser |Library )?General Public Licen[cs]e(.{0,200})", flat, re.I)
    if gpl:
        name = "LGPL" if gpl.group(1) else "GPL"
        sentence = gpl.group(2).split(". ")[0]
        version = re.search(r"version (\d(?:\.\d)?)", sentence, re.I)
        later = re.search(r"later", sentence, re.I)
        return name + (f"-{version.group(1)}" if version else "") + ("+" if version and later else "")
    if re.search(r"\bMIT licen[cs]e", flat, re.I):
        return "MIT"
    cc = re.search(r"Creative Commons[^()]{0,40}\((CC[- ]BY[^)]*)\)", flat, re.I)
    return cc.group(1).replace(" ", "-") if cc else None


def dep5_matches(pattern: str, path: str) -> bool:
    """Whether a debian/copyright ``Files:`` pattern (source-tree path) names an installed
    file: the pattern, or its tail of at least two components, matches a tail of the path."""
    parts = pattern.strip("/").split("/")
    tails = [pattern] + ["/".join(parts[i:]) for i in range(1, len(parts) - 1)]
    comps = path.strip("/").split("/")
    suffixes = ["/".join(comps[i:]) for i in range(len(comps))]
    return any(fnmatch.fnmatchcase(s, t) for t in tails for s in suffixes)


def debian_licence(package: str, path: str) -> str:
    """Licence of an installed file from /usr/share/doc/<package>/copyright: the last
    matching ``Files:`` stanza of a machine-readable file, else the licence its text grants."""
    text = (DOC_DIR / package / "copyright").read_text(errors="replace")
    found: str | None = None
    if text.startswith("Format:"):
        for para in re.split(r"\n\s*\n", text):
            files = re.search(r"^Files:(.*(?:\n[ \t].*)*)", para, re.M)
            lic = re.search(r"^License:[ \t]*(\S.*)$", para, re.M)
            if files and lic and any(dep5_matches(p, path) for p in files.group(1).split()):
                found = lic.group(1).strip()
    return found or detect_licence(text) or f"see {DOC_DIR / package / 'copyright'}"


def encoding_rights(score_file: Path) -> str | None:
    """The rights statement a corpus file carries, if any (Humdrum !!!YEC, MusicXML
    <rights>, a licence in ABC comments)."""
    ext = score_file.suffix.lower()
    if ext == ".mxl":
        with zipfile.ZipFile(score_file) as z:
            inner = [n for n in z.namelist() if not n.startswith("META-INF") and n.endswith((".xml", ".musicxml"))]
            data = z.read(inner[0]) if inner else b""
    else:
        data = score_file.read_bytes()
    text = data.decode("utf-16" if data.startswith((b"\xff\xfe", b"\xfe\xff")) else "utf-8", "replace")
    if ext == ".krn":
        yec = re.search(r"^!!!YEC:\s*(.+)$", text, re.M)
        agreement = re.search(r"^!!!YEM:.*licen", text, re.M | re.I)
        notes = ([yec.group(1).strip()] if yec else []) + (["see the file's licensing agreement"] if agreement else [])
        return ", ".join(notes) or None
    if ext == ".abc":
        return detect_licence("\n".join(line for line in text.splitlines() if line.startswith("%")))
    rights = " ".join(" ".join(r.split()) for r in re.findall(r"<rights[^>]*>(.*?)</rights>", text, re.S))
    return rights if re.search(r"[A-Za-z0-9]", rights.replace("Copyright", "")) else None


def music21_licence(part: str, score_file: Path, soundfont: str, soundfont_licences: dict[str, str]) -> str:
    """Licence note of a rendered corpus work: composition, encoding, soundfont."""
    rights = encoding_rights(score_file)
    return (f"public-domain composition ({MUSIC21_PARTS[part][1]}); encoding from the music21 corpus "
            f"(music21/corpus/license.txt: out of US copyright or licensed for use)"
            + (f", rights: {rights[:120]}" if rights else "")
            + f"; rendered with soundfont {soundfont} ({soundfont_licences[soundfont]})")


# ----------------------------------------------------------------------------- planning


def safe_name(text: str) -> str:
    """File-name-safe form of ``text``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_.") or "x"


def source_dir(source: str) -> str:
    """Folder name of a source (``music21:bach`` -> ``music21-bach``)."""
    return source.replace(":", "-")


def package_files(package: str) -> list[str]:
    """The package's music files (regular files, one per content) in ``dpkg -L`` order."""
    listing = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, check=True).stdout.split("\n")
    where = DEBIAN_MUSIC[package]
    kept: list[str] = []
    seen: set[str] = set()
    for path in sorted(listing):
        ext = Path(path).suffix.lower()
        wanted = (ext in AUDIO_EXTS or ext in MODULE_EXTS or ext in MIDI_EXTS
                  or (ext == ".raw" and package in RAW_FORMATS))
        if not wanted or not os.path.isfile(path) or (where and not any(w in path for w in where)):
            continue
        digest = hashlib.sha256(Path(os.path.realpath(path)).read_bytes()).hexdigest()
        if digest not in seen:  # symlinked or copied twice (drascula's per-language folders)
            seen.add(digest)
            kept.append(path)
    return kept


def package_midi_params(seed: int, track_id: str) -> RenderParams:
    """How a package's MIDI file is rendered: its own instruments, tempo and key, with a
    seeded one of the two soundfonts."""
    return RenderParams(None, random.Random(f"{seed}:{track_id}").choice(sorted(SOUNDFONTS)), 1.0, 0)


def debian_entries(out_dir: Path, seed: int) -> list[Entry]:
    """Planned outputs of all Debian packages."""
    sf_licences = {name: debian_licence(pkg, path) for name, (pkg, path) in SOUNDFONTS.items()}
    entries: list[Entry] = []
    for package in DEBIAN_MUSIC:
        try:
            files = package_files(package)
        except (subprocess.CalledProcessError, FileNotFoundError) as exc:
            LOG.error("%s: not installed? (%s)", package, exc)
            continue
        if not files:
            LOG.warning("%s: no music files found", package)
        stems = Counter(Path(f).stem for f in files)
        names = {f: safe_name(Path(f).stem if stems[Path(f).stem] == 1 else f"{Path(f).parent.name}__{Path(f).stem}")
                 for f in files}
        bases = Counter(VARIANT_SUFFIX.sub("", Path(f).stem) for f in files)
        for f in files:
            rel = f"audio/{source_dir(package)}/{names[f]}.flac"
            track_id = f"{package}__{names[f]}"
            licence = debian_licence(package, f)
            params = None
            if Path(f).suffix.lower() in MIDI_EXTS:
                params = package_midi_params(seed, track_id)
                licence += f"; rendered with soundfont {params.soundfont} ({sf_licences[params.soundfont]})"
            entries.append(Entry(rel, package, licence, track_id, bases[VARIANT_SUFFIX.sub("", Path(f).stem)] > 1,
                                 DebianJob(package, f, out_dir / rel, params)))
    return entries


def abc_tunes(path: Path) -> list[tuple[int, str]]:
    """(X: number, first title) of every tune of an ABC file."""
    tunes: list[tuple[int, str]] = []
    for block in re.split(r"^(?=X:)", path.read_text(errors="replace"), flags=re.M):
        number = re.match(r"X:\s*(\d+)", block)
        if number:
            title = re.search(r"^T:\s*(.*)$", block, re.M)
            tunes.append((int(number.group(1)), title.group(1).strip() if title else ""))
    return tunes


def corpus_works(part: str) -> list[tuple[Path, int | None, bool, str]]:
    """(file, ABC tune number, merge voices, name) of every work of a corpus part. An ABC
    file whose tunes all share one title holds the voices of one work (merged); other ABC
    files hold one work per tune."""
    from music21 import corpus

    files = sorted(Path(str(p)) for p in corpus.getComposer(part) if Path(str(p)).suffix.lower() in SCORE_EXTS)
    root = Path(os.path.commonpath([f.parent for f in files])) if files else Path()
    works: list[tuple[Path, int | None, bool, str]] = []
    for f in files:
        name = safe_name(str(f.relative_to(root).with_suffix("")).replace("/", "_"))
        tunes = abc_tunes(f) if f.suffix.lower() == ".abc" else []
        if len(tunes) > 1 and len({t for _, t in tunes}) > 1:
            works += [(f, n, False, f"{name}_{n:04d}") for n, _ in tunes]
        else:
            works.append((f, None, len(tunes) > 1, name))
    return works


def render_params(seed: int, track_id: str) -> list[RenderParams]:
    """Seeded parameters of version 0 (the manifest's file) and the cover versions: each
    cover has another program than version 0 and the other soundfont."""
    rng = random.Random(f"{seed}:{track_id}")
    fonts = sorted(SOUNDFONTS)
    first = RenderParams(rng.choice(sorted(GM_PROGRAMS)), rng.choice(fonts),
                         round(rng.uniform(*TEMPO_RANGE), 3), rng.randint(*TRANSPOSE_RANGE))
    other_font = next(f for f in fonts if f != first.soundfont)
    programs = rng.sample([p for p in sorted(GM_PROGRAMS) if p != first.program], COVER_VERSIONS)
    return [first] + [RenderParams(p, other_font, round(rng.uniform(*TEMPO_RANGE), 3),
                                   rng.randint(*TRANSPOSE_RANGE)) for p in programs]


def gm_family(program: int) -> int:
    """General MIDI instrument family of a 0-based program (0 piano, 1 chromatic
    percussion, 2 organ, 3 guitar, ..., 10 synth lead, 11 synth pad)."""
    return program // 8


def train_version_params(seed: int, track_id: str, first: RenderParams, n: int) -> list[RenderParams]:
    """Seeded parameters of ``n`` train versions of a work whose version 0 is ``first``. The
    versions differ from version 0 and from each other in every parameter but the soundfont:
    each takes a program of another General MIDI family (none of them version 0's), a tempo
    factor from its own one of ``n`` equal parts of TEMPO_RANGE, and a transposition other
    than version 0's; the soundfonts take turns, starting with the one version 0 did not
    use, so both are used from two versions on."""
    if not 0 <= n <= MAX_TRAIN_VERSIONS:
        raise ValueError(f"at most {MAX_TRAIN_VERSIONS} train versions (one per other transposition), not {n}")
    if first.program is None:
        raise ValueError("train versions need version 0's program")
    rng = random.Random(f"{seed}:train:{track_id}")
    other_font = next(f for f in sorted(SOUNDFONTS) if f != first.soundfont)
    by_family: dict[int, list[int]] = defaultdict(list)
    for program in sorted(GM_PROGRAMS):
        by_family[gm_family(program)].append(program)
    families = rng.sample(sorted(f for f in by_family if f != gm_family(first.program)), n)
    parts = rng.sample(range(n), n)
    shifts = rng.sample([t for t in range(TRANSPOSE_RANGE[0], TRANSPOSE_RANGE[1] + 1) if t != first.transpose], n)
    lo, hi = TEMPO_RANGE
    return [RenderParams(rng.choice(by_family[family]), (other_font, first.soundfont)[k % 2],
                         round(lo + (parts[k] + rng.uniform(0.05, 0.95)) * (hi - lo) / n, 3), shifts[k])
            for k, family in enumerate(families)]


def music21_entries(out_dir: Path, seed: int, max_works: int | None) -> list[Entry]:
    """Planned outputs of the corpus parts: a seeded choice of at most the cap's works each."""
    sf_licences = {name: debian_licence(pkg, path) for name, (pkg, path) in SOUNDFONTS.items()}
    entries: list[Entry] = []
    for part, (cap, _) in MUSIC21_PARTS.items():
        works = corpus_works(part)
        random.Random(f"{seed}:{part}").shuffle(works)
        source = f"music21:{part}"
        for f, number, merge, name in works[: min(cap, max_works or cap)]:
            track_id = f"{source_dir(source)}__{name}"
            params = render_params(seed, track_id)[0]
            rel = f"audio/{source_dir(source)}/{name}.flac"
            entries.append(Entry(rel, source, music21_licence(part, f, params.soundfont, sf_licences), track_id,
                                 False, Music21Job(str(f), number, merge, out_dir / "midi" / f"{track_id}.mid",
                                                   out_dir / rel, params)))
    return entries


def twins(entries: Iterable[Entry], out_dir: Path, durations: dict[str, float]) -> set[str]:
    """track_ids of Debian files that have a same-length near-copy in their package (another
    mix of the same piece): envelope correlation of at least TWIN_CORR."""
    by_source: dict[str, list[Entry]] = defaultdict(list)
    for e in entries:
        if isinstance(e.job, DebianJob):
            by_source[e.source].append(e)
    found: set[str] = set()
    for items in by_source.values():
        items.sort(key=lambda e: durations[e.rel_path])
        for a, b in pairwise(items):
            if durations[b.rel_path] - durations[a.rel_path] > TWIN_TOLERANCE_S:
                continue
            env_a, env_b = (log_envelope(sf.read(out_dir / e.rel_path, dtype="float32")[0]) for e in (a, b))
            n = min(env_a.shape[0], env_b.shape[0])
            if float(np.mean(env_a[:n] * env_b[:n])) >= TWIN_CORR:
                LOG.info("%s and %s are mixes of one piece", a.track_id, b.track_id)
                found |= {a.track_id, b.track_id}
    return found


@dataclass(frozen=True)
class SourceSize:
    """A source (Debian package or ``music21:<part>``) with its number of tracks and hours."""

    source: str
    tracks: int
    hours: float

    @property
    def music21(self) -> bool:
        return self.source.startswith("music21:")


HOLDOUT_RULE = (
    "Whole sources are held out. Candidates are the sources with at least {min_source_tracks} tracks. "
    "Draw k (k = 0, 1, ...) shuffles the candidate music21 parts and Debian packages with "
    "random.Random('holdout:<seed>:<k>'), puts the first two parts one in each half ('select', 'report'), "
    "then adds the shuffled packages one by one, each to the half with fewer tracks (ties: 'select'; a half "
    "that already has {min_packages} packages while the other has not gives way), until each half has "
    "{min_packages} packages; then the remaining packages and parts, shuffled together, in the same way "
    "until the held-out sources hold at least {min_tracks} tracks and {min_share:.0%} of all hours. The first "
    "draw whose smaller half has at least {balance:.0%} of the larger half's tracks is kept "
    "(after {max_draws} draws, the most balanced one).")
HOLDOUT_BALANCE = 0.8
HOLDOUT_MAX_DRAWS = 1000


def _one_holdout_draw(rng: random.Random, sizes: list[SourceSize], min_tracks: int, min_share: float,
                      min_source_tracks: int, min_packages: int) -> dict[str, list[SourceSize]]:
    """One seeded draw of the rule in HOLDOUT_RULE (``sizes`` sorted by source)."""
    eligible = [s for s in sizes if s.tracks >= min_source_tracks]
    parts = [s for s in eligible if s.music21]
    packages = [s for s in eligible if not s.music21]
    if len(parts) < 2 or len(packages) < 2 * min_packages:
        raise ValueError(f"holding out needs 2 music21 parts and {2 * min_packages} Debian packages with at "
                         f"least {min_source_tracks} tracks each; there are {len(parts)} and {len(packages)}")
    rng.shuffle(parts)
    rng.shuffle(packages)
    halves: dict[str, list[SourceSize]] = {"select": [parts[0]], "report": [parts[1]]}

    def tracks(half: str) -> int:
        return sum(s.tracks for s in halves[half])

    def n_packages(half: str) -> int:
        return sum(not s.music21 for s in halves[half])

    def add(source: SourceSize) -> None:
        smaller, larger = sorted(HELD_OUT_SPLITS, key=lambda h: (tracks(h), HELD_OUT_SPLITS.index(h)))
        if n_packages(smaller) >= min_packages > n_packages(larger):
            smaller = larger
        halves[smaller].append(source)

    while min(n_packages(h) for h in HELD_OUT_SPLITS) < min_packages:
        add(packages.pop(0))
    rest = packages + parts[2:]
    rng.shuffle(rest)
    total_hours = sum(s.hours for s in sizes)

    def enough() -> bool:
        held = [s for h in HELD_OUT_SPLITS for s in halves[h]]
        return sum(s.tracks for s in held) >= min_tracks and sum(s.hours for s in held) >= min_share * total_hours

    while not enough():
        if not rest:
            raise ValueError(f"the sources with at least {min_source_tracks} tracks do not reach {min_tracks} "
                             f"tracks and {min_share:.0%} of the hours")
        add(rest.pop(0))
    return halves


def draw_holdout(sizes: Iterable[SourceSize], seed: int, min_tracks: int = HOLDOUT_MIN_TRACKS,
                 min_share: float = HOLDOUT_MIN_SHARE, min_source_tracks: int = HOLDOUT_MIN_SOURCE_TRACKS,
                 min_packages: int = HOLDOUT_MIN_PACKAGES) -> tuple[dict[str, list[str]], int]:
    """Seeded choice of whole sources to hold out from training, split into a 'select' and
    a 'report' half (rule: HOLDOUT_RULE). Returns ({half: sorted sources}, number of the
    kept draw). Depends only on the seed and the (source, tracks, hours) entries, not on
    their order. Raises ValueError when the sources cannot meet the rule."""
    ordered = sorted(sizes, key=lambda s: s.source)
    if len({s.source for s in ordered}) != len(ordered):
        raise ValueError("each source may appear only once")
    best: tuple[float, int, dict[str, list[SourceSize]]] | None = None
    for k in range(HOLDOUT_MAX_DRAWS):
        halves = _one_holdout_draw(random.Random(f"holdout:{seed}:{k}"), list(ordered), min_tracks, min_share,
                                   min_source_tracks, min_packages)
        counts = sorted(sum(s.tracks for s in halves[h]) for h in HELD_OUT_SPLITS)
        balance = counts[0] / counts[1]
        if best is None or balance > best[0]:
            best = (balance, k, halves)
        if balance >= HOLDOUT_BALANCE:
            break
    assert best is not None
    return {h: sorted(s.source for s in best[2][h]) for h in HELD_OUT_SPLITS}, best[1]


def holdout_record(sizes: Iterable[SourceSize], seed: int, halves: dict[str, list[str]], draw: int) -> dict[str, Any]:
    """The content of holdout.json: seed, rule, chosen sources of each half with their sizes."""
    by_name = {s.source: s for s in sizes}
    total_tracks = sum(s.tracks for s in by_name.values())
    total_hours = sum(s.hours for s in by_name.values())
    record: dict[str, Any] = {
        "seed": seed,
        "rule": HOLDOUT_RULE.format(min_source_tracks=HOLDOUT_MIN_SOURCE_TRACKS, min_packages=HOLDOUT_MIN_PACKAGES,
                                    min_tracks=HOLDOUT_MIN_TRACKS, min_share=HOLDOUT_MIN_SHARE,
                                    balance=HOLDOUT_BALANCE, max_draws=HOLDOUT_MAX_DRAWS),
        "parameters": {"min_tracks": HOLDOUT_MIN_TRACKS, "min_share_of_hours": HOLDOUT_MIN_SHARE,
                       "min_source_tracks": HOLDOUT_MIN_SOURCE_TRACKS, "min_packages_per_half": HOLDOUT_MIN_PACKAGES,
                       "balance": HOLDOUT_BALANCE, "max_draws": HOLDOUT_MAX_DRAWS},
        "draw": draw,
        "all_sources": {"sources": len(by_name), "tracks": total_tracks, "hours": round(total_hours, 3)},
    }
    for half in HELD_OUT_SPLITS:
        chosen = [by_name[name] for name in halves[half]]
        record[half] = {"sources": [{"source": s.source, "tracks": s.tracks, "hours": round(s.hours, 3)}
                                    for s in chosen],
                        "tracks": sum(s.tracks for s in chosen), "hours": round(sum(s.hours for s in chosen), 3)}
    held = [by_name[name] for half in HELD_OUT_SPLITS for name in halves[half]]
    record["held_out"] = {"tracks": sum(s.tracks for s in held), "hours": round(sum(s.hours for s in held), 3),
                          "share_of_tracks": round(sum(s.tracks for s in held) / max(1, total_tracks), 4),
                          "share_of_hours": round(sum(s.hours for s in held) / max(1e-9, total_hours), 4)}
    return record


def assign_splits(entries: Iterable[Entry], seed: int, val_fraction: float, train_only: set[str],
                  held_out: dict[str, str] | None = None) -> dict[str, str]:
    """track_id -> split. Every track of a held-out source gets its half (``held_out``:
    source -> 'select'/'report'). In the other sources, round(val_fraction * n) tracks (at
    least one when the source has >= 3) go to 'val', ranked by a seeded hash, and the rest
    to 'train'; ``train_only`` tracks (variants and twins of other files) never go to
    'val', so val holds no near-copy of a train file."""
    held_out = held_out or {}
    by_source: dict[str, list[Entry]] = defaultdict(list)
    for e in entries:
        by_source[e.source].append(e)
    split: dict[str, str] = {}
    for source, items in by_source.items():
        if source in held_out:
            split.update({e.track_id: held_out[source] for e in items})
            continue
        n_val = 0 if len(items) < 3 else max(1, round(val_fraction * len(items)))
        ranked = sorted((e.track_id for e in items if e.track_id not in train_only),
                        key=lambda t: hashlib.sha256(f"{seed}:{t}".encode()).hexdigest())
        chosen = set(ranked[:n_val])
        split.update({e.track_id: "val" if e.track_id in chosen else "train" for e in items})
    return split


# ----------------------------------------------------------------------------- running


def run_all(jobs: list[tuple[str, DebianJob | Music21Job | CoverJob]], workers: int,
            on_done: Callable[[str, float | None, str | None], None]) -> None:
    """Run (key, job) pairs on ``workers`` processes; report each as (key, duration, error)."""
    if not jobs:
        return
    with ProcessPoolExecutor(max_workers=workers, initializer=init_worker) as pool:
        futures: dict[Future[float], str] = {pool.submit(run_job, job): key for key, job in jobs}
        for i, fut in enumerate(as_completed(futures), 1):
            key = futures[fut]
            try:
                on_done(key, fut.result(), None)
            except Exception as exc:  # one bad file must not stop the others
                on_done(key, None, f"{type(exc).__name__}: {exc}".strip()[:300])
            if i % 25 == 0 or i == len(futures):
                LOG.info("%d/%d done", i, len(futures))


def existing_duration(path: Path) -> float | None:
    """Duration (s) of an already written output, or None when it is absent or unreadable."""
    try:
        return sf.info(str(path)).duration
    except RuntimeError:  # soundfile's error for a missing or broken file
        return None


def write_csv(path: Path, columns: tuple[str, ...], rows: list[dict[str, str]]) -> None:
    """Write rows as CSV atomically."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def summary(manifest: list[dict[str, str]], covers: list[dict[str, str]], cover_hours: float, skipped: int) -> str:
    """Table of files, hours and split counts per source, with totals."""
    stats: dict[str, Counter[str]] = defaultdict(Counter)
    hours: dict[str, float] = defaultdict(float)
    for row in manifest:
        stats[row["source"]][row["split"]] += 1
        hours[row["source"]] += float(row["duration_s"]) / 3600
    head = "".join(f" {name:>6s}" for name in SPLITS)
    lines = [f"{'source':28s} {'files':>6s} {'hours':>7s}{head}"]
    for source in sorted(stats, key=lambda s: (s.startswith("music21:"), s)):
        c = stats[source]
        lines.append(f"{source:28s} {c.total():6d} {hours[source]:7.2f}" + "".join(f" {c[n]:6d}" for n in SPLITS))
    total = Counter(r["split"] for r in manifest)
    lines.append(f"{'TOTAL':28s} {len(manifest):6d} {sum(hours.values()):7.2f}"
                 + "".join(f" {total[n]:6d}" for n in SPLITS))
    split_hours = defaultdict(float)
    for row in manifest:
        split_hours[row["split"]] += float(row["duration_s"]) / 3600
    lines.append(f"{'hours':28s} {'':6s} {'':7s}" + "".join(f" {split_hours[n]:6.2f}" for n in SPLITS))
    debian_h = sum(h for s, h in hours.items() if not s.startswith("music21:"))
    groups = Counter(r["split"] for r in covers if r["version"] == "0")
    lines.append(f"Debian {debian_h:.2f} h, music21 {sum(hours.values()) - debian_h:.2f} h; covers: "
                 f"{sum(groups.values())} groups ({', '.join(f'{n} {groups[n]}' for n in SPLITS if groups[n])}), "
                 f"{len(covers)} recordings ({cover_hours:.2f} h of extra renders); skipped: {skipped}")
    return "\n".join(lines)


def source_sizes(manifest: list[dict[str, str]]) -> list[SourceSize]:
    """(source, tracks, hours) of every source of the manifest rows."""
    tracks: Counter[str] = Counter()
    hours: dict[str, float] = defaultdict(float)
    for row in manifest:
        tracks[row["source"]] += 1
        hours[row["source"]] += float(row["duration_s"]) / 3600
    return [SourceSize(source, tracks[source], hours[source]) for source in sorted(tracks)]


def render_row(version: int, params: RenderParams | None) -> dict[str, str]:
    """The RENDER_COLUMNS of a file rendered with ``params`` (blank for a decoded file)."""
    if params is None:
        return {"version": str(version), "program": "", "soundfont": "", "tempo": "", "transpose": ""}
    return {"version": str(version), "program": "" if params.program is None else str(params.program),
            "soundfont": params.soundfont, "tempo": str(params.tempo), "transpose": str(params.transpose)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="output folder (audio/, covers/, midi/, CSV files)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of work choice, rendering, held-out sources and split (default 0)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="share of each train source's tracks in val")
    parser.add_argument("--max-works", type=int, default=None, help="at most this many works per corpus part")
    parser.add_argument("--train-versions", type=int, default=DEFAULT_TRAIN_VERSIONS,
                        choices=range(MAX_TRAIN_VERSIONS + 1), metavar=f"0..{MAX_TRAIN_VERSIONS}",
                        help=f"extra renders of each train music21 work (default {DEFAULT_TRAIN_VERSIONS})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    warnings.filterwarnings("ignore")
    out: Path = args.out_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()

    entries = debian_entries(out, args.seed) + music21_entries(out, args.seed, args.max_works)
    LOG.info("planned %d files (%d music21 works)", len(entries), sum(e.source.startswith("music21:") for e in entries))
    durations: dict[str, float] = {}
    skipped: list[dict[str, str]] = []

    def record(key: str, duration: float | None, error: str | None) -> None:
        if duration is not None:
            durations[key] = duration
        else:
            LOG.warning("skipped %s: %s", key, error)
            skipped.append({"path": key, "reason": str(error)})

    todo: list[tuple[str, DebianJob | Music21Job | CoverJob]] = []
    for e in entries:
        known = existing_duration(out / e.rel_path)
        if known is None:
            todo.append((e.rel_path, e.job))
        else:
            durations[e.rel_path] = known
    LOG.info("%d files already written, %d to make", len(entries) - len(todo), len(todo))
    run_all(todo, args.jobs, record)
    converted = time.monotonic()

    # The split starts from the held-out draw over whole sources; nothing that depends on the
    # split (covers, train versions, CSV files) has been made before it.
    kept = [e for e in entries if e.rel_path in durations]
    sizes = source_sizes([{"source": e.source, "duration_s": str(durations[e.rel_path])} for e in kept])
    halves, draw = draw_holdout(sizes, args.seed)
    holdout = holdout_record(sizes, args.seed, halves, draw)
    previous = out / "holdout.json"
    if previous.is_file():
        old = json.loads(previous.read_text())
        if old.get("seed") == args.seed and any(
                sorted(s["source"] for s in old.get(h, {}).get("sources", [])) != halves[h] for h in HELD_OUT_SPLITS):
            LOG.warning("the held-out sources differ from those recorded in %s (other sources or files?)", previous)
    tmp = previous.with_name(previous.name + ".tmp")
    tmp.write_text(json.dumps(holdout, indent=2) + "\n")
    os.replace(tmp, previous)
    held_out = {source: half for half in HELD_OUT_SPLITS for source in halves[half]}
    for half in HELD_OUT_SPLITS:
        LOG.info("held out (%s): %s", half, ", ".join(halves[half]))

    train_only = {e.track_id for e in kept if e.variant} | twins(kept, out, durations)
    split = assign_splits(kept, args.seed, args.val_fraction, train_only, held_out)
    manifest = [{"path": e.rel_path, "source": e.source, "licence": e.licence,
                 "duration_s": f"{durations[e.rel_path]:.3f}", "split": split[e.track_id], "track_id": e.track_id}
                for e in kept]
    assert not any(r["split"] == "train" and r["source"] in held_out for r in manifest)
    write_csv(out / "manifest.csv", MANIFEST_COLUMNS, manifest)

    # Covers: every music21 work outside train (val, select, report) gets COVER_VERSIONS more renders.
    cover_rows: list[dict[str, str]] = []
    cover_todo: list[tuple[str, DebianJob | Music21Job | CoverJob]] = []
    for e in kept:
        if split[e.track_id] == "train" or not isinstance(e.job, Music21Job):
            continue
        for version, params in enumerate(render_params(args.seed, e.track_id)):
            rel = e.rel_path if version == 0 else f"covers/{e.track_id}/v{version}.flac"
            cover_rows.append({"track_id": e.track_id, "path": rel, "split": split[e.track_id], "source": e.source,
                               **render_row(version, params)})
            known = existing_duration(out / rel)
            if known is not None:
                durations[rel] = known
            else:
                cover_todo.append((rel, CoverJob(e.job.midi, out / rel, params)))
    LOG.info("covers: %d to render", len(cover_todo))
    run_all(cover_todo, args.jobs, record)
    cover_rows = [r for r in cover_rows if r["path"] in durations]
    write_csv(out / "covers.csv", COVERS_COLUMNS, cover_rows)
    covered = time.monotonic()

    sf_licences = {name: debian_licence(pkg, path) for name, (pkg, path) in SOUNDFONTS.items()}
    version_rows: list[dict[str, str]] = []
    version_todo: list[tuple[str, DebianJob | Music21Job | CoverJob]] = []
    for e in kept:
        if split[e.track_id] != "train" or not isinstance(e.job, Music21Job):
            continue
        part = e.source.removeprefix("music21:")
        for version, params in enumerate(train_version_params(args.seed, e.track_id, e.job.params,
                                                              args.train_versions), 1):
            rel = f"versions/{e.track_id}/v{version}.flac"
            licence = music21_licence(part, Path(e.job.score_file), params.soundfont, sf_licences)
            version_rows.append({"path": rel, "source": e.source, "split": "train", "track_id": e.track_id,
                                 "licence": licence, **render_row(version, params)})
            known = existing_duration(out / rel)
            if known is not None:
                durations[rel] = known
            else:
                version_todo.append((rel, CoverJob(e.job.midi, out / rel, params)))
    LOG.info("train versions: %d to render", len(version_todo))
    run_all(version_todo, args.jobs, record)
    version_rows = [dict(r, duration_s=f"{durations[r['path']]:.3f}") for r in version_rows if r["path"] in durations]
    job_of = {e.track_id: e.job for e in kept}
    train_rows = [dict(r, **render_row(0, getattr(job_of[r["track_id"]], "params", None)))
                  for r in manifest if r["split"] == "train"]
    write_csv(out / "train.csv", TRAIN_COLUMNS, train_rows + version_rows)
    write_csv(out / "skipped.csv", ("path", "reason"), skipped)

    cover_hours = sum(durations[r["path"]] for r in cover_rows if r["version"] != "0") / 3600
    version_hours = sum(float(r["duration_s"]) for r in version_rows) / 3600
    train_hours = sum(float(r["duration_s"]) for r in train_rows) / 3600
    print(summary(manifest, cover_rows, cover_hours, len(skipped)))
    print(f"held out: select {holdout['select']['tracks']} tracks {holdout['select']['hours']:.2f} h "
          f"({', '.join(halves['select'])}); report {holdout['report']['tracks']} tracks "
          f"{holdout['report']['hours']:.2f} h ({', '.join(halves['report'])}); together "
          f"{holdout['held_out']['share_of_hours']:.1%} of the hours (draw {draw})")
    print(f"train versions: {len(version_rows)} renders of {len({r['track_id'] for r in version_rows})} works "
          f"({version_hours:.2f} h); train.csv: {len(train_rows) + len(version_rows)} rows, "
          f"{train_hours + version_hours:.2f} h")
    print(f"elapsed {(time.monotonic() - start) / 60:.1f} min (files {(converted - start) / 60:.1f}, split and covers "
          f"{(covered - converted) / 60:.1f}, train versions {(time.monotonic() - covered) / 60:.1f}); wrote "
          f"{out / 'manifest.csv'}, {out / 'covers.csv'}, {out / 'train.csv'}, {out / 'holdout.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

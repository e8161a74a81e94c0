"""Throughput and memory of the embed pipeline: per stage and end to end, written as JSON.

Full run (the README's figures; a quiet machine, ~15-25 minutes on 2 cores, most of it
writing the test audio, which --workdir keeps for the next run):

    python benchmarks/throughput.py --models pemr,mart --modes default,fast \\
        --workdir bench-audio --json benchmarks/results/throughput.json
    python benchmarks/perf_table.py benchmarks/results/throughput.json    # the README table

Small mode (CI, tests/test_benchmarks.py):

    python benchmarks/throughput.py --minutes 0.5 --files 6 --file-seconds 5 --hour-minutes 1 \\
        --models pemr --modes default --json out.json

Cases ("x realtime" = audio seconds / wall seconds; each model is loaded, and in fast mode
compiled, once before timing; the compile time is reported apart):

- ``mp3``: one MP3 of --minutes (default 10) of synthetic stereo 44.1 kHz music (chords
  with harmonics, a bass line, noise hits on the beat), or --file. End to end, and per
  stage on the same file, one stage at a time: decode (libsndfile, 30-s blocks, downmix),
  resample (soxr to the model rate), log-mel, encoder (the rest of the network).
- ``folder``: --files (200) files of --file-seconds (30) in rotating WAV/FLAC/MP3/OGG;
  end to end, and its ratio to the ``mp3`` case (the target is >= 0.8).
- ``hour``: one --hour-minutes (60) stereo 44.1 kHz MP3 embedded in a fresh subprocess,
  which reports its peak RSS; ``import torch`` alone is measured the same way, so the RSS
  above that baseline is given too.
- ``ablation`` (--ablation): before/after ratios, within one run, of each optimisation:
  network forward on the decoded windows (unfolded NCHW vs BN folded vs + channels_last,
  batch sizes, bfloat16 autocast, compiled), downmix arithmetic, soxr vs torchaudio
  resampling, 1 vs 2 decode threads, fixed torch thread counts vs the library's setting, and
  a plain pipeline (whole-file read, mean, torchaudio, unfolded model, batch 64) end to end.
- ``peer`` (--peer-python): musicnn (benchmarks/peer_musicnn.py, in its own environment)
  on the same folder, against musicembed's default PEMR; skipped, with the reason, when
  it is not available.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

HERE = Path(__file__).resolve().parent
FORMATS = [("wav", "WAV", "PCM_16"), ("flac", "FLAC", "PCM_16"), ("mp3", "MP3", None), ("ogg", "OGG", "VORBIS")]


# ---------------------------------------------------------------- test audio
def synth_music(seconds: float, sr: int = 44100, seed: int = 0, start: float = 0.0) -> np.ndarray:
    """Stereo (samples, 2) float32: a I-vi-IV-V chord progression with harmonics, a bass line
    and noise hits on the beat; ``seed`` picks key and tempo, ``start`` (s) the position in it."""
    rng = np.random.default_rng(seed)
    key = 110 * 2 ** (rng.integers(0, 12) / 12)
    bpm = float(rng.uniform(80, 150))
    beat = 60 / bpm
    n = int(round(seconds * sr))
    t = start + np.arange(n) / sr
    bar = np.floor(t / (4 * beat)).astype(np.int64) % 4
    roots = np.array([0, 9, 5, 7])[bar]
    x = np.zeros(n)
    for third, amp in ((0, 0.12), (4, 0.08), (7, 0.08)):
        f = key * 2 * 2 ** ((roots + third) / 12)
        for h, ha in ((1, 1.0), (2, 0.4), (3, 0.2)):
            x += amp * ha * np.sin(2 * np.pi * f * h * t)
    x += 0.15 * np.sin(2 * np.pi * key * 2 ** (roots / 12) * t)  # bass
    phase = (t % beat) / beat
    noise = np.random.default_rng(seed * 7919 + int(start * 10)).standard_normal(n)
    x += 0.25 * noise * np.exp(-phase * 30)  # a hit on every beat
    x += 0.01 * noise
    left = x * (0.8 + 0.2 * np.sin(2 * np.pi * 0.1 * t))
    return (0.5 * np.stack([left, np.roll(x, 50)], axis=1)).astype(np.float32)


def write_music(path: Path, seconds: float, fmt: str = "MP3", subtype: str | None = None, seed: int = 0) -> None:
    """Written in 10-s blocks so the writer itself stays small."""
    sr = 44100
    with sf.SoundFile(path, "w", samplerate=sr, channels=2, format=fmt, subtype=subtype) as f:
        done = 0.0
        while done < seconds - 1e-9:
            step = min(10.0, seconds - done)
            f.write(synth_music(step, sr, seed, start=done))
            done += step


def _ensure(path: Path, seconds: float, fmt: str, subtype: str | None, seed: int) -> Path:
    tag = path.with_suffix(path.suffix + ".done")
    if not (path.exists() and tag.exists() and tag.read_text() == f"{seconds}"):
        write_music(path, seconds, fmt, subtype, seed)
        tag.write_text(f"{seconds}")
    return path


def make_folder(folder: Path, files: int, seconds: float) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(files):
        ext, fmt, sub = FORMATS[i % len(FORMATS)]
        out.append(_ensure(folder / f"track{i:04d}.{ext}", seconds, fmt, sub, seed=100 + i))
    return out


# ---------------------------------------------------------------- measuring
def peak_rss_mib() -> float:
    """Peak RSS of this process in MiB: VmHWM (Linux), the high-water mark of this process's
    own memory. Not ru_maxrss: Linux carries the parent's RSS over into a child's ru_maxrss
    across fork/exec, so a child started by a large parent would report the parent's size."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(fn, repeat: int = 1) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _xrt(audio_s: float, wall_s: float) -> float:
    return round(audio_s / wall_s, 1) if wall_s > 0 else float("inf")


def stage_breakdown(model, path: Path, batch_size: int | None, repeat: int) -> dict:
    """Each stage alone, one after the other, on one thread of work each."""
    import torch

    from musicembed.audio import _downmix, _Resampler

    info = sf.info(str(path))
    audio_s = info.frames / info.samplerate
    block = int(30 * info.samplerate)

    def decode():
        out = []
        with sf.SoundFile(str(path)) as f:
            buf = np.empty((block, f.channels), np.float32)
            while True:
                got = f.read(block, dtype="float32", always_2d=True, out=buf)
                out.append(_downmix(got, np.empty(len(got), np.float32)))
                if len(got) < block:
                    return out

    t_dec, blocks = _timed(decode, repeat)

    def resample():
        rs = _Resampler(info.samplerate, model.sample_rate)
        return np.concatenate([rs(b, last=i == len(blocks) - 1) for i, b in enumerate(blocks)])

    t_rs, mono = _timed(resample, repeat)
    window = model.config.window_samples
    n = len(mono) // window
    wins = torch.from_numpy(np.ascontiguousarray(mono[: n * window].reshape(n, window)))
    from musicembed.pipeline import default_batch_size

    bs = batch_size or default_batch_size(model.config.method, torch.device("cpu"))
    prepared = model._inference()
    net = prepared.net
    eager = getattr(net, "eager", net)
    frontend = (lambda x: eager.level_mels(x)) if model.config.method == "mart" else (lambda x: eager.frontend(x))

    def batches(fn):
        def run():
            with torch.inference_mode(), torch.autocast("cpu", dtype=prepared.autocast or torch.bfloat16,
                                                        enabled=prepared.autocast is not None):
                for i in range(0, n - bs + 1, bs):
                    fn(wins[i : i + bs])
        return run

    t_mel, _ = _timed(batches(frontend), repeat)
    t_model, _ = _timed(batches(net), repeat)
    used = (n // bs) * bs * window / model.sample_rate  # audio the model stages saw
    t_enc = max(t_model - t_mel, 1e-9)
    return {
        "decode": _xrt(audio_s, t_dec),
        "resample": _xrt(audio_s, t_rs),
        "log_mel": _xrt(used, t_mel),
        "encoder": _xrt(used, t_enc),
        "model_total": _xrt(used, t_model),
        "seconds_per_10min": {k: round(600 / v, 3) for k, v in
                              (("decode", audio_s / t_dec), ("resample", audio_s / t_rs),
                               ("log_mel", used / t_mel), ("encoder", used / t_enc))},
    }


def load(name: str, mode: str, window_s: float | None = None):
    """Model on CPU (or --device), warmed up: the fast mode compiles here, timed apart."""
    from musicembed import load_model

    model = load_model(name, device=ARGS.device, fast=(mode == "fast"))
    t0 = time.perf_counter()
    model.embed(np.zeros(int(model.config.window_seconds * 2.5 * model.sample_rate), np.float32),
                sample_rate=model.sample_rate, batch_size=ARGS.batch_size)
    return model, time.perf_counter() - t0


def case_mp3(model, path: Path) -> dict:
    audio_s = sf.info(str(path)).duration
    wall, _ = _timed(lambda: model.embed(path, batch_size=ARGS.batch_size), ARGS.repeat)
    return {"audio_s": round(audio_s, 2), "wall_s": round(wall, 3), "x_realtime": _xrt(audio_s, wall)}


def case_folder(model, files: list[Path]) -> dict:
    audio_s = sum(sf.info(str(p)).duration for p in files)
    wall, _ = _timed(lambda: model.embed(files, batch_size=ARGS.batch_size), ARGS.repeat)
    return {"files": len(files), "audio_s": round(audio_s, 2), "wall_s": round(wall, 3),
            "x_realtime": _xrt(audio_s, wall)}


def rss_child(argv: list[str]) -> None:
    """--rss-child PATH MODEL MODE: embed in this fresh process, print JSON with the peak RSS."""
    path, name, mode = argv
    if path == "-":  # the cost of `import torch` alone
        base = peak_rss_mib()
        import torch  # noqa: F401

        print(json.dumps({"before_import_mib": round(base, 1), "peak_rss_mib": round(peak_rss_mib(), 1)}))
        return
    from musicembed import load_model

    model = load_model(name, device=ARGS.device, fast=(mode == "fast"))
    t0 = time.perf_counter()
    e = model.embed(Path(path), return_timestamps=True, batch_size=ARGS.batch_size)
    wall = time.perf_counter() - t0
    print(json.dumps({"audio_s": round(e.duration, 2), "windows": len(e.vectors), "wall_s": round(wall, 3),
                      "x_realtime_incl_compile" if mode == "fast" else "x_realtime": _xrt(e.duration, wall),
                      "peak_rss_mib": round(peak_rss_mib(), 1)}))


def _child(args: list[str]) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--device", ARGS.device, "--rss-child", *args]
    if ARGS.batch_size:
        cmd += ["--batch-size", str(ARGS.batch_size)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"child {' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def ablation(name: str, mp3: Path) -> dict:
    """Before/after ratios of each optimisation, measured in this one run."""
    import torch

    from musicembed import load_model
    from musicembed.audio import _downmix, load_audio
    from musicembed.optimize import fold_batchnorm, native_bf16

    model = load_model(name, device="cpu")
    sr = model.sample_rate
    mono = load_audio(mp3, sr)
    window = model.config.window_samples
    n = min(len(mono) // window, 64)
    wins = torch.from_numpy(np.ascontiguousarray(mono[: n * window].reshape(n, window)))
    rep = ARGS.repeat

    def fwd(net, bs, dtype=None):
        starts = list(range(0, n - bs + 1, bs)) or [0]
        used = sum(min(bs, n - s) for s in starts) * window / sr

        def run():
            with torch.inference_mode(), torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                for s in starts:
                    net(wins[s : s + bs])
        run()  # warm-up (and compile)
        return _xrt(used, _timed(run, rep)[0])

    out: dict = {"windows": n}
    plain = model.net
    folded = fold_batchnorm(plain)
    cl = fold_batchnorm(plain).to(memory_format=torch.channels_last)  # .to() converts in place: a second copy
    net_rows = {}
    for bs in ARGS.ablation_batches:
        net_rows[f"unfolded NCHW, batch {bs}"] = fwd(plain, bs)
    for bs in ARGS.ablation_batches:
        net_rows[f"BN folded, batch {bs}"] = fwd(folded, bs)
    for bs in ARGS.ablation_batches:
        net_rows[f"BN folded + channels_last, batch {bs}"] = fwd(cl, bs)
    net_rows["BN folded + channels_last + bfloat16 autocast, batch 4"] = fwd(cl, 4, torch.bfloat16)
    out["bf16_native_here"] = native_bf16(torch.device("cpu"))
    if "fast" in ARGS.modes:
        t0 = time.perf_counter()
        comp = torch.compile(fold_batchnorm(plain).to(memory_format=torch.channels_last), dynamic=False,
                             options={"freezing": True})  # compiled alone (fast mode would keep eager if faster)
        net_rows["compiled (freezing) + BN folded + channels_last, batch 4"] = fwd(comp, 4)
        out["compile_s_incl_first_batch"] = round(time.perf_counter() - t0, 1)
    out["network_forward_x_realtime"] = net_rows

    stereo = synth_music(60.0)
    mean_t, _ = _timed(lambda: stereo.mean(axis=1), max(rep, 3))
    sum_t, _ = _timed(lambda: _downmix(stereo, np.empty(len(stereo), np.float32)), max(rep, 3))
    out["downmix_x_realtime"] = {"x.mean(axis=1)": _xrt(60, mean_t), "column sums * 0.5 (used)": _xrt(60, sum_t)}

    import torchaudio.functional as AF

    import musicembed.audio as audio

    dur = sf.info(str(mp3)).duration
    x44 = audio.load_audio(mp3, 44100)  # mono at the file's rate
    out["resample_44k1_to_model_rate_x_realtime"] = {
        "torchaudio.functional.resample": _xrt(dur, _timed(lambda: AF.resample(torch.from_numpy(x44), 44100, sr),
                                                          max(rep, 2))[0]),
        "soxr streaming, 30-s blocks (used)": _xrt(dur, _timed(lambda: list(audio._blocks_from_array(
            x44, 44100, sr, 30 * 44100)), max(rep, 2))[0]),
    }
    decode = {}
    for k in (1, 2):
        def dec(k=k):
            return sum(len(b) for _, b in audio.stream_many([mp3], sr, threads=k) if isinstance(b, np.ndarray))
        decode[f"decode + downmix + resample, {k} thread(s)"] = _xrt(dur, _timed(dec, max(rep, 2))[0])
    for k in (1, 2):
        decode[f"end to end, {k} decode thread(s)"] = _xrt(dur, _timed(lambda k=k: model.embed(mp3, decode_threads=k),
                                                                       rep)[0])
    out["decode_threads_x_realtime"] = decode

    threads = {}
    old = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)  # torch's default; embed lowers it while it runs
    m = load_model(name, device="cpu")
    m.embed(mono[: window * 3], sample_rate=sr)
    for k in sorted({1, os.cpu_count() or 1}):
        threads[f"{k} torch thread(s) for the model"] = _xrt(dur, _timed(lambda k=k: m.embed(mp3, threads=k), rep)[0])
    threads["library default (model threads = cores - decode threads)"] = _xrt(dur, _timed(lambda: m.embed(mp3), rep)[0])
    torch.set_num_threads(old)
    out["end_to_end_threads_x_realtime"] = threads

    # the plain pipeline: whole-file decode, x.mean, torchaudio resample, unfolded eager batch 64
    def plain_pipeline():
        import torchaudio.functional as AF

        x, fsr = sf.read(str(mp3), dtype="float32", always_2d=True)
        y = AF.resample(torch.from_numpy(x.mean(axis=1)), fsr, sr)
        w = y[: len(y) // window * window].reshape(-1, window)
        with torch.inference_mode():
            for i in range(0, len(w), 64):
                plain(w[i : i + 64])
    out["end_to_end_plain_vs_default_x_realtime"] = {
        "plain (sf.read, mean, torchaudio resample, unfolded, batch 64)": _xrt(dur, _timed(plain_pipeline, rep)[0]),
        "musicembed default": _xrt(dur, _timed(lambda: model.embed(mp3), rep)[0]),
    }
    return out


def peer(files: list[Path], folder: Path) -> dict:
    if not ARGS.peer_python:
        return {"skipped": "no --peer-python given (an environment with musicnn and tensorflow, see "
                           "benchmarks/peer_musicnn.py)"}
    py = Path(ARGS.peer_python)
    if not py.exists():
        return {"skipped": f"{py} does not exist"}
    cmd = [str(py), str(HERE / "peer_musicnn.py"), str(folder)]
    if ARGS.peer_files:
        cmd += ["--limit", str(ARGS.peer_files)]
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        return {"skipped": f"musicnn did not run: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}"}
    theirs = json.loads(r.stdout.strip().splitlines()[-1])
    model, _ = load("pemr", "default")
    subset = files[: ARGS.peer_files] if ARGS.peer_files else files
    ours = case_folder(model, subset)
    return {"musicnn": theirs, "musicembed_pemr_default": ours,
            "speedup": round(ours["x_realtime"] / theirs["x_realtime"], 1)}


def main() -> None:
    global ARGS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--models", default="pemr", help="comma-separated: pemr,mart (names or model folders)")
    ap.add_argument("--modes", default="default,fast", help="comma-separated: default,fast")
    ap.add_argument("--cases", default="mp3,folder,hour,ablation,peer", help="which cases to run")
    ap.add_argument("--minutes", type=float, default=10.0, help="length of the single MP3")
    ap.add_argument("--file", type=Path, help="use this file instead of writing the MP3")
    ap.add_argument("--files", type=int, default=200, help="files in the folder")
    ap.add_argument("--file-seconds", type=float, default=30.0)
    ap.add_argument("--hour-minutes", type=float, default=60.0, help="length of the long file (RSS case)")
    ap.add_argument("--workdir", type=Path, help="keep the written audio here (reused when present)")
    ap.add_argument("--batch-size", type=int, help="windows per batch (default: the library's)")
    ap.add_argument("--repeat", type=int, default=1, help="take the best of N timings")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--ablation-batches", default="1,2,4,8,16,64")
    ap.add_argument("--peer-python", help="python of an environment with musicnn + tensorflow")
    ap.add_argument("--peer-files", type=int, default=0, help="time the peer on the first N files only (0: all)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--rss-child", nargs=3, help=argparse.SUPPRESS)
    ARGS = ap.parse_args()
    if ARGS.rss_child:
        rss_child(ARGS.rss_child)
        return
    ARGS.modes = [m for m in ARGS.modes.split(",") if m]
    ARGS.ablation_batches = [int(b) for b in ARGS.ablation_batches.split(",")]
    cases = set(ARGS.cases.split(","))
    models = [m for m in ARGS.models.split(",") if m]

    tmp = tempfile.TemporaryDirectory()
    work = ARGS.workdir or Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    mp3 = ARGS.file or _ensure(work / f"music-{ARGS.minutes:g}min.mp3", ARGS.minutes * 60, "MP3", None, 0)
    folder = work / f"folder-{ARGS.files}x{ARGS.file_seconds:g}s"
    files = make_folder(folder, ARGS.files, ARGS.file_seconds) if cases & {"folder", "peer"} else []
    hour = _ensure(work / f"music-{ARGS.hour_minutes:g}min.mp3", ARGS.hour_minutes * 60, "MP3", None, 1) \
        if "hour" in cases else None
    print(f"test audio ready in {time.perf_counter() - t0:.0f} s ({work})", file=sys.stderr)

    import torch

    import musicembed

    report: dict = {
        "command": "python benchmarks/" + " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "device": ARGS.device,
                    "gpu": torch.cuda.get_device_name(0) if ARGS.device.startswith("cuda") else None,
                    "musicembed": musicembed.__version__ if hasattr(musicembed, "__version__") else None},
        "inputs": {"mp3": str(ARGS.file) if ARGS.file else f"synthetic {ARGS.minutes:g}-min stereo 44.1 kHz MP3",
                   "folder": f"{ARGS.files} x {ARGS.file_seconds:g}-s files, WAV/FLAC/MP3/OGG in turn",
                   "hour": f"synthetic {ARGS.hour_minutes:g}-min stereo 44.1 kHz MP3"},
        "results": [],
    }
    if "hour" in cases:
        report["import_torch_rss_mib"] = _child(["-", "-", "-"])["peak_rss_mib"]
    for name in models:
        for mode in ARGS.modes:
            model, compile_s = load(name, mode)
            row: dict = {"model": name, "mode": mode, "inference": model.inference_mode,
                         "batch_size": ARGS.batch_size or "library default", "warmup_s": round(compile_s, 2)}
            print(f"{name} {mode}: {model.inference_mode}", file=sys.stderr)
            if "mp3" in cases:
                row["mp3"] = case_mp3(model, mp3)
                row["mp3"]["stages"] = stage_breakdown(model, mp3, ARGS.batch_size, ARGS.repeat)
            if "folder" in cases:
                row["folder"] = case_folder(model, files)
                if "mp3" in row:
                    row["folder"]["ratio_to_mp3"] = round(row["folder"]["x_realtime"] / row["mp3"]["x_realtime"], 2)
            if "hour" in cases:
                h = _child([str(hour), name, mode])
                h["peak_rss_above_import_torch_mib"] = round(h["peak_rss_mib"] - report["import_torch_rss_mib"], 1)
                row["hour"] = h
            report["results"].append(row)
            print(json.dumps(row), file=sys.stderr)
            del model
    if "ablation" in cases:
        report["ablation"] = {name: ablation(name, mp3) for name in models}
    if "peer" in cases:
        report["peer"] = peer(files, folder)
    text = json.dumps(report, indent=2)
    print(text)
    if ARGS.json:
        ARGS.json.parent.mkdir(parents=True, exist_ok=True)
        ARGS.json.write_text(text + "\n")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


ARGS: argparse.Namespace


if __name__ == "__main__":
    main()

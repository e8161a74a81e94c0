"""Soak test: RSS, open file descriptors and threads over thousands of small files.

    python benchmarks/soak.py --files 3000 --rounds 2 --mode api      # Model.iter_embed in this process
    python benchmarks/soak.py --files 3000 --mode cli                 # `musicembed embed DIR -r --out X.npz`
    python benchmarks/soak.py --files 3000 --mode loader --workers 2  # torch DataLoader decoding in workers
    python benchmarks/soak.py ... --model pemr                        # a real model (default: a tiny one)

Writes N short files (WAV, FLAC, OGG, MP3; 0.2-1.2 s; 8-48 kHz; mono or stereo; 2% of them
broken: empty, text renamed .mp3, truncated FLAC) into a temporary folder, then embeds them
and prints, every --every files, the resident memory (VmRSS, MiB; for loader mode the main
process and its workers), the open file descriptors and the threads. Linux only (/proc).

A leak shows as RSS or fds that keep growing after the first round; the summary compares
the samples after the first 25% of the files (warm-up: allocator pools, torch caches) with
the last one.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def write_files(folder: Path, n: int, seed: int = 0) -> list[Path]:
    import soundfile as sf

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        sub = folder / f"d{i // 500:03d}"
        sub.mkdir(exist_ok=True)
        kind = rng.integers(100)
        if kind < 2:  # broken files: every failure path too
            p = sub / (f"broken{i:05d}" + (".wav", ".mp3", ".flac")[i % 3])
            if i % 3 == 0:
                p.write_bytes(b"")
            elif i % 3 == 1:
                p.write_text("not audio\n" * 20)
            else:
                sf.write(p, rng.standard_normal(8000).astype(np.float32) * 0.1, 16000, format="FLAC")
                p.write_bytes(p.read_bytes()[:300])
            paths.append(p)
            continue
        sr = int(rng.choice([8000, 16000, 22050, 44100, 48000]))
        ch = int(rng.integers(1, 3))
        x = (0.2 * rng.standard_normal((int(sr * rng.uniform(0.2, 1.2)), ch))).astype(np.float32)
        fmt, ext = [("WAV", ".wav"), ("FLAC", ".flac"), ("OGG", ".ogg"), ("MP3", ".mp3")][i % 4]
        p = sub / f"f{i:05d}{ext}"
        sf.write(p, x, sr, format=fmt)
        paths.append(p)
    return paths


def proc_status(pid: int | str = "self") -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "Threads"):
                out[k] = int(v.split()[0])
    try:
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        out["fds"] = -1
    return out


def children(pid: int | str = "self") -> list[int]:
    kids = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids += [int(x) for x in f.read().split()]
        except OSError:
            pass
    return kids


class Log:
    def __init__(self) -> None:
        self.rows: list[tuple[int, float, int, int]] = []
        self.t0 = time.perf_counter()
        print(f"{'files':>8} {'time_s':>8} {'rss_MiB':>9} {'fds':>5} {'threads':>7}", flush=True)

    def sample(self, done: int, pid: int | str = "self", with_children: bool = False) -> None:
        s = proc_status(pid)
        if "VmRSS" not in s:  # the process has just exited
            raise ProcessLookupError(pid)
        rss = s["VmRSS"]
        if with_children:
            for c in children(pid):
                try:
                    rss += proc_status(c)["VmRSS"]
                except OSError:
                    pass
        self.rows.append((done, rss / 1024, s["fds"], s["Threads"]))
        print(f"{done:8d} {time.perf_counter() - self.t0:8.1f} {rss / 1024:9.1f} {s['fds']:5d} {s['Threads']:7d}",
              flush=True)

    def summary(self, total: int) -> None:
        if len(self.rows) < 2:
            return
        warm = next((r for r in self.rows if r[0] >= total * 0.25), self.rows[0])
        last = self.rows[-1]
        peak = max(r[1] for r in self.rows)
        print(f"summary: {total} files; after warm-up ({warm[0]} files) RSS {warm[1]:.1f} MiB -> {last[1]:.1f} MiB "
              f"at the end ({last[1] - warm[1]:+.1f} MiB), peak {peak:.1f} MiB; fds {warm[2]} -> {last[2]}; "
              f"threads {warm[3]} -> {last[3]}", flush=True)


def tiny_model_dir(folder: Path) -> Path:
    import torch

    from musicembed.config import EncoderConfig, FrontendConfig, ModelConfig
    from musicembed.hub import save_pretrained
    from musicembed.models import build_model

    torch.manual_seed(0)
    cfg = ModelConfig(method="pemr", name="soak-tiny", window_samples=8000,
                      frontend=FrontendConfig(sample_rate=16000, n_fft=512, hop_length=128, n_mels=32),
                      encoder=EncoderConfig(channels=[8, 8], pools=[[4, 4], [4, 4]]))
    return save_pretrained(build_model(cfg), folder / "soak-tiny", cfg)


def run_api(model_ref: str, files: list[Path], rounds: int, every: int, batch_size: int | None) -> None:
    from musicembed import load_model

    model = load_model(model_ref, device="cpu")
    log = Log()
    log.sample(0)
    done = failed = 0
    for _ in range(rounds):
        for _, res in model.iter_embed(files, batch_size=batch_size):
            done += 1
            failed += isinstance(res, Exception)
            if done % every == 0:
                log.sample(done)
    log.sample(done)
    print(f"{failed} of {done} inputs failed (the broken files)")
    log.summary(done)


class _Files:
    """A map-style dataset: index -> (path, mono waveform at the model's rate, or the error text)."""

    def __init__(self, files: list[Path], sr: int) -> None:
        self.files, self.sr = files, sr

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from musicembed.audio import load_audio
        from musicembed.errors import AudioError

        try:
            return str(self.files[i]), load_audio(self.files[i], self.sr)
        except AudioError as e:
            return str(self.files[i]), str(e)


def run_loader(model_ref: str, files: list[Path], rounds: int, every: int, workers: int) -> None:
    import torch

    from musicembed import load_model

    model = load_model(model_ref, device="cpu")
    log = Log()
    log.sample(0, with_children=True)
    done = failed = 0
    for _ in range(rounds):
        loader = torch.utils.data.DataLoader(_Files(files, model.sample_rate), batch_size=8, num_workers=workers,
                                             collate_fn=list, persistent_workers=False)
        for batch in loader:
            for _, x in batch:
                done += 1
                if isinstance(x, str):
                    failed += 1
                else:
                    model.embed(x, sample_rate=model.sample_rate)
                if done % every == 0:
                    log.sample(done, with_children=True)
    log.sample(done, with_children=True)
    print(f"{failed} of {done} inputs failed (the broken files)")
    log.summary(done)


def run_cli(model_ref: str, folder: Path, total: int, interval: float) -> None:
    out = folder.parent / "soak.npz"
    cmd = [sys.executable, "-m", "musicembed", "embed", str(folder), "-r", "-m", model_ref, "--out", str(out),
           "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = Log()
    partial = Path(str(out) + ".partial")
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True)
    reader.start()
    done = 0
    while proc.poll() is None:
        time.sleep(interval)
        try:
            # files finished so far; the store is removed once the output is written
            done = max(done, partial_count(partial)) if partial.exists() or not done else total
            log.sample(done, proc.pid)
        except (OSError, ValueError):  # ProcessLookupError included: it ended between poll() and the sample
            pass
    reader.join(5)
    print("".join(err[-3:]).rstrip())
    print(f"exit code {proc.returncode}")
    log.summary(total)


def partial_count(partial: Path) -> int:
    """Records in the run's partial store so far (the CLI appends one per finished file)."""
    from musicembed.io.resume import read_records

    if not partial.exists():
        return 0
    with open(partial, "rb") as f:
        return len(read_records(f)[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=1, help="api/loader: passes over the files")
    ap.add_argument("--mode", choices=["api", "cli", "loader"], default="api")
    ap.add_argument("--model", default=None, help="model reference (default: a tiny random PEMR)")
    ap.add_argument("--every", type=int, default=250, help="api/loader: sample every N files")
    ap.add_argument("--interval", type=float, default=2.0, help="cli: sample every N seconds")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int)
    args = ap.parse_args()
    if not os.path.isdir("/proc/self/fd"):
        sys.exit("needs Linux /proc")

    with tempfile.TemporaryDirectory(prefix="musicembed-soak-") as tmp:
        folder = Path(tmp) / "music"
        folder.mkdir()
        t0 = time.perf_counter()
        with multiprocessing.get_context("spawn").Pool(1) as pool:  # keeps the writer's memory out of our RSS
            files = pool.apply(write_files, (folder, args.files))
        print(f"wrote {len(files)} files in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        model = args.model or str(tiny_model_dir(Path(tmp)))
        if args.mode == "api":
            run_api(model, files, args.rounds, args.every, args.batch_size)
        elif args.mode == "loader":
            run_loader(model, files, args.rounds, args.every, args.workers)
        else:
            run_cli(model, folder, len(files), args.interval)


if __name__ == "__main__":
    main()

"""Peak memory and speed embedding one long file (default: 60-minute stereo 44.1 kHz MP3).

    python benchmarks/long_file.py --minutes 60 --model pemr [--file existing.mp3] [--json out.json]

Writes the test file (a synthetic chord progression with noise) if --file is not given,
then embeds it in this process and prints x realtime and the peak RSS of the process
(interpreter, torch and the model included).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf


def write_long_mp3(path: Path, minutes: float, sr: int = 44100) -> None:
    """Stereo MP3 written block by block, so the writer itself stays small."""
    rng = np.random.default_rng(0)
    block = sr * 10
    with sf.SoundFile(path, "w", samplerate=sr, channels=2, format="MP3") as f:
        for i in range(int(minutes * 6)):
            t = (np.arange(block) + i * block) / sr
            root = 110 * 2 ** ((i % 12) / 12)
            x = sum(0.15 * np.sin(2 * np.pi * root * k * t) for k in (1, 1.25, 1.5, 2))
            x = x + 0.02 * rng.standard_normal(block)
            f.write(np.stack([x, np.roll(x, 100)], axis=1).astype(np.float32))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--file", type=Path)
    ap.add_argument("--model", default="pemr")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory()
    path = args.file
    if path is None:
        path = Path(tmp.name) / "long.mp3"
        t0 = time.perf_counter()
        writer = multiprocessing.Process(target=write_long_mp3, args=(path, args.minutes))  # keeps our RSS clean
        writer.start()
        writer.join()
        print(f"wrote {path} ({path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    from musicembed import load_model
    from musicembed.audio import info

    rss_before = peak_rss_mib()
    model = load_model(args.model, device="cpu")
    duration = info(path).duration
    t0 = time.perf_counter()
    e = model.embed(path, return_timestamps=True)
    wall = time.perf_counter() - t0
    result = {
        "file": str(path) if args.file else f"synthetic {args.minutes:g}-min stereo 44.1 kHz MP3",
        "model": args.model,
        "duration_s": round(duration, 1),
        "windows": len(e.vectors),
        "wall_s": round(wall, 2),
        "x_realtime": round(duration / wall, 1),
        "peak_rss_mib_before_model": round(rss_before, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

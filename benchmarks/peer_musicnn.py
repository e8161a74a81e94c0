"""Peer timing: musicnn (MTT_musicnn, its shipped MagnaTagATune weights) over a folder.

Runs in a Python environment that has musicnn and TensorFlow (not musicembed's), e.g.

    python3.11 -m venv peer-venv && peer-venv/bin/pip install tensorflow tf-keras librosa soundfile
    peer-venv/bin/pip install --no-deps musicnn  # its own pins (numpy<1.17) do not build on 3.11
    TF_USE_LEGACY_KERAS=1 peer-venv/bin/python benchmarks/peer_musicnn.py FOLDER --json peer.json

musicnn's API embeds one file per call (librosa load + resample to 16 kHz, log-mel, then a
TensorFlow 1 graph built and restored for that file), 3-s patches: timed as a user would
call it. Prints JSON: files, audio seconds, wall seconds, x realtime. Exits 3 (with the
reason on stderr) when musicnn cannot be imported.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

EXTS = {".wav", ".flac", ".ogg", ".mp3"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--limit", type=int, default=0, help="only the first N files (0: all)")
    args = ap.parse_args()
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # musicnn uses tf.compat.v1.layers (Keras 2 only)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import soundfile as sf
        from musicnn.extractor import extractor
    except Exception as e:  # not installed, or a TensorFlow it cannot run on
        print(f"musicnn unavailable: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(3)
    files = sorted(p for p in args.folder.iterdir() if p.suffix.lower() in EXTS)
    if args.limit:
        files = files[: args.limit]
    audio = sum(sf.info(p).duration for p in files)
    import contextlib
    import io

    t0 = time.perf_counter()
    for p in files:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints progress per file
            extractor(str(p), model="MTT_musicnn", input_length=3, extract_features=True)
    wall = time.perf_counter() - t0
    result = {"peer": "musicnn MTT_musicnn (TensorFlow, per-file extractor, 3-s patches)", "files": len(files),
              "audio_s": round(audio, 2), "wall_s": round(wall, 3), "x_realtime": round(audio / wall, 1)}
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Which parts of a track are most alike? MART's hierarchical embeddings of one track.

    python examples/mart_structure.py song.mp3                 # the bundled MART model
    python examples/mart_structure.py song.mp3 --level 1 --top 8

MART embeds every window (level 0, the model's clip length; 4.1 s for the bundled model)
and its halves, quarters, ... (levels 1, 2, 3: 2.0 s, 1.0 s, 0.5 s parts), each a vector in
one space. This script prints, for every level, the segment count and length, then for the
chosen level the most alike pairs of segments that do not touch (repeated sections, a
chorus coming back) and, for short tracks, a coarse self-similarity matrix.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

import musicembed

SHADES = " .:-=+*#%@"  # low -> high similarity


def mmss(seconds: float) -> str:
    return f"{int(seconds // 60)}:{seconds % 60:05.2f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("track", type=Path)
    p.add_argument("--model", default=os.environ.get("MUSICEMBED_MART_MODEL", "mart"),
                   help="a MART model: manifest name or folder (default: $MUSICEMBED_MART_MODEL or mart)")
    p.add_argument("--level", type=int, default=None, help="level to compare (default: the finest)")
    p.add_argument("--top", type=int, default=5, help="pairs to list (default 5)")
    args = p.parse_args(argv)

    model = musicembed.load_model(args.model)
    if model.config.method != "mart":
        p.error(f"{args.model} is a {model.config.method} model; hierarchical embeddings need MART")
    emb = model.embed(args.track, hierarchical=True)
    print(f"{args.track}: {emb.duration:.2f} s, model {model.name}")
    for lv in emb.levels:
        print(f"  level {lv.level}: {len(lv.vectors):4d} segments of {lv.ends[0] - lv.starts[0]:.3f} s")

    level = emb.levels[-1 if args.level is None else args.level]
    v = level.vectors / np.maximum(np.linalg.norm(level.vectors, axis=1, keepdims=True), 1e-12)
    sim = v @ v.T
    order = np.argsort(level.starts, kind="stable")  # time order (windows may overlap at the end)
    pairs = []
    for a in range(len(v)):
        for b in range(a + 1, len(v)):
            apart = level.starts[b] > level.ends[a] or level.starts[a] > level.ends[b]  # no overlap, not adjacent
            if apart:
                pairs.append((float(sim[a, b]), a, b))
    pairs.sort(reverse=True)
    print(f"most alike non-touching segments at level {level.level}:")
    if not pairs:
        print("  (the track is too short for two separate segments at this level)")
    for score, a, b in pairs[: args.top]:
        a, b = sorted((a, b), key=lambda i: level.starts[i])
        print(f"  {score:.3f}  {mmss(level.starts[a])}-{mmss(level.ends[a])}  ~  "
              f"{mmss(level.starts[b])}-{mmss(level.ends[b])}")

    if len(v) <= 48:
        lo, hi = float(sim.min()), float(sim.max())
        scale = (sim - lo) / (hi - lo if hi > lo else 1.0)
        print(f"self-similarity at level {level.level} (time runs down and right; ' ' = {lo:.2f}, '@' = {hi:.2f}):")
        for i in order:
            row = "".join(SHADES[min(int(scale[i, j] * len(SHADES)), len(SHADES) - 1)] for j in order)
            print(f"  {mmss(level.starts[i]):>8} |{row}|")
    return 0


if __name__ == "__main__":
    sys.exit(main())

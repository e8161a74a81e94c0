"""Find near duplicates and covers in a folder by cosine similarity of embeddings.

    python examples/find_duplicates.py music/                    # whole-track similarity
    python examples/find_duplicates.py music/ --partial          # also excerpts / partial overlaps
    python examples/find_duplicates.py music/ --model mart --top 20

Whole-track mode compares clip embeddings (the mean over windows). --partial also compares
the per-window vectors and ranks by them: a pair scores the mean, over the windows of the
shorter track, of each window's best cosine match in the other track, so an excerpt or a
re-edit scores high against its source. Pairs are listed best first with both scores; those
at or above --threshold are flagged.
Thresholds depend on the model: look at the score distribution of your own collection.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

import musicembed
from musicembed.audio import find_audio_files


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def partial_score(a: np.ndarray, b: np.ndarray) -> float:
    """a (Wa, D), b (Wb, D) unit window vectors -> mean best match of the shorter one's windows."""
    if len(a) > len(b):
        a, b = b, a
    return float((a @ b.T).max(axis=1).mean())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path)
    p.add_argument("--model", default=os.environ.get("MUSICEMBED_MODEL", "pemr"),
                   help="manifest name, model folder or hf-hub:<owner>/<repo> (default: $MUSICEMBED_MODEL or pemr)")
    p.add_argument("--partial", action="store_true", help="score by best-matching windows (excerpts, re-edits)")
    p.add_argument("--threshold", type=float, default=0.95, help="flag pairs at or above this cosine (default 0.95)")
    p.add_argument("--top", type=int, default=10, help="pairs to list (default 10)")
    args = p.parse_args(argv)

    files, _ = find_audio_files([args.folder], recursive=True)
    if len(files) < 2:
        p.error(f"{args.folder}: need at least two audio files")
    model = musicembed.load_model(args.model)
    embs = model.embed(files, return_timestamps=True)  # one Embedding per file: .clip and per-window .vectors

    names = [str(f.relative_to(args.folder)) for f in files]
    clips = unit(np.stack([e.clip for e in embs]))
    whole = clips @ clips.T  # cosine similarity matrix (N, N) of the clip vectors
    windows = [unit(e.vectors) for e in embs]
    pairs = []  # (ranking score, whole-track score, partial score or None, i, j)
    for i in range(len(files)):
        for j in range(i + 1, len(files)):
            part = partial_score(windows[i], windows[j]) if args.partial else None
            pairs.append((part if args.partial else float(whole[i, j]), float(whole[i, j]), part, i, j))
    pairs.sort(key=lambda t: -t[0])

    mode = "partial (best-matching windows)" if args.partial else "whole-track"
    print(f"{len(files)} files, {len(pairs)} pairs, ranked by {mode} cosine similarity, model {model.name}:")
    print("  whole    " + ("partial  " if args.partial else "") + "pair")
    for score, w, part, i, j in pairs[: args.top]:
        flag = "  DUPLICATE?" if score >= args.threshold else ""
        cols = f"{w:.4f}   " + (f"{part:.4f}   " if args.partial else "")
        print(f"  {cols}{names[i]}  <->  {names[j]}{flag}")
    flagged = sum(t[0] >= args.threshold for t in pairs)
    print(f"{flagged} pair(s) at or above {args.threshold}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

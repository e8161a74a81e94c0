"""Embed every audio file under folders into one .npz file, then read it back.

    python examples/embed_folder.py music/ --out catalog.npz
    python examples/embed_folder.py music/ more/ single.mp3 --out catalog.npz --model mart --timestamps

The file has the layout of `musicembed embed music/ -r --out catalog.npz`: ``paths`` (N,),
``embeddings`` (N, D) float32, ``durations`` (N,) seconds, ``model``; with --timestamps also
``window_vectors`` (W, D), ``window_starts`` / ``window_ends`` (W,) seconds and
``window_offsets`` (N+1,): file i owns rows offsets[i]:offsets[i+1]. Files that cannot be
decoded are reported and skipped; the exit code is then 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

import musicembed
from musicembed.audio import find_audio_files
from musicembed.identity import model_identity
from musicembed.io.writers import write_results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", type=Path,
                   help="folders (searched recursively for WAV/FLAC/OGG/MP3/... files) and files")
    p.add_argument("--out", type=Path, default=Path("catalog.npz"), help="output .npz (default: catalog.npz)")
    p.add_argument("--model", default=os.environ.get("MUSICEMBED_MODEL", "pemr"),
                   help="manifest name, model folder or hf-hub:<owner>/<repo> (default: $MUSICEMBED_MODEL or pemr)")
    p.add_argument("--timestamps", action="store_true", help="also store per-window vectors with their times")
    args = p.parse_args(argv)

    files, failed = find_audio_files(args.inputs, recursive=True)
    model = musicembed.load_model(args.model)
    print(f"{model}: embedding {len(files)} files", file=sys.stderr)

    results = []
    for i, res in model.iter_embed(files):  # (index, Embedding | AudioError), as each file finishes
        if isinstance(res, musicembed.AudioError):
            failed.append((str(files[i]), res.reason))
        else:
            results.append(res)
    write_results(args.out, results, model.embedding_dim, model.name, windows=args.timestamps,
                  identity=model_identity(model))

    data = np.load(args.out)
    print(f"wrote {args.out}: embeddings {data['embeddings'].shape} {data['embeddings'].dtype}, model {data['model']}")
    for path, vec, dur in zip(data["paths"][:3], data["embeddings"][:3], data["durations"][:3]):
        print(f"  {path}  {dur:6.2f} s  [{', '.join(f'{x:+.3f}' for x in vec[:4])}, ...]")
    if args.timestamps:
        off = data["window_offsets"]
        print(f"  {len(data['window_vectors'])} windows; the first file has {off[1] - off[0]}")
    for path, reason in failed:
        print(f"failed: {path}: {reason}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

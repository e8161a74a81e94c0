"""Pre-train an encoder on your own audio folder with `musicembed train`, then load and use it.

    python examples/pretrain_own_folder.py music/ --out my-model                 # the bundled PEMR's layout, 1000 steps
    python examples/pretrain_own_folder.py music/ --out my-model --tiny --steps 20 --batch-size 4
    python examples/pretrain_own_folder.py music/ --out my-model --method mart

It runs the two commands you would type yourself (in this process, through the same click
command line) and then embeds a file with the result:

    musicembed train pemr --data music/ --out my-model.run --steps 1000
    musicembed train export my-model.run --out my-model
    python -c "import musicembed; print(musicembed.load_model('my-model').embed('song.mp3').shape)"

A real pre-training run takes many GPU hours (the papers: 300 epochs); stop it any time
with Ctrl-C, continue with the same command plus --resume, and export the newest
checkpoint. See `musicembed train pemr --help` for every option (masks, ratios, devices,
distributed training with torchrun).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import click

import musicembed
from musicembed.audio import find_audio_files
from musicembed.cli import cli


def musicembed_command(*args: str) -> None:
    """Run `musicembed ARGS...` in this process (what the shell command does, minus a new interpreter)."""
    print("$ musicembed " + " ".join(shlex.quote(a) for a in args), flush=True)
    try:
        cli.main(list(args), prog_name="musicembed", standalone_mode=False)
    except click.ClickException as e:
        sys.exit(f"musicembed {args[0]} {args[1]}: {e.format_message()}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path, help="your audio folder (searched recursively)")
    p.add_argument("--out", type=Path, required=True, help="model folder to write (the run goes to OUT.run)")
    p.add_argument("--method", choices=["pemr", "mart"], default="pemr")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=48)
    p.add_argument("--tiny", action="store_true", help="a tiny encoder (seconds per step on a CPU): try the workflow")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--workers", type=int, default=2, help="data-loading worker processes")
    p.add_argument("--cache-dir", default=None, help="decoded-audio cache (default: ~/.cache/musicembed/train-audio)")
    args = p.parse_args(argv)

    run_dir = args.out.with_name(args.out.name + ".run")
    train = ["train", args.method, "--data", str(args.folder), "--out", str(run_dir),
             "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--device", args.device,
             "--workers", str(args.workers), "--no-progress"]
    if args.tiny:
        train += ["--config", "tiny"]
    if args.cache_dir:
        train += ["--cache-dir", args.cache_dir]
    if (run_dir / "run.json").exists():
        train += ["--resume"]  # a previous (interrupted) run: continue it
    musicembed_command(*train)
    musicembed_command("train", "export", str(run_dir), "--out", str(args.out))

    model = musicembed.load_model(args.out)  # a folder works wherever a model name does
    print(f"loaded {model}")
    print(f"  {model.config.description}")
    files, _ = find_audio_files([args.folder], recursive=True)
    vec = model.embed(files[0])
    print(f"  {files[0]}: embedding {vec.shape} [{', '.join(f'{x:+.3f}' for x in vec[:4])}, ...]")
    print(f"use it: musicembed embed song.mp3 --model {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Bundle an exported model folder into the package as a weights_manifest.json entry.

    python scripts/bundle_weights.py EXPORT_DIR NAME --description "..." --training-data "..." \
        --license "..." --repo-id musicembed/NAME --version 1.0 [--card docs/models/NAME.md]

Copies config.json + model.safetensors to musicembed/weights/NAME/ and writes the entry:
files with sha256 and size, method, embedding size, sample rate, window, the architecture
config, the training-data summary, the licence, and the Hub repository the files would be
published to (marked as not yet published; `musicembed publish NAME --repo-id ...`). A new
model has no calibration until `musicembed eval calibrate ... --register NAME` lists its own.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from musicembed.config import ModelConfig
from musicembed.hub import CONFIG_NAME, WEIGHTS_NAME, sha256_file

PACKAGE = Path(__file__).resolve().parent.parent / "musicembed"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export_dir", type=Path)
    ap.add_argument("name")
    ap.add_argument("--description", required=True)
    ap.add_argument("--training-data", required=True)
    ap.add_argument("--license", required=True)
    ap.add_argument("--repo-id", required=True)
    ap.add_argument("--version", required=True, help="model version, written to config.json and the entry")
    ap.add_argument("--card", help="model card path, relative to the repository")
    ap.add_argument("--figures", help="where the model's figures come from (card section, commands)")
    ap.add_argument("--half", action="store_true",
                    help="store float tensors as float16 (half the size; loaded back into float32)")
    args = ap.parse_args()

    dest = PACKAGE / "weights" / args.name
    dest.mkdir(parents=True, exist_ok=True)
    for f in (CONFIG_NAME, WEIGHTS_NAME):
        shutil.copyfile(args.export_dir / f, dest / f)
    raw = json.loads((dest / CONFIG_NAME).read_text())
    raw["version"] = args.version
    (dest / CONFIG_NAME).write_text(json.dumps(raw, indent=2) + "\n")
    if args.half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in load_file(dest / WEIGHTS_NAME).items()}
        save_file(state, dest / WEIGHTS_NAME, metadata={"format": "pt"})
        raw["files"] = {WEIGHTS_NAME: {"sha256": sha256_file(dest / WEIGHTS_NAME),
                                       "size": (dest / WEIGHTS_NAME).stat().st_size}}
        (dest / CONFIG_NAME).write_text(json.dumps(raw, indent=2) + "\n")
    raw.pop("files", None)
    cfg = ModelConfig.from_dict(raw)
    entry = {
        "description": args.description,
        "version": args.version,
        "method": cfg.method,
        "embedding_dim": cfg.embedding_dim,
        "sample_rate": cfg.sample_rate,
        "window_seconds": cfg.window_seconds,
        "architecture": {"encoder": raw["encoder"], "mart": raw.get("mart"), "frontend": raw["frontend"]},
        "training_data": args.training_data,
        "license": args.license,
        "model_card": args.card,
        "figures": args.figures,
        "bundled": f"weights/{args.name}",
        "files": [
            {"name": f, "path": f"weights/{args.name}/{f}", "sha256": sha256_file(dest / f),
             "size": (dest / f).stat().st_size}
            for f in (CONFIG_NAME, WEIGHTS_NAME)
        ],
        "hub": {"repo_id": args.repo_id, "revision": "main", "published": False,
                "note": f"not yet published; publish with `musicembed publish {args.name} --repo-id {args.repo_id}`"},
    }
    manifest_path = PACKAGE / "weights_manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["models"][args.name] = entry
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"bundled {args.name}: {dest} ({sum(f['size'] for f in entry['files']) / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()

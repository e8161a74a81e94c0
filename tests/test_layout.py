"""The package's layout rules: inference never imports training or evaluation code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

INFERENCE_MODULES = [
    "musicembed", "musicembed.audio", "musicembed.frontend", "musicembed.windows", "musicembed.models",
    "musicembed.model", "musicembed.pipeline", "musicembed.results", "musicembed.optimize", "musicembed.hub",
    "musicembed.config", "musicembed.io.atomic", "musicembed.io.writers", "musicembed.io.resume",
    "musicembed.catalog.shard", "musicembed.catalog.index", "musicembed.catalog.job", "musicembed.cli",
    "musicembed.cli.catalog", "musicembed.hear", "musicembed.export", "musicembed.convert", "musicembed.viz",
]

BLOCKED = """
import importlib, sys
for name in ("musicembed.train", "musicembed.eval"):
    sys.modules[name] = None  # any import of them raises ImportError
for m in sys.argv[2].split(","):
    importlib.import_module(m)
from click.testing import CliRunner
from musicembed.cli import cli
r = CliRunner().invoke(cli, ["embed", sys.argv[1], "--json", "-m", sys.argv[3]])
assert r.exit_code == 0, r.output
r = CliRunner().invoke(cli, ["--help"])
assert r.exit_code == 0 and "train" in r.output, r.output
print("ok")
"""


def test_inference_never_imports_training_or_evaluation_code(audio_dir: Path, pemr_dir: Path) -> None:
    r = subprocess.run([sys.executable, "-c", BLOCKED, str(audio_dir / "tone.wav"), ",".join(INFERENCE_MODULES),
                        str(pemr_dir)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


def test_a_blocked_import_is_seen() -> None:
    """The check above can fail: importing the training package under the block raises."""
    code = "import sys; sys.modules['musicembed.train'] = None; import musicembed.train.loop"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "ModuleNotFoundError" in r.stderr and "musicembed.train" in r.stderr

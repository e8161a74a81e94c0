"""The throughput benchmark and its README table run in small mode (as CI does): they must
not fail and must write every expected key. No timing assertions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300, **kw)


def test_throughput_small_mode_and_table(tmp_path):
    out = tmp_path / "throughput.json"
    r = _run(["benchmarks/throughput.py", "--minutes", "0.2", "--files", "4", "--file-seconds", "3",
              "--hour-minutes", "0.3", "--models", "pemr", "--modes", "default", "--ablation-batches", "1",
              "--peer-python", str(tmp_path / "no-such-python"), "--workdir", str(tmp_path / "audio"),
              "--json", str(out)])
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(out.read_text())
    assert {"command", "machine", "inputs", "results", "import_torch_rss_mib", "ablation", "peer"} <= set(report)
    (row,) = report["results"]
    assert row["model"] == "pemr" and row["mode"] == "default" and "BN folded" in row["inference"]
    assert {"decode", "resample", "log_mel", "encoder"} <= set(row["mp3"]["stages"])
    assert row["mp3"]["x_realtime"] > 0 and row["folder"]["files"] == 4 and "ratio_to_mp3" in row["folder"]
    assert row["hour"]["peak_rss_mib"] > 0 and "peak_rss_above_import_torch_mib" in row["hour"]
    ab = report["ablation"]["pemr"]
    assert {"network_forward_x_realtime", "downmix_x_realtime", "decode_threads_x_realtime",
            "end_to_end_threads_x_realtime", "end_to_end_plain_vs_default_x_realtime",
            "resample_44k1_to_model_rate_x_realtime"} <= set(ab)
    assert "skipped" in report["peer"]  # the peer is not installed: said so, not failed

    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- perf-table:begin -->\nOLD-TABLE\n<!-- perf-table:end -->\nrest\n")
    r = _run(["benchmarks/perf_table.py", str(out), "--readme", str(readme), "--provisional"])
    assert r.returncode == 0, r.stderr
    text = readme.read_text()
    assert "OLD-TABLE" not in text and "| pemr | default |" in text and "benchmarks/throughput.py" in text
    assert text.endswith("<!-- perf-table:end -->\nrest\n")


def test_peer_script_says_why_when_musicnn_is_missing(tmp_path):
    r = _run(["benchmarks/peer_musicnn.py", str(tmp_path)])
    try:
        import musicnn  # noqa: F401
    except ImportError:
        assert r.returncode == 3 and "musicnn unavailable" in r.stderr

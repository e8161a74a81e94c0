"""The API reference builds from the docstrings (pdoc, offline) and covers every module."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(importlib.util.find_spec("pdoc") is None,
                    reason="pdoc is not installed (pip install pdoc, or the [docs]/[dev] extra)")
def test_api_reference_builds(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import build_docs
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    out = build_docs.build(tmp_path / "api", search=False, show_source=False)  # both only add build time
    pages = {str(p.relative_to(out).with_suffix("")).replace("/", ".") for p in out.rglob("*.html")}
    assert set(build_docs.modules()) <= pages
    hear = (out / "musicembed" / "hear.html").read_text()
    assert "get_timestamp_embeddings" in hear and "milliseconds" in hear
    for page in out.rglob("*.html"):  # opens offline: no scripts or styles from elsewhere
        assert not re.search(r'<(script|link)[^>]+(src|href)="https?://', page.read_text()), page

"""Build the API reference of musicembed from its docstrings with pdoc (no network needed).

    python scripts/build_docs.py [OUT_DIR]          # default: docs/api (not committed)
    bash scripts/build_docs.sh [OUT_DIR]             # the same

Every module of the package is documented except ``musicembed.__main__``. Modules whose
optional dependencies are missing are reported and skipped (pdoc warns). The result is
static HTML (open OUT_DIR/index.html); no CDN assets are referenced.
"""

from __future__ import annotations

import pkgutil
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXCLUDE = {"musicembed.__main__"}


def modules() -> list[str]:
    """Every module of the package. Listed one by one: pdoc's own walk skips submodules that a
    package's ``__all__`` does not name (musicembed.models, musicembed.eval)."""
    import musicembed

    names = ["musicembed"] + [m.name for m in pkgutil.walk_packages(musicembed.__path__, prefix="musicembed.")]
    return sorted(n for n in names if n not in EXCLUDE)


def build(out: str | Path = ROOT / "docs" / "api", search: bool = True, show_source: bool = True) -> Path:
    """Render every module to ``out``; returns the folder. Raises if pdoc is not installed.
    ``search=False`` and ``show_source=False`` leave out the search index and the highlighted
    source (most of the build time: the tests use both)."""
    import pdoc
    import pdoc.render

    import musicembed

    out = Path(out)
    pdoc.render.configure(
        docformat="restructuredtext",
        footer_text=f"musicembed {musicembed.__version__}",
        search=search,
        show_source=show_source,
        math=False,  # math and mermaid would load scripts from a CDN
        mermaid=False,
    )
    with warnings.catch_warnings():
        # pdoc also walks the packages we list module by module: it notes each repeat, harmlessly
        warnings.filterwarnings("ignore", message=".*has already been added", category=UserWarning)
        pdoc.pdoc(*modules(), output_directory=out)
    return out


if __name__ == "__main__":
    try:
        import pdoc  # noqa: F401
    except ImportError:
        sys.exit("pdoc is not installed: pip install pdoc  (or: pip install -e \".[docs]\")")
    folder = build(sys.argv[1] if len(sys.argv) > 1 else ROOT / "docs" / "api")
    print(f"API reference written to {folder}/index.html")

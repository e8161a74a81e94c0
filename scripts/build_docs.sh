#!/usr/bin/env bash
# Build the API reference from docstrings with pdoc into docs/api/ (or $1); works offline.
#   bash scripts/build_docs.sh            -> docs/api/index.html
#   bash scripts/build_docs.sh /tmp/api
# Needs: pip install pdoc   (PYTHON=... picks the interpreter; default: python)
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" scripts/build_docs.py "$@"

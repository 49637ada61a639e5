#!/usr/bin/env sh
# Build the API reference from the docstrings with pdoc (pip install '.[docs]').
# Usage: [PYTHON=python3] docs/build_api.sh [OUTPUT_DIR]   (default docs/api, which git ignores)
set -eu
out="${1:-docs/api}"
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac
cd "$(dirname "$0")/.."
# fastbind's page covers everything in fastbind.__all__; the two embedding modules
# are named too, since the package does not re-export all of them.
exec "${PYTHON:-python}" -m pdoc fastbind fastbind.embed fastbind.workers -o "$out"

#!/usr/bin/env bash
# Download the wheels that bench/gpu/run.sh installs on the lent GPU (its image has no registry).
#   bench/gpu/fetch_wheels.sh [PYTHON_VERSION] [DEST]     (defaults: 3.12, .whl)
# Run it here, in the repository root, with the project's .venv (it builds groundingdino-py's
# pure-Python wheel from its sdist). DEST must be ignored by git; `carry` it in the device call.
set -euo pipefail
py=${1:-3.12}
dest=${2:-.whl}
here=$(cd "$(dirname "$0")" && pwd)
pip=${PIP:-.venv/bin/pip}
mkdir -p "$dest"
plat=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  plat+=(--platform "$p")
done
grep -v '^#' "$here/wheels.txt" | grep -v '^groundingdino' | grep . | while read -r req; do
  "$pip" download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
    "${plat[@]}" -d "$dest" "$req"
done
# groundingdino-py is published as an sdist only; its wheel is pure Python.
req=$(grep '^groundingdino' "$here/wheels.txt")
tmp=$(mktemp -d)
"$pip" download -q --no-deps --no-binary=:all: -d "$tmp" "$req"
"$pip" wheel -q --no-deps --no-build-isolation -w "$dest" "$tmp"/*.tar.gz
rm -rf "$tmp"
ls "$dest"
du -sh "$dest"

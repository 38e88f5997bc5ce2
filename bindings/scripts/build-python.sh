#!/usr/bin/env bash
# Builds the Python package of the Sotto client library: libsotto_ffi (debug build, or
# release with --release), UniFFI's Python module for it, and a wheel with both.
#
#   bindings/scripts/build-python.sh [--release] [OUT_DIR]
#
# OUT_DIR (default: $CARGO_TARGET_DIR/python, or target/python) receives
#   package/sotto/{__init__,_ffi}.py, package/sotto/libsotto_ffi.so  (importable with PYTHONPATH)
#   dist/sotto-VERSION-py3-none-PLATFORM.whl                   (pip install it)
# and the wheel's path is printed on the last line.
set -euo pipefail

cd "$(dirname "$0")/../.."
profile=debug
cargo_profile=()
if [[ "${1:-}" == "--release" ]]; then
    profile=release
    cargo_profile=(--release)
    shift
fi
target="${CARGO_TARGET_DIR:-target}"
out="${1:-$target/python}"

cargo build --quiet "${cargo_profile[@]}" -p sotto-ffi --lib --bin uniffi-bindgen
lib="$target/$profile/libsotto_ffi.so"

gen="$(mktemp -d)"
trap 'rm -rf "$gen"' EXIT
"$target/$profile/uniffi-bindgen" generate "$lib" --language python --no-format \
    --out-dir "$gen" >/dev/null

rm -rf "$out/package" "$out/dist"
mkdir -p "$out/package/sotto" "$out/dist"
cp "$gen/sotto.py" "$out/package/sotto/_ffi.py"
cp bindings/python/package_init.py "$out/package/sotto/__init__.py"
# The debug information is most of a debug build's size; the package does without it.
if command -v strip >/dev/null 2>&1; then
    strip --strip-debug -o "$out/package/sotto/libsotto_ffi.so" "$lib"
else
    cp "$lib" "$out/package/sotto/libsotto_ffi.so"
fi
version="$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "sotto-ffi"))')"
python3 bindings/python/make_wheel.py "$out/package" "$version" "$out/dist"

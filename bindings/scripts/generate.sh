#!/usr/bin/env bash
# Generates the Kotlin and Swift sources of the bindings from the built library into
# bindings/generated/ (checked in, so that app developers need no Rust toolchain to read
# or vendor them), or with --check fails if the checked-in sources differ from what the
# library generates now (run by .ci/run).
#
#   bindings/scripts/generate.sh [--check]
set -euo pipefail

cd "$(dirname "$0")/../.."
target="${CARGO_TARGET_DIR:-target}"
cargo build --quiet -p sotto-ffi --lib --bin uniffi-bindgen

gen="$(mktemp -d)"
trap 'rm -rf "$gen"' EXIT
for lang in kotlin swift; do
    "$target/debug/uniffi-bindgen" generate "$target/debug/libsotto_ffi.so" \
        --language "$lang" --no-format --out-dir "$gen/$lang" >/dev/null
done

dest=bindings/generated
if [[ "${1:-}" == "--check" ]]; then
    if ! diff -r "$dest" "$gen" >/dev/null; then
        diff -ru "$dest" "$gen" | head -n 40 >&2 || true
        echo "bindings/generated is stale: run bindings/scripts/generate.sh and commit the result" >&2
        exit 1
    fi
    echo "bindings/generated matches the library"
else
    rm -rf "$dest"
    cp -r "$gen" "$dest"
    find "$dest" -type f | sort
fi

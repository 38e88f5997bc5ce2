#!/usr/bin/env bash
# Builds the Python package (build-python.sh), installs it and pytest in a virtual
# environment under the cargo target directory, and runs bindings/python/tests against two
# real `sotto-relay` processes. Non-interactive; run by .ci/run after the Rust tests.
#
#   bindings/scripts/test-python.sh [PYTEST_ARGS…]
set -euo pipefail

cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    echo "python3 with venv not found: installing python3 and python3-venv"
    DEBIAN_FRONTEND=noninteractive apt-get update </dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv </dev/null
fi

cargo build --quiet -p sotto-relay --bin sotto-relay
wheel="$(bindings/scripts/build-python.sh | tail -n 1)"

venv="$CARGO_TARGET_DIR/py-venv"
if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input pytest
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    --force-reinstall --no-deps "$wheel"

export SOTTO_RELAY_BIN="$CARGO_TARGET_DIR/debug/sotto-relay"
# From another directory, so that `import sotto` finds the installed wheel only.
cd "$CARGO_TARGET_DIR"
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider "$OLDPWD/bindings/python/tests" "$@"

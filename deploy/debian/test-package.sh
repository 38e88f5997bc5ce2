#!/usr/bin/env bash
# Builds the Debian package with cargo-deb and checks it without touching the machine:
#   - its file list, control fields and maintainer scripts (syntax; the postinst makes the
#     user and the data directory and never enables or starts the relay);
#   - the unit as installed: `systemd-analyze security` <= 1.5;
#   - it is unpacked into a throwaway root, where systemd-sysusers and systemd-tmpfiles
#     (with --root) create the user and the 0700 data directory as the postinst would;
#   - the installed binary: --help of every subcommand, the example config is valid,
#     and `run` from the installed path starts a relay on loopback, prints its address,
#     answers on its metrics port and stops cleanly on SIGTERM.
#
# Usage: deploy/debian/test-package.sh [--profile dev|release]   (default: dev, which
# reuses the debug build of `cargo test`; a release build costs minutes on 2 cores).
# Installs cargo-deb from crates.io when it is missing. Run by .ci/run.
set -euo pipefail

cd "$(dirname "$0")/../.."
profile=dev
if [ "${1:-}" = "--profile" ]; then
    profile="$2"
fi

fail() {
    echo "test-package: FAIL: $*" >&2
    exit 1
}

if ! cargo deb --version >/dev/null 2>&1; then
    echo "test-package: installing cargo-deb from crates.io"
    # Its own temporary target directory, not the workspace's.
    env -u CARGO_TARGET_DIR cargo install cargo-deb --locked --version '^3' </dev/null
fi
cargo deb --version

work="$(mktemp -d)"
relay_pid=""
cleanup() {
    if [ -n "$relay_pid" ]; then
        kill "$relay_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

cargo build -p sotto-relay --profile "$profile"
cargo deb -p sotto-relay --no-build --profile "$profile" --strip --fast --output "$work/sotto-relay.deb"
deb="$work/sotto-relay.deb"

echo "== contents"
dpkg-deb -c "$deb" | tee "$work/contents"
for f in ./usr/bin/sotto-relay \
         ./usr/lib/systemd/system/sotto-relay.service \
         ./usr/lib/sysusers.d/sotto-relay.conf \
         ./usr/lib/tmpfiles.d/sotto-relay.conf \
         ./usr/share/doc/sotto-relay/examples/config.toml \
         ./usr/share/doc/sotto-relay/examples/grafana-dashboard.json \
         ./usr/share/doc/sotto-relay/README.Debian \
         ./usr/share/doc/sotto-relay/operator.md \
         ./usr/share/doc/sotto-relay/copyright; do
    grep -q " $f\$" "$work/contents" || fail "$f is not in the package"
done
grep -E ' \./usr/bin/sotto-relay$' "$work/contents" | grep -q '^-rwxr-xr-x' ||
    fail "/usr/bin/sotto-relay is not mode 0755"
if grep -qE ' \./(etc|var)/' "$work/contents"; then
    fail "the package ships files under /etc or /var (the data directory is made at install)"
fi

echo "== control"
dpkg-deb -f "$deb" | tee "$work/control"
grep -q '^Package: sotto-relay$' "$work/control" || fail "Package field"
grep -q '^Architecture: ' "$work/control" || fail "Architecture field"
grep -q '^Depends: .*libc6' "$work/control" || fail "Depends lacks libc6"

echo "== maintainer scripts"
mkdir "$work/control.d"
dpkg-deb -e "$deb" "$work/control.d"
for s in postinst prerm postrm; do
    [ -x "$work/control.d/$s" ] || fail "$s missing or not executable"
    sh -n "$work/control.d/$s" || fail "$s: syntax error"
done
grep -q 'systemd-sysusers sotto-relay.conf' "$work/control.d/postinst" || fail "postinst makes no user"
grep -q 'systemd-tmpfiles --create sotto-relay.conf' "$work/control.d/postinst" || fail "postinst makes no data directory"
if grep -Eq 'systemctl (enable|start)|deb-systemd-invoke start' "$work/control.d/postinst"; then
    fail "postinst enables or starts the relay"
fi
grep -q 'systemctl stop sotto-relay' "$work/control.d/prerm" || fail "prerm does not stop the relay"
if grep -q 'rm -rf' "$work/control.d/postrm"; then
    fail "postrm deletes data"
fi

echo "== unpacked into a throwaway root"
root="$work/root"
dpkg-deb -x "$deb" "$root"
unit="$root/usr/lib/systemd/system/sotto-relay.service"
if command -v systemd-analyze >/dev/null 2>&1; then
    score="$(systemd-analyze security --offline=true --no-pager "$unit" 2>&1 |
        sed -n 's/.*Overall exposure level for .*: \([0-9.]*\).*/\1/p' | tail -1)"
    [ -n "$score" ] || fail "systemd-analyze security gave no score"
    echo "systemd-analyze security: $score"
    awk -v s="$score" 'BEGIN { exit !(s <= 1.5) }' || fail "exposure $score > 1.5"
else
    echo "systemd-analyze not found: unit score not checked" >&2
fi
if command -v systemd-sysusers >/dev/null 2>&1; then
    mkdir -p "$root/etc"
    systemd-sysusers --root="$root" "$root/usr/lib/sysusers.d/sotto-relay.conf"
    grep -q '^sotto-relay:x:[0-9]*:[0-9]*:Sotto relay:/var/lib/sotto-relay:/usr/sbin/nologin$' \
        "$root/etc/passwd" || fail "sysusers made no sotto-relay user: $(cat "$root/etc/passwd")"
    systemd-tmpfiles --root="$root" --create "$root/usr/lib/tmpfiles.d/sotto-relay.conf"
    [ "$(stat -c %a "$root/var/lib/sotto-relay")" = 700 ] || fail "data directory is not 0700"
    uid="$(sed -n 's/^sotto-relay:x:\([0-9]*\):.*/\1/p' "$root/etc/passwd")"
    [ "$(stat -c %u "$root/var/lib/sotto-relay")" = "$uid" ] ||
        fail "data directory is not owned by sotto-relay"
else
    echo "systemd-sysusers not found: user and directory creation not checked" >&2
    mkdir -p -m 0700 "$root/var/lib/sotto-relay"
fi

echo "== the installed binary"
bin="$root/usr/bin/sotto-relay"
for sub in init run address check-config block unblock "blocks list"; do
    # shellcheck disable=SC2086
    "$bin" $sub --help >"$work/help" || fail "$sub --help"
    grep -q 'Usage: sotto-relay' "$work/help" || fail "$sub --help has no usage"
done
data="$work/data"
mkdir -m 0700 "$data"
cp "$root/usr/share/doc/sotto-relay/examples/config.toml" "$data/config.toml"
env -u SOTTO_RELAY_DATA "$bin" check-config --data "$data" || fail "the example config is not valid"
sed -i 's/^# \([a-z_]* = \)/\1/' "$data/config.toml"
env -u SOTTO_RELAY_DATA "$bin" check-config --data "$data" ||
    fail "the example config with every key uncommented is not valid"
# The unit's command line, with loopback ports (the unit's own data directory needs root).
port="$(( 20000 + RANDOM % 10000 ))"
"$bin" run --data "$data" --listen "127.0.0.1:0" --metrics "127.0.0.1:$port" \
    >"$work/stdout" 2>"$work/stderr" </dev/null &
relay_pid=$!
for _ in $(seq 100); do
    grep -q '^sotto://' "$work/stdout" && break
    kill -0 "$relay_pid" 2>/dev/null || { cat "$work/stderr" >&2; fail "the relay exited"; }
    sleep 0.1
done
grep -q '^sotto://' "$work/stdout" || { cat "$work/stderr" >&2; fail "no address printed"; }
echo "relay from the installed path: $(head -1 "$work/stdout")"
exec 3<>"/dev/tcp/127.0.0.1/$port"
printf 'GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n' >&3
grep -q '^sotto_sessions ' <&3 || fail "no metrics on 127.0.0.1:$port"
exec 3<&-
kill -TERM "$relay_pid"
wait "$relay_pid" || fail "the relay did not exit 0 on SIGTERM"
relay_pid=""
[ -s "$data/relay.key" ] || fail "the relay did not initialise its data directory"

echo "test-package: OK ($(du -h "$deb" | cut -f1) package)"

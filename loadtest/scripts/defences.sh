#!/usr/bin/env bash
# Reproduces the "what the defences buy" table of docs/loadtest.md: the same seeded
# workload through an embedded relay under each delay mode, with and without cover traffic.
#
#   loadtest/scripts/defences.sh [OUT_DIR]      (default: target/loadtest-defences)
#
# Environment: RATE (msgs/s, default 100), MESSAGES (default 3000), COVER (frames/s per
# session when cover is on, default 100), SEED (default 1), EXTRA (more flags).
# Prints a Markdown table; the JSON of every run stays in OUT_DIR. Needs python3 for the
# table only.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-target/loadtest-defences}
mkdir -p "$out"
rate=${RATE:-100}
messages=${MESSAGES:-3000}
cover=${COVER:-100}
seed=${SEED:-1}
cargo build --release -q -p sotto-loadtest
bin=target/release/sotto-loadtest

runs=(
  "off|--delay-mode off"
  "poisson-100ms|--delay-mode poisson --delay-mean 100"
  "poisson-1s|--delay-mode poisson --delay-mean 1000"
  "rounds-500ms|--delay-mode rounds --round 500"
)
for run in "${runs[@]}"; do
  name=${run%%|*}
  flags=${run#*|}
  for c in 0 "$cover"; do
    tag="$name-cover$c"
    echo "running $tag" >&2
    # shellcheck disable=SC2086
    "$bin" --quiet --no-progress --rate "$rate" --messages "$messages" --seed "$seed" \
      --cover-rate "$c" $flags ${EXTRA:-} --json "$out/$tag.json" || echo "  $tag: verification failed" >&2
  done
done

python3 - "$out" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
print("| delay | cover/s/session | msg/s | latency p50 / p99 (ms) | KS | pool median / p1 | top1 | chance | mrr | entropy (bits) | eff. set |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for f in sorted(out.glob("*.json"), key=lambda p: p.stat().st_mtime):
    r = json.loads(f.read_text())
    d = r["delay_model"]
    mode = d["mode"] + ("" if d["mode"] == "off" else f" {d['mean_ms']:g} ms mean")
    ks = "–" if r["delay_ks_distance"] is None else f"{r['delay_ks_distance']:.3f}"
    a = r["adversary"]
    print(f"| {mode} | {r['config']['cover_rate']:g} | {r['throughput_msgs_per_s']:.0f} "
          f"| {r['latency_ms']['p50']:.1f} / {r['latency_ms']['p99']:.1f} | {ks} "
          f"| {r['pool_size']['median']:.0f} / {r['pool_size']['p1']:.0f} | {a['top1']:.3f} "
          f"| {a['baseline_top1']:.4f} | {a['mrr']:.3f} | {r['entropy_bits']:.2f} "
          f"| {r['effective_anonymity_set']:.1f} |")
PY

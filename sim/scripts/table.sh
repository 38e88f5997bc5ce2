#!/usr/bin/env bash
# Runs the rows of docs/threat-model.md's table ("A long-term global observer, measured")
# and prints it as Markdown. Every row is the default population (10 000 users, 20 relays,
# 7 days) with 128 targets drawn from the most active writers (adversary.targets_from =
# active, so that targets reach high message counts within the run).
#
#   sim/scripts/table.sh [OUT_DIR]            (default: target/sim-table)
#
# Environment: SCALE="--set population.users=1000 --set days=2.0" for a quick look;
# ROWS="desktop paced-12" to run only some rows (names below). Needs python3 for the table.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-target/sim-table}
mkdir -p "$out"
cargo build --release -q -p sotto-sim
bin=target/release/sotto-sim
common="--set adversary.targets_from=\"active\" ${SCALE:-}"

# name | scenario | extra flags
rows=(
  "no-defence|no-defence|"
  "relay-delay|relay-delay|"
  "paced-60|paced|--set client.pacing_rate=0.016667 --set client.relay_cover=0.000556"
  "paced-30|paced|--set client.pacing_rate=0.033333 --set client.relay_cover=0.001111"
  "paced-12|paced|--set client.pacing_rate=0.083333 --set client.relay_cover=0.003333"
  "paced-6|paced|--set client.pacing_rate=0.166667 --set client.relay_cover=0.006667"
  "low-bandwidth|desktop|--set client.policy=\"low-bandwidth\""
  "desktop|desktop|"
  "desktop-burst|desktop|--set client.burst_after=2 --set client.burst_factor=4"
  "desktop-relay-adversary|desktop-relay-adversary|"
)
for row in "${rows[@]}"; do
  IFS='|' read -r name scen extra <<<"$row"
  if [ -n "${ROWS:-}" ] && [[ " $ROWS " != *" $name "* ]]; then
    continue
  fi
  echo "running $name" >&2
  # shellcheck disable=SC2086
  eval "$bin" run "sim/scenarios/$scen.toml" --quiet --out "$out/$name" $common $extra \
    > "$out/$name.txt"
done

python3 - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
order = ["no-defence", "relay-delay", "paced-60", "paced-30", "paced-12", "paced-6",
         "low-bandwidth", "desktop", "desktop-burst", "desktop-relay-adversary"]
def fmt(v):
    return "—" if v is None else str(v)
print("| row | MB / connected day | latency p50 / p90 (s) | " +
      " | ".join(f"{a}: linked, median, p10, n90" for a in ["sda", "timing", "reply"]) + " |")
print("|---|---|---|---|---|---|")
for name in order:
    p = os.path.join(out, name, "report.json")
    if not os.path.exists(p):
        continue
    r = json.load(open(p))
    s = r["service"]
    cells = []
    for a in r["attacks"]:
        cells.append(f'{a["linked"]}/{a["targets"]}, {fmt(a["median_messages"])}, '
                     f'{fmt(a["p10_messages"])}, {fmt(a["n90_messages"])}')
    print(f'| {name} | {s["mb_per_online_day"]:.0f} | '
          f'{s["connected_p50_s"]:.1f} / {s["connected_p90_s"]:.1f} | ' + " | ".join(cells) + " |")
PY

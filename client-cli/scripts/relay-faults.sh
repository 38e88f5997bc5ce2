#!/bin/bash
# The client under relay faults, measured with release binaries (docs/reliability.md,
# "The client under relay faults"): one relay on loopback, alice -> bob; a healthy send, a
# send during an outage, a send interrupted by SIGINT, sends after a restart, then five
# rounds of sends with the relay SIGKILLed every 1-4 s (seeded) and restarted, and what Bob
# received. Build first: cargo build --release -p sotto-relay -p sotto-client
set -u
B=${SOTTO_BIN:-$(cd "$(dirname "$0")/../.." && pwd)/target/release}
W=$(mktemp -d /tmp/faults.XXXX)
export SOTTO_PASSPHRASE="correct horse battery staple" SOTTO_AUTO_DELAY=0
PORT=${PORT:-7311}
$B/sotto-relay init --data $W/relay --host 127.0.0.1 --listen 127.0.0.1:$PORT >/dev/null 2>&1
start_relay() { $B/sotto-relay run --data $W/relay --metrics off --delivery-mode off >/dev/null 2>&1 & RPID=$!; sleep 0.6; }
start_relay || true
ADDR=$($B/sotto-relay address --data $W/relay)
A="$B/sotto --home $W/alice"; Bb="$B/sotto --home $W/bob"
$A init >/dev/null; $Bb init >/dev/null
$A relay add "$ADDR" >/dev/null; $Bb relay add "$ADDR" >/dev/null
LINK=$($A invite --name bob); $Bb accept "$LINK" --name alice 2>/dev/null
for i in 1 2 3; do $A recv --wait 5 --idle 1 >/dev/null 2>&1; $Bb recv --wait 5 --idle 1 >/dev/null 2>&1; done
$A contacts; $Bb contacts
t() { local s=$(date +%s.%N); "$@"; local rc=$?; local e=$(date +%s.%N); printf "  rc=%d %.2f s\n" $rc $(echo "$e - $s" | bc); }
echo "== healthy send"; t $A send bob "healthy 1"; t $A send bob "healthy 2"
echo "== relay SIGKILLed, send with --timeout 10 (default)"
kill -9 $RPID; wait $RPID 2>/dev/null
t $A send bob "during the outage"
$A contacts
echo "== send SIGINTed during the outage"
$A send bob "interrupted" & SP=$!; sleep 1.5; s=$(date +%s.%N); kill -INT $SP; wait $SP; rc=$?; e=$(date +%s.%N); printf "  rc=%d, exited %.2f s after SIGINT\n" $rc $(echo "$e - $s" | bc)
echo "== relay restarted; three sends"
start_relay
for i in 1 2 3; do t $A send bob "after restart $i"; done
echo "== kill loop: 5 rounds, relay SIGKILLed every 1-4 s and restarted, sends bounded by timeout 10"
RANDOM=18; ok=0; total=0
for round in 1 2 3 4 5; do
  life=$(( (RANDOM % 4) + 1 )); end=$(( $(date +%s) + life ))
  r_ok=0; r_total=0
  while [ $(date +%s) -lt $end ]; do
    timeout 10 $A send bob "loop $round $r_total" >/dev/null 2>&1 && r_ok=$((r_ok+1)); r_total=$((r_total+1))
  done
  kill -9 $RPID; wait $RPID 2>/dev/null
  timeout 10 $A send bob "loop $round while down" >/dev/null 2>&1 && r_ok=$((r_ok+1)); r_total=$((r_total+1))
  start_relay
  echo "  round $round: relay up ${life} s, $r_ok of $r_total sends exited 0"
  ok=$((ok+r_ok)); total=$((total+r_total))
done
echo "  in all: $ok of $total sends exited 0"
t $A send bob "final"
$A contacts
got=$($Bb recv --wait 20 --idle 3 2>/dev/null)
echo "bob received $(echo "$got" | grep -c '^alice: ') messages, $(echo "$got" | grep '^alice: ' | sort | uniq -d | wc -l) duplicates; last: $(echo "$got" | tail -1)"
kill $RPID; wait $RPID 2>/dev/null
rm -rf $W

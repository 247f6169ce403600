#!/usr/bin/env bash
# Side-by-side benchmarks: Chorus and the servers users would pick instead,
# on loopback, one fresh server process per (server, scenario), the same
# chorus-load scenarios against each, then a table with ratios. The load
# generator is the `chorus-load` package in benches/load/ (a member of the
# Cargo workspace); this script builds it and runs target/release/chorus-load.
# By hand: `cargo run --release --bin chorus-load -- --help`.
#
#   benches/peers/run.sh                      # every scenario, every server
#   SCENARIOS="fanout idle" SERVERS="chorus y-websocket" benches/peers/run.sh
#   SCENARIOS=crowd SERVERS=chorus benches/peers/run.sh   # 15 000 members join one room
#   QUICK=1 benches/peers/run.sh              # small sizes, a smoke test
#   # a room's send budget (--room-max-sends-per-sec), alternated with a peer,
#   # at 10 writers x 30 updates/s:
#   SCENARIOS=fanout SERVERS="chorus chorus-budget y-sweet chorus chorus-budget y-sweet" \
#     BUDGET=50000 FANOUT_RATE=30 benches/peers/run.sh
#
# Peers are installed on first use into .peers/ (git-ignored): npm packages
# @y/websocket-server 0.1.1 + yjs 13 and @hocuspocus/server 4.x, and
# y-sweet 0.9.1 (`cargo install`, several minutes on 2 cores). Results are
# appended to .peers/results-<time>.jsonl. Every server and client stops by
# itself (chorus-load stops the server it spawned; each run has a timeout).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PEERS="$ROOT/.peers"
mkdir -p "$PEERS/node"
cd "$ROOT"

SCENARIOS="${SCENARIOS:-fanout idle rooms join-storm presence}"
SERVERS="${SERVERS:-chorus chorus-yjs chorus-hocuspocus chorus-redb y-websocket hocuspocus hocuspocus-nomerge y-sweet}"
OUT="${OUT:-$PEERS/results-$(date +%Y%m%d-%H%M%S).jsonl}"
PORT="${PORT:-18400}"

# --- install -------------------------------------------------------------
if [ ! -d "$PEERS/node/node_modules/@hocuspocus/server" ] || [ ! -d "$PEERS/node/node_modules/@y/websocket-server" ]; then
  echo '{"name":"chorus-peers","private":true,"type":"module"}' > "$PEERS/node/package.json"
  (cd "$PEERS/node" && npm install --no-audit --no-fund @y/websocket-server@0.1.1 yjs@13 @hocuspocus/server@4)
fi
cp "$ROOT/benches/peers/hocuspocus.mjs" "$PEERS/node/hocuspocus.mjs"
YSWEET="$PEERS/y-sweet/bin/y-sweet"
if [[ " $SERVERS " == *" y-sweet "* ]] && [ ! -x "$YSWEET" ]; then
  cargo install y-sweet --locked --version 0.9.1 --root "$PEERS/y-sweet"
fi
cargo build --release -p chorus -p chorus-load
LOAD="$ROOT/target/release/chorus-load"
CHORUS="$ROOT/target/release/chorus"

# --- scenario sizes ------------------------------------------------------
if [ -n "${QUICK:-}" ]; then
  FANOUT="--subscribers 100 --writers 2 --rate 10 --secs 3"
  IDLE="--conns 1000"; ROOMS="--rooms 200 --secs 3"; STORM="--clients 20 --doc-mb 1"; PRES="--clients 50 --secs 3"; CROWD="--conns 1000"
else
  FANOUT="--subscribers 1000 --writers 10 --rate ${FANOUT_RATE:-10} --secs 10"
  IDLE="--conns 15000"; ROOMS="--rooms 5000 --per-room 1 --secs 10"; STORM="--clients 200 --doc-mb 10"; PRES="--clients 500 --secs 10"; CROWD="--conns 15000"
fi

# The load generator is many clients behind four loopback addresses: the
# per-IP and per-session abuse limits (on by default) would throttle it.
NOLIMITS="--max-connections-per-ip 0 --connections-per-ip-per-sec 0 --max-messages-per-sec 0 --max-bytes-per-sec 0"

run() { # server scenario args...
  local server="$1" scenario="$2"; shift 2
  local p=$((PORT++)) data
  data="$(mktemp -d "$PEERS/data.XXXX")"
  local proto url cmd
  case "$server" in
    chorus)      proto=native; url="ws://127.0.0.1:$p"; cmd="$CHORUS --store memory --port $p --log-level warn $NOLIMITS" ;;
    chorus-budget) proto=native; url="ws://127.0.0.1:$p"; cmd="$CHORUS --store memory --port $p --log-level warn $NOLIMITS --room-max-sends-per-sec ${BUDGET:-50000}" ;;
    chorus-yjs)  proto=yws; url="ws://127.0.0.1:$p/yjs"; cmd="$CHORUS --store memory --port $p --log-level warn $NOLIMITS" ;;
    chorus-hocuspocus) proto=hocuspocus; url="ws://127.0.0.1:$p/hocuspocus"; cmd="$CHORUS --store memory --port $p --log-level warn $NOLIMITS" ;;
    chorus-redb) proto=native; url="ws://127.0.0.1:$p"; cmd="$CHORUS --data-dir $data --port $p --log-level warn $NOLIMITS" ;;
    y-websocket) proto=yws; url="ws://127.0.0.1:$p"; cmd="env HOST=127.0.0.1 PORT=$p node $PEERS/node/node_modules/@y/websocket-server/src/server.js" ;;
    hocuspocus)  proto=hocuspocus; url="ws://127.0.0.1:$p"; cmd="env PORT=$p node $PEERS/node/hocuspocus.mjs" ;;
    hocuspocus-nomerge) proto=hocuspocus; url="ws://127.0.0.1:$p"; cmd="env PORT=$p HP_MERGE=0 node $PEERS/node/hocuspocus.mjs" ;;
    y-sweet)     proto=ysweet; url="http://127.0.0.1:$p"; cmd="$YSWEET serve --host 127.0.0.1 --port $p" ;;
    *) echo "unknown server $server" >&2; return 1 ;;
  esac
  echo "--- $scenario on $server" >&2
  timeout 400 "$LOAD" "$scenario" --proto "$proto" --url "$url" --label "$server" --spawn "$cmd" --json "$OUT" "$@" \
    || echo "!!! $scenario on $server failed (exit $?)" >&2
  rm -rf "$data"
  sleep 1
}

for scenario in $SCENARIOS; do
  case "$scenario" in
    fanout) args=$FANOUT ;; idle) args=$IDLE ;; rooms) args=$ROOMS ;; join-storm) args=$STORM ;; presence) args=$PRES ;; crowd) args=$CROWD ;;
    *) echo "unknown scenario $scenario" >&2; exit 1 ;;
  esac
  for server in $SERVERS; do
    # The durable store only matters where documents change.
    if [ "$server" = chorus-redb ] && [ "$scenario" != fanout ] && [ "$scenario" != join-storm ]; then continue; fi
    # crowd speaks the native protocol only.
    if [ "$scenario" = crowd ] && [ "$server" != chorus ]; then continue; fi
    # shellcheck disable=SC2086
    run "$server" "$scenario" $args
    if [ "$scenario" = idle ] && [ "$server" = chorus ]; then
      run chorus idle $args --idle-join false   # hello only, no room
      sed -i '$ s/"server":"chorus"/"server":"chorus (hello only)"/' "$OUT"
    fi
  done
done

echo; echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "results: $OUT"
node "$ROOT/benches/peers/summarize.mjs" "$OUT"

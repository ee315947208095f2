#!/usr/bin/env bash
# redis-benchmark side by side against `ringcask serve` and Debian's redis-server on this
# machine, bounded in count and time, then RSS after loading 1M keys and the restart time
# with them. Writes server/bench/results/{runs.csv,memory_restart.csv} and, through chart.py,
# results.md and results.svg.
#
#   server/bench/vs_redis.sh                 # the full run (-n 1000000 per test; ~15 min)
#   N=100000 KEYS=200000 server/bench/vs_redis.sh   # a short run
#
# Needs redis-server, redis-cli and redis-benchmark (apt-get install redis-server redis-tools).
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-1000000}
KEYS=${KEYS:-1000000}
CLIENTS=${CLIENTS:-50}
LIMIT_SECS=${LIMIT_SECS:-900}   # no single redis-benchmark run may take longer
WORK=${WORK:-/var/tmp/ringcask-vs-redis}
OUT=server/bench/results
PORT_RC=${PORT_RC:-16379}
PORT_REDIS=${PORT_REDIS:-16380}
mkdir -p "$OUT"
for t in redis-server redis-cli redis-benchmark python3; do
  command -v "$t" >/dev/null || { echo "missing $t (apt-get install redis-server redis-tools)"; exit 1; }
done
cargo build --release -q -p ringcask-server
BIN=target/release/ringcask
PID=""

stop_server() {
  if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
    kill -TERM "$PID"; wait "$PID" 2>/dev/null || true
  fi
  PID=""
}
trap stop_server EXIT

wait_ready() { # port: until PING answers PONG (Redis answers -LOADING while it replays its AOF)
  for _ in $(seq 1 60000); do
    if [ "$(redis-cli -p "$1" PING 2>/dev/null)" = "PONG" ]; then return 0; fi
    sleep 0.005
  done
  echo "server on port $1 never became ready"; exit 1
}

start() { # engine sync dir
  case "$1" in
    ringcask)
      local sync=$2
      [ "$sync" = everysec ] && sync=interval:1000
      "$BIN" serve --dir "$3" --bind 127.0.0.1:$PORT_RC --sync "$sync" 2>"$WORK/$1.log" &
      PID=$!; PORT=$PORT_RC ;;
    redis)
      redis-server --port $PORT_REDIS --bind 127.0.0.1 --dir "$3" --appendonly yes \
        --appendfsync "$2" --save "" --daemonize no --logfile "$WORK/$1.log" &
      PID=$!; PORT=$PORT_REDIS ;;
  esac
  wait_ready "$PORT"
}

rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

echo "engine,sync,pipeline,test,rps,p50_ms,p99_ms" > "$OUT/runs.csv"
for sync in always everysec; do
  for pipeline in 1 16; do
    for engine in ringcask redis; do
      dir="$WORK/$engine-$sync-$pipeline"; rm -rf "$dir"; mkdir -p "$dir"
      start "$engine" "$sync" "$dir"
      echo "== $engine sync=$sync -P $pipeline"
      timeout "$LIMIT_SECS" redis-benchmark -p "$PORT" -t set,get,incr,mset -n "$N" -r 1000000 \
        -d 100 -c "$CLIENTS" -P "$pipeline" --csv \
        | awk -F, -v e="$engine" -v s="$sync" -v p="$pipeline" \
            'NR > 1 { gsub(/"/, ""); print e "," s "," p "," $1 "," $2 "," $5 "," $7 }' \
        | tee -a "$OUT/runs.csv"
      stop_server
      rm -rf "$dir"
    done
  done
done

# RSS after loading KEYS keys (100-byte values), restart after a clean stop and after SIGKILL.
python3 - "$KEYS" > "$WORK/load.resp" <<'PY'
import sys
n = int(sys.argv[1]); v = "x" * 100; out = sys.stdout
for i in range(n):
    k = f"key:{i:012d}"
    out.write(f"*3\r\n$3\r\nSET\r\n${len(k)}\r\n{k}\r\n${len(v)}\r\n{v}\r\n")
PY
echo "engine,keys,rss_before_kib,rss_after_kib,restart_clean_ms,restart_killed_ms,dbsize" > "$OUT/memory_restart.csv"
for engine in ringcask redis; do
  dir="$WORK/$engine-load"; rm -rf "$dir"; mkdir -p "$dir"
  start "$engine" always "$dir"
  before=$(rss_kib "$PID")
  redis-cli -p "$PORT" --pipe < "$WORK/load.resp" > /dev/null
  after=$(rss_kib "$PID")
  size=$(redis-cli -p "$PORT" DBSIZE)
  stop_server
  t0=$(date +%s%N); start "$engine" always "$dir"; t1=$(date +%s%N)
  clean=$(( (t1 - t0) / 1000000 ))
  kill -KILL "$PID"; wait "$PID" 2>/dev/null || true; PID=""
  t0=$(date +%s%N); start "$engine" always "$dir"; t1=$(date +%s%N)
  killed=$(( (t1 - t0) / 1000000 ))
  [ "$(redis-cli -p "$PORT" DBSIZE)" = "$size" ] || { echo "$engine lost keys on restart"; exit 1; }
  stop_server
  echo "$engine,$KEYS,$before,$after,$clean,$killed,$size" | tee -a "$OUT/memory_restart.csv"
  rm -rf "$dir"
done
rm -f "$WORK/load.resp"
python3 server/bench/chart.py "$OUT"
echo "wrote $OUT/results.md and $OUT/results.svg"

#!/usr/bin/env bash
# The price of a copy migration for the cluster's other traffic: sysbench
# oltp_point_select through shardgate (16 threads) on a cluster while shardgate copies a
# 1,000,000-row table there (ALTER TABLE big MODIFY v BIGINT, strategy copy), against
# the same cluster idle, alternating idle / copying in one run. Prints p99 (sysbench's
# --percentile=99), QPS, the ratios, and the copy rate (rows/s from SHOW MIGRATIONS).
#
# usage: bench/copy_impact.sh   (env: ROUNDS=3 TIME=15 THREADS=16 ROWS=1000000 SKIP_BUILD=1)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
TIME=${TIME:-15}
THREADS=${THREADS:-16}
ROWS=${ROWS:-1000000}
command -v sysbench >/dev/null || { echo "sysbench not found: run scripts/ensure-deps" >&2; exit 1; }
if [ -z "${SKIP_BUILD:-}" ]; then
  cargo build --release --bin shardgate --bin shardgate-bench
fi
BIN=target/release
dir=$(mktemp -d /tmp/shardgate-copy-impact.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  exec 3>&- 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

mkfifo "$dir/hold"
"$BIN/shardgate-bench" servers --count 1 --buffer-pool-mb 512 <"$dir/hold" >"$dir/servers.out" 2>&1 &
exec 3>"$dir/hold"
for _ in $(seq 1 600); do grep -q '^ready' "$dir/servers.out" && break; sleep 0.1; done
read -r _ A < <(grep '^ready' "$dir/servers.out") || { cat "$dir/servers.out" >&2; exit 1; }
PORT=${A##*:}
db() { mariadb -h127.0.0.1 -P"$PORT" -ushardgate -pshardgate -N -e "$1"; }
db "CREATE DATABASE app"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 200); do (exec 9<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }
SG_PORT=$(free_port)
cat >"$dir/vschema.toml" <<TOML
[clusters.c1]
primary = "127.0.0.1:$PORT"
user = "shardgate"
password = "shardgate"
[keyspaces.app]
cluster = "c1"
TOML
cat >"$dir/shardgate.toml" <<TOML
listen = "127.0.0.1:$SG_PORT"
vschema = "vschema.toml"
[[users]]
name = "app"
password = "app"
[[users]]
name = "admin"
password = "admin"
admin = true
[migrations]
threads_running_floor = 1000
TOML
# The throttle is set out of the way (threads_running_floor) so the copy runs flat out:
# this measures the copy's own cost, the worst case the throttle would otherwise limit.
"$BIN/shardgate" serve --config "$dir/shardgate.toml" >"$dir/shardgate.log" 2>&1 &
pids+=($!)
wait_port "$SG_PORT"
sb() { sysbench oltp_point_select --db-driver=mysql --mysql-host=127.0.0.1 --mysql-port="$SG_PORT" \
  --mysql-user=app --mysql-password=app --mysql-db=app --db-ps-mode=disable --tables=1 \
  --table-size=100000 --threads="$THREADS" "$@"; }
sb prepare >/dev/null
echo "loading $ROWS rows into app.big ..." >&2
sg() { mariadb -h127.0.0.1 -P"$SG_PORT" -u"$1" -p"$1" app -N -e "$2"; }

run_arm() { # -> "qps p99_ms"
  sb run --time="$TIME" --percentile=99 2>/dev/null | awk '/queries:/ {gsub(/[()]/,"",$3); q=$3} /99th percentile:/ {p=$3} END {print q, p}'
}
results=()
for round in $(seq 1 "$ROUNDS"); do
  db "DROP TABLE IF EXISTS app.big; DROP TABLE IF EXISTS app._big_old; CREATE TABLE app.big (id INT PRIMARY KEY, v INT NOT NULL, pad CHAR(60) NOT NULL DEFAULT 'x'); INSERT INTO app.big (id, v) SELECT seq, seq FROM app.seq_1_to_$ROWS"
  idle=$(run_arm)
  uuid=$(sg app "ALTER TABLE big MODIFY v BIGINT NOT NULL" | awk '{print $1}')
  start=$(date +%s.%N)
  busy=$(run_arm)
  # copy rate: rows copied so far over elapsed time (the copy may still be running)
  copied=$(sg admin "SHOW MIGRATIONS LIKE '$uuid'" | awk -F'\t' '{print $11}')
  now=$(date +%s.%N)
  rate=$(python3 -c "print(round($copied/($now-$start)))")
  echo "round $round: idle qps/p99 $idle | during copy $busy | copy $copied rows in $(python3 -c "print(round($now-$start,1))") s = $rate rows/s" >&2
  results+=("$idle $busy $rate")
  # let the copy finish before the next round
  for _ in $(seq 1 600); do
    st=$(sg admin "SHOW MIGRATIONS LIKE '$uuid'" | awk -F'\t' '{print $8}')
    [ "$st" = "complete" ] || [ "$st" = "failed" ] && break
    sleep 1
  done
  echo "  migration $uuid: $st" >&2
done
printf '%s\n' "${results[@]}" | python3 -c '
import sys, statistics as s
rows=[list(map(float,l.split())) for l in sys.stdin if l.strip()]
iq=s.median(r[0] for r in rows); ip=s.median(r[1] for r in rows)
bq=s.median(r[2] for r in rows); bp=s.median(r[3] for r in rows); rate=s.median(r[4] for r in rows)
print(f"| arm | QPS | p99 ms |\n| --- | ---: | ---: |\n| idle | {iq:.0f} | {ip:.2f} |\n| during copy | {bq:.0f} | {bp:.2f} |")
print(f"p99 during copy / idle: {bp/ip:.2f}; QPS during copy / idle: {bq/iq:.2f}; copy rate {rate:.0f} rows/s (medians of {len(rows)} rounds)")
'

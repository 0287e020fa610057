#!/usr/bin/env bash
# sysbench oltp_point_select (text protocol, or prepared statements with PS_MODE=auto) three ways in one run, arms alternating:
#   direct    -> server A, database sbfull: one table holding ALL rows
#   relay     -> shardgate-relay -> server A, database sbfull (same rows, same server)
#   shardgate -> shardgate -> keyspace sbtest, sharded by id (numeric vindex) in two
#                shards: with LAYOUT=one-server (the default) both on server A
#                (databases sbtest_lo and sbtest_hi), with LAYOUT=two-servers on server A
#                (ids below the split) and server B (ids from the split on)
#
# Why this split: through shardgate sysbench touches both shards, so the direct and relay
# arms read a single table holding every row instead of one shard's half. Every query is
# a primary-key lookup in a table that fits the buffer pool, so a row costs the server
# the same whether its table holds N or N/2 rows. With one-server every arm's queries
# are answered by the same mariadbd, so the arms differ by what sits in front of it (as
# in shardgate-bench, whose load goes to one server). two-servers runs a second
# mariadbd on the same cores for the shardgate arm only: it measures that layout, not
# the proxy alone. The tables are prepared THROUGH shardgate (sysbench's own CREATE
# TABLE / multi-row INSERTs / CREATE INDEX are broadcast or split by id), and separately
# straight into A's sbfull.
#
# usage: bench/sysbench.sh    (env: ROUNDS=3 TIME=10 THREADS=16 TABLE_SIZE=100000
#                              WARMUP=3 SKIP_BUILD=1 to reuse the binaries built before
#                              PGO=0 to measure `cargo build --release` (target/release)
#                              instead of the shipped, profile-guided build
#                              (scripts/build-pgo, target/pgo)
#                              PS_MODE=auto for server-side prepared statements
#                              POOL=N shardgate's [pool] max_connections, default THREADS+16
#                              LAYOUT=one-server or two-servers
#                              BIN=DIR the binaries' directory, with SKIP_BUILD=1)
# THREADS=64 and THREADS=256 work: the servers take max(1200, 2*THREADS+300) connections
# and the open-files limit is raised to the hard limit (refused if that is too low).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
TIME=${TIME:-10}
THREADS=${THREADS:-16}
TABLE_SIZE=${TABLE_SIZE:-100000}
WARMUP=${WARMUP:-3}
TEST=oltp_point_select
PS_MODE=${PS_MODE:-disable}
LAYOUT=${LAYOUT:-one-server}
case "$LAYOUT" in
  one-server) SERVERS=1 ;;
  two-servers) SERVERS=2 ;;
  *) echo "LAYOUT is one-server or two-servers" >&2; exit 2 ;;
esac
POOL=${POOL:-$((THREADS + 16))}
MAX_CONNS=$((2 * THREADS + 300)); [ "$MAX_CONNS" -lt 1200 ] && MAX_CONNS=1200

command -v sysbench >/dev/null || { echo "sysbench not found: run scripts/ensure-deps" >&2; exit 1; }
if [ "${PGO:-1}" = 0 ]; then
  [ -n "${SKIP_BUILD:-}" ] || cargo build --release --bin shardgate --bin shardgate-relay --bin shardgate-bench
  BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release}
else
  [ -n "${SKIP_BUILD:-}" ] || scripts/build-pgo
  BIN=${BIN:-target/pgo}
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((2 * THREADS + 300)) ]; then
  echo "THREADS=$THREADS needs $((2 * THREADS + 300)) open files; ulimit -Hn is $(ulimit -Hn)" >&2; exit 1
fi

dir=$(mktemp -d /tmp/shardgate-sysbench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  exec 3>&- 2>/dev/null || true          # closing the servers' stdin stops them
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

# ---- two MariaDB servers, held by shardgate-bench until fd 3 closes ------------------
mkfifo "$dir/hold"
"$BIN/shardgate-bench" servers --count "$SERVERS" --buffer-pool-mb 256 --max-connections "$MAX_CONNS" <"$dir/hold" >"$dir/servers.out" 2>&1 &
exec 3>"$dir/hold"
for _ in $(seq 1 600); do grep -q '^ready' "$dir/servers.out" && break; sleep 0.1; done
read -r _ A B < <(grep '^ready' "$dir/servers.out") || { cat "$dir/servers.out" >&2; exit 1; }
db() { mariadb -h127.0.0.1 -P"$1" -ushardgate -pshardgate -N -e "$2"; }
A_PORT=${A##*:}
if [ "$LAYOUT" = one-server ]; then
  # The second shard is a second database of server A, in the same cluster.
  B=$A; LO=sbtest_lo; HI=sbtest_hi; HI_CLUSTER=a
  db "$A_PORT" "CREATE DATABASE sbtest_lo; CREATE DATABASE sbtest_hi; CREATE DATABASE sbfull"
else
  LO=sbtest; HI=sbtest; HI_CLUSTER=b
  db "$A_PORT" "CREATE DATABASE sbtest; CREATE DATABASE sbfull"
  db "${B##*:}" "CREATE DATABASE sbtest"
fi
B_PORT=${B##*:}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 200); do (exec 9<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "nothing listens on $1" >&2; return 1; }

# ---- shardgate: sbtest sharded by id, split at the middle of the id range ------------
SPLIT=$(printf '%016x' $((TABLE_SIZE / 2 + 1)))
cat >"$dir/vschema.toml" <<TOML
[clusters.a]
primary = "$A"
user = "shardgate"
password = "shardgate"

$([ "$HI_CLUSTER" = b ] && printf '[clusters.b]\nprimary = "%s"\nuser = "shardgate"\npassword = "shardgate"\n' "$B")

[keyspaces.sbtest]
sharded = true
vindex = "numeric"
default_column = "id"
shards = [
  { name = "-$SPLIT", cluster = "a", database = "$LO" },
  { name = "$SPLIT-", cluster = "$HI_CLUSTER", database = "$HI" },
]
TOML
PROXY_PORT=$(free_port)
cat >"$dir/shardgate.toml" <<TOML
listen = "127.0.0.1:$PROXY_PORT"
vschema = "vschema.toml"
# sysbench logs its THREADS connections in at once, all from 127.0.0.1
max_pending_logins = 1000
max_pending_logins_per_ip = 1000
[[users]]
name = "sb"
password = "sb"
[pool]
max_connections = $POOL
TOML
"$BIN/shardgate" serve --config "$dir/shardgate.toml" >"$dir/shardgate.log" 2>&1 &
PROXY_PID=$!; pids+=("$PROXY_PID")
RELAY_PORT=$(free_port)
"$BIN/shardgate-relay" --listen "127.0.0.1:$RELAY_PORT" --backend "$A" >"$dir/relay.log" 2>&1 &
RELAY_PID=$!; pids+=("$RELAY_PID")
wait_port "$PROXY_PORT"; wait_port "$RELAY_PORT"

common=(--db-driver=mysql --mysql-host=127.0.0.1 --db-ps-mode="$PS_MODE" --tables=1
        --table-size="$TABLE_SIZE" --auto-inc=off)
direct=(--mysql-port="$A_PORT" --mysql-user=shardgate --mysql-password=shardgate --mysql-db=sbfull)
relay=(--mysql-port="$RELAY_PORT" --mysql-user=shardgate --mysql-password=shardgate --mysql-db=sbfull)
proxy=(--mysql-port="$PROXY_PORT" --mysql-user=sb --mysql-password=sb --mysql-db=sbtest)

echo "preparing $TABLE_SIZE rows through shardgate (split at id $((TABLE_SIZE / 2 + 1))) and straight into A.sbfull" >&2
sysbench "$TEST" "${common[@]}" "${proxy[@]}" prepare >"$dir/prepare-proxy.log" 2>&1 ||
  { cat "$dir/prepare-proxy.log" "$dir/shardgate.log" >&2; exit 1; }
sysbench "$TEST" "${common[@]}" "${direct[@]}" prepare >"$dir/prepare-direct.log" 2>&1 ||
  { cat "$dir/prepare-direct.log" >&2; exit 1; }
echo "rows: A.$LO=$(db "$A_PORT" "SELECT COUNT(*) FROM $LO.sbtest1") B.$HI=$(db "$B_PORT" "SELECT COUNT(*) FROM $HI.sbtest1") A.sbfull=$(db "$A_PORT" 'SELECT COUNT(*) FROM sbfull.sbtest1')" >&2

# user and kernel CPU ticks of a process
cpu() { awk '{ s = $0; sub(/.*\) /, "", s); split(s, f, " "); print f[12], f[13] }' "/proc/$1/stat"; }
TCK=$(getconf CLK_TCK)

# Database changes (USE, COM_INIT_DB) server A has counted: shardgate's pool should
# seldom switch a connection between the two shards' databases.
changes_of_db() { db "$A_PORT" "SHOW GLOBAL STATUS LIKE 'Com_change_db'" | awk '{ print $2 }'; }

run_arm() { # arm seconds -> "qps cpu_seconds_of_the_proxy_per_1k_queries user_us kernel_us (per query) database_changes_per_1k"
  local arm=$1 secs=$2 target pid=""
  case $arm in
    direct) target=("${direct[@]}") ;;
    relay) target=("${relay[@]}"); pid=$RELAY_PID ;;
    shardgate) target=("${proxy[@]}"); pid=$PROXY_PID ;;
  esac
  local u0=0 k0=0 u1=0 k1=0
  [ -n "$pid" ] && read -r u0 k0 < <(cpu "$pid")
  local use0 use1
  use0=$(changes_of_db)
  sysbench "$TEST" "${common[@]}" "${target[@]}" --threads="$THREADS" --time="$secs" \
    --events=0 --rate=0 run >"$dir/run.log" 2>&1 || { cat "$dir/run.log" >&2; exit 1; }
  [ -n "$pid" ] && read -r u1 k1 < <(cpu "$pid")
  use1=$(changes_of_db)
  local q qps
  q=$(awk '/ queries:/ { print $2 }' "$dir/run.log")
  qps=$(awk '/ queries:/ { gsub(/\(/, "", $3); print $3 }' "$dir/run.log")
  awk -v qps="$qps" -v q="$q" -v u="$((u1 - u0))" -v k="$((k1 - k0))" -v tck="$TCK" -v use="$((use1 - use0))" \
    'BEGIN { q = (q > 0 ? q : 1); printf "%s %.6f %.1f %.1f %.2f\n", qps, (u + k) / tck * 1000 / q, u / tck * 1e6 / q, k / tck * 1e6 / q, use * 1000 / q }'
}

for arm in direct relay shardgate; do run_arm "$arm" "$WARMUP" >/dev/null; done
declare -A QPS CPU USER KERNEL
for r in $(seq 1 "$ROUNDS"); do
  for arm in direct relay shardgate; do
    read -r qps cpu1k user_us kernel_us use1k < <(run_arm "$arm" "$TIME")
    QPS[$arm]+="$qps "; CPU[$arm]+="$cpu1k "; USER[$arm]+="$user_us "; KERNEL[$arm]+="$kernel_us "
    printf 'round %d/%d %-9s %10.0f QPS  proxy CPU %.4f s/1k queries (user %s / kernel %s us per query)  USE per 1k queries %s\n' \
      "$r" "$ROUNDS" "$arm" "$qps" "$cpu1k" "$user_us" "$kernel_us" "$use1k" >&2
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
md=$(median <<<"${QPS[direct]}"); mr=$(median <<<"${QPS[relay]}"); ms=$(median <<<"${QPS[shardgate]}")
cr=$(median <<<"${CPU[relay]}"); cs=$(median <<<"${CPU[shardgate]}")
ur=$(median <<<"${USER[relay]}"); us=$(median <<<"${USER[shardgate]}")
kr=$(median <<<"${KERNEL[relay]}"); ks=$(median <<<"${KERNEL[shardgate]}")
echo
echo "sysbench $TEST, $THREADS threads, --db-ps-mode=$PS_MODE, shards: $LAYOUT, shardgate $BIN/shardgate, pool $POOL per cluster, $TABLE_SIZE rows, $ROUNDS rounds x ${TIME}s (medians); $(date -u +%F); $(nproc) cores, $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
echo "| arm | QPS | proxy CPU s/1k q | user / kernel us per q | QPS vs direct | QPS vs relay | CPU vs relay |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
awk -v d="$md" -v r="$mr" -v s="$ms" -v cr="$cr" -v cs="$cs" -v ur="$ur" -v us="$us" -v kr="$kr" -v ks="$ks" 'BEGIN {
  printf "| direct | %.0f | - | - | - | - | - |\n", d
  printf "| relay | %.0f | %.4f | %.1f / %.1f | %.2f | - | - |\n", r, cr, ur, kr, r / d
  printf "| shardgate | %.0f | %.4f | %.1f / %.1f | %.2f | %.2f | %.2f |\n", s, cs, us, ks, s / d, s / r, (cr > 0 ? cs / cr : 0)
}'

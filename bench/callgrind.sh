#!/usr/bin/env bash
# Instructions shardgate executes per statement, counted exactly by callgrind: unlike
# a time profile on a shared VM, the same code gives the same count on every run, so
# a change of a few hundred instructions per statement shows. What it does not see:
# the kernel (system calls, wake-ups) and the cost of cache misses.
#
# A `shardgate-bench` run of the shardgate arm only, shardgate under valgrind with
# instrumentation off; after the warm-up it is switched on for TIME seconds and the
# counts dumped. Statements = calls of the plan cache's lookup (one per COM_QUERY).
#
# ARM=relay counts the plain byte relay instead (the floor: what forwarding alone
# costs in tokio and the socket calls); its queries = its socket writes / 2 (one to
# the server, one to the client per query, as every answer of these workloads fits
# one read).
#
# usage: bench/callgrind.sh   (env: ARM=shardgate CONNS=4 WORKLOAD=point-select TIME=15 TOP=40
#                               OUT=/tmp/shardgate-callgrind SKIP_BUILD=1
#                               BIN=target/release: where shardgate-bench and the
#                               shardgate it runs are, e.g. another build's copies)
# needs: valgrind, python3; builds the release binaries unless SKIP_BUILD=1.
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS=${CONNS:-4}
WORKLOAD=${WORKLOAD:-point-select}
TIME=${TIME:-15}
TOP=${TOP:-40}
OUT=${OUT:-/tmp/shardgate-callgrind}
BIN=${BIN:-target/release}
ARM=${ARM:-shardgate}
case "$ARM" in
  shardgate) WRAP_VAR=SHARDGATE_BENCH_WRAP ;;
  relay) WRAP_VAR=SHARDGATE_BENCH_WRAP_RELAY ;;
  *) echo "callgrind.sh: ARM is shardgate or relay" >&2; exit 2 ;;
esac
command -v valgrind >/dev/null || { echo "callgrind.sh: valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
[ "${SKIP_BUILD:-}" = 1 ] || cargo build --release --bins >&2
rm -rf "$OUT" && mkdir -p "$OUT"
WARMUP=20
env "$WRAP_VAR=valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=$OUT/cg.%p" \
  "$BIN/shardgate-bench" --workload "$WORKLOAD" --connections "$CONNS" --arms "$ARM" \
  --rounds 1 --warmup "$WARMUP" --duration $((TIME + 25)) >"$OUT/run.txt" 2>&1 &
bench=$!
# valgrind starts shardgate slowly: wait until it listens, then for the warm-up.
sleep $((WARMUP + 5))
callgrind_control -i on >/dev/null
sleep "$TIME"
callgrind_control -d >/dev/null
callgrind_control -i off >/dev/null || true
wait "$bench" || { echo "callgrind.sh: the bench failed, see $OUT/run.txt" >&2; exit 1; }
dump=$(ls "$OUT"/cg.*.1 | head -1)
callgrind_annotate --auto=no --inclusive=yes "$dump" >"$OUT/inclusive.txt" 2>/dev/null
callgrind_annotate --auto=no "$dump" >"$OUT/self.txt" 2>/dev/null
python3 - "$dump" "$OUT/inclusive.txt" "$OUT/self.txt" "$TOP" "$WORKLOAD" "$CONNS" "$ARM" <<'EOF'
import re, sys
dump, inclusive, selfs, top, workload, conns, arm = sys.argv[1:8]
top = int(top)
# Statement count: calls of the plan cache's lookup (one per COM_QUERY), from the dump's
# call records; by whichever name the compiler left it (plan_with may be inlined).
names, calls, cur = {}, {}, None
for line in open(dump):
    m = re.match(r'^(fn|cfn)=\((\d+)\)(?: (.*))?$', line.rstrip('\n'))
    if m:
        kind, ident, name = m.groups()
        if name:
            names[ident] = name
        if kind == 'cfn':
            cur = ident
        continue
    m = re.match(r'^calls=(\d+)', line)
    if m and cur is not None:
        calls[cur] = calls.get(cur, 0) + int(m.group(1))
lookups = ('PlanCache::plan_with', 'PlanCache::plan_noting_identity', 'PlanCache::plan_remembering', 'PlanCache::remembered')
counts = {k: sum(c for i, c in calls.items() if names.get(i, '').endswith(k)) for k in lookups}
statements = max(counts.values())
if arm == 'relay':
    # mio writes with send(2); in an LTO build tokio's poll_write_priv is inlined away.
    polls = sum(c for i, c in calls.items() if names.get(i, '').endswith('TcpStream::poll_write_priv'))
    sends = sum(c for i, c in calls.items() if names.get(i, '') in ('send', '__send', '__libc_send'))
    statements = max(polls, sends) // 2
if not statements:
    sys.exit('callgrind.sh: no statement was counted')

def table(path, add):
    # One row per function: a function's lines are split by the source file its
    # inlined code came from (self: summed) and repeated with call counts (inclusive:
    # the largest is the function's).
    rows, total = {}, None
    for line in open(path):
        m = re.match(r'\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*)$', line)
        if not m:
            continue
        ir, rest = int(m.group(1).replace(',', '')), m.group(2)
        if rest.startswith('PROGRAM TOTALS'):
            total = ir
            continue
        if rest.startswith('events annotated'):
            continue
        fn = re.sub(r'\s*\[[^\]]*\]\s*$', '', rest)
        if add and re.search(r'\([\d,]+x\)$', fn):
            continue  # a call's inclusive cost, not the function's own
        fn = re.sub(r'\s*\([\d,]+x\)$', '', fn)
        fn = fn.split(':', 1)[1] if re.match(r'^[^:]*\.(rs|c|S|h):', fn) else fn
        rows[fn] = rows.get(fn, 0) + ir if add else max(rows.get(fn, 0), ir)
    return total, sorted(rows.items(), key=lambda kv: -kv[1])

total, incl = table(inclusive, False)
_, own = table(selfs, True)
print(f'{workload}, {conns} connections: {statements} statements counted, '
      f'{total / statements:,.0f} instructions per statement ({arm}, user space)')
for title, rows in (('inclusive (with what it calls)', incl), ('self', own)):
    print(f'\n| {title} | instructions per statement |')
    print('| --- | ---: |')
    for fn, ir in rows[:top]:
        print(f'| `{fn[:110]}` | {ir / statements:,.0f} |')
EOF
echo "raw: $OUT" >&2

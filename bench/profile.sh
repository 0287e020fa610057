#!/usr/bin/env bash
# Where one point select's CPU goes in shardgate: a CPU-per-query figure from a plain
# run, then a `perf record` of the shardgate arm, bucketed into kernel paths and our own
# code by symbol, in microseconds per query (share of samples x CPU per query).
#
# usage: bench/profile.sh      (env: CONNS=16 TIME=8 OUT=/tmp/shardgate-profile SKIP_BUILD=1
#                               BIN=target/release (e.g. target/pgo from scripts/build-pgo)
#                               SHARDGATE_RUNTIME / SHARDGATE_THREADS as for `shardgate serve`)
# needs: perf (linux-perf), python3; builds the release binaries unless SKIP_BUILD=1.
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS=${CONNS:-16}
TIME=${TIME:-8}
OUT=${OUT:-/tmp/shardgate-profile}
mkdir -p "$OUT"
command -v perf >/dev/null || { echo "profile.sh: perf is not installed (apt-get install linux-perf)" >&2; exit 1; }
[ "${SKIP_BUILD:-}" = 1 ] || cargo build --release --bins >&2
BENCH=${BIN:-target/release}/shardgate-bench
common=(--workload point-select --connections "$CONNS" --arms shardgate --rounds 1 --warmup 1)

# 1. CPU per query without perf (perf's sampling adds its own cost).
"$BENCH" "${common[@]}" --duration "$TIME" >"$OUT/plain.txt" 2>&1
cpu_us=$(python3 - "$OUT/plain.txt" <<'EOF'
import sys
for line in open(sys.argv[1]):
    cells = [c.strip() for c in line.split('|')]
    if len(cells) > 9 and cells[1] == 'point-select' and cells[3] == 'shardgate':
        print(float(cells[8]) * 1000.0)  # proxy CPU s per 1,000 queries -> µs per query
        break
EOF
)
[ -n "$cpu_us" ] || { echo "profile.sh: no shardgate row in $OUT/plain.txt" >&2; exit 1; }

# 2. The profile.
rm -f "$OUT/perf.data"
SHARDGATE_BENCH_WRAP="perf record -e cpu-clock -F 999 -g -o $OUT/perf.data --" \
  "$BENCH" "${common[@]}" --duration "$TIME" >"$OUT/perf-run.txt" 2>&1
perf report -i "$OUT/perf.data" --children --sort symbol -g none --percent-limit 0 --stdio \
  >"$OUT/children.txt" 2>/dev/null
perf report -i "$OUT/perf.data" --no-children --sort dso,symbol -g none --percent-limit 0 --stdio \
  >"$OUT/self.txt" 2>/dev/null

# 3. Buckets.
python3 - "$OUT/children.txt" "$OUT/self.txt" "$cpu_us" "$CONNS" <<'EOF'
import re, sys
children, selfs, cpu_us, conns = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
incl = {}
for line in open(children):
    m = re.match(r'\s*([\d.]+)%\s+([\d.]+)%\s+\[(.)\]\s+(\S+)', line)
    if m:
        incl.setdefault(m.group(4), float(m.group(1)))
kernel = [
    ('sendto (includes delivering to the receiver on loopback and waking it)', '__sys_sendto'),
    ('recvfrom', '__sys_recvfrom'),
    ('epoll_wait', 'do_epoll_wait'),
    ('futex (cross-thread wake-ups)', '__x64_sys_futex'),
    ('switched out on the way back to user space', 'exit_to_user_mode_loop'),
]
user = [
    ('planning (lexer, planner, plan cache)', r'shardgate::planner::'),
    ('routing, vschema, pins', r'shardgate::(router|vschema)::'),
    ('pool checkout and return', r'shardgate::backend::pool::'),
    ('wire codec and response relay', r'shardgate::(protocol|backend::conn)'),
    ('metrics, per-workspace and cluster windows', r'(shardgate::(metrics|health)::|metrics_exporter|metrics::|crossbeam_epoch)'),
    ('session logic (statement, leases, identity)', r'shardgate::(session|shared|access)'),
    ('tokio scheduler and reactor', r'^(tokio::|mio::|<tokio|<mio)'),
    ('allocator', r'^(malloc|free|cfree|_int_malloc|_int_free|realloc|__libc_malloc|__libc_free|malloc_consolidate|_int_realloc)'),
    ('memcpy / memmove / memcmp', r'^__(memmove|memcpy|memcmp|memset)'),
    ('clock reads', r'(clock_gettime|Instant>::now|Instant>::elapsed)'),
    ('libc syscall wrappers', r'^(__send|__libc_recv|__libc_send|epoll_wait|__GI___pthread_(en|dis)able_asynccancel|syscall)$'),
    ('bytes buffers', r'^bytes::'),
    ('hashing', r'(hash_one|sip::Hasher|foldhash)'),
]
rows, kernel_self, user_self = [], 0.0, {}
for line in open(selfs):
    m = re.match(r'\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.+?)\s*$', line)
    if not m:
        continue
    pct, dso, kind, sym = float(m.group(1)), m.group(2), m.group(3), m.group(4)
    if kind == 'k':
        kernel_self += pct
        continue
    for name, pat in user:
        if re.search(pat, sym):
            user_self[name] = user_self.get(name, 0.0) + pct
            break
    else:
        user_self['other user space'] = user_self.get('other user space', 0.0) + pct
us = lambda p: p * cpu_us / 100.0
print(f'shardgate, point select, {conns} connections: {cpu_us:.1f} µs of CPU per query '
      f'(plain run); shares from perf samples')
print('| where | share | µs per query |')
print('| --- | ---: | ---: |')
print(f'| **kernel, all** | {kernel_self:.1f}% | {us(kernel_self):.1f} |')
for name, sym in kernel:
    p = incl.get(sym, 0.0)
    print(f'| kernel: {name} | {p:.1f}% | {us(p):.1f} |')
total_user = sum(user_self.values())
print(f'| **user space, all** | {total_user:.1f}% | {us(total_user):.1f} |')
for name, p in sorted(user_self.items(), key=lambda kv: -kv[1]):
    print(f'| {name} | {p:.1f}% | {us(p):.2f} |')
EOF
echo "raw reports: $OUT/children.txt $OUT/self.txt" >&2

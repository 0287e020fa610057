#!/usr/bin/env bash
# shardgate's resident memory per idle client connection, at 1,000 and 10,000 clients.
# Both shardgate and the client side hold one socket per connection, so raise the
# open-file limit first. usage: bench/idle.sh [--connections 1000,10000] [--rounds 3]
set -euo pipefail
cd "$(dirname "$0")/.."
# Each side needs one descriptor per connection plus a few: raise the soft limit as far
# as the hard limit allows (10,000 connections need about 10,100).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 10100 ]; then
  echo "open-file limit $(ulimit -n) is below 10100; run as root or lower --connections" >&2
  exit 1
fi
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --bin shardgate --bin shardgate-bench
exec target/release/shardgate-bench idle "$@"

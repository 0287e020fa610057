#!/usr/bin/env bash
# shardgate's resident memory per idle client connection, at 1,000 and 10,000 clients.
# Both shardgate and the client side hold one socket per connection, so raise the
# open-file limit first. usage: bench/idle.sh [--connections 1000,10000] [--rounds 3]
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n 65536 || { echo "cannot raise the open-file limit (ulimit -n 65536)" >&2; exit 1; }
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --bin shardgate --bin shardgate-bench
exec target/release/shardgate-bench idle "$@"

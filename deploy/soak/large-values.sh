#!/usr/bin/env bash
# Large-value soak: 3 durable nodes (fsync on every node) on 127.0.0.1:7101-7103,
# `kvctl bench write` with VALUE-byte values over CONN connections for TOTAL
# seconds; node3 is cut off (both directions, with the fault hook) from CUT_AT
# for CUT_FOR seconds. Every 5 s it samples each node's RSS and the sizes in
# /status (log in memory, writer queue, buffer, trace, log length); at the end
# it waits until every node has the same clock and prints each node's peak RSS.
# Stops the bench when the disk has less than 12 GB free (a cut-off node makes
# its peers keep every write in their log). Needs `cargo build --release -p
# kvnode -p kvctl`. Example: CONN=1 deploy/soak/large-values.sh
set -euo pipefail
BIN=${BIN:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/target/release}
VALUE=${VALUE:-1000000}; TOTAL=${TOTAL:-600}; CUT_AT=${CUT_AT:-150}; CUT_FOR=${CUT_FOR:-300}
CONN=${CONN:-2}
DIR=$(mktemp -d "${TMPDIR:-/tmp}/kv-soak.XXXX"); echo "data in $DIR (deleted at the end)"
NODES="node1=http://127.0.0.1:7101,node2=http://127.0.0.1:7102,node3=http://127.0.0.1:7103"
pids=()
for i in 1 2 3; do
  KVNODE_NODE_ID=node$i KVNODE_NODES=$NODES KVNODE_LISTEN=127.0.0.1 KVNODE_PORT=710$i KVNODE_DATA_DIR=$DIR/node$i \
  KVNODE_FAULTS=true RUST_LOG=warn $BIN/kvnode >$DIR/node$i.log 2>&1 &
  pids+=($!)
done
trap 'kill ${pids[@]} 2>/dev/null || true; sleep 1; rm -rf "$DIR"' EXIT
for i in 1 2 3; do until curl -sf localhost:710$i/health >/dev/null; do sleep 0.2; done; done
link() { curl -sf -X POST -H 'content-type: application/json' -d '{}' localhost:710$1/admin/v1/links/node$2/$3 >/dev/null; }
( $BIN/kvctl -n http://127.0.0.1:7101 -n http://127.0.0.1:7102 -n http://127.0.0.1:7103 bench write \
    -c $CONN -d ${TOTAL}s --value-size $VALUE --keys 200 > $DIR/bench.txt 2>&1 ) &
bench=$!
start=$(date +%s)
echo "t node rss_kib hwm_kib log_mem_bytes queued buffered trace log_len" > $DIR/samples.txt
cut=0
while kill -0 $bench 2>/dev/null; do
  t=$(( $(date +%s) - start ))
  if [ $cut = 0 ] && [ $t -ge $CUT_AT ]; then for p in 1 2; do link $p 3 pause; link 3 $p pause; done; cut=1; echo "cut node3 at $t s"; fi
  if [ $cut = 1 ] && [ $t -ge $((CUT_AT+CUT_FOR)) ]; then for p in 1 2; do link $p 3 resume; link 3 $p resume; done; cut=2; echo "healed at $t s"; fi
  avail=$(df --output=avail -k "$DIR" | tail -1)
  if [ "$avail" -lt 12000000 ]; then echo "disk nearly full at $t s: stopping the bench"; kill $bench; fi
  for i in 1 2 3; do
    pid=${pids[$((i-1))]}
    rss=$(awk '/VmRSS/{print $2}' /proc/$pid/status); hwm=$(awk '/VmHWM/{print $2}' /proc/$pid/status)
    st=$(curl -s -m 2 localhost:710$i/status || echo '{}')
    echo "$t node$i $rss $hwm $(echo "$st" | python3 -c 'import json,sys; s=json.load(sys.stdin); print(s.get("log_in_memory_bytes"), s.get("queued_bytes"), s.get("buffered_bytes"), s.get("trace_bytes"), s.get("log_len"))' 2>/dev/null || echo "- - - - -")" >> $DIR/samples.txt
  done
  sleep 5
done
wait $bench || true
for k in $(seq 1 300); do
  a=$(for i in 1 2 3; do curl -s localhost:710$i/status | python3 -c 'import json,sys; print(json.load(sys.stdin)["applied"])'; done | sort -u | wc -l)
  [ "$a" = 1 ] && break; sleep 1
done
echo "converged: $([ "$a" = 1 ] && echo yes || echo NO) after $k s"
tail -4 $DIR/bench.txt
for i in 1 2 3; do echo "node$i peak RSS (VmHWM): $(awk '/VmHWM/{print $2}' /proc/${pids[$((i-1))]}/status) KiB"; done
du -sh $DIR
echo "samples:"; cat $DIR/samples.txt

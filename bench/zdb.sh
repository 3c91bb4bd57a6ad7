#!/usr/bin/env bash
# Benchmarks our 0-db compatible server with redis-benchmark: 4 KiB values, 50 clients, SET and GET, without
# and with -P 16, plus a many-reader GET test (4 redis-benchmark processes x 50 clients at once).
# Baseline measured in the same run: redis-server (no persistence) on the same machine with the same
# load. The table also shows ratios to the issue's targets and to 0-db 2.0.7's figures measured on this
# machine (GET 41k/s, SET 29k/s, ~18k/s pipelined).
#
# Usage: bash bench/zdb.sh            (REPS=3 N=100000 by default; medians of REPS runs)
set -euo pipefail
cd "$(dirname "$0")/.."

REPS=${REPS:-3}
N=${N:-100000}
KEYS=${KEYS:-10000}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target/zdb}

if ! command -v redis-benchmark >/dev/null || ! command -v redis-server >/dev/null; then
    apt-get install -y redis-tools redis-server >/dev/null
fi
cargo build --release -p zdb >/dev/null 2>&1 || cargo build --release -p zdb
BIN=$CARGO_TARGET_DIR/release/zdb

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do
        kill "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
    local p
    while :; do
        p=$((20000 + RANDOM % 20000))
        if ! (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null; then echo "$p"; return; fi
    done
}

wait_port() {
    for _ in $(seq 1 200); do
        if redis-cli -p "$1" PING 2>/dev/null | grep -q PONG; then return 0; fi
        sleep 0.05
    done
    echo "server on port $1 did not start" >&2
    exit 1
}

ZPORT=$(free_port)
"$BIN" --data "$WORK/zdb/data" --index "$WORK/zdb/index" --listen 127.0.0.1 --port "$ZPORT" 2>"$WORK/zdb.log" &
ZPID=$!
PIDS+=("$ZPID")
RPORT=$(free_port)
redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize no >"$WORK/redis.log" 2>&1 &
RPID=$!
PIDS+=("$RPID")
wait_port "$ZPORT"
wait_port "$RPORT"

# One redis-benchmark run: prints requests per second. SETs use a huge key space so nearly every SET is a
# new key and really appends (a SET of an unchanged value is answered without writing, in 0-db as here);
# GETs read the $KEYS keys written by populate().
run_once() { # port test pipeline clients
    local space=$KEYS
    [ "$2" = set ] && space=100000000
    redis-benchmark -h 127.0.0.1 -p "$1" -t "$2" -P "$3" -c "$4" -n "$N" -d 4096 -r "$space" --csv 2>/dev/null |
        awk -F'"' -v t="${2^^}" '$2 == t { print $4; exit }'
}

populate() { # port: drop redis' SET-test keys (memory), write the $KEYS keys GET reads
    redis-cli -p "$1" FLUSHALL >/dev/null 2>&1 || true
    redis-benchmark -h 127.0.0.1 -p "$1" -t set -P 16 -c 50 -n $((KEYS * 5)) -d 4096 -r "$KEYS" -q >/dev/null 2>&1
}

median() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

many_readers_once() { # port: 4 processes x 50 clients of GET at once, summed
    local pids=()
    for i in 1 2 3 4; do
        run_once "$1" get 1 50 >"$WORK/mr.$i" &
        pids+=($!)
    done
    wait "${pids[@]}"
    cat "$WORK"/mr.* | awk '{ s += $1 } END { printf "%.0f\n", s }'
    rm -f "$WORK"/mr.*
}

# Interleave the two servers run by run, so load changes on the shared machine hit both alike.
for rep in $(seq 1 "$REPS"); do
    for server in zdb redis; do
        port=$ZPORT
        [ "$server" = redis ] && port=$RPORT
        run_once "$port" set 1 50 >>"$WORK/$server.set1"
        run_once "$port" set 16 50 >>"$WORK/$server.set16"
        populate "$port"
        run_once "$port" get 1 50 >>"$WORK/$server.get1"
        run_once "$port" get 16 50 >>"$WORK/$server.get16"
        many_readers_once "$port" >>"$WORK/$server.many"
    done
done

declare -A RES
for server in zdb redis; do
    for t in set1 get1 set16 get16 many; do
        RES[$server,$t]=$(median <"$WORK/$server.$t")
    done
done

echo
echo "zdb vs redis-server (same run), 4 KiB values, 50 clients, medians of $REPS runs of $N requests, $(nproc) cores"
printf '| %-28s | %10s | %12s | %9s | %10s | %9s | %10s | %9s |\n' test "zdb req/s" "redis req/s" zdb/redis target zdb/target "0-db 2.0.7" zdb/0-db
printf '|%s|%s|%s|%s|%s|%s|%s|%s|\n' "------------------------------" ------------ -------------- ----------- ------------ ----------- ------------ -----------
row() { # name key target zerodb
    local z=${RES[zdb,$2]} r=${RES[redis,$2]}
    printf '| %-28s | %10.0f | %12.0f | %9.2f | %10s | %9s | %10s | %9s |\n' "$1" "$z" "$r" \
        "$(echo "$z / $r" | bc -l)" "$3" \
        "$([ "$3" = - ] && echo - || printf '%.2f' "$(echo "$z / $3" | bc -l)")" "$4" \
        "$([ "$4" = - ] && echo - || printf '%.2f' "$(echo "$z / $4" | bc -l)")"
}
row "SET" set1 35000 29000
row "GET" get1 60000 41000
row "SET -P 16" set16 105000 18000
row "GET -P 16" get16 180000 18000
row "GET, 4 x 50 readers" many - -
echo
echo "command: bash bench/zdb.sh (REPS=$REPS N=$N KEYS=$KEYS)"

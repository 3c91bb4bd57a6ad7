#!/usr/bin/env bash
# Benchmarks our 0-db compatible server with redis-benchmark: 4 KiB values, 50 clients, SET and GET, without
# and with -P 16, plus many readers at once (4 redis-benchmark processes x 50 clients of GET).
# Baseline measured in the same run: redis-server (in memory, no persistence) under the same load; it
# stands in for 0-db, whose GET it matched on this machine. Our server runs twice, with --threads 1 and
# --threads 2; ZERODB_BIN=/path/to/0-db/zdb adds a real 0-db to the same run. The servers are interleaved
# run by run, and each ratio is taken within one repetition, then the median over repetitions is printed.
#
# Usage: bash bench/zdb.sh            (REPS=5 N=100000 KEYS=10000; THREADS="1 2")
set -euo pipefail
cd "$(dirname "$0")/.."

REPS=${REPS:-5}
N=${N:-100000}
KEYS=${KEYS:-10000}
THREADS=${THREADS:-"1 2"}
ZERODB_BIN=${ZERODB_BIN:-}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}

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

declare -A PORT
SERVERS=()
for t in $THREADS; do
    s=zdb-t$t
    PORT[$s]=$(free_port)
    "$BIN" --data "$WORK/$s/data" --index "$WORK/$s/index" --listen 127.0.0.1 --port "${PORT[$s]}" \
        --threads "$t" 2>"$WORK/$s.log" &
    PIDS+=($!)
    SERVERS+=("$s")
done
if [ -n "$ZERODB_BIN" ]; then
    PORT[0-db]=$(free_port)
    mkdir -p "$WORK/0-db"
    "$ZERODB_BIN" --data "$WORK/0-db/data" --index "$WORK/0-db/index" --listen 127.0.0.1 \
        --port "${PORT[0-db]}" >"$WORK/0-db.log" 2>&1 &
    PIDS+=($!)
    SERVERS+=(0-db)
fi
PORT[redis]=$(free_port)
redis-server --port "${PORT[redis]}" --bind 127.0.0.1 --save "" --appendonly no --daemonize no >"$WORK/redis.log" 2>&1 &
PIDS+=($!)
SERVERS+=(redis)
for s in "${SERVERS[@]}"; do wait_port "${PORT[$s]}"; done

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

TESTS="set1 get1 set16 get16 many"
for rep in $(seq 1 "$REPS"); do
    for s in "${SERVERS[@]}"; do
        p=${PORT[$s]}
        run_once "$p" set 1 50 >"$WORK/$s.set1.$rep"
        run_once "$p" set 16 50 >"$WORK/$s.set16.$rep"
        populate "$p"
        run_once "$p" get 1 50 >"$WORK/$s.get1.$rep"
        run_once "$p" get 16 50 >"$WORK/$s.get16.$rep"
        many_readers_once "$p" >"$WORK/$s.many.$rep"
    done
    echo "rep $rep/$REPS done (load $(cut -d' ' -f1 /proc/loadavg))" >&2
done

# Median req/s per server and test, and the median over repetitions of each same-run ratio to redis.
declare -A RPS RATIO
for s in "${SERVERS[@]}"; do
    for t in $TESTS; do
        RPS[$s,$t]=$(cat "$WORK/$s.$t".* | median)
        RATIO[$s,$t]=$(for rep in $(seq 1 "$REPS"); do
            echo "$(cat "$WORK/$s.$t.$rep") / $(cat "$WORK/redis.$t.$rep")" | bc -l
        done | median)
    done
done

echo
echo "req/s (median of $REPS runs of $N requests), 4 KiB values, 50 clients, $(nproc) cores; ratio = median of same-run ratios to redis-server"
header="| test | redis req/s"
line="|---|---:"
for s in "${SERVERS[@]}"; do
    [ "$s" = redis ] && continue
    header+=" | $s req/s | $s/redis"
    line+="|---:|---:"
done
echo "$header |"
echo "$line|"
name_of() {
    case $1 in
    set1) echo "SET" ;; get1) echo "GET" ;; set16) echo "SET -P 16" ;; get16) echo "GET -P 16" ;;
    many) echo "GET, 4 x 50 readers" ;;
    esac
}
for t in $TESTS; do
    row="| $(name_of $t) | $(printf %.0f "${RPS[redis,$t]}")"
    for s in "${SERVERS[@]}"; do
        [ "$s" = redis ] && continue
        row+=" | $(printf %.0f "${RPS[$s,$t]}") | $(printf %.2f "${RATIO[$s,$t]}")"
    done
    echo "$row |"
done
echo
echo "command: bash bench/zdb.sh (REPS=$REPS N=$N KEYS=$KEYS THREADS=\"$THREADS\"${ZERODB_BIN:+ ZERODB_BIN=…}), $(date -u '+%F %H:%M') UTC"

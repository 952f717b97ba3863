#!/usr/bin/env bash
# Load benchmark of webhook-bridge against the local Redis (127.0.0.1:6379) and RabbitMQ
# (127.0.0.1:5672, guest/guest), or Kafka (127.0.0.1:9092) with BENCH_BROKER=kafka. Run it
# from anywhere, as root or with sudo rights for apt-get:
#
#   bench/run.sh
#   BENCH_BROKER=kafka bench/run.sh
#
# Steps:
#   1. Install wrk from Debian if it is missing, and build the release bridge and the
#      ceiling clients (bench/ceiling.rs for RabbitMQ, bench/kafka_ceiling.rs for Kafka).
#   2. Start the bridge with an exchange and queues (or topics) and a Redis key prefix named
#      after the run.
#   3. Drive it with wrk and bench/callbacks.lua, read its peak RSS (VmHWM), and stop it.
#   4. Publish straight to the broker with the ceiling client at the same concurrency.
#   5. Print a summary.
# Before each of the two load phases the script waits, at most 60 s, for the machine to be
# idle. A run with the defaults takes about 1.5 minutes once built. The run's exchanges,
# queues, topics and Redis keys are deleted at the end, also after an error or Ctrl-C. Logs and
# raw outputs stay in target/bench/<run id>/.
#
# Settings, as environment variables (default in brackets):
#   BENCH_CONNECTIONS         wrk connections, and publishes in flight in the ceiling [64]
#   BENCH_THREADS             wrk threads [2]
#   BENCH_DURATION_SECS       seconds of load on the bridge, and again on the ceiling [30]
#   BENCH_REDELIVERY_PERCENT  share of requests that repeat an accepted event [10]
#   BENCH_FAILED_PERCENT      share of new callbacks with status "failed" [20]
#   BENCH_WORKERS             bridge HTTP worker threads, 0 for one per CPU core [0]
#   BENCH_PORT                loopback port the bridge listens on [18080]
#   BENCH_BROKER              rabbitmq or kafka [rabbitmq]
set -euo pipefail

connections=${BENCH_CONNECTIONS:-64}
threads=${BENCH_THREADS:-2}
duration_secs=${BENCH_DURATION_SECS:-30}
redelivery_percent=${BENCH_REDELIVERY_PERCENT:-10}
failed_percent=${BENCH_FAILED_PERCENT:-20}
workers=${BENCH_WORKERS:-0}
port=${BENCH_PORT:-18080}
broker=${BENCH_BROKER:-rabbitmq}

# Limits that keep every wait in this script bounded.
readonly READY_TIMEOUT_SECS=30
readonly STOP_TIMEOUT_SECS=40
readonly WRK_REQUEST_TIMEOUT=5s
readonly IDLE_WAIT_SECS=60
readonly IDLE_MAX_CORES=0.2

readonly REDIS_HOST=127.0.0.1
readonly REDIS_PORT=6379
readonly AMQP_URL='amqp://guest:guest@127.0.0.1:5672/%2f'
readonly KAFKA_BROKERS=127.0.0.1:9092

fail() {
    echo "bench/run.sh: $*" >&2
    exit 1
}

for setting in connections threads duration_secs redelivery_percent failed_percent workers port; do
    [[ ${!setting} =~ ^[0-9]+$ ]] || fail "$setting must be a whole number, got '${!setting}'"
done
((threads >= 1)) || fail "BENCH_THREADS must be at least 1"
((connections >= threads)) ||
    fail "BENCH_CONNECTIONS ($connections) must be at least BENCH_THREADS ($threads)"
((duration_secs >= 1 && duration_secs <= 3600)) || fail "BENCH_DURATION_SECS must be 1 to 3600"
((redelivery_percent <= 100 && failed_percent <= 100)) || fail "percentages must be 0 to 100"
((port >= 1024 && port <= 65535)) || fail "BENCH_PORT must be 1024 to 65535"
[[ $broker == rabbitmq || $broker == kafka ]] ||
    fail "BENCH_BROKER must be rabbitmq or kafka, got '$broker'"

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

# Every name this run creates carries the run id, so a run never touches other data.
run_id="bench$(date +%Y%m%d%H%M%S)$$"
bridge_exchange="webhook-bridge-$run_id"
bridge_queue_completed="$bridge_exchange.task.completed"
bridge_queue_failed="$bridge_exchange.task.failed"
ceiling_exchange="webhook-bridge-$run_id-ceiling"
ceiling_queue_completed="$ceiling_exchange.task.completed"
ceiling_queue_failed="$ceiling_exchange.task.failed"
redis_prefix="webhook-bridge-bench:$run_id:"
log_dir="$repo/target/bench/$run_id"

bridge_bin="$repo/target/release/webhook-bridge"
ceiling_bin="$repo/target/release/examples/rabbitmq_ceiling"
kafka_ceiling_bin="$repo/target/release/examples/kafka_ceiling"
bridge_pid=""
cleaned_up=0

redis() {
    redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" "$@"
}

# Prints the number of Redis keys under this run's prefix.
count_redis_keys() {
    redis --scan --pattern "${redis_prefix}*" | wc -l
}

delete_redis_keys() {
    redis --scan --pattern "${redis_prefix}*" |
        xargs -r -n 500 redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" UNLINK >/dev/null
}

# Deletes an exchange and its two queues, and prints "deleted queue=NAME messages=N" per
# queue. On Kafka, deletes the two topics named like the queues and prints
# "deleted topic=NAME messages=N" per topic.
delete_topology() {
    if [[ $broker == kafka ]]; then
        "$kafka_ceiling_bin" --brokers "$KAFKA_BROKERS" --topic-completed "$2" \
            --topic-failed "$3" --delete-only
    else
        "$ceiling_bin" --url "$AMQP_URL" --exchange "$1" --queue-completed "$2" \
            --queue-failed "$3" --delete-only
    fi
}

stop_bridge() {
    [[ -n $bridge_pid ]] || return 0
    if kill -0 "$bridge_pid" 2>/dev/null; then
        kill -TERM "$bridge_pid"
        local waited=0
        while kill -0 "$bridge_pid" 2>/dev/null && ((waited < STOP_TIMEOUT_SECS * 10)); do
            sleep 0.1
            waited=$((waited + 1))
        done
        if kill -0 "$bridge_pid" 2>/dev/null; then
            echo "The bridge did not stop within ${STOP_TIMEOUT_SECS} s, so it gets SIGKILL." >&2
            kill -KILL "$bridge_pid" 2>/dev/null || true
        fi
    fi
    wait "$bridge_pid" 2>/dev/null || true
    bridge_pid=""
}

# Runs on every exit, normal or not. Each step is safe to repeat.
cleanup() {
    local status=$?
    ((cleaned_up == 0)) || return 0
    cleaned_up=1
    trap - INT TERM
    stop_bridge
    if [[ -x $ceiling_bin && -x $kafka_ceiling_bin ]]; then
        delete_topology "$bridge_exchange" "$bridge_queue_completed" "$bridge_queue_failed" \
            >/dev/null || echo "Deleting exchange $bridge_exchange and its queues failed." >&2
        delete_topology "$ceiling_exchange" "$ceiling_queue_completed" "$ceiling_queue_failed" \
            >/dev/null || echo "Deleting exchange $ceiling_exchange and its queues failed." >&2
    fi
    delete_redis_keys || echo "Deleting Redis keys ${redis_prefix}* failed." >&2
    if ((status != 0)); then
        echo "bench/run.sh stopped early with exit status $status. Logs are in $log_dir." >&2
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Reads one value from a "SUMMARY key=value ..." line in a file.
summary_value() {
    local file=$1 key=$2
    grep '^SUMMARY ' "$file" | tr ' ' '\n' | sed -n "s/^$key=//p" | head -n 1
}

# Prints CPU seconds (user + system) used so far by a process, from /proc/PID/stat.
cpu_seconds() {
    local ticks
    ticks=$(awk '{ print $14 + $15 }' "/proc/$1/stat")
    awk -v ticks="$ticks" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", ticks / hz }'
}

# Prints the busy and total CPU time of the whole machine in clock ticks, from /proc/stat.
machine_ticks() {
    awk '/^cpu / {
        busy = $2 + $3 + $4 + $7 + $8 + $9
        print busy, busy + $5 + $6
    }' /proc/stat
}

# Waits, up to IDLE_WAIT_SECS, until the machine uses less than IDLE_MAX_CORES of CPU over
# one second, and leaves the last reading in busy_cores. Other work on the machine, such as
# a build or a test run, would compete with the next phase for the two cores.
wait_for_idle_cpu() {
    local busy_before total_before busy_after total_after waited
    for ((waited = 0; waited < IDLE_WAIT_SECS; waited++)); do
        read -r busy_before total_before < <(machine_ticks)
        sleep 1
        read -r busy_after total_after < <(machine_ticks)
        busy_cores=$(awk -v busy=$((busy_after - busy_before)) \
            -v total=$((total_after - total_before)) -v cores="$(nproc)" \
            'BEGIN { printf "%.2f", cores * busy / total }')
        if awk "BEGIN { exit !($busy_cores < $IDLE_MAX_CORES) }"; then
            return 0
        fi
    done
    echo "Warning: other processes still use $busy_cores CPU cores after ${IDLE_WAIT_SECS} s," \
        "so the figures will be lower than on an idle machine." >&2
}

mkdir -p "$log_dir"
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git status --porcelain -- src Cargo.lock 2>/dev/null) ]]; then
    commit="$commit with uncommitted changes in src/ or Cargo.lock"
fi
echo "Run $run_id on $broker: $connections connections, $threads wrk threads, ${duration_secs} s," \
    "${redelivery_percent}% re-deliveries, ${failed_percent}% failed callbacks."

# 1. Tools and builds.
command -v redis-cli >/dev/null || fail "redis-cli is missing. Install the Debian package redis-tools."
command -v curl >/dev/null || fail "curl is missing. Install the Debian package curl."
if ! command -v wrk >/dev/null; then
    echo "Installing wrk from Debian."
    apt-get update
    apt-get install -y wrk
fi
cargo build --release --bin webhook-bridge --example rabbitmq_ceiling --example kafka_ceiling

[[ $(redis ping 2>/dev/null) == PONG ]] || fail "Redis did not reply to PING at $REDIS_HOST:$REDIS_PORT"
if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    fail "port $port on 127.0.0.1 is already in use. Set BENCH_PORT to a free port."
fi

# 2. Start the bridge on this run's topology and key prefix. The load is valid callbacks only,
# and dead letters are off so that the bridge declares no queue outside this run's names.
broker_environment=()
if [[ $broker == kafka ]]; then
    "$kafka_ceiling_bin" --brokers "$KAFKA_BROKERS" --topic-completed "$bridge_queue_completed" \
        --topic-failed "$bridge_queue_failed" --create-only ||
        fail "creating the Kafka topics failed. Is a Kafka broker listening on $KAFKA_BROKERS?"
    broker_environment=(
        WEBHOOK_BRIDGE__BROKER__KIND=kafka
        WEBHOOK_BRIDGE__KAFKA__BROKERS="$KAFKA_BROKERS"
        WEBHOOK_BRIDGE__KAFKA__TOPIC_COMPLETED="$bridge_queue_completed"
        WEBHOOK_BRIDGE__KAFKA__TOPIC_FAILED="$bridge_queue_failed"
    )
fi
env "${broker_environment[@]}" RUST_LOG=warn \
    WEBHOOK_BRIDGE__SERVER__LISTEN="127.0.0.1:$port" \
    WEBHOOK_BRIDGE__SERVER__ACCESS_LOG=false \
    WEBHOOK_BRIDGE__SERVER__WORKERS="$workers" \
    WEBHOOK_BRIDGE__REDIS__URL="redis://$REDIS_HOST:$REDIS_PORT" \
    WEBHOOK_BRIDGE__REDIS__KEY_PREFIX="$redis_prefix" \
    WEBHOOK_BRIDGE__RABBITMQ__URL="$AMQP_URL" \
    WEBHOOK_BRIDGE__RABBITMQ__EXCHANGE="$bridge_exchange" \
    WEBHOOK_BRIDGE__RABBITMQ__QUEUE_COMPLETED="$bridge_queue_completed" \
    WEBHOOK_BRIDGE__RABBITMQ__QUEUE_FAILED="$bridge_queue_failed" \
    WEBHOOK_BRIDGE__DEAD_LETTER__ENABLED=false \
    "$bridge_bin" >"$log_dir/bridge.log" 2>&1 &
bridge_pid=$!

ready=0
for ((attempt = 0; attempt < READY_TIMEOUT_SECS * 10; attempt++)); do
    kill -0 "$bridge_pid" 2>/dev/null ||
        fail "the bridge exited during startup. See $log_dir/bridge.log."
    if curl -fsS -o /dev/null "http://127.0.0.1:$port/readyz" 2>/dev/null; then
        ready=1
        break
    fi
    sleep 0.1
done
((ready == 1)) ||
    fail "the bridge was not ready within ${READY_TIMEOUT_SECS} s. See $log_dir/bridge.log."
echo "Bridge ready: pid $bridge_pid, exchange $bridge_exchange, Redis prefix $redis_prefix."

# 3. Load the bridge with wrk.
wait_for_idle_cpu
background_cores=$busy_cores
cpu_before=$(cpu_seconds "$bridge_pid")
read -r machine_busy_before machine_total_before < <(machine_ticks)
wrk --threads "$threads" --connections "$connections" --duration "${duration_secs}s" \
    --timeout "$WRK_REQUEST_TIMEOUT" --latency --script "$repo/bench/callbacks.lua" \
    "http://127.0.0.1:$port/webhook" -- "$run_id" "$redelivery_percent" "$failed_percent" |
    tee "$log_dir/wrk.txt"
cpu_after=$(cpu_seconds "$bridge_pid")
read -r machine_busy_after machine_total_after < <(machine_ticks)
grep -q '^SUMMARY ' "$log_dir/wrk.txt" || fail "wrk printed no SUMMARY line. See $log_dir/wrk.txt."

peak_rss_kib=$(awk '/^VmHWM:/ { print $2 }' "/proc/$bridge_pid/status")
bridge_cpu=$(awk -v a="$cpu_after" -v b="$cpu_before" 'BEGIN { printf "%.2f", a - b }')
stop_bridge

# Every published event is in a queue (or topic) and has one dedup key. The queues may hold up
# to one event per connection more than wrk counted, because wrk drops the responses still in
# flight when its duration ends, but never fewer.
redis_keys=$(count_redis_keys)
delete_topology "$bridge_exchange" "$bridge_queue_completed" "$bridge_queue_failed" |
    tee "$log_dir/bridge-queues.txt"
queued=$(sed -n -E 's/^deleted (queue|topic)=.* messages=//p' "$log_dir/bridge-queues.txt" |
    awk '{ total += $1 } END { print total + 0 }')
delete_redis_keys

# 4. The ceiling: the same publishes with confirms, straight to the broker.
wait_for_idle_cpu
ceiling_background_cores=$busy_cores
echo "Publishing straight to $broker for ${duration_secs} s with $connections publishes in flight."
if [[ $broker == kafka ]]; then
    "$kafka_ceiling_bin" --brokers "$KAFKA_BROKERS" --topic-completed "$ceiling_queue_completed" \
        --topic-failed "$ceiling_queue_failed" --concurrency "$connections" \
        --duration "${duration_secs}s" --task-id-prefix "$run_id" \
        --failed-percent "$failed_percent" | tee "$log_dir/ceiling.txt"
else
    "$ceiling_bin" --url "$AMQP_URL" --exchange "$ceiling_exchange" \
        --queue-completed "$ceiling_queue_completed" --queue-failed "$ceiling_queue_failed" \
        --concurrency "$connections" --duration "${duration_secs}s" --task-id-prefix "$run_id" \
        --failed-percent "$failed_percent" | tee "$log_dir/ceiling.txt"
fi
grep -q '^SUMMARY ' "$log_dir/ceiling.txt" || fail "the ceiling client printed no SUMMARY line"

# 5. Summary.
wrk_file="$log_dir/wrk.txt"
ceiling_file="$log_dir/ceiling.txt"
requests=$(summary_value "$wrk_file" requests)
accepted=$(summary_value "$wrk_file" accepted)
duplicate=$(summary_value "$wrk_file" duplicate)
other=$(summary_value "$wrk_file" other)
socket_errors=$(summary_value "$wrk_file" socket_errors)
requests_per_sec=$(summary_value "$wrk_file" requests_per_sec)
accepted_per_sec=$(summary_value "$wrk_file" accepted_per_sec)
p50_ms=$(summary_value "$wrk_file" p50_ms)
p99_ms=$(summary_value "$wrk_file" p99_ms)
ceiling_per_sec=$(summary_value "$ceiling_file" publishes_per_sec)
ceiling_p50_ms=$(summary_value "$ceiling_file" p50_ms)
ceiling_p99_ms=$(summary_value "$ceiling_file" p99_ms)
ceiling_failures=$(summary_value "$ceiling_file" failures)

calculate() {
    awk "BEGIN { printf \"$1\", ($2) }"
}
peak_rss_mib=$(calculate "%.1f" "$peak_rss_kib / 1024")
ratio_percent=$(calculate "%.1f" "100 * $accepted_per_sec / $ceiling_per_sec")
bridge_cores=$(calculate "%.2f" "$bridge_cpu / $duration_secs")
machine_busy_cores=$(calculate "%.2f" "$(nproc) * ($machine_busy_after - $machine_busy_before) / ($machine_total_after - $machine_total_before)")
duplicate_percent=$(calculate "%.1f" "$requests > 0 ? 100 * $duplicate / $requests : 0")
verdict() {
    if awk "BEGIN { exit !($1) }"; then echo met; else echo MISSED; fi
}

cat <<EOF | tee "$log_dir/summary.txt"

Summary of run $run_id on $broker ($(nproc) CPU cores, $connections connections, $threads wrk threads, ${duration_secs} s)
  bridge built from                       $commit
  bridge responses/s (all statuses)       $requests_per_sec
  bridge accepted/s (200 "accepted")      $accepted_per_sec
  responses: accepted $accepted, duplicate $duplicate ($duplicate_percent%), other $other, socket errors $socket_errors
  bridge latency p50 / p99 (all)          $p50_ms ms / $p99_ms ms
  bridge peak RSS (VmHWM)                 $peak_rss_mib MiB
  CPU in use during the bridge load       $machine_busy_cores of $(nproc) cores, the bridge $bridge_cores (before the load: $background_cores)
  events in the bridge's queues/topics    $queued (Redis dedup keys: $redis_keys)
  ceiling publishes/s                     $ceiling_per_sec (failures: $ceiling_failures; CPU in use before: $ceiling_background_cores cores)
  ceiling latency p50 / p99               $ceiling_p50_ms ms / $ceiling_p99_ms ms
  ratio bridge accepted/s / ceiling       $ratio_percent%
Targets
  bridge at least 50% of the ceiling      $(verdict "$ratio_percent >= 50")
  p99 under 20 ms                         $(verdict "$p99_ms < 20")
  peak RSS under 40 MiB                   $(verdict "$peak_rss_mib < 40")
Logs: $log_dir
EOF

if ((queued < accepted)); then
    fail "the broker holds $queued events but the bridge accepted $accepted: events were lost"
fi

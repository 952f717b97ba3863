# Service checks for scripts/test, which sources this file. ensure_services checks that the
# services the tests use are up, and installs and starts what is missing.

log() { printf '==> %s\n' "$*"; }

# Waits up to $1 seconds for the command in the remaining arguments to succeed.
wait_for() {
  local limit=$1
  shift
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      return 1
    fi
    sleep 1
  done
}

# tansu, an Apache-licensed Kafka-compatible broker written in Rust, stands in for Apache
# Kafka in the tests. Its in-memory storage starts empty at every start.
TANSU_VERSION=0.6.0
KAFKA_PORT=9092

redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping | grep -q PONG; }
kafka_up() { (exec 3<>"/dev/tcp/127.0.0.1/$KAFKA_PORT"); }
rabbitmq_up() { rabbitmq-diagnostics -q check_port_connectivity; }

ensure_redis() {
  if redis_up 2>/dev/null; then
    log "Redis is up on 127.0.0.1:6379."
    return
  fi
  log "Starting Redis."
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_for 30 redis_up || { echo "Redis did not start within 30 s" >&2; exit 1; }
}

ensure_rabbitmq() {
  if rabbitmq_up 2>/dev/null; then
    log "RabbitMQ is up on 127.0.0.1:5672."
    return
  fi
  log "Starting RabbitMQ."
  rabbitmq-server -detached
  wait_for 120 rabbitmq_up || { echo "RabbitMQ did not start within 120 s" >&2; exit 1; }
}

ensure_kafka() {
  if ! tansu --version 2>/dev/null | grep -q " $TANSU_VERSION"; then
    log "Installing tansu $TANSU_VERSION from crates.io (several minutes on two cores)."
    cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore
  fi
  if kafka_up 2>/dev/null; then
    log "Kafka-protocol broker is up on 127.0.0.1:$KAFKA_PORT."
    return
  fi
  log "Starting tansu on 127.0.0.1:$KAFKA_PORT."
  mkdir -p /var/log/tansu
  setsid tansu broker \
    --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --storage-engine memory://tansu/ \
    </dev/null >>/var/log/tansu/tansu.log 2>&1 &
  wait_for 30 kafka_up || { echo "tansu did not start within 30 s; see /var/log/tansu/tansu.log" >&2; exit 1; }
}

# The TLS test makes its certificates with openssl and starts its own redis-server.
ensure_tools() {
  local missing=()
  command -v openssl >/dev/null || missing+=(openssl)
  command -v redis-server >/dev/null || missing+=(redis-server)
  if ((${#missing[@]})); then
    log "Installing ${missing[*]}."
    apt-get update -q
    apt-get install -y -q "${missing[@]}"
  fi
}

# The metrics test checks /metrics with promtool, which Debian ships in its prometheus package.
# That package's postinst starts a Prometheus server (port 9090) through invoke-rc.d or systemd,
# so only promtool is taken out of the downloaded package instead of installing it.
ensure_promtool() {
  if command -v promtool >/dev/null; then
    return
  fi
  log "Installing promtool from Debian's prometheus package."
  if ! apt-cache show prometheus >/dev/null 2>&1; then
    apt-get update -q
  fi
  local workdir
  workdir=$(mktemp -d)
  (
    cd "$workdir"
    # Lists older than the archive name a version it no longer has: update and try again.
    apt-get download -q -o APT::Sandbox::User=root prometheus ||
      { apt-get update -q && apt-get download -q -o APT::Sandbox::User=root prometheus; }
    dpkg-deb -x prometheus_*.deb extracted
    install -m 0755 extracted/usr/bin/promtool /usr/local/bin/promtool
  ) || { rm -rf "$workdir"; echo "installing promtool failed" >&2; exit 1; }
  rm -rf "$workdir"
  promtool --version >/dev/null || { echo "promtool does not run after installing it" >&2; exit 1; }
}

ensure_services() {
  ensure_tools
  ensure_redis
  ensure_rabbitmq
  ensure_kafka
}

#!/usr/bin/env bash
# Make sure the Redis and PostgreSQL the integration tests use are running on this machine;
# start them when they are not, and fail with a clear message when that is impossible.
set -u
REDIS_HOST=${PULMO_TEST_REDIS_HOST:-127.0.0.1}
REDIS_PORT=${PULMO_TEST_REDIS_PORT:-6379}
PG_HOST=${PULMO_TEST_PG_HOST:-127.0.0.1}
PG_PORT=${PULMO_TEST_PG_PORT:-5432}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_port() {
  for _ in $(seq 1 30); do port_open "$1" "$2" && return 0; sleep 1; done
  return 1
}

if ! port_open "$REDIS_HOST" "$REDIS_PORT"; then
  echo "Redis is not running on $REDIS_HOST:$REDIS_PORT: starting it"
  if command -v redis-server >/dev/null; then
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
    redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" \
      --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
  fi
  wait_port "$REDIS_HOST" "$REDIS_PORT" || {
    echo "ERROR: Redis is not reachable on $REDIS_HOST:$REDIS_PORT and could not be started" \
         "(install redis-server, or set PULMO_TEST_REDIS_HOST/PORT)." >&2
    exit 1
  }
fi

if ! port_open "$PG_HOST" "$PG_PORT"; then
  echo "PostgreSQL is not running on $PG_HOST:$PG_PORT: starting it"
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    for version in $(ls /etc/postgresql); do
      pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    done
  fi
  wait_port "$PG_HOST" "$PG_PORT" || {
    echo "ERROR: PostgreSQL is not reachable on $PG_HOST:$PG_PORT and could not be started" \
         "(install postgresql, or set PULMO_TEST_PG_HOST/PORT)." >&2
    exit 1
  }
fi
echo "services: Redis $REDIS_HOST:$REDIS_PORT and PostgreSQL $PG_HOST:$PG_PORT are up"

# Sourced, not run: `start_stack BINARY [ARGS...]` starts the local stack (harness `stack up ARGS...`,
# e.g. `--redis-cluster`) in a session of its own, waits until it is ready, exports its endpoints
# (DATABASE_URL, REDIS_URL, KAFKA_BROKERS), and stops it when the calling script exits. Used by ci/run.sh and loadtest/soak.sh.

start_stack() {
  local binary="$1"
  shift
  STACK_ENDPOINTS="$(mktemp)"
  # A session of its own: Ctrl-C goes to the caller's foreground process only; the stack stops after
  # it (see stop_stack).
  setsid "$binary" up "$@" >"$STACK_ENDPOINTS" &
  STACK_PID=$!
  trap stop_stack EXIT
  for _ in $(seq 1 600); do
    grep -qx ready "$STACK_ENDPOINTS" && break
    kill -0 "$STACK_PID" 2>/dev/null || { echo "the stack did not start" >&2; exit 1; }
    sleep 0.2
  done
  grep -qx ready "$STACK_ENDPOINTS" || { echo "the stack was not ready within 120 s" >&2; exit 1; }
  eval "$(grep '^export ' "$STACK_ENDPOINTS")"
}

stop_stack() {
  stop_service
  kill -TERM "$STACK_PID" 2>/dev/null || true
  wait "$STACK_PID" 2>/dev/null || true
  rm -f "$STACK_ENDPOINTS"
}

# Prints the stack's endpoints as shell exports, indented.
print_stack_endpoints() {
  grep '^export ' "$STACK_ENDPOINTS" | sed 's/^/  /'
}

# `start_service COMMAND...` starts orders-service (COMMAND, e.g. `target/release/orders-service run`) in
# the background, its pid in SERVICE_PID, and fails if it is gone 2 s later; `stop_service` stops it
# gracefully and waits. stop_stack stops a service still running first.
SERVICE_PID=
start_service() {
  "$@" &
  SERVICE_PID=$!
  sleep 2
  kill -0 "$SERVICE_PID" 2>/dev/null || { echo "orders-service did not start: $*" >&2; exit 1; }
}
stop_service() {
  [ -n "$SERVICE_PID" ] || return 0
  kill -TERM "$SERVICE_PID" 2>/dev/null || true
  wait "$SERVICE_PID" 2>/dev/null || true
  SERVICE_PID=
}

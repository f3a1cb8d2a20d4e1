# Sourced, not run: `start_stack BINARY` starts the local stack (harness `stack up`) in a session of its
# own, waits until it is ready, exports its endpoints (DATABASE_URL, REDIS_URL, KAFKA_BROKERS), and stops
# it when the calling script exits. Used by ci/run.sh and loadtest/soak.sh.

start_stack() {
  local binary="$1"
  STACK_ENDPOINTS="$(mktemp)"
  # A session of its own: Ctrl-C goes to the caller's foreground process only; the stack stops after
  # it (see stop_stack).
  setsid "$binary" up >"$STACK_ENDPOINTS" &
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
  kill -TERM "$STACK_PID" 2>/dev/null || true
  wait "$STACK_PID" 2>/dev/null || true
  rm -f "$STACK_ENDPOINTS"
}

# Prints the stack's endpoints as shell exports, indented.
print_stack_endpoints() {
  grep '^export ' "$STACK_ENDPOINTS" | sed 's/^/  /'
}

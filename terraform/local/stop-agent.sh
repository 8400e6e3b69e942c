#!/bin/sh
# Stops one local "machine": SIGTERM to the agent's whole session (its commands too), SIGKILL
# after 10 s, then removes the machine's directory (it holds the TLS key) unless `keep-dir`.
set -eu
pidfile="$MACHINE_DIR/agent.pid"
if [ -f "$pidfile" ]; then
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    i=0
    while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 100 ]; do
      sleep 0.1
      i=$((i + 1))
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
    echo "stopped nim-agent pid $pid"
  fi
  rm -f "$pidfile"
fi
if [ "${1:-}" != "keep-dir" ]; then
  rm -rf "$MACHINE_DIR"
fi

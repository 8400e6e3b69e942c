#!/bin/sh
# Stops one local "machine": SIGTERM to the agent's whole session (its commands too), SIGKILL
# after 10 s, then removes the machine's directory (it holds the TLS key) unless `keep-dir`.
set -eu
# Whether the agent still runs. An agent that has exited but is not yet reaped (a zombie, state
# Z in /proc) has stopped: some init processes reap orphans only every second or so.
running() {
  if [ -r "/proc/$1/stat" ]; then
    [ "$(sed 's/.*) //' "/proc/$1/stat" | cut -d' ' -f1)" != Z ]
  elif [ -d /proc/self ]; then
    return 1
  else
    kill -0 "$1" 2>/dev/null
  fi
}
pidfile="$MACHINE_DIR/agent.pid"
if [ -f "$pidfile" ]; then
  pid=$(cat "$pidfile")
  if running "$pid"; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    i=0
    while running "$pid" && [ "$i" -lt 100 ]; do
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

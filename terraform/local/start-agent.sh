#!/bin/sh
# Starts one local "machine": a nim-agent in its own session, so it outlives Terraform as a VM
# would. Every value arrives through the environment (never spliced into this script).
# Idempotent: an agent left behind by an interrupted apply is stopped first.
set -eu
umask 077
parent=$PPID
mkdir -p "$MACHINE_DIR"
"$(dirname "$0")/stop-agent.sh" keep-dir

printf '%s' "$AGENT_CONFIG" > "$MACHINE_DIR/agent.json"
if [ "${BOOT_DELAY:-0}" != "0" ]; then
  sleep "$BOOT_DELAY"
fi

# If the Terraform that runs this script died meanwhile (its backend was killed), the apply was
# abandoned: another run now owns this machine, and booting here would race it for the port.
if [ "$(cut -d' ' -f4 "/proc/$$/stat")" != "$parent" ]; then
  echo "the apply that started this machine was abandoned; not starting nim-agent" >&2
  exit 1
fi

setsid "$AGENT_BINARY" --config "$MACHINE_DIR/agent.json" >"$MACHINE_DIR/agent.log" 2>&1 </dev/null &
echo "$!" > "$MACHINE_DIR/agent.pid"

# Fail the apply with the agent's own words if it dies at once (bad config, port taken).
sleep 0.3
if ! kill -0 "$(cat "$MACHINE_DIR/agent.pid")" 2>/dev/null; then
  echo "nim-agent exited at start:" >&2
  tail -n 20 "$MACHINE_DIR/agent.log" >&2
  exit 1
fi
echo "started nim-agent pid $(cat "$MACHINE_DIR/agent.pid") in $MACHINE_DIR"

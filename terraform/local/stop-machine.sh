#!/bin/sh
# Stops one local machine and removes every trace of it: its processes (everything in its
# cgroups: the agent, its commands and whatever they left running), its network namespace (and
# with it the veth pair and the firewall rules inside), its cgroups, and unless `keep-disk` its
# directory (the disk). Idempotent: a machine half-started or half-stopped by a killed backend is
# reaped the same way. The machine is named by DEPLOYMENT_ID and MACHINE_NAME, else by $MACHINE_DIR/sandbox.env
# (written by start-machine.sh).
set -eu
. "$(dirname "$0")/common.sh"

[ -n "${MACHINE_DIR:-}" ] || die "MACHINE_DIR is not set"
# The machine's identity: given (start-machine.sh reaping a leftover), else from its directory.
deployment=${DEPLOYMENT_ID:-}
name=${MACHINE_NAME:-}
env_file="$MACHINE_DIR/sandbox.env"
if [ -z "$deployment" ] && [ -f "$env_file" ]; then
  deployment=$(sed -n 's/^DEPLOYMENT_ID=//p' "$env_file")
  name=$(sed -n 's/^MACHINE_NAME=//p' "$env_file")
fi
if [ -n "$deployment" ]; then
  sandbox_names "$deployment" "$name"

  # Processes of the machine; a cgroup cannot be escaped from inside the sandbox.
  procs() {
    for dir in $(cgroup_dirs "$CGROUP_NAME"); do
      cat "$dir/cgroup.procs" 2>/dev/null || true
    done | sort -u
  }
  pids=$(procs)
  if [ -n "$pids" ]; then
    # SIGTERM first: the agent answers its callers and stops its commands.
    kill -TERM $pids 2>/dev/null || true
    i=0
    while [ -n "$(procs)" ] && [ "$i" -lt 30 ]; do
      sleep 0.1
      i=$((i + 1))
    done
    # Then everything left, until nothing is (a fork loop cannot outrun this: the cgroup
    # caps its processes).
    i=0
    while pids=$(procs) && [ -n "$pids" ] && [ "$i" -lt 100 ]; do
      kill -KILL $pids 2>/dev/null || true
      sleep 0.05
      i=$((i + 1))
    done
    echo "stopped machine $name"
  fi
  for dir in $(cgroup_dirs "$CGROUP_NAME"); do
    [ -d "$dir" ] && rmdir "$dir" 2>/dev/null || true
  done
  if [ -e "/run/netns/$NETNS" ]; then
    ip netns del "$NETNS" 2>/dev/null || true
  fi
  # The host end goes with the namespace; a leftover of a half-made pair goes here.
  if [ -d "/sys/class/net/$VETH" ]; then
    ip link del dev "$VETH" 2>/dev/null || true
  fi
fi
if [ "${1:-}" != "keep-disk" ]; then
  # rm does not follow the symbolic links a user may have left on the disk.
  rm -rf --one-file-system "$MACHINE_DIR"
fi

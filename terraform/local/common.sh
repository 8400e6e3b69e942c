#!/bin/sh
# Shared by the terraform/local scripts: host-wide names of a machine's sandbox, derived from the
# deployment id and the machine name only (never from a replica's data directory), so that any
# replica on this host finds, adopts or reaps a machine another one started.

die() {
  echo "nim-local: error: $*" >&2
  exit 1
}

# Values arrive from the backend; refuse anything of an unexpected shape before it reaches `ip`,
# `nft` or a path.
check_uuid() {
  case "$1" in
    *[!0-9a-f-]* | "") die "not a deployment id: $1" ;;
  esac
  [ "${#1}" -eq 36 ] || die "not a deployment id: $1"
}
check_name() {
  case "$1" in
    *[!a-z0-9-]* | "" | -*) die "not a machine name: $1" ;;
  esac
}
check_number() {
  case "$1" in
    *[!0-9]* | "") die "$2 must be a whole number, not '$1'" ;;
  esac
}
check_ipv4() {
  case "$1" in
    *[!0-9./]* | "") die "not an IPv4 address: $1" ;;
  esac
}

# sandbox_names DEPLOYMENT_ID MACHINE_NAME: sets NETNS, VETH and CGROUP_NAME.
sandbox_names() {
  check_uuid "$1"
  check_name "$2"
  NETNS="nim-$1-$2"
  # Interface names have at most 15 bytes: "nv" and 13 hex digits of a hash of the identity.
  VETH="nv$(printf '%s/%s' "$1" "$2" | sha256sum | cut -c1-13)"
  CGROUP_NAME="$1-$2"
}

# deployment_bridge DEPLOYMENT_DIR: the bridge the backend claimed for the deployment (empty if
# none is recorded).
deployment_bridge() {
  sed -n 's/^bridge=\(nimbr[0-9]*\)$/\1/p' "$1/network" 2>/dev/null || true
}

# gateway_of SUBNET: the subnet's first address, the host's end of the deployment's link.
gateway_of() {
  base=${1%/*}
  echo "${base%.*}.$((${base##*.} + 1))"
}

# The cgroup directories of a machine (memory and pids, cgroup v1 or v2), one per line.
cgroup_dirs() {
  if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    echo "/sys/fs/cgroup/nim-local/$1"
  else
    echo "/sys/fs/cgroup/memory/nim-local/$1"
    echo "/sys/fs/cgroup/pids/nim-local/$1"
  fi
}

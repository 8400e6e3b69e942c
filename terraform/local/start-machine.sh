#!/bin/sh
# Starts one local machine: a sandbox of its own (network namespace, bubblewrap mount/pid/user
# namespaces, cgroup limits), booted like a cloud VM with the shared bootstrap (it downloads
# nim-agent from the backend and checks its SHA-256), then nim-agent as its one service. Every
# value arrives through the environment (never spliced into this script). Idempotent: whatever
# an interrupted apply left of this machine is reaped first; its disk is kept (a reboot).
#
# On the host, $MACHINE_DIR (root, 0711) holds sandbox.env, the logs and the user data (all
# root-only), and disk/ (root, group the machine's, 0710) the machine's own writable trees (owned by its uid): its
# /etc, /root, /home, /tmp, /var, /opt, /srv and /usr/local. Nothing else of the host is writable inside, and the
# host never writes into the machine's own trees after creating them (a user may have replaced
# anything in them with a symbolic link).
set -eu
umask 077
parent=$PPID
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/common.sh"

check_number "$MACHINE_UID" MACHINE_UID
check_number "$MEMORY_MB" memory_mb
check_number "$MAX_PROCESSES" max_processes
check_number "$MAX_OPEN_FILES" max_open_files
check_ipv4 "$ADDRESS"
check_ipv4 "$SUBNET"
sandbox_names "$DEPLOYMENT_ID" "$MACHINE_NAME"
download_addr=${DOWNLOAD_HOST%:*}
download_port=${DOWNLOAD_HOST##*:}
check_ipv4 "$download_addr"
check_number "$download_port" "the download port"
gateway=$(gateway_of "$SUBNET")
export MACHINE_UID MACHINE_NAME NETNS CGROUP_NAME MAX_PROCESSES MAX_OPEN_FILES
bridge=$(deployment_bridge "$(dirname "$MACHINE_DIR")")
[ -n "$bridge" ] || die "the deployment's network is not set up"

mkdir -p "$MACHINE_DIR"
chmod 0711 "$MACHINE_DIR"
"$here/stop-machine.sh" keep-disk
printf 'DEPLOYMENT_ID=%s\nMACHINE_NAME=%s\nNETNS=%s\nVETH=%s\nADDRESS=%s\n' \
  "$DEPLOYMENT_ID" "$MACHINE_NAME" "$NETNS" "$VETH" "$ADDRESS" >"$MACHINE_DIR/sandbox.env"

# The disk: created once, owned by the machine's uid (root inside).
disk="$MACHINE_DIR/disk"
export DISK="$disk"
if [ ! -d "$disk" ]; then
  # Only the machine's own uid/gid may enter its disk; no other account of the host may.
  mkdir -m 0710 "$disk"
  chown "0:$MACHINE_UID" "$disk"
  for dir in etc root home tmp var opt srv usr-local; do
    mkdir -m 0755 "$disk/$dir"
    chown "$MACHINE_UID:$MACHINE_UID" "$disk/$dir"
  done
fi

# Limits: memory (with swap, where the kernel accounts it) and processes per machine.
for dir in $(cgroup_dirs "$CGROUP_NAME"); do
  parent_dir=$(dirname "$dir")
  if [ ! -d "$parent_dir" ]; then
    mkdir -p "$parent_dir"
    if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
      echo "+memory +pids" >/sys/fs/cgroup/cgroup.subtree_control
      echo "+memory +pids" >"$parent_dir/cgroup.subtree_control"
    fi
  fi
  mkdir -p "$dir"
  bytes=$((MEMORY_MB * 1024 * 1024))
  for file in memory.max memory.limit_in_bytes; do
    [ -f "$dir/$file" ] && echo "$bytes" >"$dir/$file"
  done
  for file in memory.swap.max memory.memsw.limit_in_bytes; do
    [ -f "$dir/$file" ] && { echo "$bytes" >"$dir/$file" 2>/dev/null || true; }
  done
  [ -f "$dir/pids.max" ] && echo "$MAX_PROCESSES" >"$dir/pids.max"
done

# The network: a namespace with one veth to the deployment's bridge, and a firewall the machine
# cannot change (root inside has no capability over a namespace the host's root created).
ip netns add "$NETNS"
ip link add "$VETH" type veth peer name eth0 netns "$NETNS"
ip link set dev "$VETH" master "$bridge" up
ip netns exec "$NETNS" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
ip -n "$NETNS" link set lo up
ip -n "$NETNS" addr add "$ADDRESS/${SUBNET#*/}" dev eth0
ip -n "$NETNS" link set eth0 up
ip -n "$NETNS" route add default via "$gateway"
ip netns exec "$NETNS" nft -f - <<RULES
table inet nim {
  chain input {
    type filter hook input priority 0; policy drop;
    iif lo accept
    ct state established,related accept
    ip saddr $SUBNET accept
  }
  chain output {
    type filter hook output priority 0; policy drop;
    oif lo accept
    ct state established,related accept
    ip daddr $download_addr tcp dport $download_port accept
    ip daddr $gateway drop
    ip daddr $SUBNET accept
    reject
  }
}
RULES

if [ "${BOOT_DELAY:-0}" != "0" ]; then
  sleep "$BOOT_DELAY"
fi
# If the Terraform that runs this script died meanwhile (its backend was killed), the apply was
# abandoned: another run now owns this machine, and booting here would race it.
if [ "$(cut -d' ' -f4 "/proc/$$/stat")" != "$parent" ]; then
  echo "the apply that started this machine was abandoned; not booting it" >&2
  exit 1
fi

# First boot inside: the files a system expects, written by the machine's own root.
init='set -e
mkdir -p /var/tmp /var/log
chmod 1777 /tmp /var/tmp
[ -e /etc/passwd ] || printf "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n" >/etc/passwd
[ -e /etc/group ] || printf "root:x:0:\nnogroup:x:65534:\n" >/etc/group
printf "%s\n" "$NIM_MACHINE" >/etc/hostname
printf "127.0.0.1 localhost\n127.0.1.1 %s\n" "$NIM_MACHINE" >/etc/hosts
: >/etc/resolv.conf
exec /bin/bash /run/nim-boot/user-data'
printf '%s' "$USER_DATA" >"$MACHINE_DIR/user-data"
if ! ("$here/sandbox.sh" --ro-bind-data 9 /run/nim-boot/user-data --setenv NIM_BOOTSTRAP_SYSTEMCTL true \
  -- /bin/sh -c "$init" 9<"$MACHINE_DIR/user-data") >"$MACHINE_DIR/boot.log" 2>&1; then
  rm -f "$MACHINE_DIR/user-data"
  echo "machine $MACHINE_NAME failed to boot:" >&2
  tail -n 20 "$MACHINE_DIR/boot.log" >&2
  exit 1
fi
rm -f "$MACHINE_DIR/user-data"

# The service start (systemd's part on a cloud VM): the agent reads its settings from standard
# input and the file is deleted before it starts, so no command can find the token or key.
service='exec 3</etc/nim/agent.json && rm -f /etc/nim/agent.json && exec /usr/local/bin/nim-agent --config - <&3 3<&-'
setsid "$here/sandbox.sh" -- /bin/sh -c "$service" >"$MACHINE_DIR/agent.log" 2>&1 </dev/null &
echo "$!" >"$MACHINE_DIR/agent.pid"

# The machine is up once its agent says where it listens (its first line on stdout); fail the
# apply with the agent's own words if it dies first or says nothing for 30 s.
pid=$(cat "$MACHINE_DIR/agent.pid")
i=0
until grep -q '"listening"' "$MACHINE_DIR/agent.log" 2>/dev/null; do
  if ! kill -0 "$pid" 2>/dev/null || [ "$i" -ge 600 ]; then
    echo "nim-agent did not start on $MACHINE_NAME:" >&2
    tail -n 20 "$MACHINE_DIR/agent.log" >&2
    exit 1
  fi
  sleep 0.05
  i=$((i + 1))
done
echo "started machine $MACHINE_NAME at $ADDRESS (uid $MACHINE_UID on the host)"

#!/bin/sh
# Runs a command (bubblewrap options, then `--`, then the command) inside a local machine's
# sandbox: in its cgroups and network namespace, as the machine's own host uid with no new
# privileges and its limits, in bubblewrap's user, mount, pid, ipc and uts namespaces with the
# machine's disk for /etc, /root, /home, /tmp, /var, /opt, /srv and /usr/local (the rest of / is a tmpfs), the host's /usr read-only, and a clean environment. Called by
# start-machine.sh, which sets MACHINE_UID, MACHINE_NAME, NETNS, CGROUP_NAME, DISK,
# MAX_PROCESSES and MAX_OPEN_FILES.
set -eu
. "$(dirname "$0")/common.sh"

for dir in $(cgroup_dirs "$CGROUP_NAME"); do
  echo "$$" >"$dir/cgroup.procs"
done
# Nothing of Terraform's or the backend's environment goes further, not even into bubblewrap's
# own processes (their initial environment stays readable in /proc).
exec env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin ip netns exec "$NETNS" \
  prlimit --nproc="$MAX_PROCESSES" --nofile="$MAX_OPEN_FILES" --core=0 \
  setpriv --reuid="$MACHINE_UID" --regid="$MACHINE_UID" --clear-groups --no-new-privs \
  bwrap --unshare-user --uid 0 --gid 0 --unshare-pid --unshare-ipc --unshare-uts \
  --unshare-cgroup-try --hostname "$MACHINE_NAME" --new-session \
  --tmpfs / \
  --ro-bind /usr /usr \
  --bind "$DISK/usr-local" /usr/local \
  --bind "$DISK/etc" /etc --bind "$DISK/root" /root --bind "$DISK/home" /home \
  --bind "$DISK/tmp" /tmp --bind "$DISK/var" /var --bind "$DISK/opt" /opt \
  --bind "$DISK/srv" /srv \
  --symlink usr/bin /bin --symlink usr/sbin /sbin --symlink usr/lib /lib \
  --symlink usr/lib64 /lib64 \
  --ro-bind-try /etc/ld.so.cache /etc/ld.so.cache \
  --ro-bind-try /etc/ld.so.conf /etc/ld.so.conf \
  --ro-bind-try /etc/ld.so.conf.d /etc/ld.so.conf.d \
  --ro-bind-try /etc/alternatives /etc/alternatives \
  --ro-bind-try /etc/ssl /etc/ssl \
  --ro-bind-try /etc/ca-certificates /etc/ca-certificates \
  --ro-bind-try /etc/nsswitch.conf /etc/nsswitch.conf \
  --ro-bind-try /usr/lib/os-release /etc/os-release \
  --ro-bind-try /etc/localtime /etc/localtime \
  --proc /proc --dev /dev --tmpfs /run \
  --clearenv --setenv PATH /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --setenv HOME /root --setenv LANG C.UTF-8 --setenv NIM_MACHINE "$MACHINE_NAME" \
  --chdir / "$@"

#!/bin/sh
# A deployment's network on this host: ACTION=up gives its bridge the subnet's first address
# (the machines' gateway, the host's end of the link); ACTION=down stops every machine of the
# deployment still there, then deletes the bridge and the deployment's directory. The bridge itself is claimed by the backend when the deployment is
# created (its name is recorded in $DEPLOYMENT_DIR/network), so two deployments can never get
# the same subnet; `up` claims it again if it went away (a reboot).
set -eu
umask 077
. "$(dirname "$0")/common.sh"

check_uuid "$DEPLOYMENT_ID"
check_ipv4 "$SUBNET"
alias_text="nim-local $DEPLOYMENT_ID"
bridge=$(deployment_bridge "$DEPLOYMENT_DIR")

owned() {
  [ "$(cat "/sys/class/net/$1/ifalias" 2>/dev/null)" = "$alias_text" ]
}

case "$ACTION" in
  up)
    [ -n "$bridge" ] || die "$DEPLOYMENT_DIR/network names no bridge: the backend claims one when the deployment is created"
    if [ ! -d "/sys/class/net/$bridge" ]; then
      ip link add name "$bridge" type bridge || die "failed to claim bridge $bridge again"
      ip link set dev "$bridge" alias "$alias_text"
    fi
    owned "$bridge" || die "bridge $bridge belongs to another deployment"
    # Only IPv4 on the link: no link-local IPv6 chatter between sandboxes.
    sysctl -qw "net.ipv6.conf.$bridge.disable_ipv6=1" 2>/dev/null || true
    gateway=$(gateway_of "$SUBNET")
    ip addr replace "$gateway/${SUBNET#*/}" dev "$bridge"
    ip link set dev "$bridge" up
    echo "network $SUBNET up on $bridge (gateway $gateway)"
    ;;
  down)
    # Every machine of the deployment goes first, also those Terraform never recorded (a run
    # killed while a machine was starting): by their directories, then by their namespaces.
    here="$(cd "$(dirname "$0")" && pwd)"
    for env_file in "$DEPLOYMENT_DIR"/*/sandbox.env; do
      [ -f "$env_file" ] || continue
      MACHINE_DIR=$(dirname "$env_file") DEPLOYMENT_ID="" MACHINE_NAME="" "$here/stop-machine.sh"
    done
    for name in $(ip netns list | sed -n "s/^nim-$DEPLOYMENT_ID-\([a-z0-9-]*\).*/\1/p"); do
      MACHINE_DIR="$DEPLOYMENT_DIR/$name" MACHINE_NAME="$name" "$here/stop-machine.sh"
    done
    if [ -n "$bridge" ] && owned "$bridge"; then
      ip link del dev "$bridge"
      echo "deleted bridge $bridge"
    fi
    rm -rf "$DEPLOYMENT_DIR"
    ;;
  *)
    die "ACTION must be up or down"
    ;;
esac

#!/bin/sh
# Canopy worker installer, served by a cluster orchestrator at GET /install.sh:
#
#   curl -sfL http://CLUSTER:10100/install.sh | sh -s -- --token TOKEN [--name NAME]
#
# Installs the cluster's node engine and net manager (the overlay) for this machine's
# architecture (checksums checked), writes the engine's configuration (TOML, its flags as
# keys), installs systemd units (the engine requires the net manager) and starts them where
# systemd runs (else prints the commands to start them). --no-overlay installs the engine
# alone, on the host's network. Never reads stdin, so it works when piped. --uninstall
# removes everything it installed.
set -eu

CLUSTER='@CANOPY_CLUSTER_ADDR@'
TOKEN=''
NAME=''
PREFIX=''
ARCH=''
RUNTIMES=''
START=1
UNINSTALL=0
OVERLAY=1

usage() {
  cat <<EOF
usage: sh install.sh --token TOKEN [options]
       sh install.sh --uninstall [--prefix DIR]

  --token TOKEN      the cluster's node join token (<cluster data-dir>/node-token)
  --name NAME        this worker's name at the cluster (default: the host name)
  --cluster HOST:PORT the cluster's API (default: $CLUSTER, where this script came from)
  --runtimes LIST    runtimes to offer, comma-separated (default: container,wasm when
                     containerd answers, else wasm)
  --prefix DIR       install under DIR instead of / (no systemd; for tests and packagers)
  --no-start         install only; print how to start
  --arch ARCH        the architecture to install for (default: uname -m)
  --no-overlay       no net manager: containers use the host's network
  --uninstall        stop and remove the node engine, the net manager, their configuration,
                     units and state
EOF
}

say() { printf 'canopy install: %s\n' "$*"; }
warn() { printf 'canopy install: warning: %s\n' "$*" >&2; }
die() {
  printf 'canopy install: error: %s\n' "$*" >&2
  exit 1
}
need_value() { [ "$2" -ge 2 ] || die "$1 needs a value (see --help)"; }

while [ $# -gt 0 ]; do
  case $1 in
    --token) need_value "$1" $#; TOKEN=$2; shift 2 ;;
    --token=*) TOKEN=${1#*=}; shift ;;
    --name) need_value "$1" $#; NAME=$2; shift 2 ;;
    --name=*) NAME=${1#*=}; shift ;;
    --cluster) need_value "$1" $#; CLUSTER=$2; shift 2 ;;
    --cluster=*) CLUSTER=${1#*=}; shift ;;
    --runtimes) need_value "$1" $#; RUNTIMES=$2; shift 2 ;;
    --runtimes=*) RUNTIMES=${1#*=}; shift ;;
    --prefix) need_value "$1" $#; PREFIX=$2; shift 2 ;;
    --prefix=*) PREFIX=${1#*=}; shift ;;
    --arch) need_value "$1" $#; ARCH=$2; shift 2 ;;
    --arch=*) ARCH=${1#*=}; shift ;;
    --no-start) START=0; shift ;;
    --uninstall) UNINSTALL=1; shift ;;
    --no-overlay) OVERLAY=0; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done

PREFIX=${PREFIX%/}
case $PREFIX in
  '' | /*) ;;
  *) PREFIX=$(pwd)/$PREFIX ;;
esac
UNIT_NAME=canopy-node-engine.service
BIN=$PREFIX/usr/local/bin/canopy-node-engine
CONF_DIR=$PREFIX/etc/canopy
CONF=$CONF_DIR/node-engine.toml
UNIT=$PREFIX/etc/systemd/system/$UNIT_NAME
DATA=$PREFIX/var/lib/canopy/node
NET_UNIT_NAME=canopy-net-manager.service
NET_BIN=$PREFIX/usr/local/bin/canopy-net-manager
NET_UNIT=$PREFIX/etc/systemd/system/$NET_UNIT_NAME
NET_DATA=$PREFIX/var/lib/canopy/net
NET_SOCKET=$PREFIX/run/canopy/net-manager.sock

# systemd is only touched for a real install (no --prefix) on a machine it runs.
systemd_here() {
  [ -z "$PREFIX" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1
}

# Removes DIR and its parents while they are empty, stopping at the prefix (or, without a
# prefix, at the directories that are Canopy's own).
prune() {
  d=$1
  while [ -n "$d" ] && [ "$d" != "$PREFIX" ] && [ "$d" != / ]; do
    rmdir "$d" 2>/dev/null || return 0
    [ -n "$PREFIX" ] || case $d in */canopy) ;; *) return 0 ;; esac
    d=${d%/*}
  done
}

if [ "$UNINSTALL" = 1 ]; then
  if systemd_here; then
    systemctl disable --now "$UNIT_NAME" >/dev/null 2>&1 || true
    systemctl disable --now "$NET_UNIT_NAME" >/dev/null 2>&1 || true
  fi
  rm -f "$BIN" "$BIN.part" "$CONF" "$CONF.part" "$UNIT" "$NET_BIN" "$NET_BIN.part" "$NET_UNIT"
  rm -rf "$DATA" "$NET_DATA"
  if systemd_here; then systemctl daemon-reload || true; fi
  for d in "${BIN%/*}" "$CONF_DIR" "${UNIT%/*}" "${DATA%/*}"; do prune "$d"; done
  say "removed the node engine, the net manager, their configuration, units and state${PREFIX:+ under $PREFIX}"
  exit 0
fi

# --- what this machine has ---------------------------------------------------------------

[ -n "$TOKEN" ] || die "--token TOKEN is required: the cluster's node join token (<cluster data-dir>/node-token on the cluster)"
case $TOKEN in *[!A-Za-z0-9._~+/=-]*) die "--token has characters a node token never has" ;; esac
case $NAME in *[!A-Za-z0-9._-]*) die "--name may hold letters, digits, '.', '_' and '-' only" ;; esac
case $CLUSTER in
  '' | *[!]A-Za-z0-9.:[-]*) die "--cluster must be HOST:PORT (got '$CLUSTER')" ;;
esac
if [ -z "$PREFIX" ] && [ "$(id -u)" != 0 ]; then
  die "run as root (the node engine manages containers), or give --prefix DIR"
fi
for tool in uname sha256sum mktemp; do
  command -v "$tool" >/dev/null 2>&1 || die "'$tool' is missing: install coreutils"
done
command -v curl >/dev/null 2>&1 || die "'curl' is missing: apt-get install curl (or your system's equivalent)"
ARCH=${ARCH:-$(uname -m)}
BASE=http://$CLUSTER

TMP=$(mktemp -d "${TMPDIR:-/tmp}/canopy-install.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

# GET URL to FILE [curl options]; prints the HTTP status (000 when the cluster cannot be reached).
fetch() {
  url=$1 out=$2
  shift 2
  curl -sS --connect-timeout 10 -o "$out" -w '%{http_code}' "$@" "$url" 2>"$TMP/curl.err" </dev/null || true
}
message_of() { sed -n 's/.*"message":"\([^"]*\)".*/\1/p' "$1" 2>/dev/null | head -n 1; }

say "cluster $CLUSTER, architecture $ARCH"
code=$(fetch "$BASE/install/check-token" "$TMP/check" -H "Authorization: Bearer $TOKEN")
case $code in
  204) ;;
  000) die "cannot reach the cluster at $BASE: $(cat "$TMP/curl.err")" ;;
  401) die "the cluster refused the token: $(message_of "$TMP/check") (use the cluster's node token, <cluster data-dir>/node-token)" ;;
  *) die "the cluster answered $code to the token check: $(message_of "$TMP/check")" ;;
esac

code=$(fetch "$BASE/install/SHA256SUMS" "$TMP/sums")
[ "$code" = 200 ] || die "the cluster answered $code for its checksums: $(message_of "$TMP/sums")"
# The checksum of COMPONENT-$ARCH in the cluster's list (empty when it has none).
sum_of() { sed -n "s/^\([0-9a-f]\{64\}\)  $1-$ARCH\$/\1/p" "$TMP/sums"; }
archs_of() { sed -n "s/^[0-9a-f]\{64\}  $1-//p" "$TMP/sums" | tr '\n' ' '; }
if [ -z "$(sum_of node-engine)" ]; then
  have=$(archs_of node-engine)
  die "this cluster has no node engine for architecture '$ARCH' (it has: ${have:-none}); put node-engine-$ARCH in the cluster's --install-dir"
fi
if [ "$OVERLAY" = 1 ] && [ -z "$(sum_of net-manager)" ]; then
  have=$(archs_of net-manager)
  die "this cluster has no net manager for architecture '$ARCH' (it has: ${have:-none}); put net-manager-$ARCH in the cluster's --install-dir, or install with --no-overlay"
fi

# The worker's checks (a subset of `canopy doctor`, which a worker may not have): what is missing limits what runs here.
SOCK=/run/containerd/containerd.sock
if [ -S "$SOCK" ]; then
  say "OK containerd socket $SOCK"
  CONTAINERD=1
else
  warn "containerd is not running ($SOCK missing): containers cannot run here; install and start it (apt-get install containerd runc; systemctl start containerd), wasm runs without it"
  CONTAINERD=0
fi
if command -v runc >/dev/null 2>&1; then say "OK runc"; else warn "runc is missing: apt-get install runc"; fi
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
  say "OK cgroups v2"
elif [ -d /sys/fs/cgroup/memory ]; then
  say "OK cgroups v1"
else
  warn "no cgroup file system at /sys/fs/cgroup: resource limits of containers will not apply"
fi
if [ -e /dev/kvm ]; then say "OK /dev/kvm"; else warn "no /dev/kvm: unikernels cannot run here (enable virtualization)"; fi
if [ "$OVERLAY" = 1 ]; then
  command -v nft >/dev/null 2>&1 || die "'nft' is missing (the overlay's service IPs need it): apt-get install nftables, or install with --no-overlay"
  say "OK nftables"
  [ -d /sys/module/vxlan ] || [ -n "$(find /lib/modules/"$(uname -r)" -name 'vxlan.ko*' 2>/dev/null | head -n 1)" ] ||
    warn "no vxlan kernel module found: instances on this worker will not reach other workers"
fi
if [ -z "$RUNTIMES" ]; then
  if [ "$CONTAINERD" = 1 ]; then RUNTIMES=container,wasm; else RUNTIMES=wasm; fi
fi

# --- install -------------------------------------------------------------------------------

mkdir -p "${BIN%/*}" "$CONF_DIR" "${UNIT%/*}" "$DATA"

# Downloads COMPONENT-$ARCH to DEST, checks its checksum, makes it executable.
install_binary() {
  component=$1 dest=$2
  want=$(sum_of "$component")
  say "downloading $component-$ARCH"
  code=$(fetch "$BASE/install/$component-$ARCH" "$dest.part")
  if [ "$code" != 200 ]; then
    rm -f "$dest.part"
    die "the cluster answered $code for $component-$ARCH"
  fi
  got=$(sha256sum "$dest.part" | cut -d' ' -f1)
  if [ "$got" != "$want" ]; then
    rm -f "$dest.part"
    die "checksum mismatch for $component-$ARCH (expected $want, got $got): download again"
  fi
  chmod 755 "$dest.part"
  mv -f "$dest.part" "$dest"
  say "installed $dest (sha256 $got)"
}
install_binary node-engine "$BIN"
if [ "$OVERLAY" = 1 ]; then install_binary net-manager "$NET_BIN"; fi

toml_list() {
  printf '%s' "$1" | tr ',' '\n' | sed 's/^ *//; s/ *$//; /^$/d; s/.*/"&"/' | paste -sd, - | sed 's/,/, /g'
}
(
  umask 077
  {
    printf '# Written by the Canopy installer for the node engine (keys: its flags, see --help).\n'
    printf 'cluster-addr = "%s"\n' "$CLUSTER"
    printf 'join-token = "%s"\n' "$TOKEN"
    [ -z "$NAME" ] || printf 'name = "%s"\n' "$NAME"
    printf 'data-dir = "%s"\n' "$DATA"
    printf 'runtimes = [%s]\n' "$(toml_list "$RUNTIMES")"
    if [ "$OVERLAY" = 1 ]; then
      printf 'net-manager-socket = "%s"\n' "$NET_SOCKET"
    else
      printf 'no-overlay = true\n'
    fi
  } >"$CONF.part"
)
mv -f "$CONF.part" "$CONF"
say "wrote $CONF"

if [ "$OVERLAY" = 1 ]; then
  mkdir -p "$NET_DATA"
  cat >"$NET_UNIT" <<EOF
[Unit]
Description=Canopy net manager (the overlay of this worker of cluster $CLUSTER)
After=network-online.target
Wants=network-online.target

[Service]
ExecStart=$NET_BIN --socket $NET_SOCKET --data-dir $NET_DATA
Restart=always
RestartSec=2

[Install]
WantedBy=multi-user.target
EOF
  say "wrote $NET_UNIT"
  AFTER="containerd.service $NET_UNIT_NAME"
  REQUIRES="Requires=$NET_UNIT_NAME"
else
  AFTER=containerd.service
  REQUIRES=''
fi

cat >"$UNIT" <<EOF
[Unit]
Description=Canopy node engine (worker of cluster $CLUSTER)
After=network-online.target $AFTER
Wants=network-online.target
$REQUIRES

[Service]
ExecStart=$BIN --config $CONF
Restart=always
RestartSec=2
TimeoutStopSec=30

[Install]
WantedBy=multi-user.target
EOF
say "wrote $UNIT"

if [ "$START" = 1 ] && systemd_here; then
  systemctl daemon-reload
  if [ "$OVERLAY" = 1 ]; then systemctl enable --now "$NET_UNIT_NAME"; fi
  systemctl enable --now "$UNIT_NAME"
  say "started $UNIT_NAME (systemctl status $UNIT_NAME; journalctl -u $UNIT_NAME)"
else
  if [ "$OVERLAY" = 1 ]; then
    say "start the net manager with: $NET_BIN --socket $NET_SOCKET --data-dir $NET_DATA"
  fi
  say "start it with: $BIN --config $CONF"
fi

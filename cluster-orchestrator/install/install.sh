#!/bin/sh
# Canopy worker installer, served by a cluster orchestrator at GET /install.sh:
#
#   curl -sfL http://CLUSTER:10100/install.sh | sh -s -- --token TOKEN [--name NAME]
#
# Installs the cluster's node engine for this machine's architecture (checksum checked),
# writes its configuration (TOML, the node engine's flags as keys), installs a systemd unit
# and starts it where systemd runs (else prints the command to start it). Never reads stdin,
# so it works when piped. --uninstall removes everything it installed.
set -eu

CLUSTER='@CANOPY_CLUSTER_ADDR@'
TOKEN=''
NAME=''
PREFIX=''
ARCH=''
RUNTIMES=''
START=1
UNINSTALL=0

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
  --uninstall        stop and remove the node engine, its configuration, unit and state
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
  fi
  rm -f "$BIN" "$BIN.part" "$CONF" "$CONF.part" "$UNIT"
  rm -rf "$DATA"
  if systemd_here; then systemctl daemon-reload || true; fi
  for d in "${BIN%/*}" "$CONF_DIR" "${UNIT%/*}" "${DATA%/*}"; do prune "$d"; done
  say "removed the node engine, its configuration, unit and state${PREFIX:+ under $PREFIX}"
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
want=$(sed -n "s/^\([0-9a-f]\{64\}\)  node-engine-$ARCH\$/\1/p" "$TMP/sums")
if [ -z "$want" ]; then
  have=$(sed -n 's/^[0-9a-f]\{64\}  node-engine-//p' "$TMP/sums" | tr '\n' ' ')
  die "this cluster has no node engine for architecture '$ARCH' (it has: ${have:-none}); put node-engine-$ARCH in the cluster's --install-dir"
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
if [ -z "$RUNTIMES" ]; then
  if [ "$CONTAINERD" = 1 ]; then RUNTIMES=container,wasm; else RUNTIMES=wasm; fi
fi

# --- install -------------------------------------------------------------------------------

mkdir -p "${BIN%/*}" "$CONF_DIR" "${UNIT%/*}" "$DATA"
say "downloading node-engine-$ARCH"
code=$(fetch "$BASE/install/node-engine-$ARCH" "$BIN.part")
if [ "$code" != 200 ]; then
  rm -f "$BIN.part"
  die "the cluster answered $code for node-engine-$ARCH"
fi
got=$(sha256sum "$BIN.part" | cut -d' ' -f1)
if [ "$got" != "$want" ]; then
  rm -f "$BIN.part"
  die "checksum mismatch for node-engine-$ARCH (expected $want, got $got): download again"
fi
chmod 755 "$BIN.part"
mv -f "$BIN.part" "$BIN"
say "installed $BIN (sha256 $got)"

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
  } >"$CONF.part"
)
mv -f "$CONF.part" "$CONF"
say "wrote $CONF"

cat >"$UNIT" <<EOF
[Unit]
Description=Canopy node engine (worker of cluster $CLUSTER)
After=network-online.target containerd.service
Wants=network-online.target

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
  systemctl enable --now "$UNIT_NAME"
  say "started $UNIT_NAME (systemctl status $UNIT_NAME; journalctl -u $UNIT_NAME)"
else
  say "start it with: $BIN --config $CONF"
fi

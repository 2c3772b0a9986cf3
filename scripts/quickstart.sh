#!/usr/bin/env bash
# Canopy's quickstart (the README's main-job command). On a fresh Debian machine, as root:
#
#   bash scripts/quickstart.sh          # install, build, start, deploy the demo
#   bash scripts/quickstart.sh stop     # stop everything it started (instances are removed)
#
# It installs what is missing (containerd, runc, busybox-static, protoc, a C toolchain, Rust per
# rust-toolchain.toml), builds Canopy in release mode, builds the demo image from busybox-static
# (no Docker, nothing pulled), starts `canopy up` in the background (a root, a cluster and one
# node engine on 127.0.0.1), deploys examples/quickstart.json (a busybox httpd container and a
# wasm module) and waits until both run. Nothing is downloaded at run time; the packages and
# crates must be reachable (or already cached) for the first build.
#
# Environment: CANOPY_UP_DIR (default /var/lib/canopy/up) is canopy up's state;
# CANOPY_DEMO_DIR (default /var/lib/canopy/demo) holds the image archive, the module and the
# SLA; CANOPY_DEMO_PORT (default 8080) is the page's port; CANOPY_ADMIN_PASSWORD sets the
# Admin password on the first start (else one is generated and printed).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$REPO/scripts/lib.sh"
cd "$REPO"

UP_DIR=${CANOPY_UP_DIR:-/var/lib/canopy/up}
DEMO_DIR=${CANOPY_DEMO_DIR:-/var/lib/canopy/demo}
DEMO_PORT=${CANOPY_DEMO_PORT:-8080}
UP_PID_FILE="$UP_DIR/canopy-up.pid"
CONTAINERD_PID_FILE="$UP_DIR/containerd.pid"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CANOPY_CACHE_DIR/target}
BIN="$CARGO_TARGET_DIR/release"

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop() {
  if alive "$UP_PID_FILE"; then
    local pid i
    pid=$(cat "$UP_PID_FILE")
    step "Stopping canopy up (pid $pid): workers first, their instances are removed"
    kill -TERM "$pid"
    for ((i = 0; i < 600; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && die "canopy up (pid $pid) did not stop within 60 s; see $UP_DIR/up.out"
    tail -n 6 "$UP_DIR/up.out" | sed 's/^/    /'
  else
    note "canopy up is not running"
  fi
  rm -f "$UP_PID_FILE"
  if alive "$CONTAINERD_PID_FILE"; then
    note "stopping the containerd the quickstart started (pid $(cat "$CONTAINERD_PID_FILE"))"
    kill -TERM "$(cat "$CONTAINERD_PID_FILE")" || true
  fi
  rm -f "$CONTAINERD_PID_FILE"
}

if [ "${1:-}" = "stop" ]; then
  stop
  exit 0
fi
[ $# -eq 0 ] || die "usage: bash scripts/quickstart.sh [stop]"
[ "$(id -u)" -eq 0 ] || die "run it as root: containerd and its containers need root"

step "Prerequisites"
apt_install ca-certificates build-essential pkg-config protobuf-compiler python3 \
  containerd runc busybox-static file curl
ensure_rust

step "Build Canopy (release; the first build takes several minutes)"
cargo build --release --locked --bins
for b in canopy root-orchestrator cluster-orchestrator node-engine net-manager; do
  ln -sf "$BIN/$b" "/usr/local/bin/$b"
done
note "canopy and the daemons are linked into /usr/local/bin"

step "Demo image and module in $DEMO_DIR"
mkdir -p "$DEMO_DIR" "$UP_DIR"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
bash scripts/busybox-image.sh build "$WORK/image" canopy-demo/httpd:1 >/dev/null
cp "$WORK/image/oci.tar" "$DEMO_DIR/httpd.tar"
cp examples/ticker.wat "$DEMO_DIR/ticker.wat"
sed -e "s#/var/lib/canopy/demo#$DEMO_DIR#g" -e "s#\"8080\"#\"$DEMO_PORT\"#g" \
  examples/quickstart.json >"$DEMO_DIR/quickstart.json"
note "busybox httpd image $DEMO_DIR/httpd.tar (the node engine imports it into containerd)"

step "containerd"
if ctr --address "$CONTAINERD_SOCKET" version >/dev/null 2>&1; then
  note "containerd answers on $CONTAINERD_SOCKET"
else
  note "starting containerd (log $UP_DIR/containerd.log)"
  setsid containerd >>"$UP_DIR/containerd.log" 2>&1 </dev/null &
  echo $! >"$CONTAINERD_PID_FILE"
  for ((i = 0; i < 300; i++)); do
    ctr --address "$CONTAINERD_SOCKET" version >/dev/null 2>&1 && break
    sleep 0.1
  done
  ctr --address "$CONTAINERD_SOCKET" version >/dev/null 2>&1 ||
    die "containerd did not start; see $UP_DIR/containerd.log"
fi

if alive "$UP_PID_FILE"; then
  note "a previous quickstart is running: stopping it first"
  stop
fi

step "canopy up (root, cluster, 1 worker on 127.0.0.1)"
: >"$UP_DIR/up.out"
setsid "$BIN/canopy" up --data-dir "$UP_DIR" >>"$UP_DIR/up.out" 2>&1 </dev/null &
echo $! >"$UP_PID_FILE"
shown=0
for ((i = 0; i < 1800; i++)); do
  lines=$(wc -l <"$UP_DIR/up.out")
  if [ "$lines" -gt "$shown" ]; then
    sed -n "$((shown + 1)),${lines}p" "$UP_DIR/up.out" | sed 's/^/    /'
    shown=$lines
  fi
  grep -q '^Press Ctrl-C' "$UP_DIR/up.out" && break
  alive "$UP_PID_FILE" || die "canopy up stopped; see $UP_DIR/up.out and $UP_DIR/logs/"
  sleep 0.1
done
grep -q '^Press Ctrl-C' "$UP_DIR/up.out" || die "canopy up was not ready after 180 s; see $UP_DIR/logs/"

step "Deploy the demo: a container (busybox httpd) and a wasm module"
# A rerun replaces the previous demo application.
"$BIN/canopy" delete app quickstart >/dev/null 2>&1 || true
"$BIN/canopy" apply "$DEMO_DIR/quickstart.json" --wait --timeout 180

step "Check the page"
for ((i = 0; i < 50; i++)); do
  curl -fsS "http://127.0.0.1:$DEMO_PORT/" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fsS "http://127.0.0.1:$DEMO_PORT/" | sed 's/^/    /' ||
  die "the page does not answer on 127.0.0.1:$DEMO_PORT; see $UP_DIR/logs/"

cat <<EOF

Canopy runs (canopy up, pid $(cat "$UP_PID_FILE"); state and logs in $UP_DIR).

  The demo page:     curl http://127.0.0.1:$DEMO_PORT/
  What runs:         canopy get services   |   canopy get instances   |   canopy get nodes
  The wasm output:   canopy logs ticker --follow
  The web server's:  canopy logs web
  More instances:    canopy scale ticker 3
  The API:           http://127.0.0.1:10000 (user Admin; password printed above)

Stop everything:     bash scripts/quickstart.sh stop
EOF

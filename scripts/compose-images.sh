#!/usr/bin/env bash
# Builds the control-plane images canopy/root and canopy/cluster FROM scratch, offline: a root
# file system per image with the daemon's binary, every library `ldd` names and busybox (for
# health checks), then `docker build` with compose/Dockerfile.<daemon>.
#
#   bash scripts/compose-images.sh                  # cargo build --release, then the images
#   bash scripts/compose-images.sh --bin-dir DIR    # from binaries already built (no cargo)
#   options: --tag TAG (default latest); DOCKER (default docker) names the client.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$REPO/scripts/lib.sh"

BIN_DIR=''
TAG=latest
while [ $# -gt 0 ]; do
  case $1 in
    --bin-dir) BIN_DIR=$2; shift 2 ;;
    --tag) TAG=$2; shift 2 ;;
    -h | --help) sed -n '2,9p' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
DOCKER=${DOCKER:-docker}
command -v "$DOCKER" >/dev/null 2>&1 || die "$DOCKER not found: apt-get install docker.io"
[ -x /bin/busybox ] || die "/bin/busybox is missing: apt-get install busybox-static"

if [ -z "$BIN_DIR" ]; then
  step "cargo build --release (root, cluster, node engine, net manager)"
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CANOPY_CACHE_DIR/target}
  (cd "$REPO" && cargo build --release --locked -p root-orchestrator -p cluster-orchestrator -p node-engine -p net-manager)
  BIN_DIR=$CARGO_TARGET_DIR/release
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/canopy-images.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# rootfs DIR BINARY...: the binaries under DIR/usr/local/bin with their libraries and busybox.
rootfs() {
  local dir=$1 b lib
  shift
  mkdir -p "$dir/usr/local/bin" "$dir/bin" "$dir/tmp"
  chmod 1777 "$dir/tmp"
  cp /bin/busybox "$dir/bin/busybox"
  for b in "$@"; do
    [ -x "$BIN_DIR/$b" ] || die "$BIN_DIR/$b is missing: build it first"
    cp "$BIN_DIR/$b" "$dir/usr/local/bin/$b"
    for lib in $(ldd "$BIN_DIR/$b" | grep -o '/[^ ]*'); do
      cp -L --parents "$lib" "$dir"
    done
  done
}

for image in root cluster; do
  case $image in
    root) bins=(root-orchestrator) ;;
    cluster) bins=(cluster-orchestrator node-engine net-manager) ;;
  esac
  step "image canopy/$image:$TAG (${bins[*]} from $BIN_DIR)"
  rootfs "$WORK/$image/rootfs" "${bins[@]}"
  note "root file system: $(du -sh "$WORK/$image/rootfs" | cut -f1)"
  DOCKER_BUILDKIT=0 "$DOCKER" build -q -t "canopy/$image:$TAG" -f "$REPO/compose/Dockerfile.$image" "$WORK/$image" >/dev/null
  note "built canopy/$image:$TAG"
done

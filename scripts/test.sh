#!/usr/bin/env bash
# Canopy's whole test suite. On a fresh Debian machine, as root, this does all set-up:
# it installs what the tests need (idempotently), starts the services they use on loopback,
# runs cargo fmt --check, clippy with -D warnings and every test, and stops what it started.
#
#   bash scripts/test.sh
#
# Environment: CANOPY_CACHE_DIR (default /var/cache/canopy) holds the build output and the
# Python venv between runs; CARGO_TARGET_DIR overrides the build directory.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$REPO/scripts/lib.sh"
cd "$REPO"
trap 'stop_started; [ -z "${RUN_DIR:-}" ] || rm -rf "$RUN_DIR"' EXIT

step "Prerequisites"
# Build: protoc for tonic, a C compiler for crates that build C. Runtime pieces later issues'
# tests use: containerd and runc, busybox-static for test images, iproute2, nftables and
# iptables for namespaces (the net manager's tests set FORWARD policy drop), an OCI registry, an MQTT broker, dockerd and docker-compose for the compose test. Python's venv for the MongoDB wire server.
apt_install ca-certificates build-essential pkg-config protobuf-compiler python3 python3-venv \
  containerd runc busybox-static iproute2 nftables iptables docker-registry mosquitto curl \
  docker.io docker-compose
ensure_rust
ensure_qemu
# The dashboard's browser test: Chromium, Node.js and playwright-core.
ensure_browser_test "$REPO/e2e/browser"

VENV="$CANOPY_CACHE_DIR/venv"
if [ ! -x "$VENV/bin/nx-27017" ]; then
  step "Python venv with nx-27017 (MongoDB wire protocol server) in $VENV"
  mkdir -p "$CANOPY_CACHE_DIR"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check nx-27017
fi

if [ ! -x "$VENV/bin/oak" ]; then
  step "oak-cli 0.5.5 (Oakestra's own CLI, for the compatibility test) in $VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check oak-cli==0.5.5
fi
export CANOPY_TEST_OAK_CLI="$VENV/bin/oak"

step "Services on loopback"
MONGO_PORT=$(free_port)
RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/canopy-test.XXXXXX")
MONGO_LOG="$RUN_DIR/nx-27017.log"
# Its own pid and log files: nx-27017 refuses to start while another's pid file exists.
"$VENV/bin/nx-27017" --data-dir memory --host 127.0.0.1 -p "$MONGO_PORT" \
  --pid-file "$RUN_DIR/nx-27017.pid" --log-file "$MONGO_LOG" >>"$MONGO_LOG" 2>&1 &
MONGO_PID=$!
remember_pid "$MONGO_PID"
wait_port "$MONGO_PORT" 30 nx-27017 || { cat "$MONGO_LOG" >&2; exit 1; }
ensure_containerd "$RUN_DIR/containerd.log"
export CANOPY_TEST_MONGODB_URI="mongodb://127.0.0.1:$MONGO_PORT/?directConnection=true"
note "nx-27017 (pid $MONGO_PID) at $CANOPY_TEST_MONGODB_URI, log $MONGO_LOG"

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CANOPY_CACHE_DIR/target}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
note "build output in $CARGO_TARGET_DIR"

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo build (the end-to-end tests run the daemons' binaries)"
cargo build --workspace --bins --locked

step "cargo test"
cargo test --workspace --locked

step "compose: root.yml and cluster.yml against a private dockerd"
bash "$REPO/scripts/compose-test.sh" "$CARGO_TARGET_DIR/debug"

step "All checks passed"

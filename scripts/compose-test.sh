#!/usr/bin/env bash
# compose/root.yml and compose/cluster.yml end to end on one machine, against a dockerd this
# script starts (own --data-root, --exec-root, socket and pid file; stopped by pid):
#
#   bash scripts/compose-test.sh [BIN_DIR]     # BIN_DIR: built daemons (default: debug build)
#
# Images are built from BIN_DIR (nothing is pulled); both files come up with docker-compose
# (projects canopytest<pid>root/cluster, the cluster reaching the root as
# host.docker.internal); a node engine on the host joins through the cluster's published port;
# a wasm SLA posted to the root runs; `down` and `up` keep applications and registrations
# (volumes). Afterwards iptables, docker0, ip_forward, dockerd and what it leaves beside its
# directories (trust key, /run/docker, containerd namespace moby) are as before (checked).
#
# dockerd runs with --iptables=false --ip-forward=false: published ports go through
# docker-proxy and the containers reach the host's own addresses, so nothing needs NAT.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$REPO/scripts/lib.sh"

BIN_DIR=${1:-${CARGO_TARGET_DIR:-$CANOPY_CACHE_DIR/target}/debug}
DOCKERD=${DOCKERD:-/usr/sbin/dockerd}
export DOCKER=${DOCKER:-/usr/bin/docker}
[ -x "$DOCKERD" ] && [ -x "$DOCKER" ] && command -v docker-compose >/dev/null ||
  die "dockerd, docker and docker-compose are needed: apt-get install docker.io docker-compose"
[ "$(id -u)" -eq 0 ] || die "starting dockerd needs root"
for b in canopy node-engine net-manager root-orchestrator cluster-orchestrator; do
  [ -x "$BIN_DIR/$b" ] || die "$BIN_DIR/$b is missing: cargo build --workspace --bins"
done

RUN=$(mktemp -d "${TMPDIR:-/tmp}/canopy-compose.XXXXXX")
ID=canopytest$$
TAG=$ID
export DOCKER_HOST=unix://$RUN/docker.sock
COMPOSE_ROOT=(docker-compose -p "${ID}root" -f "$REPO/compose/root.yml")
COMPOSE_CLUSTER=(docker-compose -p "${ID}cluster" -f "$REPO/compose/cluster.yml")

# --- the machine before (scripts/lib.sh: dockerd_before ... dockerd_check) ------------------
dockerd_before "$RUN"

teardown() {
  if dockerd_running; then
    "${COMPOSE_CLUSTER[@]}" down -v --remove-orphans >>"$RUN/compose.log" 2>&1 || true
    "${COMPOSE_ROOT[@]}" down -v --remove-orphans >>"$RUN/compose.log" 2>&1 || true
    "$DOCKER" rmi -f "canopy/root:$TAG" "canopy/cluster:$TAG" >>"$RUN/compose.log" 2>&1 || true
  fi
  dockerd_stop
  dockerd_restore
}
on_exit() {
  local rc=$?
  stop_started
  teardown
  if [ "$rc" != 0 ]; then
    printf '\n--- dockerd log (tail)\n' >&2; tail -n 20 "$RUN/dockerd.log" >&2 || true
    printf '\n--- compose log (tail)\n' >&2; tail -n 40 "$RUN/compose.log" >&2 || true
    printf '\n--- node engine log (tail)\n' >&2; tail -n 20 "$RUN/node.log" >&2 || true
  fi
  rm -rf "$RUN"
}
trap on_exit EXIT

step "dockerd (data in $RUN, socket $RUN/docker.sock)"
dockerd_start "$RUN" --iptables=false --ip-forward=false --ip-masq=false

step "images from $BIN_DIR"
bash "$REPO/scripts/compose-images.sh" --bin-dir "$BIN_DIR" --tag "$TAG"

export CANOPY_ROOT_IMAGE=canopy/root:$TAG CANOPY_CLUSTER_IMAGE=canopy/cluster:$TAG
export CANOPY_ADMIN_PASSWORD=compose-test-pw CANOPY_CLUSTER_TOKEN=ctok$$x CANOPY_NODE_TOKEN=ntok$$x
export SYSTEM_MANAGER_URL=host.docker.internal CLUSTER_NAME=composetest CLUSTER_LOCATION=48.1,11.6,50
export CANOPY_ROOT_API_PORT=$(free_port) CANOPY_ROOT_GRPC_PORT=$(free_port) CANOPY_ROOT_METRICS_PORT=$(free_port)
export CANOPY_CLUSTER_API_PORT=$(free_port) CANOPY_CLUSTER_MQTT_PORT=$(free_port)
export CANOPY_CONFIG=$RUN/cli.json CANOPY_PASSWORD=$CANOPY_ADMIN_PASSWORD
API=http://127.0.0.1:$CANOPY_ROOT_API_PORT
CANOPY=$BIN_DIR/canopy

# healthy PROJECT-COMPOSE...: waits until the project's container reports healthy.
healthy() {
  local id status i
  id=$("$@" ps -q | head -n 1)
  [ -n "$id" ] || die "no container in $*"
  for ((i = 0; i < 120; i++)); do
    status=$("$DOCKER" inspect -f '{{.State.Health.Status}}' "$id")
    [ "$status" = healthy ] && return 0
    sleep 0.5
  done
  die "container $id is $status after 60 s"
}

up_both() {
  "${COMPOSE_ROOT[@]}" up -d >>"$RUN/compose.log" 2>&1
  "${COMPOSE_CLUSTER[@]}" up -d >>"$RUN/compose.log" 2>&1
  healthy "${COMPOSE_ROOT[@]}"
  healthy "${COMPOSE_CLUSTER[@]}"
  note "root and cluster healthy (API $API, cluster 127.0.0.1:$CANOPY_CLUSTER_API_PORT)"
}

# until_ok SECONDS WHAT COMMAND...: retries COMMAND every 0.5 s.
until_ok() {
  local secs=$1 what=$2 i
  shift 2
  for ((i = 0; i < secs * 2; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  die "$what: not within $secs s"
}
joined() { "$CANOPY" get nodes -o json | grep -q '"name": *"composeworker"'; }
cluster_active() { "$CANOPY" get clusters -o json | grep -q '"active": *true'; }

step "docker-compose up: root.yml and cluster.yml"
up_both
until_ok 60 "the root logs in" "$CANOPY" login --api "$API" --username Admin
until_ok 60 "the cluster joins the root" cluster_active

step "a node engine on the host joins through the published port"
"$BIN_DIR/node-engine" --cluster-addr "127.0.0.1:$CANOPY_CLUSTER_API_PORT" \
  --join-token "$CANOPY_NODE_TOKEN" --name composeworker --runtimes wasm --no-overlay \
  --data-dir "$RUN/node" --api-addr 127.0.0.1:0 >"$RUN/node.log" 2>&1 </dev/null &
remember_pid $!
until_ok 60 "the worker joins" joined
NODE_ID=$("$CANOPY" get nodes -o json | tr -d '\n ' | grep -o '"node_id":"[^"]*"' | head -n 1)
note "worker $NODE_ID"

step "an SLA posted to the root runs"
cat >"$RUN/sla.json" <<JSON
{"sla_version": "v2.0", "customerID": "Admin", "applications": [{
  "application_name": "composeapp", "application_namespace": "test", "application_desc": "compose test",
  "microservices": [{"microservice_name": "ticker", "microservice_namespace": "test",
    "virtualization": "wasm", "code": "$REPO/examples/ticker.wat", "memory": 16}]}]}
JSON
"$CANOPY" apply "$RUN/sla.json" --wait --timeout 60

step "docker-compose down, up: applications and registrations kept"
"${COMPOSE_CLUSTER[@]}" down >>"$RUN/compose.log" 2>&1
"${COMPOSE_ROOT[@]}" down >>"$RUN/compose.log" 2>&1
up_both
until_ok 60 "the root logs in again" "$CANOPY" login --api "$API" --username Admin
"$CANOPY" get apps -o json | grep -q '"composeapp"' || die "the application is gone after down/up"
until_ok 60 "the cluster rejoins the root" cluster_active
until_ok 60 "the worker is back" joined
"$CANOPY" get nodes -o json | tr -d '\n ' | grep -q "$NODE_ID" || die "the worker's registration changed: $("$CANOPY" get nodes)"
note "application composeapp and worker $NODE_ID kept"

step "teardown; the machine as before"
stop_started
_started_pids=()
teardown
dockerd_check
note "iptables, ip_forward and docker0 as before; dockerd stopped"
step "compose test passed"

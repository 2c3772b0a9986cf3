#!/usr/bin/env bash
# A live peer in the same run: Docker swarm's `docker service create` → its task running, for
# the busybox image Canopy's latency bench uses, against a dockerd this script starts (Debian's
# docker.io 20.10; own --data-root, --exec-root, socket and pid file; stopped by pid):
#
#   bash scripts/swarm-bench.sh        # as root; CANOPY_BENCH_SWARM_RUNS (20)
#
# A one-node swarm on 127.0.0.1 (control port on loopback, gossip on 127.0.0.1:7946); its
# ingress network is removed right after `swarm init` (nothing here publishes a port, and its
# VXLAN socket listens on every address). The image is built by scripts/busybox-image.sh and
# `docker load`ed; dockerd runs with DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1 and services are
# created with --no-resolve-image, so nothing asks a registry. The task runs on the host's
# network (`--network host`), as Canopy's latency bench runs its containers (`canopy up
# --no-overlay`); on the default bridge it took ~250 ms more here. Each run times the CLI's
# `docker service create` until the Engine API's /tasks reports the task's state "running"
# (polled with curl on the socket every ~5 ms; a `docker service ps` poll costs tens of ms of
# client start), then removes the service and waits until its container has stopped (swarm
# removes stopped containers some seconds later, on its own). Prints
#   BENCH_JSON {"swarm": {"swarm_service_to_running_ms": {p50, p90, p99, max}, "runs": N}}
#
# dockerd runs with --iptables=false --ip-forward=false --ip-masq=false --bridge=none: a task on
# the host's network needs no NAT and no docker0, and swarm itself (raft on loopback) needs no
# rules; `swarm init` still makes docker_gwbridge for its ingress sandbox. Afterwards iptables,
# ip_forward, docker0 and docker_gwbridge, the mounts and network namespaces under the run
# directory, dockerd's trust key, /run/docker and containerd namespace moby are as before
# (checked; scripts/lib.sh).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$REPO/scripts/lib.sh"

export LC_NUMERIC=C # $EPOCHREALTIME with a decimal point
RUNS=${CANOPY_BENCH_SWARM_RUNS:-20}
RUN=$(mktemp -d "${TMPDIR:-/tmp}/canopybench-swarm.XXXXXX")
NAME=canopybench-swarm$$
IMAGE=canopybench/busybox:$$

dockerd_before "$RUN"
[ -x "$DOCKERD" ] && [ -x "$DOCKER" ] || die "dockerd and docker are needed: apt-get install docker.io"
command -v curl >/dev/null || die "curl is needed: apt-get install curl"

teardown() {
  if dockerd_running; then
    "$DOCKER" service rm "$NAME" >/dev/null 2>&1 || true
    "$DOCKER" swarm leave --force >/dev/null 2>&1 || true
    "$DOCKER" network rm docker_gwbridge >/dev/null 2>&1 || true
    "$DOCKER" rmi -f "$IMAGE" >/dev/null 2>&1 || true
  fi
  dockerd_stop
  dockerd_restore
}
on_exit() {
  local rc=$?
  teardown
  if [ "$rc" != 0 ]; then
    printf '\n--- dockerd log (tail)\n' >&2
    tail -n 20 "$RUN/dockerd.log" >&2 || true
  fi
  rm -rf "$RUN"
}
trap on_exit EXIT

# api PATH: GET on the Engine API through dockerd's socket.
api() { curl -fsS --unix-socket "$RUN/docker.sock" "http://docker/v1.41$1"; }
# tasks_of SERVICE: the service's tasks (JSON); running SERVICE: whether one is running.
tasks_of() { api "/tasks?filters=%7B%22service%22%3A%5B%22$1%22%5D%7D"; }
running() {
  local t
  t=$(tasks_of "$1" 2>/dev/null) || return 1
  [[ $t == *'"State":"running"'* ]]
}

step "dockerd (data in $RUN, socket $RUN/docker.sock)"
DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1 \
  dockerd_start "$RUN" --iptables=false --ip-forward=false --ip-masq=false --bridge=none

step "swarm init on 127.0.0.1"
"$DOCKER" swarm init --advertise-addr 127.0.0.1 --listen-addr "127.0.0.1:$(free_port)" >/dev/null
echo y | "$DOCKER" network rm ingress >/dev/null
note "one-node swarm, ingress network removed"

step "image $IMAGE (scripts/busybox-image.sh, docker load)"
bash "$REPO/scripts/busybox-image.sh" build "$RUN/image" "$IMAGE" >/dev/null
"$DOCKER" load -q -i "$RUN/image/docker.tar" >/dev/null

# one_run: ms from `docker service create` to the task running; the service is removed after
# and its container stopped.
one_run() {
  local t0 t1 i
  t0=$EPOCHREALTIME
  "$DOCKER" service create -q --detach --no-resolve-image --network host \
    --name "$NAME" "$IMAGE" \
    sh -c "trap 'exit 0' TERM; while true; do sleep 1; done" >/dev/null
  for ((i = 0; i < 6000; i++)); do
    running "$NAME" && break
    sleep 0.005
  done
  t1=$EPOCHREALTIME
  running "$NAME" || die "the task of $NAME is not running: $(tasks_of "$NAME")"
  "$DOCKER" service rm "$NAME" >/dev/null
  for ((i = 0; i < 600; i++)); do
    [ -z "$("$DOCKER" ps -q --filter "label=com.docker.swarm.service.name=$NAME")" ] && break
    sleep 0.05
  done
  awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f\n", (b - a) * 1000}'
}

step "docker service create → task running, 1 warm-up + $RUNS runs"
one_run >/dev/null
: >"$RUN/ms"
for ((r = 0; r < RUNS; r++)); do one_run >>"$RUN/ms"; done

step "teardown; the machine as before"
teardown
dockerd_check
note "iptables, ip_forward, bridges, mounts and dockerd's leftovers as before; dockerd stopped"

# Nearest-rank percentiles, as the Rust benches' summarize().
python3 - "$RUN/ms" <<'PY'
import json, sys
v = sorted(float(x) for x in open(sys.argv[1]) if x.strip())
pct = lambda p: v[min(int(p / 100 * (len(v) - 1) + 0.5), len(v) - 1)]
s = {"p50": pct(50), "p90": pct(90), "p99": pct(99), "max": v[-1]}
print(f"docker service create → task running, {len(v)} runs (ms): p50 {s['p50']:.1f} / p90 {s['p90']:.1f} / p99 {s['p99']:.1f} / max {s['max']:.1f}")
print("BENCH_JSON " + json.dumps({"swarm": {"swarm_service_to_running_ms": s, "runs": len(v)}}))
PY

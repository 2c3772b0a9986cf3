#!/usr/bin/env bash
# Canopy's benchmarks (never part of the test suite's pass/fail). As root, on Debian:
#
#   bash scripts/bench.sh [latency] [placement] [placement_root] [scale] [failover]
#                         [failover_silent] [idle] [overlay] [unikernel] [swarm] (default: all)
#
# Builds in release mode, starts containerd if none answers, runs
# `cargo bench -p canopy-e2e --bench stack -- SECTIONS` (the real binaries under `canopy up`;
# `unikernel` there is submit → RUNNING for a tiny kernel under QEMU; `failover_silent` cuts a
# worker's link in a lab of network namespaces), for `overlay`
# `cargo bench -p canopy-e2e --bench overlay` (workers in network namespaces of their own,
# iperf3 and ping through service IPs) and for `unikernel` also
# `cargo bench -p node-engine --bench unikernel_boot` (QEMU spawned → the guest's marker; it
# downloads Debian's cloud kernel once for the Linux micro-VM; installs QEMU if missing),
# for `swarm` scripts/swarm-bench.sh (a live peer: Docker swarm's `docker service create` →
# task running for the same busybox image, against a private dockerd; installs docker.io),
# and writes docs/benchmarks.json (figures and the machine) and the "Whole system" table of
# docs/benchmarks.md. Sections not run keep their previous figures.
#
# Environment: CANOPY_BENCH_RUNS (latency runs, 50), CANOPY_BENCH_VIRTUAL_WORKERS (200),
# CANOPY_BENCH_INSTANCES (5000), CANOPY_BENCH_CLUSTERS (placement_root, 10),
# CANOPY_BENCH_ROOT_INSTANCES (placement_root and scale, 50000), CANOPY_BENCH_SCALE_CLUSTERS (5),
# CANOPY_BENCH_SCALE_WORKERS (virtual workers per cluster in scale, 1000),
# CANOPY_BENCH_FAILOVER_RUNS (10), CANOPY_BENCH_IDLE_SECS (60),
# CANOPY_BENCH_BOOT_RUNS (QEMU boots per kind in unikernel_boot, 5; CANOPY_BENCH_RUNS also sets
# the unikernel section's submissions, 50), CANOPY_BENCH_SWARM_RUNS (20).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$REPO/scripts/lib.sh"
cd "$REPO"
RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/canopy-bench.XXXXXX")
trap 'stop_started; rm -rf "$RUN_DIR"' EXIT

step "Prerequisites"
apt_install ca-certificates build-essential pkg-config protobuf-compiler python3 \
  containerd runc busybox-static file curl iproute2 nftables iperf3
ensure_rust
ensure_containerd "$RUN_DIR/containerd.log"

SECTIONS=("$@")
[ ${#SECTIONS[@]} -gt 0 ] || SECTIONS=(latency placement placement_root scale failover failover_silent idle overlay unikernel swarm)
STACK=()
OVERLAY=no
UNIKERNEL=no
SWARM=no
for s in "${SECTIONS[@]}"; do
  case "$s" in
    overlay) OVERLAY=yes ;;
    unikernel) UNIKERNEL=yes; STACK+=("$s") ;;
    swarm) SWARM=yes ;;
    *) STACK+=("$s") ;;
  esac
done
[ "$UNIKERNEL" = no ] || ensure_qemu
[ "$SWARM" = no ] || apt_install docker.io

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CANOPY_CACHE_DIR/target}
step "Build (release)"
cargo build --release --locked --workspace --bins

step "Benchmarks: ${SECTIONS[*]}"
OUT="$RUN_DIR/bench.out"
: >"$OUT"
if [ ${#STACK[@]} -gt 0 ]; then
  cargo bench --locked -p canopy-e2e --bench stack -- "${STACK[@]}" | tee -a "$OUT"
fi
if [ "$OVERLAY" = yes ]; then
  cargo bench --locked -p canopy-e2e --bench overlay | tee -a "$OUT"
fi
if [ "$UNIKERNEL" = yes ]; then
  CANOPY_BENCH_RUNS=${CANOPY_BENCH_BOOT_RUNS:-5} \
    cargo bench --locked -p node-engine --bench unikernel_boot | tee -a "$OUT"
fi
if [ "$SWARM" = yes ]; then
  bash "$REPO/scripts/swarm-bench.sh" | tee -a "$OUT"
fi

step "Writing docs/benchmarks.json and docs/benchmarks.md"
python3 - "$OUT" <<'PY'
import json, os, re, subprocess, sys, datetime

out = open(sys.argv[1]).read()
path = "docs/benchmarks.json"
data = json.load(open(path)) if os.path.exists(path) else {}
for line in out.splitlines():
    if line.startswith("BENCH_JSON "):
        for section, v in json.loads(line[len("BENCH_JSON "):]).items():
            data.setdefault("sections", {})[section] = v
            for k, x in v.items():
                if k.endswith("_ms") or k in ("placements_per_second", "placements_per_second_root", "scale", "idle_rss_mb", "idle_cpu_percent",
                                              "overlay_throughput_ratio", "overlay_rtt_overhead_us",
                                              "idle_worker_uplink_bits_per_second"):
                    data[k] = x

mem_kb = int(re.search(r"MemTotal:\s+(\d+)", open("/proc/meminfo").read()).group(1))
cpu = re.search(r"model name\s*:\s*(.*)", open("/proc/cpuinfo").read())
data["machine"] = {
    "cores": os.cpu_count(),
    "memory_mb": mem_kb // 1024,
    "cpu": cpu.group(1).strip() if cpu else "",
    "kernel": os.uname().release,
    "date": datetime.date.today().isoformat(),
}
json.dump(data, open(path, "w"), indent=2, sort_keys=True)
open(path, "a").write("\n")

def f(v, d=1):
    return "—" if v is None else f"{v:.{d}f}"

def p(key):
    v = data.get(key) or {}
    return f"{f(v.get('p50'))} / {f(v.get('p90'))} / {f(v.get('p99'))}"

m = data["machine"]
s = data.get("sections", {})
boot = data.get("unikernel_boot_to_marker_ms") or {}
rows = [
    "## Whole system (`scripts/bench.sh`)",
    "",
    f"Machine: {m['cores']} cores ({m['cpu']}), {m['memory_mb']} MB, Linux {m['kernel']}; {m['date']}.",
    "Everything runs under `canopy up` (release build) on this one machine; figures are",
    "regenerated by `bash scripts/bench.sh` (a section alone: `bash scripts/bench.sh latency`).",
    "",
    "| what | figure | reproduce |",
    "|---|---|---|",
    f"| submit → `RUNNING`, container (cached image), p50 / p90 / p99 ms over {s.get('latency', {}).get('runs', '—')} | {p('container_submit_to_running_ms')} | `bash scripts/bench.sh latency` |",
    f"| bare `ctr run -d` of the same image, same run, p50 / p90 / p99 ms | {p('ctr_run_baseline_ms')} | (same) |",
    f"| submit → `RUNNING`, wasm module, p50 / p90 / p99 ms | {p('wasm_submit_to_running_ms')} | (same) |",
    f"| for comparison, Docker swarm (docker.io 20.10, one node, its own dockerd): `docker service create` → task running, same image, host network, p50 / p90 / p99 ms over {s.get('swarm', {}).get('runs', '—')} | {p('swarm_service_to_running_ms')} | `bash scripts/bench.sh swarm` |",
    f"| submit → `RUNNING`, unikernel (tiny PVH kernel over HTTP, QEMU with {s.get('unikernel', {}).get('accel', '—')}), p50 / p90 / p99 ms over {s.get('unikernel', {}).get('runs', '—')} | {p('unikernel_submit_to_running_ms')} | `bash scripts/bench.sh unikernel` |",
    f"| QEMU spawned → the guest's marker on the console, p50 ms over {s.get('unikernel_boot', {}).get('runs', '—')}: tiny kernel KVM / TCG, Linux micro-VM TCG | {f(boot.get('tiny_kvm'))} / {f(boot.get('tiny_tcg'))} / {f(boot.get('linux_tcg'))} | (same) |",
    f"| placements per second: {s.get('placement', {}).get('instances', '—')} instances onto {s.get('placement', {}).get('virtual_workers', '—')} virtual workers until all `RUNNING` | {f(data.get('placements_per_second'), 0)} | `bash scripts/bench.sh placement` |",
    f"| placements per second through the root: {s.get('placement_root', {}).get('instances', '—')} instances onto {s.get('placement_root', {}).get('clusters', '—')} clusters × {s.get('placement_root', {}).get('virtual_workers', '—')} virtual workers until all `RUNNING` | {f(data.get('placements_per_second_root'), 0)} | `bash scripts/bench.sh placement_root` |",
    f"| at scale: {s.get('scale', {}).get('instances', '—')} instances submitted to {s.get('scale', {}).get('clusters', '—')} clusters × {s.get('scale', {}).get('virtual_workers', '—')} virtual workers (all `RUNNING` after {f(s.get('scale', {}).get('seconds_to_all_running'))} s; at most {f(s.get('scale', {}).get('most_running'), 0)} at once): root RSS MB / largest cluster RSS MB / `GET /api/services` p50 / p99 ms | {f((data.get('scale') or {}).get('root_rss_mb'))} / {f((data.get('scale') or {}).get('cluster_rss_mb'))} / {f((data.get('scale') or {}).get('get_services_p50_ms'))} / {f((data.get('scale') or {}).get('get_services_p99_ms'))} | `bash scripts/bench.sh scale` |",
    f"| worker killed → instance `RUNNING` on another, p50 ms over {s.get('failover', {}).get('runs', '—')} | {f((data.get('failover_to_running_ms') or {}).get('p50'), 0)} | `bash scripts/bench.sh failover` |",
    f"| worker's link cut (nothing closed; workers in network namespaces) → instance `RUNNING` on another, p50 / p90 / p99 ms over {s.get('failover_silent', {}).get('runs', '—')} | {p('failover_silent_ms')} | `bash scripts/bench.sh failover_silent` |",
]
o = s.get("overlay", {})
rows += [
    f"| overlay TCP throughput through an rr_ip across two workers ÷ the same workers direct (iperf3; {f(o.get('overlay_throughput_mbit_s'), 0)} / {f(o.get('direct_throughput_mbit_s'), 0)} Mbit/s) | {f(data.get('overlay_throughput_ratio'), 3)} | `bash scripts/bench.sh overlay` |",
    f"| overlay round trip through an rr_ip minus direct, p50 / p90 µs | {f((data.get('overlay_rtt_overhead_us') or {}).get('p50'), 0)} / {f((data.get('overlay_rtt_overhead_us') or {}).get('p90'), 0)} | (same) |",
    f"| instance `RUNNING` → reachable through its rr_ip from another worker, p50 / p90 / p99 ms over {o.get('update_runs', '—')} | {p('overlay_update_ms')} | (same) |",
]
rss = data.get("idle_rss_mb") or {}
cpu_ = data.get("idle_cpu_percent") or {}
for who in ("root", "cluster", "node"):
    label = "node engine (mean of 10)" if who == "node" else who
    rows.append(f"| idle {label} after {s.get('idle', {}).get('seconds', 60)} s with 10 workers: RSS MB / CPU % | {f(rss.get(who))} / {f(cpu_.get(who), 2)} | `bash scripts/bench.sh idle` |")
rows.append(f"| idle worker's MQTT connection, bytes both ways, mean of 10 workers: bits/s | {f(data.get('idle_worker_uplink_bits_per_second'), 0)} | `bash scripts/bench.sh idle` |")
legs = data.get("submit_spans_ms") or {}
if legs:
    rows += [
        "",
        "Where the milliseconds of submit → `RUNNING` go (span marks of the same `latency` run,",
        "`canopy_core::span`; the daemons' clocks are one machine's), p50 / p90 ms per leg:",
        "",
        "| leg | container | wasm |",
        "|---|---|---|",
    ]
    for c, w in zip(legs.get("container", []), legs.get("wasm", [])):
        rows.append(f"| {c['leg']} | {f(c['p50'], 2)} / {f(c['p90'], 2)} | {f(w['p50'], 2)} / {f(w['p90'], 2)} |")
table = "\n".join(rows) + "\n"

md_path = "docs/benchmarks.md"
md = open(md_path).read() if os.path.exists(md_path) else "# Benchmarks\n"
begin, end = "<!-- bench.sh:begin -->", "<!-- bench.sh:end -->"
block = f"{begin}\n{table}{end}"
if begin in md:
    md = md[: md.index(begin)] + block + md[md.index(end) + len(end):]
else:
    md = md.rstrip("\n") + "\n\n" + block + "\n"
open(md_path, "w").write(md)
print(table)
PY

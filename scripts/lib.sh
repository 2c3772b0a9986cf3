# Shared helpers for Canopy's scripts. Source it; do not run it.
# shellcheck shell=bash

step() { printf '\n==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Where caches (build output, Python venv) live, outside the clone so reruns are incremental.
CANOPY_CACHE_DIR=${CANOPY_CACHE_DIR:-/var/cache/canopy}

# apt_install PKG...: installs the Debian packages that are missing; runs `apt-get update` once.
_apt_updated=
apt_install() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && { note "Debian packages present: $*"; return 0; }
  [ "$(id -u)" -eq 0 ] || die "need root to install: ${missing[*]}"
  if [ -z "$_apt_updated" ]; then
    step "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    _apt_updated=1
  fi
  step "apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# ensure_qemu: QEMU 10 from bookworm-backports (the unikernel runtime's tests). Bookworm's own
# qemu-system-x86 (7.2) would replace the machine's qemu-utils 10 from backports; the backports
# build keeps both, and its microvm boots with qboot.
ensure_qemu() {
  local sources=/etc/apt/sources.list.d/bookworm-backports.sources
  if dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null | grep -q 'bpo12'; then
    note "QEMU from bookworm-backports present: $(dpkg-query -W -f='${Version}' qemu-system-x86)"
    return 0
  fi
  [ "$(id -u)" -eq 0 ] || die "need root to install qemu-system-x86 from bookworm-backports"
  if ! apt-cache policy 2>/dev/null | grep -q 'bookworm-backports'; then
    step "adding bookworm-backports to apt's sources ($sources)"
    printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' >"$sources"
    _apt_updated=
  fi
  if [ -z "$_apt_updated" ]; then
    step "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    _apt_updated=1
  fi
  step "apt-get install -t bookworm-backports qemu-system-x86"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    -t bookworm-backports qemu-system-x86
}

# ensure_rust: a Rust toolchain matching rust-toolchain.toml.
ensure_rust() {
  local want
  want=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' "$REPO/rust-toolchain.toml")
  if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
  if ! command -v rustup >/dev/null 2>&1; then
    command -v cargo >/dev/null 2>&1 || die "Rust $want is needed: install it with rustup (rustup.rs), then rerun"
    return 0
  fi
  if ! rustup toolchain list | grep -q "^$want-"; then
    # A machine whose stable toolchain is already $want can serve the pin without a download.
    local stable_version stable_dir triple
    stable_version=$(cd / && rustc +stable --version 2>/dev/null | awk '{print $2}')
    triple=$(cd / && rustc +stable -vV 2>/dev/null | sed -n 's/^host: //p')
    stable_dir="${RUSTUP_HOME:-$HOME/.rustup}/toolchains/stable-$triple"
    if [ "$stable_version" = "$want" ] && [ -d "$stable_dir" ]; then
      note "linking toolchain $want to the installed stable $stable_version"
      ln -sfn "$stable_dir" "${RUSTUP_HOME:-$HOME/.rustup}/toolchains/$want-$triple"
    else
      step "rustup toolchain install $want"
      rustup toolchain install "$want" --profile minimal --component rustfmt,clippy
    fi
  fi
}

# ensure_browser_test DIR: what the dashboard's browser test (e2e/tests/dashboard.rs) needs:
# Debian's Chromium, Node.js 20+ with npm (the machine's own; Debian's where there is none),
# and the npm packages pinned in DIR/package-lock.json (playwright-core, which drives that
# Chromium and downloads no browser of its own), installed afresh by `npm ci`.
ensure_browser_test() {
  local dir=$1 t0
  t0=$(date +%s)
  apt_install chromium
  note "chromium ready after $(( $(date +%s) - t0 )) s: $(/usr/bin/chromium --version 2>/dev/null)"
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    apt_install nodejs npm
  fi
  local major
  major=$(node -p 'process.versions.node.split(".")[0]')
  [ "$major" -ge 20 ] || die "the browser test's playwright-core needs Node.js 20 or later; this is $(node --version)"
  step "npm ci in $dir (node $(node --version), npm $(npm --version))"
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
}

# free_port: an unused TCP port on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# wait_port PORT SECONDS NAME: waits until something accepts connections on 127.0.0.1:PORT.
wait_port() {
  local port=$1 secs=$2 name=$3 i
  for ((i = 0; i < secs * 10; i++)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  printf 'error: %s did not start listening on 127.0.0.1:%s within %ss\n' "$name" "$port" "$secs" >&2
  return 1
}

# Processes started by a script, stopped by PID on exit (never by name).
_started_pids=()
remember_pid() { _started_pids+=("$1"); }
stop_started() {
  local pid
  for pid in "${_started_pids[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
}

# ensure_containerd LOG_FILE: containerd answering on /run/containerd/containerd.sock. One that
# already runs (systemd's, say) is used; otherwise one is started here and stopped on exit.
CONTAINERD_SOCKET=/run/containerd/containerd.sock
ensure_containerd() {
  local log=$1 i
  if ctr --address "$CONTAINERD_SOCKET" version >/dev/null 2>&1; then
    note "containerd already answers on $CONTAINERD_SOCKET"
    return 0
  fi
  [ "$(id -u)" -eq 0 ] || die "containerd is not running and starting it needs root"
  containerd >>"$log" 2>&1 &
  local pid=$!
  remember_pid "$pid"
  for ((i = 0; i < 300; i++)); do
    if ctr --address "$CONTAINERD_SOCKET" version >/dev/null 2>&1; then
      note "started containerd (pid $pid), log $log"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; die "containerd exited"; }
    sleep 0.1
  done
  die "containerd did not answer within 30 s (log: $log)"
}

# --- A private dockerd (Debian's docker.io 20.10) ----------------------------------------------
# One dockerd with its own --data-root, --exec-root, socket and pid file under a directory of
# the caller's, stopped by its pid (never by name); afterwards the machine is as before:
#
#   dockerd_before DIR          records iptables, ip_forward, docker0/docker_gwbridge and what
#                               dockerd leaves beside its directories (call first, as root)
#   dockerd_start DIR ARG...    starts $DOCKERD with ARG... (exports DOCKER_HOST, sets
#                               DOCKERD_PID; log DIR/dockerd.log); waits until it answers
#   dockerd_stop                stops it by pid (up to 20 s)
#   dockerd_restore             removes links it made, restores ip_forward, unmounts what is
#                               left under DIR, removes its trust key, /run/docker and the
#                               containerd namespace moby if they were not there before
#   dockerd_check               dies unless iptables, ip_forward, links and leftovers are as
#                               dockerd_before found them
#
# dockerd_before sets $DOCKERD and $DOCKER, if unset, to Debian's /usr/sbin/dockerd and
# /usr/bin/docker (not a /usr/local/bin/docker another install may put first in PATH).
DOCKERD_PID=''
_dockerd_dir=''
_dockerd_links=(docker0 docker_gwbridge)
_dockerd_tables() { iptables-save | sed -e '/^#/d' -e 's/\[[0-9]*:[0-9]*\]//'; }
# What dockerd leaves beside its own directories: its trust key, a plugin directory, the
# containerd namespace it uses.
_dockerd_leftovers() {
  [ -e /etc/docker/key.json ] && echo /etc/docker/key.json
  [ -e /run/docker ] && echo /run/docker
  ctr namespaces ls -q 2>/dev/null | grep -qx moby && echo moby
  true
}
_dockerd_links_present() {
  local l
  for l in "${_dockerd_links[@]}"; do ip link show "$l" >/dev/null 2>&1 && echo "$l"; done
  true
}
# Mount points under DIR (dockerd bind-mounts its data root and network namespaces there).
_dockerd_mounts() { awk -v d="$_dockerd_dir/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo; }

dockerd_before() {
  _dockerd_dir=$1
  DOCKERD=${DOCKERD:-/usr/sbin/dockerd}
  DOCKER=${DOCKER:-/usr/bin/docker}
  [ "$(id -u)" -eq 0 ] || die "starting dockerd needs root"
  _dockerd_tables >"$_dockerd_dir/iptables.before"
  cat /proc/sys/net/ipv4/ip_forward >"$_dockerd_dir/ip_forward.before"
  _dockerd_links_present >"$_dockerd_dir/links.before"
  _dockerd_leftovers >"$_dockerd_dir/leftovers.before"
}

dockerd_start() {
  local dir=$1 i
  shift
  export DOCKER_HOST=unix://$dir/docker.sock
  "$DOCKERD" --data-root "$dir/data" --exec-root "$dir/exec" -H "$DOCKER_HOST" \
    --pidfile "$dir/docker.pid" "$@" >"$dir/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  for ((i = 0; i < 300; i++)); do
    "$DOCKER" version >/dev/null 2>&1 && break
    kill -0 "$DOCKERD_PID" 2>/dev/null || die "dockerd exited: $(tail -n 5 "$dir/dockerd.log")"
    sleep 0.1
  done
  "$DOCKER" version >/dev/null 2>&1 || die "dockerd did not answer within 30 s"
  note "dockerd pid $DOCKERD_PID"
}

# dockerd_running: whether the dockerd started here still runs.
dockerd_running() { [ -n "$DOCKERD_PID" ] && kill -0 "$DOCKERD_PID" 2>/dev/null; }

dockerd_stop() {
  local i
  if dockerd_running; then
    kill "$DOCKERD_PID" 2>/dev/null || true
    for ((i = 0; i < 200; i++)); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.1; done
  fi
  DOCKERD_PID=''
}

dockerd_restore() {
  [ -n "$_dockerd_dir" ] && [ -e "$_dockerd_dir/leftovers.before" ] || return 0
  local l m
  for l in $(_dockerd_links_present); do
    grep -qx "$l" "$_dockerd_dir/links.before" || ip link del "$l" 2>/dev/null || true
  done
  cat "$_dockerd_dir/ip_forward.before" >/proc/sys/net/ipv4/ip_forward
  for m in $(_dockerd_mounts | sort -r); do umount -l "$m" 2>/dev/null || true; done
  grep -qx /etc/docker/key.json "$_dockerd_dir/leftovers.before" || rm -f /etc/docker/key.json
  grep -qx /run/docker "$_dockerd_dir/leftovers.before" ||
    rmdir /run/docker/plugins /run/docker 2>/dev/null || true
  grep -qx moby "$_dockerd_dir/leftovers.before" || ctr namespaces rm moby >/dev/null 2>&1 || true
}

dockerd_check() {
  _dockerd_tables | diff -u "$_dockerd_dir/iptables.before" - || die "iptables differ from before dockerd"
  [ "$(cat /proc/sys/net/ipv4/ip_forward)" = "$(cat "$_dockerd_dir/ip_forward.before")" ] ||
    die "ip_forward changed"
  _dockerd_links_present | diff -u "$_dockerd_dir/links.before" - || die "dockerd left a bridge"
  [ -z "$(_dockerd_mounts)" ] || die "mounts left under $_dockerd_dir: $(_dockerd_mounts)"
  _dockerd_leftovers | diff -u "$_dockerd_dir/leftovers.before" - ||
    die "dockerd left files or a containerd namespace"
}

#!/usr/bin/env bash
# Builds small OCI images from Debian's busybox-static, with no Docker and no network, and
# pushes them to a registry with curl. Used by the tests, the benchmarks and the quickstart.
#
#   scripts/busybox-image.sh build OUT_DIR NAME:TAG [INDEX_HTML]
#       OUT_DIR/oci.tar     oci-archive (gzip layer), for `oci-archive:/abs/OUT_DIR/oci.tar`
#       OUT_DIR/docker.tar  docker-archive (`docker save` layout, plain tar layer)
#       OUT_DIR/layout/     the OCI layout the archives were made from
#     The image runs `sh` by default; its /bin has busybox applets (sh, echo, sleep, cat,
#     httpd, ...) and /www/index.html (INDEX_HTML, or a default page).
#
#   scripts/busybox-image.sh push OUT_DIR REGISTRY_HOST:PORT REPO:TAG
#       Pushes OUT_DIR/layout over plain HTTP (the OCI distribution API).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$REPO/scripts/lib.sh"

APPLETS=(sh ash echo sleep cat ls env true false mkdir rm hostname httpd wget nc id ps kill timeout nslookup
  printf test seq head tail grep)

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

build() {
  local out=$1 name=$2 page=${3:-}
  [ -x /bin/busybox ] || die "busybox-static is not installed (apt-get install busybox-static)"
  file -b /bin/busybox 2>/dev/null | grep -q 'statically linked' ||
    ldd /bin/busybox 2>&1 | grep -q 'not a dynamic' || die "/bin/busybox is not the static build"
  local work
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  local root="$work/rootfs"
  mkdir -p "$root"/{bin,etc,tmp,proc,sys,dev,run,www}
  cp /bin/busybox "$root/bin/busybox"
  local a
  for a in "${APPLETS[@]}"; do ln -s busybox "$root/bin/$a"; done
  if [ -n "$page" ]; then cp "$page" "$root/www/index.html"; else
    printf '<html><body><h1>Hello from Canopy</h1></body></html>\n' >"$root/www/index.html"
  fi
  echo 'root:x:0:0:root:/:/bin/sh' >"$root/etc/passwd"
  echo 'root:x:0:' >"$root/etc/group"
  chmod 1777 "$root/tmp"

  # One layer, reproducible: sorted names, fixed owner and time.
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$root" -cf "$work/layer.tar" .
  gzip -n -9 -c "$work/layer.tar" >"$work/layer.tar.gz"
  local diff_id gz_digest arch
  diff_id=$(sha_of "$work/layer.tar")
  gz_digest=$(sha_of "$work/layer.tar.gz")
  arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)
  printf '{"architecture":"%s","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":["sh"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$arch" "$diff_id" >"$work/config.json"
  local config_digest config_size gz_size
  config_digest=$(sha_of "$work/config.json")
  config_size=$(stat -c %s "$work/config.json")
  gz_size=$(stat -c %s "$work/layer.tar.gz")
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
    "$config_digest" "$config_size" "$gz_digest" "$gz_size" >"$work/manifest.json"
  local manifest_digest manifest_size tag=${name##*:}
  manifest_digest=$(sha_of "$work/manifest.json")
  manifest_size=$(stat -c %s "$work/manifest.json")

  rm -rf "$out/layout"
  mkdir -p "$out/layout/blobs/sha256"
  cp "$work/layer.tar.gz" "$out/layout/blobs/sha256/$gz_digest"
  cp "$work/config.json" "$out/layout/blobs/sha256/$config_digest"
  cp "$work/manifest.json" "$out/layout/blobs/sha256/$manifest_digest"
  printf '{"imageLayoutVersion":"1.0.0"}' >"$out/layout/oci-layout"
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "$manifest_digest" "$manifest_size" "$name" "$tag" >"$out/layout/index.json"
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$out/layout" -cf "$out/oci.tar" .

  # docker save layout: manifest.json, <config>.json, <id>/layer.tar (uncompressed).
  local d="$work/docker"
  mkdir -p "$d/$diff_id"
  cp "$work/layer.tar" "$d/$diff_id/layer.tar"
  cp "$work/config.json" "$d/$config_digest.json"
  printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]' \
    "$config_digest" "$name" "$diff_id" >"$d/manifest.json"
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$d" -cf "$out/docker.tar" .
  note "built $name: $out/oci.tar, $out/docker.tar (manifest sha256:$manifest_digest)"
}

push() {
  local out=$1 registry=$2 ref=$3
  local repo=${ref%:*} tag=${ref##*:} base="http://$registry/v2/${ref%:*}"
  [ "$repo" != "$ref" ] || tag=latest
  local manifest_digest
  manifest_digest=$(sed -n 's/.*"digest":"sha256:\([0-9a-f]*\)".*/\1/p' "$out/layout/index.json")
  local blob digest location
  for blob in "$out"/layout/blobs/sha256/*; do
    digest=$(basename "$blob")
    [ "$digest" = "$manifest_digest" ] && continue
    if curl -fsS -o /dev/null -I "$base/blobs/sha256:$digest" 2>/dev/null; then continue; fi
    location=$(curl -fsS -X POST -D - -o /dev/null "$base/blobs/uploads/" |
      tr -d '\r' | sed -n 's/^[Ll]ocation: //p')
    [ -n "$location" ] || die "registry $registry gave no upload location"
    case "$location" in http*) ;; *) location="http://$registry$location" ;; esac
    case "$location" in *\?*) location="$location&digest=sha256:$digest" ;; *) location="$location?digest=sha256:$digest" ;; esac
    curl -fsS -X PUT -H 'Content-Type: application/octet-stream' --data-binary "@$blob" "$location" >/dev/null
  done
  curl -fsS -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
    --data-binary "@$out/layout/blobs/sha256/$manifest_digest" "$base/manifests/$tag" >/dev/null
  note "pushed $registry/$repo:$tag"
}

case "${1:-}" in
  build) [ $# -ge 3 ] || die "usage: $0 build OUT_DIR NAME:TAG [INDEX_HTML]"; mkdir -p "$2"; build "$2" "$3" "${4:-}" ;;
  push) [ $# -eq 4 ] || die "usage: $0 push OUT_DIR REGISTRY_HOST:PORT REPO:TAG"; push "$2" "$3" "$4" ;;
  *) die "usage: $0 build OUT_DIR NAME:TAG [INDEX_HTML] | push OUT_DIR REGISTRY_HOST:PORT REPO:TAG" ;;
esac

#!/usr/bin/env bash
# The project's container images, built without a Docker engine.
#
#   scripts/images.sh build         every image into _output/images/*.tar (the local node imports them at start)
#   scripts/images.sh binary P OUT  P's fully static binary (webserver, consumer, adapter)
#   scripts/images.sh rootfs P DIR  P's image filesystem laid out in DIR (the Dockerfile uses this too)
#   scripts/images.sh version       the version images are tagged with (git describe)
#
# Each image: one static binary (the Kafka client's bundled librdkafka
# linked against musl), CA certificates, passwd/group with the non-root
# user 65532, no shell; entrypoint the program; OCI labels for source,
# revision and version; tagged :dev (what the manifests name) and
# :<version>. Building twice from one commit gives the same digests.
# metrics-server and kube-state-metrics, built from source into the tools
# cache, get images under their upstream names and versions.
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT" || exit 1

OUT="${REPO_ROOT}/_output/images"
SOURCE_URL="https://github.com/purchase-system/purchase-system"

version() { git describe --tags --always --dirty 2>/dev/null || echo dev; }

# The commit's time: every file and the image config carry it, so a
# rebuild is byte for byte the same.
created() { git log -1 --format=%ct 2>/dev/null || echo 0; }

ensure_musl() {
  command -v musl-gcc >/dev/null && return 0
  command -v apt-get >/dev/null || die "musl-gcc is needed for static binaries: install musl-tools"
  log "installing musl-tools (static binaries with the Kafka client)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q musl-tools >/dev/null || die "apt-get install musl-tools failed"
}

binary() {
  local program="$1" out="$2"
  if [ "$program" = adapter ]; then
    # The adapter's Kafka client (franz-go) is pure Go: no C toolchain.
    CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags "-s -w" -o "$out" "./${program}/cmd/${program}"
    return
  fi
  ensure_musl
  # The Kafka client's bundled librdkafka has a musl build (-tags musl);
  # linked externally and statically the program needs no libc at all.
  CC=musl-gcc CGO_ENABLED=1 go build -trimpath -buildvcs=false -tags musl \
    -ldflags "-s -w -linkmode external -extldflags -static" \
    -o "$out" "./${program}/cmd/${program}"
  file "$out" 2>/dev/null | grep -q "statically linked" || die "$out is not statically linked"
}

# rootfs PROGRAM DIR [BINARY]: the image's files.
rootfs() {
  local program="$1" dir="$2" bin="${3:-}"
  rm -rf "$dir"; mkdir -p "$dir/usr/local/bin" "$dir/etc/ssl/certs" "$dir/tmp"
  chmod 1777 "$dir/tmp"
  if [[ -n "$bin" ]]; then cp "$bin" "$dir/usr/local/bin/$program"; else binary "$program" "$dir/usr/local/bin/$program"; fi
  chmod 0755 "$dir/usr/local/bin/$program"
  cp /etc/ssl/certs/ca-certificates.crt "$dir/etc/ssl/certs/ca-certificates.crt"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$dir/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$dir/etc/group"
}

# image NAME ARCHIVE ROOT ENTRYPOINT USER [--port P]... [--tag T]...
image() {
  local name="$1" archive="$2" root="$3" entry="$4" user="$5"; shift 5
  "$BIN/imagebuild" --root "$root" --out "$archive" --user "$user" --entrypoint "$entry" \
    --created "$(created)" \
    --label "org.opencontainers.image.source=${SOURCE_URL}" \
    --label "org.opencontainers.image.revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
    --label "org.opencontainers.image.version=$(version)" \
    --label "org.opencontainers.image.title=${name}" "$@"
}

build() {
  mkdir -p "$OUT" "$OUT/rootfs"
  go build -o "$BIN/" ./images/cmd/imagebuild
  local v; v="$(version)"
  log "images ${v}: static binaries (first time about 1 min each) and archives in ${OUT}"
  local p port
  for p in webserver consumer adapter; do
    case "$p" in webserver) port=8080 ;; consumer) port=8081 ;; adapter) port=6443 ;; esac
    rootfs "$p" "$OUT/rootfs/$p"
    image "purchase-system/$p" "$OUT/$p.tar" "$OUT/rootfs/$p" "/usr/local/bin/$p" 65532:65532 \
      --port "${port}/tcp" --tag "purchase-system/$p:dev" --tag "purchase-system/$p:${v}"
  done
  scripts/tools.sh ensure metrics-server kube-state-metrics
  local ms ksm
  ms="$(scripts/tools.sh path metrics-server)"
  ksm="$(scripts/tools.sh path kube-state-metrics)"
  upstream "$ms" metrics-server "registry.k8s.io/metrics-server/metrics-server:${METRICS_SERVER_VERSION}" 10250
  upstream "$ksm" kube-state-metrics "registry.k8s.io/kube-state-metrics/kube-state-metrics:${KUBE_STATE_METRICS_VERSION}" 8080 \
    --entrypoint --port=8080 --entrypoint --telemetry-port=8081
  scripts/tools.sh ensure coredns
  upstream "$(scripts/tools.sh path coredns)" coredns "registry.k8s.io/coredns/coredns:${COREDNS_VERSION}" 53 --user 65532:65532
  # Prometheus for clusters that have none (manifests/monitoring): the
  # binary built from source, where upstream's image has it.
  scripts/tools.sh ensure prometheus
  upstream "$(scripts/tools.sh path prometheus)" prometheus "quay.io/prometheus/prometheus:${PROMETHEUS_IMAGE_TAG}" 9090 --bin-dir /bin
  scripts/tools.sh ensure local-path-provisioner busybox
  upstream "$(scripts/tools.sh path local-path-provisioner)" local-path-provisioner \
    "docker.io/rancher/local-path-provisioner:${LOCAL_PATH_PROVISIONER_VERSION}" 0 --bin-dir /usr/bin
  busybox
  pause
  nodeprobe "$v"
  postgres
  kafka
  if with keda; then keda; fi
}

# unchanged ARCHIVE INPUT...: true when ARCHIVE was built from these very
# inputs (their checksums are kept beside it); the two images below are
# large (a JVM, PostgreSQL) and packing them takes tens of seconds.
unchanged() {
  local archive="$1"; shift
  local sums; sums="$(sha256sum "$@" "${BASH_SOURCE[0]}" | cut -d' ' -f1 | sha256sum | cut -d' ' -f1)"
  if [[ -f "$archive" && "$(cat "$archive.inputs" 2>/dev/null)" == "$sums" ]]; then
    echo "$archive $(cat "$archive.digest") (unchanged)"
    return 0
  fi
  echo "$sums" >"$archive.inputs.new"
  return 1
}

# built ARCHIVE: records the digest imagebuild printed (in LINE) beside
# ARCHIVE, for the next unchanged().
built() {
  local archive="$1" line="$2"
  echo "$line"
  echo "$line" | awk '{print $2}' >"$archive.digest"
  mv "$archive.inputs.new" "$archive.inputs"
}

# static_entrypoint NAME DIR: images/cmd/NAME, static, into DIR.
static_entrypoint() {
  CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags "-s -w" -o "$2" "./images/cmd/$1"
}

# postgres: PostgreSQL 15 from Debian's packages (images/debian/postgres.lock)
# under the official image's name and contract (images/cmd/postgres-entrypoint).
# It keeps dash as /bin/sh: initdb and the server start programs through
# popen() and system(). User postgres, 999:999, as upstream's.
postgres() {
  local dir="$OUT/rootfs/postgres" archive="$OUT/postgres.tar" entry="$OUT/rootfs/postgres-entrypoint"
  local lock=images/debian/postgres.lock pg=/usr/lib/postgresql/15
  scripts/debs.sh fetch "$lock"
  static_entrypoint postgres-entrypoint "$entry"
  unchanged "$archive" "$lock" "$entry" && return 0
  rm -rf "$dir"
  scripts/debs.sh unpack "$lock" "$dir"
  # The JIT (LLVM) and the translations are left out: postgres runs
  # without them (no llvmjit.so: jit is off).
  rm -rf "$dir$pg/lib/bitcode" "$dir$pg"/lib/llvmjit* "$dir/usr/share/locale"
  mkdir -p "$dir/usr/local/bin" "$dir/var/lib/postgresql/data" "$dir/var/run/postgresql" "$dir/tmp"
  chmod 1777 "$dir/tmp" "$dir/var/lib/postgresql/data" "$dir/var/run/postgresql"
  cp "$entry" "$dir/usr/local/bin/docker-entrypoint"
  local p; for p in postgres initdb pg_isready pg_ctl; do ln -s "$pg/bin/$p" "$dir/usr/local/bin/$p"; done
  printf 'root:x:0:0:root:/root:/usr/sbin/nologin
postgres:x:999:999:PostgreSQL administrator:/var/lib/postgresql:/bin/sh
' >"$dir/etc/passwd"
  printf 'root:x:0:
postgres:x:999:
' >"$dir/etc/group"
  local programs=() f
  for f in "$dir$pg"/bin/{postgres,initdb,pg_isready,pg_ctl} "$dir$pg"/lib/*.so "$dir/bin/dash"; do programs+=(--program "${f#"$dir"}"); done
  built "$archive" "$("$BIN/imagebuild" --root "$dir" --out "$archive" --user 999:999 --entrypoint /usr/local/bin/docker-entrypoint \
    --created 0 --port 5432/tcp --env PGDATA=/var/lib/postgresql/data "${programs[@]}" \
    --tag "docker.io/library/postgres:15" --label "org.opencontainers.image.title=postgres" \
    --label "org.opencontainers.image.version=$(awk '$1 == "postgresql-15" {print $2}' "$lock")")"
}

# kafka: Apache Kafka (the Maven Central jars of the tools cache) on
# Debian's OpenJDK 17 (images/debian/kafka.lock), under apache/kafka's name
# and contract (images/cmd/kafka-entrypoint). No shell. User appuser,
# 1000:1000, as upstream's.
kafka() {
  local dir="$OUT/rootfs/kafka" archive="$OUT/kafka.tar" entry="$OUT/rootfs/kafka-entrypoint"
  local lock=images/debian/kafka.lock jdk=/usr/lib/jvm/java-17-openjdk-amd64
  scripts/debs.sh fetch "$lock"
  scripts/tools.sh ensure kafka
  static_entrypoint kafka-entrypoint "$entry"
  local jars; jars="$(scripts/tools.sh path kafka)/libs"
  unchanged "$archive" "$lock" "$entry" "$jars"/*.jar && return 0
  rm -rf "$dir"
  scripts/debs.sh unpack "$lock" "$dir"
  mkdir -p "$dir/opt/kafka/libs" "$dir/opt/kafka/config" "$dir/opt/kafka/logs" "$dir/var/lib/kafka/data" \
    "$dir/etc/kafka/docker" "$dir/usr/local/bin" "$dir/tmp"
  chmod 1777 "$dir/tmp" "$dir/opt/kafka/config" "$dir/opt/kafka/logs" "$dir/var/lib/kafka/data"
  cp "$jars"/*.jar "$dir/opt/kafka/libs/"
  cp "$entry" "$dir/usr/local/bin/kafka-entrypoint"
  printf '%s\n' 'rootLogger.level=INFO' 'rootLogger.appenderRef.stdout.ref=stdout' \
    'appender.stdout.type=Console' 'appender.stdout.name=stdout' \
    'appender.stdout.layout.type=PatternLayout' 'appender.stdout.layout.pattern=[%d] %p %m (%c)%n' \
    >"$dir/etc/kafka/docker/log4j2.properties"
  printf 'root:x:0:0:root:/root:/usr/sbin/nologin\nappuser:x:1000:1000::/home/appuser:/usr/sbin/nologin\n' >"$dir/etc/passwd"
  printf 'root:x:0:\nappuser:x:1000:\n' >"$dir/etc/group"
  local programs=(--program "$jdk/bin/java" --program "$jdk/lib/server/libjvm.so") l
  for l in attach extnet instrument j2gss jaas java jimage jli jsig jsvml management management_agent management_ext net nio prefs rmi verify zip syslookup; do
    programs+=(--program "$jdk/lib/lib$l.so")
  done
  built "$archive" "$("$BIN/imagebuild" --root "$dir" --out "$archive" --user 1000:1000 --entrypoint /usr/local/bin/kafka-entrypoint \
    --created 0 --port 9092/tcp --workdir /opt/kafka "${programs[@]}" \
    --tag "docker.io/apache/kafka:${KAFKA_VERSION}" --label "org.opencontainers.image.title=kafka" \
    --label "org.opencontainers.image.version=${KAFKA_VERSION}")"
}

# keda: KEDA's operator and metrics API server (WITH=keda: make run
# WITH=keda and make test), built from source into the tools cache, under
# KEDA's image names and at the paths KEDA's Deployments run (/keda,
# /keda-adapter). About 300 MB of binaries: packed again only when they
# changed.
keda() {
  scripts/tools.sh ensure keda
  local dir p ref
  dir="$(scripts/tools.sh path keda)"
  for p in keda keda-adapter; do
    ref="ghcr.io/kedacore/${p/keda-adapter/keda-metrics-apiserver}:${KEDA_VERSION#v}"
    unchanged "$OUT/$p.tar" "$dir/$p" && continue
    built "$OUT/$p.tar" "$(upstream "$dir/$p" "$p" "$ref" 0 --label "org.opencontainers.image.version=${KEDA_VERSION}")"
  done
}

# busybox_tag: the upstream version of Debian's package (1:1.35.0-4+deb12u1
# → 1.35.0; a tag may not hold "+" or ":").
busybox_tag() { local v="${BUSYBOX_DEB_VERSION#*:}"; echo "${v%%-*}"; }

# busybox: the storage provisioner's helper pods (mkdir and rm of volume
# directories on the node), Debian's static busybox with the applets the
# helper scripts use; runs as root, as upstream's busybox image does.
busybox() {
  local dir="$OUT/rootfs/busybox" a
  rm -rf "$dir"; mkdir -p "$dir/bin" "$dir/tmp"; chmod 1777 "$dir/tmp"
  cp "$(scripts/tools.sh path busybox)" "$dir/bin/busybox"; chmod 0755 "$dir/bin/busybox"
  for a in sh mkdir rm cat echo ls sleep test; do ln -s busybox "$dir/bin/$a"; done
  "$BIN/imagebuild" --root "$dir" --out "$OUT/busybox.tar" --user 0:0 --entrypoint /bin/sh \
    --created 0 --tag "docker.io/library/busybox:$(busybox_tag)" --label "org.opencontainers.image.title=busybox"
}

# nodeprobe: the node tests' image. Like Debian's and Alpine's images it
# has /var/run as a symlink to /run, below which the kubelet mounts the
# service account token.
nodeprobe() {
  local dir="$OUT/rootfs/nodeprobe"
  rm -rf "$dir"; mkdir -p "$dir/usr/local/bin" "$dir/run" "$dir/var" "$dir/tmp" "$dir/etc"
  chmod 1777 "$dir/tmp"
  ln -s /run "$dir/var/run"
  CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags "-s -w" -o "$dir/usr/local/bin/nodeprobe" ./devcluster/cmd/nodeprobe
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$dir/etc/passwd"
  image purchase-system/nodeprobe "$OUT/nodeprobe.tar" "$dir" /usr/local/bin/nodeprobe 65532:65532 \
    --tag "purchase-system/nodeprobe:dev" --tag "purchase-system/nodeprobe:$1"
}

# pause: the pod sandbox image (images/pause/pause.c, static with musl),
# under the name containerd's configuration pins.
pause() {
  ensure_musl
  local dir="$OUT/rootfs/pause"
  rm -rf "$dir"; mkdir -p "$dir"
  musl-gcc -static -Os -s -Wall -Wextra -Werror -o "$dir/pause" images/pause/pause.c
  chmod 0755 "$dir/pause"
  "$BIN/imagebuild" --root "$dir" --out "$OUT/pause.tar" --user 65535:65535 --entrypoint /pause \
    --created 0 --tag "registry.k8s.io/pause:3.10.2" --label "org.opencontainers.image.title=pause"
}

# upstream BINARY NAME REF PORT [--bin-dir DIR] [imagebuild args]: an
# upstream program at its upstream path (/NAME, or DIR/NAME), as its own
# images lay it out, running as 65534 (nobody), upstream's user; PORT 0
# exposes none.
upstream() {
  local bin="$1" prog="$2" ref="$3" port="$4"; shift 4
  local dir="$OUT/rootfs/$prog" bindir=""
  if [[ "${1:-}" == --bin-dir ]]; then bindir="$2"; shift 2; fi
  rm -rf "$dir"; mkdir -p "$dir/etc/ssl/certs" "$dir/tmp" "$dir$bindir"; chmod 1777 "$dir/tmp"
  cp "$bin" "$dir$bindir/$prog"; chmod 0755 "$dir$bindir/$prog"
  cp /etc/ssl/certs/ca-certificates.crt "$dir/etc/ssl/certs/"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n' >"$dir/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$dir/etc/group"
  local ports=(); [[ "$port" != 0 ]] && ports=(--port "${port}/tcp")
  "$BIN/imagebuild" --root "$dir" --out "$OUT/$prog.tar" --user 65534:65534 --entrypoint "$bindir/$prog" "$@" \
    --created 0 "${ports[@]}" --tag "$ref" --label "org.opencontainers.image.title=${prog}"
}

BIN="${REPO_ROOT}/bin"
case "${1:-}" in
  build) build ;;
  binary) binary "$2" "$3" ;;
  rootfs) rootfs "$2" "$3" "${4:-}" ;;
  version) version ;;
  *) die "usage: $0 build | binary PROGRAM OUT | rootfs PROGRAM DIR | version" ;;
esac

#!/usr/bin/env bash
# Docker for what needs it here (the kind path; the test that the local
# Kubernetes lives beside Docker). A dockerd that already runs is used as
# it is. When none runs, this checkout starts one of its own (Debian's
# docker.io, installed when no dockerd is on PATH) and stops it again,
# giving back what Docker changed on the host (bin/devcluster docker).
#
#   scripts/docker.sh install  Debian's docker.io, when no dockerd is on PATH (up does this too)
#   scripts/docker.sh up     a dockerd runs afterwards: the one already running, or this checkout's
#   scripts/docker.sh down   stop this checkout's dockerd, if it started one (never another)
#   scripts/docker.sh host   the DOCKER_HOST to use ("" for Docker's default)
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT" || exit 1

DOCKER_STATE="${STATE_DIR}/docker"

flags() {
  local dockerd; dockerd="$(command -v dockerd || echo /usr/bin/dockerd)"
  local containerd; containerd="$(dirname "$dockerd")/containerd"
  [[ -x "$containerd" ]] || containerd="$(command -v containerd || echo /usr/bin/containerd)"
  echo "--state=${DOCKER_STATE}"
  echo "--dockerd=${dockerd}"
  echo "--containerd=${containerd}"
  echo "--runc=$(command -v runc || echo /usr/sbin/runc)"
  echo "--runc-bounded=${REPO_ROOT}/bin/runc-bounded"
}

install() {
  pgrep -x dockerd >/dev/null && return 0
  command -v dockerd >/dev/null && return 0
  log "installing Debian's docker.io (no dockerd on PATH)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends docker.io >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends docker.io >/dev/null; } \
    || die "apt-get install docker.io failed"
}

case "${1:-}" in
  install) install ;;
  up)
    [[ $(id -u) == 0 ]] || die "starting a dockerd needs root"
    [[ -x bin/devcluster ]] || die "bin/devcluster is missing: run make build"
    install
    mapfile -t f < <(flags)
    bin/devcluster docker up "${f[@]}"
    ;;
  down)
    [[ -x bin/devcluster ]] || die "bin/devcluster is missing: run make build"
    mapfile -t f < <(flags)
    bin/devcluster docker down "${f[@]}"
    ;;
  host)
    mapfile -t f < <(flags)
    bin/devcluster docker host "${f[@]}"
    ;;
  *) die "usage: $0 install|up|down|host" ;;
esac

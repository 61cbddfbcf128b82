#!/usr/bin/env bash
# Debian packages for the images of third-party parts (PostgreSQL, Kafka's
# Java runtime), the way distroless images are made: each image's packages
# are pinned by version and checksum in images/debian/<image>.lock, fetched
# once through apt into the tools cache, and unpacked without their
# maintainer scripts into the image's root. The same cached packages give
# the same image digest.
#
#   scripts/debs.sh fetch LOCK         every package of LOCK in the cache, checksums verified
#   scripts/debs.sh unpack LOCK DIR    LOCK's packages unpacked into DIR
#   scripts/debs.sh lock LOCK PKG...   write LOCK: PKG... at the versions apt offers now, with checksums
#
# A lock names exact versions; Debian's mirrors keep only a release's newest
# point version, so once a lock's version is gone from the mirror a machine
# without it in the cache fails with what to do (write the lock again).
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT" || exit 1

DEBS="${TOOLS_DIR}/debs"

deb_path() { echo "${DEBS}/${1}_${2//:/%3a}_amd64.deb"; }

need_apt() {
  command -v apt-get >/dev/null || die "Debian packages need apt-get"
  command -v dpkg-deb >/dev/null || die "Debian packages need dpkg-deb"
}

# download NAME VERSION: the .deb into the cache (apt checks its signature
# chain through the release's signed index).
download() {
  local name="$1" version="$2" tmp
  tmp="$(mktemp -d)"
  if ! (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "${name}=${version}" >/dev/null 2>"$tmp/err"); then
    cat "$tmp/err" >&2; rm -rf "$tmp"
    return 1
  fi
  mkdir -p "$DEBS"
  mv "$tmp"/*.deb "$(deb_path "$name" "$version")"
  rm -rf "$tmp"
}

fetch() {
  local lock="$1" name version sum path n=0 got=0 relock
  [[ -f "$lock" ]] || die "no lock file $lock"
  need_apt
  relock="scripts/debs.sh lock $lock $(lock_names "$lock")"
  while read -r name version sum; do
    [[ -z "$name" || "$name" == \#* ]] && continue
    n=$((n + 1))
    path="$(deb_path "$name" "$version")"
    if [[ ! -f "$path" ]]; then
      got=$((got + 1))
      download "$name" "$version" || die "apt-get download ${name}=${version} failed: the mirror may have moved to a newer point release; run 'apt-get update', then '${relock}' and commit the new lock"
    fi
    echo "${sum}  ${path}" | sha256sum --quiet -c - >/dev/null 2>&1 \
      || die "${path}: sha256 is not ${sum} from ${lock} (delete the file to fetch it again)"
  done <"$lock"
  [[ $got -eq 0 ]] || log "debs: fetched ${got} of ${n} packages of $(basename "$lock") into ${DEBS}"
}

lock_names() { awk '!/^#/ && NF {printf "%s%s", sep, $1; sep=" "}' "$1"; }

unpack() {
  local lock="$1" dir="$2" name version sum
  fetch "$lock"
  mkdir -p "$dir"
  while read -r name version sum; do
    [[ -z "$name" || "$name" == \#* ]] && continue
    dpkg-deb -x "$(deb_path "$name" "$version")" "$dir"
  done <"$lock"
  # Documentation is not part of what runs (the copyright files stay).
  find "$dir/usr/share/doc" -mindepth 2 ! -name copyright -delete 2>/dev/null || true
  rm -rf "$dir/usr/share/man" "$dir/usr/share/info" "$dir/usr/share/lintian"
}

lock() {
  local lock="$1" name version path; shift
  [[ $# -gt 0 ]] || die "usage: $0 lock LOCK PKG..."
  need_apt
  {
    echo "# $(basename "$lock" .lock)'s Debian packages: name, version, sha256 of the .deb."
    echo "# Written by: scripts/debs.sh lock $lock $*"
    for name in "$@"; do
      version="$(apt-cache policy "$name" | awk '/Candidate:/ {print $2}')"
      [[ -n "$version" && "$version" != "(none)" ]] || die "apt offers no version of $name (apt-get update?)"
      path="$(deb_path "$name" "$version")"
      [[ -f "$path" ]] || download "$name" "$version" || die "apt-get download ${name}=${version} failed"
      echo "$name $version $(sha256sum "$path" | cut -d' ' -f1)"
    done
  } >"$lock.tmp"
  mv "$lock.tmp" "$lock"
  log "debs: wrote $lock ($# packages)"
}

case "${1:-}" in
  fetch) fetch "${2:?LOCK}" ;;
  unpack) unpack "${2:?LOCK}" "${3:?DIR}" ;;
  lock) shift; lock "${1:?LOCK}" "${@:2}" ;;
  *) die "usage: $0 fetch LOCK | unpack LOCK DIR | lock LOCK PKG..." ;;
esac

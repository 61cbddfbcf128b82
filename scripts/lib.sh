# Shared shell helpers. Sourced, never run.
#
# TOOLS_DIR: downloaded or built tools, keyed by version, shared by every
#            clone on this machine (outside the checkout).
# STATE_DIR: this checkout's run state (data dirs, logs, kubeconfig).

set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/purchase-system"
STATE_DIR="${REPO_ROOT}/.cache"

# Pinned versions: change here, and every cache path follows.
KUBERNETES_VERSION="v1.37.2"
ETCD_VERSION="v3.6.8"
KAFKA_VERSION="4.1.1"
METRICS_SERVER_VERSION="v0.8.0"
KUBE_STATE_METRICS_VERSION="v2.20.0"
PROMETHEUS_VERSION="v0.316.0"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# with_lock DIR CMD...: run CMD while holding DIR.lock, so two clones (or CI
# and a developer) building the same tool version don't race.
with_lock() {
  local dir="$1"; shift
  mkdir -p "$(dirname "$dir")"
  exec 9>"${dir}.lock"
  flock 9
  "$@"
  local rc=$?
  flock -u 9
  return $rc
}

# stop_pidfile FILE [WAIT_TENTHS]: SIGTERM the process FILE names, wait for it
# (default 30 s), SIGKILL it if still there, and remove FILE.
stop_pidfile() {
  local file="$1" tenths="${2:-300}"
  [[ -f "$file" ]] || return 0
  local pid; pid="$(cat "$file")"
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 "$tenths"); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

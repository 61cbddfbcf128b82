#!/usr/bin/env bash
# KEDA behind the metrics adapter (docs/beside-others.md, "Install beside
# KEDA"): KEDA v2.21.0 built from source (the tools cache), its own
# install with the changes manifests/keda/install names, and its demo (the
# seed's ScaledObject on a copy of the consumer, manifests/keda/demo).
#
#   scripts/keda.sh render             manifests/keda/install/generated/keda.yaml: KEDA's
#                                      install as its release renders it (config/minimal)
#   scripts/keda.sh apply KUBECTL...   KEDA's install (manifests/keda/local), as an upgrade applies it
#   scripts/keda.sh deploy KUBECTL...  that, and the demo, on the local Kubernetes, rolled out
#                                      (the system, deployed with overlays/*-keda, first)
#
# make run WITH=keda and the scenario of make test (scripts/e2e.sh) run
# deploy; e2e/keda runs apply again, as a KEDA upgrade would.
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT" || exit 1

render() {
  scripts/tools.sh ensure keda
  local out=manifests/keda/install/generated/keda.yaml
  mkdir -p "$(dirname "$out")"
  "$(scripts/tools.sh path kubernetes)/kubectl" kustomize "$(scripts/tools.sh path keda)/config/minimal" >"$out.tmp" \
    || die "rendering KEDA ${KEDA_VERSION}'s config/minimal failed"
  mv "$out.tmp" "$out"
}

apply() {
  render
  scripts/certs.sh
  # Server-side: KEDA's CRDs are larger than client-side apply's
  # last-applied annotation may be. Forced: the install owns what it
  # names (an operator left to rotate certificates takes kedaorg-certs).
  "$@" apply --server-side --force-conflicts -k manifests/keda/local >/dev/null
}

deploy() {
  log "installing KEDA ${KEDA_VERSION} behind the adapter (manifests/keda/local)"
  apply "$@"
  "$@" wait --for condition=established --timeout=60s crd/scaledobjects.keda.sh >/dev/null
  wait_in keda "$@"
  log "the demo: the seed's ScaledObject on a copy of the consumer (manifests/keda/demo-local)"
  "$@" apply -k manifests/keda/demo-local >/dev/null
  wait_in keda-demo "$@"
}

case "${1:-}" in
  render) render ;;
  apply) shift; apply "$@" ;;
  deploy) shift; deploy "$@" ;;
  *) die "usage: $0 render | apply KUBECTL... | deploy KUBECTL..." ;;
esac

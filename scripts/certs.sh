#!/usr/bin/env bash
# Writes the serving certificates of the two aggregated API servers this
# project deploys, and the CA the API server verifies them with (each
# APIService's caBundle): no insecureSkipTLSVerify anywhere.
#
#   scripts/certs.sh
#
# Output (git-ignored, read by kustomize as generated Secrets):
#   manifests/base/adapter/generated/{ca.crt,tls.crt,tls.key}
#       purchase-metrics-adapter.monitoring.svc
#   manifests/addons/metrics-server/generated/{ca.crt,tls.crt,tls.key}
#       metrics-server.kube-system.svc
#   manifests/keda/install/generated/{ca.crt,tls.crt,tls.key}
#       KEDA's operator and metrics server (kedaorg-certs: both serve with
#       it and the metrics server is the operator's gRPC client)
#   manifests/keda/install/generated/requestheader-ca.crt,
#   manifests/components/keda-upstream/generated/{tls.crt,tls.key,keda-ca.crt}
#       the adapter's front-proxy client certificate for KEDA's metrics
#       server, whose requestheader CA is that CA; and KEDA's CA, which
#       verifies KEDA's serving certificate
# Existing files are kept while they have 30 days left, so re-applying the
# manifests does not roll the pods; delete a directory to renew it.
source "$(dirname "$0")/lib.sh"
command -v openssl >/dev/null || die "openssl is needed to write the serving certificates (apt-get install openssl)"

# fresh DIR FILE...: every FILE is in DIR, and DIR's tls.crt has 30 days left.
fresh() {
  local dir="$1" f; shift
  for f in "$@"; do [[ -s "$dir/$f" ]] || return 1; done
  openssl x509 -checkend $((30 * 24 * 3600)) -noout -in "$dir/tls.crt" >/dev/null
}

# sign DIR CA_OUT SUBJECT EXTENSIONS: a new CA (written to CA_OUT, its key
# thrown away after: nothing else can ever be signed with it) and DIR's
# tls.crt/tls.key signed by it.
sign() {
  local dir="$1" ca_out="$2" subject="$3" ext="$4"
  mkdir -p "$dir"
  local tmp; tmp="$(mktemp -d)"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=${subject} CA" -keyout "$tmp/ca.key" -out "$ca_out" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=${subject}" -keyout "$dir/tls.key" -out "$tmp/tls.csr" 2>/dev/null
  printf '%s\n' "$ext" >"$tmp/ext"
  openssl x509 -req -in "$tmp/tls.csr" -CA "$ca_out" -CAkey "$tmp/ca.key" -CAcreateserial -CAserial "$tmp/ca.srl" \
    -days 825 -extfile "$tmp/ext" -out "$dir/tls.crt" 2>/dev/null
  chmod 600 "$dir/tls.key"
  rm -rf "$tmp"
}

# names NAMESPACE SERVICE...: the DNS names a Service answers to.
names() {
  local ns="$1" svc out=""; shift
  for svc in "$@"; do out+="${out:+,}DNS:${svc},DNS:${svc}.${ns},DNS:${svc}.${ns}.svc,DNS:${svc}.${ns}.svc.cluster.local"; done
  echo "$out"
}

# issue DIR USAGE NAMESPACE SERVICE...: a certificate for the Services
# with extended key usage USAGE (serverAuth; KEDA's also clientAuth: its
# operator and metrics server authenticate each other with it over gRPC).
issue() {
  local dir="$1" usage="$2" ns="$3" svc="$4"
  fresh "$dir" tls.crt tls.key ca.crt && return
  sign "$dir" "$dir/ca.crt" "${svc}.${ns}.svc" "$(printf 'subjectAltName=%s\nextendedKeyUsage=%s\nkeyUsage=digitalSignature,keyEncipherment' \
    "$(names "${@:3}")" "$usage")"
  log "wrote a serving certificate for ${svc}.${ns}.svc into ${dir#"$REPO_ROOT"/} (not committed)"
}

issue "${REPO_ROOT}/manifests/base/adapter/generated" serverAuth monitoring purchase-metrics-adapter
issue "${REPO_ROOT}/manifests/addons/metrics-server/generated" serverAuth kube-system metrics-server

# KEDA behind the adapter (manifests/keda, manifests/components/keda-upstream):
# its own certificates instead of its operator's rotation, so the adapter
# knows the CA before KEDA runs.
keda="${REPO_ROOT}/manifests/keda/install/generated"
upstream="${REPO_ROOT}/manifests/components/keda-upstream/generated"
issue "$keda" serverAuth,clientAuth keda keda-operator keda-operator-metrics-apiserver
# The adapter's client certificate as a front proxy: KEDA's metrics server
# trusts its CA as the requestheader CA and takes X-Remote-User from it.
if ! fresh "$upstream" tls.crt tls.key || ! [[ -s "$keda/requestheader-ca.crt" ]]; then
  sign "$upstream" "$keda/requestheader-ca.crt" purchase-metrics-adapter \
    "$(printf 'extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature')"
  log "wrote the adapter's front-proxy client certificate into ${upstream#"$REPO_ROOT"/} (not committed)"
fi
cp "$keda/ca.crt" "$upstream/keda-ca.crt"

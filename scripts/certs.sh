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
# Existing files are kept while they have 30 days left, so re-applying the
# manifests does not roll the pods; delete a directory to renew it.
source "$(dirname "$0")/lib.sh"
command -v openssl >/dev/null || die "openssl is needed to write the serving certificates (apt-get install openssl)"

# issue DIR SERVICE NAMESPACE
issue() {
  local dir="$1" svc="$2" ns="$3"
  if [[ -s "$dir/tls.crt" && -s "$dir/tls.key" && -s "$dir/ca.crt" ]] &&
    openssl x509 -checkend $((30 * 24 * 3600)) -noout -in "$dir/tls.crt" >/dev/null; then
    return
  fi
  mkdir -p "$dir"
  local tmp; tmp="$(mktemp -d)"
  # The CA signs this one certificate and is then thrown away: nothing
  # else can ever be signed with it.
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=${svc}.${ns} CA" -keyout "$tmp/ca.key" -out "$dir/ca.crt" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=${svc}.${ns}.svc" -keyout "$dir/tls.key" -out "$tmp/tls.csr" 2>/dev/null
  printf 'subjectAltName=DNS:%s,DNS:%s.%s,DNS:%s.%s.svc,DNS:%s.%s.svc.cluster.local\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n' \
    "$svc" "$svc" "$ns" "$svc" "$ns" "$svc" "$ns" >"$tmp/ext"
  openssl x509 -req -in "$tmp/tls.csr" -CA "$dir/ca.crt" -CAkey "$tmp/ca.key" -CAcreateserial -CAserial "$tmp/ca.srl" \
    -days 825 -extfile "$tmp/ext" -out "$dir/tls.crt" 2>/dev/null
  chmod 600 "$dir/tls.key"
  rm -rf "$tmp"
  log "wrote a serving certificate for ${svc}.${ns}.svc into ${dir#"$REPO_ROOT"/} (not committed)"
}

issue "${REPO_ROOT}/manifests/base/adapter/generated" purchase-metrics-adapter monitoring
issue "${REPO_ROOT}/manifests/addons/metrics-server/generated" metrics-server kube-system

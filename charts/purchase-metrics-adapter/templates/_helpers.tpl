{{/* Names, labels and checks shared by the templates. */}}

{{- define "adapter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "adapter.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "adapter.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "adapter.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "adapter.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride -}}
{{- end -}}

{{- define "adapter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "adapter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "adapter.labels" -}}
{{ include "adapter.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- with .Values.customLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "adapter.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "adapter.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Prometheus URL as prometheus-adapter's chart builds it. */}}
{{- define "adapter.prometheusURL" -}}
{{- printf "%s:%v%s" (tpl .Values.prometheus.url .) .Values.prometheus.port .Values.prometheus.path -}}
{{- end -}}

{{/*
Values of prometheus-adapter's chart this adapter does not act on are
refused with what to do instead: a value silently ignored would leave a
migrated cluster without what it asked for.
*/}}
{{- define "adapter.checkValues" -}}
{{- if .Values.rules.resource -}}
{{- fail "rules.resource: resource metrics (metrics.k8s.io: CPU and memory for kubectl top and CPU HPAs) are metrics-server's job in this stack; install metrics-server and remove rules.resource" -}}
{{- end -}}
{{- if .Values.psp.create -}}
{{- fail "psp.create: PodSecurityPolicy was removed in Kubernetes 1.25; use Pod Security admission (the adapter runs under the restricted profile)" -}}
{{- end -}}
{{- if and .Values.tls.enable .Values.certManager.enabled -}}
{{- fail "tls.enable and certManager.enabled: choose one source of the serving certificate" -}}
{{- end -}}
{{- if and .Values.tls.enable (not (and .Values.tls.ca .Values.tls.certificate .Values.tls.key)) -}}
{{- fail "tls.enable: tls.ca, tls.certificate and tls.key are all needed (the API server verifies the adapter with tls.ca)" -}}
{{- end -}}
{{- end -}}

{{- define "adapter.tlsSecretName" -}}
{{- printf "%s-tls" (include "adapter.fullname" .) -}}
{{- end -}}

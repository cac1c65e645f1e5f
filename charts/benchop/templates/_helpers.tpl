{{/* Chart name. */}}
{{- define "benchop.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Resource name prefix: <release>-benchop, or the release name when it already says benchop. */}}
{{- define "benchop.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "benchop.operatorName" -}}
{{- printf "%s-operator" (include "benchop.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "benchop.mockName" -}}
{{- printf "%s-mock" (include "benchop.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The mock server's URL as pods see it (the operator's --default-target-url). */}}
{{- define "benchop.mockUrl" -}}
{{- printf "http://%s.%s.svc:%v/v1" (include "benchop.mockName" .) .Release.Namespace .Values.mockServer.port }}
{{- end }}

{{- define "benchop.agentName" -}}
{{- printf "%s-agent" (include "benchop.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels shared by every object. app.kubernetes.io/name is always "benchop" (a contract the operator relies on). */}}
{{- define "benchop.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: benchop
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels of one component: include "benchop.selectorLabels" (list . "operator"). */}}
{{- define "benchop.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: benchop
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* The label selector the operator uses to find this release's agent pods (--agent-selector). */}}
{{- define "benchop.agentSelector" -}}
{{- printf "app.kubernetes.io/component=agent,app.kubernetes.io/instance=%s,app.kubernetes.io/name=benchop" .Release.Name }}
{{- end }}

{{- define "benchop.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* DNS name the load-generator workers dial for gates and snapshots (--operator-service). */}}
{{- define "benchop.operatorService" -}}
{{- printf "%s.%s.svc" (include "benchop.operatorName" .) .Release.Namespace }}
{{- end }}

{{/* Namespaces that get a Role: the watched ones, plus the release namespace (agent pods). */}}
{{- define "benchop.roleNamespaces" -}}
{{- $nss := list }}
{{- range .Values.operator.watchNamespaces }}{{ $nss = append $nss . }}{{ end }}
{{- $nss = append $nss .Release.Namespace }}
{{- toJson (uniq $nss) }}
{{- end }}

{{/* The Secret with the CurveZMQ keys (made by the operator when missing: --curve-secret). */}}
{{- define "benchop.curveSecret" -}}
{{- default (printf "%s-curve" (include "benchop.fullname" .) | trunc 63 | trimSuffix "-") .Values.curve.secretName }}
{{- end }}

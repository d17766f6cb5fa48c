{{- define "samp.name" -}}samp-operator{{- end -}}

{{- define "samp.fullname" -}}
{{- if contains "samp-operator" .Release.Name -}}{{ .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else -}}{{ printf "%s-samp-operator" .Release.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "samp.labels" -}}
app.kubernetes.io/name: samp-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "samp.selectorLabels" -}}
app.kubernetes.io/name: samp-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "samp.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}{{ default (include "samp.fullname" .) .Values.serviceAccount.name }}
{{- else -}}{{ default "default" .Values.serviceAccount.name }}{{- end -}}
{{- end -}}

{{/* Rules the operator needs in every namespace it watches: the union of what the
     quantization half (tests/operator OPERATOR_RULES) and the canary half
     (tests/rollout ROLLOUT_RULES) use against the real API server. */}}
{{- define "samp.namespacedRules" -}}
- apiGroups: ["samp.dev"]
  resources: ["quantizedmodels"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["samp.dev"]
  resources: ["quantizedmodels/status"]
  verbs: ["get", "patch"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["configmaps", "services"]
  verbs: ["get", "list", "watch", "create", "delete"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "delete", "patch", "update"]
- apiGroups: ["apps"]
  resources: ["deployments/scale"]
  verbs: ["get", "patch"]
- apiGroups: ["apps"]
  resources: ["deployments/status"]
  verbs: ["get"]
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["httproutes"]
  verbs: ["get", "list", "watch", "update", "patch"]
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- end -}}

{{/* "2h" -> 7200, "30m" -> 1800 (values.schema.json allows only these two units). */}}
{{- define "samp.seconds" -}}
{{- $v := . | toString -}}
{{- if hasSuffix "h" $v -}}{{ mul (trimSuffix "h" $v | int) 3600 }}
{{- else -}}{{ mul (trimSuffix "m" $v | int) 60 }}{{- end -}}
{{- end -}}

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
     quantization half and the canary half really call on the API server (quantization:
     the kube-apiserver audit log of tests/shipping/test_chart_operator_cluster.py, each
     rule removed in turn in test_chart_rbac_minimal_cluster.py; canary: tests/rollout).
     quantizedmodels get: engine re-reads; jobs get: the artifact-cleanup Job on delete;
     pods and configmaps are only listed and watched, never read one by one, but a
     running stage pod's log tail is read (pods/log get) for status.progress; events are
     core/v1 and only created. The canary half never lists or watches Deployments,
     Services or HTTPRoutes (it reads them by name), replaces HTTPRoutes (update, never
     patch), server-side applies the serving Deployment it owns (or merge-patches a
     user-owned stable, PatchInPlace), both a deployments patch, and scales by
     deployments/scale patch (replica-split router). Secrets: only with prometheusAuth.readTenantSecrets, to read
     by name the Secret spec.gates.prometheusSecretRef names (credentials and CA of a
     resource's own Prometheus); off by default, as it grants reading every Secret of
     the watched namespaces. */}}
{{- define "samp.namespacedRules" -}}
- apiGroups: ["samp.dev"]
  resources: ["quantizedmodels"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["samp.dev"]
  resources: ["quantizedmodels/status"]
  verbs: ["patch"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["list", "watch", "create", "delete"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "create", "delete"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "create", "delete", "patch"]
- apiGroups: ["apps"]
  resources: ["deployments/scale"]
  verbs: ["patch"]
- apiGroups: ["apps"]
  resources: ["deployments/status"]
  verbs: ["get"]
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["httproutes"]
  verbs: ["get", "update"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- if .Values.prometheusAuth.readTenantSecrets }}
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
{{- end }}
{{- end -}}

{{/* "2h" -> 7200, "30m" -> 1800 (values.schema.json allows only these two units). */}}
{{- define "samp.seconds" -}}
{{- $v := . | toString -}}
{{- if hasSuffix "h" $v -}}{{ mul (trimSuffix "h" $v | int) 3600 }}
{{- else -}}{{ mul (trimSuffix "m" $v | int) 60 }}{{- end -}}
{{- end -}}

{{/* An alert's runbook_url: (list $ "anchor"). */}}
{{- define "samp.runbook" -}}
{{- $root := index . 0 -}}
{{- printf "%s#%s" (trimSuffix "/" $root.Values.metrics.prometheusRule.runbookBaseUrl) (index . 1) | quote -}}
{{- end -}}

{{/* The scrape job whose `up` says the operator is alive: the metrics Service under the
     ServiceMonitor, else metrics.prometheusRule.operatorJob; empty: nobody known scrapes it. */}}
{{- define "samp.operatorJob" -}}
{{- if and .Values.metrics.serviceMonitor.enabled .Values.metrics.service.enabled -}}
{{ include "samp.fullname" . }}-metrics
{{- else -}}
{{ .Values.metrics.prometheusRule.operatorJob }}
{{- end -}}
{{- end -}}

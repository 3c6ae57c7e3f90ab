{{/* vim: set filetype=mustache: */}}

{{/* Chart name, truncated to a DNS label. */}}
{{- define "mailexec.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Fully qualified app name: release-chart unless the release already contains the chart name. */}}
{{- define "mailexec.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Name of a component's objects: (dict "root" $ "component" "ingest"). */}}
{{- define "mailexec.componentName" -}}
{{- printf "%s-%s" (include "mailexec.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mailexec.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels every object carries. */}}
{{- define "mailexec.labels" -}}
helm.sh/chart: {{ include "mailexec.chart" . }}
{{ include "mailexec.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mailexec
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "mailexec.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mailexec.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of a component: (dict "root" $ "component" "ingest"). */}}
{{- define "mailexec.componentLabels" -}}
{{ include "mailexec.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "mailexec.componentSelectorLabels" -}}
{{ include "mailexec.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* metadata.annotations from commonAnnotations merged with extra ones: (dict "root" $ "extra" map). */}}
{{- define "mailexec.annotations" -}}
{{- $all := merge (deepCopy (default dict .extra)) (deepCopy .root.Values.commonAnnotations) -}}
{{- with $all }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "mailexec.image" -}}
{{- $repo := .Values.image.repository -}}
{{- if .Values.image.registry -}}
{{- $repo = printf "%s/%s" .Values.image.registry .Values.image.repository -}}
{{- end -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" $repo .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "mailexec.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "mailexec.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding MAILEXEC_DATABASE_URL, _AMQP_URL, _SMTP_URL and the three tokens. */}}
{{- define "mailexec.secretName" -}}
{{- default (include "mailexec.fullname" .) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "mailexec.policyUrl" -}}
{{- if .Values.config.policyUrl -}}
{{- .Values.config.policyUrl -}}
{{- else -}}
{{- printf "http://%s.%s.svc:%v" (include "mailexec.componentName" (dict "root" . "component" "policy")) .Release.Namespace .Values.policy.service.port -}}
{{- end -}}
{{- end -}}

{{/*
A token for the release Secret: the value given, else the one already stored in the
Secret (so upgrades keep it), else a new random one. (dict "root" $ "key" "MAILEXEC_ADMIN_TOKEN" "value" "...")
*/}}
{{- define "mailexec.token" -}}
{{- if .value -}}
{{- .value -}}
{{- else -}}
{{- $existing := lookup "v1" "Secret" .root.Release.Namespace (include "mailexec.fullname" .root) -}}
{{- if and $existing $existing.data (hasKey $existing.data .key) -}}
{{- index $existing.data .key | b64dec -}}
{{- else -}}
{{- randAlphaNum 48 -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Soft pod anti-affinity across nodes for a component. */}}
{{- define "mailexec.affinity" -}}
{{- $values := index .root.Values .component -}}
{{- if $values.affinity -}}
{{- toYaml $values.affinity -}}
{{- else -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 1
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "mailexec.componentSelectorLabels" . | nindent 12 }}
{{- end -}}
{{- end -}}

{{/* An HTTP probe: (dict "probe" $values.livenessProbe "path" "/healthz" "port" "http"). */}}
{{- define "mailexec.probe" -}}
httpGet:
  path: {{ .path }}
  port: {{ .port }}
initialDelaySeconds: {{ .probe.initialDelaySeconds }}
periodSeconds: {{ .probe.periodSeconds }}
timeoutSeconds: {{ .probe.timeoutSeconds }}
failureThreshold: {{ .probe.failureThreshold }}
successThreshold: {{ .probe.successThreshold }}
{{- end -}}

{{/*
The executor container's security context. Capabilities are computed, not taken from
values, so the set is exactly SETUID, SETGID, KILL plus the documented opt-ins.
*/}}
{{- define "mailexec.executor.capabilities" -}}
{{- $caps := list "SETUID" "SETGID" "KILL" -}}
{{- if .Values.executor.sandbox.networkIsolation.enabled -}}
{{- $caps = append $caps "SYS_ADMIN" -}}
{{- end -}}
{{- range .Values.executor.extraCapabilities -}}
{{- $caps = append $caps (upper . | trimPrefix "CAP_") -}}
{{- end -}}
{{- toYaml (uniq $caps) -}}
{{- end -}}

{{- define "mailexec.executor.seccompProfile" -}}
{{- if .Values.executor.sandbox.bwrap.enabled -}}
{{- toYaml .Values.executor.sandbox.bwrap.seccompProfile -}}
{{- else -}}
type: RuntimeDefault
{{- end -}}
{{- end -}}

{{/* Fail early, with a message a user can act on. */}}
{{- define "mailexec.validateValues" -}}
{{- $messages := list -}}
{{- if not .Values.secrets.existingSecret -}}
{{- if not .Values.secrets.databaseUrl -}}
{{- $messages = append $messages "mailexec: secrets.databaseUrl is required (postgresql+asyncpg://user:pass@host:5432/db), or name a Secret in secrets.existingSecret" -}}
{{- end -}}
{{- if not .Values.secrets.amqpUrl -}}
{{- $messages = append $messages "mailexec: secrets.amqpUrl is required (amqp://user:pass@host:5672/), or name a Secret in secrets.existingSecret" -}}
{{- end -}}
{{- if and .Values.secrets.databaseUrl (not (hasPrefix "postgresql+asyncpg://" .Values.secrets.databaseUrl)) -}}
{{- $messages = append $messages "mailexec: secrets.databaseUrl must use the asyncpg driver: postgresql+asyncpg://..." -}}
{{- end -}}
{{- end -}}
{{- range .Values.executor.extraCapabilities -}}
{{- if eq (upper . | trimPrefix "CAP_") "SYS_ADMIN" -}}
{{- $messages = append $messages "mailexec: executor.extraCapabilities may not contain SYS_ADMIN; set executor.sandbox.networkIsolation.enabled=true (documented opt-in) instead" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.keda.enabled (lt (int .Values.keda.maxReplicaCount) (int .Values.keda.minReplicaCount)) -}}
{{- $messages = append $messages "mailexec: keda.maxReplicaCount must be >= keda.minReplicaCount" -}}
{{- end -}}
{{- if $messages -}}
{{- printf "\nVALUES VALIDATION:\n%s" (join "\n" $messages) | fail -}}
{{- end -}}
{{- end -}}

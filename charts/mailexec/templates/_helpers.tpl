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

{{/* MAILEXEC_CONSOLE_COOKIE_SECURE: as set, else Secure always behind a TLS Ingress. */}}
{{- define "mailexec.console.cookieSecure" -}}
{{- if .Values.console.cookieSecure -}}
{{- .Values.console.cookieSecure -}}
{{- else if and .Values.console.ingress.enabled .Values.console.ingress.tls -}}
always
{{- else -}}
auto
{{- end -}}
{{- end -}}

{{/*
The console's own environment: where the APIs its pages come from are (it holds no token
to call them with: the signed-in person's is used), its session settings.
*/}}
{{- define "mailexec.console.env" -}}
- name: MAILEXEC_INGEST_URL
  value: {{ printf "http://%s.%s.svc:%v" (include "mailexec.componentName" (dict "root" . "component" "ingest")) .Release.Namespace .Values.ingest.service.port | quote }}
- name: MAILEXEC_NOTIFIER_URL
  value: {{ printf "http://%s.%s.svc:%v" (include "mailexec.componentName" (dict "root" . "component" "notifier")) .Release.Namespace .Values.notifier.service.port | quote }}
- name: MAILEXEC_CONSOLE_SESSION_IDLE_S
  value: {{ .Values.console.sessionIdleSeconds | quote }}
- name: MAILEXEC_CONSOLE_COOKIE_SECURE
  value: {{ include "mailexec.console.cookieSecure" . | quote }}
{{- end -}}

{{- define "mailexec.policyUrl" -}}
{{- if .Values.config.policyUrl -}}
{{- .Values.config.policyUrl -}}
{{- else -}}
{{- printf "http://%s.%s.svc:%v" (include "mailexec.componentName" (dict "root" . "component" "policy")) .Release.Namespace .Values.policy.service.port -}}
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
values: SETUID, SETGID, KILL, SYS_ADMIN, SETPCAP, and NET_ADMIN only with
sandbox.egress.enabled.
*/}}
{{- define "mailexec.executor.capabilities" -}}
{{- $caps := list "SETUID" "SETGID" "KILL" "SYS_ADMIN" "SETPCAP" -}}
{{- if .Values.executor.sandbox.egress.enabled -}}
{{- $caps = append $caps "NET_ADMIN" -}}
{{- end -}}
{{- range .Values.executor.extraCapabilities -}}
{{- $caps = append $caps (upper . | trimPrefix "CAP_") -}}
{{- end -}}
{{- toYaml (uniq $caps) -}}
{{- end -}}

{{- define "mailexec.executor.seccompProfile" -}}
type: RuntimeDefault
{{- end -}}

{{/*
ingest's LMTP listener (RFC 2033): the pieces mailexec.serviceDeployment and mailexec.service
take. Off, ingest gets MAILEXEC_LMTP_PORT=0 (the program's default would be to listen).
*/}}
{{- define "mailexec.ingest.lmtp.tlsDir" -}}/etc/mailexec/lmtp-tls{{- end -}}

{{- define "mailexec.ingest.lmtp.env" -}}
{{- $lmtp := .Values.ingest.lmtp -}}
- name: MAILEXEC_LMTP_PORT
  value: {{ ternary $lmtp.containerPort 0 $lmtp.enabled | quote }}
{{- if $lmtp.enabled }}
- name: MAILEXEC_LMTP_TRUSTED_NETWORKS
  value: {{ join "," $lmtp.trustedNetworks | quote }}
- name: MAILEXEC_LMTP_MAX_CONNECTIONS
  value: {{ $lmtp.maxConnections | quote }}
- name: MAILEXEC_LMTP_IDLE_TIMEOUT_S
  value: {{ $lmtp.idleTimeoutSeconds | quote }}
{{- if $lmtp.tls.enabled }}
- name: MAILEXEC_LMTP_TLS_CERT
  value: {{ printf "%s/tls.crt" (include "mailexec.ingest.lmtp.tlsDir" .) | quote }}
- name: MAILEXEC_LMTP_TLS_KEY
  value: {{ printf "%s/tls.key" (include "mailexec.ingest.lmtp.tlsDir" .) | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "mailexec.ingest.lmtp.containerPorts" -}}
{{- if .Values.ingest.lmtp.enabled -}}
- name: lmtp
  containerPort: {{ .Values.ingest.lmtp.containerPort }}
  protocol: TCP
{{- end -}}
{{- end -}}

{{- define "mailexec.ingest.lmtp.servicePorts" -}}
{{- if .Values.ingest.lmtp.enabled -}}
- name: lmtp
  port: {{ .Values.ingest.lmtp.service.port }}
  targetPort: lmtp
  protocol: TCP
{{- end -}}
{{- end -}}

{{/* The certificate and key, read-only, readable by the pod's fsGroup only (mode 0440). */}}
{{- define "mailexec.ingest.lmtp.volumeMounts" -}}
{{- if and .Values.ingest.lmtp.enabled .Values.ingest.lmtp.tls.enabled -}}
- name: lmtp-tls
  mountPath: {{ include "mailexec.ingest.lmtp.tlsDir" . }}
  readOnly: true
{{- end -}}
{{- end -}}

{{- define "mailexec.ingest.lmtp.volumes" -}}
{{- $tls := .Values.ingest.lmtp.tls -}}
{{- if and .Values.ingest.lmtp.enabled $tls.enabled -}}
- name: lmtp-tls
  secret:
    secretName: {{ $tls.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ $tls.certKey }}
        path: tls.crt
      - key: {{ $tls.keyKey }}
        path: tls.key
{{- end -}}
{{- end -}}

{{/* Fail early, with a message a user can act on. */}}
{{- define "mailexec.validateValues" -}}
{{- $messages := list -}}
{{- $ipv4 := `^((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(/(3[0-2]|[12]?[0-9]))?$` -}}
{{- $ipv6 := `^[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*(/(12[0-8]|1[01][0-9]|[1-9]?[0-9]))?$` -}}
{{- $db := .Values.externalDatabase -}}
{{- $mq := .Values.externalRabbitmq -}}
{{- if not $db.host -}}
{{- $messages = append $messages "mailexec: externalDatabase.host is required: the PostgreSQL server (e.g. RELEASE-postgresql of bitnami/postgresql, or a CloudNativePG cluster's -rw Service)" -}}
{{- end -}}
{{- if and .Values.migrations.enabled (not $db.existingSecret) (not $db.password) -}}
{{- $messages = append $messages "mailexec: externalDatabase.existingSecret (key externalDatabase.existingSecretPasswordKey) or externalDatabase.password is required: the password of externalDatabase.user, the owner the migrations Job alone connects as" -}}
{{- end -}}
{{- if not $mq.host -}}
{{- $messages = append $messages "mailexec: externalRabbitmq.host is required: the RabbitMQ server (e.g. RELEASE-rabbitmq of bitnami/rabbitmq)" -}}
{{- end -}}
{{- if and (not $mq.existingSecret) (not $mq.password) -}}
{{- $messages = append $messages "mailexec: externalRabbitmq.existingSecret (key externalRabbitmq.existingSecretPasswordKey) or externalRabbitmq.password is required: the password of externalRabbitmq.user" -}}
{{- end -}}
{{- if and .Values.keda.enabled $mq.existingSecret (not .Values.keda.existingSecret) -}}
{{- $messages = append $messages "mailexec: keda.enabled with externalRabbitmq.existingSecret needs keda.existingSecret, a Secret holding the AMQP URL (amqp://user:password@host:5672/vhost) under keda.hostSecretKey" -}}
{{- end -}}
{{- if and .Values.notifier.smtp.existingSecret (not .Values.notifier.smtp.existingSecretKey) -}}
{{- $messages = append $messages "mailexec: notifier.smtp.existingSecretKey must name the key of notifier.smtp.existingSecret holding the SMTP URL" -}}
{{- end -}}
{{- range .Values.executor.extraCapabilities -}}
{{- if eq (upper . | trimPrefix "CAP_") "NET_ADMIN" -}}
{{- $messages = append $messages "mailexec: executor.extraCapabilities may not contain NET_ADMIN; set executor.sandbox.egress.enabled=true (with executor.sandbox.egress.blockedCIDRs) instead" -}}
{{- end -}}
{{- end -}}
{{- $egress := .Values.executor.sandbox.egress -}}
{{- if $egress.enabled -}}
{{- if not $egress.blockedCIDRs -}}
{{- $messages = append $messages "mailexec: executor.sandbox.egress.enabled needs executor.sandbox.egress.blockedCIDRs: at least the cluster's pod and service CIDRs and the node network (e.g. 10.244.0.0/16, 10.96.0.0/12), which egress programs must never reach" -}}
{{- end -}}
{{- range $egress.blockedCIDRs -}}
{{- if not (or (regexMatch $ipv4 .) (regexMatch $ipv6 .)) -}}
{{- $messages = append $messages (printf "mailexec: executor.sandbox.egress.blockedCIDRs: %q is not an IP network in CIDR form (e.g. 10.96.0.0/12)" .) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $apparmor := .Values.executor.sandbox.appArmorProfile -}}
{{- if and (eq $apparmor.type "Localhost") (not $apparmor.localhostProfile) -}}
{{- $messages = append $messages "mailexec: executor.sandbox.appArmorProfile.type=Localhost needs localhostProfile, the name of a profile loaded on every node" -}}
{{- end -}}
{{- $lmtp := .Values.ingest.lmtp -}}
{{- if $lmtp.enabled -}}
{{- if and $lmtp.tls.enabled (not $lmtp.tls.existingSecret) -}}
{{- $messages = append $messages "mailexec: ingest.lmtp.tls.enabled needs ingest.lmtp.tls.existingSecret, a Secret with the PEM certificate chain and key (e.g. a cert-manager Certificate's Secret)" -}}
{{- end -}}
{{- if eq (int $lmtp.containerPort) (int .Values.ingest.containerPort) -}}
{{- $messages = append $messages "mailexec: ingest.lmtp.containerPort must differ from ingest.containerPort (LMTP and HTTP are separate listeners)" -}}
{{- end -}}
{{- range $lmtp.trustedNetworks -}}
{{- if not (or (regexMatch $ipv4 .) (regexMatch $ipv6 .)) -}}
{{- $messages = append $messages (printf "mailexec: ingest.lmtp.trustedNetworks: %q is not an IP network in CIDR form (e.g. 10.42.0.0/16, fd00::/8)" .) -}}
{{- else if hasSuffix "/0" . -}}
{{- $messages = append $messages (printf "mailexec: ingest.lmtp.trustedNetworks: %q would let every client deliver without AUTH; list the MTAs' networks" .) -}}
{{- end -}}
{{- end -}}
{{- else if $lmtp.externalService.enabled -}}
{{- $messages = append $messages "mailexec: ingest.lmtp.externalService.enabled needs ingest.lmtp.enabled" -}}
{{- end -}}
{{- $console := .Values.console -}}
{{- if $console.enabled -}}
{{- if and $console.secret (not $console.existingSecret) (lt (len $console.secret) 32) -}}
{{- $messages = append $messages "mailexec: console.secret is shorter than 32 characters; use e.g. $(head -c 48 /dev/urandom | base64)" -}}
{{- end -}}
{{- if and $console.existingSecret (not $console.existingSecretKey) -}}
{{- $messages = append $messages "mailexec: console.existingSecretKey must name the key of console.existingSecret holding the cookie key" -}}
{{- end -}}
{{- if and $console.ingress.enabled $console.ingress.tls (eq $console.cookieSecure "never") -}}
{{- $messages = append $messages "mailexec: console.cookieSecure=never with console.ingress.tls would send the session cookie without Secure; leave it empty (always) or auto" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.keda.enabled (lt (int .Values.keda.maxReplicaCount) (int .Values.keda.minReplicaCount)) -}}
{{- $messages = append $messages "mailexec: keda.maxReplicaCount must be >= keda.minReplicaCount" -}}
{{- end -}}
{{- if $messages -}}
{{- printf "\nVALUES VALIDATION:\n%s" (join "\n" $messages) | fail -}}
{{- end -}}
{{- end -}}

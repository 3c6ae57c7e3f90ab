{{/*
Shared pieces of the service workloads. Each takes (dict "root" $ "component" NAME).
*/}}

{{/*
The Deployment of an unprivileged HTTP service (ingest, policy, notifier, console); all but
the console build their connection URLs first (initContainer "urls", _secrets.tpl). Optional
keys of the dict, each a rendered YAML list (or empty): "env", "ports", "volumeMounts",
"volumes" — what one component adds (ingest's LMTP listener, the console's settings);
"secretTemplate", the template of the Secret it mounts (default /secret.yaml), whose
checksum rolls the pods when it changes.
*/}}
{{- define "mailexec.serviceDeployment" -}}
{{- $root := .root -}}
{{- $values := index $root.Values .component -}}
{{- $autoscaled := and (hasKey $values "autoscaling") $values.autoscaling.hpa.enabled -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "mailexec.componentName" . }}
  namespace: {{ $root.Release.Namespace | quote }}
  labels:
    {{- include "mailexec.componentLabels" . | nindent 4 }}
  {{- with (include "mailexec.annotations" (dict "root" $root) | trim) }}{{ . | nindent 2 }}{{- end }}
spec:
  {{- if not $autoscaled }}
  replicas: {{ $values.replicaCount }}
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "mailexec.componentSelectorLabels" . | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "mailexec.componentLabels" . | nindent 8 }}
        {{- with $values.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        checksum/config: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
        checksum/secret: {{ include (print $root.Template.BasePath (default "/secret.yaml" .secretTemplate)) $root | sha256sum }}
        {{- with $values.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "mailexec.serviceAccountName" $root }}
      automountServiceAccountToken: {{ $root.Values.serviceAccount.automountServiceAccountToken }}
      {{- with $root.Values.image.pullSecrets }}
      imagePullSecrets:
        {{- range . }}
        - name: {{ . }}
        {{- end }}
      {{- end }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      affinity:
        {{- include "mailexec.affinity" . | nindent 8 }}
      {{- with $values.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $values.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- if ne .component "console" }}
      initContainers:
        {{- include "mailexec.urls.initContainer" (dict "root" $root "component" .component "securityContext" $root.Values.containerSecurityContext) | nindent 8 }}
      {{- end }}
      containers:
        - name: {{ .component }}
          image: {{ include "mailexec.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          args: ["serve", {{ .component | quote }}]
          securityContext:
            {{- toYaml $root.Values.containerSecurityContext | nindent 12 }}
          envFrom:
            - configMapRef:
                name: {{ include "mailexec.fullname" $root }}
          env:
            {{- include "mailexec.secretFiles.env" . | trim | nindent 12 }}
            {{- with .env }}
            {{- . | nindent 12 }}
            {{- end }}
            {{- with $values.extraEnvVars }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          ports:
            - name: http
              containerPort: {{ $values.containerPort }}
              protocol: TCP
            {{- with .ports }}
            {{- . | nindent 12 }}
            {{- end }}
          {{- if $values.livenessProbe.enabled }}
          livenessProbe:
            {{- include "mailexec.probe" (dict "probe" $values.livenessProbe "path" "/healthz" "port" "http") | nindent 12 }}
          {{- end }}
          {{- if $values.readinessProbe.enabled }}
          readinessProbe:
            {{- include "mailexec.probe" (dict "probe" $values.readinessProbe "path" "/readyz" "port" "http") | nindent 12 }}
          {{- end }}
          resources:
            {{- toYaml $values.resources | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- include "mailexec.secretFiles.volumeMount" . | nindent 12 }}
            {{- with .volumeMounts }}
            {{- . | nindent 12 }}
            {{- end }}
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: 256Mi
        {{- include "mailexec.secretFiles.volume" . | nindent 8 }}
        {{- with .volumes }}
        {{- . | nindent 8 }}
        {{- end }}
{{- end -}}

{{/* A component's ClusterIP (or other) Service; the optional "ports" key adds rendered ports. */}}
{{- define "mailexec.service" -}}
{{- $root := .root -}}
{{- $values := index $root.Values .component -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "mailexec.componentName" . }}
  namespace: {{ $root.Release.Namespace | quote }}
  labels:
    {{- include "mailexec.componentLabels" . | nindent 4 }}
  {{- with (include "mailexec.annotations" (dict "root" $root "extra" $values.service.annotations) | trim) }}{{ . | nindent 2 }}{{- end }}
spec:
  type: {{ $values.service.type }}
  selector:
    {{- include "mailexec.componentSelectorLabels" . | nindent 4 }}
  ports:
    - name: http
      port: {{ $values.service.port }}
      targetPort: http
      protocol: TCP
    {{- with .ports }}
    {{- . | nindent 4 }}
    {{- end }}
{{- end -}}

{{- define "mailexec.pdb" -}}
{{- $root := .root -}}
{{- $values := index $root.Values .component -}}
{{- if $values.pdb.create }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "mailexec.componentName" . }}
  namespace: {{ $root.Release.Namespace | quote }}
  labels:
    {{- include "mailexec.componentLabels" . | nindent 4 }}
  {{- with (include "mailexec.annotations" (dict "root" $root) | trim) }}{{ . | nindent 2 }}{{- end }}
spec:
  {{- if or $values.pdb.minAvailable (eq (toString $values.pdb.minAvailable) "0") }}
  minAvailable: {{ $values.pdb.minAvailable }}
  {{- else }}
  maxUnavailable: {{ $values.pdb.maxUnavailable | default 1 }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "mailexec.componentSelectorLabels" . | nindent 6 }}
{{- end }}
{{- end -}}

{{- define "mailexec.hpa" -}}
{{- $root := .root -}}
{{- $values := index $root.Values .component -}}
{{- $hpa := $values.autoscaling.hpa -}}
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "mailexec.componentName" . }}
  namespace: {{ $root.Release.Namespace | quote }}
  labels:
    {{- include "mailexec.componentLabels" . | nindent 4 }}
  {{- with (include "mailexec.annotations" (dict "root" $root) | trim) }}{{ . | nindent 2 }}{{- end }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "mailexec.componentName" . }}
  minReplicas: {{ $hpa.minReplicas }}
  maxReplicas: {{ $hpa.maxReplicas }}
  metrics:
    {{- if $hpa.targetCPU }}
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ $hpa.targetCPU }}
    {{- end }}
    {{- if $hpa.targetMemory }}
    - type: Resource
      resource:
        name: memory
        target:
          type: Utilization
          averageUtilization: {{ $hpa.targetMemory }}
    {{- end }}
{{- end -}}

{{/* Ingress of ingest, policy or the console. */}}
{{- define "mailexec.ingress" -}}
{{- $root := .root -}}
{{- $values := index $root.Values .component -}}
{{- $ing := $values.ingress -}}
{{- if $ing.enabled }}
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: {{ include "mailexec.componentName" . }}
  namespace: {{ $root.Release.Namespace | quote }}
  labels:
    {{- include "mailexec.componentLabels" . | nindent 4 }}
  {{- with (include "mailexec.annotations" (dict "root" $root "extra" $ing.annotations) | trim) }}{{ . | nindent 2 }}{{- end }}
spec:
  {{- with $ing.ingressClassName }}
  ingressClassName: {{ . }}
  {{- end }}
  rules:
    - host: {{ $ing.hostname | quote }}
      http:
        paths:
          - path: {{ $ing.path }}
            pathType: {{ $ing.pathType }}
            backend:
              service:
                name: {{ include "mailexec.componentName" . }}
                port:
                  name: http
  {{- if $ing.tls }}
  tls:
    - hosts:
        - {{ $ing.hostname | quote }}
      secretName: {{ default (printf "%s-tls" $ing.hostname) $ing.tlsSecretName }}
  {{- end }}
{{- end }}
{{- end -}}

{{/* Egress rules shared by every service: DNS, then the given destinations. */}}
{{- define "mailexec.egress.dns" -}}
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
  {{- with .Values.networkPolicy.dns.peers }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}

{{- define "mailexec.egress.database" -}}
- ports:
    - port: {{ .Values.networkPolicy.database.port }}
      protocol: TCP
  {{- with .Values.networkPolicy.database.peers }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}

{{- define "mailexec.egress.broker" -}}
- ports:
    - port: {{ .Values.networkPolicy.broker.port }}
      protocol: TCP
  {{- with .Values.networkPolicy.broker.peers }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}

{{- define "mailexec.egress.policy" -}}
- ports:
    - port: {{ .Values.policy.containerPort }}
      protocol: TCP
  to:
    - podSelector:
        matchLabels:
          {{- include "mailexec.componentSelectorLabels" (dict "root" . "component" "policy") | nindent 10 }}
{{- end -}}

{{/* The HTTP port of another component of the release: (dict "root" $ "component" "ingest"). */}}
{{- define "mailexec.egress.component" -}}
- ports:
    - port: {{ (index .root.Values .component).containerPort }}
      protocol: TCP
  to:
    - podSelector:
        matchLabels:
          {{- include "mailexec.componentSelectorLabels" . | nindent 10 }}
{{- end -}}

{{/* A NetworkPolicy peer: the console's pods, when it is deployed (its pages call the API). */}}
{{- define "mailexec.peer.console" -}}
{{- if .Values.console.enabled -}}
- podSelector:
    matchLabels:
      {{- include "mailexec.componentSelectorLabels" (dict "root" . "component" "console") | nindent 6 }}
{{- end -}}
{{- end -}}

{{/* The NetworkPolicy header of a component. */}}
{{- define "mailexec.networkPolicy.meta" -}}
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ include "mailexec.componentName" . }}
  namespace: {{ .root.Release.Namespace | quote }}
  labels:
    {{- include "mailexec.componentLabels" . | nindent 4 }}
  {{- with (include "mailexec.annotations" (dict "root" .root) | trim) }}{{ . | nindent 2 }}{{- end }}
{{- end -}}

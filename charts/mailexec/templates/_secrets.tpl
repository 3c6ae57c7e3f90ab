{{/*
Credentials (issue 16). Nothing secret is generated at render time (no `lookup`, no rand*):
two renders of the same values are byte-identical, so GitOps tools (Argo CD, Flux) can render
on every sync. Secrets come from existingSecret values, or are generated ONCE by the hook Job
<fullname>-secrets (templates/secrets-hook.yaml, files/ensure_secrets.py), which creates a
missing Secret and adds missing keys, and never changes a value already stored.

  <fullname>              tokens + the four service roles' database passwords (secrets.existingSecret)
  <fullname>-executor     the service token + the executor's database password (secrets.executorExistingSecret)
  <fullname>-console-key  the console's cookie key (console.existingSecret, or console.secret)
  externalDatabase.existingSecret / <fullname>-externaldb (a hook Secret): the admin password,
                          read by the migrations Job alone
  externalRabbitmq.existingSecret / <fullname>-externalrabbitmq: the RabbitMQ password

Every pod mounts only its own keys (a projected volume at /run/secrets/mailexec), and builds
its own connection URLs at start (initContainer "urls", files/compose_urls.py) into an
in-memory emptyDir at /run/mailexec/urls: MAILEXEC_DATABASE_URL_FILE, MAILEXEC_AMQP_URL_FILE.
*/}}

{{- define "mailexec.secretDir" -}}/run/secrets/mailexec{{- end -}}
{{- define "mailexec.urlDir" -}}/run/mailexec/urls{{- end -}}

{{/* The services whose PostgreSQL roles migration 0001 creates (mailexec_<service>). */}}
{{- define "mailexec.dbServices" -}}["policy","ingest","executor","notifier"]{{- end -}}

{{/* The Secret of the tokens and the service roles' passwords. */}}
{{- define "mailexec.secretName" -}}
{{- default (include "mailexec.fullname" .) .Values.secrets.existingSecret -}}
{{- end -}}

{{/* The executor's Secret: the service token and its own database password, nothing else. */}}
{{- define "mailexec.executorSecretName" -}}
{{- if .Values.secrets.existingSecret -}}
{{- default .Values.secrets.existingSecret .Values.secrets.executorExistingSecret -}}
{{- else -}}
{{- printf "%s-executor" (include "mailexec.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* The console's Secret: console.existingSecret, <fullname>-console (console.secret) or the generated <fullname>-console-key. */}}
{{- define "mailexec.console.secretName" -}}
{{- if .Values.console.existingSecret -}}
{{- .Values.console.existingSecret -}}
{{- else if .Values.console.secret -}}
{{- printf "%s-console" (include "mailexec.fullname" .) -}}
{{- else -}}
{{- printf "%s-console-key" (include "mailexec.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "mailexec.console.secretKey" -}}
{{- if .Values.console.existingSecret -}}
{{- .Values.console.existingSecretKey -}}
{{- else -}}
MAILEXEC_CONSOLE_SECRET
{{- end -}}
{{- end -}}

{{/* "true" when the hook generates the console's key. */}}
{{- define "mailexec.console.generated" -}}
{{- if and .Values.console.enabled (not .Values.console.existingSecret) (not .Values.console.secret) -}}true{{- end -}}
{{- end -}}

{{/* What the hook Job makes sure of: a JSON list for files/ensure_secrets.py ("" when nothing). */}}
{{- define "mailexec.secretsHook.spec" -}}
{{- $full := include "mailexec.fullname" . -}}
{{- $labels := dict "app.kubernetes.io/name" (include "mailexec.name" .) "app.kubernetes.io/part-of" "mailexec" "app.kubernetes.io/component" "credentials" "mailexec.io/release" .Release.Name "mailexec.io/generated-by" (printf "%s-secrets" $full) -}}
{{- $spec := list -}}
{{- if not .Values.secrets.existingSecret -}}
{{- $keys := list "MAILEXEC_ADMIN_TOKEN" "MAILEXEC_INGEST_TOKEN" "MAILEXEC_SERVICE_TOKEN" -}}
{{- range (include "mailexec.dbServices" . | fromJsonArray) -}}
{{- $keys = append $keys (printf "MAILEXEC_%s_DATABASE_PASSWORD" (upper .)) -}}
{{- end -}}
{{- $spec = append $spec (dict "name" $full "labels" $labels "generate" $keys) -}}
{{- $copy := dict "MAILEXEC_SERVICE_TOKEN" (list $full "MAILEXEC_SERVICE_TOKEN") "MAILEXEC_EXECUTOR_DATABASE_PASSWORD" (list $full "MAILEXEC_EXECUTOR_DATABASE_PASSWORD") -}}
{{- $spec = append $spec (dict "name" (printf "%s-executor" $full) "labels" $labels "copy" $copy) -}}
{{- end -}}
{{- if include "mailexec.console.generated" . -}}
{{- $spec = append $spec (dict "name" (include "mailexec.console.secretName" .) "labels" $labels "generate" (list "MAILEXEC_CONSOLE_SECRET")) -}}
{{- end -}}
{{- if $spec -}}{{- toJson $spec -}}{{- end -}}
{{- end -}}

{{/* The admin (owner) password of externalDatabase: the user's Secret, or the hook Secret <fullname>-externaldb. */}}
{{- define "mailexec.database.secretName" -}}
{{- default (printf "%s-externaldb" (include "mailexec.fullname" .)) .Values.externalDatabase.existingSecret -}}
{{- end -}}

{{- define "mailexec.database.secretKey" -}}
{{- if .Values.externalDatabase.existingSecret -}}{{- .Values.externalDatabase.existingSecretPasswordKey -}}{{- else -}}password{{- end -}}
{{- end -}}

{{- define "mailexec.rabbitmq.secretName" -}}
{{- default (printf "%s-externalrabbitmq" (include "mailexec.fullname" .)) .Values.externalRabbitmq.existingSecret -}}
{{- end -}}

{{- define "mailexec.rabbitmq.secretKey" -}}
{{- if .Values.externalRabbitmq.existingSecret -}}{{- .Values.externalRabbitmq.existingSecretPasswordKey -}}{{- else -}}rabbitmq-password{{- end -}}
{{- end -}}

{{/* The AMQP URL in full, from values (only with externalRabbitmq.password: KEDA's copy). */}}
{{- define "mailexec.rabbitmq.url" -}}
{{- $mq := .Values.externalRabbitmq -}}
{{- $vhost := ternary "" ($mq.vhost | urlquery | replace "+" "%20") (eq $mq.vhost "/") -}}
{{- printf "amqp%s://%s:%s@%s:%v/%s" (ternary "s" "" $mq.tls) ($mq.user | urlquery | replace "+" "%20") ($mq.password | urlquery | replace "+" "%20") $mq.host $mq.port $vhost -}}
{{- end -}}

{{/*
The files of a component's Secret volume: a JSON list of {secret, key, path, env}; env, when
set, is the setting read from the file (MAILEXEC_<NAME>_FILE). The database and RabbitMQ
passwords have none: the initContainer "urls" reads them.
(dict "root" $ "component" NAME)
*/}}
{{- define "mailexec.secretFiles" -}}
{{- $root := .root -}}
{{- $c := .component -}}
{{- $files := list -}}
{{- $tokens := include "mailexec.secretName" $root -}}
{{- if eq $c "console" -}}
{{- $files = append $files (dict "secret" (include "mailexec.console.secretName" $root) "key" (include "mailexec.console.secretKey" $root) "path" "console_secret" "env" "MAILEXEC_CONSOLE_SECRET") -}}
{{- else if eq $c "migrations" -}}
{{- $files = append $files (dict "secret" (include "mailexec.database.secretName" $root) "key" (include "mailexec.database.secretKey" $root) "path" "database_password" "env" "") -}}
{{- range (include "mailexec.dbServices" $root | fromJsonArray) -}}
{{- $name := printf "MAILEXEC_%s_DATABASE_PASSWORD" (upper .) -}}
{{- $files = append $files (dict "secret" $tokens "key" $name "path" (printf "%s_database_password" .) "env" $name) -}}
{{- end -}}
{{- else -}}
{{- $names := list "MAILEXEC_ADMIN_TOKEN" "MAILEXEC_INGEST_TOKEN" "MAILEXEC_SERVICE_TOKEN" -}}
{{- if eq $c "executor" -}}
{{- $tokens = include "mailexec.executorSecretName" $root -}}
{{- $names = list "MAILEXEC_SERVICE_TOKEN" -}}
{{- end -}}
{{- range $names -}}
{{- $files = append $files (dict "secret" $tokens "key" . "path" (. | trimPrefix "MAILEXEC_" | lower) "env" .) -}}
{{- end -}}
{{- $files = append $files (dict "secret" $tokens "key" (printf "MAILEXEC_%s_DATABASE_PASSWORD" (upper $c)) "path" "database_password" "env" "") -}}
{{- $files = append $files (dict "secret" (include "mailexec.rabbitmq.secretName" $root) "key" (include "mailexec.rabbitmq.secretKey" $root) "path" "amqp_password" "env" "") -}}
{{- if and (eq $c "notifier") $root.Values.notifier.smtp.existingSecret -}}
{{- $files = append $files (dict "secret" $root.Values.notifier.smtp.existingSecret "key" $root.Values.notifier.smtp.existingSecretKey "path" "smtp_url" "env" "MAILEXEC_SMTP_URL") -}}
{{- end -}}
{{- end -}}
{{- toJson $files -}}
{{- end -}}

{{/* env entries MAILEXEC_<NAME>_FILE: the component's secret files and its built URLs. */}}
{{- define "mailexec.secretFiles.env" -}}
{{- $dir := include "mailexec.secretDir" .root -}}
{{- range (include "mailexec.secretFiles" . | fromJsonArray) }}
{{- if .env }}
- name: {{ .env }}_FILE
  value: {{ printf "%s/%s" $dir .path | quote }}
{{- end }}
{{- end }}
{{- if ne .component "console" }}
- name: MAILEXEC_DATABASE_URL_FILE
  value: {{ printf "%s/database_url" (include "mailexec.urlDir" .root) | quote }}
{{- if ne .component "migrations" }}
- name: MAILEXEC_AMQP_URL_FILE
  value: {{ printf "%s/amqp_url" (include "mailexec.urlDir" .root) | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "mailexec.secretFiles.volumeMount" -}}
- name: secrets
  mountPath: {{ include "mailexec.secretDir" .root }}
  readOnly: true
{{- if ne .component "console" }}
- name: urls
  mountPath: {{ include "mailexec.urlDir" .root }}
  readOnly: true
{{- end }}
{{- end -}}

{{/*
The Secret volume: only the component's keys, projected from the Secrets holding them.
Unprivileged pods read through their fsGroup (root:fsGroup 0440); the executor's files are
root's (0400), read before its drop. Plus "urls", the in-memory emptyDir of the built URLs.
*/}}
{{- define "mailexec.secretFiles.volume" -}}
{{- $files := include "mailexec.secretFiles" . | fromJsonArray -}}
{{- $names := list -}}
{{- range $files -}}{{- $names = append $names .secret -}}{{- end -}}
- name: secrets
  projected:
    defaultMode: {{ ternary 0400 0440 (eq .component "executor") }}
    sources:
      {{- range $name := uniq $names }}
      - secret:
          name: {{ $name }}
          items:
            {{- range $files }}
            {{- if eq .secret $name }}
            - key: {{ .key }}
              path: {{ .path }}
            {{- end }}
            {{- end }}
      {{- end }}
{{- if ne .component "console" }}
- name: urls
  emptyDir:
    medium: Memory
    sizeLimit: 1Mi
{{- end }}
{{- end -}}

{{/*
The initContainer "urls": the component's own connection URLs, from the externalDatabase /
externalRabbitmq values and its password files (files/compose_urls.py). Each service connects
as its own role, mailexec_<service> (migration 0001; `mailexec migrate --login-roles` gives it
LOGIN and its password); the migrations Job alone as externalDatabase.user.
(dict "root" $ "component" NAME "securityContext" MAP)
*/}}
{{- define "mailexec.urls.initContainer" -}}
{{- $root := .root -}}
{{- $db := $root.Values.externalDatabase -}}
{{- $mq := $root.Values.externalRabbitmq -}}
{{- $dir := include "mailexec.secretDir" $root -}}
- name: urls
  image: {{ include "mailexec.image" $root }}
  imagePullPolicy: {{ $root.Values.image.pullPolicy }}
  command: ["python3", "-B", "-c", {{ $root.Files.Get "files/compose_urls.py" | quote }}]
  securityContext:
    {{- toYaml .securityContext | nindent 4 }}
  env:
    - name: OUT_DIR
      value: {{ include "mailexec.urlDir" $root | quote }}
    - name: DB_HOST
      value: {{ $db.host | quote }}
    - name: DB_PORT
      value: {{ $db.port | quote }}
    - name: DB_NAME
      value: {{ $db.database | quote }}
    - name: DB_USER
      value: {{ ternary $db.user (printf "mailexec_%s" .component) (eq .component "migrations") | quote }}
    - name: DB_PASSWORD_FILE
      value: {{ printf "%s/database_password" $dir | quote }}
    {{- if ne .component "migrations" }}
    - name: AMQP_HOST
      value: {{ $mq.host | quote }}
    - name: AMQP_PORT
      value: {{ $mq.port | quote }}
    - name: AMQP_VHOST
      value: {{ $mq.vhost | quote }}
    - name: AMQP_USER
      value: {{ $mq.user | quote }}
    - name: AMQP_TLS
      value: {{ $mq.tls | quote }}
    - name: AMQP_PASSWORD_FILE
      value: {{ printf "%s/amqp_password" $dir | quote }}
    {{- end }}
  resources:
    requests: {cpu: 10m, memory: 32Mi}
    limits: {cpu: 200m, memory: 64Mi}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
    - name: secrets
      mountPath: {{ $dir }}
      readOnly: true
    - name: urls
      mountPath: {{ include "mailexec.urlDir" $root }}
{{- end -}}

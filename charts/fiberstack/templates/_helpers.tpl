{{/* Names: everything is prefixed with the release name, truncated to Kubernetes' 63. */}}
{{- define "fiberstack.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "fiberstack.labels" -}}
app.kubernetes.io/name: fiberstack
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: operator, migration, timescaledb, redis. */}}
{{- define "fiberstack.selector" -}}
app.kubernetes.io/name: fiberstack
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* An image reference: registry/name:tag, with @digest when image.digests names one. */}}
{{- define "fiberstack.image" -}}
{{- $image := .root.Values.image -}}
{{- $ref := printf "%s/%s:%s" $image.registry .name ($image.tag | default .root.Chart.AppVersion) -}}
{{- with index ($image.digests | default dict) .name -}}
{{- $ref = printf "%s@%s" $ref . -}}
{{- end -}}
{{- $ref -}}
{{- end -}}

{{/* The Secret (name) holding the database URL for migrations: the given one, or with the
     bundled TimescaleDB its owner's URL. */}}
{{- define "fiberstack.dbSecret" -}}
{{- if .Values.database.existingSecret -}}
{{- .Values.database.existingSecret -}}
{{- else -}}
{{- printf "%s-db-admin" (include "fiberstack.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* The read-only URL for the operator: the given reader Secret, the bundled database's
     reader login, or the migration URL. */}}
{{- define "fiberstack.readerSecret" -}}
{{- if .Values.database.readerSecret -}}
{{- .Values.database.readerSecret -}}
{{- else if and .Values.timescaledb.enabled (not .Values.database.existingSecret) -}}
{{- printf "%s-db-reader" (include "fiberstack.fullname" .) -}}
{{- else -}}
{{- include "fiberstack.dbSecret" . -}}
{{- end -}}
{{- end -}}

{{- define "fiberstack.readerKey" -}}
{{- if .Values.database.readerSecret -}}{{ .Values.database.readerKey }}{{- else -}}{{ .Values.database.key }}{{- end -}}
{{- end -}}

{{/* A password of the bundled TimescaleDB's Secret (key: password, reader-password or
     writer-password): the value given for `password`, else the one already stored, else a
     new random one. Chosen once per render (kept in .Values) so every template agrees, and
     kept across upgrades through lookup. Call with (dict "root" $ "key" "password"). */}}
{{- define "fiberstack.timescaledbPassword" -}}
{{- $root := .root -}}
{{- $memo := printf "chosen-%s" .key -}}
{{- if not (hasKey $root.Values.timescaledb $memo) -}}
{{- $name := printf "%s-timescaledb" (include "fiberstack.fullname" $root) -}}
{{- $existing := lookup "v1" "Secret" $root.Release.Namespace $name -}}
{{- $password := randAlphaNum 32 -}}
{{- if and (eq .key "password") $root.Values.timescaledb.password -}}
{{- $password = $root.Values.timescaledb.password -}}
{{- else if and $existing $existing.data (index $existing.data .key) -}}
{{- $password = index $existing.data .key | b64dec -}}
{{- end -}}
{{- $_ := set $root.Values.timescaledb $memo $password -}}
{{- end -}}
{{- index $root.Values.timescaledb $memo -}}
{{- end -}}

{{/* The login users the migration Job creates in the bundled TimescaleDB. */}}
{{- define "fiberstack.readerUser" -}}fiberstack_reader_login{{- end -}}
{{- define "fiberstack.writerUser" -}}fiberstack_writer_login{{- end -}}

{{/* Restricted Pod Security for every container of the chart. */}}
{{- define "fiberstack.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

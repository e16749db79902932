{{/*
Names, labels, the image, the NATS credentials and the TOML config every component shares.
*/}}

{{- define "switchyard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "switchyard.fullname" -}}
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

{{- define "switchyard.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The name of one component's objects: <fullname>-<component>. Args: root, component. */}}
{{- define "switchyard.componentName" -}}
{{- printf "%s-%s" (include "switchyard.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels of one component. Args: root, component. */}}
{{- define "switchyard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "switchyard.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* All labels of one component. Args: root, component. */}}
{{- define "switchyard.labels" -}}
helm.sh/chart: {{ include "switchyard.chart" .root }}
{{ include "switchyard.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: switchyard
{{- end }}

{{- define "switchyard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "switchyard.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image reference. Args: root, image (a component's overrides, may be empty). */}}
{{- define "switchyard.image" -}}
{{- $image := merge (deepCopy (default dict .image)) .root.Values.image }}
{{- printf "%s:%s" $image.repository (default .root.Chart.AppVersion $image.tag) }}
{{- end }}

{{- define "switchyard.imagePullPolicy" -}}
{{- $image := merge (deepCopy (default dict .image)) .root.Values.image }}
{{- $image.pullPolicy }}
{{- end }}

{{/* The Secret holding NATS credentials. */}}
{{- define "switchyard.natsSecretName" -}}
{{- default (printf "%s-nats" (include "switchyard.fullname" .)) .Values.nats.auth.secretName }}
{{- end }}

{{/* Environment variable prefix of a component: SWITCHYARD_INGRESS_, …; the CLI's binary
(provision, api): SWITCHYARD_CLI_. */}}
{{- define "switchyard.envPrefix" -}}
{{- if has .component (list "provision" "api") }}SWITCHYARD_CLI_{{ else }}SWITCHYARD_{{ upper .component }}_{{ end }}
{{- end }}

{{/* Where the TLS Secret and the .creds file are mounted. */}}
{{- define "switchyard.tlsDir" -}}/etc/switchyard/tls{{- end }}
{{- define "switchyard.credsFile" -}}/etc/switchyard/nats/nats.creds{{- end }}

{{/*
NATS credentials as container environment (password, token). Args: root, component.
*/}}
{{- define "switchyard.natsCredentialEnv" -}}
{{- $auth := .root.Values.nats.auth }}
{{- $prefix := include "switchyard.envPrefix" . }}
{{- $secret := include "switchyard.natsSecretName" .root }}
{{- if eq $auth.type "password" }}
- name: {{ $prefix }}NATS__USER
  value: {{ required (printf "nats.auth.users.%s is required" .component) (get $auth.users .component) | quote }}
- name: {{ $prefix }}NATS__PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .component }}-password
{{- else if eq $auth.type "token" }}
- name: {{ $prefix }}NATS__TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .component }}-token
{{- end }}
{{- end }}

{{/* A component's extra environment (`env` in values): name -> value. */}}
{{- define "switchyard.extraEnv" -}}
{{- range $name, $value := . }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end }}

{{/* Bucket-name overrides as environment, for every component. */}}
{{- define "switchyard.bucketEnv" -}}
{{- with .Values.deployment.bucketNames.idempotency }}
- name: JS_KV_NAMESPACE_IDEMPOTENCY
  value: {{ . | quote }}
{{- end }}
{{- with .Values.deployment.bucketNames.rateLimits }}
- name: JS_KV_NAMESPACE_BACKPRESSURE
  value: {{ . | quote }}
{{- end }}
{{- end }}

{{/* Volumes for TLS and .creds files. Args: root, component. */}}
{{- define "switchyard.natsVolumes" -}}
{{- $nats := .root.Values.nats }}
{{- if $nats.tls.enabled }}
- name: nats-tls
  secret:
    secretName: {{ required "nats.tls.secretName is required with nats.tls.enabled" $nats.tls.secretName }}
{{- end }}
{{- if eq $nats.auth.type "creds" }}
- name: nats-creds
  secret:
    secretName: {{ include "switchyard.natsSecretName" .root }}
    items:
      - key: {{ .component }}.creds
        path: nats.creds
{{- end }}
{{- end }}

{{- define "switchyard.natsVolumeMounts" -}}
{{- if .Values.nats.tls.enabled }}
- name: nats-tls
  mountPath: {{ include "switchyard.tlsDir" . }}
  readOnly: true
{{- end }}
{{- if eq .Values.nats.auth.type "creds" }}
- name: nats-creds
  mountPath: /etc/switchyard/nats
  readOnly: true
{{- end }}
{{- end }}

{{/*
The [nats] settings that are not secret (url, TLS files, creds file), as a dict.
*/}}
{{- define "switchyard.natsSettings" -}}
{{- $nats := .Values.nats }}
{{- $out := dict "url" $nats.url }}
{{- if $nats.tls.enabled }}
{{- $dir := include "switchyard.tlsDir" . }}
{{- $_ := set $out "tls_required" true }}
{{- $_ := set $out "tls_ca_file" (printf "%s/%s" $dir $nats.tls.caKey) }}
{{- if $nats.tls.clientCert }}
{{- $_ := set $out "tls_cert_file" (printf "%s/%s" $dir $nats.tls.certKey) }}
{{- $_ := set $out "tls_key_file" (printf "%s/%s" $dir $nats.tls.keyKey) }}
{{- end }}
{{- end }}
{{- if eq $nats.auth.type "creds" }}
{{- $_ := set $out "creds_file" (include "switchyard.credsFile" .) }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/*
A service's whole config file as a dict: shared sections, then the service's `config` on top.
Args: root, component, service (its values block).
*/}}
{{- define "switchyard.serviceConfig" -}}
{{- $root := .root }}
{{- $telemetry := dict "log_format" $root.Values.telemetry.logFormat "log_filter" $root.Values.telemetry.logFilter }}
{{- with $root.Values.telemetry.otlpEndpoint }}
{{- $_ := set $telemetry "otlp_endpoint" . }}
{{- end }}
{{- $deployment := dict }}
{{- with $root.Values.deployment.prefix }}
{{- $_ := set $deployment "prefix" . }}
{{- end }}
{{- $http := dict "listen" (printf "0.0.0.0:%d" (int .service.port)) }}
{{- with .service.probesPort }}
{{- $_ := set $http "probes_listen" (printf "0.0.0.0:%d" (int .)) }}
{{- end }}
{{- $base := dict
  "nats" (include "switchyard.natsSettings" $root | fromJson)
  "telemetry" $telemetry
  "http" $http
}}
{{- if $deployment }}
{{- $_ := set $base "deployment" $deployment }}
{{- end }}
{{- toJson (mustMergeOverwrite $base (deepCopy (default dict .service.config))) }}
{{- end }}

{{/* TOML rendering of a config dict (figment reads it as the --config file). */}}
{{- define "switchyard.tomlKey" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}

{{- define "switchyard.tomlValue" -}}
{{- if kindIs "string" . }}{{ toJson . }}
{{- else if kindIs "bool" . }}{{ . }}
{{- else if or (kindIs "float64" .) (kindIs "float32" .) }}
{{- if eq (float64 .) (float64 (int64 .)) }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else if or (kindIs "int" .) (kindIs "int64" .) (kindIs "uint64" .) }}{{ . }}
{{- else if kindIs "slice" . }}[{{ range $i, $e := . }}{{ if $i }}, {{ end }}{{ include "switchyard.tomlValue" $e }}{{ end }}]
{{- else }}{{ fail (printf "config value %v (%s) cannot be written as TOML" . (kindOf .)) }}
{{- end }}
{{- end }}

{{/* Args: prefix (dotted table name, "" at the top), table. Scalars first, then sub-tables. */}}
{{- define "switchyard.tomlTable" -}}
{{- $table := .table }}
{{- $prefix := .prefix }}
{{- range $key := keys $table | sortAlpha }}
{{- $value := get $table $key }}
{{- if and (not (kindIs "map" $value)) (not (kindIs "invalid" $value)) }}
{{ include "switchyard.tomlKey" $key }} = {{ include "switchyard.tomlValue" $value }}
{{- end }}
{{- end }}
{{- range $key := keys $table | sortAlpha }}
{{- $value := get $table $key }}
{{- if kindIs "map" $value }}
{{- $name := include "switchyard.tomlKey" $key }}
{{- if $prefix }}{{ $name = printf "%s.%s" $prefix $name }}{{ end }}
[{{ $name }}]
{{- include "switchyard.tomlTable" (dict "prefix" $name "table" $value) }}
{{- end }}
{{- end }}
{{- end }}

{{/* Fails early on settings that cannot work together. */}}
{{- define "switchyard.validate" -}}
{{- $auth := .Values.nats.auth }}
{{- if and $auth.create (eq $auth.type "none") }}
{{- fail "nats.auth.create needs nats.auth.type password, token or creds" }}
{{- end }}
{{- if and .Values.nats.tls.enabled (not .Values.nats.tls.secretName) }}
{{- fail "nats.tls.enabled needs nats.tls.secretName (a Secret with the CA, and the client certificate for mutual TLS)" }}
{{- end }}
{{- if not .Values.services.ingress.probesPort }}
{{- fail "services.ingress.probesPort is required: ingress answers probes and /metrics only on their own listener (http.probes_listen), never on its API port" }}
{{- end }}
{{- range $component, $service := .Values.services }}
{{- if $service.probesPort }}
{{- if ne $component "ingress" }}
{{- fail (printf "services.%s.probesPort: only ingress serves its probes on a listener of their own (http.probes_listen); remove it" $component) }}
{{- end }}
{{- if eq (int $service.probesPort) (int $service.port) }}
{{- fail (printf "services.%s.probesPort must differ from services.%s.port" $component $component) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* The container port the probes and /metrics answer on. Args: a service's values block. */}}
{{- define "switchyard.probesPortName" -}}
{{- if .probesPort }}probes{{ else }}http{{ end }}
{{- end }}

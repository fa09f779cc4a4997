{{/*
Chart name, truncated to the 63 characters of a DNS label.
*/}}
{{- define "portcullis.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: <release>-<chart>, or the release name when it already contains the chart
name. Truncated to 63 characters; suffixed names (-config, -headless, ...) stay valid
because the suffixes are short and the base is cut to leave room for them.
*/}}
{{- define "portcullis.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Namespace for every namespaced resource.
*/}}
{{- define "portcullis.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Chart label value.
*/}}
{{- define "portcullis.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels naming the release's objects (server and test pods alike).
*/}}
{{- define "portcullis.baseLabels" -}}
app.kubernetes.io/name: {{ include "portcullis.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Selector labels of the server pods: stable for the release's lifetime (Deployment
selectors are immutable). The component label keeps the `helm test` pod out of the
Service, the PodDisruptionBudget and the spread constraints.
*/}}
{{- define "portcullis.selectorLabels" -}}
{{ include "portcullis.baseLabels" . }}
app.kubernetes.io/component: server
{{- end }}

{{/*
Common labels on every resource; each template adds app.kubernetes.io/component.
*/}}
{{- define "portcullis.labels" -}}
helm.sh/chart: {{ include "portcullis.chart" . }}
{{ include "portcullis.baseLabels" . }}
app.kubernetes.io/version: {{ (default .Chart.AppVersion .Values.image.tag) | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: portcullis
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
ServiceAccount name.
*/}}
{{- define "portcullis.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "portcullis.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Image reference: repository@digest when a digest is set, else repository:tag.
*/}}
{{- define "portcullis.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
Ports, derived from the listen addresses in config.server so the container ports,
probes, Service and NetworkPolicy always agree with what the server binds.
*/}}
{{- define "portcullis.listenPort" -}}
{{- $addr := toString .addr }}
{{- $port := regexFind "[0-9]+$" $addr }}
{{- if not $port }}
{{- fail (printf "config.server.%s: %q has no port" .key $addr) }}
{{- end }}
{{- $port }}
{{- end }}

{{- define "portcullis.grpcPort" -}}
{{- $server := .Values.config.server | default dict }}
{{- include "portcullis.listenPort" (dict "addr" (get $server "grpc_listen" | default "0.0.0.0:50051") "key" "grpc_listen") }}
{{- end }}

{{- define "portcullis.adminPort" -}}
{{- $server := .Values.config.server | default dict }}
{{- include "portcullis.listenPort" (dict "addr" (get $server "admin_listen" | default "0.0.0.0:9090") "key" "admin_listen") }}
{{- end }}

{{/*
The HTTP forward-auth port, from config.server.http_listen; empty when it is off.
*/}}
{{- define "portcullis.httpPort" -}}
{{- $server := .Values.config.server | default dict }}
{{- with get $server "http_listen" }}
{{- include "portcullis.listenPort" (dict "addr" . "key" "http_listen") }}
{{- end }}
{{- end }}

{{/*
"true" when the gRPC listener serves TLS (config.server.tls set and not empty).
*/}}
{{- define "portcullis.tlsEnabled" -}}
{{- $server := .Values.config.server | default dict }}
{{- if get $server "tls" }}true{{ end }}
{{- end }}

{{/*
Probe handler kind: grpc or http.
*/}}
{{- define "portcullis.probeType" -}}
{{- if eq .Values.probes.type "auto" }}
{{- if include "portcullis.tlsEnabled" . }}http{{ else }}grpc{{ end }}
{{- else }}
{{- .Values.probes.type }}
{{- end }}
{{- end }}

{{/*
The file secrets the chart knows: values key -> directory under /etc/portcullis/secrets.
*/}}
{{- define "portcullis.fileSecrets" -}}
apiKeys: api-keys
htpasswd: htpasswd
jwt: jwt
identity: identity
tls: tls
{{- end }}

{{/*
Name of the Secret behind secrets.<key>: the existing one, the chart's, or "" if none.
Call with (dict "root" $ "key" "apiKeys").
*/}}
{{- define "portcullis.fileSecretName" -}}
{{- $s := index .root.Values.secrets .key }}
{{- $dir := index (include "portcullis.fileSecrets" .root | fromYaml) .key }}
{{- if and $s.existingSecret $s.files }}
{{- fail (printf "secrets.%s: set existingSecret or files, not both" .key) }}
{{- end }}
{{- if and (eq .key "tls") .root.Values.certificate.enabled }}
{{- if or $s.existingSecret $s.files }}
{{- fail "certificate.enabled: the cert-manager Certificate's Secret is mounted at /etc/portcullis/secrets/tls/; leave secrets.tls.existingSecret and secrets.tls.files empty" }}
{{- end }}
{{- include "portcullis.certificateSecretName" .root }}
{{- else if $s.existingSecret }}
{{- $s.existingSecret }}
{{- else if $s.files }}
{{- printf "%s-%s" (include "portcullis.fullname" .root) $dir }}
{{- end }}
{{- end }}

{{/*
The cert-manager Certificate's Secret name.
*/}}
{{- define "portcullis.certificateSecretName" -}}
{{- default (printf "%s-tls" (include "portcullis.fullname" .)) .Values.certificate.secretName }}
{{- end }}

{{/*
DNS names of the gRPC listener's certificate (a YAML list): every in-cluster name of the
Service (and of the headless Service, when enabled), then certificate.dnsNames.
*/}}
{{- define "portcullis.certificateDNSNames" -}}
{{- $ns := include "portcullis.namespace" . }}
{{- $domain := .Values.certificate.clusterDomain }}
{{- $services := list (include "portcullis.fullname" .) }}
{{- if .Values.service.headless.enabled }}
{{- $services = append $services (printf "%s-headless" (include "portcullis.fullname" .)) }}
{{- end }}
{{- $names := list }}
{{- range $services }}
{{- $names = concat $names (list . (printf "%s.%s" . $ns) (printf "%s.%s.svc" . $ns) (printf "%s.%s.svc.%s" . $ns $domain)) }}
{{- end }}
{{- toYaml (concat $names .Values.certificate.dnsNames | uniq) }}
{{- end }}

{{/*
Name of the Secret behind secrets.env, or "" if none.
*/}}
{{- define "portcullis.envSecretName" -}}
{{- if and .Values.secrets.env.existingSecret .Values.secrets.env.values }}
{{- fail "secrets.env: set existingSecret or values, not both" }}
{{- end }}
{{- if .Values.secrets.env.existingSecret }}
{{- .Values.secrets.env.existingSecret }}
{{- else if .Values.secrets.env.values }}
{{- printf "%s-env" (include "portcullis.fullname" .) }}
{{- end }}
{{- end }}

{{/*
"true" when the config names at least one credential source: an issuer, an API key store,
an htpasswd file, or a CA for client certificates. Without one every request would be
denied, so the chart refuses to install (see portcullis.validate).
*/}}
{{- define "portcullis.hasCredentialSource" -}}
{{- $c := .Values.config | default dict }}
{{- $apiKeys := get $c "api_keys" | default dict }}
{{- $basic := get $c "basic" | default dict }}
{{- $certs := get $c "client_certificates" | default dict }}
{{- $server := get $c "server" | default dict }}
{{- $tls := get $server "tls" | default dict }}
{{- if or (get $c "issuers") (get $apiKeys "file") (get $apiKeys "postgres") (get $basic "htpasswd_file") (get $certs "ca_files") (get $tls "client_ca_file") }}true{{ end }}
{{- end }}

{{/*
Checks across values that the schema cannot express; fails the install with a message
that says what to set.
*/}}
{{- define "portcullis.validate" -}}
{{- if .Values.certificate.enabled }}
{{- $server := .Values.config.server | default dict }}
{{- $tls := get $server "tls" | default dict }}
{{- $dir := "/etc/portcullis/secrets/tls/" }}
{{- if not (and (hasPrefix $dir (toString (get $tls "cert_file"))) (hasPrefix $dir (toString (get $tls "key_file")))) }}
{{- fail `

certificate.enabled: the Certificate's Secret is mounted at /etc/portcullis/secrets/tls/,
but config.server.tls does not use it. Set:
  config:
    server:
      tls:
        cert_file: /etc/portcullis/secrets/tls/tls.crt
        key_file: /etc/portcullis/secrets/tls/tls.key` }}
{{- end }}
{{- end }}
{{- if not (include "portcullis.hasCredentialSource" .) }}
{{- fail `

portcullis: no credential source is configured, so every request would be denied.
Set at least one of:
  config.issuers                        JWT / OAuth2 issuers (discovery, jwks_uri, jwks_file,
                                        public_key_files, hmac_secret or introspection)
  config.api_keys.file / .postgres      API key stores
  config.basic.htpasswd_file            HTTP Basic
  config.client_certificates.ca_files   client certificates (or config.server.tls.client_ca_file)
For example:  --set config.issuers[0].name=corp --set config.issuers[0].issuer=https://login.example.com
              --set config.issuers[0].discovery=true
See docs/deployment.md ("Installing") in the Portcullis repository.` }}
{{- end }}
{{- end }}

{{/* Names, labels and the values every template shares. */}}

{{- define "sidegate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* "<release>" so that services read as "<release>-collector"; fullnameOverride wins. */}}
{{- define "sidegate.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "sidegate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "sidegate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sidegate
{{- end -}}

{{/* Selector labels of one component: call with (dict "root" $ "component" "policyd"). */}}
{{- define "sidegate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sidegate.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "sidegate.componentLabels" -}}
{{ include "sidegate.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "sidegate.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "sidegate.natsUrl" -}}
{{- if .Values.nats.url -}}
{{- .Values.nats.url -}}
{{- else -}}
{{- printf "nats://%s-nats.%s.svc.%s:4222" (include "sidegate.fullname" .) .Release.Namespace .Values.clusterDomain -}}
{{- end -}}
{{- end -}}

{{/* "true" when injected sidecars are native (restartable init containers, Kubernetes >= 1.29). */}}
{{- define "sidegate.nativeSidecars" -}}
{{- $mode := toString .Values.injector.nativeSidecars -}}
{{- if eq $mode "auto" -}}
{{- semverCompare ">=1.29-0" .Capabilities.KubeVersion.Version -}}
{{- else if has $mode (list "true" "false") -}}
{{- $mode -}}
{{- else -}}
{{- fail (printf "injector.nativeSidecars must be auto, true or false, not %q" $mode) -}}
{{- end -}}
{{- end -}}

{{- define "sidegate.signingSecret" -}}
{{- default (printf "%s-signing" (include "sidegate.fullname" .)) .Values.signing.existingSecret -}}
{{- end -}}

{{- define "sidegate.policyConfigMap" -}}
{{- default (printf "%s-policy" (include "sidegate.fullname" .)) .Values.policy.existingConfigMap -}}
{{- end -}}

{{- define "sidegate.webhookService" -}}
{{- printf "%s-policyd" (include "sidegate.fullname" .) -}}
{{- end -}}

{{- define "sidegate.webhookTlsSecret" -}}
{{- printf "%s-webhook-tls" (include "sidegate.fullname" .) -}}
{{- end -}}

{{/* Pod-level hardening shared by policyd and the collector (UID of the image's user). */}}
{{- define "sidegate.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "sidegate.containerSecurityContext" -}}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* The injector config policyd's webhook loads (policyd/injection.py InjectorConfig). */}}
{{- define "sidegate.injectorConfig" -}}
{{- $sidecar := .Values.injector.sidecar -}}
{{- $keys := dict -}}
{{- if .Values.signing.publicKeysConfigMap -}}
{{- $_ := set $keys "config_map" .Values.signing.publicKeysConfigMap -}}
{{- else -}}
{{- $_ := set $keys "keys" (required "signing.publicKeys (the contents of signing.pub) or signing.publicKeysConfigMap is required" (.Values.signing.publicKeys | default nil)) -}}
{{- end -}}
{{- $config := dict
  "image" (default (include "sidegate.image" .) $sidecar.image)
  "image_pull_policy" .Values.image.pullPolicy
  "nats_url" (include "sidegate.natsUrl" .)
  "native_sidecars" (eq (include "sidegate.nativeSidecars" .) "true")
  "public_keys" $keys
  "port" (int $sidecar.port)
  "admin_port" (ternary nil (int $sidecar.adminPort) (kindIs "invalid" $sidecar.adminPort))
  "resources" $sidecar.resources
  "provider_secrets" .Values.providers.secrets
  "environments" .Values.injector.environments
  "termination_grace_seconds" (int $sidecar.terminationGraceSeconds)
  "state_size_limit" $sidecar.stateSizeLimit
  "extra_env" $sidecar.extraEnv
-}}
{{- toPrettyJson $config -}}
{{- end -}}

{{/* Egress every Sidegate pod needs: NATS (bundled or external) and DNS. */}}
{{- define "sidegate.egressToNats" -}}
{{- if not .Values.nats.url }}
- to:
    - podSelector:
        matchLabels:
          {{- include "sidegate.selectorLabels" (dict "root" . "component" "nats") | nindent 10 }}
  ports:
    - {protocol: TCP, port: 4222}
{{- else }}
- ports:
    {{- range .Values.networkPolicy.externalNatsPorts }}
    - {protocol: TCP, port: {{ . }}}
    {{- end }}
{{- end }}
- ports:
    - {protocol: UDP, port: 53}
    - {protocol: TCP, port: 53}
{{- end -}}

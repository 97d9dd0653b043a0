{{- define "scopegate.labels" -}}
app.kubernetes.io/name: scopegate
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- /* The release instance is part of every selector: two releases never select each other's pods. */ -}}
{{- define "scopegate.selector" -}}
app.kubernetes.io/name: scopegate
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- /* repository@digest when a digest is set, else repository:tag (tag defaults to appVersion). */ -}}
{{- define "scopegate.image" -}}
{{- if and .image.digest (not (regexMatch "^sha256:[0-9a-f]{64}$" .image.digest)) -}}
{{- fail (printf "image digest %q of %s is not sha256:<64 hex digits>" .image.digest .image.repository) -}}
{{- end -}}
{{- $tag := default .Chart.AppVersion .image.tag -}}
{{- if .image.digest -}}{{ .image.repository }}@{{ .image.digest }}{{- else -}}{{ .image.repository }}:{{ $tag }}{{- end -}}
{{- end }}

{{- /* The injector's name is fixed: one install per cluster (see webhook.yaml). */ -}}
{{- define "scopegate.injector" -}}
scopegate-injector
{{- end }}

{{- /* The AuthPolicy validator's name is fixed for the same reason. */ -}}
{{- define "scopegate.validator" -}}
scopegate-validator
{{- end }}

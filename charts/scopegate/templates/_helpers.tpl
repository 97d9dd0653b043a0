{{- define "scopegate.labels" -}}
app.kubernetes.io/name: scopegate
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "scopegate.selector" -}}
app.kubernetes.io/name: scopegate
app.kubernetes.io/component: operator
{{- end }}

{{- define "scopegate.image" -}}
{{- $tag := default .Chart.AppVersion .image.tag -}}
{{- if .image.digest -}}{{ .image.repository }}@{{ .image.digest }}{{- else -}}{{ .image.repository }}:{{ $tag }}{{- end -}}
{{- end }}

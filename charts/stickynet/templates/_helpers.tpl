{{- define "stickynet.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "stickynet.labels" -}}
app.kubernetes.io/part-of: stickynet
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "stickynet.etcdEndpoints" -}}
{{- if .Values.etcd.endpoints -}}
{{ join "," .Values.etcd.endpoints }}
{{- else if .Values.etcd.bundled.enabled -}}
http://stickynet-etcd.{{ .Release.Namespace }}.svc:2379
{{- else -}}
{{ fail "etcd: set etcd.endpoints or etcd.bundled.enabled=true" }}
{{- end -}}
{{- end -}}

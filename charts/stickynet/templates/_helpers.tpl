{{- define "stickynet.image" -}}
{{ .Values.image.repository }}:{{ include "stickynet.tag" (.Values.image.tag | default .Chart.AppVersion) }}
{{- end -}}

{{/*
An image tag as written: a number (a build number, which the schema takes)
comes from a values file as a float64, which prints as 2.0261206e+07, and
from --set as an int64, which %s prints as %!s(int64=...).
*/}}
{{- define "stickynet.tag" -}}
{{- if kindIs "string" . }}{{ . }}{{ else if . }}{{ int64 . }}{{ end }}
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
{{- /* Every member, not the client Service: the etcd client spreads its
requests over its endpoints and leaves out those it cannot reach, where
through the Service it kept one connection to whichever member it reached
first, also one cut off from the others (read from etcd's client, not
tried). */}}
{{- $ns := .Release.Namespace -}}
{{- range $i, $_ := until (int .Values.etcd.bundled.replicas) -}}
{{ if $i }},{{ end }}http://stickynet-etcd-{{ $i }}.stickynet-etcd-peers.{{ $ns }}.svc:2379
{{- end -}}
{{- else -}}
{{ fail "etcd: set etcd.endpoints or etcd.bundled.enabled=true" }}
{{- end -}}
{{- end -}}

{{/*
The webhook's etcd timeout: its own timeout less 3 s for everything else.
Below 1 s etcd requests could not succeed, so such a timeoutSeconds is refused.
*/}}
{{- define "stickynet.storeTimeoutSeconds" -}}
{{- $t := .Values.webhook.timeoutSeconds }}
{{- if not (and (regexMatch "^[0-9]+$" (toString $t)) (ge (int $t) 4) (le (int $t) 30)) }}
{{- fail (printf "webhook.timeoutSeconds: %v is not accepted: the webhook's etcd requests get timeoutSeconds - 3 s, which must be at least 1 s, and the API server accepts at most 30; accepted: a whole number from 4 to 30" $t) }}
{{- end }}
{{- sub (int $t) 3 }}
{{- end -}}

{{/*
The seconds of a Go duration such as 90s, 5m or 1h30m (the values schema
checks the form).
*/}}
{{- define "stickynet.durationSeconds" -}}
{{- $total := 0.0 }}
{{- $per := dict "ns" 1e-9 "us" 1e-6 "µs" 1e-6 "ms" 0.001 "s" 1.0 "m" 60.0 "h" 3600.0 }}
{{- range regexFindAll "[0-9]+(\\.[0-9]+)?(ns|us|µs|ms|s|m|h)" (toString .) -1 }}
{{- $n := regexFind "^[0-9]+(\\.[0-9]+)?" . }}
{{- $total = addf $total (mulf (float64 $n) (get $per (trimPrefix $n .))) }}
{{- end }}
{{- $total }}
{{- end -}}

{{/* The kube-scheduler image: a tag or digest in extender.scheduler.image is kept; otherwise extender.scheduler.tag, or the cluster's version. */}}
{{- define "stickynet.schedulerImage" -}}
{{- $image := .Values.extender.scheduler.image }}
{{- $last := last (splitList "/" $image) }}
{{- if or (contains ":" $last) (contains "@" $last) }}
{{- with .Values.extender.scheduler.tag }}
{{- fail (printf "extender.scheduler.tag: %q given while extender.scheduler.image %q has a tag or digest already; set one of them" (include "stickynet.tag" .) $image) }}
{{- end }}
{{- $image }}
{{- else }}
{{- $tag := include "stickynet.tag" .Values.extender.scheduler.tag | default (regexFind "^v[0-9]+\\.[0-9]+\\.[0-9]+" .Capabilities.KubeVersion.Version) }}
{{- if not $tag }}
{{- fail (printf "extender.scheduler.tag: empty, and the cluster's version %q has no vMAJOR.MINOR.PATCH to use instead; set the kube-scheduler tag" .Capabilities.KubeVersion.Version) }}
{{- end }}
{{- printf "%s:%s" $image $tag }}
{{- end }}
{{- end -}}

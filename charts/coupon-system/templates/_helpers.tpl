{{- define "coupon.labels" -}}
app.kubernetes.io/part-of: coupon-system
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{/*
Where one component's pods run. Called with a dict: `values` (the component's values), `name`
(its app.kubernetes.io/name), `root` (the top context) and `spread` (spread the pods over
nodes and zones unless topologySpreadConstraints are given: the api, so that a 10-replica api
for a flash sale does not land on one node).
*/}}
{{- define "coupon.scheduling" -}}
{{- $v := .values -}}
{{- with $v.priorityClassName }}
priorityClassName: {{ . | quote }}
{{- end }}
{{- with $v.nodeSelector }}
nodeSelector: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.tolerations }}
tolerations: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.affinity }}
affinity: {{- toYaml . | nindent 2 }}
{{- end }}
{{- if $v.topologySpreadConstraints }}
topologySpreadConstraints: {{- toYaml $v.topologySpreadConstraints | nindent 2 }}
{{- else if .spread }}
topologySpreadConstraints:
{{- range list "kubernetes.io/hostname" "topology.kubernetes.io/zone" }}
  - maxSkew: 1
    topologyKey: {{ . }}
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        app.kubernetes.io/instance: {{ $.root.Release.Name }}
        app.kubernetes.io/name: {{ $.name }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
The consumer group: `consumer.group` if set; else the group the running consumer already
uses (an upgrade keeps its offsets rather than reading every topic again from the start);
else one per namespace and release. The earlier chart's default, `coupon-consumer`, was the
same in every release: an upgrade from it must say which group to use.
*/}}
{{- define "coupon.consumerGroup" -}}
{{- $group := .Values.consumer.group -}}
{{- if not $group -}}
{{- $running := lookup "apps/v1" "Deployment" .Release.Namespace .Values.consumer.name -}}
{{- if $running -}}
{{- range $container := $running.spec.template.spec.containers -}}
{{- range $env := ($container.env | default list) -}}
{{- if and (eq $env.name "CONSUMER_GROUP") $env.value -}}
{{- if eq $env.value "coupon-consumer" -}}
{{- fail "the running consumer uses the group coupon-consumer, which every release of the earlier chart shared: set consumer.group=coupon-consumer to keep it (one shop on this Kafka), or give each shop's release its own group (it then reads its topics from the start)" -}}
{{- end -}}
{{- $group = $env.value -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{ $group | default (printf "%s-%s-coupon-consumer" .Release.Namespace .Release.Name) }}
{{- end -}}

{{- define "coupon.serviceImage" -}}
{{ .Values.image.service.repository }}:{{ .Values.image.service.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "coupon.operatorImage" -}}
{{ .Values.image.operator.repository }}:{{ .Values.image.operator.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* Non-root, read-only, no privilege escalation, no capabilities. */}}
{{- define "coupon.podSecurity" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "coupon.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* Connection settings: secrets from the existing Secret, the rest from values. */}}
{{- define "coupon.connectionEnv" -}}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.connections.existingSecret }}
      key: REDIS_URL
- name: KAFKA_BROKERS
  value: {{ .Values.connections.kafkaBrokers | quote }}
{{- end -}}

{{- define "coupon.probes" -}}
livenessProbe:
  httpGet: {path: /healthz, port: http}
  periodSeconds: 10
readinessProbe:
  httpGet: {path: /readyz, port: http}
  periodSeconds: 2
  failureThreshold: 2
{{- end -}}

{{/* TOPIC_CONFIG: connections.topicConfig as name=value pairs, sorted. */}}
{{- define "coupon.topicConfig" -}}
{{- $pairs := list -}}
{{- range $name, $value := .Values.connections.topicConfig -}}
{{- $pairs = append $pairs (printf "%s=%v" $name $value) -}}
{{- end -}}
{{ join "," $pairs }}
{{- end -}}

{{- define "coupon.labels" -}}
app.kubernetes.io/part-of: coupon-system
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
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

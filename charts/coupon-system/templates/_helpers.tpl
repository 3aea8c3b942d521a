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

{{/* Connection settings: secrets from the existing Secret, the rest from values; TLS
material and Kafka client properties from their Secrets, mounted by coupon.connectionVolumes. */}}
{{- define "coupon.connectionEnv" -}}
{{- $c := .Values.connections -}}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      {{- include "coupon.urlFrom" (dict "from" $c.redisUrlFrom "secret" $c.existingSecret "key" "REDIS_URL" "value" "connections.redisUrlFrom") | nindent 6 }}
{{- with $c.redis.tlsSecret }}
- name: REDIS_CA_FILE
  value: /etc/coupon/redis-tls/{{ $c.redis.caKey }}
{{- if $c.redis.clientCertificate }}
- name: REDIS_CLIENT_CERT_FILE
  value: /etc/coupon/redis-tls/tls.crt
- name: REDIS_CLIENT_KEY_FILE
  value: /etc/coupon/redis-tls/tls.key
{{- end }}
{{- end }}
- name: KAFKA_BROKERS
  value: {{ $c.kafkaBrokers | quote }}
{{- range $name, $value := $c.kafka.properties }}
- name: {{ printf "KAFKA_%s" ($name | upper | replace "." "_") }}
  value: {{ $value | quote }}
{{- end }}
{{- with $c.kafka.propertiesSecret.name }}
- name: KAFKA_PROPERTIES_FILE
  value: /etc/coupon/kafka-properties/{{ $c.kafka.propertiesSecret.key }}
{{- end }}
{{- $k := $c.kafka }}
{{- $protocol := include "coupon.kafkaSecurityProtocol" $k }}
{{- if $protocol }}
- name: KAFKA_SECURITY_PROTOCOL
  value: {{ $protocol }}
{{- end }}
{{- if dig "caSecret" "name" "" $k }}
- name: KAFKA_SSL_CA_LOCATION
  value: /etc/coupon/kafka-ca/{{ dig "caSecret" "key" "ca.crt" $k }}
{{- else if and (contains "SSL" $protocol) (not (hasKey ($k.properties | default dict) "ssl.ca.location")) }}
# No CA named: librdkafka looks for the system's bundle (a public CA: MSK, Confluent Cloud).
- name: KAFKA_SSL_CA_LOCATION
  value: probe
{{- end }}
{{- if dig "sasl" "mechanism" "" $k }}
- name: KAFKA_SASL_MECHANISM
  value: {{ $k.sasl.mechanism | quote }}
- name: KAFKA_SASL_USERNAME
  value: {{ required "connections.kafka.sasl.username is needed with sasl.mechanism" $k.sasl.username | quote }}
- name: KAFKA_SASL_PASSWORD_FILE
  value: /etc/coupon/kafka-sasl/{{ dig "sasl" "passwordSecret" "key" "password" $k }}
{{- end }}
{{- if dig "clientCertSecret" "name" "" $k }}
- name: KAFKA_SSL_CERTIFICATE_LOCATION
  value: /etc/coupon/kafka-client/{{ dig "clientCertSecret" "certKey" "user.crt" $k }}
- name: KAFKA_SSL_KEY_LOCATION
  value: /etc/coupon/kafka-client/{{ dig "clientCertSecret" "keyKey" "user.key" $k }}
{{- end }}
{{- end -}}

{{/* The secretKeyRef (name and key) of a URL: `.from` ({name, key}) when set, else `.key`
of the connections Secret. */}}
{{- define "coupon.urlFrom" -}}
{{- $from := .from | default dict -}}
{{- if $from.name -}}
name: {{ $from.name }}
key: {{ required (printf "%s.key is needed with %s.name" .value .value) $from.key }}
{{- else -}}
name: {{ .secret }}
key: {{ .key }}
{{- end -}}
{{- end -}}

{{/* security.protocol from the Kafka Secrets named (empty: none named, or `properties`
sets it, which wins). A property the chart sets from a Secret may not be set in `properties`
too (two variables of one name). With propertiesSecret, whose file the chart cannot read,
`properties` must say the protocol. */}}
{{- define "coupon.kafkaSecurityProtocol" -}}
{{- $props := .properties | default dict -}}
{{- $ca := dig "caSecret" "name" "" . -}}
{{- $client := dig "clientCertSecret" "name" "" . -}}
{{- $sasl := dig "sasl" "mechanism" "" . -}}
{{- $password := dig "sasl" "passwordSecret" "name" "" . -}}
{{- if and $password (not $sasl) -}}
{{- fail "connections.kafka.sasl.passwordSecret needs sasl.mechanism (SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN)" -}}
{{- end -}}
{{- if and $sasl (not $password) -}}
{{- fail "connections.kafka.sasl.mechanism needs sasl.passwordSecret.name (Strimzi: the KafkaUser's Secret)" -}}
{{- end -}}
{{- range $property, $from := dict "ssl.ca.location" $ca "sasl.mechanism" $sasl "ssl.certificate.location" $client "ssl.key.location" $client -}}
{{- if and $from (hasKey $props $property) -}}
{{- fail (printf "connections.kafka.properties.%s is set by the chart from the Secret named beside it: leave it out of properties" $property) -}}
{{- end -}}
{{- end -}}
{{- if and (or $ca $client $sasl) (not (hasKey $props "security.protocol")) -}}
{{- if dig "propertiesSecret" "name" "" . -}}
{{- fail "connections.kafka: with propertiesSecret, set security.protocol in connections.kafka.properties (the chart cannot read the file's)" -}}
{{- end -}}
{{- $tls := or $ca $client (ne (toString .tls) "false") -}}
{{- if and $sasl $tls }}SASL_SSL{{ else if $sasl }}SASL_PLAINTEXT{{ else }}SSL{{ end -}}
{{- end -}}
{{- end -}}

{{/* Volumes of the connection Secrets (Redis TLS, Kafka properties and TLS, and with
"sql" true the SQL TLS material), mounted whole (no subPath) so rotated Secrets arrive. */}}
{{- define "coupon.connectionVolumes" -}}
{{- $c := .root.Values.connections -}}
{{- with $c.redis.tlsSecret }}
- name: redis-tls
  secret: {secretName: {{ . }}}
{{- end }}
{{- with $c.kafka.propertiesSecret.name }}
- name: kafka-properties
  secret: {secretName: {{ . }}}
{{- end }}
{{- with $c.kafka.tlsSecret }}
- name: kafka-tls
  secret: {secretName: {{ . }}}
{{- end }}
{{- with dig "caSecret" "name" "" $c.kafka }}
- name: kafka-ca
  secret: {secretName: {{ . }}}
{{- end }}
{{- with dig "sasl" "passwordSecret" "name" "" $c.kafka }}
- name: kafka-sasl
  secret: {secretName: {{ . }}}
{{- end }}
{{- with dig "clientCertSecret" "name" "" $c.kafka }}
- name: kafka-client
  secret: {secretName: {{ . }}}
{{- end }}
{{- if .sql }}
{{- with $c.sql.tlsSecret }}
- name: sql-tls
  {{- if dig "postgresSslMode" "" $c.sql }}
  # Only the CA: a CA Secret may hold the CA's key too (CloudNativePG's <cluster>-ca does).
  secret: {secretName: {{ . }}, items: [{key: {{ dig "caKey" "ca.crt" $c.sql }}, path: {{ dig "caKey" "ca.crt" $c.sql }}}]}
  {{- else }}
  secret: {secretName: {{ . }}}
  {{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "coupon.connectionVolumeMounts" -}}
{{- $c := .root.Values.connections -}}
{{- if $c.redis.tlsSecret }}
- {name: redis-tls, mountPath: /etc/coupon/redis-tls, readOnly: true}
{{- end }}
{{- if $c.kafka.propertiesSecret.name }}
- {name: kafka-properties, mountPath: /etc/coupon/kafka-properties, readOnly: true}
{{- end }}
{{- if $c.kafka.tlsSecret }}
- {name: kafka-tls, mountPath: /etc/coupon/kafka-tls, readOnly: true}
{{- end }}
{{- if dig "caSecret" "name" "" $c.kafka }}
- {name: kafka-ca, mountPath: /etc/coupon/kafka-ca, readOnly: true}
{{- end }}
{{- if dig "sasl" "passwordSecret" "name" "" $c.kafka }}
- {name: kafka-sasl, mountPath: /etc/coupon/kafka-sasl, readOnly: true}
{{- end }}
{{- if dig "clientCertSecret" "name" "" $c.kafka }}
- {name: kafka-client, mountPath: /etc/coupon/kafka-client, readOnly: true}
{{- end }}
{{- if and .sql $c.sql.tlsSecret }}
- {name: sql-tls, mountPath: /etc/coupon/sql-tls, readOnly: true}
{{- end }}
{{- end -}}

{{/* AUTH_MODE of the api; `open` only when explicitly allowed. */}}
{{- define "coupon.authMode" -}}
{{- $auth := .Values.api.auth -}}
{{- if and (eq $auth.mode "open") (not $auth.allowOpen) -}}
{{- fail "api.auth.mode=open lets anyone apply as anyone (the user is whatever the request body says); set api.auth.allowOpen=true to accept that, or use jwt or header" -}}
{{- end -}}
{{- if and (eq $auth.mode "header") (not (and .Values.networkPolicy.enabled .Values.networkPolicy.apiFrom)) (not $auth.acceptHeaderFromAnyPod) -}}
{{- fail "api.auth.mode=header trusts whoever reaches the api to name the user: admit only your gateway (networkPolicy.enabled=true and networkPolicy.apiFrom set to the gateway's pods), or set api.auth.acceptHeaderFromAnyPod=true to accept that risk" -}}
{{- end -}}
{{- if and (eq $auth.mode "jwt") (not (and $auth.jwt.issuer $auth.jwt.audience)) (not $auth.jwt.acceptAnyIssuerAndAudience) -}}
{{- fail "api.auth.mode=jwt needs api.auth.jwt.issuer and api.auth.jwt.audience: without them, tokens your identity provider made for any other client are accepted; set api.auth.jwt.acceptAnyIssuerAndAudience=true to accept that" -}}
{{- end -}}
{{- $auth.mode -}}
{{- end -}}

{{/* Where the api's keys come from: "url" (the provider's JWKS URL), "file" (a JWKS
document in a ConfigMap or Secret), or nothing (the HS256 secret). */}}
{{- define "coupon.jwks" -}}
{{- $jwks := .Values.api.auth.jwt.jwks -}}
{{- if and $jwks.configMap $jwks.secret -}}
{{- fail "api.auth.jwt.jwks: set configMap or secret, not both" -}}
{{- end -}}
{{- if and $jwks.url (or $jwks.configMap $jwks.secret) -}}
{{- fail "api.auth.jwt.jwks: set url, or configMap or secret, not both" -}}
{{- end -}}
{{- if and $jwks.ca.configMap $jwks.ca.secret -}}
{{- fail "api.auth.jwt.jwks.ca: set configMap or secret, not both" -}}
{{- end -}}
{{- if and (or $jwks.ca.configMap $jwks.ca.secret) (not $jwks.url) -}}
{{- fail "api.auth.jwt.jwks.ca is the CA of api.auth.jwt.jwks.url's server: set url too" -}}
{{- end -}}
{{- if $jwks.url }}url{{ else if or $jwks.configMap $jwks.secret }}file{{ end -}}
{{- end -}}

{{/* The kubelet's probes, on the named container port (`.port`). */}}
{{- define "coupon.probes" -}}
livenessProbe:
  httpGet: {path: /healthz, port: {{ .port }}}
  periodSeconds: 10
readinessProbe:
  httpGet: {path: /readyz, port: {{ .port }}}
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

{{/*
Milliseconds of a duration written as the schema allows ("1500ms", "10s").
*/}}
{{- define "coupon.millis" -}}
{{- if hasSuffix "ms" . -}}{{ trimSuffix "ms" . | int }}{{- else -}}{{ mul (trimSuffix "s" . | int) 1000 }}{{- end -}}
{{- end -}}

{{/* The NetworkPolicy peer that may scrape metrics: networkPolicy.metricsFrom's pods, in
networkPolicy.metricsNamespaces' namespaces (else the release namespace). */}}
{{- define "coupon.metricsPeer" -}}
podSelector:
  matchLabels:
    {{- toYaml .Values.networkPolicy.metricsFrom | nindent 4 }}
{{- with .Values.networkPolicy.metricsNamespaces }}
namespaceSelector:
  matchLabels:
    {{- toYaml . | nindent 4 }}
{{- end }}
{{- end -}}

{{/* operator.namespaceSelector as a label selector (`key=value,...`, keys sorted); empty
without one. */}}
{{- define "coupon.namespaceSelector" -}}
{{- $pairs := list }}
{{- range $key, $value := .Values.operator.namespaceSelector }}
{{- $pairs = append $pairs (printf "%s=%s" $key $value) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}

{{/* With recordSigning.secret: the key file records are signed (api) and verified
(consumer) with, mounted whole (no subPath) so that a rotated key reaches running pods on
their next restart. Empty otherwise. */}}
{{- define "coupon.recordKeysEnv" -}}
{{- with .Values.recordSigning.secret }}
- name: RECORD_KEYS_FILE
  value: /etc/coupon/record-keys/{{ $.Values.recordSigning.key }}
{{- end }}
{{- end }}

{{- define "coupon.recordKeysMount" -}}
{{- if .Values.recordSigning.secret }}
- {name: record-keys, mountPath: /etc/coupon/record-keys, readOnly: true}
{{- end }}
{{- end }}

{{- define "coupon.recordKeysVolume" -}}
{{- with .Values.recordSigning.secret }}
- name: record-keys
  secret: {secretName: {{ . }}}
{{- end }}
{{- end }}

{{/* A component's podLabels (called with `values` and `key`, its values' name), refused
where they would take the place of the chart's own labels: the selectors and the operator's
scaling key on those. */}}
{{- define "coupon.podLabels" -}}
{{- range $label, $_ := .values.podLabels }}
{{- if or (hasPrefix "app.kubernetes.io/" $label) (hasPrefix "helm.sh/" $label) (hasPrefix "coupons.fcfs.dev/" $label) }}
{{- fail (printf "%s.podLabels: %s is one of the chart's own labels" $.key $label) }}
{{- end }}
{{- end }}
{{- with .values.podLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* A component's extraEnv, after the chart's variables. A name the chart sets too is
refused by the API server (server-side apply keeps one entry per name), so an override goes
through the chart's own value instead. */}}
{{- define "coupon.extraEnv" -}}
{{- with .extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Names and labels, as in every Helm chart. */}}
{{- define "otel-sidecar.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "otel-sidecar.fullname" -}}
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

{{/* The gateway tier's headless Service: the fullname cut so that the suffix still fits in 63 characters. */}}
{{- define "otel-sidecar.headlessName" -}}
{{- printf "%s-headless" (include "otel-sidecar.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}

{{- define "otel-sidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "otel-sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: {{ .Values.mode }}
{{- end }}

{{- define "otel-sidecar.labels" -}}
{{ include "otel-sidecar.chartLabels" . }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The labels the chart sets on every object; commonLabels may not reuse their keys (validate.yaml). */}}
{{- define "otel-sidecar.chartLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "otel-sidecar.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{ include "otel-sidecar.jobLabel" . }}
{{- end }}

{{/* The environment variables the chart sets on the agent container; extraEnvs may not set them again. */}}
{{- define "otel-sidecar.ownEnvNames" -}}
{{- list "OTEL_SIDECAR_GRPC_ENDPOINT" "OTEL_SIDECAR_HTTP_ENDPOINT" "OTEL_SIDECAR_METRICS_ENDPOINT" "OTEL_SIDECAR_ADMIN_ENDPOINT" "K8S_POD_NAME" "K8S_NAMESPACE_NAME" "K8S_NODE_NAME" | toJson }}
{{- end }}

{{/* The workload's name, as workload.yaml renders it. */}}
{{- define "otel-sidecar.workloadName" -}}
{{- $fullname := include "otel-sidecar.fullname" . }}
{{- $name := ternary $fullname (default $fullname .Values.workload.name) (eq .Values.mode "gateway") }}
{{- /* A StatefulSet's name goes into its pods' controller-revision-hash label, limited to 63 characters. */}}
{{- ternary ($name | trunc 52 | trimSuffix "-") $name (eq (include "otel-sidecar.kind" .) "StatefulSet") }}
{{- end }}

{{/* The job name Prometheus gives the agents' targets (ServiceMonitor/PodMonitor jobLabel), whatever the release or
name overrides: the alert rules and dashboards select job=~".*otel-sidecar.*". */}}
{{- define "otel-sidecar.jobLabel" -}}
otel-sidecar/job: otel-sidecar
{{- end }}

{{- define "otel-sidecar.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "otel-sidecar.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "otel-sidecar.configMapName" -}}
{{- default (include "otel-sidecar.fullname" .) .Values.existingConfigMap }}
{{- end }}

{{- define "otel-sidecar.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) }}
{{- end }}
{{- end }}

{{/* Receivers listen on localhost beside the orchestrator, on every interface in the gateway tier. */}}
{{- define "otel-sidecar.bindHost" -}}
{{- if eq .Values.mode "gateway" }}{{ .Values.listenAddress }}{{ else }}127.0.0.1{{ end }}
{{- end }}

{{/* Environment given to the orchestrator's containers so their OpenTelemetry SDKs export to the sidecar. */}}
{{- define "otel-sidecar.otlpClientEnv" -}}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ printf "http://localhost:%v" .Values.ports.otlp.containerPort | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: grpc
{{- end }}

{{/*
The agent container. Also the snippet for injecting the agent into your own pod templates from a parent chart:
  annotations:
    checksum/otel-sidecar-config: {{ include "otel-sidecar.configChecksum" (index .Subcharts "otel-sidecar") | quote }}
  initContainers:
    {{- include "otel-sidecar.container" (index .Subcharts "otel-sidecar") | nindent 4 }}
  volumes:
    {{- include "otel-sidecar.volumes" (index .Subcharts "otel-sidecar") | nindent 4 }}
(see docs/kubernetes.md).
*/}}
{{- define "otel-sidecar.container" -}}
{{- if and (eq .Values.mode "sidecar") .Values.sidecar.native (semverCompare "<1.29-0" .Capabilities.KubeVersion.Version) }}
{{- /* Older API servers drop restartPolicy, and an init container without it may not have probes: the pods
would be refused. Checked here, not in the workload, so that charts injecting the agent are guarded too. */}}
{{- fail (printf "sidecar.native needs Kubernetes 1.29+ and this cluster is %s: set sidecar.native=false" .Capabilities.KubeVersion.Version) }}
{{- end }}
- name: otel-sidecar
  image: {{ include "otel-sidecar.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  {{- if and (eq .Values.mode "sidecar") .Values.sidecar.native }}
  restartPolicy: Always
  {{- end }}
  args: ["run", "--config", "/etc/otel-sidecar/config.yaml"]
  env:
    - name: OTEL_SIDECAR_GRPC_ENDPOINT
      value: {{ printf "%s:%v" (include "otel-sidecar.bindHost" .) .Values.ports.otlp.containerPort | quote }}
    - name: OTEL_SIDECAR_HTTP_ENDPOINT
      value: {{ printf "%s:%v" (include "otel-sidecar.bindHost" .) (index .Values.ports "otlp-http").containerPort | quote }}
    - name: OTEL_SIDECAR_METRICS_ENDPOINT
      value: {{ printf "%s:%v" .Values.listenAddress .Values.ports.metrics.containerPort | quote }}
    - name: OTEL_SIDECAR_ADMIN_ENDPOINT
      value: {{ printf "%s:%v" .Values.listenAddress .Values.ports.admin.containerPort | quote }}
    - name: K8S_POD_NAME
      valueFrom: {fieldRef: {fieldPath: metadata.name}}
    - name: K8S_NAMESPACE_NAME
      valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
    - name: K8S_NODE_NAME
      valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
    {{- with .Values.extraEnvs }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    {{- range $name, $port := .Values.ports }}
    {{- if $port.enabled }}
    - name: {{ $name }}
      containerPort: {{ $port.containerPort }}
      protocol: {{ $port.protocol }}
    {{- end }}
    {{- end }}
  livenessProbe:
    {{- include "otel-sidecar.probe" (list . .Values.livenessProbe) | nindent 4 }}
  {{- if eq .Values.mode "gateway" }}
  {{- /* Not beside the orchestrator: a sidecar's readiness is its pod's, and the agent is not ready while it
  reloads (a SIGHUP, a rotated certificate), which would take the orchestrator out of its Services. */}}
  readinessProbe:
    {{- include "otel-sidecar.probe" (list . .Values.readinessProbe) | nindent 4 }}
  {{- end }}
  startupProbe:
    {{- include "otel-sidecar.probe" (list . .Values.startupProbe) | nindent 4 }}
  {{- with .Values.lifecycle }}
  lifecycle:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  resources:
    {{- toYaml .Values.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: otel-sidecar-config
      mountPath: /etc/otel-sidecar
      readOnly: true
    - name: otel-sidecar-data
      mountPath: /var/lib/otel-sidecar
    - name: otel-sidecar-tmp
      mountPath: /tmp
    {{- with .Values.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

{{/* For a pod template annotation (`checksum/config`), so that a change of the agent config rolls the pods: the
agent reads its config file only at start and on SIGHUP. Empty with `existingConfigMap`, which the chart cannot
see into. */}}
{{- define "otel-sidecar.configChecksum" -}}
{{- if not .Values.existingConfigMap }}{{ toYaml .Values.config | sha256sum }}{{ end }}
{{- end }}

{{/* The pod volumes the agent container mounts. A StatefulSet with persistence gets `otel-sidecar-data` from its
claim template instead. */}}
{{- define "otel-sidecar.volumes" -}}
- name: otel-sidecar-config
  configMap:
    name: {{ include "otel-sidecar.configMapName" . }}
    items:
      - {key: config.yaml, path: config.yaml}
- name: otel-sidecar-tmp
  emptyDir: {sizeLimit: 64Mi}
{{- if not .Values.persistence.enabled }}
- name: otel-sidecar-data
  emptyDir: {sizeLimit: {{ .Values.persistence.emptyDirSizeLimit }}}
{{- else if not (include "otel-sidecar.claimTemplate" .) }}
- name: otel-sidecar-data
  persistentVolumeClaim:
    claimName: {{ default (printf "%s-data" (include "otel-sidecar.fullname" .)) .Values.persistence.existingClaim }}
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Deployment or StatefulSet, for the workload (sidecar mode) or the agents (gateway mode). */}}
{{- define "otel-sidecar.kind" -}}
{{- if eq .Values.mode "gateway" }}{{ .Values.gateway.kind }}{{ else }}{{ .Values.workload.kind }}{{ end }}
{{- end }}

{{/* True (non-empty) when a StatefulSet creates one data claim per pod from a claim template. */}}
{{- define "otel-sidecar.claimTemplate" -}}
{{- if and .Values.persistence.enabled (not .Values.persistence.existingClaim) (eq (include "otel-sidecar.kind" .) "StatefulSet") }}true{{ end }}
{{- end }}

{{/* A probe of the admin endpoint, over HTTPS when the config serves it so (unless the probe names its scheme).
Called with (list <root context> <probe>). */}}
{{- define "otel-sidecar.probe" -}}
{{- $root := index . 0 }}
{{- $probe := deepCopy (index . 1) }}
{{- if and (include "otel-sidecar.adminTls" $root) (not (hasKey $probe.httpGet "scheme")) }}
{{- $_ := set $probe.httpGet "scheme" "HTTPS" }}
{{- end }}
{{- toYaml $probe }}
{{- end }}

{{/* Non-empty when the config the chart renders serves the admin endpoint (probes, own metrics) over TLS. The chart
cannot see into an existingConfigMap: set the probes' and monitors' schemes yourself then. */}}
{{- define "otel-sidecar.adminTls" -}}
{{- if and (not .Values.existingConfigMap) (dig "service" "telemetry" "admin" "tls" "cert_file" "" (.Values.config | default dict)) }}true{{ end }}
{{- end }}

{{/* Non-empty when the config the chart renders serves the span metrics (the `prometheus` exporter) over TLS. */}}
{{- define "otel-sidecar.metricsTls" -}}
{{- if and (not .Values.existingConfigMap) (dig "exporters" "prometheus" "tls" "cert_file" "" (.Values.config | default dict)) }}true{{ end }}
{{- end }}

{{/* Non-empty when the chart renders a PodMonitor or ServiceMonitor for these agents. */}}
{{- define "otel-sidecar.monitored" -}}
{{- if or .Values.podMonitor.enabled (and .Values.serviceMonitor.enabled (eq .Values.mode "gateway")) }}true{{ end }}
{{- end }}

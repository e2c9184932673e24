{{/* Names ------------------------------------------------------------------------------ */}}

{{- define "token-economy-exporter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "token-economy-exporter.fullname" -}}
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

{{- define "token-economy-exporter.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels ----------------------------------------------------------------------------- */}}

{{- define "token-economy-exporter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "token-economy-exporter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "token-economy-exporter.labels" -}}
helm.sh/chart: {{ include "token-economy-exporter.chart" . }}
{{ include "token-economy-exporter.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: token-economy
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The pods the PodMonitor scrapes: this chart's vLLM pods, or the selector you give. */}}
{{- define "token-economy-exporter.podSelector" -}}
{{- if .Values.podMonitor.selector }}
{{- toYaml .Values.podMonitor.selector }}
{{- else if .Values.vllm.enabled }}
matchLabels:
  {{- include "token-economy-exporter.selectorLabels" . | nindent 2 }}
{{- else }}
{{- fail "podMonitor.selector is required when vllm.enabled=false: set it to a label selector of your vLLM pods (e.g. {matchLabels: {app: my-vllm}})" }}
{{- end }}
{{- end }}

{{/*
The exporter as a container of a vLLM pod, for this chart's Deployment and for charts of your
own. Call it with a dict:

  values  the values of this chart (this chart: .Values; a parent chart that depends on it:
          index .Values "token-economy-exporter", or the alias you gave it)
  native  optional bool, overrides values.exporter.nativeSidecar

With native true it renders an init container with restartPolicy: Always (a native sidecar,
Kubernetes >= 1.29): put it under initContainers. With native false, an ordinary container: put
it under containers. Either way the pod needs shareProcessNamespace: true and the exporter must
run as vLLM's UID for GPU discovery (helm/token-economy-exporter/README.md).
*/}}
{{- define "token-economy-exporter.sidecar" -}}
{{- $v := .values }}
{{- $e := $v.exporter }}
{{- $native := $e.nativeSidecar }}
{{- if hasKey . "native" }}{{ $native = .native }}{{ end -}}
- name: {{ $e.containerName }}
  image: {{ printf "%s:%s" $e.image.repository ($e.image.tag | toString) | quote }}
  imagePullPolicy: {{ $e.image.pullPolicy }}
  {{- if $native }}
  restartPolicy: Always
  {{- end }}
  args: ["run"]
  env:
    - name: TOKEN_ECONOMY_VLLM_URL
      value: {{ $e.vllmUrl | default (printf "http://127.0.0.1:%v" $v.vllm.port) | quote }}
    - name: TOKEN_ECONOMY_LISTEN_ADDRESS
      value: {{ printf "0.0.0.0:%v" $e.port | quote }}
    - name: TOKEN_ECONOMY_INTERVAL
      value: {{ $e.interval | toString | quote }}
    - name: TOKEN_ECONOMY_ENERGY_SOURCE
      value: {{ $e.energySource | quote }}
    - name: TOKEN_ECONOMY_LOG_LEVEL
      value: {{ $e.logLevel | quote }}
    {{- with $v.model.params }}
    - name: TOKEN_ECONOMY_MODEL_PARAMS
      value: {{ . | toString | quote }}
    {{- end }}
    {{- with $v.model.bytesPerParam }}
    - name: TOKEN_ECONOMY_BYTES_PER_PARAM
      value: {{ . | toString | quote }}
    {{- end }}
    {{- with $v.gpu.type }}
    - name: TOKEN_ECONOMY_GPU_TYPE
      value: {{ . | quote }}
    {{- end }}
    - name: TOKEN_ECONOMY_GPU_COUNT
      value: {{ $v.gpu.count | toString | quote }}
    - name: TOKEN_ECONOMY_GPU_HOURLY_PRICE
      value: {{ $v.pricing.gpuHourlyPrice | toString | quote }}
    - name: TOKEN_ECONOMY_CURRENCY
      value: {{ $v.pricing.currency | quote }}
    - name: TOKEN_ECONOMY_ELECTRICITY_PRICE_PER_KWH
      value: {{ $v.pricing.electricityPricePerKwh | toString | quote }}
    - name: TOKEN_ECONOMY_PUE
      value: {{ $v.pricing.pue | toString | quote }}
    - name: TOKEN_ECONOMY_GRID_CARBON_INTENSITY
      value: {{ $v.pricing.gridCarbonIntensity | toString | quote }}
    {{- range $key, $value := $e.extraSettings }}
    - name: {{ printf "TOKEN_ECONOMY_%s" (upper $key) }}
      value: {{ $value | toString | quote }}
    {{- end }}
    {{- with $e.nvidiaVisibleDevices }}
    # The exporter requests no GPU; this makes the NVIDIA runtime give it the node's GPUs and
    # NVML, and GPU discovery narrows them to vLLM's.
    - name: NVIDIA_VISIBLE_DEVICES
      value: {{ . | quote }}
    - name: NVIDIA_DRIVER_CAPABILITIES
      value: utility
    {{- end }}
    {{- with $e.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - name: {{ $e.portName }}
      containerPort: {{ $e.port }}
      protocol: TCP
  # No readinessProbe on purpose: a sidecar's readiness counts for the pod's, and the exporter
  # must never take vLLM out of its Service.
  startupProbe:
    httpGet:
      path: /healthz
      port: {{ $e.portName }}
    periodSeconds: 2
    failureThreshold: 30
  livenessProbe:
    httpGet:
      path: /healthz
      port: {{ $e.portName }}
    periodSeconds: 20
    timeoutSeconds: 5
    failureThreshold: 3
  resources:
    {{- toYaml $e.resources | nindent 4 }}
  securityContext:
    {{- toYaml $e.securityContext | nindent 4 }}
  {{- with $e.extraVolumeMounts }}
  volumeMounts:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

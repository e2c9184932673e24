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
run as vLLM's UID for GPU discovery (helm/token-economy-exporter/README.md), the volumes of
"token-economy-exporter.volumes", and, with energyAccess=dra, the claim dra.claimName in its
resourceClaims. vLLM's container takes "token-economy-exporter.vllmEnv" and
"token-economy-exporter.vllmVolumeMounts", and "token-economy-exporter.pluginInstaller" goes
under initContainers (it renders nothing unless plugin.install=initContainer).
*/}}
{{- define "token-economy-exporter.sidecar" -}}
{{- $v := .values }}
{{- $e := $v.exporter }}
{{- $native := $e.nativeSidecar }}
{{- if hasKey . "native" }}{{ $native = .native }}{{ end -}}
{{- include "token-economy-exporter.checkEnergyAccess" $v }}
{{- $visibleDevices := $e.nvidiaVisibleDevices }}
{{- if eq $v.energyAccess "visibleDevices" }}{{ $visibleDevices = $e.nvidiaVisibleDevices | default "all" }}{{ end }}
{{- $resources := deepCopy $e.resources }}
{{- include "token-economy-exporter.checkWebConfig" $v }}
{{- $https := and $e.webConfig.enabled $e.webConfig.https }}
{{- if eq $v.energyAccess "dra" }}
{{- $_ := set $resources "claims" (append ($resources.claims | default list) (dict "name" $v.dra.claimName)) }}
{{- end }}
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
    {{- with $v.pricing.apiPrices }}
    - name: TOKEN_ECONOMY_API_PRICES
      value: {{ include "token-economy.apiPrices" . | quote }}
    {{- end }}
    {{- with $v.pricing.breakEvenAlertReference }}
    - name: TOKEN_ECONOMY_BREAK_EVEN_ALERT_REFERENCE
      value: {{ . | quote }}
    {{- end }}
    {{- range $key, $value := $e.extraSettings }}
    - name: {{ printf "TOKEN_ECONOMY_%s" (upper $key) }}
      value: {{ $value | toString | quote }}
    {{- end }}
    {{- if ne $v.plugin.install "none" }}
    # The plugin's snapshots: work and energy from inside vLLM's process, read without asking
    # vLLM for its page and without a GPU here.
    - name: TOKEN_ECONOMY_PLUGIN_DIR
      value: {{ $v.plugin.dir | quote }}
    {{- end }}
    {{- if $v.dcgm.enabled }}
    # The node's dcgm-exporter, for this pod's GPUs.
    - name: HOST_IP
      valueFrom:
        fieldRef:
          fieldPath: status.hostIP
    - name: TOKEN_ECONOMY_DCGM_URL
      value: {{ $v.dcgm.url | quote }}
    - name: TOKEN_ECONOMY_DCGM_POD
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
    - name: TOKEN_ECONOMY_DCGM_NAMESPACE
      valueFrom:
        fieldRef:
          fieldPath: metadata.namespace
    {{- end }}
    {{- with $visibleDevices }}
    # The exporter requests no GPU; this makes the NVIDIA runtime give it the node's GPUs and
    # NVML, and GPU discovery narrows them to vLLM's.
    - name: NVIDIA_VISIBLE_DEVICES
      value: {{ . | quote }}
    - name: NVIDIA_DRIVER_CAPABILITIES
      value: utility
    {{- end }}
    {{- if $e.stateFile.enabled }}
    # What the exporter has learned, kept after each fit: a restarted container resumes from it.
    - name: TOKEN_ECONOMY_STATE_FILE
      value: {{ $e.stateFile.path | quote }}
    {{- end }}
    {{- if $e.webConfig.enabled }}
    # TLS and basic auth (exporter-toolkit's format), re-read when the Secrets change.
    - name: TOKEN_ECONOMY_WEB_CONFIG_FILE
      value: /etc/token-economy/web/web-config.yml
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
      {{- if $https }}
      scheme: HTTPS
      {{- end }}
    periodSeconds: 2
    failureThreshold: 30
  livenessProbe:
    httpGet:
      path: /healthz
      port: {{ $e.portName }}
      {{- if $https }}
      scheme: HTTPS
      {{- end }}
    periodSeconds: 20
    timeoutSeconds: 5
    failureThreshold: 3
  resources:
    {{- toYaml $resources | nindent 4 }}
  securityContext:
    {{- toYaml $e.securityContext | nindent 4 }}
  {{- if or (ne $v.plugin.install "none") $e.stateFile.enabled $e.webConfig.enabled $e.extraVolumeMounts }}
  volumeMounts:
    {{- if ne $v.plugin.install "none" }}
    - name: token-economy
      mountPath: {{ $v.plugin.dir | quote }}
      readOnly: true
    {{- end }}
    {{- if $e.stateFile.enabled }}
    # The state file's directory, writable under the read-only root filesystem.
    - name: exporter-state
      mountPath: {{ dir $e.stateFile.path | quote }}
    {{- end }}
    {{- if $e.webConfig.enabled }}
    # Whole Secrets, never subPath: the kubelet then updates the files in place.
    - name: web-config
      mountPath: /etc/token-economy/web
      readOnly: true
    {{- if $e.webConfig.tlsSecret }}
    - name: web-tls
      mountPath: /etc/token-economy/tls
      readOnly: true
    {{- end }}
    {{- end }}
    {{- with $e.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
{{- end }}

{{/*
The checks every mode needs, with a message naming the value to change. Called with the values.
*/}}
{{- define "token-economy-exporter.checkEnergyAccess" -}}
{{- if and (eq .energyAccess "plugin") (not .dcgm.enabled) (ne .exporter.energySource "phase-model") }}
{{- if eq .plugin.install "none" }}
{{- fail "energyAccess=plugin needs the plugin in vLLM (plugin.install=image with an image built from deploy/vllm-plugin/Dockerfile, or plugin.install=initContainer), or DCGM (dcgm.enabled=true); without either, choose energyAccess=dra or visibleDevices" }}
{{- end }}
{{- if not .plugin.nvml }}
{{- fail "energyAccess=plugin with plugin.nvml=false leaves nothing to measure energy: set dcgm.enabled=true, or energyAccess=dra or visibleDevices" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
vLLM's environment for the plugin: where it writes its snapshots, whether it reads NVML, and (for
the copied plugin) where Python finds it. Called with (dict "values" ...); renders EnvVar items.
*/}}
{{- define "token-economy-exporter.vllmEnv" -}}
{{- $v := .values }}
{{- if ne $v.plugin.install "none" }}
- name: TOKEN_ECONOMY_PLUGIN_DIR
  value: {{ $v.plugin.dir | quote }}
{{- if not $v.plugin.nvml }}
- name: TOKEN_ECONOMY_PLUGIN_NVML
  value: "0"
{{- end }}
{{- end }}
{{- if eq $v.plugin.install "initContainer" }}
# The plugin copied by the init container: Python reads its entry point from the dist-info here.
- name: PYTHONPATH
  value: /opt/token-economy/python
{{- end }}
{{- end }}

{{/* vLLM's mounts for the plugin. Called with (dict "values" ...); renders VolumeMount items. */}}
{{- define "token-economy-exporter.vllmVolumeMounts" -}}
{{- $v := .values }}
{{- if ne $v.plugin.install "none" }}
- name: token-economy
  mountPath: {{ $v.plugin.dir | quote }}
{{- end }}
{{- if eq $v.plugin.install "initContainer" }}
- name: token-economy-python
  mountPath: /opt/token-economy/python
  readOnly: true
{{- end }}
{{- end }}

{{/*
vLLM's extra argument with the plugin: per-step details reach it. The plugin silences the line
per step that vLLM's default logger would print (TOKEN_ECONOMY_PLUGIN_STEP_LOGS=1 keeps them);
without the plugin the flag would only add those lines, so it is left out.
*/}}
{{- define "token-economy-exporter.vllmArgs" -}}
{{- if ne .values.plugin.install "none" }}
- --enable-logging-iteration-details
{{- end }}
{{- end }}

{{/*
The pod's volumes for the plugin and the exporter's state file. Called with (dict "values" ...);
renders Volume items.
*/}}
{{- define "token-economy-exporter.volumes" -}}
{{- $v := .values }}
{{- if ne $v.plugin.install "none" }}
# The plugin's snapshots: one small text file per vLLM API-server process.
- name: token-economy
  emptyDir:
    medium: Memory
    sizeLimit: {{ $v.plugin.sizeLimit }}
{{- end }}
{{- if $v.exporter.stateFile.enabled }}
# The exporter's state file (a few kB), on the node's disk rather than in memory.
- name: exporter-state
  emptyDir:
    sizeLimit: {{ $v.exporter.stateFile.sizeLimit }}
{{- end }}
{{- with $v.exporter.webConfig }}
{{- if .enabled }}
- name: web-config
  secret:
    secretName: {{ include "token-economy-exporter.webConfigSecret" $ }}
    defaultMode: 0440
{{- if .tlsSecret }}
- name: web-tls
  secret:
    secretName: {{ .tlsSecret }}
    defaultMode: 0440
{{- end }}
{{- end }}
{{- end }}
{{- if eq $v.plugin.install "initContainer" }}
- name: token-economy-python
  emptyDir:
    sizeLimit: 64Mi
{{- end }}
{{- end }}

{{/*
plugin.install=initContainer: the exporter's image copies every installed file (its RECORD) of the
package, whose dist-info declares the vllm.stat_logger_plugins entry point, and of nvidia-ml-py
(pynvml, which the plugin reads NVML with) into an emptyDir that vLLM's container finds through
PYTHONPATH. Console scripts outside site-packages and the image's bytecode stay behind. Exec form:
the image has no shell; -I: only the image's own site-packages count. Called with
(dict "values" ...); renders one container, or nothing.
*/}}
{{- define "token-economy-exporter.pluginInstaller" -}}
{{- $v := .values }}
{{- $e := $v.exporter }}
{{- if eq $v.plugin.install "initContainer" }}
- name: token-economy-plugin
  image: {{ printf "%s:%s" $e.image.repository ($e.image.tag | toString) | quote }}
  imagePullPolicy: {{ $e.image.pullPolicy }}
  command:
    - /opt/venv/bin/python
    - -I
    - -c
    - |
      import importlib.metadata, pathlib, shutil, sys
      target = pathlib.Path(sys.argv[1])
      for name in sys.argv[2:]:
          dist = importlib.metadata.distribution(name)
          for file in dist.files:
              if ".." in file.parts or "__pycache__" in file.parts:
                  continue
              (target / file).parent.mkdir(parents=True, exist_ok=True)
              shutil.copyfile(dist.locate_file(file), target / file)
          print(f"copied {name} {dist.version} to {target}")
    - /opt/token-economy/python
    - token-economy-exporter
    - nvidia-ml-py
  resources:
    requests:
      cpu: 10m
      memory: 64Mi
    limits:
      memory: 128Mi
  securityContext:
    {{- toYaml $e.securityContext | nindent 4 }}
  volumeMounts:
    - name: token-economy-python
      mountPath: /opt/token-economy/python
{{- end }}
{{- end }}

{{/*
The web config's Secret: exporter.webConfig.existingSecret, else the one this chart writes,
named after the release. Called with (dict "values" ... "fullname" ...); from a chart of your own,
set existingSecret (the chart's own name is not known there).
*/}}
{{- define "token-economy-exporter.webConfigSecret" -}}
{{- $w := .values.exporter.webConfig }}
{{- if $w.existingSecret }}
{{- $w.existingSecret }}
{{- else if .fullname }}
{{- printf "%s-web-config" .fullname }}
{{- else }}
{{- fail "exporter.webConfig.existingSecret is required when the sidecar is included from a chart of your own: a Secret with the key web-config.yml" }}
{{- end }}
{{- end }}

{{/* The web config written from exporter.webConfig (tlsSecret, basicAuthUsers, extraConfig). */}}
{{- define "token-economy-exporter.webConfigFile" -}}
{{- $w := .exporter.webConfig }}
{{- $config := dict }}
{{- if $w.tlsSecret }}
{{- $_ := set $config "tls_server_config" (dict "cert_file" "/etc/token-economy/tls/tls.crt" "key_file" "/etc/token-economy/tls/tls.key") }}
{{- end }}
{{- with $w.basicAuthUsers }}
{{- $_ := set $config "basic_auth_users" . }}
{{- end }}
{{- $config = mergeOverwrite $config (deepCopy $w.extraConfig) }}
{{- toYaml $config }}
{{- end }}

{{/* What exporter.webConfig needs, with a message naming the value to set. Called with the values. */}}
{{- define "token-economy-exporter.checkWebConfig" -}}
{{- $w := .exporter.webConfig }}
{{- if $w.enabled }}
{{- if and $w.https (not $w.existingSecret) (not $w.tlsSecret) (not (dig "tls_server_config" "cert_file" "" $w.extraConfig)) }}
{{- fail "exporter.webConfig.https needs a certificate: set exporter.webConfig.tlsSecret (a kubernetes.io/tls Secret), or exporter.webConfig.existingSecret, or exporter.webConfig.https=false for basic auth over plain HTTP" }}
{{- end }}
{{- if and (not $w.existingSecret) (not $w.tlsSecret) (not $w.basicAuthUsers) (not $w.extraConfig) }}
{{- fail "exporter.webConfig.enabled with nothing to serve: set exporter.webConfig.tlsSecret, basicAuthUsers, extraConfig or existingSecret" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The scrape's scheme, TLS and basic auth for the PodMonitor's and ServiceMonitor's endpoint, with
exporter.webConfig on; nothing otherwise. Called with the values; renders endpoint keys.
*/}}
{{- define "token-economy-exporter.scrapeSecurity" -}}
{{- $w := .exporter.webConfig }}
{{- if $w.enabled }}
{{- $s := $w.scrape }}
{{- if $w.https }}
{{- $ca := $s.caSecret.name | default $w.tlsSecret }}
{{- if not (or $ca $s.insecureSkipVerify) }}
{{- fail "exporter.webConfig.scrape.caSecret.name is required to verify the exporter's certificate (the CA's Secret; default: exporter.webConfig.tlsSecret), or set exporter.webConfig.scrape.insecureSkipVerify=true" }}
{{- end }}
scheme: https
tlsConfig:
  {{- with $ca }}
  ca:
    secret:
      name: {{ . }}
      key: {{ $s.caSecret.key }}
  {{- end }}
  {{- with $s.serverName }}
  serverName: {{ . }}
  {{- end }}
  {{- if $s.insecureSkipVerify }}
  insecureSkipVerify: true
  {{- end }}
{{- end }}
{{- if $s.basicAuthSecret.name }}
basicAuth:
  username:
    name: {{ $s.basicAuthSecret.name }}
    key: {{ $s.basicAuthSecret.usernameKey }}
  password:
    name: {{ $s.basicAuthSecret.name }}
    key: {{ $s.basicAuthSecret.passwordKey }}
{{- else if $w.basicAuthUsers }}
{{- fail "exporter.webConfig.basicAuthUsers needs exporter.webConfig.scrape.basicAuthSecret.name: the Secret with the user name and password Prometheus sends" }}
{{- end }}
{{- end }}
{{- end }}

{{/* pricing.apiPrices as the exporter's --api-prices: NAME=INPUT/CACHED_INPUT/OUTPUT, comma-separated. */}}
{{- define "token-economy.apiPrices" -}}
{{- $entries := list }}
{{- range . }}
{{- $entries = append $entries (printf "%s=%s/%s/%s" .name (toString .input) (toString .cachedInput) (toString .output)) }}
{{- end }}
{{- join "," $entries }}
{{- end }}

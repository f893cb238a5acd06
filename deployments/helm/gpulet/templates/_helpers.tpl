{{/*
Names and labels.
*/}}
{{- define "gpulet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "gpulet.fullname" -}}
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

{{- define "gpulet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gpulet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "gpulet.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "gpulet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: gpulet
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "gpulet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "gpulet.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "gpulet.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
gpulet.realNVML is "true" when gpulet talks to the node's driver (not the
simulator): only then are the driver's files and devices mounted.
*/}}
{{- define "gpulet.realNVML" -}}
{{- eq .Values.nvml "real" }}
{{- end }}

{{/*
gpulet.privileged is "true" when the container must be privileged: MIG
management (creating GPU and compute instances needs CAP_SYS_ADMIN and the
/dev/nvidia-caps nodes, which only a privileged container may open), or
when the user asks for it.
*/}}
{{- define "gpulet.privileged" -}}
{{- or .Values.privileged (and .Values.dra.enabled .Values.dra.migManagement) }}
{{- end }}

{{/*
The config file: where it comes from and what gpulet reads.
*/}}
{{- define "gpulet.configMapName" -}}
{{- default (printf "%s-config" (include "gpulet.fullname" .)) .Values.config.name }}
{{- end }}

{{/* The ConfigMap key gpulet reads. */}}
{{- define "gpulet.configKey" -}}
{{- $c := .Values.config }}
{{- if $c.default }}
{{- $c.default }}
{{- else if $c.map }}
{{- if hasKey $c.map "default" }}default
{{- else if eq (len $c.map) 1 }}{{ keys $c.map | first }}
{{- else }}
{{- fail (printf "config.map has %d entries and none is named \"default\": set config.default to the one gpulet reads" (len $c.map)) }}
{{- end }}
{{- else }}config.yaml
{{- end }}
{{- end }}

{{/*
gpulet.generatedConfig is the config file the chart writes when none is
given: only a gpulet section that matches the chart's values.
*/}}
{{- define "gpulet.generatedConfig" -}}
# Written by the gpulet chart from its values devicePlugin.enabled,
# dra.enabled, dra.driverName and driver.root. Set config.file (or
# config.map) to give your own; an NVIDIA device plugin config works as it is.
version: v1
{{- if ne (.Values.driver.root | trimSuffix "/") "" }}
flags:
  nvidiaDriverRoot: {{ .Values.driver.root }}
{{- end }}
gpulet:
  devicePlugin:
    enabled: {{ .Values.devicePlugin.enabled }}
  dra:
    enabled: {{ .Values.dra.enabled }}
    {{- if ne .Values.dra.driverName "gpu.gpulet.dev" }}
    driverName: {{ .Values.dra.driverName }}
    {{- end }}
{{ end }}

{{/*
gpulet.configData is the ConfigMap's data as YAML: the files verbatim.
*/}}
{{- define "gpulet.configData" -}}
{{- $c := .Values.config }}
{{- if and $c.file $c.map }}
{{- fail "config.file and config.map are both set: give one (config.file for one file, config.map for NVIDIA's named configs)" }}
{{- end }}
{{- if $c.map }}
{{- range $name, $text := $c.map }}
{{- if not (kindIs "string" $text) }}
{{- fail (printf "config.map.%s: want the config file as a string (use \"|\"), got a %s" $name (kindOf $text)) }}
{{- end }}
{{ $name }}: {{ include "gpulet.yamlText" $text }}
{{- end }}
{{- else if $c.file }}
config.yaml: {{ include "gpulet.yamlText" $c.file }}
{{- else }}
config.yaml: {{ include "gpulet.yamlText" (include "gpulet.generatedConfig" .) }}
{{- end }}
{{- end }}

{{/*
gpulet.yamlText writes a string as a YAML value that reads back as exactly
that string: a literal block (readable in the ConfigMap) where the block
keeps it byte for byte, a quoted string otherwise. Indented for a key at
column 0 (the caller indents the whole data block).
*/}}
{{- define "gpulet.yamlText" -}}
{{- $t := . }}
{{- if or (eq $t "") (hasPrefix " " $t) (hasPrefix "\n" $t) (hasSuffix "\n\n" $t) (contains "\r" $t) (contains "\t" $t) (regexMatch "[ ]\n|[ ]$" $t) }}
{{- $t | quote }}
{{- else if hasSuffix "\n" $t }}|
{{- trimSuffix "\n" $t | nindent 2 }}
{{- else }}|-
{{- $t | nindent 2 }}
{{- end }}
{{- end }}

{{/*
gpulet.checkConfig fails the install when the config file gpulet will read
(if the chart writes it) disagrees with the values that decide which host
paths, RBAC rules and DeviceClasses are installed: a gpulet whose config
turns DRA on without the chart's RBAC would only log errors on every node.
*/}}
{{- define "gpulet.checkConfig" -}}
{{- $c := .Values.config }}
{{- if and $c.file $c.map }}
{{- fail "config.file and config.map are both set: give one (config.file for one file, config.map for NVIDIA's named configs)" }}
{{- end }}
{{- if not $c.name }}
{{- $key := include "gpulet.configKey" . }}
{{- $text := "" }}
{{- if $c.map }}
{{- if not (hasKey $c.map $key) }}
{{- fail (printf "config.default is %q, which config.map does not have (it has %s)" $key (keys $c.map | sortAlpha | join ", ")) }}
{{- end }}
{{- $text = index $c.map $key }}
{{- else }}
{{- $text = $c.file }}
{{- end }}
{{- if $text }}
{{- $cfg := fromYaml $text }}
{{- if hasKey $cfg "Error" }}
{{- fail (printf "config file %q is not YAML: %s" $key (get $cfg "Error")) }}
{{- end }}
{{- $g := default dict (get $cfg "gpulet") }}
{{- $dp := default dict (get $g "devicePlugin") }}
{{- $dra := default dict (get $g "dra") }}
{{- $dpOn := ternary (get $dp "enabled") true (hasKey $dp "enabled") }}
{{- $draOn := ternary (get $dra "enabled") false (hasKey $dra "enabled") }}
{{- $driver := default "gpu.gpulet.dev" (get $dra "driverName") }}
{{- if ne (toString $dpOn) (toString .Values.devicePlugin.enabled) }}
{{- fail (printf "config file %q has gpulet.devicePlugin.enabled %v (unset means true) but the value devicePlugin.enabled is %v: make them agree (the value decides the host paths the pod gets)" $key $dpOn .Values.devicePlugin.enabled) }}
{{- end }}
{{- if ne (toString $draOn) (toString .Values.dra.enabled) }}
{{- fail (printf "config file %q has gpulet.dra.enabled %v (unset means false) but the value dra.enabled is %v: make them agree (the value decides the RBAC rules, DeviceClasses and host paths)" $key $draOn .Values.dra.enabled) }}
{{- end }}
{{- $flags := default dict (get $cfg "flags") }}
{{- $root := default "/" (get $flags "nvidiaDriverRoot") }}
{{- if ne ($root | trimSuffix "/") (.Values.driver.root | trimSuffix "/") }}
{{- fail (printf "config file %q has flags.nvidiaDriverRoot %q (unset means \"/\") but the value driver.root is %q: make them agree (the value is the host directory mounted at /driver-root, the config names it in CDI specs)" $key $root .Values.driver.root) }}
{{- end }}
{{- $plugin := default dict (get $flags "plugin") }}
{{- $ctr := default "/driver-root" (get $plugin "containerDriverRoot") }}
{{- if ne ($ctr | trimSuffix "/") "/driver-root" }}
{{- fail (printf "config file %q has flags.plugin.containerDriverRoot %q: the chart mounts the driver root at /driver-root; remove the setting" $key $ctr) }}
{{- end }}
{{- if and .Values.dra.enabled (ne $driver .Values.dra.driverName) }}
{{- fail (printf "config file %q has gpulet.dra.driverName %q but the value dra.driverName is %q: make them agree (the plugin directory mounted is named after it)" $key $driver .Values.dra.driverName) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
gpulet.migMonitor is "true" when the device plugin may serve MIG devices
(migStrategy single or mixed in a config the chart writes, or any config
the chart cannot see). NVIDIA's container runtime gives a container the
MIG monitoring device nodes only if it asks (NVIDIA_MIG_MONITOR_DEVICES)
and has CAP_SYS_ADMIN, as for NVIDIA's own device plugin.
*/}}
{{- define "gpulet.migMonitor" -}}
{{- $c := .Values.config }}
{{- $mig := false }}
{{- if .Values.devicePlugin.enabled }}
{{- if $c.name }}
{{- $mig = true }}
{{- else }}
{{- $texts := list $c.file }}
{{- if $c.map }}{{ $texts = values $c.map }}{{ end }}
{{- range $texts }}
{{- $flags := default dict (get (fromYaml .) "flags") }}
{{- if has (toString (get $flags "migStrategy")) (list "single" "mixed") }}
{{- $mig = true }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- $mig }}
{{- end }}

{{/*
gpulet.securityContext is the container's: privileged where MIG management
needs it (or asked for), otherwise every capability dropped, no privilege
escalation, a read-only root filesystem. uid 0 comes from the pod's
security context: the host paths are root-owned, and root without
capabilities still owns them.
*/}}
{{- define "gpulet.securityContext" -}}
{{- if eq (include "gpulet.privileged" .) "true" }}
privileged: true
readOnlyRootFilesystem: true
{{- else }}
privileged: false
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
  {{- if eq (include "gpulet.migMonitor" .) "true" }}
  add: ["SYS_ADMIN"]
  {{- end }}
{{- end }}
{{- end }}

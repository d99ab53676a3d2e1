{{/*
Names and labels.
*/}}
{{- define "csi-fencer.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "csi-fencer.fullname" -}}
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

{{- define "csi-fencer.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "csi-fencer.selectorLabels" -}}
app.kubernetes.io/name: {{ include "csi-fencer.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "csi-fencer.labels" -}}
helm.sh/chart: {{ include "csi-fencer.chart" . }}
{{ include "csi-fencer.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: fencer
{{- end }}

{{- define "csi-fencer.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "csi-fencer.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "csi-fencer.configMapName" -}}
{{- printf "%s-config" (include "csi-fencer.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "csi-fencer.image" -}}
{{- $ref := printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- if .Values.image.digest }}{{ $ref = printf "%s@%s" $ref .Values.image.digest }}{{ end }}
{{- $ref }}
{{- end }}

{{/*
The daemon's config.yaml: .Values.config without the empty one of
clusterName / clusterTag (the daemon rejects an empty name and rejects both
keys together). Fails with a clear message on what the schema cannot say.
*/}}
{{- define "csi-fencer.configYaml" -}}
{{- $c := deepCopy .Values.config }}
{{- if and $c.clusterName $c.clusterTag }}
{{- fail "config: set config.clusterName or config.clusterTag, not both" }}
{{- end }}
{{- if not (or $c.clusterName $c.clusterTag) }}
{{- fail "config: set config.clusterName (or config.clusterTag, hex like \"0x1a2b\"): it gives this cluster's reservation keys their own space, so two clusters on one SAN never take each other's keys for their own; it has no safe default" }}
{{- end }}
{{- if not $c.drivers }}
{{- fail "config: set config.drivers: the CSI drivers whose volumes csi-fencer fences (e.g. [{name: block.csi.example.com, volumeHandleRegex: '^(?P<wwid>3[0-9a-f]{32})$'}])" }}
{{- end }}
{{- $seen := dict }}
{{- range $i, $d := $c.drivers }}
{{- if hasKey $seen $d.name }}
{{- fail (printf "config.drivers[%d]: driver %q is listed twice" $i $d.name) }}
{{- end }}
{{- $_ := set $seen $d.name true }}
{{- if and $d.volumeHandleRegex $d.volumeAttribute }}
{{- fail (printf "config.drivers[%d] (%s): set volumeHandleRegex or volumeAttribute, not both" $i $d.name) }}
{{- end }}
{{- if not (or $d.volumeHandleRegex $d.volumeAttribute) }}
{{- fail (printf "config.drivers[%d] (%s): set volumeHandleRegex or volumeAttribute: how to find the volume's WWID" $i $d.name) }}
{{- end }}
{{- if and $d.volumeAttributeRegex (not $d.volumeAttribute) }}
{{- fail (printf "config.drivers[%d] (%s): volumeAttributeRegex needs volumeAttribute" $i $d.name) }}
{{- end }}
{{- end }}
{{- if not $c.clusterName }}{{ $_ := unset $c "clusterName" }}{{ end }}
{{- if not $c.clusterTag }}{{ $_ := unset $c "clusterTag" }}{{ end }}
{{- toYaml $c }}
{{- end }}

{{/*
The arguments of `csi-fencer run`. Takes a dict:
  root: the root context ($)
  grpcSocket: the path of the gRPC socket inside the container
  csiAddress: the CSI driver's socket inside the container ("" = not passed)
*/}}
{{- define "csi-fencer.args" -}}
{{- $v := .root.Values -}}
- run
- --source=kubernetes
- --config=/etc/csi-fencer/config.yaml
- --node-name=$(NODE_NAME)
- --http-endpoint=:{{ $v.metrics.port }}
- --grpc-socket={{ .grpcSocket }}
- --state-dir=/var/lib/csi-fencer
- --kube-api-qps={{ $v.kubeApi.qps }}
- --kube-api-burst={{ $v.kubeApi.burst }}
- --timeout={{ $v.kubeApi.timeoutSeconds }}
- --log-format={{ $v.logFormat }}
{{- with .csiAddress }}
- --csi-address={{ . }}
{{- end }}
{{- range until (int $v.verbosity) }}
- -v
{{- end }}
{{- if $v.dryRun }}
- --dry-run
{{- end }}
{{- end }}

{{/*
The csi-fencer container. Takes a dict:
  root: the root context ($)
  grpcSocket, csiAddress: see csi-fencer.args
  socketVolume: the volume holding the gRPC socket
  socketMountPath: where socketVolume is mounted
  extraVolumeMounts: more volumeMounts (a list)
*/}}
{{- define "csi-fencer.container" -}}
{{- $v := .root.Values -}}
name: csi-fencer
image: {{ include "csi-fencer.image" .root }}
imagePullPolicy: {{ $v.image.pullPolicy }}
args:
{{- include "csi-fencer.args" . | nindent 2 }}
env:
  - name: NODE_NAME
    valueFrom:
      fieldRef:
        fieldPath: spec.nodeName
  # So that `kubectl exec ... -- csi-fencer ctl list` finds the socket.
  - name: CSI_FENCER_SOCKET
    value: {{ .grpcSocket | quote }}
ports:
  - name: http-metrics
    containerPort: {{ $v.metrics.port }}
    protocol: TCP
livenessProbe:
  httpGet:
    path: /healthz
    port: http-metrics
  initialDelaySeconds: 5
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 6
readinessProbe:
  httpGet:
    path: /readyz
    port: http-metrics
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
securityContext:
  # SG_IO PERSISTENT RESERVE OUT needs CAP_SYS_RAWIO, and the host's /dev/sd*
  # and /dev/dm-* device nodes (including LUNs that appear after the pod
  # started) must be openable: the device cgroup allows that only to a
  # privileged container, so capabilities alone are not enough.
  privileged: true
  # Raw SCSI needs root plus CAP_SYS_RAWIO. (allowPrivilegeEscalation is
  # implied by privileged and must not be set to false.)
  runAsUser: 0
  readOnlyRootFilesystem: true
{{- with $v.resources }}
resources:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumeMounts:
  - name: csi-fencer-dev
    mountPath: /dev
  - name: csi-fencer-sys
    mountPath: /sys
    readOnly: true
  - name: csi-fencer-udev
    mountPath: /run/udev
    readOnly: true
  - name: csi-fencer-host-etc
    mountPath: /host/etc
    readOnly: true
  - name: csi-fencer-state
    mountPath: /var/lib/csi-fencer
  - name: csi-fencer-config
    mountPath: /etc/csi-fencer
    readOnly: true
  - name: {{ .socketVolume }}
    mountPath: {{ .socketMountPath }}
{{- with .extraVolumeMounts }}
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
The host volumes the csi-fencer container needs (every one but the socket
directory). Takes a dict with root: the root context ($).
*/}}
{{- define "csi-fencer.hostVolumes" -}}
- name: csi-fencer-dev
  hostPath:
    path: /dev
    type: Directory
- name: csi-fencer-sys
  hostPath:
    path: /sys
    type: Directory
- name: csi-fencer-udev
  hostPath:
    path: /run/udev
    type: Directory
# Read-only, for multipath.conf and its conf.d: the one-owner check at start.
- name: csi-fencer-host-etc
  hostPath:
    path: /etc
    type: Directory
# The fenced-state record ("fenced under attachment X", invariant I1) must
# survive pod restarts: an emptyDir would forget it and let a preempted node
# register again. Hence a host directory.
- name: csi-fencer-state
  hostPath:
    path: /var/lib/csi-fencer
    type: DirectoryOrCreate
- name: csi-fencer-config
  configMap:
    name: {{ include "csi-fencer.configMapName" .root }}
{{- end }}

{{/*
SIDECAR MODE: add csi-fencer to your CSI driver's node DaemonSet.

  containers:
    - name: my-driver
      ...
    {{- include "csi-fencer.sidecar.container" (dict "root" $ "pluginDirVolume" "plugin-dir") | nindent 4 }}
  volumes:
    - name: plugin-dir
      hostPath: {path: /var/lib/kubelet/plugins/my.driver.example.com, type: DirectoryOrCreate}
    {{- include "csi-fencer.sidecar.volumes" (dict "root" $ "pluginDirVolume" "plugin-dir") | nindent 4 }}

Both take a dict:
  root (required): the root context of a chart that has csi-fencer's values
      (this chart, or a parent chart passing csi-fencer's values as .Values)
  pluginDirVolume (required): the name of the driver's own volume holding its
      plugin directory (/var/lib/kubelet/plugins/<driver>/)
  pluginDirMountPath (optional, default /csi): where the container mounts it
  csiSocket (optional, default csi.sock): the driver's socket file in it
The container serves gRPC on <pluginDirMountPath>/csi-fencer.sock and learns
the driver name from --csi-address=<pluginDirMountPath>/<csiSocket>. The
volumes are the host's /dev, /sys, /run/udev, the state directory and the
ConfigMap, named csi-fencer-* so that they do not clash with the driver's.
The pod needs serviceAccountName bound to csi-fencer's ClusterRole
(rbac.extraServiceAccounts) and the ConfigMap in the pod's namespace.
*/}}
{{- define "csi-fencer.sidecar.container" -}}
{{- $vol := required "csi-fencer.sidecar.container: pass pluginDirVolume, the name of the driver's plugin-dir volume" .pluginDirVolume }}
{{- $dir := .pluginDirMountPath | default "/csi" }}
{{- $sock := .csiSocket | default "csi.sock" }}
{{- include "csi-fencer.container" (dict "root" .root "grpcSocket" (printf "%s/csi-fencer.sock" $dir) "csiAddress" (printf "%s/%s" $dir $sock) "socketVolume" $vol "socketMountPath" $dir) }}
{{- end }}

{{- define "csi-fencer.sidecar.volumes" -}}
{{- $_ := required "csi-fencer.sidecar.volumes: pass pluginDirVolume, the name of the driver's plugin-dir volume" .pluginDirVolume }}
{{- include "csi-fencer.hostVolumes" (dict "root" .root) }}
{{- end }}

{{/*
The failover controller's labels: its own name, so that neither the
DaemonSet nor the metrics Service selects its pods.
*/}}
{{- define "csi-fencer.failoverSelectorLabels" -}}
app.kubernetes.io/name: {{ include "csi-fencer.name" . }}-failover
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "csi-fencer.failoverLabels" -}}
helm.sh/chart: {{ include "csi-fencer.chart" . }}
{{ include "csi-fencer.failoverSelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: failover-controller
{{- end }}

{{/* The Windows node daemon's pods: a name of their own, so that no
selector of the Linux DaemonSet or its Service picks them. */}}
{{- define "csi-fencer.windowsSelectorLabels" -}}
app.kubernetes.io/name: {{ include "csi-fencer.name" . }}-windows
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "csi-fencer.windowsLabels" -}}
helm.sh/chart: {{ include "csi-fencer.chart" . }}
{{ include "csi-fencer.windowsSelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: fencer-windows
{{- end }}

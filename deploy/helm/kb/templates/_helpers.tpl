{{- define "kb.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kb.fullname" -}}
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

{{- define "kb.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "kb.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels of one component: include with (dict "root" $ "component" "api") */}}
{{- define "kb.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kb.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "kb.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kb.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kb.secretName" -}}
{{- if .Values.secrets.create }}
{{- include "kb.fullname" . }}
{{- else }}
{{- required "secrets.existingSecret is required when secrets.create is false" .Values.secrets.existingSecret }}
{{- end }}
{{- end }}

{{- define "kb.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The settings and secrets every kb container reads, the volumes it mounts, and how. */}}
{{- define "kb.envFrom" -}}
- configMapRef:
    name: {{ include "kb.fullname" . }}
- secretRef:
    name: {{ include "kb.secretName" . }}
{{- end }}

{{- define "kb.volumeMounts" -}}
- name: data
  mountPath: /var/lib/kb
- name: hf-cache
  mountPath: /hf-cache
- name: tmp
  mountPath: /tmp
{{- if .Values.import.existingClaim }}
- name: import
  mountPath: /import
  readOnly: true
{{- end }}
{{- end }}

{{- define "kb.volumes" -}}
- name: data
  {{- if .Values.persistence.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ .Values.persistence.existingClaim }}
  {{- else }}
  emptyDir: {}
  {{- end }}
- name: hf-cache
  {{- if .Values.persistence.modelCacheClaim }}
  persistentVolumeClaim:
    claimName: {{ .Values.persistence.modelCacheClaim }}
  {{- else }}
  emptyDir: {}
  {{- end }}
- name: tmp
  emptyDir: {}
{{- if .Values.import.existingClaim }}
- name: import
  persistentVolumeClaim:
    claimName: {{ .Values.import.existingClaim }}
    readOnly: true
{{- end }}
{{- end }}

{{/* Names, labels and the flow. */}}

{{- define "skuforge.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "skuforge.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: skuforge
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "matting") */}}
{{- define "skuforge.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "skuforge.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "skuforge.tritonImage" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.triton.image.tag | default (printf "%s-cuda" .Chart.AppVersion)) -}}
{{- end -}}

{{/* The flow, written once in schemas/flow.py; files/flow.json is `skuforge flow --json`. */}}
{{- define "skuforge.flow" -}}
{{- .Files.Get "files/flow.json" -}}
{{- end -}}

{{/* A stage's settings: stageDefaults merged with stages.<name>. (dict "root" $ "name" "matting") */}}
{{- define "skuforge.stageConfig" -}}
{{- $override := get .root.Values.stages .name | default dict -}}
{{- mergeOverwrite (deepCopy .root.Values.stageDefaults) (deepCopy $override) | toJson -}}
{{- end -}}

{{/* Environment every skuforge container gets: the ConfigMap, the Secret, its static member id. */}}
{{- define "skuforge.envFrom" -}}
- configMapRef:
    name: {{ include "skuforge.fullname" . }}-settings
- secretRef:
    name: {{ .Values.secret.existingSecret | default (printf "%s-settings" (include "skuforge.fullname" .)) }}
{{- end -}}

{{- define "skuforge.memberEnv" -}}
{{- if .Values.staticMembership -}}
# Static membership: a restarted container takes its partitions back without a rebalance.
- name: SKUFORGE_GROUP_INSTANCE_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end -}}
{{- end -}}

{{/* Checks that fail the render with a message saying what to fix. */}}
{{- define "skuforge.validate" -}}
{{- $flow := include "skuforge.flow" . | fromJson -}}
{{- $names := list -}}
{{- range $flow.stages }}{{ $names = append $names .name }}{{ end -}}
{{- range $name, $_ := .Values.stages -}}
{{- if not (has $name $names) -}}
{{- fail (printf "stages.%s: no such stage; the stages are %s (files/flow.json)" $name (join ", " $names)) -}}
{{- end -}}
{{- end -}}
{{- range $key, $_ := .Values.settings -}}
{{- if not (hasPrefix "SKUFORGE_" $key) -}}
{{- fail (printf "settings.%s: only SKUFORGE_* settings belong here (secrets go in secret.values)" $key) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Names, labels and the flow. */}}

{{- /* At most 40 characters (KEDA's "keda-hpa-" and the longest stage still fit in 63), and always with
the chart's name in it: the deployment alerts (rules/deploy.yml) find the stages by it, so a long
release name is cut, never the chart's name; a cut name carries 4 hex digits of the whole one, so that
two long names alike at the start stay apart. */ -}}
{{- define "skuforge.fullname" -}}
{{- $whole := printf "%s-%s" .Release.Name .Chart.Name -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- $whole = .Release.Name -}}
{{- end -}}
{{- if le (len $whole) 40 -}}
{{- $whole | trimSuffix "-" -}}
{{- else -}}
{{- $head := .Release.Name | trunc (int (sub 34 (len .Chart.Name))) | trimSuffix "-" -}}
{{- printf "%s-%s-%s" $head (sha256sum .Release.Name | trunc 4) .Chart.Name -}}
{{- end -}}
{{- end -}}

{{- /* The name fullname gave before a long release name kept the chart's name (40 characters, cut
from the end): only for the console's volume claim, whose name an upgrade must not change (a new
name is a new, empty volume: the waiting review tasks would be left behind on the old one). */ -}}
{{- define "skuforge.claimBase" -}}
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
{{- include "skuforge.gpuImage" (dict "root" . "tag" "" "gpus" 0) -}}
{{- end -}}

{{/* The image of a pod that may hold GPUs (a stage, Triton): its own tag as given, else the CUDA image
"<image.tag>-cuda" where it has some (on the CPU image ONNX Runtime and torch have no CUDA, and the
pod ran on the CPU with its GPU idle), else image.tag. (dict "root" $ "tag" <its image.tag> "gpus"
<its skuforge.gpuLimit>) */}}
{{- define "skuforge.gpuImage" -}}
{{- /* Left empty, every pod's image was "%!s(<nil>):<tag>" (a YAML parse error naming neither), or ":<tag>". */ -}}
{{- if not .root.Values.image.repository -}}
{{- fail "image.repository is unset: give the repository of skuforge's image (skuforge, the chart's default, or REGISTRY/skuforge)" -}}
{{- end -}}
{{- $tag := .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- if gt (int .gpus) 0 }}{{ $tag = printf "%s-cuda" $tag }}{{ end -}}
{{- printf "%s:%s" .root.Values.image.repository (.tag | default $tag) -}}
{{- end -}}

{{/* A pod's tolerations, as JSON: those given, and where it has GPUs the GPU nodes' usual taint's
(the GPU operator's and the cloud GPU node pools'), unless they list one for that key; without it the
pod waited Pending, and without GPUs it had no business on those nodes. (dict "given" <its tolerations>
"gpus" <its skuforge.gpuLimit>) */}}
{{- define "skuforge.tolerations" -}}
{{- $tolerations := .given | default list -}}
{{- $tolerated := false -}}
{{- range $tolerations }}{{ if eq (.key | default "") "nvidia.com/gpu" }}{{ $tolerated = true }}{{ end }}{{ end -}}
{{- if and (gt (int .gpus) 0) (not $tolerated) -}}
{{- $tolerations = append $tolerations (dict "key" "nvidia.com/gpu" "operator" "Exists" "effect" "NoSchedule") -}}
{{- end -}}
{{- toJson $tolerations -}}
{{- end -}}

{{/* The ServiceAccount every pod runs as (serviceAccount.*). */}}
{{- define "skuforge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "skuforge.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{/* Pod-spec lines every pod shares: its ServiceAccount and whether an API token is mounted. */}}
{{- define "skuforge.podIdentity" -}}
serviceAccountName: {{ include "skuforge.serviceAccountName" . }}
automountServiceAccountToken: {{ .Values.serviceAccount.automountToken }}
{{- end -}}

{{/* The flow, written once in schemas/flow.py; files/flow.json is `skuforge flow --json`. */}}
{{- define "skuforge.flow" -}}
{{- .Files.Get "files/flow.json" -}}
{{- end -}}

{{/* A map of variables (settings, secret.values, an env map) without its null entries, as JSON, each value
the text its variable gets. `KEY: null` (--set KEY=null) is how Helm takes a value out, but a key
values.yaml lacks stays, as nil: the pods got the text "<nil>", and the checks took the key as set. Text,
as JSON keeps numbers as float64: --set's 9007199254740993 (an int64) reached the pods as ...992. Every
reader of those maps takes them from here. */}}
{{- define "skuforge.given" -}}
{{- $given := dict -}}
{{- range $key, $value := . -}}
{{- if not (kindIs "invalid" $value) }}{{ $_ := set $given $key (include "skuforge.text" $value) }}{{ end -}}
{{- end -}}
{{- toJson $given -}}
{{- end -}}

{{/* A value where its readers take one, as the text they get; a map or list reached them as "map[a:1]" or
"[1]", and a number Helm read from a values file past 2^53 (a float64 there) as other digits, or as
"1e+21": both are refused, naming the key. (dict "key" "topicPartitions" "value" 6 "reader" "the pods"
"want" "give one number") */}}
{{- define "skuforge.checked" -}}
{{- if or (kindIs "map" .value) (kindIs "slice" .value) -}}
{{- fail (printf "%s is a %s, which %s would get as the text %v: %s" .key (ternary "map" "list" (kindIs "map" .value)) .reader .value .want) -}}
{{- else if and (kindIs "float64" .value) (or (ge .value 9007199254740992.0) (le .value -9007199254740992.0)) -}}
{{- fail (printf "%s=%v: Helm reads a values file's numbers as float64, exact only up to 2^53 (9007199254740992), so %s would get other digits than those written; quote it (\"...\") or give it with --set" .key .value .reader) -}}
{{- end -}}
{{- include "skuforge.text" .value -}}
{{- end -}}

{{/* The chart's whole numbers: what each is, the least (and most) it may be, and who reads it; `stage`
holds a stage's (stageDefaults merged with stages.<name>), `gpus` a pod's nvidia.com/gpu limit,
`extended` any other extended resource's (its most what the chart's arithmetic holds, an int64). A
number the pods read as a setting has that setting's range (shared/config.py: the pods stopped at start
on a sessionTimeoutMs under 6000), and one Kubernetes or KEDA keeps in an int32 at most 2147483647.
startupSeconds' most keeps its probe's tries (an int32) and the alerts' wait (Prometheus: 292 years) in
range; the GPUs' most is no node's, and keeps the chart's arithmetic in an int64 (skuforge.gpuLimit). */}}
{{- define "skuforge.wholeNumbers" -}}
chart:
  topicPartitions: {what: whole number of partitions, least: 1, most: 2147483647, reader: the pods and the topics Job}
  sessionTimeoutMs: {what: whole number of milliseconds, least: 6000, most: 2147483647, reader: the pods}
  triton.replicas: {what: whole number of pods, least: 0, most: 2147483647, reader: Triton's Deployment}
  triton.terminationGracePeriodSeconds: {what: whole number of seconds, least: 0, reader: the Triton pod}
  triton.startupSeconds: {what: whole number of seconds, least: 0, most: 2147483647, reader: Triton's startup probe and alerts}
  triton.ports.http: {what: port, least: 1, most: 65535, reader: Triton's Service and probes}
  triton.ports.grpc: {what: port, least: 1, most: 65535, reader: Triton's Service and probes}
  triton.ports.metrics: {what: port, least: 1, most: 65535, reader: Triton's Service and probes}
  console.port: {what: port, least: 1, most: 65535, reader: the console's Service and probes}
  console.terminationGracePeriodSeconds: {what: whole number of seconds, least: 0, reader: the console pod}
  topicsJob.activeDeadlineSeconds: {what: whole number of seconds, least: 1, reader: "the topics Job (how long it may retry with Kafka away before it fails; keep it under helm's --timeout, 5m by default)"}
stage:
  replicas: {what: whole number of pods, least: 0, most: 2147483647, reader: the stage's Deployment}
  terminationGracePeriodSeconds: {what: whole number of seconds, least: 0, reader: the stage's pods}
  autoscaling.minReplicas: {what: whole number of pods, least: 0, most: 2147483647, reader: KEDA}
  autoscaling.maxReplicas: {what: whole number of pods, least: 1, most: 2147483647, reader: KEDA}
  autoscaling.pollingInterval: {what: whole number of seconds, least: 1, most: 2147483647, reader: KEDA}
  autoscaling.cooldownPeriod: {what: whole number of seconds, least: 0, most: 2147483647, reader: KEDA}
  autoscaling.scaleDownStabilizationSeconds: {what: whole number of seconds, least: 0, most: 3600, reader: the HPA KEDA makes}
  autoscaling.lagThreshold: {what: whole number of messages, least: 1, reader: KEDA}
  autoscaling.activationLagThreshold: {what: whole number of messages, least: 0, reader: KEDA}
gpus: {what: whole number of GPUs, least: 0, most: 2147483647, reader: "the pod's scheduling, and a stage's image (CUDA), GPU toleration and rollout"}
extended: {what: whole number, least: 0, most: 999999999999999999, reader: "the API server (an extended resource is counted in whole units)"}
{{- end -}}

{{/* A whole number of the chart, as the text its reader gets. `| int` made a map, a list, "1.5", "soon"
or true 0 (`--set stages.matting.autoscaling.minReplicas[0]=1` gave KEDA minReplicaCount 0), and the
rest went as given ("map[a:1]" replicas, a pollingInterval of -1): each is refused, naming the key.
(dict "key" "triton.replicas" "value" 1 "spec" <its row of skuforge.wholeNumbers>) */}}
{{- define "skuforge.wholeNumber" -}}
{{- $spec := .spec -}}
{{- $text := include "skuforge.checked" (dict "key" .key "value" .value "reader" $spec.reader "want" "give one number") -}}
{{- $number := atoi $text -}}
{{- $range := printf "of at least %d" (int64 $spec.least) -}}
{{- if hasKey $spec "most" }}{{ $range = printf "from %d to %d" (int64 $spec.least) (int64 $spec.most) }}{{ end -}}
{{- if or (ne (toString $number) $text) (lt $number (int64 $spec.least)) (and (hasKey $spec "most") (gt $number (int64 $spec.most))) -}}
{{- fail (printf "%s=%s is no %s %s, for %s: give one" .key (ternary "null" $text (kindIs "invalid" .value)) $spec.what $range $spec.reader) -}}
{{- end -}}
{{- $text -}}
{{- end -}}

{{/* The value at a key of the chart's values (nil where there is none), put in found's "value": a
template gives text, and a value's own kind (a map, an int64) is what the checks judge.
(dict "root" $ "key" "triton.ports.http" "found" (dict)) */}}
{{- define "skuforge.valueAt" -}}
{{- $value := .root.Values -}}
{{- range $part := splitList "." .key -}}
{{- if kindIs "map" $value }}{{ $value = index $value $part }}{{ else }}{{ $value = nil }}{{ end -}}
{{- end -}}
{{- $_ := set .found "value" $value -}}
{{- end -}}

{{/* One of the chart's own whole numbers (skuforge.wholeNumbers' chart), checked. (dict "root" $ "key" "triton.replicas") */}}
{{- define "skuforge.chartNumber" -}}
{{- $found := dict -}}
{{- include "skuforge.valueAt" (dict "root" .root "key" .key "found" $found) -}}
{{- $value := $found.value -}}
{{- $spec := get (include "skuforge.wholeNumbers" . | fromYaml).chart .key -}}
{{- include "skuforge.wholeNumber" (dict "key" .key "value" $value "spec" $spec) -}}
{{- end -}}

{{/* topicPartitions, checked: the pods, the topics Job and the replica checks read it. */}}
{{- define "skuforge.partitions" -}}
{{- include "skuforge.chartNumber" (dict "root" . "key" "topicPartitions") -}}
{{- end -}}

{{/* triton.ports, checked, as JSON: {"http": "8000", "grpc": "8001", "metrics": "8002"}. */}}
{{- define "skuforge.tritonPorts" -}}
{{- $ports := dict -}}
{{- range $name := list "http" "grpc" "metrics" -}}
{{- $_ := set $ports $name (include "skuforge.chartNumber" (dict "root" $ "key" (printf "triton.ports.%s" $name))) -}}
{{- end -}}
{{- toJson $ports -}}
{{- end -}}

{{/* The chart's sizes and durations, written as their readers take them: a map reached them as
"map[a:1]", and "soon" or "20GB" as given, each refused only at install, by the API server or the
operator, naming a manifest's field. `optional`: null leaves the field out (its reader's default). A
size is a resource.Quantity as the API server parses one: an optional +, digits with a point, then one
binary or decimal SI suffix or an exponent (a negative one it refuses for a size or a resource), of a
value it holds (skuforge.quantityNanos). */}}
{{- define "skuforge.texts" -}}
kinds:
  size: {what: "size (a Kubernetes quantity: 20Gi, 512Mi, 1.5G)", pattern: '^\+?([0-9]+(\.[0-9]*)?|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?[0-9]+)?$'}
  duration: {what: "Prometheus duration (30s, 1m30s, 1h)", pattern: '^(0|([0-9]+y)?([0-9]+w)?([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?([0-9]+ms)?)$'}
values:
  triton.shmSize: {kind: size, reader: "Triton's /dev/shm volume", optional: true}
  triton.modelCache.sizeLimit: {kind: size, reader: "Triton's model cache volume and its ephemeral-storage request"}
  console.persistence.size: {kind: size, reader: "the console's volume claim"}
  monitoring.interval: {kind: duration, reader: "the PodMonitors", optional: true}
{{- end -}}

{{/* One of the chart's sizes or durations (skuforge.texts), checked, as its reader gets it. (dict "root" $
"key" "triton.shmSize") */}}
{{- define "skuforge.chartText" -}}
{{- $found := dict -}}
{{- include "skuforge.valueAt" (dict "root" .root "key" .key "found" $found) -}}
{{- $value := $found.value -}}
{{- $texts := include "skuforge.texts" . | fromYaml -}}
{{- $spec := get $texts.values .key -}}
{{- $kind := get $texts.kinds $spec.kind -}}
{{- if not (and $spec.optional (kindIs "invalid" $value)) -}}
{{- $text := include "skuforge.checked" (dict "key" .key "value" $value "reader" $spec.reader "want" (printf "give one %s" $kind.what)) -}}
{{- if or (kindIs "invalid" $value) (not (regexMatch $kind.pattern $text)) -}}
{{- fail (printf "%s=%s is no %s, for %s: give one" .key (ternary "null" $text (kindIs "invalid" $value)) $kind.what $spec.reader) -}}
{{- end -}}
{{- if eq $spec.kind "size" }}{{ $_ := include "skuforge.quantityNanos" (dict "key" .key "text" $text) }}{{ end -}}
{{- $text -}}
{{- end -}}
{{- end -}}

{{/* A stage's settings: stageDefaults merged with stages.<name>, where a stage's null takes a default's
variable out of its env. Its whole numbers are checked text (skuforge.wholeNumbers), as JSON keeps
numbers as float64: --set's 9007199254740993 (an int64) reached KEDA as ...992. (dict "root" $ "name" "matting") */}}
{{- define "skuforge.stageConfig" -}}
{{- $override := get .root.Values.stages .name | default dict -}}
{{- /* A stage's autoscaling field given null is no override: the default's applies, as where the stage's
whole autoscaling is null. Helm keeps the null of a key values.yaml lacks: `stages.gate.autoscaling.enabled:
null` turned KEDA off for the gate, without a word. */ -}}
{{- if kindIs "map" $override.autoscaling -}}
{{- $given := dict -}}
{{- range $field, $value := $override.autoscaling }}{{ if not (kindIs "invalid" $value) }}{{ $_ := set $given $field $value }}{{ end }}{{ end -}}
{{- $override = merge (dict "autoscaling" $given) (omit $override "autoscaling") -}}
{{- end -}}
{{- /* A stage's empty list where stageDefaults holds a map (nodeSelector, affinity) is none, as `{}` is: merged
over the default's map, it replaced it, and `stages.gate.nodeSelector: []` dropped stageDefaults'
nodeSelector, where `{}` kept it. */ -}}
{{- range $field, $value := $override -}}
{{- if and (kindIs "slice" $value) (empty $value) (kindIs "map" (get $.root.Values.stageDefaults $field)) -}}
{{- $override = omit $override $field -}}
{{- end -}}
{{- end -}}
{{- $config := mergeOverwrite (deepCopy .root.Values.stageDefaults) (deepCopy $override) -}}
{{- $_ := set $config "env" (include "skuforge.given" $config.env | fromJson) -}}
{{- /* The defaults first, named as such: in a stage's own limits, a default's bad quantity was named
as the stage's. */ -}}
{{- include "skuforge.resources" (dict "value" .root.Values.stageDefaults.resources "key" "stageDefaults.resources") -}}
{{- $keys := dict -}}
{{- range $part := list "resources" "requests" "limits" -}}
{{- $_ := set $keys $part (include "skuforge.stageKey" (dict "root" $.root "name" $.name "key" (ternary $part (printf "resources.%s" $part) (eq $part "resources")))) -}}
{{- end -}}
{{- include "skuforge.checkResources" (dict "value" $config.resources "keys" $keys "own" ($override.resources | default dict)) -}}
{{- range $field, $spec := (include "skuforge.wholeNumbers" . | fromYaml).stage -}}
{{- $path := splitList "." $field -}}
{{- $parent := $config -}}
{{- range $part := initial $path }}{{ $parent = index $parent $part }}{{ end -}}
{{- $key := include "skuforge.stageKey" (dict "root" $.root "name" $.name "key" $field) -}}
{{- $_ := set $parent (last $path) (include "skuforge.wholeNumber" (dict "key" $key "value" (index $parent (last $path)) "spec" $spec)) -}}
{{- end -}}
{{- toJson $config -}}
{{- end -}}

{{/* A stage's GPUs (resources.limits."nvidia.com/gpu"), checked (skuforge.gpuLimit). (dict "root" $
"name" "matting" "config" <its skuforge.stageConfig>) */}}
{{- define "skuforge.stageGpus" -}}
{{- $own := (get .root.Values.stages .name | default dict).resources | default dict -}}
{{- $keys := dict -}}
{{- range $part := list "requests" "limits" -}}
{{- $set := hasKey (index $own $part | default dict) "nvidia.com/gpu" -}}
{{- $_ := set $keys $part (printf "%s.resources.%s" (ternary (printf "stages.%s" $.name) "stageDefaults" $set) $part) -}}
{{- end -}}
{{- include "skuforge.gpuLimit" (dict "keys" $keys "resources" .config.resources) -}}
{{- end -}}

{{/* A pod's GPUs (its limits' "nvidia.com/gpu"), as a whole number (skuforge.extendedLimit); none, or
null, is 0. `keys`: the values' key of requests and limits. (dict "keys" (dict "requests"
"triton.resources.requests" "limits" "triton.resources.limits") "resources" <the pod's resources>) */}}
{{- define "skuforge.gpuLimit" -}}
{{- $spec := (include "skuforge.wholeNumbers" . | fromYaml).gpus -}}
{{- include "skuforge.extendedLimit" (dict "keys" .keys "resources" .resources "name" "nvidia.com/gpu" "spec" $spec) -}}
{{- end -}}

{{/* Whether a resource is an extended one (a name with a domain outside kubernetes.io, such as
nvidia.com/gpu), which the API server counts in whole units and never overcommits. */}}
{{- define "skuforge.isExtended" -}}
{{- if and (contains "/" .) (not (contains "kubernetes.io/" .)) }}true{{ end -}}
{{- end -}}

{{/* A pod's limit of an extended resource, as a whole number; none, or null, is 0. Its request is the
limit's or none: the API server refuses an extended resource's request that is not its limit, or has
none (no overcommit), at install. (dict "keys" <as skuforge.gpuLimit's> "resources" <the pod's
resources> "name" "example.com/fpga" "spec" <its row of skuforge.wholeNumbers>) */}}
{{- define "skuforge.extendedLimit" -}}
{{- $field := .name -}}
{{- $given := dict -}}
{{- range $part := list "requests" "limits" -}}
{{- $value := index (index ($.resources | default dict) $part | default dict) $field -}}
{{- if not (kindIs "invalid" $value) -}}
{{- $key := printf "%s.%s" (index $.keys $part) $field -}}
{{- $count := include "skuforge.wholeCount" (dict "key" $key "value" $value "spec" $.spec) -}}
{{- $_ := set $given $part (dict "key" $key "text" (include "skuforge.text" $value) "count" $count) -}}
{{- end -}}
{{- end -}}
{{- with $given.requests -}}
{{- if not $given.limits -}}
{{- fail (printf "%s=%s has no limit (%s): the API server takes a request of %s (an extended resource) only beside an equal limit (it is not overcommitted); give the limit alone, which the request follows" .key .text (printf "%s.%s" $.keys.limits $field) $field) -}}
{{- else if ne .count $given.limits.count -}}
{{- fail (printf "%s=%s is not its limit (%s=%s): the API server takes a request of %s (an extended resource) only equal to its limit (it is not overcommitted); give the limit alone, which the request follows" .key .text $given.limits.key $given.limits.text $field) -}}
{{- end -}}
{{- end -}}
{{- if $given.limits }}{{ $given.limits.count }}{{ else }}0{{ end -}}
{{- end -}}

{{/* A quantity of an extended resource (GPUs), as a whole number. The API server takes any quantity of
a whole value for an extended resource (1, "1", 1000m, 0.002k, 1Ki; its check is MilliValue() % 1000
== 0) and refuses the rest: `int` made a map or "soon" 0 (a stage took the CPU image and no GPU
toleration), 1000m was refused as no whole number, and Triton's went unchecked to the API server. The
value is D x 10^shift x 2^binary, D its digits (+1 and 1000000000n are 1 too). (dict "key"
"triton.resources.limits.nvidia.com/gpu" "value" <the quantity> "spec" <its row of skuforge.wholeNumbers>) */}}
{{- define "skuforge.wholeCount" -}}
{{- $value := .value -}}
{{- $key := .key -}}
{{- $spec := .spec -}}
{{- $text := include "skuforge.checked" (dict "key" $key "value" $value "reader" $spec.reader "want" "give one number") -}}
{{- $pattern := `^\+?([0-9]*)(\.([0-9]*))?(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE]([+-]?[0-9]+))?$` -}}
{{- $count := -1 -}}
{{- if and (regexMatch $pattern $text) (regexMatch "[0-9]" $text) -}}
{{- $fraction := regexReplaceAll "0+$" (regexReplaceAll $pattern $text "${3}") "" -}}
{{- $digits := regexReplaceAll "^0+" (printf "%s%s" (regexReplaceAll $pattern $text "${1}") $fraction) "" -}}
{{- $suffix := regexReplaceAll $pattern $text "${4}" -}}
{{- $exponent := regexReplaceAll $pattern $text "${5}" | trimPrefix "+" -}}
{{- $binary := get (dict "Ki" 10 "Mi" 20 "Gi" 30 "Ti" 40 "Pi" 50 "Ei" 60) $suffix | default 0 -}}
{{- $shift := get (dict "n" -9 "u" -6 "m" -3 "k" 3 "M" 6 "G" 9 "T" 12 "P" 15 "E" 18) $suffix | default 0 -}}
{{- /* An exponent of over 4 digits makes any digits more GPUs than the most, or less than one. */ -}}
{{- if $exponent }}{{ $shift = ternary (atoi $exponent) (ternary -9999 9999 (hasPrefix "-" $exponent)) (le (len $exponent) 5) }}{{ end -}}
{{- $shift = sub $shift (len $fraction) -}}
{{- if not $digits -}}
{{- $count = 0 -}}
{{- else if gt (add (len $digits) (max $shift 0)) 18 -}}
{{- /* More than an int64 holds: past the most. */ -}}
{{- $count = -1 -}}
{{- else if $binary -}}
{{- /* digits x 2^binary / 10^decimals: whole where 5^decimals divides the digits and the 2s cancel. */ -}}
{{- $count = atoi $digits -}}
{{- range until (len $fraction) }}{{ if and (ge $count 0) (eq (mod $count 5) 0) }}{{ $count = div $count 5 }}{{ else }}{{ $count = -1 }}{{ end }}{{ end -}}
{{- range until (int (max 0 (sub (len $fraction) $binary))) }}{{ if and (ge $count 0) (eq (mod $count 2) 0) }}{{ $count = div $count 2 }}{{ else }}{{ $count = -1 }}{{ end }}{{ end -}}
{{- range until (int (max 0 (sub $binary (len $fraction)))) }}{{ if and (ge $count 0) (le $count (int64 $spec.most)) }}{{ $count = mul $count 2 }}{{ end }}{{ end -}}
{{- else if ge $shift 0 -}}
{{- $count = atoi (printf "%s%s" $digits (repeat (int $shift) "0")) -}}
{{- else if and (gt (len $digits) (int (sub 0 $shift))) (regexMatch "^0*$" (substr (int (add (len $digits) $shift)) (len $digits) $digits)) -}}
{{- /* Whole where the digits past the point are all 0. */ -}}
{{- $count = atoi (substr 0 (int (add (len $digits) $shift)) $digits) -}}
{{- end -}}
{{- end -}}
{{- if or (lt $count (int64 $spec.least)) (gt $count (int64 $spec.most)) -}}
{{- fail (printf "%s=%s is no %s from %d to %d (a Kubernetes quantity of a whole value: 1, 2, 1000m), for %s: give one" $key $text $spec.what (int64 $spec.least) (int64 $spec.most) $spec.reader) -}}
{{- end -}}
{{- $count -}}
{{- end -}}

{{/* A pod's resources, checked: requests and limits, each a map of quantities (or none). A string, list
or number there stopped the render with Go's "can't evaluate field limits in type string", naming no
value, or went into the manifest for the API server to refuse at install, as did a quantity it does
not parse (`cpu: soon`, `memory: 20GB`) or holds as another value (skuforge.quantityNanos). A request
is held to its limit, as the API server holds it at install (helm install said OK, and the Deployment
made no pod): cpu's, memory's and any other native resource's at most its limit (compared as values:
1Gi over 1G, 1000m equal to 1), a hugepages-* request equal to a limit it needs (never overcommitted),
huge pages whole pages, beside cpu or memory (skuforge.checkHugePages), an extended resource counted and its request equal to its limit (skuforge.extendedLimit); the GPUs
are skuforge.gpuLimit's. `keys`: the values' key of each; `own`, for a stage, its own resources
(stages.<name>.resources): a quantity it does not set is named as stageDefaults'. (dict "value"
.Values.console.resources "keys" (dict "resources" "console.resources" "requests"
"console.resources.requests" "limits" "console.resources.limits")) */}}
{{- define "skuforge.checkResources" -}}
{{- $parts := list (list "resources" .keys.resources .value) -}}
{{- if kindIs "map" .value -}}
{{- range $part := list "requests" "limits" }}{{ $parts = append $parts (list $part (index $.keys $part) (index $.value $part)) }}{{ end -}}
{{- end -}}
{{- $size := (include "skuforge.texts" . | fromYaml).kinds.size -}}
{{- $given := dict "requests" dict "limits" dict -}}
{{- range $parts -}}
{{- $part := index . 0 -}}
{{- $key := index . 1 -}}
{{- $value := index . 2 -}}
{{- if not (or (kindIs "map" $value) (kindIs "invalid" $value)) -}}
{{- fail (printf "%s=%v is no map: give a pod's resources as maps of quantities, e.g. {requests: {cpu: 500m, memory: 512Mi}, limits: {memory: 2Gi}}" $key (include "skuforge.text" $value)) -}}
{{- end -}}
{{- if and (kindIs "map" $value) (ne $part "resources") -}}
{{- range $name, $quantity := $value -}}
{{- $field := printf "%s.%s" $key $name -}}
{{- if and $.own (not (hasKey (index $.own $part | default dict) $name)) }}{{ $field = printf "stageDefaults.resources.%s.%s" $part $name }}{{ end -}}
{{- if and (not (kindIs "invalid" $quantity)) (not (include "skuforge.isExtended" $name)) -}}
{{- $text := include "skuforge.checked" (dict "key" $field "value" $quantity "reader" "the API server" "want" "give one quantity") -}}
{{- if not (regexMatch $size.pattern $text) -}}
{{- fail (printf "%s=%s is no Kubernetes quantity (500m, 1.5, 2Gi, 1e3), which the API server would refuse at install: give one" $field $text) -}}
{{- end -}}
{{- $nanos := include "skuforge.quantityNanos" (dict "key" $field "text" $text "milli" (eq $name "cpu")) -}}
{{- $_ := set (index $given $part) $name (dict "key" $field "text" $text "nanos" $nanos) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- include "skuforge.checkHugePages" (dict "given" $given "size" $size) -}}
{{- range $name, $request := $given.requests -}}
{{- $limit := get $given.limits $name -}}
{{- if hasPrefix "hugepages-" $name -}}
{{- if not $limit -}}
{{- fail (printf "%s=%s has no limit (%s.%s): the API server takes a request of %s (huge pages are not overcommitted) only beside an equal limit; give the limit alone, which the request follows" $request.key $request.text $.keys.limits $name $name) -}}
{{- else if ne $request.nanos $limit.nanos -}}
{{- fail (printf "%s=%s is not its limit (%s=%s): the API server takes a request of %s (huge pages are not overcommitted) only equal to its limit; give the limit alone, which the request follows" $request.key $request.text $limit.key $limit.text $name) -}}
{{- end -}}
{{- else if $limit -}}
{{- if include "skuforge.quantityOver" (list $request.nanos $limit.nanos) -}}
{{- fail (printf "%s=%s is over its limit (%s=%s): the API server refuses a pod whose request of %s is more than its limit, at install; lower the request or raise the limit" $request.key $request.text $limit.key $limit.text $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if kindIs "map" .value -}}
{{- $spec := (include "skuforge.wholeNumbers" . | fromYaml).extended -}}
{{- $names := list -}}
{{- range $part := list "requests" "limits" }}{{ $names = concat $names (keys (index $.value $part | default dict)) }}{{ end -}}
{{- range $name := without (uniq $names | sortAlpha) "nvidia.com/gpu" -}}
{{- if include "skuforge.isExtended" $name -}}
{{- $_ := include "skuforge.extendedLimit" (dict "keys" $.keys "resources" $.value "name" $name "spec" $spec) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{/* A pod's huge pages, held to what the API server holds at install (ValidateResourceRequirements): each
hugepages-<size> request or limit a whole number of pages of a size that is a whole number of bytes
(its value in bytes, rounded up as resource.Quantity.Value rounds, a multiple of the page's: 3Mi of 2Mi
pages rendered, and the API server refused the pod), and beside a cpu or memory request or limit
("HugePages require cpu or memory"). `given`: skuforge.checkResources' checked quantities, by part and
name; `size`: skuforge.texts' size kind. */}}
{{- define "skuforge.checkHugePages" -}}
{{- $huge := "" -}}
{{- /* The limit first: given alone, the request follows it. */ -}}
{{- range $part := list "limits" "requests" -}}
{{- range $name, $quantity := index $.given $part -}}
{{- if hasPrefix "hugepages-" $name -}}
{{- $huge = $huge | default $quantity -}}
{{- $page := trimPrefix "hugepages-" $name -}}
{{- $pageNanos := "0" -}}
{{- if and (regexMatch $.size.pattern $page) (regexMatch "[0-9]" $page) -}}
{{- $pageNanos = include "skuforge.quantityNanos" (dict "key" $quantity.key "text" $page) -}}
{{- end -}}
{{- if not (and (gt (len $pageNanos) 9) (hasSuffix "000000000" $pageNanos)) -}}
{{- fail (printf "%s=%s names no page size (%s): the API server refuses a hugepages-<size> whose size is not a positive whole number of bytes (hugepages-2Mi, hugepages-1Gi), at install; name the nodes' page size" $quantity.key $quantity.text $page) -}}
{{- end -}}
{{- $pageBytes := atoi (trimSuffix "000000000" $pageNanos) -}}
{{- $bytes := 0 -}}
{{- if gt (len $quantity.nanos) 9 -}}
{{- $whole := substr 0 (int (sub (len $quantity.nanos) 9)) $quantity.nanos -}}
{{- $bytes = add (atoi $whole) (ternary 0 1 (hasSuffix "000000000" $quantity.nanos)) -}}
{{- else if ne $quantity.nanos "0" -}}
{{- $bytes = 1 -}}
{{- end -}}
{{- if ne (mod $bytes $pageBytes) 0 -}}
{{- fail (printf "%s=%s is no whole number of %s pages (%d bytes, where a page is %d): the API server refuses it at install; give a multiple of %s (e.g. %d pages: %s)" $quantity.key $quantity.text $page $bytes $pageBytes $page (add (div $bytes $pageBytes) 1) (toString (mul (add (div $bytes $pageBytes) 1) $pageBytes))) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if $huge -}}
{{- $native := list -}}
{{- range $part := list "requests" "limits" }}{{ $native = concat $native (pick (index $.given $part) "cpu" "memory" | keys) }}{{ end -}}
{{- if not $native -}}
{{- fail (printf "%s=%s asks for huge pages with no cpu or memory, in the container's requests or limits: the API server refuses such a container at install (HugePages require cpu or memory); give a memory limit or a cpu or memory request beside it" $huge.key $huge.text) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A quantity's value as the API server keeps it, in nano units (1n; a value between two is rounded up,
as resource.ParseQuantity rounds), as decimal digits: exact, where float64 made 9007199254740993 and
...992 one value, and int64 held no 1Gi in nano units. So 1Gi, 1073741824 and 1.073741824G compare
equal, and 1G less. A value past 2^63-1 of what its reader counts (millicores for cpu, else bytes or
units) is refused, naming its key: the API server keeps such a text (1e999, 1e40, 10E), but cuts one
with a binary suffix to 2^63-1, and the scheduler and the kubelet read any other into an int64 it
overflows (k8s.io/apimachinery resource.Quantity.Value), a request or limit nobody wrote. (dict "key"
"stages.matting.resources.limits.memory" "text" "3Gi" "milli" false) */}}
{{- define "skuforge.quantityNanos" -}}
{{- $pattern := `^\+?([0-9]*)(\.([0-9]*))?(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE]([+-]?[0-9]+))?$` -}}
{{- $text := .text -}}
{{- $fraction := regexReplaceAll $pattern $text "${3}" -}}
{{- $digits := regexReplaceAll "^0+" (printf "%s%s" (regexReplaceAll $pattern $text "${1}") $fraction) "" -}}
{{- $suffix := regexReplaceAll $pattern $text "${4}" -}}
{{- $exponent := regexReplaceAll $pattern $text "${5}" | trimPrefix "+" -}}
{{- $kibis := get (dict "Ki" 1 "Mi" 2 "Gi" 3 "Ti" 4 "Pi" 5 "Ei" 6) $suffix | default 0 -}}
{{- $shift := get (dict "n" -9 "u" -6 "m" -3 "k" 3 "M" 6 "G" 9 "T" 12 "P" 15 "E" 18) $suffix | default 0 -}}
{{- /* An exponent of over 6 digits is past any bound either way (the digits are checked before it pads). */ -}}
{{- if $exponent }}{{ $shift = ternary (atoi $exponent) (ternary -999999 999999 (hasPrefix "-" $exponent)) (le (len $exponent) 7) }}{{ end -}}
{{- /* Now the value is digits x 10^shift x 1024^kibis, in nano units. */ -}}
{{- $shift = sub (add $shift 9) (len $fraction) -}}
{{- $milli := .milli | default false -}}
{{- $most := ternary "9223372036854775807000000" "9223372036854775807000000000" $milli -}}
{{- $nanos := "0" -}}
{{- if $digits -}}
{{- if gt (add (len $digits) $shift) (len $most) -}}
{{- /* At least 10^(len(most)): past the most before any 1024s. */ -}}
{{- $nanos = printf "1%s" $most -}}
{{- else -}}
{{- range until (int $kibis) -}}
{{- $carry := 0 -}}
{{- $product := "" -}}
{{- range $at := until (len $digits) | reverse -}}
{{- $step := add (mul (atoi (substr $at (int (add $at 1)) $digits)) 1024) $carry -}}
{{- $product = printf "%d%s" (mod $step 10) $product -}}
{{- $carry = div $step 10 -}}
{{- end -}}
{{- $digits = printf "%s%s" (ternary (toString $carry) "" (gt $carry 0)) $product -}}
{{- end -}}
{{- if ge $shift 0 -}}
{{- $nanos = printf "%s%s" $digits (repeat (int $shift) "0") -}}
{{- else if le (add (len $digits) $shift) 0 -}}
{{- /* Under 1n: 1n. */ -}}
{{- $nanos = "1" -}}
{{- else -}}
{{- $kept := substr 0 (int (add (len $digits) $shift)) $digits -}}
{{- $nanos = $kept -}}
{{- if not (regexMatch "^0*$" (substr (int (add (len $digits) $shift)) (len $digits) $digits)) -}}
{{- /* Rounded up to the next 1n: the kept digits plus one. */ -}}
{{- $carry := 1 -}}
{{- $nanos = "" -}}
{{- range $at := until (len $kept) | reverse -}}
{{- $step := add (atoi (substr $at (int (add $at 1)) $kept)) $carry -}}
{{- $nanos = printf "%d%s" (mod $step 10) $nanos -}}
{{- $carry = div $step 10 -}}
{{- end -}}
{{- $nanos = printf "%s%s" (ternary "1" "" (gt $carry 0)) $nanos -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if include "skuforge.quantityOver" (list $nanos $most) -}}
{{- fail (printf "%s=%s is past the largest quantity Kubernetes holds (2^63-1 %s, about %s): the API server keeps the text, but the scheduler and the kubelet would read it into an int64 it overflows, as another quantity; give the quantity meant" .key $text (ternary "millicores" "bytes or units" $milli) (ternary "9.2e15 cores" "8Ei" $milli)) -}}
{{- end -}}
{{- $nanos -}}
{{- end -}}

{{/* "true" where the first of two skuforge.quantityNanos is the larger. (list "1000" "999") */}}
{{- define "skuforge.quantityOver" -}}
{{- $first := index . 0 -}}
{{- $second := index . 1 -}}
{{- if or (gt (len $first) (len $second)) (and (eq (len $first) (len $second)) (gt $first $second)) }}true{{ end -}}
{{- end -}}

{{/* A pod's resources given under one key (triton.resources, console.resources), checked. (dict
"value" .Values.triton.resources "key" "triton.resources") */}}
{{- define "skuforge.resources" -}}
{{- $keys := dict "resources" .key "requests" (printf "%s.requests" .key) "limits" (printf "%s.limits" .key) -}}
{{- include "skuforge.checkResources" (dict "value" .value "keys" $keys) -}}
{{- end -}}

{{/* Where a stage's setting came from, for a message: stages.<name>.<key> where the stage's own values
set it, else stageDefaults.<key> (a refused default was named as a stage's key the values never set).
(dict "root" $ "name" "matting" "key" "autoscaling.maxReplicas") */}}
{{- define "skuforge.stageKey" -}}
{{- $node := get .root.Values.stages .name | default dict -}}
{{- $set := true -}}
{{- range $part := splitList "." .key -}}
{{- if and $set (kindIs "map" $node) (hasKey $node $part) }}{{ $node = get $node $part }}{{ else }}{{ $set = false }}{{ end -}}
{{- end -}}
{{- if $set }}stages.{{ .name }}.{{ .key }}{{ else }}stageDefaults.{{ .key }}{{ end -}}
{{- end -}}

{{/* Environment every skuforge container gets: the ConfigMap, the Secret, its static member id. */}}
{{- /* The SKUFORGE_* settings every pod reads: the ConfigMap's data, and the topics Job's env (a
pre-upgrade hook runs before the ConfigMap is updated, so it must not read the old one). */ -}}
{{- define "skuforge.settingsData" -}}
{{- $fullname := include "skuforge.fullname" . -}}
{{- $settings := include "skuforge.given" .Values.settings | fromJson -}}
SKUFORGE_KAFKA_BOOTSTRAP: {{ .Values.kafka.bootstrap | quote }}
SKUFORGE_TOPIC_NAMESPACE: {{ .Values.topicNamespace | quote }}
SKUFORGE_CONSUMER_GROUP_PREFIX: {{ .Values.consumerGroupPrefix | quote }}
SKUFORGE_TOPIC_PARTITIONS: {{ include "skuforge.partitions" . | quote }}
SKUFORGE_STORE_URI: {{ .Values.storeUri | quote }}
SKUFORGE_SESSION_TIMEOUT_MS: {{ include "skuforge.chartNumber" (dict "root" . "key" "sessionTimeoutMs") | quote }}
# Probes and Prometheus reach /metrics, /healthz and /readyz from outside the pod.
SKUFORGE_METRICS_HOST: "0.0.0.0"
{{- if .Values.triton.enabled }}
SKUFORGE_GENERATION_TRITON_URL: {{ printf "%s-triton:%s" $fullname (include "skuforge.tritonPorts" . | fromJson).grpc | quote }}
SKUFORGE_GENERATION_TRITON_PROTOCOL: "grpc"
{{- /* The stage asks for the backend Triton serves, unless the values choose (checked in validate). */}}
{{- if and (eq (len .Values.triton.backends) 1) (not (hasKey $settings "SKUFORGE_GENERATION_BACKEND")) (not (include "skuforge.mixedBackends" . | fromJsonArray)) }}
SKUFORGE_GENERATION_BACKEND: {{ first .Values.triton.backends | quote }}
{{- end }}
{{- end }}
{{- range $key, $value := $settings }}
{{ $key }}: {{ include "skuforge.text" $value | quote }}
{{- end }}
{{- end -}}

{{/* The value the generator stage's container gets for a variable, and where it comes from, as JSON
{"source": "stages.generator.env", "value": "..."}, or {} where the values set none: its env map beats
envFrom, and there the Secret (listed last) beats the ConfigMap. (dict "root" $ "key" "SKUFORGE_...") */}}
{{- define "skuforge.generatorSetting" -}}
{{- $values := .root.Values -}}
{{- $env := (include "skuforge.stageConfig" (dict "root" .root "name" "generator") | fromJson).env -}}
{{- $stage := include "skuforge.given" (get $values.stages "generator" | default dict).env | fromJson -}}
{{- $found := dict -}}
{{- if hasKey $env .key -}}
{{- $found = dict "source" (ternary "stages.generator.env" "stageDefaults.env" (hasKey $stage .key)) "value" (include "skuforge.text" (get $env .key)) -}}
{{- end -}}
{{- range $pair := list (list "secret.values" $values.secret.values) (list "settings" $values.settings) -}}
{{- $given := include "skuforge.given" (index $pair 1) | fromJson -}}
{{- if and (not $found) (hasKey $given $.key) -}}
{{- $found = dict "source" (index $pair 0) "value" (include "skuforge.text" (get $given $.key)) -}}
{{- end -}}
{{- end -}}
{{- toJson $found -}}
{{- end -}}

{{/* The backends the generator stage's SKUFORGE_GENERATION_BACKEND_MIX gives a share above 0, as a JSON
list: empty for no mix, or "{}", where the stage asks SKUFORGE_GENERATION_BACKEND for every variant. */}}
{{- define "skuforge.mixedBackends" -}}
{{- $mixed := list -}}
{{- $setting := include "skuforge.generatorSetting" (dict "root" . "key" "SKUFORGE_GENERATION_BACKEND_MIX") | fromJson -}}
{{- if $setting -}}
{{- $text := $setting.value -}}
{{- $mix := fromJson $text -}}
{{- if hasKey $mix "Error" -}}
{{- fail (printf "%s.SKUFORGE_GENERATION_BACKEND_MIX=%s is not a JSON object of shares, e.g. '{\"composite\": 3, \"diffusion\": 1}' (with --set, escape its braces and commas: \\{\"composite\": 3\\, \"diffusion\": 1\\}); the pods given it would refuse it at start" $setting.source $text) -}}
{{- end -}}
{{- range $backend, $share := $mix -}}
{{- if gt (float64 $share) 0.0 }}{{ $mixed = append $mixed $backend }}{{ end -}}
{{- end -}}
{{- end -}}
{{- toJson $mixed -}}
{{- end -}}

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

{{/* SKUFORGE_* variables the chart sets itself, and what to change instead. A copy in `settings:`
made a second ConfigMap key (and one in secret.values overrode the ConfigMap through envFrom) while
KEDA's triggers and the topics Job kept the chart's value: scaling on another group's lag, topics
created under other names. (dict "root" $) -> YAML map */}}
{{- define "skuforge.chartSetVariables" -}}
SKUFORGE_KAFKA_BOOTSTRAP: use kafka.bootstrap (KEDA's triggers and the topics Job read it too)
SKUFORGE_TOPIC_NAMESPACE: use topicNamespace (KEDA's triggers and the topics Job read it too)
SKUFORGE_CONSUMER_GROUP_PREFIX: use consumerGroupPrefix (KEDA's triggers read it too)
SKUFORGE_TOPIC_PARTITIONS: use topicPartitions (the topics Job and the maxReplicas check read it too)
SKUFORGE_STORE_URI: use storeUri
SKUFORGE_SESSION_TIMEOUT_MS: use sessionTimeoutMs
SKUFORGE_METRICS_HOST: leave it out (the probes and Prometheus reach every pod on 0.0.0.0)
SKUFORGE_METRICS_PORT: leave it out (each pod gets its port from files/flow.json, which the PodMonitors scrape)
SKUFORGE_GROUP_INSTANCE_ID: use staticMembership (each pod's own name)
SKUFORGE_CONSOLE_HOST: leave it out (the console listens on 0.0.0.0 for its Service)
SKUFORGE_CONSOLE_PORT: use console.port
SKUFORGE_CONSOLE_METRICS_PORT: leave it out (the console gets its port from files/flow.json)
SKUFORGE_CONSOLE_DB_PATH: leave it out (the task table lives on the console's volume, console.persistence)
SKUFORGE_GENERATION_SERVER_ADDRESS: leave it out (Triton listens on 0.0.0.0 for its Service)
SKUFORGE_GENERATION_SERVER_HTTP_PORT: use triton.ports.http
SKUFORGE_GENERATION_SERVER_GRPC_PORT: use triton.ports.grpc
SKUFORGE_GENERATION_SERVER_METRICS_PORT: use triton.ports.metrics
{{- if .root.Values.triton.enabled }}
SKUFORGE_GENERATION_TRITON_URL: leave it out (the generator calls the chart's Triton; to call another, set triton.enabled=false)
SKUFORGE_GENERATION_TRITON_PROTOCOL: leave it out (the generator calls the chart's Triton over gRPC; to call another, set triton.enabled=false)
SKUFORGE_DIFFUSION_CACHE_DIR: use triton.modelCache (the Triton pod's cache volume; the folder is <mountPath>/models)
{{- end }}
{{- end -}}

{{/* Checks that fail the render with a message saying what to fix. */}}
{{- define "skuforge.validate" -}}
{{- $flow := include "skuforge.flow" . | fromJson -}}
{{- $names := list -}}
{{- range $flow.stages }}{{ $names = append $names .name }}{{ end -}}
{{- range $name, $_ := .Values.stages -}}
{{- if not (has $name $names) -}}
{{- fail (printf "stages: no such stage %q; the stages are %s (files/flow.json)" $name (join ", " $names)) -}}
{{- end -}}
{{- end -}}
{{- /* The names KEDA's triggers and the topics Job use as given, while the pods read a blank setting as
unset (their default) and refuse one with spaces around it: consumerGroupPrefix "" scaled each stage on
the lag of ".<stage>", a group nobody consumes in, while its pods ran in "skuforge.<stage>"; a blank
storeUri gave each pod a folder of its own (file://./var/store), a blank kafka.bootstrap 127.0.0.1. */ -}}
{{- $chartNames := dict "kafka.bootstrap" (list .Values.kafka.bootstrap "the pods would connect to 127.0.0.1:9092, themselves, and KEDA's triggers to nothing: give the brokers' host:port list") "consumerGroupPrefix" (list .Values.consumerGroupPrefix "the pods would consume in skuforge.<stage>, while KEDA scaled each stage on the lag of .<stage>, a group nobody consumes in: give a prefix (skuforge)") "storeUri" (list .Values.storeUri "each pod would write into a folder of its own (file://./var/store), where no other pod reads: give s3://BUCKET/PREFIX") -}}
{{- range $key, $spec := $chartNames -}}
{{- $text := include "skuforge.checked" (dict "key" $key "value" (index $spec 0) "reader" "the pods" "want" "give one name") -}}
{{- if or (kindIs "invalid" (index $spec 0)) (not (trim $text)) -}}
{{- fail (printf "%s is empty, which the pods read as unset: %s" $key (index $spec 1)) -}}
{{- else if ne $text (trim $text) -}}
{{- fail (printf "%s=%q has spaces around it: the pods refuse it at start; remove them" $key $text) -}}
{{- end -}}
{{- end -}}
{{- if kindIs "invalid" .Values.topicNamespace -}}
{{- fail "topicNamespace is null, which KEDA's triggers would read as the topic prefix \"%!s(<nil>)\": give \"\" for none" -}}
{{- end -}}
{{- $topicNamespace := include "skuforge.checked" (dict "key" "topicNamespace" "value" .Values.topicNamespace "reader" "the pods" "want" "give one prefix") -}}
{{- if not (regexMatch "^[A-Za-z0-9._-]*$" $topicNamespace) -}}
{{- fail (printf "topicNamespace=%q holds characters Kafka refuses in a topic name (letters, digits, '.', '_' and '-' only): the pods refuse it at start" $topicNamespace) -}}
{{- end -}}
{{- /* The backends skuforge has (shared/generation/backend.py's BACKEND_NAMES; tests/test_deploy_review46.py
keeps them in step): a misspelt one rendered `serve generator --backend diffusio`, and the generator stage
told to use it, and both pods exited at start after helm install said OK. */ -}}
{{- $backendNames := list "composite" "diffusion" -}}
{{- if not (kindIs "slice" .Values.triton.backends) -}}
{{- fail (printf "triton.backends is %s, not a list: give a list ({composite})" (ternary "null" (printf "a %s" (kindOf .Values.triton.backends)) (kindIs "invalid" .Values.triton.backends))) -}}
{{- end -}}
{{- range .Values.triton.backends -}}
{{- if not (has . $backendNames) -}}
{{- fail (printf "triton.backends: no such backend %q; the backends are %s" (toString .) (join ", " $backendNames)) -}}
{{- end -}}
{{- end -}}
{{- $settings := include "skuforge.given" .Values.settings | fromJson -}}
{{- $secretValues := include "skuforge.given" .Values.secret.values | fromJson -}}
{{- $tritonEnv := include "skuforge.given" .Values.triton.env | fromJson -}}
{{- range $key, $_ := $settings -}}
{{- if not (hasPrefix "SKUFORGE_" $key) -}}
{{- fail (printf "settings.%s: only SKUFORGE_* settings belong here (secrets go in secret.values)" $key) -}}
{{- end -}}
{{- end -}}
{{- /* Each variable's value is the text its pods get (skuforge.checked). */ -}}
{{- $raw := dict "settings" .Values.settings "secret.values" .Values.secret.values "stageDefaults.env" .Values.stageDefaults.env "console.env" .Values.console.env "triton.env" .Values.triton.env -}}
{{- range $name, $stage := .Values.stages }}{{ $_ := set $raw (printf "stages.%s.env" $name) ($stage | default dict).env }}{{ end -}}
{{- range $source, $values := $raw -}}
{{- range $key, $value := $values -}}
{{- $_ := include "skuforge.checked" (dict "key" (printf "%s.%s" $source $key) "value" $value "reader" "its pods" "want" "a value must be a string, number or boolean; give one (a JSON setting as a quoted string; with --set, escape its braces and commas: \\{\"composite\": 3\\, \"diffusion\": 1\\})") -}}
{{- end -}}
{{- end -}}
{{- $chartSet := include "skuforge.chartSetVariables" (dict "root" .) | fromYaml -}}
{{- /* The pods' env maps too: an env entry beats the ConfigMap (KEDA kept the chart's group), and one the
chart writes into the container's env came twice, the later winning (a stage's /metrics moved off the
port its probes and PodMonitor use, and the pod restarted for ever). */ -}}
{{- $sources := dict "settings" $settings "secret.values" $secretValues "stageDefaults.env" (include "skuforge.given" .Values.stageDefaults.env | fromJson) "console.env" (include "skuforge.given" .Values.console.env | fromJson) "triton.env" $tritonEnv -}}
{{- range $name, $stage := .Values.stages -}}
{{- $_ := set $sources (printf "stages.%s.env" $name) (include "skuforge.given" ($stage | default dict).env | fromJson) -}}
{{- end -}}
{{- /* The settings skuforge keeps secret (SecretStr fields; tests/test_deploy_review39.py keeps the list
in step), and the object store's AWS keys: under `settings` the SASL password went into the ConfigMap
and the topics Job's env, and in a pod's env map any of them into its Deployment, readable by whoever
can read the namespace. */ -}}
{{- $secrets := list "SKUFORGE_CONSOLE_USERS" "SKUFORGE_CONSOLE_SESSION_SECRET" "SKUFORGE_KAFKA_SASL_PASSWORD" "AWS_SECRET_ACCESS_KEY" "AWS_SESSION_TOKEN" -}}
{{- /* Each pod reads images under its own limits: lower for the matting alone, the generator drew and
stored what the matting then dead-lettered (too_many_pixels), a stage late; set for the stages alone, the
console and Triton took what the stages refuse. Only what every pod reads may set them. */ -}}
{{- $imageLimits := list "SKUFORGE_MAX_IMAGE_PIXELS" "SKUFORGE_MAX_IMAGE_BYTES" -}}
{{- range $source, $values := $sources -}}
{{- range $key, $_ := $values -}}
{{- if and (has $key $imageLimits) (not (has $source (list "settings" "secret.values"))) -}}
{{- fail (printf "%s.%s: every pod must read images under the same limit (lower for one stage, it dead-letters what an earlier stage took, too_many_pixels or too_large_bytes, a stage late; raised for one, an earlier stage refuses what it would take): set it once, as settings.%s, which every pod reads" $source $key $key) -}}
{{- end -}}
{{- if and (ne $source "secret.values") (has $key $secrets) -}}
{{- fail (printf "%s.%s is a secret: the ConfigMap and the pod specs are readable by anyone who can read the namespace; put it in secret.values or secret.existingSecret" $source $key) -}}
{{- end -}}
{{- with get $chartSet $key -}}
{{- fail (printf "%s.%s: the chart sets this variable itself; %s" $source $key .) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- /* The generator stage calls Triton for every backend, composite too: without an address it
calls its own pod (SKUFORGE_GENERATION_TRITON_URL's default, 127.0.0.1) and retries forever. */ -}}
{{- if not .Values.triton.enabled -}}
{{- if not (include "skuforge.generatorSetting" (dict "root" . "key" "SKUFORGE_GENERATION_TRITON_URL") | fromJson) -}}
{{- $ports := include "skuforge.tritonPorts" . | fromJson -}}
{{- fail (printf "triton.enabled=false, but the generator stage calls Triton for every backend (composite too): set settings.SKUFORGE_GENERATION_TRITON_URL to the Triton that serves skuforge's generation model (host:%d over gRPC, or host:%d with settings.SKUFORGE_GENERATION_TRITON_PROTOCOL=http, where it listens on triton.ports), or it calls its own pod (127.0.0.1) and retries forever" (int $ports.grpc) (int $ports.http)) -}}
{{- end -}}
{{- end -}}
{{- if .Values.triton.enabled -}}
{{- /* What the generator stage gets: a stage's env, or secret.values, set past `settings` went unchecked. */ -}}
{{- $backend := include "skuforge.generatorSetting" (dict "root" . "key" "SKUFORGE_GENERATION_BACKEND") | fromJson -}}
{{- if and $backend (not (has $backend.value .Values.triton.backends)) -}}
{{- fail (printf "%s.SKUFORGE_GENERATION_BACKEND=%s, but Triton serves only %s (triton.backends): the generator stage would call a model nobody serves" $backend.source $backend.value (join ", " .Values.triton.backends)) -}}
{{- end -}}
{{- /* Two alike made a Service the API server refuses (a port twice), or a pod that exits at start;
outside 1-65535 (skuforge.wholeNumbers) the API server refused the Deployment and Service at install,
and Triton's settings too. */ -}}
{{- $ports := include "skuforge.tritonPorts" . | fromJson -}}
{{- $serverMetricsPort := int $flow.triton.metricsPort -}}
{{- if lt (len (uniq (list (int $ports.http) (int $ports.grpc) (int $ports.metrics) $serverMetricsPort))) 4 -}}
{{- fail (printf "triton.ports (http %d, grpc %d, metrics %d) and the generator server's own /metrics (%d, files/flow.json) each needs a port of its own" (int $ports.http) (int $ports.grpc) (int $ports.metrics) $serverMetricsPort) -}}
{{- end -}}
{{- range include "skuforge.mixedBackends" . | fromJsonArray -}}
{{- if not (has . $.Values.triton.backends) -}}
{{- fail (printf "%s.SKUFORGE_GENERATION_BACKEND_MIX gives %s a share, but Triton serves only %s (triton.backends): those variants would call a model nobody serves; add %s to triton.backends or give it no share" (include "skuforge.generatorSetting" (dict "root" $ "key" "SKUFORGE_GENERATION_BACKEND_MIX") | fromJson).source . (join ", " $.Values.triton.backends) .) -}}
{{- end -}}
{{- end -}}
{{- include "skuforge.checkModelCache" . -}}
{{- /* The generator stage checks photo-scene parameters against its own SKUFORGE_SCENES_URI when it asks
for composite variants: one in triton.env alone, and the stage refused them at start, for ever. A
scene_key alone asks for a photo. Its backends: a mix's shares, else its backend (the one Triton serves,
where the values name none); not known, composite is taken (the stage's default). */ -}}
{{- $stageBackends := include "skuforge.mixedBackends" . | fromJsonArray -}}
{{- if not $stageBackends -}}
{{- $backend := include "skuforge.generatorSetting" (dict "root" . "key" "SKUFORGE_GENERATION_BACKEND") | fromJson -}}
{{- if $backend }}{{ $stageBackends = list $backend.value }}{{ else if eq (len .Values.triton.backends) 1 }}{{ $stageBackends = .Values.triton.backends }}{{ end -}}
{{- end -}}
{{- $composite := or (not $stageBackends) (has "composite" $stageBackends) -}}
{{- if and $composite (hasKey $tritonEnv "SKUFORGE_SCENES_URI") (not (include "skuforge.generatorSetting" (dict "root" . "key" "SKUFORGE_SCENES_URI") | fromJson)) -}}
{{- $parameters := include "skuforge.generatorSetting" (dict "root" . "key" "SKUFORGE_GENERATION_PARAMETERS") | fromJson -}}
{{- $asked := dict -}}
{{- with $parameters }}{{ $asked = fromJson .value }}{{ end -}}
{{- if or (eq (toString (get $asked "scene")) "photo") (and (get $asked "scene_key") (not (hasKey $asked "scene"))) -}}
{{- fail (printf "triton.env.SKUFORGE_SCENES_URI reaches the Triton pod alone, but %s.SKUFORGE_GENERATION_PARAMETERS asks for photo scenes, which the generator stage refuses at start without a scene library: set settings.SKUFORGE_SCENES_URI instead (every pod reads it)" $parameters.source) -}}
{{- end -}}
{{- end -}}
{{- /* `skuforge serve generator --backend diffusion` exits at start without a model (CrashLoopBackOff). */ -}}
{{- $model := or (hasKey $tritonEnv "SKUFORGE_DIFFUSION_MODEL") (hasKey $settings "SKUFORGE_DIFFUSION_MODEL") (hasKey $secretValues "SKUFORGE_DIFFUSION_MODEL") .Values.secret.existingSecret -}}
{{- if and (has "diffusion" .Values.triton.backends) (not $model) -}}
{{- fail "triton serves the diffusion backend (triton.backends) but no model is named: set triton.env.SKUFORGE_DIFFUSION_MODEL (a path or s3:// URI of a diffusers inpainting model), or triton.backends={composite} (without one the Triton pod exits at start)" -}}
{{- end -}}
{{- end -}}
{{- /* The generator stage's stop waits for its Triton requests in flight, up to its timeout, and then
commits: a grace shorter than that plus 30 s killed the pod mid-request, the batch in hand never
committed. Once stopping it sends no new request and gives the rest of its batch up, uncommitted
(docs/deploy.md). values.yaml's `settings` gives the timeout, so the check reads the one the pods get (a copy of
the default here went stale when the values changed it); removed with null, the stage's own default
applies, which the check cannot see. */ -}}
{{- with include "skuforge.generatorSetting" (dict "root" . "key" "SKUFORGE_GENERATION_TRITON_TIMEOUT_S") | fromJson -}}
{{- $timeoutS := float64 .value -}}
{{- $grace := (include "skuforge.stageConfig" (dict "root" $ "name" "generator") | fromJson).terminationGracePeriodSeconds -}}
{{- if lt (float64 $grace) (addf $timeoutS 30) -}}
{{- $graceKey := include "skuforge.stageKey" (dict "root" $ "name" "generator" "key" "terminationGracePeriodSeconds") -}}
{{- fail (printf "%s.SKUFORGE_GENERATION_TRITON_TIMEOUT_S=%s does not fit %s (%v): a generator pod stopped with requests in flight would be killed before they end, its batch in hand left for the next owner to draw again; set stages.generator.terminationGracePeriodSeconds to at least %v (the timeout and 30 s), or a shorter timeout" .source .value $graceKey $grace (ceil (addf $timeoutS 30))) -}}
{{- end -}}
{{- end -}}
{{- /* A file:// store is a folder in each pod's own filesystem unless every pod mounts one volume there:
the generator's images were then missing from matting's pod, and every item was dead-lettered. */ -}}
{{- if hasPrefix "file://" .Values.storeUri -}}
{{- $folder := trimPrefix "file://" .Values.storeUri -}}
{{- $shared := false -}}
{{- range .Values.extraVolumeMounts -}}
{{- $mount := .mountPath | default "" | trimSuffix "/" -}}
{{- if and .mountPath (not .readOnly) (or (eq $folder $mount) (hasPrefix (printf "%s/" $mount) $folder)) -}}
{{- $shared = true -}}
{{- end -}}
{{- end -}}
{{- if not $shared -}}
{{- fail (printf "storeUri=%s is a folder in each pod: every stage would write its objects where no other pod reads them (the generator's images missing for matting, every item dead-lettered object_missing). Use an object store (s3://BUCKET/PREFIX), or mount one volume that every pod shares (a ReadWriteMany claim) with extraVolumes and extraVolumeMounts, writable, at that absolute folder or above it" .Values.storeUri) -}}
{{- end -}}
{{- end -}}
{{- /* The console pod runs its web server on console.port and /metrics on the flow's port: at one port
the second to bind exited the pod at start, for ever; at 0 the pages took a port nobody knew. */ -}}
{{- if .Values.console.enabled -}}
{{- $consolePort := int (include "skuforge.chartNumber" (dict "root" . "key" "console.port")) -}}
{{- $consoleMetricsPort := int $flow.console.metricsPort -}}
{{- if eq $consolePort $consoleMetricsPort -}}
{{- fail (printf "console.port=%d is the console's own /metrics port (files/flow.json): its web pages and /metrics cannot both listen there (the pod would exit at start); give another port" $consolePort) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.console.enabled (not .Values.secret.existingSecret) (not (hasKey $secretValues "SKUFORGE_CONSOLE_USERS")) -}}
{{- fail "console.enabled needs reviewers: set secret.values.SKUFORGE_CONSOLE_USERS ('name:password,...') or secret.existingSecret, or console.enabled=false (without them the console pod exits at start)" -}}
{{- end -}}
{{- end -}}

{{/* triton.modelCache.mountPath in a folder of its own in the Triton container. Each rendered before: at
another volume's path the API server refused the pod (the same path twice); inside another volume its
mount point had to be made there (a read-only one, such as a CA Secret, refuses it); above one, that
volume hid part of the cache; over the image's own folders the container had no skuforge to start. */}}
{{- define "skuforge.checkModelCache" -}}
{{- $given := .Values.triton.modelCache.mountPath | default "" | toString -}}
{{- $instead := "mount the model cache at a folder of its own, outside the others (e.g. /var/cache/skuforge, the default)" -}}
{{- if not (isAbs $given) -}}
{{- fail (printf "triton.modelCache.mountPath=%s is not an absolute path: the cache folder (SKUFORGE_DIFFUSION_CACHE_DIR) would be read from the server's working folder; %s" $given $instead) -}}
{{- end -}}
{{- $cache := clean $given -}}
{{- /* A path is above another when the other starts with it and a "/" ("/" is above every path). */ -}}
{{- $below := printf "%s/" (trimSuffix "/" $cache) -}}
{{- range list (list "/opt/skuforge" "skuforge and its Python packages") (list "/usr" "Python and tini") (list "/etc" "the system's settings") (list "/bin" "the system's programs") (list "/lib" "the system's libraries") (list "/proc" "the processes' files") (list "/sys" "the kernel's files") -}}
{{- $folder := index . 0 -}}
{{- $what := index . 1 -}}
{{- if or (eq $cache $folder) (hasPrefix $below $folder) -}}
{{- fail (printf "triton.modelCache.mountPath=%s would hide the image's %s (%s): the Triton container could not start; %s" $given $folder $what $instead) -}}
{{- end -}}
{{- end -}}
{{- $mounts := list (list "/dev/shm" "Triton's shared memory (dshm)") -}}
{{- range $index, $mount := .Values.extraVolumeMounts -}}
{{- $mounts = append $mounts (list ($mount.mountPath | default "" | toString) (printf "extraVolumeMounts[%d] (%s)" $index $mount.name)) -}}
{{- end -}}
{{- range $mounts -}}
{{- $path := clean (index . 0) -}}
{{- $what := index . 1 -}}
{{- if eq $path $cache -}}
{{- fail (printf "triton.modelCache.mountPath=%s is also where %s is mounted: the API server refuses a pod with two volumes at one path; %s" $given $what $instead) -}}
{{- else if hasPrefix (printf "%s/" (trimSuffix "/" $path)) $cache -}}
{{- fail (printf "triton.modelCache.mountPath=%s is inside %s at %s: the cache's mount point would be made in that volume (a read-only one refuses it); %s" $given $what $path $instead) -}}
{{- else if hasPrefix $below $path -}}
{{- fail (printf "triton.modelCache.mountPath=%s is above %s at %s: that volume would hide part of the cache; %s" $given $what $path $instead) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
A value as text for an env var, a Secret or a KEDA field. Helm reads a number in a values file as a
float64, and toString prints 1200000 as "1.2e+06", which no setting takes: every pod failed at start.
A whole number is printed as one.
*/}}
{{- define "skuforge.text" -}}
{{- if and (kindIs "float64" .) (eq (float64 (int64 .)) .) -}}
{{- int64 . | toString -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}

{{/*
Chart name, truncated to 63 characters (the limit of a label value).
*/}}
{{- define "agentiam.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's objects: <release>-<chart>, or just <release> when it already contains the chart
name. Truncated to 63 characters because some objects (Services) must be DNS labels.
*/}}
{{- define "agentiam.fullname" -}}
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

{{/*
Name of cluster-scoped objects (ClusterRole, ClusterRoleBinding). They carry the release namespace so that
releases with the same name in different namespaces (e.g. one per watchNamespace) do not collide.
*/}}
{{- define "agentiam.clusterName" -}}
{{- printf "%s-%s" (include "agentiam.fullname" .) .Release.Namespace }}
{{- end }}

{{/*
chart label value: <name>-<version>.
*/}}
{{- define "agentiam.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object.
*/}}
{{- define "agentiam.labels" -}}
helm.sh/chart: {{ include "agentiam.chart" . }}
{{ include "agentiam.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: agentiam
app.kubernetes.io/component: operator
{{- end }}

{{/*
Selector labels: stable across upgrades (a Deployment's selector is immutable), so no version in here.
*/}}
{{- define "agentiam.selectorLabels" -}}
app.kubernetes.io/name: {{ include "agentiam.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
ServiceAccount the operator runs as.
*/}}
{{- define "agentiam.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "agentiam.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Operator image reference: repository@digest when a digest is set, else repository:tag (tag defaults to the
chart's appVersion).
*/}}
{{- define "agentiam.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
Name of the audit log claim.
*/}}
{{- define "agentiam.auditClaimName" -}}
{{- with .Values.auditLog.persistence.existingClaim }}
{{- . }}
{{- else }}
{{- printf "%s-audit" (include "agentiam.fullname" .) }}
{{- end }}
{{- end }}

{{/*
Where the audit volume is mounted: the directory of the operator's default --audit-log path.
*/}}
{{- define "agentiam.auditDir" -}}
/var/lib/agentiam/audit
{{- end }}

{{/*
Names the operator itself creates in its namespace (src/controller/checkpoints.rs). RBAC restricts get/patch
to exactly these.
*/}}
{{- define "agentiam.signingKeySecret" -}}
agentiam-audit-signing-key
{{- end }}
{{- define "agentiam.checkpointConfigMap" -}}
agentiam-audit-checkpoint
{{- end }}

{{/*
Rules on the agentiam.dev API and on Events: granted cluster-wide by a ClusterRole, or, with watchNamespace,
by a Role in that namespace. Keep in step with src/controller/ (every rule names the code that needs it).
*/}}
{{- define "agentiam.controllerRules" -}}
# The Agent controller watches Agents (controller/agent.rs: Controller::new -> list + watch), reads single
# Agents (controller/intents.rs: get_opt while resolving open audit intents), and adds/removes its
# agentiam.dev/archive finalizer with a JSON patch (kube::runtime::finalizer -> patch). It never
# creates, replaces or deletes Agents.
- apiGroups: ["agentiam.dev"]
  resources: ["agents"]
  verbs: ["get", "list", "watch", "patch"]
# Status is written with server-side apply (controller/agent.rs apply_status: patch_status). The operator
# never reads the /status subresource on its own (status comes with the object) nor replaces it (update).
- apiGroups: ["agentiam.dev"]
  resources: ["agents/status"]
  verbs: ["patch"]
# AgentPolicies, Delegations and Revocations: read-only for the spec, server-side apply for the status. Not
# used by the code yet; granted ahead for the policy, delegation and revocation controllers in progress
# (and the Agent controller's planned relation watches), with the same verbs the Agent controller needs.
- apiGroups: ["agentiam.dev"]
  resources: ["agentpolicies", "delegations", "revocations"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["agentiam.dev"]
  resources: ["agentpolicies/status", "delegations/status", "revocations/status"]
  verbs: ["patch"]
# Events for humans (controller/agent.rs publish, via kube::runtime::events::Recorder): the Recorder of
# kube 5 only uses events.k8s.io/v1; it creates an Event and patches it when the same event repeats (series).
# Events are created in the namespace of the Agent they are about.
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

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
Fixed names the operator uses; the code hard-codes them, the chart only repeats them for RBAC resourceNames and
the admission policy. In its own namespace: the audit checkpoint key and checkpoint
(src/controller/checkpoints.rs), the JWT-SVID signing key set and the X.509 CA (src/controller/keys.rs), and
the serving certificates of the webhook and of the HTTP API (src/names.rs).
*/}}
{{- define "agentiam.signingKeySecret" -}}
agentiam-audit-signing-key
{{- end }}
{{- define "agentiam.checkpointConfigMap" -}}
agentiam-audit-checkpoint
{{- end }}
{{- define "agentiam.issuerKeysSecret" -}}
agentiam-signing-keys
{{- end }}
{{- define "agentiam.caSecret" -}}
agentiam-ca
{{- end }}
{{- define "agentiam.webhookTlsSecret" -}}
agentiam-webhook-tls
{{- end }}
{{/* The HTTP API's serving certificate and its published CA (src/server/tls.rs, names.rs). */}}
{{- define "agentiam.apiTlsSecret" -}}
agentiam-api-tls
{{- end }}
{{- define "agentiam.apiCaConfigMap" -}}
agentiam-api-ca
{{- end }}

{{/*
In every namespace with Agents: the trust bundle ConfigMap (src/webhook/pods.rs TRUST_BUNDLE_CONFIGMAP), and
the per-agent credentials Secrets <agent>-credentials labelled agentiam.dev/agent=<agent>
(credentials_secret_name, AGENT_LABEL).
*/}}
{{- define "agentiam.trustBundleConfigMap" -}}
agentiam-trust-bundle
{{- end }}
{{- define "agentiam.ssfStreamsConfigMap" -}}
agentiam-ssf-streams
{{- end }}
{{- define "agentiam.agentLabel" -}}
agentiam.dev/agent
{{- end }}

{{/* The namespace label that sets workload admission's mode (src/discovery/admission.rs MODE_LABEL). */}}
{{- define "agentiam.workloadAdmissionLabel" -}}
agentiam.dev/workload-admission
{{- end }}

{{/* The verb, on the virtual resource namespaces.agentiam.dev, that lets someone set or change that label. */}}
{{- define "agentiam.workloadAdmissionVerb" -}}
set-workload-admission
{{- end }}

{{/*
The MutatingWebhookConfiguration the operator applies: agentiam-<operator namespace>, fixed by the code
(src/webhook/config.rs default_configuration_name), whatever the release is called.
*/}}
{{- define "agentiam.webhookConfigurationName" -}}
{{- printf "agentiam-%s" .Release.Namespace }}
{{- end }}

{{/*
The Service in front of the webhook server; passed to the operator as --webhook-service, so the webhook
configuration and the serving certificate's DNS names always name this Service.
*/}}
{{- define "agentiam.webhookServiceName" -}}
{{- printf "%s-webhook" (include "agentiam.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The issuer URL (the `iss` of every token): issuer.url, else the release's Service https://<fullname>.<ns>.svc.
*/}}
{{- define "agentiam.issuerUrl" -}}
{{- default (printf "https://%s.%s.svc" (include "agentiam.fullname" .) .Release.Namespace) .Values.issuer.url }}
{{- end }}

{{/*
Rules on the agentiam.dev API, Events and the objects the operator writes next to each Agent: granted
cluster-wide by a ClusterRole, or, with watchNamespace, by a Role in that namespace. Keep in step with
src/controller/ (every rule names the code that needs it).
*/}}
{{- define "agentiam.controllerRules" -}}
# The Agent controller watches Agents (controller/agent.rs: Controller::new -> list + watch), reads single
# Agents (controller/intents.rs: get_opt while resolving open audit intents), and adds/removes its
# agentiam.dev/archive finalizer with a JSON patch (kube::runtime::finalizer -> patch). It never
# creates, replaces or deletes Agents (discovery does, below, for shadow agents only). The webhook reads Agents from this controller's cache, never the API.
- apiGroups: ["agentiam.dev"]
  resources: ["agents"]
  verbs: ["get", "list", "watch", "patch"]
# Status is replaced whole with a JSON patch (controller/agent.rs apply_status: patch_status, `add /status`),
# so a field someone else wrote never survives a write. The operator never reads the /status subresource on
# its own (status comes with the object) nor uses update on it.
- apiGroups: ["agentiam.dev"]
  resources: ["agents/status"]
  verbs: ["patch"]
# The credentials Secret names its Agent as owner with blockOwnerDeletion: true (controller/credentials.rs
# issue). Where the OwnerReferencesPermissionEnforcement admission plugin is on (OpenShift, hardened
# clusters; not the upstream default), setting that needs update on the owner's finalizers subresource. It
# grants nothing else: custom resources serve no /finalizers endpoint (the operator's own finalizer goes
# through the patch above); the name exists only for this check.
- apiGroups: ["agentiam.dev"]
  resources: ["agents/finalizers"]
  verbs: ["update"]
# AgentPolicies, Delegations and Revocations are each watched once (controller/shared.rs: list + watch) for
# the authorization index, the webhooks and the controllers; the Delegation controller also reads each
# Delegation up a chain fresh (get) before it decides. AgentPolicy, Delegation and Revocation status is
# written with server-side apply (controller/policy.rs, controller/delegation.rs, controller/revocation.rs:
# patch_status).
- apiGroups: ["agentiam.dev"]
  resources: ["agentpolicies", "delegations", "revocations"]
  verbs: ["get", "list", "watch"]
# The Revocation controller adds and removes its agentiam.dev/revocation finalizer (kube::runtime::finalizer
# -> patch), so a deletion waits until the lift is recorded. The behavioural monitor creates a Suspend
# Revocation for an agent whose behaviour leaves its baseline (monitor/mod.rs suspend; through the webhook,
# which records it). It never deletes one: lifting is a human's decision.
- apiGroups: ["agentiam.dev"]
  resources: ["revocations"]
  verbs: ["patch", "create"]
- apiGroups: ["agentiam.dev"]
  resources: ["agentpolicies/status", "delegations/status", "revocations/status"]
  verbs: ["patch"]
# Token exchange (server/exchange.rs hand_off) records each handoff as a child Delegation (create, through
# the webhook, which admits it from the operator only), and deletes it when the handoff fails.
- apiGroups: ["agentiam.dev"]
  resources: ["delegations"]
  verbs: ["create", "delete"]
# ApprovalRequests: the decision API creates one when a rule needs a human's approval
# (server/approvals.rs: create, and delete when its audit record cannot be written); the approval
# controller watches them (controller/shared.rs), reads each fresh (get), writes status with server-side
# apply, and deletes finished ones after a day (controller/approval.rs).
- apiGroups: ["agentiam.dev"]
  resources: ["approvalrequests"]
  verbs: ["get", "list", "watch", "create", "delete"]
- apiGroups: ["agentiam.dev"]
  resources: ["approvalrequests/status"]
  verbs: ["patch"]
# Events for humans (controller/agent.rs publish, via kube::runtime::events::Recorder): the Recorder of
# kube 5 only uses events.k8s.io/v1; it creates an Event and patches it when the same event repeats (series).
# Events are created in the namespace of the Agent they are about.
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
# Each Active Agent's credentials Secret <agent>-credentials (controller/credentials.rs):
#   get     reconcile and delete_secret read it (get_opt) to check it against what the operator recorded;
#   list    the Agent controller watches the Secrets labelled app.kubernetes.io/managed-by=agentiam-operator
#   watch     (controller/agent.rs controller), so a change to one reconciles its Agent at once;
#   create  issue creates it when absent (write_secret: create)...
#   update    ...and replaces it whole when present (write_secret: replace), so no key a tenant added survives;
#   delete  withdraw (Agent no longer Active), delete_secret (archive) and write_secret (a Secret of another
#             type is in the way) delete it, with a UID precondition.
# The names depend on the Agents, so none of this can carry resourceNames: the operator may read EVERY Secret
# where this rule applies (all namespaces, or watchNamespace). That is a real widening, and RBAC cannot do
# better: reads never reach admission. Writes are narrowed by the admission policy (rbac.restrictCreates) to
# Opaque Secrets named <agent>-credentials that carry agentiam.dev/agent=<agent>.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "update", "delete"]
# A Revocation with stopWorkloads: true evicts the pods of the agents it stops (controller/revocation.rs
# evict): it lists them by the agentiam.dev/agent label (metadata only) and creates an Eviction for each,
# which honours PodDisruptionBudgets. It never deletes pods directly.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
- apiGroups: [""]
  resources: ["pods/eviction"]
  verbs: ["create"]
{{- if .Values.discovery.enabled }}
# Shadow-agent discovery (controller/discovery.rs) watches every kind that carries a pod template and
# classifies each as it arrives (no store of them is kept). It reads the ConfigMaps a template names for
# their key names only (Secrets it already reads, above). It creates a shadow Agent for each workload that
# looks like an agent and that no Agent covers (through the validating webhook, which admits an Agent
# without an owner from the operator only), and deletes it when the workload goes; never an Agent with an
# owner. When a pod serves an A2A agent card (discovery.agentCards), it reads the pod and its controlling
# owners up to the workload with one list by name each (controller/discovery/cards.rs): no get.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["watch"]
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets", "daemonsets", "replicasets"]
  verbs: ["list", "watch"]
- apiGroups: ["batch"]
  resources: ["jobs", "cronjobs"]
  verbs: ["list", "watch"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get"]
- apiGroups: ["agentiam.dev"]
  resources: ["agents"]
  verbs: ["create", "delete"]
{{- end }}
# The trust bundle ConfigMap of each namespace with Agents (controller/credentials.rs ensure_trust_bundle):
# server-side apply only, never read back or deleted. A server-side apply that creates the object is
# authorized as create *with* the object's name, so unlike a POST it can be limited by resourceNames.
- apiGroups: [""]
  resources: ["configmaps"]
  resourceNames: [{{ include "agentiam.trustBundleConfigMap" . | quote }}]
  verbs: ["create", "patch"]
{{- end }}

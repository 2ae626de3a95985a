//! The names several components share: labels, annotations, the Secrets and ConfigMaps the operator owns,
//! its finalizer, field manager and condition types. One home, so the writer and every reader agree on each
//! spelling and no module has to import another only for a string; the modules that use a name re-export
//! it under their old path. A test checks them against the chart, whose RBAC and admission policy name the
//! same objects.

/// The API group of the agentiam kinds.
pub const API_GROUP: &str = "agentiam.dev";
/// The RBAC verb on `agents` that lets a person grant Delegations to an Agent (resourceNames allowed).
pub const DELEGATE_VERB: &str = "delegate";
/// The RBAC verb on `approvalrequests` that lets a person answer one (resourceNames allowed).
pub const APPROVE_VERB: &str = "approve";

/// The field manager under which the operator applies everything it owns (server-side apply); also the
/// value of [`MANAGED_BY_LABEL`] on what it creates.
pub const FIELD_MANAGER: &str = "agentiam-operator";
/// The finalizer that makes an Agent's deletion wait until it is archived.
pub const AGENT_FINALIZER: &str = "agentiam.dev/archive";

/// Label: the agent a pod claims to be, and the agent a credentials Secret belongs to.
pub const AGENT_LABEL: &str = "agentiam.dev/agent";
/// Label: who manages an object (`agentiam-operator` on what the operator creates).
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Annotation on the signing key Secret that asks for an emergency rotation.
pub const EMERGENCY_ROTATION_ANNOTATION: &str = "agentiam.dev/emergency-rotation";

/// The suffix of an agent's credentials Secret: `<agent>-credentials`.
pub const CREDENTIALS_SECRET_SUFFIX: &str = "-credentials";
/// The suffix of an agent's delegated-tokens Secret: `<agent>-delegations`.
pub const DELEGATIONS_SECRET_SUFFIX: &str = "-delegations";
/// The prefix of each delegated token's key in that Secret: `delegation-<Delegation name>`.
pub const DELEGATION_TOKEN_KEY_PREFIX: &str = "delegation-";
/// The Secret of the audit checkpoint signing key (operator namespace).
pub const AUDIT_SIGNING_KEY_SECRET: &str = "agentiam-audit-signing-key";
/// The ConfigMap the signed audit checkpoint is published to (operator namespace).
pub const AUDIT_CHECKPOINT_CONFIGMAP: &str = "agentiam-audit-checkpoint";
/// The Secret of the JWT-SVID signing key set (operator namespace).
pub const SIGNING_KEYS_SECRET: &str = "agentiam-signing-keys";
/// The Secret of the X.509 CA (operator namespace).
pub const CA_SECRET: &str = "agentiam-ca";
/// The Secret of the webhooks' serving certificate (operator namespace).
pub const WEBHOOK_TLS_SECRET: &str = "agentiam-webhook-tls";
/// The Secret of the HTTP API's serving certificate, when the operator manages it (operator namespace).
pub const API_TLS_SECRET: &str = "agentiam-api-tls";
/// The ConfigMap publishing the CA bundle that clients of the HTTP API trust (operator namespace), and the
/// same bundle's key in every namespace's trust bundle ConfigMap.
pub const API_CA_CONFIGMAP: &str = "agentiam-api-ca";
/// The trust bundle ConfigMap in every namespace with Agents.
pub const TRUST_BUNDLE_CONFIGMAP: &str = "agentiam-trust-bundle";
/// The ConfigMap the Shared Signals streams are kept in (operator namespace).
pub const SSF_STREAMS_CONFIGMAP: &str = "agentiam-ssf-streams";
/// The ConfigMap in the operator's namespace holding discovery's signatures (docs/discovery.md).
pub const DISCOVERY_CONFIGMAP: &str = "agentiam-discovery";
/// Its key: the signatures as YAML.
pub const DISCOVERY_SIGNATURES_KEY: &str = "signatures.yaml";
/// The ConfigMap in the operator's namespace holding the agent gateway's routes (docs/gateway.md).
pub const GATEWAY_CONFIGMAP: &str = "agentiam-gateway";
/// Its key: the routes as YAML.
pub const GATEWAY_ROUTES_KEY: &str = "routes.yaml";

/// Annotation on a Delegation the token service created for an RFC 8693 exchange: the exchange's audit
/// key. Only the operator may create a Delegation that carries it (the webhook refuses anyone else).
pub const EXCHANGE_ANNOTATION: &str = "agentiam.dev/token-exchange";

/// Condition type: the object is usable (Agents: Active with credentials; AgentPolicies: compiled).
pub const CONDITION_READY: &str = "Ready";
/// Condition type: an Agent's spec passed validation.
pub const CONDITION_VALID: &str = "Valid";

/// The name of an agent's credentials Secret.
pub fn credentials_secret(agent: &str) -> String {
    format!("{agent}{CREDENTIALS_SECRET_SUFFIX}")
}

/// The name of an agent's delegated-tokens Secret.
pub fn delegations_secret(agent: &str) -> String {
    format!("{agent}{DELEGATIONS_SECRET_SUFFIX}")
}

/// The key of a Delegation's token in its grantee's delegated-tokens Secret (and the file name in pods).
pub fn delegation_token_key(delegation: &str) -> String {
    format!("{DELEGATION_TOKEN_KEY_PREFIX}{delegation}")
}

/// The name of both webhook configurations of an operator in `operator_namespace`.
pub fn webhook_configuration(operator_namespace: &str) -> String {
    format!("agentiam-{operator_namespace}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELPERS: &str = include_str!("../charts/agentiam/templates/_helpers.tpl");
    const POLICY: &str = include_str!("../charts/agentiam/templates/admission-policy.yaml");
    const GATEWAY: &str = include_str!("../charts/agentiam/templates/gateway-configmap.yaml");
    const RBAC: &str = include_str!("../charts/agentiam/templates/rbac-operator-namespace.yaml");

    /// The body of `{{- define "<name>" -}} ... {{- end }}` in the chart's helpers.
    fn helper(name: &str) -> &'static str {
        let start = format!("{{{{- define \"{name}\" -}}}}");
        let body =
            HELPERS.split_once(start.as_str()).map(|(_, rest)| rest).unwrap_or_else(|| panic!("{name}"));
        body.split_once("{{- end }}").map(|(b, _)| b.trim()).unwrap_or_else(|| panic!("{name}"))
    }

    #[test]
    fn the_chart_names_the_same_objects_as_the_code() {
        for (helper_name, ours) in [
            ("agentiam.signingKeySecret", AUDIT_SIGNING_KEY_SECRET),
            ("agentiam.checkpointConfigMap", AUDIT_CHECKPOINT_CONFIGMAP),
            ("agentiam.issuerKeysSecret", SIGNING_KEYS_SECRET),
            ("agentiam.caSecret", CA_SECRET),
            ("agentiam.webhookTlsSecret", WEBHOOK_TLS_SECRET),
            ("agentiam.apiTlsSecret", API_TLS_SECRET),
            ("agentiam.apiCaConfigMap", API_CA_CONFIGMAP),
            ("agentiam.trustBundleConfigMap", TRUST_BUNDLE_CONFIGMAP),
            ("agentiam.ssfStreamsConfigMap", SSF_STREAMS_CONFIGMAP),
            ("agentiam.agentLabel", AGENT_LABEL),
        ] {
            assert_eq!(helper(helper_name), ours, "{helper_name}");
        }
        assert_eq!(
            helper("agentiam.webhookConfigurationName"),
            r#"{{- printf "agentiam-%s" .Release.Namespace }}"#
        );
        assert_eq!(webhook_configuration("ns"), "agentiam-ns");
        // The admission policy's rule for credentials Secrets is <label value> + "-credentials".
        assert!(POLICY.contains(&format!("+ \"{CREDENTIALS_SECRET_SUFFIX}\"")), "{POLICY}");
        assert_eq!(credentials_secret("bot"), "bot-credentials");
        assert!(POLICY.contains(&format!("+ \"{DELEGATIONS_SECRET_SUFFIX}\"")), "{POLICY}");
        assert_eq!(delegations_secret("bot"), "bot-delegations");
        // The gateway's routes: the ConfigMap the chart renders, its key, and the operator's read access.
        assert!(GATEWAY.contains(&format!("name: {GATEWAY_CONFIGMAP}\n")), "{GATEWAY}");
        assert!(GATEWAY.contains(&format!("  {GATEWAY_ROUTES_KEY}: |")), "{GATEWAY}");
        assert!(RBAC.contains(&format!("resourceNames: [\"{GATEWAY_CONFIGMAP}\"]")), "{RBAC}");
        assert!(RBAC.contains(&format!("resourceNames: [\"{DISCOVERY_CONFIGMAP}\"]")), "{RBAC}");
    }
}

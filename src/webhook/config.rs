//! The MutatingWebhookConfiguration the operator owns: built purely by [`desired`], applied with server-side
//! apply by [`apply`] whenever the serving CA bundle may have changed.
//!
//! Scope is deliberately narrow so that a webhook that is down can only ever affect pods that claim an agent:
//! the `objectSelector` sends only pods carrying [`AGENT_LABEL`], and the `namespaceSelector` keeps
//! kube-system and the operator's own namespace out (or, for an operator watching one namespace, keeps
//! everything else out). Within that scope `failurePolicy: Fail` holds: a pod that claims an identity is never
//! admitted unchecked.
//!
//! The operator should **not** delete the configuration on shutdown. While it is down, labelled pods are
//! refused ("failed calling webhook"), which is the intended fail-closed behaviour: an agent's pod must not
//! start without its credentials or with an identity nobody checked. Unrelated pods are unaffected.
//! [`delete`] exists for uninstalling and for tests.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1 as admission;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams};
use kube::{Api, Client};

use super::WebhookError;
use super::pods::AGENT_LABEL;
use super::server::MUTATE_PODS_PATH;
use super::validate::Kind;
use crate::discovery::admission::{MODE_LABEL, Mode};
use crate::names::FIELD_MANAGER;
use crate::server::listener::{DEFAULT_WEBHOOK_MAX_CONNECTIONS, Limits};
use crate::tls::certs::{RenewalPolicy, San};

/// The name of the one webhook in the configuration.
pub const WEBHOOK_NAME: &str = "pods.agentiam.dev";
/// How long the API server waits for an answer. Short: pod creation blocks on it, and the decision is an
/// in-memory lookup.
pub const TIMEOUT_SECONDS: i32 = 5;
/// The default port the webhook server listens on.
pub const DEFAULT_PORT: u16 = 9443;
/// How often the serving certificate is checked for renewal and the configuration re-applied.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// The namespace label every namespace carries (set by the API server, so it cannot be forged).
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// How the API server reaches the webhook server; each webhook adds its own path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookClientConfig {
    /// A base URL without a path, for an operator running outside the cluster (`https://127.0.0.1:9443`).
    Url(String),
    /// A Service in the operator namespace, for an operator running in the cluster.
    Service {
        /// The Service name.
        name: String,
        /// The Service port (the Service maps it to the listen port).
        port: u16,
    },
}

/// Everything the webhook needs to know; see [`WebhookSettings::new`] for the defaults.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// The operator's namespace: the TLS Secret and the Service live here, and no pod here is sent to us.
    pub operator_namespace: String,
    /// The only namespace with Agents, if the operator watches just one.
    pub watch_namespace: Option<String>,
    /// Name of the MutatingWebhookConfiguration (cluster-scoped).
    pub configuration_name: String,
    /// How the API server reaches the server.
    pub client_config: WebhookClientConfig,
    /// Where the server listens.
    pub listen: SocketAddr,
    /// Subject alternative names of the serving certificate.
    pub sans: Vec<San>,
    /// Name of the TLS Secret in the operator namespace.
    pub tls_secret: String,
    /// Certificate lifetimes.
    pub renewal: RenewalPolicy,
    /// How often renewal is checked and the configuration re-applied.
    pub check_interval: Duration,
    /// Timeouts and the connection bound of the TLS server.
    pub limits: Limits,
    /// Testing only: wait this long before starting (zero in production). Lets a test hold the operator in
    /// the window where it runs but the webhook does not serve yet.
    pub start_delay: Duration,
    /// Serve workload admission (the `workloads-<mode>.agentiam.dev` webhooks): on when discovery is, whose
    /// signatures it judges with.
    pub workload_admission: bool,
}

impl WebhookSettings {
    /// Settings with defaults: configuration `agentiam-<operator namespace>` (operators in different
    /// namespaces never collide), Secret [`crate::names::WEBHOOK_TLS_SECRET`], SANs that match `client_config` (the Service's DNS
    /// names, or the URL's host), default lifetimes and a five-minute check.
    pub fn new(
        operator_namespace: impl Into<String>,
        watch_namespace: Option<String>,
        client_config: WebhookClientConfig,
        listen: SocketAddr,
    ) -> Self {
        let operator_namespace = operator_namespace.into();
        let sans = default_sans(&client_config, &operator_namespace);
        Self {
            configuration_name: default_configuration_name(&operator_namespace),
            operator_namespace,
            watch_namespace,
            client_config,
            listen,
            sans,
            tls_secret: crate::names::WEBHOOK_TLS_SECRET.to_owned(),
            renewal: RenewalPolicy::default(),
            check_interval: DEFAULT_CHECK_INTERVAL,
            limits: Limits::with_max_connections(DEFAULT_WEBHOOK_MAX_CONNECTIONS),
            start_delay: Duration::ZERO,
            workload_admission: false,
        }
    }

    /// Where the serving certificate lives and what it names.
    pub fn serving_secret(&self) -> crate::tls::secret::ServingSecret {
        crate::tls::secret::ServingSecret {
            listener: "webhook",
            namespace: self.operator_namespace.clone(),
            name: self.tls_secret.clone(),
            sans: self.sans.clone(),
            renewal: self.renewal,
        }
    }

    /// Settings for an operator outside the cluster: listen on 127.0.0.1:`port`, reached by URL.
    pub fn local(operator_namespace: impl Into<String>, watch_namespace: Option<String>, port: u16) -> Self {
        let listen = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
        let url = format!("https://127.0.0.1:{port}");
        Self::new(operator_namespace, watch_namespace, WebhookClientConfig::Url(url), listen)
    }
}

/// `agentiam-<operator namespace>`.
pub fn default_configuration_name(operator_namespace: &str) -> String {
    crate::names::webhook_configuration(operator_namespace)
}

/// The SANs the API server will check for `client_config`.
pub fn default_sans(client_config: &WebhookClientConfig, operator_namespace: &str) -> Vec<San> {
    match client_config {
        WebhookClientConfig::Service { name, .. } => San::for_service(name, operator_namespace),
        WebhookClientConfig::Url(url) => {
            let host = url
                .parse::<axum::http::Uri>()
                .ok()
                .and_then(|u| u.host().map(str::to_owned))
                .unwrap_or_else(|| "127.0.0.1".to_owned());
            vec![San::parse(&host)]
        }
    }
}

fn requirement(key: &str, operator: &str, values: Option<Vec<String>>) -> LabelSelectorRequirement {
    LabelSelectorRequirement { key: key.to_owned(), operator: operator.to_owned(), values }
}

/// The client configuration of the webhook served at `path`: the base URL or Service plus that path.
fn client_config(
    config: &WebhookSettings,
    ca_bundle_pem: &str,
    path: &str,
) -> admission::WebhookClientConfig {
    let (url, service) = match &config.client_config {
        WebhookClientConfig::Url(base) => (Some(format!("{base}{path}")), None),
        WebhookClientConfig::Service { name, port } => (
            None,
            Some(admission::ServiceReference {
                name: name.clone(),
                namespace: config.operator_namespace.clone(),
                path: Some(path.to_owned()),
                port: Some(i32::from(*port)),
            }),
        ),
    };
    admission::WebhookClientConfig {
        ca_bundle: Some(ByteString(ca_bundle_pem.as_bytes().to_vec())),
        service,
        url,
    }
}

/// The namespaces a webhook sees: the watched one, or every one but `excluded`.
fn namespace_selector(config: &WebhookSettings, excluded: Vec<String>) -> LabelSelector {
    let namespaces = match &config.watch_namespace {
        Some(ns) => requirement(NAMESPACE_NAME_LABEL, "In", Some(vec![ns.clone()])),
        None => requirement(NAMESPACE_NAME_LABEL, "NotIn", Some(excluded)),
    };
    LabelSelector { match_expressions: Some(vec![namespaces]), match_labels: None }
}

fn metadata(config: &WebhookSettings) -> ObjectMeta {
    ObjectMeta {
        name: Some(config.configuration_name.clone()),
        labels: Some(
            [
                ("app.kubernetes.io/managed-by".to_owned(), FIELD_MANAGER.to_owned()),
                ("app.kubernetes.io/part-of".to_owned(), "agentiam".to_owned()),
            ]
            .into(),
        ),
        ..Default::default()
    }
}

/// The ValidatingWebhookConfiguration: one webhook per agentiam kind, for every create, update and
/// delete, then (with [`WebhookSettings::workload_admission`]) the three workload admission webhooks.
///
/// The agentiam kinds' webhooks have `failurePolicy: Fail`, because an unrecorded change to who may do what
/// must not happen, and `sideEffects: NoneOnDryRun`, because the side effect (the audit record) is skipped
/// for dry runs. The operator's namespace is left out (cluster-wide mode), so that with the operator down
/// its own namespace stays writable: that is where it is repaired from, and where cluster-wide emergency
/// Revocations live.
pub fn desired_validating(
    config: &WebhookSettings,
    ca_bundle_pem: &str,
) -> admission::ValidatingWebhookConfiguration {
    let webhooks = Kind::ALL
        .into_iter()
        .map(|kind| admission::ValidatingWebhook {
            name: format!("{}.agentiam.dev", kind.plural()),
            admission_review_versions: vec!["v1".to_owned()],
            client_config: client_config(config, ca_bundle_pem, kind.path()),
            rules: Some(vec![admission::RuleWithOperations {
                api_groups: Some(vec!["agentiam.dev".to_owned()]),
                api_versions: Some(vec!["*".to_owned()]),
                operations: Some(vec!["CREATE".to_owned(), "UPDATE".to_owned(), "DELETE".to_owned()]),
                resources: Some(vec![kind.plural().to_owned()]),
                scope: Some("Namespaced".to_owned()),
            }]),
            failure_policy: Some("Fail".to_owned()),
            match_policy: Some("Equivalent".to_owned()),
            side_effects: "NoneOnDryRun".to_owned(),
            timeout_seconds: Some(TIMEOUT_SECONDS),
            object_selector: None,
            namespace_selector: Some(namespace_selector(config, vec![config.operator_namespace.clone()])),
            match_conditions: None,
        })
        .chain(
            config.workload_admission.then(|| workload_webhooks(config, ca_bundle_pem)).into_iter().flatten(),
        )
        .collect();
    admission::ValidatingWebhookConfiguration { metadata: metadata(config), webhooks: Some(webhooks) }
}

/// How long the API server waits for a workload admission answer: short, because every Pod and workload
/// write of a namespace that asks for enforcement waits on it. The answer needs an in-memory lookup and
/// at most a few reads of the Secrets and ConfigMaps the template names.
pub const WORKLOAD_TIMEOUT_SECONDS: i32 = 3;

/// The namespaces excluded from workload admission whatever their label says: the cluster's own and the
/// operator's (which must stay writable to repair the operator).
fn workload_excluded(config: &WebhookSettings) -> Vec<String> {
    let mut excluded: Vec<String> =
        crate::controller::discovery::ALWAYS_EXCLUDED.iter().map(|s| (*s).to_owned()).collect();
    excluded.push(config.operator_namespace.clone());
    excluded
}

/// The three workload admission webhooks, one per judged mode: each sees only namespaces whose
/// [`MODE_LABEL`] selects it, so the API server routes by the label and a namespace without it never
/// waits on the operator. Enforce takes every value that is not `off`, `audit` or `warn` (an unknown
/// value is enforced, like [`Mode::of`] reads it).
///
/// `failurePolicy` is `Fail` for enforce (a workload must not bypass enforcement because the operator is
/// down) and `Ignore` for audit and warn, which promise never to refuse: with `Fail` an operator outage
/// would refuse every Pod of an audited namespace. Discovery still records what was admitted meanwhile.
fn workload_webhooks(config: &WebhookSettings, ca_bundle_pem: &str) -> Vec<admission::ValidatingWebhook> {
    let rules = vec![
        workload_rule("", &["pods"]),
        workload_rule("apps", &["deployments", "replicasets", "statefulsets", "daemonsets"]),
        workload_rule("batch", &["jobs", "cronjobs"]),
    ];
    Mode::JUDGED
        .into_iter()
        .map(|mode| {
            let mut selector = namespace_selector(config, workload_excluded(config));
            let by_label = match mode {
                Mode::Enforce => vec![
                    requirement(MODE_LABEL, "Exists", None),
                    requirement(
                        MODE_LABEL,
                        "NotIn",
                        Some([Mode::Off, Mode::Audit, Mode::Warn].map(|m| m.as_str().to_owned()).to_vec()),
                    ),
                ],
                _ => vec![requirement(MODE_LABEL, "In", Some(vec![mode.as_str().to_owned()]))],
            };
            selector.match_expressions.get_or_insert_with(Vec::new).extend(by_label);
            admission::ValidatingWebhook {
                name: format!("workloads-{}.agentiam.dev", mode.as_str()),
                admission_review_versions: vec!["v1".to_owned()],
                client_config: client_config(config, ca_bundle_pem, &super::workloads::path(mode)),
                rules: Some(rules.clone()),
                failure_policy: Some(if mode == Mode::Enforce { "Fail" } else { "Ignore" }.to_owned()),
                match_policy: Some("Equivalent".to_owned()),
                side_effects: "NoneOnDryRun".to_owned(),
                timeout_seconds: Some(WORKLOAD_TIMEOUT_SECONDS),
                object_selector: None,
                namespace_selector: Some(selector),
                match_conditions: None,
            }
        })
        .collect()
}

fn workload_rule(group: &str, resources: &[&str]) -> admission::RuleWithOperations {
    admission::RuleWithOperations {
        api_groups: Some(vec![group.to_owned()]),
        api_versions: Some(vec!["v1".to_owned()]),
        operations: Some(vec!["CREATE".to_owned(), "UPDATE".to_owned()]),
        resources: Some(resources.iter().map(|r| (*r).to_owned()).collect()),
        scope: Some("Namespaced".to_owned()),
    }
}

/// The configuration as the operator wants it, with `ca_bundle_pem` as the trusted serving CAs.
pub fn desired(config: &WebhookSettings, ca_bundle_pem: &str) -> admission::MutatingWebhookConfiguration {
    let webhook = admission::MutatingWebhook {
        name: WEBHOOK_NAME.to_owned(),
        admission_review_versions: vec!["v1".to_owned()],
        client_config: client_config(config, ca_bundle_pem, MUTATE_PODS_PATH),
        rules: Some(vec![admission::RuleWithOperations {
            api_groups: Some(vec![String::new()]),
            api_versions: Some(vec!["v1".to_owned()]),
            operations: Some(vec!["CREATE".to_owned()]),
            resources: Some(vec!["pods".to_owned()]),
            scope: Some("Namespaced".to_owned()),
        }]),
        failure_policy: Some("Fail".to_owned()),
        match_policy: Some("Equivalent".to_owned()),
        side_effects: "None".to_owned(),
        timeout_seconds: Some(TIMEOUT_SECONDS),
        // Our patch only adds to what other webhooks produced before us; re-running it would be refused as a
        // duplicate mount.
        reinvocation_policy: Some("Never".to_owned()),
        object_selector: Some(LabelSelector {
            match_expressions: Some(vec![requirement(AGENT_LABEL, "Exists", None)]),
            match_labels: None,
        }),
        namespace_selector: Some(namespace_selector(
            config,
            vec!["kube-system".to_owned(), config.operator_namespace.clone()],
        )),
        match_conditions: None,
    };
    admission::MutatingWebhookConfiguration { metadata: metadata(config), webhooks: Some(vec![webhook]) }
}

/// Applies [`desired`] with server-side apply under the operator's field manager. Forced: the operator owns
/// this object, and an injector (cert-manager's cainjector) or a person editing `caBundle` would otherwise
/// leave the API server trusting the wrong CA.
pub async fn apply(
    client: &Client,
    config: &WebhookSettings,
    ca_bundle_pem: &str,
) -> Result<(), WebhookError> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let api: Api<admission::MutatingWebhookConfiguration> = Api::all(client.clone());
    let object = desired(config, ca_bundle_pem);
    api.patch(&config.configuration_name, &params, &Patch::Apply(&object))
        .await
        .map_err(WebhookError::ApplyConfiguration)?;
    let api: Api<admission::ValidatingWebhookConfiguration> = Api::all(client.clone());
    let object = desired_validating(config, ca_bundle_pem);
    api.patch(&config.configuration_name, &params, &Patch::Apply(&object))
        .await
        .map_err(WebhookError::ApplyConfiguration)?;
    Ok(())
}

/// Deletes the configuration; already gone is fine. For uninstalling and tests, not for shutdown (see the
/// module documentation).
pub async fn delete(client: &Client, configuration_name: &str) -> Result<(), WebhookError> {
    let gone = |r: Result<_, kube::Error>| match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(WebhookError::DeleteConfiguration(e)),
    };
    let api: Api<admission::ValidatingWebhookConfiguration> = Api::all(client.clone());
    gone(api.delete(configuration_name, &DeleteParams::default()).await.map(|_| ()))?;
    let api: Api<admission::MutatingWebhookConfiguration> = Api::all(client.clone());
    gone(api.delete(configuration_name, &DeleteParams::default()).await.map(|_| ()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn service() -> WebhookSettings {
        WebhookSettings::new(
            "agentiam-system",
            None,
            WebhookClientConfig::Service { name: "agentiam-webhook".into(), port: 443 },
            SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)),
        )
    }

    #[test]
    fn the_in_cluster_configuration_is_fail_closed_and_narrow() {
        let v = serde_json::to_value(desired(&service(), "PEM")).unwrap();
        assert_eq!(v["apiVersion"], "admissionregistration.k8s.io/v1");
        assert_eq!(v["kind"], "MutatingWebhookConfiguration");
        assert_eq!(v["metadata"]["name"], "agentiam-agentiam-system");
        let w = &v["webhooks"][0];
        assert_eq!(w["name"], WEBHOOK_NAME);
        assert_eq!(
            w["clientConfig"],
            json!({
                "caBundle": "UEVN",
                "service": {"name": "agentiam-webhook", "namespace": "agentiam-system", "path": "/mutate-pods", "port": 443}
            })
        );
        assert_eq!(
            w["rules"],
            json!([{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"], "scope": "Namespaced"}])
        );
        assert_eq!(w["failurePolicy"], "Fail");
        assert_eq!(w["sideEffects"], "None");
        assert_eq!(w["timeoutSeconds"], 5);
        assert_eq!(w["admissionReviewVersions"], json!(["v1"]));
        assert_eq!(w["matchPolicy"], "Equivalent");
        assert_eq!(w["reinvocationPolicy"], "Never");
        assert_eq!(
            w["objectSelector"],
            json!({"matchExpressions": [{"key": AGENT_LABEL, "operator": "Exists"}]})
        );
        assert_eq!(
            w["namespaceSelector"],
            json!({"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", "agentiam-system"]}]})
        );
        assert_eq!(
            service().sans,
            San::for_service("agentiam-webhook", "agentiam-system"),
            "the certificate names the Service the configuration points at"
        );
    }

    #[test]
    fn the_validating_configuration_sees_every_change_of_every_kind_but_its_own_namespace() {
        let v = serde_json::to_value(desired_validating(&service(), "PEM")).unwrap();
        assert_eq!(v["kind"], "ValidatingWebhookConfiguration");
        assert_eq!(v["metadata"]["name"], "agentiam-agentiam-system");
        let hooks = v["webhooks"].as_array().unwrap();
        assert_eq!(hooks.len(), 5);
        for (w, kind) in hooks.iter().zip(Kind::ALL) {
            assert_eq!(w["name"], format!("{}.agentiam.dev", kind.plural()));
            assert_eq!(w["clientConfig"]["service"]["path"], kind.path());
            assert_eq!(w["clientConfig"]["service"]["name"], "agentiam-webhook");
            assert_eq!(
                w["rules"],
                json!([{"apiGroups": ["agentiam.dev"], "apiVersions": ["*"], "operations": ["CREATE", "UPDATE", "DELETE"],
                        "resources": [kind.plural()], "scope": "Namespaced"}])
            );
            assert_eq!(w["failurePolicy"], "Fail");
            assert_eq!(w["sideEffects"], "NoneOnDryRun");
            assert_eq!(w["timeoutSeconds"], 5);
            assert_eq!(
                w["namespaceSelector"],
                json!({"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["agentiam-system"]}]})
            );
        }
    }

    #[test]
    fn workload_admission_adds_one_webhook_per_mode_selected_by_the_namespace_label() {
        let mut settings = service();
        settings.workload_admission = true;
        let v = serde_json::to_value(desired_validating(&settings, "PEM")).unwrap();
        let hooks = v["webhooks"].as_array().unwrap();
        assert_eq!(hooks.len(), 8);
        let names: Vec<&str> = hooks[5..].iter().map(|w| w["name"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            ["workloads-audit.agentiam.dev", "workloads-warn.agentiam.dev", "workloads-enforce.agentiam.dev"]
        );
        let excluded = json!({"key": "kubernetes.io/metadata.name", "operator": "NotIn",
            "values": ["kube-system", "kube-public", "kube-node-lease", "agentiam-system"]});
        for (w, mode) in hooks[5..].iter().zip(["audit", "warn", "enforce"]) {
            assert_eq!(w["clientConfig"]["service"]["path"], format!("/validate/workloads/{mode}"));
            assert_eq!(
                w["rules"],
                json!([
                    {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"], "resources": ["pods"], "scope": "Namespaced"},
                    {"apiGroups": ["apps"], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
                     "resources": ["deployments", "replicasets", "statefulsets", "daemonsets"], "scope": "Namespaced"},
                    {"apiGroups": ["batch"], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"], "resources": ["jobs", "cronjobs"], "scope": "Namespaced"}
                ])
            );
            assert_eq!(w["sideEffects"], "NoneOnDryRun");
            assert_eq!(w["timeoutSeconds"], 3);
            assert_eq!(w["failurePolicy"], if mode == "enforce" { "Fail" } else { "Ignore" });
            let label = if mode == "enforce" {
                json!([{"key": MODE_LABEL, "operator": "Exists"},
                       {"key": MODE_LABEL, "operator": "NotIn", "values": ["off", "audit", "warn"]}])
            } else {
                json!([{"key": MODE_LABEL, "operator": "In", "values": [mode]}])
            };
            let mut expected = vec![excluded.clone()];
            expected.extend(label.as_array().unwrap().iter().cloned());
            assert_eq!(w["namespaceSelector"], json!({"matchExpressions": expected}), "{mode}");
        }
        let single = WebhookSettings {
            workload_admission: true,
            ..WebhookSettings::local("ops", Some("team-a".into()), 9444)
        };
        let v = serde_json::to_value(desired_validating(&single, "PEM")).unwrap();
        assert_eq!(
            v["webhooks"][7]["namespaceSelector"]["matchExpressions"][0],
            json!({"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a"]})
        );
        assert_eq!(
            v["webhooks"][7]["clientConfig"]["url"],
            "https://127.0.0.1:9444/validate/workloads/enforce"
        );
    }

    #[test]
    fn a_local_single_namespace_operator_uses_a_url_and_selects_its_namespace() {
        let s = WebhookSettings::local("ops", Some("team-a".into()), 9444);
        assert_eq!(s.configuration_name, "agentiam-ops");
        assert_eq!(s.sans, vec![San::Ip(Ipv4Addr::LOCALHOST.into())]);
        let v = serde_json::to_value(desired(&s, "PEM")).unwrap();
        let w = &v["webhooks"][0];
        assert_eq!(
            w["clientConfig"],
            json!({"caBundle": "UEVN", "url": "https://127.0.0.1:9444/mutate-pods"})
        );
        let v = serde_json::to_value(desired_validating(&s, "PEM")).unwrap();
        let urls: Vec<&str> = v["webhooks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["clientConfig"]["url"].as_str().unwrap())
            .collect();
        assert_eq!(
            urls,
            [
                "https://127.0.0.1:9444/validate/agents",
                "https://127.0.0.1:9444/validate/agentpolicies",
                "https://127.0.0.1:9444/validate/delegations",
                "https://127.0.0.1:9444/validate/revocations",
                "https://127.0.0.1:9444/validate/approvalrequests"
            ]
        );
        assert_eq!(
            w["namespaceSelector"],
            json!({"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a"]}]})
        );
    }

    #[test]
    fn url_hosts_become_sans() {
        let sans = |u: &str| default_sans(&WebhookClientConfig::Url(u.into()), "ns");
        assert_eq!(
            sans("https://webhook.example:8443/mutate-pods"),
            vec![San::Dns("webhook.example".into())]
        );
        assert_eq!(sans("https://[::1]:8443/mutate-pods"), vec![San::Ip("::1".parse().unwrap())]);
        assert_eq!(sans("not a url"), vec![San::Ip(Ipv4Addr::LOCALHOST.into())]);
    }
}

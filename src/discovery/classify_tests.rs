use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodSpec;
use serde_json::{Value, json};

use super::*;

fn spec(v: Value) -> PodSpec {
    serde_json::from_value(v).unwrap()
}

fn run(spec_json: Value, sources: &Sources) -> Detection {
    run_labelled(spec_json, &BTreeMap::new(), &BTreeMap::new(), sources)
}

fn run_labelled(
    spec_json: Value,
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
    sources: &Sources,
) -> Detection {
    let s = spec(spec_json);
    classify(&Signatures::default(), Template { labels, annotations, spec: &s }, sources)
}

fn names(d: &Detection) -> Vec<&str> {
    d.evidence.iter().map(|e| e.signature.as_str()).collect()
}

fn secret(keys: &[&str], issued: bool) -> SourceKeys {
    SourceKeys { keys: keys.iter().map(|k| (*k).to_owned()).collect(), issued_by_agentiam: issued }
}

#[test]
fn a_literal_provider_key_is_an_agent_holding_a_static_key_and_its_value_is_never_shown() {
    let d = run(
        json!({"containers": [{"name": "app", "image": "python:3.12",
            "env": [{"name": "OPENAI_API_KEY", "value": "sk-proj-secret-value"}]}]}),
        &Sources::default(),
    );
    assert_eq!(names(&d), ["llm-provider-key"]);
    assert!(d.is_agent(50));
    assert_eq!(d.confidence, 90);
    assert_eq!(
        d.static_keys,
        [StaticKey {
            container: "app".into(),
            name: "OPENAI_API_KEY".into(),
            source: KeySource::Literal,
            from: None
        }]
    );
    let text = format!("{d:?}");
    assert!(!text.contains("sk-proj-secret-value"), "{text}");
    assert_eq!(d.evidence[0].matches, ["container app: env OPENAI_API_KEY (literal value)"]);
}

#[test]
fn keys_from_secrets_env_from_and_volumes_are_found_by_their_names() {
    let mut sources = Sources::default();
    sources.secrets.insert("llm".into(), secret(&["ANTHROPIC_API_KEY", "OTHER"], false));
    sources.secrets.insert("bundle".into(), secret(&["mistral_api_key"], false));
    sources.config_maps.insert("settings".into(), secret(&["GROQ_API_KEY"], false));
    let d = run(
        json!({"containers": [{"name": "a", "image": "busybox",
            "env": [{"name": "COHERE_API_KEY", "valueFrom": {"secretKeyRef": {"name": "llm", "key": "OTHER"}}}],
            "envFrom": [{"secretRef": {"name": "llm"}}, {"configMapRef": {"name": "settings"}, "prefix": ""}]}],
            "volumes": [{"name": "keys", "secret": {"secretName": "bundle"}}]}),
        &sources,
    );
    assert_eq!(names(&d), ["llm-provider-key", "llm-provider-key-in-secret"]);
    let keys: Vec<(&str, &KeySource, Option<&str>)> =
        d.static_keys.iter().map(|k| (k.name.as_str(), &k.source, k.from.as_deref())).collect();
    assert_eq!(
        keys,
        [
            ("ANTHROPIC_API_KEY", &KeySource::Secret, Some("llm")),
            ("COHERE_API_KEY", &KeySource::Secret, Some("llm")),
            ("GROQ_API_KEY", &KeySource::ConfigMap, Some("settings")),
            ("mistral_api_key", &KeySource::Secret, Some("bundle")),
        ]
    );
}

#[test]
fn a_key_agentiam_issued_is_not_a_static_key_and_an_empty_literal_holds_nothing() {
    let mut sources = Sources::default();
    sources.secrets.insert("bot-credentials".into(), secret(&["OPENAI_API_KEY"], true));
    let d = run(
        json!({"containers": [{"name": "a", "image": "busybox", "env": [
            {"name": "OPENAI_API_KEY", "valueFrom": {"secretKeyRef": {"name": "bot-credentials", "key": "x"}}},
            {"name": "ANTHROPIC_API_KEY", "value": ""}]}]}),
        &sources,
    );
    assert!(d.is_agent(50), "the names still say it is an agent");
    assert!(d.static_keys.is_empty(), "{:?}", d.static_keys);
}

#[test]
fn frameworks_mcp_servers_ports_labels_and_annotations_are_detected() {
    let none = Sources::default();
    let d = run(json!({"containers": [{"name": "g", "image": "ghcr.io/acme/langgraph-api:0.4"}]}), &none);
    assert_eq!(names(&d), ["agent-framework-image"]);
    let d = run(
        json!({"containers": [{"name": "m", "image": "node:22", "command": ["npx"],
            "args": ["-y", "@modelcontextprotocol/server-github", "--token=ghp_very_secret"]}]}),
        &none,
    );
    assert_eq!(names(&d), ["mcp-server-args"]);
    assert!(!format!("{d:?}").contains("ghp_very_secret"), "arguments are never shown");
    let d = run(
        json!({"containers": [{"name": "m", "image": "acme/tools:1", "ports": [{"containerPort": 8080, "name": "mcp"}]}]}),
        &none,
    );
    assert_eq!(names(&d), ["mcp-port-name"]);
    assert!(d.is_agent(50));
    let labels = BTreeMap::from([("agentiam.dev/discover".to_owned(), "agent".to_owned())]);
    let d = run_labelled(
        json!({"containers": [{"name": "x", "image": "busybox"}]}),
        &labels,
        &BTreeMap::new(),
        &none,
    );
    assert_eq!((names(&d), d.confidence), (vec!["agent-label"], 100));
    let annotations = BTreeMap::from([("a2a.agent-card".to_owned(), "{\"name\": \"x\"}".to_owned())]);
    let d = run_labelled(
        json!({"containers": [{"name": "x", "image": "busybox"}]}),
        &BTreeMap::new(),
        &annotations,
        &none,
    );
    assert_eq!(names(&d), ["agent-annotation"]);
}

#[test]
fn key_patterns_never_match_inside_values_and_kubectls_copy_of_the_object_is_not_read() {
    let none = Sources::default();
    let spec = json!({"containers": [{"name": "x", "image": "busybox"}]});
    // A readiness probe path in kubectl's copy of the object, and a value that mentions a card: no agent.
    let annotations = BTreeMap::from([
        (
            LAST_APPLIED.to_owned(),
            "{\"spec\": {\"readinessProbe\": \"/.well-known/agent-card.json\"}}".to_owned(),
        ),
        ("docs.example.com/see".to_owned(), "https://example.com/agent-card".to_owned()),
    ]);
    let d = run_labelled(spec.clone(), &BTreeMap::new(), &annotations, &none);
    assert!(d.evidence.is_empty(), "{d:?}");
    // The key itself still counts; a key=value pattern still looks at the value.
    let annotations = BTreeMap::from([("example.com/agent-card".to_owned(), "yes".to_owned())]);
    let d = run_labelled(spec.clone(), &BTreeMap::new(), &annotations, &none);
    assert_eq!(names(&d), ["agent-annotation"]);
    let labels = BTreeMap::from([("agentiam.dev/discover".to_owned(), "no".to_owned())]);
    assert!(run_labelled(spec.clone(), &labels, &BTreeMap::new(), &none).evidence.is_empty());
    // Even a user's key=value pattern does not see into kubectl's copy.
    let config = crate::discovery::signatures::SignatureConfig {
        signatures: vec![crate::discovery::signatures::Signature {
            name: "any-value".into(),
            kind: SignatureKind::Annotation,
            patterns: vec!["*=*agent-card*".into()],
            confidence: 90,
            credential: false,
        }],
        ..Default::default()
    };
    let sigs = Signatures::from_config(&config).unwrap();
    let annotations = BTreeMap::from([(LAST_APPLIED.to_owned(), "/agent-card".to_owned())]);
    let t = Template {
        labels: &BTreeMap::new(),
        annotations: &annotations,
        spec: &serde_json::from_value(spec).unwrap(),
    };
    assert!(classify(&sigs, t, &none).evidence.is_empty());
}

#[test]
fn a_served_agent_card_is_evidence_by_its_name() {
    let sources = Sources {
        agent_cards: vec![crate::discovery::card::ServedCard { port: 8080, name: "Refund helper".into() }],
        ..Sources::default()
    };
    let d = run(json!({"containers": [{"name": "x", "image": "busybox"}]}), &sources);
    assert_eq!(names(&d), ["a2a-agent-card"]);
    assert_eq!(
        d.evidence[0].matches,
        vec!["a pod serves the A2A agent card \"Refund helper\" on port 8080".to_owned()]
    );
    assert!(d.is_agent(crate::discovery::signatures::DEFAULT_THRESHOLD));
}

#[test]
fn weak_signals_alone_stay_below_the_threshold_and_add_up_together() {
    let none = Sources::default();
    let d = run(
        json!({"containers": [{"name": "maps", "image": "acme/maps:2", "env": [{"name": "GOOGLE_API_KEY", "value": "k"}]}]}),
        &none,
    );
    assert_eq!(d.confidence, 40);
    assert!(!d.is_agent(50), "a Google API key alone is not an agent");
    let d = run(
        json!({"containers": [{"name": "x", "image": "acme/x:2", "env": [
            {"name": "GOOGLE_API_KEY", "value": "k"}, {"name": "OLLAMA_HOST", "value": "http://ollama:11434"}]}]}),
        &none,
    );
    assert_eq!(d.confidence, 64);
    assert!(d.is_agent(50));
}

#[test]
fn init_containers_count_and_each_signature_counts_once() {
    let d = run(
        json!({"initContainers": [{"name": "init", "image": "busybox", "env": [{"name": "OPENAI_API_KEY", "value": "a"}]}],
            "containers": [{"name": "app", "image": "busybox", "env": [{"name": "ANTHROPIC_API_KEY", "value": "b"}]}]}),
        &Sources::default(),
    );
    assert_eq!(d.confidence, 90, "two keys are one signature");
    assert_eq!(d.evidence[0].matches.len(), 2);
    assert_eq!(d.static_keys.len(), 2);
}

/// At least 20 ordinary workloads, none of them an agent: web servers, databases, caches, queues, batch
/// jobs, monitoring and the cluster's own add-ons, with the environment they usually carry.
#[test]
fn ordinary_workloads_are_not_agents() {
    let fixtures = [
        json!({"containers": [{"name": "nginx", "image": "nginx:1.27", "ports": [{"containerPort": 80, "name": "http"}]}]}),
        json!({"containers": [{"name": "httpd", "image": "httpd:2.4", "ports": [{"containerPort": 8080}]}]}),
        json!({"containers": [{"name": "pg", "image": "postgres:17", "env": [{"name": "POSTGRES_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "pg", "key": "password"}}}, {"name": "PGDATA", "value": "/var/lib/postgresql/data"}], "ports": [{"containerPort": 5432, "name": "postgres"}]}]}),
        json!({"containers": [{"name": "mysql", "image": "mysql:8.4", "env": [{"name": "MYSQL_ROOT_PASSWORD", "value": "x"}]}]}),
        json!({"containers": [{"name": "redis", "image": "redis:7", "args": ["--appendonly", "yes"], "ports": [{"containerPort": 6379}]}]}),
        json!({"containers": [{"name": "memcached", "image": "memcached:1.6", "args": ["-m", "64"]}]}),
        json!({"containers": [{"name": "mongo", "image": "mongo:8", "env": [{"name": "MONGO_INITDB_ROOT_USERNAME", "value": "root"}]}]}),
        json!({"containers": [{"name": "rabbit", "image": "rabbitmq:4-management", "ports": [{"containerPort": 5672, "name": "amqp"}]}]}),
        json!({"containers": [{"name": "kafka", "image": "apache/kafka:4.0.0", "env": [{"name": "KAFKA_NODE_ID", "value": "1"}]}]}),
        json!({"containers": [{"name": "es", "image": "docker.elastic.co/elasticsearch/elasticsearch:8.15.0", "env": [{"name": "discovery.type", "value": "single-node"}]}]}),
        json!({"containers": [{"name": "backup", "image": "alpine:3.20", "command": ["sh", "-c", "pg_dump $DB > /backup/db.sql"], "env": [{"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "id"}}}, {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "secret"}}}]}]}),
        json!({"containers": [{"name": "pi", "image": "perl:5.40", "command": ["perl", "-Mbignum=bpi", "-wle", "print bpi(2000)"]}]}),
        json!({"containers": [{"name": "report", "image": "python:3.12-slim", "command": ["python", "report.py"], "env": [{"name": "SMTP_PASSWORD", "value": "x"}, {"name": "SENTRY_DSN", "value": "https://x@sentry.io/1"}]}]}),
        json!({"containers": [{"name": "prometheus", "image": "quay.io/prometheus/prometheus:v3.5.0", "args": ["--config.file=/etc/prometheus/prometheus.yml"], "ports": [{"containerPort": 9090, "name": "web"}]}]}),
        json!({"containers": [{"name": "grafana", "image": "grafana/grafana:12.0.0", "env": [{"name": "GF_SECURITY_ADMIN_PASSWORD", "value": "x"}]}]}),
        json!({"containers": [{"name": "coredns", "image": "registry.k8s.io/coredns/coredns:v1.12.0", "args": ["-conf", "/etc/coredns/Corefile"], "ports": [{"containerPort": 53, "name": "dns", "protocol": "UDP"}]}]}),
        json!({"containers": [{"name": "node-exporter", "image": "quay.io/prometheus/node-exporter:v1.9.0", "args": ["--path.rootfs=/host"]}]}),
        json!({"containers": [{"name": "fluent-bit", "image": "cr.fluentbit.io/fluent/fluent-bit:3.2"}]}),
        json!({"containers": [{"name": "api", "image": "ghcr.io/acme/orders-api:2.3.1", "env": [{"name": "STRIPE_API_KEY", "valueFrom": {"secretKeyRef": {"name": "stripe", "key": "key"}}}, {"name": "DATABASE_URL", "value": "postgres://orders"}], "ports": [{"containerPort": 8000, "name": "http"}]}]}),
        json!({"containers": [{"name": "web", "image": "node:22-alpine", "command": ["node", "server.js"], "env": [{"name": "NODE_ENV", "value": "production"}, {"name": "GITHUB_TOKEN", "valueFrom": {"secretKeyRef": {"name": "gh", "key": "token"}}}]}]}),
        json!({"containers": [{"name": "migrate", "image": "migrate/migrate:v4.17.0", "args": ["-path", "/migrations", "up"]}]}),
        json!({"containers": [{"name": "minio", "image": "quay.io/minio/minio:latest", "args": ["server", "/data"], "env": [{"name": "MINIO_ROOT_PASSWORD", "value": "x"}]}]}),
        json!({"containers": [{"name": "keycloak", "image": "quay.io/keycloak/keycloak:26.0", "args": ["start-dev"]}]}),
        json!({"containers": [{"name": "cron", "image": "bitnami/kubectl:1.33", "command": ["kubectl", "delete", "pods", "--field-selector=status.phase==Succeeded"]}]}),
    ];
    assert!(fixtures.len() >= 20);
    let mut sources = Sources::default();
    for s in ["pg", "s3", "stripe", "gh"] {
        sources.secrets.insert(s.into(), secret(&["password", "id", "secret", "key", "token"], false));
    }
    for f in fixtures {
        let d = run(f.clone(), &sources);
        assert!(d.evidence.is_empty(), "{f}: {:?}", d.evidence);
        assert!(d.static_keys.is_empty());
    }
}

#[test]
fn only_a_secret_of_agentiams_own_shape_counts_as_issued_by_it() {
    use crate::discovery::classify::issued_by_agentiam;
    let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    };
    let ours =
        labels(&[("app.kubernetes.io/managed-by", "agentiam-operator"), ("agentiam.dev/agent", "bot")]);
    assert!(issued_by_agentiam("bot-credentials", &ours));
    assert!(issued_by_agentiam("bot-delegations", &ours));
    assert!(!issued_by_agentiam("llm-keys", &ours), "the labels copied onto another Secret");
    assert!(!issued_by_agentiam("other-credentials", &ours));
    let unlabelled = labels(&[("agentiam.dev/agent", "bot")]);
    assert!(!issued_by_agentiam("bot-credentials", &unlabelled));
}

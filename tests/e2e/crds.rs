//! The CRDs install, are Established and serve what the Rust types generate; the samples apply.

use agentiam::api::Agent;
use agentiam::crdgen;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;

use crate::harness::{TestNs, text, wait_phase};
use crate::require_cluster;

#[tokio::test]
async fn crds_are_installed_established_and_match_the_generated_schemas() {
    let env = require_cluster!();
    let api: Api<CustomResourceDefinition> = Api::all(env.client().await);
    for generated in crdgen::all() {
        let name = generated.metadata.name.clone().unwrap();
        let served = api.get(&name).await.unwrap_or_else(|e| panic!("CRD {name} not installed: {e}"));
        let established = served
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Established" && c.status == "True"));
        assert!(established, "CRD {name} is not Established");
        let names_accepted = served
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "NamesAccepted" && c.status == "True"));
        assert!(names_accepted, "CRD {name} names were not accepted");
        let schema =
            |crd: &CustomResourceDefinition| serde_json::to_value(&crd.spec.versions[0].schema).unwrap();
        assert_eq!(
            schema(&served),
            schema(&generated),
            "installed schema of {name} differs from the Rust types"
        );
    }
}

#[tokio::test]
async fn short_names_categories_and_printer_columns_are_served() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "columns").await;
    let _op = crate::harness::Operator::start(&env, &ns.name, &[]);
    ns.create_agent("columns", crate::harness::basic_spec()).await;
    wait_phase(&ns.api::<Agent>(), "columns", "Active").await;
    let out = env.kubectl(&["get", "ag", "-n", &ns.name, "-o", "wide"], None);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    for column in ["PHASE", "OWNER", "TRUST", "READY", "SPIFFE ID", "AGE"] {
        assert!(t.contains(column), "column {column} missing:\n{t}");
    }
    assert!(t.contains(&format!("spiffe://cluster.local/ns/{}/agent/columns", ns.name)), "{t}");
    assert!(t.contains("Active") && t.contains("True") && t.contains("250"), "{t}");
    for short in ["agpol", "dlg", "rvk", "agentiam"] {
        let out = env.kubectl(&["get", short, "-n", &ns.name], None);
        assert!(out.status.success(), "kubectl get {short}: {}", text(&out));
    }
}

#[tokio::test]
async fn every_sample_applies_and_the_sample_agent_becomes_active() {
    let env = require_cluster!();
    let ns = TestNs::new(&env, "samples").await;
    let samples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/samples");
    let mut applied = 0;
    for entry in std::fs::read_dir(&samples).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("agentiam.dev_")) {
            let out = env.kubectl(&["apply", "-n", &ns.name, "-f", path.to_str().unwrap()], None);
            assert!(out.status.success(), "{} did not apply: {}", path.display(), text(&out));
            applied += 1;
        }
    }
    assert_eq!(applied, 4, "one sample per kind");
    let out =
        env.kubectl(&["apply", "--dry-run=server", "-n", &ns.name, "-k", samples.to_str().unwrap()], None);
    assert!(out.status.success(), "kustomization does not apply: {}", text(&out));
    let _op = crate::harness::Operator::start(&env, &ns.name, &[]);
    let agent = wait_phase(&ns.api::<Agent>(), "support-triage", "Active").await;
    let status = agent.status.unwrap();
    assert_eq!(status.trust_score, Some(950), "fully described production agent scores 950");
    assert_eq!(
        status.spiffe_id.unwrap(),
        format!("spiffe://cluster.local/ns/{}/agent/support-triage", ns.name)
    );
}

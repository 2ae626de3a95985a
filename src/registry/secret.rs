//! The `<agent>-credentials` Secret: exactly what the operator writes into it ([`desired`]), and whether a
//! Secret found under that name holds exactly that ([`check`]). Pure.
//!
//! The Secret is the operator's alone. Its data is replaced whole at every issuance, so no key a tenant adds
//! survives a write; and before the operator keeps a Secret it proves every entry against its own record of
//! the issuance the Secret names ([`AgentRecord`], from the audit log): each token must verify under the
//! operator's keys and carry the recorded `jti`, the certificate must be the recorded serial signed by the
//! operator's CA with its own key beside it, and nothing else may be there. Anything it cannot prove is
//! replaced. Labels and annotations outside agentiam's own are left as they are (tools add them); ours are
//! rewritten from the record, never read as facts.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;

use crate::api::Agent;
use crate::identity::SpiffeId;
use crate::identity::jwt::CLAIM_UID;
use crate::identity::verify::JwtVerifier;
use crate::identity::x509::CertificateAuthority;
use crate::registry::credentials::{Found, IssuedFacts, token_keys};
use crate::registry::ledger::{AgentRecord, Issuance};

/// Secret key of the CA bundle in the credentials Secret.
pub const BUNDLE_PEM: &str = "bundle.pem";
/// Secret key of the X.509-SVID certificate chain.
pub const SVID_PEM: &str = "svid.pem";
/// Secret key of the X.509-SVID private key.
pub const SVID_KEY_PEM: &str = "svid-key.pem";
/// The label naming the Agent (also the pod label the webhook reads).
pub const AGENT_LABEL: &str = crate::names::AGENT_LABEL;
/// The label saying who manages the object.
pub const MANAGED_BY_LABEL: &str = crate::names::MANAGED_BY_LABEL;
/// The prefix of every label and annotation the operator owns.
const OWN_PREFIX: &str = "agentiam.dev/";
/// The only Secret type the operator writes.
const SECRET_TYPE: &str = "Opaque";

/// The Secret of an agent's credentials.
pub fn secret_name(agent: &str) -> String {
    crate::names::credentials_secret(agent)
}

/// The one owner reference of the Secret: its Agent, by UID.
pub fn owner_reference(agent: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: Agent::api_version(&()).into_owned(),
        kind: Agent::kind(&()).into_owned(),
        name: agent.to_owned(),
        uid: uid.to_owned(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn own_labels(agent: &str, manager: &str) -> BTreeMap<String, String> {
    [(AGENT_LABEL.to_owned(), agent.to_owned()), (MANAGED_BY_LABEL.to_owned(), manager.to_owned())].into()
}

fn is_own(key: &str) -> bool {
    key.starts_with(OWN_PREFIX) || key == MANAGED_BY_LABEL
}

/// The whole Secret to write for an issuance: `data` (plain text) exactly, our labels, annotations from the
/// record, our owner reference, no finalizers. From `previous` (the Secret there now, if any) it keeps only
/// labels and annotations outside ours, and its `resourceVersion`, so the write replaces exactly what was
/// read and fails on a concurrent change.
pub fn desired(
    namespace: &str,
    agent: &str,
    uid: &str,
    manager: &str,
    facts: &IssuedFacts,
    data: BTreeMap<String, String>,
    previous: Option<&Secret>,
) -> Secret {
    let foreign = |m: Option<&BTreeMap<String, String>>| -> BTreeMap<String, String> {
        m.into_iter().flatten().filter(|(k, _)| !is_own(k)).map(|(k, v)| (k.clone(), v.clone())).collect()
    };
    let mut labels = foreign(previous.and_then(|p| p.metadata.labels.as_ref()));
    labels.extend(own_labels(agent, manager));
    let mut annotations = foreign(previous.and_then(|p| p.metadata.annotations.as_ref()));
    annotations.extend(facts.annotations());
    Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(agent)),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![owner_reference(agent, uid)]),
            resource_version: previous.and_then(|p| p.metadata.resource_version.clone()),
            ..ObjectMeta::default()
        },
        type_: Some(SECRET_TYPE.to_owned()),
        data: Some(data.into_iter().map(|(k, v)| (k, ByteString(v.into_bytes()))).collect()),
        ..Secret::default()
    }
}

/// Whether a Secret of another type is in the way: the type is immutable, so it must be deleted first.
pub fn needs_recreate(existing: &Secret) -> bool {
    existing.type_.as_deref().unwrap_or(SECRET_TYPE) != SECRET_TYPE
}

/// The data keys an issuance puts in the Secret, with the audience of each token key.
pub fn data_keys(issuance: &Issuance) -> Vec<(String, Option<String>)> {
    let auds: Vec<String> = issuance.tokens.iter().map(|t| t.aud.clone()).collect();
    let mut keys: Vec<(String, Option<String>)> =
        token_keys(&auds).into_iter().map(|(aud, key)| (key, Some(aud))).collect();
    if issuance.x509 {
        keys.push((SVID_PEM.to_owned(), None));
        keys.push((SVID_KEY_PEM.to_owned(), None));
    }
    keys.push((BUNDLE_PEM.to_owned(), None));
    keys
}

/// What [`check`] compares a Secret against.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// The Agent's name.
    pub agent: &'a str,
    /// Its UID.
    pub uid: &'a str,
    /// Its SPIFFE ID.
    pub spiffe_id: &'a SpiffeId,
    /// The field manager (the managed-by label's value).
    pub manager: &'a str,
    /// What the operator recorded about it.
    pub record: Option<&'a AgentRecord>,
    /// A verifier over the published keys.
    pub verifier: &'a JwtVerifier,
    /// The IDs of the published keys.
    pub published: &'a [&'a str],
    /// The CA.
    pub ca: &'a CertificateAuthority,
}

/// What a Secret found under the agent's name holds: exactly a recorded issuance, or something else.
pub fn check(secret: &Secret, e: &Expected<'_>) -> Found {
    match check_inner(secret, e) {
        Ok(facts) => Found::Issued(facts),
        Err(why) => Found::Foreign(why.to_owned()),
    }
}

fn check_inner(secret: &Secret, e: &Expected<'_>) -> Result<IssuedFacts, &'static str> {
    let annotations = secret.metadata.annotations.clone().unwrap_or_default();
    let key = annotations
        .get(crate::registry::credentials::ANNOTATION_ISSUE_KEY)
        .ok_or("it names no issuance of the operator")?;
    let issuance = e
        .record
        .and_then(|r| r.issuance(key))
        .ok_or("it names no issuance the operator recorded for this agent")?;
    let facts = IssuedFacts::from_issuance(e.uid, issuance);
    if needs_recreate(secret) {
        return Err("its type is not Opaque");
    }
    if secret.metadata.owner_references.as_deref() != Some(&[owner_reference(e.agent, e.uid)][..]) {
        return Err("its owner references are not the operator's");
    }
    let ours = |m: &BTreeMap<String, String>| -> BTreeMap<String, String> {
        m.iter().filter(|(k, _)| is_own(k)).map(|(k, v)| (k.clone(), v.clone())).collect()
    };
    if ours(&annotations) != facts.annotations() {
        return Err("its agentiam annotations are not the recorded ones");
    }
    if ours(&secret.metadata.labels.clone().unwrap_or_default()) != own_labels(e.agent, e.manager) {
        return Err("its agentiam labels are not the operator's");
    }
    let data = secret.data.clone().unwrap_or_default();
    let expected = data_keys(issuance);
    let found: BTreeSet<&str> = data.keys().map(String::as_str).collect();
    let wanted: BTreeSet<&str> = expected.iter().map(|(k, _)| k.as_str()).collect();
    if found != wanted || secret.string_data.is_some() {
        return Err("its data keys are not exactly the issued ones");
    }
    let text =
        |k: &str| data.get(k).and_then(|v| std::str::from_utf8(&v.0).ok()).ok_or("an entry is not text");
    // A withdrawn key re-issues anyway (the plan says so); its tokens cannot be verified any more.
    let verifiable = e.published.contains(&issuance.key_id.as_str());
    for (k, aud) in &expected {
        let (Some(aud), true) = (aud, verifiable) else { continue };
        let recorded = issuance.tokens.iter().find(|t| &t.aud == aud).ok_or("a token was not recorded")?;
        // At the issuance time: an expired token is still the one the operator wrote (rotation replaces it).
        let svid =
            e.verifier.verify(text(k)?, aud, issuance.issued_at).map_err(|_| "a token does not verify")?;
        let bound = svid.extra.get(CLAIM_UID).and_then(|v| v.as_str()) == Some(e.uid);
        if svid.jti != recorded.jti || &svid.spiffe_id != e.spiffe_id || !bound {
            return Err("a token is not the one the operator recorded");
        }
    }
    if issuance.x509 {
        let serial = issuance.x509_serial.as_deref().ok_or("the certificate's serial was not recorded")?;
        e.ca.check_issued(text(SVID_PEM)?, text(SVID_KEY_PEM)?, serial, e.spiffe_id)?;
    }
    if text(BUNDLE_PEM)? != e.ca.bundle_pem() {
        return Err("bundle.pem is not the operator's CA bundle");
    }
    Ok(facts)
}

#[cfg(test)]
#[path = "secret_tests.rs"]
mod tests;

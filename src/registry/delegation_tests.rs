use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ObjectMeta;

use super::*;
use crate::api::{DelegationSpec, LocalRef};

fn at(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn delegation(name: &str, parent: Option<&str>, scopes: &[&str], ttl: &str) -> Arc<Delegation> {
    Arc::new(Delegation {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("ns".into()),
            uid: Some(format!("uid-{name}")),
            creation_timestamp: Some(Time(at("2026-12-01T10:00:00Z"))),
            ..ObjectMeta::default()
        },
        spec: DelegationSpec {
            agent_ref: LocalRef { name: format!("agent-{name}") },
            parent_ref: parent.map(|p| LocalRef { name: p.into() }),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            task: "t".into(),
            ttl: Some(ttl.into()),
            expires_at: None,
            max_depth: None,
            audience: None,
            may_act: None,
        },
        status: None,
    })
}

fn grant(d: &Delegation, by: &str) -> Grant {
    Grant {
        requester: Grantor { username: by.into(), uid: Some("u-1".into()), groups: vec![] },
        agent_uid: Some(format!("auid-{}", d.spec.agent_ref.name)),
        parent_uid: d.spec.parent_ref.as_ref().map(|p| format!("uid-{}", p.name)),
    }
}

fn active(d: &Delegation) -> Option<Grantee> {
    Some(Grantee { uid: format!("auid-{}", d.spec.agent_ref.name), active: true })
}

/// Decides the last of `chain` (root first), every link admitted by alice and every grantee Active.
fn decide_chain(chain: &[Arc<Delegation>], now: &str) -> Decision {
    let grants: Vec<Grant> = chain.iter().map(|d| grant(d, "alice@example.com")).collect();
    let links: Vec<Link<'_>> = chain
        .iter()
        .zip(&grants)
        .rev()
        .map(|(d, g)| Link {
            delegation: d,
            grant: Some(g),
            grantee: active(d),
            revoked_by: None,
            recorded: None,
        })
        .collect();
    decide(&links, &Ending::Root, at(now))
}

const NOW: &str = "2026-12-01T10:30:00Z";

fn with_audience(d: Arc<Delegation>, audience: &str) -> Arc<Delegation> {
    let mut d = (*d).clone();
    d.spec.audience = Some(audience.into());
    Arc::new(d)
}

#[test]
fn the_audience_is_named_or_the_one_system_every_scope_names() {
    let aud = |scopes: &[&str]| audience_of(&delegation("d", None, scopes, "1h"));
    assert_eq!(aud(&["read@crm:contacts/*", "write@crm:notes/**"]).as_deref(), Some("crm"));
    assert_eq!(aud(&["*@tickets/eu"]).as_deref(), Some("tickets"));
    assert_eq!(aud(&["read@crm:contacts/*", "refund@pay:orders/*"]), None, "two systems");
    assert_eq!(aud(&["read@*:contacts/*"]), None, "a wildcard system");
    assert_eq!(aud(&["read@**"]), None);
    let named = with_audience(delegation("d", None, &["read@*:x"], "1h"), "https://crm.example");
    assert_eq!(audience_of(&named).as_deref(), Some("https://crm.example"));
    // A root without one is Invalid; a child inherits its parent's and may not name another.
    let root = delegation("root", None, &["read@crm:contacts/*", "refund@pay:orders/*"], "2h");
    let d = decide_chain(std::slice::from_ref(&root), NOW);
    assert_eq!((d.phase, d.reason), (DelegationPhase::Invalid, "NoAudience"), "{}", d.message);
    let root = with_audience(root, "crm");
    let child = delegation("child", Some("root"), &["refund@pay:orders/*"], "1h");
    let d = decide_chain(&[root.clone(), child.clone()], NOW);
    assert_eq!((d.phase, d.audience.as_deref()), (DelegationPhase::Active, Some("crm")), "{}", d.message);
    let d = decide_chain(&[root, with_audience(child, "pay")], NOW);
    assert_eq!((d.phase, d.reason), (DelegationPhase::Invalid, "WiderThanParent"), "{}", d.message);
    assert!(d.message.contains("audience"), "{}", d.message);
}

#[test]
fn a_root_granted_by_a_person_is_active_with_the_human_first_in_its_chain() {
    let root = delegation("root", None, &["read@crm:contacts/*"], "2h");
    let d = decide_chain(&[root], NOW);
    assert_eq!(d.phase, DelegationPhase::Active, "{}", d.message);
    assert_eq!(d.grantor.as_ref().map(|g| g.username.as_str()), Some("alice@example.com"));
    assert_eq!(d.chain[0].kind, "User");
    assert_eq!(d.chain[1].name, "agent-root");
    assert_eq!(d.expires_at, Some(at("2026-12-01T12:00:00Z")));
    assert_eq!(d.remaining_depth, Some(DEFAULT_MAX_DEPTH));
}

#[test]
fn a_narrower_child_is_active_and_a_wider_one_invalid() {
    let root = with_audience(
        delegation("root", None, &["read@crm:contacts/*", "refund@pay:orders/**"], "2h"),
        "crm",
    );
    let child = delegation("child", Some("root"), &["read@crm:contacts/42"], "1h");
    let d = decide_chain(&[root.clone(), child], NOW);
    assert_eq!(d.phase, DelegationPhase::Active, "{}", d.message);
    assert_eq!(d.chain.len(), 3);
    assert_eq!(d.remaining_depth, Some(DEFAULT_MAX_DEPTH - 1));
    for wider in ["read@crm:contacts/**", "*@crm:contacts/42", "read@CRM:contacts/42", "refund@pay:**"] {
        let child = delegation("child", Some("root"), &[wider], "1h");
        let d = decide_chain(&[root.clone(), child], NOW);
        assert_eq!(
            (d.phase, d.reason),
            (DelegationPhase::Invalid, "WiderThanParent"),
            "{wider}: {}",
            d.message
        );
    }
}

#[test]
fn a_child_that_outlives_its_parent_is_invalid() {
    let root = delegation("root", None, &["read@crm:contacts/*"], "1h");
    let child = delegation("child", Some("root"), &["read@crm:contacts/*"], "2h");
    let d = decide_chain(&[root, child], NOW);
    assert_eq!((d.phase, d.reason), (DelegationPhase::Invalid, "WiderThanParent"), "{}", d.message);
    assert!(d.message.contains("after its parent"), "{}", d.message);
}

#[test]
fn depth_is_bounded_by_the_root_and_each_child_may_lower_it() {
    let mut root = (*delegation("root", None, &["read@a/**"], "2h")).clone();
    root.spec.max_depth = Some(1);
    let root = Arc::new(root);
    let c1 = delegation("c1", Some("root"), &["read@a/**"], "1h");
    let c2 = delegation("c2", Some("c1"), &["read@a/**"], "1h");
    assert_eq!(decide_chain(&[root.clone(), c1.clone()], NOW).phase, DelegationPhase::Active);
    let d = decide_chain(&[root, c1, c2], NOW);
    assert_eq!(d.phase, DelegationPhase::Invalid, "{}", d.message);
    assert!(d.message.contains("maxDepth"), "{}", d.message);
}

#[test]
fn a_root_expiry_ends_every_descendant() {
    let root = delegation("root", None, &["read@a/**"], "2h");
    let c1 = delegation("c1", Some("root"), &["read@a/**"], "2h");
    let c2 = delegation("c2", Some("c1"), &["read@a/*"], "2h");
    assert_eq!(
        decide_chain(&[root.clone(), c1.clone(), c2.clone()], "2026-12-01T11:59:59Z").phase,
        DelegationPhase::Active
    );
    let d = decide_chain(&[root, c1, c2], "2026-12-01T12:00:00Z");
    assert_eq!(d.phase, DelegationPhase::Expired, "{}", d.message);
}

#[test]
fn links_are_bound_by_uid() {
    let root = delegation("root", None, &["read@a/**"], "2h");
    let child = delegation("child", Some("root"), &["read@a/*"], "1h");
    let (gr, mut gc) = (grant(&root, "alice"), grant(&child, "alice"));
    gc.parent_uid = Some("uid-of-an-earlier-root".into());
    let links = [
        Link {
            delegation: &child,
            grant: Some(&gc),
            grantee: active(&child),
            revoked_by: None,
            recorded: None,
        },
        Link {
            delegation: &root,
            grant: Some(&gr),
            grantee: active(&root),
            revoked_by: None,
            recorded: None,
        },
    ];
    let d = decide(&links, &Ending::Root, at(NOW));
    assert_eq!((d.phase, d.reason), (DelegationPhase::Invalid, "ParentReplaced"));
    let gc = grant(&child, "alice");
    let other_agent = Some(Grantee { uid: "a-new-uid".into(), active: true });
    let links = [
        Link { delegation: &child, grant: Some(&gc), grantee: other_agent, revoked_by: None, recorded: None },
        Link {
            delegation: &root,
            grant: Some(&gr),
            grantee: active(&root),
            revoked_by: None,
            recorded: None,
        },
    ];
    assert_eq!(decide(&links, &Ending::Root, at(NOW)).reason, "AgentReplaced");
}

#[test]
fn only_a_person_may_grant_a_root_and_an_unrecorded_link_grants_nothing() {
    let root = delegation("root", None, &["read@a/**"], "2h");
    for who in ["system:serviceaccount:ns:agent-sa", "system:admin", ""] {
        let g = grant(&root, who);
        let links = [Link {
            delegation: &root,
            grant: Some(&g),
            grantee: active(&root),
            revoked_by: None,
            recorded: None,
        }];
        assert_eq!(decide(&links, &Ending::Root, at(NOW)).phase, DelegationPhase::Invalid, "{who:?}");
    }
    let links =
        [Link { delegation: &root, grant: None, grantee: active(&root), revoked_by: None, recorded: None }];
    assert_eq!(decide(&links, &Ending::Root, at(NOW)).reason, "NotAdmitted");
}

#[test]
fn a_grantee_that_is_not_active_holds_the_chain_pending() {
    let root = delegation("root", None, &["read@a/**"], "2h");
    let child = delegation("child", Some("root"), &["read@a/*"], "1h");
    let (gr, gc) = (grant(&root, "alice"), grant(&child, "alice"));
    let suspended = Some(Grantee { uid: "auid-agent-root".into(), active: false });
    let links = [
        Link {
            delegation: &child,
            grant: Some(&gc),
            grantee: active(&child),
            revoked_by: None,
            recorded: None,
        },
        Link { delegation: &root, grant: Some(&gr), grantee: suspended, revoked_by: None, recorded: None },
    ];
    let d = decide(&links, &Ending::Root, at(NOW));
    assert_eq!((d.phase, d.reason), (DelegationPhase::Pending, "AgentNotActive"), "{}", d.message);
}

#[test]
fn revocation_and_final_phases_end_the_chain_below_for_good() {
    let root = delegation("root", None, &["read@a/**"], "2h");
    let child = delegation("child", Some("root"), &["read@a/*"], "1h");
    let (gr, gc) = (grant(&root, "alice"), grant(&child, "alice"));
    let link = |d, g, revoked_by: Option<&str>, recorded| Link {
        delegation: d,
        grant: Some(g),
        grantee: active(d),
        revoked_by: revoked_by.map(str::to_owned),
        recorded,
    };
    let links = [link(&child, &gc, None, None), link(&root, &gr, Some("stop"), None)];
    assert_eq!(decide(&links, &Ending::Root, at(NOW)).phase, DelegationPhase::Revoked);
    let recorded = |phase, reason| Some(Recorded { phase, reason, message: "recorded".into() });
    let links = [
        link(&child, &gc, None, None),
        link(&root, &gr, None, recorded(DelegationPhase::Revoked, "Revoked")),
    ];
    assert_eq!(decide(&links, &Ending::Root, at(NOW)).reason, "ParentRevoked");
    let links = [
        link(&child, &gc, None, recorded(DelegationPhase::Invalid, "ParentMissing")),
        link(&root, &gr, None, None),
    ];
    let d = decide(&links, &Ending::Root, at(NOW));
    assert_eq!(
        (d.phase, d.reason),
        (DelegationPhase::Invalid, "ParentMissing"),
        "final stays final, with its reason"
    );
    assert_eq!(d.chain.len(), 3, "the chain is still read for status");
}

#[test]
fn walks_stop_at_missing_parents_cycles_and_length() {
    let a = delegation("a", Some("b"), &["read@x"], "1h");
    let b = delegation("b", Some("a"), &["read@x"], "1h");
    let all = [a.clone(), b.clone()];
    let get = |n: &str| all.iter().find(|d| d.metadata.name.as_deref() == Some(n)).cloned();
    let (chain, ending) = walk(a.clone(), get);
    assert_eq!((chain.len(), ending), (2, Ending::Cycle("a".into())));
    let (_, ending) = walk(delegation("c", Some("gone"), &["read@x"], "1h"), get);
    assert_eq!(ending, Ending::MissingParent("gone".into()));
    let long: Vec<Arc<Delegation>> = (0..20)
        .map(|i| delegation(&format!("d{i}"), Some(&format!("d{}", i + 1)), &["read@x"], "1h"))
        .collect();
    let get = |n: &str| long.iter().find(|d| d.metadata.name.as_deref() == Some(n)).cloned();
    let (chain, ending) = walk(long[0].clone(), get);
    assert_eq!((chain.len(), ending), (MAX_CHAIN, Ending::TooLong));
}

#[test]
fn ttls_read_like_the_crd_says() {
    assert_eq!(parse_ttl("8h"), Some(SignedDuration::from_hours(8)));
    assert_eq!(parse_ttl("1h30m"), Some(SignedDuration::from_mins(90)));
    assert_eq!(parse_ttl("90s"), Some(SignedDuration::from_secs(90)));
    for bad in ["", "h", "8", "8d", "-1h", "0s"] {
        assert_eq!(parse_ttl(bad), None, "{bad:?}");
    }
}

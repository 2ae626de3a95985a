use super::*;
use crate::audit::{Entry, ObjectRef, ZERO_HASH};

/// Builds records as the log would, numbering them and stamping them `secs` after the epoch.
struct Log {
    records: Vec<Record>,
}

fn agent(uid: &str) -> ObjectRef {
    ObjectRef {
        api_version: "agentiam.dev/v1alpha1".into(),
        kind: "Agent".into(),
        namespace: Some("ns".into()),
        name: "bot".into(),
        uid: Some(uid.into()),
    }
}

fn ts(secs: i64) -> Timestamp {
    Timestamp::from_second(secs).unwrap()
}

impl Log {
    fn new() -> Self {
        Self { records: Vec::new() }
    }

    fn push(
        &mut self,
        secs: i64,
        kind: RecordKind,
        key: &str,
        action: &str,
        outcome: Outcome,
        details: &[(&str, String)],
    ) {
        let mut entry = Entry::new("agentiam-operator", action, agent("u1"), outcome, "test");
        for (k, v) in details {
            entry = entry.with_detail(*k, v.clone());
        }
        let seq = self.records.len() as u64 + 1;
        let record =
            Record::seal(ZERO_HASH, seq, format!("{:.9}", ts(secs)), kind, Some(key.into()), entry).unwrap();
        self.records.push(record);
    }

    fn transition(&mut self, secs: i64, action: &str, generation: i64) {
        let key = format!("{action}:u1:{generation}");
        let details = [
            (a::DETAIL_GENERATION, generation.to_string()),
            (a::DETAIL_TRUST_SCORE, "500".to_owned()),
            (a::DETAIL_VALID, "true".to_owned()),
            (a::DETAIL_DECIDED_AT, ts(secs).to_string()),
        ];
        self.push(secs, RecordKind::Intent, &key, action, Outcome::Pending, &details);
        self.push(secs, RecordKind::Outcome, &key, action, Outcome::Success, &[]);
    }

    /// An issuance intent for tokens `jtis` (audience `aud-<i>`), issued at `secs` for `ttl` seconds.
    fn issue_intent(&mut self, secs: i64, ttl: i64, jtis: &[&str], supersedes: bool) -> String {
        let key = format!("credential.issue:u1:{}", secs * 1000);
        let tokens: Vec<IssuedToken> = jtis
            .iter()
            .enumerate()
            .map(|(i, j)| IssuedToken { aud: format!("aud-{i}"), jti: (*j).into() })
            .collect();
        let mut details = vec![
            (a::DETAIL_TOKENS, serde_json::to_string(&tokens).unwrap()),
            (a::DETAIL_ISSUED_AT, ts(secs).to_string()),
            (a::DETAIL_EXPIRES_AT, ts(secs + ttl).to_string()),
            (a::DETAIL_TTL_SECONDS, ttl.to_string()),
            (a::DETAIL_KEY_ID, "k1".to_owned()),
        ];
        if supersedes {
            details.push((a::DETAIL_SUPERSEDES, a::SUPERSEDES_ALL.to_owned()));
        }
        self.push(secs, RecordKind::Intent, &key, a::CREDENTIAL_ISSUE, Outcome::Pending, &details);
        key
    }

    fn issue(&mut self, secs: i64, ttl: i64, jtis: &[&str]) -> String {
        let key = self.issue_intent(secs, ttl, jtis, false);
        self.push(secs, RecordKind::Outcome, &key, a::CREDENTIAL_ISSUE, Outcome::Success, &[]);
        key
    }

    fn ledger(&self) -> Ledger {
        Ledger::from_records(&self.records)
    }
}

fn live(l: &Ledger, jti: &str, aud: &str, now: i64) -> bool {
    l.get("u1").is_some_and(|r| r.token(jti, aud, ts(now)) == TokenStanding::Live)
}

#[test]
fn an_activation_records_phase_trust_and_since() {
    let mut log = Log::new();
    log.transition(100, a::AGENT_ACTIVATE, 1);
    let r = log.ledger().get("u1").unwrap();
    assert_eq!(r.phase, Some(AgentPhase::Active));
    assert_eq!(r.phase_since, Some(ts(100)));
    assert_eq!((r.generation, r.trust_score), (Some(1), Some(500)));
    assert_eq!(r.valid, Some((true, ts(100))));
}

#[test]
fn only_issued_tokens_for_their_own_audience_are_live() {
    let mut log = Log::new();
    log.transition(100, a::AGENT_ACTIVATE, 1);
    log.issue(101, 600, &["j1", "j2"]);
    let l = log.ledger();
    assert!(live(&l, "j1", "aud-0", 200));
    assert!(live(&l, "j2", "aud-1", 200));
    assert!(!live(&l, "j1", "aud-1", 200), "a jti is bound to its audience");
    assert!(!live(&l, "j9", "aud-0", 200), "never issued");
    assert!(!live(&l, "j1", "aud-0", 701), "expired");
    assert!(l.get("u2").is_none());
}

#[test]
fn a_suspension_ends_every_token_and_a_resume_does_not_bring_them_back() {
    let mut log = Log::new();
    log.transition(100, a::AGENT_ACTIVATE, 1);
    log.issue(101, 600, &["old"]);
    log.transition(110, a::AGENT_SUSPEND, 2);
    assert!(!live(&log.ledger(), "old", "aud-0", 111));
    log.transition(120, a::AGENT_ACTIVATE, 3);
    log.issue(121, 600, &["new"]);
    let l = log.ledger();
    assert!(!live(&l, "old", "aud-0", 122), "the token from before the suspension stays dead");
    assert!(live(&l, "new", "aud-0", 122));
    let r = l.get("u1").unwrap();
    assert_eq!((r.phase, r.phase_since), (Some(AgentPhase::Active), Some(ts(120))));
}

#[test]
fn every_phase_but_active_ends_the_tokens() {
    for action in [a::AGENT_DEACTIVATE, a::AGENT_SUSPEND, a::AGENT_RETIRE, a::AGENT_REVOKE, a::AGENT_ARCHIVE]
    {
        let mut log = Log::new();
        log.transition(100, a::AGENT_ACTIVATE, 1);
        log.issue(101, 600, &["j"]);
        let key = format!("{action}:u1:2");
        log.push(110, RecordKind::Intent, &key, action, Outcome::Pending, &[]);
        assert!(!live(&log.ledger(), "j", "aud-0", 111), "{action}");
    }
}

#[test]
fn the_intent_decides_and_the_outcome_only_reports() {
    let mut log = Log::new();
    log.push(100, RecordKind::Intent, "agent.retire:u1:1", a::AGENT_RETIRE, Outcome::Pending, &[]);
    assert_eq!(log.ledger().get("u1").unwrap().phase, Some(AgentPhase::Retired));
    // An interrupted status report does not undo the decision.
    log.push(101, RecordKind::Outcome, "agent.retire:u1:1", a::AGENT_RETIRE, Outcome::Abandoned, &[]);
    assert_eq!(log.ledger().get("u1").unwrap().phase, Some(AgentPhase::Retired));
}

#[test]
fn rotation_keeps_the_previous_tokens_until_they_expire_and_supersession_ends_them() {
    let mut log = Log::new();
    log.transition(100, a::AGENT_ACTIVATE, 1);
    log.issue(100, 600, &["first"]);
    log.issue(580, 600, &["second"]);
    let l = log.ledger();
    assert!(live(&l, "first", "aud-0", 590), "a pod may still read the first set");
    assert!(live(&l, "second", "aud-0", 590));
    let key = log.issue_intent(590, 600, &["third"], true);
    let l = log.ledger();
    assert!(!live(&l, "first", "aud-0", 591) && !live(&l, "second", "aud-0", 591));
    assert!(live(&l, "third", "aud-0", 591), "live from its intent, before the Secret write");
    assert_eq!(l.get("u1").unwrap().issuance(&key).map(|i| i.stored), Some(Stored::Pending));
}

#[test]
fn an_abandoned_issuance_leaves_nothing_and_a_stored_one_is_marked() {
    let mut log = Log::new();
    log.transition(100, a::AGENT_ACTIVATE, 1);
    let lost = log.issue_intent(101, 600, &["lost"], false);
    log.push(102, RecordKind::Outcome, &lost, a::CREDENTIAL_ISSUE, Outcome::Abandoned, &[]);
    let kept = log.issue(103, 600, &["kept"]);
    let l = log.ledger();
    assert!(!live(&l, "lost", "aud-0", 104));
    let r = l.get("u1").unwrap();
    assert_eq!(r.issuances.len(), 1);
    assert_eq!(r.latest().map(|i| (i.key.as_str(), i.stored)), Some((kept.as_str(), Stored::Yes)));
}

#[test]
fn a_withdrawal_ends_the_tokens_and_an_archive_forgets_the_agent() {
    let mut log = Log::new();
    log.transition(100, a::AGENT_ACTIVATE, 1);
    log.issue(101, 600, &["j"]);
    let w = "credential.withdraw:u1:101000";
    log.push(102, RecordKind::Intent, w, a::CREDENTIAL_WITHDRAW, Outcome::Pending, &[]);
    assert!(!live(&log.ledger(), "j", "aud-0", 103));
    log.push(104, RecordKind::Intent, "agent.archive:u1", a::AGENT_ARCHIVE, Outcome::Pending, &[]);
    assert!(log.ledger().get("u1").is_some(), "archived only once the final record is written");
    log.push(105, RecordKind::Outcome, "agent.archive:u1", a::AGENT_ARCHIVE, Outcome::Success, &[]);
    assert!(log.ledger().get("u1").is_none());
}

#[test]
fn records_of_earlier_versions_are_understood() {
    // Before this version, the jtis were named only in the outcome, the issuance time only in the key.
    let mut log = Log::new();
    log.transition(100, a::AGENT_ACTIVATE, 1);
    let key = "credential.issue:u1:101000";
    let intent = [
        (a::DETAIL_AUDIENCES, "https://a,https://b".to_owned()),
        (a::DETAIL_EXPIRES_AT, ts(701).to_string()),
        (a::DETAIL_TTL_SECONDS, "600".to_owned()),
        (a::DETAIL_KEY_ID, "k1".to_owned()),
    ];
    log.push(101, RecordKind::Intent, key, a::CREDENTIAL_ISSUE, Outcome::Pending, &intent);
    let outcome = [(a::DETAIL_JTI, "ja,jb".to_owned())];
    log.push(101, RecordKind::Outcome, key, a::CREDENTIAL_ISSUE, Outcome::Success, &outcome);
    let l = log.ledger();
    assert!(live(&l, "ja", "https://a", 200) && live(&l, "jb", "https://b", 200));
    assert_eq!(l.get("u1").unwrap().latest().unwrap().issued_at, ts(101));
}

#[test]
fn validity_keeps_its_time_until_it_changes() {
    let mut log = Log::new();
    let decide = |log: &mut Log, secs: i64, g: i64, valid: bool| {
        let key = format!("agent.update:u1:{g}");
        let details = [
            (a::DETAIL_GENERATION, g.to_string()),
            (a::DETAIL_VALID, valid.to_string()),
            (a::DETAIL_DECIDED_AT, ts(secs).to_string()),
        ];
        log.push(secs, RecordKind::Intent, &key, a::AGENT_UPDATE, Outcome::Pending, &details);
    };
    decide(&mut log, 10, 1, true);
    decide(&mut log, 20, 2, true);
    assert_eq!(log.ledger().get("u1").unwrap().valid, Some((true, ts(10))));
    decide(&mut log, 30, 3, false);
    let r = log.ledger().get("u1").unwrap();
    assert_eq!((r.valid, r.generation), (Some((false, ts(30))), Some(3)));
}

#[test]
fn records_about_other_kinds_or_without_uid_change_nothing() {
    let mut entries = Entries::default();
    let mut r = Log::new();
    r.transition(1, a::AGENT_ACTIVATE, 1);
    let mut other = r.records[0].clone();
    other.object.kind = "AgentPolicy".into();
    entries.apply(&other);
    let mut anonymous = r.records[0].clone();
    anonymous.object.uid = None;
    entries.apply(&anonymous);
    assert!(entries.is_empty());
}

/// The approval controller reconciles on these: a use changes no object, yet status must report it.
#[test]
fn each_approval_record_applied_names_its_request_to_subscribers() {
    let ledger = Ledger::default();
    let mut rx = ledger.approval_records();
    let request = ObjectRef {
        api_version: "agentiam.dev/v1alpha1".into(),
        kind: "ApprovalRequest".into(),
        namespace: Some("pay".into()),
        name: "payer-0a1b2c3d4e".into(),
        uid: Some("r-1".into()),
    };
    let seal = |seq: u64, object: ObjectRef, action: &str| {
        let entry = Entry::new("agentiam-operator", action, object, Outcome::Success, "test");
        Record::seal(ZERO_HASH, seq, format!("{:.9}", ts(seq as i64)), RecordKind::Event, None, entry)
            .unwrap()
    };
    Projection::apply(&ledger, &seal(1, agent("u1"), a::AGENT_ACTIVATE));
    assert!(rx.try_recv().is_err(), "an Agent record is no approval record");
    Projection::apply(&ledger, &seal(2, request, "approval.use"));
    assert_eq!(rx.try_recv().ok(), Some(("pay".to_owned(), "payer-0a1b2c3d4e".to_owned())));
}

#[test]
fn the_token_endpoint_remembers_issued_tokens_and_used_assertions_until_they_expire() {
    let mut log = Log::new();
    let issue = [
        (a::DETAIL_AUDIENCES, "https://crm".to_owned()),
        (a::DETAIL_EXPIRES_AT, ts(400).to_string()),
        (a::DETAIL_ASSERTION_JTI, "as-1".to_owned()),
        (a::DETAIL_ASSERTION_EXPIRES_AT, ts(3700).to_string()),
    ];
    log.push(100, RecordKind::Intent, "token.issue:at-1", "token.issue", Outcome::Pending, &issue);
    let refused = [
        (a::DETAIL_ASSERTION_JTI, "as-2".to_owned()),
        (a::DETAIL_ASSERTION_EXPIRES_AT, ts(3700).to_string()),
    ];
    log.push(101, RecordKind::Event, "", "token.refuse", Outcome::Failure, &refused);
    let ledger = Ledger::from_records(&log.records);
    let entries = ledger.entries();
    let t = entries.tokens().access_token("at-1", ts(200)).unwrap();
    assert_eq!((t.agent_uid.as_str(), t.aud.as_str(), t.stored), ("u1", "https://crm", Stored::Pending));
    assert!(entries.tokens().access_token("at-1", ts(400)).is_none(), "expired");
    assert!(ledger.assertion_used("as-1", ts(200)) && ledger.assertion_used("as-2", ts(200)));
    assert!(!ledger.assertion_used("as-1", ts(3700)) && !ledger.assertion_used("as-3", ts(200)));

    log.push(102, RecordKind::Outcome, "token.issue:at-1", "token.issue", Outcome::Success, &[]);
    let book = |log: &Log| Ledger::from_records(&log.records).entries().tokens().clone();
    assert_eq!(book(&log).access_token("at-1", ts(200)).unwrap().stored, Stored::Yes);
    log.push(103, RecordKind::Outcome, "token.issue:at-1", "token.issue", Outcome::Abandoned, &[]);
    let ledger = Ledger::from_records(&log.records);
    assert!(
        ledger.entries().tokens().access_token("at-1", ts(200)).is_none(),
        "an abandoned issuance voids the token"
    );
    assert!(ledger.assertion_used("as-1", ts(200)), "but its assertion stays used");
    // The token records leave the agent's own record alone.
    assert!(ledger.get("u1").is_none());

    // A revocation by the holder ends the token; a failed one changes nothing.
    let mut log = Log::new();
    log.push(100, RecordKind::Intent, "token.issue:at-1", "token.issue", Outcome::Pending, &issue);
    log.push(
        101,
        RecordKind::Event,
        "",
        "token.revoke",
        Outcome::Failure,
        &[(a::DETAIL_JTI, "at-1".to_owned())],
    );
    assert!(book(&log).access_token("at-1", ts(200)).is_some());
    log.push(
        102,
        RecordKind::Event,
        "",
        "token.revoke",
        Outcome::Success,
        &[(a::DETAIL_JTI, "at-1".to_owned())],
    );
    assert!(book(&log).access_token("at-1", ts(200)).is_none());
}

#[test]
fn an_access_token_lives_only_while_its_agent_stays_active_since_before_it() {
    let issue = |log: &mut Log, secs: i64, jti: &str| {
        let details = [
            (a::DETAIL_AUDIENCES, "https://crm".to_owned()),
            (a::DETAIL_EXPIRES_AT, ts(secs + 300).to_string()),
        ];
        log.push(
            secs,
            RecordKind::Intent,
            &format!("token.issue:{jti}"),
            "token.issue",
            Outcome::Pending,
            &details,
        );
        log.push(
            secs,
            RecordKind::Outcome,
            &format!("token.issue:{jti}"),
            "token.issue",
            Outcome::Success,
            &[],
        );
    };
    let mut log = Log::new();
    issue(&mut log, 90, "before");
    assert!(Ledger::from_records(&log.records).access_token("before", ts(95)).is_none(), "no Active agent");
    log.transition(100, a::AGENT_ACTIVATE, 1);
    issue(&mut log, 110, "at-1");
    let ledger = Ledger::from_records(&log.records);
    assert!(ledger.access_token("at-1", ts(120)).is_some());
    assert!(ledger.access_token("before", ts(120)).is_none(), "issued before the activation");
    // Suspended: dead; resumed: still dead, while one issued after the resume lives.
    log.transition(130, a::AGENT_SUSPEND, 1);
    assert!(Ledger::from_records(&log.records).access_token("at-1", ts(131)).is_none());
    log.transition(140, a::AGENT_ACTIVATE, 2);
    issue(&mut log, 150, "at-2");
    let ledger = Ledger::from_records(&log.records);
    assert!(ledger.access_token("at-1", ts(151)).is_none(), "a resume does not bring it back");
    assert!(ledger.access_token("at-2", ts(151)).is_some());
}

#[test]
fn expired_token_records_are_swept_as_records_arrive() {
    let mut log = Log::new();
    for i in 0..3000 {
        let details = [
            (a::DETAIL_AUDIENCES, "r".to_owned()),
            (a::DETAIL_EXPIRES_AT, ts(i + 10).to_string()),
            (a::DETAIL_ASSERTION_JTI, format!("as-{i}")),
            (a::DETAIL_ASSERTION_EXPIRES_AT, ts(i + 10).to_string()),
        ];
        log.push(
            i,
            RecordKind::Intent,
            &format!("token.issue:at-{i}"),
            "token.issue",
            Outcome::Pending,
            &details,
        );
    }
    let entries = Ledger::from_records(&log.records).entries();
    let book = entries.tokens();
    assert!(book.issued.len() + book.assertions.len() < 2 * 2 * 1024, "{} kept", book.issued.len());
    assert!(book.access_token("at-2999", ts(3000)).is_some());
}

#[test]
fn the_feed_lists_stopped_and_gone_agents_and_every_token_taken_back_until_it_expires() {
    let mut log = Log::new();
    log.transition(100, a::AGENT_ACTIVATE, 1);
    log.issue_intent(110, 600, &["j1", "j2"], false);
    let voided = |log: &Log, at: i64| Ledger::from_records(&log.records).voided(ts(at));
    let v = voided(&log, 120);
    assert!(v.agents.is_empty() && v.tokens.is_empty(), "an Active agent with live tokens: nothing");
    // Suspended: the agent and both tokens are listed.
    log.transition(130, a::AGENT_SUSPEND, 1);
    let v = voided(&log, 131);
    assert_eq!(
        (v.agents.as_slice(), v.tokens.as_slice()),
        (&["u1".to_owned()][..], &["j1".to_owned(), "j2".to_owned()][..])
    );
    // Resumed: the agent is no longer listed, the tokens taken back still are, until they expire.
    log.transition(140, a::AGENT_ACTIVATE, 2);
    let v = voided(&log, 141);
    assert!(v.agents.is_empty());
    assert_eq!(v.tokens, ["j1", "j2"]);
    assert!(voided(&log, 711).tokens.is_empty(), "expired: no longer listed");
    // Archived: listed for a token lifetime (an hour) after the archive.
    log.push(200, RecordKind::Intent, "agent.archive:u1", a::AGENT_ARCHIVE, Outcome::Pending, &[]);
    log.push(200, RecordKind::Outcome, "agent.archive:u1", a::AGENT_ARCHIVE, Outcome::Success, &[]);
    assert_eq!(voided(&log, 201).agents, ["u1"]);
    assert!(voided(&log, 200 + 3601).agents.is_empty());
    // A feed-relevant record changes the counter; others do not.
    let ledger = Ledger::from_records(&log.records);
    let before = ledger.entries().feed_changes();
    let mut more = Log::new();
    more.push(300, RecordKind::Event, "", "authz.decide", Outcome::Success, &[]);
    for r in &more.records {
        Projection::apply(&ledger, r);
    }
    assert_eq!(ledger.entries().feed_changes(), before);
}

#[test]
fn an_emergency_rotation_lists_the_withdrawn_keys_for_an_hour() {
    let mut log = Log::new();
    log.push(
        100,
        RecordKind::Intent,
        "issuer.rotate:k1",
        "issuer.rotate",
        Outcome::Pending,
        &[("withdrawn", "k1,k0".to_owned())],
    );
    let ledger = Ledger::from_records(&log.records);
    assert_eq!(ledger.voided(ts(101)).keys, ["k0", "k1"]);
    assert!(ledger.voided(ts(100 + 3601)).keys.is_empty());
}

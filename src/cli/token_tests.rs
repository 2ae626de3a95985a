use std::sync::Arc;

use clap::Parser;
use jiff::SignedDuration;

use super::*;
use crate::identity::issuer::{Issuer, IssuerReceiver, IssuerSender, channel};
use crate::identity::jwt::{AgentClaims, CLAIM_OWNER, CLAIM_TRUST_SCORE, SvidClaims, mint_jwt_svid};
use crate::identity::keys::{KeySet, RotationPolicy};
use crate::identity::x509::{CertificateAuthority, DEFAULT_CA_VALIDITY};

const ISSUER_URL: &str = "https://issuer.example.org";
const AUD: &str = "https://api.example.com";
const UID: &str = "0b6f1a9e-5c4d-4e21-9d2f-7a1b2c3d4e5f";

#[derive(Parser, Debug)]
struct Cli {
    #[command(subcommand)]
    command: TokenCommand,
}

fn parse(args: &[&str]) -> Result<TokenCommand, clap::Error> {
    Cli::try_parse_from(std::iter::once("token").chain(args.iter().copied())).map(|c| c.command)
}

fn issuer(url: &str) -> Issuer {
    let now = Timestamp::now();
    let td = TrustDomain::parse("example.org").unwrap();
    Issuer {
        keys: KeySet::generate(now).unwrap(),
        ca: Arc::new(CertificateAuthority::generate(&td, DEFAULT_CA_VALIDITY, now).unwrap()),
        issuer_url: url.to_owned(),
        trust_domain: td,
        policy: RotationPolicy::default(),
        sequence: 1,
    }
}

fn mint_at(issuer: &Issuer, audience: &str, at: Timestamp) -> String {
    let sub = SpiffeId::for_agent(&issuer.trust_domain, "default", "support-triage").unwrap();
    let agent = AgentClaims { uid: UID, owner: "User:alice@example.com", trust_score: 950 };
    let claims =
        SvidClaims::new(&issuer.issuer_url, &sub, audience, agent, at, Duration::from_secs(600)).unwrap();
    mint_jwt_svid(issuer.keys.current(), &claims).unwrap()
}

fn mint(issuer: &Issuer) -> String {
    mint_at(issuer, AUD, Timestamp::now())
}

fn signature(token: &str) -> &str {
    token.rsplit('.').next().unwrap()
}

fn pinned(issuer: &Issuer) -> Pins {
    Pins { trust_domain: Some(issuer.trust_domain.clone()), issuer: Some(issuer.issuer_url.clone()) }
}

// ---- arguments ----

#[test]
fn the_token_comes_from_stdin_unless_given_and_a_literal_one_warns() {
    for args in [&["decode"][..], &["decode", "-"]] {
        let cmd = parse(args).unwrap();
        assert!(cmd.reads_stdin(), "{args:?}");
        assert_eq!(cmd.history_warning(), None);
    }
    let cmd = parse(&["decode", "a.b.c"]).unwrap();
    assert!(!cmd.reads_stdin());
    assert!(cmd.history_warning().unwrap().contains("shell history"));
}

#[test]
fn verify_needs_an_audience_and_exactly_one_key_source() {
    let ok = parse(&["verify", "--audience", AUD, "--issuer-url", ISSUER_URL]).unwrap();
    let TokenCommand::Verify(args) = ok else { panic!("not verify") };
    assert_eq!(args.keys.issuer_url.as_deref(), Some(ISSUER_URL));
    assert!(args.token.token.is_none() && args.trust_domain.is_none() && args.issuer.is_none());

    let full = parse(&[
        "verify",
        "-",
        "--audience",
        AUD,
        "--bundle",
        "b.json",
        "--trust-domain",
        "example.org",
        "--issuer",
        ISSUER_URL,
        "--expect-agent-uid",
        UID,
    ])
    .unwrap();
    let TokenCommand::Verify(args) = full else { panic!("not verify") };
    assert_eq!(args.trust_domain.unwrap().as_str(), "example.org");
    assert_eq!(args.expect_agent_uid.as_deref(), Some(UID));

    let refused: [&[&str]; 5] = [
        &["verify", "--issuer-url", ISSUER_URL],
        &["verify", "--audience", AUD],
        &["verify", "--audience", AUD, "--jwks", "k.json", "--bundle", "b.json"],
        &["verify", "--audience", AUD, "--jwks", "k.json", "--trust-domain", "Example.ORG"],
        &["decode", "a", "b"],
    ];
    for args in refused {
        assert!(parse(args).is_err(), "{args:?}");
    }
    parse(&["verify", "--audience", AUD, "--issuer-url", ISSUER_URL, "--cacert", "ca.pem"]).unwrap();
    let feed = "https://op.example/v1/revocations";
    parse(&["verify", "--audience", AUD, "--jwks", "k.json", "--cacert", "ca.pem", "--revocations", feed])
        .unwrap();
}

#[tokio::test]
async fn a_ca_certificate_without_anything_to_fetch_is_refused() {
    let args = ["verify", "--audience", AUD, "--jwks", "k.json", "--cacert", "ca.pem", "a.b.c"];
    let command = parse(&args).unwrap();
    let err = run(command, std::io::empty()).await.unwrap_err().to_string();
    assert!(err.contains("--cacert") && err.contains("--revocations"), "{err}");
}

#[test]
fn read_token_trims_and_refuses_empty_input() {
    assert_eq!(read_token(None, "  a.b.c\n".as_bytes()).unwrap(), "a.b.c");
    assert_eq!(read_token(Some("-"), "a.b.c\r\n".as_bytes()).unwrap(), "a.b.c");
    assert_eq!(read_token(Some(" a.b.c "), "ignored".as_bytes()).unwrap(), "a.b.c");
    assert!(matches!(read_token(None, "\n".as_bytes()), Err(TokenCliError::Empty)));
    // A huge stdin is read only up to a bound, and the verifier's size limit refuses what was read.
    let huge = "a".repeat(1 << 20);
    let token = read_token(None, huge.as_bytes()).unwrap();
    assert!(token.len() < 32 * 1024);
    let err = decode(&token, Timestamp::now()).unwrap_err();
    assert_eq!(err.to_string(), "token cannot be decoded: token is larger than 16384 bytes");
}

// ---- decode ----

#[test]
fn decode_shows_header_claims_and_times_under_a_not_verified_banner() {
    let issuer = issuer(ISSUER_URL);
    let minted = Timestamp::from_second(1_750_000_000).unwrap();
    let token = mint_at(&issuer, AUD, minted);
    let later = minted.checked_add(SignedDuration::from_secs(62)).unwrap();
    let out = decode(&token, later).unwrap();
    assert!(out.starts_with("NOT VERIFIED"), "{out}");
    assert!(out.contains(&format!("\"kid\": \"{}\"", issuer.keys.current().kid())), "{out}");
    assert!(out.contains("\"alg\": \"ES256\""));
    assert!(out.contains("\"sub\": \"spiffe://example.org/ns/default/agent/support-triage\""));
    assert!(out.contains(&format!("\"{CLAIM_UID}\": \"{UID}\"")));
    assert!(out.contains("issued at (iat):  2025-06-15T15:06:40Z\n"), "{out}");
    assert!(out.contains("not before (nbf): 2025-06-15T15:06:40Z\n"), "{out}");
    assert!(out.contains("expires (exp):    2025-06-15T15:16:40Z (in 8m 58s)\n"), "{out}");
    assert!(!out.contains(signature(&token)), "the signature is never printed");

    let expired = decode(&token, minted.checked_add(SignedDuration::from_hours(2)).unwrap()).unwrap();
    assert!(expired.contains("(expired 1h 50m 0s ago)"), "{expired}");
}

#[test]
fn decode_render_handles_odd_claims_and_escapes_control_characters() {
    let header = serde_json::json!({"alg": "none"});
    let claims = serde_json::json!({"exp": 1.5, "nbf": "soon", "sub": "evil\u{1b}[2Jname"});
    let out = render_decoded(&header, &claims, Timestamp::UNIX_EPOCH);
    assert!(out.contains("issued at (iat):  absent"), "{out}");
    assert!(out.contains("not before (nbf): not a whole-second NumericDate"), "{out}");
    assert!(out.contains("expires (exp):    not a whole-second NumericDate"), "{out}");
    assert!(!out.contains('\u{1b}') && out.contains("\\u001b[2J"), "{out}");
}

#[test]
fn decode_errors_never_quote_the_token() {
    let secret = "c2VjcmV0LXNlY3JldA.c2VjcmV0LXNlY3JldA.c2VjcmV0LXNlY3JldA";
    let err = decode(secret, Timestamp::now()).unwrap_err().to_string();
    assert!(
        err.starts_with("token cannot be decoded: token header is not a JSON object")
            || err.contains("malformed")
    );
    assert!(!err.contains("c2VjcmV0"), "{err}");
}

#[test]
fn human_durations() {
    assert_eq!(human(0), "0s");
    assert_eq!(human(59), "59s");
    assert_eq!(human(60), "1m 0s");
    assert_eq!(human(3601), "1h 0m 1s");
    assert_eq!(human(90_061), "1d 1h 1m 1s");
}

// ---- verify ----

#[test]
fn verify_pinned_prints_the_identity_and_the_agentiam_claims() {
    let issuer = issuer(ISSUER_URL);
    let token = mint(&issuer);
    let now = Timestamp::now();
    let v = verify_with(&token, &issuer.jwk_set(), &pinned(&issuer), AUD, Some(UID), now).unwrap();
    assert_eq!(v.svid.spiffe_id.to_string(), "spiffe://example.org/ns/default/agent/support-triage");
    let out = render_verified(&v, "JWKS keys.json", now);
    assert!(out.starts_with("VERIFIED at "), "{out}");
    for line in [
        "spiffe id:     spiffe://example.org/ns/default/agent/support-triage\n".to_owned(),
        format!("audience:      {AUD}\n"),
        format!("issuer:        {ISSUER_URL}\n"),
        "trust domain:  example.org\n".to_owned(),
        format!("key id:        {}\n", issuer.keys.current().kid()),
        "keys from:     JWKS keys.json\n".to_owned(),
        format!("{CLAIM_UID}: \"{UID}\" (as expected)\n"),
        format!("{CLAIM_OWNER}: \"User:alice@example.com\"\n"),
        format!("{CLAIM_TRUST_SCORE}: 950\n"),
    ] {
        assert!(out.contains(&line), "missing {line:?} in\n{out}");
    }
    assert!(out.contains("Z (in "), "{out}");
    assert!(!out.contains("taken from the token"));
    assert!(!out.contains(signature(&token)));
}

#[test]
fn unpinned_values_come_from_the_token_and_say_so() {
    let issuer = issuer(ISSUER_URL);
    let token = mint(&issuer);
    let now = Timestamp::now();
    let v = verify_with(&token, &issuer.jwk_set(), &Pins::default(), AUD, None, now).unwrap();
    let out = render_verified(&v, "x", now);
    assert!(
        out.contains(&format!("issuer:        {ISSUER_URL} (taken from the token; pass --issuer")),
        "{out}"
    );
    assert!(out.contains("trust domain:  example.org (taken from the token; pass --trust-domain"), "{out}");
    assert!(!out.contains("(as expected)"));
}

#[test]
fn every_failure_names_the_reason_and_never_the_token() {
    let issuer = issuer(ISSUER_URL);
    let token = mint(&issuer);
    let keys = issuer.jwk_set();
    let now = Timestamp::now();
    let stranger = self::issuer(ISSUER_URL);
    let old = mint_at(&issuer, AUD, now.checked_sub(SignedDuration::from_hours(2)).unwrap());
    let other_td = Pins { trust_domain: Some(TrustDomain::parse("other.org").unwrap()), ..pinned(&issuer) };
    let other_iss = Pins { issuer: Some("https://elsewhere.example".into()), ..pinned(&issuer) };
    // (token, keys, pins, audience, expected uid, expected message)
    type Case<'a> = (&'a str, &'a JwkSet, &'a Pins, &'a str, Option<&'a str>, &'a str);
    let cases: [Case<'_>; 7] = [
        (
            &token,
            &keys,
            &pinned(&issuer),
            "https://other.example",
            None,
            "token audience is not the expected audience",
        ),
        (&token, &stranger.jwk_set(), &pinned(&issuer), AUD, None, "is not a known signing key"),
        (&old, &keys, &pinned(&issuer), AUD, None, "token has expired"),
        (&token, &keys, &other_td, AUD, None, "not in the expected trust domain"),
        (&token, &keys, &other_iss, AUD, None, "token issuer is not the expected issuer"),
        (&token, &keys, &pinned(&issuer), AUD, Some("someone-else"), "claim agentiam.dev/uid is \""),
        ("not-a-token", &keys, &Pins::default(), AUD, None, "token is malformed"),
    ];
    for (tok, keys, pins, aud, uid, want) in cases {
        let err = verify_with(tok, keys, pins, aud, uid, now).unwrap_err().to_string();
        assert!(err.starts_with("token verification FAILED: "), "{err}");
        assert!(err.contains(want), "{err} should contain {want}");
        assert!(!err.contains(signature(tok)) || tok == "not-a-token", "{err}");
    }
}

#[test]
fn bundle_keys_are_the_jwt_svid_entries_only() {
    let issuer = issuer(ISSUER_URL);
    let bundle = serde_json::to_vec(&issuer.spiffe_bundle().unwrap()).unwrap();
    let set = jwk_set_from_bundle(&bundle, "b.json").unwrap();
    assert_eq!(set.keys.len(), 2, "next and current; the CA entry is not a token key");
    let token = mint(&issuer);
    verify_with(&token, &set, &pinned(&issuer), AUD, None, Timestamp::now()).unwrap();

    let only_ca = serde_json::json!({"keys": [{"use": "x509-svid", "kty": "EC"}]}).to_string();
    for (doc, want) in [
        (only_ca.as_str(), "b.json: the bundle has no jwt-svid keys"),
        ("[]", "b.json: not a SPIFFE bundle: no \"keys\" array"),
        ("{", "b.json: not a SPIFFE bundle: "),
    ] {
        let err = jwk_set_from_bundle(doc.as_bytes(), "b.json").unwrap_err().to_string();
        assert!(err.starts_with(want), "{err}");
    }
    assert!(jwk_set_from_jwks(b"{}", "k.json").unwrap_err().to_string().starts_with("k.json: not a JWK set"));
}

#[test]
fn keys_are_fetched_over_https_or_loopback_http_only() {
    for ok in [
        "https://issuer.example.org/keys",
        "http://127.0.0.1:8081/keys",
        "http://localhost/x",
        "http://[::1]:80/",
    ] {
        check_url(ok).unwrap();
    }
    for (bad, why) in [
        ("http://issuer.example.org/keys", "only allowed to a loopback"),
        ("http://10.0.0.1/keys", "only allowed to a loopback"),
        ("ftp://issuer.example.org/keys", "scheme must be https"),
        ("/keys", "not a valid absolute URL"),
        ("not a url", "not a valid absolute URL"),
    ] {
        let err = check_url(bad).unwrap_err().to_string();
        assert!(err.contains(why), "{bad}: {err}");
    }
}

// ---- end to end against the issuer routes ----

async fn serve(url_for: impl FnOnce(&str) -> String) -> (IssuerSender, IssuerReceiver, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = channel(issuer(&url_for(&base)));
    let app = crate::server::issuer::routes(rx.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (tx, rx, base)
}

fn verify_cmd(args: &[&str]) -> TokenCommand {
    let mut all = vec!["verify", "--audience", AUD];
    all.extend_from_slice(args);
    parse(&all).unwrap()
}

#[tokio::test]
async fn verify_discovers_the_keys_from_the_issuer_url() {
    let (_tx, rx, base) = serve(str::to_owned).await;
    let token = mint(&rx.borrow());
    let out =
        run(verify_cmd(&["--issuer-url", &base, "--expect-agent-uid", UID]), token.as_bytes()).await.unwrap();
    assert!(out.starts_with("VERIFIED"), "{out}");
    assert!(out.contains(&format!("issuer:        {base}\n")), "discovered, so pinned: {out}");
    assert!(out.contains(&format!("keys from:     {base}/keys\n")), "{out}");
    // A trailing slash on the URL asked for is the same issuer.
    let slash = format!("{base}/");
    run(verify_cmd(&["--issuer-url", &slash]), token.as_bytes()).await.unwrap();

    let err =
        run(verify_cmd(&["--issuer-url", &format!("{base}/nested")]), token.as_bytes()).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("cannot fetch {base}/nested/.well-known/openid-configuration: HTTP status 404 Not Found")
    );
}

#[tokio::test]
async fn a_discovery_document_for_another_issuer_is_refused() {
    let (_tx, rx, base) = serve(|_| "https://issuer.example.org".to_owned()).await;
    let token = mint(&rx.borrow());
    let err = run(verify_cmd(&["--issuer-url", &base]), token.as_bytes()).await.unwrap_err().to_string();
    assert!(err.contains("issuer \"https://issuer.example.org\" is not the URL asked for"), "{err}");
}

#[tokio::test]
async fn unreachable_issuers_fail_with_the_cause() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let err = run(verify_cmd(&["--issuer-url", &closed]), "a.b.c".as_bytes()).await.unwrap_err().to_string();
    assert!(err.starts_with(&format!("cannot fetch {closed}/.well-known/openid-configuration: ")), "{err}");
    let err = run(verify_cmd(&["--issuer-url", "http://issuer.example.org"]), "a.b.c".as_bytes()).await;
    assert!(err.unwrap_err().to_string().contains("only allowed to a loopback"));
}

#[tokio::test]
async fn verify_with_local_bundle_and_jwks_files() {
    let issuer = issuer(ISSUER_URL);
    let token = mint(&issuer);
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle.json");
    let jwks = dir.path().join("keys.json");
    std::fs::write(&bundle, serde_json::to_vec(&issuer.spiffe_bundle().unwrap()).unwrap()).unwrap();
    std::fs::write(&jwks, serde_json::to_vec(&issuer.jwks()).unwrap()).unwrap();
    for (flag, path) in [("--bundle", &bundle), ("--jwks", &jwks)] {
        let args = [flag, path.to_str().unwrap(), "--trust-domain", "example.org", "--issuer", ISSUER_URL];
        let out = run(verify_cmd(&args), token.as_bytes()).await.unwrap();
        assert!(out.contains("spiffe id:     spiffe://example.org/ns/default/agent/support-triage"), "{out}");
    }
    let missing = dir.path().join("missing.json");
    let err = run(verify_cmd(&["--jwks", missing.to_str().unwrap()]), token.as_bytes()).await.unwrap_err();
    assert!(err.to_string().starts_with(&format!("cannot read {}", missing.display())), "{err}");
}

#[test]
fn an_access_token_verifies_as_one_and_shows_its_scopes_task_and_model() {
    use crate::identity::access::{AccessClaims, AccessGrant};
    let issuer = issuer(ISSUER_URL);
    let now = Timestamp::now();
    let agent = SpiffeId::parse("spiffe://example.org/ns/default/agent/support-triage").unwrap();
    let grant = AccessGrant {
        issuer: ISSUER_URL,
        agent: &agent,
        agent_uid: UID,
        audience: AUD,
        scopes: &["read@crm:contacts/*"],
        task: Some("t-\u{1b}[31m"),
        model: Some("m"),
        certificate: None,
    };
    let claims = AccessClaims::new(grant, now, Duration::from_secs(300)).unwrap();
    let token = crate::identity::jwt::mint(issuer.keys.current(), &claims).unwrap();
    let keys = issuer.jwk_set();
    let v = verify_access_with(&token, &keys, &pinned(&issuer), AUD, Some(UID), now).unwrap();
    let out = render_access(&v, "JWKS keys.json", now);
    for line in [
        "access token (at+jwt)",
        "agent:         spiffe://example.org/ns/default/agent/support-triage\n",
        "scopes:        read@crm:contacts/*\n",
        "task:          \"t-\\u001b[31m\"\n",
        "model:         \"m\"\n",
        "(as expected)",
    ] {
        assert!(out.contains(line), "missing {line:?} in\n{out}");
    }
    assert!(!out.contains(signature(&token)));
    // The wrong audience or UID, and an access token where an identity token is verified, fail.
    let err = verify_access_with(&token, &keys, &pinned(&issuer), "https://other", None, now).unwrap_err();
    assert!(err.to_string().contains("audience"), "{err}");
    assert!(verify_access_with(&token, &keys, &pinned(&issuer), AUD, Some("other-uid"), now).is_err());
    assert!(verify_with(&token, &keys, &pinned(&issuer), AUD, None, now).is_err());
    assert!(verify_access_with(&mint(&issuer), &keys, &pinned(&issuer), AUD, None, now).is_err());
}

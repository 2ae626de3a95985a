//! `kubectl agentiam token decode|verify`: look inside a JWT-SVID, or check it the way a relying party would.
//!
//! `decode` shows the JSON of a token without checking anything, and says so on its first line. `verify`
//! runs the operator's strict verifier ([`JwtVerifier`]) against keys from the issuer's published documents
//! (OIDC discovery and JWKS over HTTP(S)) or from a local SPIFFE bundle or JWKS file.
//!
//! Tokens are bearer credentials: both commands read the token from stdin by default so it does not land in
//! shell history, and no output or error ever contains the token or its signature.

use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::{ConfigBuilderExt, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jiff::Timestamp;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::Value;

use crate::identity::access::ACCESS_TYP;
use crate::identity::bundle::SIGNING_ALG;
use crate::identity::jwt::CLAIM_UID;
use crate::identity::verify::{
    DEFAULT_MAX_TOKEN_BYTES, JwtVerifier, TokenError, VerifiedAccess, VerifiedSvid, VerifierConfig,
    VerifierError, decode_unverified,
};
use crate::identity::{SpiffeId, TrustDomain};
use crate::server::issuer::OPENID_CONFIGURATION_PATH;

/// The largest key document (discovery, JWKS, bundle) accepted from a server or a file.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// How long fetching one document may take, connection included.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Room for surrounding whitespace when reading a token from stdin; anything longer than the verifier's limit
/// is refused by the verifier itself, so this only bounds what is read.
const MAX_STDIN_BYTES: u64 = DEFAULT_MAX_TOKEN_BYTES as u64 + 4096;

/// `kubectl agentiam token ...`.
#[derive(clap::Subcommand, Debug)]
pub enum TokenCommand {
    /// Print a token's header and claims WITHOUT verifying anything (signature, issuer, audience, expiry).
    Decode(TokenArg),
    /// Verify a token strictly, as a relying party would, and print the verified identity.
    Verify(VerifyArgs),
    /// Ask the token service for a task-scoped access token with an agent's X.509-SVID (mutual TLS).
    Request(super::oauth::RequestArgs),
    /// Hand a delegated token on to another agent (RFC 8693 token exchange), as its holder.
    Exchange(super::oauth::ExchangeArgs),
    /// Ask the token service whether a token is active (RFC 7662), with your Kubernetes token.
    Introspect(super::oauth::IntrospectArgs),
    /// Revoke an access token (RFC 7009), as an administrator or as its holder.
    Revoke(super::oauth::RevokeArgs),
}

/// Where the token comes from.
#[derive(clap::Args, Debug, Clone)]
pub struct TokenArg {
    /// The JWT-SVID. Omit it or pass "-" to read it from stdin, which keeps it out of shell history.
    #[arg(value_name = "TOKEN|-")]
    pub token: Option<String>,
}

/// Options of `token verify`.
#[derive(clap::Args, Debug, Clone)]
pub struct VerifyArgs {
    /// The token.
    #[command(flatten)]
    pub token: TokenArg,
    /// The audience the token must be for (the token must name exactly this one).
    #[arg(long)]
    pub audience: String,
    /// The key source.
    #[command(flatten)]
    pub keys: KeysArgs,
    /// The trust domain the subject must belong to. Default: the token's own, so only the keys bind it.
    #[arg(long, value_parser = TrustDomain::parse)]
    pub trust_domain: Option<TrustDomain>,
    /// The exact `iss` required. Default: the discovery document's issuer with --issuer-url, otherwise the
    /// token's own (not pinned).
    #[arg(long)]
    pub issuer: Option<String>,
    /// Also require the `agentiam.dev/uid` claim to be this Agent UID (tells a re-created agent apart).
    #[arg(long, value_name = "UID")]
    pub expect_agent_uid: Option<String>,
    /// PEM CA certificate(s) to trust for --issuer-url and --revocations over HTTPS, instead of the
    /// system roots.
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// Also refuse the token if the operator's revocation feed lists it, its agent, a delegation of its
    /// chain or its key: the feed URL, e.g. `https://agentiam.agentiam-system.svc/v1/revocations`.
    #[arg(long, value_name = "URL")]
    pub revocations: Option<String>,
}

/// Where the verification keys come from: exactly one source.
#[derive(clap::Args, Debug, Clone)]
#[group(required = true, multiple = false)]
pub struct KeysArgs {
    /// The issuer URL: fetch its /.well-known/openid-configuration, then the jwks_uri named there. HTTPS,
    /// or plain HTTP to a loopback address only (e.g. through `kubectl port-forward`).
    #[arg(long, value_name = "URL")]
    pub issuer_url: Option<String>,
    /// A SPIFFE trust bundle file; its `jwt-svid` keys are used.
    #[arg(long, value_name = "FILE")]
    pub bundle: Option<PathBuf>,
    /// A JWKS file (e.g. a saved copy of the issuer's /keys).
    #[arg(long, value_name = "FILE")]
    pub jwks: Option<PathBuf>,
}

impl TokenCommand {
    fn token_arg(&self) -> Option<&TokenArg> {
        match self {
            Self::Decode(arg) => Some(arg),
            Self::Verify(args) => Some(&args.token),
            Self::Introspect(args) => Some(&args.token),
            Self::Revoke(args) => Some(&args.token),
            Self::Request(_) | Self::Exchange(_) => None,
        }
    }

    /// Whether the token will be read from stdin.
    pub fn reads_stdin(&self) -> bool {
        self.token_arg().is_some_and(|a| a.token.as_deref().is_none_or(|t| t == "-"))
    }

    /// A warning for the user when the token was typed on the command line, where shell history keeps it.
    pub fn history_warning(&self) -> Option<&'static str> {
        (self.token_arg().is_some() && !self.reads_stdin()).then_some(
            "warning: a token given as an argument stays in your shell history; pipe it in instead \
             (e.g. `kubectl agentiam token decode < token-file`)",
        )
    }
}

/// Why a token command failed. Messages never contain the token or its signature.
#[derive(Debug, thiserror::Error)]
pub enum TokenCliError {
    /// Stdin could not be read.
    #[error("cannot read the token from stdin: {0}")]
    Stdin(#[source] std::io::Error),
    /// Nothing but whitespace was given.
    #[error("no token given: pass it on stdin or as an argument")]
    Empty,
    /// `decode` could not even decode the token.
    #[error("token cannot be decoded: {0}")]
    Decode(#[source] TokenError),
    /// The token failed verification.
    #[error("token verification FAILED: {0}")]
    Verify(#[source] TokenError),
    /// The token verified, but its `agentiam.dev/uid` is not the expected one.
    #[error("token verification FAILED: claim {CLAIM_UID} is {found}, not the expected {expected:?}")]
    AgentUid {
        /// The UID asked for.
        expected: String,
        /// The claim's (verified) value, as JSON, or "absent".
        found: String,
    },
    /// A key file could not be read.
    #[error("cannot read {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A document is not a usable key set or discovery document.
    #[error("{origin}: {message}")]
    Document {
        /// The file or URL.
        origin: String,
        /// What is wrong with it.
        message: String,
    },
    /// A URL is unusable or not allowed.
    #[error("cannot use URL {url:?}: {message}")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        message: String,
    },
    /// A document could not be fetched.
    #[error("cannot fetch {url}: {message}")]
    Fetch {
        /// The URL.
        url: String,
        /// Why.
        message: String,
    },
    /// The TLS client could not be set up.
    #[error("cannot set up TLS: {0}")]
    Tls(String),
    /// The keys or pins cannot make a verifier.
    #[error("cannot verify with these keys: {0}")]
    Verifier(#[source] VerifierError),
    /// A token service command failed.
    #[error(transparent)]
    OAuth(#[from] super::oauth::OAuthCliError),
    /// The token verified, and the revocation feed lists it.
    #[error("REVOKED: the token verifies, but the operator's revocation feed refuses it: {0}")]
    Revoked(#[source] crate::identity::revocations::Revoked),
}

/// The revocation list at `url` (fetched like the key documents: HTTPS, or HTTP to loopback).
async fn fetch_revocations(
    url: &str,
    cacert: Option<&Path>,
) -> Result<crate::identity::revocations::RevocationList, TokenCliError> {
    let bytes = Fetcher::new(cacert)?.get(url).await?;
    serde_json::from_slice(&bytes).map_err(|e| document_error(url, format!("not a revocation list: {e}")))
}

/// Runs a token command, reading the token from `stdin` when it is not an argument, and returns the text to
/// print.
pub async fn run(command: TokenCommand, stdin: impl Read) -> Result<String, TokenCliError> {
    let token = match command.token_arg() {
        Some(arg) => read_token(arg.token.as_deref(), stdin)?,
        None => String::new(),
    };
    let now = Timestamp::now();
    match command {
        TokenCommand::Request(args) => Ok(super::oauth::request(args).await?),
        TokenCommand::Exchange(args) => Ok(super::oauth::exchange(args).await?),
        TokenCommand::Introspect(args) => Ok(super::oauth::introspect(args, token).await?),
        TokenCommand::Revoke(args) => Ok(super::oauth::revoke(args, token).await?),
        TokenCommand::Decode(_) => decode(&token, now),
        TokenCommand::Verify(args) => {
            if args.cacert.is_some() && args.keys.issuer_url.is_none() && args.revocations.is_none() {
                return Err(TokenCliError::Url {
                    url: "--cacert".into(),
                    message:
                        "a CA certificate is only for --issuer-url or --revocations; nothing is fetched here"
                            .into(),
                });
            }
            let keys = load_keys(&args.keys, args.cacert.as_deref()).await?;
            let pins = Pins { trust_domain: args.trust_domain, issuer: args.issuer.or(keys.issuer.clone()) };
            let uid = args.expect_agent_uid.as_deref();
            let revocations = match &args.revocations {
                Some(url) => Some((url.as_str(), fetch_revocations(url, args.cacert.as_deref()).await?)),
                None => None,
            };
            // The header only picks the verifier; each verifier checks `typ` again.
            let (header, claims) = decode_unverified(&token).unwrap_or_default();
            let access = header.get("typ") == Some(&Value::from(ACCESS_TYP));
            let (mut out, listed) = if access {
                let verified = verify_access_with(&token, &keys.set, &pins, &args.audience, uid, now)?;
                // The signature check bound `iss` to the verifier's issuer.
                let iss = claims.get("iss").and_then(Value::as_str).unwrap_or_default();
                let listed = revocations.as_ref().map(|(_, l)| l.check_access(iss, &verified.token));
                (render_access(&verified, &keys.origin, now), listed)
            } else {
                let verified = verify_with(&token, &keys.set, &pins, &args.audience, uid, now)?;
                let listed = revocations.as_ref().map(|(_, l)| l.check_svid(&verified.svid));
                (render_verified(&verified, &keys.origin, now), listed)
            };
            if let (Some((url, list)), Some(listed)) = (&revocations, listed) {
                listed.map_err(TokenCliError::Revoked)?;
                let _ = writeln!(out, "revocations:   not listed (revision {} of {url})", list.revision);
            }
            Ok(out)
        }
    }
}

/// The token from the argument, or from `stdin` when the argument is absent or "-"; surrounding whitespace
/// (a trailing newline from a file) is dropped.
pub fn read_token(arg: Option<&str>, stdin: impl Read) -> Result<String, TokenCliError> {
    let raw = match arg {
        Some(token) if token != "-" => token.to_owned(),
        _ => {
            let mut buf = String::new();
            stdin.take(MAX_STDIN_BYTES).read_to_string(&mut buf).map_err(TokenCliError::Stdin)?;
            buf
        }
    };
    let token = raw.trim();
    if token.is_empty() { Err(TokenCliError::Empty) } else { Ok(token.to_owned()) }
}

/// `token decode`: header and claims as pretty JSON under a NOT VERIFIED banner, then the times in RFC 3339.
pub fn decode(token: &str, now: Timestamp) -> Result<String, TokenCliError> {
    let (header, claims) = decode_unverified(token).map_err(TokenCliError::Decode)?;
    Ok(render_decoded(&header, &claims, now))
}

/// The text of `token decode`. JSON string escaping also neutralises terminal control characters an
/// attacker could put in a claim.
pub fn render_decoded(header: &Value, claims: &Value, now: Timestamp) -> String {
    let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    let mut out = String::from(
        "NOT VERIFIED: decoded only. The signature, issuer, audience and expiry were NOT checked;\n\
         use `kubectl agentiam token verify` before trusting any of this.\n",
    );
    let _ = writeln!(out, "header:\n{}", pretty(header));
    let _ = writeln!(out, "claims:\n{}", pretty(claims));
    for (claim, label) in
        [("iat", "issued at (iat): "), ("nbf", "not before (nbf):"), ("exp", "expires (exp):   ")]
    {
        let shown = match claims.get(claim) {
            None => "absent".to_owned(),
            Some(value) => match value.as_i64().and_then(|s| Timestamp::from_second(s).ok()) {
                Some(at) if claim == "exp" => format!("{at} ({})", until_expiry(at, now)),
                Some(at) => at.to_string(),
                None => "not a whole-second NumericDate".to_owned(),
            },
        };
        let _ = writeln!(out, "{label} {shown}");
    }
    out
}

/// What a verification is pinned to; `None` takes the value from the token itself.
#[derive(Debug, Clone, Default)]
pub struct Pins {
    /// Required trust domain of the subject.
    pub trust_domain: Option<TrustDomain>,
    /// Required `iss`.
    pub issuer: Option<String>,
}

/// A token that passed verification, with what it was checked against.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The verified claims.
    pub svid: VerifiedSvid,
    /// Whether the trust domain was given rather than taken from the token.
    pub trust_domain_pinned: bool,
    /// Whether the issuer was given (or discovered) rather than taken from the token.
    pub issuer_pinned: bool,
    /// Whether `agentiam.dev/uid` was checked against an expected value.
    pub agent_uid_checked: bool,
}

/// The verifier for `token` over `keys`: the pinned trust domain and issuer, or the token's own
/// (unverified) ones, which the signature check with trusted keys then binds.
fn verifier_for(token: &str, keys: &JwkSet, pins: &Pins) -> Result<JwtVerifier, TokenCliError> {
    let unverified = || decode_unverified(token).map(|(_, claims)| claims).map_err(TokenCliError::Verify);
    let trust_domain = match &pins.trust_domain {
        Some(td) => td.clone(),
        None => {
            let claims = unverified()?;
            let sub = claims.get("sub").and_then(Value::as_str).ok_or(TokenError::MissingClaim("sub"));
            let id = sub.and_then(|s| SpiffeId::parse(s).map_err(TokenError::Subject));
            id.map_err(TokenCliError::Verify)?.trust_domain().clone()
        }
    };
    let issuer = match &pins.issuer {
        Some(issuer) => issuer.clone(),
        None => {
            let claims = unverified()?;
            let iss = claims.get("iss").and_then(Value::as_str).ok_or(TokenError::MissingClaim("iss"));
            iss.map_err(TokenCliError::Verify)?.to_owned()
        }
    };
    JwtVerifier::new(VerifierConfig::new(trust_domain, issuer), keys).map_err(TokenCliError::Verifier)
}

/// Verifies `token` with the strict verifier over `keys` at `now`. Unpinned values come from the token's
/// own (unverified) claims: the signature check with trusted keys is then what binds them.
pub fn verify_with(
    token: &str,
    keys: &JwkSet,
    pins: &Pins,
    audience: &str,
    expect_agent_uid: Option<&str>,
    now: Timestamp,
) -> Result<Verified, TokenCliError> {
    let verifier = verifier_for(token, keys, pins)?;
    let svid = verifier.verify(token, audience, now).map_err(TokenCliError::Verify)?;
    if let Some(expected) = expect_agent_uid {
        let found = svid.extra.get(CLAIM_UID);
        if found.and_then(Value::as_str) != Some(expected) {
            let found = found.map_or_else(|| "absent".to_owned(), Value::to_string);
            return Err(TokenCliError::AgentUid { expected: expected.to_owned(), found });
        }
    }
    Ok(Verified {
        svid,
        trust_domain_pinned: pins.trust_domain.is_some(),
        issuer_pinned: pins.issuer.is_some(),
        agent_uid_checked: expect_agent_uid.is_some(),
    })
}

/// An access token that passed verification, with what it was checked against.
#[derive(Debug, Clone)]
pub struct VerifiedAccessToken {
    /// The verified claims.
    pub token: VerifiedAccess,
    /// Whether the trust domain was given rather than taken from the token.
    pub trust_domain_pinned: bool,
    /// Whether the issuer was given (or discovered) rather than taken from the token.
    pub issuer_pinned: bool,
    /// Whether the agent UID was checked against an expected value.
    pub agent_uid_checked: bool,
}

/// [`verify_with`] for an access token (`typ` `at+jwt`): the access verifier, then `aud` must be
/// `audience` and, when given, the agent UID `expect_agent_uid`.
pub fn verify_access_with(
    token: &str,
    keys: &JwkSet,
    pins: &Pins,
    audience: &str,
    expect_agent_uid: Option<&str>,
    now: Timestamp,
) -> Result<VerifiedAccessToken, TokenCliError> {
    let verifier = verifier_for(token, keys, pins)?;
    let verified = verifier.verify_access(token, now).map_err(TokenCliError::Verify)?;
    if audience.is_empty() || verified.audience != audience {
        return Err(TokenCliError::Verify(TokenError::Audience));
    }
    if let Some(expected) = expect_agent_uid
        && verified.agent_uid != expected
    {
        return Err(TokenCliError::AgentUid {
            expected: expected.to_owned(),
            found: Value::from(verified.agent_uid.clone()).to_string(),
        });
    }
    Ok(VerifiedAccessToken {
        token: verified,
        trust_domain_pinned: pins.trust_domain.is_some(),
        issuer_pinned: pins.issuer.is_some(),
        agent_uid_checked: expect_agent_uid.is_some(),
    })
}

/// The text of a successful `token verify` of an access token.
pub fn render_access(v: &VerifiedAccessToken, keys_origin: &str, now: Timestamp) -> String {
    let t = &v.token;
    let at = Timestamp::from_second(now.as_second()).unwrap_or(now);
    let mut out = format!(
        "VERIFIED at {at}: access token ({ACCESS_TYP}): signature ({SIGNING_ALG}), issuer, audience, times and subject\n"
    );
    let _ = writeln!(out, "agent:         {}", t.agent);
    let td = t.agent.trust_domain();
    let _ = writeln!(out, "trust domain:  {td}{}", unpinned(v.trust_domain_pinned, "--trust-domain"));
    let _ = writeln!(
        out,
        "issuer pinned: {}",
        if v.issuer_pinned { "yes" } else { "no (pass --issuer to pin it)" }
    );
    let _ = writeln!(out, "audience:      {}", t.audience);
    let scopes: Vec<&str> = t.scopes.iter().map(crate::authz::scope::Scope::as_str).collect();
    let _ = writeln!(out, "scopes:        {}", scopes.join(" "));
    let quoted = |s: &Option<String>| {
        s.as_ref().map_or_else(|| "absent".to_owned(), |s| Value::from(s.as_str()).to_string())
    };
    let _ = writeln!(out, "task:          {}", quoted(&t.task));
    let _ = writeln!(out, "model:         {}", quoted(&t.model));
    let bound = t.certificate.as_ref().map_or_else(
        || "no (a bearer token)".to_owned(),
        |x5t| format!("client certificate x5t#S256 {x5t} (RFC 8705: only with that certificate)"),
    );
    let _ = writeln!(out, "bound to:      {bound}");
    let checked = if v.agent_uid_checked { " (as expected)" } else { "" };
    let _ = writeln!(out, "agent uid:     {}{checked}", Value::from(t.agent_uid.as_str()));
    let _ = writeln!(out, "key id:        {}", t.kid);
    let _ = writeln!(out, "keys from:     {keys_origin}");
    let optional = |t: Option<Timestamp>| t.map_or_else(|| "absent".to_owned(), |t| t.to_string());
    let _ = writeln!(out, "issued at:     {}", optional(t.issued_at));
    let _ = writeln!(out, "expires at:    {} ({})", t.expires_at, until_expiry(t.expires_at, now));
    let _ = writeln!(out, "token id:      {}", t.jti);
    out.push_str(
        "Whether the operator still stands by it (issued, agent Active) only the operator can tell: ask \
         POST /v1/authorize.\n",
    );
    out
}

/// The text of a successful `token verify`; `keys_origin` says where the keys came from.
pub fn render_verified(v: &Verified, keys_origin: &str, now: Timestamp) -> String {
    let s = &v.svid;
    // Whole seconds, like the token's own times.
    let at = Timestamp::from_second(now.as_second()).unwrap_or(now);
    let mut out =
        format!("VERIFIED at {at}: signature ({SIGNING_ALG}), issuer, audience, times and subject\n");
    let _ = writeln!(out, "spiffe id:     {}", s.spiffe_id);
    let _ = writeln!(out, "audience:      {}", s.audience);
    let _ = writeln!(out, "issuer:        {}{}", s.issuer, unpinned(v.issuer_pinned, "--issuer"));
    let td = s.spiffe_id.trust_domain();
    let _ = writeln!(out, "trust domain:  {td}{}", unpinned(v.trust_domain_pinned, "--trust-domain"));
    let _ = writeln!(out, "key id:        {}", s.kid);
    let _ = writeln!(out, "keys from:     {keys_origin}");
    let optional = |t: Option<Timestamp>| t.map_or_else(|| "absent".to_owned(), |t| t.to_string());
    let _ = writeln!(out, "issued at:     {}", optional(s.issued_at));
    let _ = writeln!(out, "not before:    {}", optional(s.not_before));
    let _ = writeln!(out, "expires at:    {} ({})", s.expires_at, until_expiry(s.expires_at, now));
    let _ = writeln!(out, "token id:      {}", s.jti);
    // The remaining claims are signed, so they are shown; as JSON, so strings stay quoted and escaped.
    let (ours, others): (Vec<_>, Vec<_>) =
        s.extra.iter().partition(|(name, _)| name.starts_with("agentiam.dev/"));
    for (name, value) in ours.into_iter().chain(others) {
        let checked = if v.agent_uid_checked && name == CLAIM_UID { " (as expected)" } else { "" };
        let _ = writeln!(out, "{name}: {value}{checked}");
    }
    out
}

/// Nothing for a pinned value; for one taken from the token, a note naming the flag that pins it.
fn unpinned(pinned: bool, flag: &str) -> String {
    if pinned { String::new() } else { format!(" (taken from the token; pass {flag} to pin it)") }
}

/// "in 9m 58s" or "expired 2m 3s ago", relative to `now`.
fn until_expiry(exp: Timestamp, now: Timestamp) -> String {
    let seconds = exp.as_second().saturating_sub(now.as_second());
    if seconds > 0 {
        format!("in {}", human(seconds.unsigned_abs()))
    } else {
        format!("expired {} ago", human(seconds.unsigned_abs()))
    }
}

/// Seconds as "1d 2h 3m 4s", leaving out leading zero units.
fn human(seconds: u64) -> String {
    let units = [(86_400, "d"), (3600, "h"), (60, "m"), (1, "s")];
    let mut rest = seconds;
    let mut parts = Vec::new();
    for (size, unit) in units {
        let n = rest / size;
        rest %= size;
        if n > 0 || (!parts.is_empty()) || size == 1 {
            parts.push(format!("{n}{unit}"));
        }
    }
    parts.join(" ")
}

/// Verification keys and what they say about the issuer.
#[derive(Debug, Clone)]
pub struct LoadedKeys {
    /// The keys.
    pub set: JwkSet,
    /// The issuer the discovery document names, when keys were discovered.
    pub issuer: Option<String>,
    /// Where the keys came from, for the output.
    pub origin: String,
}

/// Loads the keys from the one source given.
pub async fn load_keys(keys: &KeysArgs, cacert: Option<&Path>) -> Result<LoadedKeys, TokenCliError> {
    match (&keys.issuer_url, &keys.bundle, &keys.jwks) {
        (Some(url), _, _) => discover(url, cacert).await,
        (None, Some(path), _) => {
            let set = jwk_set_from_bundle(&read_document(path)?, &path.display().to_string())?;
            Ok(LoadedKeys { set, issuer: None, origin: format!("SPIFFE bundle {}", path.display()) })
        }
        (None, None, Some(path)) => {
            let set = jwk_set_from_jwks(&read_document(path)?, &path.display().to_string())?;
            Ok(LoadedKeys { set, issuer: None, origin: format!("JWKS {}", path.display()) })
        }
        (None, None, None) => Err(TokenCliError::Document {
            origin: "verify".to_owned(),
            message: "one of --issuer-url, --bundle or --jwks is required".to_owned(),
        }),
    }
}

fn read_document(path: &Path) -> Result<Vec<u8>, TokenCliError> {
    let file = std::fs::File::open(path)
        .map_err(|source| TokenCliError::ReadFile { path: path.to_owned(), source })?;
    let mut bytes = Vec::new();
    file.take(MAX_DOCUMENT_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| TokenCliError::ReadFile { path: path.to_owned(), source })?;
    if bytes.len() > MAX_DOCUMENT_BYTES {
        return Err(document_error(
            &path.display().to_string(),
            format!("larger than {MAX_DOCUMENT_BYTES} bytes"),
        ));
    }
    Ok(bytes)
}

fn document_error(origin: &str, message: impl Into<String>) -> TokenCliError {
    TokenCliError::Document { origin: origin.to_owned(), message: message.into() }
}

/// The JWT-SVID keys of a SPIFFE trust bundle: only entries with `"use": "jwt-svid"`, as the bundle spec
/// requires of JWT-SVID validators (the X.509 entries are CA certificates, not token keys).
pub fn jwk_set_from_bundle(bytes: &[u8], origin: &str) -> Result<JwkSet, TokenCliError> {
    let doc: Value = serde_json::from_slice(bytes)
        .map_err(|e| document_error(origin, format!("not a SPIFFE bundle: {e}")))?;
    let entries = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| document_error(origin, "not a SPIFFE bundle: no \"keys\" array"))?;
    let keys = entries
        .iter()
        .filter(|k| k.get("use").and_then(Value::as_str) == Some("jwt-svid"))
        .map(|k| serde_json::from_value::<Jwk>(k.clone()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| document_error(origin, format!("a jwt-svid key is not a valid JWK: {e}")))?;
    if keys.is_empty() {
        return Err(document_error(origin, "the bundle has no jwt-svid keys"));
    }
    Ok(JwkSet { keys })
}

/// A JWKS document.
pub fn jwk_set_from_jwks(bytes: &[u8], origin: &str) -> Result<JwkSet, TokenCliError> {
    serde_json::from_slice(bytes).map_err(|e| document_error(origin, format!("not a JWK set: {e}")))
}

/// OIDC discovery: the discovery document, whose `issuer` must be the URL asked for (OpenID Connect
/// Discovery 1.0, section 4.3), then the JWKS at its `jwks_uri`.
async fn discover(issuer_url: &str, cacert: Option<&Path>) -> Result<LoadedKeys, TokenCliError> {
    let fetcher = Fetcher::new(cacert)?;
    let base = issuer_url.trim_end_matches('/');
    let discovery_url = format!("{base}{OPENID_CONFIGURATION_PATH}");
    let doc: Value = serde_json::from_slice(&fetcher.get(&discovery_url).await?)
        .map_err(|e| document_error(&discovery_url, format!("not JSON: {e}")))?;
    let field = |name: &str| {
        doc.get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| document_error(&discovery_url, format!("no {name:?} string")))
    };
    let issuer = field("issuer")?;
    if issuer.trim_end_matches('/') != base {
        return Err(document_error(
            &discovery_url,
            format!("issuer {issuer:?} is not the URL asked for ({issuer_url:?})"),
        ));
    }
    let jwks_uri = field("jwks_uri")?;
    let set = jwk_set_from_jwks(&fetcher.get(jwks_uri).await?, jwks_uri)?;
    Ok(LoadedKeys { set, issuer: Some(issuer.to_owned()), origin: jwks_uri.to_owned() })
}

/// Checks a URL keys may be fetched from: HTTPS anywhere, plain HTTP only to a loopback address, because keys
/// fetched over an unprotected network could be anyone's.
pub fn check_url(url: &str) -> Result<Uri, TokenCliError> {
    let invalid = |message: &str| TokenCliError::Url { url: url.to_owned(), message: message.to_owned() };
    let uri: Uri = url.parse().map_err(|_| invalid("not a valid absolute URL"))?;
    let host = uri.host().ok_or_else(|| invalid("not a valid absolute URL"))?;
    match uri.scheme_str() {
        Some("https") => Ok(uri),
        Some("http") => {
            if crate::tls::is_loopback_host(host) {
                Ok(uri)
            } else {
                Err(invalid("plain HTTP is only allowed to a loopback address; use https"))
            }
        }
        _ => Err(invalid("the scheme must be https (or http to a loopback address)")),
    }
}

type HttpsClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// A small HTTP(S) client for the key documents: no redirects, a size limit and a timeout per document.
struct Fetcher {
    client: HttpsClient,
    /// False when no --cacert was given and the system has no CA certificates: HTTPS would fail anyway, so it
    /// fails early with a clearer message, while loopback HTTP still works.
    has_roots: bool,
}

impl Fetcher {
    fn new(cacert: Option<&Path>) -> Result<Self, TokenCliError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = || {
            rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
                .with_safe_default_protocol_versions()
                .map_err(|e| TokenCliError::Tls(e.to_string()))
        };
        let (config, has_roots) = match cacert {
            Some(path) => {
                (builder()?.with_root_certificates(roots_from_pem(path)?).with_no_client_auth(), true)
            }
            None => match builder()?.with_native_roots() {
                Ok(b) => (b.with_no_client_auth(), true),
                Err(_) => (
                    builder()?.with_root_certificates(rustls::RootCertStore::empty()).with_no_client_auth(),
                    false,
                ),
            },
        };
        let connector =
            HttpsConnectorBuilder::new().with_tls_config(config).https_or_http().enable_http1().build();
        Ok(Self { client: Client::builder(TokioExecutor::new()).build(connector), has_roots })
    }

    async fn get(&self, url: &str) -> Result<Bytes, TokenCliError> {
        let uri = check_url(url)?;
        if uri.scheme_str() == Some("https") && !self.has_roots {
            return Err(TokenCliError::Url {
                url: url.to_owned(),
                message: "no CA certificates found on this system; pass --cacert".to_owned(),
            });
        }
        let fail = |message: String| TokenCliError::Fetch { url: url.to_owned(), message };
        let request = Request::get(uri)
            .header(header::ACCEPT, "application/json, application/jwk-set+json")
            .header(header::USER_AGENT, concat!("kubectl-agentiam/", env!("CARGO_PKG_VERSION")))
            .body(Empty::new())
            .map_err(|e| fail(e.to_string()))?;
        let fetch = async {
            let response = self.client.request(request).await.map_err(|e| fail(crate::error_chain(&e)))?;
            if response.status() != StatusCode::OK {
                return Err(fail(format!("HTTP status {}", response.status())));
            }
            let body = Limited::new(response.into_body(), MAX_DOCUMENT_BYTES).collect().await;
            body.map(|b| b.to_bytes()).map_err(|e| fail(format!("failed to read the body: {e}")))
        };
        tokio::time::timeout(FETCH_TIMEOUT, fetch)
            .await
            .map_err(|_| fail(format!("no complete response within {}s", FETCH_TIMEOUT.as_secs())))?
    }
}

fn roots_from_pem(path: &Path) -> Result<rustls::RootCertStore, TokenCliError> {
    let pem = read_document(path)?;
    let origin = path.display().to_string();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| document_error(&origin, format!("not PEM certificates: {e}")))?;
        roots.add(cert).map_err(|e| document_error(&origin, format!("unusable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(document_error(&origin, "no CERTIFICATE blocks"));
    }
    Ok(roots)
}

#[cfg(test)]
#[path = "token_tests.rs"]
mod tests;

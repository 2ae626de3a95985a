//! `kubectl agentiam token request|exchange|introspect|revoke`: the token service from the command line, for
//! people and scripts. Agents authenticate with their X.509-SVID as TLS client certificate
//! (`tls_client_auth`); introspection and an administrator's revocation send a Kubernetes token. Tokens are
//! written to the file `--out` names (created 0600), never to the terminal unless `--out -` asks for it.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;

use super::token::TokenArg;
use crate::oauth::metadata::{
    GRANT_CLIENT_CREDENTIALS, GRANT_TOKEN_EXCHANGE, INTROSPECT_PATH, REVOKE_PATH, TOKEN_PATH,
};
use crate::oauth::request::TOKEN_TYPE_JWT;

/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer read.
const MAX_ANSWER: usize = 256 * 1024;

/// Where the token service is.
#[derive(clap::Args, Debug, Clone)]
pub struct Server {
    /// The operator's issuer URL (its HTTPS API), e.g. `https://agentiam.agentiam-system.svc`.
    #[arg(long, value_name = "URL")]
    pub issuer_url: String,
    /// PEM CA certificate(s) the API's certificate chains to (the ConfigMap agentiam-api-ca, or api-ca.crt in
    /// a pod's trust bundle), instead of the system roots.
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
}

/// The agent's X.509-SVID, for mutual TLS.
#[derive(clap::Args, Debug, Clone)]
pub struct AgentKey {
    /// The agent's X.509-SVID chain (svid.pem of its credentials).
    #[arg(long, value_name = "FILE")]
    pub cert: PathBuf,
    /// Its private key (svid-key.pem).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
}

/// `token request`.
#[derive(clap::Args, Debug, Clone)]
pub struct RequestArgs {
    /// The token service.
    #[command(flatten)]
    pub server: Server,
    /// The agent's X.509-SVID.
    #[command(flatten)]
    pub agent: AgentKey,
    /// A scope the task needs, `<action>@<resource pattern>` (repeatable).
    #[arg(long = "scope", required = true)]
    pub scopes: Vec<String>,
    /// The one service the token is for (one of the agent's audiences).
    #[arg(long)]
    pub resource: String,
    /// The task id, copied into the token.
    #[arg(long)]
    pub task: Option<String>,
    /// Where to write the token ("-": stdout).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// `token exchange`.
#[derive(clap::Args, Debug, Clone)]
pub struct ExchangeArgs {
    /// The token service.
    #[command(flatten)]
    pub server: Server,
    /// The handing agent's X.509-SVID (the holder of the subject token).
    /// The agent's X.509-SVID.
    #[command(flatten)]
    pub agent: AgentKey,
    /// A file with the delegated token to hand on.
    #[arg(long, value_name = "FILE")]
    pub subject_token_file: PathBuf,
    /// A file with the receiving agent's JWT-SVID for the token endpoint. Leave it out when this agent is
    /// the one the subject token's `may_act` names and takes the rights over itself.
    #[arg(long, value_name = "FILE")]
    pub actor_token_file: Option<PathBuf>,
    /// A scope to pass on (repeatable; default: all of the subject token's).
    #[arg(long = "scope")]
    pub scopes: Vec<String>,
    /// The task, in words.
    #[arg(long)]
    pub task: Option<String>,
    /// Where to write the new token ("-": stdout).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// `token introspect`.
#[derive(clap::Args, Debug, Clone)]
pub struct IntrospectArgs {
    /// The token.
    #[command(flatten)]
    pub token: TokenArg,
    /// The token service.
    #[command(flatten)]
    pub server: Server,
    /// A file with your Kubernetes token (e.g. `kubectl create token <serviceaccount>`); it needs the verb
    /// "introspect" on the token's Agent.
    #[arg(long, value_name = "FILE")]
    pub caller_token_file: PathBuf,
}

/// `token revoke`.
#[derive(clap::Args, Debug, Clone)]
pub struct RevokeArgs {
    /// The token.
    #[command(flatten)]
    pub token: TokenArg,
    /// The token service.
    #[command(flatten)]
    pub server: Server,
    /// As an administrator: a file with your Kubernetes token; it needs the verb "revoke" on the token's Agent.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["cert", "key"])]
    pub caller_token_file: Option<PathBuf>,
    /// As the token's holder: the agent's X.509-SVID chain.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// As the token's holder: its private key.
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
}

/// Why a token service command failed. Never contains a token or a key.
#[derive(Debug, thiserror::Error)]
pub enum OAuthCliError {
    /// A file could not be read or written.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The request could not be made.
    #[error("cannot reach {url}: {message}")]
    Http {
        /// The URL.
        url: String,
        /// Why.
        message: String,
    },
    /// The token service refused (its RFC 6749 error).
    #[error("the token service refused ({status}): {error}: {description}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The error code.
        error: String,
        /// Its description.
        description: String,
    },
    /// Bad input before anything was sent.
    #[error("{0}")]
    Input(String),
}

fn read(path: &Path) -> Result<Vec<u8>, OAuthCliError> {
    std::fs::read(path).map_err(|e| OAuthCliError::File { path: path.to_owned(), message: e.to_string() })
}

fn read_text(path: &Path) -> Result<String, OAuthCliError> {
    let bytes = read(path)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| OAuthCliError::File { path: path.to_owned(), message: "not UTF-8".into() })?;
    Ok(text.trim().to_owned())
}

/// The SPIFFE ID in the leaf's URI SAN: the agent's client_id.
fn spiffe_id_of(chain: &[CertificateDer<'static>]) -> Result<String, OAuthCliError> {
    let leaf = chain
        .first()
        .ok_or_else(|| OAuthCliError::Input("the certificate file holds no certificate".into()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|_| OAuthCliError::Input("the certificate cannot be parsed".into()))?;
    let san = cert.subject_alternative_name().ok().flatten();
    san.and_then(|s| {
        s.value.general_names.iter().find_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) if u.starts_with("spiffe://") => {
                Some((*u).to_owned())
            }
            _ => None,
        })
    })
    .ok_or_else(|| {
        OAuthCliError::Input("the certificate names no SPIFFE ID: is it an agent's svid.pem?".into())
    })
}

type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// An HTTPS client trusting `cacert` (or the system roots), presenting `identity` if given.
fn client(
    cacert: Option<&Path>,
    identity: Option<&AgentKey>,
) -> Result<(HttpsClient, Option<String>), OAuthCliError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| OAuthCliError::Input(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    match cacert {
        Some(path) => {
            for cert in CertificateDer::pem_slice_iter(&read(path)?) {
                let cert = cert.map_err(|e| OAuthCliError::File {
                    path: path.to_owned(),
                    message: format!("not PEM: {e}"),
                })?;
                roots
                    .add(cert)
                    .map_err(|e| OAuthCliError::File { path: path.to_owned(), message: e.to_string() })?;
            }
        }
        None => {
            for cert in rustls_native_certs().unwrap_or_default() {
                let _ = roots.add(cert);
            }
        }
    }
    let builder = builder.with_root_certificates(roots);
    let (config, client_id) = match identity {
        None => (builder.with_no_client_auth(), None),
        Some(agent) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(&agent.cert)?)
                .collect::<Result<_, _>>()
                .map_err(|_| OAuthCliError::File {
                    path: agent.cert.clone(),
                    message: "not PEM certificates".into(),
                })?;
            let id = spiffe_id_of(&chain)?;
            let key = PrivateKeyDer::from_pem_slice(&read(&agent.key)?).map_err(|_| OAuthCliError::File {
                path: agent.key.clone(),
                message: "not a PEM private key".into(),
            })?;
            let config = builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| OAuthCliError::Input(format!("the key does not fit the certificate: {e}")))?;
            (config, Some(id))
        }
    };
    let connector = HttpsConnectorBuilder::new().with_tls_config(config).https_only().enable_http1().build();
    Ok((Client::builder(TokioExecutor::new()).build(connector), client_id))
}

/// The system's CA certificates, if the platform verifier finds any.
fn rustls_native_certs() -> Option<Vec<CertificateDer<'static>>> {
    let path = ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
    let pem = std::fs::read(path).ok()?;
    Some(CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok).collect())
}

/// POSTs `form` to `path` of the issuer URL; the JSON answer, or the service's refusal.
async fn post(
    client: &HttpsClient,
    server: &Server,
    path: &str,
    form: &[(&str, &str)],
    bearer: Option<&str>,
) -> Result<Value, OAuthCliError> {
    let base = server.issuer_url.trim_end_matches('/');
    if !base.starts_with("https://") {
        return Err(OAuthCliError::Input(
            "--issuer-url must be https:// (the token service serves only TLS)".into(),
        ));
    }
    let url = format!("{base}{path}");
    let http = |message: String| OAuthCliError::Http { url: url.clone(), message };
    let body = url::form_urlencoded_pairs(form);
    let mut request = Request::post(&url)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::USER_AGENT, concat!("kubectl-agentiam/", env!("CARGO_PKG_VERSION")));
    if let Some(b) = bearer {
        request = request.header(header::AUTHORIZATION, format!("Bearer {b}"));
    }
    let request = request.body(Full::new(Bytes::from(body))).map_err(|e| http(e.to_string()))?;
    let exchange = async {
        let response = client.request(request).await.map_err(|e| http(chain(&e)))?;
        let status = response.status().as_u16();
        let bytes = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| http(format!("failed to read the answer: {e}")))?
            .to_bytes();
        let answer: Value =
            serde_json::from_slice(&bytes).map_err(|_| http(format!("HTTP {status}: not JSON")))?;
        if status != 200 {
            let field = |k: &str| answer.get(k).and_then(Value::as_str).unwrap_or("unknown").to_owned();
            return Err(OAuthCliError::Refused {
                status,
                error: field("error"),
                description: field("error_description"),
            });
        }
        Ok(answer)
    };
    tokio::time::timeout(TIMEOUT, exchange).await.map_err(|_| http("no answer in time".into()))?
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    message
}

/// Writes the answer's token where `out` says and returns the summary to print.
fn deliver(answer: &Value, out: &Path) -> Result<String, OAuthCliError> {
    let token = answer
        .get("access_token")
        .and_then(Value::as_str)
        .ok_or_else(|| OAuthCliError::Input("the answer holds no token".into()))?;
    let scope = answer.get("scope").and_then(Value::as_str).unwrap_or_default();
    let expires = answer.get("expires_in").and_then(Value::as_u64).unwrap_or_default();
    if out == Path::new("-") {
        return Ok(format!("{token}\n"));
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(out)
        .map_err(|e| OAuthCliError::File { path: out.to_owned(), message: e.to_string() })?;
    file.write_all(token.as_bytes())
        .map_err(|e| OAuthCliError::File { path: out.to_owned(), message: e.to_string() })?;
    Ok(format!("token written to {} (scope: {scope}; expires in {expires}s)\n", out.display()))
}

/// `token request`: client_credentials with mutual TLS.
pub async fn request(args: RequestArgs) -> Result<String, OAuthCliError> {
    let (client, id) = client(args.server.cacert.as_deref(), Some(&args.agent))?;
    let id = id.unwrap_or_default();
    let scope = args.scopes.join(" ");
    let mut form = vec![
        ("grant_type", GRANT_CLIENT_CREDENTIALS),
        ("client_id", id.as_str()),
        ("scope", scope.as_str()),
        ("resource", args.resource.as_str()),
    ];
    if let Some(t) = &args.task {
        form.push(("task", t.as_str()));
    }
    let answer = post(&client, &args.server, TOKEN_PATH, &form, None).await?;
    deliver(&answer, &args.out)
}

/// `token exchange`: RFC 8693 with mutual TLS as the subject token's holder.
pub async fn exchange(args: ExchangeArgs) -> Result<String, OAuthCliError> {
    let (client, id) = client(args.server.cacert.as_deref(), Some(&args.agent))?;
    let id = id.unwrap_or_default();
    let subject = read_text(&args.subject_token_file)?;
    let actor = args.actor_token_file.as_deref().map(read_text).transpose()?;
    let scope = args.scopes.join(" ");
    let mut form = vec![
        ("grant_type", GRANT_TOKEN_EXCHANGE),
        ("client_id", id.as_str()),
        ("subject_token", subject.as_str()),
        ("subject_token_type", TOKEN_TYPE_JWT),
    ];
    if let Some(actor) = &actor {
        form.extend([("actor_token", actor.as_str()), ("actor_token_type", TOKEN_TYPE_JWT)]);
    }
    if !scope.is_empty() {
        form.push(("scope", scope.as_str()));
    }
    if let Some(t) = &args.task {
        form.push(("task", t.as_str()));
    }
    let answer = post(&client, &args.server, TOKEN_PATH, &form, None).await?;
    deliver(&answer, &args.out)
}

/// `token introspect`: prints the answer (which holds no token).
pub async fn introspect(args: IntrospectArgs, token: String) -> Result<String, OAuthCliError> {
    let (client, _) = client(args.server.cacert.as_deref(), None)?;
    let caller = read_text(&args.caller_token_file)?;
    let answer =
        post(&client, &args.server, INTROSPECT_PATH, &[("token", token.as_str())], Some(&caller)).await?;
    Ok(format!("{}\n", serde_json::to_string_pretty(&answer).unwrap_or_default()))
}

/// `token revoke`: as an administrator (Kubernetes token) or as the holder (its X.509-SVID).
pub async fn revoke(args: RevokeArgs, token: String) -> Result<String, OAuthCliError> {
    let form = |id: Option<&str>| {
        let mut f = vec![("token", token.clone()), ("token_type_hint", "access_token".to_owned())];
        if let Some(id) = id {
            f.push(("client_id", id.to_owned()));
        }
        f
    };
    let answer = match (&args.caller_token_file, &args.cert, &args.key) {
        (Some(file), _, _) => {
            let (client, _) = client(args.server.cacert.as_deref(), None)?;
            let caller = read_text(file)?;
            let f = form(None);
            let pairs: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
            post(&client, &args.server, REVOKE_PATH, &pairs, Some(&caller)).await?
        }
        (None, Some(cert), Some(key)) => {
            let agent = AgentKey { cert: cert.clone(), key: key.clone() };
            let (client, id) = client(args.server.cacert.as_deref(), Some(&agent))?;
            let f = form(id.as_deref());
            let pairs: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
            post(&client, &args.server, REVOKE_PATH, &pairs, None).await?
        }
        _ => {
            return Err(OAuthCliError::Input(
                "say who revokes: --caller-token-file (an administrator) or --cert and --key (the holder)"
                    .into(),
            ));
        }
    };
    drop(answer);
    Ok("revoked (a token that was not valid is answered the same, RFC 7009)\n".into())
}

mod url {
    /// `application/x-www-form-urlencoded` of `pairs`.
    pub fn form_urlencoded_pairs(pairs: &[(&str, &str)]) -> String {
        pairs.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect::<Vec<_>>().join("&")
    }

    fn encode(s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        for b in s.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    out.push(char::from(b))
                }
                b' ' => out.push('+'),
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
        out
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn forms_are_encoded_as_the_token_endpoint_reads_them() {
            let body = super::form_urlencoded_pairs(&[("scope", "read@crm:contacts/* x"), ("a", "é&=")]);
            let form = crate::oauth::Form::parse(body.as_bytes()).unwrap();
            assert_eq!(form.get("scope"), Some("read@crm:contacts/* x"));
            assert_eq!(form.get("a"), Some("é&="));
        }
    }
}

//! The issuer's public documents over HTTP: OIDC discovery, the JWKS and the SPIFFE trust bundle.
//!
//! Every response is rendered from the issuer snapshot current at the time of the request, so a rotation is
//! visible on the next request without any locking. Relying parties poll these documents, so each carries
//! `Cache-Control: public, max-age=N` with N from [`Issuer::cache_max_age`] (no cache outlives the moment
//! the next key starts signing) and a strong `ETag` over the exact body, so a poll after the cache expires
//! costs a 304 when nothing changed.

use std::sync::Arc;

use aws_lc_rs::digest;
use axum::Router;
use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jiff::Timestamp;
use serde_json::Value;

use crate::identity::bundle::JWKS_PATH;
use crate::identity::issuer::{Issuer, IssuerReceiver};

/// Path of the OIDC discovery document, relative to the issuer URL (OpenID Connect Discovery 1.0, section 4).
pub const OPENID_CONFIGURATION_PATH: &str = "/.well-known/openid-configuration";
/// Path of the SPIFFE trust bundle (JWT-SVID keys and the X.509 CA).
pub const BUNDLE_PATH: &str = "/v1/bundle";
/// Media type of a JWK Set (RFC 7517, section 8.5.1).
pub const JWK_SET_CONTENT_TYPE: &str = "application/jwk-set+json";
/// Media type of the discovery document and the SPIFFE bundle.
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// The routes serving the issuer documents, reading the current snapshot from `issuer` on every request.
/// Only GET and HEAD are routed; axum answers other methods with 405 and an `Allow` header.
pub fn routes(issuer: IssuerReceiver) -> Router {
    surface(issuer).router()
}

/// [`routes`], with the paths it serves.
pub fn surface(issuer: IssuerReceiver) -> crate::server::Surface {
    crate::server::Routes::new("issuer")
        .route(OPENID_CONFIGURATION_PATH, get(openid_configuration))
        .route(JWKS_PATH, get(jwks))
        .route(BUNDLE_PATH, get(bundle))
        .finish(issuer)
}

/// Takes the current snapshot and releases the watch lock at once, so a slow client never blocks rotation.
fn current(issuer: &IssuerReceiver) -> Arc<Issuer> {
    Arc::clone(&issuer.borrow())
}

async fn openid_configuration(State(issuer): State<IssuerReceiver>, headers: HeaderMap) -> Response {
    let issuer = current(&issuer);
    document(&issuer, &issuer.openid_configuration(), JSON_CONTENT_TYPE, &headers)
}

async fn jwks(State(issuer): State<IssuerReceiver>, headers: HeaderMap) -> Response {
    let issuer = current(&issuer);
    document(&issuer, &issuer.jwks(), JWK_SET_CONTENT_TYPE, &headers)
}

async fn bundle(State(issuer): State<IssuerReceiver>, headers: HeaderMap) -> Response {
    let issuer = current(&issuer);
    match issuer.spiffe_bundle() {
        Ok(doc) => document(&issuer, &doc, JSON_CONTENT_TYPE, &headers),
        Err(e) => {
            // The error names a certificate by position only; still, clients get a fixed message and the
            // details stay in the operator's log.
            tracing::error!(error = %e, reason = e.metric_label(), "failed to build the SPIFFE trust bundle");
            internal_error("failed to build the trust bundle\n")
        }
    }
}

/// A 200 with the document, or a 304 when the client already holds this exact body.
pub(crate) fn document(
    issuer: &Issuer,
    doc: &Value,
    content_type: &'static str,
    headers: &HeaderMap,
) -> Response {
    let Ok(body) = serde_json::to_vec(doc) else {
        return internal_error("failed to render the document\n");
    };
    let etag = entity_tag(&body);
    let max_age = issuer.cache_max_age(Timestamp::now()).as_secs();
    // Both values are ASCII built from digits and base64url characters, so they are always valid headers.
    let (Ok(etag_value), Ok(cache_control)) =
        (HeaderValue::from_str(&etag), HeaderValue::from_str(&format!("public, max-age={max_age}")))
    else {
        return internal_error("failed to render the document\n");
    };
    // RFC 9110 section 15.4.5: a 304 repeats the ETag and Cache-Control a 200 would have carried.
    let mut response = if if_none_match(headers, &etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut ok = body.into_response();
        ok.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        ok
    };
    response.headers_mut().insert(ETAG, etag_value);
    response.headers_mut().insert(CACHE_CONTROL, cache_control);
    response
}

fn internal_error(message: &'static str) -> Response {
    let mut response = (StatusCode::INTERNAL_SERVER_ERROR, message).into_response();
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A strong entity tag: the quoted base64url SHA-256 of the body. Strong because the body is byte-for-byte
/// determined by the snapshot (serde_json writes object keys in a fixed order), and derived from the bytes
/// rather than from `spiffe_sequence` so the tag of every document changes exactly when its body does.
pub(crate) fn entity_tag(body: &[u8]) -> String {
    format!("\"{}\"", URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, body)))
}

/// Whether `If-None-Match` names `etag` (or is `*`). RFC 9110 section 13.1.2 requires the weak comparison
/// here, so `W/"x"` matches `"x"`. Several header lines and comma-separated lists are both allowed; a header
/// that is not visible ASCII matches nothing, which only costs the client a full response.
pub(crate) fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|list| list.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::{Body, to_bytes};
    use axum::http::{Method, Request};
    use jiff::SignedDuration;
    use tower::ServiceExt;

    use super::*;
    use crate::identity::TrustDomain;
    use crate::identity::issuer::{IssuerSender, channel};
    use crate::identity::keys::{KeySet, RotationPolicy};
    use crate::identity::x509::{CertificateAuthority, DEFAULT_CA_VALIDITY};

    const ISSUER_URL: &str = "https://issuer.example.org";

    /// An issuer whose current key started signing `age` ago.
    fn issuer(period: Duration, age: SignedDuration, sequence: u64) -> Issuer {
        let now = Timestamp::now();
        let td = TrustDomain::parse("example.org").unwrap();
        Issuer {
            keys: KeySet::generate(now.checked_sub(age).unwrap()).unwrap(),
            ca: Arc::new(CertificateAuthority::generate(&td, DEFAULT_CA_VALIDITY, now).unwrap()),
            issuer_url: ISSUER_URL.into(),
            trust_domain: td,
            policy: RotationPolicy { rotation_period: period, ..RotationPolicy::default() },
            sequence,
        }
    }

    fn daily() -> (IssuerSender, IssuerReceiver) {
        channel(issuer(Duration::from_secs(86_400), SignedDuration::ZERO, 1))
    }

    async fn send(rx: &IssuerReceiver, method: Method, path: &str, inm: Option<&str>) -> Response {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(tag) = inm {
            request = request.header(IF_NONE_MATCH, tag);
        }
        routes(rx.clone()).oneshot(request.body(Body::empty()).unwrap()).await.unwrap()
    }

    async fn get(rx: &IssuerReceiver, path: &str) -> (Response, Value) {
        let response = send(rx, Method::GET, path, None).await;
        let (parts, body) = response.into_parts();
        let bytes = to_bytes(body, 1 << 20).await.unwrap();
        let value = serde_json::from_slice(&bytes).unwrap();
        (Response::from_parts(parts, Body::empty()), value)
    }

    fn header<'a>(response: &'a Response, name: &str) -> &'a str {
        response.headers().get(name).unwrap().to_str().unwrap()
    }

    #[tokio::test]
    async fn each_document_matches_the_issuer_with_its_type_and_cache_headers() {
        let (_tx, rx) = daily();
        let snapshot = Arc::clone(&rx.borrow());
        let cases = [
            (OPENID_CONFIGURATION_PATH, snapshot.openid_configuration(), JSON_CONTENT_TYPE),
            (JWKS_PATH, snapshot.jwks(), JWK_SET_CONTENT_TYPE),
            (BUNDLE_PATH, snapshot.spiffe_bundle().unwrap(), JSON_CONTENT_TYPE),
        ];
        for (path, want, content_type) in cases {
            let (response, body) = get(&rx, path).await;
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            assert_eq!(body, want, "{path}");
            assert_eq!(header(&response, "content-type"), content_type, "{path}");
            // Daily rotation just started: the 300 s refresh cap applies.
            assert_eq!(header(&response, "cache-control"), "public, max-age=300", "{path}");
            let etag = header(&response, "etag");
            assert!(etag.starts_with('"') && etag.ends_with('"') && etag.len() == 45, "{path}: {etag}");
        }
    }

    #[tokio::test]
    async fn max_age_shrinks_before_the_next_key_signs() {
        let age = SignedDuration::from_secs(590);
        let (_tx, rx) = channel(issuer(Duration::from_secs(600), age, 1));
        let (response, _) = get(&rx, JWKS_PATH).await;
        let cache = header(&response, "cache-control");
        let seconds: u64 = cache.strip_prefix("public, max-age=").unwrap().parse().unwrap();
        assert!((9..=10).contains(&seconds), "{cache}");
        let (_tx, overdue) = channel(issuer(Duration::from_secs(600), SignedDuration::from_secs(900), 1));
        let (response, _) = get(&overdue, JWKS_PATH).await;
        assert_eq!(header(&response, "cache-control"), "public, max-age=0");
    }

    #[tokio::test]
    async fn matching_etag_gets_304_with_the_cache_headers_and_no_body() {
        let (_tx, rx) = daily();
        for path in [OPENID_CONFIGURATION_PATH, JWKS_PATH, BUNDLE_PATH] {
            let (first, _) = get(&rx, path).await;
            let etag = header(&first, "etag").to_owned();
            for inm in [etag.clone(), format!("W/{etag}"), format!("\"other\", {etag}"), "*".to_owned()] {
                let response = send(&rx, Method::GET, path, Some(&inm)).await;
                assert_eq!(response.status(), StatusCode::NOT_MODIFIED, "{path} {inm}");
                assert_eq!(header(&response, "etag"), etag);
                assert_eq!(header(&response, "cache-control"), "public, max-age=300");
                assert!(to_bytes(response.into_body(), 1024).await.unwrap().is_empty());
            }
            let response = send(&rx, Method::GET, path, Some("\"stale\"")).await;
            assert_eq!(response.status(), StatusCode::OK, "{path}");
        }
    }

    #[tokio::test]
    async fn head_is_allowed_and_other_methods_are_not() {
        let (_tx, rx) = daily();
        let head = send(&rx, Method::HEAD, JWKS_PATH, None).await;
        assert_eq!(head.status(), StatusCode::OK);
        assert_eq!(header(&head, "content-type"), JWK_SET_CONTENT_TYPE);
        assert!(head.headers().contains_key("etag"));
        assert!(to_bytes(head.into_body(), 1024).await.unwrap().is_empty());
        for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
            for path in [OPENID_CONFIGURATION_PATH, JWKS_PATH, BUNDLE_PATH] {
                let response = send(&rx, method.clone(), path, None).await;
                assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
                assert!(header(&response, "allow").contains("GET"));
            }
        }
        assert_eq!(send(&rx, Method::GET, "/v1/other", None).await.status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn rotation_changes_the_body_and_the_etag() {
        let (tx, rx) = daily();
        let (before, jwks_before) = get(&rx, JWKS_PATH).await;
        let (bundle_before, _) = get(&rx, BUNDLE_PATH).await;
        let (discovery_before, _) = get(&rx, OPENID_CONFIGURATION_PATH).await;
        let old_etag = header(&before, "etag").to_owned();

        let mut rotated = issuer(Duration::from_secs(86_400), SignedDuration::ZERO, 2);
        rotated.keys.emergency_rotate(Timestamp::now()).unwrap();
        tx.send(Arc::new(rotated)).unwrap();

        let (after, jwks_after) = get(&rx, JWKS_PATH).await;
        assert_ne!(jwks_after, jwks_before);
        assert_eq!(jwks_after, rx.borrow().jwks());
        assert_ne!(header(&after, "etag"), old_etag);
        let stale = send(&rx, Method::GET, JWKS_PATH, Some(&old_etag)).await;
        assert_eq!(stale.status(), StatusCode::OK, "an old ETag must not get a 304 after rotation");
        let (bundle_after, bundle) = get(&rx, BUNDLE_PATH).await;
        assert_eq!(bundle["spiffe_sequence"], 2);
        assert_ne!(header(&bundle_after, "etag"), header(&bundle_before, "etag"));
        // The discovery document does not depend on the keys, so its tag survives rotation.
        let (discovery_after, _) = get(&rx, OPENID_CONFIGURATION_PATH).await;
        assert_eq!(header(&discovery_after, "etag"), header(&discovery_before, "etag"));
    }

    #[tokio::test]
    async fn the_operator_router_serves_probes_and_documents_together() {
        let (_tx, rx) = daily();
        let app = crate::server::router_with(crate::server::Health::default(), Some(rx), None);
        for (path, status) in [("/healthz", StatusCode::OK), (JWKS_PATH, StatusCode::OK)] {
            let request = Request::get(path).body(Body::empty()).unwrap();
            assert_eq!(app.clone().oneshot(request).await.unwrap().status(), status, "{path}");
        }
        let without = crate::server::router_with(crate::server::Health::default(), None, None);
        let request = Request::get(JWKS_PATH).body(Body::empty()).unwrap();
        assert_eq!(without.oneshot(request).await.unwrap().status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn if_none_match_parsing() {
        let tag = "\"abc\"";
        let headers = |values: &[&str]| {
            let mut map = HeaderMap::new();
            for v in values {
                map.append(IF_NONE_MATCH, HeaderValue::from_str(v).unwrap());
            }
            map
        };
        assert!(if_none_match(&headers(&["\"abc\""]), tag));
        assert!(if_none_match(&headers(&["W/\"abc\""]), tag));
        assert!(if_none_match(&headers(&["\"x\" ,  \"abc\""]), tag));
        assert!(if_none_match(&headers(&["\"x\"", "\"abc\""]), tag));
        assert!(if_none_match(&headers(&["*"]), tag));
        assert!(!if_none_match(&headers(&["abc"]), tag), "unquoted is not the same tag");
        assert!(!if_none_match(&headers(&["\"abcd\""]), tag));
        assert!(!if_none_match(&HeaderMap::new(), tag));
    }
}

//! The AdmissionReview layer every webhook shares: decoding (content type, size, JSON, the review itself),
//! typed access to the object, dry-run, and building the answer from a [`Verdict`]. The webhooks themselves
//! are pure functions from a typed request to a verdict ([`super::pods`], [`super::validate`]), in the style of
//! linkerd's policy-controller `admission.rs`.
//!
//! Fail closed: anything unreadable is refused, as a denial when the request's UID can be recovered and as
//! HTTP 400 otherwise (which the API server, under `failurePolicy: Fail`, also turns into a refusal).

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tracing::warn;

/// Larger request bodies are refused (413). The API server caps objects well below this for ordinary pods
/// and agentiam objects.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What a webhook decided about one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Admit unchanged; the warnings are shown to the client (kubectl prints them).
    Allow {
        /// Warnings for the requester, e.g. a spec that will not validate.
        warnings: Vec<String>,
    },
    /// Refuse with this message (HTTP 403 in the answer's status).
    Deny(String),
    /// Admit with this JSON patch (mutating webhooks only).
    Patch(json_patch::Patch),
}

impl Verdict {
    /// Admit unchanged, without warnings.
    pub fn allow() -> Self {
        Self::Allow { warnings: Vec::new() }
    }

    /// Whether the request is admitted.
    pub fn allowed(&self) -> bool {
        !matches!(self, Self::Deny(_))
    }
}

/// One decoded AdmissionReview: the typed request and the raw JSON of its objects, so each webhook reads
/// the object as the type it knows (and decides itself what an unreadable one means).
#[derive(Debug)]
pub struct Review {
    /// The request, with its objects as dynamic objects.
    pub request: AdmissionRequest<DynamicObject>,
    object: Value,
    old_object: Value,
}

impl Review {
    /// `request.object` as `K`: None when absent (DELETE), `Err` when it does not read as `K`.
    pub fn object<K: DeserializeOwned>(&self) -> Option<Result<K, serde_json::Error>> {
        typed(&self.object)
    }

    /// `request.oldObject` as `K`: None when absent (CREATE), `Err` when it does not read as `K`.
    pub fn old_object<K: DeserializeOwned>(&self) -> Option<Result<K, serde_json::Error>> {
        typed(&self.old_object)
    }

    /// The raw `request.object` (JSON null when absent).
    pub fn object_json(&self) -> &Value {
        &self.object
    }

    /// The raw `request.oldObject` (JSON null when absent).
    pub fn old_object_json(&self) -> &Value {
        &self.old_object
    }

    /// Whether the request is a dry run: nothing it causes may be persisted, audit records included.
    pub fn dry_run(&self) -> bool {
        self.request.dry_run
    }

    /// The answer to this review.
    pub fn respond(&self, verdict: Verdict) -> AdmissionReview<DynamicObject> {
        match verdict {
            Verdict::Allow { warnings } => {
                let mut response = AdmissionResponse::from(&self.request);
                if !warnings.is_empty() {
                    response.warnings = Some(warnings);
                }
                response.into_review()
            }
            Verdict::Deny(message) => deny(&self.request, message),
            Verdict::Patch(patch) => match AdmissionResponse::from(&self.request).with_patch(patch) {
                Ok(response) => response.into_review(),
                Err(e) => deny(&self.request, format!("agentiam could not encode the patch: {e}")),
            },
        }
    }
}

fn typed<K: DeserializeOwned>(value: &Value) -> Option<Result<K, serde_json::Error>> {
    (!value.is_null()).then(|| serde_json::from_value(value.clone()))
}

/// A body that cannot be answered as a review.
#[derive(Debug)]
pub enum Unanswerable {
    /// No UID to answer to: the caller sends HTTP 400 with this reason.
    BadRequest(&'static str),
    /// The UID is known but the review is not readable: this refusal is the answer.
    Refused(Box<AdmissionReview<DynamicObject>>),
}

/// Decodes one AdmissionReview body.
///
/// # Errors
/// [`Unanswerable`] when the body is not a readable review.
pub fn decode(body: &[u8]) -> Result<Review, Unanswerable> {
    let raw: Value =
        serde_json::from_slice(body).map_err(|_| Unanswerable::BadRequest("request body is not JSON"))?;
    let uid = raw.pointer("/request/uid").and_then(Value::as_str).map(str::to_owned);
    let review: AdmissionReview<DynamicObject> = match serde_json::from_value(raw.clone()) {
        Ok(review) => review,
        Err(e) => {
            let uid = uid.ok_or(Unanswerable::BadRequest("request body is not an AdmissionReview"))?;
            let message = format!("agentiam could not read the admission request: {e}");
            return Err(Unanswerable::Refused(Box::new(refuse(uid, message))));
        }
    };
    let request: AdmissionRequest<DynamicObject> =
        review.try_into().map_err(|_| Unanswerable::BadRequest("the AdmissionReview has no request"))?;
    let pick = |pointer: &str| raw.pointer(pointer).cloned().unwrap_or(Value::Null);
    Ok(Review { object: pick("/request/object"), old_object: pick("/request/oldObject"), request })
}

/// Whether the request says it carries JSON.
pub fn is_json(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| {
        v.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
    })
}

/// The HTTP answer for a body that is not JSON, or not a review: what every webhook route does before its
/// own logic. `Ok` is the decoded review.
///
/// # Errors
/// The HTTP response to send instead.
pub fn read(webhook: &'static str, headers: &HeaderMap, body: &Bytes) -> Result<Review, Box<Response>> {
    if !is_json(headers) {
        return Err(Box::new(
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, "expected application/json\n").into_response(),
        ));
    }
    decode(body).map_err(|e| {
        Box::new(match e {
            Unanswerable::BadRequest(why) => {
                warn!(webhook, reason = why, "refused an unreadable admission request");
                (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response()
            }
            Unanswerable::Refused(review) => axum::Json(*review).into_response(),
        })
    })
}

/// A refusal of `request` with `message` (code 403, reason Forbidden).
pub fn deny(request: &AdmissionRequest<DynamicObject>, message: String) -> AdmissionReview<DynamicObject> {
    let mut response = AdmissionResponse::from(request).deny(message);
    response.result.code = 403;
    response.result.reason = "Forbidden".to_owned();
    response.into_review()
}

fn refuse(uid: String, message: String) -> AdmissionReview<DynamicObject> {
    let mut response = AdmissionResponse::invalid(message);
    response.uid = uid;
    response.into_review()
}

//! The issuer: one immutable snapshot of everything needed to issue and verify credentials (key set, CA,
//! issuer URL, trust domain, rotation policy) and the documents published from it. A new snapshot replaces
//! the old one on every rotation, through a `tokio::sync::watch` channel, so readers (the credentials
//! controller, the HTTP endpoints, the trust-bundle publisher) never lock and always see a consistent set.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use jsonwebtoken::jwk::JwkSet;
use serde_json::Value;
use tokio::sync::watch;

use crate::identity::TrustDomain;
use crate::identity::bundle::{self, BundleError};
use crate::identity::keys::{JwkUse, KeySet, RotationPolicy};
use crate::identity::verify::{JwtVerifier, VerifierConfig, VerifierError};
use crate::identity::x509::CertificateAuthority;

/// The longest time clients may cache the published documents. Short enough that a verifier picks up an
/// emergency rotation within minutes even if it ignores `spiffe_refresh_hint`.
pub const MAX_DOCUMENT_CACHE: Duration = Duration::from_secs(300);

/// One consistent issuer state.
#[derive(Debug)]
pub struct Issuer {
    /// The signing keys (next, current, previous).
    pub keys: KeySet,
    /// The X.509 CA.
    pub ca: Arc<CertificateAuthority>,
    /// The `iss` of every JWT-SVID, and the base of the OIDC discovery URL.
    pub issuer_url: String,
    /// The SPIFFE trust domain.
    pub trust_domain: TrustDomain,
    /// Key rotation schedule.
    pub policy: RotationPolicy,
    /// Increases with every change of published content (the SPIFFE bundle's `spiffe_sequence`).
    pub sequence: u64,
}

impl Issuer {
    /// The JWKS served at `/keys` (every published key, `use: sig`).
    pub fn jwks(&self) -> Value {
        bundle::jwks(self.keys.published())
    }

    /// The published keys as a typed set, for building verifiers.
    pub fn jwk_set(&self) -> JwkSet {
        JwkSet { keys: self.keys.published().map(|k| k.public_jwk_for(JwkUse::JwtSvid)).collect() }
    }

    /// The SPIFFE trust bundle: JWT-SVID keys and the X.509 CA.
    pub fn spiffe_bundle(&self) -> Result<Value, BundleError> {
        let ca = vec![self.ca.cert_der().to_vec()];
        bundle::spiffe_bundle(self.keys.published(), &ca, self.refresh_hint(), self.sequence)
    }

    /// The OIDC discovery document.
    pub fn openid_configuration(&self) -> Value {
        bundle::openid_configuration(&self.issuer_url)
    }

    /// How often relying parties should refetch the bundle: a fraction of the rotation period, and never
    /// longer than [`MAX_DOCUMENT_CACHE`].
    pub fn refresh_hint(&self) -> Duration {
        (self.policy.rotation_period / 4).min(MAX_DOCUMENT_CACHE)
    }

    /// `Cache-Control: max-age` for the published documents at `now`: the refresh hint, shortened so that no
    /// cache outlives the moment the next key starts signing.
    pub fn cache_max_age(&self, now: Timestamp) -> Duration {
        let until_rotation = self.keys.next_rotation_at(&self.policy).duration_since(now);
        let until_rotation = Duration::try_from(until_rotation).unwrap_or(Duration::ZERO);
        self.refresh_hint().min(until_rotation)
    }

    /// A strict verifier over the published keys.
    pub fn verifier(&self) -> Result<JwtVerifier, VerifierError> {
        JwtVerifier::new(
            VerifierConfig::new(self.trust_domain.clone(), self.issuer_url.clone()),
            &self.jwk_set(),
        )
    }
}

/// The sending side, held by the key manager.
pub type IssuerSender = watch::Sender<Arc<Issuer>>;
/// The receiving side, cloned into every reader.
pub type IssuerReceiver = watch::Receiver<Arc<Issuer>>;

/// A channel starting at `issuer`.
pub fn channel(issuer: Issuer) -> (IssuerSender, IssuerReceiver) {
    watch::channel(Arc::new(issuer))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer(period: Duration) -> Issuer {
        let now = Timestamp::UNIX_EPOCH;
        let td = TrustDomain::parse("example.org").unwrap();
        Issuer {
            keys: KeySet::generate(now).unwrap(),
            ca: Arc::new(
                CertificateAuthority::generate(&td, jiff::SignedDuration::from_hours(24 * 30), now).unwrap(),
            ),
            issuer_url: "https://issuer.example.org".into(),
            trust_domain: td,
            policy: RotationPolicy { rotation_period: period, ..RotationPolicy::default() },
            sequence: 7,
        }
    }

    #[test]
    fn documents_publish_every_key_and_the_ca() {
        let i = issuer(Duration::from_secs(86_400));
        assert_eq!(i.jwks()["keys"].as_array().unwrap().len(), 2, "next and current");
        let b = i.spiffe_bundle().unwrap();
        assert_eq!(b["spiffe_sequence"], 7);
        let uses: Vec<&str> =
            b["keys"].as_array().unwrap().iter().map(|k| k["use"].as_str().unwrap()).collect();
        assert_eq!(uses.iter().filter(|u| **u == "jwt-svid").count(), 2);
        assert_eq!(uses.iter().filter(|u| **u == "x509-svid").count(), 1);
        assert_eq!(i.openid_configuration()["jwks_uri"], "https://issuer.example.org/keys");
        assert_eq!(i.verifier().unwrap().key_ids().len(), 2);
    }

    #[test]
    fn caches_expire_before_the_next_key_signs() {
        let i = issuer(Duration::from_secs(600));
        assert_eq!(i.refresh_hint(), Duration::from_secs(150));
        let almost = Timestamp::UNIX_EPOCH.checked_add(jiff::SignedDuration::from_secs(590)).unwrap();
        assert_eq!(i.cache_max_age(almost), Duration::from_secs(10));
        let late = Timestamp::UNIX_EPOCH.checked_add(jiff::SignedDuration::from_secs(900)).unwrap();
        assert_eq!(i.cache_max_age(late), Duration::ZERO);
        assert_eq!(
            issuer(Duration::from_secs(86_400)).cache_max_age(Timestamp::UNIX_EPOCH),
            MAX_DOCUMENT_CACHE
        );
    }
}

//! A cache of tokens that passed [`JwtVerifier::verify_any_audience`] or
//! [`JwtVerifier::verify_delegated`], so a gateway asking about the same
//! token many times pays for one ECDSA verification instead of one per request.
//!
//! Safe because a hit requires the *exact* token bytes that verified before (the hash only picks the slot;
//! the stored token is compared in full), and the time checks (`exp`, `nbf`) are repeated on every hit. A
//! cache belongs to one verifier, i.e. one published key set: on every key change (rotation, emergency
//! rotation) the owner builds a new verifier with an empty cache, so a token signed by a withdrawn key stops
//! verifying at once. Memory is bounded: a full shard first drops expired entries, then everything.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwapOption;
use jiff::{SignedDuration, Timestamp};

use super::issuer::IssuerReceiver;

use super::verify::{HeaderError, JwtVerifier, TokenError, VerifiedAccess, VerifiedDelegated, VerifiedSvid};

const SHARDS: usize = 16;

/// What a cached verification must still satisfy on a hit.
trait Validity {
    fn expires_at(&self) -> Timestamp;
    fn not_before(&self) -> Option<Timestamp>;
}

impl Validity for VerifiedSvid {
    fn expires_at(&self) -> Timestamp {
        self.expires_at
    }

    fn not_before(&self) -> Option<Timestamp> {
        self.not_before
    }
}

impl Validity for VerifiedAccess {
    fn expires_at(&self) -> Timestamp {
        self.expires_at
    }

    // Access tokens are minted with nbf = iat, and the verifier checked iat is not in the future.
    fn not_before(&self) -> Option<Timestamp> {
        self.issued_at
    }
}

impl Validity for VerifiedDelegated {
    fn expires_at(&self) -> Timestamp {
        self.expires_at
    }

    // Delegated tokens are minted with nbf = iat, and the verifier checked iat is not in the future.
    fn not_before(&self) -> Option<Timestamp> {
        self.issued_at
    }
}

#[derive(Debug)]
struct Entry<T> {
    token: Box<str>,
    verified: Arc<T>,
}

/// One kind of token's cache: sharded, bounded, keyed by the exact token.
#[derive(Debug)]
struct Cache<T> {
    per_shard: usize,
    shards: [Mutex<HashMap<u64, Entry<T>>>; SHARDS],
}

impl<T: Validity> Cache<T> {
    fn new(capacity: usize) -> Self {
        Self {
            per_shard: capacity.div_ceil(SHARDS).max(1),
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
        }
    }

    /// The cached verification of exactly `token`, if any (`None` also when it is cached but its time is
    /// up: the error says which check failed).
    fn lookup(
        &self,
        hash: u64,
        token: &str,
        now: Timestamp,
        leeway: SignedDuration,
    ) -> Option<Result<Arc<T>, TokenError>> {
        let shard = self.shards.get(hash as usize % SHARDS)?;
        let map = shard.lock().unwrap_or_else(PoisonError::into_inner);
        let e = map.get(&hash).filter(|e| *e.token == *token)?;
        let verified = Arc::clone(&e.verified);
        drop(map);
        Some(check_time(verified.as_ref(), now, leeway).map(|()| verified))
    }

    fn store(&self, hash: u64, token: &str, verified: T, now: Timestamp) -> Arc<T> {
        let verified = Arc::new(verified);
        if let Some(shard) = self.shards.get(hash as usize % SHARDS) {
            let mut map = shard.lock().unwrap_or_else(PoisonError::into_inner);
            if map.len() >= self.per_shard {
                map.retain(|_, e| e.verified.expires_at() > now);
                if map.len() >= self.per_shard {
                    map.clear();
                }
            }
            map.insert(hash, Entry { token: token.into(), verified: Arc::clone(&verified) });
        }
        verified
    }

    fn get_or_verify(
        &self,
        hash: u64,
        token: &str,
        now: Timestamp,
        leeway: SignedDuration,
        verify: impl FnOnce() -> Result<T, TokenError>,
    ) -> Result<Arc<T>, TokenError> {
        match self.lookup(hash, token, now, leeway) {
            Some(hit) => hit,
            None => Ok(self.store(hash, token, verify()?, now)),
        }
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len()).sum()
    }
}

/// The same time checks as the verifier: a cached token expires exactly when it would have failed.
fn check_time(v: &impl Validity, now: Timestamp, leeway: SignedDuration) -> Result<(), TokenError> {
    let exp = v.expires_at();
    if now >= exp.saturating_add(leeway).unwrap_or(exp) {
        return Err(TokenError::Expired);
    }
    if v.not_before().is_some_and(|nbf| now < nbf.saturating_sub(leeway).unwrap_or(nbf)) {
        return Err(TokenError::NotYetValid);
    }
    Ok(())
}

/// The verifier of the issuer's current key set, with its cache, shared by every endpoint that checks our
/// tokens (the decision API, the token endpoint): rebuilt, with an empty cache, the first time it is
/// asked for after the keys change, so a token signed by a withdrawn key stops verifying at once.
pub struct CurrentVerifier {
    issuer: IssuerReceiver,
    slot: ArcSwapOption<Versioned>,
    rebuild: Mutex<()>,
}

/// A caching verifier for one issuer snapshot.
#[derive(Debug)]
pub struct Versioned {
    /// The snapshot's sequence number.
    pub sequence: u64,
    /// The verifier.
    pub verifier: CachingVerifier,
}

impl std::fmt::Debug for CurrentVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CurrentVerifier").finish_non_exhaustive()
    }
}

impl CurrentVerifier {
    /// The verifier of the keys `issuer` publishes, built when first asked for.
    pub fn new(issuer: IssuerReceiver) -> Self {
        Self { issuer, slot: ArcSwapOption::empty(), rebuild: Mutex::new(()) }
    }

    /// The verifier for the current key set; None (logged) when the published keys make none.
    pub fn get(&self) -> Option<Arc<Versioned>> {
        let sequence = self.issuer.borrow().sequence;
        if let Some(v) = self.slot.load_full().filter(|v| v.sequence == sequence) {
            return Some(v);
        }
        let _one_at_a_time = self.rebuild.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(v) = self.slot.load_full().filter(|v| v.sequence == sequence) {
            return Some(v);
        }
        let issuer = Arc::clone(&self.issuer.borrow());
        let verifier = match issuer.verifier() {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "cannot build a token verifier from the published keys; refusing tokens");
                return None;
            }
        };
        let v = Arc::new(Versioned {
            sequence: issuer.sequence,
            verifier: CachingVerifier::new(verifier, DEFAULT_CAPACITY),
        });
        self.slot.store(Some(Arc::clone(&v)));
        Some(v)
    }
}

/// A verifier with caches of verified tokens: identity tokens and delegated tokens apart, so a token
/// verified as one kind is never served as the other.
#[derive(Debug)]
pub struct CachingVerifier {
    verifier: JwtVerifier,
    leeway: SignedDuration,
    hasher: RandomState,
    svids: Cache<VerifiedSvid>,
    delegated: Cache<VerifiedDelegated>,
    access: Cache<VerifiedAccess>,
}

impl CachingVerifier {
    /// Wraps `verifier`, caching up to about `capacity` tokens of each kind.
    pub fn new(verifier: JwtVerifier, capacity: usize) -> Self {
        let leeway = SignedDuration::try_from(verifier.config().leeway).unwrap_or(SignedDuration::ZERO);
        Self {
            verifier,
            leeway,
            hasher: RandomState::new(),
            svids: Cache::new(capacity),
            delegated: Cache::new(capacity),
            access: Cache::new(capacity),
        }
    }

    /// The wrapped verifier.
    pub fn verifier(&self) -> &JwtVerifier {
        &self.verifier
    }

    /// Verifies `token` for any single audience at `now`, from the cache when this exact token verified
    /// before and is still within its validity.
    pub fn verify_any_audience(&self, token: &str, now: Timestamp) -> Result<Arc<VerifiedSvid>, TokenError> {
        let hash = self.hasher.hash_one(token);
        self.svids
            .get_or_verify(hash, token, now, self.leeway, || self.verifier.verify_any_audience(token, now))
    }

    /// Verifies a delegated token at `now`, cached like [`verify_any_audience`](Self::verify_any_audience).
    pub fn verify_delegated(
        &self,
        token: &str,
        now: Timestamp,
    ) -> Result<Arc<VerifiedDelegated>, TokenError> {
        let hash = self.hasher.hash_one(token);
        self.delegated
            .get_or_verify(hash, token, now, self.leeway, || self.verifier.verify_delegated(token, now))
    }

    /// Verifies a token of any kind at `now`: an identity token (header `typ` `JWT`/`JOSE`), a delegated
    /// one or an access token (each its own `typ`), each checked by its own verifier and cached apart. One
    /// hash and at most three lookups on a hit, so no kind pays a failed verification of another on the
    /// way; on a miss the identity verifier goes first and hands over to the next only for a wrong `typ`.
    pub fn verify_either(&self, token: &str, now: Timestamp) -> Result<Either, TokenError> {
        let hash = self.hasher.hash_one(token);
        if let Some(hit) = self.svids.lookup(hash, token, now, self.leeway) {
            return hit.map(Either::Identity);
        }
        if let Some(hit) = self.delegated.lookup(hash, token, now, self.leeway) {
            return hit.map(Either::Delegated);
        }
        if let Some(hit) = self.access.lookup(hash, token, now, self.leeway) {
            return hit.map(Either::Access);
        }
        match self.verifier.verify_any_audience(token, now) {
            Ok(v) => Ok(Either::Identity(self.svids.store(hash, token, v, now))),
            Err(TokenError::Header(HeaderError::Type)) => match self.verifier.verify_delegated(token, now) {
                Ok(v) => Ok(Either::Delegated(self.delegated.store(hash, token, v, now))),
                Err(TokenError::Header(HeaderError::NotDelegated)) => {
                    let v = self.verifier.verify_access(token, now)?;
                    Ok(Either::Access(self.access.store(hash, token, v, now)))
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// How many tokens are cached.
    pub fn len(&self) -> usize {
        self.svids.len() + self.delegated.len() + self.access.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A verified token of one of the kinds the operator signs (see [`CachingVerifier::verify_either`]).
#[derive(Debug, Clone)]
pub enum Either {
    /// An identity JWT-SVID.
    Identity(Arc<VerifiedSvid>),
    /// A delegated token.
    Delegated(Arc<VerifiedDelegated>),
    /// An access token from the token endpoint.
    Access(Arc<VerifiedAccess>),
}

/// The default capacity in tokens (at most 16 KiB each, typically under 1 KiB): every token of a few
/// thousand agents.
pub const DEFAULT_CAPACITY: usize = 16_384;

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use jsonwebtoken::jwk::JwkSet;

    use super::*;
    use crate::identity::TrustDomain;
    use crate::identity::jwt::{AgentClaims, Minter, SvidClaims};
    use crate::identity::keys::SigningKey;
    use crate::identity::spiffe::SpiffeId;
    use crate::identity::verify::VerifierConfig;

    const ISSUER: &str = "https://issuer.example";

    fn setup() -> (Minter, CachingVerifier, Timestamp) {
        let now = Timestamp::now();
        let key = Arc::new(SigningKey::generate(now).unwrap());
        let td = TrustDomain::parse("example.org").unwrap();
        let verifier =
            JwtVerifier::new(VerifierConfig::new(td, ISSUER), &JwkSet { keys: vec![key.public_jwk()] })
                .unwrap();
        (Minter::new(key), CachingVerifier::new(verifier, 64), now)
    }

    fn token(minter: &mut Minter, now: Timestamp, ttl: u64) -> String {
        let sub = SpiffeId::parse("spiffe://example.org/ns/a/agent/bot").unwrap();
        let agent = AgentClaims { uid: "u", owner: "team:x", trust_score: 500 };
        minter
            .mint(&SvidClaims::new(ISSUER, &sub, "crm", agent, now, Duration::from_secs(ttl)).unwrap())
            .unwrap()
    }

    #[test]
    fn hits_need_the_exact_token_and_still_expire() {
        let (mut minter, cache, now) = setup();
        let t = token(&mut minter, now, 60);
        let first = cache.verify_any_audience(&t, now).unwrap();
        let again = cache.verify_any_audience(&t, now).unwrap();
        assert!(Arc::ptr_eq(&first, &again), "the second call is a cache hit");
        // One flipped signature byte is a different token: verified afresh, and refused.
        let mut bad = t.clone().into_bytes();
        let last = bad.len() - 2;
        bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
        assert!(cache.verify_any_audience(std::str::from_utf8(&bad).unwrap(), now).is_err());
        let later = now.checked_add(jiff::SignedDuration::from_secs(60 + 31)).unwrap();
        assert_eq!(cache.verify_any_audience(&t, later).unwrap_err(), TokenError::Expired);
        let within_leeway = now.checked_add(jiff::SignedDuration::from_secs(60 + 29)).unwrap();
        assert!(cache.verify_any_audience(&t, within_leeway).is_ok());
    }

    #[test]
    fn either_kind_verifies_by_its_own_verifier_and_is_cached_apart() {
        use crate::identity::delegated::{DelegatedClaims, Grant};
        let (mut minter, cache, now) = setup();
        let identity = token(&mut minter, now, 60);
        let agents = [SpiffeId::parse("spiffe://example.org/ns/a/agent/bot").unwrap()];
        let (chain, scopes) = (["root".to_owned()], ["read@crm/**".to_owned()]);
        let grant = Grant {
            issuer: ISSUER,
            grantor: "alice",
            audience: "crm",
            agents: &agents,
            agent_uid: "u",
            delegation: "d",
            chain: &chain,
            scopes: &scopes,
            may_act: None,
        };
        let delegated =
            minter.mint(&DelegatedClaims::new(grant, now, Duration::from_secs(60)).unwrap()).unwrap();
        let Ok(Either::Identity(first)) = cache.verify_either(&identity, now) else { panic!("identity") };
        let Ok(Either::Delegated(d1)) = cache.verify_either(&delegated, now) else { panic!("delegated") };
        assert_eq!(d1.grantor, "alice");
        let Ok(Either::Identity(again)) = cache.verify_either(&identity, now) else { panic!("identity") };
        let Ok(Either::Delegated(d2)) = cache.verify_either(&delegated, now) else { panic!("delegated") };
        assert!(Arc::ptr_eq(&first, &again) && Arc::ptr_eq(&d1, &d2), "both were cache hits");
        assert_eq!(cache.len(), 2);
        // A delegated token is never served by the identity entry points, cached or not.
        assert_eq!(
            cache.verify_any_audience(&delegated, now).unwrap_err(),
            TokenError::Header(HeaderError::Type)
        );
        // Tampered, either kind fails; expired, a cached one fails as it would have fresh.
        let mut bad = delegated.clone().into_bytes();
        let last = bad.len() - 2;
        bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
        assert!(cache.verify_either(std::str::from_utf8(&bad).unwrap(), now).is_err());
        let later = now.checked_add(jiff::SignedDuration::from_secs(60 + 31)).unwrap();
        assert_eq!(cache.verify_either(&delegated, later).unwrap_err(), TokenError::Expired);
        assert_eq!(cache.verify_either(&identity, later).unwrap_err(), TokenError::Expired);
    }

    #[test]
    fn the_cache_stays_bounded() {
        let (mut minter, cache, now) = setup();
        for _ in 0..500 {
            cache.verify_any_audience(&token(&mut minter, now, 60), now).unwrap();
        }
        assert!(cache.len() <= 64 + SHARDS, "{} cached", cache.len());
    }
}

//! The key set and its rotation: which key signs, which are published, and when that changes.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;

use super::{KeyError, KeyRole, SigningKey, add};

/// How often keys rotate and how long a retired key must stay published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationPolicy {
    /// How long a key signs before the next one takes over (default 24h). The next key is published for this
    /// long before it signs, so verifiers refreshing at least this often never see an unknown `kid`.
    pub rotation_period: Duration,
    /// The longest lifetime of any token the keys sign (default 1h, the JWT-SVID cap).
    pub max_token_ttl: Duration,
    /// Clock skew verifiers allow past `exp` (default 30s).
    pub leeway: Duration,
}

impl Default for RotationPolicy {
    fn default() -> Self {
        Self {
            rotation_period: Duration::from_secs(24 * 3600),
            max_token_ttl: Duration::from_secs(3600),
            leeway: Duration::from_secs(30),
        }
    }
}

impl RotationPolicy {
    /// The shortest rotation period accepted: shorter ones leave verifiers no time to fetch the next key.
    pub const MIN_ROTATION_PERIOD: Duration = Duration::from_secs(60);

    /// Checks the values are usable.
    pub fn validate(&self) -> Result<(), KeyError> {
        if self.rotation_period < Self::MIN_ROTATION_PERIOD {
            return Err(KeyError::Policy("rotation period must be at least 1m"));
        }
        if self.max_token_ttl.is_zero() {
            return Err(KeyError::Policy("max token TTL must be positive"));
        }
        Ok(())
    }

    /// How long a key stays published after it stops signing: a token it signed just before retiring lives
    /// `max_token_ttl`, and verifiers accept it `leeway` past that.
    pub fn publish_window(&self) -> Duration {
        self.max_token_ttl.saturating_add(self.leeway)
    }
}

/// A key that no longer signs but is still published so the tokens it signed keep verifying.
#[derive(Debug, Clone)]
pub struct RetiredKey {
    pub(super) key: Arc<SigningKey>,
    pub(super) activated_at: Timestamp,
    pub(super) retired_at: Timestamp,
    pub(super) publish_until: Timestamp,
}

impl RetiredKey {
    /// The key.
    pub fn key(&self) -> &Arc<SigningKey> {
        &self.key
    }
    /// When it started signing.
    pub fn activated_at(&self) -> Timestamp {
        self.activated_at
    }
    /// When it stopped signing.
    pub fn retired_at(&self) -> Timestamp {
        self.retired_at
    }
    /// The last instant it is published; `prune` drops it after this.
    pub fn publish_until(&self) -> Timestamp {
        self.publish_until
    }
}

/// Which kind of rotation happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationKind {
    /// The current key reached the rotation period; it stays published as a previous key.
    Scheduled,
    /// The current key (and every previous key) was withdrawn; the already-published next key signs now.
    Emergency,
    /// Every key was withdrawn, next included (for when the Secret itself leaked); fresh keys sign at once,
    /// so verifiers reject new tokens until they refetch the bundle.
    EmergencyAll,
}

impl RotationKind {
    /// A short, stable label for metrics, events and audit records.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Emergency => "emergency",
            Self::EmergencyAll => "emergency-all",
        }
    }
}

/// What a rotation changed, by key ID (never key material), for events and the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// Scheduled or emergency.
    pub kind: RotationKind,
    /// When it happened.
    pub at: Timestamp,
    /// The key that signs from now on.
    pub activated: String,
    /// The new next key, published from now on.
    pub staged: String,
    /// The key that stopped signing but stays published (scheduled rotation only).
    pub retired: Option<String>,
    /// Keys removed from the published set: tokens they signed no longer verify.
    pub withdrawn: Vec<String>,
}

/// The operator's signing keys: one `next` (published, not signing), one `current` (signing) and any number
/// of `previous` keys (published until their tokens expire). Keys are behind `Arc` so minters and the
/// bundle endpoints can hold them without locking the set.
#[derive(Debug, Clone)]
pub struct KeySet {
    pub(super) next: Arc<SigningKey>,
    pub(super) current: Arc<SigningKey>,
    pub(super) current_activated_at: Timestamp,
    pub(super) previous: Vec<RetiredKey>,
}

impl KeySet {
    /// A fresh set with a new current and a new next key, both created and the current activated at `now`.
    pub fn generate(now: Timestamp) -> Result<Self, KeyError> {
        Ok(Self {
            next: Arc::new(SigningKey::generate(now)?),
            current: Arc::new(SigningKey::generate(now)?),
            current_activated_at: now,
            previous: Vec::new(),
        })
    }

    /// The key that signs new tokens.
    pub fn current(&self) -> &Arc<SigningKey> {
        &self.current
    }

    /// When the current key started signing.
    pub fn current_activated_at(&self) -> Timestamp {
        self.current_activated_at
    }

    /// The key that will sign after the next rotation; already published.
    pub fn next(&self) -> &Arc<SigningKey> {
        &self.next
    }

    /// Retired keys still published, oldest first.
    pub fn previous(&self) -> &[RetiredKey] {
        &self.previous
    }

    /// Every published key: next, current, then previous keys oldest first.
    pub fn published(&self) -> impl Iterator<Item = &SigningKey> {
        [&self.next, &self.current]
            .into_iter()
            .chain(self.previous.iter().map(|p| &p.key))
            .map(|k| k.as_ref())
    }

    /// The published key with this ID, if any.
    pub fn get(&self, kid: &str) -> Option<&Arc<SigningKey>> {
        self.role_and_key(kid).map(|(_, k)| k)
    }

    /// The role of the published key with this ID, if any.
    pub fn role(&self, kid: &str) -> Option<KeyRole> {
        self.role_and_key(kid).map(|(r, _)| r)
    }

    fn role_and_key(&self, kid: &str) -> Option<(KeyRole, &Arc<SigningKey>)> {
        [(KeyRole::Next, &self.next), (KeyRole::Current, &self.current)]
            .into_iter()
            .chain(self.previous.iter().map(|p| (KeyRole::Previous, &p.key)))
            .find(|(_, k)| k.kid() == kid)
    }

    /// When the current key is due to be replaced.
    pub fn next_rotation_at(&self, policy: &RotationPolicy) -> Timestamp {
        add(self.current_activated_at, policy.rotation_period)
    }

    /// When `prune` will next drop a previous key, if any are published.
    pub fn next_prune_at(&self) -> Option<Timestamp> {
        // prune keeps a key through publish_until inclusive, so it goes one second later.
        self.previous.iter().map(|p| add(p.publish_until, Duration::from_secs(1))).min()
    }

    /// Rotates if the current key has signed for a full period: the current key becomes previous (published
    /// until `now + max_token_ttl + leeway`), next becomes current, and a fresh next is published. The new
    /// key is generated first, so on error the set is unchanged.
    pub fn rotate_if_due(
        &mut self,
        now: Timestamp,
        policy: &RotationPolicy,
    ) -> Result<Option<Rotation>, KeyError> {
        if now < self.next_rotation_at(policy) {
            return Ok(None);
        }
        let staged = Arc::new(SigningKey::generate(now)?);
        let retired = self.promote_next(staged);
        let retired_kid = retired.kid().to_owned();
        self.previous.push(RetiredKey {
            key: retired,
            activated_at: std::mem::replace(&mut self.current_activated_at, now),
            retired_at: now,
            publish_until: add(now, policy.publish_window()),
        });
        Ok(Some(self.rotation(RotationKind::Scheduled, now, Some(retired_kid), Vec::new())))
    }

    /// Emergency rotation: the already-published next key signs at once, and the current and every previous
    /// key leave the published set, so every token they signed stops verifying.
    pub fn emergency_rotate(&mut self, now: Timestamp) -> Result<Rotation, KeyError> {
        let staged = Arc::new(SigningKey::generate(now)?);
        let mut withdrawn: Vec<String> = self.previous.drain(..).map(|p| p.key.kid().to_owned()).collect();
        let old = self.promote_next(staged);
        withdrawn.push(old.kid().to_owned());
        self.current_activated_at = now;
        Ok(self.rotation(RotationKind::Emergency, now, None, withdrawn))
    }

    /// Emergency rotation for a leaked Secret: every key, next included, is withdrawn and replaced by fresh
    /// ones. Tokens signed by the new current key fail until verifiers refetch the bundle, which is the price
    /// of not trusting a key that leaked with the rest.
    pub fn emergency_rotate_all(&mut self, now: Timestamp) -> Result<Rotation, KeyError> {
        let fresh = Self::generate(now)?;
        let withdrawn = self.published().map(|k| k.kid().to_owned()).collect();
        *self = fresh;
        Ok(self.rotation(RotationKind::EmergencyAll, now, None, withdrawn))
    }

    /// Drops previous keys whose `publish_until` has passed (a key is kept through that instant) and returns
    /// their IDs.
    pub fn prune(&mut self, now: Timestamp) -> Vec<String> {
        let mut dropped = Vec::new();
        self.previous.retain(|p| {
            let keep = now <= p.publish_until;
            if !keep {
                dropped.push(p.key.kid().to_owned());
            }
            keep
        });
        dropped
    }

    /// Makes next the current key, publishes `staged` as next, and returns the old current key.
    fn promote_next(&mut self, staged: Arc<SigningKey>) -> Arc<SigningKey> {
        let promoted = std::mem::replace(&mut self.next, staged);
        std::mem::replace(&mut self.current, promoted)
    }

    fn rotation(
        &self,
        kind: RotationKind,
        at: Timestamp,
        retired: Option<String>,
        withdrawn: Vec<String>,
    ) -> Rotation {
        Rotation {
            kind,
            at,
            activated: self.current.kid().to_owned(),
            staged: self.next.kid().to_owned(),
            retired,
            withdrawn,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_750_000_000 + secs).unwrap()
    }

    const HOUR: i64 = 3600;
    const DAY: i64 = 24 * HOUR;

    fn kids(set: &KeySet) -> Vec<String> {
        set.published().map(|k| k.kid().to_owned()).collect()
    }

    #[test]
    fn fresh_set_publishes_next_and_current() {
        let set = KeySet::generate(t(0)).unwrap();
        assert_eq!(kids(&set), [set.next().kid(), set.current().kid()]);
        assert_ne!(set.next().kid(), set.current().kid());
        assert_eq!(set.role(set.next().kid()), Some(KeyRole::Next));
        assert_eq!(set.role(set.current().kid()), Some(KeyRole::Current));
        assert_eq!(set.next_rotation_at(&RotationPolicy::default()), t(DAY));
        assert_eq!(set.next_prune_at(), None);
    }

    #[test]
    fn scheduled_rotation_promotes_the_key_published_a_period_earlier() {
        let policy = RotationPolicy::default();
        let mut set = KeySet::generate(t(0)).unwrap();
        assert_eq!(set.rotate_if_due(t(DAY - 1), &policy).unwrap(), None);
        let staged = set.next().kid().to_owned();
        let old = set.current().kid().to_owned();

        let r = set.rotate_if_due(t(DAY), &policy).unwrap().unwrap();
        assert_eq!(r.kind, RotationKind::Scheduled);
        // The key that signs now was published since t(0), a full period before it signed anything.
        assert_eq!(set.current().kid(), staged);
        assert_eq!(r.activated, staged);
        assert_eq!(r.retired.as_deref(), Some(old.as_str()));
        assert!(r.withdrawn.is_empty());
        // The new next is published at once, before it will ever sign.
        assert_eq!(set.role(&r.staged), Some(KeyRole::Next));
        assert_eq!(set.role(&old), Some(KeyRole::Previous));
        assert_eq!(set.current_activated_at(), t(DAY));
        assert_eq!(set.next_rotation_at(&policy), t(2 * DAY));
        let prev = set.previous().first().unwrap();
        assert_eq!((prev.activated_at(), prev.retired_at()), (t(0), t(DAY)));
        assert_eq!(prev.publish_until(), t(DAY + HOUR + 30));
        assert_eq!(set.rotate_if_due(t(DAY + 1), &policy).unwrap(), None);
    }

    #[test]
    fn previous_stays_published_through_publish_until_then_is_pruned() {
        let policy = RotationPolicy::default();
        let mut set = KeySet::generate(t(0)).unwrap();
        let old = set.current().kid().to_owned();
        set.rotate_if_due(t(DAY), &policy).unwrap();
        // The last token `old` signed expires at t(DAY + HOUR); verifiers accept it 30s longer.
        assert!(set.prune(t(DAY + HOUR + 30)).is_empty());
        assert!(set.get(&old).is_some());
        assert_eq!(set.next_prune_at(), Some(t(DAY + HOUR + 31)));
        assert_eq!(set.prune(t(DAY + HOUR + 31)), [old.as_str()]);
        assert!(set.get(&old).is_none());
        assert_eq!(set.published().count(), 2);
    }

    #[test]
    fn short_periods_keep_several_previous_keys() {
        let policy =
            RotationPolicy { rotation_period: Duration::from_secs(1800), ..RotationPolicy::default() };
        let mut set = KeySet::generate(t(0)).unwrap();
        for i in 1..=3 {
            set.rotate_if_due(t(i * 1800), &policy).unwrap().unwrap();
            set.prune(t(i * 1800));
        }
        // Retired at 1800 (until 5430), 3600 and 5400: all still covering live tokens at 5400.
        assert_eq!(set.previous().len(), 3);
        assert_eq!(set.prune(t(5431)).len(), 1);
        assert_eq!(set.published().count(), 4);
    }

    #[test]
    fn late_rotation_after_downtime_rotates_once() {
        let policy = RotationPolicy::default();
        let mut set = KeySet::generate(t(0)).unwrap();
        assert!(set.rotate_if_due(t(5 * DAY), &policy).unwrap().is_some());
        assert_eq!(set.rotate_if_due(t(5 * DAY), &policy).unwrap(), None);
        assert_eq!(set.next_rotation_at(&policy), t(6 * DAY));
    }

    #[test]
    fn emergency_rotation_withdraws_current_and_previous_at_once() {
        let policy = RotationPolicy::default();
        let mut set = KeySet::generate(t(0)).unwrap();
        set.rotate_if_due(t(DAY), &policy).unwrap();
        let previous = set.previous().first().unwrap().key().kid().to_owned();
        let compromised = set.current().kid().to_owned();
        let staged = set.next().kid().to_owned();

        let r = set.emergency_rotate(t(DAY + 60)).unwrap();
        assert_eq!(r.kind, RotationKind::Emergency);
        assert_eq!(r.withdrawn, [previous.clone(), compromised.clone()]);
        assert_eq!(r.retired, None);
        assert!(set.get(&compromised).is_none() && set.get(&previous).is_none());
        assert!(set.previous().is_empty());
        // The key that signs now was already published, so fresh tokens verify without a refetch.
        assert_eq!(set.current().kid(), staged);
        assert_eq!(r.activated, staged);
        assert_eq!(set.role(&r.staged), Some(KeyRole::Next));
        assert_eq!(set.published().count(), 2);
        assert_eq!(set.next_rotation_at(&policy), t(2 * DAY + 60));
    }

    #[test]
    fn emergency_rotate_all_replaces_every_key() {
        let mut set = KeySet::generate(t(0)).unwrap();
        let before = kids(&set);
        let r = set.emergency_rotate_all(t(10)).unwrap();
        assert_eq!(r.kind, RotationKind::EmergencyAll);
        assert_eq!(r.withdrawn, before);
        assert!(kids(&set).iter().all(|k| !before.contains(k)));
        assert_eq!((r.activated.as_str(), r.staged.as_str()), (set.current().kid(), set.next().kid()));
    }

    #[test]
    fn policy_validation() {
        assert_eq!(RotationPolicy::default().validate(), Ok(()));
        assert_eq!(RotationPolicy::default().publish_window(), Duration::from_secs(3630));
        let short = RotationPolicy { rotation_period: Duration::from_secs(59), ..RotationPolicy::default() };
        assert!(matches!(short.validate(), Err(KeyError::Policy(_))));
        let zero = RotationPolicy { max_token_ttl: Duration::ZERO, ..RotationPolicy::default() };
        assert!(matches!(zero.validate(), Err(KeyError::Policy(_))));
        let huge = RotationPolicy { rotation_period: Duration::MAX, ..RotationPolicy::default() };
        assert_eq!(KeySet::generate(t(0)).unwrap().next_rotation_at(&huge), Timestamp::MAX);
    }
}

//! Per-agent, per-rule rate limits: token buckets in memory. Pure (the caller passes the time).
//!
//! A bucket holds up to `requests` tokens and refills at `requests / per`. Buckets are keyed by the agent's
//! UID and the rule's [`Limit::key`], spread over shards so concurrent decisions rarely contend. Counters
//! live in one operator process: with several replicas each enforces its own limit (documented).

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::compile::Limit;

const SHARDS: usize = 16;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// The rate-limit counters of every agent and rule.
#[derive(Debug)]
pub struct RateLimiter {
    shards: [Mutex<HashMap<(u64, u64), Bucket>>; SHARDS],
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self { shards: std::array::from_fn(|_| Mutex::new(HashMap::new())) }
    }
}

/// A stable 64-bit key for an agent UID.
pub fn agent_key(uid: &str) -> u64 {
    let mut h = DefaultHasher::new();
    uid.hash(&mut h);
    h.finish()
}

impl RateLimiter {
    /// Takes one token for `agent` under `limit` at `now` if one is available. `consume: false` only
    /// looks (for "would" decisions of audit-mode policies).
    pub fn try_take(&self, agent: u64, limit: &Limit, now: Instant, consume: bool) -> bool {
        let shard = (agent ^ limit.key.rotate_left(17)) as usize % SHARDS;
        let Some(shard) = self.shards.get(shard) else { return false };
        // A poisoned lock only means another decision panicked mid-update; the counts are still usable.
        let mut map = shard.lock().unwrap_or_else(PoisonError::into_inner);
        let capacity = f64::from(limit.requests);
        let bucket = map.entry((agent, limit.key)).or_insert(Bucket { tokens: capacity, last: now });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        let rate = capacity / limit.per.as_secs_f64().max(f64::MIN_POSITIVE);
        // An edited policy may have lowered the limit: never keep more tokens than the new capacity.
        let tokens = (bucket.tokens + elapsed * rate).min(capacity);
        if tokens >= 1.0 {
            if consume {
                *bucket = Bucket { tokens: tokens - 1.0, last: now };
            }
            true
        } else {
            if consume {
                *bucket = Bucket { tokens, last: now };
            }
            false
        }
    }

    /// Drops buckets idle for longer than `idle` (they would be full again anyway), bounding memory.
    pub fn sweep(&self, now: Instant, idle: Duration) {
        for shard in &self.shards {
            let mut map = shard.lock().unwrap_or_else(PoisonError::into_inner);
            map.retain(|_, b| now.saturating_duration_since(b.last) < idle);
        }
    }

    /// How many buckets exist (for metrics and tests).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len()).sum()
    }

    /// Whether no bucket exists.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(requests: u32, per_secs: u64) -> Limit {
        Limit { requests, per: Duration::from_secs(per_secs), key: 7 }
    }

    #[test]
    fn allows_the_burst_then_refills_at_the_rate() {
        let rl = RateLimiter::default();
        let l = limit(3, 60);
        let t0 = Instant::now();
        assert!((0..3).all(|_| rl.try_take(1, &l, t0, true)));
        assert!(!rl.try_take(1, &l, t0, true));
        assert!(!rl.try_take(1, &l, t0 + Duration::from_secs(19), true), "one token takes 20 s");
        assert!(rl.try_take(1, &l, t0 + Duration::from_secs(21), true));
        assert!(!rl.try_take(1, &l, t0 + Duration::from_secs(22), true));
    }

    #[test]
    fn agents_and_rules_are_counted_apart_and_peeking_takes_nothing() {
        let rl = RateLimiter::default();
        let l = limit(1, 60);
        let t0 = Instant::now();
        assert!(rl.try_take(1, &l, t0, false));
        assert!(rl.try_take(1, &l, t0, true));
        assert!(!rl.try_take(1, &l, t0, false));
        assert!(rl.try_take(2, &l, t0, true), "another agent has its own bucket");
        assert!(rl.try_take(1, &Limit { key: 8, ..l.clone() }, t0, true), "another rule has its own bucket");
    }

    #[test]
    fn lowering_the_limit_caps_saved_tokens_and_sweep_forgets_idle_buckets() {
        let rl = RateLimiter::default();
        let t0 = Instant::now();
        assert!(rl.try_take(1, &limit(100, 60), t0, true));
        assert!(rl.try_take(1, &limit(1, 60), t0, true));
        assert!(!rl.try_take(1, &limit(1, 60), t0, true));
        assert_eq!(rl.len(), 1);
        rl.sweep(t0 + Duration::from_secs(3600), Duration::from_secs(60));
        assert!(rl.is_empty());
    }
}

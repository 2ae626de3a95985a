//! Per-agent behavioural baselines and the anomaly score. Pure: observations carry their own time, so
//! tests drive it with an injected clock and synthetic traffic. The formulas are in docs/monitoring.md.
//!
//! Traffic is cut into fixed buckets (default one minute). For each agent and each feature of a bucket
//! (requests, distinct resources, distinct tools, the share of denied decisions, data volume when the
//! context reports `bytes`) the baseline keeps an exponentially weighted mean and variance of the
//! buckets it judged normal. The score of a bucket is the largest upward deviation, in standard
//! deviations (with a floor per feature, so a perfectly steady agent is not alarmed by one extra call).
//!
//! Three rules keep an attacker from teaching the baseline:
//! - only buckets scored below the alert threshold are learned;
//! - a mean grows by at most `max_growth` per learned bucket, so a slow ramp is never absorbed faster
//!   than that, and its distance to the baseline keeps growing until it alerts;
//! - the request rate is also judged against the same hour of the day (a 24-slot profile), once that
//!   hour has enough history, so a nightly burst does not hide behind a busy day.
//!
//! The open bucket is judged as it fills, so a burst is caught within the bucket, not after it.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

use jiff::Timestamp;

/// Tuning; the defaults are documented in docs/monitoring.md.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Bucket length.
    pub bucket: Duration,
    /// Weight of a new bucket in the means (0..1).
    pub alpha: f64,
    /// Largest relative growth of a mean per learned bucket.
    pub max_growth: f64,
    /// Buckets learned before anything is judged.
    pub warmup: u32,
    /// Score from which a bucket alerts.
    pub alert: f64,
    /// Score from which the agent is suspended.
    pub suspend: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            bucket: Duration::from_secs(60),
            alpha: 0.1,
            max_growth: 0.02,
            warmup: 20,
            alert: 4.0,
            suspend: 8.0,
        }
    }
}

/// The features of a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Feature {
    /// Requests decided.
    Requests,
    /// Requests in the same hour of the day (the time-of-day profile).
    RequestsForHour,
    /// Distinct resources (the first two segments).
    Resources,
    /// Distinct MCP tools.
    Tools,
    /// Denied decisions per request.
    DenialRatio,
    /// Bytes the requests' contexts report.
    Bytes,
}

impl Feature {
    /// The name used in Events, records and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requests => "requests",
            Self::RequestsForHour => "requests-for-hour",
            Self::Resources => "distinct-resources",
            Self::Tools => "distinct-tools",
            Self::DenialRatio => "denial-ratio",
            Self::Bytes => "bytes",
        }
    }

    /// The least standard deviation the score divides by: below it, noise would look like an anomaly.
    fn floor(self) -> f64 {
        match self {
            Self::Requests | Self::RequestsForHour => 3.0,
            Self::Resources | Self::Tools => 2.0,
            Self::DenialRatio => 0.05,
            Self::Bytes => 64.0 * 1024.0,
        }
    }
}

/// One decision, as the monitor sees it.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    /// When.
    pub at: Timestamp,
    /// The resource (its first two segments count: `crm:contacts/42` and `crm:contacts/42/notes` are one
    /// resource, `crm:contacts/43` another).
    pub resource: &'a str,
    /// The MCP tool, if any.
    pub tool: Option<&'a str>,
    /// Whether it was denied.
    pub denied: bool,
    /// Bytes, when the context reports them.
    pub bytes: Option<u64>,
}

/// Why a bucket scored what it did: the feature that deviated most.
#[derive(Debug, Clone, PartialEq)]
pub struct Evidence {
    /// The score (standard deviations above the baseline).
    pub score: f64,
    /// Which feature.
    pub feature: Feature,
    /// What the bucket had.
    pub observed: f64,
    /// What the baseline expected (its mean).
    pub expected: f64,
}

impl std::fmt::Display for Evidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {:.2} against a baseline of {:.2} (score {:.1})",
            self.feature.as_str(),
            self.observed,
            self.expected,
            self.score
        )
    }
}

/// What the monitor makes of a bucket.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Not enough history yet.
    Learning,
    /// Within the baseline.
    Normal(Option<Evidence>),
    /// Above the alert threshold.
    Alert(Evidence),
    /// Above the suspension threshold.
    Suspend(Evidence),
}

/// An exponentially weighted mean and variance (West's update).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Stat {
    mean: f64,
    var: f64,
    n: u32,
}

impl Stat {
    fn learn(&mut self, x: f64, s: &Settings, floor: f64) {
        if self.n == 0 {
            self.mean = x;
            self.n = 1;
            return;
        }
        // Growth is capped, relative to the mean (and to the floor, so a zero mean can grow at all): the
        // observation is learned as at most mean + cap / alpha, for the variance too, or a ramp would
        // widen the spread it is measured against as fast as it climbs.
        let cap = s.max_growth * self.mean.max(floor);
        let diff = (x - self.mean).min(cap / s.alpha);
        self.mean += s.alpha * diff;
        self.var = (1.0 - s.alpha) * (self.var + s.alpha * diff * diff);
        self.n = self.n.saturating_add(1);
    }

    /// Upward deviation of `x` in (floored) standard deviations.
    fn z(&self, x: f64, floor: f64) -> f64 {
        ((x - self.mean) / self.var.sqrt().max(floor)).max(0.0)
    }
}

/// The request count of one hour of the day, and on how many distinct days it was seen: a profile
/// counts once it has [`Settings::warmup`] buckets from at least [`PROFILE_DAYS`] days.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct HourStat {
    stat: Stat,
    days: u32,
    last_day: Option<i64>,
}

/// Days an hour of the day must have been seen on before its profile counts.
pub const PROFILE_DAYS: u32 = 3;

impl HourStat {
    fn learn(&mut self, x: f64, day: i64, s: &Settings) {
        self.stat.learn(x, s, Feature::RequestsForHour.floor());
        if self.last_day != Some(day) {
            self.last_day = Some(day);
            self.days = self.days.saturating_add(1);
        }
    }

    fn mature(&self, s: &Settings) -> bool {
        self.days >= PROFILE_DAYS && self.stat.n >= s.warmup
    }
}

/// The counters of one bucket.
#[derive(Debug, Clone, Default)]
struct Bucket {
    index: i64,
    requests: u32,
    denials: u32,
    resources: HashSet<u64>,
    tools: HashSet<u64>,
    bytes: u64,
}

/// Distinct values counted per bucket at most (enough to score; bounded memory).
const MAX_DISTINCT: usize = 4096;

impl Bucket {
    fn features(&self) -> [(Feature, f64); 5] {
        let requests = f64::from(self.requests);
        let ratio = if self.requests == 0 { 0.0 } else { f64::from(self.denials) / requests };
        [
            (Feature::Requests, requests),
            (Feature::Resources, self.resources.len() as f64),
            (Feature::Tools, self.tools.len() as f64),
            (Feature::DenialRatio, ratio),
            // Bytes in KiB steps are enough; f64 holds every u64 count of a bucket closely.
            (Feature::Bytes, self.bytes as f64),
        ]
    }
}

/// One agent's baseline.
#[derive(Debug, Clone)]
pub struct Baseline {
    stats: [Stat; 5],
    hourly: [HourStat; 24],
    learned: u32,
    open: Option<Bucket>,
    hasher: RandomState,
}

impl Default for Baseline {
    fn default() -> Self {
        Self {
            stats: [Stat::default(); 5],
            hourly: [HourStat::default(); 24],
            learned: 0,
            open: None,
            hasher: RandomState::new(),
        }
    }
}

fn bucket_index(at: Timestamp, s: &Settings) -> i64 {
    let secs = i64::try_from(s.bucket.as_secs().max(1)).unwrap_or(60);
    at.as_second().div_euclid(secs)
}

fn hour_of(index: i64, s: &Settings) -> usize {
    let secs = i64::try_from(s.bucket.as_secs().max(1)).unwrap_or(60);
    usize::try_from(index.saturating_mul(secs).div_euclid(3600).rem_euclid(24)).unwrap_or(0)
}

fn day_of(index: i64, s: &Settings) -> i64 {
    let secs = i64::try_from(s.bucket.as_secs().max(1)).unwrap_or(60);
    index.saturating_mul(secs).div_euclid(86_400)
}

impl Baseline {
    /// Buckets learned so far.
    pub fn learned(&self) -> u32 {
        self.learned
    }

    /// Takes in one decision. When it opens a new bucket, the previous one (and any empty buckets
    /// between) is closed: judged, and learned if it was normal; its verdict is returned. The verdict of
    /// the open bucket so far is [`Self::judge_open`].
    pub fn observe(&mut self, obs: &Observation<'_>, s: &Settings) -> Option<Verdict> {
        let index = bucket_index(obs.at, s);
        let closed = match &self.open {
            Some(b) if b.index == index => None,
            // An observation older than the open bucket (clock skew between replicas): count it in the
            // open one.
            Some(b) if b.index > index => None,
            _ => self.close(index, s),
        };
        let hasher = self.hasher.clone();
        let bucket = self.open.get_or_insert_with(|| Bucket { index, ..Bucket::default() });
        bucket.requests = bucket.requests.saturating_add(1);
        if obs.denied {
            bucket.denials = bucket.denials.saturating_add(1);
        }
        let prefix: Vec<&str> = obs.resource.splitn(3, '/').take(2).collect();
        if bucket.resources.len() < MAX_DISTINCT {
            bucket.resources.insert(hasher.hash_one(prefix.join("/")));
        }
        if let Some(tool) = obs.tool
            && bucket.tools.len() < MAX_DISTINCT
        {
            bucket.tools.insert(hasher.hash_one(tool));
        }
        bucket.bytes = bucket.bytes.saturating_add(obs.bytes.unwrap_or(0));
        closed
    }

    /// Closes the open bucket (and learns the quiet buckets between it and `next`, at most a day of
    /// them); returns the closed bucket's verdict.
    fn close(&mut self, next: i64, s: &Settings) -> Option<Verdict> {
        let bucket = self.open.take()?;
        let verdict = self.judge(&bucket, s);
        match &verdict {
            Verdict::Learning | Verdict::Normal(_) => self.learn(&bucket, s),
            // An hour of the day still forming its profile learns from every bucket: otherwise a new daily
            // pattern, anomalous against the overall rate, could never form one.
            Verdict::Alert(_) | Verdict::Suspend(_) => self.learn_young_hour(&bucket, s),
        }
        // Buckets without a single decision are quiet, and quiet is normal.
        let per_day = i64::try_from(86_400 / s.bucket.as_secs().max(1)).unwrap_or(1440);
        let gap = next.saturating_sub(bucket.index).saturating_sub(1).min(per_day);
        for i in 0..gap {
            self.learn(&Bucket { index: bucket.index + 1 + i, ..Bucket::default() }, s);
        }
        Some(verdict)
    }

    fn learn(&mut self, b: &Bucket, s: &Settings) {
        for (stat, (feature, x)) in self.stats.iter_mut().zip(b.features()) {
            stat.learn(x, s, feature.floor());
        }
        let day = day_of(b.index, s);
        if let Some(h) = self.hourly.get_mut(hour_of(b.index, s)) {
            h.learn(f64::from(b.requests), day, s);
        }
        self.learned = self.learned.saturating_add(1);
    }

    fn learn_young_hour(&mut self, b: &Bucket, s: &Settings) {
        let day = day_of(b.index, s);
        if let Some(h) = self.hourly.get_mut(hour_of(b.index, s)).filter(|h| !h.mature(s)) {
            h.learn(f64::from(b.requests), day, s);
        }
    }

    fn judge(&self, b: &Bucket, s: &Settings) -> Verdict {
        if self.learned < s.warmup {
            return Verdict::Learning;
        }
        let mut worst: Option<Evidence> = None;
        let mut consider = |feature: Feature, stat: &Stat, x: f64| {
            let score = stat.z(x, feature.floor());
            if worst.as_ref().is_none_or(|w| score > w.score) {
                worst = Some(Evidence { score, feature, observed: x, expected: stat.mean });
            }
        };
        // Once its hour of the day has a profile, the request count is judged against that hour alone.
        let hour = self.hourly.get(hour_of(b.index, s)).filter(|h| h.mature(s));
        for (stat, (feature, x)) in self.stats.iter().zip(b.features()) {
            if !(feature == Feature::Requests && hour.is_some()) {
                consider(feature, stat, x);
            }
        }
        if let Some(h) = hour {
            consider(Feature::RequestsForHour, &h.stat, f64::from(b.requests));
        }
        match worst {
            // The overall request rate alone never suspends: until its hour has a profile, a busy hour may
            // be the agent's daily job. It alerts; resources, tools, denials and bytes still suspend.
            Some(e) if e.score >= s.suspend && e.feature != Feature::Requests => Verdict::Suspend(e),
            Some(e) if e.score >= s.alert => Verdict::Alert(e),
            other => Verdict::Normal(other),
        }
    }

    /// The verdict on the open bucket so far (upward deviations only grow as it fills, so a verdict
    /// reached early stands).
    pub fn judge_open(&self, s: &Settings) -> Verdict {
        match &self.open {
            Some(b) => self.judge(b, s),
            None => Verdict::Normal(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(minute: i64, second: i64) -> Timestamp {
        Timestamp::from_second(1_795_996_800 + minute * 60 + second).unwrap()
    }

    /// Feeds `n` read requests in minute `m` (spread over its seconds), `denied` of them denied, and
    /// returns the verdicts of the buckets this closed.
    fn minute(b: &mut Baseline, s: &Settings, m: i64, n: u32, denied: u32, resources: u32) -> Vec<Verdict> {
        let mut verdicts = Vec::new();
        for i in 0..n {
            let resource = format!("crm:contacts/{}/x", i % resources.max(1));
            let obs = Observation {
                at: at(m, i64::from(i % 60)),
                resource: &resource,
                tool: None,
                denied: i < denied,
                bytes: None,
            };
            verdicts.extend(b.observe(&obs, s));
        }
        verdicts
    }

    fn alerted(v: &[Verdict]) -> bool {
        v.iter().any(|v| matches!(v, Verdict::Alert(_) | Verdict::Suspend(_)))
    }

    /// A steady agent: 20 to 24 requests a minute over 3 resources.
    fn trained(s: &Settings, minutes: i64) -> Baseline {
        let mut b = Baseline::default();
        for m in 0..minutes {
            let v = minute(&mut b, s, m, 20 + u32::try_from(m % 5).unwrap(), 0, 3);
            assert!(!alerted(&v), "steady traffic alerted at minute {m}: {v:?}");
        }
        b
    }

    #[test]
    fn nothing_is_judged_while_learning_and_steady_traffic_stays_normal() {
        let s = Settings::default();
        let mut b = Baseline::default();
        let v = minute(&mut b, &s, 0, 500, 0, 3);
        assert!(v.is_empty());
        assert_eq!(b.judge_open(&s), Verdict::Learning);
        let b = trained(&s, 120);
        assert!(b.learned() >= 119);
        assert!(matches!(b.judge_open(&s), Verdict::Normal(_)));
    }

    #[test]
    fn a_burst_is_caught_inside_its_bucket_and_is_not_learned() {
        let s = Settings::default();
        let mut b = trained(&s, 60);
        // Minute 60: ten times the usual rate; judged while the bucket is still open. The rate alone
        // alerts (it never suspends before its hour of the day has a profile).
        minute(&mut b, &s, 60, 200, 0, 3);
        let Verdict::Alert(e) = b.judge_open(&s) else { panic!("{:?}", b.judge_open(&s)) };
        assert_eq!(e.feature, Feature::Requests);
        assert!(e.observed >= 200.0 && e.expected < 25.0 && e.score > s.suspend, "{e}");
        // Closing it reports it, and the baseline has not moved towards it.
        let v = minute(&mut b, &s, 61, 22, 0, 3);
        assert!(matches!(v.as_slice(), [Verdict::Alert(_)]), "{v:?}");
        minute(&mut b, &s, 62, 22, 0, 3);
        assert!(matches!(b.judge_open(&s), Verdict::Normal(_)));
    }

    #[test]
    fn new_resources_and_denials_are_anomalies_of_their_own() {
        let s = Settings::default();
        let mut b = trained(&s, 60);
        minute(&mut b, &s, 60, 22, 0, 22);
        let v = b.judge_open(&s);
        assert!(matches!(&v, Verdict::Suspend(e) if e.feature == Feature::Resources), "{v:?}");
        let mut b = trained(&s, 60);
        minute(&mut b, &s, 60, 22, 11, 3);
        let v = b.judge_open(&s);
        assert!(matches!(&v, Verdict::Suspend(e) if e.feature == Feature::DenialRatio), "{v:?}");
    }

    #[test]
    fn a_slow_ramp_is_not_learned_as_normal() {
        let s = Settings::default();
        let mut b = trained(&s, 60);
        // 5% more every minute: each step is small, the sum is not.
        let mut rate = 22.0_f64;
        let mut first_alert = None;
        for m in 60..200 {
            rate *= 1.05;
            let n = rate as u32;
            let v = minute(&mut b, &s, m, n, 0, 3);
            if alerted(&v) {
                first_alert = Some((m, n));
                break;
            }
        }
        let (m, n) = first_alert.expect("a ramp to many times the baseline must alert");
        assert!(n < 100, "alerted only at {n} requests a minute (minute {m})");
        // The same growth applied as fast as max_growth allows is learned without alerting.
        let mut b = trained(&s, 60);
        let mut rate = 22.0_f64;
        for m in 60..200 {
            rate *= 1.0 + s.max_growth / 2.0;
            assert!(!alerted(&minute(&mut b, &s, m, rate as u32, 0, 3)), "slow growth alerted at {m}");
        }
    }

    #[test]
    fn the_hour_of_day_has_a_profile_of_its_own() {
        // Hour-long buckets: a day is 24 of them.
        let s = Settings { bucket: Duration::from_secs(3600), warmup: 5, ..Settings::default() };
        let mut b = Baseline::default();
        let hour = |b: &mut Baseline, h: i64, n: u32| minute(b, &s, h * 60, n, 0, 2);
        // Ten days busy at 10:00 (30 requests), quiet (2) otherwise. The first days may alert at 10:00
        // against the overall rate, until that hour has its profile; then nothing does.
        for day in 0..10 {
            for h in 0..24 {
                let v = hour(&mut b, day * 24 + h, if h == 10 { 30 } else { 2 });
                assert!(!v.iter().any(|v| matches!(v, Verdict::Suspend(_))), "day {day} hour {h}: {v:?}");
                assert!(day < 6 || !alerted(&v), "day {day} hour {h}: {v:?}");
            }
        }
        // 30 at 3 a.m. is normal for 10:00, not for 3 a.m.
        hour(&mut b, 10 * 24 + 3, 30);
        let v = b.judge_open(&s);
        assert!(
            matches!(&v, Verdict::Alert(e) | Verdict::Suspend(e) if e.feature == Feature::RequestsForHour),
            "{v:?}"
        );
        hour(&mut b, 10 * 24 + 4, 2);
        hour(&mut b, 10 * 24 + 10, 30);
        assert!(matches!(b.judge_open(&s), Verdict::Normal(_)), "{:?}", b.judge_open(&s));
    }
}

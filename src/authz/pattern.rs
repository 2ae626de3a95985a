//! Resource and tool patterns. Pure.
//!
//! A resource is a string of segments separated by `/` (`crm:contacts/42`). In a pattern, a segment that is
//! exactly `*` matches one segment, a segment that is exactly `**` matches any number of segments (zero
//! included), and a `*` inside a segment matches any run of characters within that segment (`contacts-*`).
//! A segment that ends in `**` after literal text (`crm:**`) is short for `crm:*/**`: a first segment
//! starting with `crm:`, then any depth. Everything else is literal. Tool names are matched as one segment with the same in-segment glob.
//!
//! Resources are matched in their canonical form ([`super::resource`]), so a pattern whose text is not
//! canonical (`crm:contacts/`, `a/../b`, `a/%2e`, a backslash) could never match and is refused.

use std::fmt;
use std::ops::Add;

use super::resource::{PatternTextError, check_pattern};

/// Most segments a pattern may have; bounds the matcher's work together with [`MAX_DEEP_WILDCARDS`].
pub const MAX_SEGMENTS: usize = 32;
/// Most `**` segments in one pattern: each one can multiply the backtracking work by the resource's depth.
pub const MAX_DEEP_WILDCARDS: usize = 2;

/// Why a pattern does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// Empty pattern.
    #[error("is empty")]
    Empty,
    /// A `**` mixed with other characters in one segment.
    #[error("segment {0:?} mixes \"**\" with other characters; \"**\" must be a whole segment")]
    MixedDeepWildcard(String),
    /// Too many segments.
    #[error("has more than {MAX_SEGMENTS} segments")]
    TooManySegments,
    /// Too many `**`.
    #[error("has more than {MAX_DEEP_WILDCARDS} \"**\" segments")]
    TooManyDeepWildcards,
    /// A control character.
    #[error("contains a control character")]
    ControlCharacter,
    /// Text no canonical resource has (see [`super::resource`]).
    #[error("{0}")]
    NotCanonical(#[from] PatternTextError),
}

/// One compiled segment.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// Matches exactly this text.
    Literal(Box<str>),
    /// `*`: any one segment.
    One,
    /// `**`: any number of segments.
    Deep,
    /// Text with `*` inside: any run of characters within the segment at each `*`.
    Glob(Box<str>),
}

/// A compiled resource pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourcePattern {
    source: Box<str>,
    segments: Box<[Segment]>,
}

impl ResourcePattern {
    /// Compiles `pattern`.
    pub fn parse(pattern: &str) -> Result<Self, PatternError> {
        if pattern.is_empty() {
            return Err(PatternError::Empty);
        }
        if pattern.chars().any(char::is_control) {
            return Err(PatternError::ControlCharacter);
        }
        check_pattern(pattern)?;
        let mut segments = Vec::new();
        let mut deep = 0;
        for raw in pattern.split('/') {
            let segment = match raw {
                "*" => Segment::One,
                "**" => {
                    deep += 1;
                    Segment::Deep
                }
                // "crm:**" is "crm:*" followed by "**": a segment starting with "crm:", then any depth.
                s if s.ends_with("**") && !s.trim_end_matches('*').contains('*') && s.len() > 2 => {
                    segments.push(Segment::Glob(s.trim_end_matches('*').to_owned().add("*").into()));
                    deep += 1;
                    Segment::Deep
                }
                s if s.contains("**") => return Err(PatternError::MixedDeepWildcard(s.to_owned())),
                s if s.contains('*') => Segment::Glob(s.into()),
                s => Segment::Literal(s.into()),
            };
            // Consecutive `**` match the same as one; keeping both would only add backtracking.
            if segment == Segment::Deep && segments.last() == Some(&Segment::Deep) {
                deep -= 1;
                continue;
            }
            segments.push(segment);
        }
        if segments.len() > MAX_SEGMENTS {
            return Err(PatternError::TooManySegments);
        }
        if deep > MAX_DEEP_WILDCARDS {
            return Err(PatternError::TooManyDeepWildcards);
        }
        Ok(Self { source: pattern.into(), segments: segments.into() })
    }

    /// The first segment when it is literal: the index files the pattern under it.
    pub fn literal_prefix(&self) -> Option<&str> {
        match self.segments.first() {
            Some(Segment::Literal(s)) => Some(s),
            _ => None,
        }
    }

    /// Whether the resource, already split on `/`, matches.
    pub fn matches(&self, resource: &[&str]) -> bool {
        match_segments(&self.segments, resource)
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether every resource `narrower` matches, this pattern matches too: what a delegation's scope may
    /// pass on. Decided on the patterns' structure, never on their text (`crm:contacts/*` does not cover
    /// `crm:contacts/*/notes`, though it is a prefix of it):
    ///
    /// - a `**` here may stand for any run of `narrower`'s segments, its own `**` included;
    /// - a `*` segment here covers any one segment of `narrower` but a `**`;
    /// - a segment with `*` inside covers a literal it matches, or a glob whose every expansion it matches
    ///   (its `*`s covered only by `*`s here);
    /// - a literal covers only the same literal (case-sensitive, like matching).
    ///
    /// Sound: when it says yes, every resource `narrower` matches is matched here (a property test checks it
    /// on random patterns). It may say no to a few patterns that are in fact narrower, such as a glob that a
    /// union of this pattern's alternatives would cover; those are refused, never widened.
    pub fn covers(&self, narrower: &ResourcePattern) -> bool {
        covers_segments(&self.segments, &narrower.segments)
    }

    /// Whether some resource might match both patterns. Conservative: it says yes whenever it cannot
    /// rule it out (two globs are taken to overlap), and no only when no resource matches both, so a
    /// caller that refuses on yes never misses a real overlap (a property test checks it).
    pub fn may_overlap(&self, other: &ResourcePattern) -> bool {
        let cols = other.segments.len() + 1;
        let mut memo: Vec<Option<bool>> = vec![None; (self.segments.len() + 1) * cols];
        overlap_from(&self.segments, &other.segments, 0, 0, cols, &mut memo)
    }
}

fn overlap_from(
    a: &[Segment],
    b: &[Segment],
    i: usize,
    j: usize,
    cols: usize,
    memo: &mut [Option<bool>],
) -> bool {
    if let Some(Some(known)) = memo.get(i * cols + j) {
        return *known;
    }
    let result = match (a.get(i), b.get(j)) {
        (None, None) => true,
        // A `**` stands for nothing, or takes the other side's next segment (whatever it is) and goes on.
        (Some(Segment::Deep), next) => {
            overlap_from(a, b, i + 1, j, cols, memo)
                || (next.is_some() && overlap_from(a, b, i, j + 1, cols, memo))
        }
        (next, Some(Segment::Deep)) => {
            overlap_from(a, b, i, j + 1, cols, memo)
                || (next.is_some() && overlap_from(a, b, i + 1, j, cols, memo))
        }
        (None, Some(_)) | (Some(_), None) => false,
        (Some(x), Some(y)) => segment_overlaps(x, y) && overlap_from(a, b, i + 1, j + 1, cols, memo),
    };
    if let Some(slot) = memo.get_mut(i * cols + j) {
        *slot = Some(result);
    }
    result
}

/// Whether one segment text might match both (neither is `**`). Two globs overlap unless their literal
/// starts (before the first `*`) or ends (after the last) disagree, which no text can satisfy at once.
fn segment_overlaps(x: &Segment, y: &Segment) -> bool {
    match (x, y) {
        (Segment::Literal(l), Segment::Literal(m)) => l == m,
        (Segment::Literal(l), Segment::Glob(g)) | (Segment::Glob(g), Segment::Literal(l)) => glob(g, l),
        (Segment::Glob(g), Segment::Glob(h)) => {
            let start = |s: &str| s.split('*').next().unwrap_or_default().to_owned();
            let end = |s: &str| s.rsplit('*').next().unwrap_or_default().to_owned();
            let (gs, hs, ge, he) = (start(g), start(h), end(g), end(h));
            (gs.starts_with(&hs) || hs.starts_with(&gs)) && (ge.ends_with(&he) || he.ends_with(&ge))
        }
        _ => true,
    }
}

/// [`ResourcePattern::covers`] on segment lists. Memoised over (position here, position there); both lists
/// hold at most [`MAX_SEGMENTS`] segments, so the table is small.
fn covers_segments(wide: &[Segment], narrow: &[Segment]) -> bool {
    let cols = narrow.len() + 1;
    // memo[i * cols + j]: None not yet computed.
    let mut memo: Vec<Option<bool>> = vec![None; (wide.len() + 1) * cols];
    covers_from(wide, narrow, 0, 0, cols, &mut memo)
}

fn covers_from(
    wide: &[Segment],
    narrow: &[Segment],
    i: usize,
    j: usize,
    cols: usize,
    memo: &mut [Option<bool>],
) -> bool {
    if let Some(Some(known)) = memo.get(i * cols + j) {
        return *known;
    }
    let result = match (wide.get(i), narrow.get(j)) {
        (None, next) => next.is_none(),
        // A `**` here stands for nothing, or takes the next segment there (whatever it is) and goes on.
        (Some(Segment::Deep), next) => {
            covers_from(wide, narrow, i + 1, j, cols, memo)
                || (next.is_some() && covers_from(wide, narrow, i, j + 1, cols, memo))
        }
        (Some(_), None) => false,
        // Only a `**` here covers a `**` there: it may stand for any number of segments.
        (Some(_), Some(Segment::Deep)) => false,
        (Some(w), Some(n)) => segment_covers(w, n) && covers_from(wide, narrow, i + 1, j + 1, cols, memo),
    };
    if let Some(slot) = memo.get_mut(i * cols + j) {
        *slot = Some(result);
    }
    result
}

/// Whether the one segment `wide` matches every text the one segment `narrow` matches (neither is `**`).
fn segment_covers(wide: &Segment, narrow: &Segment) -> bool {
    match (wide, narrow) {
        (Segment::Deep, _) | (_, Segment::Deep) => false,
        (Segment::One, _) => true,
        (Segment::Literal(w), Segment::Literal(n)) => w == n,
        (Segment::Literal(_), _) => false,
        (Segment::Glob(g), Segment::Literal(n)) => glob(g, n),
        // `*` matches every segment; a glob here always has a literal character, which not every
        // segment holds.
        (Segment::Glob(g), Segment::One) => g.bytes().all(|b| b == b'*'),
        (Segment::Glob(g), Segment::Glob(h)) => glob_covers(g.as_bytes(), h.as_bytes()),
    }
}

/// Whether every expansion of the glob `narrow` matches the glob `wide`: `wide` must match `narrow`'s text
/// with each of `narrow`'s `*` consumed by one of `wide`'s `*` (which may take any run, `*`s included).
/// Dynamic programming over (i, j); segments are at most 253 bytes.
fn glob_covers(wide: &[u8], narrow: &[u8]) -> bool {
    let cols = narrow.len() + 1;
    // can[i * cols + j]: wide[i..] covers narrow[j..]. Filled from the ends backwards.
    let mut can = vec![false; (wide.len() + 1) * cols];
    if let Some(last) = can.last_mut() {
        *last = true;
    }
    for i in (0..wide.len()).rev() {
        for j in (0..=narrow.len()).rev() {
            let at = |i: usize, j: usize| can.get(i * cols + j).copied().unwrap_or(false);
            let value = match wide.get(i) {
                Some(b'*') => at(i + 1, j) || (j < narrow.len() && at(i, j + 1)),
                Some(c) => narrow.get(j).is_some_and(|n| n == c && *n != b'*') && at(i + 1, j + 1),
                None => j == narrow.len(),
            };
            if let Some(slot) = can.get_mut(i * cols + j) {
                *slot = value;
            }
        }
    }
    can.first().copied().unwrap_or(false)
}

impl fmt::Display for ResourcePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

fn match_segments(pattern: &[Segment], resource: &[&str]) -> bool {
    let Some((first, rest)) = pattern.split_first() else { return resource.is_empty() };
    match first {
        // Try every split point; the pattern holds at most MAX_DEEP_WILDCARDS of these, so the work is
        // bounded by depth^MAX_DEEP_WILDCARDS segment comparisons.
        Segment::Deep => {
            (0..=resource.len()).any(|skip| match_segments(rest, resource.get(skip..).unwrap_or(&[])))
        }
        _ => match resource.split_first() {
            Some((head, tail)) => match_one(first, head) && match_segments(rest, tail),
            None => false,
        },
    }
}

fn match_one(segment: &Segment, text: &str) -> bool {
    match segment {
        Segment::Literal(s) => **s == *text,
        Segment::One => true,
        Segment::Deep => false,
        Segment::Glob(g) => glob(g, text),
    }
}

/// A tool-name pattern: `*` alone matches every tool, `*` inside matches any run of characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolPattern(Box<str>);

impl ToolPattern {
    /// Compiles `pattern`.
    pub fn parse(pattern: &str) -> Result<Self, PatternError> {
        if pattern.is_empty() {
            return Err(PatternError::Empty);
        }
        if pattern.chars().any(char::is_control) {
            return Err(PatternError::ControlCharacter);
        }
        Ok(Self(pattern.into()))
    }

    /// Whether `tool` matches.
    pub fn matches(&self, tool: &str) -> bool {
        glob(&self.0, tool)
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Wildcard match where `*` matches any run of bytes (patterns and texts are UTF-8 and `*` is ASCII, so a
/// match never splits a character in a way that matters for equality). Linear-time greedy algorithm with
/// one backtrack point, so a hostile text cannot make it exponential.
pub(crate) fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(c) if Some(c) == t.get(ti) => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p.get(pi..).is_some_and(|rest| rest.iter().all(|&c| c == b'*'))
}

/// Splits a resource into segments for [`ResourcePattern::matches`].
pub fn split_resource(resource: &str) -> Vec<&str> {
    resource.split('/').collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, resource: &str) -> bool {
        ResourcePattern::parse(pattern).unwrap().matches(&split_resource(resource))
    }

    #[test]
    fn one_star_matches_exactly_one_segment() {
        assert!(m("crm:contacts/*", "crm:contacts/42"));
        assert!(!m("crm:contacts/*", "crm:contacts"));
        assert!(!m("crm:contacts/*", "crm:contacts/42/notes"));
        assert!(m("crm:contacts/*/notes", "crm:contacts/42/notes"));
        assert!(!m("crm:contacts/*", "crm:leads/42"));
    }

    #[test]
    fn double_star_matches_any_depth_including_zero() {
        assert!(m("crm:contacts/**", "crm:contacts"));
        assert!(m("crm:contacts/**", "crm:contacts/42/notes/7"));
        assert!(m("crm:**/notes", "crm:contacts/42/notes"));
        assert!(!m("crm:**/notes", "crm:notes"), "crm:** needs a first segment that starts with crm:");
        assert!(!m("crm:**/notes", "crm:contacts/42/notes/7"));
        assert!(m("**", "anything/at/all"));
        assert!(m("a/**/b/**/c", "a/x/b/y/z/c"));
        assert!(m("crm:**", "crm:contacts/42/notes"));
        assert!(m("crm:**", "crm:contacts"));
        assert!(!m("crm:**", "erp:contacts/42"));
        assert!(!m("a/**/b/**/c", "a/x/y/z/c"));
    }

    #[test]
    fn in_segment_globs_stay_within_the_segment() {
        assert!(m("crm:contacts-*/x", "crm:contacts-eu/x"));
        assert!(!m("crm:contacts-*/x", "crm:leads-eu/x"));
        assert!(m("crm:*", "crm:contacts"));
        assert!(!m("crm:*", "crm:contacts/42"));
        assert!(m("s3:bucket/*.csv", "s3:bucket/report.csv"));
        assert!(!m("s3:bucket/*.csv", "s3:bucket/report.csv.gz"));
    }

    #[test]
    fn literals_are_exact() {
        assert!(m("crm:contacts", "crm:contacts"));
        assert!(!m("crm:contacts", "crm:contacts/"));
        assert!(!m("crm:contacts", "CRM:contacts"));
        assert!(!m("crm:contacts/42", "crm:contacts/420"));
    }

    #[test]
    fn bad_patterns_are_refused_with_reasons() {
        assert_eq!(ResourcePattern::parse(""), Err(PatternError::Empty));
        assert!(matches!(ResourcePattern::parse("a/**x/b"), Err(PatternError::MixedDeepWildcard(_))));
        assert!(matches!(ResourcePattern::parse("a/x**y"), Err(PatternError::MixedDeepWildcard(_))));
        assert!(matches!(ResourcePattern::parse("a/x*y**"), Err(PatternError::MixedDeepWildcard(_))));
        assert_eq!(ResourcePattern::parse("a/**/b/**/c/**/d"), Err(PatternError::TooManyDeepWildcards));
        assert_eq!(ResourcePattern::parse(&"a/".repeat(40).add("a")), Err(PatternError::TooManySegments));
        assert_eq!(ResourcePattern::parse("a\nb"), Err(PatternError::ControlCharacter));
        // Adjacent ** collapse, so they do not count twice.
        assert!(ResourcePattern::parse("a/**/**/**/b").is_ok());
    }

    #[test]
    fn patterns_that_no_canonical_resource_matches_are_refused() {
        for bad in [
            "crm:contacts/",
            "crm:contacts//*",
            "/crm/*",
            "crm:contacts/../*",
            "crm:contacts/./*",
            "crm:contacts/%2e%2e/*",
            "crm:contacts/%2F*",
            "crm:contacts\\*",
            "crm:contacts/%41",
            "crm:contacts/*;x",
            "crm:contacts/\u{FF0F}*",
        ] {
            assert!(
                matches!(ResourcePattern::parse(bad), Err(PatternError::NotCanonical(_))),
                "{bad:?}: {:?}",
                ResourcePattern::parse(bad)
            );
        }
        let e = ResourcePattern::parse("crm:contacts/").unwrap_err().to_string();
        assert!(e.contains("not in canonical form"), "{e}");
    }

    #[test]
    fn literal_prefix_only_for_literal_first_segments() {
        assert_eq!(ResourcePattern::parse("crm:x/*").unwrap().literal_prefix(), Some("crm:x"));
        assert_eq!(ResourcePattern::parse("*/x").unwrap().literal_prefix(), None);
        assert_eq!(ResourcePattern::parse("crm:*/x").unwrap().literal_prefix(), None);
    }

    #[test]
    fn glob_is_linear_on_hostile_input() {
        let text = "a".repeat(10_000);
        let pattern = format!("{}b", "*a".repeat(20));
        let started = std::time::Instant::now();
        assert!(!glob(&pattern, &text));
        assert!(glob("*a*a*", &text));
        // Not a timing assertion on the machine: only that a pathological case finishes at all.
        let _ = started.elapsed();
    }

    #[test]
    fn tools_match_by_glob() {
        let t = |p: &str, s: &str| ToolPattern::parse(p).unwrap().matches(s);
        assert!(t("*", "anything"));
        assert!(t("search_*", "search_contacts"));
        assert!(!t("search_*", "delete_contacts"));
        assert!(t("send_email", "send_email"));
        assert!(!t("send_email", "send_emails"));
    }

    fn covers(wide: &str, narrow: &str) -> bool {
        ResourcePattern::parse(wide).unwrap().covers(&ResourcePattern::parse(narrow).unwrap())
    }

    #[test]
    fn covering_follows_what_patterns_match_not_their_text() {
        for (wide, narrow) in [
            ("crm:contacts/*", "crm:contacts/42"),
            ("crm:contacts/*", "crm:contacts/*"),
            ("crm:contacts/**", "crm:contacts/*/notes"),
            ("crm:contacts/**", "crm:contacts/**"),
            ("crm:contacts/**", "crm:contacts"),
            ("crm:**", "crm:contacts/42"),
            ("crm:**", "crm:leads/**"),
            ("**", "anything/*/**"),
            ("crm:contacts/*", "crm:contacts/eu-*"),
            ("crm:contacts/eu-*", "crm:contacts/eu-west-*"),
            ("s3:bucket/*.csv", "s3:bucket/2026-*.csv"),
            ("a/**/z", "a/b/**/z"),
        ] {
            assert!(covers(wide, narrow), "{wide} should cover {narrow}");
        }
        for (wide, narrow) in [
            // A prefix of the text is not a cover.
            ("crm:contacts/*", "crm:contacts/*/notes"),
            ("crm:contacts", "crm:contacts/42"),
            ("crm:contacts/4", "crm:contacts/42"),
            // Wider wildcards.
            ("crm:contacts/*", "crm:contacts/**"),
            ("crm:contacts/42", "crm:contacts/*"),
            ("crm:contacts/eu-*", "crm:contacts/*"),
            ("crm:contacts/eu-west-*", "crm:contacts/eu-*"),
            ("crm:*", "crm:**"),
            ("crm:**", "**"),
            ("crm:**", "*"),
            ("crm:contacts/**", "crm:*/**"),
            // Case is not folded.
            ("crm:contacts/*", "CRM:contacts/*"),
            ("crm:contacts/*", "crm:Contacts/42"),
            ("s3:bucket/*.csv", "s3:bucket/*"),
            ("a/**/z", "a/**"),
        ] {
            assert!(!covers(wide, narrow), "{wide} must not cover {narrow}");
        }
    }

    #[test]
    fn overlap_is_ruled_out_only_where_no_resource_matches_both() {
        let overlap = |a: &str, b: &str| {
            ResourcePattern::parse(a).unwrap().may_overlap(&ResourcePattern::parse(b).unwrap())
        };
        for (a, b) in [
            ("crm:contacts/*", "crm:contacts/42"),
            ("crm:**", "crm:contacts/42/notes"),
            ("**", "pay:x"),
            ("a/**/z", "a/b/**"),
            ("crm:contacts/eu-*", "crm:contacts/*-1"),
        ] {
            assert!(overlap(a, b) && overlap(b, a), "{a} and {b} overlap");
        }
        for (a, b) in [
            ("crm:contacts/*", "crm:contacts/*/notes"),
            ("crm:contacts/42", "crm:contacts/43"),
            ("pay:**", "crm:**"),
            ("crm:contacts/eu-*", "crm:contacts/us"),
            ("a/*", "a"),
        ] {
            assert!(!overlap(a, b) && !overlap(b, a), "{a} and {b} do not overlap");
        }
    }

    proptest::proptest! {
        #[test]
        fn whatever_a_covered_pattern_matches_its_cover_matches(
            wide in "(a|b|\\*|\\*\\*|a\\*|\\*b)(/(a|b|ab|\\*|\\*\\*|a\\*|\\*b)){0,3}",
            narrow in "(a|b|\\*|\\*\\*|a\\*|\\*b|ab)(/(a|b|ab|\\*|\\*\\*|a\\*|\\*b)){0,3}",
            resource in "(a|b|ab|ba|aab)(/(a|b|ab|ba|abb)){0,5}",
        ) {
            let (Ok(w), Ok(n)) = (ResourcePattern::parse(&wide), ResourcePattern::parse(&narrow)) else {
                return Ok(());
            };
            let segments = split_resource(&resource);
            if w.covers(&n) && n.matches(&segments) {
                proptest::prop_assert!(w.matches(&segments), "{wide} covers {narrow}, matches not {resource}");
            }
        }

        #[test]
        fn patterns_said_not_to_overlap_never_match_one_resource(
            a in "(a|b|\\*|\\*\\*|a\\*|\\*b)(/(a|b|ab|\\*|\\*\\*|a\\*|\\*b)){0,3}",
            b in "(a|b|\\*|\\*\\*|a\\*|\\*b|ab)(/(a|b|ab|\\*|\\*\\*|a\\*|\\*b)){0,3}",
            resource in "(a|b|ab|ba|aab)(/(a|b|ab|ba|abb)){0,5}",
        ) {
            let (Ok(x), Ok(y)) = (ResourcePattern::parse(&a), ResourcePattern::parse(&b)) else {
                return Ok(());
            };
            let segments = split_resource(&resource);
            if x.matches(&segments) && y.matches(&segments) {
                proptest::prop_assert!(x.may_overlap(&y) && y.may_overlap(&x), "{a} and {b} both match {resource}");
            }
        }

        #[test]
        fn every_pattern_covers_itself(p in "(a|b|\\*|\\*\\*|a\\*|\\*b)(/(a|b|\\*|\\*\\*|a\\*|\\*b)){0,4}") {
            if let Ok(pattern) = ResourcePattern::parse(&p) {
                proptest::prop_assert!(pattern.covers(&pattern), "{p}");
            }
        }

        #[test]
        fn glob_covering_agrees_with_matching_on_literals(g in "[ab*]{1,6}", t in "[ab]{1,8}") {
            // A literal is covered exactly when it is matched.
            proptest::prop_assert_eq!(glob_covers(g.as_bytes(), t.as_bytes()), glob(&g, &t));
        }
    }

    proptest::proptest! {
        #[test]
        fn a_literal_pattern_matches_only_itself(a in "[a-z:]{1,8}(/[a-z0-9]{1,5}){0,4}", b in "[a-z:]{1,8}(/[a-z0-9]{1,5}){0,4}") {
            proptest::prop_assert_eq!(m(&a, &b), a == b);
        }

        #[test]
        fn double_star_suffix_matches_every_extension(base in "[a-z:]{1,8}(/[a-z0-9]{1,5}){0,3}", ext in "(/[a-z0-9]{1,5}){0,4}") {
            let pattern = format!("{base}/**");
            let resource = format!("{base}{ext}");
            proptest::prop_assert!(m(&pattern, &resource));
        }

        #[test]
        fn glob_agrees_with_a_reference_matcher(p in "[ab*]{0,8}", t in "[ab]{0,10}") {
            proptest::prop_assert_eq!(glob(&p, &t), reference_glob(p.as_bytes(), t.as_bytes()));
        }
    }

    fn reference_glob(p: &[u8], t: &[u8]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some((b'*', rest)) => (0..=t.len()).any(|i| reference_glob(rest, &t[i..])),
            Some((c, rest)) => t.first() == Some(c) && reference_glob(rest, &t[1..]),
        }
    }
}

//! Tests of the canonical resource grammar: accepted and refused examples, and properties against a
//! deliberately lenient model of how servers read resources as paths.

use proptest::prelude::*;

use super::*;
use crate::authz::pattern::ResourcePattern;

fn ok(raw: &str) -> String {
    canonical(raw).unwrap_or_else(|e| panic!("{raw:?} should be accepted: {e}")).into_owned()
}

fn refused(raw: &str) -> ResourceError {
    match canonical(raw) {
        Ok(c) => panic!("{raw:?} should be refused, got {c:?}"),
        Err(e) => e,
    }
}

#[test]
fn canonical_resources_are_accepted_as_they_are() {
    for raw in [
        "crm:contacts/42",
        "crm",
        "crm/contacts/1",
        "s3:bucket/report.csv",
        "a/.hidden/b..c/...",
        "crm:contacts/José",
        "mail:inbox/with space",
        "pay:orders/o-1_2~3+4=5,6!7@8",
        "[::1]:8080/x",
    ] {
        assert!(matches!(canonical(raw), Ok(Cow::Borrowed(s)) if s == raw), "{raw:?}");
        assert!(is_canonical(raw), "{raw:?}");
    }
}

#[test]
fn escapes_and_one_trailing_slash_are_canonicalised() {
    assert_eq!(ok("crm:contacts/%34%32"), "crm:contacts/42");
    assert_eq!(ok("crm:contacts/a%2eb"), "crm:contacts/a.b");
    assert_eq!(ok("crm:contacts/Jos%C3%A9"), "crm:contacts/José");
    assert_eq!(ok("crm:contacts/Jos%c3%a9"), "crm:contacts/José", "hex digits in either case");
    assert_eq!(ok("mail:inbox/with%20space"), "mail:inbox/with space");
    assert_eq!(ok("crm:contacts/"), "crm:contacts");
    assert_eq!(ok("crm/"), "crm");
    for raw in ["crm:contacts/%34%32", "crm:contacts/"] {
        assert!(!is_canonical(raw), "{raw:?} is accepted but not canonical");
    }
}

#[test]
fn the_reviewed_escapes_are_refused() {
    use ResourceError::*;
    let cases: &[(&str, ResourceError)] = &[
        ("", Empty),
        ("/", EmptySegment),
        ("/crm/contacts/1", EmptySegment),
        ("crm:contacts//x", EmptySegment),
        ("crm:contacts/x//", EmptySegment),
        ("crm:contacts/.", DotSegment),
        ("crm:contacts/./x", DotSegment),
        ("crm:contacts/../admin", DotSegment),
        ("crm:contacts/..", DotSegment),
        ("crm:contacts/%2e%2e/admin", DotSegment),
        ("crm:contacts/%2E%2e", DotSegment),
        ("crm:contacts/.%2E", DotSegment),
        ("crm:contacts/%2e", DotSegment),
        ("crm:contacts/..%2fadmin", EncodedForbidden('/')),
        ("crm:contacts/x%2Fy", EncodedForbidden('/')),
        ("crm:contacts/%5c..%5cadmin", EncodedForbidden('\\')),
        ("crm:contacts/%5C", EncodedForbidden('\\')),
        ("crm:contacts/%252e%252e", EncodedForbidden('%')),
        ("crm:contacts/50%", BadEscape),
        ("crm:contacts/%zz", BadEscape),
        ("crm:contacts/%2", BadEscape),
        ("crm:contacts/%00", Invisible(0)),
        ("crm:contacts/%0a", Invisible(0x0a)),
        ("crm:contacts/%ff", NotUtf8),
        ("crm:contacts/%c0%ae%c0%ae", NotUtf8),
        ("crm:contacts\\..\\admin", Forbidden('\\')),
        ("crm:contacts/x\\y", Forbidden('\\')),
        ("crm:contacts/..;/admin", Forbidden(';')),
        ("crm:contacts/42;jsessionid=x", Forbidden(';')),
        ("crm:contacts/42?x=/../admin", Forbidden('?')),
        ("crm:contacts/42%3F", Forbidden('?')),
        ("crm:contacts/42#frag", Forbidden('#')),
        ("crm:contacts/a\tb", Invisible(9)),
        ("crm:contacts/vip\u{200B}", Invisible(0x200B)),
        ("crm:contacts/\u{FF0E}\u{FF0E}", Confusable(0xFF0E)),
        ("crm:contacts\u{FF0F}admin", Confusable(0xFF0F)),
        ("crm:contacts/\u{2215}admin", Confusable(0x2215)),
        ("crm:contacts/\u{2025}", Confusable(0x2025)),
        ("crm:contacts/vip ", Whitespace),
        ("crm:contacts/ vip", Whitespace),
        ("crm:contacts/vip%20", Whitespace),
    ];
    for (raw, want) in cases {
        assert_eq!(&refused(raw), want, "{raw:?}");
    }
    assert_eq!(refused(&"a".repeat(MAX_RESOURCE_BYTES + 1)), TooLong);
    assert!(canonical(&"a".repeat(MAX_RESOURCE_BYTES)).is_ok());
}

#[test]
fn messages_say_what_is_wrong() {
    let m = |raw: &str| refused(raw).to_string();
    assert!(m("a/../b").contains("\"..\" segment"), "{}", m("a/../b"));
    assert!(m("a/%2fb").contains("percent-encodes '/'"), "{}", m("a/%2fb"));
    assert!(m("a/\u{FF0F}").contains("U+FF0F"), "{}", m("a/\u{FF0F}"));
}

#[test]
fn patterns_must_be_canonical_text() {
    assert_eq!(check_pattern("crm:contacts/*"), Ok(()));
    assert_eq!(check_pattern("crm:**"), Ok(()));
    assert_eq!(check_pattern("s3:*/*.csv"), Ok(()));
    for bad in ["crm:contacts/", "crm:contacts/%41", "crm:contacts/J%C3%A9"] {
        assert!(matches!(check_pattern(bad), Err(PatternTextError::NotCanonical { .. })), "{bad:?}");
    }
    for bad in ["crm//x", "crm/../x", "crm/./*", "crm/%2e%2e", "crm/a%2fb", "crm\\x", "crm/*;x", "crm/* "] {
        assert!(matches!(check_pattern(bad), Err(PatternTextError::Invalid(_))), "{bad:?}");
    }
    let e = check_pattern("crm:contacts/").unwrap_err().to_string();
    assert!(e.contains("write \"crm:contacts\""), "{e}");
}

// ---- a lenient reader, and properties against it ----

/// Decodes every valid `%XX`, leaves anything else as it is; bytes that are not UTF-8 become U+FFFD.
fn lenient_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let (Some(h), Some(l)) =
                (b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex))
        {
            out.push(h << 4 | l);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How the most lenient resource server we can think of reads `raw` as a path: it decodes escapes up to
/// three times, ends the path at `?` or `#`, applies compatibility mapping of look-alikes, treats `\` as
/// `/`, strips `;` parameters, trims whitespace and drops invisible characters, merges `//`, and resolves
/// dot segments.
fn server_read(raw: &str) -> Vec<String> {
    let mut s = raw.to_owned();
    for _ in 0..3 {
        s = lenient_decode(&s);
    }
    if let Some(i) = s.find(['?', '#']) {
        s.truncate(i);
    }
    let mapped: String = s
        .chars()
        .map(|c| match c {
            '\u{FF0F}' | '\u{2215}' | '\u{2044}' | '\u{29F8}' => "/".to_owned(),
            '\u{FF3C}' | '\u{FE68}' | '\u{2216}' | '\u{29F9}' => "\\".to_owned(),
            '\u{FF0E}' | '\u{FE52}' | '\u{2024}' => ".".to_owned(),
            '\u{2025}' | '\u{FE30}' => "..".to_owned(),
            '\u{FF1B}' | '\u{FE54}' | '\u{037E}' => ";".to_owned(),
            c if in_ranges(INVISIBLE, c) => String::new(),
            c => c.to_string(),
        })
        .collect();
    let mut out: Vec<String> = Vec::new();
    for segment in mapped.replace('\\', "/").split('/') {
        let segment = segment.split(';').next().unwrap_or_default().trim();
        match segment {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s.to_owned()),
        }
    }
    out
}

/// Pieces that hostile resources are made of.
const PIECES: &[&str] = &[
    "a", "b", "x", "/", ".", "..", "%2e", "%2E", "%2f", "%2F", "%5c", "%5C", "%25", "%41", "%", "%3f", "%23",
    "%3b", "%20", "%c3%a9", "é", "%ff", "%00", "\\", ";", "?", "#", " ", "\t", "~", "\u{FF0E}", "\u{FF0F}",
    "\u{FF3C}", "\u{2215}", "\u{2025}", "\u{200B}", "\u{FF1B}",
];

fn hostile() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(PIECES), 1..14).prop_map(|v| v.concat())
}

fn segments(c: &str) -> Vec<String> {
    c.split('/').map(str::to_owned).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn an_accepted_resource_reads_the_same_to_every_reader(raw in hostile()) {
        if let Ok(c) = canonical(&raw) {
            prop_assert_eq!(server_read(&raw), segments(&c), "raw {:?} canonical {:?}", raw, c);
            prop_assert_eq!(server_read(&c), segments(&c));
            prop_assert!(is_canonical(&c), "canonical form {:?} of {:?} is not canonical", c, raw);
        }
    }

    #[test]
    fn no_accepted_resource_escapes_the_pattern_that_matched_it(rest in hostile()) {
        let raw = format!("a/{rest}");
        let one = ResourcePattern::parse("a/*").unwrap();
        let deep = ResourcePattern::parse("a/**").unwrap();
        if let Ok(c) = canonical(&raw) {
            let read = server_read(&raw);
            let split: Vec<&str> = c.split('/').collect();
            if one.matches(&split) {
                prop_assert!(read.len() == 2 && read[0] == "a", "{raw:?} matched a/* but reads as {read:?}");
            }
            if deep.matches(&split) {
                prop_assert!(read.first().is_some_and(|s| s == "a"), "{raw:?} matched a/** but reads as {read:?}");
            }
        }
    }

    #[test]
    fn canonical_never_panics_and_is_idempotent(raw in "\\PC{0,40}") {
        if let Ok(c) = canonical(&raw) {
            let again = canonical(&c).map(Cow::into_owned);
            prop_assert_eq!(again, Ok(c.into_owned()));
        }
    }
}

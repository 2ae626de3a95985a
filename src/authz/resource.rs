//! The canonical resource grammar: the one definition of what a resource may look like, used by every
//! surface that asks for a decision (`/v1/authorize`, ext_authz headers and host + path, `kubectl agentiam
//! can-i`, in-process callers) and by policy compilation. Pure.
//!
//! Why it exists: a resource is matched segment by segment, but whoever acts on the decision (a resource
//! server, a file system, a servlet container) may read the same string as a path and resolve it
//! differently. `crm:contacts/../admin` matches `crm:contacts/*/*`-style patterns segment-wise, and a
//! server resolving dot segments reads `crm:admin`. So only resources that every such reader resolves to
//! exactly the segments we match are accepted:
//!
//! ```text
//! resource = segment *( "/" segment )              1 to 1024 bytes as sent
//! segment  = 1*char, not "." or ".."; no leading or trailing whitespace
//! char     = any Unicode scalar value except control and invisible formatting characters,
//!            "/" (the separator), "\", "%", "?", "#", ";", and the characters that compatibility
//!            normalisation (NFKC) or best-fit code-page mapping turns into one of "./\%?#;"
//! ```
//!
//! What is **canonicalised** rather than refused, because every reader agrees on the result:
//! - percent escapes (`%XX`, either case) are decoded, so `crm:contacts/%34%32` is `crm:contacts/42`
//!   (an escape that decodes to `/`, `\`, `%` or a control character is refused: decoding it would change
//!   the segments or hide a character the grammar refuses);
//! - one trailing `/` is dropped (`crm:contacts/` is `crm:contacts`).
//!
//! Everything else that is not canonical is **refused** with a [`ResourceError`]. Dot segments are refused,
//! not resolved, because readers disagree on when to resolve them (before or after decoding, with or without
//! `;` parameters). Matching stays case-sensitive: a reader that ignores case is not modelled.

use std::borrow::Cow;

/// Longest resource accepted, in bytes as sent (before decoding).
pub const MAX_RESOURCE_BYTES: usize = 1024;

/// Why a resource is not acceptable. Messages complete a sentence that starts with the resource.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    /// Nothing at all.
    #[error("is empty")]
    Empty,
    /// Over [`MAX_RESOURCE_BYTES`].
    #[error("is longer than {MAX_RESOURCE_BYTES} bytes")]
    TooLong,
    /// `a//b`, a leading `/`, or more than one trailing `/`.
    #[error("has an empty segment (a leading \"/\" or \"//\")")]
    EmptySegment,
    /// A `.` or `..` segment, also when written with percent escapes.
    #[error("has a \".\" or \"..\" segment, which readers of paths resolve differently")]
    DotSegment,
    /// A `%` that does not start an escape of two hex digits.
    #[error(
        "has a \"%\" that does not start a percent escape of two hex digits (a literal \"%\" is not allowed)"
    )]
    BadEscape,
    /// An escape of a byte that must not be encoded.
    #[error("percent-encodes {0:?}, which is never allowed in a resource")]
    EncodedForbidden(char),
    /// Escapes that do not decode to UTF-8.
    #[error("has percent escapes that do not decode to UTF-8")]
    NotUtf8,
    /// A character the grammar refuses.
    #[error("contains {0:?}, which readers of paths treat specially")]
    Forbidden(char),
    /// A control or invisible formatting character.
    #[error("contains the control or invisible character U+{0:04X}")]
    Invisible(u32),
    /// A character that normalisation turns into a separator, dot or escape.
    #[error(
        "contains U+{0:04X}, which Unicode compatibility normalisation or best-fit code-page mapping \
         turns into one of . / \\ % ? # ;"
    )]
    Confusable(u32),
    /// A segment starting or ending with whitespace.
    #[error("has a segment with leading or trailing whitespace")]
    Whitespace,
}

/// Characters refused because they turn into one of `./\%?#;` under NFKC (computed with Python's
/// `unicodedata`, Unicode 14: every code point whose NFKC form differs and contains one of them), plus
/// the slash and backslash look-alikes that Windows best-fit mapping turns into `/` and `\` (U+2044,
/// U+2215, U+2216, U+29F8, U+29F9). Inclusive ranges, sorted.
const CONFUSABLE: &[(u32, u32)] = &[
    (0x037E, 0x037E),
    (0x2024, 0x2026),
    (0x2044, 0x2044),
    (0x2047, 0x2049),
    (0x2100, 0x2101),
    (0x2105, 0x2106),
    (0x2215, 0x2216),
    (0x2488, 0x249B),
    (0x29F8, 0x29F9),
    (0x33C2, 0x33C2),
    (0x33C7, 0x33C7),
    (0x33D8, 0x33D8),
    (0xFE14, 0xFE14),
    (0xFE16, 0xFE16),
    (0xFE19, 0xFE19),
    (0xFE30, 0xFE30),
    (0xFE52, 0xFE52),
    (0xFE54, 0xFE54),
    (0xFE56, 0xFE56),
    (0xFE5F, 0xFE5F),
    (0xFE68, 0xFE68),
    (0xFE6A, 0xFE6A),
    (0xFF03, 0xFF03),
    (0xFF05, 0xFF05),
    (0xFF0E, 0xFF0F),
    (0xFF1B, 0xFF1B),
    (0xFF1F, 0xFF1F),
    (0xFF3C, 0xFF3C),
    (0x1F100, 0x1F100),
];

/// Invisible formatting characters that some readers drop (IDNA mapping, "ignorable" stripping), so that
/// `vip\u{200B}` would escape a Deny on `vip` there. Inclusive ranges, sorted.
const INVISIBLE: &[(u32, u32)] =
    &[(0x00AD, 0x00AD), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x2064), (0xFEFF, 0xFEFF)];

fn in_ranges(table: &[(u32, u32)], c: char) -> bool {
    let c = u32::from(c);
    table
        .binary_search_by(|&(lo, hi)| {
            if hi < c {
                std::cmp::Ordering::Less
            } else if lo > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

/// Checks one character of a decoded resource.
fn check_char(c: char) -> Result<(), ResourceError> {
    if c.is_ascii() {
        return match c {
            '\\' | '%' | '?' | '#' | ';' => Err(ResourceError::Forbidden(c)),
            c if c.is_ascii_control() => Err(ResourceError::Invisible(u32::from(c))),
            _ => Ok(()),
        };
    }
    if c.is_control() || in_ranges(INVISIBLE, c) {
        return Err(ResourceError::Invisible(u32::from(c)));
    }
    if in_ranges(CONFUSABLE, c) {
        return Err(ResourceError::Confusable(u32::from(c)));
    }
    Ok(())
}

/// Checks the segments of a decoded resource without a trailing `/`.
fn check_segments(text: &str) -> Result<(), ResourceError> {
    for segment in text.split('/') {
        if segment.is_empty() {
            return Err(ResourceError::EmptySegment);
        }
        if segment == "." || segment == ".." {
            return Err(ResourceError::DotSegment);
        }
        if segment.starts_with(char::is_whitespace) || segment.ends_with(char::is_whitespace) {
            return Err(ResourceError::Whitespace);
        }
        segment.chars().try_for_each(check_char)?;
    }
    Ok(())
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes every `%XX`; refuses incomplete escapes and escapes of `/`, `\`, `%` and control bytes.
fn decode(raw: &str) -> Result<String, ResourceError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b != b'%' {
            out.push(b);
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) =
            (bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex))
        else {
            return Err(ResourceError::BadEscape);
        };
        let decoded = hi << 4 | lo;
        match decoded {
            b'/' | b'\\' | b'%' => return Err(ResourceError::EncodedForbidden(char::from(decoded))),
            d if d.is_ascii_control() => return Err(ResourceError::Invisible(u32::from(d))),
            d => out.push(d),
        }
        i += 3;
    }
    String::from_utf8(out).map_err(|_| ResourceError::NotUtf8)
}

/// The canonical form of `raw` (borrowed when `raw` already is canonical), or why it is refused.
pub fn canonical(raw: &str) -> Result<Cow<'_, str>, ResourceError> {
    if raw.is_empty() {
        return Err(ResourceError::Empty);
    }
    if raw.len() > MAX_RESOURCE_BYTES {
        return Err(ResourceError::TooLong);
    }
    let mut text = if raw.contains('%') { Cow::Owned(decode(raw)?) } else { Cow::Borrowed(raw) };
    if text.len() > 1 && text.ends_with('/') {
        text = match text {
            Cow::Borrowed(s) => Cow::Borrowed(s.get(..s.len() - 1).unwrap_or(s)),
            Cow::Owned(mut s) => {
                s.pop();
                Cow::Owned(s)
            }
        };
    }
    check_segments(&text)?;
    Ok(text)
}

/// Whether `resource` is in canonical form already (what the evaluator requires of every request).
pub fn is_canonical(resource: &str) -> bool {
    matches!(canonical(resource), Ok(Cow::Borrowed(s)) if s.len() == resource.len())
}

/// Why a resource pattern can never match a canonical resource, treating `*` as an ordinary character
/// (the wildcards stand for canonical text, so the text around them must be canonical too).
pub fn check_pattern(pattern: &str) -> Result<(), PatternTextError> {
    match canonical(pattern) {
        Ok(Cow::Borrowed(s)) if s.len() == pattern.len() => Ok(()),
        Ok(c) => Err(PatternTextError::NotCanonical { canonical: c.into_owned() }),
        Err(e) => Err(PatternTextError::Invalid(e)),
    }
}

/// Why the text of a resource pattern is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternTextError {
    /// The pattern would match no canonical resource.
    #[error("{0}, so it could never match a canonical resource")]
    Invalid(ResourceError),
    /// The pattern is written with escapes or a trailing `/`, which resources never have once canonical.
    #[error(
        "is not in canonical form (resources are matched decoded and without a trailing \"/\"): write {canonical:?}"
    )]
    NotCanonical {
        /// The canonical spelling.
        canonical: String,
    },
}

#[cfg(test)]
#[path = "resource_tests.rs"]
mod tests;

//! `application/x-www-form-urlencoded` request bodies, read strictly.
//!
//! RFC 6749 §3.2 says parameters must not repeat, and a parameter without a value is as if it were absent
//! (§3.1). Beyond that we refuse what lenient decoders quietly repair, because a parser that repairs is
//! one that two components can read differently: a `%` without two hex digits, percent-encoded bytes that
//! are not UTF-8, raw bytes outside printable ASCII, and control characters after decoding. Unknown
//! parameters are kept and ignored by the endpoints, as §3.2 asks.

use super::error::OAuthError;

/// Most parameters one request may carry.
pub const MAX_PARAMS: usize = 32;
/// Longest parameter name.
const MAX_NAME: usize = 64;

/// A decoded form: each name once, in the order sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Form {
    params: Vec<(String, String)>,
}

impl Form {
    /// Decodes `body`.
    ///
    /// # Errors
    /// `invalid_request` naming the first problem.
    pub fn parse(body: &[u8]) -> Result<Self, OAuthError> {
        if let Some(b) = body.iter().find(|b| !(0x21..=0x7e).contains(*b)) {
            return Err(OAuthError::request(format!(
                "the form holds the raw byte 0x{b:02x}; percent-encode everything outside printable ASCII"
            )));
        }
        let mut params: Vec<(String, String)> = Vec::new();
        for pair in body.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
            let (name, value) = match pair.iter().position(|b| *b == b'=') {
                Some(i) => (pair.get(..i).unwrap_or_default(), pair.get(i + 1..).unwrap_or_default()),
                None => (pair, &[][..]),
            };
            let name = decode(name)?;
            if name.is_empty() || name.len() > MAX_NAME {
                return Err(OAuthError::request("a form parameter name is empty or longer than 64 bytes"));
            }
            let value = decode(value)?;
            if value.is_empty() {
                continue;
            }
            if params.iter().any(|(n, _)| *n == name) {
                return Err(OAuthError::request(format!("the parameter {name} is repeated")));
            }
            if params.len() == MAX_PARAMS {
                return Err(OAuthError::request(format!("more than {MAX_PARAMS} form parameters")));
            }
            params.push((name, value));
        }
        Ok(Self { params })
    }

    /// The value of `name`, if sent (with a value).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The value of `name`, or `invalid_request` naming it.
    ///
    /// # Errors
    /// When the parameter is absent.
    pub fn require(&self, name: &str) -> Result<&str, OAuthError> {
        self.get(name).ok_or_else(|| OAuthError::request(format!("the parameter {name} is required")))
    }

    /// The names sent, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.params.iter().map(|(n, _)| n.as_str())
    }
}

/// Percent-decodes one name or value (`+` is a space), strictly.
fn decode(raw: &[u8]) -> Result<String, OAuthError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&c) = raw.get(i) {
        match c {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = raw.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
                let byte = hex.filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()));
                let Some(byte) = byte.and_then(|h| u8::from_str_radix(h, 16).ok()) else {
                    return Err(OAuthError::request("the form holds a % not followed by two hex digits"));
                };
                out.push(byte);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    let s = String::from_utf8(out)
        .map_err(|_| OAuthError::request("the form holds percent-encoded bytes that are not UTF-8"))?;
    if s.chars().any(char::is_control) {
        return Err(OAuthError::request("the form holds a control character"));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_names_values_and_plus() {
        let f = Form::parse(b"grant_type=client_credentials&scope=read%40crm%3Aa%2F*+write%40b&x=").unwrap();
        assert_eq!(f.get("grant_type"), Some("client_credentials"));
        assert_eq!(f.get("scope"), Some("read@crm:a/* write@b"));
        assert_eq!(f.get("x"), None, "a parameter without a value is as if absent");
        assert_eq!(f.names().collect::<Vec<_>>(), ["grant_type", "scope"]);
        assert!(f.require("resource").unwrap_err().description.contains("resource is required"));
        assert_eq!(Form::parse(b"").unwrap(), Form::default());
        assert_eq!(Form::parse(b"&&a=1&").unwrap().get("a"), Some("1"));
    }

    #[test]
    fn refuses_what_lenient_decoders_repair() {
        for (body, why) in [
            (&b"scope=a&scope=b"[..], "repeated"),
            (b"sc%6fpe=a&scope=b", "repeated"),
            (b"a=%zz", "two hex digits"),
            (b"a=%4", "two hex digits"),
            (b"a=%", "two hex digits"),
            (b"a=%ff%fe", "not UTF-8"),
            (b"a=%0a", "control character"),
            (b"a=%00", "control character"),
            (b"a=b c", "raw byte 0x20"),
            (b"a=\xc3\xa9", "raw byte 0xc3"),
            (b"=x", "empty"),
        ] {
            let e = Form::parse(body).unwrap_err();
            assert_eq!(e.code, super::super::ErrorCode::InvalidRequest);
            assert!(e.description.contains(why), "{body:?}: {e}");
        }
        let many: Vec<String> = (0..=MAX_PARAMS).map(|i| format!("p{i}=v")).collect();
        assert!(Form::parse(many.join("&").as_bytes()).unwrap_err().description.contains("more than 32"));
        let long = format!("{}=v", "n".repeat(65));
        assert!(Form::parse(long.as_bytes()).is_err());
    }

    #[test]
    fn an_empty_value_does_not_count_as_a_repeat() {
        assert_eq!(Form::parse(b"scope=&scope=x").unwrap().get("scope"), Some("x"));
    }
}

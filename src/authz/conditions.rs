//! Rule conditions compiled for evaluation: time windows, attribute constraints. Pure.
//!
//! A condition that cannot be evaluated (an attribute missing from the request context, or of a type the
//! operator cannot compare) resolves to whichever outcome is stricter for the rule that holds it: it does
//! not hold for an Allow rule (no grant on missing facts) and it holds for a Deny rule (a caller cannot
//! escape a Deny by leaving an attribute out).

use jiff::Timestamp;
use jiff::civil::Weekday as CivilWeekday;
use jiff::tz::TimeZone;
use serde_json::{Map, Value};

use crate::api::{AttributeConstraint, AttributeOperator, TimeWindow, Weekday};

/// Why a condition does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConditionError {
    /// Not "HH:MM".
    #[error("time {0:?} is not HH:MM")]
    Time(String),
    /// A window whose start equals its end would be either empty or the whole day; say which with 00:00-24:00.
    #[error("time window {0}-{0} is ambiguous; use 00:00-24:00 for the whole day")]
    EmptyWindow(String),
    /// Unknown IANA time zone.
    #[error("unknown time zone {0:?}")]
    TimeZone(String),
    /// A numeric operator with a value that is not a number.
    #[error("attribute {key:?}: {operator:?} needs a numeric value, got {value:?}")]
    NotNumeric {
        /// The attribute key.
        key: String,
        /// The operator.
        operator: AttributeOperator,
        /// The value given.
        value: String,
    },
    /// The operator's value or values are missing.
    #[error("attribute {key:?}: {operator:?} needs {needs}")]
    MissingValue {
        /// The attribute key.
        key: String,
        /// The operator.
        operator: AttributeOperator,
        /// What is needed.
        needs: &'static str,
    },
    /// A key with an empty path element.
    #[error("attribute key {0:?} has an empty path element")]
    Key(String),
}

/// A compiled time window.
#[derive(Debug, Clone)]
pub struct Window {
    /// Bit i set: day i (Monday = 0) is included; all bits when no days were given.
    days: u8,
    start: u16,
    end: u16,
    tz: TimeZone,
}

impl Window {
    /// Compiles a window.
    pub fn compile(w: &TimeWindow) -> Result<Self, ConditionError> {
        let start = minutes(&w.start)?;
        let end = minutes(&w.end)?;
        if start == end {
            return Err(ConditionError::EmptyWindow(w.start.clone()));
        }
        let tz = match w.time_zone.as_deref() {
            None | Some("UTC") => TimeZone::UTC,
            Some(name) => TimeZone::get(name).map_err(|_| ConditionError::TimeZone(name.to_owned()))?,
        };
        let days = if w.days.is_empty() { 0x7f } else { w.days.iter().fold(0u8, |acc, d| acc | day_bit(*d)) };
        Ok(Self { days, start, end, tz })
    }

    /// Whether `now` falls inside the window. A window whose end is before its start spans midnight and
    /// belongs to the day it starts on (Fri 22:00-06:00 includes Saturday 03:00).
    pub fn contains(&self, now: Timestamp) -> bool {
        let local = now.to_zoned(self.tz.clone());
        let minute = u16::from(local.hour().unsigned_abs()) * 60 + u16::from(local.minute().unsigned_abs());
        let today = local.weekday();
        if self.start < self.end {
            return self.start <= minute && minute < self.end && self.has(today);
        }
        if minute >= self.start {
            self.has(today)
        } else if minute < self.end {
            self.has(today.previous())
        } else {
            false
        }
    }

    fn has(&self, day: CivilWeekday) -> bool {
        let bit = 1u8 << day.to_monday_zero_offset().unsigned_abs();
        self.days & bit != 0
    }
}

fn day_bit(d: Weekday) -> u8 {
    let i = match d {
        Weekday::Mon => 0,
        Weekday::Tue => 1,
        Weekday::Wed => 2,
        Weekday::Thu => 3,
        Weekday::Fri => 4,
        Weekday::Sat => 5,
        Weekday::Sun => 6,
    };
    1 << i
}

fn minutes(hhmm: &str) -> Result<u16, ConditionError> {
    let bad = || ConditionError::Time(hhmm.to_owned());
    let (h, m) = hhmm.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: u16 = h.parse().map_err(|_| bad())?;
    let m: u16 = m.parse().map_err(|_| bad())?;
    if m >= 60 || h > 24 || (h == 24 && m != 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

/// The compiled comparison.
#[derive(Debug, Clone)]
enum Compare {
    Eq(Scalar),
    Ne(Scalar),
    In(Vec<Scalar>),
    NotIn(Vec<Scalar>),
    Lt(f64),
    Le(f64),
    Gt(f64),
    Ge(f64),
}

/// A constraint value: its text, and its number when it is one.
#[derive(Debug, Clone)]
struct Scalar {
    text: Box<str>,
    number: Option<f64>,
}

impl Scalar {
    fn new(text: &str) -> Self {
        Self { text: text.into(), number: parse_number(text) }
    }

    /// Equality with a context value: numerically when both sides are numbers ("10" equals 10.0), else
    /// as text. None when the value is not comparable (null, object, array).
    fn equals(&self, value: &Value) -> Option<bool> {
        match value {
            Value::String(s) => Some(match (self.number, parse_number(s)) {
                (Some(a), Some(b)) => a == b,
                _ => *self.text == **s,
            }),
            Value::Number(n) => {
                let n = n.as_f64()?;
                Some(self.number.is_some_and(|a| a == n))
            }
            Value::Bool(b) => Some(*self.text == *(if *b { "true" } else { "false" })),
            Value::Null | Value::Array(_) | Value::Object(_) => None,
        }
    }
}

fn parse_number(s: &str) -> Option<f64> {
    let n: f64 = s.trim().parse().ok()?;
    n.is_finite().then_some(n)
}

/// A compiled attribute constraint.
#[derive(Debug, Clone)]
pub struct Attribute {
    /// The path into the context: "customer.region" is `["customer", "region"]`.
    path: Box<[Box<str>]>,
    /// The key as written, for messages.
    key: Box<str>,
    compare: Compare,
}

impl Attribute {
    /// Compiles a constraint.
    pub fn compile(c: &AttributeConstraint) -> Result<Self, ConditionError> {
        let path: Vec<Box<str>> = c.key.split('.').map(Box::from).collect();
        if path.iter().any(|p| p.is_empty()) {
            return Err(ConditionError::Key(c.key.clone()));
        }
        let missing =
            |needs| ConditionError::MissingValue { key: c.key.clone(), operator: c.operator, needs };
        let value = || c.value.as_deref().ok_or_else(|| missing("value"));
        let values = || c.values.as_deref().filter(|v| !v.is_empty()).ok_or_else(|| missing("values"));
        let number = || {
            let v = value()?;
            parse_number(v).ok_or_else(|| ConditionError::NotNumeric {
                key: c.key.clone(),
                operator: c.operator,
                value: v.to_owned(),
            })
        };
        let compare = match c.operator {
            AttributeOperator::Equals => Compare::Eq(Scalar::new(value()?)),
            AttributeOperator::NotEquals => Compare::Ne(Scalar::new(value()?)),
            AttributeOperator::In => Compare::In(values()?.iter().map(|v| Scalar::new(v)).collect()),
            AttributeOperator::NotIn => Compare::NotIn(values()?.iter().map(|v| Scalar::new(v)).collect()),
            AttributeOperator::LessThan => Compare::Lt(number()?),
            AttributeOperator::LessThanOrEqual => Compare::Le(number()?),
            AttributeOperator::GreaterThan => Compare::Gt(number()?),
            AttributeOperator::GreaterThanOrEqual => Compare::Ge(number()?),
        };
        Ok(Self { path: path.into(), key: c.key.as_str().into(), compare })
    }

    /// The key as written.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Whether the constraint holds on `context`; None when it cannot be evaluated (missing attribute or
    /// a type it cannot compare). The caller resolves None by the rule's effect (see the module docs).
    pub fn evaluate(&self, context: &Map<String, Value>) -> Option<bool> {
        let value = lookup(context, &self.key, &self.path)?;
        match &self.compare {
            Compare::Eq(s) => s.equals(value),
            Compare::Ne(s) => s.equals(value).map(|eq| !eq),
            Compare::In(set) => fold_any(set, value),
            Compare::NotIn(set) => fold_any(set, value).map(|any| !any),
            Compare::Lt(n) => number_of(value).map(|v| v < *n),
            Compare::Le(n) => number_of(value).map(|v| v <= *n),
            Compare::Gt(n) => number_of(value).map(|v| v > *n),
            Compare::Ge(n) => number_of(value).map(|v| v >= *n),
        }
    }
}

fn fold_any(set: &[Scalar], value: &Value) -> Option<bool> {
    let mut any = false;
    for s in set {
        any |= s.equals(value)?;
    }
    Some(any)
}

fn number_of(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64().filter(|f| f.is_finite()),
        Value::String(s) => parse_number(s),
        _ => None,
    }
}

/// A flat key with dots ("customer.region") wins over the nested path, so both context shapes work.
fn lookup<'a>(context: &'a Map<String, Value>, key: &str, path: &[Box<str>]) -> Option<&'a Value> {
    if let Some(v) = context.get(key) {
        return Some(v);
    }
    let (first, rest) = path.split_first()?;
    let mut current = context.get(&**first)?;
    for part in rest {
        current = current.as_object()?.get(&**part)?;
    }
    Some(current)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn window(days: &[Weekday], start: &str, end: &str, tz: Option<&str>) -> Window {
        Window::compile(&TimeWindow {
            days: days.to_vec(),
            start: start.into(),
            end: end.into(),
            time_zone: tz.map(String::from),
        })
        .unwrap()
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn business_hours_in_a_time_zone() {
        let w = window(
            &[Weekday::Mon, Weekday::Tue, Weekday::Wed, Weekday::Thu, Weekday::Fri],
            "09:00",
            "17:00",
            Some("Europe/Berlin"),
        );
        // 2026-11-30 is a Monday; Berlin is UTC+1 in winter.
        assert!(w.contains(at("2026-11-30T08:00:00Z")), "09:00 Berlin is inside (start inclusive)");
        assert!(!w.contains(at("2026-11-30T07:59:59Z")));
        assert!(w.contains(at("2026-11-30T15:59:59Z")));
        assert!(!w.contains(at("2026-11-30T16:00:00Z")), "17:00 Berlin is outside (end exclusive)");
        assert!(!w.contains(at("2026-11-29T10:00:00Z")), "Sunday");
    }

    #[test]
    fn windows_across_midnight_belong_to_their_start_day() {
        let w = window(&[Weekday::Fri], "22:00", "06:00", None);
        assert!(w.contains(at("2026-11-27T23:00:00Z")), "Friday 23:00");
        assert!(w.contains(at("2026-11-28T03:00:00Z")), "Saturday 03:00 continues Friday's window");
        assert!(!w.contains(at("2026-11-28T23:00:00Z")), "Saturday 23:00 starts no window");
        assert!(
            !w.contains(at("2026-11-27T03:00:00Z")),
            "Friday 03:00 continues Thursday's, which is absent"
        );
        assert!(!w.contains(at("2026-11-27T12:00:00Z")));
    }

    #[test]
    fn whole_day_and_bad_windows() {
        let w = window(&[], "00:00", "24:00", Some("America/New_York"));
        assert!(w.contains(at("2026-11-28T04:59:59Z")));
        let bad = |start: &str, end: &str, tz: Option<&str>| {
            Window::compile(&TimeWindow {
                days: vec![],
                start: start.into(),
                end: end.into(),
                time_zone: tz.map(String::from),
            })
            .unwrap_err()
        };
        assert!(matches!(bad("09:00", "09:00", None), ConditionError::EmptyWindow(_)));
        assert!(matches!(bad("9:00", "10:00", None), ConditionError::Time(_)));
        assert!(matches!(bad("09:60", "10:00", None), ConditionError::Time(_)));
        assert!(matches!(bad("24:01", "10:00", None), ConditionError::Time(_)));
        assert!(matches!(bad("09:00", "10:00", Some("Mars/Olympus")), ConditionError::TimeZone(_)));
    }

    fn attr(key: &str, op: AttributeOperator, value: Option<&str>, values: Option<&[&str]>) -> Attribute {
        Attribute::compile(&AttributeConstraint {
            key: key.into(),
            operator: op,
            value: value.map(String::from),
            values: values.map(|v| v.iter().map(|s| s.to_string()).collect()),
        })
        .unwrap()
    }

    fn ctx(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn numeric_comparisons_accept_numbers_and_numeric_strings() {
        use AttributeOperator::*;
        let le = attr("amount", LessThanOrEqual, Some("10000"), None);
        assert_eq!(le.evaluate(&ctx(json!({"amount": 10000}))), Some(true));
        assert_eq!(le.evaluate(&ctx(json!({"amount": 10000.01}))), Some(false));
        assert_eq!(le.evaluate(&ctx(json!({"amount": "9999.5"}))), Some(true));
        assert_eq!(le.evaluate(&ctx(json!({"amount": "lots"}))), None);
        assert_eq!(le.evaluate(&ctx(json!({"amount": null}))), None);
        assert_eq!(le.evaluate(&ctx(json!({}))), None);
        assert_eq!(attr("a", LessThan, Some("1"), None).evaluate(&ctx(json!({"a": 1}))), Some(false));
        assert_eq!(attr("a", GreaterThan, Some("1"), None).evaluate(&ctx(json!({"a": 2}))), Some(true));
        assert_eq!(
            attr("a", GreaterThanOrEqual, Some("-1.5"), None).evaluate(&ctx(json!({"a": -1.5}))),
            Some(true)
        );
    }

    #[test]
    fn string_comparisons_and_sets() {
        use AttributeOperator::*;
        let eq = attr("customer.region", Equals, Some("eu"), None);
        assert_eq!(eq.evaluate(&ctx(json!({"customer": {"region": "eu"}}))), Some(true));
        assert_eq!(eq.evaluate(&ctx(json!({"customer.region": "us"}))), Some(false), "flat keys win");
        assert_eq!(eq.evaluate(&ctx(json!({"customer": "eu"}))), None);
        let ne = attr("region", NotEquals, Some("eu"), None);
        assert_eq!(ne.evaluate(&ctx(json!({"region": "us"}))), Some(true));
        assert_eq!(ne.evaluate(&ctx(json!({}))), None);
        let r#in = attr("tier", In, None, Some(&["gold", "silver"]));
        assert_eq!(r#in.evaluate(&ctx(json!({"tier": "gold"}))), Some(true));
        assert_eq!(r#in.evaluate(&ctx(json!({"tier": "bronze"}))), Some(false));
        let not_in = attr("tier", NotIn, None, Some(&["gold"]));
        assert_eq!(not_in.evaluate(&ctx(json!({"tier": "gold"}))), Some(false));
        assert_eq!(not_in.evaluate(&ctx(json!({"tier": ["gold"]}))), None);
        assert_eq!(attr("n", Equals, Some("10"), None).evaluate(&ctx(json!({"n": 10.0}))), Some(true));
        assert_eq!(attr("b", Equals, Some("true"), None).evaluate(&ctx(json!({"b": true}))), Some(true));
    }

    #[test]
    fn bad_constraints_do_not_compile() {
        use AttributeOperator::*;
        let compile = |key: &str, op, value: Option<&str>, values: Option<Vec<String>>| {
            Attribute::compile(&AttributeConstraint {
                key: key.into(),
                operator: op,
                value: value.map(String::from),
                values,
            })
        };
        assert!(matches!(
            compile("amount", LessThan, Some("ten"), None),
            Err(ConditionError::NotNumeric { .. })
        ));
        assert!(matches!(compile("amount", LessThan, None, None), Err(ConditionError::MissingValue { .. })));
        assert!(matches!(compile("tier", In, None, Some(vec![])), Err(ConditionError::MissingValue { .. })));
        assert!(matches!(compile("a..b", Equals, Some("x"), None), Err(ConditionError::Key(_))));
    }
}

//! The authorization bench's workload: rule sets of N rules, each written twice (an AgentPolicy for our engine
//! and an equivalent Rego module for OPA), and one fixed list of requests evaluated by both.
//!
//! Rule `i` governs its own service `svc{i}` and takes one of ten shapes by `i % 10`: plain, recursive (`**`),
//! numeric limit, minimum trust score, `In` on a string attribute, approval required, MCP tools, two resource
//! patterns with `NotEquals`, numeric `GreaterThanOrEqual` and `NotIn`, and a Deny rule (10%) that overlaps an
//! Allow rule. Patterns use whole-segment `*` and a trailing `**` only. In Rego, `*` patterns are
//! `glob.match(p, ["/"], r)`, which agrees exactly with our matcher for whole-segment `*`, and `p/**` is
//! `r == p` or `startswith(r, "p/")`, exactly our zero-or-more segments.

use std::fmt::Write as _;

use serde_json::{Map, Value, json};

/// The agent the rules govern.
pub const AGENT: &str = "bench-agent";
/// The trust-score thresholds the rules use: the agent must score between them.
pub const LOW_TRUST: u16 = 100;
/// See [`LOW_TRUST`].
pub const HIGH_TRUST: u16 = 900;

/// One request, as both servers receive it (ours adds the token, OPA the agent's identity).
#[derive(Clone, Debug)]
pub struct Request {
    pub action: String,
    pub resource: String,
    pub tool: Option<String>,
    pub context: Map<String, Value>,
    /// What the request was built to exercise, for the report's mix table.
    pub intent: &'static str,
}

impl Request {
    /// The body of `POST /v1/authorize`.
    pub fn ours(&self, token: &str) -> Value {
        let mut v = json!({"token": token, "action": self.action, "resource": self.resource});
        self.extend(&mut v);
        v
    }

    /// OPA's `input`: the same fields plus the identity our server reads from the verified token.
    pub fn opa_input(&self, namespace: &str, trust_score: u16) -> Value {
        let mut v = json!({
            "agent": {"name": AGENT, "namespace": namespace, "trustScore": trust_score},
            "action": self.action, "resource": self.resource,
        });
        self.extend(&mut v);
        v
    }

    fn extend(&self, v: &mut Value) {
        if let Some(tool) = &self.tool {
            v["tool"] = json!(tool);
        }
        if !self.context.is_empty() {
            v["context"] = Value::Object(self.context.clone());
        }
    }
}

/// The ten rule shapes, by `i % 10`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    Plain,
    Recursive,
    Amount,
    Trust,
    Region,
    Approval,
    Tools,
    Docs,
    Priority,
    Deny,
}

fn shape(i: usize) -> Shape {
    [
        Shape::Plain,
        Shape::Recursive,
        Shape::Amount,
        Shape::Trust,
        Shape::Region,
        Shape::Approval,
        Shape::Tools,
        Shape::Docs,
        Shape::Priority,
        Shape::Deny,
    ][i % 10]
}

/// The rule's name; zero-padded, so the lexically smallest matching name is also the first in spec order.
pub fn rule_name(i: usize) -> String {
    format!("rule-{i:04}")
}

/// One attribute constraint, in a form both writers understand.
struct Attr {
    key: &'static str,
    op: &'static str,
    value: Value,
}

/// Everything one rule says, before it is written as YAML-ish JSON or as Rego.
struct Rule {
    name: String,
    deny: bool,
    actions: Vec<String>,
    resources: Vec<String>,
    tools: Vec<String>,
    min_trust: Option<u16>,
    attrs: Vec<Attr>,
    approval: bool,
}

fn rule(i: usize) -> Rule {
    let s = format!("svc{i}");
    let strs = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    let mut r = Rule {
        name: rule_name(i),
        deny: false,
        actions: strs(&["read", "list"]),
        resources: vec![format!("{s}:records/*")],
        tools: Vec::new(),
        min_trust: None,
        attrs: Vec::new(),
        approval: false,
    };
    match shape(i) {
        Shape::Plain => {}
        Shape::Recursive => {
            r.actions = strs(&["read", "list", "update"]);
            r.resources = vec![format!("{s}:records/**")];
        }
        Shape::Amount => {
            r.actions = strs(&["refund"]);
            r.resources = vec![format!("{s}:payments/*")];
            r.attrs.push(Attr { key: "amount", op: "LessThanOrEqual", value: json!("10000") });
            r.attrs.push(Attr { key: "currency", op: "In", value: json!(["EUR", "USD", "GBP"]) });
        }
        Shape::Trust => {
            r.actions = strs(&["write", "update"]);
            r.min_trust = Some(if i % 20 == 3 { LOW_TRUST } else { HIGH_TRUST });
        }
        Shape::Region => {
            r.actions = strs(&["read"]);
            r.resources = vec![format!("{s}:customers/*/profile")];
            r.attrs.push(Attr { key: "region", op: "In", value: json!(["eu", "us"]) });
        }
        Shape::Approval => {
            r.actions = strs(&["delete"]);
            r.approval = true;
        }
        Shape::Tools => {
            r.actions = strs(&["invoke"]);
            r.resources = vec![format!("{s}:tools/**")];
            r.tools = vec![format!("{s}.search"), format!("{s}.export")];
        }
        Shape::Docs => {
            r.actions = strs(&["read"]);
            r.resources = vec![format!("{s}:docs/*"), format!("{s}:docs/*/attachments/*")];
            r.attrs.push(Attr { key: "classification", op: "NotEquals", value: json!("secret") });
        }
        Shape::Priority => {
            r.actions = strs(&["update", "patch"]);
            r.resources = vec![format!("{s}:records/*/fields/*")];
            r.attrs.push(Attr { key: "priority", op: "GreaterThanOrEqual", value: json!("3") });
            r.attrs.push(Attr { key: "channel", op: "NotIn", value: json!(["sms", "fax"]) });
        }
        Shape::Deny if i % 20 == 19 => {
            // Overlaps the Amount rule i - 7: large refunds are denied, and so are refunds without an amount.
            r.deny = true;
            r.actions = strs(&["refund", "transfer", "export"]);
            r.resources = vec![format!("svc{}:payments/**", i - 7)];
            r.attrs.push(Attr { key: "amount", op: "GreaterThan", value: json!("5000") });
        }
        Shape::Deny => {
            // Overlaps the Priority rule i - 1: nothing may touch its secret records.
            r.deny = true;
            r.actions = strs(&["*"]);
            r.resources = vec![format!("svc{}:records/secret/**", i - 1)];
        }
    }
    r
}

/// An AgentPolicy with `n` rules selecting [`AGENT`] by name.
pub fn agent_policy(name: &str, namespace: &str, n: usize) -> Value {
    let rules: Vec<Value> = (0..n)
        .map(|i| {
            let r = rule(i);
            let mut v = json!({
                "name": r.name, "effect": if r.deny { "Deny" } else { "Allow" },
                "actions": r.actions, "resources": r.resources,
            });
            if !r.tools.is_empty() {
                v["tools"] = json!(r.tools);
            }
            let mut cond = Map::new();
            if let Some(t) = r.min_trust {
                cond.insert("minTrustScore".into(), json!(t));
            }
            if !r.attrs.is_empty() {
                let attrs: Vec<Value> = r
                    .attrs
                    .iter()
                    .map(|a| {
                        let field = if a.value.is_array() { "values" } else { "value" };
                        json!({"key": a.key, "operator": a.op, field: a.value})
                    })
                    .collect();
                cond.insert("attributes".into(), json!(attrs));
            }
            if r.approval {
                cond.insert("approval".into(), json!("required"));
                cond.insert("approvers".into(), json!({"groups": ["approvers"]}));
            }
            if !cond.is_empty() {
                v["conditions"] = Value::Object(cond);
            }
            v
        })
        .collect();
    json!({
        "apiVersion": "agentiam.dev/v1alpha1", "kind": "AgentPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"agents": {"names": [AGENT]}, "mode": "Enforce", "rules": rules},
    })
}

/// The same `n` rules as one Rego module, package `agentiam.authz`, query `data.agentiam.authz.decision`.
///
/// Each rule becomes the partial set `deny`, `approval` or `allow` with one definition per action and resource
/// alternative, each starting with an equality on `input.action` and a `glob.match` on `input.resource`, the
/// two forms OPA's rule index uses, so OPA only evaluates the bodies that can match.
pub fn rego(n: usize) -> String {
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(
        w,
        "# Generated by bench/authz.rs: {n} rules, equivalent to the AgentPolicy the bench applies."
    );
    w.push_str(REGO_HEADER);
    for i in 0..n {
        let r = rule(i);
        let set = match (r.deny, r.approval) {
            (true, _) => "deny",
            (false, true) => "approval",
            (false, false) => "allow",
        };
        let actions: Vec<Option<&str>> = r.actions.iter().map(|a| (a != "*").then_some(a.as_str())).collect();
        let mut resources = Vec::new();
        for p in &r.resources {
            // `p/**` is `p` itself or anything below `p/`. OPA's index handles `startswith` and equality but
            // not a `**` in glob.match (which would also miss the zero-segment case).
            if let Some(base) = p.strip_suffix("/**") {
                resources.push(format!("startswith(input.resource, {})", quote(&format!("{base}/"))));
                resources.push(format!("input.resource == {}", quote(base)));
            } else {
                resources.push(format!("glob.match({}, [\"/\"], input.resource)", quote(p)));
            }
        }
        let tools: Vec<Option<String>> = if r.tools.is_empty() {
            vec![None]
        } else {
            r.tools.iter().map(|t| Some(format!("input.tool == {}", quote(t)))).collect()
        };
        let mut conds = Vec::new();
        if let Some(t) = r.min_trust {
            conds.push(format!("input.agent.trustScore >= {t}"));
        }
        // A Deny rule also matches when an attribute it tests cannot be evaluated (fail closed): one more
        // definition per attribute, with the attribute unknown instead of compared.
        let mut alternatives: Vec<Vec<String>> = vec![Vec::new()];
        for a in &r.attrs {
            if r.deny {
                let mut next = Vec::new();
                for alt in &alternatives {
                    let mut present = alt.clone();
                    present.push(attr_test(a));
                    let mut missing = alt.clone();
                    missing.push(unknown_test(a));
                    next.push(present);
                    next.push(missing);
                }
                alternatives = next;
            } else {
                for alt in &mut alternatives {
                    alt.push(attr_test(a));
                }
            }
        }
        for action in &actions {
            for res in &resources {
                for tool in &tools {
                    for alt in &alternatives {
                        let _ = writeln!(w, "\n{set} contains {} if {{", quote(&r.name));
                        if let Some(a) = action {
                            let _ = writeln!(w, "\tinput.action == {}", quote(a));
                        }
                        let _ = writeln!(w, "\t{res}");
                        if let Some(t) = tool {
                            let _ = writeln!(w, "\t{t}");
                        }
                        for c in conds.iter().chain(alt) {
                            let _ = writeln!(w, "\t{c}");
                        }
                        w.push_str("}\n");
                    }
                }
            }
        }
    }
    out
}

const REGO_HEADER: &str = r#"package agentiam.authz

# Default deny; a matching Deny rule wins; else a matching Allow rule that requires approval; else Allow.
default decision := {"decision": "Deny", "rule": null}

decision := {"decision": "Deny", "rule": r} if {
	selected
	r := min(deny)
} else := {"decision": "RequireApproval", "rule": r} if {
	selected
	r := min(approval)
} else := {"decision": "Allow", "rule": r} if {
	selected
	r := min(allow)
}

selected if input.agent.name == "bench-agent"

ctx := object.get(input, "context", {})

has_attr(k) if object.get(ctx, k, null) != null

# A number, or a string holding one; anything else is undefined, so the comparison fails.
num(k) := n if {
	v := ctx[k]
	is_number(v)
	n := v
}

num(k) := n if {
	v := ctx[k]
	is_string(v)
	n := to_number(v)
}
"#;

fn attr_test(a: &Attr) -> String {
    let key = quote(a.key);
    let scalar = || a.value.as_str().unwrap_or_default().to_owned();
    let num = || scalar().parse::<f64>().map_or_else(|_| "0".to_owned(), |v| format!("{v}"));
    match a.op {
        "Equals" => format!("ctx[{key}] == {}", quote(&scalar())),
        "NotEquals" => format!("ctx[{key}] != {}", quote(&scalar())),
        "In" | "NotIn" => {
            let set: Vec<String> =
                a.value.as_array().into_iter().flatten().filter_map(Value::as_str).map(quote).collect();
            let neg = if a.op == "NotIn" { "not " } else { "" };
            // Bind first, so a missing attribute makes the whole test undefined also for NotIn.
            format!("v_{k} := ctx[{key}]; {neg}v_{k} in {{{}}}", set.join(", "), k = a.key)
        }
        "LessThan" => format!("num({key}) < {}", num()),
        "LessThanOrEqual" => format!("num({key}) <= {}", num()),
        "GreaterThan" => format!("num({key}) > {}", num()),
        "GreaterThanOrEqual" => format!("num({key}) >= {}", num()),
        other => format!("false # unsupported operator {other}"),
    }
}

/// The attribute is missing, or (for numeric operators) not a number: our engine's "unknown".
fn unknown_test(a: &Attr) -> String {
    match a.op {
        "LessThan" | "LessThanOrEqual" | "GreaterThan" | "GreaterThanOrEqual" => {
            format!("not num({})", quote(a.key))
        }
        _ => format!("not has_attr({})", quote(a.key)),
    }
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// A small deterministic generator (splitmix64), so every run and both servers see the same requests.
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// `count` distinct requests spread over the `n` rules: 60% built to match their rule, and 10% each with the
/// wrong action, a resource outside every pattern, a condition that fails, and a missing attribute.
pub fn requests(n: usize, count: usize) -> Vec<Request> {
    let mut mix = Mix(0x00a9_e471_a3c0_0001 ^ n as u64);
    (0..count)
        .map(|j| {
            let i = mix.below(n);
            let twist = mix.below(10);
            request(i, j, twist, &mut mix)
        })
        .collect()
}

fn request(i: usize, j: usize, twist: usize, mix: &mut Mix) -> Request {
    let s = format!("svc{i}");
    let mut ctx = Map::new();
    let mut tool = None;
    let (mut action, mut resource): (String, String);
    let amount = 100 + mix.below(4900);
    // Numbers arrive as JSON numbers or as numeric strings; both compare numerically.
    let number = |x: usize| if j.is_multiple_of(3) { json!(x.to_string()) } else { json!(x) };
    match shape(i) {
        Shape::Plain => (action, resource) = ("read".into(), format!("{s}:records/r-{j}")),
        Shape::Recursive => {
            let depth = j % 3;
            let tail: String = (0..depth).map(|d| format!("/n{d}-{j}")).collect();
            (action, resource) = ("update".into(), format!("{s}:records{tail}"));
        }
        Shape::Amount => {
            (action, resource) = ("refund".into(), format!("{s}:payments/p-{j}"));
            ctx.insert("amount".into(), number(amount));
            ctx.insert("currency".into(), json!(["EUR", "USD", "GBP"][j % 3]));
        }
        Shape::Trust => (action, resource) = ("write".into(), format!("{s}:records/r-{j}")),
        Shape::Region => {
            (action, resource) = ("read".into(), format!("{s}:customers/c-{j}/profile"));
            ctx.insert("region".into(), json!(if j.is_multiple_of(2) { "eu" } else { "us" }));
        }
        Shape::Approval => (action, resource) = ("delete".into(), format!("{s}:records/r-{j}")),
        Shape::Tools => {
            (action, resource) = ("invoke".into(), format!("{s}:tools/search/q-{j}"));
            tool = Some(format!("{s}.{}", if j.is_multiple_of(2) { "search" } else { "export" }));
        }
        Shape::Docs => {
            let r = if j.is_multiple_of(2) {
                format!("{s}:docs/d-{j}")
            } else {
                format!("{s}:docs/d-{j}/attachments/a1")
            };
            (action, resource) = ("read".into(), r);
            ctx.insert("classification".into(), json!("internal"));
        }
        Shape::Priority => {
            (action, resource) = ("patch".into(), format!("{s}:records/r-{j}/fields/status"));
            ctx.insert("priority".into(), number(3 + j % 3));
            ctx.insert("channel".into(), json!("email"));
        }
        Shape::Deny if i % 20 == 19 => {
            (action, resource) = ("refund".into(), format!("svc{}:payments/p-{j}", i - 7));
            ctx.insert("amount".into(), number(5001 + amount));
            ctx.insert("currency".into(), json!("EUR"));
        }
        Shape::Deny => {
            (action, resource) = ("patch".into(), format!("svc{}:records/secret/fields/ssn-{j}", i - 1));
            ctx.insert("priority".into(), number(4));
            ctx.insert("channel".into(), json!("email"));
        }
    }
    let intent = match twist {
        0..=5 => "matches its rule",
        6 => {
            action = "purge".into();
            "wrong action"
        }
        7 => {
            // One segment deeper than any `*` pattern, and a service no rule names for `**` patterns.
            resource = if resource.contains(":records") && shape(i) == Shape::Recursive {
                format!("svc{}:records/r-{j}", 100_000 + i)
            } else {
                format!("{resource}/extra")
            };
            "resource outside the patterns"
        }
        8 => {
            match shape(i) {
                Shape::Amount => {
                    ctx.insert("amount".into(), number(10_001 + amount));
                }
                Shape::Region => {
                    ctx.insert("region".into(), json!("apac"));
                }
                Shape::Tools => tool = Some(format!("{s}.delete")),
                Shape::Docs => {
                    ctx.insert("classification".into(), json!("secret"));
                }
                Shape::Priority => {
                    ctx.insert("channel".into(), json!("fax"));
                }
                Shape::Deny if i % 20 == 19 => {
                    ctx.insert("amount".into(), number(amount));
                }
                _ => {
                    ctx.insert("ticket".into(), json!(format!("T-{j}")));
                }
            }
            "a condition fails"
        }
        _ => {
            let first = ctx.keys().next().cloned();
            match first {
                Some(k) => {
                    ctx.remove(&k);
                }
                None => tool = None,
            }
            "an attribute is missing"
        }
    };
    Request { action, resource, tool, context: ctx, intent }
}

/// The same `n` rules as Cedar policies, for the Cedar peer (bench/cedar): one `permit` or `forbid` per rule,
/// `@id` its name, `@approval("required")` on rules that need approval. The request's resource, tool and
/// attributes are in the context (`context.resource`, `context.tool`, `context.attrs`), the trust score on the
/// principal. Cedar's `like` `*` spans `/`, so a pattern of whole-segment `*`s is `like` plus "no more
/// segments than the pattern" (one `!like` with that `*` doubled, per `*`): exactly our matcher for canonical
/// resources. `p/**` is `== p || like "p/*"`. Attributes are guarded with `has`, so nothing errors (Cedar skips
/// a policy that errors, which for a `forbid` would fail open); a Deny rule matches when its attribute is
/// missing, as ours does.
pub fn cedar(n: usize) -> String {
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(
        w,
        "// Generated by bench/authz.rs: {n} rules, equivalent to the AgentPolicy the bench applies."
    );
    for i in 0..n {
        let r = rule(i);
        let effect = if r.deny { "forbid" } else { "permit" };
        let _ = writeln!(w, "\n@id({})", quote(&r.name));
        if r.approval {
            w.push_str("@approval(\"required\")\n");
        }
        let actions: Vec<String> =
            r.actions.iter().filter(|a| *a != "*").map(|a| format!("Action::{}", quote(a))).collect();
        let action = if actions.is_empty() {
            "action".to_owned()
        } else {
            format!("action in [{}]", actions.join(", "))
        };
        let _ = writeln!(w, "{effect} (principal == Agent::{}, {action}, resource)", quote(AGENT));
        let mut conds = Vec::new();
        let resources: Vec<String> = r.resources.iter().map(|p| cedar_pattern(p)).collect();
        conds.push(if resources.len() == 1 {
            resources[0].clone()
        } else {
            format!("({})", resources.join(" || "))
        });
        if !r.tools.is_empty() {
            let set: Vec<String> = r.tools.iter().map(|t| quote(t)).collect();
            conds.push(format!("(context has tool && [{}].contains(context.tool))", set.join(", ")));
        }
        if let Some(t) = r.min_trust {
            conds.push(format!("principal.trustScore >= {t}"));
        }
        for a in &r.attrs {
            let test = cedar_attr(a);
            let has = format!("context.attrs has {}", a.key);
            conds.push(if r.deny { format!("(!({has}) || {test})") } else { format!("({has} && {test})") });
        }
        let _ = writeln!(w, "when {{ {} }};", conds.join(" && "));
    }
    out
}

/// A resource pattern as a Cedar condition on `context.resource`.
fn cedar_pattern(p: &str) -> String {
    if let Some(base) = p.strip_suffix("/**") {
        return format!(
            "(context.resource == {} || context.resource like {})",
            quote(base),
            quote(&format!("{base}/*"))
        );
    }
    let mut parts = vec![format!("context.resource like {}", quote(p))];
    let stars: Vec<usize> = p.match_indices('*').map(|(i, _)| i).collect();
    for at in stars {
        let wider = format!("{}*/*{}", &p[..at], &p[at + 1..]);
        parts.push(format!("!(context.resource like {})", quote(&wider)));
    }
    format!("({})", parts.join(" && "))
}

fn cedar_attr(a: &Attr) -> String {
    let v = format!("context.attrs.{}", a.key);
    let scalar = || a.value.as_str().unwrap_or_default().to_owned();
    let num = || scalar().parse::<i64>().unwrap_or(0);
    let set = || {
        let items: Vec<String> =
            a.value.as_array().into_iter().flatten().filter_map(Value::as_str).map(quote).collect();
        format!("[{}]", items.join(", "))
    };
    match a.op {
        "Equals" => format!("{v} == {}", quote(&scalar())),
        "NotEquals" => format!("{v} != {}", quote(&scalar())),
        "In" => format!("{}.contains({v})", set()),
        "NotIn" => format!("!({}.contains({v}))", set()),
        "LessThan" => format!("{v} < {}", num()),
        "LessThanOrEqual" => format!("{v} <= {}", num()),
        "GreaterThan" => format!("{v} > {}", num()),
        "GreaterThanOrEqual" => format!("{v} >= {}", num()),
        other => format!("false /* unsupported operator {other} */"),
    }
}

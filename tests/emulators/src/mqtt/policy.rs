//! AWS IoT Core policy evaluation, as far as device policies for MQTT use it.
//!
//! AWS IoT evaluates every policy attached to the connection's certificate (and to its thing
//! group, not modelled) for each MQTT operation: `iot:Connect` on
//! `arn:aws:iot:<region>:<account>:client/<client id>`, `iot:Publish` on `...:topic/<topic>`,
//! `iot:Subscribe` on `...:topicfilter/<filter>`, `iot:Receive` on `...:topic/<topic>`. As in IAM,
//! an explicit `Deny` wins over any `Allow`, and without a matching `Allow` the operation is
//! denied.
//!
//! # What it follows
//! * Documents: `Version`, `Statement` (one object or a list) of `Sid`, `Effect`
//!   (`Allow`/`Deny`), `Action` and `Resource` (a string or a list), `Condition`.
//! * `Action` patterns match case-insensitively with `*` and `?` wildcards (`iot:*`);
//!   `Resource` patterns case-sensitively, `*` matching any run of characters (`/` included)
//!   and `?` one character.
//! * Policy variables in resources: `${iot:ClientId}`, `${iot:Connection.Thing.ThingName}`
//!   (set only when the client id is a thing the certificate is attached to),
//!   `${iot:Connection.Thing.IsAttached}`, and IAM's `${*}`, `${?}`, `${$}` for the literal
//!   characters. A substituted value matches literally (a `*` in it is no wildcard). A resource
//!   whose variable has no value matches nothing (IAM: "the policy variable cannot be resolved
//!   ... the statement does not apply").
//! * `Condition` with the `Bool` operator on `iot:Connection.Thing.IsAttached` (a string or
//!   boolean, or a list of them: any one may match). A key with no value fails the condition.
//!
//! # What it does not
//! `NotAction`, `NotResource`, other condition operators and keys (`StringEquals`,
//! `ArnLike`, `aws:SourceIp`, `iot:Connection.Thing.Attributes[...]`, ...), thing-group
//! policies, certificate policy variables (`${iot:Certificate.*}`) and the other MQTT
//! operations' policy variables. A document using them is refused when parsed, so a test never
//! passes on a statement the evaluator silently skipped.

use serde_json::Value;

/// What the policy variables and condition keys are for one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// The CONNECT's client id (`iot:ClientId`).
    pub client_id: String,
    /// `iot:Connection.Thing.ThingName`: the thing named by the client id, when the
    /// certificate is attached to it.
    pub thing_name: Option<String>,
    /// `iot:Connection.Thing.IsAttached`.
    pub is_attached: bool,
}

/// The outcome of evaluating the policies for one operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// A `Deny` statement matched.
    ExplicitDeny,
    /// No `Allow` statement matched.
    ImplicitDeny,
}

impl Decision {
    pub fn is_allowed(self) -> bool {
        self == Decision::Allowed
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    Allow,
    Deny,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum BoolKey {
    IsAttached,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct BoolCondition {
    key: BoolKey,
    /// Any of these.
    values: Vec<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Statement {
    effect: Effect,
    actions: Vec<String>,
    resources: Vec<String>,
    conditions: Vec<BoolCondition>,
}

/// A parsed policy document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyDocument {
    statements: Vec<Statement>,
}

/// A string or a list of strings.
fn strings(value: &Value, what: &str) -> Result<Vec<String>, String> {
    match value {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("{what} has an item that is not a string"))
            })
            .collect(),
        _ => Err(format!(
            "{what} must be a string or a non-empty list of strings"
        )),
    }
}

fn bool_value(value: &Value) -> Result<bool, String> {
    match value {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(false),
        other => Err(format!(
            "a Bool condition value {other} is not true or false"
        )),
    }
}

fn parse_conditions(value: &Value) -> Result<Vec<BoolCondition>, String> {
    let Value::Object(operators) = value else {
        return Err("Condition must be an object".into());
    };
    let mut out = Vec::new();
    for (operator, keys) in operators {
        if operator != "Bool" {
            return Err(format!(
                "the condition operator {operator:?} is not supported by the stand-in (Bool only)"
            ));
        }
        let Value::Object(keys) = keys else {
            return Err("a Bool condition must be an object of keys".into());
        };
        for (key, values) in keys {
            let key = if key.eq_ignore_ascii_case("iot:Connection.Thing.IsAttached") {
                BoolKey::IsAttached
            } else {
                return Err(format!(
                    "the condition key {key:?} is not supported by the stand-in"
                ));
            };
            let values = match values {
                Value::Array(items) => items.iter().map(bool_value).collect::<Result<_, _>>()?,
                single => vec![bool_value(single)?],
            };
            out.push(BoolCondition { key, values });
        }
    }
    Ok(out)
}

fn parse_statement(value: &Value) -> Result<Statement, String> {
    let Value::Object(fields) = value else {
        return Err("a statement must be an object".into());
    };
    for name in fields.keys() {
        match name.as_str() {
            "Sid" | "Effect" | "Action" | "Resource" | "Condition" => {}
            "NotAction" | "NotResource" | "Principal" | "NotPrincipal" => {
                return Err(format!("{name} is not supported by the stand-in"));
            }
            other => return Err(format!("unknown statement field {other:?}")),
        }
    }
    let effect = match fields.get("Effect").and_then(Value::as_str) {
        Some("Allow") => Effect::Allow,
        Some("Deny") => Effect::Deny,
        other => return Err(format!("Effect {other:?} is not \"Allow\" or \"Deny\"")),
    };
    let actions = strings(
        fields.get("Action").ok_or("a statement without Action")?,
        "Action",
    )?;
    let resources = strings(
        fields
            .get("Resource")
            .ok_or("a statement without Resource")?,
        "Resource",
    )?;
    let conditions = match fields.get("Condition") {
        None => Vec::new(),
        Some(c) => parse_conditions(c)?,
    };
    Ok(Statement {
        effect,
        actions,
        resources,
        conditions,
    })
}

impl PolicyDocument {
    /// Parses a policy document (JSON text, as GetPolicy answers it).
    pub fn parse(text: &str) -> Result<PolicyDocument, String> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| format!("the policy is not JSON: {e}"))?;
        PolicyDocument::from_value(&value)
    }

    pub fn from_value(value: &Value) -> Result<PolicyDocument, String> {
        let Value::Object(fields) = value else {
            return Err("the policy must be a JSON object".into());
        };
        let statements = match fields.get("Statement") {
            Some(Value::Array(items)) => items
                .iter()
                .map(parse_statement)
                .collect::<Result<Vec<_>, _>>()?,
            Some(single @ Value::Object(_)) => vec![parse_statement(single)?],
            _ => return Err("the policy has no Statement".into()),
        };
        Ok(PolicyDocument { statements })
    }
}

/// One element of a pattern after the policy variables are substituted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Char(char),
    /// `*`: any run of characters.
    Any,
    /// `?`: one character.
    One,
}

/// The pattern's tokens with the variables substituted; `None` when a variable has no value.
fn expand(pattern: &str, ctx: &Context) -> Option<Vec<Token>> {
    let mut out = Vec::new();
    let mut rest = pattern;
    while let Some(c) = rest.chars().next() {
        if let Some(after) = rest.strip_prefix("${")
            && let Some(end) = after.find('}')
        {
            let value = match &after[..end] {
                "*" => "*".to_string(),
                "?" => "?".to_string(),
                "$" => "$".to_string(),
                "iot:ClientId" => ctx.client_id.clone(),
                "iot:Connection.Thing.ThingName" => ctx.thing_name.clone()?,
                "iot:Connection.Thing.IsAttached" => ctx.is_attached.to_string(),
                _ => return None,
            };
            out.extend(value.chars().map(Token::Char));
            rest = &after[end + 1..];
            continue;
        }
        out.push(match c {
            '*' => Token::Any,
            '?' => Token::One,
            c => Token::Char(c),
        });
        rest = &rest[c.len_utf8()..];
    }
    Some(out)
}

/// Whether `text` matches `pattern` (iterative wildcard matching with backtracking to the last
/// `*`).
fn glob(pattern: &[Token], text: &[char], fold_case: bool) -> bool {
    let same = |a: char, b: char| {
        if fold_case {
            a.to_lowercase().eq(b.to_lowercase())
        } else {
            a == b
        }
    };
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(Token::Any) => {
                star = Some((p, t));
                p += 1;
            }
            Some(Token::One) => {
                p += 1;
                t += 1;
            }
            Some(Token::Char(c)) if same(*c, text[t]) => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|t| *t == Token::Any)
}

fn action_matches(pattern: &str, action: &str) -> bool {
    let tokens: Vec<Token> = pattern
        .chars()
        .map(|c| match c {
            '*' => Token::Any,
            '?' => Token::One,
            c => Token::Char(c),
        })
        .collect();
    glob(&tokens, &action.chars().collect::<Vec<_>>(), true)
}

fn resource_matches(pattern: &str, resource: &str, ctx: &Context) -> bool {
    match expand(pattern, ctx) {
        Some(tokens) => glob(&tokens, &resource.chars().collect::<Vec<_>>(), false),
        None => false,
    }
}

impl Statement {
    fn applies(&self, action: &str, resource: &str, ctx: &Context) -> bool {
        self.actions.iter().any(|a| action_matches(a, action))
            && self
                .resources
                .iter()
                .any(|r| resource_matches(r, resource, ctx))
            && self.conditions.iter().all(|c| match c.key {
                BoolKey::IsAttached => c.values.contains(&ctx.is_attached),
            })
    }
}

/// Evaluates `action` on `resource` against every document: an explicit `Deny` wins, then any
/// `Allow`, else denied.
pub fn evaluate(
    documents: &[PolicyDocument],
    action: &str,
    resource: &str,
    ctx: &Context,
) -> Decision {
    let mut allowed = false;
    for statement in documents.iter().flat_map(|d| &d.statements) {
        if statement.applies(action, resource, ctx) {
            match statement.effect {
                Effect::Deny => return Decision::ExplicitDeny,
                Effect::Allow => allowed = true,
            }
        }
    }
    if allowed {
        Decision::Allowed
    } else {
        Decision::ImplicitDeny
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const ARN: &str = "arn:aws:iot:eu-west-1:123456789012";

    fn attached(thing: &str) -> Context {
        Context {
            client_id: thing.to_string(),
            thing_name: Some(thing.to_string()),
            is_attached: true,
        }
    }

    fn unattached(client_id: &str) -> Context {
        Context {
            client_id: client_id.to_string(),
            thing_name: None,
            is_attached: false,
        }
    }

    /// The project's device policy (infra/aws/iot-setup.yaml, DevicePolicy) as rendered.
    fn device_policy() -> PolicyDocument {
        PolicyDocument::from_value(&json!({
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "ConnectAsOwnThing",
                    "Effect": "Allow",
                    "Action": "iot:Connect",
                    "Resource": format!("{ARN}:client/${{iot:Connection.Thing.ThingName}}"),
                    "Condition": {"Bool": {"iot:Connection.Thing.IsAttached": "true"}}
                },
                {
                    "Sid": "PublishReceiveOwnTopics",
                    "Effect": "Allow",
                    "Action": ["iot:Publish", "iot:Receive"],
                    "Resource": [
                        format!("{ARN}:topic/balena/${{iot:Connection.Thing.ThingName}}/*"),
                        format!(
                            "{ARN}:topic/$aws/things/${{iot:Connection.Thing.ThingName}}/shadow/*"
                        )
                    ]
                },
                {
                    "Sid": "SubscribeOwnTopicFilters",
                    "Effect": "Allow",
                    "Action": "iot:Subscribe",
                    "Resource": [
                        format!("{ARN}:topicfilter/balena/${{iot:Connection.Thing.ThingName}}/*")
                    ]
                }
            ]
        }))
        .expect("parses")
    }

    #[test]
    fn device_policy_connect() {
        let docs = [device_policy()];
        let connect = |ctx: &Context| {
            evaluate(
                &docs,
                "iot:Connect",
                &format!("{ARN}:client/{}", ctx.client_id),
                ctx,
            )
        };
        assert_eq!(connect(&attached("balena-1")), Decision::Allowed);
        // Not attached: no thing name, and the condition fails.
        assert_eq!(connect(&unattached("balena-1")), Decision::ImplicitDeny);
        // Attached flag without a thing name (cannot happen on AWS) still denies.
        let odd = Context {
            thing_name: None,
            ..attached("balena-1")
        };
        assert_eq!(connect(&odd), Decision::ImplicitDeny);
        // Another client id than the thing name.
        let other = Context {
            client_id: "someone-else".into(),
            ..attached("balena-1")
        };
        assert_eq!(connect(&other), Decision::ImplicitDeny);
    }

    #[test]
    fn device_policy_publish() {
        let docs = [device_policy()];
        let ctx = attached("balena-1");
        let publish =
            |topic: &str| evaluate(&docs, "iot:Publish", &format!("{ARN}:topic/{topic}"), &ctx);
        assert!(publish("balena/balena-1/telemetry").is_allowed());
        assert!(publish("balena/balena-1/a/b/c").is_allowed());
        assert!(publish("$aws/things/balena-1/shadow/update").is_allowed());
        assert!(!publish("balena/balena-2/telemetry").is_allowed());
        assert!(!publish("balena/balena-1").is_allowed());
        assert!(!publish("other/balena-1/x").is_allowed());
        assert!(!publish("BALENA/balena-1/x").is_allowed());
        // Subscribe is its own action on topic filters.
        assert!(
            !evaluate(
                &docs,
                "iot:Subscribe",
                &format!("{ARN}:topic/balena/balena-1/x"),
                &ctx
            )
            .is_allowed()
        );
        assert!(
            evaluate(
                &docs,
                "iot:Subscribe",
                &format!("{ARN}:topicfilter/balena/balena-1/#"),
                &ctx
            )
            .is_allowed()
        );
        // Not attached: the thing name has no value, nothing matches.
        let loose = unattached("balena-1");
        assert!(
            !evaluate(
                &docs,
                "iot:Publish",
                &format!("{ARN}:topic/balena/balena-1/t"),
                &loose
            )
            .is_allowed()
        );
    }

    #[test]
    fn deny_wins_and_wildcards() {
        let allow_all = PolicyDocument::from_value(&json!({
            "Statement": {"Effect": "Allow", "Action": "iot:*", "Resource": "*"}
        }))
        .expect("parses");
        let deny = PolicyDocument::from_value(&json!({
            "Statement": [{"Effect": "Deny", "Action": ["IOT:publish"],
                           "Resource": format!("{ARN}:topic/secret/?")}]
        }))
        .expect("parses");
        let ctx = attached("t");
        let docs = [allow_all.clone(), deny];
        assert_eq!(
            evaluate(&docs, "iot:Publish", &format!("{ARN}:topic/secret/a"), &ctx),
            Decision::ExplicitDeny
        );
        assert_eq!(
            evaluate(
                &docs,
                "iot:Publish",
                &format!("{ARN}:topic/secret/ab"),
                &ctx
            ),
            Decision::Allowed
        );
        assert_eq!(
            evaluate(&docs, "iot:Connect", &format!("{ARN}:client/x"), &ctx),
            Decision::Allowed
        );
        assert_eq!(
            evaluate(&[], "iot:Connect", &format!("{ARN}:client/x"), &ctx),
            Decision::ImplicitDeny
        );
    }

    #[test]
    fn variables() {
        let doc = PolicyDocument::from_value(&json!({
            "Statement": {"Effect": "Allow", "Action": "iot:Publish",
                          "Resource": "arn:x:topic/${iot:ClientId}/${*}/${?}${$}"}
        }))
        .expect("parses");
        let ctx = Context {
            client_id: "c*".into(),
            thing_name: None,
            is_attached: false,
        };
        let docs = [doc];
        assert!(evaluate(&docs, "iot:Publish", "arn:x:topic/c*/*/?$", &ctx).is_allowed());
        // A substituted `*` is literal; so are the escapes.
        assert!(!evaluate(&docs, "iot:Publish", "arn:x:topic/cc/*/?$", &ctx).is_allowed());
        assert!(!evaluate(&docs, "iot:Publish", "arn:x:topic/c*/a/b$", &ctx).is_allowed());
        let unknown = PolicyDocument::from_value(&json!({
            "Statement": {"Effect": "Deny", "Action": "*",
                          "Resource": "${iot:Certificate.Subject.CommonName}"}
        }))
        .expect("parses");
        // An unresolvable variable makes the statement not apply (also a Deny).
        assert_eq!(
            evaluate(&[unknown], "iot:Connect", "x", &ctx),
            Decision::ImplicitDeny
        );
    }

    #[test]
    fn conditions() {
        let doc = |value: Value| {
            PolicyDocument::from_value(&json!({
                "Statement": {"Effect": "Allow", "Action": "iot:Connect", "Resource": "*",
                              "Condition": {"Bool": {"iot:Connection.Thing.IsAttached": value}}}
            }))
            .expect("parses")
        };
        for (value, attached_ok, unattached_ok) in [
            (json!("true"), true, false),
            (json!(true), true, false),
            (json!("false"), false, true),
            (json!(["true", "false"]), true, true),
        ] {
            let d = [doc(value.clone())];
            assert_eq!(
                evaluate(&d, "iot:Connect", "c", &attached("c")).is_allowed(),
                attached_ok,
                "{value}"
            );
            assert_eq!(
                evaluate(&d, "iot:Connect", "c", &unattached("c")).is_allowed(),
                unattached_ok,
                "{value}"
            );
        }
    }

    #[test]
    fn unsupported_documents_are_refused() {
        for bad in [
            json!({}),
            json!({"Statement": [{"Effect": "Allow", "NotAction": "iot:Publish",
                                  "Resource": "*"}]}),
            json!({"Statement": [{"Effect": "Allow", "Action": "iot:Publish",
                                  "NotResource": "*"}]}),
            json!({"Statement": [{"Effect": "Maybe", "Action": "iot:Publish", "Resource": "*"}]}),
            json!({"Statement": [{"Effect": "Allow", "Resource": "*"}]}),
            json!({"Statement": [{"Effect": "Allow", "Action": [], "Resource": "*"}]}),
            json!({"Statement": [{"Effect": "Allow", "Action": "iot:Connect", "Resource": "*",
                                  "Condition": {"StringEquals": {"iot:ClientId": "x"}}}]}),
            json!({"Statement": [{"Effect": "Allow", "Action": "iot:Connect", "Resource": "*",
                                  "Condition": {"Bool": {"aws:SecureTransport": "true"}}}]}),
        ] {
            assert!(PolicyDocument::from_value(&bad).is_err(), "{bad}");
        }
        assert!(PolicyDocument::parse("not json").is_err());
    }

    #[test]
    fn glob_matching() {
        let m = |p: &str, t: &str| action_matches(p, t);
        assert!(m("*", ""));
        assert!(m("iot:*", "iot:Publish"));
        assert!(m("iot:*ish", "IOT:PUBLISH"));
        assert!(m("a*b*c", "aXXbYYbc"));
        assert!(!m("a*b*c", "aXXbYY"));
        assert!(m("a?c", "abc"));
        assert!(!m("a?c", "ac"));
        assert!(!m("abc", "abcd"));
    }
}

//! Injected faults: an emulator's public `Fault` type (declared with [`emulator_fault!`]) is
//! turned into a [`Rule`] when injected; the rules are tried in order for every request.

use axum::response::Response;
use http::{HeaderValue, StatusCode, header};

/// What a fault matches besides the method, in the string the emulator names for a request
/// (balena: the resource; IoT Hub: the path and query as received).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Matcher {
    /// The whole string.
    Equals(String),
    /// A substring.
    Contains(String),
}

impl Matcher {
    fn matches(&self, target: &str) -> bool {
        match self {
            Matcher::Equals(want) => target == want,
            Matcher::Contains(part) => target.contains(part.as_str()),
        }
    }
}

/// A fault as the emulators keep it: matching requests are answered `status` instead of being
/// served, after `skip` matching requests were let through, `times` times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rule {
    /// `None` matches any method (compared case-insensitively).
    pub(crate) method: Option<String>,
    /// `None` matches any request.
    pub(crate) target: Option<Matcher>,
    pub(crate) status: u16,
    /// Sent as `Retry-After` (seconds) when set.
    pub(crate) retry_after: Option<u64>,
    pub(crate) times: usize,
    pub(crate) skip: usize,
}

impl Rule {
    fn matches(&self, method: &str, target: &str) -> bool {
        self.method
            .as_deref()
            .is_none_or(|m| m.eq_ignore_ascii_case(method))
            && self.target.as_ref().is_none_or(|t| t.matches(target))
    }

    /// The status to answer (500 when `status` is not a valid one).
    pub(crate) fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// `res` with the `Retry-After` header when the rule has one.
    pub(crate) fn with_retry_after(&self, mut res: Response) -> Response {
        if let Some(secs) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            res.headers_mut().insert(header::RETRY_AFTER, v);
        }
        res
    }
}

/// The rule that applies to a request, if any, counting the request against the rules (in the
/// order they were added) and dropping the used-up ones.
pub(crate) fn take(rules: &mut Vec<Rule>, method: &str, target: &str) -> Option<Rule> {
    let mut fired = None;
    for rule in rules.iter_mut() {
        if !rule.matches(method, target) || rule.times == 0 {
            continue;
        }
        if rule.skip > 0 {
            rule.skip -= 1;
            continue;
        }
        rule.times -= 1;
        fired = Some(rule.clone());
        break;
    }
    rules.retain(|r| r.times > 0);
    fired
}

/// Declares an emulator's public `Fault`: a struct with the fields `method`, the emulator's own
/// target field, `status`, `retry_after`, `times` and `skip` (in that order, so struct literals
/// name them), its builder methods, and its conversion into a [`Rule`] whose target is
/// `$target_kind(value)` (a [`Matcher`] variant).
macro_rules! emulator_fault {
    (
        $(#[$doc:meta])*
        pub struct $name:ident {
            $(#[$field_doc:meta])*
            pub $field:ident: Option<String>,
        }
        $(#[$builder_doc:meta])*
        fn $builder:ident => $target_kind:path;
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name {
            /// `None` matches any method.
            pub method: Option<String>,
            $(#[$field_doc])*
            pub $field: Option<String>,
            pub status: u16,
            /// Sent as `Retry-After` (seconds) when set.
            pub retry_after: Option<u64>,
            /// How many matching requests fail before the fault is used up.
            pub times: usize,
            /// How many matching requests are let through first.
            pub skip: usize,
        }

        impl $name {
            /// A fault answering `status` once, for any request.
            pub fn new(status: u16) -> $name {
                $name {
                    method: None,
                    $field: None,
                    status,
                    retry_after: None,
                    times: 1,
                    skip: 0,
                }
            }

            /// Only requests with this method (compared case-insensitively).
            pub fn method(mut self, method: &str) -> $name {
                self.method = Some(method.to_string());
                self
            }

            $(#[$builder_doc])*
            pub fn $builder(mut self, value: &str) -> $name {
                self.$field = Some(value.to_string());
                self
            }

            pub fn retry_after(mut self, seconds: u64) -> $name {
                self.retry_after = Some(seconds);
                self
            }

            pub fn times(mut self, times: usize) -> $name {
                self.times = times;
                self
            }

            pub fn skip(mut self, skip: usize) -> $name {
                self.skip = skip;
                self
            }
        }

        impl From<$name> for $crate::common::fault::Rule {
            fn from(fault: $name) -> $crate::common::fault::Rule {
                $crate::common::fault::Rule {
                    method: fault.method,
                    target: fault.$field.map($target_kind),
                    status: fault.status,
                    retry_after: fault.retry_after,
                    times: fault.times,
                    skip: fault.skip,
                }
            }
        }
    };
}

pub(crate) use emulator_fault;

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(method: Option<&str>, target: Option<Matcher>, times: usize, skip: usize) -> Rule {
        Rule {
            method: method.map(str::to_string),
            target,
            status: 503,
            retry_after: None,
            times,
            skip,
        }
    }

    #[test]
    fn rules_match_skip_count_and_wear_out() {
        let mut rules = vec![
            rule(Some("post"), Some(Matcher::Equals("device".into())), 2, 1),
            rule(None, Some(Matcher::Contains("/x?".into())), 1, 0),
        ];
        assert_eq!(take(&mut rules, "GET", "device"), None);
        assert_eq!(take(&mut rules, "POST", "device_tag"), None);
        // Skipped once, then fires twice, then is gone.
        assert_eq!(take(&mut rules, "POST", "device"), None);
        assert!(take(&mut rules, "POST", "device").is_some());
        assert!(take(&mut rules, "POST", "device").is_some());
        assert_eq!(take(&mut rules, "POST", "device"), None);
        assert_eq!(rules.len(), 1);
        assert!(take(&mut rules, "DELETE", "/a/x?b").is_some());
        assert!(rules.is_empty());
    }

    #[test]
    fn bad_statuses_answer_500() {
        let mut r = rule(None, None, 1, 0);
        r.status = 1000;
        assert_eq!(r.status_code(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}

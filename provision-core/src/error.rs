//! Everything that can go wrong with a request, and how each case answers over HTTP.

use std::time::Duration;

use http::StatusCode;

/// Which upstream system a failure came from: it picks the error code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upstream {
    Balena,
    Cloud,
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Upstream::Balena => "balenaCloud",
            Upstream::Cloud => "the IoT registry",
        })
    }
}

/// How an upstream call failed, after the retries the request's budget allowed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum UpstreamFailure {
    /// Still throttled (429, 503, `ThrottlingException`) after retries.
    #[error("throttled")]
    Throttled { retry_after: Option<Duration> },
    /// The upstream answered with an error that retrying will not fix (4xx).
    #[error("refused with {status}: {detail}")]
    Refused { status: u16, detail: String },
    /// 5xx, connection failures, malformed answers, timeouts: still failing after retries.
    #[error("unavailable: {detail}")]
    Unavailable { detail: String },
}

/// A failed request. `Display` is the message the caller reads; it never holds a secret.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("request body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("content type must be application/json, got {got}")]
    BadContentType { got: String },
    /// `allow` lists the methods the path serves, as the `Allow` header does.
    #[error("method {method} is not allowed here; use one of {allow}")]
    BadMethod { method: String, allow: &'static str },
    #[error(
        "no Authorization header: send 'Authorization: Bearer <device API key or operator token>'"
    )]
    AuthMissing,
    /// No credentials, for something the unauthenticated mode does not allow.
    #[error("{0}")]
    AuthRequired(String),
    #[error("{0}")]
    AuthInvalid(String),
    #[error("this key cannot act on device {0}")]
    Forbidden(String),
    /// A user's or fleet's key, which may see the device but is not it.
    #[error(
        "this is not device {0}'s own key: use the device's BALENA_API_KEY or the operator token (the operator can allow user keys with PROVISION_ACCEPT_USER_KEYS=true)"
    )]
    NotTheDevice(String),
    /// The device's own key, from which balenaCloud hides the device (it has frozen it).
    #[error(
        "balenaCloud hides device {0} from its own key (a frozen device): it may change nothing"
    )]
    Hidden(String),
    #[error("device {0} is not known to balenaCloud")]
    DeviceNotFound(String),
    #[error("another request is changing device {0}; retry shortly")]
    Busy(String),
    #[error("{system}: {step} failed: {failure}")]
    Upstream {
        system: Upstream,
        step: &'static str,
        failure: UpstreamFailure,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

impl ProvisionError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ProvisionError::BadRequest {
            code,
            message: message.into(),
        }
    }

    pub fn balena(step: &'static str, failure: UpstreamFailure) -> Self {
        ProvisionError::Upstream {
            system: Upstream::Balena,
            step,
            failure,
        }
    }

    pub fn cloud(step: &'static str, failure: UpstreamFailure) -> Self {
        ProvisionError::Upstream {
            system: Upstream::Cloud,
            step,
            failure,
        }
    }

    /// What the caller reads. For an upstream failure: which upstream and step failed, and how
    /// (throttled, refused with a status, unavailable), never the upstream's own text, which can
    /// hold account ids, ARNs and host names; that goes to the logs (`Display`) under the
    /// request id the answer carries.
    pub fn public_message(&self) -> String {
        match self {
            ProvisionError::Upstream {
                system,
                step,
                failure,
            } => {
                let how = match failure {
                    UpstreamFailure::Throttled { .. } => "throttled".to_string(),
                    UpstreamFailure::Refused { status, .. } => format!("refused with {status}"),
                    UpstreamFailure::Unavailable { .. } => "unavailable".to_string(),
                };
                format!(
                    "{system}: {step} failed ({how}); the function's logs have the details under this request_id"
                )
            }
            other => other.to_string(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProvisionError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ProvisionError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProvisionError::BadContentType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ProvisionError::BadMethod { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ProvisionError::AuthMissing
            | ProvisionError::AuthRequired(_)
            | ProvisionError::AuthInvalid(_) => StatusCode::UNAUTHORIZED,
            ProvisionError::Forbidden(_)
            | ProvisionError::NotTheDevice(_)
            | ProvisionError::Hidden(_) => StatusCode::FORBIDDEN,
            ProvisionError::DeviceNotFound(_) => StatusCode::NOT_FOUND,
            ProvisionError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProvisionError::Upstream {
                failure: UpstreamFailure::Throttled { .. },
                ..
            } => StatusCode::SERVICE_UNAVAILABLE,
            ProvisionError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ProvisionError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ProvisionError::BadRequest { code, .. } => code,
            ProvisionError::TooLarge { .. } => "provision.request.too-large",
            ProvisionError::BadContentType { .. } => "provision.request.bad-content-type",
            ProvisionError::BadMethod { .. } => "provision.request.bad-method",
            ProvisionError::AuthMissing | ProvisionError::AuthRequired(_) => {
                "provision.auth.missing"
            }
            ProvisionError::AuthInvalid(_) => "provision.auth.invalid",
            ProvisionError::Forbidden(_)
            | ProvisionError::NotTheDevice(_)
            | ProvisionError::Hidden(_) => "provision.auth.forbidden",
            ProvisionError::DeviceNotFound(_) => "provision.device.not-found",
            ProvisionError::Busy(_) => "provision.device.busy",
            ProvisionError::Upstream {
                failure: UpstreamFailure::Throttled { .. },
                ..
            } => "provision.upstream.throttled",
            ProvisionError::Upstream {
                system: Upstream::Balena,
                ..
            } => "provision.upstream.balena",
            ProvisionError::Upstream {
                system: Upstream::Cloud,
                ..
            } => "provision.upstream.cloud",
            ProvisionError::Internal(_) => "provision.internal",
        }
    }

    /// Seconds for a `Retry-After` header, for the answers that invite a retry.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ProvisionError::Upstream {
                failure: UpstreamFailure::Throttled { retry_after },
                ..
            } => Some(retry_after.map(|d| d.as_secs().max(1)).unwrap_or(1)),
            ProvisionError::Busy(_) => Some(1),
            _ => None,
        }
    }
}

/// Every code an error answer can carry, with its HTTP status. `deploy/openapi.yaml` must list
/// exactly these (`tests/tests/openapi.rs` compares them); the unit test below fails when an
/// error the code can make is missing here, or an entry here is one no error makes.
pub const ALL_CODES: &[(&str, u16)] = &[
    (codes::NO_BODY, 400),
    (codes::BAD_JSON, 400),
    (codes::BAD_UUID, 400),
    (codes::BAD_SERVICE, 400),
    (codes::BAD_CSR, 400),
    ("provision.request.bad-method", 405),
    ("provision.request.too-large", 413),
    ("provision.request.bad-content-type", 415),
    ("provision.auth.missing", 401),
    ("provision.auth.invalid", 401),
    ("provision.auth.forbidden", 403),
    ("provision.device.not-found", 404),
    ("provision.device.busy", 503),
    ("provision.upstream.balena", 502),
    ("provision.upstream.cloud", 502),
    ("provision.upstream.throttled", 503),
    ("provision.internal", 500),
];

/// Codes for caller mistakes, as the published functions name them.
pub mod codes {
    pub const NO_BODY: &str = "provision.request.no-body";
    pub const BAD_JSON: &str = "provision.request.bad-json";
    pub const BAD_UUID: &str = "provision.request.bad-uuid";
    pub const BAD_SERVICE: &str = "provision.request.bad-service";
    pub const BAD_CSR: &str = "provision.request.bad-csr";
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// One error of every kind the code can make: every variant, every caller-mistake code, and
    /// every upstream system with every way it fails. The match below has no wildcard, so a new
    /// variant does not compile until it is named there, next to the list it must join.
    fn one_of_each() -> Vec<ProvisionError> {
        let failures = [
            UpstreamFailure::Throttled { retry_after: None },
            UpstreamFailure::Refused {
                status: 400,
                detail: "no".into(),
            },
            UpstreamFailure::Unavailable {
                detail: "down".into(),
            },
        ];
        let mut all: Vec<ProvisionError> = [
            codes::NO_BODY,
            codes::BAD_JSON,
            codes::BAD_UUID,
            codes::BAD_SERVICE,
            codes::BAD_CSR,
        ]
        .into_iter()
        .map(|code| ProvisionError::bad_request(code, "m"))
        .collect();
        all.extend([
            ProvisionError::TooLarge { limit: 1 },
            ProvisionError::BadContentType { got: "x".into() },
            ProvisionError::BadMethod {
                method: "PUT".into(),
                allow: "GET",
            },
            ProvisionError::AuthMissing,
            ProvisionError::AuthRequired("x".into()),
            ProvisionError::AuthInvalid("x".into()),
            ProvisionError::Forbidden("x".into()),
            ProvisionError::NotTheDevice("x".into()),
            ProvisionError::Hidden("x".into()),
            ProvisionError::DeviceNotFound("x".into()),
            ProvisionError::Busy("x".into()),
            ProvisionError::Internal("x".into()),
        ]);
        for failure in failures {
            all.push(ProvisionError::balena("step", failure.clone()));
            all.push(ProvisionError::cloud("step", failure));
        }
        for error in &all {
            match error {
                ProvisionError::BadRequest { .. }
                | ProvisionError::TooLarge { .. }
                | ProvisionError::BadContentType { .. }
                | ProvisionError::BadMethod { .. }
                | ProvisionError::AuthMissing
                | ProvisionError::AuthRequired(_)
                | ProvisionError::AuthInvalid(_)
                | ProvisionError::Forbidden(_)
                | ProvisionError::NotTheDevice(_)
                | ProvisionError::Hidden(_)
                | ProvisionError::DeviceNotFound(_)
                | ProvisionError::Busy(_)
                | ProvisionError::Upstream { .. }
                | ProvisionError::Internal(_) => {}
            }
        }
        all
    }

    #[test]
    fn all_codes_is_every_code_with_its_status() {
        let made: BTreeSet<(&str, u16)> = one_of_each()
            .iter()
            .map(|e| (e.code(), e.status().as_u16()))
            .collect();
        let listed: BTreeSet<(&str, u16)> = ALL_CODES.iter().copied().collect();
        assert_eq!(
            listed.len(),
            ALL_CODES.len(),
            "ALL_CODES lists a code twice"
        );
        assert_eq!(made, listed, "ALL_CODES and the codes errors carry differ");
        // One status per code: a client may branch on either.
        let codes: BTreeSet<&str> = ALL_CODES.iter().map(|(code, _)| *code).collect();
        assert_eq!(codes.len(), ALL_CODES.len(), "a code with two statuses");
    }

    #[test]
    fn retry_after_goes_with_every_503_and_nothing_else() {
        for error in one_of_each() {
            assert_eq!(
                error.retry_after().is_some(),
                error.status() == StatusCode::SERVICE_UNAVAILABLE,
                "{}",
                error.code()
            );
        }
    }
}

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
    #[error("method {method} is not allowed; use GET, POST or DELETE")]
    BadMethod { method: String },
    #[error("no Authorization header: send 'Authorization: Bearer <device API key or operator token>'")]
    AuthMissing,
    #[error("{0}")]
    AuthInvalid(String),
    #[error("this key cannot act on device {0}")]
    Forbidden(String),
    #[error("device {0} is not known to balenaCloud")]
    DeviceNotFound(String),
    #[error("another request is changing device {0}; retry shortly")]
    Busy(String),
    #[error("{system}: {step} failed: {failure}")]
    Upstream { system: Upstream, step: &'static str, failure: UpstreamFailure },
    #[error("internal error: {0}")]
    Internal(String),
}

impl ProvisionError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ProvisionError::BadRequest { code, message: message.into() }
    }

    pub fn balena(step: &'static str, failure: UpstreamFailure) -> Self {
        ProvisionError::Upstream { system: Upstream::Balena, step, failure }
    }

    pub fn cloud(step: &'static str, failure: UpstreamFailure) -> Self {
        ProvisionError::Upstream { system: Upstream::Cloud, step, failure }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProvisionError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ProvisionError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProvisionError::BadContentType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ProvisionError::BadMethod { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ProvisionError::AuthMissing | ProvisionError::AuthInvalid(_) => StatusCode::UNAUTHORIZED,
            ProvisionError::Forbidden(_) => StatusCode::FORBIDDEN,
            ProvisionError::DeviceNotFound(_) => StatusCode::NOT_FOUND,
            ProvisionError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProvisionError::Upstream { failure: UpstreamFailure::Throttled { .. }, .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
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
            ProvisionError::AuthMissing => "provision.auth.missing",
            ProvisionError::AuthInvalid(_) => "provision.auth.invalid",
            ProvisionError::Forbidden(_) => "provision.auth.forbidden",
            ProvisionError::DeviceNotFound(_) => "provision.device.not-found",
            ProvisionError::Busy(_) => "provision.device.busy",
            ProvisionError::Upstream { failure: UpstreamFailure::Throttled { .. }, .. } => {
                "provision.upstream.throttled"
            }
            ProvisionError::Upstream { system: Upstream::Balena, .. } => "provision.upstream.balena",
            ProvisionError::Upstream { system: Upstream::Cloud, .. } => "provision.upstream.cloud",
            ProvisionError::Internal(_) => "provision.internal",
        }
    }

    /// Seconds for a `Retry-After` header, for the answers that invite a retry.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ProvisionError::Upstream { failure: UpstreamFailure::Throttled { retry_after }, .. } => {
                Some(retry_after.map(|d| d.as_secs().max(1)).unwrap_or(1))
            }
            ProvisionError::Busy(_) => Some(1),
            _ => None,
        }
    }
}

/// Codes for caller mistakes, as the published functions name them.
pub mod codes {
    pub const NO_BODY: &str = "provision.request.no-body";
    pub const BAD_JSON: &str = "provision.request.bad-json";
    pub const BAD_UUID: &str = "provision.request.bad-uuid";
    pub const BAD_SERVICE: &str = "provision.request.bad-service";
    pub const BAD_CSR: &str = "provision.request.bad-csr";
}

//! One logical HTTP call to a JSON upstream (balenaCloud, ClearBlade) with the retry policy:
//! 429, 503, other 5xx and transport errors are retried inside the request's deadline; any
//! other answer is handed back for the client to read.

use std::time::Duration;

use http::StatusCode;

use crate::error::UpstreamFailure;
use crate::retry::{Attempt, Deadline, RetryPolicy};

/// An answer that retrying will not change.
pub(crate) struct Answer {
    pub status: StatusCode,
    pub body: bytes::Bytes,
}

impl Answer {
    /// A final non-success answer as a failure. The text is cut and stripped of control
    /// characters; the upstreams this serves do not echo request bodies (where values live).
    pub fn refused(&self) -> UpstreamFailure {
        let text: String = String::from_utf8_lossy(&self.body)
            .chars()
            .filter(|c| !c.is_control())
            .take(160)
            .collect();
        UpstreamFailure::Refused {
            status: self.status.as_u16(),
            detail: text,
        }
    }

    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, UpstreamFailure> {
        serde_json::from_slice(&self.body).map_err(|e| UpstreamFailure::Unavailable {
            detail: format!("unreadable answer: {e}"),
        })
    }
}

/// Sends the request `build` makes (afresh for each attempt) until it gets a final answer.
pub(crate) async fn send(
    retry: &RetryPolicy,
    deadline: Deadline,
    build: impl Fn() -> reqwest::RequestBuilder,
) -> Result<Answer, UpstreamFailure> {
    retry
        .run(deadline, || {
            let request = build();
            async move {
                let response = match request.send().await {
                    Ok(r) => r,
                    Err(e) => {
                        return Attempt::Retry(UpstreamFailure::Unavailable {
                            detail: transport_detail(&e),
                        });
                    }
                };
                let status = response.status();
                let retry_after = response
                    .headers()
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(std::time::Duration::from_secs);
                let body = match response.bytes().await {
                    Ok(b) => b,
                    Err(e) => {
                        return Attempt::Retry(UpstreamFailure::Unavailable {
                            detail: transport_detail(&e),
                        });
                    }
                };
                if status == StatusCode::TOO_MANY_REQUESTS
                    || status == StatusCode::SERVICE_UNAVAILABLE
                {
                    Attempt::Retry(UpstreamFailure::Throttled { retry_after })
                } else if status.is_server_error() {
                    Attempt::Retry(UpstreamFailure::Unavailable {
                        detail: format!("answered {status}"),
                    })
                } else {
                    Attempt::Done(Answer { status, body })
                }
            }
        })
        .await
}

/// A transport error's description without its URL: a guarded balenaCloud delete's URL holds
/// the value it guards on (a private key, possibly), and ClearBlade's hold the registry key.
pub(crate) fn transport_detail(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "transport error"
    };
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(url.as_str(), "<url>");
    }
    format!("{kind}: {text}")
}

/// One HTTP client for the whole process: connection pools and TLS set up once.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(3))
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("balena-provision/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

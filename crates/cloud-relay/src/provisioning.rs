//! Asking the provisioning function for this device's credentials, with the device's own
//! balenaCloud key, and following its answers until balenaCloud delivers the variables (the
//! supervisor then restarts this service with them).

use std::time::Duration;

use serde_json::{Value, json};

use crate::backoff::Backoff;
use crate::settings::{Settings, SupervisorSettings};

/// What the function answered, as the relay acts on it.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// 200/201: `created`, `already-provisioned`, `repaired`, `rotated`.
    Provisioned { status: String },
    /// 401/403: the function does not take this caller.
    Refused {
        http: u16,
        code: String,
        message: String,
    },
    /// 429/503: come back after the given time (from `Retry-After`, when it says).
    Later { retry_after: Option<Duration> },
    /// Any other answer.
    Failed { http: u16, message: String },
    /// No answer (connection refused, DNS, TLS, timeout).
    Unreachable { error: String },
}

/// What a POST asks for.
#[derive(Debug, Default)]
pub struct Request {
    pub csr: Option<String>,
    pub rotate: bool,
}

/// The function's HTTP client.
pub struct FunctionClient {
    http: reqwest::Client,
    url: String,
    uuid: String,
    service: Option<String>,
    api_key: Option<String>,
}

impl FunctionClient {
    pub fn new(http: reqwest::Client, settings: &Settings, url: String) -> FunctionClient {
        FunctionClient {
            http,
            url,
            uuid: settings.device_uuid.clone(),
            service: settings.service_name.clone(),
            api_key: settings.api_key.clone(),
        }
    }

    pub async fn post(&self, request: &Request) -> Answer {
        let mut body = json!({"uuid": self.uuid});
        if let Some(service) = &self.service {
            body["balena_service"] = json!(service);
        }
        if let Some(csr) = &request.csr {
            body["csr"] = json!(csr);
        }
        if request.rotate {
            body["rotate"] = json!(true);
        }
        let mut call = self
            .http
            .post(&self.url)
            .header("Cache-Control", "no-cache")
            .json(&body);
        if let Some(key) = &self.api_key {
            call = call.bearer_auth(key);
        }
        let response = match call.send().await {
            Ok(r) => r,
            Err(e) => {
                return Answer::Unreachable {
                    error: error_chain(e),
                };
            }
        };
        let http = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = response.text().await.unwrap_or_default();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let field = |name: &str| body[name].as_str().unwrap_or_default().to_string();
        // Errors are `{"error": {"code", "message"}, "request_id"}` (the HTTP contract).
        let error_field = |name: &str| body["error"][name].as_str().unwrap_or_default().to_string();
        match http {
            200 | 201 => Answer::Provisioned {
                status: field("status"),
            },
            401 | 403 => Answer::Refused {
                http,
                code: error_field("code"),
                message: error_field("message"),
            },
            429 | 503 => Answer::Later { retry_after },
            _ => Answer::Failed {
                http,
                message: if body.is_null() {
                    text.chars().take(200).collect()
                } else {
                    format!("{} {}", error_field("code"), error_field("message"))
                },
            },
        }
    }
}

impl FunctionClient {
    /// `GET ?uuid=&balena_service=`: the function's `status` for the device (`provisioned`,
    /// `not-provisioned`, `partial`), or why there is none.
    pub async fn status(&self) -> Result<String, String> {
        let mut query = vec![("uuid", self.uuid.as_str())];
        if let Some(service) = &self.service {
            query.push(("balena_service", service.as_str()));
        }
        let query: Vec<String> = query
            .into_iter()
            .map(|(k, v)| {
                format!(
                    "{k}={}",
                    percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)
                )
            })
            .collect();
        let mut call = self
            .http
            .get(format!("{}?{}", self.url, query.join("&")))
            .header("Cache-Control", "no-cache");
        if let Some(key) = &self.api_key {
            call = call.bearer_auth(key);
        }
        let response = call.send().await.map_err(error_chain)?;
        let http = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        match body["status"].as_str() {
            Some(status) if http == 200 => Ok(status.to_string()),
            _ => Err(format!(
                "{http} {} {}",
                body["error"]["code"].as_str().unwrap_or_default(),
                body["error"]["message"].as_str().unwrap_or_default()
            )),
        }
    }
}

/// A request's failure for the log, without its URL: the supervisor's key travels in its query,
/// and a function URL may carry one (Azure Functions' `?code=`).
fn error_chain(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The HTTP client for the function and the supervisor: the public roots built in (a `FROM
/// scratch` image has no system store), bounded connect and request times.
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    use anyhow::Context as _;
    reqwest::Client::builder()
        .tls_backend_preconfigured(crate::tls::anonymous(crate::tls::roots(None)?)?)
        .connect_timeout(Duration::from_secs(15))
        .timeout(Duration::from_secs(60))
        .build()
        .context("making the HTTP client")
}

/// Asks the supervisor to fetch the target state now (and so the new variables).
pub async fn refresh_variables(http: &reqwest::Client, supervisor: &SupervisorSettings) {
    // The supervisor key goes in the query, as the supervisor wants it; the URL is never logged.
    let url = format!(
        "{}/v1/update?apikey={}",
        supervisor.address,
        percent_encoding::utf8_percent_encode(
            &supervisor.api_key,
            percent_encoding::NON_ALPHANUMERIC
        )
    );
    let result = http.post(url).json(&json!({"force": true})).send().await;
    match result {
        Ok(r) if r.status().is_success() => {
            tracing::info!(
                "supervisor: asked to fetch the new variables ({})",
                r.status()
            )
        }
        Ok(r) => tracing::warn!(
            "supervisor: refused to refresh the variables ({}); they arrive with its next poll",
            r.status()
        ),
        Err(e) => tracing::warn!(
            "supervisor: not reachable ({}); the variables arrive with its next poll",
            error_chain(e)
        ),
    }
}

/// Backoff bounds for each kind of answer.
pub struct Pacing {
    pub unreachable: Backoff,
    pub refused: Backoff,
    /// How long to wait for the variables after a success before asking again.
    pub delivery: Backoff,
}

impl Default for Pacing {
    fn default() -> Self {
        Pacing {
            unreachable: Backoff::new(Duration::from_secs(1), Duration::from_secs(60)),
            refused: Backoff::new(Duration::from_secs(30), Duration::from_secs(15 * 60)),
            delivery: Backoff::new(Duration::from_secs(60), Duration::from_secs(30 * 60)),
        }
    }
}

/// The log line for a refusal: what is missing, never the key.
fn refusal_advice(settings: &Settings, http: u16, code: &str, message: &str) -> String {
    let cause = if settings.api_key.is_none() {
        "this service has no BALENA_API_KEY: add the label io.balena.features.balena-api: '1' \
         to the cloud-relay service so it can prove it is the device"
            .to_string()
    } else if http == 401 {
        "the function did not accept the device's key (a revoked key, or a function set up \
         for another balenaCloud)"
            .to_string()
    } else {
        "the function takes the device's key only for its own device; with a user or fleet \
         key it needs the operator's PROVISION_ACCEPT_USER_KEYS"
            .to_string()
    };
    format!("provisioning: refused ({http} {code}: {message}); {cause}")
}

fn seconds(wait: Duration) -> String {
    format!("{:.1}s", wait.as_secs_f64())
}

/// Asks the function until it has provisioned the device, then keeps asking balenaCloud (via
/// the supervisor) for the variables; returns only if `stop` resolves. Never exits the process
/// on a refusal: a crash loop would hammer the function.
pub async fn run(
    settings: &Settings,
    function: &FunctionClient,
    http: &reqwest::Client,
    mut request: Request,
    mut pacing: Pacing,
) {
    tracing::info!(
        "provisioning: asking the function for {} credentials{}{}",
        settings.cloud.name(),
        if request.csr.is_some() {
            " for the kept key (a CSR)"
        } else {
            ""
        },
        if request.rotate {
            ", replacing the old ones"
        } else {
            ""
        }
    );
    loop {
        let (wait, warning) = match function.post(&request).await {
            Answer::Provisioned { status } => {
                // Rotated (or repaired) once is enough: asking again only checks.
                request.rotate = false;
                pacing.unreachable.reset();
                pacing.refused.reset();
                tracing::info!(
                    "provisioning: {status}; waiting for balenaCloud to deliver the variables \
                     (the supervisor restarts this service with them)"
                );
                match &settings.supervisor {
                    Some(supervisor) => refresh_variables(http, supervisor).await,
                    None => tracing::info!(
                        "provisioning: no supervisor API (label io.balena.features.supervisor-api); \
                         the variables arrive with the supervisor's next poll"
                    ),
                }
                let wait = pacing.delivery.next_wait();
                tracing::info!(
                    "provisioning: asking again in {} if the variables have not come by then",
                    seconds(wait)
                );
                (wait, None)
            }
            Answer::Refused {
                http,
                code,
                message,
            } => {
                let wait = pacing.refused.next_wait();
                (
                    wait,
                    Some(format!(
                        "{}; asking again in {}",
                        refusal_advice(settings, http, &code, &message),
                        seconds(wait)
                    )),
                )
            }
            Answer::Later { retry_after } => {
                let wait = retry_after
                    .map(|d| d.clamp(Duration::from_secs(1), Duration::from_secs(3600)))
                    .unwrap_or_else(|| pacing.unreachable.next_wait());
                (
                    wait,
                    Some(format!(
                        "provisioning: the function is busy; asking again in {}{}",
                        seconds(wait),
                        if retry_after.is_some() {
                            " (its Retry-After)"
                        } else {
                            ""
                        }
                    )),
                )
            }
            Answer::Failed { http, message } => {
                let wait = pacing.refused.next_wait();
                (
                    wait,
                    Some(format!(
                        "provisioning: failed ({http}: {message}); asking again in {}",
                        seconds(wait)
                    )),
                )
            }
            Answer::Unreachable { error } => {
                let wait = pacing.unreachable.next_wait();
                (
                    wait,
                    Some(format!(
                        "provisioning: the function is unreachable ({error}); asking again in {}",
                        seconds(wait)
                    )),
                )
            }
        };
        if let Some(warning) = warning {
            tracing::warn!("{warning}");
        }
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failed_request_is_logged_without_its_url() {
        // Nothing listens on port 1: the request fails, as to an unreachable supervisor.
        let error = http_client()
            .unwrap()
            .post("http://127.0.0.1:1/v1/update?apikey=supervisor-secret")
            .send()
            .await
            .unwrap_err();
        let line = error_chain(error);
        assert!(!line.contains("supervisor-secret"), "{line}");
        assert!(!line.is_empty());
    }
}

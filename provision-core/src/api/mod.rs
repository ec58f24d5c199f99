//! The HTTP contract: one handler over `http::Request` / `http::Response` that every host
//! (Lambda, the Azure custom handler, Cloud Run) calls as it is.

pub mod request;

use std::panic::AssertUnwindSafe;
use std::time::Instant;

use bytes::Bytes;
use futures::FutureExt;
use http::{HeaderValue, Method, Response, StatusCode, header};
use serde_json::json;

use crate::auth::{self, AuthPolicy};
use crate::error::ProvisionError;
use crate::flow::{Operation, Outcome, Provisioner, WarmUp};
use request::{Route, route};

/// A request id a host already has (the Lambda request id, the Functions invocation id); put
/// it in the request's extensions and the answer and logs use it.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// The whole function: validation, authentication, provisioning, and the JSON answer.
pub struct Service {
    provisioner: Provisioner,
    auth: AuthPolicy,
}

impl Service {
    pub fn new(provisioner: Provisioner, auth: AuthPolicy) -> Self {
        Service { provisioner, auth }
    }

    /// Start-up's share of the first request's work, within `budget` (see [`WarmUp`]).
    pub async fn warm(&self, budget: std::time::Duration) -> WarmUp {
        self.provisioner.warm(budget).await
    }

    pub fn cloud(&self) -> &'static str {
        self.provisioner.registry().cloud().as_str()
    }

    /// Answers one request. Never fails and never panics outward: every failure, a panic
    /// included, becomes a JSON error answer.
    pub async fn handle(&self, request: http::Request<Bytes>) -> Response<Bytes> {
        let started = Instant::now();
        let request_id = request
            .extensions()
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let method = request.method().clone();
        if route(request.uri().path()) == Route::Health {
            // GET and HEAD (GET without the body) only, as for any resource with an `Allow`:
            // a 200 to DELETE /healthz would say that something was deleted.
            return if method == Method::GET || method == Method::HEAD {
                json_response(StatusCode::OK, &json!({"status": "ok"}), None)
            } else {
                error_response(
                    &request::bad_method(&method, request::HEALTH_METHODS),
                    &request_id,
                )
            };
        }
        let served = AssertUnwindSafe(self.serve(request, &request_id))
            .catch_unwind()
            .await;
        let (response, outcome_text) = match served {
            Ok(Ok((uuid, outcome))) => {
                let text = outcome.status.as_str();
                (self.success(&uuid, outcome, &request_id), text.to_string())
            }
            Ok(Err(error)) => {
                let text = error.code().to_string();
                (error_response(&error, &request_id), text)
            }
            Err(_) => {
                tracing::error!(request_id = %request_id, "a bug: the request handler panicked");
                let error =
                    ProvisionError::Internal("unexpected failure; it has been logged".into());
                (
                    error_response(&error, &request_id),
                    error.code().to_string(),
                )
            }
        };
        tracing::info!(
            request_id = %request_id,
            method = %method,
            status = response.status().as_u16(),
            outcome = %outcome_text,
            ms = started.elapsed().as_millis() as u64,
            "answered"
        );
        response
    }

    async fn serve(
        &self,
        request: http::Request<Bytes>,
        request_id: &str,
    ) -> Result<(String, Outcome), ProvisionError> {
        let (parts, body) = request.into_parts();
        let parsed = request::parse(&parts.method, &parts.headers, parts.uri.query(), &body)?;
        let caller = auth::identify(&parts.headers, &self.auth)?;
        if matches!(caller, auth::Caller::Anonymous) {
            anonymous_may(&parsed.operation)?;
        }
        let uuid = parsed.uuid.to_string();
        tracing::debug!(request_id, uuid = %uuid, operation = ?parsed.operation, "request accepted");
        let anonymous = matches!(caller, auth::Caller::Anonymous);
        let mut outcome = self.provisioner.run(parsed, caller, request_id).await?;
        if anonymous {
            // What is registered where is for the device and the operator, not for anyone who
            // knows a UUID.
            outcome.details = None;
        }
        Ok((uuid, outcome))
    }

    fn success(&self, uuid: &str, mut outcome: Outcome, request_id: &str) -> Response<Bytes> {
        // Sorted, so the answer does not depend on the order the writes were made in.
        outcome.variables.sort();
        let mut body = json!({
            "status": outcome.status.as_str(),
            "uuid": uuid,
            "cloud": self.cloud(),
            "device_id": outcome.device_id,
            "variables": outcome.variables,
            "request_id": request_id,
        });
        if let Some(details) = outcome.details {
            body["details"] = details;
        }
        json_response(outcome.status.http_status(), &body, None)
    }
}

/// What a caller without credentials (the opt-in unauthenticated mode, for balena's published
/// cloud-relay block) may ask for: only a device provisioned with credentials the function
/// makes. No CSR (its key would become the device's), no rotation and no removal (anyone who
/// knows a UUID could take a device over or cut a fleet off).
fn anonymous_may(operation: &Operation) -> Result<(), ProvisionError> {
    let refused = match operation {
        Operation::Provision { csr: Some(_), .. } => "a CSR",
        Operation::Provision { rotate: true, .. } => "a rotation",
        Operation::Deprovision => "a removal",
        Operation::Provision { .. } | Operation::Status => return Ok(()),
    };
    Err(ProvisionError::AuthRequired(format!(
        "{refused} needs credentials: send 'Authorization: Bearer <the device's own BALENA_API_KEY or the operator token>' \
         (without credentials a device can only be provisioned with credentials the function makes)"
    )))
}

pub fn error_response(error: &ProvisionError, request_id: &str) -> Response<Bytes> {
    let status = error.status();
    if status.is_server_error() {
        tracing::warn!(request_id, code = error.code(), "{error}");
    }
    let body = json!({"error": {"code": error.code(), "message": error.public_message()}, "request_id": request_id});
    let mut response = json_response(status, &body, error.retry_after());
    if let ProvisionError::BadMethod { allow, .. } = error {
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allow));
    }
    response
}

fn json_response(
    status: StatusCode,
    body: &serde_json::Value,
    retry_after: Option<u64>,
) -> Response<Bytes> {
    let mut response = Response::new(Bytes::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

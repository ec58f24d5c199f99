//! Azure IoT Hub's registry REST API, over `azure_core`'s HTTP pipeline (its retry and
//! logging policies), authenticated with SharedAccessSignature tokens made from a service
//! policy's connection string. A device is registered with self-signed X.509 certificates by
//! thumbprint; the hub's two thumbprint slots let a rotation register the new certificate beside
//! the old one before the variables change, and drop the old one only after.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{
    ClientOptions, Context, Method, Pipeline, PipelineSendOptions, Request, Transport, Url,
};
use azure_core::http::{ExponentialRetryOptions, RetryOptions};
use serde_json::{Value, json};

use super::{
    Cloud, Device, Handle, Material, RegisteredCredential, Registration, Registry, RegistryError,
    RegistryState, alone_after_activate,
};
use crate::codec::{base64_decode, base64_encode};
use crate::config::ConfigError;
use crate::credentials::{PublicKeyId, certificate_facts, certificate_for_csr};
use crate::error::UpstreamFailure;
use crate::ids::{DeviceUuid, RegistryDeviceId};
use crate::retry::Deadline;
use crate::secret::Secret;
use crate::text::uri_component;

pub const CERT_VAR: &str = "AZURE_CERT";
pub const KEY_VAR: &str = "AZURE_PRIVATE_KEY";
const API_VERSION: &str = "2021-04-12";
/// Validity of a device certificate; rotation renews it.
const CERT_DAYS: i64 = 3 * 365;

mod settings;

pub use settings::ConnectionString;
use settings::*;

/// What the hub registry keeps of a credential: the slot its thumbprint sits in, or, for one
/// made here and not yet registered, its certificate.
#[derive(Clone, Debug)]
enum Thumbprint {
    InSlot(&'static str),
    Made { pem: String },
}

/// What the hub's answers mean to the flow: its 404 is gone, its 409 (made meanwhile) and 412
/// (the etag changed) the entry changed meanwhile.
fn hub_error(failure: UpstreamFailure) -> RegistryError {
    match failure {
        UpstreamFailure::Refused {
            status: 404,
            detail,
        } => RegistryError::Gone(detail),
        UpstreamFailure::Refused {
            status: 409 | 412,
            detail,
        } => RegistryError::Changed(detail),
        other => RegistryError::Upstream(other),
    }
}

pub struct IotHubRegistry {
    pipeline: Pipeline,
    base: Url,
}

/// One answer from the hub.
struct Reply {
    status: u16,
    body: Value,
}

impl IotHubRegistry {
    /// `endpoint` overrides `https://<HostName>` (emulators); tokens are still signed for the
    /// connection string's HostName.
    pub fn new(
        http: reqwest::Client,
        connection: ConnectionString,
        endpoint: Option<&str>,
    ) -> Result<Self, ConfigError> {
        let base = match endpoint {
            Some(url) => url.to_owned(),
            None => format!("https://{}", connection.host),
        };
        let base = Url::parse(&base)
            .map_err(|_| ConfigError::new("AZURE_IOTHUB_ENDPOINT", "is not a URL"))?;
        let options = ClientOptions {
            retry: RetryOptions::exponential(ExponentialRetryOptions {
                initial_delay: azure_core::time::Duration::milliseconds(100),
                max_retries: 3,
                max_total_elapsed: azure_core::time::Duration::seconds(15),
                max_delay: azure_core::time::Duration::seconds(2),
            }),
            transport: Some(Transport::new(Arc::new(http))),
            ..ClientOptions::default()
        };
        let sas: Arc<dyn Policy> = Arc::new(SasPolicy {
            connection,
            cached: Mutex::new(None),
        });
        let pipeline = Pipeline::new(
            Some("provision-core"),
            Some(env!("CARGO_PKG_VERSION")),
            options,
            Vec::new(),
            vec![sas],
            None,
        );
        Ok(IotHubRegistry { pipeline, base })
    }

    async fn call(
        &self,
        deadline: Deadline,
        method: Method,
        device: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Result<Reply, UpstreamFailure> {
        let mut url = self.base.clone();
        url.set_path(&format!("/devices/{}", uri_component(device)));
        url.set_query(Some(&format!("api-version={API_VERSION}")));
        self.send_request(deadline, Request::new(url, method), body, if_match)
            .await
    }

    /// Sends one request through the pipeline, within the deadline; 2xx and 404 are answers,
    /// anything else a failure.
    async fn send_request(
        &self,
        deadline: Deadline,
        mut request: Request,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Result<Reply, UpstreamFailure> {
        if let Some(body) = body {
            request.insert_header("content-type", "application/json");
            request.set_body(body.to_string());
        }
        if let Some(etag) = if_match {
            request.insert_header("if-match", etag.to_owned());
        }
        let options = PipelineSendOptions {
            skip_checks: true,
            ..PipelineSendOptions::default()
        };
        let ctx = Context::new();
        let sent = tokio::time::timeout(
            deadline.remaining(),
            self.pipeline.send(&ctx, &mut request, Some(options)),
        )
        .await;
        let response = match sent {
            Err(_) => {
                return Err(UpstreamFailure::Unavailable {
                    detail: "the request's time budget was used up".into(),
                });
            }
            Ok(Err(e)) => {
                return Err(UpstreamFailure::Unavailable {
                    detail: format!("transport error: {:?}", e.kind()),
                });
            }
            Ok(Ok(response)) => response,
        };
        let status = u16::from(response.status());
        let retry_after = response
            .headers()
            .get_optional_str(&azure_core::http::headers::HeaderName::from_static(
                "retry-after",
            ))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let (_, _, body) = response.deconstruct();
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        match status {
            200..=299 | 404 => Ok(Reply { status, body }),
            429 | 503 => Err(UpstreamFailure::Throttled { retry_after }),
            500..=599 => Err(UpstreamFailure::Unavailable {
                detail: format!("answered {status}"),
            }),
            _ => Err(UpstreamFailure::Refused {
                status,
                detail: error_code(&body),
            }),
        }
    }

    async fn put(
        &self,
        deadline: Deadline,
        device: &str,
        thumbprints: (&str, Option<&str>),
        if_match: Option<&str>,
    ) -> Result<(), UpstreamFailure> {
        let body = json!({
            "deviceId": device,
            "status": "enabled",
            "authentication": {
                "type": "selfSigned",
                "x509Thumbprint": {"primaryThumbprint": thumbprints.0, "secondaryThumbprint": thumbprints.1}
            }
        });
        let reply = self
            .call(deadline, Method::Put, device, Some(&body), if_match)
            .await?;
        if reply.status == 404 {
            return Err(UpstreamFailure::Refused {
                status: 404,
                detail: "DeviceNotFound".into(),
            });
        }
        Ok(())
    }
}

/// `ErrorCode:DeviceNotFound;...` → `DeviceNotFound`.
fn error_code(body: &Value) -> String {
    let message = body["Message"]
        .as_str()
        .or_else(|| body["message"].as_str())
        .unwrap_or("");
    message
        .strip_prefix("ErrorCode:")
        .and_then(|m| m.split(';').next())
        .unwrap_or("error")
        .chars()
        .take(80)
        .collect()
}

/// The device's thumbprint slots, as (slot, uppercase thumbprint).
fn thumbprints(device: &Value) -> Vec<(&'static str, String)> {
    let slots = &device["authentication"]["x509Thumbprint"];
    [
        ("primary", "primaryThumbprint"),
        ("secondary", "secondaryThumbprint"),
    ]
    .into_iter()
    .filter_map(|(slot, field)| {
        slots[field]
            .as_str()
            .filter(|t| !t.is_empty())
            .map(|t| (slot, t.to_ascii_uppercase()))
    })
    .collect()
}

#[async_trait]
impl Registry for IotHubRegistry {
    fn cloud(&self) -> Cloud {
        Cloud::Azure
    }

    fn device_id(&self, uuid: &DeviceUuid) -> RegistryDeviceId {
        RegistryDeviceId::new(uuid.as_str().to_owned())
    }

    fn variable_names(&self) -> &'static [&'static str] {
        &[CERT_VAR, KEY_VAR]
    }

    fn private_key_variable(&self) -> &'static str {
        KEY_VAR
    }

    fn stored_public_key(&self, vars: &BTreeMap<String, Secret>) -> Option<PublicKeyId> {
        super::stored_certificate(vars, CERT_VAR).map(|f| f.public_key)
    }

    fn entry_holds_credentials(&self) -> bool {
        true
    }

    /// The stored certificate's thumbprint is the registered one (SHA-256 or SHA-1).
    fn is_named_by(
        &self,
        vars: &BTreeMap<String, Secret>,
        credential: &RegisteredCredential,
    ) -> bool {
        super::stored_certificate(vars, CERT_VAR).is_some_and(|f| {
            f.sha256_thumbprint == credential.id || f.sha1_thumbprint == credential.id
        })
    }

    fn variables(
        &self,
        _uuid: &DeviceUuid,
        credential: &RegisteredCredential,
        private_key: Option<&Secret>,
    ) -> Vec<(&'static str, Secret)> {
        let pem = match credential.handle.get::<Thumbprint>() {
            Some(Thumbprint::Made { pem }) => pem.as_str(),
            _ => "",
        };
        super::certificate_variables((CERT_VAR, KEY_VAR), pem, private_key)
    }

    /// Lists at most one device identity (`GET /devices?top=1`): it needs the policy's
    /// registry read right, and the SAS token the connection string signs.
    async fn probe(&self, deadline: Deadline) -> Result<String, RegistryError> {
        let mut url = self.base.clone();
        url.set_path("/devices");
        url.set_query(Some(&format!("top=1&api-version={API_VERSION}")));
        let reply = self
            .send_request(deadline, Request::new(url, Method::Get), None, None)
            .await
            .map_err(hub_error)?;
        if reply.status == 404 {
            return Err(RegistryError::Gone(format!(
                "no device registry at {}",
                self.base
            )));
        }
        let hub = self.base.host_str().unwrap_or("the hub");
        Ok(format!(
            "hub {hub} lists device identities for the policy's SAS token (GET /devices?top=1)"
        ))
    }

    async fn inspect(
        &self,
        deadline: Deadline,
        device: &RegistryDeviceId,
    ) -> Result<RegistryState, RegistryError> {
        let device = device.as_str();
        let reply = self
            .call(deadline, Method::Get, device, None, None)
            .await
            .map_err(hub_error)?;
        if reply.status == 404 {
            return Ok(RegistryState::default());
        }
        let usable = reply.body["status"] == "enabled"
            && reply.body["authentication"]["type"] == "selfSigned";
        let credentials = thumbprints(&reply.body)
            .into_iter()
            .map(|(slot, id)| RegisteredCredential {
                id,
                public_key: None,
                handle: Handle::new(Thumbprint::InSlot(slot)),
                active: usable,
                complete: usable,
                foreign: None,
            })
            .collect();
        Ok(RegistryState {
            entry: true,
            credentials,
            revision: reply.body["etag"].as_str().map(|e| format!("\"{e}\"")),
        })
    }

    /// The certificate is made here; the hub learns of it when it is activated.
    async fn register(
        &self,
        _deadline: Deadline,
        device: Device<'_>,
        state: &RegistryState,
        material: Material<'_>,
    ) -> Result<Registration, RegistryError> {
        let pem = match material {
            Material::Generated(key) => key.self_signed_pem(device.uuid, CERT_DAYS),
            Material::Csr(csr) => certificate_for_csr(csr, CERT_DAYS),
        }
        .map_err(RegistryError::Local)?;
        let facts = certificate_facts(&pem).map_err(RegistryError::Local)?;
        Ok(Registration {
            credential: RegisteredCredential {
                id: facts.sha256_thumbprint,
                public_key: Some(facts.public_key),
                handle: Handle::new(Thumbprint::Made { pem }),
                active: false,
                complete: false,
                foreign: None,
            },
            created_entry: !state.entry,
        })
    }

    /// The new thumbprint goes into the slot beside the credential to keep; when there is none
    /// to keep it is the only one.
    async fn activate(
        &self,
        deadline: Deadline,
        device: Device<'_>,
        state: &RegistryState,
        keep: Option<&RegisteredCredential>,
        credential: &RegisteredCredential,
    ) -> Result<(), RegistryError> {
        let device = device.id;
        let slots = match keep {
            Some(old) => (old.id.as_str(), Some(credential.id.as_str())),
            None => (credential.id.as_str(), None),
        };
        let if_match = state
            .entry
            .then(|| state.revision.as_deref().unwrap_or("*"));
        self.put(deadline, device.as_str(), slots, if_match)
            .await
            .map_err(hub_error)
    }

    async fn revoke(
        &self,
        deadline: Deadline,
        device: &RegistryDeviceId,
        credentials: &[RegisteredCredential],
    ) -> Result<(), RegistryError> {
        let device = device.as_str();
        let reply = self
            .call(deadline, Method::Get, device, None, None)
            .await
            .map_err(hub_error)?;
        if reply.status == 404 {
            return Ok(());
        }
        let etag = reply.body["etag"].as_str().map(|e| format!("\"{e}\""));
        let current = thumbprints(&reply.body);
        let remaining: Vec<&str> = current
            .iter()
            .map(|(_, t)| t.as_str())
            .filter(|t| !credentials.iter().any(|c| c.id == *t))
            .collect();
        if remaining.len() == current.len() {
            return Ok(());
        }
        match remaining.as_slice() {
            // Nothing left to authenticate with: the entry itself goes.
            [] => {
                let reply = self
                    .call(
                        deadline,
                        Method::Delete,
                        device,
                        None,
                        Some(etag.as_deref().unwrap_or("*")),
                    )
                    .await
                    .map_err(hub_error)?;
                let _ = reply;
                Ok(())
            }
            [first, rest @ ..] => self
                .put(
                    deadline,
                    device,
                    (first, rest.first().copied()),
                    Some(etag.as_deref().unwrap_or("*")),
                )
                .await
                .map_err(hub_error),
        }
    }

    /// `activate` left the entry holding `kept` and `credential`: `credential` alone now, in
    /// one PUT (no read first).
    async fn retire_replaced(
        &self,
        deadline: Deadline,
        device: Device<'_>,
        kept: Option<&RegisteredCredential>,
        credential: &RegisteredCredential,
        old: &[RegisteredCredential],
    ) -> Result<(), RegistryError> {
        if alone_after_activate(kept, credential, old) {
            return Ok(());
        }
        self.put(
            deadline,
            device.id.as_str(),
            (credential.id.as_str(), None),
            Some("*"),
        )
        .await
        .map_err(hub_error)
    }

    async fn remove_entry(
        &self,
        deadline: Deadline,
        device: &RegistryDeviceId,
    ) -> Result<(), RegistryError> {
        let device = device.as_str();
        self.call(deadline, Method::Delete, device, None, Some("*"))
            .await
            .map(|_| ())
            .map_err(hub_error)
    }

    /// Creates the device again with the thumbprints it had (a device made since stays).
    async fn unretire(
        &self,
        deadline: Deadline,
        device: &RegistryDeviceId,
        state: &RegistryState,
        _vars: &BTreeMap<String, Secret>,
    ) -> Result<(), RegistryError> {
        let device = device.as_str();
        let mut slots: Vec<&RegisteredCredential> = state.credentials.iter().collect();
        slots.sort_by_key(|c| {
            !matches!(
                c.handle.get::<Thumbprint>(),
                Some(Thumbprint::InSlot("primary"))
            )
        });
        let Some(first) = slots.first() else {
            return Ok(());
        };
        match self
            .put(
                deadline,
                device,
                (first.id.as_str(), slots.get(1).map(|c| c.id.as_str())),
                None,
            )
            .await
        {
            Err(UpstreamFailure::Refused { status: 409, .. }) => Ok(()),
            other => other.map_err(hub_error),
        }
    }
}

#[cfg(test)]
mod tests;

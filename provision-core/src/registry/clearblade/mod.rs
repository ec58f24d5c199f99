//! ClearBlade IoT Core (the API-compatible successor of Google Cloud IoT Core) as a
//! [`Registry`]: devices `balena-<uuid>` in one registry, each credential the public key of a
//! key pair (`ES256_PEM`, or `RSA_PEM` for RSA keys).
//!
//! Access takes two steps. The service account (`CB_SERVICE_ACCOUNT`: `systemKey`, `token`,
//! `url`) asks the admin system for the registry's own credentials
//! (`getRegistryCredentials`: its system key, a service-account token and its regional URL);
//! those are cached for the registry and fetched again when the registry refuses its token.
//! Device calls go to `{url}/api/v/4/webhook/execute/{registry system key}/cloudiot_devices`.
//!
//! Rotation is safe at every instant because a device may hold several credentials: the new
//! key is added beside the one the variables name, and the old one is removed only after the
//! new variables are stored.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    Cloud, Device, Handle, Material, RegisteredCredential, Registration, Registry, RegistryError,
    RegistryState, alone_after_activate,
};
use crate::codec::{base64_decode, base64_encode};
use crate::config::ConfigError;
use crate::credentials::{PublicKeyId, PublicKeyPem, public_key_of_pem, public_key_of_private_pem};
use crate::error::UpstreamFailure;
use crate::ids::{DeviceUuid, RegistryDeviceId};
use crate::retry::{Deadline, RetryPolicy};
use crate::secret::Secret;
use crate::text::uri_component;
use crate::upstream::{self, Answer};

pub const KEY_VAR: &str = "GCP_PRIVATE_KEY";
pub const CLIENT_PATH_VAR: &str = "GCP_CLIENT_PATH";
pub const TOPIC_ROOT_VAR: &str = "GCP_DATA_TOPIC_ROOT";
pub const PROJECT_VAR: &str = "GCP_PROJECT_ID";
mod access;
mod settings;

use access::*;
pub use settings::{RegistryPath, ServiceAccount};

const VARIABLES: &[&str] = &[KEY_VAR, CLIENT_PATH_VAR, TOPIC_ROOT_VAR, PROJECT_VAR];
const TOKEN_HEADER: &str = "ClearBlade-UserToken";

pub struct ClearBladeRegistry {
    http: reqwest::Client,
    account: ServiceAccount,
    path: RegistryPath,
    retry: RetryPolicy,
    /// This registry's access, fetched once and again when its token is refused. One registry
    /// instance serves one (region, registry), so this is the cache per (region, registry).
    access: tokio::sync::Mutex<Option<Arc<RegistryAccess>>>,
}

/// A Google-style error (`{"error": {"code", "message", "status"}}`) as a failure that names
/// the status and message (which never hold a token: ClearBlade does not echo headers).
fn google_failure(answer: &Answer) -> UpstreamFailure {
    let parsed: Option<Value> = serde_json::from_slice(&answer.body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    match error.and_then(|e| e.get("message")).and_then(Value::as_str) {
        Some(message) => {
            let status = error
                .and_then(|e| e.get("status"))
                .and_then(Value::as_str)
                .unwrap_or("");
            let detail: String = format!("{status} {message}")
                .trim()
                .chars()
                .filter(|c| !c.is_control())
                .take(160)
                .collect();
            UpstreamFailure::Refused {
                status: answer.status.as_u16(),
                detail,
            }
        }
        None => answer.refused(),
    }
}

/// What ClearBlade's answers mean to the flow: its 404 is gone, its 409 (made meanwhile) the
/// entry changed meanwhile.
fn google_error(failure: UpstreamFailure) -> RegistryError {
    match failure {
        UpstreamFailure::Refused {
            status: 404,
            detail,
        } => RegistryError::Gone(detail),
        UpstreamFailure::Refused {
            status: 409,
            detail,
        } => RegistryError::Changed(detail),
        other => RegistryError::Upstream(other),
    }
}

/// The credential JSON for a public key.
fn credential_json(key: &PublicKeyPem) -> Value {
    let format = if key.rsa { "RSA_PEM" } else { "ES256_PEM" };
    json!({"publicKey": {"format": format, "key": key.pem}})
}

/// A registered credential from the device resource. Its id is the key's fingerprint, so
/// the same key is the same credential whichever order the registry lists them in.
fn registered(
    credential: &DeviceCredential,
    blocked: bool,
    now: &str,
) -> Option<RegisteredCredential> {
    let public = credential.public_key.as_ref()?;
    let key_id = match public.format.as_str() {
        "ES256_PEM" | "RSA_PEM" => public_key_of_pem(&public.key),
        "ES256_X509_PEM" | "RSA_X509_PEM" => crate::credentials::certificate_facts(&public.key)
            .ok()
            .map(|f| f.public_key),
        _ => None,
    };
    let id = match &key_id {
        Some(key) => key.fingerprint(),
        None => crate::codec::sha256(public.key.as_bytes())[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    };
    // An expiration time in the past disables the key; the zero time means none.
    let expired = credential
        .expiration_time
        .as_deref()
        .filter(|t| !t.starts_with("1970-01-01T00:00:00"))
        .is_some_and(|t| t.get(..19).is_some_and(|t| t <= now));
    let usable = key_id.is_some() && !blocked && !expired;
    Some(RegisteredCredential {
        id,
        public_key: key_id,
        handle: Handle::new(PublicKeyPem {
            pem: public.key.clone(),
            rsa: public.format.starts_with("RSA"),
        }),
        active: usable,
        complete: usable,
        foreign: None,
    })
}

fn utc_now() -> String {
    let now = ::time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

#[async_trait]
impl Registry for ClearBladeRegistry {
    fn cloud(&self) -> Cloud {
        Cloud::Gcp
    }

    /// `balena-<uuid>`, as balena's published function names them, so fleets migrate in place.
    fn device_id(&self, uuid: &DeviceUuid) -> RegistryDeviceId {
        RegistryDeviceId::new(format!("balena-{}", uuid.as_str()))
    }

    fn variable_names(&self) -> &'static [&'static str] {
        VARIABLES
    }

    fn private_key_variable(&self) -> &'static str {
        KEY_VAR
    }

    fn stored_public_key(&self, vars: &BTreeMap<String, Secret>) -> Option<PublicKeyId> {
        let pem = base64_decode(vars.get(KEY_VAR)?.expose())?;
        public_key_of_private_pem(&Secret::new(String::from_utf8(pem).ok()?)).ok()
    }

    /// The stored private key's public half is the registered key; with no private key stored
    /// (the device sent a CSR and keeps its key) any registered key may be the device's.
    fn is_named_by(
        &self,
        vars: &BTreeMap<String, Secret>,
        credential: &RegisteredCredential,
    ) -> bool {
        match self.stored_public_key(vars) {
            Some(stored) => credential.public_key.as_ref() == Some(&stored),
            None => !vars.contains_key(KEY_VAR),
        }
    }

    fn variables_name_credential(&self) -> bool {
        false
    }

    fn entry_holds_credentials(&self) -> bool {
        true
    }

    fn fixed_variables(&self, uuid: &DeviceUuid) -> Vec<(&'static str, String)> {
        let id = self.device_id(uuid);
        vec![
            (CLIENT_PATH_VAR, self.device_path(id.as_str())),
            (TOPIC_ROOT_VAR, format!("/devices/{id}")),
            (PROJECT_VAR, self.path.project.clone()),
        ]
    }

    fn variables(
        &self,
        uuid: &DeviceUuid,
        _credential: &RegisteredCredential,
        private_key: Option<&Secret>,
    ) -> Vec<(&'static str, Secret)> {
        let mut vars = Vec::new();
        if let Some(key) = private_key {
            vars.push((KEY_VAR, Secret::new(base64_encode(key.expose().as_bytes()))));
        }
        vars.extend(
            self.fixed_variables(uuid)
                .into_iter()
                .map(|(name, value)| (name, Secret::new(value))),
        );
        vars
    }

    /// Fetches the registry's own credentials afresh with the service account
    /// (`getRegistryCredentials`: a POST that only reads): it needs the service account to be
    /// accepted and the registry to exist where the settings say.
    async fn probe(&self, deadline: Deadline) -> Result<String, RegistryError> {
        let access = self.access(deadline, true).await.map_err(google_error)?;
        Ok(format!(
            "the service account fetched the credentials of {} (regional API {})",
            self.path.path(),
            access.url
        ))
    }

    async fn inspect(
        &self,
        deadline: Deadline,
        device_id: &RegistryDeviceId,
    ) -> Result<RegistryState, RegistryError> {
        let device_id = device_id.as_str();
        let Some(device) = self
            .get_device(deadline, device_id)
            .await
            .map_err(google_error)?
        else {
            return Ok(RegistryState::default());
        };
        let now = utc_now();
        let credentials = device
            .credentials
            .iter()
            .filter_map(|c| registered(c, device.blocked, &now))
            .collect();
        Ok(RegistryState {
            entry: true,
            credentials,
            revision: None,
        })
    }

    /// Only prepares the key: the device is created or changed by `activate`, which the flow
    /// runs beside taking the device's lock (a device with nothing provisioned) or once it holds it.
    async fn register(
        &self,
        _deadline: Deadline,
        _device: Device<'_>,
        state: &RegistryState,
        material: Material<'_>,
    ) -> Result<Registration, RegistryError> {
        let key = match material {
            Material::Generated(key) => key.public_key_pem(),
            Material::Csr(csr) => csr.public_key_pem().clone(),
        };
        let credential = RegisteredCredential {
            id: material.public_key().fingerprint(),
            public_key: Some(material.public_key()),
            handle: Handle::new(key),
            active: false,
            complete: false,
            foreign: None,
        };
        Ok(Registration {
            credential,
            created_entry: !state.entry,
        })
    }

    /// Creates the device holding the new key, or sets an existing device's keys to `keep`
    /// (the one the variables name until they change) and the new one; stale keys go now, as
    /// nothing names them.
    async fn activate(
        &self,
        deadline: Deadline,
        device: Device<'_>,
        state: &RegistryState,
        keep: Option<&RegisteredCredential>,
        credential: &RegisteredCredential,
    ) -> Result<(), RegistryError> {
        let keys: Vec<Value> = keep
            .filter(|k| k.id != credential.id)
            .into_iter()
            .chain(std::iter::once(credential))
            .filter_map(|c| c.handle.get::<PublicKeyPem>().map(credential_json))
            .collect();
        let device_id = device.id;
        if state.entry {
            return self
                .set_credentials(deadline, device_id.as_str(), &keys)
                .await
                .map_err(google_error);
        }
        let body = json!({"id": device_id, "credentials": keys});
        let answer = self
            .devices_call(deadline, reqwest::Method::POST, &[], Some(&body))
            .await
            .map_err(google_error)?;
        if answer.status.is_success() {
            Ok(())
        } else {
            // 409: made since the state was read; the flow undoes this attempt and re-reads.
            Err(google_error(google_failure(&answer)))
        }
    }

    /// Removes these keys from the device, reading its keys afresh; the device goes when none
    /// would remain (a device with no key is of no use, and DELETE removes it anyway).
    async fn revoke(
        &self,
        deadline: Deadline,
        device_id: &RegistryDeviceId,
        credentials: &[RegisteredCredential],
    ) -> Result<(), RegistryError> {
        let device_id = device_id.as_str();
        let Some(device) = self
            .get_device(deadline, device_id)
            .await
            .map_err(google_error)?
        else {
            return Ok(());
        };
        let now = utc_now();
        let gone: Vec<&str> = credentials.iter().map(|c| c.id.as_str()).collect();
        let (dropped, kept): (Vec<&DeviceCredential>, Vec<&DeviceCredential>) =
            device.credentials.iter().partition(|c| {
                registered(c, device.blocked, &now).is_some_and(|r| gone.contains(&r.id.as_str()))
            });
        if dropped.is_empty() {
            return Ok(());
        }
        if kept.is_empty() {
            return self
                .delete_device(deadline, device_id)
                .await
                .map_err(google_error);
        }
        let keys: Vec<Value> = kept
            .into_iter()
            .filter_map(|c| {
                let public = c.public_key.as_ref()?;
                let mut credential =
                    json!({"publicKey": {"format": public.format, "key": public.key}});
                if let Some(expiry) = &c.expiration_time {
                    credential["expirationTime"] = json!(expiry);
                }
                Some(credential)
            })
            .collect();
        self.set_credentials(deadline, device_id, &keys)
            .await
            .map_err(google_error)
    }

    /// `activate` left the device holding `kept` and `credential`: `credential` alone now, in
    /// one PATCH (no read first).
    async fn retire_replaced(
        &self,
        deadline: Deadline,
        device: Device<'_>,
        kept: Option<&RegisteredCredential>,
        credential: &RegisteredCredential,
        old: &[RegisteredCredential],
    ) -> Result<(), RegistryError> {
        let Some(key) = credential.handle.get::<PublicKeyPem>() else {
            return self.revoke(deadline, device.id, old).await;
        };
        if alone_after_activate(kept, credential, old) {
            return Ok(());
        }
        self.set_credentials(deadline, device.id.as_str(), &[credential_json(key)])
            .await
            .map_err(google_error)
    }

    async fn remove_entry(
        &self,
        deadline: Deadline,
        device_id: &RegistryDeviceId,
    ) -> Result<(), RegistryError> {
        self.delete_device(deadline, device_id.as_str())
            .await
            .map_err(google_error)
    }

    /// Creates the device again with the keys it had (a device made since stays).
    async fn unretire(
        &self,
        deadline: Deadline,
        device_id: &RegistryDeviceId,
        state: &RegistryState,
        _vars: &BTreeMap<String, Secret>,
    ) -> Result<(), RegistryError> {
        let device_id = device_id.as_str();
        let keys: Vec<Value> = state
            .credentials
            .iter()
            .filter_map(|c| c.handle.get::<PublicKeyPem>().map(credential_json))
            .collect();
        if !state.entry || keys.is_empty() {
            return Ok(());
        }
        let body = json!({"id": device_id, "credentials": keys});
        let answer = self
            .devices_call(deadline, reqwest::Method::POST, &[], Some(&body))
            .await
            .map_err(google_error)?;
        match answer.status {
            s if s.is_success() => Ok(()),
            StatusCode::CONFLICT => Ok(()),
            _ => Err(google_error(google_failure(&answer))),
        }
    }
}

#[cfg(test)]
mod tests;

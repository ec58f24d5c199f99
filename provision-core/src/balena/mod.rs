//! The balenaCloud API client (pinejs/OData, API v7): the device directory the core uses to
//! check a caller's key, read a device's provisioning variables, write and delete them, and
//! hold a per-device provisioning lease.
//!
//! Reads are shaped so that one request brings back everything a decision needs: the device,
//! its variables (device or service), and the lease tag, through `$expand`.

pub mod odata;

use std::collections::BTreeMap;

use http::StatusCode;
use serde::Deserialize;
use serde_json::json;

use crate::api::ids::{DeviceUuid, ServiceName};
use crate::error::UpstreamFailure;
use crate::retry::{Deadline, RetryPolicy};
use crate::upstream::{self, Answer};
use crate::secret::Secret;
use odata::{any_name, encode, literal};

/// The device tag that holds the provisioning lease of a device. Tags are not pushed to the
/// device as environment, so taking the lease restarts nothing.
pub const LEASE_TAG: &str = "provision-lock";

/// Where the variables of one request live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VarTarget {
    Device { device_id: i64 },
    Service { service_install_id: i64 },
}

impl VarTarget {
    fn resource(self) -> &'static str {
        match self {
            VarTarget::Device { .. } => "device_environment_variable",
            VarTarget::Service { .. } => "device_service_environment_variable",
        }
    }

    fn parent(self) -> (&'static str, i64) {
        match self {
            VarTarget::Device { device_id } => ("device", device_id),
            VarTarget::Service { service_install_id } => ("service_install", service_install_id),
        }
    }
}

/// A variable as stored. The value may be a private key, so it is a [`Secret`].
#[derive(Clone, Debug)]
pub struct StoredVar {
    pub id: i64,
    pub value: Secret,
}

/// What balenaCloud holds about one device, as far as provisioning is concerned.
#[derive(Clone, Debug)]
pub struct DeviceRecord {
    pub device_id: i64,
    /// `None` when a service was asked for and the device has no install of it.
    pub target: Option<VarTarget>,
    pub vars: BTreeMap<String, StoredVar>,
    /// The value of the lease tag, if one is held.
    pub lease: Option<String>,
}

/// What a caller's key can see of a device.
#[derive(Debug, PartialEq, Eq)]
pub enum Visibility {
    Visible,
    Invisible,
    KeyRejected,
}

pub struct BalenaClient {
    http: reqwest::Client,
    api: String,
    key: Secret,
    retry: RetryPolicy,
}

#[derive(Deserialize)]
struct Rows<T> {
    d: Vec<T>,
}

#[derive(Deserialize)]
struct IdRow {
    #[allow(dead_code)]
    id: i64,
}

#[derive(Deserialize)]
struct DeviceRow {
    id: i64,
    #[serde(default)]
    device_environment_variable: Vec<VarRow>,
    #[serde(default)]
    service_install: Vec<InstallRow>,
    #[serde(default)]
    device_tag: Vec<TagRow>,
}

#[derive(Deserialize)]
struct InstallRow {
    id: i64,
    #[serde(default)]
    device_service_environment_variable: Vec<VarRow>,
}

#[derive(Deserialize)]
struct VarRow {
    id: i64,
    name: String,
    value: String,
}

#[derive(Deserialize)]
struct TagRow {
    tag_key: String,
    value: String,
}

impl BalenaClient {
    /// `base_url` is the API root (`https://api.balena-cloud.com`); `key` is the function's
    /// own key, used for every read of state and every write.
    pub fn new(http: reqwest::Client, base_url: &str, key: Secret, retry: RetryPolicy) -> Self {
        BalenaClient { http, api: format!("{}/v7", base_url.trim_end_matches('/')), key, retry }
    }

    /// Whether `key` (a caller's key) can see the device: the proof that the caller is the
    /// device, or holds rights over it.
    pub async fn visibility(&self, deadline: Deadline, key: &Secret, uuid: &DeviceUuid) -> Result<Visibility, UpstreamFailure> {
        let url = format!(
            "{}/device?$select=id&$filter={}",
            self.api,
            encode(&format!("uuid eq {}", literal(uuid.as_str())))
        );
        let answer = self.send(deadline, reqwest::Method::GET, &url, key, None).await?;
        match answer.status {
            s if s.is_success() => {
                let rows: Rows<IdRow> = answer.parse()?;
                Ok(if rows.d.is_empty() { Visibility::Invisible } else { Visibility::Visible })
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Ok(Visibility::KeyRejected),
            _ => Err(refused(&answer)),
        }
    }

    /// The device, its provisioning variables among `names` (of the service install when a
    /// service is given), and its lease, in one request. `None`: no such device for our key.
    pub async fn read_device(
        &self,
        deadline: Deadline,
        uuid: &DeviceUuid,
        service: Option<&ServiceName>,
        names: &[&str],
    ) -> Result<Option<DeviceRecord>, UpstreamFailure> {
        let vars = format!("$select=id,name,value;$filter={}", any_name("name", names));
        let target_expand = match service {
            None => format!("device_environment_variable({vars})"),
            Some(service) => format!(
                "service_install($select=id;$filter=installs__service/any(s:s/service_name eq {});$expand=device_service_environment_variable({vars}))",
                literal(service.as_str())
            ),
        };
        let expand = format!("{target_expand},device_tag($select=id,tag_key,value;$filter=tag_key eq {})", literal(LEASE_TAG));
        let url = format!(
            "{}/device?$select=id&$filter={}&$expand={}",
            self.api,
            encode(&format!("uuid eq {}", literal(uuid.as_str()))),
            encode(&expand)
        );
        let answer = self.send(deadline, reqwest::Method::GET, &url, &self.key, None).await?;
        if !answer.status.is_success() {
            return Err(refused(&answer));
        }
        let rows: Rows<DeviceRow> = answer.parse()?;
        let Some(row) = rows.d.into_iter().next() else {
            return Ok(None);
        };
        let (target, var_rows) = match service {
            None => (Some(VarTarget::Device { device_id: row.id }), row.device_environment_variable),
            Some(_) => match row.service_install.into_iter().next() {
                Some(install) => (
                    Some(VarTarget::Service { service_install_id: install.id }),
                    install.device_service_environment_variable,
                ),
                None => (None, Vec::new()),
            },
        };
        let vars = var_rows
            .into_iter()
            .filter(|v| names.contains(&v.name.as_str()))
            .map(|v| (v.name, StoredVar { id: v.id, value: Secret::new(v.value) }))
            .collect();
        let lease = row.device_tag.into_iter().find(|t| t.tag_key == LEASE_TAG).map(|t| t.value);
        Ok(Some(DeviceRecord { device_id: row.id, target, vars, lease }))
    }

    /// Sets one variable: PATCH when it is known to exist, else POST, falling back to the other
    /// when the row turns out to be (or not be) there after all.
    pub async fn write_var(
        &self,
        deadline: Deadline,
        target: VarTarget,
        existing: Option<i64>,
        name: &str,
        value: &Secret,
    ) -> Result<(), UpstreamFailure> {
        let resource = target.resource();
        let (parent, parent_id) = target.parent();
        if let Some(id) = existing {
            let url = format!("{}/{resource}({id})", self.api);
            let answer = self.send(deadline, reqwest::Method::PATCH, &url, &self.key, Some(json!({"value": value.expose()}))).await?;
            if answer.status.is_success() {
                return Ok(());
            }
            if answer.status != StatusCode::NOT_FOUND {
                return Err(refused(&answer));
            }
        }
        let url = format!("{}/{resource}", self.api);
        let body = json!({ parent: parent_id, "name": name, "value": value.expose() });
        let answer = self.send(deadline, reqwest::Method::POST, &url, &self.key, Some(body)).await?;
        if answer.status.is_success() {
            return Ok(());
        }
        if answer.status != StatusCode::CONFLICT {
            return Err(refused(&answer));
        }
        // It exists after all: update it in place, addressed by its unique pair.
        let filter = format!("{parent} eq {parent_id} and name eq {}", literal(name));
        let url = format!("{}/{resource}?$filter={}", self.api, encode(&filter));
        let answer = self.send(deadline, reqwest::Method::PATCH, &url, &self.key, Some(json!({"value": value.expose()}))).await?;
        if answer.status.is_success() { Ok(()) } else { Err(refused(&answer)) }
    }

    /// Creates a variable that must not exist yet: `false` when it does (balenaCloud's unique
    /// (parent, name) answers 409), and nothing is overwritten.
    pub async fn create_var(&self, deadline: Deadline, target: VarTarget, name: &str, value: &Secret) -> Result<bool, UpstreamFailure> {
        let (parent, parent_id) = target.parent();
        let url = format!("{}/{}", self.api, target.resource());
        let body = json!({ parent: parent_id, "name": name, "value": value.expose() });
        let answer = self.send(deadline, reqwest::Method::POST, &url, &self.key, Some(body)).await?;
        match answer.status {
            s if s.is_success() => Ok(true),
            StatusCode::CONFLICT => Ok(false),
            _ => Err(refused(&answer)),
        }
    }

    /// Deletes a variable only while it still holds `value`, so undoing this request's write
    /// never removes someone else's.
    pub async fn delete_var_if(&self, deadline: Deadline, target: VarTarget, name: &str, value: &Secret) -> Result<(), UpstreamFailure> {
        let (parent, parent_id) = target.parent();
        let filter = format!("{parent} eq {parent_id} and name eq {} and value eq {}", literal(name), literal(value.expose()));
        let url = format!("{}/{}?$filter={}", self.api, target.resource(), encode(&filter));
        let answer = self.send(deadline, reqwest::Method::DELETE, &url, &self.key, None).await?;
        if answer.status.is_success() { Ok(()) } else { Err(refused(&answer)) }
    }

    /// Deletes these variables of the target, in one request. Deleting what is not there succeeds.
    pub async fn delete_vars(&self, deadline: Deadline, target: VarTarget, names: &[&str]) -> Result<(), UpstreamFailure> {
        let (parent, parent_id) = target.parent();
        let filter = format!("{parent} eq {parent_id} and ({})", any_name("name", names));
        let url = format!("{}/{}?$filter={}", self.api, target.resource(), encode(&filter));
        let answer = self.send(deadline, reqwest::Method::DELETE, &url, &self.key, None).await?;
        if answer.status.is_success() { Ok(()) } else { Err(refused(&answer)) }
    }

    /// Tries to take the device's lease: `true` when this call created the lease tag, `false`
    /// when a lease is already held (balenaCloud's unique (device, tag_key) makes it a mutex).
    pub async fn try_lease(&self, deadline: Deadline, device_id: i64, value: &str) -> Result<bool, UpstreamFailure> {
        let url = format!("{}/device_tag", self.api);
        let body = json!({"device": device_id, "tag_key": LEASE_TAG, "value": value});
        let answer = self.send(deadline, reqwest::Method::POST, &url, &self.key, Some(body)).await?;
        match answer.status {
            s if s.is_success() => Ok(true),
            StatusCode::CONFLICT => Ok(false),
            _ => Err(refused(&answer)),
        }
    }

    /// The current lease value, if any.
    pub async fn read_lease(&self, deadline: Deadline, device_id: i64) -> Result<Option<String>, UpstreamFailure> {
        let filter = format!("device eq {device_id} and tag_key eq {}", literal(LEASE_TAG));
        let url = format!("{}/device_tag?$select=id,tag_key,value&$filter={}", self.api, encode(&filter));
        let answer = self.send(deadline, reqwest::Method::GET, &url, &self.key, None).await?;
        if !answer.status.is_success() {
            return Err(refused(&answer));
        }
        let rows: Rows<TagRow> = answer.parse()?;
        Ok(rows.d.into_iter().next().map(|t| t.value))
    }

    /// Removes the lease if it still has this value (so a holder never removes a successor's).
    pub async fn drop_lease(&self, deadline: Deadline, device_id: i64, value: &str) -> Result<(), UpstreamFailure> {
        let filter = format!("device eq {device_id} and tag_key eq {} and value eq {}", literal(LEASE_TAG), literal(value));
        let url = format!("{}/device_tag?$filter={}", self.api, encode(&filter));
        let answer = self.send(deadline, reqwest::Method::DELETE, &url, &self.key, None).await?;
        if answer.status.is_success() { Ok(()) } else { Err(refused(&answer)) }
    }

    /// One logical call with retries (see [`upstream::send`]).
    async fn send(
        &self,
        deadline: Deadline,
        method: reqwest::Method,
        url: &str,
        key: &Secret,
        body: Option<serde_json::Value>,
    ) -> Result<Answer, UpstreamFailure> {
        upstream::send(&self.retry, deadline, || {
            let request = self.http.request(method.clone(), url).bearer_auth(key.expose());
            match &body {
                Some(body) => request.json(body),
                None => request,
            }
        })
        .await
    }
}

fn refused(answer: &Answer) -> UpstreamFailure {
    answer.refused()
}

//! The balenaCloud API client (pinejs/OData, API v7): the device directory the core uses to
//! check a caller's key, read a device's provisioning variables, write and delete them, and
//! keep a device's provisioning locks (device tags, see [`LockTag`]).
//!
//! Reads are shaped so that one request brings back everything a decision needs: the device,
//! its variables (device or service), and its lock tags, through `$expand`.

mod lock_tags;
pub mod odata;
mod vars;

use std::collections::BTreeMap;

use http::StatusCode;
use serde::Deserialize;
use serde_json::json;

use crate::error::UpstreamFailure;
use crate::ids::{BalenaDeviceId, DeviceUuid, ServiceName};
use crate::retry::{Deadline, RetryPolicy};
use crate::secret::Secret;
use crate::upstream::{self, Answer};
use odata::{any_name, expression, literal};

/// The prefix of the device tags that serialise changes to a device: `provision-lock-<n>`, one
/// per change, `n` counting up. Tags are not pushed to the device as environment, so taking a
/// lock restarts nothing.
pub const LOCK_TAG: &str = "provision-lock";

/// The highest lock generation taken seriously: 2^53, far beyond any device's count of
/// changes (a million a day for 20,000 years), and exact in any JSON reader.
pub const MAX_GENERATION: u64 = 1 << 53;

/// One lock tag: the `generation`-th change to the device, and what its holder wrote in it.
/// balenaCloud keeps (device, tag_key) unique, so of the requests that saw generation `n` as
/// the latest, exactly one can create generation `n + 1`: that is taking the lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockTag {
    pub id: i64,
    pub generation: u64,
    pub value: String,
}

impl LockTag {
    /// The generation a tag key names (`provision-lock` alone, from earlier versions, is 0).
    /// A device's own key may write its tags: a generation no sequence of real changes could
    /// reach (above [`MAX_GENERATION`]) is garbage, not a lock, so a forged tag can neither
    /// overflow the next generation nor hold the device.
    fn parse(id: i64, key: &str, value: String) -> Option<LockTag> {
        let rest = key.strip_prefix(LOCK_TAG)?;
        let generation = if rest.is_empty() {
            0
        } else {
            rest.strip_prefix('-')?.parse().ok()?
        };
        if generation > MAX_GENERATION {
            return None;
        }
        Some(LockTag {
            id,
            generation,
            value,
        })
    }

    pub fn key(generation: u64) -> String {
        format!("{LOCK_TAG}-{generation}")
    }
}

/// Where the variables of one request live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VarTarget {
    Device { device_id: BalenaDeviceId },
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
            VarTarget::Device { device_id } => ("device", device_id.0),
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
    pub device_id: BalenaDeviceId,
    /// `None` when a service was asked for and the device has no install of it.
    pub target: Option<VarTarget>,
    pub vars: BTreeMap<String, StoredVar>,
    /// The device's lock tags, oldest first.
    pub locks: Vec<LockTag>,
}

impl DeviceRecord {
    /// The stored variables' values, by name.
    pub fn values(&self) -> BTreeMap<String, Secret> {
        self.vars
            .iter()
            .map(|(k, v)| (k.clone(), v.value.clone()))
            .collect()
    }

    /// The latest lock tag, the one a change must follow.
    pub fn head_lock(&self) -> Option<&LockTag> {
        self.locks.last()
    }
}

/// Who holds a key, as balenaCloud's `whoami` answers.
#[derive(Debug, PartialEq, Eq)]
pub enum Actor {
    /// A device's own key (what the supervisor gives a container as `BALENA_API_KEY`).
    Device {
        uuid: String,
    },
    /// A user's key: it sees every device of the fleets its user is a member of.
    User,
    /// A fleet's key (e.g. a provisioning key).
    Fleet,
    Other,
}

#[derive(Deserialize)]
struct WhoamiRow {
    #[serde(rename = "actorType")]
    actor_type: String,
    #[serde(default)]
    uuid: Option<String>,
}

pub struct BalenaClient {
    http: reqwest::Client,
    /// The OData root, `<base>/v7`.
    api: String,
    /// The base URL, for the routes outside OData (`/actor/v1/whoami`).
    root: String,
    key: Secret,
    retry: RetryPolicy,
}

#[derive(Deserialize)]
struct Rows<T> {
    d: Vec<T>,
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
struct ValueRow {
    value: String,
}

#[derive(Deserialize)]
struct TagRow {
    #[serde(default)]
    id: i64,
    tag_key: String,
    value: String,
}

impl BalenaClient {
    /// `base_url` is the API root (`https://api.balena-cloud.com`); `key` is the function's
    /// own key, used for every read of state and every write.
    pub fn new(http: reqwest::Client, base_url: &str, key: Secret, retry: RetryPolicy) -> Self {
        BalenaClient {
            http,
            api: format!("{}/v7", base_url.trim_end_matches('/')),
            root: base_url.trim_end_matches('/').to_string(),
            key,
            retry,
        }
    }

    /// Opens `connections` connections to the API at once (`GET /ping`, which needs no key),
    /// which the client's pool keeps for the requests that follow. One attempt each: start-up
    /// does not wait on an API that refuses.
    pub async fn warm(
        &self,
        deadline: Deadline,
        connections: usize,
    ) -> Result<(), UpstreamFailure> {
        let url = format!("{}/ping", self.root);
        let pings = (0..connections).map(|_| async {
            let sent = tokio::time::timeout(deadline.remaining(), self.http.get(&url).send()).await;
            match sent {
                Ok(Ok(answer)) if answer.status().is_success() => {
                    // Read to the end, so the connection goes back to the pool.
                    answer
                        .bytes()
                        .await
                        .map(|_| ())
                        .map_err(|e| UpstreamFailure::Unavailable {
                            detail: upstream::transport_detail(&e),
                        })
                }
                Ok(Ok(answer)) => Err(UpstreamFailure::Refused {
                    status: answer.status().as_u16(),
                    detail: "GET /ping".into(),
                }),
                Ok(Err(e)) => Err(UpstreamFailure::Unavailable {
                    detail: upstream::transport_detail(&e),
                }),
                Err(_) => Err(UpstreamFailure::Unavailable {
                    detail: "no answer in time".into(),
                }),
            }
        });
        futures::future::try_join_all(pings).await.map(|_| ())
    }

    /// Who holds `key` (a caller's key), as balenaCloud's `GET /actor/v1/whoami` says: the
    /// proof that the caller is a device. `None`: balenaCloud does not know the key.
    pub async fn whoami(
        &self,
        deadline: Deadline,
        key: &Secret,
    ) -> Result<Option<Actor>, UpstreamFailure> {
        let url = format!("{}/actor/v1/whoami", self.root);
        let answer = self
            .send(deadline, reqwest::Method::GET, &url, key, None)
            .await?;
        match answer.status {
            s if s.is_success() => {
                let row: WhoamiRow = answer.parse()?;
                Ok(Some(match (row.actor_type.as_str(), row.uuid) {
                    ("device", Some(uuid)) => Actor::Device { uuid },
                    ("user", _) => Actor::User,
                    ("application", _) => Actor::Fleet,
                    _ => Actor::Other,
                }))
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Ok(None),
            _ => Err(refused(&answer)),
        }
    }

    /// The device, its provisioning variables among `names` (of the service install when a
    /// service is given), and its lock tags, in one request, read with the function's own key.
    /// `None`: no such device for that key.
    pub async fn read_device(
        &self,
        deadline: Deadline,
        uuid: &DeviceUuid,
        service: Option<&ServiceName>,
        names: &[&str],
    ) -> Result<Option<DeviceRecord>, UpstreamFailure> {
        self.read_device_as(deadline, &self.key, uuid, service, names)
            .await
    }

    /// [`BalenaClient::read_device`] with a caller's key: what that key sees. A device's own
    /// key sees its device (and nothing while balenaCloud has frozen it), a user's key every
    /// device of its fleets, any other key nothing (`None`); a key balenaCloud does not know is
    /// refused (401).
    pub async fn read_device_as(
        &self,
        deadline: Deadline,
        key: &Secret,
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
        let expand = format!(
            "{target_expand},device_tag($select=id,tag_key,value;$filter=startswith(tag_key,{}))",
            literal(LOCK_TAG)
        );
        let url = format!(
            "{}/device?$select=id&$filter={}&$expand={}",
            self.api,
            expression(&format!("uuid eq {}", literal(uuid.as_str()))),
            expression(&expand)
        );
        let answer = self
            .send(deadline, reqwest::Method::GET, &url, key, None)
            .await?;
        if !answer.status.is_success() {
            return Err(refused(&answer));
        }
        let rows: Rows<DeviceRow> = answer.parse()?;
        let Some(row) = rows.d.into_iter().next() else {
            return Ok(None);
        };
        let (target, var_rows) = match service {
            None => (
                Some(VarTarget::Device {
                    device_id: BalenaDeviceId(row.id),
                }),
                row.device_environment_variable,
            ),
            Some(_) => match row.service_install.into_iter().next() {
                Some(install) => (
                    Some(VarTarget::Service {
                        service_install_id: install.id,
                    }),
                    install.device_service_environment_variable,
                ),
                None => (None, Vec::new()),
            },
        };
        let vars = var_rows
            .into_iter()
            .filter(|v| names.contains(&v.name.as_str()))
            .map(|v| {
                (
                    v.name,
                    StoredVar {
                        id: v.id,
                        value: Secret::new(v.value),
                    },
                )
            })
            .collect();
        let mut locks: Vec<LockTag> = row
            .device_tag
            .into_iter()
            .filter_map(|t| LockTag::parse(t.id, &t.tag_key, t.value))
            .collect();
        locks.sort_by_key(|l| l.generation);
        Ok(Some(DeviceRecord {
            device_id: BalenaDeviceId(row.id),
            target,
            vars,
            locks,
        }))
    }

    /// Deletes the rows of `resource` that the OData `filter` selects, in one request (none
    /// selected succeeds).
    async fn delete_where(
        &self,
        deadline: Deadline,
        resource: &str,
        filter: &str,
    ) -> Result<(), UpstreamFailure> {
        let url = format!("{}/{resource}?$filter={}", self.api, expression(filter));
        let answer = self
            .send(deadline, reqwest::Method::DELETE, &url, &self.key, None)
            .await?;
        if answer.status.is_success() {
            Ok(())
        } else {
            Err(refused(&answer))
        }
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
            let request = self
                .http
                .request(method.clone(), url)
                .bearer_auth(key.expose());
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

/// Whether balenaCloud refused a create because the row exists. pinejs answers 409 to every
/// constraint violation: a duplicate says `"device" and "tag_key" must be unique.`, a missing
/// parent (the device was deleted meanwhile) `Data is referenced by device.`, which is no
/// race to retry.
fn is_duplicate(answer: &Answer) -> bool {
    answer.status == StatusCode::CONFLICT
        && String::from_utf8_lossy(&answer.body).contains("must be unique")
}

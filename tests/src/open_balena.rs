//! The real balenaCloud API server (open-balena-api, from `../shared/open-balena`) as a test
//! backend: where it runs, and fresh fleets on it made by its `fixture.py`.
//!
//! `scripts/open-balena start` sets the server up and starts it, and prints the
//! `OPEN_BALENA_URL` the tests read. A test that needs the server fails with a message that says
//! so when it is not there: it never passes without it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use provision_core::balena::odata::{expression, literal};
use provision_emulators::fault_proxy::{FaultProxy, Flavour, Traffic};
use serde::Deserialize;

use crate::balena::BalenaCall;

/// The environment variable that holds the running server's API URL.
pub const URL_VAR: &str = "OPEN_BALENA_URL";

/// `../shared/open-balena` beside the repository, or `OPEN_BALENA_DIR`.
pub fn package_dir() -> PathBuf {
    std::env::var_os("OPEN_BALENA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            crate::paths::repo_root()
                .join("..")
                .join("shared")
                .join("open-balena")
        })
}

/// The running server's API URL. Panics, saying what to do, when none is running: a test that
/// needs the real server must not pass without it.
pub fn url() -> String {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.is_empty() => url.trim_end_matches('/').to_string(),
        _ => panic!(
            "this test runs against the real balenaCloud API (open-balena-api) and {URL_VAR} is not set. \
             Start it with `eval \"$(scripts/open-balena start)\"` (needs {}), or run `bash scripts/test`, \
             which starts and stops it.",
            package_dir().display()
        ),
    }
}

/// A device `fixture.py` registered, with its own API key.
#[derive(Clone, Debug, Deserialize)]
pub struct FixtureDevice {
    pub id: i64,
    pub uuid: String,
    pub key: String,
    pub service_install_id: i64,
}

/// A new fleet on the real server (`fixture.py`'s JSON).
#[derive(Clone, Debug, Deserialize)]
pub struct FixtureFleet {
    pub api_url: String,
    /// A full user API key of the server's superuser.
    pub user_key: String,
    pub organization_id: i64,
    pub fleet_id: i64,
    pub fleet_slug: String,
    pub service_name: String,
    pub service_id: i64,
    pub provisioning_key: String,
    pub devices: Vec<FixtureDevice>,
}

/// Creates a new fleet with `devices` registered devices on the running server.
pub async fn fixture(devices: usize) -> anyhow::Result<FixtureFleet> {
    let script = package_dir().join("fixture.py");
    anyhow::ensure!(
        script.is_file(),
        "{} is missing: the real-server tests need ../shared/open-balena",
        script.display()
    );
    let output = tokio::process::Command::new("python3")
        .arg(&script)
        .arg(url())
        .arg("--devices")
        .arg(devices.to_string())
        .kill_on_drop(true)
        .output()
        .await?;
    anyhow::ensure!(
        output.status.success(),
        "fixture.py failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(serde_json::from_slice(&output.stdout)?)
}

/// A fresh fleet on the real server as a world's balenaCloud: the function reaches it through
/// a recording proxy (so a test can count and read the function's requests), and the test
/// reads and seeds state directly with the fleet's user key.
pub struct RealBalena {
    pub fleet: FixtureFleet,
    http: reqwest::Client,
    traffic: Traffic,
    proxy: FaultProxy,
    /// Request lines from before the last `clear_requests`.
    archive: std::sync::Mutex<Vec<String>>,
}

impl RealBalena {
    /// A new fleet (service `cloud-relay`, no devices yet) on the running server.
    pub async fn start() -> anyhow::Result<RealBalena> {
        let fleet = fixture(0).await?;
        let port = port_of(&fleet.api_url)?;
        let traffic = Traffic::new();
        let proxy = FaultProxy::start("balena", port, Flavour::Balena, traffic.clone()).await?;
        Ok(RealBalena {
            fleet,
            http: reqwest::Client::new(),
            traffic,
            proxy,
            archive: Default::default(),
        })
    }

    /// What the function is given as `BALENA_API_URL`: the recording proxy.
    pub fn url(&self) -> String {
        self.proxy.url()
    }

    /// The function's own key: a full user key (as an operator would configure it).
    pub fn user_key(&self) -> &str {
        &self.fleet.user_key
    }

    /// Another user API key that sees every device of the fleet. open-balena has neither the
    /// observer role nor a route that makes a second user, and every user key sees every device:
    /// a second key of the superuser (`POST /api-key/user/full` after `/login_`) plays the
    /// fleet member whose key sees the device but is not it.
    pub async fn another_user_key(&self) -> anyhow::Result<String> {
        let base = self.fleet.api_url.trim_end_matches('/');
        let login = self
            .http
            .post(format!("{base}/login_"))
            .json(&serde_json::json!({"username": "admin", "password": "Password01"}))
            .send()
            .await?;
        anyhow::ensure!(login.status().is_success(), "login: {}", login.status());
        let token = login.text().await?;
        let made = self
            .http
            .post(format!("{base}/api-key/user/full"))
            .bearer_auth(token.trim())
            .json(&serde_json::json!({"name": format!("member-{}", uuid::Uuid::new_v4().simple())}))
            .send()
            .await?;
        let status = made.status();
        let text = made.text().await?;
        anyhow::ensure!(status.is_success(), "api-key/user/full: {status} {text}");
        Ok(serde_json::from_str(&text)?)
    }

    /// Registers a new device of the fleet with its own API key, as a device does on first
    /// boot (`POST /device/register` with the fleet's provisioning key), and waits until its
    /// service install exists.
    pub async fn register_device(&self) -> anyhow::Result<FixtureDevice> {
        let uuid = uuid::Uuid::new_v4().simple().to_string();
        let key = uuid::Uuid::new_v4().simple().to_string();
        let body = serde_json::json!({"application": self.fleet.fleet_id, "device_type": "intel-nuc", "uuid": uuid, "api_key": key});
        let registered: serde_json::Value = self
            .send(
                reqwest::Method::POST,
                "/device/register",
                &self.fleet.provisioning_key,
                Some(body),
            )
            .await?;
        let id = registered["id"]
            .as_i64()
            .ok_or_else(|| anyhow::anyhow!("register answered {registered}"))?;
        for _ in 0..100 {
            if let Some(service_install_id) =
                self.service_install(id, &self.fleet.service_name).await?
            {
                return Ok(FixtureDevice {
                    id,
                    uuid,
                    key,
                    service_install_id,
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        anyhow::bail!(
            "device {uuid} got no install of {}",
            self.fleet.service_name
        )
    }

    async fn service_install(&self, device_id: i64, service: &str) -> anyhow::Result<Option<i64>> {
        let filter = format!(
            "device eq {device_id} and installs__service/any(s:s/service_name eq {})",
            literal(service)
        );
        let rows = self
            .rows(&format!(
                "/v7/service_install?$select=id&$filter={}",
                expression(&filter)
            ))
            .await?;
        Ok(rows.first().and_then(|r| r["id"].as_i64()))
    }

    pub async fn device_vars(&self, device_id: i64) -> BTreeMap<String, String> {
        let path = format!(
            "/v7/device_environment_variable?$select=name,value&$filter={}",
            expression(&format!("device eq {device_id}"))
        );
        self.pairs(&path, "name").await
    }

    pub async fn service_vars(&self, device_id: i64, service: &str) -> BTreeMap<String, String> {
        let Some(install) = self
            .service_install(device_id, service)
            .await
            .expect("the real server answers")
        else {
            return BTreeMap::new();
        };
        let filter = format!("service_install eq {install}");
        self.pairs(
            &format!(
                "/v7/device_service_environment_variable?$select=name,value&$filter={}",
                expression(&filter)
            ),
            "name",
        )
        .await
    }

    pub async fn device_tags(&self, device_id: i64) -> BTreeMap<String, String> {
        let path = format!(
            "/v7/device_tag?$select=tag_key,value&$filter={}",
            expression(&format!("device eq {device_id}"))
        );
        self.pairs(&path, "tag_key").await
    }

    pub async fn set_device_var(&self, device_id: i64, name: &str, value: &str) {
        self.upsert(
            "device_environment_variable",
            device_id,
            "name",
            name,
            value,
        )
        .await
    }

    pub async fn set_device_tag(&self, device_id: i64, key: &str, value: &str) {
        self.upsert("device_tag", device_id, "tag_key", key, value)
            .await
    }

    /// Every request the function made through the proxy since the last `clear_requests`.
    pub fn requests(&self) -> Vec<BalenaCall> {
        self.traffic
            .log()
            .into_iter()
            .map(|e| BalenaCall {
                resource: resource_of(&e.target),
                method: e.method,
                target: e.target,
                status: e.status,
            })
            .collect()
    }

    pub fn clear_requests(&self) {
        let lines = self
            .traffic
            .log()
            .into_iter()
            .map(|e| format!("{} {}", e.method, e.target));
        if let Ok(mut archive) = self.archive.lock() {
            archive.extend(lines);
        }
        self.traffic.clear();
    }

    /// Every request line the function sent since the world started (cleared or not).
    pub fn request_lines(&self) -> Vec<String> {
        let mut lines = self.archive.lock().map(|a| a.clone()).unwrap_or_default();
        lines.extend(
            self.traffic
                .log()
                .into_iter()
                .map(|e| format!("{} {}", e.method, e.target)),
        );
        lines
    }

    /// Creates the row, or on 409 (it exists) overwrites its value.
    async fn upsert(
        &self,
        resource: &str,
        device_id: i64,
        key_field: &str,
        key: &str,
        value: &str,
    ) {
        let body = serde_json::json!({"device": device_id, key_field: key, "value": value});
        let created = self
            .request(
                reqwest::Method::POST,
                &format!("/v7/{resource}"),
                self.user_key(),
                Some(body),
            )
            .await;
        let (status, text) = created.expect("the real server answers");
        if status == 409 {
            let filter = format!("device eq {device_id} and {key_field} eq {}", literal(key));
            let path = format!("/v7/{resource}?$filter={}", expression(&filter));
            let (status, text) = self
                .request(
                    reqwest::Method::PATCH,
                    &path,
                    self.user_key(),
                    Some(serde_json::json!({"value": value})),
                )
                .await
                .expect("the real server answers");
            assert!(
                (200..300).contains(&status),
                "PATCH {path}: {status} {text}"
            );
        } else {
            assert!(
                (200..300).contains(&status),
                "POST {resource}: {status} {text}"
            );
        }
    }

    async fn pairs(&self, path: &str, key_field: &str) -> BTreeMap<String, String> {
        let rows = self.rows(path).await.expect("the real server answers");
        rows.iter()
            .filter_map(|r| {
                Some((
                    r[key_field].as_str()?.to_string(),
                    r["value"].as_str()?.to_string(),
                ))
            })
            .collect()
    }

    async fn rows(&self, path: &str) -> anyhow::Result<Vec<serde_json::Value>> {
        let answer: serde_json::Value = self
            .send(reqwest::Method::GET, path, self.user_key(), None)
            .await?;
        Ok(answer["d"].as_array().cloned().unwrap_or_default())
    }

    /// One request straight to the server (not through the proxy), JSON answer expected.
    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        key: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<T> {
        let (status, text) = self.request(method.clone(), path, key, body).await?;
        anyhow::ensure!(
            (200..300).contains(&status),
            "{method} {path}: {status} {text}"
        );
        Ok(serde_json::from_str(&text)?)
    }

    async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        key: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<(u16, String)> {
        let mut request = self
            .http
            .request(
                method,
                format!("{}{path}", self.fleet.api_url.trim_end_matches('/')),
            )
            .bearer_auth(key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        Ok((response.status().as_u16(), response.text().await?))
    }
}

/// The resource a request path names: `device_tag` of `/v7/device_tag(3)?$filter=...`.
fn resource_of(target: &str) -> String {
    let path = target.split('?').next().unwrap_or_default();
    let rest = path.strip_prefix("/v7/").unwrap_or_default();
    rest.split(['(', '/'])
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The port of an `http://127.0.0.1:PORT` URL.
pub fn port_of(url: &str) -> anyhow::Result<u16> {
    url.trim_end_matches('/')
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no port in {url}"))
}

//! The balenaCloud a test world provisions into: the project's emulator, or the real
//! balenaCloud API server (open-balena-api, see [`crate::open_balena`]). Scenarios read and
//! seed balenaCloud's state through [`Balena`], so the same scenario runs on either; what only
//! the emulator can do (fault injection, latency) is reached through [`Balena::emulator`].

use std::collections::BTreeMap;

use provision_emulators::balena::BalenaEmulator;

use crate::open_balena::RealBalena;

/// Which balenaCloud a world starts with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// The project's emulator, in process (fast; fault injection and request log).
    #[default]
    Emulator,
    /// The real balenaCloud API server the tests were pointed at (`OPEN_BALENA_URL`).
    OpenBalena,
}

/// One request the function made to balenaCloud.
#[derive(Clone, Debug)]
pub struct BalenaCall {
    pub method: String,
    /// The resource named in the path (`device_environment_variable`), empty when none.
    pub resource: String,
    /// The path and query as sent.
    pub target: String,
    pub status: Option<u16>,
}

pub enum Balena {
    Emulator(BalenaEmulator),
    Real(RealBalena),
}

impl Balena {
    /// The URL the function is given (for the real server: a recording proxy in front of it).
    pub fn url(&self) -> String {
        match self {
            Balena::Emulator(e) => e.url(),
            Balena::Real(r) => r.url(),
        }
    }

    /// What it is and where, for people reading the demo's output.
    pub fn describe(&self) -> String {
        match self {
            Balena::Emulator(e) => format!("balenaCloud emulator at {}", e.url()),
            Balena::Real(r) => format!(
                "the real balenaCloud API (open-balena-api) at {} through a recording proxy",
                r.fleet.api_url
            ),
        }
    }

    pub fn backend(&self) -> Backend {
        match self {
            Balena::Emulator(_) => Backend::Emulator,
            Balena::Real(_) => Backend::OpenBalena,
        }
    }

    /// The emulator, for what only it can do (fault injection, latency). Panics on the real
    /// server: such a scenario is not in the real server's list.
    pub fn emulator(&self) -> &BalenaEmulator {
        match self {
            Balena::Emulator(e) => e,
            Balena::Real(_) => {
                panic!("this scenario needs the balenaCloud emulator (fault injection or latency)")
            }
        }
    }

    /// The device's environment variables, name to value.
    pub async fn device_vars(&self, device_id: i64) -> BTreeMap<String, String> {
        match self {
            Balena::Emulator(e) => e.device_vars(device_id),
            Balena::Real(r) => r.device_vars(device_id).await,
        }
    }

    /// The variables of the device's install of `service`, name to value.
    pub async fn service_vars(&self, device_id: i64, service: &str) -> BTreeMap<String, String> {
        match self {
            Balena::Emulator(e) => e.service_vars(device_id, service),
            Balena::Real(r) => r.service_vars(device_id, service).await,
        }
    }

    /// The device's tags, key to value.
    pub async fn device_tags(&self, device_id: i64) -> BTreeMap<String, String> {
        match self {
            Balena::Emulator(e) => e.device_tags(device_id),
            Balena::Real(r) => r.device_tags(device_id).await,
        }
    }

    /// Creates or overwrites a device variable (as an operator would in the dashboard).
    pub async fn set_device_var(&self, device_id: i64, name: &str, value: &str) {
        match self {
            Balena::Emulator(e) => e.set_device_var(device_id, name, value),
            Balena::Real(r) => r.set_device_var(device_id, name, value).await,
        }
    }

    /// Creates or overwrites a device tag.
    pub async fn set_device_tag(&self, device_id: i64, key: &str, value: &str) {
        match self {
            Balena::Emulator(e) => e.set_device_tag(device_id, key, value),
            Balena::Real(r) => r.set_device_tag(device_id, key, value).await,
        }
    }

    /// Every request the function made since the last `clear_requests`.
    pub fn requests(&self) -> Vec<BalenaCall> {
        match self {
            Balena::Emulator(e) => e
                .requests()
                .into_iter()
                .map(|r| BalenaCall {
                    method: r.method,
                    resource: r.resource,
                    target: r.path_and_query,
                    status: Some(r.status),
                })
                .collect(),
            Balena::Real(r) => r.requests(),
        }
    }

    /// Every request line (`METHOD target`) the function sent since the world started, for the
    /// secret audit: nothing secret may stand in a URL.
    pub fn request_lines(&self) -> Vec<String> {
        match self {
            Balena::Emulator(e) => e
                .all_requests()
                .into_iter()
                .map(|r| format!("{} {}", r.method, r.path_and_query))
                .collect(),
            Balena::Real(r) => r.request_lines(),
        }
    }

    pub fn clear_requests(&self) {
        match self {
            Balena::Emulator(e) => e.clear_requests(),
            Balena::Real(r) => r.clear_requests(),
        }
    }

    pub async fn shutdown(self) {
        match self {
            Balena::Emulator(e) => e.shutdown().await,
            Balena::Real(_) => {}
        }
    }
}

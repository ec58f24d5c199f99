//! The relay's settings, read from the environment balenaCloud gives the service: the names and
//! defaults of balena's Node cloud-relay block, `BALENA_*` accepted beside `RESIN_*`.

use std::path::PathBuf;
use std::time::Duration;

/// Where environment variables come from (the process environment, or a test's table).
pub trait Env {
    /// The value as set, empty included.
    fn raw(&self, name: &str) -> Option<String>;

    /// The value; an empty one counts as unset, as in the Node block (`if (!x)`).
    fn get(&self, name: &str) -> Option<String> {
        self.raw(name).filter(|v| !v.is_empty())
    }
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn raw(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for [(&str, &str)] {
    fn raw(&self, name: &str) -> Option<String> {
        self.iter()
            .rev()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }
}

impl<const N: usize> Env for [(&str, &str); N] {
    fn raw(&self, name: &str) -> Option<String> {
        self.as_slice().raw(name)
    }
}

/// The cloud the relay talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cloud {
    Aws,
    Azure,
    /// ClearBlade IoT Core (Google's Cloud IoT Core API); `GCP` in the variables.
    Gcp,
}

impl Cloud {
    pub fn name(self) -> &'static str {
        match self {
            Cloud::Aws => "AWS",
            Cloud::Azure => "AZURE",
            Cloud::Gcp => "GCP",
        }
    }

    /// The cloud topic suffix when `CLOUD_CONSUMER_TOPIC` is unset.
    pub fn default_consumer_topic(self) -> &'static str {
        match self {
            Cloud::Aws | Cloud::Azure => "sensors",
            Cloud::Gcp => "events",
        }
    }
}

/// A setting that is missing or malformed, naming the variable.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {problem}")]
pub struct SettingError {
    pub variable: &'static str,
    pub problem: String,
}

fn problem(variable: &'static str, problem: impl Into<String>) -> SettingError {
    SettingError {
        variable,
        problem: problem.into(),
    }
}

/// What the relay needs before it has any cloud credential.
#[derive(Clone, Debug)]
pub struct Settings {
    pub cloud: Cloud,
    pub device_uuid: String,
    pub service_name: Option<String>,
    pub provision_url: Option<String>,
    /// The device's own balenaCloud API key (label `io.balena.features.balena-api`).
    pub api_key: Option<String>,
    pub supervisor: Option<SupervisorSettings>,
    pub keep_key: bool,
    pub local_mqtt: LocalBroker,
    pub producer_topic: String,
    pub consumer_topic: String,
    pub aws_topic_root: String,
    pub aws_root_ca_path: Option<PathBuf>,
    /// `CLOUD_CA_CERT`, decoded to PEM.
    pub cloud_ca_pem: Option<String>,
    pub messaging_host: String,
    /// `GCP_TOKEN_LIFETIME` (minutes; fractions allowed).
    pub gcp_token_lifetime: Duration,
    /// `GCP_RENEWAL_START` (minutes; fractions allowed).
    pub gcp_renewal_start: Duration,
    pub data_dir: PathBuf,
    pub queue_max_bytes: u64,
}

#[derive(Clone, Debug)]
pub struct SupervisorSettings {
    pub address: String,
    pub api_key: String,
}

/// The local broker, from `LOCAL_MQTT_URL`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalBroker {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
}

pub const DEFAULT_LOCAL_MQTT_URL: &str = "mqtt://127.0.0.1:1883";
pub const DEFAULT_DATA_DIR: &str = "/data/cloud-relay";
pub const DEFAULT_QUEUE_MAX_BYTES: u64 = 64 * 1024 * 1024;
pub const DEFAULT_MESSAGING_HOST: &str = "us-central1-mqtt.clearblade.com";
/// ClearBlade's (and Cloud IoT Core's) longest JWT lifetime: 24 h.
pub const MAX_TOKEN_LIFETIME_MINUTES: u64 = 24 * 60;

/// The first of the names that is set.
fn first(env: &(impl Env + ?Sized), names: &[&str]) -> Option<String> {
    names.iter().find_map(|n| env.get(n))
}

fn bool_setting(env: &(impl Env + ?Sized), name: &'static str) -> Result<bool, SettingError> {
    match env
        .get(name)
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("false") | Some("0") | Some("no") => Ok(false),
        Some("true") | Some("1") | Some("yes") => Ok(true),
        Some(other) => Err(problem(
            name,
            format!("{other:?} is not a boolean (true or false)"),
        )),
    }
}

fn number_setting(
    env: &(impl Env + ?Sized),
    name: &'static str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, SettingError> {
    let Some(text) = env.get(name) else {
        return Ok(default);
    };
    let value: u64 = text
        .trim()
        .parse()
        .map_err(|_| problem(name, format!("{text:?} is not a whole number")))?;
    if !range.contains(&value) {
        return Err(problem(
            name,
            format!("{value} is outside {}..={}", range.start(), range.end()),
        ));
    }
    Ok(value)
}

/// A number of minutes (fractions allowed, as a test's short-lived token needs), above zero and
/// at most `max`.
fn minutes_setting(
    env: &(impl Env + ?Sized),
    name: &'static str,
    default: f64,
    max: f64,
) -> Result<Duration, SettingError> {
    let minutes = match env.get(name) {
        None => default,
        Some(text) => text
            .trim()
            .parse::<f64>()
            .map_err(|_| problem(name, format!("{text:?} is not a number of minutes")))?,
    };
    if !(minutes > 0.0 && minutes <= max) {
        return Err(problem(
            name,
            format!("{minutes} minutes is outside (0, {max}]"),
        ));
    }
    Ok(Duration::from_secs_f64(minutes * 60.0))
}

/// The cloud named by `CLOUD_PROVIDER`, else detected as the Node block does.
pub fn detect_cloud(env: &(impl Env + ?Sized)) -> Result<Cloud, SettingError> {
    if let Some(name) = env.get("CLOUD_PROVIDER") {
        return match name.trim().to_ascii_uppercase().as_str() {
            "AWS" => Ok(Cloud::Aws),
            "AZURE" => Ok(Cloud::Azure),
            "GCP" | "CLEARBLADE" => Ok(Cloud::Gcp),
            _ => Err(problem(
                "CLOUD_PROVIDER",
                format!("{name:?} is not AWS, AZURE or GCP"),
            )),
        };
    }
    if env.get("AWS_DATA_ENDPOINT").is_some() {
        Ok(Cloud::Aws)
    } else if env.get("AZURE_HUB_HOST").is_some() {
        Ok(Cloud::Azure)
    } else if env.get("GCP_PROJECT_ID").is_some()
        || env
            .get("PROVISION_URL")
            .is_some_and(|u| u.contains("cloudfunctions.net"))
    {
        Ok(Cloud::Gcp)
    } else {
        Err(problem(
            "CLOUD_PROVIDER",
            "not set, and none of AWS_DATA_ENDPOINT, AZURE_HUB_HOST, GCP_PROJECT_ID or a \
             cloudfunctions.net PROVISION_URL tells the cloud",
        ))
    }
}

/// Parses `mqtt://[user[:password]@]host[:port]` (`tcp://` too).
pub fn parse_local_url(url: &str) -> Result<LocalBroker, SettingError> {
    let bad = |why: &str| problem("LOCAL_MQTT_URL", format!("{url:?}: {why}"));
    let rest = url
        .strip_prefix("mqtt://")
        .or_else(|| url.strip_prefix("tcp://"))
        .ok_or_else(|| bad("expected mqtt://host[:port]"))?;
    let rest = rest.trim_end_matches('/');
    let (login, address) = match rest.rsplit_once('@') {
        Some((login, address)) => (Some(login), address),
        None => (None, rest),
    };
    let (username, password) = match login {
        None => (None, None),
        Some(login) => match login.split_once(':') {
            Some((u, p)) => (Some(u.to_string()), Some(p.to_string())),
            None => (Some(login.to_string()), None),
        },
    };
    let (host, port) = split_host_port(address, 1883).map_err(|why| bad(&why))?;
    Ok(LocalBroker {
        host,
        port,
        username,
        password,
    })
}

/// `host[:port]` (an IPv6 address in brackets), with the port defaulting to `default_port`.
pub fn split_host_port(address: &str, default_port: u16) -> Result<(String, u16), String> {
    let address = address.trim();
    if address.is_empty() {
        return Err("no host".into());
    }
    if let Some(rest) = address.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or("unclosed [")?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| format!("bad port {p:?}"))?,
            None if after.is_empty() => default_port,
            None => return Err(format!("unexpected {after:?} after the address")),
        };
        return Ok((host.to_string(), port));
    }
    match address.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => {
            let port = port.parse().map_err(|_| format!("bad port {port:?}"))?;
            Ok((host.to_string(), port))
        }
        _ => Ok((address.to_string(), default_port)),
    }
}

/// A PEM given as PEM text or as base64 of it (as balenaCloud variables carry them).
pub fn pem_or_base64(variable: &'static str, value: &str) -> Result<String, SettingError> {
    let value = value.trim();
    if value.starts_with("-----BEGIN") {
        return Ok(value.to_string());
    }
    use base64::Engine as _;
    let compact: String = value.split_whitespace().collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map_err(|_| problem(variable, "neither PEM nor base64 of PEM"))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| problem(variable, "base64 of something that is not PEM text"))?;
    if !text.trim_start().starts_with("-----BEGIN") {
        return Err(problem(variable, "base64 of something that is not PEM"));
    }
    Ok(text)
}

impl Settings {
    pub fn from_env(env: &(impl Env + ?Sized)) -> Result<Settings, SettingError> {
        let cloud = detect_cloud(env)?;
        let device_uuid =
            first(env, &["BALENA_DEVICE_UUID", "RESIN_DEVICE_UUID"]).ok_or_else(|| {
                problem(
                    "BALENA_DEVICE_UUID",
                    "not set (balenaOS sets it, with RESIN_DEVICE_UUID, in every service)",
                )
            })?;
        if device_uuid.len() < 7 || !device_uuid.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(problem(
                "BALENA_DEVICE_UUID",
                format!("{device_uuid:?} is not a balena device UUID"),
            ));
        }
        let supervisor = match (
            first(
                env,
                &["BALENA_SUPERVISOR_ADDRESS", "RESIN_SUPERVISOR_ADDRESS"],
            ),
            first(
                env,
                &["BALENA_SUPERVISOR_API_KEY", "RESIN_SUPERVISOR_API_KEY"],
            ),
        ) {
            (Some(address), Some(api_key)) => Some(SupervisorSettings {
                address: address.trim_end_matches('/').to_string(),
                api_key,
            }),
            _ => None,
        };
        let local_url = env
            .get("LOCAL_MQTT_URL")
            .unwrap_or_else(|| DEFAULT_LOCAL_MQTT_URL.to_string());
        let cloud_ca_pem = env
            .get("CLOUD_CA_CERT")
            .map(|v| pem_or_base64("CLOUD_CA_CERT", &v))
            .transpose()?;
        let lifetime = minutes_setting(
            env,
            "GCP_TOKEN_LIFETIME",
            MAX_TOKEN_LIFETIME_MINUTES as f64,
            MAX_TOKEN_LIFETIME_MINUTES as f64,
        )?;
        let renewal = minutes_setting(
            env,
            "GCP_RENEWAL_START",
            15.0,
            MAX_TOKEN_LIFETIME_MINUTES as f64,
        )?;
        if renewal >= lifetime {
            return Err(problem(
                "GCP_RENEWAL_START",
                format!(
                    "{} minutes is not shorter than GCP_TOKEN_LIFETIME ({} minutes)",
                    renewal.as_secs_f64() / 60.0,
                    lifetime.as_secs_f64() / 60.0
                ),
            ));
        }
        let data_dir = env
            .get("RELAY_QUEUE_DIR")
            .unwrap_or_else(|| DEFAULT_DATA_DIR.to_string());
        Ok(Settings {
            cloud,
            device_uuid,
            service_name: first(env, &["BALENA_SERVICE_NAME", "RESIN_SERVICE_NAME"]),
            provision_url: env.get("PROVISION_URL"),
            api_key: first(env, &["BALENA_API_KEY", "RESIN_API_KEY"]),
            supervisor,
            keep_key: bool_setting(env, "PROVISION_KEEP_KEY")?,
            local_mqtt: parse_local_url(&local_url)?,
            producer_topic: env
                .get("PRODUCER_TOPIC")
                .unwrap_or_else(|| "sensors".to_string()),
            consumer_topic: env
                .get("CLOUD_CONSUMER_TOPIC")
                .unwrap_or_else(|| cloud.default_consumer_topic().to_string()),
            // Unlike the others, an empty AWS_TOPIC_ROOT is meaningful: the bare topic.
            aws_topic_root: env
                .raw("AWS_TOPIC_ROOT")
                .map(|v| v.trim().trim_matches('/').to_string())
                .unwrap_or_else(|| "balena".to_string()),
            aws_root_ca_path: env.get("AWS_ROOT_CA_PATH").map(PathBuf::from),
            cloud_ca_pem,
            messaging_host: env
                .get("MESSAGING_HOST")
                .unwrap_or_else(|| DEFAULT_MESSAGING_HOST.to_string()),
            gcp_token_lifetime: lifetime,
            gcp_renewal_start: renewal,
            data_dir: PathBuf::from(data_dir),
            queue_max_bytes: number_setting(
                env,
                "RELAY_QUEUE_MAX_BYTES",
                DEFAULT_QUEUE_MAX_BYTES,
                64 * 1024..=u64::MAX,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn the_cloud_is_named_or_detected_as_the_node_block_does() {
        let cases: &[(&[(&str, &str)], Cloud)] = &[
            (&[("CLOUD_PROVIDER", "aws")], Cloud::Aws),
            (&[("CLOUD_PROVIDER", "AZURE")], Cloud::Azure),
            (&[("CLOUD_PROVIDER", "GCP")], Cloud::Gcp),
            (
                &[("AWS_DATA_ENDPOINT", "x-ats.iot.eu-west-1.amazonaws.com")],
                Cloud::Aws,
            ),
            (&[("AZURE_HUB_HOST", "hub.azure-devices.net")], Cloud::Azure),
            (&[("GCP_PROJECT_ID", "p")], Cloud::Gcp),
            (
                &[(
                    "PROVISION_URL",
                    "https://us-central1-p.cloudfunctions.net/provision",
                )],
                Cloud::Gcp,
            ),
            // The explicit setting wins over detection; AWS is detected before Azure.
            (
                &[("CLOUD_PROVIDER", "AZURE"), ("AWS_DATA_ENDPOINT", "x")],
                Cloud::Azure,
            ),
            (
                &[("AZURE_HUB_HOST", "h"), ("AWS_DATA_ENDPOINT", "x")],
                Cloud::Aws,
            ),
        ];
        for (env, cloud) in cases {
            assert_eq!(detect_cloud(*env).unwrap(), *cloud, "{env:?}");
        }
        let none: &[(&str, &str)] = &[("PROVISION_URL", "https://example.run.app")];
        assert_eq!(detect_cloud(none).unwrap_err().variable, "CLOUD_PROVIDER");
        let bad: &[(&str, &str)] = &[("CLOUD_PROVIDER", "IBM")];
        assert!(detect_cloud(bad).unwrap_err().to_string().contains("IBM"));
    }

    #[test]
    fn defaults_are_the_published_blocks_and_resin_names_are_accepted() {
        let s =
            Settings::from_env(&[("CLOUD_PROVIDER", "AWS"), ("RESIN_DEVICE_UUID", UUID)]).unwrap();
        assert_eq!(s.device_uuid, UUID);
        assert_eq!(
            s.local_mqtt,
            LocalBroker {
                host: "127.0.0.1".into(),
                port: 1883,
                username: None,
                password: None
            }
        );
        assert_eq!(s.producer_topic, "sensors");
        assert_eq!(s.consumer_topic, "sensors");
        assert_eq!(s.aws_topic_root, "balena");
        assert_eq!(s.data_dir, PathBuf::from("/data/cloud-relay"));
        assert_eq!(s.queue_max_bytes, DEFAULT_QUEUE_MAX_BYTES);
        assert_eq!(s.gcp_token_lifetime, Duration::from_secs(24 * 3600));
        assert_eq!(s.gcp_renewal_start, Duration::from_secs(15 * 60));
        assert!(!s.keep_key);
        assert!(s.supervisor.is_none() && s.api_key.is_none() && s.service_name.is_none());

        let s = Settings::from_env(&[
            ("CLOUD_PROVIDER", "GCP"),
            ("BALENA_DEVICE_UUID", UUID),
            ("RESIN_SERVICE_NAME", "cloud-relay"),
            ("RESIN_API_KEY", "k1"),
            ("BALENA_API_KEY", "k2"),
            ("RESIN_SUPERVISOR_ADDRESS", "http://127.0.0.1:48484/"),
            ("BALENA_SUPERVISOR_API_KEY", "s"),
            ("AWS_TOPIC_ROOT", ""),
            ("PROVISION_KEEP_KEY", "true"),
        ])
        .unwrap();
        assert_eq!(s.consumer_topic, "events");
        assert_eq!(s.service_name.as_deref(), Some("cloud-relay"));
        // BALENA_* first, RESIN_* accepted.
        assert_eq!(s.api_key.as_deref(), Some("k2"));
        let supervisor = s.supervisor.unwrap();
        assert_eq!(supervisor.address, "http://127.0.0.1:48484");
        assert_eq!(
            s.aws_topic_root, "",
            "an empty AWS_TOPIC_ROOT means the bare topic"
        );
        assert!(s.keep_key);
    }

    #[test]
    fn bad_settings_name_their_variable() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("CLOUD_PROVIDER", "AWS")], "BALENA_DEVICE_UUID"),
            (
                &[
                    ("CLOUD_PROVIDER", "AWS"),
                    ("BALENA_DEVICE_UUID", "not a uuid"),
                ],
                "BALENA_DEVICE_UUID",
            ),
            (
                &[
                    ("CLOUD_PROVIDER", "AWS"),
                    ("BALENA_DEVICE_UUID", UUID),
                    ("LOCAL_MQTT_URL", "http://x"),
                ],
                "LOCAL_MQTT_URL",
            ),
            (
                &[
                    ("CLOUD_PROVIDER", "AWS"),
                    ("BALENA_DEVICE_UUID", UUID),
                    ("PROVISION_KEEP_KEY", "maybe"),
                ],
                "PROVISION_KEEP_KEY",
            ),
            (
                &[
                    ("CLOUD_PROVIDER", "GCP"),
                    ("BALENA_DEVICE_UUID", UUID),
                    ("GCP_TOKEN_LIFETIME", "2000"),
                ],
                "GCP_TOKEN_LIFETIME",
            ),
            (
                &[
                    ("CLOUD_PROVIDER", "GCP"),
                    ("BALENA_DEVICE_UUID", UUID),
                    ("GCP_TOKEN_LIFETIME", "10"),
                    ("GCP_RENEWAL_START", "10"),
                ],
                "GCP_RENEWAL_START",
            ),
            (
                &[
                    ("CLOUD_PROVIDER", "AWS"),
                    ("BALENA_DEVICE_UUID", UUID),
                    ("CLOUD_CA_CERT", "not a pem"),
                ],
                "CLOUD_CA_CERT",
            ),
            (
                &[
                    ("CLOUD_PROVIDER", "AWS"),
                    ("BALENA_DEVICE_UUID", UUID),
                    ("RELAY_QUEUE_MAX_BYTES", "12"),
                ],
                "RELAY_QUEUE_MAX_BYTES",
            ),
        ];
        for (env, variable) in cases {
            let error = Settings::from_env(*env).unwrap_err();
            assert_eq!(error.variable, *variable, "{env:?}: {error}");
        }
    }

    #[test]
    fn addresses_take_an_optional_port() {
        assert_eq!(
            split_host_port("h.example", 8883).unwrap(),
            ("h.example".into(), 8883)
        );
        assert_eq!(
            split_host_port("127.0.0.1:1234", 8883).unwrap(),
            ("127.0.0.1".into(), 1234)
        );
        assert_eq!(
            split_host_port("[::1]:99", 8883).unwrap(),
            ("::1".into(), 99)
        );
        assert!(split_host_port("h:port", 8883).is_err());
        let broker = parse_local_url("mqtt://u:p@mqtt:1884").unwrap();
        assert_eq!(
            (
                broker.host.as_str(),
                broker.port,
                broker.username.as_deref(),
                broker.password.as_deref()
            ),
            ("mqtt", 1884, Some("u"), Some("p"))
        );
        assert_eq!(parse_local_url("mqtt://127.0.0.1").unwrap().port, 1883);
    }

    #[test]
    fn a_pem_is_taken_as_text_or_base64() {
        use base64::Engine as _;
        let pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert_eq!(pem_or_base64("X", pem).unwrap().trim(), pem.trim());
        let b64 = base64::engine::general_purpose::STANDARD.encode(pem);
        assert_eq!(pem_or_base64("X", &b64).unwrap(), pem);
        assert!(pem_or_base64("X", "aGVsbG8=").is_err());
    }
}

//! Settings from the environment, checked once at start-up: a bad setting stops the function
//! with one line naming the variable, before any request is served.

use std::time::Duration;

use crate::auth::AuthPolicy;
use crate::credentials::KeyAlgorithm;
use crate::secret::Secret;

#[derive(Debug, thiserror::Error)]
#[error("configuration: {variable} {problem}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub problem: String,
}

impl ConfigError {
    pub fn new(variable: &'static str, problem: impl Into<String>) -> Self {
        ConfigError {
            variable,
            problem: problem.into(),
        }
    }
}

/// What every cloud's function needs.
#[derive(Clone, Debug)]
pub struct Settings {
    pub balena_api_key: Secret,
    pub balena_api_url: String,
    pub auth: AuthPolicy,
    /// How long one request may take, upstream retries included.
    pub request_budget: Duration,
    /// The key pair made for devices that send no CSR (`PROVISION_KEY_TYPE`).
    pub key_algorithm: KeyAlgorithm,
    /// How long one attempt of one upstream call may take before it is abandoned and retried
    /// (`PROVISION_UPSTREAM_TIMEOUT_MS`).
    pub upstream_timeout: Duration,
    /// How long start-up may spend opening connections and fetching credentials before the
    /// host serves (`PROVISION_WARMUP_MS`; zero: none, the first request does it).
    pub warm_up: Duration,
}

/// One environment variable as the hosts' `--help` lists it: its name (or a few names read
/// together) and what it is for.
pub type Setting = (&'static str, &'static str);

/// What [`Settings`] reads, for every host's `--help`.
pub const SETTINGS: &[Setting] = &[
    (
        "BALENA_API_KEY",
        "the function's own balenaCloud API key (required)",
    ),
    ("BALENA_API_URL", "default https://api.balena-cloud.com"),
    (
        "PROVISION_OPERATOR_TOKEN",
        "optional operator bearer token (16+ characters)",
    ),
    (
        "PROVISION_ALLOW_UNAUTHENTICATED",
        "'true': callers without credentials may get a device provisioned (no csr, rotate or DELETE)",
    ),
    (
        "PROVISION_ACCEPT_USER_KEYS",
        "'true': a user's or fleet's key that sees the device may act on it",
    ),
    (
        "PROVISION_REQUEST_BUDGET_MS",
        "time budget of one request (default 25000)",
    ),
    (
        "PROVISION_UPSTREAM_TIMEOUT_MS",
        "time limit of one attempt of one upstream call (default 8000)",
    ),
    ("PROVISION_KEY_TYPE", "ec-p256 (default) or rsa-2048"),
    (
        "PROVISION_WARMUP_MS",
        "start-up's bound for connecting to the upstreams before serving (default 2000; 0: none)",
    ),
];

pub const DEFAULT_BALENA_API_URL: &str = "https://api.balena-cloud.com";
const MIN_OPERATOR_TOKEN: usize = 16;

impl Settings {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup`, so tests need not touch the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let balena_api_key = required(&lookup, "BALENA_API_KEY")?;
        let balena_api_url = lookup("BALENA_API_URL")
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| DEFAULT_BALENA_API_URL.into());
        url_setting("BALENA_API_URL", &balena_api_url)?;
        let operator_token = match lookup("PROVISION_OPERATOR_TOKEN").filter(|v| !v.is_empty()) {
            None => None,
            Some(token) if token.len() < MIN_OPERATOR_TOKEN => {
                return Err(ConfigError::new(
                    "PROVISION_OPERATOR_TOKEN",
                    format!(
                        "is too short to be a secret: use at least {MIN_OPERATOR_TOKEN} characters (e.g. `openssl rand -hex 32`)"
                    ),
                ));
            }
            Some(token) if !token.bytes().all(|b| b.is_ascii_graphic()) => {
                return Err(ConfigError::new(
                    "PROVISION_OPERATOR_TOKEN",
                    "must be visible ASCII without spaces",
                ));
            }
            Some(token) => Some(Secret::new(token)),
        };
        let allow_unauthenticated =
            bool_setting(&lookup, "PROVISION_ALLOW_UNAUTHENTICATED", false)?;
        let accept_user_keys = bool_setting(&lookup, "PROVISION_ACCEPT_USER_KEYS", false)?;
        let request_budget = match lookup("PROVISION_REQUEST_BUDGET_MS").filter(|v| !v.is_empty()) {
            None => Duration::from_secs(25),
            Some(v) => match v.parse::<u64>() {
                Ok(ms) if (100..=900_000).contains(&ms) => Duration::from_millis(ms),
                _ => {
                    return Err(ConfigError::new(
                        "PROVISION_REQUEST_BUDGET_MS",
                        "must be a whole number of milliseconds from 100 to 900000",
                    ));
                }
            },
        };
        let key_algorithm = match lookup("PROVISION_KEY_TYPE").as_deref().map(str::trim) {
            None | Some("") => KeyAlgorithm::default(),
            Some(v) => KeyAlgorithm::parse(v).ok_or_else(|| {
                ConfigError::new(
                    "PROVISION_KEY_TYPE",
                    "must be 'ec-p256' (the default) or 'rsa-2048'",
                )
            })?,
        };
        let upstream_timeout = upstream_timeout(&lookup)?;
        let warm_up = match lookup("PROVISION_WARMUP_MS").filter(|v| !v.trim().is_empty()) {
            None => Duration::from_secs(2),
            Some(v) => match v.trim().parse::<u64>() {
                Ok(ms) if ms <= 10_000 => Duration::from_millis(ms),
                _ => {
                    return Err(ConfigError::new(
                        "PROVISION_WARMUP_MS",
                        "must be a whole number of milliseconds from 0 to 10000",
                    ));
                }
            },
        };
        Ok(Settings {
            balena_api_key,
            balena_api_url,
            auth: AuthPolicy {
                operator_token,
                allow_unauthenticated,
                accept_user_keys,
            },
            request_budget,
            key_algorithm,
            upstream_timeout,
            warm_up,
        })
    }
}

/// `PROVISION_UPSTREAM_TIMEOUT_MS`: one attempt's limit for every upstream call (default 8 s).
/// A hung upstream costs at most this per attempt, so the retries and the clean-up after a
/// failure still fit in the request's budget.
pub fn upstream_timeout(lookup: &impl Fn(&str) -> Option<String>) -> Result<Duration, ConfigError> {
    match lookup("PROVISION_UPSTREAM_TIMEOUT_MS").filter(|v| !v.trim().is_empty()) {
        None => Ok(Duration::from_secs(8)),
        Some(v) => match v.trim().parse::<u64>() {
            Ok(ms) if (50..=60_000).contains(&ms) => Ok(Duration::from_millis(ms)),
            _ => Err(ConfigError::new(
                "PROVISION_UPSTREAM_TIMEOUT_MS",
                "must be a whole number of milliseconds from 50 to 60000",
            )),
        },
    }
}

pub fn required(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &'static str,
) -> Result<Secret, ConfigError> {
    match lookup(name) {
        Some(v) if !v.trim().is_empty() => Ok(Secret::new(v.trim())),
        _ => Err(ConfigError::new(name, "is required and not set")),
    }
}

pub fn bool_setting(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: bool,
) -> Result<bool, ConfigError> {
    match lookup(name).as_deref().map(str::trim) {
        None | Some("") => Ok(default),
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(_) => Err(ConfigError::new(name, "must be 'true' or 'false'")),
    }
}

/// An upstream's URL: `https://`, or `http://` only to a loopback address (an emulator or a
/// local test server): keys and credentials never cross a network in clear text.
pub fn url_setting(name: &'static str, value: &str) -> Result<(), ConfigError> {
    let refused = || {
        ConfigError::new(
            name,
            "must be an https:// URL such as https://api.balena-cloud.com (http:// only to a loopback address such as 127.0.0.1)",
        )
    };
    let url = reqwest::Url::parse(value).map_err(|_| refused())?;
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(refused)?;
    let loopback = match host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
    {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    };
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(refused()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls_are_https_except_to_loopback() {
        for ok in [
            "https://api.balena-cloud.com",
            "http://127.0.0.1:8080",
            "http://127.5.0.1",
            "http://[::1]:9",
            "http://localhost:1",
        ] {
            assert!(url_setting("X", ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://api.balena-cloud.com",
            "http://10.0.0.1",
            "http://[::2]",
            "ftp://127.0.0.1",
            "https://",
            "not a url",
            "http://127.0.0.1.example.com",
        ] {
            let error = url_setting("X", bad).expect_err(bad);
            assert!(error.to_string().contains("https://"), "{bad}: {error}");
        }
    }
    use std::collections::HashMap;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn upstream_timeout_is_bounded() {
        let base = [("BALENA_API_KEY", "k")];
        assert_eq!(
            settings(&base).unwrap().upstream_timeout,
            Duration::from_secs(8)
        );
        let set = settings(&[
            ("BALENA_API_KEY", "k"),
            ("PROVISION_UPSTREAM_TIMEOUT_MS", "250"),
        ])
        .unwrap();
        assert_eq!(set.upstream_timeout, Duration::from_millis(250));
        for bad in ["0", "49", "60001", "fast", "-1"] {
            let err = settings(&[
                ("BALENA_API_KEY", "k"),
                ("PROVISION_UPSTREAM_TIMEOUT_MS", bad),
            ])
            .unwrap_err();
            assert_eq!(err.variable, "PROVISION_UPSTREAM_TIMEOUT_MS", "{bad}");
        }
    }

    #[test]
    fn key_is_required() {
        assert_eq!(settings(&[]).unwrap_err().variable, "BALENA_API_KEY");
    }

    #[test]
    fn defaults() {
        let s = settings(&[("BALENA_API_KEY", "k")]).unwrap();
        assert_eq!(s.balena_api_url, DEFAULT_BALENA_API_URL);
        assert!(!s.auth.allow_unauthenticated);
        assert!(s.auth.operator_token.is_none());
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (pairs, var) in [
            (
                vec![
                    ("BALENA_API_KEY", "k"),
                    ("PROVISION_ALLOW_UNAUTHENTICATED", "yes"),
                ],
                "PROVISION_ALLOW_UNAUTHENTICATED",
            ),
            (
                vec![
                    ("BALENA_API_KEY", "k"),
                    ("PROVISION_OPERATOR_TOKEN", "short"),
                ],
                "PROVISION_OPERATOR_TOKEN",
            ),
            (
                vec![("BALENA_API_KEY", "k"), ("BALENA_API_URL", "ftp://x")],
                "BALENA_API_URL",
            ),
            (
                vec![
                    ("BALENA_API_KEY", "k"),
                    ("PROVISION_REQUEST_BUDGET_MS", "-1"),
                ],
                "PROVISION_REQUEST_BUDGET_MS",
            ),
            (
                vec![("BALENA_API_KEY", "k"), ("PROVISION_KEY_TYPE", "rsa")],
                "PROVISION_KEY_TYPE",
            ),
        ] {
            let err = settings(&pairs).unwrap_err();
            assert_eq!(err.variable, var);
            assert!(!err.to_string().contains('\n'));
        }
    }

    #[test]
    fn error_never_shows_the_token() {
        let err =
            settings(&[("BALENA_API_KEY", "k"), ("PROVISION_OPERATOR_TOKEN", "abc")]).unwrap_err();
        assert!(!err.to_string().contains("abc"));
    }
}

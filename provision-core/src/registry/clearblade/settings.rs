//! Where the registry is and what the function signs in with: the service account
//! (`CB_SERVICE_ACCOUNT`) and the registry path.

use super::*;

/// The service account ClearBlade issues (the JSON file, base64 in `CB_SERVICE_ACCOUNT`).
#[derive(Clone)]
pub struct ServiceAccount {
    pub(super) system_key: String,
    pub(super) token: Secret,
    pub(super) url: String,
}

impl std::fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl ServiceAccount {
    /// Reads the base64 of the service-account JSON. Errors never repeat the value.
    pub fn from_base64(value: &str) -> Result<Self, ConfigError> {
        const NAME: &str = "CB_SERVICE_ACCOUNT";
        let bytes = base64_decode(value.trim()).ok_or_else(|| {
            ConfigError::new(
                NAME,
                "is not base64 (it holds the base64 of the service-account JSON file)",
            )
        })?;
        let json: Value = serde_json::from_slice(&bytes).map_err(|_| {
            ConfigError::new(
                NAME,
                "does not decode to JSON (expected the service-account JSON file, base64)",
            )
        })?;
        let field = |name: &str| {
            json.get(name)
                .and_then(Value::as_str)
                .filter(|v| !v.trim().is_empty())
                .map(|v| v.trim().to_owned())
                .ok_or_else(|| {
                    ConfigError::new(
                        NAME,
                        format!("has no '{name}' (expected systemKey, token, url)"),
                    )
                })
        };
        let (system_key, token, url) = (field("systemKey")?, field("token")?, field("url")?);
        crate::config::url_setting(NAME, &url)
            .map_err(|_| ConfigError::new(NAME, "has a 'url' that is not an http(s) URL"))?;
        if !system_key.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(ConfigError::new(
                NAME,
                "has a 'systemKey' that is not a ClearBlade system key",
            ));
        }
        Ok(ServiceAccount {
            system_key,
            token: Secret::new(token),
            url: url.trim_end_matches('/').to_owned(),
        })
    }
}

/// Where the registry is: `projects/{project}/locations/{region}/registries/{registry}`.
#[derive(Clone, Debug)]
pub struct RegistryPath {
    pub project: String,
    pub region: String,
    pub registry: String,
}

impl RegistryPath {
    /// Checks the three names so they can go into paths unescaped.
    pub fn new(project: &str, region: &str, registry: &str) -> Result<Self, ConfigError> {
        let project_ok = (6..=30).contains(&project.len())
            && project.starts_with(|c: char| c.is_ascii_lowercase())
            && project
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !project_ok {
            return Err(ConfigError::new(
                "GCP_PROJECT_ID",
                "must be a Google Cloud project id (6-30 lowercase letters, digits, hyphens)",
            ));
        }
        if region.is_empty()
            || region.len() > 40
            || !region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(ConfigError::new(
                "GCP_REGION",
                "must be a region name such as us-central1",
            ));
        }
        let registry_ok = (3..=255).contains(&registry.len())
            && registry.starts_with(|c: char| c.is_ascii_alphabetic())
            && registry
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._+~%".contains(&b));
        if !registry_ok {
            return Err(ConfigError::new(
                "CB_REGISTRY_ID",
                "must be a registry id (3-255 characters, starting with a letter)",
            ));
        }
        Ok(RegistryPath {
            project: project.into(),
            region: region.into(),
            registry: registry.into(),
        })
    }

    pub fn path(&self) -> String {
        format!(
            "projects/{}/locations/{}/registries/{}",
            self.project, self.region, self.registry
        )
    }
}

impl crate::registry::FromEnv for ClearBladeRegistry {
    const CLOUD: crate::registry::Cloud = crate::registry::Cloud::Gcp;
    const PRODUCT: &'static str = "ClearBlade IoT Core";
    const SETTINGS: &'static [crate::config::Setting] = &[
        (
            "GCP_PROJECT_ID, GCP_REGION, CB_REGISTRY_ID",
            "where the ClearBlade registry is (required)",
        ),
        (
            "CB_SERVICE_ACCOUNT",
            "base64 of the ClearBlade service-account JSON (required)",
        ),
    ];

    /// The registry from `GCP_PROJECT_ID`, `GCP_REGION`, `CB_REGISTRY_ID` and
    /// `CB_SERVICE_ACCOUNT` (base64 of the service-account JSON), as balena's published function.
    async fn from_env() -> Result<Self, ConfigError> {
        use crate::config::{required, upstream_timeout};
        let lookup = |name: &str| std::env::var(name).ok();
        let project = required(&lookup, "GCP_PROJECT_ID")?;
        let region = required(&lookup, "GCP_REGION")?;
        let registry = required(&lookup, "CB_REGISTRY_ID")?;
        let path = RegistryPath::new(project.expose(), region.expose(), registry.expose())?;
        let account =
            ServiceAccount::from_base64(required(&lookup, "CB_SERVICE_ACCOUNT")?.expose())?;
        let attempt = upstream_timeout(&lookup)?;
        Ok(
            ClearBladeRegistry::new(crate::upstream::http_client(), account, path)
                .with_retry(crate::retry::RetryPolicy::with_attempt_timeout(attempt)),
        )
    }
}

//! What the function signs in with: a service policy's connection string, and the SAS
//! tokens made from it for every try.

use super::*;

/// Lifetime of one SAS token, and how long before expiry the next one is made.
pub(super) const TOKEN_LIFETIME: u64 = 3600;
pub(super) const TOKEN_REFRESH: u64 = 300;

/// A service policy's connection string: `HostName=...;SharedAccessKeyName=...;SharedAccessKey=...`.
pub struct ConnectionString {
    pub host: String,
    pub policy: String,
    key: Vec<u8>,
}

impl std::fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ConnectionString {{ host: {}, policy: {}, key: *** }}",
            self.host, self.policy
        )
    }
}

impl ConnectionString {
    pub fn parse(value: &str) -> Result<Self, ConfigError> {
        let bad = |problem: &str| ConfigError::new("CONNECTION_STRING", problem);
        let (mut host, mut policy, mut key, mut device) = (None, None, None, false);
        for part in value.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, val) = part
                .split_once('=')
                .ok_or_else(|| bad("is not a list of Name=value pairs separated by ';'"))?;
            match name.trim() {
                "HostName" => host = Some(val.trim().to_owned()),
                "SharedAccessKeyName" => policy = Some(val.trim().to_owned()),
                "SharedAccessKey" => key = Some(val.trim().to_owned()),
                "DeviceId" | "ModuleId" => device = true,
                _ => {}
            }
        }
        if device {
            return Err(bad(
                "is a device connection string (it names a DeviceId), which cannot manage the registry: use the connection string \
                 of a shared access policy with registry write, such as the hub's 'registryReadWrite' policy",
            ));
        }
        let host = host
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("has no HostName"))?;
        if host.contains('/') || host.contains(' ') {
            return Err(bad(
                "has a HostName that is not a host name (expected <hub>.azure-devices.net)",
            ));
        }
        let policy = policy
            .filter(|p| !p.is_empty())
            .ok_or_else(|| bad("has no SharedAccessKeyName"))?;
        let key = key
            .and_then(|k| base64_decode(&k))
            .filter(|k| !k.is_empty())
            .ok_or_else(|| bad("has no SharedAccessKey, or one that is not base64"))?;
        Ok(ConnectionString { host, policy, key })
    }

    /// A SharedAccessSignature for the hub, valid until `expiry` (unix seconds).
    pub fn sas_token(&self, expiry: u64) -> Secret {
        let resource = uri_component(&self.host.to_ascii_lowercase());
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &self.key);
        let signature = aws_lc_rs::hmac::sign(&key, format!("{resource}\n{expiry}").as_bytes());
        Secret::new(format!(
            "SharedAccessSignature sr={resource}&sig={}&se={expiry}&skn={}",
            uri_component(&base64_encode(signature.as_ref())),
            uri_component(&self.policy)
        ))
    }
}

/// Puts a SAS token on every try, made once and reused until shortly before it expires.
pub(super) struct SasPolicy {
    pub(super) connection: ConnectionString,
    pub(super) cached: Mutex<Option<(Secret, u64)>>,
}

impl std::fmt::Debug for SasPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SasPolicy(***)")
    }
}

impl SasPolicy {
    pub(super) fn token(&self) -> Secret {
        let now = unix_now();
        let mut cached = self
            .cached
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match &*cached {
            Some((token, expiry)) if *expiry > now + TOKEN_REFRESH => token.clone(),
            _ => {
                let expiry = now + TOKEN_LIFETIME;
                let token = self.connection.sas_token(expiry);
                *cached = Some((token.clone(), expiry));
                token
            }
        }
    }
}

#[async_trait]
impl Policy for SasPolicy {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        request.insert_header("authorization", self.token().expose().to_owned());
        next[0].send(ctx, request, &next[1..]).await
    }
}

pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl crate::registry::FromEnv for IotHubRegistry {
    const CLOUD: crate::registry::Cloud = crate::registry::Cloud::Azure;
    const PRODUCT: &'static str = "Azure IoT Hub";
    const SETTINGS: &'static [crate::config::Setting] = &[
        (
            "CONNECTION_STRING",
            "IoT Hub connection string of a shared access policy with registry write (required)",
        ),
        (
            "AZURE_IOTHUB_ENDPOINT",
            "base URL override (emulators); tokens stay signed for the HostName",
        ),
    ];

    /// The registry from `CONNECTION_STRING` (a service policy's, never a device's) and the
    /// optional `AZURE_IOTHUB_ENDPOINT` override.
    async fn from_env() -> Result<Self, ConfigError> {
        use crate::config;
        let lookup = |name: &str| std::env::var(name).ok();
        let connection = config::required(&lookup, "CONNECTION_STRING")?;
        let connection = ConnectionString::parse(connection.expose())?;
        let endpoint = lookup("AZURE_IOTHUB_ENDPOINT").filter(|v| !v.trim().is_empty());
        if let Some(url) = &endpoint {
            config::url_setting("AZURE_IOTHUB_ENDPOINT", url)?;
        }
        let attempt = config::upstream_timeout(&lookup)?;
        // azure_core's pipeline has no per-try limit of its own: the transport's timeout is one.
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(3))
            .timeout(attempt)
            .pool_idle_timeout(std::time::Duration::from_secs(60))
            .user_agent(concat!("balena-provision/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                ConfigError::new(
                    "PROVISION_UPSTREAM_TIMEOUT_MS",
                    format!("cannot build the HTTP client: {e}"),
                )
            })?;
        IotHubRegistry::new(http, connection, endpoint.as_deref())
    }
}

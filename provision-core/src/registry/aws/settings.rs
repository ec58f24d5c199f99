//! What the registry reads from the environment: the standard AWS settings and the IoT
//! policy every device certificate gets.

use crate::config::{self, ConfigError, Setting};
use crate::registry::Cloud;
use crate::registry::FromEnv;

use super::AwsIotRegistry;

impl FromEnv for AwsIotRegistry {
    const CLOUD: Cloud = Cloud::Aws;
    const PRODUCT: &'static str = "AWS IoT Core";
    const SETTINGS: &'static [Setting] = &[
        (
            "AWS_IOT_POLICY",
            "IoT policy attached to every device certificate (required)",
        ),
        (
            "AWS_REGION, AWS_ENDPOINT_URL",
            "the standard AWS SDK settings (AWS_REGION required; the endpoint for emulators)",
        ),
    ];

    /// The registry from the standard AWS environment and `AWS_IOT_POLICY`.
    async fn from_env() -> Result<Self, ConfigError> {
        let lookup = |name: &str| std::env::var(name).ok();
        let policy = config::required(&lookup, "AWS_IOT_POLICY")?;
        let attempt = config::upstream_timeout(&lookup)?;
        let sdk = AwsIotRegistry::sdk_config(attempt).await;
        if sdk.region().is_none() {
            return Err(ConfigError::new("AWS_REGION", "is required and not set"));
        }
        Ok(AwsIotRegistry::new(
            aws_sdk_iot::Client::new(&sdk),
            policy.expose().to_owned(),
        ))
    }
}

//! How this device connects to its cloud, worked out from the credential variables the
//! function stored (and balenaCloud delivered) and the settings: the endpoint, the MQTT client
//! id and user name, what proves the device, and the topic every message goes to.

use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::kept_key::KeptKey;
use crate::settings::{Cloud, Env, Settings, pem_or_base64, split_host_port};

/// The MQTT-over-TLS port every cloud uses.
pub const MQTT_TLS_PORT: u16 = 8883;

/// What proves the device to the cloud.
pub enum Proof {
    /// A client certificate (AWS IoT, IoT Hub X.509).
    Certificate {
        certificate_pem: String,
        private_key_pem: String,
    },
    /// A JWT password signed with the key (ClearBlade).
    Token {
        private_key_pem: String,
        audience: String,
        lifetime: Duration,
        renew_before: Duration,
    },
}

/// Everything needed to publish to the cloud.
pub struct Link {
    pub cloud: Cloud,
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub username: Option<String>,
    pub proof: Proof,
    /// The MQTT topic every message is published to.
    pub topic: String,
}

impl std::fmt::Display for Link {
    /// What the logs say about a link: never a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}:{} as {} on {}",
            self.cloud.name(),
            self.host,
            self.port,
            self.client_id,
            self.topic
        )
    }
}

/// What the variables say about the device's credentials.
pub enum Credentials {
    /// Ready to connect.
    Complete(Box<Link>),
    /// Nothing of the cloud's yet (or not all of it): ask the function.
    Missing { absent: Vec<&'static str> },
    /// The kept key is not the one the variables' credential is for (a certificate of another
    /// key; on ClearBlade, a key made by this start): ask the function for a credential of
    /// this key (rotate with a CSR).
    KeyMismatch,
}

/// The variables the function stores for each cloud.
pub fn credential_variables(cloud: Cloud) -> &'static [&'static str] {
    match cloud {
        Cloud::Aws => &["AWS_CERT", "AWS_PRIVATE_KEY"],
        Cloud::Azure => &["AZURE_CERT", "AZURE_PRIVATE_KEY"],
        Cloud::Gcp => &[
            "GCP_PRIVATE_KEY",
            "GCP_CLIENT_PATH",
            "GCP_DATA_TOPIC_ROOT",
            "GCP_PROJECT_ID",
        ],
    }
}

/// Azure's property bag: every byte but unreserved ones percent-encoded.
const PROPERTY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn decode_pem(name: &'static str, env: &(impl Env + ?Sized)) -> anyhow::Result<Option<String>> {
    env.get(name)
        .map(|v| pem_or_base64(name, &v).map_err(anyhow::Error::from))
        .transpose()
}

/// The private key: the variable's, else the kept key (with `PROVISION_KEEP_KEY`).
fn private_key(
    name: &'static str,
    env: &(impl Env + ?Sized),
    kept: Option<&KeptKey>,
) -> anyhow::Result<Option<String>> {
    match decode_pem(name, env)? {
        Some(pem) => Ok(Some(pem)),
        None => Ok(kept.map(KeptKey::private_key_pem)),
    }
}

/// Whether the certificate's public key is the kept key's.
fn certificate_is_for(certificate_pem: &str, kept: &KeptKey) -> bool {
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(certificate_pem.as_bytes()) else {
        return false;
    };
    let Ok(certificate) = pem.parse_x509() else {
        return false;
    };
    certificate.public_key().raw == kept.public_key_der().as_slice()
}

/// Works out the link from the variables.
pub fn read(
    settings: &Settings,
    env: &(impl Env + ?Sized),
    kept: Option<&KeptKey>,
) -> anyhow::Result<Credentials> {
    let absent: Vec<&'static str> = credential_variables(settings.cloud)
        .iter()
        .copied()
        .filter(|name| env.get(name).is_none())
        .filter(|name| !(kept.is_some() && name.ends_with("_PRIVATE_KEY")))
        .collect();
    if !absent.is_empty() {
        return Ok(Credentials::Missing { absent });
    }
    let uuid = settings.device_uuid.clone();
    let link = match settings.cloud {
        Cloud::Aws | Cloud::Azure => {
            let (cert_var, key_var, host_var) = match settings.cloud {
                Cloud::Aws => ("AWS_CERT", "AWS_PRIVATE_KEY", "AWS_DATA_ENDPOINT"),
                _ => ("AZURE_CERT", "AZURE_PRIVATE_KEY", "AZURE_HUB_HOST"),
            };
            let certificate_pem = decode_pem(cert_var, env)?.unwrap_or_default();
            let key_from_variable = env.get(key_var).is_some();
            if let Some(kept) = kept
                && !key_from_variable
                && !certificate_is_for(&certificate_pem, kept)
            {
                return Ok(Credentials::KeyMismatch);
            }
            let private_key_pem = private_key(key_var, env, kept)?.unwrap_or_default();
            let address = env.get(host_var).ok_or_else(|| {
                anyhow::anyhow!(
                    "{host_var}: not set; the {} endpoint is needed to connect",
                    settings.cloud.name()
                )
            })?;
            let (host, port) = split_host_port(&address, MQTT_TLS_PORT)
                .map_err(|why| anyhow::anyhow!("{host_var}: {address:?}: {why}"))?;
            let proof = Proof::Certificate {
                certificate_pem,
                private_key_pem,
            };
            if settings.cloud == Cloud::Aws {
                let topic = if settings.aws_topic_root.is_empty() {
                    settings.consumer_topic.clone()
                } else {
                    format!(
                        "{}/{uuid}/{}",
                        settings.aws_topic_root, settings.consumer_topic
                    )
                };
                Link {
                    cloud: Cloud::Aws,
                    host,
                    port,
                    client_id: uuid,
                    username: None,
                    proof,
                    topic,
                }
            } else {
                let topic = format!(
                    "devices/{uuid}/messages/events/topic={}",
                    utf8_percent_encode(&settings.consumer_topic, PROPERTY)
                );
                Link {
                    cloud: Cloud::Azure,
                    username: Some(format!("{host}/{uuid}/?api-version=2021-04-12")),
                    host,
                    port,
                    client_id: uuid,
                    proof,
                    topic,
                }
            }
        }
        Cloud::Gcp => {
            // ClearBlade's variables do not say which key is registered; a key made by this
            // start cannot be it.
            if let Some(kept) = kept
                && kept.fresh
                && env.get("GCP_PRIVATE_KEY").is_none()
            {
                return Ok(Credentials::KeyMismatch);
            }
            let private_key_pem = private_key("GCP_PRIVATE_KEY", env, kept)?.unwrap_or_default();
            let (host, port) = split_host_port(&settings.messaging_host, MQTT_TLS_PORT)
                .map_err(|why| anyhow::anyhow!("MESSAGING_HOST: {why}"))?;
            let root = env.get("GCP_DATA_TOPIC_ROOT").unwrap_or_default();
            Link {
                cloud: Cloud::Gcp,
                host,
                port,
                client_id: env.get("GCP_CLIENT_PATH").unwrap_or_default(),
                username: Some("unused".into()),
                proof: Proof::Token {
                    private_key_pem,
                    audience: env.get("GCP_PROJECT_ID").unwrap_or_default(),
                    lifetime: settings.gcp_token_lifetime,
                    renew_before: settings.gcp_renewal_start,
                },
                topic: format!(
                    "{}/{}",
                    root.trim_end_matches('/'),
                    settings.consumer_topic.trim_start_matches('/')
                ),
            }
        }
    };
    Ok(Credentials::Complete(Box::new(link)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    const UUID: &str = "0123456789abcdef0123456789abcdef";

    fn b64(text: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(text)
    }

    fn certificate_for(key: &rcgen::KeyPair) -> String {
        rcgen::CertificateParams::new(vec![UUID.to_string()])
            .unwrap()
            .self_signed(key)
            .unwrap()
            .pem()
    }

    fn complete(result: Credentials) -> Link {
        match result {
            Credentials::Complete(link) => *link,
            Credentials::Missing { absent } => panic!("missing {absent:?}"),
            Credentials::KeyMismatch => panic!("key mismatch"),
        }
    }

    #[test]
    fn each_cloud_connects_and_publishes_as_it_requires() {
        let key = rcgen::KeyPair::generate().unwrap();
        let (cert, key_pem) = (b64(&certificate_for(&key)), b64(&key.serialize_pem()));

        let env = [
            ("AWS_DATA_ENDPOINT", "abc-ats.iot.eu-west-1.amazonaws.com"),
            ("BALENA_DEVICE_UUID", UUID),
            ("AWS_CERT", cert.as_str()),
            ("AWS_PRIVATE_KEY", key_pem.as_str()),
        ];
        let link = complete(read(&Settings::from_env(&env).unwrap(), &env, None).unwrap());
        assert_eq!(
            (link.host.as_str(), link.port),
            ("abc-ats.iot.eu-west-1.amazonaws.com", 8883)
        );
        assert_eq!(link.client_id, UUID);
        assert_eq!(link.username, None);
        assert_eq!(link.topic, format!("balena/{UUID}/sensors"));

        let env = [
            ("AWS_DATA_ENDPOINT", "127.0.0.1:9999"),
            ("AWS_TOPIC_ROOT", ""),
            ("BALENA_DEVICE_UUID", UUID),
            ("AWS_CERT", cert.as_str()),
            ("AWS_PRIVATE_KEY", key_pem.as_str()),
        ];
        let link = complete(read(&Settings::from_env(&env).unwrap(), &env, None).unwrap());
        assert_eq!((link.host.as_str(), link.port), ("127.0.0.1", 9999));
        assert_eq!(link.topic, "sensors");

        let env = [
            ("AZURE_HUB_HOST", "hub.azure-devices.net"),
            ("CLOUD_CONSUMER_TOPIC", "a b/c"),
            ("BALENA_DEVICE_UUID", UUID),
            ("AZURE_CERT", cert.as_str()),
            ("AZURE_PRIVATE_KEY", key_pem.as_str()),
        ];
        let link = complete(read(&Settings::from_env(&env).unwrap(), &env, None).unwrap());
        assert_eq!(
            link.username.as_deref(),
            Some(format!("hub.azure-devices.net/{UUID}/?api-version=2021-04-12").as_str())
        );
        assert_eq!(
            link.topic,
            format!("devices/{UUID}/messages/events/topic=a%20b%2Fc")
        );

        let path = format!("projects/p/locations/r/registries/g/devices/balena-{UUID}");
        let root = format!("/devices/balena-{UUID}");
        let env = [
            ("CLOUD_PROVIDER", "GCP"),
            ("MESSAGING_HOST", "127.0.0.1:4443"),
            ("BALENA_DEVICE_UUID", UUID),
            ("GCP_PRIVATE_KEY", key_pem.as_str()),
            ("GCP_CLIENT_PATH", path.as_str()),
            ("GCP_DATA_TOPIC_ROOT", root.as_str()),
            ("GCP_PROJECT_ID", "p"),
        ];
        let link = complete(read(&Settings::from_env(&env).unwrap(), &env, None).unwrap());
        assert_eq!(link.client_id, path);
        assert_eq!(link.topic, format!("{root}/events"));
        assert_eq!((link.host.as_str(), link.port), ("127.0.0.1", 4443));
        assert!(matches!(link.proof, Proof::Token { ref audience, .. } if audience == "p"));
        // The log form names no secret.
        assert!(!link.to_string().contains("BEGIN"));
    }

    #[test]
    fn missing_variables_ask_for_provisioning_and_a_kept_key_must_match() {
        let env = [("AWS_DATA_ENDPOINT", "h"), ("BALENA_DEVICE_UUID", UUID)];
        let settings = Settings::from_env(&env).unwrap();
        match read(&settings, &env, None).unwrap() {
            Credentials::Missing { absent } => assert_eq!(absent, ["AWS_CERT", "AWS_PRIVATE_KEY"]),
            _ => panic!("expected missing"),
        }
        let dir = std::env::temp_dir().join(format!("cloud-relay-link-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let kept = KeptKey::load_or_create(&dir).unwrap();
        // With a kept key only the certificate is needed, and it must be for that key.
        match read(&settings, &env, Some(&kept)).unwrap() {
            Credentials::Missing { absent } => assert_eq!(absent, ["AWS_CERT"]),
            _ => panic!("expected missing"),
        }
        let other = b64(&certificate_for(&rcgen::KeyPair::generate().unwrap()));
        let env_other = [
            ("AWS_DATA_ENDPOINT", "h"),
            ("BALENA_DEVICE_UUID", UUID),
            ("AWS_CERT", other.as_str()),
        ];
        assert!(matches!(
            read(&settings, &env_other, Some(&kept)).unwrap(),
            Credentials::KeyMismatch
        ));
        let own_key = rcgen::KeyPair::from_pem(&kept.private_key_pem()).unwrap();
        let own = b64(&certificate_for(&own_key));
        let env_own = [
            ("AWS_DATA_ENDPOINT", "h"),
            ("BALENA_DEVICE_UUID", UUID),
            ("AWS_CERT", own.as_str()),
        ];
        let link = complete(read(&settings, &env_own, Some(&kept)).unwrap());
        assert!(
            matches!(link.proof, Proof::Certificate { ref private_key_pem, .. } if *private_key_pem == kept.private_key_pem())
        );

        // ClearBlade: a key made by this start cannot be the registered one; a kept one is.
        let path = format!("projects/p/locations/r/registries/g/devices/balena-{UUID}");
        let gcp = [
            ("CLOUD_PROVIDER", "GCP"),
            ("BALENA_DEVICE_UUID", UUID),
            ("GCP_CLIENT_PATH", path.as_str()),
            ("GCP_DATA_TOPIC_ROOT", "/devices/x"),
            ("GCP_PROJECT_ID", "p"),
        ];
        let settings = Settings::from_env(&gcp).unwrap();
        assert!(kept.fresh);
        assert!(matches!(
            read(&settings, &gcp, Some(&kept)).unwrap(),
            Credentials::KeyMismatch
        ));
        let kept_again = KeptKey::load_or_create(&dir).unwrap();
        complete(read(&settings, &gcp, Some(&kept_again)).unwrap());
        std::fs::remove_dir_all(dir).ok();
    }
}

//! moto (the AWS emulator, from PyPI) as a process, the project's device policy as the tests
//! create it, and probes of AWS IoT state through the real SDK.

use std::time::Duration;

use aws_sdk_iot::Client;
use aws_sdk_iot::types::CertificateStatus;
use tokio::process::Command;

use crate::paths;
use crate::process::{LogBook, Process, spawn_server};

pub const REGION: &str = "eu-west-1";
pub const POLICY: &str = "balena-provision-device";
/// The account moto answers for.
pub const ACCOUNT: &str = "123456789012";
/// The first topic level of the device topics (infra/aws/iot-setup.yaml's `TopicRoot` default).
pub const TOPIC_ROOT: &str = "balena";

/// A moto server on a free port of 127.0.0.1, stopped when dropped.
pub struct Moto {
    pub port: u16,
    process: Process,
    /// The PEM of the CA moto signs issued certificates with (tests/moto/moto_server.py).
    iot_ca_pem: String,
}

impl Moto {
    pub async fn start(logs: &LogBook) -> anyhow::Result<Moto> {
        let python = paths::venv().join("bin").join("python");
        if !paths::venv().join("bin").join("moto_server").is_file() {
            anyhow::bail!(
                "moto is not installed in {}: run `scripts/setup` (it makes .venv with moto[server])",
                paths::venv().display()
            );
        }
        // moto_server with its corrections (tests/moto/moto_server.py). Its own API answers
        // JSON at /moto-api/data.json: no other server here does. It writes its IoT CA's
        // certificate to MOTO_IOT_CA_FILE before it serves.
        let ca_file = std::env::temp_dir().join(format!(
            "provision-moto-iot-ca-{}.pem",
            uuid::Uuid::new_v4().simple()
        ));
        let started = spawn_server(
            "moto",
            logs,
            |port| {
                let mut command = Command::new(&python);
                command
                    .arg(paths::repo_root().join("tests/moto/moto_server.py"))
                    .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                    .env("MOTO_IOT_CA_FILE", &ca_file);
                command
            },
            "/moto-api/data.json",
            |status, body| status == 200 && body.trim_start().starts_with('{'),
        )
        .await;
        let iot_ca_pem = std::fs::read_to_string(&ca_file);
        let _ = std::fs::remove_file(&ca_file);
        let (port, process) = started?;
        let iot_ca_pem = iot_ca_pem.map_err(|e| {
            anyhow::anyhow!(
                "moto did not write its IoT CA certificate to {}: {e}",
                ca_file.display()
            )
        })?;
        Ok(Moto {
            port,
            process,
            iot_ca_pem,
        })
    }

    /// The PEM of the CA certificate moto signs the certificates it issues with
    /// (CreateCertificateFromCsr): what a stand-in for the AWS IoT broker trusts.
    pub fn iot_ca_pem(&self) -> String {
        self.iot_ca_pem.clone()
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment a function process needs to reach this moto with the standard AWS SDK
    /// settings.
    pub fn function_env(&self) -> Vec<(String, String)> {
        [
            ("AWS_REGION", REGION.to_string()),
            ("AWS_ACCESS_KEY_ID", "testing".to_string()),
            ("AWS_SECRET_ACCESS_KEY", "testing".to_string()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    pub async fn client(&self) -> Client {
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(REGION))
            .endpoint_url(self.endpoint())
            .credentials_provider(aws_sdk_iot::config::Credentials::new(
                "testing", "testing", None, None, "tests",
            ))
            .load()
            .await;
        Client::new(&config)
    }

    pub async fn stop(self) {
        self.process.stop().await;
    }
}

/// The IoT policy every device certificate gets (the one-time setup of infra/aws): the
/// `DevicePolicy` of infra/aws/iot-setup.yaml, as [`device_policy_document`] renders it.
pub async fn create_device_policy(iot: &Client) -> anyhow::Result<()> {
    let document = device_policy_document()?;
    iot.create_policy()
        .policy_name(POLICY)
        .policy_document(document.to_string())
        .send()
        .await?;
    Ok(())
}

/// The project's device policy document: `Resources.DevicePolicy.Properties.PolicyDocument` of
/// infra/aws/iot-setup.yaml, with its `!Sub` strings rendered for the tests' account
/// (`${AWS::Partition}` = aws, `${AWS::Region}` = [`REGION`], `${AWS::AccountId}` = [`ACCOUNT`],
/// `${TopicRoot}` = [`TOPIC_ROOT`]; `${!x}` becomes the literal `${x}`, as `Fn::Sub` does).
pub fn device_policy_document() -> anyhow::Result<serde_json::Value> {
    let path = paths::repo_root().join("infra/aws/iot-setup.yaml");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    let template: serde_yaml::Value = serde_yaml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{} is not YAML: {e}", path.display()))?;
    let document = template
        .get("Resources")
        .and_then(|r| r.get("DevicePolicy"))
        .and_then(|r| r.get("Properties"))
        .and_then(|r| r.get("PolicyDocument"))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{} has no Resources.DevicePolicy.Properties.PolicyDocument",
                path.display()
            )
        })?;
    render_template_value(document)
}

/// A CloudFormation value as JSON, `!Sub` strings substituted (see [`device_policy_document`]);
/// any other intrinsic function is an error.
fn render_template_value(value: &serde_yaml::Value) -> anyhow::Result<serde_json::Value> {
    use serde_json::Value as Json;
    use serde_yaml::Value as Yaml;
    Ok(match value {
        Yaml::Null => Json::Null,
        Yaml::Bool(b) => Json::Bool(*b),
        Yaml::Number(n) => serde_json::to_value(n)?,
        Yaml::String(s) => Json::String(s.clone()),
        Yaml::Sequence(items) => Json::Array(
            items
                .iter()
                .map(render_template_value)
                .collect::<anyhow::Result<_>>()?,
        ),
        Yaml::Mapping(map) => {
            let mut out = serde_json::Map::new();
            for (k, v) in map {
                let key = k
                    .as_str()
                    .ok_or_else(|| anyhow::anyhow!("a non-string key {k:?} in the policy"))?;
                if key.starts_with("Fn::") || key == "Ref" {
                    anyhow::bail!("the policy uses {key}, which the tests do not render");
                }
                out.insert(key.to_string(), render_template_value(v)?);
            }
            Json::Object(out)
        }
        Yaml::Tagged(tagged) if tagged.tag == "Sub" => match &tagged.value {
            Yaml::String(s) => Json::String(substitute(s)?),
            other => anyhow::bail!("!Sub with a {other:?}: only the string form is rendered"),
        },
        Yaml::Tagged(tagged) => {
            anyhow::bail!(
                "the policy uses !{}, which the tests do not render",
                tagged.tag
            )
        }
    })
}

/// `Fn::Sub` of `text` with the tests' pseudo parameters and parameters.
fn substitute(text: &str) -> anyhow::Result<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| anyhow::anyhow!("an unclosed ${{ in {text:?}"))?;
        let name = &after[..end];
        match name {
            "AWS::Partition" => out.push_str("aws"),
            "AWS::Region" => out.push_str(REGION),
            "AWS::AccountId" => out.push_str(ACCOUNT),
            "TopicRoot" => out.push_str(TOPIC_ROOT),
            literal if literal.starts_with('!') => {
                out.push_str("${");
                out.push_str(&literal[1..]);
                out.push('}');
            }
            other => anyhow::bail!("${{{other}}} in {text:?} is not rendered by the tests"),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A certificate as the registry holds it, for assertions.
#[derive(Clone, Debug)]
pub struct CertInfo {
    pub id: String,
    pub arn: String,
    pub pem: String,
    pub active: bool,
    pub policies: Vec<String>,
}

/// The certificates attached to a thing (`None`: no such thing).
pub async fn thing_certificates(
    iot: &Client,
    thing: &str,
) -> anyhow::Result<Option<Vec<CertInfo>>> {
    let principals = match iot.list_thing_principals().thing_name(thing).send().await {
        Ok(out) => out.principals().to_vec(),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    let mut certs = Vec::new();
    for arn in principals {
        certs.push(describe(iot, &arn).await?);
    }
    Ok(Some(certs))
}

async fn describe(iot: &Client, arn: &str) -> anyhow::Result<CertInfo> {
    let id = arn.rsplit('/').next().unwrap_or_default().to_string();
    let described = iot
        .describe_certificate()
        .certificate_id(&id)
        .send()
        .await?;
    let description = described
        .certificate_description()
        .ok_or_else(|| anyhow::anyhow!("no description"))?;
    let policies = iot.list_attached_policies().target(arn).send().await?;
    Ok(CertInfo {
        id,
        arn: arn.to_string(),
        pem: description
            .certificate_pem()
            .unwrap_or_default()
            .to_string(),
        active: description.status() == Some(&CertificateStatus::Active),
        policies: policies
            .policies()
            .iter()
            .filter_map(|p| p.policy_name().map(str::to_string))
            .collect(),
    })
}

/// Every certificate in the account with its status, attached or not (orphans show here).
pub async fn all_certificates(iot: &Client) -> anyhow::Result<Vec<(String, bool)>> {
    Ok(certificate_pages(iot)
        .await?
        .iter()
        .map(|c| {
            (
                c.certificate_id().unwrap_or_default().to_string(),
                c.status() == Some(&CertificateStatus::Active),
            )
        })
        .collect())
}

/// Every page of ListCertificates (250 to a page).
async fn certificate_pages(iot: &Client) -> anyhow::Result<Vec<aws_sdk_iot::types::Certificate>> {
    let mut all = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let out = iot
            .list_certificates()
            .page_size(250)
            .set_marker(marker.take())
            .send()
            .await?;
        all.extend(out.certificates().iter().cloned());
        match out.next_marker() {
            Some(next) if !next.is_empty() => marker = Some(next.to_string()),
            _ => return Ok(all),
        }
    }
}

/// Active certificates attached to no thing but `except`'s: credentials that work and that no
/// device's variables can name (orphans).
pub async fn orphan_certificates(iot: &Client, except: &str) -> anyhow::Result<Vec<String>> {
    let mut orphans = Vec::new();
    for cert in certificate_pages(iot)
        .await?
        .iter()
        .filter(|c| c.status() == Some(&CertificateStatus::Active))
    {
        let (Some(id), Some(arn)) = (cert.certificate_id(), cert.certificate_arn()) else {
            continue;
        };
        let things = iot.list_principal_things().principal(arn).send().await?;
        if things.things().iter().all(|t| t == except) {
            orphans.push(id.to_string());
        }
    }
    Ok(orphans)
}

pub async fn thing_exists(iot: &Client, thing: &str) -> anyhow::Result<bool> {
    match iot.describe_thing().thing_name(thing).send().await {
        Ok(_) => Ok(true),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

pub const INVOKE_TIMEOUT: Duration = Duration::from_secs(60);

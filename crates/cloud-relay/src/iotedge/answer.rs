//! What the endpoint answers, worked out from the device's variables: Azure IoT Edge's
//! external provisioning REST API (`GET /device/provisioninginformation`,
//! `POST /device/reprovision`), with JSON 404/405 for everything else.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use super::assignment::AssignmentStore;
use crate::kept_key::KeptKey;
use crate::settings::{Env, pem_or_base64, split_host_port};

/// The API's two routes, and the answers for anything else.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    ProvisioningInformation,
    Reprovision,
    NotFound,
    MethodNotAllowed(&'static str),
}

pub fn route(method: &str, path: &str) -> Route {
    let path = path.split('?').next().unwrap_or(path);
    match path {
        "/device/provisioninginformation" => match method {
            "GET" => Route::ProvisioningInformation,
            _ => Route::MethodNotAllowed("GET"),
        },
        "/device/reprovision" => match method {
            "POST" => Route::Reprovision,
            _ => Route::MethodNotAllowed("POST"),
        },
        _ => Route::NotFound,
    }
}

/// The certificate file written beside the kept key for `hsm` mode.
pub const CERTIFICATE_FILE: &str = "iotedge-identity-cert.pem";

/// The provisioning information, or `None` while the variables hold no certificate yet.
pub fn provisioning_information(
    device_id: &str,
    env: &(impl Env + ?Sized),
    kept: Option<&KeptKey>,
    data_dir: &Path,
    store: &AssignmentStore,
) -> anyhow::Result<Option<Value>> {
    let Some(hub) = env.get("AZURE_HUB_HOST") else {
        anyhow::bail!("AZURE_HUB_HOST: not set; IoT Edge needs the hub's name");
    };
    let (hub_name, _) = split_host_port(&hub, 8883)
        .map_err(|why| anyhow::anyhow!("AZURE_HUB_HOST: {hub:?}: {why}"))?;
    let Some(certificate) = env.get("AZURE_CERT") else {
        return Ok(None);
    };
    let certificate_pem = pem_or_base64("AZURE_CERT", &certificate)?;
    let der = x509_parser::pem::parse_x509_pem(certificate_pem.as_bytes())
        .map_err(|_| anyhow::anyhow!("AZURE_CERT: not a PEM certificate"))?
        .1
        .contents;
    let thumbprint = hex(&aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der));
    let credentials = match (env.get("AZURE_PRIVATE_KEY"), kept) {
        (Some(key), _) => {
            let key_pem = pem_or_base64("AZURE_PRIVATE_KEY", &key)?;
            json!({
                "authType": "x509",
                "source": "payload",
                "identityCert": STANDARD.encode(certificate_pem.as_bytes()),
                "identityPrivateKey": STANDARD.encode(key_pem.as_bytes()),
            })
        }
        (None, Some(kept)) => {
            let certificate_path = write_certificate(data_dir, &certificate_pem)?;
            json!({
                "authType": "x509",
                "source": "hsm",
                "identityCert": certificate_path.display().to_string(),
                "identityPrivateKey": kept.path.display().to_string(),
            })
        }
        (None, None) => return Ok(None),
    };
    let substatus = store.substatus_for(&hub_name, device_id, &thumbprint)?;
    Ok(Some(json!({
        "hubName": hub_name,
        "deviceId": device_id,
        "credentials": credentials,
        "status": "assigned",
        "substatus": substatus,
    })))
}

fn hex(digest: &aws_lc_rs::digest::Digest) -> String {
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes the certificate beside the kept key (mode 0600, as the key), replacing an older one.
fn write_certificate(dir: &Path, pem: &str) -> anyhow::Result<PathBuf> {
    use std::io::Write as _;
    let path = dir.join(CERTIFICATE_FILE);
    let temporary = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(&temporary)?;
    file.write_all(pem.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temporary, &path)?;
    Ok(path)
}

/// A JSON error body as the function's (`{"error": {"code", "message"}}`).
pub fn error_body(code: &str, message: &str) -> Value {
    json!({"error": {"code": code, "message": message}})
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn routes_and_their_methods() {
        assert_eq!(
            route("GET", "/device/provisioninginformation"),
            Route::ProvisioningInformation
        );
        assert_eq!(
            route(
                "GET",
                "/device/provisioninginformation?api-version=2019-04-10"
            ),
            Route::ProvisioningInformation
        );
        assert_eq!(route("POST", "/device/reprovision"), Route::Reprovision);
        assert_eq!(
            route("POST", "/device/provisioninginformation"),
            Route::MethodNotAllowed("GET")
        );
        assert_eq!(
            route("GET", "/device/reprovision"),
            Route::MethodNotAllowed("POST")
        );
        assert_eq!(route("GET", "/"), Route::NotFound);
    }

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("iotedge-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn payload_mode_answers_the_variables_in_base64_and_hsm_mode_answers_paths() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![UUID.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .pem();
        let (cert64, key64) = (STANDARD.encode(&cert), STANDARD.encode(key.serialize_pem()));
        let data = dir("payload");
        let store = AssignmentStore::new(&data);
        let env = [
            ("AZURE_HUB_HOST", "hub.azure-devices.net:8883"),
            ("AZURE_CERT", cert64.as_str()),
            ("AZURE_PRIVATE_KEY", key64.as_str()),
        ];
        let info = provisioning_information(UUID, &env, None, &data, &store)
            .unwrap()
            .unwrap();
        assert_eq!(info["hubName"], "hub.azure-devices.net");
        assert_eq!(info["deviceId"], UUID);
        assert_eq!(info["status"], "assigned");
        assert_eq!(info["substatus"], "initialAssignment");
        assert_eq!(info["credentials"]["source"], "payload");
        assert_eq!(info["credentials"]["identityCert"], cert64);
        assert_eq!(info["credentials"]["identityPrivateKey"], key64);

        // Not provisioned yet: nothing to answer.
        let bare = [("AZURE_HUB_HOST", "hub.azure-devices.net")];
        assert!(
            provisioning_information(UUID, &bare, None, &data, &store)
                .unwrap()
                .is_none()
        );

        // hsm: the kept key's path and the certificate written beside it, 0600.
        let data = dir("hsm");
        let kept = KeptKey::load_or_create(&data).unwrap();
        let store = AssignmentStore::new(&data);
        let env = [
            ("AZURE_HUB_HOST", "hub.azure-devices.net"),
            ("AZURE_CERT", cert64.as_str()),
        ];
        let info = provisioning_information(UUID, &env, Some(&kept), &data, &store)
            .unwrap()
            .unwrap();
        assert_eq!(info["credentials"]["source"], "hsm");
        let cert_path = PathBuf::from(info["credentials"]["identityCert"].as_str().unwrap());
        assert_eq!(std::fs::read_to_string(&cert_path).unwrap(), cert);
        assert_eq!(
            info["credentials"]["identityPrivateKey"],
            kept.path.display().to_string()
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&cert_path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}

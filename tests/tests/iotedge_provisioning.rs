//! `cloud-relay iotedge-provisioning`, played by a test as `iotedged` plays it: over the Unix
//! socket and over TCP, against the balenaCloud emulator, the real `provision-azure` and the IoT
//! Hub emulator.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use provision_core::Cloud;
use provision_testkit::device::{Relay, ScratchDir};
use provision_testkit::device_chain::{Chain, stored_variable_names};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LONG: Duration = Duration::from_secs(60);

/// One HTTP/1.1 exchange, as iotedged makes it: (status, headers, JSON body or Null).
async fn exchange(
    to: &str,
    method: &str,
    path: &str,
) -> anyhow::Result<(u16, Vec<(String, String)>, Value)> {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let mut raw = Vec::new();
    if let Some(path) = to.strip_prefix("unix://") {
        let mut stream = tokio::net::UnixStream::connect(path).await?;
        stream.write_all(request.as_bytes()).await?;
        stream.read_to_end(&mut raw).await?;
    } else {
        let address = to.trim_start_matches("http://");
        let mut stream = tokio::net::TcpStream::connect(address).await?;
        stream.write_all(request.as_bytes()).await?;
        stream.read_to_end(&mut raw).await?;
    }
    let text = String::from_utf8(raw)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no end of headers in {text:?}"))?;
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("bad status line in {head:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok((
        status,
        headers,
        serde_json::from_str(body).unwrap_or(Value::Null),
    ))
}

async fn wait_for_socket(path: &std::path::Path) {
    let deadline = tokio::time::Instant::now() + LONG;
    while !path.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no socket at {}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_for_updates(chain: &Chain, more_than: usize) {
    let deadline = tokio::time::Instant::now() + LONG;
    while chain.supervisor.updates() <= more_than {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no supervisor refresh"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The certificate's thumbprints as IoT Hub takes them: uppercase hex SHA-1 and SHA-256.
fn thumbprints_of(pem: &str) -> [String; 2] {
    let der = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .unwrap()
        .1
        .contents;
    let hex = |d: aws_lc_rs::digest::Digest| {
        d.as_ref()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<String>()
    };
    [
        hex(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
            &der,
        )),
        hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der)),
    ]
}

/// Whether the hub holds this certificate for the device (primary or secondary slot).
fn registered(hub: &provision_emulators::iothub::IotHubEmulator, device: &str, pem: &str) -> bool {
    let (primary, secondary) = hub.thumbprints(device).unwrap_or_default();
    let ours = thumbprints_of(pem);
    [primary, secondary]
        .into_iter()
        .flatten()
        .any(|t| ours.contains(&t))
}

fn spki_of_certificate(pem: &str) -> Vec<u8> {
    let der = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .unwrap()
        .1
        .contents;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    cert.public_key().raw.to_vec()
}

fn spki_of_key(pem: &str) -> Vec<u8> {
    use rcgen::PublicKeyData as _;
    rcgen::KeyPair::from_pem(pem)
        .unwrap()
        .subject_public_key_info()
}

/// The payload mode over the Unix socket: 503 while provisioning, the registered certificate and
/// its key once the variables arrive, the socket's mode, 404/405, and a reprovisioning after
/// the device was deleted from the hub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iotedged_over_the_unix_socket() {
    let chain = Chain::start(Cloud::Azure).await.expect("chain starts");
    let socket_dir = ScratchDir::new("iotedge-socket").unwrap();
    let socket = socket_dir.0.join("external.sock");
    let url = format!("unix://{}", socket.display());
    let args = [
        "iotedge-provisioning",
        "--listen",
        url.as_str(),
        "--socket-mode",
        "600",
    ];
    let mut endpoint =
        Relay::start_with_args("iotedge", &args, &chain.env_with(&[]), &chain.logs).unwrap();
    wait_for_socket(&socket).await;
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the socket's mode");

    // Before provisioning: 503 with Retry-After, and the function asked once.
    for _ in 0..3 {
        let (status, headers, body) = exchange(&url, "GET", "/device/provisioninginformation")
            .await
            .unwrap();
        assert_eq!(status, 503, "{body}");
        assert!(headers.iter().any(|(k, v)| k == "retry-after" && v == "10"));
    }
    endpoint
        .wait_for_line("provisioning: created", LONG)
        .await
        .unwrap();
    wait_for_updates(&chain, 0).await;
    let asked = endpoint
        .lines()
        .iter()
        .filter(|l| l.contains("asking the function"))
        .count();
    assert_eq!(
        asked, 1,
        "the function is asked once, however often iotedged asks"
    );

    // The supervisor restarts it with the variables.
    endpoint.terminate().await.unwrap();
    endpoint
        .restart(&chain.env_with_variables(&[]).await)
        .unwrap();
    endpoint
        .wait_for_line("iotedge: listening", LONG)
        .await
        .unwrap();
    let (status, _, info) = exchange(&url, "GET", "/device/provisioninginformation")
        .await
        .unwrap();
    assert_eq!(status, 200, "{info}");
    let device = chain.device.uuid.clone();
    assert_eq!(info["hubName"], "localhost");
    assert_eq!(info["deviceId"], device.as_str());
    assert_eq!(info["status"], "assigned");
    assert_eq!(info["substatus"], "initialAssignment");
    assert_eq!(info["credentials"]["authType"], "x509");
    assert_eq!(info["credentials"]["source"], "payload");
    let decode = |field: &str| {
        String::from_utf8(
            STANDARD
                .decode(info["credentials"][field].as_str().unwrap())
                .unwrap(),
        )
        .unwrap()
    };
    let (cert, key) = (decode("identityCert"), decode("identityPrivateKey"));
    let hub = chain.iothub().unwrap();
    assert!(
        registered(hub, &device, &cert),
        "the certificate is the one the hub holds for the device"
    );
    assert_eq!(
        spki_of_certificate(&cert),
        spki_of_key(&key),
        "the key matches"
    );

    // Other paths and methods.
    let (status, headers, body) = exchange(&url, "POST", "/device/provisioninginformation")
        .await
        .unwrap();
    assert_eq!(status, 405, "{body}");
    assert!(headers.iter().any(|(k, v)| k == "allow" && v == "GET"));
    assert!(body["error"]["code"].is_string());
    let (status, _, body) = exchange(&url, "GET", "/nothing").await.unwrap();
    assert_eq!(status, 404);
    assert!(body["error"]["code"].is_string());

    // Someone deletes the device from the hub; iotedged asks for a reprovisioning.
    assert!(hub.remove_device(&device));
    let updates = chain.supervisor.updates();
    let (status, _, _) = exchange(&url, "POST", "/device/reprovision").await.unwrap();
    assert_eq!(status, 200);
    endpoint
        .wait_for_line("provisioning: repaired", LONG)
        .await
        .unwrap();
    wait_for_updates(&chain, updates).await;
    endpoint.terminate().await.unwrap();
    endpoint
        .restart(&chain.env_with_variables(&[]).await)
        .unwrap();
    endpoint
        .wait_for_line("iotedge: listening", LONG)
        .await
        .unwrap();
    let (status, _, info) = exchange(&url, "GET", "/device/provisioninginformation")
        .await
        .unwrap();
    assert_eq!(status, 200, "{info}");
    assert_eq!(
        info["substatus"], "deviceDataReset",
        "the change is reported"
    );
    let cert = String::from_utf8(
        STANDARD
            .decode(info["credentials"]["identityCert"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert!(registered(hub, &device, &cert), "registered again");

    // No secret in its log.
    for line in endpoint.lines() {
        assert!(!line.contains(&chain.device.key), "{line}");
        assert!(!line.contains("BEGIN"), "{line}");
        assert!(!line.contains(&chain.supervisor.api_key), "{line}");
    }
    endpoint.stop().await;
    chain.stop().await;
}

/// `PROVISION_KEEP_KEY=true` over TCP: `hsm` with the kept key's path and the certificate
/// written beside it (mode 0600), and no private key in balenaCloud.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iotedged_over_tcp_with_a_kept_key() {
    let chain = Chain::start(Cloud::Azure).await.expect("chain starts");
    let port = provision_testkit::process::free_port().unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let args = ["iotedge-provisioning", "--listen", url.as_str()];
    let keep = [("PROVISION_KEEP_KEY", "true")];
    let mut endpoint =
        Relay::start_with_args("iotedge", &args, &chain.env_with(&keep), &chain.logs).unwrap();
    endpoint
        .wait_for_line("iotedge: listening", LONG)
        .await
        .unwrap();
    let (status, _, _) = exchange(&url, "GET", "/device/provisioninginformation")
        .await
        .unwrap();
    assert_eq!(status, 503);
    endpoint
        .wait_for_line("provisioning: created", LONG)
        .await
        .unwrap();
    wait_for_updates(&chain, 0).await;
    let names = stored_variable_names(&chain).await;
    assert!(
        !names.iter().any(|n| n.ends_with("_PRIVATE_KEY")),
        "{names:?}"
    );
    endpoint.terminate().await.unwrap();
    endpoint
        .restart(&chain.env_with_variables(&keep).await)
        .unwrap();
    endpoint
        .wait_for_line("iotedge: listening", LONG)
        .await
        .unwrap();
    let (status, _, info) = exchange(&url, "GET", "/device/provisioninginformation")
        .await
        .unwrap();
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["credentials"]["source"], "hsm");
    use std::os::unix::fs::PermissionsExt as _;
    let cert_path = info["credentials"]["identityCert"].as_str().unwrap();
    let key_path = info["credentials"]["identityPrivateKey"].as_str().unwrap();
    for path in [cert_path, key_path] {
        let mode = std::fs::metadata(path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{path}");
    }
    let cert = std::fs::read_to_string(cert_path).unwrap();
    let key = std::fs::read_to_string(key_path).unwrap();
    assert_eq!(spki_of_certificate(&cert), spki_of_key(&key));
    assert!(registered(
        chain.iothub().unwrap(),
        &chain.device.uuid,
        &cert
    ));
    endpoint.stop().await;
    chain.stop().await;
}

//! The Azure IoT Hub registry emulator over HTTPS: with its CA trusted a client gets through
//! (by IP, by `localhost` and by the hub host name), without it the handshake fails.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use provision_emulators::iothub::{IotHubEmulator, Policy, sas_token};
use serde_json::{Value, json};

const HUB: &str = "provision-test.azure-devices.net";
const KEY: &str = "b3duZXIta2V5LWZvci10aGUtaW90aHViLXRlc3RzLi4=";
const API: &str = "api-version=2021-04-12";

fn token() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    sas_token(HUB, "iothubowner", KEY, now + 600)
}

async fn start() -> IotHubEmulator {
    IotHubEmulator::start(HUB, vec![Policy::new("iothubowner", KEY, true)])
        .await
        .expect("emulator starts")
}

fn trusting(emu: &IotHubEmulator) -> reqwest::ClientBuilder {
    let ca = reqwest::Certificate::from_pem(emu.ca_pem().as_bytes()).expect("CA PEM parses");
    reqwest::Client::builder().no_proxy().tls_certs_only([ca])
}

#[tokio::test]
async fn https_works_with_the_ca_trusted() {
    let emu = start().await;
    let tls_addr = SocketAddr::from(([127, 0, 0, 1], emu.tls_port()));
    let http = trusting(&emu)
        // The hub host resolves to the emulator: SNI and certificate check use the hub name.
        .resolve(HUB, tls_addr)
        .build()
        .expect("client");

    let base_by_name = format!("https://{HUB}:{}", emu.tls_port());
    let base_localhost = format!("https://localhost:{}", emu.tls_port());
    let put = http
        .put(format!("{}/devices/tls-1?{API}", emu.tls_url()))
        .header("authorization", token())
        .json(&json!({ "deviceId": "tls-1" }))
        .send()
        .await
        .expect("HTTPS by IP with the CA trusted");
    assert_eq!(put.status().as_u16(), 200);
    for base in [&base_by_name, &base_localhost, &emu.tls_url()] {
        let got = http
            .get(format!("{base}/devices/tls-1?{API}"))
            .header("authorization", token())
            .send()
            .await
            .unwrap_or_else(|e| panic!("HTTPS via {base}: {e:?}"));
        assert_eq!(got.status().as_u16(), 200, "{base}");
        let body: Value = got.json().await.expect("JSON");
        assert_eq!(body["deviceId"], "tls-1");
    }
    // The same state behind both ports.
    let plain = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .get(format!("{}/devices/tls-1?{API}", emu.url()))
        .header("authorization", token())
        .send()
        .await
        .expect("plain HTTP");
    assert_eq!(plain.status().as_u16(), 200);
    assert_eq!(emu.device_ids(), ["tls-1"]);
    assert!(emu.requests().iter().all(|r| r.status == 200));
    emu.shutdown().await;
}

#[tokio::test]
async fn https_fails_without_the_ca() {
    let emu = start().await;
    let other = start().await;
    let url = format!("{}/devices/x?{API}", emu.tls_url());

    // The platform's roots only.
    let default = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let err = default
        .get(&url)
        .header("authorization", token())
        .send()
        .await
        .expect_err("an untrusted certificate is refused");
    assert!(err.is_connect(), "{err:?}");

    // Another emulator's CA (each start makes its own).
    assert_ne!(emu.ca_pem(), other.ca_pem());
    let wrong_ca = trusting(&other).build().expect("client");
    let err = wrong_ca
        .get(&url)
        .header("authorization", token())
        .send()
        .await
        .expect_err("a certificate from another CA is refused");
    assert!(err.is_connect(), "{err:?}");

    // Plain HTTP to the TLS port is not served; a failed handshake does not stop the server.
    let plain = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let answer = plain
        .get(format!(
            "http://127.0.0.1:{}/devices/x?{API}",
            emu.tls_port()
        ))
        .send()
        .await;
    assert!(answer.is_err() || answer.is_ok_and(|r| !r.status().is_success()));
    let good = trusting(&emu)
        .build()
        .expect("client")
        .get(&url)
        .header("authorization", token())
        .send()
        .await
        .expect("still serving HTTPS");
    assert_eq!(good.status().as_u16(), 404);
    // Nothing but the last request reached the registry.
    let reqs = emu.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(reqs[0].status, 404);
}

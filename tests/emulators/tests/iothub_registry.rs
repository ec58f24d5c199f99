//! The Azure IoT Hub registry emulator over plain HTTP: create / read / replace / delete with the
//! hub's etag rules, body and id validation, SAS tokens and policy rights, the error format,
//! fault injection, malformed input, and the test hooks.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue};
use provision_emulators::iothub::{Fault, IotHubEmulator, Policy, sas_token};
use serde_json::{Value, json};

const HUB: &str = "provision-test.azure-devices.net";
const API: &str = "api-version=2021-04-12";
/// base64 of 32 bytes.
const OWNER_KEY: &str = "b3duZXIta2V5LWZvci10aGUtaW90aHViLXRlc3RzLi4=";
const READER_KEY: &str = "cmVhZGVyLWtleS1mb3ItdGhlLWlvdGh1Yi10ZXN0cy4=";
/// SHA-1 and SHA-256 thumbprints.
const TP1: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f9001122334";
const TP2: &str = "00112233445566778899AABBCCDDEEFF00112233445566778899AABBCCDDEEFF";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

struct Hub {
    emu: IotHubEmulator,
    http: reqwest::Client,
}

/// The answer to one request: status, headers and the JSON body (`Null` when empty).
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    /// The `ErrorCode:` of a hub error body, checking the rest of the error shape on the way.
    fn error_code(&self) -> String {
        let message = self.body["Message"]
            .as_str()
            .unwrap_or_else(|| panic!("no Message in {}", self.body));
        assert!(
            self.body["ExceptionMessage"]
                .as_str()
                .is_some_and(|m| m.starts_with("Tracking ID:") && m.contains("-TimeStamp:")),
            "{}",
            self.body
        );
        let code = message
            .strip_prefix("ErrorCode:")
            .and_then(|rest| rest.split_once(';'))
            .map(|(code, _)| code.to_string())
            .unwrap_or_else(|| panic!("Message is not ErrorCode:<code>;<text>: {message}"));
        assert_eq!(
            self.headers
                .get("iothub-errorcode")
                .and_then(|v| v.to_str().ok()),
            Some(code.as_str()),
            "iothub-errorcode header"
        );
        code
    }
}

impl Hub {
    async fn start() -> Hub {
        let emu = IotHubEmulator::start(
            HUB,
            vec![
                Policy::new("iothubowner", OWNER_KEY, true),
                Policy::new("registryRead", READER_KEY, false),
            ],
        )
        .await
        .expect("emulator starts");
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client");
        Hub { emu, http }
    }

    fn owner_token(&self) -> String {
        sas_token(HUB, "iothubowner", OWNER_KEY, now() + 3600)
    }

    /// Sends a request with `auth` as the Authorization header (`None`: no header).
    async fn send_as(
        &self,
        auth: Option<&str>,
        method: &str,
        path_and_query: &str,
        if_match: Option<&str>,
        body: Option<&[u8]>,
    ) -> Answer {
        let method = http::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self
            .http
            .request(method, format!("{}{path_and_query}", self.emu.url()));
        if let Some(auth) = auth {
            req = req.header("authorization", auth);
        }
        if let Some(tag) = if_match {
            req = req.header("if-match", tag);
        }
        if let Some(body) = body {
            req = req
                .header("content-type", "application/json; charset=utf-8")
                .body(body.to_vec());
        }
        let res = req.send().await.expect("request sent");
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let bytes = res.bytes().await.expect("body read");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!(
                    "answer is not JSON ({e}): {}",
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn send(
        &self,
        method: &str,
        path_and_query: &str,
        if_match: Option<&str>,
        body: Option<&Value>,
    ) -> Answer {
        let token = self.owner_token();
        let body = body.map(|b| b.to_string().into_bytes());
        self.send_as(
            Some(&token),
            method,
            path_and_query,
            if_match,
            body.as_deref(),
        )
        .await
    }

    async fn put(&self, id: &str, if_match: Option<&str>, body: &Value) -> Answer {
        self.send("PUT", &format!("/devices/{id}?{API}"), if_match, Some(body))
            .await
    }

    async fn get(&self, id: &str) -> Answer {
        self.send("GET", &format!("/devices/{id}?{API}"), None, None)
            .await
    }

    async fn delete(&self, id: &str, if_match: Option<&str>) -> Answer {
        self.send("DELETE", &format!("/devices/{id}?{API}"), if_match, None)
            .await
    }
}

fn self_signed(id: &str, primary: &str, secondary: Option<&str>) -> Value {
    json!({
        "deviceId": id,
        "status": "enabled",
        "authentication": {
            "type": "selfSigned",
            "x509Thumbprint": { "primaryThumbprint": primary, "secondaryThumbprint": secondary },
        },
    })
}

fn quoted(etag: &str) -> String {
    format!("\"{etag}\"")
}

#[tokio::test]
async fn create_read_replace_delete_follow_the_etag_rules() {
    let hub = Hub::start().await;
    let body = self_signed("dev-1", TP1, Some(TP2));

    // Create: no If-Match.
    let created = hub.put("dev-1", None, &body).await;
    assert_eq!(created.status, 200, "{}", created.body);
    let d = &created.body;
    assert_eq!(d["deviceId"], "dev-1");
    assert_eq!(d["status"], "enabled");
    assert_eq!(d["connectionState"], "Disconnected");
    assert_eq!(d["cloudToDeviceMessageCount"], 0);
    assert_eq!(d["capabilities"], json!({ "iotEdge": false }));
    assert_eq!(d["lastActivityTime"], "0001-01-01T00:00:00Z");
    assert!(d["statusUpdatedTime"].is_string());
    assert_eq!(d["authentication"]["type"], "selfSigned");
    assert_eq!(
        d["authentication"]["x509Thumbprint"]["primaryThumbprint"],
        TP1.to_uppercase()
    );
    assert_eq!(
        d["authentication"]["symmetricKey"],
        json!({ "primaryKey": null, "secondaryKey": null })
    );
    let etag1 = d["etag"].as_str().expect("etag").to_string();
    let generation = d["generationId"]
        .as_str()
        .expect("generationId")
        .to_string();
    assert!(!etag1.is_empty() && generation.chars().all(|c| c.is_ascii_digit()));
    assert_eq!(
        created.headers.get("etag").and_then(|v| v.to_str().ok()),
        Some(quoted(&etag1).as_str())
    );

    // Re-create: 409.
    let again = hub.put("dev-1", None, &body).await;
    assert_eq!(again.status, 409);
    assert_eq!(again.error_code(), "DeviceAlreadyExists");
    assert!(
        again.body["Message"]
            .as_str()
            .is_some_and(|m| m.contains("'dev-1'"))
    );

    // Read.
    let got = hub.get("dev-1").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, created.body);
    assert_eq!(hub.emu.device("dev-1"), Some(created.body.clone()));

    // Replace with a wrong etag: 412, nothing changes.
    let disabled = json!({
        "deviceId": "dev-1",
        "status": "disabled",
        "authentication": { "type": "selfSigned", "x509Thumbprint": { "primaryThumbprint": TP2 } },
    });
    let wrong = hub.put("dev-1", Some("\"bm90LWl0\""), &disabled).await;
    assert_eq!(wrong.status, 412);
    assert_eq!(wrong.error_code(), "PreconditionFailed");
    assert_eq!(hub.emu.device("dev-1"), Some(created.body.clone()));

    // Replace with the current etag (quoted): a new etag, the same generation.
    let replaced = hub.put("dev-1", Some(&quoted(&etag1)), &disabled).await;
    assert_eq!(replaced.status, 200, "{}", replaced.body);
    let etag2 = replaced.body["etag"].as_str().expect("etag").to_string();
    assert_ne!(etag2, etag1);
    assert_eq!(replaced.body["generationId"], generation.as_str());
    assert_eq!(replaced.body["status"], "disabled");
    assert_ne!(
        replaced.body["statusUpdatedTime"],
        created.body["statusUpdatedTime"]
    );
    assert_eq!(
        hub.emu.thumbprints("dev-1"),
        Some((Some(TP2.to_string()), None))
    );

    // The old etag no longer matches; `*` and an unquoted current etag do.
    let stale = hub.put("dev-1", Some(&quoted(&etag1)), &body).await;
    assert_eq!(stale.status, 412);
    let star = hub.put("dev-1", Some("*"), &body).await;
    assert_eq!(star.status, 200);
    let etag3 = star.body["etag"].as_str().expect("etag").to_string();
    assert_ne!(etag3, etag2);
    let unquoted = hub.put("dev-1", Some(&etag3), &body).await;
    assert_eq!(unquoted.status, 200);
    let etag4 = unquoted.body["etag"].as_str().expect("etag").to_string();

    // Replace of a device that does not exist: 404.
    let missing = hub
        .put("nobody", Some("*"), &self_signed("nobody", TP1, None))
        .await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.error_code(), "DeviceNotFound");
    assert!(hub.emu.device("nobody").is_none());

    // Delete needs If-Match (400 without, as the REST reference says), then checks it.
    let bare = hub.delete("dev-1", None).await;
    assert_eq!(bare.status, 400);
    assert_eq!(bare.error_code(), "ArgumentInvalid");
    let mismatch = hub.delete("dev-1", Some(&quoted(&etag3))).await;
    assert_eq!(mismatch.status, 412);
    assert_eq!(mismatch.error_code(), "PreconditionFailed");
    assert!(hub.emu.device("dev-1").is_some());
    let deleted = hub.delete("dev-1", Some(&quoted(&etag4))).await;
    assert_eq!(deleted.status, 204);
    assert_eq!(deleted.body, Value::Null);
    let after = hub.get("dev-1").await;
    assert_eq!(after.status, 404);
    assert_eq!(after.error_code(), "DeviceNotFound");
    let twice = hub.delete("dev-1", Some("*")).await;
    assert_eq!(twice.status, 404);
    assert_eq!(twice.error_code(), "DeviceNotFound");

    // Delete with `"*"` (what azure-iothub sends) and with a bare `*`.
    for star in ["\"*\"", "*"] {
        assert_eq!(hub.put("dev-1", None, &body).await.status, 200);
        assert_eq!(hub.delete("dev-1", Some(star)).await.status, 204);
    }
    assert!(hub.emu.device_ids().is_empty());

    // Etags are fresh per write, also across delete and re-create.
    let recreated = hub.put("dev-1", None, &body).await;
    assert_ne!(recreated.body["etag"], created.body["etag"]);
    assert_ne!(recreated.body["generationId"], generation.as_str());
}

#[tokio::test]
async fn sas_devices_get_generated_keys_and_keep_them() {
    let hub = Hub::start().await;

    // What azure-iothub sends for a device without authentication.
    let generated = hub
        .put(
            "sas-1",
            None,
            &json!({
                "deviceId": "sas-1",
                "authentication": { "type": "sas", "symmetricKey": { "primaryKey": "", "secondaryKey": "" } },
            }),
        )
        .await;
    assert_eq!(generated.status, 200, "{}", generated.body);
    let keys = generated.body["authentication"]["symmetricKey"].clone();
    for which in ["primaryKey", "secondaryKey"] {
        assert!(
            keys[which].as_str().is_some_and(|k| k.len() >= 24),
            "{keys}"
        );
    }
    assert_ne!(keys["primaryKey"], keys["secondaryKey"]);
    assert_eq!(
        generated.body["authentication"]["x509Thumbprint"],
        json!({ "primaryThumbprint": null, "secondaryThumbprint": null })
    );

    // No authentication at all: sas as well.
    let bare = hub
        .put("sas-2", None, &json!({ "deviceId": "sas-2" }))
        .await;
    assert_eq!(bare.status, 200);
    assert_eq!(bare.body["authentication"]["type"], "sas");

    // A replace without keys keeps them; given keys are stored.
    let kept = hub
        .put(
            "sas-1",
            Some("*"),
            &json!({ "deviceId": "sas-1", "status": "disabled" }),
        )
        .await;
    assert_eq!(kept.status, 200);
    assert_eq!(kept.body["authentication"]["symmetricKey"], keys);
    let mine = json!({
        "primaryKey": "cHJpbWFyeS1rZXktMDEyMzQ1Njc4OWFiY2RlZg==",
        "secondaryKey": "c2Vjb25kYXJ5LWtleS0wMTIzNDU2Nzg5YWJjZA==",
    });
    let given = hub
        .put(
            "sas-1",
            Some("*"),
            &json!({ "deviceId": "sas-1", "authentication": { "type": "sas", "symmetricKey": mine } }),
        )
        .await;
    assert_eq!(given.status, 200, "{}", given.body);
    assert_eq!(given.body["authentication"]["symmetricKey"], mine);

    // One key only, or keys that are not base64 of 16 to 64 bytes: 400.
    for symmetric in [
        json!({ "primaryKey": "cHJpbWFyeS1rZXktMDEyMzQ1Njc4OWFiY2RlZg==" }),
        json!({ "primaryKey": "c2hvcnQ=", "secondaryKey": "c2hvcnQ=" }),
        json!({ "primaryKey": "not base64!", "secondaryKey": "not base64!" }),
    ] {
        let bad = hub
            .put(
                "sas-3",
                None,
                &json!({ "deviceId": "sas-3", "authentication": { "type": "sas", "symmetricKey": symmetric } }),
            )
            .await;
        assert_eq!(bad.status, 400, "{symmetric}");
        assert_eq!(bad.error_code(), "ArgumentInvalid");
    }
    assert!(hub.emu.device("sas-3").is_none());
}

#[tokio::test]
async fn thumbprints_are_sha1_or_sha256_hex_and_stored_uppercase() {
    let hub = Hub::start().await;

    let ok = hub
        .put("x1", None, &self_signed("x1", TP1, Some(TP2)))
        .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(
        hub.emu.thumbprints("x1"),
        Some((Some(TP1.to_uppercase()), Some(TP2.to_string())))
    );
    // The type is inferred from thumbprints when absent (as the SDKs do).
    let inferred = hub
        .put(
            "x2",
            None,
            &json!({ "deviceId": "x2", "authentication": { "x509Thumbprint": { "primaryThumbprint": TP2 } } }),
        )
        .await;
    assert_eq!(inferred.status, 200);
    assert_eq!(inferred.body["authentication"]["type"], "selfSigned");
    assert_eq!(hub.emu.thumbprints("nobody"), None);

    let bad_bodies = [
        self_signed("x3", &TP1[..39], None),
        self_signed("x3", &format!("{TP1}0"), None),
        self_signed("x3", &"g".repeat(40), None),
        self_signed("x3", &"A".repeat(128), None),
        self_signed("x3", "AB:CD:EF", None),
        self_signed("x3", TP1, Some("1234")),
        // selfSigned needs a primary thumbprint.
        self_signed("x3", "", Some(TP1)),
        json!({ "deviceId": "x3", "authentication": { "type": "selfSigned" } }),
        // sas cannot have thumbprints, selfSigned cannot have keys.
        json!({ "deviceId": "x3", "authentication": { "type": "sas", "x509Thumbprint": { "primaryThumbprint": TP1 } } }),
        json!({ "deviceId": "x3", "authentication": { "type": "selfSigned",
            "x509Thumbprint": { "primaryThumbprint": TP1 },
            "symmetricKey": { "primaryKey": "cHJpbWFyeS1rZXktMDEyMzQ1Njc4OWFiY2RlZg==", "secondaryKey": "cHJpbWFyeS1rZXktMDEyMzQ1Njc4OWFiY2RlZg==" } } }),
        json!({ "deviceId": "x3", "authentication": { "type": "certificateAuthority", "x509Thumbprint": { "primaryThumbprint": TP1 } } }),
        json!({ "deviceId": "x3", "authentication": { "type": "kerberos" } }),
        json!({ "deviceId": "x3", "authentication": { "type": "selfSigned", "x509Thumbprint": { "primaryThumbprint": 42 } } }),
    ];
    for body in &bad_bodies {
        let bad = hub.put("x3", None, body).await;
        assert_eq!(bad.status, 400, "{body}");
        assert_eq!(bad.error_code(), "ArgumentInvalid", "{body}");
    }
    assert!(hub.emu.device("x3").is_none());

    let ca = hub
        .put(
            "x4",
            None,
            &json!({ "deviceId": "x4", "authentication": { "type": "certificateAuthority" } }),
        )
        .await;
    assert_eq!(ca.status, 200);
    assert_eq!(hub.emu.thumbprints("x4"), Some((None, None)));
}

#[tokio::test]
async fn device_ids_paths_and_bodies_are_validated() {
    let hub = Hub::start().await;
    let device = |id: &str| json!({ "deviceId": id });

    // Ids are case-sensitive and percent-encoded in the path.
    assert_eq!(hub.put("Dev", None, &device("Dev")).await.status, 200);
    assert_eq!(hub.put("dev", None, &device("dev")).await.status, 200);
    assert_eq!(hub.get("DEV").await.status, 404);
    let special = "a:b@c$d'(e)!*,=%_.-?";
    let encoded: String = special
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let put = hub.put(&encoded, None, &device(special)).await;
    assert_eq!(put.status, 200, "{}", put.body);
    assert_eq!(hub.get(&encoded).await.body["deviceId"], special);
    let long = "a".repeat(128);
    assert_eq!(hub.put(&long, None, &device(&long)).await.status, 200);
    let mut ids = hub.emu.device_ids();
    ids.sort();
    let mut expected = vec![
        "Dev".to_string(),
        "dev".to_string(),
        special.to_string(),
        long.clone(),
    ];
    expected.sort();
    assert_eq!(ids, expected);

    // Invalid ids, an id that disagrees with the body, broken escapes, bodies that are not a
    // device: 400 ArgumentInvalid.
    let too_long = "a".repeat(129);
    for (path_id, body) in [
        ("a%20b", device("a b")),
        ("a%2Fb", device("a/b")),
        ("%C3%A9", device("é")),
        (too_long.as_str(), device(&too_long)),
        ("%zz", device("%zz")),
        ("%", device("%")),
        ("%FF", device("x")),
        ("dev-2", device("dev-3")),
        ("dev-2", device("DEV-2")),
        ("dev-2", json!({ "status": "enabled" })),
        ("dev-2", json!({ "deviceId": 2 })),
        ("dev-2", json!(["dev-2"])),
        ("dev-2", json!({ "deviceId": "dev-2", "status": "paused" })),
        (
            "dev-2",
            json!({ "deviceId": "dev-2", "authentication": [] }),
        ),
        (
            "dev-2",
            json!({ "deviceId": "dev-2", "capabilities": { "iotEdge": "yes" } }),
        ),
    ] {
        let bad = hub.put(path_id, None, &body).await;
        assert_eq!(bad.status, 400, "{path_id} {body}");
        assert_eq!(bad.error_code(), "ArgumentInvalid");
    }
    for raw in [&b""[..], b"{", b"null", b"\"dev-2\"", &[0xff, 0xfe, 0x00]] {
        let token = hub.owner_token();
        let bad = hub
            .send_as(
                Some(&token),
                "PUT",
                &format!("/devices/dev-2?{API}"),
                None,
                Some(raw),
            )
            .await;
        assert_eq!(bad.status, 400, "{raw:?}");
    }
    assert_eq!(hub.get("a%20b").await.status, 400);
    assert_eq!(hub.delete("%zz", Some("*")).await.status, 400);

    // Server-owned fields in a body are ignored (the SDKs send the whole Device back).
    let mut whole = hub.get("dev").await.body;
    whole["status"] = json!("Disabled");
    whole["etag"] = json!("made-up");
    whole["connectionState"] = json!("Connected");
    whole["cloudToDeviceMessageCount"] = json!("7");
    let replaced = hub.put("dev", Some("*"), &whole).await;
    assert_eq!(replaced.status, 200, "{}", replaced.body);
    assert_eq!(replaced.body["status"], "disabled");
    assert_eq!(replaced.body["connectionState"], "Disconnected");
    assert_ne!(replaced.body["etag"], "made-up");

    // Other resources and methods.
    for (method, path, status) in [
        ("GET", format!("/devices/dev/twin?{API}"), 404),
        ("GET", format!("/twins/dev?{API}"), 404),
        ("GET", format!("/?{API}"), 404),
        ("POST", format!("/devices/dev?{API}"), 405),
        ("PATCH", format!("/devices/dev?{API}"), 405),
        ("DELETE", format!("/devices?{API}"), 405),
    ] {
        let answer = hub.send(method, &path, Some("*"), None).await;
        assert_eq!(answer.status, status, "{method} {path}");
        answer.error_code();
    }
}

#[tokio::test]
async fn api_version_is_required_and_must_be_known() {
    let hub = Hub::start().await;
    for query in [
        "",
        "?api-version=",
        "?api-version=2099-01-01",
        "?top=1",
        "?api-version=2021-04-12&api-version=2021-04-12",
        "?api-version=%zz",
    ] {
        let answer = hub
            .send("GET", &format!("/devices/dev{query}"), None, None)
            .await;
        assert_eq!(answer.status, 400, "{query}");
        let code = answer.error_code();
        assert!(
            code == "InvalidProtocolVersion" || code == "ArgumentInvalid",
            "{query}: {code}"
        );
    }
    for version in ["2020-09-30", "2021-04-12"] {
        let answer = hub
            .send(
                "GET",
                &format!("/devices/dev?api-version={version}"),
                None,
                None,
            )
            .await;
        assert_eq!(answer.status, 404, "{version}");
    }
}

#[tokio::test]
async fn listing_devices() {
    let hub = Hub::start().await;
    for id in ["c", "a", "b"] {
        assert_eq!(
            hub.put(id, None, &json!({ "deviceId": id })).await.status,
            200
        );
    }
    let all = hub
        .send("GET", &format!("/devices/?{API}"), None, None)
        .await;
    assert_eq!(all.status, 200);
    let ids: Vec<&str> = all
        .body
        .as_array()
        .expect("an array")
        .iter()
        .filter_map(|d| d["deviceId"].as_str())
        .collect();
    assert_eq!(ids, ["a", "b", "c"]);
    let two = hub
        .send("GET", &format!("/devices?top=2&{API}"), None, None)
        .await;
    assert_eq!(two.body.as_array().map(Vec::len), Some(2));
    for top in ["0", "1001", "-1", "two"] {
        let bad = hub
            .send("GET", &format!("/devices?top={top}&{API}"), None, None)
            .await;
        assert_eq!(bad.status, 400, "top={top}");
    }
}

#[tokio::test]
async fn shared_access_signatures_and_policy_rights() {
    let hub = Hub::start().await;
    let path = format!("/devices/dev?{API}");
    let device = json!({ "deviceId": "dev" }).to_string().into_bytes();
    let later = now() + 600;

    // A good token: the request is served (here: no such device yet).
    let good = sas_token(HUB, "iothubowner", OWNER_KEY, later);
    let answer = hub.send_as(Some(&good), "GET", &path, None, None).await;
    assert_eq!(answer.status, 404);
    assert_eq!(answer.error_code(), "DeviceNotFound");

    // Fields in any order; `sr` may be a resource under the hub, in any case.
    let fields: Vec<&str> = good
        .trim_start_matches("SharedAccessSignature ")
        .split('&')
        .collect();
    let reversed = format!(
        "SharedAccessSignature {}",
        fields.iter().rev().copied().collect::<Vec<_>>().join("&")
    );
    assert_eq!(
        hub.send_as(Some(&reversed), "GET", &path, None, None)
            .await
            .status,
        404
    );
    let under = sas_token(
        &format!("{}/devices", HUB.to_uppercase()),
        "iothubowner",
        OWNER_KEY,
        later,
    );
    assert_eq!(
        hub.send_as(Some(&under), "GET", &path, None, None)
            .await
            .status,
        404
    );

    // Refused: 401 IotHubUnauthorizedAccess, nothing served.
    let refused = [
        (
            "wrong key",
            Some(sas_token(HUB, "iothubowner", READER_KEY, later)),
        ),
        (
            "key not base64",
            Some(sas_token(HUB, "iothubowner", "not-base64!", later)),
        ),
        (
            "unknown policy",
            Some(sas_token(HUB, "service", OWNER_KEY, later)),
        ),
        (
            "expired",
            Some(sas_token(HUB, "iothubowner", OWNER_KEY, now() - 1)),
        ),
        (
            "expires now",
            Some(sas_token(HUB, "iothubowner", OWNER_KEY, now())),
        ),
        (
            "another hub",
            Some(sas_token(
                "other.azure-devices.net",
                "iothubowner",
                OWNER_KEY,
                later,
            )),
        ),
        (
            "a host that only starts with the hub's",
            Some(sas_token(
                &format!("{HUB}.example.com"),
                "iothubowner",
                OWNER_KEY,
                later,
            )),
        ),
        (
            "se changed after signing",
            Some(good.replace(&format!("se={later}"), &format!("se={}", later + 1))),
        ),
        ("no header", None),
        ("another scheme", Some(format!("Bearer {OWNER_KEY}"))),
        ("no skn", Some(good.replace("&skn=iothubowner", ""))),
        ("duplicate field", Some(format!("{good}&skn=iothubowner"))),
        ("unknown field", Some(format!("{good}&x=1"))),
        (
            "se not a number",
            Some(good.replace(&format!("se={later}"), "se=soon")),
        ),
    ];
    for (what, token) in &refused {
        for (method, if_match) in [("GET", None), ("PUT", None), ("DELETE", Some("*"))] {
            let body = (method == "PUT").then_some(device.as_slice());
            let answer = hub
                .send_as(token.as_deref(), method, &path, if_match, body)
                .await;
            assert_eq!(answer.status, 401, "{what}: {method}");
            assert_eq!(answer.error_code(), "IotHubUnauthorizedAccess");
            assert_eq!(
                answer.body["Message"],
                "ErrorCode:IotHubUnauthorizedAccess;Unauthorized"
            );
        }
    }
    assert!(hub.emu.device_ids().is_empty());

    // A policy without registry write: reads, but PUT and DELETE are 401.
    let reader = sas_token(HUB, "registryRead", READER_KEY, later);
    assert_eq!(
        hub.send_as(Some(&reader), "PUT", &path, None, Some(&device))
            .await
            .status,
        401
    );
    assert!(hub.emu.device("dev").is_none());
    assert_eq!(
        hub.put("dev", None, &json!({ "deviceId": "dev" }))
            .await
            .status,
        200
    );
    let read = hub.send_as(Some(&reader), "GET", &path, None, None).await;
    assert_eq!(read.status, 200);
    let delete = hub
        .send_as(Some(&reader), "DELETE", &path, Some("*"), None)
        .await;
    assert_eq!(delete.status, 401);
    assert_eq!(delete.error_code(), "IotHubUnauthorizedAccess");
    assert!(hub.emu.device("dev").is_some());

    // The record names the policy of every valid token (also when its rights were short).
    let reqs = hub.emu.requests();
    assert!(reqs.iter().all(|r| r.policy.is_some() || r.status == 401));
    let reader_statuses: Vec<(&str, u16)> = reqs
        .iter()
        .filter(|r| r.policy.as_deref() == Some("registryRead"))
        .map(|r| (r.method.as_str(), r.status))
        .collect();
    assert_eq!(
        reader_statuses,
        [("PUT", 401), ("GET", 200), ("DELETE", 401)]
    );
}

#[tokio::test]
async fn connection_strings_name_the_hub_and_policy() {
    let hub = Hub::start().await;
    assert_eq!(hub.emu.hub_host(), HUB);
    assert_eq!(
        hub.emu.connection_string("iothubowner"),
        format!("HostName={HUB};SharedAccessKeyName=iothubowner;SharedAccessKey={OWNER_KEY}")
    );
    assert!(hub.emu.url().starts_with("http://127.0.0.1:"));
    assert_eq!(
        hub.emu.tls_url(),
        format!("https://127.0.0.1:{}", hub.emu.tls_port())
    );
    assert_ne!(hub.emu.port(), hub.emu.tls_port());
    assert!(hub.emu.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));

    assert!(
        IotHubEmulator::start(HUB, vec![]).await.is_err(),
        "no policies"
    );
    assert!(
        IotHubEmulator::start(HUB, vec![Policy::new("p", "not base64!", true)])
            .await
            .is_err()
    );
    assert!(
        IotHubEmulator::start("host:443", vec![Policy::new("p", OWNER_KEY, true)])
            .await
            .is_err()
    );
}

#[tokio::test]
async fn injected_faults_answer_the_hubs_errors_with_retry_after() {
    let hub = Hub::start().await;
    let body = json!({ "deviceId": "f1" });

    hub.emu.inject_fault(
        Fault::new(429)
            .method("PUT")
            .path("/devices/f1?")
            .retry_after(2)
            .times(2)
            .skip(1),
    );
    // Another path and method are not affected; the first matching request is skipped.
    assert_eq!(hub.get("f1").await.status, 404);
    assert_eq!(
        hub.put("f2", None, &json!({ "deviceId": "f2" }))
            .await
            .status,
        200
    );
    assert_eq!(hub.put("f1", None, &body).await.status, 200);
    for _ in 0..2 {
        let throttled = hub.put("f1", Some("*"), &body).await;
        assert_eq!(throttled.status, 429);
        assert_eq!(throttled.error_code(), "ThrottlingException");
        assert_eq!(
            throttled
                .headers
                .get("retry-after")
                .and_then(|v| v.to_str().ok()),
            Some("2")
        );
    }
    assert_eq!(hub.put("f1", Some("*"), &body).await.status, 200);

    // Faults apply before authentication, and clear_faults removes them.
    hub.emu.inject_fault(Fault::new(503).times(5));
    let unavailable = hub.send_as(None, "GET", "/anything", None, None).await;
    assert_eq!(unavailable.status, 503);
    assert_eq!(unavailable.error_code(), "ServiceUnavailable");
    assert!(unavailable.headers.get("retry-after").is_none());
    hub.emu.clear_faults();
    assert_eq!(hub.get("f1").await.status, 200);

    let statuses: Vec<(String, u16)> = hub
        .emu
        .requests()
        .iter()
        .map(|r| (r.method.clone(), r.status))
        .collect();
    assert_eq!(
        statuses,
        [
            ("GET".into(), 404),
            ("PUT".into(), 200),
            ("PUT".into(), 200),
            ("PUT".into(), 429),
            ("PUT".into(), 429),
            ("PUT".into(), 200),
            ("GET".into(), 503),
            ("GET".into(), 200),
        ]
    );
    hub.emu.clear_requests();
    assert!(hub.emu.requests().is_empty());
}

#[tokio::test]
async fn latency_and_the_request_record() {
    let hub = Hub::start().await;
    hub.emu.set_latency(Duration::from_millis(150));
    let t = Instant::now();
    assert_eq!(
        hub.put("r%3A1", None, &json!({ "deviceId": "r:1" }))
            .await
            .status,
        200
    );
    assert!(t.elapsed() >= Duration::from_millis(150));
    hub.emu.set_latency(Duration::ZERO);
    assert_eq!(hub.delete("r%3A1", Some("\"*\"")).await.status, 204);

    let reqs = hub.emu.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].method, "PUT");
    assert_eq!(reqs[0].path_and_query, format!("/devices/r%3A1?{API}"));
    assert_eq!(reqs[0].device_id.as_deref(), Some("r:1"));
    assert_eq!(reqs[0].policy.as_deref(), Some("iothubowner"));
    assert_eq!(reqs[0].if_match, None);
    assert!(reqs[0].finished.duration_since(reqs[0].started) >= Duration::from_millis(150));
    assert_eq!(reqs[1].if_match.as_deref(), Some("\"*\""));
    assert_eq!(reqs[1].status, 204);
}

#[tokio::test]
async fn malformed_input_is_a_4xx_and_never_breaks_the_server() {
    let hub = Hub::start().await;
    let token = hub.owner_token();
    assert_eq!(
        hub.put("ok", None, &json!({ "deviceId": "ok" }))
            .await
            .status,
        200
    );

    let paths = [
        format!("/devices/ok?{API}&top=%"),
        format!("/devices/%00?{API}"),
        format!("/devices/%E2%82?{API}"),
        format!("/devices//?{API}"),
        format!("/devices/ok/?{API}"),
        format!("/devices/..%2F..?{API}"),
        format!("/devices?{API}&top=99999999999999999999999"),
        "/devices/ok?api-version=2021-04-12%".to_string(),
        format!("/devices/{}?{API}", "%41".repeat(200)),
    ];
    let bodies: [&[u8]; 8] = [
        b"{\"deviceId\": \"ok\", \"status\": null, \"authentication\": null}",
        b"{\"deviceId\": \"ok\", \"authentication\": {\"symmetricKey\": 5}}",
        b"{\"deviceId\": \"ok\", \"authentication\": {\"x509Thumbprint\": []}}",
        b"{\"deviceId\": \"ok\", \"statusReason\": {}}",
        b"{\"deviceId\": \"ok\"",
        b"\x00\x01\x02",
        b"{\"deviceId\": \"ok\", \"deviceId\": \"other\"}",
        b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
    ];
    let if_matches = [
        None,
        Some(""),
        Some("\""),
        Some("W/"),
        Some("\"*"),
        Some("*, *"),
        Some("  "),
    ];
    for method in ["GET", "PUT", "DELETE", "POST", "OPTIONS"] {
        for path in &paths {
            for body in bodies
                .iter()
                .take(if method == "PUT" { bodies.len() } else { 1 })
            {
                for if_match in if_matches {
                    let answer = hub
                        .send_as(Some(&token), method, path, if_match, Some(body))
                        .await;
                    assert!(
                        (400..500).contains(&answer.status) || answer.status == 200,
                        "{method} {path} {if_match:?}: {}",
                        answer.status
                    );
                }
            }
        }
    }
    // Headers that are not text.
    let req = hub
        .http
        .get(format!("{}/devices/ok?{API}", hub.emu.url()))
        .header(
            "authorization",
            HeaderValue::from_bytes(b"SharedAccessSignature \xff\xfe").expect("header"),
        )
        .send()
        .await
        .expect("sent");
    assert_eq!(req.status().as_u16(), 400);
    let req = hub
        .http
        .delete(format!("{}/devices/ok?{API}", hub.emu.url()))
        .header("authorization", &token)
        .header(
            "if-match",
            HeaderValue::from_bytes(b"\"\xe9\"").expect("header"),
        )
        .send()
        .await
        .expect("sent");
    assert_eq!(req.status().as_u16(), 400);
    // A body over the limit.
    let huge = vec![b' '; 2 * 1024 * 1024];
    let answer = hub
        .send_as(
            Some(&token),
            "PUT",
            &format!("/devices/ok?{API}"),
            Some("*"),
            Some(&huge),
        )
        .await;
    assert_eq!(answer.status, 413);

    // Still serving, and the device is intact.
    let ok = hub.get("ok").await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.body["deviceId"], "ok");
    assert_eq!(hub.emu.device_ids(), ["ok"]);
}

#[tokio::test]
async fn seeding_and_clones_and_shutdown() {
    let hub = Hub::start().await;
    let seeded = hub.emu.seed_device(self_signed("seeded", TP1, None));
    assert_eq!(seeded["authentication"]["type"], "selfSigned");
    assert_eq!(hub.get("seeded").await.body, seeded);

    let clone = hub.emu.clone();
    drop(clone);
    assert_eq!(
        hub.get("seeded").await.status,
        200,
        "a dropped clone does not stop it"
    );

    let url = hub.emu.url();
    let tls_port = hub.emu.tls_port();
    hub.emu.clone().shutdown().await;
    let refused = hub
        .http
        .get(format!("{url}/devices/seeded?{API}"))
        .send()
        .await;
    assert!(refused.is_err(), "the HTTP server stopped");
    // The HTTPS accept loop is aborted when its server stops; give the runtime a moment.
    let deadline = Instant::now() + Duration::from_secs(2);
    while tokio::net::TcpStream::connect(("127.0.0.1", tls_port))
        .await
        .is_ok()
    {
        assert!(Instant::now() < deadline, "the HTTPS server stopped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

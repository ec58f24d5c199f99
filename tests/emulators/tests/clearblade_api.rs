//! The ClearBlade IoT Core emulator over HTTP (and HTTPS with its CA): the registry-credentials
//! exchange, device create / get / patch / list / delete in Cloud IoT's JSON, id and key
//! validation, tokens, the Google-style error shapes, fault injection and the test hooks.

use base64::Engine as _;
use provision_emulators::clearblade::{ClearBladeEmulator, Fault};
use serde_json::{Value, json};

const PROJECT: &str = "provision-test";
const REGION: &str = "us-central1";
const REGISTRY: &str = "balena-devices";
const OTHER_REGION: &str = "europe-west1";
const OTHER_REGISTRY: &str = "other-devices";

/// The answer to one request: status, `Retry-After` and the JSON body (`Null` when empty).
struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: Value,
}

impl Answer {
    /// The `status` of a Google-style error, checking the rest of its shape on the way.
    fn error_status(&self) -> String {
        let error = &self.body["error"];
        assert_eq!(
            error["code"].as_u64(),
            Some(u64::from(self.status)),
            "error.code is the HTTP status: {}",
            self.body
        );
        assert!(error["message"].is_string(), "{}", self.body);
        error["status"]
            .as_str()
            .unwrap_or_else(|| panic!("no error.status in {}", self.body))
            .to_string()
    }
}

struct Cb {
    emu: ClearBladeEmulator,
    http: reqwest::Client,
    /// The registry's system key and token (from the emulator, not over HTTP).
    key: String,
    token: String,
}

impl Cb {
    async fn start() -> Cb {
        let emu = ClearBladeEmulator::start(
            PROJECT,
            &[(REGION, REGISTRY), (OTHER_REGION, OTHER_REGISTRY)],
        )
        .await
        .expect("emulator starts");
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client");
        let (key, token) = emu
            .registry_credentials(REGION, REGISTRY)
            .expect("registry served");
        Cb {
            emu,
            http,
            key,
            token,
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Answer {
        let res = req.send().await.expect("request sent");
        let status = res.status().as_u16();
        let retry_after = res
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = res.text().await.expect("body read");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
        };
        Answer {
            status,
            retry_after,
            body,
        }
    }

    fn credentials_url(&self, system_key: &str) -> String {
        format!(
            "{}/api/v/1/code/{system_key}/getRegistryCredentials",
            self.emu.url()
        )
    }

    async fn exchange(&self, token: Option<&str>, body: Value) -> Answer {
        let mut req = self
            .http
            .post(self.credentials_url(&self.emu.admin_system_key()))
            .json(&body);
        if let Some(t) = token {
            req = req.header("ClearBlade-UserToken", t);
        }
        self.send(req).await
    }

    fn devices_url(&self, key: &str, query: &str) -> String {
        let base = format!(
            "{}/api/v/4/webhook/execute/{key}/cloudiot_devices",
            self.emu.url()
        );
        if query.is_empty() {
            base
        } else {
            format!("{base}?{query}")
        }
    }

    /// A request to this registry's `cloudiot_devices` with its token; `query` is sent as is.
    fn devices(&self, method: reqwest::Method, query: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.devices_url(&self.key, query))
            .header("ClearBlade-UserToken", &self.token)
    }

    fn path(&self, id: &str) -> String {
        self.emu.device_path(REGION, REGISTRY, id)
    }

    async fn create(&self, device: Value) -> Answer {
        self.send(self.devices(reqwest::Method::POST, "").json(&device))
            .await
    }

    async fn get(&self, id: &str) -> Answer {
        let query = format!("name={}", self.path(id));
        self.send(self.devices(reqwest::Method::GET, &query)).await
    }

    async fn patch(&self, id: &str, mask: &str, device: Value) -> Answer {
        let query = format!("name={}&updateMask={mask}", self.path(id));
        self.send(self.devices(reqwest::Method::PATCH, &query).json(&device))
            .await
    }

    async fn delete(&self, id: &str) -> Answer {
        let query = format!("name={}", self.path(id));
        self.send(self.devices(reqwest::Method::DELETE, &query))
            .await
    }
}

fn ec_key() -> String {
    rcgen::KeyPair::generate()
        .expect("P-256 key")
        .public_key_pem()
}

fn cred(format: &str, key: &str) -> Value {
    json!({ "publicKey": { "format": format, "key": key } })
}

#[tokio::test]
async fn the_credentials_exchange_answers_the_registry_key_token_and_url() {
    let cb = Cb::start().await;
    let body = json!({ "region": REGION, "registry": REGISTRY, "project": PROJECT });
    let ok = cb.exchange(Some(&cb.emu.admin_token()), body.clone()).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.body["systemKey"], json!(cb.key));
    assert_eq!(ok.body["serviceAccountToken"], json!(cb.token));
    assert_eq!(ok.body["url"], json!(cb.emu.url()));
    assert_eq!(ok.body.as_object().map(|o| o.len()), Some(3), "{}", ok.body);

    // Each registry has its own key and token.
    let other = cb
        .exchange(
            Some(&cb.emu.admin_token()),
            json!({ "region": OTHER_REGION, "registry": OTHER_REGISTRY, "project": PROJECT }),
        )
        .await;
    assert_eq!(other.status, 200);
    assert_ne!(other.body["systemKey"], ok.body["systemKey"]);
    assert_ne!(
        other.body["serviceAccountToken"],
        ok.body["serviceAccountToken"]
    );

    // Wrong or missing token, or the admin call under another system key: 401.
    for token in [Some("not-the-token"), None, Some(cb.token.as_str())] {
        let refused = cb.exchange(token, body.clone()).await;
        assert_eq!(refused.status, 401, "{token:?}");
        assert_eq!(refused.error_status(), "UNAUTHENTICATED");
    }
    let wrong_system = cb
        .send(
            cb.http
                .post(cb.credentials_url(&cb.key))
                .header("ClearBlade-UserToken", cb.emu.admin_token())
                .json(&body),
        )
        .await;
    assert_eq!(wrong_system.status, 401);

    // Unknown registry, region or project: 404.
    for unknown in [
        json!({ "region": REGION, "registry": "nope-registry", "project": PROJECT }),
        json!({ "region": OTHER_REGION, "registry": REGISTRY, "project": PROJECT }),
        json!({ "region": REGION, "registry": REGISTRY, "project": "another-project" }),
    ] {
        let missing = cb
            .exchange(Some(&cb.emu.admin_token()), unknown.clone())
            .await;
        assert_eq!(missing.status, 404, "{unknown}");
        assert_eq!(missing.error_status(), "NOT_FOUND");
    }

    // A body without the three strings: 400.
    for bad in [
        json!({ "region": REGION }),
        json!([1]),
        json!({ "region": 1, "registry": REGISTRY, "project": PROJECT }),
    ] {
        let refused = cb.exchange(Some(&cb.emu.admin_token()), bad.clone()).await;
        assert_eq!(refused.status, 400, "{bad}");
        assert_eq!(refused.error_status(), "INVALID_ARGUMENT");
    }
    cb.emu.shutdown().await;
}

#[tokio::test]
async fn create_get_patch_list_and_delete_in_cloud_iot_json() {
    let cb = Cb::start().await;
    let (k1, k2, k3) = (ec_key(), ec_key(), ec_key());

    let created = cb
        .create(json!({
            "id": "balena-0001",
            "credentials": [cred("ES256_PEM", &k1)],
            "metadata": { "balena_uuid": "0001" },
        }))
        .await;
    assert_eq!(created.status, 200, "{}", created.body);
    let d = &created.body;
    assert_eq!(d["id"], json!("balena-0001"));
    let num_id = d["numId"].as_str().expect("numId is a string").to_string();
    assert!(
        num_id.len() >= 10 && num_id.bytes().all(|b| b.is_ascii_digit()),
        "{num_id}"
    );
    assert_eq!(
        d["name"],
        json!(format!(
            "{}/devices/{num_id}",
            cb.emu.registry_path(REGION, REGISTRY)
        ))
    );
    assert_eq!(
        d["credentials"],
        json!([{ "publicKey": { "format": "ES256_PEM", "key": k1 }, "expirationTime": "1970-01-01T00:00:00Z" }])
    );
    assert_eq!(d["metadata"], json!({ "balena_uuid": "0001" }));
    assert_eq!(d["config"]["version"], json!("1"));
    assert!(d["config"]["cloudUpdateTime"].is_string());
    assert_eq!(d["gatewayConfig"]["gatewayType"], json!("NON_GATEWAY"));
    // proto3 JSON: false and unset fields are left out.
    assert!(d.get("blocked").is_none(), "{d}");
    assert!(d.get("lastHeartbeatTime").is_none(), "{d}");

    // The same device from GET (by id or numId) and from the test hook.
    let got = cb.get("balena-0001").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, created.body);
    let by_num = cb
        .send(cb.devices(
            reqwest::Method::GET,
            &format!(
                "name={}/devices/{num_id}",
                cb.emu.registry_path(REGION, REGISTRY)
            ),
        ))
        .await;
    assert_eq!(by_num.body, created.body);
    assert_eq!(
        cb.emu.device(REGION, REGISTRY, "balena-0001"),
        Some(created.body.clone())
    );
    assert_eq!(
        cb.emu.public_keys(REGION, REGISTRY, "balena-0001"),
        Some(vec![k1.clone()])
    );

    // A field mask keeps id and numId and the fields named (snake_case or camelCase).
    let masked = cb
        .send(cb.devices(
            reqwest::Method::GET,
            &format!(
                "name={}&fieldMask=metadata,last_heartbeat_time",
                cb.path("balena-0001")
            ),
        ))
        .await;
    assert_eq!(
        masked.body,
        json!({ "id": "balena-0001", "numId": num_id, "metadata": { "balena_uuid": "0001" } })
    );

    // PATCH credentials: two keys, with an expiry; the rest is untouched.
    let patched = cb
        .patch(
            "balena-0001",
            "credentials",
            json!({
                "credentials": [
                    cred("ES256_PEM", &k2),
                    { "publicKey": { "format": "ES256_PEM", "key": k1 }, "expirationTime": "2030-01-01T00:00:00Z" },
                ],
                "blocked": true,
            }),
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.body);
    assert_eq!(
        patched.body["credentials"][1]["expirationTime"],
        json!("2030-01-01T00:00:00Z")
    );
    assert_eq!(patched.body["metadata"], json!({ "balena_uuid": "0001" }));
    assert!(
        patched.body.get("blocked").is_none(),
        "blocked is not in the mask"
    );
    assert_eq!(
        cb.emu.public_keys(REGION, REGISTRY, "balena-0001"),
        Some(vec![k2.clone(), k1.clone()])
    );
    // A mask naming a field the body lacks clears it; blocked can be set.
    let cleared = cb
        .patch(
            "balena-0001",
            "metadata,blocked",
            json!({ "blocked": true }),
        )
        .await;
    assert_eq!(cleared.status, 200);
    assert!(cleared.body.get("metadata").is_none(), "{}", cleared.body);
    assert_eq!(cleared.body["blocked"], json!(true));

    // LIST: id and numId unless a field mask asks for more; paging; deviceIds.
    cb.emu.seed_device(
        REGION,
        REGISTRY,
        json!({ "id": "balena-0002", "credentials": [cred("ES256_PEM", &k3)] }),
    );
    let parent = cb.emu.registry_path(REGION, REGISTRY);
    let listed = cb
        .send(cb.devices(reqwest::Method::GET, &format!("parent={parent}")))
        .await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    let devices = listed.body["devices"].as_array().expect("devices");
    assert_eq!(devices.len(), 2);
    assert_eq!(devices[0], json!({ "id": "balena-0001", "numId": num_id }));
    let page = cb
        .send(cb.devices(
            reqwest::Method::GET,
            &format!("parent={parent}&pageSize=1&fieldMask=credentials"),
        ))
        .await;
    assert_eq!(page.body["devices"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        page.body["devices"][0]["credentials"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    let token = page.body["nextPageToken"]
        .as_str()
        .expect("next page")
        .to_string();
    let rest = cb
        .send(cb.devices(
            reqwest::Method::GET,
            &format!("parent={parent}&pageSize=1&pageToken={token}"),
        ))
        .await;
    assert_eq!(rest.body["devices"][0]["id"], json!("balena-0002"));
    assert!(rest.body.get("nextPageToken").is_none());
    let only = cb
        .send(cb.devices(
            reqwest::Method::GET,
            &format!(
                "parent={}&deviceIds=balena-0002",
                parent.replace('/', "%2F")
            ),
        ))
        .await;
    assert_eq!(
        only.body["devices"].as_array().map(Vec::len),
        Some(1),
        "{}",
        only.body
    );

    // DELETE: 200 {}, then 404.
    let deleted = cb.delete("balena-0001").await;
    assert_eq!((deleted.status, deleted.body.clone()), (200, json!({})));
    assert_eq!(cb.emu.device(REGION, REGISTRY, "balena-0001"), None);
    assert_eq!(
        cb.emu.device_ids(REGION, REGISTRY),
        vec!["balena-0002".to_string()]
    );
    let again = cb.delete("balena-0001").await;
    assert_eq!(again.status, 404);
    assert_eq!(again.error_status(), "NOT_FOUND");
    cb.emu.shutdown().await;
}

#[tokio::test]
async fn errors_have_googles_shape_and_statuses() {
    let cb = Cb::start().await;
    let key = ec_key();
    let device = json!({ "id": "dev-1", "credentials": [cred("ES256_PEM", &key)] });
    assert_eq!(cb.create(device.clone()).await.status, 200);

    // 409 on an existing id.
    let dup = cb.create(device.clone()).await;
    assert_eq!(dup.status, 409);
    assert_eq!(dup.error_status(), "ALREADY_EXISTS");

    // 404 for a missing device, also for a PATCH.
    let missing = cb.get("dev-2").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.error_status(), "NOT_FOUND");
    let patch_missing = cb
        .patch("dev-2", "blocked", json!({ "blocked": true }))
        .await;
    assert_eq!(patch_missing.status, 404);

    // 400 INVALID_ARGUMENT: ids, keys, formats, too many credentials, unknown fields, bad
    // JSON, masks.
    let rsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("RSA key");
    let ec_cert = rcgen::CertificateParams::new(vec!["dev".to_string()])
        .expect("params")
        .self_signed(&rcgen::KeyPair::generate().expect("key"))
        .expect("cert")
        .pem();
    let invalid_bodies = [
        json!({ "id": "1-starts-with-digit" }),
        json!({ "id": "ab" }),
        json!({ "id": "has/slash" }),
        json!({ "credentials": [] }),
        json!({ "id": "dev-3", "credentials": [cred("ES256_PEM", "not a key")] }),
        json!({ "id": "dev-3", "credentials": [cred("ES256_PEM", &rsa.public_key_pem())] }),
        json!({ "id": "dev-3", "credentials": [cred("RSA_PEM", &key)] }),
        json!({ "id": "dev-3", "credentials": [cred("ES256_X509_PEM", &key)] }),
        json!({ "id": "dev-3", "credentials": [cred("ES256_PEM", &ec_cert)] }),
        json!({ "id": "dev-3", "credentials": [cred("ES384_PEM", &key)] }),
        json!({ "id": "dev-3", "credentials": [{ "publicKey": { "key": key } }] }),
        json!({ "id": "dev-3", "credentials": [cred("ES256_PEM", &key), cred("ES256_PEM", &key), cred("ES256_PEM", &key), cred("ES256_PEM", &key)] }),
        json!({ "id": "dev-3", "credentials": [{ "publicKey": { "format": "ES256_PEM", "key": key }, "expirationTime": "soon" }] }),
        json!({ "id": "dev-3", "colour": "red" }),
        json!({ "id": "dev-3", "metadata": { "k": 1 } }),
        json!({ "id": "dev-3", "blocked": "yes" }),
        json!({ "id": "dev-3", "name": "projects/x/locations/y/registries/z/devices/other" }),
    ];
    for body in invalid_bodies {
        let refused = cb.create(body.clone()).await;
        assert_eq!(refused.status, 400, "{body}: {}", refused.body);
        assert_eq!(refused.error_status(), "INVALID_ARGUMENT", "{body}");
    }
    let not_json = cb
        .send(cb.devices(reqwest::Method::POST, "").body("{nope"))
        .await;
    assert_eq!(not_json.status, 400);
    // The other valid formats are accepted.
    let rsa_cert = rcgen::CertificateParams::new(vec!["dev".to_string()])
        .expect("params")
        .self_signed(&rsa)
        .expect("cert")
        .pem();
    let all_formats = cb
        .create(json!({ "id": "dev-formats", "credentials": [
            cred("RSA_PEM", &rsa.public_key_pem()),
            cred("RSA_X509_PEM", &rsa_cert),
            cred("ES256_X509_PEM", &ec_cert),
        ]}))
        .await;
    assert_eq!(all_formats.status, 200, "{}", all_formats.body);
    // snake_case names are proto3 JSON too.
    let snake = cb
        .create(json!({ "id": "dev-snake", "credentials": [{ "public_key": { "format": "ES256_PEM", "key": key }, "expiration_time": "2031-05-05T10:00:00.5Z" }], "log_level": "INFO" }))
        .await;
    assert_eq!(snake.status, 200, "{}", snake.body);
    assert_eq!(snake.body["logLevel"], json!("INFO"));

    for (mask, body) in [
        ("", json!({ "blocked": true })),
        ("undefined", json!({ "blocked": true })),
        ("id", json!({ "id": "dev-1" })),
        (
            "credentials",
            json!({ "id": "another-id", "credentials": [] }),
        ),
        (
            "credentials",
            json!({ "credentials": [cred("RSA_PEM", &key)] }),
        ),
    ] {
        let refused = cb.patch("dev-1", mask, body.clone()).await;
        assert_eq!(refused.status, 400, "{mask} {body}: {}", refused.body);
        assert_eq!(refused.error_status(), "INVALID_ARGUMENT");
    }
    // Names: malformed 400, another registry's path 404, none at all 400.
    for (query, status) in [
        ("name=dev-1".to_string(), 400),
        (format!("name=projects/{PROJECT}/devices/dev-1"), 400),
        (
            format!(
                "name=projects/{PROJECT}/locations/{OTHER_REGION}/registries/{REGISTRY}/devices/dev-1"
            ),
            404,
        ),
        (
            format!("name=projects/other/locations/{REGION}/registries/{REGISTRY}/devices/dev-1"),
            404,
        ),
        (String::new(), 400),
        ("name=%zz".to_string(), 400),
    ] {
        let answer = cb.send(cb.devices(reqwest::Method::GET, &query)).await;
        assert_eq!(answer.status, status, "{query}: {}", answer.body);
        answer.error_status();
    }
    // Unknown paths are 404; calls the emulator does not implement are 501.
    let unknown = cb
        .send(cb.http.get(format!("{}/api/v/2/other", cb.emu.url())))
        .await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.error_status(), "NOT_FOUND");
    let command = cb
        .send(
            cb.devices(
                reqwest::Method::POST,
                &format!("method=sendCommandToDevice&name={}", cb.path("dev-1")),
            )
            .json(&json!({ "binaryData": "" })),
        )
        .await;
    assert_eq!(command.status, 501);
    assert_eq!(command.error_status(), "UNIMPLEMENTED");
    cb.emu.shutdown().await;
}

#[tokio::test]
async fn registry_calls_need_that_registrys_token() {
    let cb = Cb::start().await;
    let (other_key, other_token) = cb
        .emu
        .registry_credentials(OTHER_REGION, OTHER_REGISTRY)
        .expect("other registry");
    let query = format!("name={}", cb.path("dev-1"));
    let attempts = [
        (cb.key.clone(), None),
        (cb.key.clone(), Some("wrong".to_string())),
        (cb.key.clone(), Some(other_token.clone())),
        (cb.key.clone(), Some(cb.emu.admin_token())),
        (other_key.clone(), Some(cb.token.clone())),
        ("unknown-system-key".to_string(), Some(cb.token.clone())),
        (cb.emu.admin_system_key(), Some(cb.token.clone())),
    ];
    for (key, token) in attempts {
        let mut req = cb.http.get(cb.devices_url(&key, &query));
        if let Some(t) = &token {
            req = req.header("ClearBlade-UserToken", t);
        }
        let refused = cb.send(req).await;
        assert_eq!(refused.status, 401, "{key} {token:?}");
        assert_eq!(refused.error_status(), "UNAUTHENTICATED");
    }
    // The other registry's key and token reach its own (empty) registry; the path names the
    // first registry, so that device is not found there.
    let theirs = cb
        .send(
            cb.http
                .get(cb.devices_url(&other_key, &query))
                .header("ClearBlade-UserToken", &other_token),
        )
        .await;
    assert_eq!(theirs.status, 404);
    // The header name is case-insensitive.
    let lower = cb
        .send(
            cb.http
                .get(cb.devices_url(&cb.key, &query))
                .header("clearblade-usertoken", &cb.token),
        )
        .await;
    assert_eq!(lower.status, 404, "authenticated, device missing");

    // The log says which registry a request authenticated as.
    let recorded = cb.emu.requests();
    assert_eq!(recorded.len(), 9);
    assert!(
        recorded
            .iter()
            .all(|r| r.path.contains("/cloudiot_devices"))
    );
    assert_eq!(
        recorded[7].registry,
        Some((OTHER_REGION.to_string(), OTHER_REGISTRY.to_string()))
    );
    assert_eq!(recorded[0].registry, None);
    cb.emu.shutdown().await;
}

#[tokio::test]
async fn faults_latency_and_the_request_log() {
    let cb = Cb::start().await;
    let key = ec_key();
    cb.emu.inject_fault(
        Fault::new(503)
            .method("POST")
            .path("cloudiot_devices")
            .retry_after(7)
            .skip(1)
            .times(2),
    );
    let device = |id: &str| json!({ "id": id, "credentials": [cred("ES256_PEM", &key)] });
    assert_eq!(cb.create(device("dev-a")).await.status, 200, "skipped once");
    let failed = cb.create(device("dev-b")).await;
    assert_eq!(failed.status, 503);
    assert_eq!(failed.retry_after.as_deref(), Some("7"));
    assert_eq!(failed.error_status(), "UNAVAILABLE");
    // GETs do not match the POST fault.
    assert_eq!(cb.get("dev-a").await.status, 200);
    assert_eq!(cb.create(device("dev-b")).await.status, 503);
    assert_eq!(cb.create(device("dev-b")).await.status, 200, "used up");
    assert_eq!(cb.emu.device_ids(REGION, REGISTRY), vec!["dev-a", "dev-b"]);

    // Faults apply before authentication; 429 is RESOURCE_EXHAUSTED; clear_faults drops them.
    cb.emu
        .inject_fault(Fault::new(429).path("getRegistryCredentials").times(10));
    let throttled = cb
        .exchange(
            None,
            json!({ "region": REGION, "registry": REGISTRY, "project": PROJECT }),
        )
        .await;
    assert_eq!(throttled.status, 429);
    assert_eq!(throttled.error_status(), "RESOURCE_EXHAUSTED");
    cb.emu.clear_faults();
    let ok = cb
        .exchange(
            Some(&cb.emu.admin_token()),
            json!({ "region": REGION, "registry": REGISTRY, "project": PROJECT }),
        )
        .await;
    assert_eq!(ok.status, 200);

    // The log: method, path, query, registry, device, body, status.
    let log = cb.emu.requests();
    assert_eq!(log.len(), 7);
    assert_eq!(log[0].method, "POST");
    assert_eq!(
        log[0].path,
        format!("/api/v/4/webhook/execute/{}/cloudiot_devices", cb.key)
    );
    assert_eq!(log[0].query, "");
    assert_eq!(log[0].device.as_deref(), Some("dev-a"));
    assert_eq!(
        log[0].registry,
        Some((REGION.to_string(), REGISTRY.to_string()))
    );
    assert!(log[0].body.contains("dev-a"));
    assert!(!log[0].tls);
    assert_eq!(log[1].status, 503);
    assert_eq!(log[1].registry, None, "faults answer before authentication");
    assert_eq!(log[2].method, "GET");
    assert_eq!(log[2].query, format!("name={}", cb.path("dev-a")));
    assert_eq!(log[2].device.as_deref(), Some("dev-a"));
    assert_eq!(
        log[6].path_and_query(),
        format!(
            "/api/v/1/code/{}/getRegistryCredentials",
            cb.emu.admin_system_key()
        )
    );
    assert!(log.iter().all(|r| r.started <= r.finished));
    cb.emu.clear_requests();
    assert!(cb.emu.requests().is_empty());

    // Latency delays answers (no timing assertion: it still answers).
    cb.emu.set_latency(std::time::Duration::from_millis(20));
    assert_eq!(cb.get("dev-a").await.status, 200);
    cb.emu.set_latency(std::time::Duration::ZERO);
    cb.emu.shutdown().await;
}

#[tokio::test]
async fn service_account_secrets_and_seeding() {
    let cb = Cb::start().await;
    let sa = cb.emu.service_account_json();
    assert_eq!(sa["systemKey"], json!(cb.emu.admin_system_key()));
    assert_eq!(sa["token"], json!(cb.emu.admin_token()));
    assert_eq!(sa["url"], json!(cb.emu.url()));
    assert_eq!(sa["project"], json!(PROJECT));
    assert_eq!(cb.emu.project(), PROJECT);
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(cb.emu.service_account_base64())
        .expect("base64");
    let from_b64: Value = serde_json::from_slice(&decoded).expect("JSON");
    assert_eq!(from_b64, sa);

    let secrets = cb.emu.secrets();
    assert_eq!(secrets.len(), 6);
    for s in [
        &cb.emu.admin_token(),
        &cb.emu.admin_system_key(),
        &cb.key,
        &cb.token,
    ] {
        assert!(secrets.contains(s), "{s}");
    }

    // Another emulator has other secrets.
    let other = ClearBladeEmulator::start(PROJECT, &[(REGION, REGISTRY)])
        .await
        .expect("second emulator");
    assert!(other.secrets().iter().all(|s| !secrets.contains(s)));
    other.shutdown().await;

    // Seeding keeps a given numId and overwrites.
    let key = ec_key();
    cb.emu.seed_device(
        REGION,
        REGISTRY,
        json!({ "id": "seeded-1", "numId": "1234567890123456", "credentials": [cred("ES256_PEM", &key)] }),
    );
    let seeded = cb.emu.device(REGION, REGISTRY, "seeded-1").expect("seeded");
    assert_eq!(seeded["numId"], json!("1234567890123456"));
    cb.emu.seed_device(
        REGION,
        REGISTRY,
        json!({ "id": "seeded-1", "blocked": true }),
    );
    assert_eq!(
        cb.emu.public_keys(REGION, REGISTRY, "seeded-1"),
        Some(vec![])
    );
    assert_eq!(cb.emu.public_keys(REGION, REGISTRY, "nope-1"), None);
    assert_eq!(
        cb.emu.device(OTHER_REGION, OTHER_REGISTRY, "seeded-1"),
        None
    );
    assert!(cb.emu.device_ids("nowhere", REGISTRY).is_empty());
    let got = cb.get("seeded-1").await;
    assert_eq!(got.body["blocked"], json!(true));
    cb.emu.shutdown().await;
}

#[tokio::test]
async fn https_with_the_ca_answers_the_https_regional_url() {
    let cb = Cb::start().await;
    let ca = reqwest::Certificate::from_pem(cb.emu.ca_pem().as_bytes()).expect("CA PEM");
    let https = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([ca])
        .build()
        .expect("client");
    let exchanged = https
        .post(format!(
            "{}/api/v/1/code/{}/getRegistryCredentials",
            cb.emu.tls_url(),
            cb.emu.admin_system_key()
        ))
        .header("ClearBlade-UserToken", cb.emu.admin_token())
        .json(&json!({ "region": REGION, "registry": REGISTRY, "project": PROJECT }))
        .send()
        .await
        .expect("HTTPS with the CA trusted");
    assert_eq!(exchanged.status().as_u16(), 200);
    let body: Value = exchanged.json().await.expect("JSON");
    assert_eq!(body["url"], json!(cb.emu.tls_url()));

    // The regional URL it answered works for the device calls, also via localhost.
    let localhost = cb.emu.tls_url().replace("127.0.0.1", "localhost");
    for (i, base) in [cb.emu.tls_url(), localhost].iter().enumerate() {
        let created = https
            .post(format!(
                "{base}/api/v/4/webhook/execute/{}/cloudiot_devices",
                body["systemKey"].as_str().expect("systemKey")
            ))
            .header(
                "ClearBlade-UserToken",
                body["serviceAccountToken"].as_str().expect("token"),
            )
            .json(&json!({ "id": format!("tls-{i}") }))
            .send()
            .await
            .unwrap_or_else(|e| panic!("HTTPS via {base}: {e:?}"));
        assert_eq!(created.status().as_u16(), 200, "{base}");
    }
    assert!(cb.emu.requests().iter().all(|r| r.tls));

    // Without the CA the handshake fails.
    let untrusting = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    untrusting
        .get(format!("{}/", cb.emu.tls_url()))
        .send()
        .await
        .expect_err("a certificate from an untrusted CA is refused");
    cb.emu.shutdown().await;
}

//! The balenaCloud API emulator over HTTP: the exact requests the provisioning client sends,
//! visibility of device keys, write semantics, encodings, malformed input and the test hooks.

use std::time::{Duration, Instant};

use provision_emulators::balena::{BalenaEmulator, Fault};
use serde_json::{Value, json};

const USER: &str = "user-key";
const DEV_KEY: &str = "device-key-a";
const UUID_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const UUID_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

/// Two applications, each with a `main` and a `cloud-relay` service and one device.
struct Fx {
    emu: BalenaEmulator,
    http: reqwest::Client,
    app_a: i64,
    app_b: i64,
    dev_a: i64,
    dev_b: i64,
}

async fn fixture() -> Fx {
    let emu = BalenaEmulator::start().await.expect("emulator starts");
    let app_a = emu.add_application("FleetA");
    let app_b = emu.add_application("FleetB");
    emu.add_service(app_a, "main");
    let dev_a = emu.add_device(app_a, UUID_A);
    // Added after the device: must still be installed on it.
    emu.add_service(app_a, "cloud-relay");
    emu.add_service(app_b, "main");
    emu.add_service(app_b, "cloud-relay");
    let dev_b = emu.add_device(app_b, UUID_B);
    emu.add_user_key(USER);
    emu.add_device_key(dev_a, DEV_KEY);
    emu.add_device_key(dev_b, "device-key-b");
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    Fx {
        emu,
        http,
        app_a,
        app_b,
        dev_a,
        dev_b,
    }
}

/// Percent-encodes like `encodeURIComponent`, and also `'()*!` (as a strict client might).
fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `path?name=value&...` as balena-sdk's pinejs-client writes it (see [`odata_value`]).
fn url_of(path: &str, params: &[(&str, &str)]) -> String {
    let query: Vec<String> = params
        .iter()
        .map(|(k, v)| {
            if k.starts_with('$') {
                format!("{k}={}", odata_value(v))
            } else {
                format!("{}={}", enc(k), enc(v))
            }
        })
        .collect();
    if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", query.join("&"))
    }
}

/// An OData option value as it goes into a URL pinejs reads: syntax stays literal (pinejs
/// refuses `%2C`, `%28`...), spaces are `%20`, and each string literal's content is
/// percent-encoded with its quotes doubled. An unterminated literal stays unterminated.
fn odata_value(value: &str) -> String {
    let mut out = String::new();
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                let mut content = String::new();
                let mut closed = false;
                while let Some(c) = chars.next() {
                    if c == '\'' {
                        if chars.peek() == Some(&'\'') {
                            chars.next();
                            content.push(c);
                            continue;
                        }
                        closed = true;
                        break;
                    }
                    content.push(c);
                }
                out.push('\'');
                out.push_str(&enc(&content).replace("%27", "''"));
                if closed {
                    out.push('\'');
                }
            }
            ' ' => out.push_str("%20"),
            c => out.push(c),
        }
    }
    out
}

struct Answer {
    status: u16,
    body: String,
    headers: reqwest::header::HeaderMap,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// The `d` array of a 200 read.
    fn d(&self) -> Vec<Value> {
        assert_eq!(self.status, 200, "body: {}", self.body);
        match self.json().get("d") {
            Some(Value::Array(rows)) => rows.clone(),
            other => panic!("no d array: {other:?}"),
        }
    }
}

impl Fx {
    async fn send(
        &self,
        method: &str,
        key: Option<&str>,
        path_and_query: &str,
        body: Option<Value>,
    ) -> Answer {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self
            .http
            .request(method, format!("{}{path_and_query}", self.emu.url()));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req.send().await.expect("request sent");
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let body = res.text().await.expect("body");
        Answer {
            status,
            body,
            headers,
        }
    }

    async fn get(&self, key: &str, path: &str, params: &[(&str, &str)]) -> Answer {
        self.send("GET", Some(key), &url_of(path, params), None)
            .await
    }

    async fn post(&self, key: &str, resource: &str, body: Value) -> Answer {
        self.send("POST", Some(key), &format!("/v7/{resource}"), Some(body))
            .await
    }

    async fn delete(&self, key: &str, resource: &str, filter: &str) -> Answer {
        self.send(
            "DELETE",
            Some(key),
            &url_of(&format!("/v7/{resource}"), &[("$filter", filter)]),
            None,
        )
        .await
    }

    async fn status_of(&self, path_and_query: &str) -> u16 {
        self.send("GET", Some(USER), path_and_query, None)
            .await
            .status
    }
}

fn ids(rows: &[Value]) -> Vec<i64> {
    rows.iter().map(|r| r["id"].as_i64().expect("id")).collect()
}

fn keys(row: &Value) -> Vec<String> {
    let mut k: Vec<String> = row.as_object().expect("object").keys().cloned().collect();
    k.sort();
    k
}

// ------------------------------------------------------------------------------------------
// The requests the provisioning client sends
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn request1_device_by_uuid_with_user_and_device_key() {
    let fx = fixture().await;
    let filter = format!("uuid eq '{UUID_A}'");
    for key in [USER, DEV_KEY] {
        let rows = fx
            .get(
                key,
                "/v7/device",
                &[("$select", "id,uuid"), ("$filter", &filter)],
            )
            .await
            .d();
        assert_eq!(
            rows,
            vec![json!({"id": fx.dev_a, "uuid": UUID_A})],
            "key {key}"
        );
    }
    // The device key of A cannot see B.
    let filter_b = format!("uuid eq '{UUID_B}'");
    let rows = fx
        .get(
            DEV_KEY,
            "/v7/device",
            &[("$select", "id,uuid"), ("$filter", &filter_b)],
        )
        .await
        .d();
    assert!(rows.is_empty());
}

const AWS_FILTER: &str = "name eq 'AWS_CERT' or name eq 'AWS_PRIVATE_KEY'";

fn request2_expand(service_filter: &str) -> String {
    format!(
        "device_environment_variable($select=id,name,value;$filter={AWS_FILTER}),\
         service_install($select=id;$filter={service_filter};\
         $expand=device_service_environment_variable($select=id,name,value;$filter={AWS_FILTER})),\
         device_tag($select=id,tag_key,value;$filter=tag_key eq 'provision-lock')"
    )
}

#[tokio::test]
async fn request2_device_with_vars_installs_and_lock_expanded() {
    let fx = fixture().await;
    let emu = &fx.emu;
    emu.set_device_var(fx.dev_a, "AWS_CERT", "cert-a");
    emu.set_device_var(fx.dev_a, "AWS_PRIVATE_KEY", "key-a");
    emu.set_device_var(fx.dev_a, "OTHER", "x");
    emu.set_service_var(fx.dev_a, "cloud-relay", "AWS_CERT", "svc-cert");
    emu.set_service_var(fx.dev_a, "cloud-relay", "UNRELATED", "u");
    emu.set_service_var(fx.dev_a, "main", "AWS_CERT", "main-cert");
    emu.set_device_tag(fx.dev_a, "provision-lock", "lock-1");
    emu.set_device_tag(fx.dev_a, "other-tag", "t");
    emu.set_device_var(fx.dev_b, "AWS_CERT", "cert-b");
    let relay_si = emu
        .service_install_id(fx.dev_a, "cloud-relay")
        .expect("install");

    let filter = format!("uuid eq '{UUID_A}'");
    for service_filter in [
        "installs__service/any(s:s/service_name eq 'cloud-relay')",
        "installs__service/service_name eq 'cloud-relay'",
    ] {
        let expand = request2_expand(service_filter);
        let params = [
            ("$select", "id,uuid"),
            ("$filter", filter.as_str()),
            ("$expand", expand.as_str()),
        ];
        let rows = fx.get(USER, "/v7/device", &params).await.d();
        assert_eq!(rows.len(), 1);
        let dev = &rows[0];
        assert_eq!(
            keys(dev),
            [
                "device_environment_variable",
                "device_tag",
                "id",
                "service_install",
                "uuid"
            ]
        );
        assert_eq!(dev["id"], json!(fx.dev_a));

        let vars = dev["device_environment_variable"]
            .as_array()
            .expect("array");
        let mut pairs: Vec<(String, String)> = vars
            .iter()
            .map(|v| {
                assert_eq!(keys(v), ["id", "name", "value"]);
                (
                    v["name"].as_str().unwrap_or("").into(),
                    v["value"].as_str().unwrap_or("").into(),
                )
            })
            .collect();
        pairs.sort();
        assert_eq!(
            pairs,
            [
                ("AWS_CERT".into(), "cert-a".into()),
                ("AWS_PRIVATE_KEY".into(), "key-a".into())
            ]
        );

        let installs = dev["service_install"].as_array().expect("array");
        assert_eq!(installs.len(), 1, "{service_filter}: {installs:?}");
        assert_eq!(installs[0]["id"], json!(relay_si));
        assert_eq!(
            keys(&installs[0]),
            ["device_service_environment_variable", "id"]
        );
        let svc_vars = installs[0]["device_service_environment_variable"]
            .as_array()
            .expect("array");
        assert_eq!(svc_vars.len(), 1);
        assert_eq!(svc_vars[0]["name"], "AWS_CERT");
        assert_eq!(svc_vars[0]["value"], "svc-cert");

        let tags = dev["device_tag"].as_array().expect("array");
        assert_eq!(tags.len(), 1);
        assert_eq!(keys(&tags[0]), ["id", "tag_key", "value"]);
        assert_eq!(tags[0]["value"], "lock-1");
    }

    // Nothing set yet on B: the expansions are empty arrays, not missing.
    let filter = format!("uuid eq '{UUID_B}'");
    let expand = request2_expand("installs__service/any(s:s/service_name eq 'cloud-relay')");
    let params = [
        ("$select", "id,uuid"),
        ("$filter", filter.as_str()),
        ("$expand", expand.as_str()),
    ];
    let rows = fx.get(USER, "/v7/device", &params).await.d();
    assert_eq!(
        rows[0]["device_environment_variable"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert_eq!(rows[0]["device_tag"], json!([]));
    assert_eq!(
        rows[0]["service_install"][0]["device_service_environment_variable"],
        json!([])
    );
}

#[tokio::test]
async fn request3_device_env_var_create_update_delete() {
    let fx = fixture().await;
    let dev = fx.dev_a;
    let created = fx
        .post(
            USER,
            "device_environment_variable",
            json!({"device": dev, "name": "AWS_CERT", "value": "v1"}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let row = created.json();
    assert_eq!(row["device"], json!({"__id": dev}));
    assert_eq!(row["name"], "AWS_CERT");
    assert_eq!(row["value"], "v1");
    assert!(
        row["created_at"]
            .as_str()
            .is_some_and(|s| s.ends_with('Z') && s.contains('T'))
    );
    let id = row["id"].as_i64().expect("id");

    let dup = fx
        .post(
            USER,
            "device_environment_variable",
            json!({"device": dev, "name": "AWS_CERT", "value": "v2"}),
        )
        .await;
    assert_eq!(dup.status, 409);
    assert!(dup.body.to_lowercase().contains("unique"), "{}", dup.body);

    let patched = fx
        .send(
            "PATCH",
            Some(USER),
            &format!("/v7/device_environment_variable({id})"),
            Some(json!({"value": "v2"})),
        )
        .await;
    assert_eq!(patched.status, 200);
    assert_eq!(patched.body, "");
    assert_eq!(
        fx.emu.device_vars(dev).get("AWS_CERT").map(String::as_str),
        Some("v2")
    );

    fx.post(
        USER,
        "device_environment_variable",
        json!({"device": dev, "name": "AWS_PRIVATE_KEY", "value": "k"}),
    )
    .await;
    fx.post(
        USER,
        "device_environment_variable",
        json!({"device": dev, "name": "KEEP", "value": "k"}),
    )
    .await;
    fx.emu.set_device_var(fx.dev_b, "AWS_CERT", "b");
    let filter = format!("device eq {dev} and (name eq 'AWS_CERT' or name eq 'AWS_PRIVATE_KEY')");
    let deleted = fx
        .delete(USER, "device_environment_variable", &filter)
        .await;
    assert_eq!(deleted.status, 200);
    assert_eq!(fx.emu.device_vars(dev).keys().collect::<Vec<_>>(), ["KEEP"]);
    assert_eq!(
        fx.emu.device_vars(fx.dev_b).len(),
        1,
        "other devices untouched"
    );

    // The value guard: a stale value deletes nothing, the current one deletes.
    fx.emu.set_device_var(dev, "X", "current");
    let stale = fx
        .delete(
            USER,
            "device_environment_variable",
            &format!("device eq {dev} and name eq 'X' and value eq 'stale'"),
        )
        .await;
    assert_eq!(stale.status, 200);
    assert!(fx.emu.device_vars(dev).contains_key("X"));
    let current = fx
        .delete(
            USER,
            "device_environment_variable",
            &format!("device eq {dev} and name eq 'X' and value eq 'current'"),
        )
        .await;
    assert_eq!(current.status, 200);
    assert!(!fx.emu.device_vars(dev).contains_key("X"));
}

#[tokio::test]
async fn request4_service_var_create_update_delete() {
    let fx = fixture().await;
    let si = fx
        .emu
        .service_install_id(fx.dev_a, "cloud-relay")
        .expect("install");
    let created = fx
        .post(
            USER,
            "device_service_environment_variable",
            json!({"service_install": si, "name": "AWS_CERT", "value": "c"}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let row = created.json();
    assert_eq!(row["service_install"], json!({"__id": si}));
    let id = row["id"].as_i64().expect("id");

    let dup = fx
        .post(
            USER,
            "device_service_environment_variable",
            json!({"service_install": si, "name": "AWS_CERT", "value": "d"}),
        )
        .await;
    assert_eq!(dup.status, 409);
    assert!(dup.body.to_lowercase().contains("unique"));

    let patched = fx
        .send(
            "PATCH",
            Some(USER),
            &format!("/v7/device_service_environment_variable({id})"),
            Some(json!({"value": "d"})),
        )
        .await;
    assert_eq!(patched.status, 200);
    assert_eq!(
        fx.emu
            .service_vars(fx.dev_a, "cloud-relay")
            .get("AWS_CERT")
            .map(String::as_str),
        Some("d")
    );

    fx.emu
        .set_service_var(fx.dev_a, "cloud-relay", "AWS_PRIVATE_KEY", "k");
    fx.emu.set_service_var(fx.dev_a, "cloud-relay", "KEEP", "k");
    fx.emu.set_service_var(fx.dev_a, "main", "AWS_CERT", "main");
    let filter =
        format!("service_install eq {si} and (name eq 'AWS_CERT' or name eq 'AWS_PRIVATE_KEY')");
    assert_eq!(
        fx.delete(USER, "device_service_environment_variable", &filter)
            .await
            .status,
        200
    );
    assert_eq!(
        fx.emu
            .service_vars(fx.dev_a, "cloud-relay")
            .keys()
            .collect::<Vec<_>>(),
        ["KEEP"]
    );
    assert_eq!(fx.emu.service_vars(fx.dev_a, "main").len(), 1);

    let guard = |v: &str| format!("service_install eq {si} and name eq 'KEEP' and value eq '{v}'");
    assert_eq!(
        fx.delete(USER, "device_service_environment_variable", &guard("nope"))
            .await
            .status,
        200
    );
    assert!(
        fx.emu
            .service_vars(fx.dev_a, "cloud-relay")
            .contains_key("KEEP")
    );
    assert_eq!(
        fx.delete(USER, "device_service_environment_variable", &guard("k"))
            .await
            .status,
        200
    );
    assert!(fx.emu.service_vars(fx.dev_a, "cloud-relay").is_empty());
}

#[tokio::test]
async fn request5_device_tag_lock() {
    let fx = fixture().await;
    let dev = fx.dev_a;
    let lock = |v: &str| json!({"device": dev, "tag_key": "provision-lock", "value": v});
    let first = fx.post(USER, "device_tag", lock("owner-1")).await;
    assert_eq!(first.status, 201, "{}", first.body);
    assert_eq!(first.json()["tag_key"], "provision-lock");
    let second = fx.post(USER, "device_tag", lock("owner-2")).await;
    assert_eq!(second.status, 409);
    assert!(second.body.to_lowercase().contains("unique"));
    assert_eq!(
        fx.emu
            .device_tags(dev)
            .get("provision-lock")
            .map(String::as_str),
        Some("owner-1")
    );

    let release =
        |v: &str| format!("device eq {dev} and tag_key eq 'provision-lock' and value eq '{v}'");
    assert_eq!(
        fx.delete(USER, "device_tag", &release("owner-2"))
            .await
            .status,
        200
    );
    assert!(
        fx.emu.device_tags(dev).contains_key("provision-lock"),
        "a stale owner must not release"
    );
    assert_eq!(
        fx.delete(USER, "device_tag", &release("owner-1"))
            .await
            .status,
        200
    );
    assert!(fx.emu.device_tags(dev).is_empty());
    assert_eq!(
        fx.post(USER, "device_tag", lock("owner-2")).await.status,
        201
    );
}

#[tokio::test]
async fn large_values_with_any_characters_round_trip_and_guard() {
    let fx = fixture().await;
    let dev = fx.dev_a;
    let mut value: String = (0..6000).map(|i| (b'A' + (i % 26) as u8) as char).collect();
    // Any character but a line break, which balena refuses in variables (checked below).
    value.push_str("+/=== it''s 'quoted' (paren) a,b;c & d=e %41 \u{e9}\u{1F512} \\ \" \t end");
    let created = fx
        .post(
            USER,
            "device_environment_variable",
            json!({"device": dev, "name": "AWS_CERT", "value": value}),
        )
        .await;
    assert_eq!(created.status, 201);
    let literal = value.replace('\'', "''");
    let filter = format!("device eq {dev} and name eq 'AWS_CERT' and value eq '{literal}'");
    let rows = fx
        .get(
            USER,
            "/v7/device_environment_variable",
            &[("$select", "value"), ("$filter", &filter)],
        )
        .await
        .d();
    assert_eq!(rows, vec![json!({"value": value})]);
    assert_eq!(
        fx.delete(USER, "device_environment_variable", &filter)
            .await
            .status,
        200
    );
    assert!(fx.emu.device_vars(dev).is_empty());
    for line_break in ["a\nb", "a\rb"] {
        let refused = fx
            .post(
                USER,
                "device_environment_variable",
                json!({"device": dev, "name": "AWS_CERT", "value": line_break}),
            )
            .await;
        assert_eq!(
            (refused.status, refused.json()),
            (
                400,
                json!("Variable values cannot contain line break characters")
            )
        );
    }
}

// ------------------------------------------------------------------------------------------
// Keys and visibility
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn auth_is_required_and_both_key_forms_work() {
    let fx = fixture().await;
    let none = fx.send("GET", None, "/v7/device", None).await;
    // pinejs answers 401 with no body.
    assert_eq!((none.status, none.body.as_str()), (401, ""));
    let unknown = fx.send("GET", Some("nope"), "/v7/device", None).await;
    assert_eq!((unknown.status, unknown.body.as_str()), (401, ""));
    let by_param = fx
        .send(
            "GET",
            None,
            &format!("/v7/device?$select=id&apikey={USER}"),
            None,
        )
        .await;
    assert_eq!(by_param.d().len(), 2);
    let device_param = fx
        .send(
            "GET",
            None,
            &format!("/v7/device?apikey={DEV_KEY}&$select=id"),
            None,
        )
        .await;
    assert_eq!(ids(&device_param.d()), [fx.dev_a]);
    let v6 = fx
        .send("GET", Some(USER), "/v6/device?$select=id", None)
        .await;
    assert_eq!(v6.d().len(), 2);
    assert_eq!(
        fx.send("GET", Some(USER), "/v5/device", None).await.status,
        404
    );
    assert_eq!(
        fx.send("GET", Some(USER), "/v7/no_such_resource", None)
            .await
            .status,
        404
    );
    assert_eq!(fx.send("GET", None, "/ping", None).await.status, 200);
}

#[tokio::test]
async fn device_key_sees_only_its_own_rows() {
    let fx = fixture().await;
    let emu = &fx.emu;
    emu.set_device_var(fx.dev_a, "MINE", "a");
    emu.set_device_var(fx.dev_b, "THEIRS", "b");
    emu.set_service_var(fx.dev_a, "main", "MINE", "a");
    emu.set_service_var(fx.dev_b, "main", "THEIRS", "b");
    emu.set_device_tag(fx.dev_a, "mine", "a");
    emu.set_device_tag(fx.dev_b, "theirs", "b");

    let count = |res: &'static str| {
        let fx = &fx;
        async move {
            let user = fx.get(USER, &format!("/v7/{res}"), &[]).await.d().len();
            let device = fx.get(DEV_KEY, &format!("/v7/{res}"), &[]).await.d();
            (user, device)
        }
    };
    let (all, mine) = count("device").await;
    assert_eq!((all, ids(&mine)), (2, vec![fx.dev_a]));
    let (all, mine) = count("application").await;
    assert_eq!((all, ids(&mine)), (2, vec![fx.app_a]));
    let (all, mine) = count("service").await;
    assert_eq!(all, 4);
    assert!(
        mine.iter()
            .all(|s| s["application"] == json!({"__id": fx.app_a}))
            && mine.len() == 2
    );
    let (all, mine) = count("service_install").await;
    assert_eq!(all, 4);
    assert!(
        mine.iter()
            .all(|s| s["device"] == json!({"__id": fx.dev_a}))
            && mine.len() == 2
    );
    for res in [
        "device_environment_variable",
        "device_service_environment_variable",
        "device_tag",
    ] {
        let (all, mine) = count(res).await;
        assert_eq!((all, mine.len()), (2, 1), "{res}");
    }

    // Addressing the other device directly, by id or uuid or through a navigation: empty.
    assert!(
        fx.get(DEV_KEY, &format!("/v7/device({})", fx.dev_b), &[])
            .await
            .d()
            .is_empty()
    );
    assert!(
        fx.get(DEV_KEY, &format!("/v7/device(uuid='{UUID_B}')"), &[])
            .await
            .d()
            .is_empty()
    );
    let via_nav = fx
        .get(
            DEV_KEY,
            "/v7/device_environment_variable",
            &[("$filter", &format!("device/uuid eq '{UUID_B}'"))],
        )
        .await;
    assert!(via_nav.d().is_empty());
    let other_app = fx
        .get(DEV_KEY, &format!("/v7/application({})", fx.app_b), &[])
        .await;
    assert!(other_app.d().is_empty());
    // Expanding from its own application does not leak the other devices.
    let expanded = fx
        .get(
            DEV_KEY,
            "/v7/application",
            &[("$expand", "owns__device($select=uuid)")],
        )
        .await
        .d();
    assert_eq!(expanded[0]["owns__device"], json!([{"uuid": UUID_A}]));

    // Writes: foreign keys it cannot see are 401 (as balena answers), invisible rows never
    // match.
    let post_b = fx
        .post(
            DEV_KEY,
            "device_environment_variable",
            json!({"device": fx.dev_b, "name": "X", "value": "x"}),
        )
        .await;
    assert_eq!(post_b.status, 401);
    let si_b = emu.service_install_id(fx.dev_b, "main").expect("install");
    let post_si = fx
        .post(
            DEV_KEY,
            "device_service_environment_variable",
            json!({"service_install": si_b, "name": "X", "value": "x"}),
        )
        .await;
    assert_eq!(post_si.status, 401);
    let theirs = fx
        .get(
            USER,
            "/v7/device_environment_variable",
            &[("$filter", "name eq 'THEIRS'")],
        )
        .await
        .d();
    let theirs_id = ids(&theirs)[0];
    let patch = fx
        .send(
            "PATCH",
            Some(DEV_KEY),
            &format!("/v7/device_environment_variable({theirs_id})"),
            Some(json!({"value": "hacked"})),
        )
        .await;
    assert_eq!(patch.status, 200);
    let delete = fx
        .delete(DEV_KEY, "device_environment_variable", "name eq 'THEIRS'")
        .await;
    assert_eq!(delete.status, 200);
    assert_eq!(
        emu.device_vars(fx.dev_b).get("THEIRS").map(String::as_str),
        Some("b")
    );

    // Its own variables and tags it may write.
    let own = fx
        .post(
            DEV_KEY,
            "device_environment_variable",
            json!({"device": fx.dev_a, "name": "NEW", "value": "n"}),
        )
        .await;
    assert_eq!(own.status, 201);
    assert_eq!(
        fx.delete(DEV_KEY, "device_environment_variable", "name eq 'NEW'")
            .await
            .status,
        200
    );
    assert!(!emu.device_vars(fx.dev_a).contains_key("NEW"));
    // Other resources need a user key.
    assert_eq!(
        fx.post(DEV_KEY, "application", json!({"app_name": "Mine"}))
            .await
            .status,
        401
    );
    assert_eq!(
        fx.post(USER, "application", json!({"app_name": "Mine"}))
            .await
            .status,
        201
    );
}

// ------------------------------------------------------------------------------------------
// OData forms
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn foreign_keys_read_as_id_objects_unless_expanded() {
    let fx = fixture().await;
    let path = format!("/v7/device({})", fx.dev_a);
    let plain = fx
        .get(USER, &path, &[("$select", "id,belongs_to__application")])
        .await
        .d();
    assert_eq!(
        plain,
        vec![json!({"id": fx.dev_a, "belongs_to__application": {"__id": fx.app_a}})]
    );
    let expanded = fx
        .get(
            USER,
            &path,
            &[
                ("$select", "id"),
                ("$expand", "belongs_to__application($select=id,app_name)"),
            ],
        )
        .await
        .d();
    assert_eq!(
        expanded,
        vec![
            json!({"id": fx.dev_a, "belongs_to__application": [{"id": fx.app_a, "app_name": "FleetA"}]})
        ]
    );
    // Without $select every field comes back, foreign keys as {"__id"}, reverse navigations absent.
    let all = fx.get(USER, &path, &[]).await.d();
    assert_eq!(
        keys(&all[0]),
        [
            "belongs_to__application",
            "created_at",
            "device_name",
            "id",
            "modified_at",
            "uuid"
        ]
    );
    // A count of a to-many navigation.
    fx.emu.set_device_var(fx.dev_a, "A", "1");
    let counted = fx
        .get(
            USER,
            &path,
            &[
                ("$select", "id"),
                ("$expand", "device_environment_variable/$count"),
            ],
        )
        .await
        .d();
    assert_eq!(counted[0]["device_environment_variable"], json!(1));
}

#[tokio::test]
async fn key_forms_and_count() {
    let fx = fixture().await;
    assert_eq!(
        ids(&fx
            .get(USER, &format!("/v7/device({})", fx.dev_b), &[])
            .await
            .d()),
        [fx.dev_b]
    );
    assert_eq!(
        ids(&fx
            .get(USER, &format!("/v7/device(uuid='{UUID_B}')"), &[])
            .await
            .d()),
        [fx.dev_b]
    );
    assert_eq!(
        ids(&fx
            .get(USER, &format!("/v7/device(uuid=%27{UUID_B}%27)"), &[])
            .await
            .d()),
        [fx.dev_b]
    );
    assert!(
        fx.get(USER, "/v7/device(999)", &[]).await.d().is_empty(),
        "missing rows are empty, not 404"
    );
    fx.emu.set_device_var(fx.dev_a, "K", "v");
    let composite = fx
        .get(
            USER,
            &format!(
                "/v7/device_environment_variable(device={},name='K')",
                fx.dev_a
            ),
            &[],
        )
        .await
        .d();
    assert_eq!(composite[0]["value"], "v");
    let count = fx
        .get(
            USER,
            "/v7/device/$count",
            &[("$filter", "belongs_to__application/app_name eq 'FleetA'")],
        )
        .await;
    assert_eq!(count.json(), json!({"d": 1}));
}

#[tokio::test]
async fn percent_encoded_plus_and_raw_forms_are_equivalent() {
    let fx = fixture().await;
    let expect = vec![json!({"id": fx.dev_a})];
    for pq in [
        format!("/v7/device?$select=id&$filter=uuid%20eq%20%27{UUID_A}%27"),
        format!("/v7/device?$select=id&$filter=uuid+eq+'{UUID_A}'"),
        format!("/v7/device?%24select=id&%24filter=uuid%20eq%20%27{UUID_A}%27"),
        format!("/v7/device?$select=id&$filter=uuid eq '{UUID_A}'"),
        format!("/v7/device?$select=id&$filter=uuid%20eq%20%27{UUID_A}%27%20and%20id%20ne%20-1"),
        format!("/v7/device?$select=id&$filter=uuid%20eq%20%27{UUID_A}%27%20and%20id%20ne%20%2B0"),
        format!(
            "/v7/device?$select=id&$filter=(uuid+eq+'{UUID_A}')+and+(belongs_to__application+eq+{})",
            fx.app_a
        ),
        url_of(
            "/v7/device",
            &[
                ("$select", "id"),
                ("$filter", &format!("uuid eq '{UUID_A}'")),
            ],
        ),
    ] {
        let rows = fx.send("GET", Some(USER), &pq, None).await.d();
        assert_eq!(rows, expect, "{pq}");
    }
    // Inside a literal, `+` is a plus (decodeURIComponent), not a space as outside.
    fx.emu.set_device_var(fx.dev_a, "P", "a+b c");
    for (literal, matches) in [("'a%2Bb%20c'", 1), ("'a+b%20c'", 1), ("'a%2Bb+c'", 0)] {
        let pq = format!("/v7/device_environment_variable?$filter=value+eq+{literal}");
        let rows = fx.send("GET", Some(USER), &pq, None).await.d();
        assert_eq!(rows.len(), matches, "{pq}");
    }
}

/// `path_and_query` as reqwest sends it: a `'` in the query goes out as `%27` (which pinejs
/// reads as an apostrophe too).
fn as_sent(path_and_query: &str) -> String {
    match path_and_query.split_once('?') {
        Some((path, query)) => format!("{path}?{}", query.replace('\'', "%27")),
        None => path_and_query.to_string(),
    }
}

/// pinejs reads the raw URL: a percent-encoded syntax character is "Malformed url", wherever
/// it stands outside a string literal.
#[tokio::test]
async fn percent_encoded_syntax_is_a_malformed_url() {
    let fx = fixture().await;
    for pq in [
        "/v7/device?$select=id%2Cuuid".to_string(),
        "/v7/device?$expand=device_tag%28%24select%3Did%29".to_string(),
        "/v7/device?$expand=device_tag($select=id%3Btag_key)".to_string(),
        "/v7/device?$select=%69d".to_string(),
        "/v7/device?$sel%65ct=id".to_string(),
        "/v7/device?$filter=id%20eq%20%31".to_string(),
        "/v7/device/%24count".to_string(),
        format!("/v7/device%28uuid='{UUID_A}')"),
        // A lone %27 inside a literal closes it.
        "/v7/device?$filter=uuid%20eq%20'a%27'".to_string(),
    ] {
        let a = fx.send("GET", Some(USER), &pq, None).await;
        assert_eq!(
            (a.status, a.json()),
            (400, json!(format!("Malformed url: '{}'", as_sent(&pq)))),
            "{pq}"
        );
    }
    // Inside a literal everything is decoded, `%27%27` is a quote and `+` stays a plus.
    fx.emu.set_device_var(fx.dev_a, "P", "a+b c,(d)='e'");
    for literal in [
        "'a+b%20c%2C%28d%29%3D''e'''",
        "'a%2Bb%20c,(d)=%27%27e%27%27'",
        "%27a+b%20c,(d)=''e''%27",
    ] {
        let pq =
            format!("/v7/device_environment_variable?$select=name&$filter=value%20eq%20{literal}");
        assert_eq!(
            fx.send("GET", Some(USER), &pq, None).await.d(),
            vec![json!({"name": "P"})],
            "{pq}"
        );
    }
    // An escape decodeURIComponent refuses fails inside pinejs: 500, no body.
    for pq in [
        "/v7/device?$filter=uuid%20eq%20%27%ZZ%27",
        "/v7/device?$filter=uuid%20eq%20%27%FF%27",
        "/v7/device?$filter=uuid%20eq%20'a%2'",
    ] {
        let a = fx.send("GET", Some(USER), pq, None).await;
        assert_eq!((a.status, a.body.as_str()), (500, ""), "{pq}");
    }
    // A repeated option: the last one wins.
    let rows = fx
        .send(
            "GET",
            Some(USER),
            &format!("/v7/device({})?$select=id&$select=uuid", fx.dev_a),
            None,
        )
        .await
        .d();
    assert_eq!(rows, vec![json!({"uuid": UUID_A})]);
}

#[tokio::test]
async fn doubled_quotes_and_injection_attempts_are_data() {
    let fx = fixture().await;
    fx.emu.set_device_var(fx.dev_a, "Q", "it's");
    fx.emu.set_device_var(fx.dev_a, "R", "other");
    let rows = fx
        .get(
            USER,
            "/v7/device_environment_variable",
            &[("$filter", "value eq 'it''s'")],
        )
        .await
        .d();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["name"], "Q");
    // A value that tries to close the literal is just a value: nothing matches.
    let rows = fx
        .get(
            USER,
            "/v7/device_environment_variable",
            &[("$filter", "value eq 'x'' or 1 eq 1 or name eq '''")],
        )
        .await
        .d();
    assert!(rows.is_empty());
    // The same without escaping does not parse.
    let bad = fx
        .get(
            USER,
            "/v7/device_environment_variable",
            &[("$filter", "value eq 'x' or 1 eq 1'")],
        )
        .await;
    assert_eq!(bad.status, 400);
    // A DELETE whose guard is an injection attempt deletes nothing.
    let del = fx
        .delete(
            USER,
            "device_environment_variable",
            "name eq 'R'' or name ne ''x'",
        )
        .await;
    assert_eq!(del.status, 200);
    assert_eq!(fx.emu.device_vars(fx.dev_a).len(), 2);
}

#[tokio::test]
async fn malformed_input_is_400_with_a_json_string_body() {
    let fx = fixture().await;
    let filters = [
        "",
        "uuid eq",
        "uuid eq 'x",
        "uuid eq 'x' or 1 eq 1'",
        "(uuid eq 'x'",
        "uuid eq 'x')",
        "((uuid eq 'x') and",
        "uuid eq 'x' and or",
        "bogus eq 1",
        "uuid/bogus eq 1",
        "device_tag eq 1",
        "id eq 'text'",
        "uuid eq 1.5",
        "uuid in 'x'",
        "uuid in ('a' 'b')",
        "device_tag/any(t: t/bogus eq 1)",
        "device_tag/any(t t/tag_key eq 1)",
        "unknownfn(uuid)",
        "uuid eq @param",
        "uuid ~ 'x'",
        "uuid",
        "not",
        "99999999999999999999 eq id",
    ];
    for filter in filters {
        let a = fx.get(USER, "/v7/device", &[("$filter", filter)]).await;
        assert_eq!(
            a.status, 400,
            "filter {filter:?} -> {} {}",
            a.status, a.body
        );
        assert!(a.json().is_string(), "{}", a.body);
        let ct = a
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert!(ct.starts_with("application/json"), "{ct}");
    }
    let deep = format!("{}uuid eq 'x'{}", "(".repeat(5000), ")".repeat(5000));
    assert_eq!(
        fx.get(USER, "/v7/device", &[("$filter", &deep)])
            .await
            .status,
        400
    );
    for pq in [
        "/v7/device?$select=bogus",
        "/v7/device?$select=id,,uuid",
        "/v7/device?$expand=bogus",
        "/v7/device?$expand=uuid",
        "/v7/device?$expand=device_tag($select=bogus)",
        "/v7/device?$expand=device_tag($filter=tag_key eq 'x'",
        "/v7/device?$expand=device_tag($unknown=1)",
        "/v7/device?$top=-1",
        "/v7/device?$top=x",
        "/v7/device?$orderby=bogus desc",
        "/v7/device?$bogus=1",
        "/v7/device(",
        "/v7/device(uuid=)",
        "/v7/device(1)junk",
    ] {
        let status = fx.status_of(pq).await;
        assert_eq!(status, 400, "{pq}");
    }
    // Bad write bodies.
    for body in [
        json!([]),
        json!({"device": "x", "name": "A", "value": "v"}),
        json!({"device": 1, "name": "A"}),
        json!({"device": 1, "name": "A", "value": "v", "bogus": 1}),
        json!({"id": 5, "device": 1, "name": "A", "value": "v"}),
    ] {
        let a = fx
            .post(USER, "device_environment_variable", body.clone())
            .await;
        assert_eq!(a.status, 400, "{body}: {}", a.body);
    }
    let not_json = fx
        .send("POST", Some(USER), "/v7/device_environment_variable", None)
        .await;
    assert_eq!(not_json.status, 400);
    let missing_fk = fx
        .post(
            USER,
            "device_environment_variable",
            json!({"device": 999, "name": "A", "value": "v"}),
        )
        .await;
    // The database's foreign key answers, as balena words it.
    assert_eq!(
        (missing_fk.status, missing_fk.json()),
        (409, json!("Data is referenced by device."))
    );
    let post_to_entity = fx
        .send(
            "POST",
            Some(USER),
            "/v7/device_environment_variable(1)",
            Some(json!({})),
        )
        .await;
    assert_eq!(post_to_entity.status, 400);
    // Still serving.
    assert_eq!(fx.get(USER, "/v7/device", &[]).await.d().len(), 2);
}

/// Random garbage built from OData's own characters never breaks the server: every answer is a
/// 200 or a 400.
#[tokio::test]
async fn fuzzed_filters_get_200_or_400() {
    let fx = fixture().await;
    let atoms = [
        "uuid",
        "id",
        "name",
        " eq ",
        " ne ",
        " gt ",
        " and ",
        " or ",
        "not ",
        "(",
        ")",
        "'",
        "''",
        "'x'",
        "1",
        "-",
        "null",
        "true",
        "/",
        "any(",
        "all(",
        "d:",
        "d/",
        ",",
        " in ",
        "device_tag",
        "tag_key",
        "$count",
        "startswith(",
        "%",
        "%2",
        "+",
        " ",
        "\u{e9}",
        "belongs_to__application",
        "datetime'",
        ";",
        "=",
    ];
    let mut seed: u64 = 0x5eed_1234_abcd_ef01;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..400 {
        let len = (next() % 12) as usize + 1;
        let filter: String = (0..len)
            .map(|_| atoms[(next() % atoms.len() as u64) as usize])
            .collect();
        let a = fx.get(USER, "/v7/device", &[("$filter", &filter)]).await;
        assert!(
            a.status == 200 || a.status == 400,
            "{filter:?} -> {} {}",
            a.status,
            a.body
        );
        let expand = format!("device_tag($filter={filter})");
        let a = fx.get(USER, "/v7/device", &[("$expand", &expand)]).await;
        assert!(
            a.status == 200 || a.status == 400,
            "{expand:?} -> {} {}",
            a.status,
            a.body
        );
    }
    assert_eq!(fx.get(USER, "/v7/device", &[]).await.d().len(), 2);
}

#[tokio::test]
async fn long_filters_are_flat_not_deep() {
    let fx = fixture().await;
    // About 48 KB of URL: thousands of terms must neither overflow a stack nor be refused.
    let chain = vec!["id+ne+0"; 4000].join("+and+");
    let a = fx
        .send(
            "GET",
            Some(USER),
            &format!("/v7/device?$select=id&$filter={chain}"),
            None,
        )
        .await;
    assert_eq!(a.d().len(), 2);
    let chain = vec!["id+eq+0"; 4000].join("+or+");
    let a = fx
        .send(
            "GET",
            Some(USER),
            &format!("/v7/device?$select=id&$filter={chain}"),
            None,
        )
        .await;
    assert!(a.d().is_empty());
}

#[tokio::test]
async fn filter_operators() {
    let fx = fixture().await;
    let emu = &fx.emu;
    for (name, value) in [("A", "alpha"), ("B", "beta"), ("C", "gamma")] {
        emu.set_device_var(fx.dev_a, name, value);
    }
    let names = |filter: &'static str| {
        let fx = &fx;
        async move {
            let rows = fx
                .get(
                    USER,
                    "/v7/device_environment_variable",
                    &[("$filter", filter), ("$orderby", "name asc")],
                )
                .await
                .d();
            rows.iter()
                .map(|r| r["name"].as_str().unwrap_or("").to_string())
                .collect::<Vec<_>>()
                .join(",")
        }
    };
    assert_eq!(names("name ne 'B'").await, "A,C");
    assert_eq!(names("name gt 'A' and name le 'C'").await, "B,C");
    assert_eq!(names("name ge 'B'").await, "B,C");
    assert_eq!(names("name lt 'B'").await, "A");
    assert_eq!(names("name in ('A','C')").await, "A,C");
    assert_eq!(names("not (name eq 'A')").await, "B,C");
    assert_eq!(
        names("startswith(value,'al') or endswith(value,'ma')").await,
        "A,C"
    );
    assert_eq!(names("contains(value,'et')").await, "B");
    assert_eq!(names("substringof('amm',value)").await, "C");
    assert_eq!(names("tolower(name) eq 'b'").await, "B");
    assert_eq!(
        names("device/uuid eq 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'").await,
        "A,B,C"
    );
    assert_eq!(
        names("device/any(d:d/uuid eq 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa')").await,
        "A,B,C"
    );
    assert_eq!(
        names("device/belongs_to__application/app_name eq 'FleetB'").await,
        ""
    );
    assert_eq!(names("value ne null and name eq 'A'").await, "A");
    assert_eq!(names("value eq null").await, "");

    let devices = |filter: &'static str| {
        let fx = &fx;
        async move { ids(&fx.get(USER, "/v7/device", &[("$filter", filter)]).await.d()) }
    };
    assert_eq!(
        devices("device_environment_variable/any(v:v/name eq 'B')").await,
        [fx.dev_a]
    );
    assert_eq!(
        devices("device_environment_variable/any()").await,
        [fx.dev_a]
    );
    assert_eq!(
        devices("device_environment_variable/all(v:v/name ne 'B')").await,
        [fx.dev_b],
        "all() is true on empty sets"
    );
    assert_eq!(
        devices("device_environment_variable/$count ge 3").await,
        [fx.dev_a]
    );
    assert_eq!(
        devices("service_install/any(si:si/installs__service/any(s:s/service_name eq 'cloud-relay') and si/device/uuid eq 'bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb')").await,
        [fx.dev_b]
    );

    let top = fx
        .get(
            USER,
            "/v7/device",
            &[("$select", "id"), ("$orderby", "id desc"), ("$top", "1")],
        )
        .await
        .d();
    assert_eq!(ids(&top), [fx.dev_b]);
    let skip = fx
        .get(USER, "/v7/device", &[("$select", "id"), ("$skip", "1")])
        .await
        .d();
    assert_eq!(ids(&skip), [fx.dev_b]);
    let nested = fx
        .get(
            USER,
            &format!("/v7/device({})", fx.dev_a),
            &[(
                "$expand",
                "device_environment_variable($select=name;$orderby=name desc;$top=2)",
            )],
        )
        .await
        .d();
    assert_eq!(
        nested[0]["device_environment_variable"],
        json!([{"name": "C"}, {"name": "B"}])
    );
}

#[tokio::test]
async fn delete_and_patch_without_match_succeed() {
    let fx = fixture().await;
    let a = fx
        .delete(USER, "device_environment_variable", "name eq 'NOTHING'")
        .await;
    assert_eq!((a.status, a.body.as_str()), (200, ""));
    let a = fx
        .send("DELETE", Some(USER), "/v7/device_tag(12345)", None)
        .await;
    assert_eq!(a.status, 200);
    let a = fx
        .send(
            "PATCH",
            Some(USER),
            "/v7/device_environment_variable(12345)",
            Some(json!({"value": "x"})),
        )
        .await;
    assert_eq!(a.status, 200);
    // A PATCH that would break a unique constraint is a 409 and changes nothing.
    fx.emu.set_device_var(fx.dev_a, "ONE", "1");
    fx.emu.set_device_var(fx.dev_a, "TWO", "2");
    let a = fx
        .send(
            "PATCH",
            Some(USER),
            "/v7/device_environment_variable?$filter=name%20eq%20'TWO'",
            Some(json!({"name": "ONE"})),
        )
        .await;
    assert_eq!(a.status, 409);
    assert_eq!(fx.emu.device_vars(fx.dev_a).len(), 2);
}

// ------------------------------------------------------------------------------------------
// Test hooks
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn faults_fire_by_method_resource_skip_and_times() {
    let fx = fixture().await;
    fx.emu.inject_fault(Fault {
        method: Some("POST".into()),
        resource: Some("device_tag".into()),
        status: 429,
        retry_after: Some(1),
        times: 2,
        skip: 1,
    });
    let tag = |v: &str| json!({"device": fx.dev_a, "tag_key": v, "value": v});
    // Other methods and resources pass.
    assert_eq!(fx.get(USER, "/v7/device_tag", &[]).await.status, 200);
    assert_eq!(
        fx.post(
            USER,
            "device_environment_variable",
            json!({"device": fx.dev_a, "name": "N", "value": "v"})
        )
        .await
        .status,
        201
    );
    // skip = 1: the first matching request passes, the next two fail, then it is used up.
    assert_eq!(fx.post(USER, "device_tag", tag("a")).await.status, 201);
    for _ in 0..2 {
        let a = fx.post(USER, "device_tag", tag("b")).await;
        assert_eq!(a.status, 429);
        assert_eq!(
            a.headers.get("retry-after").and_then(|v| v.to_str().ok()),
            Some("1")
        );
    }
    assert_eq!(fx.post(USER, "device_tag", tag("b")).await.status, 201);
    assert_eq!(
        fx.emu.device_tags(fx.dev_a).len(),
        2,
        "faulted requests were not served"
    );

    // Faults apply before auth; clear_faults removes pending ones.
    fx.emu.inject_fault(Fault::new(503).times(5));
    let a = fx.send("GET", None, "/v7/device", None).await;
    assert_eq!(a.status, 503);
    assert!(a.headers.get("retry-after").is_none());
    fx.emu.clear_faults();
    assert_eq!(fx.get(USER, "/v7/device", &[]).await.status, 200);

    let statuses: Vec<u16> = fx.emu.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 201, 201, 429, 429, 201, 503, 200]);
}

#[tokio::test]
async fn requests_are_recorded_raw_with_resource_and_key() {
    let fx = fixture().await;
    let pq = format!("/v7/device?$select=id&$filter=uuid%20eq%20%27{UUID_A}%27");
    fx.send("GET", Some(DEV_KEY), &pq, None).await;
    fx.send(
        "GET",
        None,
        &format!("/v7/device_tag(1)?apikey={USER}"),
        None,
    )
    .await;
    fx.send("GET", Some("bad"), "/v7/device_environment_variable", None)
        .await;
    let reqs = fx.emu.requests();
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[0].method, "GET");
    assert_eq!(reqs[0].path_and_query, pq);
    assert_eq!(reqs[0].resource, "device");
    assert_eq!(reqs[0].key.as_deref(), Some(DEV_KEY));
    assert_eq!(reqs[0].status, 200);
    assert!(reqs[0].started <= reqs[0].finished);
    assert_eq!(reqs[1].resource, "device_tag");
    assert_eq!(reqs[1].key.as_deref(), Some(USER));
    assert_eq!(
        (reqs[2].resource.as_str(), reqs[2].status),
        ("device_environment_variable", 401)
    );
    assert!(reqs[1].started >= reqs[0].finished);
    fx.emu.clear_requests();
    assert!(fx.emu.requests().is_empty());
}

#[tokio::test]
async fn latency_delays_answers() {
    let fx = fixture().await;
    fx.emu.set_latency(Duration::from_millis(150));
    let t = Instant::now();
    assert_eq!(fx.get(USER, "/v7/device", &[]).await.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(150));
    let r = &fx.emu.requests()[0];
    assert!(r.finished - r.started >= Duration::from_millis(150));
    fx.emu.set_latency(Duration::ZERO);
}

#[tokio::test]
async fn seeding_helpers_match_http_state() {
    let fx = fixture().await;
    // add_service after add_device installed it on the existing device.
    assert!(fx.emu.service_install_id(fx.dev_a, "cloud-relay").is_some());
    let installs = fx
        .get(
            USER,
            "/v7/service_install",
            &[
                ("$filter", &format!("device eq {}", fx.dev_a)),
                ("$expand", "installs__service($select=service_name)"),
            ],
        )
        .await
        .d();
    let mut names: Vec<&str> = installs
        .iter()
        .filter_map(|i| i["installs__service"][0]["service_name"].as_str())
        .collect();
    names.sort();
    assert_eq!(names, ["cloud-relay", "main"]);
    // POSTing a device over HTTP also installs its application's services.
    let created = fx
        .post(USER, "device", json!({"uuid": "cccccccccccccccccccccccccccccccc", "belongs_to__application": {"__id": fx.app_b}}))
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.json()["id"].as_i64().expect("id");
    assert!(fx.emu.service_install_id(id, "main").is_some());
    // Deleting the device cascades to its variables.
    fx.emu.set_device_var(id, "V", "1");
    assert_eq!(
        fx.send("DELETE", Some(USER), &format!("/v7/device({id})"), None)
            .await
            .status,
        200
    );
    assert!(fx.emu.device_vars(id).is_empty());
    assert_eq!(fx.emu.service_install_id(id, "main"), None);
    let _ = fx.app_b;
}

#[tokio::test]
async fn shutdown_stops_serving() {
    let fx = fixture().await;
    let url = format!("{}/ping", fx.emu.url());
    assert!(fx.http.get(&url).send().await.is_ok());
    let emu = fx.emu.clone();
    drop(fx);
    emu.shutdown().await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    assert!(client.get(&url).send().await.is_err());
}

#[tokio::test]
async fn dropping_the_last_clone_stops_the_server() {
    let emu = BalenaEmulator::start().await.expect("emulator starts");
    let url = format!("{}/ping", emu.url());
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let clone = emu.clone();
    drop(emu);
    assert!(
        client.get(&url).send().await.is_ok(),
        "a clone keeps it running"
    );
    drop(clone);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let fresh = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client");
        if fresh.get(&url).send().await.is_err() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "server still answering after drop"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes are atomic: of many concurrent creations of the same lock tag exactly one wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_lock_creation_has_one_winner() {
    let fx = fixture().await;
    fx.emu.set_latency(Duration::from_millis(20));
    let mut tasks = Vec::new();
    for i in 0..16 {
        let http = fx.http.clone();
        let url = format!("{}/v7/device_tag", fx.emu.url());
        let body =
            json!({"device": fx.dev_a, "tag_key": "provision-lock", "value": format!("owner-{i}")});
        tasks.push(tokio::spawn(async move {
            let res = http
                .post(url)
                .bearer_auth(USER)
                .json(&body)
                .send()
                .await
                .expect("sent");
            res.status().as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.expect("task"));
    }
    statuses.sort();
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        15,
        "{statuses:?}"
    );
    assert_eq!(fx.emu.device_tags(fx.dev_a).len(), 1);
}

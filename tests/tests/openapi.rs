//! `deploy/openapi.yaml` and the function kept in step, so that neither changes alone:
//!
//! 1. Error codes: the document's `ErrorCode` enum is exactly `provision_core::error::ALL_CODES`;
//!    every documented error status accepts exactly codes of that status, every code is
//!    documented under its status somewhere; the real `error_response` for every code conforms
//!    (with `Retry-After` on 503 and `Allow` on 405); and no `"provision.*"` code literal in
//!    the function's sources is missing from `ALL_CODES`.
//! 2. Routes and methods: the documented paths are the ones Cloud Run serves, each documents
//!    exactly the methods its 405 answer's `Allow` names (for the provisioning endpoint, those
//!    `parse` does not refuse as `bad-method`), and the 405 every other method gets.
//! 3. Real answers: `provision-cloudrun` serving each cloud against the emulators is driven
//!    through every documented answer it can give (created, already-provisioned, rotated,
//!    repaired, deleted, not-provisioned, provisioned, partial, every 4xx, 502, 503 with
//!    `Retry-After`, 405 for every other method on every path), and on GCP through the
//!    hostile-input corpus too; every answer must be documented for its path, method and
//!    status, with its content type, required headers and body schema. On GCP every documented
//!    (operation, status) but the 500 (a bug's answer, checked in-process in 1.) must have been
//!    seen, so the document lists no answer the function does not give.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method};
use provision_core::api::request::{self, MAX_BODY_BYTES, Route};
use provision_core::error::{ALL_CODES, ProvisionError, UpstreamFailure, codes};
use provision_testkit::checks::Target;
use provision_testkit::events::{Answer, Call};
use provision_testkit::stack::Stack;
use provision_testkit::world::{AwsWorld, AzureWorld, Device, GcpWorld, Options, SERVICE};
use provision_testkit::{Fault, paths};
use serde_json::{Value, json};

/// The methods an OpenAPI path item can document.
const OPENAPI_METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// The document, as JSON, with what the checks need to walk it.
struct Spec {
    doc: Value,
}

/// A JSON pointer token for `key` (`/provision` is `~1provision`).
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

impl Spec {
    fn load() -> Spec {
        let path = paths::repo_root().join("deploy/openapi.yaml");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let doc: Value = serde_yaml::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()));
        assert!(
            doc["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.1.")),
            "an OpenAPI 3.1 document"
        );
        Spec { doc }
    }

    /// The object at `pointer`, following `$ref`s of OpenAPI objects (path items, responses,
    /// headers; all local) to the object they name, with that object's own pointer.
    fn resolve(&self, pointer: &str) -> Option<(String, &Value)> {
        let mut pointer = pointer.to_string();
        for _ in 0..8 {
            let value = self.doc.pointer(&pointer)?;
            match value.get("$ref").and_then(Value::as_str) {
                Some(target) => {
                    pointer = target
                        .strip_prefix('#')
                        .unwrap_or_else(|| panic!("non-local $ref {target}"))
                        .to_string()
                }
                None => return Some((pointer, value)),
            }
        }
        panic!("a $ref loop at {pointer}")
    }

    fn paths(&self) -> BTreeSet<String> {
        self.doc["paths"]
            .as_object()
            .expect("paths")
            .keys()
            .cloned()
            .collect()
    }

    /// The path item of `path`, resolved, with its pointer.
    fn path_item(&self, path: &str) -> Option<(String, &Value)> {
        self.resolve(&format!("/paths/{}", escape(path)))
    }

    /// The methods `path` documents, upper case.
    fn methods(&self, path: &str) -> BTreeSet<String> {
        let (_, item) = self
            .path_item(path)
            .unwrap_or_else(|| panic!("{path} is not documented"));
        OPENAPI_METHODS
            .iter()
            .filter(|m| item.get(**m).is_some())
            .map(|m| m.to_uppercase())
            .collect()
    }

    /// The responses object that answers `method` on `path` with its pointer, and the key the
    /// answers are counted under: the operation's, or for a method the path item does not
    /// document, its `x-other-methods` (`OTHER`).
    fn responses(&self, path: &str, method: &str) -> Option<(String, &Value, String)> {
        let (item_at, item) = self.path_item(path)?;
        let lower = method.to_ascii_lowercase();
        let (at, key) = if method == method.to_ascii_uppercase() && item.get(&lower).is_some() {
            (format!("{item_at}/{lower}/responses"), method.to_string())
        } else {
            (
                format!("{item_at}/x-other-methods/responses"),
                "OTHER".to_string(),
            )
        };
        let (at, responses) = self.resolve(&at)?;
        Some((at, responses, format!("{item_at} {key}")))
    }

    /// The documented response for `status`, resolved, with its pointer.
    fn response(&self, path: &str, method: &str, status: u16) -> Option<(String, &Value)> {
        let (at, _, _) = self.responses(path, method)?;
        self.resolve(&format!("{at}/{status}"))
    }

    /// Every documented (operation, status) as `responses` counts them.
    fn documented(&self) -> BTreeSet<(String, u16)> {
        let mut all = BTreeSet::new();
        for path in self.paths() {
            let (item_at, item) = self.path_item(&path).unwrap();
            let mut keys: Vec<String> = self.methods(&path).into_iter().collect();
            if item.get("x-other-methods").is_some() {
                keys.push("OTHER".into());
            }
            for key in keys {
                let method = if key == "OTHER" {
                    "PROPFIND"
                } else {
                    key.as_str()
                };
                let (_, responses, counted) = self.responses(&path, method).unwrap();
                for status in responses.as_object().unwrap().keys() {
                    all.insert((
                        counted.clone(),
                        status
                            .parse::<u16>()
                            .unwrap_or_else(|_| panic!("{item_at}: status {status}")),
                    ));
                }
            }
        }
        all
    }

    /// A validator for the schema at `pointer`: the whole document with a `$ref` to it at the
    /// top, so the schema's own `$ref`s resolve in the document.
    fn validator(&self, pointer: &str) -> jsonschema::Validator {
        let mut root = self.doc.clone();
        root["$ref"] = json!(format!("#{pointer}"));
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .build(&root)
            .unwrap_or_else(|e| panic!("the schema at {pointer} does not compile: {e}"))
    }

    fn schema_errors(&self, pointer: &str, instance: &Value) -> Vec<String> {
        self.validator(pointer)
            .iter_errors(instance)
            .map(|e| format!("{e} (at '{}')", e.instance_path()))
            .collect()
    }

    /// What is wrong with `answer` as the document's answer to `method` on `path`; empty
    /// when it conforms: the status is documented, the content type is `application/json` and
    /// a documented one, required headers are there and every documented header that is there
    /// matches its schema, and the body matches the schema (or is empty where none is
    /// documented, as for `HEAD`).
    fn problems(&self, path: &str, method: &str, answer: &Answer) -> Vec<String> {
        let Some((at, response)) = self.response(path, method, answer.status) else {
            return vec![format!("status {} is not documented", answer.status)];
        };
        let mut problems = Vec::new();
        let content_type = answer.headers.get("content-type").map(String::as_str);
        if content_type != Some("application/json") {
            problems.push(format!(
                "content type {content_type:?}, not application/json"
            ));
        }
        for name in response
            .get("headers")
            .and_then(Value::as_object)
            .map(|h| h.keys().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            let (header_at, header) = self
                .resolve(&format!("{at}/headers/{}", escape(name)))
                .unwrap();
            match answer.headers.get(&name.to_ascii_lowercase()) {
                None if header["required"] == true => problems.push(format!("no {name} header")),
                None => {}
                Some(value) => {
                    // A header is text; an integer schema reads it as a number (`simple` style).
                    let typed = match header["schema"]["type"].as_str() {
                        Some("integer") => value
                            .parse::<i64>()
                            .map(Value::from)
                            .unwrap_or_else(|_| json!(value)),
                        _ => json!(value),
                    };
                    for e in self.schema_errors(&format!("{header_at}/schema"), &typed) {
                        problems.push(format!("header {name}: {e}"));
                    }
                }
            }
        }
        let content = response.get("content").and_then(Value::as_object);
        match content {
            _ if method == "HEAD" || content.is_none() => {
                if !answer.raw_body.is_empty() {
                    problems.push(format!(
                        "a body where none is documented: {}",
                        answer.raw_body
                    ));
                }
            }
            Some(content) => {
                let media = content_type
                    .unwrap_or("")
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim();
                if !content.contains_key(media) {
                    problems.push(format!("content type {media:?} is not documented"));
                } else {
                    match serde_json::from_str::<Value>(&answer.raw_body) {
                        Err(e) => problems.push(format!("the body is not JSON: {e}")),
                        Ok(body) => problems.extend(self.schema_errors(
                            &format!("{at}/content/{}/schema", escape(media)),
                            &body,
                        )),
                    }
                }
            }
            None => unreachable!(),
        }
        problems
    }
}

fn answer_of(response: http::Response<Bytes>) -> Answer {
    let headers: BTreeMap<String, String> = response
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                v.to_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let raw_body = String::from_utf8_lossy(response.body()).into_owned();
    Answer {
        status: response.status().as_u16(),
        headers,
        body: serde_json::from_str(&raw_body).unwrap_or(Value::Null),
        raw_body,
    }
}

/// The methods the core serves on `path`, as its 405 answers' `Allow` lists them.
fn allowed_on(path: &str) -> &'static str {
    match request::route(path) {
        Route::Health => request::HEALTH_METHODS,
        Route::Provision => request::PROVISION_METHODS,
    }
}

/// An error carrying `code`, as the function makes them for a request to `path`. A code this
/// cannot make fails the test: add it here, and to the document.
fn error_with(code: &'static str, path: &str) -> ProvisionError {
    let uuid = "7cf02a69e4d34c9da573914963cf54fd".to_string();
    match code {
        codes::NO_BODY
        | codes::BAD_JSON
        | codes::BAD_UUID
        | codes::BAD_SERVICE
        | codes::BAD_CSR => ProvisionError::bad_request(
            code,
            "field 'uuid' must be 32 or 62 lowercase hex characters",
        ),
        "provision.request.bad-method" => request::bad_method(&Method::PUT, allowed_on(path)),
        "provision.request.too-large" => ProvisionError::TooLarge {
            limit: MAX_BODY_BYTES,
        },
        "provision.request.bad-content-type" => ProvisionError::BadContentType {
            got: "'text/plain'".into(),
        },
        "provision.auth.missing" => ProvisionError::AuthMissing,
        "provision.auth.invalid" => {
            ProvisionError::AuthInvalid("balenaCloud does not accept this key".into())
        }
        "provision.auth.forbidden" => ProvisionError::Forbidden(uuid),
        "provision.device.not-found" => ProvisionError::DeviceNotFound(uuid),
        "provision.device.busy" => ProvisionError::Busy(uuid),
        "provision.upstream.balena" => ProvisionError::balena(
            "reading the device",
            UpstreamFailure::Unavailable {
                detail: "connection refused".into(),
            },
        ),
        "provision.upstream.cloud" => ProvisionError::cloud(
            "reading the registry",
            UpstreamFailure::Refused {
                status: 403,
                detail: "denied".into(),
            },
        ),
        "provision.upstream.throttled" => ProvisionError::balena(
            "reading the device",
            UpstreamFailure::Throttled {
                retry_after: Some(Duration::from_secs(7)),
            },
        ),
        "provision.internal" => {
            ProvisionError::Internal("the request did not finish within 30 s".into())
        }
        other => panic!(
            "ALL_CODES has {other}, which this test cannot make: add it to error_with and to deploy/openapi.yaml"
        ),
    }
}

/// Every `"provision.…"` string literal in these source trees.
fn code_literals(dirs: &[&str]) -> BTreeSet<String> {
    fn walk(dir: &std::path::Path, found: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, found);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for piece in text.split("\"provision.").skip(1) {
                    let literal: String = piece
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || *c == '.' || *c == '-')
                        .collect();
                    if piece[literal.len()..].starts_with('"') {
                        found.insert(format!("provision.{literal}"));
                    }
                }
            }
        }
    }
    let mut found = BTreeSet::new();
    for dir in dirs {
        walk(&paths::repo_root().join(dir), &mut found);
    }
    found
}

#[test]
fn error_codes_are_the_documented_ones() {
    let spec = Spec::load();
    let documented: BTreeSet<&str> = spec.doc["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .expect("components.schemas.ErrorCode.enum")
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let listed: BTreeSet<&str> = ALL_CODES.iter().map(|(code, _)| *code).collect();
    assert_eq!(
        documented, listed,
        "the document's ErrorCode enum and provision_core::error::ALL_CODES differ"
    );

    let literals = code_literals(&["provision-core/src", "crates"]);
    let unlisted: Vec<&String> = literals
        .iter()
        .filter(|l| !listed.contains(l.as_str()))
        .collect();
    assert!(
        unlisted.is_empty(),
        "codes in the sources that ALL_CODES does not list: {unlisted:?}"
    );

    // Which codes each documented error answer accepts: each must be a code of its status, and
    // every code must be accepted under its status somewhere.
    let mut accepted: BTreeSet<(&str, u16)> = BTreeSet::new();
    let mut where_accepted: BTreeMap<&str, Vec<(String, String)>> = BTreeMap::new();
    for path in spec.paths() {
        let mut methods: Vec<String> = spec.methods(&path).into_iter().collect();
        methods.push("PROPFIND".into());
        for method in methods {
            let Some((_, responses, _)) = spec.responses(&path, &method) else {
                continue;
            };
            for status in responses
                .as_object()
                .unwrap()
                .keys()
                .map(|s| s.parse::<u16>().unwrap())
                .filter(|s| *s >= 400)
            {
                let (at, response) = spec.response(&path, &method, status).unwrap();
                let Some(content) = response.get("content") else {
                    continue;
                };
                assert!(
                    content.get("application/json").is_some(),
                    "{at}: errors are JSON"
                );
                let schema = format!("{at}/content/application~1json/schema");
                let validator = spec.validator(&schema);
                let mut any = false;
                for (code, code_status) in ALL_CODES {
                    let body = json!({"error": {"code": code, "message": "m"}, "request_id": "r"});
                    if validator.is_valid(&body) {
                        assert_eq!(
                            *code_status, status,
                            "{method} {path}: the {status} answer accepts {code}, a {code_status} code"
                        );
                        accepted.insert((code, status));
                        where_accepted
                            .entry(code)
                            .or_default()
                            .push((path.clone(), method.clone()));
                        any = true;
                    }
                }
                assert!(any, "{method} {path}: the {status} answer accepts no code");
                assert!(!validator.is_valid(&json!({"error": {"code": "provision.nothing", "message": "m"}, "request_id": "r"})));
            }
        }
    }
    let all: BTreeSet<(&str, u16)> = ALL_CODES.iter().copied().collect();
    assert_eq!(
        accepted, all,
        "codes the document accepts, by status, and ALL_CODES differ"
    );

    // The real error answer for every code conforms wherever the document accepts the code.
    for (code, status) in ALL_CODES {
        for (path, method) in &where_accepted[code] {
            let error = error_with(code, path);
            assert_eq!((error.code(), error.status().as_u16()), (*code, *status));
            let answer = answer_of(provision_core::api::error_response(
                &error,
                "5f0c4a5e-3c1d-4e47-9a0c-2b1b0b2f7a11",
            ));
            let problems = spec.problems(path, method, &answer);
            assert!(
                problems.is_empty(),
                "{code} for {method} {path}: {problems:?}\n{}",
                answer.raw_body
            );
            assert_eq!(
                answer.headers.contains_key("retry-after"),
                *status == 503,
                "{code}: Retry-After with every 503, and only then"
            );
            assert_eq!(
                answer.headers.contains_key("allow"),
                *status == 405,
                "{code}: Allow with the 405"
            );
        }
    }
}

#[test]
fn routes_and_methods_are_the_documented_ones() {
    let spec = Spec::load();
    let paths = spec.paths();
    assert_eq!(
        paths,
        BTreeSet::from([
            "/".to_string(),
            "/provision".to_string(),
            "/healthz".to_string()
        ]),
        "the paths Cloud Run serves"
    );

    let listed = |allow: &str| -> BTreeSet<String> {
        allow.split(',').map(|m| m.trim().to_string()).collect()
    };
    // The methods the provisioning endpoint serves: those `parse` does not refuse as a bad
    // method (it refuses before reading anything, so an empty request tells).
    let extra = ["CONNECT", "PROPFIND", "QUERY", "post", "Get"].map(String::from);
    let candidates = OPENAPI_METHODS
        .iter()
        .map(|m| m.to_uppercase())
        .chain(extra);
    let served: BTreeSet<String> = candidates
        .filter(|m| {
            let method = Method::from_bytes(m.as_bytes()).unwrap();
            !matches!(
                request::parse(&method, &HeaderMap::new(), None, &Bytes::new()),
                Err(ProvisionError::BadMethod { .. })
            )
        })
        .collect();
    assert_eq!(
        listed(request::PROVISION_METHODS),
        served,
        "the 405 answer's Allow names exactly the methods the core serves"
    );

    for path in &paths {
        // Every documented path serves exactly the methods its 405 answer allows (the live
        // tests below send every other method to each path), and documents that 405.
        assert_eq!(
            spec.methods(path),
            listed(allowed_on(path)),
            "{path}: the documented methods and the ones the core serves differ"
        );
        let (item_at, _) = spec.path_item(path).unwrap();
        let (at, other, _) = spec
            .responses(path, "PROPFIND")
            .unwrap_or_else(|| panic!("{item_at}: no x-other-methods"));
        assert!(other.get("405").is_some(), "{at}: the 405 of other methods");
        let answer = answer_of(provision_core::api::error_response(
            &error_with("provision.request.bad-method", path),
            "r",
        ));
        let problems = spec.problems(path, "PROPFIND", &answer);
        assert!(problems.is_empty(), "PROPFIND {path}: {problems:?}");
    }
    assert_eq!(
        request::route("/api/healthz"),
        Route::Health,
        "the health check under a host's prefix, as the document says"
    );
    assert_eq!(
        request::route("/anything"),
        Route::Provision,
        "any other path is the provisioning endpoint, as the document says"
    );
}

/// Calls the function, checks each answer against the document, and counts what was seen.
struct Checker<'a, S: Stack> {
    spec: &'a Spec,
    world: &'a S,
    problems: Vec<String>,
    seen: BTreeSet<(String, u16)>,
}

impl<'a, S: Stack> Checker<'a, S> {
    fn new(spec: &'a Spec, world: &'a S) -> Self {
        Checker {
            spec,
            world,
            problems: Vec::new(),
            seen: BTreeSet::new(),
        }
    }

    /// Sends `call`, checks the answer against the document, and returns it.
    async fn call(&mut self, call: Call) -> Answer {
        let (path, method) = (call.path.clone(), call.method.clone());
        let shown = format!(
            "{method} {path}{}{}",
            if call.query.is_empty() { "" } else { "?" },
            call.query
        );
        let answer = self
            .world
            .call(call)
            .await
            .unwrap_or_else(|e| panic!("{shown}: no answer: {e:#}"));
        for problem in self.spec.problems(&path, &method, &answer) {
            self.problems.push(format!(
                "{shown} -> {}: {problem}\n    {}",
                answer.status,
                clip(&answer.raw_body, 300)
            ));
        }
        if let Some((_, _, counted)) = self.spec.responses(&path, &method) {
            self.seen.insert((counted, answer.status));
        }
        answer
    }

    /// Sends `call` and checks its status and its `status` text or error code too.
    async fn expect(&mut self, call: Call, status: u16, what: &str) -> Answer {
        let shown = format!(
            "{} {} {}",
            call.method,
            call.path,
            clip(call.body.as_deref().unwrap_or(&call.query), 100)
        );
        let answer = self.call(call).await;
        let got = if answer.status >= 400 {
            answer.error_code()
        } else {
            answer.status_text()
        };
        assert_eq!(
            (answer.status, got),
            (status, what),
            "{shown}: {}",
            answer.raw_body
        );
        answer
    }

    fn finish(self) -> BTreeSet<(String, u16)> {
        let count = self.problems.len();
        assert!(
            count == 0,
            "{count} answers do not conform to deploy/openapi.yaml:\n{}",
            self.problems.join("\n")
        );
        self.seen
    }
}

/// At most the first `n` bytes of `text`, cut at a character boundary.
fn clip(text: &str, n: usize) -> &str {
    let mut end = n.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn csr_for(uuid: &str) -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, uuid);
    params.serialize_request(&key).unwrap().pem().unwrap()
}

/// Every answer a cloud gives without fault injection: the whole lifecycle on `/provision` and
/// `/`, with device and service variables, a repair, a CSR, and every caller mistake.
async fn drive<S: Stack>(c: &mut Checker<'_, S>) {
    let world = c.world;
    let device = world.add_device().await;
    let other = world.add_device().await;
    let operator = world.secrets.operator_token.clone();
    let uuid = device.uuid.clone();
    let get = |device: &Device, query: String| Call::get(&query).bearer(&device.key);

    // The health check: GET and HEAD; any other method is refused.
    for method in ["GET", "HEAD"] {
        let status = c.call(Call::new(method, "/healthz")).await.status;
        assert_eq!(status, 200, "{method} /healthz");
    }
    for method in [
        "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "QUERY", "get",
    ] {
        let answer = c
            .expect(
                Call::new(method, "/healthz"),
                405,
                "provision.request.bad-method",
            )
            .await;
        assert_eq!(
            answer.headers.get("allow").map(String::as_str),
            Some(request::HEALTH_METHODS)
        );
    }

    // The lifecycle, device variables on /provision, service variables on /.
    c.expect(get(&device, format!("uuid={uuid}")), 200, "not-provisioned")
        .await;
    c.expect(
        Call::post(json!({"uuid": uuid})).bearer(&device.key),
        201,
        "created",
    )
    .await;
    c.expect(
        Call::post(json!({"uuid": uuid})).bearer(&device.key),
        200,
        "already-provisioned",
    )
    .await;
    c.expect(get(&device, format!("uuid={uuid}")), 200, "provisioned")
        .await;
    c.expect(
        Call::post(json!({"uuid": uuid, "rotate": true})).bearer(&device.key),
        200,
        "rotated",
    )
    .await;
    // Someone empties the private key by hand: partial, then repaired.
    world.balena.set_device_var(device.id, S::KEY_VAR, "").await;
    c.expect(get(&device, format!("uuid={uuid}")), 200, "partial")
        .await;
    c.expect(
        Call::post(json!({"uuid": uuid})).bearer(&device.key),
        200,
        "repaired",
    )
    .await;
    c.expect(
        Call::delete(json!({"uuid": uuid})).bearer(&operator),
        200,
        "deleted",
    )
    .await;
    c.expect(
        Call::delete(json!({"uuid": uuid})).bearer(&operator),
        200,
        "not-provisioned",
    )
    .await;
    let serviced = world.add_device().await;
    let mut root = Call::new("POST", "/")
        .json(Target::Service.body(&serviced.uuid))
        .bearer(&serviced.key);
    c.expect(root.clone(), 201, "created").await;
    c.expect(
        get(
            &serviced,
            format!("uuid={}&balena_service={SERVICE}", serviced.uuid),
        ),
        200,
        "provisioned",
    )
    .await;
    root.method = "DELETE".into();
    c.expect(root, 200, "deleted").await;
    // The device's own key pair: no private key variable.
    let created = c
        .expect(
            Call::post(json!({"uuid": other.uuid, "csr": csr_for(&other.uuid)})).bearer(&other.key),
            201,
            "created",
        )
        .await;
    assert_eq!(
        created.body["variables"],
        json!(S::CSR_VARS),
        "{}",
        created.raw_body
    );
    c.expect(
        Call::delete(json!({"uuid": other.uuid, "rotate": "ignored", "csr": 7})).bearer(&operator),
        200,
        "deleted",
    )
    .await;

    // Caller mistakes, credentials and devices.
    let json_body = |method: &str, raw: &str| {
        Call::new(method, "/provision")
            .raw_body(raw)
            .header("content-type", "application/json")
    };
    c.expect(
        json_body("POST", " \n").bearer(&device.key),
        400,
        codes::NO_BODY,
    )
    .await;
    c.expect(
        json_body("DELETE", "{\"uuid\": ").bearer(&device.key),
        400,
        codes::BAD_JSON,
    )
    .await;
    c.expect(
        Call::post(json!({"uuid": uuid.to_uppercase()})).bearer(&device.key),
        400,
        codes::BAD_UUID,
    )
    .await;
    c.expect(
        Call::delete(json!({"uuid": uuid, "balena_service": "a b"})).bearer(&device.key),
        400,
        codes::BAD_SERVICE,
    )
    .await;
    c.expect(
        Call::post(json!({"uuid": uuid, "csr": csr_for(&other.uuid)})).bearer(&device.key),
        400,
        codes::BAD_CSR,
    )
    .await;
    c.expect(get(&device, "uuid=abc".into()), 400, codes::BAD_UUID)
        .await;
    c.expect(
        get(&device, format!("uuid={uuid}&balena_service=nosuchservice")),
        400,
        codes::BAD_SERVICE,
    )
    .await;
    c.expect(
        Call::post(json!({"uuid": uuid, "balena_service": "nosuchservice"})).bearer(&device.key),
        400,
        codes::BAD_SERVICE,
    )
    .await;
    c.expect(
        Call::get(&format!("uuid={uuid}")),
        401,
        "provision.auth.missing",
    )
    .await;
    c.expect(
        Call::post(json!({"uuid": uuid})),
        401,
        "provision.auth.missing",
    )
    .await;
    c.expect(
        Call::delete(json!({"uuid": uuid})).header("authorization", "Basic Zm9vOmJhcg=="),
        401,
        "provision.auth.invalid",
    )
    .await;
    c.expect(
        get(&device, format!("uuid={uuid}")).bearer("not-a-key-balena-knows"),
        401,
        "provision.auth.invalid",
    )
    .await;
    c.expect(
        get(&other, format!("uuid={uuid}")),
        403,
        "provision.auth.forbidden",
    )
    .await;
    c.expect(
        Call::post(json!({"uuid": uuid})).bearer(&other.key),
        403,
        "provision.auth.forbidden",
    )
    .await;
    c.expect(
        Call::delete(json!({"uuid": uuid})).bearer(&other.key),
        403,
        "provision.auth.forbidden",
    )
    .await;
    let nobody = "0123456789abcdef0123456789abcdef";
    c.expect(
        Call::get(&format!("uuid={nobody}")).bearer(&operator),
        404,
        "provision.device.not-found",
    )
    .await;
    c.expect(
        Call::post(json!({"uuid": nobody})).bearer(&operator),
        404,
        "provision.device.not-found",
    )
    .await;
    c.expect(
        Call::delete(json!({"uuid": nobody})).bearer(&operator),
        404,
        "provision.device.not-found",
    )
    .await;
    let big = format!(
        "{{\"uuid\":\"{uuid}\",\"pad\":\"{}\"}}",
        "x".repeat(MAX_BODY_BYTES)
    );
    for method in ["GET", "POST", "DELETE", "PUT"] {
        c.expect(
            json_body(method, &big).bearer(&device.key),
            413,
            "provision.request.too-large",
        )
        .await;
    }
    for method in ["GET", "POST"] {
        c.expect(
            Call::new(method, "/healthz").raw_body(&big),
            413,
            "provision.request.too-large",
        )
        .await;
    }
    for method in ["POST", "DELETE"] {
        let plain = Call::new(method, "/provision")
            .raw_body(&json!({"uuid": uuid}).to_string())
            .header("content-type", "text/plain");
        c.expect(
            plain.bearer(&device.key),
            415,
            "provision.request.bad-content-type",
        )
        .await;
    }
    // Every other method, on both paths: 405 with Allow, before credentials are looked at.
    for path in ["/provision", "/"] {
        for method in [
            "PUT", "PATCH", "OPTIONS", "TRACE", "PROPFIND", "QUERY", "post", "Get",
        ] {
            c.expect(
                Call::new(method, path).json(json!({"uuid": uuid})),
                405,
                "provision.request.bad-method",
            )
            .await;
        }
        let head = c.call(Call::new("HEAD", path)).await;
        assert_eq!(
            (head.status, head.headers.get("allow").map(String::as_str)),
            (405, Some(request::PROVISION_METHODS))
        );
    }
    // As the document says, any other path is the provisioning endpoint.
    let elsewhere = world
        .call(Call::new("GET", "/elsewhere").bearer(&device.key))
        .await
        .unwrap();
    assert_eq!(
        (elsewhere.status, elsewhere.error_code()),
        (400, codes::BAD_UUID),
        "{}",
        elsewhere.raw_body
    );
}

/// One cloud through `provision-cloudrun`: every answer of `drive` conforms.
async fn cloud_answers_conform<S: Stack>() {
    let spec = Spec::load();
    let world = S::start_with(Options {
        cloudrun: true,
        ..Options::default()
    })
    .await
    .unwrap();
    let mut checker = Checker::new(&spec, &world);
    drive(&mut checker).await;
    checker.finish();
    world.stop().await;
}

#[tokio::test]
async fn aws_answers_conform() {
    cloud_answers_conform::<AwsWorld>().await;
}

#[tokio::test]
async fn azure_answers_conform() {
    cloud_answers_conform::<AzureWorld>().await;
}

/// GCP, also with upstream failures, a held lock and the hostile-input corpus; then every
/// documented (operation, status) but the 500 must have been seen.
#[tokio::test]
async fn gcp_answers_conform_and_cover_the_document() {
    let spec = Spec::load();
    // A short budget, so that a request waiting for a held lock gives up quickly (at half).
    let options = Options {
        extra_env: vec![("PROVISION_REQUEST_BUDGET_MS".into(), "4000".into())],
        ..Options::default()
    };
    let world = GcpWorld::start_with(options).await.unwrap();
    let mut c = Checker::new(&spec, &world);
    drive(&mut c).await;

    let device = world.add_device().await;
    let operator = world.secrets.operator_token.clone();
    let body = json!({"uuid": device.uuid});
    // balenaCloud failing, then throttling, past the retries.
    world
        .balena
        .emulator()
        .inject_fault(Fault::new(500).method("GET").times(1000));
    for call in [
        Call::get(&format!("uuid={}", device.uuid)),
        Call::post(body.clone()),
        Call::delete(body.clone()),
    ] {
        c.expect(call.bearer(&operator), 502, "provision.upstream.balena")
            .await;
    }
    world.balena.emulator().clear_faults();
    world
        .balena
        .emulator()
        .inject_fault(Fault::new(429).method("GET").retry_after(1).times(1000));
    for call in [
        Call::get(&format!("uuid={}", device.uuid)),
        Call::post(body.clone()),
        Call::delete(body.clone()),
    ] {
        let answer = c
            .expect(call.bearer(&operator), 503, "provision.upstream.throttled")
            .await;
        assert_eq!(
            answer.headers.get("retry-after").map(String::as_str),
            Some("1"),
            "the upstream's Retry-After passed on"
        );
    }
    world.balena.emulator().clear_faults();
    // The registry refusing.
    world
        .clearblade
        .inject_fault(provision_emulators::clearblade::Fault::new(403).times(1000));
    c.expect(
        Call::post(body.clone()).bearer(&operator),
        502,
        "provision.upstream.cloud",
    )
    .await;
    world.clearblade.clear_faults();
    // Another request's lock (a generation after the POST's), held past half the budget.
    c.expect(Call::post(body.clone()).bearer(&operator), 201, "created")
        .await;
    world
        .balena
        .set_device_tag(
            device.id,
            &provision_core::balena::LockTag::key(99),
            &format!(
                "someone-else until {}",
                provision_testkit::scenarios::live_until()
            ),
        )
        .await;
    for call in [
        Call::post(json!({"uuid": device.uuid, "rotate": true})),
        Call::delete(body.clone()),
    ] {
        let answer = c
            .expect(call.bearer(&operator), 503, "provision.device.busy")
            .await;
        assert!(
            answer.headers.contains_key("retry-after"),
            "{}",
            answer.raw_body
        );
    }

    // The hostile-input corpus: whatever each case gets, the document describes it.
    let target = world.add_device().await;
    let stranger = world.add_device().await;
    let material = provision_testkit::corpus::Material::new(&target.uuid);
    let callers = provision_testkit::corpus::Callers {
        device_key: &target.key,
        other_key: &stranger.key,
        operator_token: &operator,
    };
    for case in provision_testkit::corpus::load() {
        let answer = c.call(case.call(&material, &callers)).await;
        assert_eq!(
            answer.status, case.expect.status,
            "corpus case {}: {}",
            case.name, answer.raw_body
        );
    }

    let seen = c.finish();
    // Required: everything but the 500 (a bug's answer) and a 413 to HEAD (a HEAD has no body).
    let required = |(counted, status): &(String, u16)| {
        *status != 500 && !(*status == 413 && counted.ends_with(" HEAD"))
    };
    let missing: Vec<String> = spec
        .documented()
        .into_iter()
        .filter(required)
        .filter(|key| !seen.contains(key))
        .map(|(counted, status)| format!("{counted} {status}"))
        .collect();
    assert!(
        missing.is_empty(),
        "documented answers this test never saw (document them only if the function gives them): {missing:?}"
    );
    world.stop().await;
}

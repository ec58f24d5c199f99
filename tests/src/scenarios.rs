//! Scenario material every cloud's tests share, so each cloud is held to the same list.

use serde_json::json;

use crate::events::Call;

/// Every caller mistake of the contract, with the exact status and code it must get. None of
/// them may reach an upstream.
pub fn caller_mistakes(uuid: &str) -> Vec<(Call, u16, &'static str)> {
    let json_body = |raw: &str| Call::new("POST", "/provision").raw_body(raw).header("content-type", "application/json");
    let big = "x".repeat(70 * 1024);
    vec![
        (Call::new("POST", "/provision").header("content-type", "application/json"), 400, "provision.request.no-body"),
        (json_body("{\"uuid\": "), 400, "provision.request.bad-json"),
        (json_body("[1,2]"), 400, "provision.request.bad-json"),
        (json_body(&format!("{{\"uuid\":\"{uuid}\",\"uuid\":\"{uuid}\"}}")), 400, "provision.request.bad-json"),
        (Call::post(json!({"uuid": uuid, "rotate": "yes"})), 400, "provision.request.bad-json"),
        (Call::post(json!({})), 400, "provision.request.bad-uuid"),
        (Call::post(json!({"uuid": 42})), 400, "provision.request.bad-uuid"),
        (Call::post(json!({"uuid": uuid.to_uppercase()})), 400, "provision.request.bad-uuid"),
        (Call::post(json!({"uuid": format!("{}' or 1 eq 1 or uuid eq '", &uuid[..8])})), 400, "provision.request.bad-uuid"),
        (Call::post(json!({"uuid": uuid, "balena_service": "a' or name eq 'b"})), 400, "provision.request.bad-service"),
        (Call::post(json!({"uuid": uuid, "balena_service": 7})), 400, "provision.request.bad-service"),
        (Call::post(json!({"uuid": uuid, "csr": "not a csr"})), 400, "provision.request.bad-csr"),
        (Call::get(""), 400, "provision.request.bad-uuid"),
        (Call::get("uuid=abc"), 400, "provision.request.bad-uuid"),
        (Call::new("PUT", "/provision").json(json!({"uuid": uuid})), 405, "provision.request.bad-method"),
        (Call::new("PATCH", "/provision").json(json!({"uuid": uuid})), 405, "provision.request.bad-method"),
        (json_body(&format!("{{\"uuid\":\"{uuid}\",\"pad\":\"{big}\"}}")), 413, "provision.request.too-large"),
        (
            Call::new("POST", "/provision").raw_body(&json!({"uuid": uuid}).to_string()).header("content-type", "text/plain"),
            415,
            "provision.request.bad-content-type",
        ),
        (Call::new("POST", "/provision").raw_body(&json!({"uuid": uuid}).to_string()), 415, "provision.request.bad-content-type"),
    ]
}

/// Checks one answer to a caller mistake: status, code, a message, JSON, and `Allow` on 405.
pub fn check_mistake(answer: &crate::events::Answer, status: u16, code: &str, described: &str) {
    assert_eq!((answer.status, answer.error_code()), (status, code), "{described}: {}", answer.raw_body);
    assert_eq!(answer.headers.get("content-type").map(String::as_str), Some("application/json"), "{described}");
    assert!(answer.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{described}");
    assert!(answer.body["request_id"].is_string(), "{described}");
    if status == 405 {
        assert_eq!(answer.headers.get("allow").map(String::as_str), Some("GET, POST, DELETE"), "{described}");
    }
}

pub fn describe(call: &Call) -> String {
    format!("{} {:?} {:?}", call.method, call.headers, call.body.as_deref().map(|b| &b[..b.len().min(80)]))
}

//! Turning an HTTP request into a validated [`ProvisionRequest`], before any upstream call.

use bytes::Bytes;
use http::{HeaderMap, Method, header};
use serde::Deserialize;
use serde_json::Value;

use crate::credentials::DeviceCsr;
use crate::error::{ProvisionError, codes};
use crate::flow::{Operation, ProvisionRequest};
use crate::ids::{DeviceUuid, ServiceName};

/// Largest body accepted, as the contract says.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The methods the provisioning endpoint serves, as its 405 answers' `Allow` header lists them.
pub const PROVISION_METHODS: &str = "GET, POST, DELETE";

/// The methods the health check serves (`HEAD` is `GET` without the body).
pub const HEALTH_METHODS: &str = "GET, HEAD";

/// The request's route, decided from the path alone.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Health,
    Provision,
}

/// `/healthz` (under any prefix, so `/api/healthz` works behind the Azure host too) is the
/// health check; every other path is the provisioning endpoint: hosts decide which paths reach
/// the core.
pub fn route(path: &str) -> Route {
    if path.trim_end_matches('/').ends_with("/healthz") {
        Route::Health
    } else {
        Route::Provision
    }
}

/// Body fields. Every field is taken as raw JSON so that a wrong type gets a message naming
/// the field, and a repeated key is refused (serde reports duplicate fields of a struct).
#[derive(Deserialize)]
struct Body {
    uuid: Option<Value>,
    balena_service: Option<Value>,
    rotate: Option<Value>,
    csr: Option<Value>,
}

pub fn parse(
    method: &Method,
    headers: &HeaderMap,
    query: Option<&str>,
    body: &Bytes,
) -> Result<ProvisionRequest, ProvisionError> {
    match *method {
        Method::GET => parse_query(query),
        Method::POST | Method::DELETE => parse_body(method, headers, body),
        _ => Err(bad_method(method, PROVISION_METHODS)),
    }
}

fn parse_query(query: Option<&str>) -> Result<ProvisionRequest, ProvisionError> {
    let mut uuid = None;
    let mut service = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        // Other parameters are ignored, whatever they hold; a mistake in one of ours is named
        // by that parameter's code.
        let (slot, code) = match key {
            "uuid" => (&mut uuid, codes::BAD_UUID),
            "balena_service" => (&mut service, codes::BAD_SERVICE),
            _ => continue,
        };
        let value = percent_encoding::percent_decode_str(&value.replace('+', " "))
            .decode_utf8()
            .map_err(|_| {
                ProvisionError::bad_request(
                    code,
                    format!("query parameter '{key}' is not valid UTF-8"),
                )
            })?
            .into_owned();
        if slot.replace(value).is_some() {
            return Err(ProvisionError::bad_request(
                code,
                format!("query parameter '{key}' is given more than once"),
            ));
        }
    }
    let uuid = uuid.ok_or_else(|| {
        ProvisionError::bad_request(codes::BAD_UUID, "query parameter 'uuid' is required")
    })?;
    Ok(ProvisionRequest {
        operation: Operation::Status,
        uuid: parse_uuid(&uuid)?,
        service: service.map(|s| parse_service(&s)).transpose()?,
    })
}

fn parse_body(
    method: &Method,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<ProvisionRequest, ProvisionError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ProvisionError::TooLarge {
            limit: MAX_BODY_BYTES,
        });
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ProvisionError::bad_request(
            codes::NO_BODY,
            "a JSON body with at least 'uuid' is required",
        ));
    }
    check_content_type(headers)?;
    let fields: Body = match serde_json::from_slice::<Value>(body) {
        // Read again as the struct: that catches a repeated key, which `Value` silently merges.
        Ok(Value::Object(_)) => serde_json::from_slice(body).map_err(|e| {
            bad_json(format!(
                "body is not usable JSON: {}",
                describe_json_error(&e)
            ))
        })?,
        Ok(other) => {
            return Err(bad_json(format!(
                "body must be a JSON object, got {}",
                json_type(&other)
            )));
        }
        Err(e) => {
            return Err(bad_json(format!(
                "body is not valid JSON: {}",
                describe_json_error(&e)
            )));
        }
    };

    let uuid = match fields.uuid {
        Some(Value::String(s)) => parse_uuid(&s)?,
        None | Some(Value::Null) => {
            return Err(ProvisionError::bad_request(
                codes::BAD_UUID,
                "field 'uuid' is required",
            ));
        }
        Some(other) => {
            return Err(ProvisionError::bad_request(
                codes::BAD_UUID,
                format!("field 'uuid' must be a string, got {}", json_type(&other)),
            ));
        }
    };
    let service = match fields.balena_service {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(parse_service(&s)?),
        Some(other) => {
            return Err(ProvisionError::bad_request(
                codes::BAD_SERVICE,
                format!(
                    "field 'balena_service' must be a string, got {}",
                    json_type(&other)
                ),
            ));
        }
    };
    let operation = if *method == Method::DELETE {
        Operation::Deprovision
    } else {
        let rotate = match fields.rotate {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => b,
            Some(other) => {
                return Err(bad_json(format!(
                    "field 'rotate' must be a boolean, got {}",
                    json_type(&other)
                )));
            }
        };
        let csr = match fields.csr {
            None | Some(Value::Null) => None,
            Some(Value::String(pem)) => Some(DeviceCsr::parse(&pem, &uuid).map_err(|why| {
                ProvisionError::bad_request(codes::BAD_CSR, format!("field 'csr' {why}"))
            })?),
            Some(other) => {
                return Err(ProvisionError::bad_request(
                    codes::BAD_CSR,
                    format!(
                        "field 'csr' must be a PEM string, got {}",
                        json_type(&other)
                    ),
                ));
            }
        };
        Operation::Provision { rotate, csr }
    };
    Ok(ProvisionRequest {
        operation,
        uuid,
        service,
    })
}

/// The 405 for `method` where only `allow` is served; the method is shortened, as it is echoed.
pub fn bad_method(method: &Method, allow: &'static str) -> ProvisionError {
    ProvisionError::BadMethod {
        method: method.as_str().chars().take(32).collect(),
        allow,
    }
}

fn check_content_type(headers: &HeaderMap) -> Result<(), ProvisionError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(ProvisionError::BadContentType {
            got: "nothing".into(),
        });
    };
    let value = value.to_str().unwrap_or("");
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let is_json = essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    if is_json {
        Ok(())
    } else {
        let shown: String = value.chars().filter(|c| !c.is_control()).take(64).collect();
        Err(ProvisionError::BadContentType {
            got: format!("'{shown}'"),
        })
    }
}

fn parse_uuid(value: &str) -> Result<DeviceUuid, ProvisionError> {
    DeviceUuid::parse(value)
        .map_err(|why| ProvisionError::bad_request(codes::BAD_UUID, format!("field 'uuid' {why}")))
}

fn parse_service(value: &str) -> Result<ServiceName, ProvisionError> {
    ServiceName::parse(value).map_err(|why| {
        ProvisionError::bad_request(codes::BAD_SERVICE, format!("field 'balena_service' {why}"))
    })
}

fn bad_json(message: impl Into<String>) -> ProvisionError {
    ProvisionError::bad_request(codes::BAD_JSON, message)
}

fn describe_json_error(e: &serde_json::Error) -> String {
    // serde's message for a struct can echo a field's content ("invalid type: string \"...\"");
    // keep only the category and position, so nothing the caller sent is reflected back.
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Io => "unreadable",
        Category::Syntax => "syntax error",
        Category::Data if e.to_string().starts_with("duplicate field") => "a key is repeated",
        Category::Data => "unexpected value",
        Category::Eof => "truncated",
    };
    format!("{what} at line {} column {}", e.line(), e.column())
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "7cf02a69e4d34c9da573914963cf54fd";

    fn code_of_get(query: &str) -> Option<&'static str> {
        parse(&Method::GET, &HeaderMap::new(), Some(query), &Bytes::new())
            .err()
            .map(|e| e.code())
    }

    #[test]
    fn a_query_mistake_is_named_by_its_parameter() {
        assert_eq!(code_of_get("uuid=%FF"), Some(codes::BAD_UUID));
        assert_eq!(
            code_of_get(&format!("uuid={UUID}&balena_service=%FF")),
            Some(codes::BAD_SERVICE)
        );
        assert_eq!(
            code_of_get(&format!("uuid={UUID}&balena_service=a&balena_service=a")),
            Some(codes::BAD_SERVICE)
        );
        assert_eq!(
            code_of_get(&format!("uuid={UUID}&other=%FF")),
            None,
            "other parameters are ignored"
        );
    }

    #[test]
    fn other_methods_are_refused_naming_the_served_ones() {
        for method in ["PUT", "PATCH", "HEAD", "OPTIONS", "post"] {
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            match parse(&method, &HeaderMap::new(), None, &Bytes::new()) {
                Err(ProvisionError::BadMethod { allow, .. }) => {
                    assert_eq!(allow, PROVISION_METHODS)
                }
                other => panic!("{method}: {other:?}"),
            }
        }
    }
}

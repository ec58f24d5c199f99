//! Lambda HTTP events as AWS sends them (function URL / API Gateway HTTP v2, API Gateway REST
//! v1, ALB), and reading the function's answer back.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// A request as a device or operator sends it.
#[derive(Clone, Debug)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
}

impl Call {
    pub fn new(method: &str, path: &str) -> Self {
        Call {
            method: method.into(),
            path: path.into(),
            query: String::new(),
            headers: Vec::new(),
            body: None,
        }
    }

    pub fn post(body: Value) -> Self {
        Call::new("POST", "/provision").json(body)
    }

    pub fn delete(body: Value) -> Self {
        Call::new("DELETE", "/provision").json(body)
    }

    pub fn get(query: &str) -> Self {
        let mut call = Call::new("GET", "/provision");
        call.query = query.into();
        call
    }

    pub fn json(mut self, body: Value) -> Self {
        self.body = Some(body.to_string());
        self.header("content-type", "application/json")
    }

    pub fn raw_body(mut self, body: &str) -> Self {
        self.body = Some(body.into());
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.headers.push((name.to_ascii_lowercase(), value.into()));
        self
    }

    pub fn bearer(self, token: &str) -> Self {
        self.header("authorization", &format!("Bearer {token}"))
    }

    fn header_map(&self) -> serde_json::Map<String, Value> {
        self.headers
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect()
    }

    fn query_map(&self) -> BTreeMap<String, String> {
        self.query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (k.to_string(), v.to_string())
            })
            .collect()
    }

    /// A Lambda function URL event (payload format 2.0, as API Gateway HTTP APIs send too).
    pub fn function_url_event(&self) -> Value {
        json!({
            "version": "2.0",
            "routeKey": "$default",
            "rawPath": self.path,
            "rawQueryString": self.query,
            "headers": self.header_map(),
            "queryStringParameters": if self.query.is_empty() { Value::Null } else { json!(self.query_map()) },
            "requestContext": {
                "accountId": "anonymous",
                "apiId": "abcdefghij",
                "domainName": "abcdefghij.lambda-url.eu-west-1.on.aws",
                "domainPrefix": "abcdefghij",
                "http": {"method": self.method, "path": self.path, "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1", "userAgent": "provision-tests"},
                "requestId": uuid::Uuid::new_v4().to_string(),
                "routeKey": "$default",
                "stage": "$default",
                "time": "23/Nov/2026:15:00:00 +0000",
                "timeEpoch": 1_795_446_000_000u64
            },
            "body": self.body,
            "isBase64Encoded": false
        })
    }

    /// An API Gateway REST API (v1) proxy event.
    pub fn api_gateway_v1_event(&self) -> Value {
        json!({
            "resource": "/provision",
            "path": self.path,
            "httpMethod": self.method,
            "headers": self.header_map(),
            "multiValueHeaders": self.headers.iter().map(|(k, v)| (k.clone(), json!([v]))).collect::<serde_json::Map<_, _>>(),
            "queryStringParameters": if self.query.is_empty() { Value::Null } else { json!(self.query_map()) },
            "multiValueQueryStringParameters": if self.query.is_empty() { Value::Null } else {
                json!(self.query_map().into_iter().map(|(k, v)| (k, vec![v])).collect::<BTreeMap<_, _>>())
            },
            "pathParameters": null,
            "stageVariables": null,
            "requestContext": {
                "accountId": "123456789012",
                "resourceId": "abc123",
                "stage": "prod",
                "requestId": uuid::Uuid::new_v4().to_string(),
                "identity": {"sourceIp": "127.0.0.1", "userAgent": "provision-tests"},
                "resourcePath": "/provision",
                "httpMethod": self.method,
                "apiId": "abcdefghij",
                "path": format!("/prod{}", self.path),
                "protocol": "HTTP/1.1",
                "requestTimeEpoch": 1_795_446_000_000u64
            },
            "body": self.body,
            "isBase64Encoded": false
        })
    }

    /// An Application Load Balancer event.
    pub fn alb_event(&self) -> Value {
        json!({
            "requestContext": {"elb": {"targetGroupArn": "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/provision/abc"}},
            "httpMethod": self.method,
            "path": self.path,
            "queryStringParameters": self.query_map(),
            "headers": self.header_map(),
            "body": self.body.clone().unwrap_or_default(),
            "isBase64Encoded": false
        })
    }
}

/// The function's answer, from any event kind's response shape.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: Value,
    pub raw_body: String,
}

impl Answer {
    pub fn from_lambda_response(value: &Value) -> anyhow::Result<Answer> {
        let status = value["statusCode"]
            .as_u64()
            .ok_or_else(|| anyhow::anyhow!("no statusCode in {value}"))?
            as u16;
        let mut headers = BTreeMap::new();
        if let Some(map) = value["headers"].as_object() {
            for (k, v) in map {
                headers.insert(
                    k.to_ascii_lowercase(),
                    v.as_str().unwrap_or_default().to_string(),
                );
            }
        }
        if let Some(map) = value["multiValueHeaders"].as_object() {
            for (k, v) in map {
                if let Some(first) = v.as_array().and_then(|a| a.first()).and_then(Value::as_str) {
                    headers
                        .entry(k.to_ascii_lowercase())
                        .or_insert_with(|| first.to_string());
                }
            }
        }
        let raw_body = value["body"].as_str().unwrap_or_default().to_string();
        let body = serde_json::from_str(&raw_body).unwrap_or(Value::Null);
        Ok(Answer {
            status,
            headers,
            body,
            raw_body,
        })
    }

    pub fn error_code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    pub fn status_text(&self) -> &str {
        self.body["status"].as_str().unwrap_or("")
    }
}

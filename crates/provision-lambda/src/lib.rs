//! The AWS Lambda host: turns a `lambda_http` request (function URL, API Gateway REST v1 and
//! HTTP v2, ALB) into the core's `http::Request`, and the core's answer back. No logic lives
//! here.

use bytes::Bytes;
use lambda_http::{Body, Request, RequestExt, Response};
use provision_core::{RequestId, Service};

/// Serves one Lambda HTTP event through the core.
pub async fn serve(service: &Service, request: Request) -> Response<Body> {
    let request_id = request.lambda_context_ref().map(|c| c.request_id.clone());
    let (mut parts, body) = request.into_parts();
    let body = match body {
        Body::Empty => Bytes::new(),
        Body::Text(text) => Bytes::from(text),
        Body::Binary(bytes) => Bytes::from(bytes),
        _ => Bytes::new(),
    };
    if let Some(id) = request_id {
        parts.extensions.insert(RequestId(id));
    }
    let response = service.handle(http::Request::from_parts(parts, body)).await;
    let (parts, body) = response.into_parts();
    // The core always answers JSON text.
    Response::from_parts(
        parts,
        Body::Text(String::from_utf8_lossy(&body).into_owned()),
    )
}

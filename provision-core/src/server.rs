//! The core handler as an axum router, for hosts that are plain HTTP servers (the Azure
//! Functions custom handler, Cloud Run). Cross-cutting limits are layers around the handler:
//! the body limit answers the contract's 413 (reading at most one byte past the limit), and a
//! request timeout backs up the core's own request budget.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use tokio::net::TcpListener;

use crate::Service;
use crate::api::request::MAX_BODY_BYTES;
use crate::error::ProvisionError;

/// Limits the layers enforce.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// No request runs longer than this. The core stops itself at its request budget, so this
    /// only fires on a bug; set it a little above the budget.
    pub request_timeout: Duration,
}

impl Limits {
    /// The timeout for a core whose requests stop themselves at `budget`.
    pub fn for_budget(budget: Duration) -> Self {
        Limits {
            request_timeout: budget + Duration::from_secs(5),
        }
    }
}

pub fn router(service: Arc<Service>, limits: Limits) -> Router {
    Router::new()
        .fallback(serve_one)
        .with_state(service)
        .layer(middleware::from_fn(limit_body))
        .layer(middleware::from_fn_with_state(limits, time_limit))
}

async fn serve_one(State(service): State<Arc<Service>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    // `limit_body` has already bounded the body; this only collects it.
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES + 1)
        .await
        .unwrap_or_default();
    service
        .handle(http::Request::from_parts(parts, bytes))
        .await
        .map(Body::from)
}

fn contract_error(error: ProvisionError) -> Response {
    crate::api::error_response(&error, &uuid::Uuid::new_v4().to_string()).map(Body::from)
}

/// An oversized body is still read (and dropped) up to this much before the 413 goes out, so
/// the client is not cut off mid-upload and reads the answer instead of a reset connection.
const DRAIN_LIMIT: usize = 1024 * 1024;

/// The contract's 413 for a body over the limit, whether its `Content-Length` says so or it
/// streams past the limit. Beyond `DRAIN_LIMIT` the connection is closed after the answer.
async fn limit_body(request: Request, next: Next) -> Response {
    use futures::StreamExt;
    let declared = request
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = |close: bool| {
        let mut response = contract_error(ProvisionError::TooLarge {
            limit: MAX_BODY_BYTES,
        });
        if close {
            response.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
        response
    };
    if declared.is_some_and(|n| n > DRAIN_LIMIT as u64) {
        return too_large(true);
    }
    let (parts, body) = request.into_parts();
    let mut stream = body.into_data_stream();
    let mut kept = Vec::new();
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            return too_large(true);
        };
        seen += chunk.len();
        if seen > DRAIN_LIMIT {
            return too_large(true);
        }
        if seen <= MAX_BODY_BYTES {
            kept.extend_from_slice(&chunk);
        }
    }
    if seen > MAX_BODY_BYTES {
        return too_large(false);
    }
    next.run(Request::from_parts(parts, Body::from(kept))).await
}

async fn time_limit(State(limits): State<Limits>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limits.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::error!(
                limit_ms = limits.request_timeout.as_millis() as u64,
                "a request outran its time limit"
            );
            contract_error(ProvisionError::Internal(format!(
                "the request did not finish within {} s",
                limits.request_timeout.as_secs()
            )))
        }
    }
}

/// Serves until `shutdown` resolves, then finishes the requests in flight, waiting for them at
/// most `grace` (Cloud Run kills an instance 10 s after SIGTERM).
pub async fn serve(
    listener: TcpListener,
    service: Arc<Service>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let signalled = async move {
        shutdown.await;
        let _ = stopping_tx.send(());
    };
    let server = axum::serve(listener, router(service, limits))
        .with_graceful_shutdown(signalled)
        .into_future();
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => return result,
        _ = stopping_rx => {}
    }
    match tokio::time::timeout(grace, server).await {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!(
                grace_ms = grace.as_millis() as u64,
                "requests still in flight after the shutdown grace period; stopping anyway"
            );
            Ok(())
        }
    }
}

/// Resolves on SIGTERM (how Cloud Run and the Functions host stop a worker) or Ctrl-C.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = terminate => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    tracing::info!("shutting down: finishing the requests in flight");
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Serves `router` on a free loopback port until the test ends.
    async fn serve_router(router: Router) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        addr
    }

    fn body_length_router() -> Router {
        Router::new()
            .fallback(|request: Request| async move {
                let bytes = axum::body::to_bytes(request.into_body(), usize::MAX)
                    .await
                    .unwrap();
                bytes.len().to_string()
            })
            .layer(middleware::from_fn(limit_body))
    }

    /// Sends raw HTTP/1.1 and returns the whole answer (the server closes after it).
    async fn raw(addr: std::net::SocketAddr, head: &str, body: &[u8]) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(body).await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        String::from_utf8_lossy(&answer).into_owned()
    }

    #[tokio::test]
    async fn bodies_over_the_limit_get_the_contract_413_and_others_pass() {
        let addr = serve_router(body_length_router()).await;
        let http = reqwest::Client::new();
        let url = format!("http://{addr}/provision");
        let small = http.post(&url).body(vec![b'x'; 10]).send().await.unwrap();
        assert_eq!(
            (small.status().as_u16(), small.text().await.unwrap()),
            (200, "10".to_string())
        );
        let exact = http
            .post(&url)
            .body(vec![b'x'; MAX_BODY_BYTES])
            .send()
            .await
            .unwrap();
        assert_eq!(exact.text().await.unwrap(), MAX_BODY_BYTES.to_string());
        let large = http
            .post(&url)
            .body(vec![b'x'; MAX_BODY_BYTES + 1])
            .send()
            .await
            .unwrap();
        assert_eq!(large.status().as_u16(), 413);
        let answer: serde_json::Value = large.json().await.unwrap();
        assert_eq!(answer["error"]["code"], "provision.request.too-large");

        // No Content-Length: chunked past the limit.
        let chunk = vec![b'y'; 40 * 1024];
        let mut body = Vec::new();
        for _ in 0..2 {
            body.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            body.extend_from_slice(&chunk);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"0\r\n\r\n");
        let head = "POST /provision HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
        let answer = raw(addr, head, &body).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(answer.contains("provision.request.too-large"), "{answer}");
    }

    #[tokio::test]
    async fn a_request_past_its_time_limit_gets_a_json_500() {
        let limits = Limits {
            request_timeout: Duration::from_millis(50),
        };
        let router = Router::new()
            .fallback(|| async {
                std::future::pending::<()>().await;
                "never"
            })
            .layer(middleware::from_fn_with_state(limits, time_limit));
        let addr = serve_router(router).await;
        let answer = reqwest::get(format!("http://{addr}/provision"))
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), 500);
        let body: serde_json::Value = answer.json().await.unwrap();
        assert_eq!(body["error"]["code"], "provision.internal");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("did not finish")
        );
    }
}

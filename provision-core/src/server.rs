//! The core handler as an axum router, for hosts that are plain HTTP servers (the Azure
//! Functions custom handler, Cloud Run). Bodies are read up to one byte past the contract's
//! limit, so an oversized body gets the contract's 413 answer rather than a bare one.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use tokio::net::TcpListener;

use crate::Service;
use crate::api::request::MAX_BODY_BYTES;
use crate::error::ProvisionError;

pub fn router(service: Arc<Service>) -> Router {
    Router::new().fallback(move |request: Request| {
        let service = service.clone();
        async move { serve_one(&service, request).await }
    })
}

async fn serve_one(service: &Service, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let response = match axum::body::to_bytes(body, MAX_BODY_BYTES + 1).await {
        Ok(bytes) => service.handle(http::Request::from_parts(parts, bytes)).await,
        Err(_) => crate::api::error_response(&ProvisionError::TooLarge { limit: MAX_BODY_BYTES }, &uuid::Uuid::new_v4().to_string()),
    };
    response.map(Body::from)
}

/// Serves until `shutdown` resolves, then finishes the requests in flight.
pub async fn serve(listener: TcpListener, service: Arc<Service>, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    axum::serve(listener, router(service)).with_graceful_shutdown(shutdown).await
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

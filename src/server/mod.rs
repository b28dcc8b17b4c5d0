//! The servers: Envoy's `Authorization` service over gRPC, probes over HTTP.

pub mod grpc;
pub mod http;

use crate::engine::EngineConfig;
use crate::policy::PolicySet;
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::sync::Arc;

/// What the request path reads: the current policy set (swapped atomically
/// as a whole) and the engine's settings.
#[derive(Debug)]
pub struct State {
    pub policies: ArcSwap<PolicySet>,
    pub config: EngineConfig,
    /// Outcomes of reloads (file watching).
    pub reload: crate::sources::ReloadStatus,
}

impl State {
    pub fn new(set: PolicySet, config: EngineConfig) -> Arc<Self> {
        Arc::new(State {
            policies: ArcSwap::from_pointee(set),
            config,
            reload: Default::default(),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("HTTP server failed: {0}")]
    Http(std::io::Error),
}

/// Serves until `shutdown` resolves, then stops accepting, lets in-flight
/// checks finish and returns.
pub async fn serve(
    state: Arc<State>,
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let grpc_listener = tokio::net::TcpListener::bind(grpc_addr)
        .await
        .map_err(|source| ServeError::Bind {
            what: "gRPC",
            addr: grpc_addr,
            source,
        })?;
    let http_listener = tokio::net::TcpListener::bind(http_addr)
        .await
        .map_err(|source| ServeError::Bind {
            what: "HTTP",
            addr: http_addr,
            source,
        })?;
    serve_on(state, grpc_listener, http_listener, shutdown).await
}

/// As [`serve`], on listeners already bound (tests bind port 0).
pub async fn serve_on(
    state: Arc<State>,
    grpc_listener: tokio::net::TcpListener,
    http_listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (grpc_addr, http_addr) = (
        grpc_listener.local_addr().map_err(ServeError::Http)?,
        http_listener.local_addr().map_err(ServeError::Http)?,
    );
    tracing::info!(
        grpc = %grpc_listener.local_addr().unwrap_or(grpc_addr),
        http = %http_listener.local_addr().unwrap_or(http_addr),
        policies = state.policies.load().policies.len(),
        "celgate serving"
    );
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down: draining in-flight requests");
        let _ = tx.send(true);
    });
    let mut rx_http = rx.clone();
    let mut rx_grpc = rx;
    let http = http::serve(state.clone(), http_listener, async move {
        let _ = rx_http.wait_for(|v| *v).await;
    });
    let grpc = grpc::serve(state, grpc_listener, async move {
        let _ = rx_grpc.wait_for(|v| *v).await;
    });
    let (g, h) = tokio::join!(grpc, http);
    g?;
    h.map_err(ServeError::Http)?;
    Ok(())
}

//! The servers: Envoy's `Authorization` service over gRPC, probes over HTTP,
//! and (with `--authz-http-addr`) authorization over HTTP for Envoy's
//! `http_service` and forward-auth proxies.

pub mod authz_http;
pub mod decode;
pub mod grpc;
pub mod http;
pub mod kyverno_http;
pub mod limits;
pub mod shadow;
pub mod tls;
mod workers;

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
    pub options: ServeOptions,
    /// Outcomes of reloads (file watching).
    pub reload: crate::sources::ReloadStatus,
    /// Set when shutdown starts: `/readyz` answers 503 from then on.
    pub shutting_down: std::sync::atomic::AtomicBool,
    /// The threads that evaluate policies (started on first use).
    pub pool: limits::DecisionPool,
}

/// What `serve` adds around decisions.
#[derive(Debug, Default)]
pub struct ServeOptions {
    /// Add an event per evaluated policy to each decision span.
    pub trace_policies: bool,
    /// Where decisions are logged, if anywhere.
    pub decision_log: Option<crate::telemetry::decision_log::DecisionLog>,
    /// How long to keep answering after shutdown starts, while `/readyz`
    /// says 503 and gRPC health says NOT_SERVING, so load balancers and
    /// Kubernetes endpoints stop sending before the listeners close.
    pub shutdown_delay: std::time::Duration,
    /// Evaluation threads, queue bound and per-decision deadline.
    pub limits: limits::Limits,
    /// The largest `CheckRequest` read (`--max-request-bytes`); a larger one
    /// is answered with the failure denial. `None`: the default,
    /// [`decode::default_max_request_bytes`] of the default MCP body limit.
    pub max_request_bytes: Option<usize>,
    /// TLS on the gRPC listener (`--tls-cert`); `None`: plaintext.
    pub tls: Option<Arc<tls::ServerTls>>,
    /// TLS on the HTTP listener (`--http-tls-cert`); `None`: plaintext.
    pub http_tls: Option<Arc<tls::ServerTls>>,
    /// The shadow policy set compared with the live answers, if any.
    pub shadow: Option<shadow::Shadow>,
    /// Peers whose forwarded headers (`X-Forwarded-*`, `X-Original-*`) the
    /// HTTP authorization listener believes (`--trusted-proxies`).
    pub trusted_proxies: authz_http::TrustedProxies,
    /// How the authorization listener answers HTTP-mode requests
    /// (`--nested-request`, `--input-expression`, `--output-expression`);
    /// `None`: Kyverno's defaults.
    pub http_mode: Option<Arc<crate::httpmode::HttpMode>>,
}

impl ServeOptions {
    pub fn max_request_bytes(&self) -> usize {
        self.max_request_bytes.unwrap_or_else(|| {
            decode::default_max_request_bytes(crate::mcp::DEFAULT_MAX_BODY_BYTES)
        })
    }
}

impl State {
    pub fn new(set: PolicySet, config: EngineConfig) -> Arc<Self> {
        Self::with_options(set, config, ServeOptions::default())
    }

    pub fn with_options(set: PolicySet, config: EngineConfig, options: ServeOptions) -> Arc<Self> {
        Arc::new(State {
            policies: ArcSwap::from_pointee(set),
            options,
            config,
            reload: Default::default(),
            shutting_down: Default::default(),
            pool: Default::default(),
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

/// As [`serve`], with the HTTP authorization listener on `authz_http_addr`
/// when given.
pub async fn serve_all(
    state: Arc<State>,
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    authz_http_addr: Option<SocketAddr>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let bind = |what, addr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { what, addr, source })
    };
    let grpc = bind("gRPC", grpc_addr).await?;
    let http = bind("HTTP", http_addr).await?;
    let authz_http = match authz_http_addr {
        Some(addr) => Some(bind("authorization HTTP", addr).await?),
        None => None,
    };
    serve_listeners(
        state,
        Listeners {
            grpc,
            http,
            authz_http,
        },
        shutdown,
    )
    .await
}

/// The listeners [`serve_listeners`] serves on, already bound.
#[derive(Debug)]
pub struct Listeners {
    /// Envoy's gRPC `Check`.
    pub grpc: tokio::net::TcpListener,
    /// Probes, metrics, policies, report.
    pub http: tokio::net::TcpListener,
    /// Authorization over HTTP ([`authz_http`]), if served.
    pub authz_http: Option<tokio::net::TcpListener>,
}

/// Resolves on SIGINT or SIGTERM.
pub async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Where shutdown is: serving; not ready but still answering (the
/// `--shutdown-delay-s` window); stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Serving,
    NotReady,
    Stop,
}

/// As [`serve`], on listeners already bound (tests bind port 0).
pub async fn serve_on(
    state: Arc<State>,
    grpc_listener: tokio::net::TcpListener,
    http_listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    serve_listeners(
        state,
        Listeners {
            grpc: grpc_listener,
            http: http_listener,
            authz_http: None,
        },
        shutdown,
    )
    .await
}

/// As [`serve_on`], with the HTTP authorization listener when
/// `listeners.authz_http` is set.
pub async fn serve_listeners(
    state: Arc<State>,
    listeners: Listeners,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let Listeners {
        grpc: grpc_listener,
        http: http_listener,
        authz_http,
    } = listeners;
    let authz_http_addr = match &authz_http {
        Some(l) => Some(l.local_addr().map_err(ServeError::Http)?),
        None => None,
    };
    let (grpc_addr, http_addr) = (
        grpc_listener.local_addr().map_err(ServeError::Http)?,
        http_listener.local_addr().map_err(ServeError::Http)?,
    );
    tracing::info!(
        grpc = %grpc_listener.local_addr().unwrap_or(grpc_addr),
        http = %http_listener.local_addr().unwrap_or(http_addr),
        authz_http = authz_http_addr.map(|a| a.to_string()).unwrap_or_default(),
        policies = state.policies.load().policies.len(),
        grpc_tls = state.options.tls.is_some(),
        http_tls = state.options.http_tls.is_some(),
        "celgate serving"
    );
    // The minute snapshots behind `/report`'s recent windows.
    let ticker = crate::telemetry::report::spawn_ticker();
    let (tx, rx) = tokio::sync::watch::channel(Phase::Serving);
    let flag = state.clone();
    tokio::spawn(async move {
        shutdown.await;
        flag.shutting_down
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = tx.send(Phase::NotReady);
        let delay = flag.options.shutdown_delay;
        if !delay.is_zero() {
            tracing::info!(
                delay_s = delay.as_secs_f64(),
                "shutting down: not ready, still answering until the delay ends \
                 (a second SIGINT/SIGTERM stops now)"
            );
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = signal() => tracing::info!("second signal: not waiting for the delay"),
            }
        }
        tracing::info!("shutting down: draining in-flight requests");
        let _ = tx.send(Phase::Stop);
    });
    let mut rx_http = rx.clone();
    let http = http::serve(state.clone(), http_listener, async move {
        let _ = rx_http.wait_for(|p| *p == Phase::Stop).await;
    });
    let mut rx_authz = rx.clone();
    let authz_state = state.clone();
    let authz = async move {
        match authz_http {
            Some(listener) => {
                // The HTTP-mode series show from the start.
                crate::telemetry::metrics::global().set_http_enabled(true);
                let mode = authz_state.options.http_mode.clone().unwrap_or_default();
                let kyverno = kyverno_http::router(authz_state.clone(), mode);
                authz_http::serve(authz_state, listener, Some(kyverno), async move {
                    let _ = rx_authz.wait_for(|p| *p == Phase::Stop).await;
                })
                .await
            }
            None => Ok(()),
        }
    };
    let grpc = grpc::serve(state, grpc_listener, rx);
    let (g, h, a) = tokio::join!(grpc, http, authz);
    ticker.abort();
    g?;
    h.map_err(ServeError::Http)?;
    a.map_err(ServeError::Http)?;
    Ok(())
}

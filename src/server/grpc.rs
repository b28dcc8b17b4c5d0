//! `envoy.service.auth.v3.Authorization/Check`.

use super::State;
use crate::decision::to_check_response;
use crate::engine::{self, Decision};
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use std::sync::Arc;
use tonic::{Request, Response, Status};

#[derive(Debug, Clone)]
pub struct AuthzService {
    state: Arc<State>,
}

impl AuthzService {
    pub fn new(state: Arc<State>) -> Self {
        AuthzService { state }
    }

    /// One decision. A panic anywhere in evaluation is caught and answered
    /// with the failure denial: a request can never take the server down or
    /// slip through.
    pub fn decide(&self, request: &CheckRequest) -> Decision {
        let set = self.state.policies.load();
        let config = &self.state.config;
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            engine::evaluate(&set, config, request)
        }))
        .unwrap_or_else(|_| {
            tracing::error!("policy evaluation panicked; request denied");
            engine::failure_decision(config, None, "internal error during evaluation".into())
        })
    }
}

#[tonic::async_trait]
impl Authorization for AuthzService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let request = request.into_inner();
        let decision = self.decide(&request);
        tracing::debug!(
            allowed = decision.allowed(),
            status = decision.http_status(),
            policy = decision.policy.as_deref().unwrap_or(""),
            "decision"
        );
        Ok(Response::new(to_check_response(&decision)))
    }
}

pub async fn serve(
    state: Arc<State>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(AuthorizationServer::new(AuthzService::new(state)))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

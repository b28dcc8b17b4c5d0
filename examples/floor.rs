//! The load-benchmark floor: a no-op ext_authz server built from the same stack as celgate
//! (tonic 0.14 + envoy-types 0.7), answering every Check with OK without looking at the request.
//!
//! `celgate / floor` throughput, measured side by side, is the cost of policy evaluation.
//!
//! ```text
//! cargo run --release --example floor -- --addr 127.0.0.1:9291
//! ```

use std::net::SocketAddr;

use envoy_types::pb::envoy::service::auth::v3::{
    authorization_server::{Authorization, AuthorizationServer},
    check_response::HttpResponse,
    CheckRequest, CheckResponse, OkHttpResponse,
};
use envoy_types::pb::google::rpc::Status;
use tonic::{Request, Response};

const USAGE: &str = "usage: floor [--addr HOST:PORT]   (default 127.0.0.1:9291)";

struct Floor {
    ok: CheckResponse,
}

#[tonic::async_trait]
impl Authorization for Floor {
    async fn check(
        &self,
        _request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, tonic::Status> {
        Ok(Response::new(self.ok.clone()))
    }
}

fn parse_args() -> anyhow::Result<SocketAddr> {
    let mut addr: SocketAddr = "127.0.0.1:9291".parse()?;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => {
                let v = args
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--addr needs a value\n{USAGE}"))?;
                addr = v.parse()?;
            }
            s if s.starts_with("--addr=") => addr = s["--addr=".len()..].parse()?,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(addr)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let addr = parse_args()?;
    let floor = Floor {
        ok: CheckResponse {
            status: Some(Status {
                code: 0,
                ..Default::default()
            }),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse::default())),
            ..Default::default()
        },
    };
    eprintln!("floor: no-op ext_authz listening on {addr}");
    tonic::transport::Server::builder()
        .add_service(AuthorizationServer::new(floor))
        .serve_with_shutdown(addr, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

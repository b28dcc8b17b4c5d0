//! `celgate`: an Envoy external-authorization server driven by Kyverno-style
//! CEL policies.

use anyhow::Context as _;
use celgate::engine::EngineConfig;
use celgate::policy::PolicySet;
use celgate::server::{self, State};
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "celgate",
    version,
    about = "Envoy external-authorization server driven by Kyverno-style CEL policies",
    long_about = "Envoy external-authorization server driven by Kyverno-style CEL policies.\n\n\
        celgate serves envoy.service.auth.v3.Authorization over gRPC and decides each request \
        with ValidatingPolicy documents (spec.evaluation.mode: Envoy) written for the Kyverno \
        Authz Server. Every flag can also be set through the environment variable shown."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `celgate=debug`.
    #[arg(long, global = true, env = "CELGATE_LOG", default_value = "info")]
    log: String,
    /// Log format.
    #[arg(long, global = true, env = "CELGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve Envoy's ext_authz gRPC API with the given policies.
    Serve(ServeArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Policy files or directories (recursive; .yaml, .yml, .json; entries starting
    /// with `.` are skipped). Repeat the flag, or separate with commas in the variable.
    #[arg(
        long = "policies",
        env = "CELGATE_POLICIES",
        value_delimiter = ',',
        default_value = "policies"
    )]
    policies: Vec<PathBuf>,
    /// Address of the gRPC server (envoy.service.auth.v3.Authorization).
    #[arg(long, env = "CELGATE_GRPC_ADDR", default_value = "127.0.0.1:9191")]
    grpc_addr: SocketAddr,
    /// Address of the HTTP server (GET /livez, GET /readyz).
    #[arg(long, env = "CELGATE_HTTP_ADDR", default_value = "127.0.0.1:9192")]
    http_addr: SocketAddr,
    /// HTTP status of the denial sent when a `failurePolicy: Fail` policy cannot be
    /// evaluated. celgate never answers such a request with a gRPC error, so a policy
    /// bug fails closed even when Envoy is set to fail open.
    #[arg(long, env = "CELGATE_FAILURE_STATUS", default_value_t = 403, value_parser = clap::value_parser!(i32).range(100..=599))]
    failure_status: i32,
    /// Body of that denial (the error itself is logged, never sent to the client).
    #[arg(long, env = "CELGATE_FAILURE_BODY", default_value = "")]
    failure_body: String,
}

fn init_logging(filter: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .with_context(|| format!("invalid log filter {filter:?}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = init_logging(&cli.log, cli.log_format) {
        eprintln!("celgate: {e:#}");
        return ExitCode::from(2);
    }
    let result = match cli.command {
        Command::Serve(args) => serve(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("celgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let set = PolicySet::load(&args.policies)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("refusing to start")?;
    for w in &set.warnings {
        tracing::warn!("{w}");
    }
    for p in &set.policies {
        tracing::info!(policy = %p.name, file = %p.location.path.display(), "policy loaded");
    }
    let state = State::new(
        set,
        EngineConfig {
            failure_status: args.failure_status,
            failure_body: args.failure_body,
        },
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(server::serve(
        state,
        args.grpc_addr,
        args.http_addr,
        shutdown_signal(),
    ))?;
    tracing::info!("stopped");
    Ok(())
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
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

// The request path allocates small, short-lived values (CEL values, boxed
// fields); mimalloc's thread-local free lists serve those far faster than
// glibc malloc under concurrency.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

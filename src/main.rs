//! `celgate`: an Envoy external-authorization server driven by Kyverno-style
//! CEL policies.

use anyhow::Context as _;
use celgate::engine::EngineConfig;
use celgate::policy::PolicySet;
use celgate::server::{self, State};
use celgate::sources::Sources;
use clap::{Args, CommandFactory, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// `eprintln!` that does not panic when standard error is closed (as with
/// `celgate ... 2>&1 | head`): the message is lost, the exit status stays.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod commands;

#[derive(Debug, Parser)]
#[command(
    name = "celgate",
    version,
    about = "Envoy external-authorization server driven by Kyverno-style CEL policies",
    long_about = "Envoy external-authorization server driven by Kyverno-style CEL policies.\n\n\
        celgate serves envoy.service.auth.v3.Authorization over gRPC and decides each request \
        with ValidatingPolicy documents (spec.evaluation.mode: Envoy) written for the Kyverno \
        Authz Server. Every flag can also be set through the environment variable shown.\n\n\
        The same binary lets policy authors work before a cluster sees a policy: `validate` \
        reports every problem in a set of policy files, `check` decides one request and \
        explains why, `test` runs declarative test suites, and `diff` shows which requests \
        two versions of the policies decide differently.",
    after_long_help = "EXIT STATUS (the same for every command):\n  \
        0  success (check: the request is allowed; diff: no decision changed, or \
        --allow-changes)\n  \
        1  the policies do not load (a path that does not exist, YAML or CEL errors, no \
        Envoy-mode policy without --allow-empty): serve does \
        not start, validate reports them, check does not decide, test does not run the suite, \
        diff does not compare (either side); \
        also test: a case failed; diff: a decision changed; serve: the server stopped with an \
        error; healthcheck: not ready; report: the server cannot be reached or answers no \
        report\n  \
        2  usage error; check: the request cannot be read; test: no suite found, or no case \
        matches --filter; diff: a request file, suite or decision-log line cannot be read, or \
        --requests holds no request; report: a --url that is not http(s)://host[:port]\n  \
        3  check: the request is denied by a policy\n  \
        4  check: the request is denied because a policy with failurePolicy: Fail could not be evaluated"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `celgate=debug`.
    /// Default: `info` for serve, `error` for the other commands (their
    /// output says what matters).
    #[arg(long, global = true, env = "CELGATE_LOG")]
    log: Option<String>,
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
    Serve(Box<ServeArgs>),
    /// Decide one CheckRequest (JSON) and print the CheckResponse (JSON).
    #[command(
        long_about = "Decide one CheckRequest and print the CheckResponse as JSON on standard output.\n\n\
            The request is the protobuf JSON mapping of envoy.service.auth.v3.CheckRequest; both \
            lowerCamelCase and the original proto field names are accepted, e.g.\n\n  \
            {\"attributes\": {\"request\": {\"http\": {\"method\": \"GET\", \"path\": \"/admin\", \
            \"headers\": {\"x-api-key\": \"demo-key-alice\"}}}}}\n\n\
            With --http-request instead, an HTTP request is decided by the HTTP-mode policies \
            (spec.evaluation.mode: HTTP), as the authorization listener decides it with the same \
            --nested-request, --input-expression and --output-expression, and the answer is \
            printed as HTTP.\n\n\
            Exit status: 0 allowed, 3 denied by a policy, 4 denied because a failurePolicy: Fail \
            policy could not be evaluated, 1 when the policies do not load or hold no policy of \
            the mode asked (see --allow-empty), 2 when the request cannot be read."
    )]
    Check(CheckArgs),
    /// Parse and compile policies; report every problem with file, line, policy and field.
    #[command(
        long_about = "Parse and compile every policy and exception under the given paths and report \
            every problem, not only the first: file, line (where it can be found), policy name, \
            field path (e.g. spec.validations[2].expression) and message.\n\n\
            Warnings name documents that will be skipped (evaluation modes other than Envoy and HTTP, other kinds), \
            fields celgate ignores, and mistakes visible without running a request, such as a \
            validation that always returns a response and so hides the validations after it. \
            Policies that hold no Envoy-mode or HTTP-mode ValidatingPolicy are an error, as `serve` refuses \
            them, unless --allow-empty.\n\n\
            Exit status: 0 when everything compiles (warnings allowed), 1 on any error."
    )]
    Validate(ValidateArgs),
    /// Run declarative policy test suites (kind: Test) found under the given paths.
    #[command(
        long_about = "Find test suites (apiVersion: celgate.dev/v1alpha1, kind: Test) under the \
            given files and directories and run every case: the suite's policies decide the \
            case's request and the decision is compared with `expect`. Directories are searched \
            recursively for YAML/JSON files that mention celgate.dev/, skipping dot-entries and \
            `target`/`node_modules` folders. The book's \"Checking and testing policies\" \
            chapter (docs/src/test-suites.md) documents the suite format.\n\n\
            Exit status: 0 when every case passed; 1 when a case failed or a suite could not \
            run (its policies do not load, a path does not exist, a suite file is invalid); 2 \
            when no suite was found or no case matches --filter."
    )]
    Test(TestArgs),
    /// Decide a corpus of requests with two policy sets; print every request whose decision changes.
    #[command(
        long_about = "Decide every request under --requests with the policies of --from (before a \
            change) and those of --to (after it), and print each request whose answer differs: \
            allowed or denied, status, deciding policy, error, headers added or removed \
            (upstream and in the response), query parameters, body, message, metadata, or the \
            denials recorded under validationActions (Audit, Warn). Each \
            is shown with both answers and what changed, then a summary line (N requests, M \
            changed). Meant for pull requests that change policies: see the book's \"Rolling out \
            a policy\" chapter for a CI recipe.\n\n\
            --requests takes files and directories (searched recursively, skipping dot-entries \
            and `target`/`node_modules` folders): CheckRequest JSON files as `check` reads them \
            (named by path; a .json file in a directory with no `attributes` is skipped with a \
            note); test suites (kind: Test; each case's request, named FILE#CASE, with its token \
            minted once for both sides and the suite's jwks documents loaded; the suite's own \
            policies and expectations are not used); and decision logs from `serve \
            --decision-log` (.jsonl, .ndjson; each line named FILE:LINE and marked replayed). A \
            replayed request holds only what the log recorded: method, host, path without its \
            query string, source address without its port, time, request id and the \
            allow-listed headers. Credentials, other headers, the query string and the body \
            were never logged, so policies that read them see them absent; a changed replayed \
            request also shows the decision its line recorded, and the summary counts the \
            replayed requests that --from decides otherwise than logged (their replay lacks \
            what they were decided on, or --from is not what decided them).\n\n\
            Both sides use the same --failure-* and limit flags.\n\n\
            Exit status: 0 when no decision changed (or --allow-changes); 1 when one changed, or \
            when the policies of either side do not load or hold no Envoy-mode policy (see \
            --allow-empty); 2 when a request file, suite or decision-log line cannot be read, \
            or --requests holds no request."
    )]
    Diff(DiffArgs),
    /// Ask a running server whether it is ready (GET /readyz); exit 0 if so, 1 if not.
    #[command(
        long_about = "Ask a running celgate whether it is ready: GET /readyz on its HTTP address. \
            Exit 0 when it answers 200, 1 otherwise (not ready, shutting down, unreachable). \
            Meant for container health checks in images that have no shell or curl, e.g. \
            HEALTHCHECK CMD [\"celgate\", \"healthcheck\"]. Reads CELGATE_HTTP_ADDR like \
            `serve`; an unspecified address (0.0.0.0, ::) is reached on loopback. Speaks \
            HTTPS with --tls or --ca-cert, or when CELGATE_HTTP_TLS_CERT is set like `serve`'s."
    )]
    Healthcheck(HealthcheckArgs),
    /// Print what each policy of a running server has been doing (GET /report).
    #[command(
        long_about = "Print what each policy of a running celgate has been doing: GET /report on its \
            HTTP address, shown as a table with a row per policy and window (since the start, \
            the last 5 minutes, the last hour) and a column per count: evaluated, allowed, \
            denied, no result, skipped, exempted, errors, would-be denials and errors of \
            Audit/Warn policies, shadow disagreements. Policies a reload removed are marked \
            (removed) while they still count in the last hour. --format json prints the \
            server's JSON as it is.\n\n\
            Speaks HTTPS with an https:// URL, --tls or --ca-cert, like `healthcheck`.\n\n\
            Exit status: 0 when the report was printed; 1 when the server cannot be reached, \
            answers with another status than 200 or with something that is not a report; 2 \
            when --url is not an http(s)://host[:port] URL."
    )]
    Report(ReportArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(
        long_about = "Print a completion script for the given shell on standard output, e.g.\n\n  \
            celgate completions bash > ~/.local/share/bash-completion/completions/celgate\n  \
            celgate completions zsh > \"${fpath[1]}/_celgate\"\n  \
            celgate completions fish > ~/.config/fish/completions/celgate.fish"
    )]
    Completions { shell: clap_complete::Shell },
    /// Print the manual page: roff (`celgate man | man -l -`) or Markdown.
    #[command(
        long_about = "Print the manual page on standard output: roff for man(1), e.g. \
            `celgate man | man -l -`, or with --format markdown the command-line reference \
            as Markdown (the page published with the documentation)."
    )]
    Man {
        /// Output format.
        #[arg(long, value_enum, default_value_t = ManFormat::Roff)]
        format: ManFormat,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ManFormat {
    Roff,
    Markdown,
}

#[derive(Debug, Args)]
struct PolicyArgs {
    /// Policy files or directories (recursive; .yaml, .yml, .json; entries starting
    /// with `.` are skipped). Repeat the flag, or separate with commas in the variable.
    /// An empty value reads no files (e.g. `serve --kube --policies ''`).
    #[arg(
        long = "policies",
        env = "CELGATE_POLICIES",
        value_delimiter = ',',
        default_value = "policies",
        // Empty is allowed: `serve --kube --policies ''` reads no files.
        value_parser = clap::builder::TypedValueParser::map(clap::builder::OsStringValueParser::new(), PathBuf::from)
    )]
    policies: Vec<PathBuf>,
    /// Accept policies that hold no Envoy-mode or HTTP-mode ValidatingPolicy (every request
    /// is then allowed). Without it such a set is refused, since an empty
    /// directory, a misnamed file or a wrong mount would otherwise allow
    /// everything: `serve` does not start (nor take a reload that would leave
    /// none), `check` does not decide, `validate` reports an error. With it,
    /// `serve` also serves a --policies path that does not exist yet as empty
    /// until it appears.
    #[arg(long, env = "CELGATE_ALLOW_EMPTY")]
    allow_empty: bool,
    #[command(flatten)]
    limits: LoadLimits,
}

/// What every expression is held to when policies load: the same for
/// `serve`, `validate`, `check` and `test`, so that what validates serves.
#[derive(Debug, Args)]
struct LoadLimits {
    /// Largest request body `mcp.Parse` accepts, in bytes; a longer one is an
    /// evaluation error (so `failurePolicy: Fail` denies it). The cost
    /// estimate takes it as the bound of the body.
    #[arg(long, env = "CELGATE_MCP_MAX_BODY_BYTES", default_value_t = celgate::mcp::DEFAULT_MAX_BODY_BYTES)]
    mcp_max_body_bytes: usize,
    /// Largest estimated worst-case cost of one expression: an expression
    /// whose estimate is higher is refused when it loads.
    #[arg(long, env = "CELGATE_MAX_EXPRESSION_COST", default_value_t = celgate::cel::check::cost::DEFAULT_BUDGET, value_parser = clap::value_parser!(u64).range(1..))]
    max_expression_cost: u64,
}

impl LoadLimits {
    fn apply(&self) {
        celgate::mcp::configure(self.mcp_max_body_bytes);
        celgate::cel::check::cost::configure(self.max_expression_cost);
    }
}

#[derive(Debug, Args)]
struct CheckArgs {
    #[command(flatten)]
    policies: PolicyArgs,
    /// The CheckRequest as JSON: a file, or `-` for standard input.
    #[arg(
        long,
        value_name = "FILE|-",
        required_unless_present = "http_request",
        conflicts_with = "http_request"
    )]
    request: Option<PathBuf>,
    /// Instead of --request, a request for the HTTP-mode policies, as the
    /// authorization listener receives it: an HTTP/1.1 request as written
    /// on the wire (request line, headers, a blank line, the body; lines may
    /// end in LF), a file or `-`. The answer is printed as HTTP.
    #[arg(long, value_name = "FILE|-")]
    http_request: Option<PathBuf>,
    #[command(flatten)]
    http_mode: HttpModeArgs,
    /// Also explain the decision on standard error: policies skipped by
    /// matchConditions, each validation's result, the variables that were
    /// evaluated and their values, and which policy decided.
    #[arg(long)]
    explain: bool,
    #[command(flatten)]
    failure: FailureArgs,
}

/// The failure denial: what a client gets when celgate cannot decide.
#[derive(Debug, Args)]
#[command(next_help_heading = "Failure denial")]
struct FailureArgs {
    /// HTTP status of the failure denial: the answer when a failurePolicy: Fail
    /// policy cannot be evaluated, the request cannot be read, or no decision
    /// is made in time. celgate never answers such a request with a gRPC
    /// error, so it fails closed even when Envoy is set to fail open. (A full
    /// decision queue is always 503 with retry-after: 1.)
    #[arg(long, env = "CELGATE_FAILURE_STATUS", default_value_t = celgate::engine::DEFAULT_FAILURE_STATUS, value_parser = clap::value_parser!(i32).range(300..=599))]
    failure_status: i32,
    /// Body of every denial celgate makes on its own (the failure denial and
    /// the overload denial). Default: a short sentence per reason, e.g.
    /// "request denied: a policy could not be evaluated". The error itself is
    /// logged, never sent to the client.
    #[arg(long, env = "CELGATE_FAILURE_BODY", value_name = "TEXT")]
    failure_body: Option<String>,
    /// Response header that marks those denials with their reason, so a client
    /// can tell them from a policy's own denial: evaluation, unreadable,
    /// timeout, internal or overload (nothing else: no error text, no policy
    /// name). An empty value sends no header.
    #[arg(long, env = "CELGATE_FAILURE_HEADER", value_name = "NAME", default_value = celgate::engine::DEFAULT_FAILURE_HEADER, value_parser = parse_failure_header)]
    failure_header: FailureHeader,
    /// Response header that names, on every answer, the policies that would
    /// have denied the request but are not enforced (validationActions
    /// without Deny), e.g. `x-celgate-audit: require-api-key`. Off by
    /// default: it tells clients about the policies.
    #[arg(long, env = "CELGATE_AUDIT_HEADER", value_name = "NAME", value_parser = parse_failure_header, help_heading = "Audit")]
    audit_header: Option<FailureHeader>,
    /// Run-time cost budget of one request, all policies together, in units:
    /// one per step of evaluation and per comprehension iteration, string
    /// functions a tenth of a unit per byte they walk, list functions a unit
    /// per element (per pair for those that compare every pair). A request
    /// that spends it stops with an evaluation error, which the policy's
    /// failurePolicy decides: Fail denies.
    #[arg(long, env = "CELGATE_COST_BUDGET", value_name = "UNITS", default_value_t = celgate::cel::eval::ctx::DEFAULT_BUDGET, value_parser = clap::value_parser!(u64).range(1..))]
    cost_budget: u64,
    /// Evaluate every policy's matchConditions on every request instead of
    /// only those of the policies the selection index does not rule out
    /// (built from the matchConditions when the policies load). The decision
    /// is the same; this is for comparison and troubleshooting.
    #[arg(long, env = "CELGATE_NO_POLICY_INDEX", help_heading = "Evaluation")]
    no_policy_index: bool,
}

/// A checked `--failure-header`: `None` for no header.
#[derive(Debug, Clone)]
struct FailureHeader(Option<String>);

fn parse_failure_header(s: &str) -> Result<FailureHeader, String> {
    celgate::engine::failure_header_name(s).map(FailureHeader)
}

impl FailureArgs {
    fn config(&self) -> EngineConfig {
        EngineConfig {
            failure_status: self.failure_status,
            failure_body: self.failure_body.clone(),
            failure_header: self.failure_header.0.clone(),
            audit_header: self.audit_header.as_ref().and_then(|h| h.0.clone()),
            cost_budget: self.cost_budget,
            policy_index: !self.no_policy_index,
        }
    }
}

#[derive(Debug, Args)]
struct ValidateArgs {
    #[command(flatten)]
    policies: PolicyArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ValidateOutput::Text)]
    output: ValidateOutput,
    /// Also warn of each policy whose matchConditions the policy index cannot
    /// read (none compares a request attribute with string literals), so
    /// that they are evaluated on every request.
    #[arg(long)]
    warn_unindexed: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ValidateOutput {
    Text,
    Json,
}

#[derive(Debug, Args)]
struct TestArgs {
    /// Test suite files or directories to search (default: the current directory).
    #[arg(value_name = "PATH", default_value = ".")]
    paths: Vec<PathBuf>,
    /// Run only the cases whose name contains this text.
    #[arg(long, value_name = "TEXT")]
    filter: Option<String>,
    /// Output format: a readable table, or JUnit XML for CI systems.
    #[arg(long, value_enum, default_value_t = TestOutput::Table)]
    output: TestOutput,
    #[command(flatten)]
    limits: LoadLimits,
}

#[derive(Debug, Args)]
struct DiffArgs {
    /// The policies before the change: files or directories, as for
    /// --policies. Repeat the flag for more than one.
    #[arg(long, value_name = "PATH", required = true)]
    from: Vec<PathBuf>,
    /// The policies after the change.
    #[arg(long, value_name = "PATH", required = true)]
    to: Vec<PathBuf>,
    /// The requests: CheckRequest JSON files, test suites and decision logs,
    /// or directories of them (recursive).
    #[arg(long, value_name = "DIR|FILE", required = true, num_args = 1..)]
    requests: Vec<PathBuf>,
    /// Exit 0 even when a decision changed (the changes are still printed),
    /// so that a status of 1 means only that policies do not load.
    #[arg(long)]
    allow_changes: bool,
    /// Accept policies that hold no Envoy-mode ValidatingPolicy on either
    /// side (every request is then allowed there), e.g. when the policies
    /// are new.
    #[arg(long, env = "CELGATE_ALLOW_EMPTY")]
    allow_empty: bool,
    /// Output format: text for people, JSON for tools (`--format` is the
    /// same flag).
    #[arg(long, visible_alias = "format", value_enum, default_value_t = ValidateOutput::Text)]
    output: ValidateOutput,
    #[command(flatten)]
    limits: LoadLimits,
    #[command(flatten)]
    failure: FailureArgs,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum TlsMinVersion {
    #[value(name = "1.2")]
    V12,
    #[value(name = "1.3")]
    V13,
}

fn parse_san(s: &str) -> Result<celgate::server::tls::SanPattern, String> {
    celgate::server::tls::SanPattern::parse(s).map_err(|e| e.to_string())
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum TestOutput {
    Table,
    Junit,
}

#[derive(Debug, Args)]
struct HealthcheckArgs {
    /// The server's HTTP address (as given to `serve --http-addr`).
    #[arg(long, env = "CELGATE_HTTP_ADDR", default_value = "127.0.0.1:9192")]
    http_addr: SocketAddr,
    /// Path to ask.
    #[arg(long, default_value = "/readyz")]
    path: String,
    /// Give up after this many milliseconds.
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
    /// Speak HTTPS. Also on with --ca-cert, or when CELGATE_HTTP_TLS_CERT is
    /// set (the variable `serve --http-tls-cert` reads, so a container's
    /// health check follows the server's setting).
    #[arg(long)]
    tls: bool,
    /// Trust this CA bundle (PEM) for the server's certificate instead of
    /// the web PKI roots. Implies --tls.
    #[arg(long, env = "CELGATE_HEALTHCHECK_CA_CERT", value_name = "PEM")]
    ca_cert: Option<PathBuf>,
    /// The name the server's certificate must carry (default: the IP
    /// address of --http-addr).
    #[arg(long, env = "CELGATE_HEALTHCHECK_SERVER_NAME", value_name = "NAME")]
    server_name: Option<String>,
}

#[derive(Debug, Args)]
struct ReportArgs {
    /// The server's HTTP listener (`serve --http-addr`), as a URL; a path
    /// is kept as a prefix of /report.
    #[arg(
        long,
        env = "CELGATE_REPORT_URL",
        default_value = "http://127.0.0.1:9192"
    )]
    url: String,
    /// Output format: an aligned table, or the report's JSON.
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    format: ReportFormat,
    /// Give up after this many milliseconds.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    /// Speak HTTPS even with an http:// URL. Also on with --ca-cert.
    #[arg(long)]
    tls: bool,
    /// Trust this CA bundle (PEM) for the server's certificate instead of
    /// the web PKI roots. Implies --tls.
    #[arg(long, value_name = "PEM")]
    ca_cert: Option<PathBuf>,
    /// The name the server's certificate must carry (default: the host of
    /// --url).
    #[arg(long, value_name = "NAME")]
    server_name: Option<String>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ReportFormat {
    Table,
    Json,
}

/// How Kyverno's HTTP mode reads a request and writes its answer.
#[derive(Debug, Args)]
#[command(next_help_heading = "Kyverno HTTP mode")]
struct HttpModeArgs {
    /// HTTP-mode requests carry the request to authorize in their body, as
    /// an HTTP/1.x request (method line, headers, body), as the Kyverno
    /// Authz Server's --nested-request.
    #[arg(long, env = "CELGATE_NESTED_REQUEST")]
    nested_request: bool,
    /// CEL turning the http.CheckRequest an HTTP-mode request gives
    /// (`object`) into the one the policies decide (for example from
    /// ingress-nginx's x-original-url and x-original-method headers), as the
    /// Kyverno Authz Server's --input-expression. Checked at startup.
    #[arg(long, env = "CELGATE_INPUT_EXPRESSION", value_name = "CEL")]
    input_expression: Option<String>,
    /// CEL turning the HTTP-mode policies' answer (an http.CheckResponse,
    /// `object`) into the httpserver.HttpResponse sent back, as the Kyverno
    /// Authz Server's --output-expression. Default: 200 with an empty body
    /// to allow, 403 with the reason as text to deny. Checked at startup.
    #[arg(long, env = "CELGATE_OUTPUT_EXPRESSION", value_name = "CEL")]
    output_expression: Option<String>,
}

impl HttpModeArgs {
    fn options(&self) -> celgate::httpmode::HttpModeOptions {
        celgate::httpmode::HttpModeOptions {
            nested_request: self.nested_request,
            input_expression: self.input_expression.clone(),
            output_expression: self.output_expression.clone(),
        }
    }
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("any_tls").args(["tls_cert", "http_tls_cert"]).multiple(true)))]
struct ServeArgs {
    #[command(flatten)]
    policies: PolicyArgs,
    /// Address of the gRPC server (envoy.service.auth.v3.Authorization).
    #[arg(long, env = "CELGATE_GRPC_ADDR", default_value = "127.0.0.1:9191")]
    grpc_addr: SocketAddr,
    /// Address of the HTTP server: GET /livez (liveness), GET /readyz
    /// (readiness, with the last reload's error), GET /policies (what is
    /// loaded), GET /metrics (Prometheus) and GET /report (what each policy
    /// has been doing: `celgate report`).
    #[arg(long, env = "CELGATE_HTTP_ADDR", default_value = "127.0.0.1:9192")]
    http_addr: SocketAddr,
    /// Also answer authorization requests over plain HTTP on this address
    /// (off unless set): /envoy/... for Envoy's ext_authz http_service
    /// (path_prefix: /envoy) and /forward-auth for nginx auth_request, Caddy
    /// forward_auth and Traefik ForwardAuth, with the Envoy-mode policies;
    /// every other path as the Kyverno Authz Server's HTTP server, with the
    /// HTTP-mode policies. Plaintext, HTTP/1.1 and h2c; keep it on a private
    /// interface.
    #[arg(long, env = "CELGATE_AUTHZ_HTTP_ADDR", value_name = "ADDR")]
    authz_http_addr: Option<SocketAddr>,
    /// Peers of --authz-http-addr whose forwarded headers are believed
    /// (comma-separated addresses or CIDR ranges; '' trusts none). A
    /// /forward-auth request from any other address gets the failure denial
    /// whatever its X-Forwarded-* headers say; on /envoy/..., X-Forwarded-For
    /// (the source address) and X-Forwarded-Proto (the scheme) are taken
    /// from trusted peers only.
    #[arg(
        long,
        env = "CELGATE_TRUSTED_PROXIES",
        value_name = "CIDR",
        value_delimiter = ',',
        default_value = "127.0.0.0/8,::1/128"
    )]
    trusted_proxies: Vec<String>,
    #[command(flatten)]
    http_mode: HttpModeArgs,
    /// Serve gRPC over TLS with this certificate chain (PEM, leaf first).
    /// Needs --tls-key. The HTTP listener has its own flags
    /// (--http-tls-cert). The files are watched: a changed certificate, key
    /// or client CA is used for new connections without a restart (unless
    /// --no-watch).
    #[arg(
        long,
        env = "CELGATE_TLS_CERT",
        help_heading = "TLS (gRPC listener)",
        value_name = "PEM",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(
        long,
        env = "CELGATE_TLS_KEY",
        help_heading = "TLS (gRPC listener)",
        value_name = "PEM",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
    /// The oldest TLS version accepted, on both listeners (default: 1.2).
    #[arg(
        long,
        env = "CELGATE_TLS_MIN_VERSION",
        help_heading = "TLS (gRPC listener)",
        value_enum,
        value_name = "VERSION",
        requires = "any_tls"
    )]
    tls_min_version: Option<TlsMinVersion>,
    /// Mutual TLS: require a client certificate that chains to one of these
    /// CA certificates (PEM bundle). Needs --tls-cert.
    #[arg(
        long,
        env = "CELGATE_TLS_CLIENT_CA",
        help_heading = "TLS (gRPC listener)",
        value_name = "PEM",
        requires = "tls_cert"
    )]
    tls_client_ca: Option<PathBuf>,
    /// With --tls-client-ca: admit only client certificates with one of these
    /// subject alternative names (repeatable, or comma-separated in the
    /// variable): a DNS name (any ASCII case) or a URI such as
    /// spiffe://cluster.local/ns/gw/sa/envoy, compared exactly, or a prefix
    /// ending in `*`. Others are refused during the handshake.
    #[arg(
        long,
        env = "CELGATE_TLS_CLIENT_SAN",
        help_heading = "TLS (gRPC listener)",
        value_name = "NAME|PREFIX*",
        value_delimiter = ',',
        requires = "tls_client_ca",
        value_parser = parse_san
    )]
    tls_client_san: Vec<celgate::server::tls::SanPattern>,
    /// Serve the HTTP listener (/livez, /readyz, /policies, /metrics, /report) over
    /// TLS with this certificate chain (PEM, leaf first). Needs
    /// --http-tls-key. Without it the HTTP listener is plaintext, whatever
    /// the gRPC listener does; to use the gRPC certificate, give the same
    /// files. Watched and reloaded like --tls-cert.
    #[arg(
        long,
        env = "CELGATE_HTTP_TLS_CERT",
        help_heading = "TLS (HTTP listener)",
        value_name = "PEM",
        requires = "http_tls_key"
    )]
    http_tls_cert: Option<PathBuf>,
    /// The private key of --http-tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(
        long,
        env = "CELGATE_HTTP_TLS_KEY",
        help_heading = "TLS (HTTP listener)",
        value_name = "PEM",
        requires = "http_tls_cert"
    )]
    http_tls_key: Option<PathBuf>,
    /// The largest CheckRequest read, in bytes (the whole protobuf message:
    /// headers, body and every other attribute). A larger one is answered
    /// with the failure denial (--failure-status) without being read further.
    /// Default: --mcp-max-body-bytes plus 1 MiB for the headers and the rest.
    #[arg(long, env = "CELGATE_MAX_REQUEST_BYTES", value_parser = clap::value_parser!(u64).range(1024..=(u32::MAX as u64)))]
    max_request_bytes: Option<u64>,
    /// On SIGTERM/SIGINT, keep answering for this many seconds while `/readyz`
    /// answers 503 and gRPC health says NOT_SERVING, then drain and stop: load
    /// balancers and Kubernetes endpoints stop sending first, so no request
    /// meets a closed port during a rollout.
    #[arg(long, env = "CELGATE_SHUTDOWN_DELAY_S", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=300))]
    shutdown_delay_s: u64,
    /// Time allowed for one decision, queueing included, in milliseconds. Past
    /// it the request gets the failure denial (--failure-status, --failure-body)
    /// at once; the evaluation that overran stops there too and its result is
    /// discarded. Keep it below the ext_authz filter's timeout in
    /// Envoy (200 ms unless set; 0.5 s in the shipped configurations).
    #[arg(long, env = "CELGATE_DECISION_TIMEOUT_MS", default_value_t = celgate::server::limits::DEFAULT_DECISION_TIMEOUT.as_millis() as u64, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    decision_timeout_ms: u64,
    /// Cost units (see --cost-budget) a decision may spend on the thread that
    /// received its gRPC call. Most decisions need a few hundred: they are made
    /// there at once. One that needs more, or a call that blocks or takes long (a
    /// JWKS fetch, a token signature to verify), stops there and is made again
    /// from the start on the decision threads;
    /// 0: every decision is made on the decision threads.
    #[arg(long, env = "CELGATE_INLINE_BUDGET", default_value_t = celgate::server::limits::DEFAULT_INLINE_BUDGET, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    inline_budget: u64,
    /// Threads that evaluate policies; 0: one per available CPU. Evaluation
    /// beyond --inline-budget never runs on the threads that serve gRPC health
    /// and HTTP probes.
    #[arg(long, env = "CELGATE_DECISION_THREADS", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=1024))]
    decision_threads: u64,
    /// Requests that may wait for an evaluation thread. When that many are
    /// waiting, a new request is denied at once with HTTP 503 and
    /// `retry-after: 1` (the overload denial).
    #[arg(long, env = "CELGATE_MAX_PENDING_DECISIONS", default_value_t = celgate::server::limits::DEFAULT_MAX_PENDING as u64, value_parser = clap::value_parser!(u64).range(0..=65_536))]
    max_pending_decisions: u64,
    /// Do not watch the policy paths, nor the TLS files (then read once, at
    /// start). By default every change (new, changed, renamed or deleted
    /// files; ConfigMap `..data` swaps) rebuilds the whole set and swaps it
    /// in atomically; a change that does not load is logged and refused, and
    /// the last good set keeps serving. The same holds for the TLS
    /// certificate, key and client CA files.
    #[arg(long, env = "CELGATE_NO_WATCH")]
    no_watch: bool,
    /// Quiet period after a change before reloading, in milliseconds, so a
    /// burst of writes becomes one reload.
    #[arg(long, env = "CELGATE_RELOAD_QUIET_MS", default_value_t = 50)]
    reload_quiet_ms: u64,
    /// Before a reload, the policy files must keep their size and
    /// modification time this long (milliseconds), and the TLS files their
    /// content, so a file still being written is not loaded half-written.
    /// 0 turns the wait off.
    #[arg(long, env = "CELGATE_RELOAD_SETTLE_MS", default_value_t = celgate::sources::files::DEFAULT_SETTLE_MS)]
    reload_settle_ms: u64,
    /// Also serve ValidatingPolicy (spec.evaluation.mode: Envoy) and
    /// PolicyException objects of policies.kyverno.io from the Kubernetes API,
    /// watched cluster-wide (in-cluster config, or the kubeconfig). They combine
    /// with the files by name. celgate waits for the first complete list before
    /// it serves. Each object loads on its own: one that does not keeps its
    /// last good version serving (or none) and is reported in /readyz,
    /// /policies and /metrics, without holding back the others or the start.
    /// Needs get/list/watch on both resources (deploy/kubernetes/crd-source/rbac.yaml).
    /// Objects labelled celgate.dev/shadow=true are never served: they form
    /// the shadow set (see --shadow-policies).
    #[arg(long, env = "CELGATE_KUBE")]
    kube: bool,
    /// Namespaces whose PolicyException objects count (comma-separated; `*`
    /// for every namespace; an empty value for none). Whoever may create a
    /// PolicyException can switch a policy off for the requests it matches,
    /// so by default only celgate's own namespace counts: POD_NAMESPACE, else
    /// the ServiceAccount's namespace file (none outside a pod). Exceptions
    /// elsewhere are ignored and reported. Files are not affected.
    #[arg(
        long,
        env = "CELGATE_EXCEPTION_NAMESPACES",
        value_delimiter = ',',
        value_name = "NAMESPACE,...|*"
    )]
    exception_namespaces: Option<Vec<String>>,
    /// API version of policies.kyverno.io to watch.
    #[arg(long, env = "CELGATE_KUBE_API_VERSION", default_value = "v1alpha1")]
    kube_api_version: String,
    /// How long to wait at start-up for the first complete list from Kubernetes.
    #[arg(long, env = "CELGATE_KUBE_SYNC_TIMEOUT_S", default_value_t = 30)]
    kube_sync_timeout_s: u64,
    /// Add an event per evaluated policy (name and outcome) to each decision
    /// span. Spans are exported only when OTEL_EXPORTER_OTLP_ENDPOINT (or
    /// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set; OTEL_SERVICE_NAME,
    /// OTEL_TRACES_SAMPLER and the other standard variables apply.
    #[arg(long, env = "CELGATE_TRACE_POLICIES")]
    trace_policies: bool,
    /// Write one JSON line per decision to `stdout` or to this file (appended).
    /// Bounded and non-blocking: lines are dropped and counted when the writer
    /// falls behind.
    #[arg(long, env = "CELGATE_DECISION_LOG", value_name = "stdout|FILE")]
    decision_log: Option<celgate::telemetry::decision_log::Target>,
    /// Request headers to include in decision log lines (comma-separated).
    /// Credential headers (authorization, cookie, x-api-key, ...) are refused.
    #[arg(long, env = "CELGATE_DECISION_LOG_HEADERS", value_delimiter = ',')]
    decision_log_headers: Vec<String>,
    /// Do not record Prometheus metrics on the request path (/metrics then
    /// shows only the policy set and reload series).
    #[arg(long, env = "CELGATE_NO_METRICS")]
    no_metrics: bool,
    /// Also write the report (GET /report) to Kubernetes: one OpenReports
    /// `Report` object (openreports.io/v1alpha1) per policy, named
    /// celgate-<policy>[-<POD_NAME>], created or updated by server-side
    /// apply every --report-interval-s; owned by the pod (deleted with it)
    /// when POD_NAME and POD_UID are set and the namespace is the pod's.
    /// Needs the OpenReports CRDs and
    /// create/patch/delete on reports.openreports.io in --report-namespace.
    /// Write failures are logged and retried; they never affect decisions.
    #[arg(long, env = "CELGATE_REPORT_KUBE")]
    report_kube: bool,
    /// How often --report-kube writes, in seconds.
    #[arg(long, env = "CELGATE_REPORT_INTERVAL_S", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    report_interval_s: u64,
    /// Namespace of the --report-kube objects. Default: celgate's own
    /// namespace (POD_NAMESPACE, else the ServiceAccount's namespace file).
    #[arg(long, env = "CELGATE_REPORT_NAMESPACE", value_name = "NAMESPACE")]
    report_namespace: Option<String>,
    #[command(flatten)]
    failure: FailureArgs,
    #[command(flatten)]
    shadow: ShadowArgs,
    #[command(flatten)]
    identity: IdentityArgs,
    #[command(flatten)]
    http: HttpArgs,
}

/// A second policy set evaluated beside the served one, never enforced.
#[derive(Debug, Args)]
#[command(next_help_heading = "Shadow policy set")]
struct ShadowArgs {
    /// Shadow policy files or directories (like --policies: recursive,
    /// repeatable, comma-separated in the variable). This set is evaluated
    /// for the requests the served set decides, after the answer is sent,
    /// and never changes an answer: where it would decide otherwise (allow
    /// against deny, or another denial status) it is counted in
    /// celgate_shadow_disagreements_total and written to the decision log.
    /// Loaded with the same checks as --policies and reloaded the same way;
    /// a change that does not load keeps its last good version, and never
    /// affects the served set. With --kube, ValidatingPolicy and
    /// PolicyException objects labelled celgate.dev/shadow=true join this
    /// set instead of the served one.
    #[arg(
        long = "shadow-policies",
        env = "CELGATE_SHADOW_POLICIES",
        value_delimiter = ',',
        value_name = "PATH",
        value_parser = clap::builder::TypedValueParser::map(clap::builder::OsStringValueParser::new(), PathBuf::from)
    )]
    shadow_policies: Vec<PathBuf>,
    /// Fraction of the decided requests the shadow set also decides, from
    /// 0.0 to 1.0 (spread evenly over the requests).
    #[arg(long, env = "CELGATE_SHADOW_SAMPLE", default_value_t = 1.0, value_name = "FRACTION", value_parser = parse_fraction)]
    shadow_sample: f64,
    /// Time allowed for one shadow decision, from the hand-over (once the
    /// live answer is sent) to its end, in milliseconds. A later shadow
    /// decision is thrown away and counted as a timeout.
    #[arg(long, env = "CELGATE_SHADOW_TIMEOUT_MS", default_value_t = celgate::server::shadow::DEFAULT_TIMEOUT.as_millis() as u64, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    shadow_timeout_ms: u64,
    /// Threads that evaluate the shadow set: the most CPU it can take,
    /// however slow its policies.
    #[arg(long, env = "CELGATE_SHADOW_THREADS", default_value_t = celgate::server::shadow::DEFAULT_THREADS as u64, value_parser = clap::value_parser!(u64).range(1..=256))]
    shadow_threads: u64,
    /// Requests that may wait for a shadow thread. When that many wait, the
    /// shadow decision of a further request is dropped (and counted), never
    /// waited for.
    #[arg(long, env = "CELGATE_SHADOW_MAX_PENDING", default_value_t = celgate::server::shadow::DEFAULT_MAX_PENDING as u64, value_parser = clap::value_parser!(u64).range(0..=65_536))]
    shadow_max_pending: u64,
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        Ok(_) => Err("must be between 0.0 and 1.0".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

/// Settings of `jwt.Decode` and `jwks.Fetch`.
#[derive(Debug, Args)]
#[command(next_help_heading = "Identity (jwt, jwks)")]
struct IdentityArgs {
    /// URLs `jwks.Fetch` may fetch: hosts (`issuer.example.com`, `host:port`;
    /// https only) or URL prefixes (`https://issuer.example.com/keys`, matched on
    /// normalised URLs at path-segment boundaries; an `http://` prefix allows
    /// plain http to it). Default: any https URL. Policies name the URLs, so
    /// whoever writes policies can make celgate send GET requests anywhere it
    /// can reach (SSRF): set this where policy authors are not fully trusted.
    #[arg(long, env = "CELGATE_JWKS_ALLOWED_URLS", value_delimiter = ',')]
    jwks_allowed_urls: Vec<String>,
    /// Allow plain-http JWKS URLs (for every URL the allow-list admits). Off by
    /// default: a man in the middle could replace the keys. Prefer an
    /// `http://` prefix in --jwks-allowed-urls for the one issuer that needs it.
    #[arg(long, env = "CELGATE_JWKS_ALLOW_HTTP")]
    jwks_allow_http: bool,
    /// PEM file of CA certificates trusted for JWKS fetches in addition to the
    /// web PKI roots (issuers behind a private CA). Checked every 2 s and
    /// reloaded when it changes (unless --no-watch); a bundle that cannot be
    /// used refuses the start, and on reload is logged while the previous
    /// roots stay in force.
    #[arg(long, env = "CELGATE_JWKS_CA_BUNDLE", value_name = "PEM")]
    jwks_ca_bundle: Option<PathBuf>,
    /// Distinct JWKS URLs cached at once; one more evicts the least recently
    /// used (it is fetched again when next needed).
    #[arg(long, env = "CELGATE_JWKS_MAX_URLS", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    jwks_max_urls: u64,
    /// Limit on DNS + connect + TLS of a JWKS fetch, in milliseconds.
    #[arg(long, env = "CELGATE_JWKS_CONNECT_TIMEOUT_MS", default_value_t = 2000)]
    jwks_connect_timeout_ms: u64,
    /// Limit on a whole JWKS fetch, in milliseconds.
    #[arg(long, env = "CELGATE_JWKS_TIMEOUT_MS", default_value_t = 5000)]
    jwks_timeout_ms: u64,
    /// Key set lifetime when the issuer sends no Cache-Control max-age, in seconds.
    #[arg(long, env = "CELGATE_JWKS_DEFAULT_TTL_S", default_value_t = 300)]
    jwks_default_ttl_s: u64,
    /// Lower bound on the issuer's max-age, in seconds.
    #[arg(long, env = "CELGATE_JWKS_MIN_TTL_S", default_value_t = 60)]
    jwks_min_ttl_s: u64,
    /// Upper bound on the issuer's max-age, in seconds.
    #[arg(long, env = "CELGATE_JWKS_MAX_TTL_S", default_value_t = 86400)]
    jwks_max_ttl_s: u64,
    /// Least time between two fetches of one JWKS URL (key-rotation refreshes,
    /// retries), in seconds: unknown `kid`s cannot make celgate hammer the issuer.
    #[arg(long, env = "CELGATE_JWKS_MIN_REFRESH_S", default_value_t = 10)]
    jwks_min_refresh_s: u64,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    #[arg(long, env = "CELGATE_JWT_LEEWAY_S", default_value_t = 30)]
    jwt_leeway_s: u64,
    /// Verified tokens remembered so a repeated token is verified once (0: off).
    #[arg(long, env = "CELGATE_JWT_CACHE_SIZE", default_value_t = 10_000)]
    jwt_cache_size: usize,
    /// Invalid tokens remembered so a repeated bad token is not verified again
    /// (0: off).
    #[arg(long, env = "CELGATE_JWT_INVALID_CACHE_SIZE", default_value_t = 10_000)]
    jwt_invalid_cache_size: usize,
    /// How long an invalid token is remembered, in seconds.
    #[arg(long, env = "CELGATE_JWT_INVALID_CACHE_TTL_S", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    jwt_invalid_cache_ttl_s: u64,
}

/// Settings of the `http` library (`http.Get`, `http.Post`).
#[derive(Debug, Args)]
#[command(next_help_heading = "External data (http)")]
struct HttpArgs {
    /// URLs `http.Get` and `http.Post` may request: hosts (`data.example.com`,
    /// `host:port`; https only) or URL prefixes (`https://data.example.com/v1`,
    /// matched on normalised URLs at path-segment boundaries; an `http://`
    /// prefix allows plain http to it). Default: none, so a policy that uses
    /// the library needs this. A literal URL not allowed refuses the policy at
    /// load; a computed one is an evaluation error (failurePolicy decides).
    #[arg(long, env = "CELGATE_HTTP_ALLOWED_URLS", value_delimiter = ',')]
    http_allowed_urls: Vec<String>,
    /// Limit on DNS + connect + TLS of a call, in milliseconds.
    #[arg(long, env = "CELGATE_HTTP_CONNECT_TIMEOUT_MS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    http_connect_timeout_ms: u64,
    /// Limit on a whole call, in milliseconds (the decision's deadline, when
    /// sooner, ends it first).
    #[arg(long, env = "CELGATE_HTTP_TIMEOUT_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    http_timeout_ms: u64,
    /// Largest response body read, in bytes; a larger one is an error.
    #[arg(long, env = "CELGATE_HTTP_MAX_RESPONSE_BYTES", default_value_t = 1 << 20, value_parser = clap::value_parser!(u64).range(1..=(64 << 20)))]
    http_max_response_bytes: u64,
    /// Follow redirects (at most 5, each to a URL --http-allowed-urls
    /// admits). Off by default: a redirect is an error.
    #[arg(long, env = "CELGATE_HTTP_FOLLOW_REDIRECTS")]
    http_follow_redirects: bool,
    /// Lower bound on a GET answer's Cache-Control max-age, in seconds.
    #[arg(long, env = "CELGATE_HTTP_CACHE_MIN_TTL_S", default_value_t = 0)]
    http_cache_min_ttl_s: u64,
    /// Upper bound on a GET answer's Cache-Control max-age, in seconds.
    #[arg(long, env = "CELGATE_HTTP_CACHE_MAX_TTL_S", default_value_t = 300)]
    http_cache_max_ttl_s: u64,
    /// Memory for cached GET answers, in bytes (0: no cache).
    #[arg(long, env = "CELGATE_HTTP_CACHE_MAX_BYTES", default_value_t = 16 << 20)]
    http_cache_max_bytes: u64,
}

impl HttpArgs {
    fn config(&self) -> celgate::outbound::http::HttpConfig {
        use std::time::Duration;
        celgate::outbound::http::HttpConfig {
            allowed_urls: self
                .http_allowed_urls
                .iter()
                .map(|u| u.trim().to_owned())
                .filter(|u| !u.is_empty())
                .collect(),
            check_literals: true,
            connect_timeout: Duration::from_millis(self.http_connect_timeout_ms),
            timeout: Duration::from_millis(self.http_timeout_ms),
            max_response_bytes: self.http_max_response_bytes,
            follow_redirects: self.http_follow_redirects,
            cache_min_ttl: Duration::from_secs(self.http_cache_min_ttl_s),
            cache_max_ttl: Duration::from_secs(self.http_cache_max_ttl_s),
            cache_max_bytes: self.http_cache_max_bytes,
        }
    }
}

impl IdentityArgs {
    fn config(&self) -> celgate::identity::JwtConfig {
        use std::time::Duration;
        celgate::identity::JwtConfig {
            allowed_jwks_urls: self
                .jwks_allowed_urls
                .iter()
                .map(|u| u.trim().to_owned())
                .filter(|u| !u.is_empty())
                .collect(),
            connect_timeout: Duration::from_millis(self.jwks_connect_timeout_ms),
            timeout: Duration::from_millis(self.jwks_timeout_ms),
            leeway: Duration::from_secs(self.jwt_leeway_s),
            jwks_default_ttl: Duration::from_secs(self.jwks_default_ttl_s),
            jwks_min_ttl: Duration::from_secs(self.jwks_min_ttl_s),
            jwks_max_ttl: Duration::from_secs(self.jwks_max_ttl_s),
            jwks_min_refresh_interval: Duration::from_secs(self.jwks_min_refresh_s),
            token_cache_size: self.jwt_cache_size,
            allow_http: self.jwks_allow_http,
            max_jwks_urls: self.jwks_max_urls as usize,
            invalid_cache_size: self.jwt_invalid_cache_size,
            invalid_cache_ttl: Duration::from_secs(self.jwt_invalid_cache_ttl_s),
            ..Default::default()
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_log = match cli.command {
        Command::Serve(_) => "info",
        _ => "error",
    };
    let telemetry = match celgate::telemetry::otel::init(
        cli.log.as_deref().unwrap_or(default_log),
        matches!(cli.log_format, LogFormat::Json),
        matches!(cli.command, Command::Serve(_)),
    ) {
        Ok(g) => g,
        Err(e) => {
            say!("celgate: {e}");
            return ExitCode::from(commands::USAGE);
        }
    };
    let result = match cli.command {
        Command::Serve(args) => {
            let r = serve(*args, telemetry.exporting()).map(|()| ExitCode::SUCCESS);
            // Spans still buffered go out before the process ends.
            telemetry.shutdown();
            r
        }
        Command::Healthcheck(args) => {
            let tls = args.tls
                || args.ca_cert.is_some()
                || std::env::var_os("CELGATE_HTTP_TLS_CERT").is_some_and(|v| !v.is_empty());
            Ok(commands::healthcheck(
                args.http_addr,
                &args.path,
                std::time::Duration::from_millis(args.timeout_ms),
                tls.then_some(commands::HealthcheckTls {
                    ca_cert: args.ca_cert,
                    server_name: args.server_name,
                }),
            ))
        }
        Command::Report(args) => {
            let https = args.tls || args.ca_cert.is_some();
            Ok(commands::report(
                &args.url,
                matches!(args.format, ReportFormat::Json),
                std::time::Duration::from_millis(args.timeout_ms),
                https,
                commands::HealthcheckTls {
                    ca_cert: args.ca_cert,
                    server_name: args.server_name,
                },
            ))
        }
        Command::Check(args) => {
            args.policies.limits.apply();
            let input = match (&args.request, &args.http_request) {
                (Some(r), _) => commands::CheckInput::Envoy(r),
                (None, Some(r)) => commands::CheckInput::Http(r, args.http_mode.options()),
                (None, None) => unreachable!("clap requires one of --request, --http-request"),
            };
            commands::check(
                &args.policies.policies,
                args.policies.allow_empty,
                input,
                args.explain,
                args.failure.config(),
            )
        }
        Command::Validate(args) => {
            args.policies.limits.apply();
            Ok(commands::validate(
                &args.policies.policies,
                args.policies.allow_empty,
                args.warn_unindexed,
                matches!(args.output, ValidateOutput::Json),
            ))
        }
        Command::Test(args) => {
            args.limits.apply();
            Ok(commands::test(
                &args.paths,
                args.filter.as_deref(),
                matches!(args.output, TestOutput::Junit),
            ))
        }
        Command::Diff(args) => {
            args.limits.apply();
            Ok(commands::diff(&commands::DiffOptions {
                from: &args.from,
                to: &args.to,
                requests: &args.requests,
                allow_empty: args.allow_empty,
                json: matches!(args.output, ValidateOutput::Json),
                allow_changes: args.allow_changes,
                config: args.failure.config(),
            }))
        }
        // Both written whole, then printed: a closed pipe ends them quietly.
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "celgate", &mut script);
            commands::print(&script)
                .map(|()| ExitCode::SUCCESS)
                .map_err(anyhow::Error::from)
        }
        Command::Man {
            format: ManFormat::Markdown,
        } => celgate::manual::markdown(
            Cli::command(),
            &[
                0,
                commands::NOT_LOADED,
                commands::USAGE,
                commands::DENIED,
                commands::DENIED_BY_ERROR,
            ],
        )
        .map_err(anyhow::Error::from)
        .and_then(|page| commands::print(page.as_bytes()).map_err(anyhow::Error::from))
        .map(|()| ExitCode::SUCCESS),
        Command::Man {
            format: ManFormat::Roff,
        } => {
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut page)
                .and_then(|()| commands::print(&page))
                .map(|()| ExitCode::SUCCESS)
                .map_err(anyhow::Error::from)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            say!("celgate: {e:#}");
            // 1 for `serve` refusing to start on policies that do not load:
            // commands::NOT_LOADED, the status of the other commands.
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs, tracing_on: bool) -> anyhow::Result<()> {
    // `--policies ''` (or an empty variable) means no files: Kubernetes only.
    let paths: Vec<PathBuf> = args
        .policies
        .policies
        .iter()
        .filter(|p| !p.as_os_str().is_empty())
        .cloned()
        .collect();
    args.policies.limits.apply();
    let http_mode = celgate::httpmode::HttpMode::compile(&args.http_mode.options())?;
    let trusted_proxies = celgate::server::authz_http::TrustedProxies::parse(&args.trusted_proxies)
        .context("--trusted-proxies")?;
    // Before the policies load: their literal http URLs are checked then.
    let http = args.http.config();
    http.check().context("refusing to start")?;
    celgate::outbound::http::configure(http);
    // Redacted like a refused reload: server logs never carry an
    // expression's text (`celgate validate` shows it).
    // With --allow-empty, a path that does not exist yet is loaded when it
    // appears (until then /readyz shows it as the reload error).
    let missing: Vec<PathBuf> = paths
        .iter()
        .filter(|p| args.policies.allow_empty && std::fs::metadata(p).is_err())
        .cloned()
        .collect();
    let present: Vec<PathBuf> = paths
        .iter()
        .filter(|p| !missing.contains(p))
        .cloned()
        .collect();
    let set = PolicySet::load(&present)
        .map_err(|e| anyhow::anyhow!("{}", e.redacted()))
        .context("refusing to start")?;
    for w in &set.warnings {
        tracing::warn!("{w}");
    }
    for p in set.all_policies() {
        tracing::info!(policy = %p.name, file = %p.location.path.display(), "policy loaded");
    }
    // With --kube the cluster's objects count too: checked after the sync.
    let http_served = args.authz_http_addr.is_some();
    if set.decides_nothing(http_served) && !args.kube {
        if !args.policies.allow_empty {
            anyhow::bail!(
                "refusing to start: {}: {}",
                list_paths(&paths),
                celgate::sources::EMPTY_SET
            );
        }
        tracing::warn!(
            "{}: no Envoy-mode ValidatingPolicy, every request is allowed (accepted: --allow-empty)",
            list_paths(&paths)
        );
    }
    if !http_served && !set.http_policies.is_empty() {
        tracing::warn!(
            policies = set.http_policies.len(),
            "HTTP-mode policies are loaded but decide nothing: they answer on the authorization listener, which --authz-http-addr turns on"
        );
    }
    celgate::telemetry::metrics::global().set_enabled(!args.no_metrics);
    let shadow_paths: Vec<PathBuf> = args
        .shadow
        .shadow_policies
        .iter()
        .filter(|p| !p.as_os_str().is_empty())
        .cloned()
        .collect();
    let shadow_options = celgate::server::shadow::ShadowOptions {
        sample: args.shadow.shadow_sample,
        threads: args.shadow.shadow_threads as usize,
        max_pending: args.shadow.shadow_max_pending as usize,
        timeout: std::time::Duration::from_millis(args.shadow.shadow_timeout_ms),
    };
    // With --kube, objects labelled celgate.dev/shadow=true form the shadow
    // set (with the shadow files, if any); it compares nothing while empty.
    let (shadow, shadow_missing) = if !shadow_paths.is_empty() {
        let (set, missing) = shadow_set(&shadow_paths, args.policies.allow_empty)?;
        (
            Some(celgate::server::shadow::Shadow::new(
                set,
                shadow_options,
                true,
            )),
            missing,
        )
    } else if args.kube {
        (
            Some(celgate::server::shadow::Shadow::new(
                PolicySet::empty(),
                shadow_options,
                false,
            )),
            Vec::new(),
        )
    } else {
        (None, Vec::new())
    };
    if args.identity.jwks_min_ttl_s > args.identity.jwks_max_ttl_s {
        anyhow::bail!("--jwks-min-ttl-s must not exceed --jwks-max-ttl-s");
    }
    let identity = args.identity.config();
    identity.check().context("refusing to start")?;
    celgate::identity::configure(identity);
    let _ca_watch = match &args.identity.jwks_ca_bundle {
        None => None,
        Some(path) => {
            let n = celgate::identity::tls::load_ca_bundle(path).context("refusing to start")?;
            tracing::info!(path = %path.display(), certificates = n, "CA bundle added to the roots trusted for JWKS");
            if args.no_watch {
                None
            } else {
                Some(
                    celgate::identity::tls::watch_ca_bundle(
                        path.clone(),
                        std::time::Duration::from_secs(2),
                    )
                    .context("watching the CA bundle")?,
                )
            }
        }
    };
    let decision_log = match args.decision_log.clone() {
        Some(target) => Some(
            celgate::telemetry::decision_log::DecisionLog::start(
                target,
                &args.decision_log_headers,
            )
            .context("refusing to start")?,
        ),
        None => None,
    };
    tracing::info!(
        traces = if tracing_on {
            "exported over OTLP"
        } else {
            "off (no OTEL_EXPORTER_OTLP_ENDPOINT)"
        },
        metrics = !args.no_metrics,
        decision_log = decision_log.is_some(),
        "telemetry"
    );
    let min_version = match args.tls_min_version {
        Some(TlsMinVersion::V13) => celgate::server::tls::MinVersion::Tls13,
        Some(TlsMinVersion::V12) | None => celgate::server::tls::MinVersion::Tls12,
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let opts = celgate::server::tls::TlsOptions {
                cert: cert.clone(),
                key: key.clone(),
                min_version,
                client_ca: args.tls_client_ca.clone(),
                client_sans: args.tls_client_san.clone(),
            };
            let tls =
                celgate::server::tls::ServerTls::load(celgate::server::tls::Listener::Grpc, opts)
                    .context("refusing to start")?;
            let opts = tls.options();
            tracing::info!(
                min_version = if opts.min_version == celgate::server::tls::MinVersion::Tls13 {
                    "1.3"
                } else {
                    "1.2"
                },
                client_certificates = opts.client_ca.is_some(),
                client_san_rules = opts.client_sans.len(),
                "gRPC over TLS"
            );
            Some(tls)
        }
        _ => None,
    };
    let http_tls = match (&args.http_tls_cert, &args.http_tls_key) {
        (Some(cert), Some(key)) => {
            let opts = celgate::server::tls::TlsOptions {
                cert: cert.clone(),
                key: key.clone(),
                min_version,
                client_ca: None,
                client_sans: Vec::new(),
            };
            let tls =
                celgate::server::tls::ServerTls::load(celgate::server::tls::Listener::Http, opts)
                    .context("refusing to start: --http-tls-cert")?;
            tracing::info!("HTTP over TLS");
            Some(tls)
        }
        _ => None,
    };
    let watch_options = celgate::sources::files::WatchOptions {
        quiet: std::time::Duration::from_millis(args.reload_quiet_ms),
        settle: std::time::Duration::from_millis(args.reload_settle_ms),
        ..Default::default()
    };
    let _tls_watchers = if args.no_watch {
        Vec::new()
    } else {
        [&tls, &http_tls]
            .into_iter()
            .flatten()
            .map(|t| {
                celgate::server::tls::watch(t.clone(), watch_options)
                    .context("watching the TLS files")
            })
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    let state = State::with_options(
        set,
        args.failure.config(),
        celgate::server::ServeOptions {
            trace_policies: args.trace_policies,
            decision_log,
            shutdown_delay: std::time::Duration::from_secs(args.shutdown_delay_s),
            limits: celgate::server::limits::Limits {
                threads: args.decision_threads as usize,
                max_pending: args.max_pending_decisions as usize,
                timeout: std::time::Duration::from_millis(args.decision_timeout_ms),
                inline_budget: args.inline_budget,
                ..Default::default()
            },
            max_request_bytes: Some(args.max_request_bytes.map_or_else(
                || {
                    celgate::server::decode::default_max_request_bytes(
                        args.policies.limits.mcp_max_body_bytes,
                    )
                },
                |n| n as usize,
            )),
            tls,
            http_tls,
            shadow,
            trusted_proxies,
            http_mode: Some(std::sync::Arc::new(http_mode)),
        },
    );
    let exception_namespaces = match &args.exception_namespaces {
        Some(list) => celgate::sources::kube::ExceptionNamespaces::parse(list)?,
        None => match celgate::sources::kube::own_namespace() {
            Some(ns) => celgate::sources::kube::ExceptionNamespaces::parse(&[ns])?,
            None => {
                if args.kube {
                    tracing::warn!(
                        "celgate's own namespace is unknown (no POD_NAMESPACE, no ServiceAccount namespace file): \
                         PolicyExceptions from Kubernetes are ignored unless --exception-namespaces names their namespaces"
                    );
                }
                celgate::sources::kube::ExceptionNamespaces::None
            }
        },
    };
    if args.kube {
        tracing::info!(exception_namespaces = %exception_namespaces, "Kubernetes source");
    }
    // Without shadow files an empty shadow set is no rehearsal at all, just
    // nothing labelled yet: never refused.
    let shadow_allow_empty = args.policies.allow_empty || shadow_paths.is_empty();
    let shadow_sources = Sources::shadow_set(
        shadow_paths,
        exception_namespaces.clone(),
        shadow_allow_empty,
    );
    let sources = Sources::serving(
        paths,
        exception_namespaces,
        args.policies.allow_empty,
        http_served,
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let _kube = if args.kube {
        let task = rt.block_on(async {
            let client = celgate::sources::kube::default_client().await?;
            celgate::sources::kube::start_routed(
                client,
                args.kube_api_version.clone(),
                celgate::sources::kube::Routes {
                    live: sources.clone(),
                    shadow: Some(shadow_sources.clone()),
                },
                state.clone(),
                std::time::Duration::from_secs(args.kube_sync_timeout_s),
            )
            .await
        })?;
        if state.policies.load().decides_nothing(http_served) {
            if !args.policies.allow_empty {
                anyhow::bail!(
                    "refusing to start: {} and Kubernetes: {}",
                    list_paths(&sources.paths),
                    celgate::sources::EMPTY_SET
                );
            }
            tracing::warn!(
                "{} and Kubernetes: no Envoy-mode ValidatingPolicy, every request is allowed \
                 (accepted: --allow-empty)",
                list_paths(&sources.paths)
            );
        }
        // Broken Kubernetes objects do not stop the start (they are left out
        // and reported); only files that stopped loading meanwhile do.
        if let Some(e) = state.reload.last_error() {
            anyhow::bail!(
                "refusing to start: the policy files do not load:\n  - {}",
                e.errors.join("\n  - ")
            );
        }
        if let Some(r) = state.reload.kube() {
            if r.broken + r.ignored > 0 {
                tracing::warn!(
                    ok = r.ok,
                    broken = r.broken,
                    ignored = r.ignored,
                    "serving the Kubernetes objects that load; the others are listed in /readyz"
                );
            }
        }
        Some(task)
    } else {
        None
    };
    let _report_kube = if args.report_kube {
        let namespace = match args
            .report_namespace
            .clone()
            .or_else(celgate::sources::kube::own_namespace)
        {
            Some(ns) if celgate::sources::kube::is_namespace_name(&ns) => ns,
            Some(ns) => anyhow::bail!("refusing to start: --report-namespace {ns:?} is not a namespace name"),
            None => anyhow::bail!(
                "refusing to start: --report-kube needs --report-namespace (celgate's own namespace is unknown: no POD_NAMESPACE, no ServiceAccount namespace file)"
            ),
        };
        let client = rt.block_on(celgate::sources::kube::default_client())?;
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let pod = env("POD_NAME");
        // Owned by the pod only in its own namespace.
        let pod_uid = env("POD_UID").filter(|_| {
            pod.is_some() && celgate::sources::kube::own_namespace().as_ref() == Some(&namespace)
        });
        tracing::info!(namespace = %namespace, interval_s = args.report_interval_s, owned_by_pod = pod_uid.is_some(), "report written to Kubernetes as OpenReports objects");
        let _in_runtime = rt.enter();
        Some(celgate::telemetry::openreports::spawn(
            client,
            celgate::telemetry::openreports::Target {
                namespace,
                pod,
                pod_uid,
            },
            std::time::Duration::from_secs(args.report_interval_s),
            state.clone(),
        ))
    } else {
        None
    };
    // Tests shorten the report's minute to see its windows pass.
    if let Some(ms) = std::env::var("CELGATE_TEST_REPORT_MINUTE_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        celgate::telemetry::report::global().set_minute(std::time::Duration::from_millis(ms));
    }
    let _watcher = if args.no_watch || sources.paths.is_empty() {
        None
    } else {
        Some(
            celgate::sources::files::watch_with(state.clone(), sources.clone(), watch_options)
                .context("watching the policy paths")?,
        )
    };
    if !missing.is_empty() {
        // Reports the missing paths in /readyz and the reload counters.
        celgate::sources::rebuild(&state, &sources);
    }
    let _shadow_watcher = if args.no_watch || shadow_sources.paths.is_empty() {
        None
    } else {
        Some(
            celgate::sources::files::watch_with(
                state.clone(),
                shadow_sources.clone(),
                watch_options,
            )
            .context("watching the shadow policy paths")?,
        )
    };
    if !shadow_missing.is_empty() {
        celgate::sources::rebuild(&state, &shadow_sources);
    }
    rt.block_on(server::serve_all(
        state,
        args.grpc_addr,
        args.http_addr,
        args.authz_http_addr,
        server::signal(),
    ))?;
    celgate::telemetry::decision_log::drain(std::time::Duration::from_secs(2));
    tracing::info!("stopped");
    Ok(())
}

/// The shadow set at start-up, held to the same checks as the served set:
/// it must load, and hold an Envoy-mode policy unless --allow-empty (which
/// also lets a path that does not exist yet be loaded when it appears:
/// those paths are returned).
fn shadow_set(paths: &[PathBuf], allow_empty: bool) -> anyhow::Result<(PolicySet, Vec<PathBuf>)> {
    let (missing, present): (Vec<PathBuf>, Vec<PathBuf>) = paths
        .iter()
        .cloned()
        .partition(|p| allow_empty && std::fs::metadata(p).is_err());
    let set = PolicySet::load(&present)
        .map_err(|e| anyhow::anyhow!("{}", e.redacted()))
        .context("refusing to start: the shadow policies do not load")?;
    for w in &set.warnings {
        tracing::warn!(set = "shadow", "{w}");
    }
    for p in &set.policies {
        tracing::info!(set = "shadow", policy = %p.name, file = %p.location.path.display(), "shadow policy loaded");
    }
    if set.policies.is_empty() {
        if !allow_empty {
            anyhow::bail!(
                "refusing to start: shadow {}: {}",
                list_paths(paths),
                celgate::sources::EMPTY_SET
            );
        }
        tracing::warn!(
            "shadow {}: no Envoy-mode ValidatingPolicy, the shadow set allows every request (accepted: --allow-empty)",
            list_paths(paths)
        );
    }
    Ok((set, missing))
}

/// The policy paths, for messages.
fn list_paths(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return "no policy files".to_owned();
    }
    let list: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    format!("policies from {}", list.join(", "))
}

// The request path allocates small, short-lived values (CEL values, boxed
// fields); mimalloc's thread-local free lists serve those far faster than
// glibc malloc under concurrency.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

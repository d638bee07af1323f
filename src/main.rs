//! `marquee`: the events and ticketing platform in one binary. This file
//! parses the command line, dispatches to one function per command and
//! picks the exit code: 0 success, 1 a runtime failure, 2 a bad setting.

/// Lines for the operator on stderr (`tell!`, `tell_partial!` without the
/// newline) and results on stdout (`say!`). A stderr that cannot be written
/// (sent to a file on the disk that just filled up) is passed over:
/// `eprintln!` panics there, and the exit code would be 101 instead of the
/// one that tells the operator (and systemd) what happened. `say!` is a
/// `Result`: a result that is the command's point and cannot be written (a
/// token written nowhere was not given) fails it; the report of a change
/// made anyway does not.
macro_rules! tell {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}
macro_rules! tell_partial {
    ($($arg:tt)*) => {{
        let _ = write!(std::io::stderr(), $($arg)*);
    }};
}
macro_rules! say {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout(), $($arg)*)
            .and_then(|()| std::io::stdout().flush())
            .map_err(|e| Failure::Runtime(format!("cannot write the result to stdout: {e}")))
    };
}

mod config;
mod logging;

use std::io::{BufRead, Write};

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use graph::model::Role;
use graph::Graph;

use config::{LogFormat, ServeArgs, ServeConfig, StoreArgs, StoreConfig};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process, unless
/// `MIMALLOC_ALLOW_THP` says otherwise (mimalloc reads it at start-up).
///
/// mimalloc asks for huge pages, and the kernel then zeroes (and may
/// first compact memory for) 2 MiB at the first touch of each: stalls on
/// whichever thread touches it, the group commit's flusher included. In
/// interleaved runs of the booking load (`loadtest/compare-builds.sh`, 34
/// rounds in four runs) the p99 was lower without them in 26 rounds, with
/// bookings/s within the noise (95-102%), and resident memory smaller.
/// Refused or unsupported: the process keeps the system's setting.
fn disable_transparent_huge_pages() {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        let _ = rustix::thread::disable_transparent_huge_pages(true);
    }
}

/// Marquee: a self-hosted events and ticketing platform in one process.
#[derive(Parser, Debug)]
#[command(name = "marquee", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// The serve settings make one variant large; a command is parsed once.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server: GraphQL at /graphql (POST; GET opens the IDE), /healthz, /readyz.
    Serve(ServeArgs),
    /// Manage accounts in a data directory while the server is stopped.
    #[command(subcommand)]
    User(UserCommand),
    /// Import users, events, follows and attendances from CSV files into a
    /// new data directory (layout: shared/datasets/social/README.md).
    Import {
        #[command(flatten)]
        store: StoreArgs,
        /// Directory holding users.csv, events.csv, tags.csv, follows.csv,
        /// attends.csv, organizes.csv and event_tags.csv.
        #[arg(long, value_name = "CSVDIR")]
        from: std::path::PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum UserCommand {
    /// Create an account, e.g. the first admin. Reads the password from stdin.
    Create {
        #[command(flatten)]
        store: StoreArgs,
        /// Sign-in email.
        #[arg(long)]
        email: String,
        /// Display name.
        #[arg(long)]
        name: String,
        /// Role of the new account.
        #[arg(long, value_enum, default_value = "attendee")]
        role: CliRole,
        /// Read the password from the first line of standard input (required).
        #[arg(long)]
        password_stdin: bool,
    },
    /// Change the role of an existing account.
    SetRole {
        #[command(flatten)]
        store: StoreArgs,
        /// Sign-in email of the account.
        #[arg(long)]
        email: String,
        /// The new role.
        #[arg(long, value_enum)]
        role: CliRole,
    },
    /// Mint short-lived bearer tokens (support, load tests): for one account
    /// by --email or --id, or for every id listed in --ids-from (printing
    /// `id token` lines).
    Token {
        #[command(flatten)]
        store: StoreArgs,
        /// Sign-in email of the account.
        #[arg(long, conflicts_with_all = ["id", "ids_from"])]
        email: Option<String>,
        /// Id of the account (imported accounts have no usable email).
        #[arg(long, conflicts_with = "ids_from")]
        id: Option<u64>,
        /// File with one account id per line.
        #[arg(long, value_name = "FILE")]
        ids_from: Option<std::path::PathBuf>,
        /// How long the token is valid, e.g. 15m, 2h (1m to 366d, as --token-ttl).
        #[arg(long, default_value = "1h", value_parser = token_ttl)]
        ttl: Duration,
    },
}

#[derive(ValueEnum, Debug, Clone, Copy)]
enum CliRole {
    Attendee,
    Organizer,
    Admin,
    Partner,
}

impl From<CliRole> for Role {
    fn from(role: CliRole) -> Role {
        match role {
            CliRole::Attendee => Role::Attendee,
            CliRole::Organizer => Role::Organizer,
            CliRole::Admin => Role::Admin,
            CliRole::Partner => Role::Partner,
        }
    }
}

/// A failure and the exit code it maps to.
enum Failure {
    /// A setting is wrong: exit 2.
    Config(String),
    /// A command's argument or input is wrong: exit 2.
    Usage(String),
    /// Something failed while running: exit 1.
    Runtime(String),
}

fn main() -> ExitCode {
    disable_transparent_huge_pages();
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Serve(args) => serve(&args),
        Command::User(command) => user(command),
        Command::Import { store, from } => import(&store, &from),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(message)) => {
            tell!("marquee: configuration error: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Usage(message)) => {
            tell!("marquee: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(message)) => {
            tell!("marquee: {message}");
            ExitCode::FAILURE
        }
    }
}

fn open_graph(store: &StoreConfig) -> Result<Graph, Failure> {
    if store.data_dir.exists() && !store.data_dir.is_dir() {
        return Err(Failure::Config(format!(
            "data_dir (--data-dir, MARQUEE_DATA_DIR): {} is a file, not a directory",
            shown(&store.data_dir).display()
        )));
    }
    let options = graph::Options { cache_bytes: store.cache_bytes };
    Graph::open(&store.data_dir, options).map_err(|e| Failure::Runtime(format!("cannot open data directory: {e}")))
}

/// A `user token --ttl`: a duration within the bounds of `--token-ttl`.
fn token_ttl(text: &str) -> Result<Duration, String> {
    let ttl = config::parse_duration(text)?;
    if !(Duration::from_secs(60)..=Duration::from_secs(366 * 24 * 3600)).contains(&ttl) {
        return Err(format!("{text:?} is not between 1m and 366d (the bounds of --token-ttl)"));
    }
    Ok(ttl)
}

/// Whether `data_dir` holds a store (a server or command has used it).
fn holds_store(data_dir: &std::path::Path) -> bool {
    data_dir.join("db").is_dir()
}

/// The store a `user` command works on: an existing one, or (`create_new`,
/// for the first admin before the first start) a new one, said so. Run as
/// root on a directory someone else owns (the service's user), it refuses:
/// the files it would write would belong to root, and the server could not
/// open them.
fn open_for_command(store: &StoreArgs, create_new: bool) -> Result<Graph, Failure> {
    let store = StoreConfig::resolve(store).map_err(Failure::Config)?;
    refuse_foreign_directory(&store.data_dir, "user ...")?;
    let shown = shown(&store.data_dir);
    let new = !holds_store(&store.data_dir);
    if new && !create_new {
        return Err(Failure::Config(format!(
            "{} holds no store: give the server's data directory with --data-dir (or --config)",
            shown.display()
        )));
    }
    let graph = open_graph(&store)?;
    if new {
        tell!("marquee: {} held no store; started a new one there", shown.display());
    }
    Ok(graph)
}

/// Refuses, run as root, a data directory another user owns (the
/// service's): the files root would write there, the service could not
/// open. `command` is how to run it as that user instead.
fn refuse_foreign_directory(dir: &std::path::Path, command: &str) -> Result<(), Failure> {
    let Some(owner) = foreign_owner(dir) else { return Ok(()) };
    Err(Failure::Config(format!(
        "{} belongs to uid {owner}, and this runs as root: run it as that user (e.g. `sudo -u marquee marquee {command}`), or the files it writes there could not be opened by the service",
        shown(dir).display()
    )))
}

/// A directory as messages show it: absolute, so a relative default
/// (`./data`) says where it is.
fn shown(dir: &std::path::Path) -> std::path::PathBuf {
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// The owner of `dir` when this process runs as root and `dir` belongs to
/// another user.
fn foreign_owner(dir: &std::path::Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(dir).ok()?.uid();
    (effective_uid() == Some(0) && owner != 0).then_some(owner)
}

/// This process's effective user id, from /proc/self/status.
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

fn serve(args: &ServeArgs) -> Result<(), Failure> {
    let config = ServeConfig::resolve(args).map_err(Failure::Config)?;
    let logs = init_logging(config.log_format)?;
    let outcome = serve_with(&config);
    logs.drain(Duration::from_secs(2));
    outcome
}

fn serve_with(config: &ServeConfig) -> Result<(), Failure> {
    if let Some(owner) = foreign_owner(&config.store.data_dir) {
        // Not refused: a root container on a volume another uid owns is a
        // setup of its own; the files written now will belong to root.
        tracing::warn!(
            data_dir = %config.store.data_dir.display(),
            owner,
            "serving as root from a directory another user owns: the files written now belong to root, and that user's service could not open them"
        );
    }
    // The address is taken before the store is opened: a port in use
    // leaves no new store behind in a mistyped directory.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(format!("cannot start the runtime: {e}")))?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(config.listen))
        .map_err(|e| Failure::Runtime(format!("cannot listen on {}: {e}", config.listen)))?;
    let new = !holds_store(&config.store.data_dir);
    let graph = Arc::new(open_graph(&config.store)?);
    if new {
        // A first start, or a mistyped path or missing mount: say which directory.
        let dir = shown(&config.store.data_dir);
        tracing::info!(data_dir = %dir.display(), "the data directory held no store: starting with an empty one");
    }
    let options = ledger::Options { shards: config.ledger_shards, hold_ttl_ms: millis(config.hold_ttl), durable: true };
    let ledger = ledger::Ledger::open(graph.clone(), options)
        .map_err(|e| Failure::Runtime(format!("cannot recover the ticket ledger: {e}")))?;
    let ledger = Arc::new(ledger);
    runtime.block_on(run_server(config, listener, graph.clone(), ledger))?;
    graph.store().flush().map_err(|e| Failure::Runtime(format!("final flush failed: {e}")))?;
    tracing::info!("stopped: the store is flushed");
    Ok(())
}

/// The api's protection settings from the resolved configuration.
fn protections(p: &config::Protections) -> api::Settings {
    let rate = |per_second: u32| {
        if per_second == 0 {
            api::limits::Rate::unlimited()
        } else {
            api::limits::Rate { per_second: f64::from(per_second), burst: 2.0 * f64::from(per_second) }
        }
    };
    let credentials = if p.rate_limit_credentials == 0 {
        api::limits::Rate::unlimited()
    } else {
        api::limits::Rate::per(p.rate_limit_credentials, Duration::from_secs(60))
    };
    let defaults = api::Settings::default();
    api::Settings {
        rate_per_token: rate(p.rate_limit_token),
        rate_per_ip: rate(p.rate_limit_ip),
        rate_credentials_per_ip: credentials,
        login_failures_max: p.login_failures_max,
        trust_proxy_headers: p.trust_proxy_headers,
        introspection: p.introspection,
        request_timeout_ms: u64::try_from(p.request_timeout.as_millis()).unwrap_or(u64::MAX),
        connections_max: p.connections_max,
        shutdown_grace_ms: u64::try_from(p.shutdown_grace.as_millis()).unwrap_or(u64::MAX),
        query_limits: api::limits::QueryLimits {
            depth_max: p.query_depth_max,
            complexity_max: p.query_complexity_max,
            aliases_max: p.query_aliases_max,
            batch_max: p.query_batch_max,
            ..defaults.query_limits.clone()
        },
        ..defaults
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Returns expired holds' seats to sale every `HOLD_REAP_INTERVAL`, so they
/// come back promptly even when nobody touches that ticket type.
fn spawn_hold_reaper(ledger: Arc<ledger::Ledger>) {
    const HOLD_REAP_INTERVAL: Duration = Duration::from_millis(500);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(HOLD_REAP_INTERVAL);
        loop {
            ticker.tick().await;
            let ledger = ledger.clone();
            match tokio::task::spawn_blocking(move || ledger.reap_expired(graph::now_ms())).await {
                Ok(Ok(0)) => {}
                Ok(Ok(expired)) => tracing::info!(expired, "expired holds released their seats"),
                Ok(Err(error)) => tracing::error!(%error, "reaping expired holds failed"),
                // The runtime is shutting down.
                Err(error) if error.is_cancelled() => return,
                Err(error) => tracing::error!(%error, "hold reaper task failed"),
            }
        }
    });
}

async fn run_server(
    config: &ServeConfig,
    listener: tokio::net::TcpListener,
    graph: Arc<Graph>,
    ledger: Arc<ledger::Ledger>,
) -> Result<(), Failure> {
    let address = listener.local_addr().map_err(|e| Failure::Runtime(e.to_string()))?;
    let settings = api::Settings {
        token_ttl_ms: millis(config.token_ttl),
        body_bytes_max: config.body_bytes_max,
        webhooks: api::readers::webhooks::DeliverySettings {
            retry_base_ms: millis(config.webhook_retry_base),
            timeout_ms: u64::try_from(config.webhook_timeout.as_millis()).unwrap_or(u64::MAX),
            allow_private: config.allow_private_webhooks,
            attempts_max: config.webhook_attempts_max,
        },
        ws_connections_max: config.ws_connections_max,
        ws_connections_per_ip_max: config.ws_connections_per_ip_max,
        subscriptions_per_connection_max: config.subscriptions_per_connection_max,
        ..protections(&config.protections)
    };
    spawn_hold_reaper(ledger.clone());
    let app = Arc::new(api::App::new(graph, ledger, settings).map_err(Failure::Runtime)?);
    let signalled = shutdown_signal()?;
    let mut storage = app.storage_failure();
    let shutdown = async move {
        tokio::select! {
            () = signalled => {}
            _ = storage.wait_for(|failed| *failed) => {
                tracing::error!("a storage write failed: stopping, so that a restart recovers the acknowledged state");
            }
        }
    };
    tracing::info!(%address, data_dir = %config.store.data_dir.display(), "marquee serving");
    // Tests and scripts read the bound address (port 0 picks one) from this line.
    // Serving goes on without this line (the log says where it listens).
    let _ = say!("marquee listening on http://{address}");
    let served = api::serve(listener, app.clone(), shutdown).await;
    // The readers finish their current batches; their checkpoints are
    // written with the final flush.
    let store_failed = !app.graph.store().is_healthy();
    tokio::task::spawn_blocking(move || app.readers.stop()).await.ok();
    served.map_err(|e| Failure::Runtime(format!("server failed: {e}")))?;
    if store_failed {
        // Exit 1: the supervisor (systemd's Restart=on-failure) starts it
        // again, and start-up recovers what was acknowledged.
        return Err(Failure::Runtime("stopped after a storage write failed; start again to recover".into()));
    }
    Ok(())
}

/// A future that completes on SIGINT, SIGTERM or SIGHUP. The handlers are installed
/// here, before the server announces itself, so a signal sent the moment
/// it is listening still stops it cleanly.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, Failure> {
    use tokio::signal::unix::{signal, SignalKind};
    let watch = |kind| signal(kind).map_err(|e| Failure::Runtime(format!("cannot watch signals: {e}")));
    let mut interrupt = watch(SignalKind::interrupt())?;
    let mut terminate = watch(SignalKind::terminate())?;
    // A closed terminal's hangup too: there is no configuration to reload,
    // and its default would end the process without a drain.
    let mut hangup = watch(SignalKind::hangup())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
            _ = hangup.recv() => {}
        }
        tracing::info!("shutting down: finishing requests in flight");
    })
}

/// Logs go to stderr through a writer thread (see `logging`).
fn init_logging(format: LogFormat) -> Result<logging::Logs, Failure> {
    let logs = logging::Logs::start().map_err(|e| Failure::Runtime(format!("cannot start the log writer: {e}")))?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // Colours only for a person at a terminal; files and journald get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(logs.clone());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(logs)
}

fn user(command: UserCommand) -> Result<(), Failure> {
    match command {
        UserCommand::Create { store, email, name, role, password_stdin } => {
            if !password_stdin {
                return Err(Failure::Usage("give the password on standard input with --password-stdin".into()));
            }
            let password = read_password()?;
            if password.is_empty() {
                return Err(Failure::Usage("no password on standard input: give it as the first line".into()));
            }
            // The account's input is checked before the store is opened (or
            // started), so that a typo leaves nothing behind.
            let usage = |e: graph::Error| Failure::Usage(e.to_string());
            graph::rules::password(&password).map_err(usage)?;
            graph::rules::email(&email).map_err(usage)?;
            graph::rules::required_text("name", &name, graph::rules::NAME_CHARS_MAX).map_err(usage)?;
            let hash = api::auth::hash_password(&password).map_err(|_| Failure::Runtime("hashing failed".into()))?;
            let graph = open_for_command(&store, true)?;
            let user =
                graph.register(&email, &name, role.into(), Some(hash)).map_err(|e| Failure::Runtime(e.to_string()))?;
            // Made whether or not this can be told (as for the lines below).
            let _ = say!("created user {} <{}> with role {:?}", user.id, user.email, user.role);
            Ok(())
        }
        UserCommand::SetRole { store, email, role } => {
            let graph = open_for_command(&store, false)?;
            let user = find_user(&graph, &email)?;
            let user = graph.set_role(user.id, role.into()).map_err(|e| Failure::Runtime(e.to_string()))?;
            let _ = say!("user {} <{}> now has role {:?}", user.id, user.email, user.role);
            Ok(())
        }
        UserCommand::Token { store, email, id, ids_from, ttl } => {
            if email.is_none() && id.is_none() && ids_from.is_none() {
                return Err(Failure::Usage("say whose token: give --email, --id or --ids-from".into()));
            }
            let graph = open_for_command(&store, false)?;
            if let Some(path) = ids_from {
                return mint_tokens(&graph, &path, millis(ttl));
            }
            let user = match (email, id) {
                (Some(email), _) => find_user(&graph, &email)?,
                (None, Some(id)) => find_user_by_id(&graph, id)?,
                (None, None) => unreachable!("a command without --email, --id or --ids-from is refused above"),
            };
            let token = api::auth::issue_token(&graph, user.id, millis(ttl))
                .map_err(|e| Failure::Runtime(e.message().to_string()))?;
            say!("{token}")?;
            Ok(())
        }
    }
}

fn find_user_by_id(graph: &Graph, id: u64) -> Result<graph::model::User, Failure> {
    match graph.user(graph::ids::UserId(id)) {
        Ok(Some(user)) => Ok(user),
        Ok(None) => Err(Failure::Runtime(format!("no account with id {id}"))),
        Err(e) => Err(Failure::Runtime(e.to_string())),
    }
}

/// Mints one token per id in `path`, all opened in one durable write.
fn mint_tokens(graph: &Graph, path: &std::path::Path, ttl_ms: i64) -> Result<(), Failure> {
    let text =
        std::fs::read_to_string(path).map_err(|e| Failure::Runtime(format!("cannot read {}: {e}", path.display())))?;
    let mut users = Vec::new();
    for (line, id) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let id: u64 = id.trim().parse().map_err(|_| {
            Failure::Usage(format!("{}:{}: {:?} is not an account id", path.display(), line + 1, id.trim()))
        })?;
        users.push(find_user_by_id(graph, id)?.id);
    }
    let tokens =
        api::auth::issue_tokens(graph, &users, ttl_ms).map_err(|e| Failure::Runtime(e.message().to_string()))?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (user, token) in users.iter().zip(tokens) {
        writeln!(out, "{user} {token}").map_err(|e| Failure::Runtime(e.to_string()))?;
    }
    out.flush().map_err(|e| Failure::Runtime(e.to_string()))
}

/// `marquee import`: CSV files into a new data directory, with a progress bar.
fn import(store: &StoreArgs, from: &std::path::Path) -> Result<(), Failure> {
    let config = StoreConfig::resolve(store).map_err(Failure::Config)?;
    let options = graph::Options { cache_bytes: config.cache_bytes };
    let started = std::time::Instant::now();
    let mut bar = ProgressBar::new();
    let summary = graph::import::import(&config.data_dir, from, options, &mut |p| bar.show(p))
        .map_err(|e| Failure::Runtime(format!("import failed, nothing was written: {e}")))?;
    bar.finish();
    let _ = say!(
        "imported {} users, {} events, {} follows, {} attendances into {} in {:.1} s",
        summary.users,
        summary.events,
        summary.follows,
        summary.attends,
        config.data_dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Import progress on stderr: on a terminal, a one-line bar redrawn at
/// most ten times a second; into a file or pipe (a log), a plain line
/// every five seconds and one as each phase completes, so the log reads
/// line by line.
struct ProgressBar {
    phase: &'static str,
    drawn_at: Option<std::time::Instant>,
    terminal: bool,
}

impl ProgressBar {
    fn new() -> ProgressBar {
        use std::io::IsTerminal;
        ProgressBar { phase: "", drawn_at: None, terminal: std::io::stderr().is_terminal() }
    }

    fn show(&mut self, progress: graph::import::Progress) {
        const WIDTH: u64 = 30;
        let now = std::time::Instant::now();
        let finished = progress.done >= progress.total;
        let pause = if self.terminal { 100 } else { 5_000 };
        let recent = self.drawn_at.is_some_and(|at| now.duration_since(at).as_millis() < pause);
        if self.phase == progress.phase && recent && !finished {
            return;
        }
        if self.terminal && self.phase != progress.phase && !self.phase.is_empty() {
            tell!();
        }
        self.phase = progress.phase;
        self.drawn_at = Some(now);
        let percent = (progress.done * 100).checked_div(progress.total).unwrap_or(100);
        let (phase, done, total) = (progress.phase, progress.done, progress.total);
        if !self.terminal {
            tell!("marquee: import: {phase} {percent}% ({done}/{total})");
            return;
        }
        let filled = (progress.done * WIDTH).checked_div(progress.total).unwrap_or(WIDTH).min(WIDTH);
        let bar: String = (0..WIDTH).map(|i| if i < filled { '#' } else { '-' }).collect();
        tell_partial!("\r[{bar}] {percent:>3}% {phase} ({done}/{total})");
    }

    fn finish(&self) {
        if self.terminal && !self.phase.is_empty() {
            tell!();
        }
    }
}

fn find_user(graph: &Graph, email: &str) -> Result<graph::model::User, Failure> {
    match graph.user_by_email(email) {
        Ok(Some((user, _))) => Ok(user),
        Ok(None) => Err(Failure::Runtime(format!("no account with email {email}"))),
        Err(e) => Err(Failure::Runtime(e.to_string())),
    }
}

fn read_password() -> Result<String, Failure> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| Failure::Runtime(format!("cannot read standard input: {e}")))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

//! Settings: command-line flags win over `MARQUEE_*` environment variables,
//! which win over the TOML file given with `--config`, which wins over the
//! embedded defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

/// Where the data lives; shared by every command that opens it.
#[derive(Args, Debug, Clone)]
pub struct StoreArgs {
    /// TOML file with settings (keys as the long flags, with underscores).
    #[arg(long, env = "MARQUEE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory [default: ./data]; `serve` and `user create` start a new store there if it holds none; `import` needs it new or empty
    #[arg(long, env = "MARQUEE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Storage page cache in MiB [default: 256]
    #[arg(long, env = "MARQUEE_CACHE_MB", value_name = "MIB")]
    pub cache_mb: Option<u64>,
}

/// Settings of `marquee serve`.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Address to listen on; port 0 picks a free port [default: 127.0.0.1:8080]
    #[arg(long, env = "MARQUEE_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// How long a sign-in token stays valid, e.g. 30d, 12h [default: 30d]
    #[arg(long, env = "MARQUEE_TOKEN_TTL", value_name = "DURATION", value_parser = parse_duration)]
    pub token_ttl: Option<Duration>,
    /// Largest request body in bytes; larger ones get 413 [default: 1048576]
    #[arg(long, env = "MARQUEE_BODY_BYTES_MAX", value_name = "BYTES")]
    pub body_bytes_max: Option<usize>,
    /// How long a hold keeps seats before they return to sale, e.g. 10m [default: 10m]
    #[arg(long, env = "MARQUEE_HOLD_TTL", value_name = "DURATION", value_parser = parse_duration)]
    pub hold_ttl: Option<Duration>,
    /// Ticket ledger shards, a power of two up to 256 [default: 16]
    #[arg(long, env = "MARQUEE_LEDGER_SHARDS", value_name = "N")]
    pub ledger_shards: Option<usize>,
    /// Log format: text or json [default: text]
    #[arg(long, env = "MARQUEE_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// First webhook retry delay; doubles per attempt, e.g. 5s [default: 5s]
    #[arg(long, env = "MARQUEE_WEBHOOK_RETRY_BASE", value_name = "DURATION", value_parser = parse_duration)]
    pub webhook_retry_base: Option<Duration>,
    /// How long one webhook delivery attempt may take [default: 10s]
    #[arg(long, env = "MARQUEE_WEBHOOK_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub webhook_timeout: Option<Duration>,
    /// Webhook delivery attempts before giving up and marking the webhook failing [default: 20]
    #[arg(long, env = "MARQUEE_WEBHOOK_ATTEMPTS_MAX", value_name = "N")]
    pub webhook_attempts_max: Option<u32>,
    /// Allow webhooks to loopback and private addresses (off: refused, against SSRF); the flag alone means true [default: false]
    #[arg(long, env = "MARQUEE_ALLOW_PRIVATE_WEBHOOKS", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub allow_private_webhooks: Option<bool>,
    /// Most WebSocket connections open at once [default: 10000]
    #[arg(long, env = "MARQUEE_WS_CONNECTIONS_MAX", value_name = "N")]
    pub ws_connections_max: Option<usize>,
    /// Most WebSocket connections open at once from one client address [default: 100]
    #[arg(long, env = "MARQUEE_WS_CONNECTIONS_PER_IP_MAX", value_name = "N")]
    pub ws_connections_per_ip_max: Option<usize>,
    /// Most subscriptions one WebSocket connection may run [default: 32]
    #[arg(long, env = "MARQUEE_SUBSCRIPTIONS_PER_CONNECTION_MAX", value_name = "N")]
    pub subscriptions_per_connection_max: Option<usize>,
    /// Requests per second per signed-in token, bursts of twice that; 0: off [default: 100]
    #[arg(long, env = "MARQUEE_RATE_LIMIT_TOKEN", value_name = "RPS")]
    pub rate_limit_token: Option<u32>,
    /// Requests per second per client address without a token; 0: off [default: 50]
    #[arg(long, env = "MARQUEE_RATE_LIMIT_IP", value_name = "RPS")]
    pub rate_limit_ip: Option<u32>,
    /// Sign-ins and registrations per minute per client address; 0: off [default: 10]
    #[arg(long, env = "MARQUEE_RATE_LIMIT_CREDENTIALS", value_name = "PER_MINUTE")]
    pub rate_limit_credentials: Option<u32>,
    /// Failed sign-ins per email per 15 minutes before it must wait; 0: off [default: 5]
    #[arg(long, env = "MARQUEE_LOGIN_FAILURES_MAX", value_name = "N")]
    pub login_failures_max: Option<u32>,
    /// Take the client address from X-Forwarded-For (only behind a trusted proxy); the flag alone means true [default: false]
    #[arg(long, env = "MARQUEE_TRUST_PROXY_HEADERS", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub trust_proxy_headers: Option<bool>,
    /// Serve GraphQL introspection: true or false; the flag alone means true [default: true]
    #[arg(long, env = "MARQUEE_INTROSPECTION", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub introspection: Option<bool>,
    /// Longest a GraphQL request may run, and its body may take to arrive [default: 30s]
    #[arg(long, env = "MARQUEE_REQUEST_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub request_timeout: Option<Duration>,
    /// Most HTTP connections open at once [default: 20000]
    #[arg(long, env = "MARQUEE_CONNECTIONS_MAX", value_name = "N")]
    pub connections_max: Option<usize>,
    /// How long shutdown waits for requests in flight [default: 30s]
    #[arg(long, env = "MARQUEE_SHUTDOWN_GRACE", value_name = "DURATION", value_parser = parse_duration)]
    pub shutdown_grace: Option<Duration>,
    /// Deepest query nesting [default: 12]
    #[arg(long, env = "MARQUEE_QUERY_DEPTH_MAX", value_name = "N")]
    pub query_depth_max: Option<usize>,
    /// Most weighted fields in a query (lists count by page size) [default: 100000]
    #[arg(long, env = "MARQUEE_QUERY_COMPLEXITY_MAX", value_name = "N")]
    pub query_complexity_max: Option<u64>,
    /// Most aliases in a query [default: 30]
    #[arg(long, env = "MARQUEE_QUERY_ALIASES_MAX", value_name = "N")]
    pub query_aliases_max: Option<usize>,
    /// Most operations in a batch [default: 10]
    #[arg(long, env = "MARQUEE_QUERY_BATCH_MAX", value_name = "N")]
    pub query_batch_max: Option<usize>,
}

/// How log lines are written.
#[derive(clap::ValueEnum, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// For people.
    Text,
    /// One JSON object a line, for collectors.
    Json,
}

/// The settings file: every key optional, unknown keys refused.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    data_dir: Option<PathBuf>,
    cache_mb: Option<u64>,
    listen: Option<String>,
    token_ttl: Option<String>,
    hold_ttl: Option<String>,
    ledger_shards: Option<usize>,
    body_bytes_max: Option<usize>,
    log_format: Option<LogFormat>,
    webhook_retry_base: Option<String>,
    webhook_timeout: Option<String>,
    webhook_attempts_max: Option<u32>,
    allow_private_webhooks: Option<bool>,
    ws_connections_max: Option<usize>,
    ws_connections_per_ip_max: Option<usize>,
    subscriptions_per_connection_max: Option<usize>,
    rate_limit_token: Option<u32>,
    rate_limit_ip: Option<u32>,
    rate_limit_credentials: Option<u32>,
    login_failures_max: Option<u32>,
    trust_proxy_headers: Option<bool>,
    introspection: Option<bool>,
    request_timeout: Option<String>,
    connections_max: Option<usize>,
    shutdown_grace: Option<String>,
    query_depth_max: Option<usize>,
    query_complexity_max: Option<u64>,
    query_aliases_max: Option<usize>,
    query_batch_max: Option<usize>,
}

/// Where the store is and how big its cache is.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub data_dir: PathBuf,
    pub cache_bytes: u64,
}

/// Resolved settings of `marquee serve`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub store: StoreConfig,
    pub listen: SocketAddr,
    pub token_ttl: Duration,
    pub hold_ttl: Duration,
    pub ledger_shards: usize,
    pub body_bytes_max: usize,
    pub log_format: LogFormat,
    pub webhook_retry_base: Duration,
    pub webhook_timeout: Duration,
    pub webhook_attempts_max: u32,
    pub allow_private_webhooks: bool,
    pub ws_connections_max: usize,
    pub ws_connections_per_ip_max: usize,
    pub subscriptions_per_connection_max: usize,
    pub protections: Protections,
}

/// Rate limits, query limits and connection handling.
#[derive(Debug, Clone)]
pub struct Protections {
    pub rate_limit_token: u32,
    pub rate_limit_ip: u32,
    pub rate_limit_credentials: u32,
    pub login_failures_max: u32,
    pub trust_proxy_headers: bool,
    pub introspection: bool,
    pub request_timeout: Duration,
    pub connections_max: usize,
    pub shutdown_grace: Duration,
    pub query_depth_max: usize,
    pub query_complexity_max: u64,
    pub query_aliases_max: usize,
    pub query_batch_max: usize,
}

/// A setting as messages name it: its config file key, flag and variable
/// (a bad value may have come from any of them).
fn setting(key: &str) -> String {
    format!("{key} (--{}, MARQUEE_{})", key.replace('_', "-"), key.to_ascii_uppercase())
}

/// A number setting: flag, else file, else default; within `min..=max`.
fn bounded<T: PartialOrd + Copy + std::fmt::Display>(
    name: &str,
    flag: Option<T>,
    file: Option<T>,
    default: T,
    min: T,
    max: T,
) -> Result<T, String> {
    let value = flag.or(file).unwrap_or(default);
    if value < min || value > max {
        return Err(format!("{} must be between {min} and {max}; it is {value}", setting(name)));
    }
    Ok(value)
}

impl Protections {
    fn resolve(args: &ServeArgs, file: &FileSettings) -> Result<Protections, String> {
        let secs = Duration::from_secs;
        Ok(Protections {
            rate_limit_token: bounded(
                "rate_limit_token",
                args.rate_limit_token,
                file.rate_limit_token,
                100,
                0,
                1_000_000,
            )?,
            rate_limit_ip: bounded("rate_limit_ip", args.rate_limit_ip, file.rate_limit_ip, 50, 0, 1_000_000)?,
            rate_limit_credentials: bounded(
                "rate_limit_credentials",
                args.rate_limit_credentials,
                file.rate_limit_credentials,
                10,
                0,
                1_000_000,
            )?,
            login_failures_max: bounded(
                "login_failures_max",
                args.login_failures_max,
                file.login_failures_max,
                5,
                0,
                1_000,
            )?,
            trust_proxy_headers: args.trust_proxy_headers.or(file.trust_proxy_headers).unwrap_or(false),
            introspection: args.introspection.or(file.introspection).unwrap_or(true),
            request_timeout: duration(
                "request_timeout",
                args.request_timeout,
                &file.request_timeout,
                secs(30),
                (Duration::from_millis(100), secs(600)),
                "100ms and 10m",
            )?,
            connections_max: bounded(
                "connections_max",
                args.connections_max,
                file.connections_max,
                20_000,
                1,
                1_000_000,
            )?,
            shutdown_grace: duration(
                "shutdown_grace",
                args.shutdown_grace,
                &file.shutdown_grace,
                secs(30),
                (Duration::ZERO, secs(3600)),
                "0s and 1h",
            )?,
            query_depth_max: bounded("query_depth_max", args.query_depth_max, file.query_depth_max, 12, 2, 100)?,
            query_complexity_max: bounded(
                "query_complexity_max",
                args.query_complexity_max,
                file.query_complexity_max,
                100_000,
                10,
                10_000_000,
            )?,
            query_aliases_max: bounded(
                "query_aliases_max",
                args.query_aliases_max,
                file.query_aliases_max,
                30,
                0,
                10_000,
            )?,
            query_batch_max: bounded("query_batch_max", args.query_batch_max, file.query_batch_max, 10, 1, 1_000)?,
        })
    }
}

/// Bounds checked at start-up.
const CACHE_MB_MAX: u64 = 1 << 20;
const BODY_BYTES_MIN: usize = 1024;
const BODY_BYTES_MAX: usize = 64 << 20;

fn read_file(path: Option<&Path>) -> Result<FileSettings, String> {
    let Some(path) = path else {
        return Ok(FileSettings::default());
    };
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))
}

fn store_config(args: &StoreArgs, file: &FileSettings) -> Result<StoreConfig, String> {
    let data_dir = args.data_dir.clone().or(file.data_dir.clone()).unwrap_or_else(|| PathBuf::from("./data"));
    let cache_mb = bounded("cache_mb", args.cache_mb, file.cache_mb, 256, 1, CACHE_MB_MAX)?;
    Ok(StoreConfig { data_dir, cache_bytes: cache_mb * 1024 * 1024 })
}

impl StoreConfig {
    /// Resolves the store settings of a command.
    pub fn resolve(args: &StoreArgs) -> Result<StoreConfig, String> {
        store_config(args, &read_file(args.config.as_deref())?)
    }
}

impl ServeConfig {
    /// Resolves flags, environment (already merged by clap), file and defaults.
    pub fn resolve(args: &ServeArgs) -> Result<ServeConfig, String> {
        let file = read_file(args.store.config.as_deref())?;
        let store = store_config(&args.store, &file)?;
        let listen_text = args.listen.clone().or(file.listen.clone()).unwrap_or_else(|| "127.0.0.1:8080".into());
        let listen = listen_text.parse().map_err(|_| {
            let listen = setting("listen");
            format!("{listen}: {listen_text:?} is not an IP address and port like 127.0.0.1:8080 (no host names)")
        })?;
        let secs = Duration::from_secs;
        let millis = Duration::from_millis;
        let token_ttl = duration(
            "token_ttl",
            args.token_ttl,
            &file.token_ttl,
            secs(30 * 24 * 3600),
            (secs(60), secs(366 * 24 * 3600)),
            "1m and 366d",
        )?;
        let hold_ttl =
            duration("hold_ttl", args.hold_ttl, &file.hold_ttl, secs(600), (secs(1), secs(24 * 3600)), "1s and 24h")?;
        let webhook_retry_base = duration(
            "webhook_retry_base",
            args.webhook_retry_base,
            &file.webhook_retry_base,
            secs(5),
            (millis(100), secs(3600)),
            "100ms and 1h",
        )?;
        let webhook_timeout = duration(
            "webhook_timeout",
            args.webhook_timeout,
            &file.webhook_timeout,
            secs(10),
            (millis(100), secs(60)),
            "100ms and 60s",
        )?;
        let webhook_attempts_max =
            bounded("webhook_attempts_max", args.webhook_attempts_max, file.webhook_attempts_max, 20, 1, 100)?;
        let allow_private_webhooks = args.allow_private_webhooks.or(file.allow_private_webhooks).unwrap_or(false);
        let ws_connections_max =
            bounded("ws_connections_max", args.ws_connections_max, file.ws_connections_max, 10_000, 1, 1_000_000)?;
        let ws_connections_per_ip_max = bounded(
            "ws_connections_per_ip_max",
            args.ws_connections_per_ip_max,
            file.ws_connections_per_ip_max,
            100,
            1,
            1_000_000,
        )?;
        let subscriptions_per_connection_max = bounded(
            "subscriptions_per_connection_max",
            args.subscriptions_per_connection_max,
            file.subscriptions_per_connection_max,
            32,
            1,
            1_000,
        )?;
        let ledger_shards = args.ledger_shards.or(file.ledger_shards).unwrap_or(16);
        if !ledger_shards.is_power_of_two() || ledger_shards > ledger::SHARDS_MAX {
            let why = format!("must be a power of two from 1 to {}; it is {ledger_shards}", ledger::SHARDS_MAX);
            return Err(format!("{} {why}", setting("ledger_shards")));
        }
        let body_bytes_max = bounded(
            "body_bytes_max",
            args.body_bytes_max,
            file.body_bytes_max,
            1024 * 1024,
            BODY_BYTES_MIN,
            BODY_BYTES_MAX,
        )?;
        let log_format = args.log_format.or(file.log_format).unwrap_or(LogFormat::Text);
        let protections = Protections::resolve(args, &file)?;
        Ok(ServeConfig {
            protections,
            store,
            listen,
            token_ttl,
            hold_ttl,
            ledger_shards,
            body_bytes_max,
            log_format,
            webhook_retry_base,
            webhook_timeout,
            webhook_attempts_max,
            allow_private_webhooks,
            ws_connections_max,
            ws_connections_per_ip_max,
            subscriptions_per_connection_max,
        })
    }
}

/// A duration setting: flag, else file, else default; checked against `bounds`.
fn duration(
    name: &str,
    flag: Option<Duration>,
    file: &Option<String>,
    default: Duration,
    bounds: (Duration, Duration),
    bounds_text: &str,
) -> Result<Duration, String> {
    let value = match (flag, file) {
        (Some(value), _) => value,
        (None, Some(text)) => parse_duration(text).map_err(|e| format!("{name} in the config file: {e}"))?,
        (None, None) => default,
    };
    if value < bounds.0 || value > bounds.1 {
        return Err(format!("{} must be between {bounds_text}; it is {}", setting(name), shown_duration(value)));
    }
    Ok(value)
}

/// A duration in the largest unit that says it exactly (`25h`, `1500ms`).
fn shown_duration(value: Duration) -> String {
    let millis = value.as_millis();
    let units = [(86_400_000, "d"), (3_600_000, "h"), (60_000, "m"), (1_000, "s")];
    match units.iter().find(|(size, _)| millis >= *size && millis.is_multiple_of(*size)) {
        Some((size, unit)) => format!("{}{unit}", millis / size),
        None => format!("{millis}ms"),
    }
}

/// Parses durations like `500ms`, `90s`, `10m`, `12h`, `30d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number.parse().map_err(|_| format!("{text:?} is not a duration like 10m, 12h or 30d"))?;
    let millis_per_unit = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("{text:?} is not a duration like 10m, 12h or 30d (units: ms, s, m, h, d)")),
    };
    value.checked_mul(millis_per_unit).map(Duration::from_millis).ok_or_else(|| format!("{text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("10 weeks").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }
}

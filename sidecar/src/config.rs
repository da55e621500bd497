//! Command line and environment. Every setting is a flag with an environment
//! variable; secrets (database URL, Janice key) never show their value in
//! `--help` and are never logged.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::backoff::Backoff;

#[derive(Parser, Debug)]
#[command(
    name = "killboard-sidecar",
    version,
    about = "Fills pg_killboard's TTL caches and follows the R2Z2 killmail feed"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log format.
    #[arg(long, env = "KILLBOARD_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"], global = true)]
    pub log_format: String,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Drain killboard.fetch_queue: ESI affiliation / corporation history /
    /// names, Janice and Mutamarket prices; serve /metrics and /healthz.
    Run(RunArgs),
    /// Follow zKillboard's R2Z2 feed into killboard.ingest().
    Feed(FeedArgs),
    /// Static data.
    Sde {
        #[command(subcommand)]
        command: SdeCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum SdeCommand {
    /// Load the CSV SDE from `<dir>` into the killboard.sde_* tables in one
    /// transaction (client-side COPY; replaces existing rows).
    Load {
        dir: PathBuf,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Args, Debug, Clone)]
pub struct DbArgs {
    /// PostgreSQL connection string (libpq URL or key=value form).
    #[arg(
        long,
        env = "KILLBOARD_DATABASE_URL",
        hide_env_values = true,
        default_value = "host=127.0.0.1 user=postgres dbname=postgres"
    )]
    pub database_url: String,
}

#[derive(Args, Debug, Clone)]
pub struct HttpArgs {
    /// Timeout for one HTTP request, including the body.
    #[arg(long, env = "KILLBOARD_HTTP_TIMEOUT_MS", default_value_t = 10_000)]
    pub http_timeout_ms: u64,
    /// Immediate retries of one request after a 5xx, timeout or connection error.
    #[arg(long, env = "KILLBOARD_HTTP_RETRIES", default_value_t = 2)]
    pub http_retries: u32,
    /// First backoff step (doubles per retry or failed attempt, with jitter).
    #[arg(long, env = "KILLBOARD_BACKOFF_BASE_MS", default_value_t = 1_000)]
    pub backoff_base_ms: u64,
    /// Backoff ceiling.
    #[arg(long, env = "KILLBOARD_BACKOFF_MAX_MS", default_value_t = 300_000)]
    pub backoff_max_ms: u64,
    /// Wait after a 420/429 without Retry-After.
    #[arg(long, env = "KILLBOARD_THROTTLE_DEFAULT_MS", default_value_t = 60_000)]
    pub throttle_default_ms: u64,
    /// User-Agent sent upstream (ESI asks for contact details here).
    #[arg(long, env = "KILLBOARD_USER_AGENT", default_value = concat!("pg_killboard-sidecar/", env!("CARGO_PKG_VERSION")))]
    pub user_agent: String,
    /// Prometheus /metrics and /healthz listen address ("" disables).
    #[arg(long, env = "KILLBOARD_METRICS_ADDR", default_value = "127.0.0.1:9187")]
    pub metrics_addr: String,
}

impl HttpArgs {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.http_timeout_ms)
    }
    pub fn backoff(&self) -> Backoff {
        Backoff {
            base: Duration::from_millis(self.backoff_base_ms),
            max: Duration::from_millis(self.backoff_max_ms.max(self.backoff_base_ms)),
        }
    }
    pub fn throttle_default(&self) -> Duration {
        Duration::from_millis(self.throttle_default_ms)
    }
    pub fn metrics_addr(&self) -> crate::Result<Option<SocketAddr>> {
        if self.metrics_addr.is_empty() {
            return Ok(None);
        }
        self.metrics_addr.parse().map(Some).map_err(|e| {
            crate::Error::Config(format!("metrics address {:?}: {e}", self.metrics_addr))
        })
    }
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub http: HttpArgs,

    /// ESI base URL.
    #[arg(
        long,
        env = "KILLBOARD_ESI_URL",
        default_value = "https://esi.evetech.net/latest"
    )]
    pub esi_url: String,
    /// Janice base URL.
    #[arg(
        long,
        env = "KILLBOARD_JANICE_URL",
        default_value = "https://janice.e-351.com"
    )]
    pub janice_url: String,
    /// Janice API key (sent as X-ApiKey; never logged).
    #[arg(
        long,
        env = "KILLBOARD_JANICE_KEY",
        hide_env_values = true,
        default_value = ""
    )]
    pub janice_key: String,
    /// Janice price used: immediatePrices.{sell,buy,split}Price.
    #[arg(long, env = "KILLBOARD_JANICE_PRICE", default_value = "sell", value_parser = ["sell", "buy", "split"])]
    pub janice_price: String,
    /// Janice market per region, as region=market pairs.
    #[arg(
        long,
        env = "KILLBOARD_JANICE_MARKETS",
        default_value = "10000002=2",
        value_delimiter = ','
    )]
    pub janice_markets: Vec<String>,
    /// Mutamarket base URL.
    #[arg(
        long,
        env = "KILLBOARD_MUTAMARKET_URL",
        default_value = "https://mutamarket.com"
    )]
    pub mutamarket_url: String,
    /// Mutamarket price path; {type_id} is replaced.
    #[arg(
        long,
        env = "KILLBOARD_MUTAMARKET_PATH",
        default_value = "/api/types/{type_id}/price"
    )]
    pub mutamarket_path: String,

    /// ESI requests per second.
    #[arg(long, env = "KILLBOARD_ESI_RPS", default_value_t = 20.0)]
    pub esi_rps: f64,
    /// Concurrent ESI requests for per-character endpoints.
    #[arg(long, env = "KILLBOARD_ESI_CONCURRENCY", default_value_t = 4)]
    pub esi_concurrency: usize,
    /// Pause ESI when X-ESI-Error-Limit-Remain drops to this or below.
    #[arg(long, env = "KILLBOARD_ESI_ERROR_LIMIT_MIN", default_value_t = 10)]
    pub esi_error_limit_min: i64,
    /// Janice requests per second.
    #[arg(long, env = "KILLBOARD_JANICE_RPS", default_value_t = 2.0)]
    pub janice_rps: f64,
    /// Mutamarket requests per second.
    #[arg(long, env = "KILLBOARD_MUTAMARKET_RPS", default_value_t = 2.0)]
    pub mutamarket_rps: f64,

    /// Characters per ESI affiliation call (ESI accepts at most 1000).
    #[arg(long, env = "KILLBOARD_AFFILIATION_BATCH", default_value_t = 1000, value_parser = clap::value_parser!(i64).range(1..=1000))]
    pub affiliation_batch: i64,
    /// Jobs claimed at once for per-key endpoints (corporation history, enrichment).
    #[arg(long, env = "KILLBOARD_JOB_BATCH", default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=1000))]
    pub job_batch: i64,
    /// Types per Janice pricer call.
    #[arg(long, env = "KILLBOARD_PRICE_BATCH", default_value_t = 200, value_parser = clap::value_parser!(i64).range(1..=1000))]
    pub price_batch: i64,
    /// Failed attempts before a job is parked.
    #[arg(long, env = "KILLBOARD_MAX_ATTEMPTS", default_value_t = 8)]
    pub max_attempts: i32,
    /// A claimed job becomes claimable again after this (worker crashed).
    #[arg(long, env = "KILLBOARD_LEASE_MS", default_value_t = 120_000)]
    pub lease_ms: u64,
    /// Queue poll interval when no NOTIFY arrives.
    #[arg(long, env = "KILLBOARD_POLL_MS", default_value_t = 2_000)]
    pub poll_ms: u64,
    /// Run killboard.cleanup_caches() and killboard.queue_missing_prices() this
    /// often (0 = leave both to pg_cron).
    #[arg(long, env = "KILLBOARD_CLEANUP_INTERVAL_MS", default_value_t = 60_000)]
    pub cleanup_interval_ms: u64,
    /// Refresh queue-depth and cache gauges this often.
    #[arg(long, env = "KILLBOARD_STATS_INTERVAL_MS", default_value_t = 15_000)]
    pub stats_interval_ms: u64,
}

#[derive(Args, Debug, Clone)]
pub struct FeedArgs {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub http: HttpArgs,

    /// R2Z2 base URL (serves `sequence.json` and `<n>.json`).
    #[arg(
        long,
        env = "KILLBOARD_R2Z2_URL",
        default_value = "https://r2z2.zkillboard.com/ephemeral"
    )]
    pub r2z2_url: String,
    /// Requests per second to R2Z2 (zKillboard allows 20).
    #[arg(long, env = "KILLBOARD_R2Z2_RPS", default_value_t = 20.0)]
    pub r2z2_rps: f64,
    /// Wait after a 404 (the next sequence is not published yet).
    #[arg(long, env = "KILLBOARD_FEED_WAIT_MS", default_value_t = 6_000)]
    pub feed_wait_ms: u64,
    /// After a sequence has been missing this long while sequence.json is
    /// already past it, skip it (counted in metrics).
    #[arg(long, env = "KILLBOARD_FEED_GAP_TIMEOUT_MS", default_value_t = 300_000)]
    pub feed_gap_timeout_ms: u64,
    /// Where to start when the database has no position yet (default: sequence.json).
    #[arg(long, env = "KILLBOARD_FEED_START_SEQUENCE")]
    pub start_sequence: Option<i64>,
    /// Exit after ingesting this sequence (for backfills and tests).
    #[arg(long, env = "KILLBOARD_FEED_STOP_SEQUENCE")]
    pub stop_sequence: Option<i64>,
    /// Name of the position row in killboard.feed_state.
    #[arg(long, env = "KILLBOARD_FEED_NAME", default_value = "r2z2")]
    pub feed_name: String,
}

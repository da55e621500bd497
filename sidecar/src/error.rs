//! Errors of the sidecar. Each says whether retrying can help, so the queue
//! worker knows to back off, to wait out a throttle, or to park the job.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),

    #[error("{upstream} {endpoint}: {detail}")]
    Transport {
        upstream: &'static str,
        endpoint: &'static str,
        detail: String,
    },

    #[error("{upstream} {endpoint}: HTTP {status}")]
    Status {
        upstream: &'static str,
        endpoint: &'static str,
        status: u16,
    },

    /// 420/429 or the ESI error budget ran low; not the job's fault.
    #[error("{upstream} {endpoint}: throttled for {wait:?}")]
    Throttled {
        upstream: &'static str,
        endpoint: &'static str,
        wait: Duration,
    },

    #[error("{upstream} {endpoint}: unexpected response: {detail}")]
    BadResponse {
        upstream: &'static str,
        endpoint: &'static str,
        detail: String,
    },

    #[error("bad job key {key:?} for {kind}: {detail}")]
    BadKey {
        kind: String,
        key: String,
        detail: String,
    },

    #[error("{0}")]
    Permanent(String),

    #[error("configuration: {0}")]
    Config(String),

    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Retrying the same request cannot succeed (bad id, 4xx other than
    /// throttling, bad key): park the job at once.
    pub fn is_permanent(&self) -> bool {
        match self {
            Error::Status { status, .. } => (400..500).contains(status) && *status != 408,
            Error::BadKey { .. } | Error::Permanent(_) => true,
            _ => false,
        }
    }

    /// How long the upstream asked us to stay away, if it did.
    pub fn throttle_wait(&self) -> Option<Duration> {
        match self {
            Error::Throttled { wait, .. } => Some(*wait),
            _ => None,
        }
    }
}

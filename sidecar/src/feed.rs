//! `feed`: follow zKillboard's R2Z2 feed.
//!
//! GET `sequence.json` once for a starting point, then `<n>.json` in order. A
//! 404 means "not published yet": wait and ask again. Each package goes into
//! `killboard.ingest()` in the same transaction that moves the position in
//! `killboard.feed_state`, so a crash or kill at any point resumes at the
//! first sequence not committed: no gap, no duplicate.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio_postgres::types::Json;
use tokio_postgres::Client;

use crate::config::FeedArgs;
use crate::http::{Request, Upstream, UpstreamConfig};
use crate::metrics::Metrics;
use crate::{db, Error, Result};

pub fn build_upstream(args: &FeedArgs, metrics: Arc<Metrics>) -> Result<Arc<Upstream>> {
    let h = &args.http;
    Upstream::new(
        UpstreamConfig {
            name: "r2z2",
            base_url: args.r2z2_url.clone(),
            rps: args.r2z2_rps,
            timeout: h.timeout(),
            retries: h.http_retries,
            backoff: h.backoff(),
            throttle_default: h.throttle_default(),
            user_agent: h.user_agent.clone(),
            error_limit_min: None,
            default_headers: Default::default(),
        },
        metrics,
    )
}

/// `sequence.json` is `{"sequence": n}`; a bare number is accepted too.
pub fn parse_sequence(v: &Value) -> Option<i64> {
    v.get("sequence")
        .and_then(Value::as_i64)
        .or_else(|| v.as_i64())
}

async fn latest_sequence(up: &Upstream) -> Result<Option<i64>> {
    let r = up
        .send(Request::get("sequence", "sequence.json".into()))
        .await?;
    if r.status == 404 {
        return Ok(None);
    }
    let v: Value = r.json("r2z2", "sequence")?;
    parse_sequence(&v)
        .map(Some)
        .ok_or_else(|| Error::BadResponse {
            upstream: "r2z2",
            endpoint: "sequence",
            detail: "no sequence field".into(),
        })
}

async fn stored_position(client: &Client, feed: &str) -> Result<Option<i64>> {
    Ok(client
        .query_opt(
            "SELECT sequence FROM killboard.feed_state WHERE feed = $1",
            &[&feed],
        )
        .await?
        .map(|r| r.get(0)))
}

const SAVE_POSITION_SQL: &str = "
INSERT INTO killboard.feed_state (feed, sequence, updated_at) VALUES ($1, $2, now())
ON CONFLICT (feed) DO UPDATE SET sequence = excluded.sequence, updated_at = excluded.updated_at";

/// SQLSTATE classes that mean "this package is bad", not "the database is down".
fn is_data_error(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        let c = c.code();
        c.starts_with("22") || c.starts_with("23")
    })
}

pub async fn run(args: FeedArgs, metrics: Arc<Metrics>) -> Result<()> {
    let up = build_upstream(&args, metrics.clone())?;
    let wait_404 = Duration::from_millis(args.feed_wait_ms);
    let gap_timeout = Duration::from_millis(args.feed_gap_timeout_ms);
    let feed = args.feed_name.as_str();
    loop {
        match follow(&args, &up, &metrics, feed, wait_404, gap_timeout).await {
            Ok(()) => return Ok(()),
            Err(e @ Error::Db(_)) => {
                tracing::error!(error = %e.kind_str(), "feed database error; reconnecting");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn follow(
    args: &FeedArgs,
    up: &Upstream,
    metrics: &Metrics,
    feed: &str,
    wait_404: Duration,
    gap_timeout: Duration,
) -> Result<()> {
    let mut client = db::connect(&args.db.database_url).await?;
    let mut next = match stored_position(&client, feed).await? {
        Some(pos) => pos + 1,
        None => match args.start_sequence {
            Some(s) => s,
            None => loop {
                match latest_sequence(up).await {
                    Ok(Some(s)) => break s,
                    Ok(None) => tokio::time::sleep(wait_404).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "sequence.json failed");
                        tokio::time::sleep(wait_404).await;
                    }
                }
            },
        },
    };
    metrics.feed_sequence.set(next - 1);
    tracing::info!(feed, next, "following R2Z2");
    let mut missing_since: Option<Instant> = None;
    loop {
        if args.stop_sequence.is_some_and(|stop| next > stop) {
            tracing::info!(feed, last = next - 1, "reached the stop sequence");
            return Ok(());
        }
        let resp = match up
            .send(Request::get("killmail", format!("{next}.json")))
            .await
        {
            Ok(r) => r,
            Err(e) => {
                // Upstream trouble (already retried and throttled inside send): wait, same sequence.
                tracing::warn!(sequence = next, error = %e, "fetch failed");
                tokio::time::sleep(wait_404).await;
                continue;
            }
        };
        if resp.status == 404 {
            let since = *missing_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= gap_timeout {
                if let Ok(Some(latest)) = latest_sequence(up).await {
                    metrics.feed_latest_sequence.set(latest);
                    if latest > next {
                        tracing::warn!(
                            sequence = next,
                            latest,
                            "sequence missing past the gap timeout; skipping it"
                        );
                        let tx = client.transaction().await?;
                        tx.execute(SAVE_POSITION_SQL, &[&feed, &next]).await?;
                        tx.commit().await?;
                        metrics.feed_skipped.inc();
                        metrics.feed_sequence.set(next);
                        next += 1;
                        missing_since = None;
                        continue;
                    }
                }
                missing_since = Some(Instant::now());
            }
            tokio::time::sleep(wait_404).await;
            continue;
        }
        missing_since = None;
        let package: Value = match resp.json("r2z2", "killmail") {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(sequence = next, error = %e, "package is not JSON; will retry");
                tokio::time::sleep(wait_404).await;
                continue;
            }
        };
        let tx = client.transaction().await?;
        let ingested = tx
            .query_one("SELECT killboard.ingest($1::jsonb)", &[&Json(&package)])
            .await;
        match ingested {
            Ok(row) => {
                let km: i64 = row.get(0);
                tx.execute(SAVE_POSITION_SQL, &[&feed, &next]).await?;
                tx.commit().await?;
                metrics.feed_ingested.inc();
                tracing::debug!(sequence = next, killmail_id = km, "ingested");
            }
            Err(e) if is_data_error(&e) => {
                drop(tx);
                tracing::warn!(sequence = next, error = %Error::Db(e).kind_str(), "ingest rejected the package; skipping it");
                let tx = client.transaction().await?;
                tx.execute(SAVE_POSITION_SQL, &[&feed, &next]).await?;
                tx.commit().await?;
                metrics.feed_rejected.inc();
            }
            Err(e) => return Err(e.into()),
        }
        metrics.feed_sequence.set(next);
        if let Some(up_at) = package.get("uploaded_at").and_then(Value::as_f64) {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            metrics.feed_lag_seconds.set((now - up_at).max(0.0));
        }
        next += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sequence_shapes() {
        assert_eq!(
            parse_sequence(&json!({"sequence": 96599404})),
            Some(96599404)
        );
        assert_eq!(parse_sequence(&json!(12)), Some(12));
        assert_eq!(parse_sequence(&json!({"seq": 1})), None);
    }
}

//! `run`: drain killboard.fetch_queue.
//!
//! One loop per job kind claims ready jobs with `FOR UPDATE SKIP LOCKED` and
//! a lease (so no transaction stays open across HTTP calls, and a crashed
//! worker's jobs come back after the lease), fetches, then stores the results
//! and settles the jobs in one transaction: done jobs are deleted, failed ones
//! rescheduled with jittered backoff, and parked with their last error after
//! max attempts or a permanent failure.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::header::{HeaderMap, HeaderValue};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio_postgres::types::Json;
use tokio_postgres::{Client, GenericClient};

use crate::backoff::Backoff;
use crate::config::RunArgs;
use crate::http::{Request, Upstream, UpstreamConfig};
use crate::metrics::Metrics;
use crate::{db, Error, Result};

pub const KINDS: [&str; 4] = ["affiliation", "corporation_history", "enrichment", "price"];

const CLAIM_SQL: &str = "
UPDATE killboard.fetch_queue q
   SET attempts = q.attempts + 1,
       next_attempt_at = now() + make_interval(secs => $3::float8)
  FROM (SELECT job_id FROM killboard.fetch_queue
         WHERE kind = $1 AND NOT parked AND next_attempt_at <= now()
         ORDER BY next_attempt_at, job_id
         LIMIT $2
         FOR UPDATE SKIP LOCKED) c
 WHERE q.job_id = c.job_id
RETURNING q.job_id, q.key, q.attempts";

#[derive(Debug, Clone)]
pub struct Job {
    pub id: i64,
    pub key: String,
    pub attempts: i32,
}

/// What happened to one job, in a form that can be cloned across the jobs of a batch.
#[derive(Debug, Clone)]
pub enum Failure {
    Retry(String),
    Throttled(Duration, String),
    Permanent(String),
}

impl From<&Error> for Failure {
    fn from(e: &Error) -> Self {
        let msg = e.kind_str();
        if let Some(w) = e.throttle_wait() {
            Failure::Throttled(w, msg)
        } else if e.is_permanent() {
            Failure::Permanent(msg)
        } else {
            Failure::Retry(msg)
        }
    }
}

pub struct Ctx {
    pub args: RunArgs,
    pub metrics: Arc<Metrics>,
    pub esi: Arc<Upstream>,
    pub janice: Arc<Upstream>,
    pub mutamarket: Arc<Upstream>,
    pub janice_markets: HashMap<i32, i64>,
    pub job_backoff: Backoff,
}

pub fn build_ctx(args: RunArgs, metrics: Arc<Metrics>) -> Result<Arc<Ctx>> {
    let h = &args.http;
    let up = |name: &'static str,
              base: &str,
              rps: f64,
              error_limit_min: Option<i64>,
              headers: HeaderMap| {
        Upstream::new(
            UpstreamConfig {
                name,
                base_url: base.to_string(),
                rps,
                timeout: h.timeout(),
                retries: h.http_retries,
                backoff: h.backoff(),
                throttle_default: h.throttle_default(),
                user_agent: h.user_agent.clone(),
                error_limit_min,
                default_headers: headers,
            },
            metrics.clone(),
        )
    };
    let mut janice_headers = HeaderMap::new();
    if !args.janice_key.is_empty() {
        let mut v = HeaderValue::from_str(&args.janice_key).map_err(|_| {
            Error::Config("KILLBOARD_JANICE_KEY is not a valid header value".into())
        })?;
        v.set_sensitive(true);
        janice_headers.insert("x-apikey", v);
    }
    let mut janice_markets = HashMap::new();
    for pair in &args.janice_markets {
        let parsed = pair.split_once('=').and_then(|(r, m)| {
            Some((r.trim().parse::<i32>().ok()?, m.trim().parse::<i64>().ok()?))
        });
        match parsed {
            Some((r, m)) => janice_markets.insert(r, m),
            None => {
                return Err(Error::Config(format!(
                    "janice market {pair:?} is not region=market"
                )))
            }
        };
    }
    Ok(Arc::new(Ctx {
        esi: up(
            "esi",
            &args.esi_url,
            args.esi_rps,
            Some(args.esi_error_limit_min),
            HeaderMap::new(),
        )?,
        janice: up(
            "janice",
            &args.janice_url,
            args.janice_rps,
            None,
            janice_headers,
        )?,
        mutamarket: up(
            "mutamarket",
            &args.mutamarket_url,
            args.mutamarket_rps,
            None,
            HeaderMap::new(),
        )?,
        janice_markets,
        job_backoff: h.backoff(),
        metrics,
        args,
    }))
}

/// Run every loop until one fails for good or the process is stopped.
pub async fn run(ctx: Arc<Ctx>) -> Result<()> {
    let notifies: Arc<HashMap<&'static str, Arc<Notify>>> = Arc::new(
        KINDS
            .iter()
            .map(|k| (*k, Arc::new(Notify::new())))
            .collect(),
    );
    let mut tasks = tokio::task::JoinSet::new();

    {
        let (url, n) = (ctx.args.db.database_url.clone(), notifies.clone());
        tasks.spawn(async move {
            let on: Arc<dyn Fn(&str) + Send + Sync> = Arc::new(move |payload: &str| {
                for (kind, notify) in n.iter() {
                    if payload == *kind || payload == "all" {
                        notify.notify_one();
                    }
                }
            });
            loop {
                if let Err(e) = db::listen(&url, "killboard_fetch", on.clone()).await {
                    tracing::warn!(error = %e.kind_str(), "LISTEN connection failed; polling until it is back");
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        });
    }
    for kind in KINDS {
        let (ctx, notify) = (ctx.clone(), notifies[kind].clone());
        tasks.spawn(async move {
            loop {
                if let Err(e) = kind_loop(&ctx, kind, &notify).await {
                    tracing::error!(kind, error = %e.kind_str(), "queue loop failed; reconnecting");
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        });
    }
    {
        let ctx = ctx.clone();
        tasks.spawn(async move {
            loop {
                if let Err(e) = maintenance_loop(&ctx).await {
                    tracing::warn!(error = %e.kind_str(), "maintenance loop failed; reconnecting");
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r {
            return Err(Error::Permanent(format!("worker task ended: {e}")));
        }
    }
    Ok(())
}

async fn maintenance_loop(ctx: &Ctx) -> Result<()> {
    let client = db::connect(&ctx.args.db.database_url).await?;
    let stats_every = Duration::from_millis(ctx.args.stats_interval_ms.max(100));
    let cleanup_every = (ctx.args.cleanup_interval_ms > 0)
        .then(|| Duration::from_millis(ctx.args.cleanup_interval_ms));
    // Start with a cleanup pass, then one per interval.
    let now = tokio::time::Instant::now();
    let mut last_cleanup = now
        .checked_sub(cleanup_every.unwrap_or_default())
        .unwrap_or(now);
    loop {
        if let Some(every) = cleanup_every {
            if last_cleanup.elapsed() >= every {
                last_cleanup = tokio::time::Instant::now();
                for row in client
                    .query("SELECT cache, evicted FROM killboard.cleanup_caches()", &[])
                    .await?
                {
                    let (cache, n): (String, i64) = (row.get(0), row.get(1));
                    if n > 0 {
                        tracing::info!(cache, evicted = n, "cache cleanup");
                    }
                }
                let queued: i64 = client
                    .query_one("SELECT killboard.queue_missing_prices()", &[])
                    .await?
                    .get(0);
                if queued > 0 {
                    tracing::info!(
                        queued,
                        "queued prices for killmails valued from the price cache"
                    );
                }
            }
        }
        refresh_gauges(ctx, &client).await?;
        tokio::time::sleep(stats_every).await;
    }
}

pub async fn refresh_gauges(ctx: &Ctx, client: &Client) -> Result<()> {
    let m = &ctx.metrics;
    for kind in KINDS {
        for state in ["ready", "waiting", "parked"] {
            m.queue_depth.with_label_values(&[kind, state]).set(0);
        }
    }
    let rows = client
        .query(
            "SELECT kind,
                    count(*) FILTER (WHERE NOT parked AND next_attempt_at <= now()),
                    count(*) FILTER (WHERE NOT parked AND next_attempt_at > now()),
                    count(*) FILTER (WHERE parked)
               FROM killboard.fetch_queue GROUP BY kind",
            &[],
        )
        .await?;
    for r in rows {
        let kind: String = r.get(0);
        m.queue_depth
            .with_label_values(&[&kind, "ready"])
            .set(r.get(1));
        m.queue_depth
            .with_label_values(&[&kind, "waiting"])
            .set(r.get(2));
        m.queue_depth
            .with_label_values(&[&kind, "parked"])
            .set(r.get(3));
    }
    let rows = client
        .query("SELECT cache, entries, hits, stale_hits, misses, evictions FROM killboard.ttl_cache_stats()", &[])
        .await?;
    for r in rows {
        let cache: String = r.get(0);
        m.cache_entries.with_label_values(&[&cache]).set(r.get(1));
        m.sync_counter(&cache, "hit", r.get(2));
        m.sync_counter(&cache, "stale", r.get(3));
        m.sync_counter(&cache, "miss", r.get(4));
        m.sync_counter(&cache, "eviction", r.get(5));
    }
    Ok(())
}

fn upstream_for<'a>(ctx: &'a Ctx, kind: &str) -> &'a Upstream {
    match kind {
        "price" => &ctx.janice,
        _ => &ctx.esi,
    }
}

async fn kind_loop(ctx: &Ctx, kind: &'static str, notify: &Notify) -> Result<()> {
    let mut client = db::connect(&ctx.args.db.database_url).await?;
    let poll = Duration::from_millis(ctx.args.poll_ms.max(10));
    let batch = match kind {
        "affiliation" => ctx.args.affiliation_batch,
        "price" => ctx.args.price_batch,
        _ => ctx.args.job_batch,
    };
    let lease = Duration::from_millis(ctx.args.lease_ms).as_secs_f64();
    tracing::info!(kind, batch, "queue loop started");
    loop {
        // Claiming while the upstream is paused would only burn attempts.
        if let Some(wait) = upstream_for(ctx, kind).paused_for() {
            tokio::time::sleep(wait).await;
        }
        let jobs: Vec<Job> = client
            .query(CLAIM_SQL, &[&kind, &batch, &lease])
            .await?
            .iter()
            .map(|r| Job {
                id: r.get(0),
                key: r.get(1),
                attempts: r.get(2),
            })
            .collect();
        if jobs.is_empty() {
            tokio::select! {
                _ = notify.notified() => {}
                _ = tokio::time::sleep(poll) => {}
            }
            continue;
        }
        tracing::debug!(kind, jobs = jobs.len(), "claimed");
        match kind {
            "affiliation" => affiliation_batch(ctx, &mut client, jobs).await?,
            "corporation_history" => corporation_history_batch(ctx, &mut client, jobs).await?,
            "enrichment" => enrichment_batch(ctx, &mut client, jobs).await?,
            _ => price_batch(ctx, &mut client, jobs).await?,
        }
    }
}

/// Delete done jobs and reschedule or park failed ones, inside the caller's transaction.
async fn settle<C: GenericClient>(
    ctx: &Ctx,
    tx: &C,
    kind: &str,
    done: &[i64],
    failed: &[(Job, Failure)],
) -> Result<()> {
    if !done.is_empty() {
        tx.execute(
            "DELETE FROM killboard.fetch_queue WHERE job_id = ANY($1)",
            &[&done],
        )
        .await?;
        ctx.metrics
            .jobs
            .with_label_values(&[kind, "done"])
            .inc_by(done.len() as u64);
    }
    for (job, f) in failed {
        let (outcome, delay, park, attempts_back, msg) = match f {
            Failure::Throttled(w, m) => ("throttled", *w, false, 1, m),
            Failure::Permanent(m) => ("parked", Duration::ZERO, true, 0, m),
            Failure::Retry(m) if job.attempts >= ctx.args.max_attempts => {
                ("parked", Duration::ZERO, true, 0, m)
            }
            Failure::Retry(m) => (
                "retry",
                ctx.job_backoff.delay_random(job.attempts.max(1) as u32),
                false,
                0,
                m,
            ),
        };
        tx.execute(
            "UPDATE killboard.fetch_queue
                SET attempts = greatest(attempts - $2, 0), parked = $3, last_error = $4,
                    next_attempt_at = now() + make_interval(secs => $5::float8)
              WHERE job_id = $1",
            &[&job.id, &attempts_back, &park, msg, &delay.as_secs_f64()],
        )
        .await?;
        ctx.metrics.jobs.with_label_values(&[kind, outcome]).inc();
        if park {
            tracing::warn!(kind, key = %job.key, attempts = job.attempts, error = %msg, "job parked");
        }
    }
    Ok(())
}

fn parse_id(kind: &str, job: &Job) -> std::result::Result<i64, Failure> {
    match job.key.parse::<i64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(Failure::Permanent(
            Error::BadKey {
                kind: kind.into(),
                key: job.key.clone(),
                detail: "not a positive integer".into(),
            }
            .to_string(),
        )),
    }
}

/// Rows returned, the upstream's Expires, and the ids that failed.
type IdsResult = (Vec<Value>, Option<SystemTime>, Vec<(i64, Failure)>);
type HistoryResult = std::result::Result<(i64, Value, Option<SystemTime>), Failure>;

/// POST a JSON array of ids; on a 4xx for several ids, split the batch in two
/// to isolate the bad ones (ESI rejects the whole call for one bad id).
fn post_ids<'a>(
    up: &'a Upstream,
    endpoint: &'static str,
    path: &'a str,
    ids: Vec<i64>,
) -> futures_util::future::BoxFuture<'a, IdsResult> {
    Box::pin(async move {
        let body = Bytes::from(serde_json::to_vec(&ids).unwrap_or_default());
        let res = up
            .send(Request::post(
                endpoint,
                path.to_string(),
                "application/json",
                body,
            ))
            .await;
        let rejected = match &res {
            Ok(r) if r.status == 404 => true,
            Err(e) => e.is_permanent(),
            _ => false,
        };
        if rejected && ids.len() > 1 {
            let mut left = ids;
            let right = left.split_off(left.len() / 2);
            let (mut a, ea, mut fa) = post_ids(up, endpoint, path, left).await;
            let (b, eb, fb) = post_ids(up, endpoint, path, right).await;
            a.extend(b);
            fa.extend(fb);
            return (a, ea.or(eb), fa);
        }
        match res {
            Ok(r) if r.status == 404 => {
                let f = Failure::Permanent(format!("{} {endpoint}: HTTP 404", up.name()));
                (
                    vec![],
                    None,
                    ids.into_iter().map(|id| (id, f.clone())).collect(),
                )
            }
            Ok(r) => match r.json::<Vec<Value>>(up.name(), endpoint) {
                Ok(rows) => (rows, r.expires, vec![]),
                Err(e) => {
                    let f = Failure::from(&e);
                    (
                        vec![],
                        None,
                        ids.into_iter().map(|id| (id, f.clone())).collect(),
                    )
                }
            },
            Err(e) => {
                let f = Failure::from(&e);
                (
                    vec![],
                    None,
                    ids.into_iter().map(|id| (id, f.clone())).collect(),
                )
            }
        }
    })
}

async fn affiliation_batch(ctx: &Ctx, client: &mut Client, jobs: Vec<Job>) -> Result<()> {
    let mut failed = Vec::new();
    let mut by_id: BTreeMap<i64, Job> = BTreeMap::new();
    for job in jobs {
        match parse_id("affiliation", &job) {
            Ok(id) => {
                by_id.insert(id, job);
            }
            Err(f) => failed.push((job, f)),
        }
    }
    let ids: Vec<i64> = by_id.keys().copied().collect();
    let (rows, expires, errors) = if ids.is_empty() {
        (vec![], None, vec![])
    } else {
        post_ids(&ctx.esi, "affiliation", "/characters/affiliation/", ids).await
    };
    let mut done = Vec::new();
    for row in &rows {
        if let Some(job) = row
            .get("character_id")
            .and_then(Value::as_i64)
            .and_then(|id| by_id.remove(&id))
        {
            done.push(job.id);
        }
    }
    for (id, f) in errors {
        if let Some(job) = by_id.remove(&id) {
            failed.push((job, f));
        }
    }
    for (_, job) in by_id {
        failed.push((
            job,
            Failure::Retry("esi affiliation: character missing from the response".into()),
        ));
    }
    let tx = client.transaction().await?;
    if !rows.is_empty() {
        tx.execute(
            "SELECT killboard._store_affiliations($1::jsonb, $2)",
            &[&Json(&rows), &expires],
        )
        .await?;
    }
    settle(ctx, &tx, "affiliation", &done, &failed).await?;
    tx.commit().await?;
    Ok(())
}

async fn corporation_history_batch(ctx: &Ctx, client: &mut Client, jobs: Vec<Job>) -> Result<()> {
    let results: Vec<(Job, HistoryResult)> = futures_util::stream::iter(jobs)
        .map(|job| async move {
            let id = match parse_id("corporation_history", &job) {
                Ok(id) => id,
                Err(f) => return (job, Err(f)),
            };
            let path = format!("/characters/{id}/corporationhistory/");
            let r = match ctx.esi.send(Request::get("corporationhistory", path)).await {
                Ok(r) if r.status == 404 => Err(Failure::Permanent(
                    "esi corporationhistory: HTTP 404".into(),
                )),
                Ok(r) => match r.json::<Value>("esi", "corporationhistory") {
                    Ok(v) if v.is_array() => Ok((id, v, r.expires)),
                    Ok(_) => Err(Failure::Retry(
                        "esi corporationhistory: not an array".into(),
                    )),
                    Err(e) => Err(Failure::from(&e)),
                },
                Err(e) => Err(Failure::from(&e)),
            };
            (job, r)
        })
        .buffer_unordered(ctx.args.esi_concurrency.max(1))
        .collect()
        .await;
    let tx = client.transaction().await?;
    let (mut done, mut failed) = (Vec::new(), Vec::new());
    for (job, r) in results {
        match r {
            Ok((id, rows, expires)) => {
                tx.execute(
                    "SELECT killboard._store_corporation_history($1, $2::jsonb, $3)",
                    &[&id, &Json(&rows), &expires],
                )
                .await?;
                done.push(job.id);
            }
            Err(f) => failed.push((job, f)),
        }
    }
    settle(ctx, &tx, "corporation_history", &done, &failed).await?;
    tx.commit().await?;
    Ok(())
}

const KILLMAIL_IDS_SQL: &str = "
SELECT DISTINCT id FROM (
    SELECT unnest(ARRAY[victim_character_id, victim_corporation_id, victim_alliance_id,
                        victim_faction_id, victim_ship_type_id, solar_system_id]::bigint[]) AS id
      FROM killboard.killmails WHERE killmail_id = $1
    UNION ALL
    SELECT unnest(ARRAY[character_id, corporation_id, alliance_id, faction_id,
                        ship_type_id, weapon_type_id]::bigint[])
      FROM killboard.attackers WHERE killmail_id = $1
) ids WHERE id IS NOT NULL AND id > 0";

async fn enrichment_batch(ctx: &Ctx, client: &mut Client, jobs: Vec<Job>) -> Result<()> {
    let mut failed = Vec::new();
    let mut wanted: Vec<(Job, i64, Vec<i64>)> = Vec::new();
    for job in jobs {
        let km = match parse_id("enrichment", &job) {
            Ok(id) => id,
            Err(f) => {
                failed.push((job, f));
                continue;
            }
        };
        let exists = client
            .query_opt(
                "SELECT 1 FROM killboard.killmails WHERE killmail_id = $1",
                &[&km],
            )
            .await?;
        if exists.is_none() {
            failed.push((
                job,
                Failure::Permanent(format!("killmail {km} is not in killboard.killmails")),
            ));
            continue;
        }
        let ids: Vec<i64> = client
            .query(KILLMAIL_IDS_SQL, &[&km])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        wanted.push((job, km, ids));
    }
    let mut all: Vec<i64> = wanted
        .iter()
        .flat_map(|(_, _, ids)| ids.iter().copied())
        .collect();
    all.sort_unstable();
    all.dedup();
    let mut names: HashMap<i64, Value> = HashMap::new();
    let mut bad: HashMap<i64, Failure> = HashMap::new();
    for chunk in all.chunks(1000) {
        let (rows, _, errors) =
            post_ids(&ctx.esi, "names", "/universe/names/", chunk.to_vec()).await;
        for row in rows {
            if let Some(id) = row.get("id").and_then(Value::as_i64) {
                names.insert(
                    id,
                    json!({ "name": row.get("name"), "category": row.get("category") }),
                );
            }
        }
        for (id, f) in errors {
            bad.insert(id, f);
        }
    }
    let tx = client.transaction().await?;
    let mut done = Vec::new();
    for (job, km, ids) in wanted {
        // An id ESI cannot resolve (a permanent 404) is left out; anything
        // transient fails the killmail so it is retried whole.
        if let Some(f) = ids
            .iter()
            .filter_map(|id| bad.get(id))
            .find(|f| !matches!(f, Failure::Permanent(_)))
        {
            failed.push((job, f.clone()));
            continue;
        }
        let mut map = serde_json::Map::new();
        for id in &ids {
            if let Some(v) = names.get(id) {
                map.insert(id.to_string(), v.clone());
            }
        }
        tx.execute(
            "SELECT killboard._store_enrichment($1, $2::jsonb)",
            &[&km, &Json(json!({ "names": map }))],
        )
        .await?;
        done.push(job.id);
    }
    settle(ctx, &tx, "enrichment", &done, &failed).await?;
    tx.commit().await?;
    Ok(())
}

fn parse_price_key(job: &Job) -> std::result::Result<(String, i32, i32), Failure> {
    let bad = |d: &str| {
        Failure::Permanent(
            Error::BadKey {
                kind: "price".into(),
                key: job.key.clone(),
                detail: d.into(),
            }
            .to_string(),
        )
    };
    let mut it = job.key.splitn(3, ':');
    let (Some(source), Some(region), Some(ty)) = (it.next(), it.next(), it.next()) else {
        return Err(bad("expected source:region_id:type_id"));
    };
    if source != "janice" && source != "mutamarket" {
        return Err(bad("unknown source"));
    }
    match (region.parse::<i32>(), ty.parse::<i32>()) {
        (Ok(r), Ok(t)) if r > 0 && t > 0 => Ok((source.to_string(), r, t)),
        _ => Err(bad("region_id and type_id must be positive integers")),
    }
}

#[derive(Deserialize)]
struct JaniceItem {
    #[serde(rename = "itemType")]
    item_type: JaniceType,
    #[serde(rename = "immediatePrices")]
    immediate: JanicePrices,
}
#[derive(Deserialize)]
struct JaniceType {
    eid: i64,
}
#[derive(Deserialize)]
struct JanicePrices {
    #[serde(rename = "buyPrice")]
    buy: Option<f64>,
    #[serde(rename = "sellPrice")]
    sell: Option<f64>,
    #[serde(rename = "splitPrice")]
    split: Option<f64>,
}

async fn price_batch(ctx: &Ctx, client: &mut Client, jobs: Vec<Job>) -> Result<()> {
    let mut failed = Vec::new();
    let mut groups: BTreeMap<(String, i32), Vec<(Job, i32)>> = BTreeMap::new();
    for job in jobs {
        match parse_price_key(&job) {
            Ok((s, r, t)) => groups.entry((s, r)).or_default().push((job, t)),
            Err(f) => failed.push((job, f)),
        }
    }
    let mut stored: Vec<(String, i32, Vec<Value>)> = Vec::new();
    let mut done = Vec::new();
    for ((source, region), members) in groups {
        let prices: std::result::Result<HashMap<i32, f64>, Failure> = if source == "janice" {
            janice_prices(ctx, region, &members).await
        } else {
            mutamarket_prices(ctx, &members, &mut failed).await
        };
        match prices {
            Ok(found) => {
                let mut rows = Vec::new();
                for (job, ty) in members {
                    match found.get(&ty) {
                        Some(p) => {
                            rows.push(json!({ "type_id": ty, "price": p }));
                            done.push(job.id);
                        }
                        None if failed.iter().any(|(j, _): &(Job, Failure)| j.id == job.id) => {}
                        None => failed.push((
                            job,
                            Failure::Retry(format!("{source}: no price for type {ty}")),
                        )),
                    }
                }
                if !rows.is_empty() {
                    stored.push((source, region, rows));
                }
            }
            Err(f) => failed.extend(members.into_iter().map(|(job, _)| (job, f.clone()))),
        }
    }
    let tx = client.transaction().await?;
    let mut types: Vec<i32> = Vec::new();
    for (source, region, rows) in &stored {
        tx.execute(
            "SELECT killboard._store_prices($1, $2, $3::jsonb)",
            &[source, region, &Json(rows)],
        )
        .await?;
        types.extend(
            rows.iter()
                .filter_map(|r| r["type_id"].as_i64())
                .map(|t| t as i32),
        );
    }
    if !types.is_empty() {
        let n: i64 = tx
            .query_one("SELECT killboard.recompute_values($1)", &[&types])
            .await?
            .get(0);
        ctx.metrics.values_recomputed.inc_by(n.max(0) as u64);
    }
    settle(ctx, &tx, "price", &done, &failed).await?;
    tx.commit().await?;
    Ok(())
}

async fn janice_prices(
    ctx: &Ctx,
    region: i32,
    members: &[(Job, i32)],
) -> std::result::Result<HashMap<i32, f64>, Failure> {
    let Some(market) = ctx.janice_markets.get(&region) else {
        return Err(Failure::Permanent(format!(
            "janice: no market configured for region {region} (see --janice-markets)"
        )));
    };
    let body: String = members.iter().map(|(_, t)| format!("{t}\n")).collect();
    let r = ctx
        .janice
        .send(Request::post(
            "pricer",
            format!("/api/rest/v2/pricer?market={market}"),
            "text/plain",
            Bytes::from(body),
        ))
        .await
        .map_err(|e| Failure::from(&e))?;
    if r.status == 404 {
        return Err(Failure::Retry("janice pricer: HTTP 404".into()));
    }
    let items: Vec<JaniceItem> = r.json("janice", "pricer").map_err(|e| Failure::from(&e))?;
    let mut out = HashMap::new();
    for it in items {
        let p = match ctx.args.janice_price.as_str() {
            "buy" => it.immediate.buy,
            "split" => it.immediate.split,
            _ => it.immediate.sell,
        };
        if let (Ok(t), Some(p)) = (i32::try_from(it.item_type.eid), p) {
            if p.is_finite() && p >= 0.0 {
                out.insert(t, p);
            }
        }
    }
    Ok(out)
}

/// Mutamarket has no batch endpoint: one GET per type; failures are per job.
async fn mutamarket_prices(
    ctx: &Ctx,
    members: &[(Job, i32)],
    failed: &mut Vec<(Job, Failure)>,
) -> std::result::Result<HashMap<i32, f64>, Failure> {
    let mut out = HashMap::new();
    for (job, ty) in members {
        let path = ctx
            .args
            .mutamarket_path
            .replace("{type_id}", &ty.to_string());
        let res = match ctx.mutamarket.send(Request::get("price", path)).await {
            Ok(r) if r.status == 404 => Err(Failure::Permanent(format!(
                "mutamarket: type {ty} not found"
            ))),
            Ok(r) => match r.json::<Value>("mutamarket", "price") {
                Ok(v) => ["estimated_value", "price", "value"]
                    .iter()
                    .find_map(|k| v.get(*k).and_then(Value::as_f64))
                    .filter(|p| p.is_finite() && *p >= 0.0)
                    .ok_or_else(|| {
                        Failure::Retry(format!("mutamarket: no price field for type {ty}"))
                    }),
                Err(e) => Err(Failure::from(&e)),
            },
            Err(e) => Err(Failure::from(&e)),
        };
        match res {
            Ok(p) => {
                out.insert(*ty, p);
            }
            Err(f) => failed.push((job.clone(), f)),
        }
    }
    Ok(out)
}

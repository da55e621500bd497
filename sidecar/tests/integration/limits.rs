//! Throttling and failure handling, asserted from the fake server's request log.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::db_or_skip;
use crate::support::*;

fn affiliation_rows(req: &Logged) -> String {
    let ids: Vec<i64> = serde_json::from_slice(&req.body).unwrap_or_default();
    Value::from(
        ids.iter()
            .map(|id| json!({"character_id": id, "corporation_id": 98000001}))
            .collect::<Vec<_>>(),
    )
    .to_string()
}

fn history() -> String {
    json!([{"record_id": 1, "corporation_id": 98000001, "start_date": "2020-01-01T00:00:00Z"}])
        .to_string()
}

fn gaps(reqs: &[Logged]) -> Vec<Duration> {
    reqs.windows(2)
        .map(|w| w[1].at.duration_since(w[0].at))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn esi_error_limit_headers_pause_before_the_limit() {
    let db = db_or_skip!("error_limit");
    let c = &db.client;
    // First answer says only 5 errors remain for 2 more seconds.
    let fake = Fake::start(Arc::new(|req: &Logged, _| {
        let n_before = req.path.contains("corporationhistory");
        if !n_before {
            return Reply::Json(404, vec![], "{}".into());
        }
        Reply::Json(
            200,
            vec![
                ("x-esi-error-limit-remain", "5".into()),
                ("x-esi-error-limit-reset", "2".into()),
            ],
            history(),
        )
    }))
    .await;
    // Only the first response is low; then the window "resets".
    let _ = &fake;
    c.batch_execute("SELECT * FROM killboard.corporation_history(91000001)")
        .await
        .unwrap();
    let started = Instant::now();
    let _s = spawn_sidecar(
        &["run"],
        &db.url,
        Some(&fake),
        &[("--esi-concurrency", "1")],
        "error_limit",
    );
    wait_for(Duration::from_secs(10), "first history stored", || async {
        count(
            c,
            "SELECT count(*) FROM killboard.corporation_history_cache",
        )
        .await
            == 1
    })
    .await;
    // A second job while the budget is low must wait for the reset (2 s + 1 s margin).
    c.batch_execute("SELECT * FROM killboard.corporation_history(91000002)")
        .await
        .unwrap();
    wait_for(Duration::from_secs(15), "second history stored", || async {
        count(
            c,
            "SELECT count(*) FROM killboard.corporation_history_cache",
        )
        .await
            == 2
    })
    .await;
    let reqs = fake.requests("GET", "/corporationhistory/");
    assert_eq!(reqs.len(), 2, "no retries, no extra calls");
    let gap = reqs[1].at.duration_since(reqs[0].at);
    assert!(gap >= Duration::from_millis(2900), "paused only {gap:?}");
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn esi_420_stops_until_the_error_window_resets() {
    let db = db_or_skip!("esi420");
    let c = &db.client;
    let fake = Fake::start(Arc::new(|req: &Logged, n| {
        if !req.path.ends_with("/characters/affiliation/") {
            return Reply::Json(404, vec![], "{}".into());
        }
        if n == 0 {
            Reply::Json(
                420,
                vec![
                    ("x-esi-error-limit-remain", "0".into()),
                    ("x-esi-error-limit-reset", "2".into()),
                ],
                "{\"error\":\"error limited\"}".into(),
            )
        } else {
            Reply::Json(
                200,
                vec![("x-esi-error-limit-remain", "100".into())],
                affiliation_rows(req),
            )
        }
    }))
    .await;
    c.batch_execute("SELECT * FROM killboard.character_affiliation(92000001)")
        .await
        .unwrap();
    let _s = spawn_sidecar(&["run"], &db.url, Some(&fake), &[], "esi420");
    wait_for(Duration::from_secs(15), "affiliation stored", || async {
        count(c, "SELECT count(*) FROM killboard.affiliation_cache").await == 1
    })
    .await;
    let reqs = fake.requests("POST", "/characters/affiliation/");
    assert_eq!(reqs.len(), 2);
    let gap = reqs[1].at.duration_since(reqs[0].at);
    assert!(
        gap >= Duration::from_secs(2),
        "retried after {gap:?}, before the reset"
    );
    assert!(gap < Duration::from_secs(8), "waited {gap:?}");
    wait_for(Duration::from_secs(5), "job done", || async {
        count(c, "SELECT count(*) FROM killboard.fetch_queue").await == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn janice_429_honours_retry_after() {
    let db = db_or_skip!("janice429");
    let c = &db.client;
    let fake = Fake::start(Arc::new(|req: &Logged, n| {
        if !req.path.ends_with("/api/rest/v2/pricer") {
            return Reply::Json(404, vec![], "{}".into());
        }
        if n == 0 {
            Reply::Json(429, vec![("retry-after", "2".into())], "{}".into())
        } else {
            Reply::Json(
                200,
                vec![],
                json!([{"itemType": {"eid": 34}, "immediatePrices": {"sellPrice": 4.25}}])
                    .to_string(),
            )
        }
    }))
    .await;
    c.batch_execute("SELECT killboard.price(34)").await.unwrap();
    let _s = spawn_sidecar(&["run"], &db.url, Some(&fake), &[], "janice429");
    wait_for(Duration::from_secs(15), "price stored", || async {
        count(c, "SELECT count(*) FROM killboard.price_cache").await == 1
    })
    .await;
    let reqs = fake.requests("POST", "/api/rest/v2/pricer");
    assert_eq!(reqs.len(), 2);
    let gap = reqs[1].at.duration_since(reqs[0].at);
    assert!(
        gap >= Duration::from_secs(2) && gap < Duration::from_secs(8),
        "retry after {gap:?}"
    );
    let p: String = c
        .query_one("SELECT killboard.price(34)::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(p, "4.25");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_back_off_then_park_never_hot_loop() {
    let db = db_or_skip!("errors500");
    let c = &db.client;
    // 93000001 always fails; 93000002 fails twice then works.
    let fake = Fake::start(Arc::new(|req: &Logged, n| {
        if req.path.contains("/93000001/") {
            Reply::Json(500, vec![], "{\"error\":\"boom\"}".into())
        } else if req.path.contains("/93000002/") && n < 2 {
            Reply::Json(503, vec![], "{}".into())
        } else if req.path.contains("/93000002/") {
            Reply::Json(200, vec![], history())
        } else {
            Reply::Json(404, vec![], "{}".into())
        }
    }))
    .await;
    c.batch_execute("SELECT * FROM killboard.corporation_history(93000001); SELECT * FROM killboard.corporation_history(93000002)")
        .await
        .unwrap();
    let started = Instant::now();
    let _s = spawn_sidecar(
        &["run"],
        &db.url,
        Some(&fake),
        &[
            ("--http-retries", "1"),
            ("--max-attempts", "3"),
            ("--backoff-base-ms", "200"),
            ("--backoff-max-ms", "800"),
        ],
        "errors500",
    );
    wait_for(Duration::from_secs(20), "failing job parked", || async {
        count(c, "SELECT count(*) FROM killboard.fetch_queue WHERE parked AND key = '93000001' AND attempts = 3 AND last_error LIKE '%500%'").await == 1
    })
    .await;
    wait_for(Duration::from_secs(10), "recovering job done", || async {
        count(c, "SELECT count(*) FROM killboard.corporation_history_cache WHERE character_id = 93000002").await == 1
    })
    .await;
    let parked_after = started.elapsed();
    // Parked means parked: nothing more for a while.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let bad = fake.requests("GET", "/93000001/corporationhistory/");
    assert_eq!(bad.len(), 6, "3 attempts × (1 + 1 retry)");
    for g in gaps(&bad) {
        assert!(g >= Duration::from_millis(100), "hot loop: gap {g:?}");
    }
    let good = fake.requests("GET", "/93000002/corporationhistory/");
    assert_eq!(
        good.len(),
        3,
        "503, 503 (retry), then a new attempt that succeeds"
    );
    assert_eq!(
        count(
            c,
            "SELECT count(*) FROM killboard.fetch_queue WHERE key = '93000002'"
        )
        .await,
        0
    );
    assert!(parked_after < Duration::from_secs(20));
    // requeue_parked gives it a new chance.
    assert_eq!(
        count(c, "SELECT killboard.requeue_parked('corporation_history')").await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_server_times_out_and_parks() {
    let db = db_or_skip!("hang");
    let c = &db.client;
    let fake = Fake::start(Arc::new(|_req: &Logged, _| Reply::Hang)).await;
    c.batch_execute("SELECT * FROM killboard.corporation_history(94000001)")
        .await
        .unwrap();
    let started = Instant::now();
    let _s = spawn_sidecar(
        &["run"],
        &db.url,
        Some(&fake),
        &[
            ("--http-timeout-ms", "300"),
            ("--http-retries", "0"),
            ("--max-attempts", "2"),
        ],
        "hang",
    );
    wait_for(Duration::from_secs(15), "hanging job parked", || async {
        count(c, "SELECT count(*) FROM killboard.fetch_queue WHERE parked AND last_error LIKE '%timed out%'").await == 1
    })
    .await;
    let elapsed = started.elapsed();
    let reqs = fake.requests("GET", "/corporationhistory/");
    assert_eq!(reqs.len(), 2, "one request per attempt");
    let gap = reqs[1].at.duration_since(reqs[0].at);
    assert!(
        gap >= Duration::from_millis(300),
        "second attempt before the first timed out: {gap:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(600) && elapsed < Duration::from_secs(15),
        "{elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etag_and_expires_make_refreshes_conditional() {
    let db = db_or_skip!("etag");
    let c = &db.client;
    let fake = Fake::start(Arc::new(|req: &Logged, n| {
        let now = std::time::SystemTime::now();
        if req.path.contains("/95000001/") {
            // Already expired upstream, but with a validator: refreshes must be conditional.
            let past = httpdate::fmt_http_date(now - Duration::from_secs(1));
            if n > 0
                && req
                    .headers
                    .get("if-none-match")
                    .and_then(|v| v.to_str().ok())
                    == Some("\"v1\"")
            {
                return Reply::Json(
                    304,
                    vec![("etag", "\"v1\"".into()), ("expires", past)],
                    String::new(),
                );
            }
            return Reply::Json(
                200,
                vec![("etag", "\"v1\"".into()), ("expires", past)],
                history(),
            );
        }
        if req.path.contains("/95000002/") {
            // Upstream promises no change for 3 hours.
            let later = httpdate::fmt_http_date(now + Duration::from_secs(3 * 3600));
            return Reply::Json(200, vec![("expires", later)], history());
        }
        Reply::Json(404, vec![], "{}".into())
    }))
    .await;
    c.batch_execute("SELECT * FROM killboard.corporation_history(95000001); SELECT * FROM killboard.corporation_history(95000002)")
        .await
        .unwrap();
    let _s = spawn_sidecar(&["run"], &db.url, Some(&fake), &[], "etag");
    wait_for(Duration::from_secs(10), "both histories cached", || async {
        count(
            c,
            "SELECT count(*) FROM killboard.corporation_history_cache",
        )
        .await
            == 2
    })
    .await;
    assert_eq!(
        count(c, "SELECT count(*) FROM killboard.corporation_history_cache WHERE character_id = 95000002 AND expires_at > now() + interval '2 hours'").await,
        1,
        "Expires beyond the TTL keeps the row fresh until then"
    );

    c.execute(
        "UPDATE killboard.corporation_history_cache SET expires_at = now() - interval '1 minute'",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(
        count(
            c,
            "SELECT count(*) FROM killboard.corporation_history(95000001)"
        )
        .await,
        1,
        "stale rows returned"
    );
    assert_eq!(
        count(
            c,
            "SELECT count(*) FROM killboard.corporation_history(95000002)"
        )
        .await,
        1,
        "stale rows returned"
    );
    wait_for(Duration::from_secs(10), "both refreshed", || async {
        count(
            c,
            "SELECT count(*) FROM killboard.corporation_history_cache WHERE expires_at > now()",
        )
        .await
            == 2
            && count(c, "SELECT count(*) FROM killboard.fetch_queue").await == 0
    })
    .await;
    let first = fake.requests("GET", "/95000001/corporationhistory/");
    assert_eq!(first.len(), 2);
    assert_eq!(
        first[1]
            .headers
            .get("if-none-match")
            .and_then(|v| v.to_str().ok()),
        Some("\"v1\"")
    );
    assert_eq!(count(c, "SELECT count(*) FROM killboard.corporation_history_entries WHERE character_id = 95000001").await, 1, "304 keeps the body");
    assert_eq!(
        fake.requests("GET", "/95000002/corporationhistory/").len(),
        1,
        "before Expires, no request at all"
    );
}

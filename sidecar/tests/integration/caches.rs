use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::db_or_skip;
use crate::support::*;

/// ESI + Janice fake: affiliation answers every posted id (corporation =
/// 98000000 + generation, so a refresh is visible), corporation history has
/// two records, names resolve everything, Janice prices type t at t·10 ISK.
pub fn normal_upstreams(generation: Arc<std::sync::atomic::AtomicI64>) -> Handler {
    Arc::new(move |req, _n| {
        let gen = generation.load(std::sync::atomic::Ordering::SeqCst);
        let p = req.path.as_str();
        if p.ends_with("/characters/affiliation/") {
            let ids: Vec<i64> = serde_json::from_slice(&req.body).unwrap_or_default();
            let rows: Vec<Value> = ids
                .iter()
                .map(|id| json!({"character_id": id, "corporation_id": 98000000 + gen, "alliance_id": 99000001}))
                .collect();
            return Reply::Json(
                200,
                vec![
                    ("x-esi-error-limit-remain", "100".into()),
                    ("x-esi-error-limit-reset", "30".into()),
                ],
                Value::from(rows).to_string(),
            );
        }
        if p.ends_with("/corporationhistory/") {
            return ok_json(json!([
                {"record_id": 2, "corporation_id": 98000000 + gen, "start_date": "2020-01-01T00:00:00Z"},
                {"record_id": 1, "corporation_id": 1000167, "start_date": "2019-01-01T00:00:00Z"}
            ]));
        }
        if p.ends_with("/universe/names/") {
            let ids: Vec<i64> = serde_json::from_slice(&req.body).unwrap_or_default();
            let rows: Vec<Value> = ids
                .iter()
                .map(|id| json!({"id": id, "name": format!("Name {id}"), "category": "character"}))
                .collect();
            return ok_json(Value::from(rows));
        }
        if p.ends_with("/api/rest/v2/pricer") {
            let body = String::from_utf8_lossy(&req.body).to_string();
            let rows: Vec<Value> = body
                .lines()
                .filter_map(|l| l.trim().parse::<i64>().ok())
                .filter(|t| *t != 999999) // a type Janice does not know
                .map(|t| json!({"itemType": {"eid": t}, "immediatePrices": {"buyPrice": t as f64 * 9.0, "sellPrice": t as f64 * 10.0, "splitPrice": t as f64 * 9.5}}))
                .collect();
            return ok_json(Value::from(rows));
        }
        if p.contains("/muta/") {
            return ok_json(json!({"estimated_value": 123456.5}));
        }
        Reply::Json(404, vec![], "{\"error\":\"not found\"}".into())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_miss_is_fetched_and_stale_row_is_returned_then_refreshed() {
    let db = db_or_skip!("miss_stale");
    let c = &db.client;
    let gen = Arc::new(std::sync::atomic::AtomicI64::new(1));
    let fake = Fake::start(normal_upstreams(gen.clone())).await;

    // Cold misses: NULL values, one queued job each.
    let row = c
        .query_one(
            "SELECT character_id, corporation_id FROM killboard.character_affiliation(90000001)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 90000001);
    assert_eq!(row.get::<_, Option<i64>>(1), None);
    assert_eq!(
        count(
            c,
            "SELECT count(*) FROM killboard.corporation_history(90000001)"
        )
        .await,
        0
    );
    let p: Option<String> = c
        .query_one("SELECT killboard.price(587)::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(p, None);
    let p: Option<String> = c
        .query_one("SELECT killboard.price(47408, 'mutamarket')::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(p, None);
    // Asking again before the sidecar runs does not duplicate jobs.
    c.query_one(
        "SELECT corporation_id FROM killboard.character_affiliation(90000001)",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(
        count(c, "SELECT count(*) FROM killboard.fetch_queue").await,
        4
    );

    let sidecar = spawn_sidecar(&["run"], &db.url, Some(&fake), &[], "miss_stale");
    wait_for(Duration::from_secs(20), "queue drained", || async {
        count(c, "SELECT count(*) FROM killboard.fetch_queue").await == 0
    })
    .await;

    let row = c
        .query_one("SELECT corporation_id, alliance_id, expires_at > now() AND fetched_at <= now() FROM killboard.character_affiliation(90000001)", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<i64>>(0), Some(98000001));
    assert_eq!(row.get::<_, Option<i64>>(1), Some(99000001));
    assert!(row.get::<_, bool>(2), "fresh row expected");
    let hist: Vec<(i64, Option<String>)> = c
        .query(
            "SELECT corporation_id, end_date::text FROM killboard.corporation_history(90000001)",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(hist.len(), 2);
    assert_eq!(hist[0].0, 1000167);
    assert!(
        hist[0].1.is_some(),
        "older record ends where the next starts"
    );
    assert_eq!(hist[1], (98000001, None));
    let p: bool = c
        .query_one("SELECT killboard.price(587) = 5870", &[])
        .await
        .unwrap()
        .get(0);
    assert!(p, "Janice sell price of 587");
    let p: String = c
        .query_one("SELECT killboard.price(47408, 'mutamarket')::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(p, "123456.5");
    // The Janice key is sent, and never logged.
    let pricer = fake.requests("POST", "/api/rest/v2/pricer");
    assert_eq!(pricer.len(), 1);
    assert_eq!(
        pricer[0]
            .headers
            .get("x-apikey")
            .and_then(|v| v.to_str().ok()),
        Some("test-secret-key")
    );
    assert_eq!(pricer[0].query, "market=2");
    assert!(
        !sidecar.log().contains("test-secret-key"),
        "API key leaked into the log"
    );

    // Make the row stale with a marker value; the reader returns it and queues a refresh.
    gen.store(2, std::sync::atomic::Ordering::SeqCst);
    c.execute("UPDATE killboard.affiliation_cache SET corporation_id = 1, expires_at = now() - interval '1 minute'", &[]).await.unwrap();
    let stale: Option<i64> = c
        .query_one(
            "SELECT corporation_id FROM killboard.character_affiliation(90000001)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        stale,
        Some(1),
        "stale value is returned while the refresh is queued"
    );
    wait_for(Duration::from_secs(20), "stale row refreshed", || async {
        count(c, "SELECT count(*) FROM killboard.affiliation_cache WHERE corporation_id = 98000002 AND expires_at > now()").await == 1
    })
    .await;
    let fresh: Option<i64> = c
        .query_one(
            "SELECT corporation_id FROM killboard.character_affiliation(90000001)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(fresh, Some(98000002));
    assert_eq!(fake.requests("POST", "/characters/affiliation/").len(), 2);

    // Counters: misses (2 reads of a cold affiliation row), stale hits, hits.
    let row = c
        .query_one("SELECT hits, stale_hits, misses FROM killboard.ttl_cache_stats() WHERE cache = 'affiliation'", &[])
        .await
        .unwrap();
    assert_eq!(
        (
            row.get::<_, i64>(0),
            row.get::<_, i64>(1),
            row.get::<_, i64>(2)
        ),
        (2, 1, 2)
    );

    // Eviction: rows past expires_at + grace go, and are counted.
    c.execute(
        "UPDATE killboard.price_cache SET expires_at = now() - interval '2 days'",
        &[],
    )
    .await
    .unwrap();
    let evicted: i64 = c
        .query_one(
            "SELECT evicted FROM killboard.cleanup_caches() WHERE cache = 'price'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(evicted, 2);
    assert_eq!(
        count(
            c,
            "SELECT evictions FROM killboard.ttl_cache_stats() WHERE cache = 'price'"
        )
        .await,
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifteen_hundred_characters_take_exactly_two_affiliation_calls() {
    let db = db_or_skip!("batch1500");
    let c = &db.client;
    let fake = Fake::start(normal_upstreams(Arc::new(1.into()))).await;
    // One statement, one transaction: all 1500 are queued before the worker looks.
    let n = count(c, "SELECT count(*) FROM generate_series(1, 1500) g, killboard.character_affiliation(2100000000 + g)").await;
    assert_eq!(n, 1500);
    assert_eq!(
        count(
            c,
            "SELECT count(*) FROM killboard.fetch_queue WHERE kind = 'affiliation'"
        )
        .await,
        1500
    );

    let sidecar = spawn_sidecar(&["run"], &db.url, Some(&fake), &[], "batch1500");
    wait_for(
        Duration::from_secs(30),
        "1500 affiliations cached",
        || async { count(c, "SELECT count(*) FROM killboard.affiliation_cache").await == 1500 },
    )
    .await;
    wait_for(Duration::from_secs(10), "queue drained", || async {
        count(c, "SELECT count(*) FROM killboard.fetch_queue").await == 0
    })
    .await;
    let calls = fake.requests("POST", "/characters/affiliation/");
    let sizes: Vec<usize> = calls
        .iter()
        .map(|r| serde_json::from_slice::<Vec<i64>>(&r.body).unwrap().len())
        .collect();
    assert_eq!(
        sizes,
        vec![1000, 500],
        "exactly two calls of at most 1000 ids"
    );

    // /metrics parses and counts what happened.
    wait_for(Duration::from_secs(10), "gauges refreshed", || async {
        let s = parse_prometheus(&sidecar.metrics().await).unwrap();
        metric(
            &s,
            "killboard_sidecar_cache_events_total",
            &[("cache", "affiliation"), ("event", "miss")],
        ) == 1500.0
            && metric(
                &s,
                "killboard_sidecar_queue_depth",
                &[("kind", "affiliation")],
            ) == 0.0
    })
    .await;
    let text = sidecar.metrics().await;
    let s = parse_prometheus(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(
        metric(
            &s,
            "killboard_sidecar_http_requests_total",
            &[
                ("upstream", "esi"),
                ("endpoint", "affiliation"),
                ("status", "200")
            ]
        ),
        2.0
    );
    assert_eq!(
        metric(&s, "killboard_sidecar_http_requests_total", &[]),
        2.0,
        "no other upstream call"
    );
    assert_eq!(
        metric(
            &s,
            "killboard_sidecar_jobs_total",
            &[("kind", "affiliation"), ("outcome", "done")]
        ),
        1500.0
    );
    assert_eq!(
        metric(
            &s,
            "killboard_sidecar_http_request_duration_seconds_count",
            &[("endpoint", "affiliation")]
        ),
        2.0
    );
    assert_eq!(
        metric(
            &s,
            "killboard_sidecar_cache_entries",
            &[("cache", "affiliation")]
        ),
        1500.0
    );
    assert_eq!(
        metric(&s, "killboard_sidecar_esi_error_limit_remain", &[]),
        100.0
    );
    let health = reqwest::get(format!("http://{}/healthz", sidecar.metrics_addr))
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prices_arriving_recompute_values_of_killmails_without_zkb() {
    let db = db_or_skip!("values");
    let c = &db.client;
    let fake = Fake::start(normal_upstreams(Arc::new(1.into()))).await;
    // Plain SQL rows stand in for ingested killmails without zkb.
    c.batch_execute(
        "INSERT INTO killboard.killmails (killmail_id, killmail_time, solar_system_id, victim_character_id,
                                          victim_corporation_id, victim_ship_type_id, value_source, total_value)
         VALUES (1, now() - interval '1 hour', 30000142, 2112000001, 98000001, 587, 'unknown', 0),
                (2, now() - interval '1 hour', 30000142, 2112000002, 98000001, 999999, 'unknown', 0),
                (3, now() - interval '1 hour', 30000142, 2112000003, 98000001, 587, 'zkb', 1234);
         INSERT INTO killboard.attackers (killmail_id, attacker_index, character_id, corporation_id, final_blow, damage_done)
         VALUES (1, 0, 2112000009, 98000002, true, 10), (2, 0, 2112000009, 98000002, true, 10),
                (3, 0, 2112000009, 98000002, true, 10);
         INSERT INTO killboard.items (killmail_id, item_index, item_type_id, flag, quantity_destroyed, quantity_dropped)
         VALUES (1, 0, 34, 5, 10, 5), (1, 1, 35, 5, 1, 0), (3, 0, 34, 5, 1, 0);",
    )
    .await
    .unwrap();
    let v = c
        .query_one(
            "SELECT value::text, known FROM killboard._price_value(1)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (v.get::<_, String>(0), v.get::<_, bool>(1)),
        ("0".to_string(), false)
    );
    // The sidecar asks for the missing prices itself (queue_missing_prices).
    assert!(c
        .query_one("SELECT killboard.killmail_enrichment(1)", &[])
        .await
        .unwrap()
        .get::<_, Option<Value>>(0)
        .is_none());

    let _sidecar = spawn_sidecar(
        &["run"],
        &db.url,
        Some(&fake),
        &[("--cleanup-interval-ms", "200")],
        "values",
    );
    wait_for(Duration::from_secs(20), "killmail 1 re-valued", || async {
        count(c, "SELECT count(*) FROM killboard.killmails WHERE killmail_id = 1 AND value_source = 'prices'").await == 1
    })
    .await;
    let rows: Vec<(i64, String, String)> = c
        .query("SELECT killmail_id, total_value::text, value_source FROM killboard.killmails ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    // hull 5870 + 15 × 340 + 1 × 350
    assert_eq!(rows[0], (1, "11320.00".into(), "prices".into()));
    assert_eq!(rows[1], (2, "0.00".into(), "unknown".into()));
    assert_eq!(
        rows[2],
        (3, "1234.00".into(), "zkb".into()),
        "zkb values are never touched"
    );
    wait_for(Duration::from_secs(20), "enrichment cached", || async {
        count(
            c,
            "SELECT count(*) FROM killboard.enrichment_cache WHERE killmail_id = 1",
        )
        .await
            == 1
    })
    .await;
    let names: Value = c
        .query_one("SELECT killboard.killmail_enrichment(1)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(names["names"]["2112000001"]["name"], "Name 2112000001");
    assert_eq!(names["names"]["2112000009"]["name"], "Name 2112000009");
    assert_eq!(names["names"]["30000142"]["name"], "Name 30000142");
    if db.has_ingest {
        assert_eq!(
            count(c, "SELECT count(*) FROM killboard.verify_stats()").await,
            0,
            "stats follow the new value"
        );
    } else {
        eprintln!("note: killboard.verify_stats not installed; stats check skipped");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_reject_bad_arguments_with_22023() {
    let db = db_or_skip!("bad_args");
    let c = &db.client;
    for sql in [
        "SELECT * FROM killboard.character_affiliation(0)",
        "SELECT * FROM killboard.corporation_history(-5)",
        "SELECT killboard.price(0)",
        "SELECT killboard.price(34, 'evepraisal')",
        "SELECT killboard.price(34, 'janice', -1)",
        "SELECT killboard.killmail_enrichment(0)",
    ] {
        let e = c.query(sql, &[]).await.expect_err(sql);
        assert_eq!(
            e.code(),
            Some(&tokio_postgres::error::SqlState::INVALID_PARAMETER_VALUE),
            "{sql}: {e:?}"
        );
    }
    assert_eq!(
        count(c, "SELECT count(*) FROM killboard.fetch_queue").await,
        0
    );
    // A read-only transaction still answers, without queueing.
    c.batch_execute("BEGIN READ ONLY").await.unwrap();
    let p: Option<String> = c
        .query_one("SELECT killboard.price(34)::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(p, None);
    c.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        count(c, "SELECT count(*) FROM killboard.fetch_queue").await,
        0
    );
}

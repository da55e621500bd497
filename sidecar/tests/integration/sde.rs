use std::process::Command;

use crate::db_or_skip;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sde_load_replaces_tables_in_one_transaction() {
    let Some(data) = shared_data() else {
        eprintln!("SKIPPED sde test: shared data not found; set KILLBOARD_SHARED");
        return;
    };
    let db = db_or_skip!("sde");
    let c = &db.client;
    for round in 0..2 {
        let out = Command::new(env!("CARGO_BIN_EXE_killboard-sidecar"))
            .args(["sde", "load"])
            .arg(data.join("sde"))
            .env("KILLBOARD_DATABASE_URL", &db.url)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "round {round}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(lines.contains("sde_types\t46984"), "{lines}");
    }
    // Header-less invTypes with \N, meta groups joined, jumps in both directions.
    let r = c
        .query_one("SELECT name, group_id, meta_group_id, parent_type_id, published FROM killboard.sde_types WHERE type_id = 3178", &[])
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "Light Neutron Blaster II");
    assert_eq!(r.get::<_, i32>(1), 74);
    assert_eq!(r.get::<_, Option<i32>>(2), Some(2));
    assert_eq!(r.get::<_, Option<i32>>(3), Some(564));
    assert!(r.get::<_, bool>(4));
    assert_eq!(count(c, "SELECT count(*) FROM killboard.sde_types WHERE type_id = 4358 AND name = 'Exotic Dancers, Male' AND race_id IS NULL").await, 1);
    assert_eq!(
        count(c, "SELECT count(*) FROM killboard.sde_jumps j WHERE NOT EXISTS (SELECT 1 FROM killboard.sde_jumps r WHERE r.from_system_id = j.to_system_id AND r.to_system_id = j.from_system_id)").await,
        0
    );
    let r = c.query_one("SELECT region_id, constellation_id, security FROM killboard.sde_systems WHERE solar_system_id = 30000142", &[]).await.unwrap();
    assert_eq!(
        (r.get::<_, i32>(0), r.get::<_, i32>(1)),
        (10000002, 20000020)
    );
    assert!((r.get::<_, f64>(2) - 0.945913).abs() < 1e-6);
    assert_eq!(
        count(
            c,
            "SELECT count(*) FROM killboard.sde_categories WHERE category_id = 6 AND name = 'Ship'"
        )
        .await,
        1
    );

    // A broken directory fails cleanly and leaves the loaded data alone.
    let out = Command::new(env!("CARGO_BIN_EXE_killboard-sidecar"))
        .args(["sde", "load", "/nonexistent-sde-dir"])
        .env("KILLBOARD_DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(
        count(c, "SELECT count(*) FROM killboard.sde_types").await,
        46984
    );
}

//! In-database tests of the stats API: each runs inside one transaction of a pgrx test cluster,
//! so they exercise the per-transaction pending deltas (reads see this transaction's writes before
//! the commit-time flush) and the subtransaction callbacks.

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn ingest(km: &str) -> i64 {
        Spi::get_one_with_args::<i64>("SELECT killboard.ingest($1::jsonb)", &[km.into()])
            .unwrap()
            .unwrap()
    }

    fn stat(id: i64, kind: &str, period: &str, column: &str) -> i64 {
        // The column name comes from the test's own literals, never from input.
        let sql = format!("SELECT {column}::bigint FROM killboard.entity_stats($1, $2, $3)");
        Spi::get_one_with_args::<i64>(&sql, &[id.into(), kind.into(), period.into()])
            .unwrap()
            .unwrap()
    }

    fn differences() -> i64 {
        Spi::get_one::<i64>("SELECT count(*) FROM killboard.verify_stats()")
            .unwrap()
            .unwrap()
    }

    /// Three attackers, two of them in corporation 2002 / alliance 3002; 2001's character lands the final blow.
    const KM: &str = r#"{"killmail_id": 11, "killmail_time": "2021-06-01T12:00:00Z", "solar_system_id": 30000142,
      "victim": {"character_id": 1001, "corporation_id": 2009, "alliance_id": 3009, "ship_type_id": 587, "damage_taken": 300},
      "attackers": [
        {"character_id": 1002, "corporation_id": 2002, "alliance_id": 3002, "ship_type_id": 587, "damage_done": 100},
        {"character_id": 1003, "corporation_id": 2002, "alliance_id": 3002, "ship_type_id": 587, "damage_done": 100},
        {"character_id": 1004, "corporation_id": 2001, "alliance_id": 3001, "ship_type_id": 670, "damage_done": 100, "final_blow": true}],
      "zkb": {"totalValue": 1000000, "points": 5}}"#;

    #[pg_test]
    fn involved_credit_counts_a_shared_corporation_once() {
        ingest(KM);
        assert_eq!(stat(2002, "corporation", "all", "kills"), 1);
        assert_eq!(stat(2002, "corporation", "all", "damage_dealt"), 200);
        assert_eq!(stat(3002, "alliance", "all", "isk_destroyed"), 1_000_000);
        assert_eq!(stat(2001, "corporation", "all", "final_blows"), 1);
        assert_eq!(stat(2002, "corporation", "all", "final_blows"), 0);
        assert_eq!(stat(587, "ship_type", "all", "kills"), 1);
        assert_eq!(stat(587, "ship_type", "all", "losses"), 1);
        assert_eq!(stat(3009, "alliance", "all", "losses"), 1);
        assert_eq!(differences(), 0);
    }

    #[pg_test]
    fn final_blow_credit_counts_only_the_final_blow() {
        ingest(KM);
        Spi::run("SET LOCAL killboard.kill_credit = 'final_blow'").unwrap();
        Spi::run("SELECT killboard.rebuild_stats()").unwrap();
        assert_eq!(stat(2002, "corporation", "all", "kills"), 0);
        assert_eq!(stat(2001, "corporation", "all", "kills"), 1);
        assert_eq!(stat(1001, "character", "all", "losses"), 1);
        assert_eq!(differences(), 0);
    }

    #[pg_test(error = "invalid value for parameter \"killboard.kill_credit\": \"everyone\"")]
    fn unknown_credit_mode_is_refused_when_set() {
        Spi::run("SET LOCAL killboard.kill_credit = 'everyone'").unwrap();
    }

    #[pg_test(error = "entity_id: must be a positive id, got -7")]
    fn negative_entity_id_is_an_error() {
        stat(-7, "character", "all", "kills");
    }

    #[pg_test]
    fn an_aborted_subtransaction_leaves_no_trace() {
        ingest(KM);
        let km12 = KM.replace("\"killmail_id\": 11", "\"killmail_id\": 12");
        Spi::run_with_args(
            "CREATE TEMP TABLE undo_km AS SELECT $1::jsonb AS km",
            &[km12.as_str().into()],
        )
        .unwrap();
        // The EXCEPTION clause runs the block in a subtransaction, rolled back after the raise.
        Spi::run(
            r#"DO $$ BEGIN
                 PERFORM killboard.ingest(km) FROM undo_km;
                 RAISE EXCEPTION 'undo';
               EXCEPTION WHEN raise_exception THEN NULL;
               END $$"#,
        )
        .unwrap();
        assert_eq!(stat(2002, "corporation", "all", "kills"), 1);
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM killboard.killmails")
                .unwrap()
                .unwrap(),
            1
        );
        assert_eq!(differences(), 0);
    }

    #[pg_test]
    fn plain_update_and_delete_move_stats_by_the_difference() {
        ingest(KM);
        Spi::run("UPDATE killboard.killmails SET total_value = 2500000 WHERE killmail_id = 11")
            .unwrap();
        assert_eq!(stat(3002, "alliance", "all", "isk_destroyed"), 2_500_000);
        assert_eq!(differences(), 0);
        Spi::run("DELETE FROM killboard.killmails WHERE killmail_id = 11").unwrap();
        assert_eq!(stat(3002, "alliance", "all", "kills"), 0);
        assert_eq!(stat(587, "ship_type", "all", "losses"), 0);
        assert_eq!(differences(), 0);
    }

    #[pg_test]
    fn stored_stats_equal_live_recomputation_for_every_entity() {
        ingest(KM);
        ingest(
            &KM.replace("\"killmail_id\": 11", "\"killmail_id\": 13")
                .replace("2021-06-01", "2021-06-02"),
        );
        let mismatched = Spi::get_one::<i64>(
            "WITH e(id, kind) AS (VALUES (1001,'character'),(1002,'character'),(1004,'character'),
                                      (2001,'corporation'),(2002,'corporation'),(2009,'corporation'),
                                      (3001,'alliance'),(3002,'alliance'),(3009,'alliance'),
                                      (587,'ship_type'),(670,'ship_type'),(30000142,'solar_system'))
             SELECT count(*) FROM e, unnest(ARRAY['all','90d','30d','14d','7d','24h']) p
             WHERE (SELECT s FROM killboard.entity_stats(e.id, e.kind, p) s)
                   IS DISTINCT FROM (SELECT l FROM killboard.entity_stats_live(e.id, e.kind, p) l)",
        )
        .unwrap()
        .unwrap();
        assert_eq!(mismatched, 0);
        assert_eq!(stat(2002, "corporation", "all", "kills"), 2);
    }
}

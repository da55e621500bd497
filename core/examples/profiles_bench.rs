//! Matcher benchmark without SQL: 10k mixed profiles, one killmail.
//! `cargo run --release -p killboard-core --example profiles_bench`
//! Prints index rebuild time, p50/p99 of index+predicates per killmail, and
//! the same match by evaluating every compiled profile (brute force).

use killboard_core::profiles::{compile_doc, KillmailView, PartyView, ProfileIndex};
use killboard_core::sde::{JumpGraph, ModuleTag};
use serde_json::json;
use std::time::Instant;

const TAGS: [&str; 8] = [
    "T2",
    "Faction",
    "Laser",
    "Hybrid",
    "Missile",
    "Officer",
    "Deadspace",
    "Drone",
];
const BANDS: [&str; 3] = ["highsec", "lowsec", "nullsec"];

fn main() {
    let graph = JumpGraph::from_edges((30000000..30000400).map(|s| (s, s + 1)));
    let docs: Vec<_> = (0..10_000i64)
        .map(|g| match g % 10 {
            0 => json!({"solar_system_ids": [30000000 + (g * 7) % 400]}),
            1 => json!({"victim_corporation_ids": [98000000 + g % 500], "min_value": 1000000}),
            2 => json!({"attacker_alliance_ids": [99000000 + g % 400]}),
            3 => {
                let tag = TAGS[(g % 8) as usize];
                let band = BANDS[(g % 3) as usize];
                json!({"module_tags": [tag], "security_band": [band], "min_value": (g % 7) * 50000000})
            }
            4 => json!({"involved_character_ids": [90000000 + g % 1000, 90000100 + g % 977]}),
            5 => json!({"region_ids": [10000000 + g % 70], "victim_ship_group_ids": [25 + g % 5]}),
            6 => json!({"any": [{"victim_alliance_ids": [99000000 + g % 300]}, {"solar_system_ids": [30000000 + (g * 11) % 400]}]}),
            7 => json!({"attacker_ship_type_ids": [580 + g % 50], "not": {"npc": true}}),
            8 => json!({"within_jumps": {"system_id": 30000000 + (g * 13) % 400, "jumps": g % 3}}),
            _ if g % 100 == 9 => json!({"min_attackers": 5 + g % 20}),
            _ => json!({"victim_character_ids": [90000000 + g % 2000]}),
        })
        .collect();

    let t = Instant::now();
    let compiled: Vec<_> = docs
        .iter()
        .map(|d| compile_doc(d, &graph).expect("valid"))
        .collect();
    let mut index = ProfileIndex::new();
    for (i, c) in compiled.iter().enumerate() {
        index.insert(i as i64, c.keys.as_deref());
    }
    let rebuild_ms = t.elapsed().as_secs_f64() * 1000.0;

    let km = KillmailView {
        killmail_id: 1,
        solar_system_id: 30000142,
        constellation_id: Some(20000020),
        region_id: Some(10000002),
        security: Some(0.95),
        victim: PartyView {
            character_id: Some(90000001),
            corporation_id: Some(98000001),
            alliance_id: Some(99000001),
            ship_type_id: Some(587),
            ship_group_id: Some(25),
            ship_category_id: Some(6),
            ..Default::default()
        },
        attackers: (0..10)
            .map(|g| PartyView {
                character_id: Some(90000100 + g),
                corporation_id: Some(98000100 + g % 5),
                alliance_id: Some(99000100 + g % 3),
                ship_type_id: Some(587),
                ship_group_id: Some(25),
                ship_category_id: Some(6),
                ..Default::default()
            })
            .collect(),
        attacker_count: 10,
        module_tags: ModuleTag::T2.bit() | ModuleTag::Projectile.bit(),
        total_value: 150_000_000.0,
        ..Default::default()
    };
    let percentiles = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        (v[v.len() / 2], v[v.len() * 99 / 100])
    };
    let mut indexed = Vec::new();
    let mut n_idx = 0;
    for _ in 0..20_000 {
        let t = Instant::now();
        let m: Vec<i64> = index
            .candidates(&km)
            .into_iter()
            .filter(|id| compiled[*id as usize].matches(&km))
            .collect();
        indexed.push(t.elapsed().as_secs_f64() * 1e6);
        n_idx = m.len();
    }
    let mut brute = Vec::new();
    let mut n_brute = 0;
    for _ in 0..2_000 {
        let t = Instant::now();
        n_brute = compiled.iter().filter(|c| c.matches(&km)).count();
        brute.push(t.elapsed().as_secs_f64() * 1e6);
    }
    assert_eq!(n_idx, n_brute);
    let (p50, p99) = percentiles(indexed);
    let (b50, b99) = percentiles(brute);
    println!(
        "profiles 10000, candidates {}, matches {n_idx}",
        index.candidates(&km).len()
    );
    println!("rebuild (parse+compile+index): {rebuild_ms:.1} ms");
    println!("indexed match: p50 {p50:.1} us, p99 {p99:.1} us");
    println!("brute force over all compiled profiles: p50 {b50:.1} us, p99 {b99:.1} us");
}

//! Hostile input against the parsers: mutations of real killmails and filters
//! (deleted fields, wrong types, huge arrays, deep nesting, huge numbers,
//! unicode, duplicate keys, damaged text). Nothing may panic; every error has
//! a SQLSTATE other than XX000 and the JSON path of the problem.
//!
//! Cases per property: KILLBOARD_FUZZ_CASES (default 1000; `make stress` 10000).

use killboard_core::ingest::parse::{decimal_to_cents, parse_any};
use killboard_core::ingest::Killmail;
use killboard_core::model::{AttackerState, KillState, Party, StoredFlags};
use killboard_core::profiles::{parse_filter, view_from_json};
use killboard_core::stats::{credit, CreditMode, DeltaMap, Record};
use killboard_core::windows::mask_for;
use killboard_core::{KillboardError, SqlState};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

fn cases() -> u32 {
    std::env::var("KILLBOARD_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Real killmails: the repository's fixtures plus one of each wrapper shape.
fn seeds() -> Vec<Value> {
    let text = include_str!("../../fixtures/killmails.json");
    let mut out: Vec<Value> =
        serde_json::from_str::<Vec<Value>>(text).expect("fixtures/killmails.json");
    let esi = out[0].clone();
    let id = esi["killmail_id"].clone();
    out.push(json!({"killmail_id": id, "hash": "abc", "esi": esi, "zkb": {"totalValue": 1.5e9, "points": 3}, "sequence_id": 7}));
    out.push(json!({"package": {"killID": id, "killmail": esi, "zkb": {"totalValue": 2e6, "labels": ["pvp"]}}}));
    out
}

fn filter_seeds() -> Vec<Value> {
    vec![
        json!({}),
        json!({"module_tags": ["T2"], "min_value": 100000000, "security_band": ["lowsec"]}),
        json!({"victim_ship_group_ids": [30, 485, 547], "within_jumps": {"system_id": 30003066, "jumps": 5}}),
        json!({"any": [{"min_attackers": 50}, {"min_value": 1000000000}], "not": {"victim_ship_group_ids": [29]}}),
        json!({"all": [{"attacker_alliance_ids": [99000001]}, {"solo": true}], "security_min": -1.0, "security_max": 0.5}),
        json!({"involved_character_ids": [90000001, 90000002], "region_ids": [10000002], "npc": false, "max_value": 5e9}),
    ]
}

/// A small deterministic generator: proptest draws the seed, this spends it.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

fn weird(r: &mut Rng) -> Value {
    match r.below(22) {
        0 => Value::Null,
        1 => json!(true),
        2 => json!("30000142"),
        3 => json!("Ωmega ☠ 漢字 \u{1F680} \u{202E}rtl"),
        4 => json!(-1),
        5 => json!(0),
        6 => json!(i64::MAX),
        7 => json!(u64::MAX),
        8 => json!(1e308),
        9 => json!(-1e308),
        10 => json!(1.5),
        11 => json!(5e-324),
        12 => json!([]),
        13 => json!({}),
        14 => json!(i64::MIN),
        15 => json!("2026-13-45T99:99:99Z"),
        16 => json!("2026-03-25T14:26:36+14:00"),
        17 => json!(2_147_483_648i64),
        18 => Value::String("x".repeat(r.below(20_000))),
        19 => {
            let mut v = json!(1);
            for _ in 0..r.below(200) {
                v = if r.chance(50) {
                    json!([v])
                } else {
                    json!({"items": v})
                };
            }
            v
        }
        20 => json!(9_000_000_000_000_000.0),
        _ => json!(["a", 1, null, {"k": []}]),
    }
}

/// Every (container) node of a document, as a path of keys/indices.
fn paths(v: &Value, here: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    out.push(here.clone());
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                here.push(Step::Key(k.clone()));
                paths(c, here, out);
                here.pop();
            }
        }
        Value::Array(a) => {
            // Large arrays: a few elements are enough.
            for (i, c) in a.iter().enumerate().take(6) {
                here.push(Step::Index(i));
                paths(c, here, out);
                here.pop();
            }
        }
        _ => {}
    }
}

#[derive(Clone, Debug)]
enum Step {
    Key(String),
    Index(usize),
}

fn at<'a>(v: &'a mut Value, path: &[Step]) -> &'a mut Value {
    path.iter().fold(v, |v, s| match s {
        Step::Key(k) => &mut v[k.as_str()],
        Step::Index(i) => &mut v[*i],
    })
}

/// Apply 1–4 random mutations in place.
fn mutate(doc: &mut Value, r: &mut Rng) {
    for _ in 0..1 + r.below(4) {
        let mut all = Vec::new();
        paths(doc, &mut Vec::new(), &mut all);
        let path = all[r.below(all.len())].clone();
        // Numbers at the edges, aimed at numeric leaves (ids, damage, values).
        if r.chance(25) {
            let numeric: Vec<&Vec<Step>> = all
                .iter()
                .filter(|p| at(&mut doc.clone(), p).is_number())
                .collect();
            if !numeric.is_empty() {
                let p = numeric[r.below(numeric.len())].clone();
                *at(doc, &p) = [
                    json!(i64::MAX),
                    json!(i64::MAX - 1),
                    json!(i32::MAX),
                    json!(-1),
                    json!(0),
                    json!(u64::MAX),
                    json!(1e20),
                ][r.below(7)]
                .clone();
                continue;
            }
        }
        let node = at(doc, &path);
        match r.below(10) {
            // Delete a field / element.
            0 | 1 => match node {
                Value::Object(m) if !m.is_empty() => {
                    let k = m.keys().nth(r.below(m.len())).cloned().unwrap_or_default();
                    m.remove(&k);
                }
                Value::Array(a) if !a.is_empty() => {
                    a.remove(r.below(a.len()));
                }
                _ => *node = Value::Null,
            },
            // Wrong type or hostile value.
            2..=4 => *node = weird(r),
            // Huge array: repeat an element.
            5 => {
                if let Value::Array(a) = node {
                    if let Some(first) = a.first().cloned() {
                        // Up to 10k copies, but a few MB at most.
                        let size = first.to_string().len().max(1);
                        let n = [10, 1000, 10_000][r.below(3)].min(4_000_000 / size);
                        a.extend(std::iter::repeat_n(first, n));
                    }
                } else {
                    *node = Value::Array(vec![
                        json!({"item_type_id": 34, "flag": 5});
                        1 + r.below(3000)
                    ]);
                }
            }
            // Numbers at the edges.
            6 => {
                if let Value::Number(n) = node {
                    *node = match r.below(5) {
                        0 => json!(n.as_f64().unwrap_or(0.0) * 1e300),
                        1 => json!(n.as_i64().unwrap_or(1).wrapping_neg()),
                        2 => json!(n.as_f64().unwrap_or(0.0) + 0.5),
                        3 => json!(n.as_i64().unwrap_or(0).wrapping_mul(1 << 33)),
                        _ => json!(n.to_string()),
                    };
                } else {
                    *node = weird(r);
                }
            }
            // Unicode and odd keys.
            7 => {
                if let Value::Object(m) = node {
                    m.insert(
                        ["ключ", "killmail_id\u{0}", "", "💥", "victim "][r.below(5)].to_string(),
                        weird(r),
                    );
                }
            }
            // Deep nesting of the node itself.
            8 => {
                let mut v = node.take();
                for _ in 0..1 + r.below(60) {
                    v = if r.chance(50) {
                        json!({"items": [v], "item_type_id": 34, "flag": 5})
                    } else {
                        json!([v])
                    };
                }
                *node = v;
            }
            // Swap the node with another part of the document (shape confusion).
            _ => {
                let other = all[r.below(all.len())].clone();
                let copy = at(&mut doc.clone(), &other).clone();
                *at(doc, &path) = copy;
            }
        }
    }
}

/// Duplicate keys and damaged bytes only exist in text: serde_json keeps the
/// last duplicate, as jsonb does.
fn text_mutation(doc: &Value, r: &mut Rng) -> Option<Value> {
    let mut text = doc.to_string();
    if r.chance(50) {
        if let Some(pos) = text.find('{') {
            let dup = [
                "\"killmail_id\": \"dup\",",
                "\"attackers\": 7,",
                "\"victim\": null,",
                "\"zkb\": {\"totalValue\": -1},",
            ][r.below(4)];
            text.insert_str(pos + 1, dup);
        }
    } else {
        let mut bytes = text.into_bytes();
        for _ in 0..1 + r.below(3) {
            let i = r.below(bytes.len());
            bytes[i] = b"{}[],:\"0-e.9xn\\ "[r.below(16)];
        }
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    serde_json::from_str(&text).ok()
}

fn check_error(e: &KillboardError, what: &str) {
    assert_ne!(
        e.state,
        SqlState::Internal,
        "{what}: XX000 for hostile input: {e}"
    );
    assert_eq!(e.sqlstate().len(), 5);
    let path = e
        .path
        .as_deref()
        .unwrap_or_else(|| panic!("{what}: error without a JSON path: {e}"));
    assert!(path.starts_with('$'), "{what}: path {path:?}");
    assert!(!e.message.is_empty());
}

fn check_killmail(doc: &Value) {
    match parse_any(doc, "$") {
        Ok(km) => {
            assert!(km.killmail_id > 0 && km.solar_system_id > 0 && km.victim.ship_type_id > 0);
            assert!(!km.attackers.is_empty());
            assert!(km.attackers.iter().all(|a| a.damage_done >= 0));
            if let Some(z) = &km.zkb {
                assert!(z.total_value_cents.is_none_or(|c| c >= 0));
            }
            credit_round_trip(&km);
        }
        Err(e) => check_error(&e, "parse_any"),
    }
    // On-demand matching reads the same documents.
    if let Err(e) = view_from_json(doc) {
        check_error(&e, "view_from_json");
    }
}

/// What ingest does with an accepted killmail: credit it (both modes), encode
/// and decode the records, and take the credit back out to zero.
fn credit_round_trip(km: &Killmail) {
    let party = |ch, co, al, fa, st| Party {
        character_id: ch,
        corporation_id: co,
        alliance_id: al,
        faction_id: fa,
        ship_type_id: st,
        ..Party::default()
    };
    let v = &km.victim;
    let mut k = KillState {
        killmail_id: km.killmail_id,
        time: km.time,
        solar_system_id: km.solar_system_id,
        value_cents: km
            .zkb
            .as_ref()
            .and_then(|z| z.total_value_cents)
            .unwrap_or(0),
        points: km.zkb.as_ref().and_then(|z| z.points).unwrap_or(0),
        victim: party(
            v.character_id,
            v.corporation_id,
            v.alliance_id,
            v.faction_id,
            Some(v.ship_type_id),
        ),
        victim_damage_taken: v.damage_taken,
        attackers: km
            .attackers
            .iter()
            .map(|a| AttackerState {
                party: party(
                    a.character_id,
                    a.corporation_id,
                    a.alliance_id,
                    a.faction_id,
                    a.ship_type_id,
                ),
                damage_done: a.damage_done,
                final_blow: a.final_blow,
            })
            .collect(),
        ..KillState::default()
    };
    k.resolve_flags(StoredFlags::default());
    for mode in [CreditMode::Involved, CreditMode::FinalBlow] {
        let mut map = DeltaMap::new();
        credit(&k, mode, mask_for(k.time, k.time), 1, None, &mut map);
        for r in map.values() {
            let back = Record::decode(&r.encode()).expect("a record decodes");
            assert_eq!(back.periods, r.periods);
        }
        credit(&k, mode, mask_for(k.time, k.time), -1, None, &mut map);
        assert!(map.values().all(|r| r.periods.iter().all(|c| c.is_zero())));
    }
}

fn check_filter(doc: &Value) {
    if let Err(e) = parse_filter(doc) {
        check_error(&e, "parse_filter");
        assert_eq!(
            e.state,
            SqlState::InvalidParameterValue,
            "filters are refused with 22023: {e}"
        );
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn mutated_killmails_never_panic(seed in any::<u64>(), which in any::<usize>()) {
        let seeds = seeds();
        let mut r = Rng(seed);
        let mut doc = seeds[which % seeds.len()].clone();
        mutate(&mut doc, &mut r);
        check_killmail(&doc);
        if let Some(t) = text_mutation(&doc, &mut r) {
            check_killmail(&t);
        }
    }

    #[test]
    fn mutated_filters_never_panic(seed in any::<u64>(), which in any::<usize>()) {
        let seeds = filter_seeds();
        let mut r = Rng(seed);
        let mut doc = seeds[which % seeds.len()].clone();
        mutate(&mut doc, &mut r);
        check_filter(&doc);
        if let Some(t) = text_mutation(&doc, &mut r) {
            check_filter(&t);
        }
    }

    #[test]
    fn decimal_text_never_panics(text in "[-+0-9.eE]{0,40}") {
        if let Some(c) = decimal_to_cents(&text) {
            prop_assert!(c.abs() <= killboard_core::ingest::MAX_VALUE_CENTS);
        }
    }
}

#[test]
fn ten_thousand_attackers_and_items_are_accepted() {
    let mut doc = seeds()[0].clone();
    let a = doc["attackers"][0].clone();
    doc["attackers"] = Value::Array(vec![a; 10_000]);
    doc["victim"]["items"] = Value::Array(vec![
        json!({"item_type_id": 2488, "flag": 27, "quantity_destroyed": 1, "singleton": 0});
        10_000
    ]);
    let km = parse_any(&doc, "$").expect("10k attackers and 10k items");
    assert_eq!((km.attackers.len(), km.items.len()), (10_000, 10_000));
}

#[test]
fn beyond_the_limits_is_54000_with_path() {
    let mut doc = seeds()[0].clone();
    let a = doc["attackers"][0].clone();
    doc["attackers"] = Value::Array(vec![a; killboard_core::ingest::MAX_ATTACKERS + 1]);
    let e = parse_any(&doc, "$").unwrap_err();
    assert_eq!(
        (e.sqlstate(), e.path.as_deref()),
        ("54000", Some("$.attackers"))
    );
    let mut m = Map::new();
    m.insert("any".into(), json!([]));
    let mut f = Value::Object(m);
    for _ in 0..100 {
        f = json!({"not": f});
    }
    assert_eq!(parse_filter(&f).unwrap_err().sqlstate(), "22023");
}

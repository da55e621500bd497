//! Tests of the filter language, matching and the inverted index.
//! Real killmails come from `$KILLBOARD_SHARED/data/esi_killmails` (default
//! `../shared` next to the repository); tests that need them print why they skip.

use super::*;
use crate::error::SqlState;
use crate::sde::{JumpGraph, MemorySde, ModuleTag, SecurityBand, StaticData, TypeInfo};
use compile::{Place, Weak, FLAG_SOLO};
use proptest::prelude::*;
use serde_json::{json, Value};
use std::path::PathBuf;

fn shared_dir() -> PathBuf {
    match std::env::var("KILLBOARD_SHARED") {
        Ok(p) => PathBuf::from(p),
        Err(_) => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared"),
    }
}

/// The Shrike corpus resolved against its trimmed SDE, or None (with a reason printed).
fn corpus() -> Option<Vec<KillmailView>> {
    let dir = shared_dir().join("data/esi_killmails");
    let sde_text = match std::fs::read_to_string(dir.join("sde.json")) {
        Ok(t) => t,
        Err(e) => {
            eprintln!(
                "skipping: {} not readable ({e}); set KILLBOARD_SHARED",
                dir.display()
            );
            return None;
        }
    };
    let sde_json: Value = serde_json::from_str(&sde_text).ok()?;
    let mut sde = MemorySde::from_shrike_json(&sde_json);
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .ok()?
        .filter_map(|e| e.ok())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().to_string();
        if !name.ends_with(".json") || name == "sde.json" || name == "corpus.json" {
            continue;
        }
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(e.path()).ok()?).ok()?;
        out.push(view_from_json(&doc).ok()?.resolve(&mut sde));
    }
    Some(out)
}

fn err_of(doc: Value) -> (SqlState, String) {
    let e = parse_filter(&doc).expect_err("filter should be rejected");
    (e.state, e.path.unwrap_or_default())
}

#[test]
fn empty_filter_matches_everything() {
    let c = compile_doc(&json!({}), &JumpGraph::default()).unwrap();
    assert!(c.keys.is_none());
    assert!(c.matches(&KillmailView::default()));
}

#[test]
fn invalid_filters_are_rejected_with_22023_and_path() {
    let cases = [
        (json!({"colour": "red"}), "$.colour"),
        (json!([]), "$"),
        (json!({"solar_system_ids": 30000142}), "$.solar_system_ids"),
        (json!({"solar_system_ids": []}), "$.solar_system_ids"),
        (
            json!({"solar_system_ids": [30000142, "x"]}),
            "$.solar_system_ids[1]",
        ),
        (
            json!({"victim_character_ids": [-5]}),
            "$.victim_character_ids[0]",
        ),
        (
            json!({"victim_character_ids": [1.5]}),
            "$.victim_character_ids[0]",
        ),
        (
            json!({"involved_ship_type_ids": [587]}),
            "$.involved_ship_type_ids",
        ),
        (
            json!({"any": [{}, {"within_jumps": {"system_id": 30000142, "jumps": -1}}]}),
            "$.any[1].within_jumps.jumps",
        ),
        (
            json!({"within_jumps": {"system_id": 30000142}}),
            "$.within_jumps.jumps",
        ),
        (
            json!({"within_jumps": {"system_id": 30000142, "jumps": 2, "x": 1}}),
            "$.within_jumps.x",
        ),
        (
            json!({"within_jumps": {"system_id": "Jita", "jumps": 2}}),
            "$.within_jumps.system_id",
        ),
        (
            json!({"within_jumps": {"system_id": 30000142, "jumps": 101}}),
            "$.within_jumps.jumps",
        ),
        (
            json!({"module_tags": ["T2", "Railgun"]}),
            "$.module_tags[1]",
        ),
        (json!({"module_tags": "T2"}), "$.module_tags"),
        (
            json!({"security_band": ["lowsec", "deep"]}),
            "$.security_band[1]",
        ),
        (json!({"security_min": 2}), "$.security_min"),
        (
            json!({"security_min": 0.5, "security_max": 0.1}),
            "$.security_max",
        ),
        (json!({"min_value": -1}), "$.min_value"),
        (json!({"min_value": "100"}), "$.min_value"),
        (json!({"min_value": 10, "max_value": 5}), "$.max_value"),
        (json!({"min_attackers": -1}), "$.min_attackers"),
        (json!({"solo": "yes"}), "$.solo"),
        (json!({"npc": 1}), "$.npc"),
        (json!({"any": []}), "$.any"),
        (json!({"any": {}}), "$.any"),
        (json!({"all": [{"awox": true}, 3]}), "$.all[1]"),
        (json!({"not": {"not": {"bogus": 1}}}), "$.not.not.bogus"),
        (json!({"not": [1]}), "$.not"),
    ];
    for (doc, path) in cases {
        let (state, got) = err_of(doc.clone());
        assert_eq!(state, SqlState::InvalidParameterValue, "{doc}");
        assert_eq!(got, path, "{doc}");
    }
    let e = parse_filter(&json!({"module_tags": ["Railgun"]})).unwrap_err();
    assert!(e.message.contains("unknown module tag"), "{}", e.message);
    assert_eq!(e.sqlstate(), "22023");
}

#[test]
fn deep_nesting_is_bounded() {
    let mut doc = json!({});
    for _ in 0..40 {
        doc = json!({ "not": doc });
    }
    assert_eq!(err_of(doc).0, SqlState::InvalidParameterValue);
}

#[test]
fn valid_filter_with_every_leaf_parses() {
    let doc = json!({
        "solar_system_ids": [30000142], "constellation_ids": [20000020], "region_ids": [10000002],
        "security_band": ["highsec", "lowsec", "nullsec", "wormhole", "pochven"],
        "security_min": -1.0, "security_max": 1,
        "within_jumps": {"system_id": 30000142, "jumps": 0},
        "victim_character_ids": [1], "victim_corporation_ids": [2], "victim_alliance_ids": [3], "victim_faction_ids": [4],
        "attacker_character_ids": [1], "attacker_corporation_ids": [2], "attacker_alliance_ids": [3], "attacker_faction_ids": [4],
        "involved_character_ids": [1], "involved_corporation_ids": [2], "involved_alliance_ids": [3], "involved_faction_ids": [4],
        "victim_ship_type_ids": [587], "victim_ship_group_ids": [25], "victim_ship_category_ids": [6],
        "attacker_ship_type_ids": [587], "attacker_ship_group_ids": [25], "attacker_ship_category_ids": [6],
        "module_tags": ["T1", "T2", "Faction", "Deadspace", "Officer", "Storyline", "Hybrid", "Projectile", "Laser", "Missile", "Drone"],
        "min_value": 0, "max_value": 1e12, "min_attackers": 1, "max_attackers": 10,
        "solo": false, "npc": false, "awox": false,
        "any": [{}], "all": [{}], "not": {"npc": true}
    });
    validate(&doc).unwrap();
}

/// A hand-built killmail so leaf tests run without the shared data.
fn sample() -> KillmailView {
    KillmailView {
        killmail_id: 1,
        solar_system_id: 30002813,
        constellation_id: Some(20000411),
        region_id: Some(10000033),
        security: Some(0.3),
        victim: PartyView {
            character_id: Some(90000001),
            corporation_id: Some(98000001),
            alliance_id: Some(99000001),
            faction_id: None,
            ship_type_id: Some(17740),
            ship_group_id: Some(27),
            ship_category_id: Some(6),
        },
        attackers: vec![
            PartyView {
                character_id: Some(90000002),
                corporation_id: Some(98000002),
                ship_type_id: Some(11987),
                ship_group_id: Some(358),
                ship_category_id: Some(6),
                ..Default::default()
            },
            PartyView {
                corporation_id: Some(1000125),
                faction_id: Some(500021),
                ship_type_id: Some(3880),
                ship_group_id: Some(1288),
                ship_category_id: Some(11),
                ..Default::default()
            },
        ],
        attacker_count: 2,
        module_tags: ModuleTag::T2.bit() | ModuleTag::Hybrid.bit(),
        total_value: 250_000_000.0,
        solo: false,
        npc: false,
        awox: true,
    }
}

fn m(doc: Value, km: &KillmailView, graph: &JumpGraph) -> bool {
    compile_doc(&doc, graph).unwrap().matches(km)
}

#[test]
fn each_leaf_matches_and_rejects_on_a_fixture() {
    let km = sample();
    let g = JumpGraph::from_edges([
        (30002813, 30002812),
        (30002812, 30002811),
        (30002811, 30002810),
    ]);
    let pairs = [
        (
            json!({"solar_system_ids": [30002813]}),
            json!({"solar_system_ids": [30000142]}),
        ),
        (
            json!({"constellation_ids": [20000411]}),
            json!({"constellation_ids": [20000020]}),
        ),
        (
            json!({"region_ids": [10000033]}),
            json!({"region_ids": [10000002]}),
        ),
        (
            json!({"security_band": ["lowsec"]}),
            json!({"security_band": ["highsec", "nullsec"]}),
        ),
        (json!({"security_min": 0.2}), json!({"security_min": 0.5})),
        (json!({"security_max": 0.3}), json!({"security_max": 0.1})),
        (
            json!({"within_jumps": {"system_id": 30002811, "jumps": 2}}),
            json!({"within_jumps": {"system_id": 30002810, "jumps": 2}}),
        ),
        (
            json!({"victim_character_ids": [90000001]}),
            json!({"victim_character_ids": [90000002]}),
        ),
        (
            json!({"victim_corporation_ids": [98000001]}),
            json!({"victim_corporation_ids": [98000002]}),
        ),
        (
            json!({"victim_alliance_ids": [99000001]}),
            json!({"victim_alliance_ids": [99000002]}),
        ),
        (
            json!({"attacker_faction_ids": [500021]}),
            json!({"victim_faction_ids": [500021]}),
        ),
        (
            json!({"attacker_character_ids": [90000002]}),
            json!({"attacker_character_ids": [90000001]}),
        ),
        (
            json!({"attacker_corporation_ids": [1000125]}),
            json!({"attacker_corporation_ids": [98000001]}),
        ),
        (
            json!({"attacker_alliance_ids": [5]}),
            json!({"attacker_alliance_ids": [99000001]}),
        )
            .clone(),
        (
            json!({"involved_character_ids": [90000001]}),
            json!({"involved_character_ids": [7]}),
        ),
        (
            json!({"involved_corporation_ids": [98000002]}),
            json!({"involved_corporation_ids": [7]}),
        ),
        (
            json!({"involved_alliance_ids": [99000001]}),
            json!({"involved_alliance_ids": [7]}),
        ),
        (
            json!({"involved_faction_ids": [500021]}),
            json!({"involved_faction_ids": [7]}),
        ),
        (
            json!({"victim_ship_type_ids": [17740]}),
            json!({"victim_ship_type_ids": [11987]}),
        ),
        (
            json!({"victim_ship_group_ids": [27]}),
            json!({"victim_ship_group_ids": [358]}),
        ),
        (
            json!({"victim_ship_category_ids": [6]}),
            json!({"victim_ship_category_ids": [11]}),
        ),
        (
            json!({"attacker_ship_type_ids": [3880]}),
            json!({"attacker_ship_type_ids": [17740]}),
        ),
        (
            json!({"attacker_ship_group_ids": [358]}),
            json!({"attacker_ship_group_ids": [27]}),
        ),
        (
            json!({"attacker_ship_category_ids": [11]}),
            json!({"attacker_ship_category_ids": [65]}),
        ),
        (
            json!({"module_tags": ["T2"]}),
            json!({"module_tags": ["Faction", "Laser"]}),
        ),
        (
            json!({"min_value": 100000000}),
            json!({"min_value": 300000000}),
        ),
        (
            json!({"max_value": 300000000}),
            json!({"max_value": 100000000}),
        ),
        (json!({"min_attackers": 2}), json!({"min_attackers": 3})),
        (json!({"max_attackers": 2}), json!({"max_attackers": 1})),
        (json!({"solo": false}), json!({"solo": true})),
        (json!({"npc": false}), json!({"npc": true})),
        (json!({"awox": true}), json!({"awox": false})),
        (
            json!({"any": [{"npc": true}, {"awox": true}]}),
            json!({"any": [{"npc": true}, {"solo": true}]}),
        ),
        (
            json!({"all": [{"awox": true}, {"min_attackers": 2}]}),
            json!({"all": [{"awox": true}, {"min_attackers": 3}]}),
        ),
        (
            json!({"not": {"npc": true}}),
            json!({"not": {"awox": true}}),
        ),
        (
            json!({"security_band": ["lowsec"], "module_tags": ["T2"], "min_value": 1e8}),
            json!({"security_band": ["lowsec"], "module_tags": ["T2"], "min_value": 1e9}),
        ),
    ];
    // "attacker_alliance_ids: [5]" is the one pair whose first half must not match.
    for (yes, no) in pairs {
        if yes == json!({"attacker_alliance_ids": [5]}) {
            assert!(!m(yes.clone(), &km, &g));
            continue;
        }
        assert!(m(yes.clone(), &km, &g), "should match: {yes}");
        assert!(!m(no.clone(), &km, &g), "should not match: {no}");
    }
}

#[test]
fn unknown_facts_do_not_satisfy_leaves() {
    let km = KillmailView {
        solar_system_id: 30000142,
        ..Default::default()
    };
    let g = JumpGraph::default();
    for doc in [
        json!({"region_ids": [10000002]}),
        json!({"security_band": ["highsec", "lowsec", "nullsec", "wormhole", "pochven"]}),
        json!({"security_min": -1}),
        json!({"victim_ship_group_ids": [25]}),
        json!({"module_tags": ["T1"]}),
        json!({"min_value": 1}),
    ] {
        assert!(!m(doc.clone(), &km, &g), "{doc}");
    }
    assert!(m(json!({"max_value": 0, "solo": false}), &km, &g));
}

#[test]
fn index_keys_pick_the_selective_conjunct_and_fall_back_to_always() {
    let g = JumpGraph::default();
    let keys = |d: Value| compile_doc(&d, &g).unwrap().keys;
    assert_eq!(
        keys(json!({"solar_system_ids": [30000142], "module_tags": ["T2"]})),
        Some(vec![Key::System(30000142)])
    );
    assert_eq!(
        keys(json!({"module_tags": ["T2"], "min_value": 5})),
        Some(vec![Key::Tag(ModuleTag::T2 as u8)])
    );
    assert_eq!(keys(json!({"min_value": 5})), None);
    // Flags asked to be true and attacker minimums are keys; their opposites
    // are not.
    assert_eq!(
        keys(json!({"solo": true, "min_value": 5})),
        Some(vec![Key::Flag(FLAG_SOLO)])
    );
    assert_eq!(keys(json!({"solo": false})), None);
    assert_eq!(
        keys(json!({"min_attackers": 14})),
        Some(vec![Key::Attackers(8)])
    );
    assert_eq!(keys(json!({"min_attackers": 0})), None);
    assert_eq!(keys(json!({"max_attackers": 3})), None);
    assert_eq!(keys(json!({"not": {"solar_system_ids": [1]}})), None);
    assert_eq!(
        keys(json!({"any": [{"solar_system_ids": [1]}, {"min_value": 5}]})),
        None
    );
    assert_eq!(
        keys(json!({"any": [{"solar_system_ids": [1]}, {"victim_character_ids": [9]}]})),
        Some(vec![Key::System(1), Key::Character(9)])
    );
    let g = JumpGraph::from_edges([(1, 2), (2, 3)]);
    assert_eq!(
        compile_doc(&json!({"within_jumps": {"system_id": 1, "jumps": 1}}), &g)
            .unwrap()
            .keys,
        Some(vec![Key::System(1), Key::System(2)])
    );
}

/// A band (or region) AND a tag (or ship group…) waits for killmails with both,
/// instead of being a candidate on every killmail of the band.
#[test]
fn weak_conjuncts_pair_up_and_still_find_their_killmails() {
    let g = JumpGraph::default();
    let c = compile_doc(
        &json!({"security_band": ["highsec"], "module_tags": ["T2", "Laser"], "min_value": 5}),
        &g,
    )
    .unwrap();
    let hs = SecurityBand::Highsec as u8;
    let mut want = vec![
        Key::Pair(Place::Band(hs), Weak::Tag(ModuleTag::T2 as u8)),
        Key::Pair(Place::Band(hs), Weak::Tag(ModuleTag::Laser as u8)),
    ];
    want.sort_unstable();
    assert_eq!(c.keys, Some(want));
    let region_group = compile_doc(
        &json!({"region_ids": [10000002], "victim_ship_group_ids": [25]}),
        &g,
    )
    .unwrap();
    assert_eq!(
        region_group.keys,
        Some(vec![Key::Pair(
            Place::Region(10000002),
            Weak::ShipGroup(25)
        )])
    );
    let mut index = ProfileIndex::new();
    index.insert(1, c.keys.as_deref());
    index.insert(2, region_group.keys.as_deref());
    let km = |tags: u32, group: i32| KillmailView {
        solar_system_id: 30000142,
        region_id: Some(10000002),
        security: Some(0.9),
        module_tags: tags,
        total_value: 10.0,
        victim: PartyView {
            ship_group_id: Some(group),
            ..Default::default()
        },
        ..Default::default()
    };
    assert_eq!(
        index.candidates(&km(ModuleTag::Laser.bit() | ModuleTag::T1.bit(), 25)),
        vec![1, 2]
    );
    assert_eq!(
        index.candidates(&km(ModuleTag::Projectile.bit(), 26)),
        Vec::<i64>::new()
    );
    assert!(c.matches(&km(ModuleTag::T2.bit(), 26)) && region_group.matches(&km(0, 25)));
}

/// Without zkb the flags are derived as ingest derives them; zkb's own flags win.
#[test]
fn json_without_zkb_derives_flags_like_ingest() {
    let mut sde = MemorySde::default();
    sde.types.insert(
        587,
        TypeInfo {
            group_id: 25,
            category_id: Some(6),
            meta_group_id: None,
            market_group_id: None,
        },
    );
    let esi = |attackers: Value| {
        json!({"killmail_id": 7, "solar_system_id": 30000142,
               "victim": {"ship_type_id": 587, "character_id": 90000001, "corporation_id": 98000001},
               "attackers": attackers})
    };
    let player = |ch: i64, corp: i64, fb: bool| json!({"character_id": ch, "corporation_id": corp, "ship_type_id": 587, "final_blow": fb});
    let rat = json!({"corporation_id": 1000125, "ship_type_id": 587, "final_blow": true});

    let solo = view_from_json(&esi(json!([player(90000002, 98000002, true)])))
        .unwrap()
        .resolve(&mut sde);
    assert_eq!((solo.npc, solo.solo, solo.awox), (false, true, false));
    let npc = view_from_json(&esi(json!([rat.clone()])))
        .unwrap()
        .resolve(&mut sde);
    assert_eq!((npc.npc, npc.solo, npc.awox), (true, false, false));
    let awox = view_from_json(&esi(json!([
        player(90000002, 98000001, true),
        player(90000003, 98000002, false)
    ])))
    .unwrap()
    .resolve(&mut sde);
    assert_eq!((awox.npc, awox.solo, awox.awox), (false, false, true));
    // The same flags ingest stores for this killmail.
    let mut state = crate::model::KillState {
        victim: crate::model::Party {
            character_id: Some(90000001),
            corporation_id: Some(98000001),
            ship_type_id: Some(587),
            ship_group_id: Some(25),
            ship_category_id: Some(6),
            ..Default::default()
        },
        attackers: vec![crate::model::AttackerState {
            party: crate::model::Party {
                character_id: Some(90000002),
                corporation_id: Some(98000002),
                ship_type_id: Some(587),
                ship_group_id: Some(25),
                ship_category_id: Some(6),
                ..Default::default()
            },
            damage_done: 1,
            final_blow: true,
        }],
        ..Default::default()
    };
    state.resolve_flags(crate::model::StoredFlags::default());
    assert_eq!(
        (state.flags.npc, state.flags.solo, state.flags.awox),
        (solo.npc, solo.solo, solo.awox)
    );
    // zkb's flags win over the derivation, each on its own.
    let mut doc = esi(json!([player(90000002, 98000002, true)]));
    doc["zkb"] = json!({"solo": false});
    let given = view_from_json(&doc).unwrap().resolve(&mut sde);
    assert_eq!((given.npc, given.solo), (false, false));
    // Profiles see the derived flags.
    let solo_profile = compile_doc(
        &json!({"solo": true, "not": {"npc": true}}),
        &JumpGraph::default(),
    )
    .unwrap();
    assert!(
        solo_profile.matches(&solo) && !solo_profile.matches(&npc) && !solo_profile.matches(&given)
    );
}

#[test]
fn json_shapes_are_all_read() {
    let esi = json!({"killmail_id": 5, "killmail_time": "2020-01-01T00:00:00Z", "solar_system_id": 30000142,
        "victim": {"ship_type_id": 587, "character_id": 9, "items": [
            {"item_type_id": 3082, "flag": 27, "singleton": 0, "items": [{"item_type_id": 230, "flag": 27}]}]},
        "attackers": [{"character_id": 10, "final_blow": true}]});
    let JsonKillmail {
        view: km, items, ..
    } = view_from_json(&esi).unwrap();
    assert_eq!(
        (
            km.killmail_id,
            km.victim.character_id,
            km.attacker_count,
            km.total_value
        ),
        (5, Some(9), 1, 0.0)
    );
    assert_eq!(items.len(), 2);
    assert!(items[0].top_level && !items[1].top_level);
    let r2z2 =
        json!({"killmail_id": 5, "esi": esi.clone(), "zkb": {"totalValue": 12.5, "solo": true}});
    let km = view_from_json(&r2z2)
        .unwrap()
        .resolve(&mut MemorySde::default());
    assert_eq!((km.total_value, km.solo), (12.5, true));
    let redisq = json!({"package": {"killID": 5, "killmail": esi.clone(), "zkb": {"npc": true}}});
    assert!(
        view_from_json(&redisq)
            .unwrap()
            .resolve(&mut MemorySde::default())
            .npc
    );
    let e = view_from_json(&json!({"killmail_id": 5})).unwrap_err();
    assert_eq!(e.path.as_deref(), Some("$.solar_system_id"));
}

#[test]
fn real_killmails_each_leaf_matches_itself_and_not_a_stranger() {
    let Some(corpus) = corpus() else { return };
    assert!(corpus.len() >= 100, "corpus has {} killmails", corpus.len());
    let g = JumpGraph::default();
    let mut checked = 0;
    for km in &corpus {
        let mut yes = vec![json!({"solar_system_ids": [km.solar_system_id]})];
        let mut no = vec![json!({"solar_system_ids": [1]})];
        if let Some(r) = km.region_id {
            yes.push(json!({"region_ids": [r]}));
            no.push(json!({"region_ids": [1]}));
            yes.push(json!({"constellation_ids": [km.constellation_id]}));
        }
        if let Some(b) = km.band() {
            yes.push(json!({"security_band": [b.name()]}));
            let other: Vec<_> = crate::sde::SecurityBand::ALL
                .iter()
                .filter(|x| **x != b)
                .map(|x| x.name())
                .collect();
            no.push(json!({"security_band": other}));
        }
        if let Some(c) = km.victim.character_id {
            yes.push(json!({"victim_character_ids": [c]}));
            yes.push(json!({"involved_character_ids": [c]}));
        }
        if let Some(c) = km.victim.corporation_id {
            yes.push(json!({"victim_corporation_ids": [c]}));
        }
        if let Some(t) = km.victim.ship_type_id {
            yes.push(json!({"victim_ship_type_ids": [t]}));
            no.push(json!({"victim_ship_type_ids": [1]}));
        }
        if let Some(gid) = km.victim.ship_group_id {
            yes.push(json!({"victim_ship_group_ids": [gid]}));
        }
        if let Some(cat) = km.victim.ship_category_id {
            yes.push(json!({"victim_ship_category_ids": [cat]}));
        }
        if let Some(a) = km.attackers.iter().find_map(|a| a.corporation_id) {
            yes.push(json!({"attacker_corporation_ids": [a]}));
        }
        if let Some(a) = km.attackers.iter().find_map(|a| a.ship_group_id) {
            yes.push(json!({"attacker_ship_group_ids": [a]}));
        }
        let tags: Vec<_> = ModuleTag::ALL
            .iter()
            .filter(|t| km.module_tags & t.bit() != 0)
            .map(|t| t.name())
            .collect();
        if !tags.is_empty() {
            yes.push(json!({"module_tags": tags}));
            let absent: Vec<_> = ModuleTag::ALL
                .iter()
                .filter(|t| km.module_tags & t.bit() == 0)
                .map(|t| t.name())
                .collect();
            if !absent.is_empty() {
                no.push(json!({"module_tags": absent}));
            }
        }
        yes.push(json!({"min_attackers": km.attacker_count, "max_attackers": km.attacker_count}));
        no.push(json!({"min_attackers": km.attacker_count + 1}));
        no.push(json!({"not": {}}));
        for d in &yes {
            assert!(
                m(d.clone(), km, &g),
                "killmail {} should match {d}",
                km.killmail_id
            );
        }
        for d in &no {
            assert!(
                !m(d.clone(), km, &g),
                "killmail {} should not match {d}",
                km.killmail_id
            );
        }
        checked += yes.len() + no.len();
    }
    assert!(checked > 1000);
    // The corpus has T2 and faction fits and hybrid/projectile weapons; tags must show up.
    for t in [ModuleTag::T1, ModuleTag::T2, ModuleTag::Faction] {
        assert!(
            corpus.iter().any(|k| k.module_tags & t.bit() != 0),
            "no {} fit in corpus",
            t.name()
        );
    }
}

// ---------------------------------------------------------------------------
// Property: index-selected results equal evaluating every profile.
// ---------------------------------------------------------------------------

const SYSTEMS: &[i64] = &[30000142, 30002813, 30002812, 30002811, 30000144, 31000005];
const IDS: &[i64] = &[
    90000001, 90000002, 98000001, 98000002, 99000001, 1000125, 500021,
];

fn leaf_strategy() -> impl Strategy<Value = Value> {
    let ids = proptest::sample::subsequence(IDS.to_vec(), 1..3);
    let sys = proptest::sample::subsequence(SYSTEMS.to_vec(), 1..3);
    let tags = proptest::sample::subsequence(ModuleTag::names(), 1..3);
    let bands = proptest::sample::subsequence(
        vec!["highsec", "lowsec", "nullsec", "wormhole", "pochven"],
        1..3,
    );
    let party_key = proptest::sample::select(vec![
        "victim_character_ids",
        "attacker_character_ids",
        "involved_character_ids",
        "victim_corporation_ids",
        "attacker_corporation_ids",
        "involved_corporation_ids",
        "victim_alliance_ids",
        "involved_alliance_ids",
        "attacker_faction_ids",
        "involved_faction_ids",
    ]);
    let ship_key = proptest::sample::select(vec![
        "victim_ship_group_ids",
        "attacker_ship_group_ids",
        "victim_ship_category_ids",
        "attacker_ship_category_ids",
    ]);
    prop_oneof![
        sys.clone().prop_map(|s| json!({"solar_system_ids": s})),
        (proptest::sample::select(SYSTEMS.to_vec()), 0u32..3)
            .prop_map(|(s, j)| json!({"within_jumps": {"system_id": s, "jumps": j}})),
        proptest::sample::subsequence(vec![10000002i64, 10000033, 11000001], 1..2)
            .prop_map(|r| json!({"region_ids": r})),
        bands.prop_map(|b| json!({"security_band": b})),
        (-1.0f64..1.0).prop_map(|x| json!({"security_min": x})),
        (party_key, ids).prop_map(|(k, v)| json!({ k: v })),
        (
            ship_key,
            proptest::sample::subsequence(vec![6i64, 11, 25, 27, 358], 1..3)
        )
            .prop_map(|(k, v)| json!({ k: v })),
        tags.prop_map(|t| json!({"module_tags": t})),
        (0u32..7).prop_map(|n| json!({"min_attackers": n})),
        any::<bool>().prop_map(|b| json!({"solo": b})),
        any::<bool>().prop_map(|b| json!({"npc": b})),
        (0.0f64..5e8).prop_map(|v| json!({"min_value": v})),
        any::<bool>().prop_map(|b| json!({"awox": b})),
        Just(json!({})),
    ]
}

fn filter_strategy() -> impl Strategy<Value = Value> {
    leaf_strategy().prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 1..3).prop_map(|v| json!({"any": v})),
            proptest::collection::vec(inner.clone(), 1..3).prop_map(|v| json!({"all": v})),
            inner.clone().prop_map(|f| json!({"not": f})),
            (inner.clone(), inner).prop_map(|(a, b)| {
                // Merge two objects' keys (AND); on clash keep `a`'s.
                let mut o = b.as_object().cloned().unwrap_or_default();
                for (k, v) in a.as_object().cloned().unwrap_or_default() {
                    o.insert(k, v);
                }
                Value::Object(o)
            }),
        ]
    })
}

fn km_strategy() -> impl Strategy<Value = KillmailView> {
    (
        proptest::sample::select(SYSTEMS.to_vec()),
        proptest::sample::select(vec![
            (Some(10000002), Some(0.9)),
            (Some(10000033), Some(0.3)),
            (Some(11000001), Some(-1.0)),
            (None, None),
        ]),
        proptest::collection::vec(
            (
                proptest::option::of(proptest::sample::select(IDS.to_vec())),
                proptest::sample::select(vec![6i32, 11, 25, 27, 358]),
            ),
            0..4,
        ),
        proptest::option::of(proptest::sample::select(IDS.to_vec())),
        0u32..(1 << 16),
        0.0f64..5e8,
        (any::<bool>(), any::<bool>(), any::<bool>()),
    )
        .prop_map(
            |(sys, (region, sec), atts, vchar, tags, value, (awox, solo, npc))| KillmailView {
                killmail_id: 1,
                solar_system_id: sys as i32,
                constellation_id: region.map(|r| r + 10_000_000),
                region_id: region,
                security: sec,
                victim: PartyView {
                    character_id: vchar,
                    corporation_id: vchar,
                    alliance_id: vchar,
                    ship_group_id: Some(27),
                    ship_category_id: Some(6),
                    ..Default::default()
                },
                attacker_count: atts.len() as u32,
                attackers: atts
                    .into_iter()
                    .map(|(id, g)| PartyView {
                        character_id: id,
                        corporation_id: id,
                        faction_id: id,
                        ship_group_id: Some(g),
                        ship_category_id: Some(if g == 6 || g == 11 { g } else { 6 }),
                        ..Default::default()
                    })
                    .collect(),
                module_tags: tags,
                total_value: value,
                awox,
                solo,
                npc,
                ..Default::default()
            },
        )
}

fn check_index_equals_brute_force(
    profiles: &[Value],
    kms: &[KillmailView],
    g: &JumpGraph,
) -> std::result::Result<(), TestCaseError> {
    let compiled: Vec<(i64, Compiled)> = profiles
        .iter()
        .enumerate()
        .map(|(i, d)| {
            (
                i as i64 + 1,
                compile_doc(d, g).expect("generated filters are valid"),
            )
        })
        .collect();
    let mut index = ProfileIndex::new();
    for (id, c) in &compiled {
        index.insert(*id, c.keys.as_deref());
    }
    for km in kms {
        let brute: Vec<i64> = compiled
            .iter()
            .filter(|(_, c)| c.matches(km))
            .map(|(id, _)| *id)
            .collect();
        let via_index: Vec<i64> = index
            .candidates(km)
            .into_iter()
            .filter(|id| compiled[(*id - 1) as usize].1.matches(km))
            .collect();
        prop_assert_eq!(via_index, brute);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn index_equals_brute_force_on_random_killmails(
        profiles in proptest::collection::vec(filter_strategy(), 1..40),
        kms in proptest::collection::vec(km_strategy(), 1..10),
    ) {
        let g = JumpGraph::from_edges([(30002813, 30002812), (30002812, 30002811), (30002811, 30000144), (30000144, 30000142)]);
        check_index_equals_brute_force(&profiles, &kms, &g)?;
    }

}

#[test]
fn index_equals_brute_force_on_the_real_corpus() {
    let Some(corpus) = corpus() else { return };
    // Random profiles drawn from the corpus's own ids, so many of them match.
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut ids: Vec<i64> = corpus
        .iter()
        .flat_map(|k| {
            std::iter::once(&k.victim)
                .chain(k.attackers.iter())
                .flat_map(|p| [p.character_id, p.corporation_id, p.alliance_id])
                .flatten()
                .collect::<Vec<_>>()
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let systems: Vec<i64> = corpus
        .iter()
        .map(|k| i64::from(k.solar_system_id))
        .collect();
    let regions: Vec<i64> = corpus
        .iter()
        .filter_map(|k| k.region_id.map(i64::from))
        .collect();
    let leaf = prop_oneof![
        proptest::sample::subsequence(systems.clone(), 1..4)
            .prop_map(|s| json!({"solar_system_ids": s})),
        proptest::sample::subsequence(regions.clone(), 1..3).prop_map(|s| json!({"region_ids": s})),
        (
            proptest::sample::select(vec![
                "victim_character_ids",
                "attacker_corporation_ids",
                "involved_alliance_ids",
                "attacker_character_ids"
            ]),
            proptest::sample::subsequence(ids.clone(), 1..4)
        )
            .prop_map(|(k, v)| json!({ k: v })),
        proptest::sample::subsequence(ModuleTag::names(), 1..3)
            .prop_map(|t| json!({"module_tags": t})),
        proptest::sample::subsequence(vec!["highsec", "lowsec", "nullsec", "wormhole"], 1..3)
            .prop_map(|b| json!({"security_band": b})),
        proptest::sample::subsequence(vec![6i64, 22, 65, 25, 26, 27, 29, 30, 659, 547, 485], 1..3)
            .prop_map(|g| json!({"victim_ship_group_ids": g})),
        (1u32..20).prop_map(|n| json!({"min_attackers": n})),
        any::<bool>().prop_map(|b| json!({"npc": b})),
    ];
    let filter = leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 1..3).prop_map(|v| json!({"any": v})),
            proptest::collection::vec(inner.clone(), 1..3).prop_map(|v| json!({"all": v})),
            inner.prop_map(|f| json!({"not": f})),
        ]
    });
    let g = JumpGraph::default();
    runner
        .run(&proptest::collection::vec(filter, 50..200), |profiles| {
            check_index_equals_brute_force(&profiles, &corpus, &g)
        })
        .unwrap();
}

#[test]
fn memory_sde_reads_shrike_json() {
    let path = shared_dir().join("data/esi_killmails/sde.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        eprintln!("skipping: {} not readable", path.display());
        return;
    };
    let mut sde = MemorySde::from_shrike_json(&serde_json::from_str(&text).unwrap());
    let t = sde.type_info(10190).unwrap(); // Magnetic Field Stabilizer II
    assert_eq!(
        (
            t.group_id,
            t.category_id,
            crate::sde::meta_tag(t.meta_group_id)
        ),
        (302, Some(7), ModuleTag::T2)
    );
    assert_eq!(
        crate::sde::type_tags(&t),
        ModuleTag::T2.bit() | ModuleTag::Hybrid.bit()
    );
    let s = sde.system_info(30000121).unwrap();
    assert_eq!(s.region_id, 10000002);
}

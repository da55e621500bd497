//! The killmail as the matcher sees it: flat ids plus facts resolved from the SDE.
//! Built by the glue from the killmail tables, or from an ESI JSON document.

use crate::error::{KillboardError, Result};
use crate::model::{AttackerState, KillState, Party, StoredFlags};
use crate::sde::{fitted_module_tags, ItemRef, SecurityBand, StaticData};
use serde_json::Value;

/// One side of a killmail (the victim or an attacker).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PartyView {
    pub character_id: Option<i64>,
    pub corporation_id: Option<i64>,
    pub alliance_id: Option<i64>,
    pub faction_id: Option<i64>,
    pub ship_type_id: Option<i32>,
    pub ship_group_id: Option<i32>,
    pub ship_category_id: Option<i32>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct KillmailView {
    pub killmail_id: i64,
    pub solar_system_id: i32,
    pub constellation_id: Option<i32>,
    pub region_id: Option<i32>,
    pub security: Option<f64>,
    pub victim: PartyView,
    pub attackers: Vec<PartyView>,
    /// Attacker count; ESI rows when present, else zKillboard's attackerCount.
    pub attacker_count: u32,
    /// `ModuleTag` bits of the victim's fitted modules.
    pub module_tags: u32,
    /// zKillboard totalValue (or the price-cache value); unknown counts as 0.
    pub total_value: f64,
    /// Flags; unknown (NULL) counts as false.
    pub solo: bool,
    pub npc: bool,
    pub awox: bool,
}

impl KillmailView {
    pub fn band(&self) -> Option<SecurityBand> {
        match (self.region_id, self.security) {
            (Some(r), Some(s)) => Some(SecurityBand::classify(r, s)),
            _ => None,
        }
    }

    /// Fill what the SDE knows and the source did not say: location from the
    /// system, ship groups and categories from the types, and module tags.
    pub fn resolve<S: StaticData>(&mut self, items: &[ItemRef], sde: &mut S) {
        if self.region_id.is_none() || self.constellation_id.is_none() || self.security.is_none() {
            if let Some(sys) = sde.system_info(self.solar_system_id) {
                self.constellation_id.get_or_insert(sys.constellation_id);
                self.region_id.get_or_insert(sys.region_id);
                self.security.get_or_insert(sys.security);
            }
        }
        resolve_ship(&mut self.victim, sde);
        for a in &mut self.attackers {
            resolve_ship(a, sde);
        }
        self.module_tags = fitted_module_tags(items, |t| sde.type_info(t));
    }

    /// Flags the source did not give are derived by zKillboard's rules, the
    /// same derivation ingest stores (`KillState::resolve_flags`). Call after
    /// [`KillmailView::resolve`]: solo and awox look at ship groups and
    /// categories. `final_blow` is per attacker, in order.
    pub fn resolve_flags(&mut self, stored: StoredFlags, final_blow: &[bool]) {
        if stored.npc.is_some() && stored.solo.is_some() && stored.awox.is_some() {
            self.npc = stored.npc.unwrap_or_default();
            self.solo = stored.solo.unwrap_or_default();
            self.awox = stored.awox.unwrap_or_default();
            return;
        }
        let party = |p: &PartyView| Party {
            character_id: p.character_id,
            corporation_id: p.corporation_id,
            alliance_id: p.alliance_id,
            faction_id: p.faction_id,
            ship_type_id: p.ship_type_id.map(i64::from),
            ship_group_id: p.ship_group_id.map(i64::from),
            ship_category_id: p.ship_category_id.map(i64::from),
        };
        let mut state = KillState {
            victim: party(&self.victim),
            attackers: self
                .attackers
                .iter()
                .enumerate()
                .map(|(n, a)| AttackerState {
                    party: party(a),
                    damage_done: 0,
                    final_blow: final_blow.get(n).copied().unwrap_or(false),
                })
                .collect(),
            ..KillState::default()
        };
        state.resolve_flags(stored);
        self.npc = state.flags.npc;
        self.solo = state.flags.solo;
        self.awox = state.flags.awox;
    }
}

/// A killmail document read for matching, before the SDE is consulted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JsonKillmail {
    pub view: KillmailView,
    pub items: Vec<ItemRef>,
    /// zkb's flags; a missing one is derived as ingest derives it.
    pub flags: StoredFlags,
    /// `final_blow` per attacker, in order.
    pub final_blow: Vec<bool>,
}

impl JsonKillmail {
    /// The view as matched: SDE facts, module tags, then flags.
    pub fn resolve<S: StaticData>(mut self, sde: &mut S) -> KillmailView {
        self.view.resolve(&self.items, sde);
        self.view.resolve_flags(self.flags, &self.final_blow);
        self.view
    }
}

fn resolve_ship<S: StaticData>(p: &mut PartyView, sde: &mut S) {
    let Some(t) = p.ship_type_id else { return };
    if p.ship_group_id.is_some() && p.ship_category_id.is_some() {
        return;
    }
    if let Some(info) = sde.type_info(t) {
        p.ship_group_id.get_or_insert(info.group_id);
        if let Some(c) = info.category_id {
            p.ship_category_id.get_or_insert(c);
        }
    }
}

fn id(v: &Value, key: &str) -> Option<i64> {
    v.get(key).and_then(Value::as_i64).filter(|n| *n > 0)
}

fn id32(v: &Value, key: &str) -> Option<i32> {
    id(v, key).and_then(|n| i32::try_from(n).ok())
}

fn party(v: &Value) -> PartyView {
    PartyView {
        character_id: id(v, "character_id"),
        corporation_id: id(v, "corporation_id"),
        alliance_id: id(v, "alliance_id"),
        faction_id: id(v, "faction_id"),
        ship_type_id: id32(v, "ship_type_id"),
        ship_group_id: None,
        ship_category_id: None,
    }
}

fn collect_items(items: &Value, top_level: bool, out: &mut Vec<ItemRef>) {
    let Some(arr) = items.as_array() else { return };
    for it in arr {
        if let (Some(type_id), Some(flag)) = (
            id32(it, "item_type_id"),
            it.get("flag")
                .and_then(Value::as_i64)
                .and_then(|f| i32::try_from(f).ok()),
        ) {
            out.push(ItemRef {
                type_id,
                flag,
                top_level,
            });
        }
        if let Some(nested) = it.get("items") {
            collect_items(nested, false, out);
        }
    }
}

/// Read a killmail document for on-demand matching: an ESI killmail, a
/// zKillboard API element (ESI + `zkb`), an R2Z2 package (`esi` + `zkb`) or a
/// RedisQ package (`package.killmail` + `package.zkb`). The value comes from
/// `zkb` (unknown counts as 0); flags from `zkb`, else derived when resolved.
pub fn view_from_json(doc: &Value) -> Result<JsonKillmail> {
    let (esi, zkb, path) = if let Some(pkg) = doc.get("package") {
        (
            pkg.get("killmail").unwrap_or(&Value::Null),
            pkg.get("zkb"),
            "$.package.killmail",
        )
    } else if let Some(esi) = doc.get("esi") {
        (esi, doc.get("zkb"), "$.esi")
    } else {
        (doc, doc.get("zkb"), "$")
    };
    if !esi.is_object() {
        return Err(KillboardError::invalid(
            path,
            "expected an ESI killmail object",
        ));
    }
    let killmail_id = esi
        .get("killmail_id")
        .or_else(|| doc.get("killmail_id"))
        .and_then(Value::as_i64)
        .filter(|n| *n > 0)
        .ok_or_else(|| {
            KillboardError::invalid(format!("{path}.killmail_id"), "expected a positive integer")
        })?;
    let solar_system_id = id32(esi, "solar_system_id").ok_or_else(|| {
        KillboardError::invalid(
            format!("{path}.solar_system_id"),
            "expected a positive integer",
        )
    })?;
    let victim = esi
        .get("victim")
        .filter(|v| v.is_object())
        .ok_or_else(|| KillboardError::invalid(format!("{path}.victim"), "expected an object"))?;
    let attacker_docs = esi
        .get("attackers")
        .and_then(Value::as_array)
        .ok_or_else(|| KillboardError::invalid(format!("{path}.attackers"), "expected an array"))?;
    let attackers: Vec<PartyView> = attacker_docs.iter().map(party).collect();
    let final_blow = attacker_docs
        .iter()
        .map(|a| {
            a.get("final_blow")
                .and_then(Value::as_bool)
                .unwrap_or(false)
        })
        .collect();
    let mut items = Vec::new();
    if let Some(list) = victim.get("items") {
        collect_items(list, true, &mut items);
    }
    let zkb_f = |k: &str| zkb.and_then(|z| z.get(k)).and_then(Value::as_f64);
    let zkb_b = |k: &str| zkb.and_then(|z| z.get(k)).and_then(Value::as_bool);
    let attacker_count = if attackers.is_empty() {
        zkb_f("attackerCount").map(|n| n as u32).unwrap_or(0)
    } else {
        attackers.len() as u32
    };
    let view = KillmailView {
        killmail_id,
        solar_system_id,
        victim: party(victim),
        attackers,
        attacker_count,
        total_value: zkb_f("totalValue").unwrap_or(0.0),
        ..KillmailView::default()
    };
    let flags = StoredFlags {
        npc: zkb_b("npc"),
        solo: zkb_b("solo"),
        awox: zkb_b("awox"),
    };
    Ok(JsonKillmail {
        view,
        items,
        flags,
        final_blow,
    })
}

/// A system's security as stored (`real`), as the matcher reads it when the
/// SDE does not know the system: `round(security::numeric, 6)::float8`, the
/// stored-killmail query's own expression, so a direct read and SQL agree to
/// the bit. PostgreSQL converts a `real` to numeric through its 6 significant
/// digits (`%.6g`); `round` rounds half away from zero; numeric to float8 is a
/// correctly rounded parse of the decimal.
pub fn stored_security(v: f32) -> f64 {
    if !v.is_finite() {
        return v as f64;
    }
    // d.ddddde±x: six significant digits of the exact value, as %.6g has.
    let sci = format!("{:.5e}", v as f64);
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: i64 = mantissa.replace('.', "").parse().unwrap_or(0);
    if digits == 0 {
        return 0.0;
    }
    // value = digits × 10^(exp − 5): that many decimals past the point.
    let decimals = 5 - exp;
    if decimals <= 6 {
        return format!("{digits}e{}", exp - 5).parse().unwrap_or(v as f64);
    }
    let div = 10i64.pow((decimals - 6) as u32);
    let q = (digits.abs() + div / 2) / div;
    let q = if digits < 0 { -q } else { q };
    format!("{q}e-6").parse().unwrap_or(v as f64)
}

#[cfg(test)]
mod stored_security_tests {
    use super::stored_security;

    #[test]
    fn six_significant_digits_then_six_decimals() {
        assert_eq!(stored_security(0.45), 0.45);
        assert_eq!(stored_security(-0.0123456), -0.012346);
        assert_eq!(stored_security(0.0123454), 0.012345);
        assert_eq!(stored_security(0.9459991), 0.945999);
        assert_eq!(stored_security(1.0), 1.0);
        assert_eq!(stored_security(-1.0), -1.0);
        assert_eq!(stored_security(0.0), 0.0);
        assert_eq!(stored_security(-0.0), 0.0);
        assert_eq!(stored_security(1e-7), 0.0);
        assert_eq!(stored_security(5e-7), 0.000001);
        assert!(stored_security(f32::NAN).is_nan());
    }
}

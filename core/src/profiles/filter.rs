//! The filter language: parsing and validation with JSON paths.
//!
//! A filter is a JSON object whose keys are AND-ed; `{}` matches everything.
//! Every error is 22023 with the path of the offending value, e.g.
//! `$.any[1].within_jumps.jumps`, so a profile write can say exactly what is wrong.

use crate::error::{KillboardError, Result};
use crate::sde::{ModuleTag, SecurityBand};
use serde_json::Value;

/// Greatest `within_jumps.jumps`; New Eden's diameter is well below it, and a
/// bound keeps compilation cost predictable.
pub const MAX_JUMPS: i64 = 100;
/// Nesting bound for any/all/not, so a hostile filter cannot exhaust the stack.
pub const MAX_DEPTH: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Victim,
    Attacker,
    Involved,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PartyKind {
    Character,
    Corporation,
    Alliance,
    Faction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShipLevel {
    Type,
    Group,
    Category,
}

/// One validated leaf. Id lists are sorted and deduplicated.
#[derive(Debug, Clone, PartialEq)]
pub enum Leaf {
    Systems(Vec<i64>),
    Constellations(Vec<i64>),
    Regions(Vec<i64>),
    /// Bit set of `SecurityBand::bit()`.
    Bands(u8),
    SecurityMin(f64),
    SecurityMax(f64),
    WithinJumps {
        system_id: i32,
        jumps: u32,
    },
    Party {
        side: Side,
        kind: PartyKind,
        ids: Vec<i64>,
    },
    /// `side` is Victim or Attacker (the contract has no involved_ship_*).
    Ship {
        side: Side,
        level: ShipLevel,
        ids: Vec<i64>,
    },
    /// Bit set of `ModuleTag::bit()`.
    ModuleTags(u32),
    MinValue(f64),
    MaxValue(f64),
    MinAttackers(u32),
    MaxAttackers(u32),
    Solo(bool),
    Npc(bool),
    Awox(bool),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// An object's keys, or an explicit `all`. Empty matches everything.
    All(Vec<Filter>),
    /// Empty `any` is rejected at parse time, so this is never empty.
    Any(Vec<Filter>),
    Not(Box<Filter>),
    Leaf(Leaf),
}

/// Every key the language accepts, for the "unknown key" message.
pub const KEYS: &[&str] = &[
    "solar_system_ids",
    "constellation_ids",
    "region_ids",
    "security_band",
    "security_min",
    "security_max",
    "within_jumps",
    "victim_character_ids",
    "victim_corporation_ids",
    "victim_alliance_ids",
    "victim_faction_ids",
    "attacker_character_ids",
    "attacker_corporation_ids",
    "attacker_alliance_ids",
    "attacker_faction_ids",
    "involved_character_ids",
    "involved_corporation_ids",
    "involved_alliance_ids",
    "involved_faction_ids",
    "victim_ship_type_ids",
    "victim_ship_group_ids",
    "victim_ship_category_ids",
    "attacker_ship_type_ids",
    "attacker_ship_group_ids",
    "attacker_ship_category_ids",
    "module_tags",
    "min_value",
    "max_value",
    "min_attackers",
    "max_attackers",
    "solo",
    "npc",
    "awox",
    "any",
    "all",
    "not",
];

/// Parse and validate a filter document.
pub fn parse_filter(v: &Value) -> Result<Filter> {
    parse_object(v, &Path::Root, 0)
}

/// A JSON path, spelled out only when an error needs it: profiles are parsed
/// by the ten thousand on every index rebuild, nearly always without error.
#[derive(Clone, Copy)]
enum Path<'a> {
    Root,
    Key(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
}

impl std::fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Path::Root => f.write_str("$"),
            Path::Key(p, k) => write!(f, "{p}.{k}"),
            Path::Index(p, i) => write!(f, "{p}[{i}]"),
        }
    }
}

impl From<&Path<'_>> for String {
    fn from(p: &Path<'_>) -> String {
        p.to_string()
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn parse_object(v: &Value, path: &Path, depth: usize) -> Result<Filter> {
    if depth > MAX_DEPTH {
        return Err(KillboardError::invalid(
            path,
            format!("filter nested deeper than {MAX_DEPTH} levels"),
        ));
    }
    let obj = v.as_object().ok_or_else(|| {
        KillboardError::invalid(
            path,
            format!("expected a filter object, got {}", type_name(v)),
        )
    })?;
    let mut parts = Vec::with_capacity(obj.len());
    for (key, val) in obj {
        parts.push(parse_key(key, val, &Path::Key(path, key), depth)?);
    }
    // Range keys are checked pairwise so "min > max" is reported, not silently empty.
    check_range(obj, path, "min_value", "max_value")?;
    check_range(obj, path, "min_attackers", "max_attackers")?;
    check_range(obj, path, "security_min", "security_max")?;
    Ok(if parts.len() == 1 {
        parts.pop().unwrap_or(Filter::All(vec![]))
    } else {
        Filter::All(parts)
    })
}

fn check_range(
    obj: &serde_json::Map<String, Value>,
    path: &Path,
    lo: &str,
    hi: &str,
) -> Result<()> {
    if let (Some(a), Some(b)) = (
        obj.get(lo).and_then(Value::as_f64),
        obj.get(hi).and_then(Value::as_f64),
    ) {
        if a > b {
            return Err(KillboardError::invalid(
                format!("{path}.{hi}"),
                format!("must be >= {lo} ({a})"),
            ));
        }
    }
    Ok(())
}

fn parse_key(key: &str, v: &Value, path: &Path, depth: usize) -> Result<Filter> {
    let leaf = |l: Leaf| Ok(Filter::Leaf(l));
    match key {
        "solar_system_ids" => leaf(Leaf::Systems(ids(v, path)?)),
        "constellation_ids" => leaf(Leaf::Constellations(ids(v, path)?)),
        "region_ids" => leaf(Leaf::Regions(ids(v, path)?)),
        "security_band" => {
            let mut bits = 0u8;
            for (i, item) in non_empty_array(v, path)?.iter().enumerate() {
                let p = Path::Index(path, i);
                let s = item.as_str().ok_or_else(|| {
                    KillboardError::invalid(
                        &p,
                        format!("expected a string, got {}", type_name(item)),
                    )
                })?;
                let band = SecurityBand::parse(s).ok_or_else(|| {
                    KillboardError::invalid(
                        &p,
                        format!("unknown security band {s:?} (expected highsec, lowsec, nullsec, wormhole or pochven)"),
                    )
                })?;
                bits |= band.bit();
            }
            leaf(Leaf::Bands(bits))
        }
        "security_min" => leaf(Leaf::SecurityMin(number_in(v, path, -1.0, 1.0)?)),
        "security_max" => leaf(Leaf::SecurityMax(number_in(v, path, -1.0, 1.0)?)),
        "within_jumps" => {
            let obj = v.as_object().ok_or_else(|| {
                KillboardError::invalid(
                    path,
                    format!(
                        "expected an object {{\"system_id\", \"jumps\"}}, got {}",
                        type_name(v)
                    ),
                )
            })?;
            for k in obj.keys() {
                if k != "system_id" && k != "jumps" {
                    return Err(KillboardError::invalid(
                        format!("{path}.{k}"),
                        "unknown key (expected system_id and jumps)",
                    ));
                }
            }
            let sp = Path::Key(path, "system_id");
            let system_id = obj
                .get("system_id")
                .ok_or_else(|| KillboardError::invalid(&sp, "required"))?;
            let system_id = positive_id(system_id, &sp)?;
            let system_id = i32::try_from(system_id)
                .map_err(|_| KillboardError::invalid(&sp, "not a solar system id"))?;
            let jp = Path::Key(path, "jumps");
            let jumps = obj
                .get("jumps")
                .ok_or_else(|| KillboardError::invalid(&jp, "required"))?;
            let n = jumps.as_i64().ok_or_else(|| {
                KillboardError::invalid(
                    &jp,
                    format!("expected an integer, got {}", type_name(jumps)),
                )
            })?;
            if !(0..=MAX_JUMPS).contains(&n) {
                return Err(KillboardError::invalid(
                    &jp,
                    format!("must be between 0 and {MAX_JUMPS}, got {n}"),
                ));
            }
            leaf(Leaf::WithinJumps {
                system_id,
                jumps: n as u32,
            })
        }
        "module_tags" => {
            let mut bits = 0u32;
            for (i, item) in non_empty_array(v, path)?.iter().enumerate() {
                let p = Path::Index(path, i);
                let s = item.as_str().ok_or_else(|| {
                    KillboardError::invalid(
                        &p,
                        format!("expected a string, got {}", type_name(item)),
                    )
                })?;
                let tag = ModuleTag::parse(s).ok_or_else(|| {
                    KillboardError::invalid(
                        &p,
                        format!(
                            "unknown module tag {s:?} (expected one of {})",
                            ModuleTag::names().join(", ")
                        ),
                    )
                })?;
                bits |= tag.bit();
            }
            leaf(Leaf::ModuleTags(bits))
        }
        "min_value" => leaf(Leaf::MinValue(number_in(v, path, 0.0, f64::MAX)?)),
        "max_value" => leaf(Leaf::MaxValue(number_in(v, path, 0.0, f64::MAX)?)),
        "min_attackers" => leaf(Leaf::MinAttackers(count(v, path)?)),
        "max_attackers" => leaf(Leaf::MaxAttackers(count(v, path)?)),
        "solo" => leaf(Leaf::Solo(boolean(v, path)?)),
        "npc" => leaf(Leaf::Npc(boolean(v, path)?)),
        "awox" => leaf(Leaf::Awox(boolean(v, path)?)),
        "any" | "all" => {
            let arr = v.as_array().ok_or_else(|| {
                KillboardError::invalid(
                    path,
                    format!("expected an array of filters, got {}", type_name(v)),
                )
            })?;
            if key == "any" && arr.is_empty() {
                return Err(KillboardError::invalid(
                    path,
                    "must not be empty (an empty any matches nothing)",
                ));
            }
            let mut subs = Vec::with_capacity(arr.len());
            for (i, item) in arr.iter().enumerate() {
                subs.push(parse_object(item, &Path::Index(path, i), depth + 1)?);
            }
            Ok(if key == "any" {
                Filter::Any(subs)
            } else {
                Filter::All(subs)
            })
        }
        "not" => Ok(Filter::Not(Box::new(parse_object(v, path, depth + 1)?))),
        _ => party_or_ship(key, v, path).unwrap_or_else(|| {
            Err(KillboardError::invalid(
                path,
                format!("unknown filter key {key:?}"),
            ))
        }),
    }
}

fn party_or_ship(key: &str, v: &Value, path: &Path) -> Option<Result<Filter>> {
    let (side, rest) = if let Some(r) = key.strip_prefix("victim_") {
        (Side::Victim, r)
    } else if let Some(r) = key.strip_prefix("attacker_") {
        (Side::Attacker, r)
    } else if let Some(r) = key.strip_prefix("involved_") {
        (Side::Involved, r)
    } else {
        return None;
    };
    let kind = match rest {
        "character_ids" => Some(PartyKind::Character),
        "corporation_ids" => Some(PartyKind::Corporation),
        "alliance_ids" => Some(PartyKind::Alliance),
        "faction_ids" => Some(PartyKind::Faction),
        _ => None,
    };
    if let Some(kind) = kind {
        return Some(ids(v, path).map(|ids| Filter::Leaf(Leaf::Party { side, kind, ids })));
    }
    if side == Side::Involved {
        return None;
    }
    let level = match rest {
        "ship_type_ids" => ShipLevel::Type,
        "ship_group_ids" => ShipLevel::Group,
        "ship_category_ids" => ShipLevel::Category,
        _ => return None,
    };
    Some(ids(v, path).map(|ids| Filter::Leaf(Leaf::Ship { side, level, ids })))
}

fn non_empty_array<'a>(v: &'a Value, path: &Path) -> Result<&'a Vec<Value>> {
    let arr = v.as_array().ok_or_else(|| {
        KillboardError::invalid(path, format!("expected an array, got {}", type_name(v)))
    })?;
    if arr.is_empty() {
        return Err(KillboardError::invalid(path, "must not be empty"));
    }
    Ok(arr)
}

fn positive_id(v: &Value, path: &Path) -> Result<i64> {
    match v.as_i64() {
        Some(n) if n > 0 => Ok(n),
        Some(n) => Err(KillboardError::invalid(
            path,
            format!("ids are positive integers, got {n}"),
        )),
        None => Err(KillboardError::invalid(
            path,
            format!("expected a positive integer id, got {}", type_name(v)),
        )),
    }
}

fn ids(v: &Value, path: &Path) -> Result<Vec<i64>> {
    let arr = non_empty_array(v, path)?;
    let mut out = Vec::with_capacity(arr.len());
    for (i, item) in arr.iter().enumerate() {
        out.push(positive_id(item, &Path::Index(path, i))?);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

fn number_in(v: &Value, path: &Path, lo: f64, hi: f64) -> Result<f64> {
    let n = v.as_f64().ok_or_else(|| {
        KillboardError::invalid(path, format!("expected a number, got {}", type_name(v)))
    })?;
    if !(lo..=hi).contains(&n) {
        let range = if hi == f64::MAX {
            format!(">= {lo}")
        } else {
            format!("between {lo} and {hi}")
        };
        return Err(KillboardError::invalid(
            path,
            format!("must be {range}, got {n}"),
        ));
    }
    Ok(n)
}

fn count(v: &Value, path: &Path) -> Result<u32> {
    match v.as_i64() {
        Some(n) if (0..=i64::from(u32::MAX)).contains(&n) => Ok(n as u32),
        Some(n) => Err(KillboardError::invalid(
            path,
            format!("must be a non-negative integer, got {n}"),
        )),
        None => Err(KillboardError::invalid(
            path,
            format!("expected an integer, got {}", type_name(v)),
        )),
    }
}

fn boolean(v: &Value, path: &Path) -> Result<bool> {
    v.as_bool().ok_or_else(|| {
        KillboardError::invalid(path, format!("expected a boolean, got {}", type_name(v)))
    })
}

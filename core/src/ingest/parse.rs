//! JSON → `Killmail`, with the JSON path of the first bad field in the error.

use serde_json::{Map, Value};

use super::{
    AttackerIn, ItemIn, Killmail, VictimIn, Zkb, MAX_ATTACKERS, MAX_ITEMS, MAX_ITEM_DEPTH,
    MAX_VALUE_CENTS,
};
use crate::error::{KillboardError, Result, SqlState};
use crate::model::Micros;

/// Accept any supported shape; `root` is the path prefix (`$` or `$[3]`).
pub fn parse_any(v: &Value, root: &str) -> Result<Killmail> {
    let obj = v
        .as_object()
        .ok_or_else(|| KillboardError::invalid(root, "a killmail must be a JSON object"))?;
    // RedisQ: {"package": {"killID", "killmail": {...}, "zkb": {...}}}
    if let Some(pkg) = obj.get("package") {
        let p = format!("{root}.package");
        let pkg = pkg.as_object().ok_or_else(|| {
            KillboardError::invalid(&p, "RedisQ package is null or not an object (no killmail)")
        })?;
        let esi = pkg
            .get("killmail")
            .ok_or_else(|| KillboardError::missing(format!("{p}.killmail")))?;
        let mut km = parse_esi(esi, &format!("{p}.killmail"))?;
        if let Some(id) = opt_id(pkg, "killID", &p)? {
            if id != km.killmail_id {
                return Err(KillboardError::invalid(
                    format!("{p}.killID"),
                    "does not match killmail.killmail_id",
                ));
            }
        }
        km.zkb = pkg
            .get("zkb")
            .map(|z| parse_zkb(z, &format!("{p}.zkb")))
            .transpose()?;
        return Ok(km);
    }
    // R2Z2: {"killmail_id", "hash", "esi": {...}, "zkb": {...}, "sequence_id"}
    if let Some(esi) = obj.get("esi") {
        let mut km = parse_esi(esi, &format!("{root}.esi"))?;
        if let Some(id) = opt_id(obj, "killmail_id", root)? {
            if id != km.killmail_id {
                return Err(KillboardError::invalid(
                    format!("{root}.killmail_id"),
                    "does not match esi.killmail_id",
                ));
            }
        }
        if km.hash.is_none() {
            km.hash = opt_str(obj, "hash", root)?;
        }
        km.zkb = obj
            .get("zkb")
            .map(|z| parse_zkb(z, &format!("{root}.zkb")))
            .transpose()?;
        km.sequence_id = opt_id(obj, "sequence_id", root)?;
        return Ok(km);
    }
    // ESI killmail, optionally with zKillboard's "zkb" (API element).
    let mut km = parse_esi(v, root)?;
    km.zkb = obj
        .get("zkb")
        .map(|z| parse_zkb(z, &format!("{root}.zkb")))
        .transpose()?;
    Ok(km)
}

fn parse_esi(v: &Value, root: &str) -> Result<Killmail> {
    let o = v
        .as_object()
        .ok_or_else(|| KillboardError::invalid(root, "ESI killmail must be a JSON object"))?;
    // Identity first, so the error names the most basic missing field.
    let killmail_id = req_id(o, "killmail_id", root)?;
    let time = req_time(o, "killmail_time", root)?;
    let solar_system_id = req_id(o, "solar_system_id", root)?;
    let victim_v = o
        .get("victim")
        .filter(|v| !v.is_null())
        .ok_or_else(|| KillboardError::missing(format!("{root}.victim")))?;
    let vp = format!("{root}.victim");
    let vo = victim_v
        .as_object()
        .ok_or_else(|| KillboardError::invalid(&vp, "must be an object"))?;

    let attackers_v = o
        .get("attackers")
        .filter(|v| !v.is_null())
        .ok_or_else(|| KillboardError::missing(format!("{root}.attackers")))?;
    let ap = format!("{root}.attackers");
    let arr = attackers_v
        .as_array()
        .ok_or_else(|| KillboardError::invalid(&ap, "must be an array"))?;
    if arr.is_empty() {
        return Err(KillboardError::invalid(&ap, "must not be empty"));
    }
    if arr.len() > MAX_ATTACKERS {
        return Err(KillboardError::at(
            SqlState::ProgramLimitExceeded,
            &ap,
            format!("more than {MAX_ATTACKERS} attackers"),
        ));
    }
    let mut attackers = Vec::with_capacity(arr.len());
    for (i, a) in arr.iter().enumerate() {
        let p = format!("{ap}[{i}]");
        let ao = a
            .as_object()
            .ok_or_else(|| KillboardError::invalid(&p, "attacker must be an object"))?;
        attackers.push(AttackerIn {
            character_id: opt_id(ao, "character_id", &p)?,
            corporation_id: opt_id(ao, "corporation_id", &p)?,
            alliance_id: opt_id(ao, "alliance_id", &p)?,
            faction_id: opt_id(ao, "faction_id", &p)?,
            ship_type_id: opt_id(ao, "ship_type_id", &p)?,
            weapon_type_id: opt_id(ao, "weapon_type_id", &p)?,
            damage_done: opt_count(ao, "damage_done", &p)?.unwrap_or(0),
            final_blow: opt_bool(ao, "final_blow", &p)?.unwrap_or(false),
            security_status: opt_f64(ao, "security_status", &p)?,
        });
    }

    let mut items = Vec::new();
    if let Some(iv) = vo.get("items").filter(|v| !v.is_null()) {
        parse_items(iv, &format!("{vp}.items"), None, 0, &mut items)?;
    }
    let position = match vo.get("position").filter(|v| !v.is_null()) {
        None => None,
        Some(pv) => {
            let pp = format!("{vp}.position");
            let po = pv
                .as_object()
                .ok_or_else(|| KillboardError::invalid(&pp, "must be an object"))?;
            let mut xyz = [0.0; 3];
            for (slot, key) in xyz.iter_mut().zip(["x", "y", "z"]) {
                *slot = opt_f64(po, key, &pp)?
                    .ok_or_else(|| KillboardError::missing(format!("{pp}.{key}")))?;
            }
            Some(xyz)
        }
    };

    Ok(Killmail {
        killmail_id,
        hash: opt_str(o, "killmail_hash", root)?,
        time,
        solar_system_id,
        moon_id: opt_id(o, "moon_id", root)?,
        war_id: opt_id(o, "war_id", root)?,
        victim: VictimIn {
            character_id: opt_id(vo, "character_id", &vp)?,
            corporation_id: opt_id(vo, "corporation_id", &vp)?,
            alliance_id: opt_id(vo, "alliance_id", &vp)?,
            faction_id: opt_id(vo, "faction_id", &vp)?,
            ship_type_id: req_id(vo, "ship_type_id", &vp)?,
            damage_taken: opt_count(vo, "damage_taken", &vp)?.unwrap_or(0),
            position,
        },
        attackers,
        items,
        zkb: None,
        sequence_id: None,
    })
}

fn parse_items(
    v: &Value,
    path: &str,
    parent: Option<i32>,
    depth: usize,
    out: &mut Vec<ItemIn>,
) -> Result<()> {
    if depth >= MAX_ITEM_DEPTH {
        return Err(KillboardError::invalid(
            path,
            format!("items nested deeper than {MAX_ITEM_DEPTH} levels"),
        ));
    }
    let arr = v
        .as_array()
        .ok_or_else(|| KillboardError::invalid(path, "must be an array"))?;
    for (i, it) in arr.iter().enumerate() {
        let p = format!("{path}[{i}]");
        if out.len() >= MAX_ITEMS {
            return Err(KillboardError::at(
                SqlState::ProgramLimitExceeded,
                &p,
                format!("more than {MAX_ITEMS} items"),
            ));
        }
        let io = it
            .as_object()
            .ok_or_else(|| KillboardError::invalid(&p, "item must be an object"))?;
        let index = out.len() as i32;
        out.push(ItemIn {
            index,
            parent_index: parent,
            type_id: req_id(io, "item_type_id", &p)?,
            flag: opt_count(io, "flag", &p)?.unwrap_or(0),
            singleton: opt_count(io, "singleton", &p)?.unwrap_or(0),
            quantity_destroyed: opt_count(io, "quantity_destroyed", &p)?.unwrap_or(0),
            quantity_dropped: opt_count(io, "quantity_dropped", &p)?.unwrap_or(0),
        });
        if let Some(nested) = io.get("items").filter(|v| !v.is_null()) {
            parse_items(nested, &format!("{p}.items"), Some(index), depth + 1, out)?;
        }
    }
    Ok(())
}

fn parse_zkb(v: &Value, root: &str) -> Result<Zkb> {
    if v.is_null() {
        return Ok(Zkb::default());
    }
    let o = v
        .as_object()
        .ok_or_else(|| KillboardError::invalid(root, "zkb must be an object"))?;
    let labels = match o.get("labels").filter(|v| !v.is_null()) {
        None => None,
        Some(l) => {
            let lp = format!("{root}.labels");
            let arr = l
                .as_array()
                .ok_or_else(|| KillboardError::invalid(&lp, "must be an array of strings"))?;
            let mut out = Vec::with_capacity(arr.len());
            for (i, s) in arr.iter().enumerate() {
                out.push(
                    s.as_str()
                        .ok_or_else(|| {
                            KillboardError::invalid(format!("{lp}[{i}]"), "must be a string")
                        })?
                        .to_string(),
                );
            }
            Some(out)
        }
    };
    Ok(Zkb {
        total_value_cents: opt_isk(o, "totalValue", root)?,
        fitted_value_cents: opt_isk(o, "fittedValue", root)?,
        destroyed_value_cents: opt_isk(o, "destroyedValue", root)?,
        dropped_value_cents: opt_isk(o, "droppedValue", root)?,
        points: opt_points(o, root)?,
        npc: opt_bool(o, "npc", root)?,
        solo: opt_bool(o, "solo", root)?,
        awox: opt_bool(o, "awox", root)?,
        location_id: opt_id(o, "locationID", root)?,
        labels,
        hash: opt_str(o, "hash", root)?,
    })
}

// ---- field readers -----------------------------------------------------------

fn field<'a>(o: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    o.get(key).filter(|v| !v.is_null())
}

fn opt_int(o: &Map<String, Value>, key: &str, root: &str) -> Result<Option<i64>> {
    let Some(v) = field(o, key) else {
        return Ok(None);
    };
    let path = format!("{root}.{key}");
    match v {
        Value::Number(n) => n.as_i64().map(Some).ok_or_else(|| {
            KillboardError::at(
                SqlState::InvalidParameterValue,
                path,
                format!("must be an integer, got {n}"),
            )
        }),
        other => Err(KillboardError::invalid(
            path,
            format!("must be an integer, got {}", type_name(other)),
        )),
    }
}

/// An EVE id: a positive integer. ESI ids fit in 32 bits, character ids in 64.
fn opt_id(o: &Map<String, Value>, key: &str, root: &str) -> Result<Option<i64>> {
    match opt_int(o, key, root)? {
        Some(id) if id <= 0 => Err(KillboardError::invalid(
            format!("{root}.{key}"),
            format!("must be a positive id, got {id}"),
        )),
        other => Ok(other),
    }
}

fn req_id(o: &Map<String, Value>, key: &str, root: &str) -> Result<i64> {
    opt_id(o, key, root)?.ok_or_else(|| KillboardError::missing(format!("{root}.{key}")))
}

fn opt_count(o: &Map<String, Value>, key: &str, root: &str) -> Result<Option<i64>> {
    match opt_int(o, key, root)? {
        Some(n) if n < 0 => Err(KillboardError::invalid(
            format!("{root}.{key}"),
            format!("must not be negative, got {n}"),
        )),
        other => Ok(other),
    }
}

fn opt_bool(o: &Map<String, Value>, key: &str, root: &str) -> Result<Option<bool>> {
    match field(o, key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(KillboardError::invalid(
            format!("{root}.{key}"),
            format!("must be a boolean, got {}", type_name(other)),
        )),
    }
}

fn opt_f64(o: &Map<String, Value>, key: &str, root: &str) -> Result<Option<f64>> {
    match field(o, key) {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(f) if f.is_finite() => Ok(Some(f)),
            _ => Err(KillboardError::at(
                SqlState::NumericValueOutOfRange,
                format!("{root}.{key}"),
                "number out of range",
            )),
        },
        Some(other) => Err(KillboardError::invalid(
            format!("{root}.{key}"),
            format!("must be a number, got {}", type_name(other)),
        )),
    }
}

fn opt_str(o: &Map<String, Value>, key: &str, root: &str) -> Result<Option<String>> {
    match field(o, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(KillboardError::invalid(
            format!("{root}.{key}"),
            format!("must be a string, got {}", type_name(other)),
        )),
    }
}

fn opt_isk(o: &Map<String, Value>, key: &str, root: &str) -> Result<Option<i128>> {
    let Some(v) = field(o, key) else {
        return Ok(None);
    };
    let path = format!("{root}.{key}");
    let Value::Number(n) = v else {
        return Err(KillboardError::invalid(
            path,
            format!("must be a number, got {}", type_name(v)),
        ));
    };
    let cents = decimal_to_cents(&n.to_string()).ok_or_else(|| {
        KillboardError::at(
            SqlState::NumericValueOutOfRange,
            &path,
            format!("ISK value out of range: {n}"),
        )
    })?;
    if cents < 0 {
        return Err(KillboardError::invalid(
            path,
            format!("must not be negative, got {n}"),
        ));
    }
    Ok(Some(cents))
}

/// zKillboard points: stored as an int4 and credited as stored, so anything
/// the column cannot hold is refused here rather than clamped on the way in.
fn opt_points(o: &Map<String, Value>, root: &str) -> Result<Option<i64>> {
    match opt_count(o, "points", root)? {
        Some(p) if p > i32::MAX as i64 => Err(KillboardError::at(
            SqlState::NumericValueOutOfRange,
            format!("{root}.points"),
            format!("{p} is out of range"),
        )),
        other => Ok(other),
    }
}

fn req_time(o: &Map<String, Value>, key: &str, root: &str) -> Result<Micros> {
    let path = format!("{root}.{key}");
    let v = field(o, key).ok_or_else(|| KillboardError::missing(&path))?;
    let s = v.as_str().ok_or_else(|| {
        KillboardError::invalid(
            &path,
            format!("must be an RFC 3339 timestamp string, got {}", type_name(v)),
        )
    })?;
    parse_time(s).ok_or_else(|| {
        KillboardError::at(
            SqlState::InvalidParameterValue,
            path,
            format!("not an RFC 3339 timestamp from 1900 to 2099: {s:?}"),
        )
    })
}

/// RFC 3339 (`2026-03-25T14:26:36Z`, offsets and fractions allowed) → micros since the Unix epoch.
pub fn parse_time(s: &str) -> Option<Micros> {
    let t = chrono::DateTime::parse_from_rfc3339(s).ok()?;
    let micros = t.timestamp_micros();
    // 1900..2100: what EVE can produce, and where the insert's float8 seconds
    // (to_timestamp) still round-trip to the microsecond the stats credited;
    // later fractional times came back 1 µs off and broke verify_stats.
    (-2_208_988_800_000_000..4_102_444_800_000_000)
        .contains(&micros)
        .then_some(micros)
}

/// Exact decimal text (`123.45`, `1e9`, `-2.5E+3`) → cents, rounded half away from zero.
pub fn decimal_to_cents(text: &str) -> Option<i128> {
    let (mantissa, exp) = match text.find(['e', 'E']) {
        Some(i) => (&text[..i], text[i + 1..].parse::<i32>().ok()?),
        None => (text, 0),
    };
    let (neg, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int_part.is_empty() && frac_part.is_empty() {
        return None;
    }
    let digits: String = format!("{int_part}{frac_part}");
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // value = digits × 10^(exp - frac_len); cents = value × 100.
    let shift = exp + 2 - frac_part.len() as i32;
    let digits = digits.trim_start_matches('0');
    if digits.is_empty() {
        return Some(0);
    }
    if digits.len() as i32 + shift > 21 {
        return None;
    }
    let n: i128 = digits.parse().ok()?;
    let cents = if shift >= 0 {
        n.checked_mul(10i128.checked_pow(shift as u32)?)?
    } else if -shift > 38 {
        0
    } else {
        let d = 10i128.pow((-shift) as u32);
        (n + d / 2) / d
    };
    if cents > MAX_VALUE_CENTS {
        return None;
    }
    Some(if neg { -cents } else { cents })
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn esi() -> Value {
        json!({
            "killmail_id": 10, "killmail_time": "2026-03-25T14:26:36Z", "solar_system_id": 30000142,
            "victim": {"character_id": 90000001, "corporation_id": 98000001, "ship_type_id": 587, "damage_taken": 100,
                       "items": [{"item_type_id": 2488, "flag": 27, "quantity_destroyed": 1, "singleton": 0,
                                  "items": [{"item_type_id": 34, "flag": 0, "quantity_dropped": 5, "singleton": 0}]}]},
            "attackers": [{"character_id": 90000002, "corporation_id": 98000002, "damage_done": 100, "final_blow": true, "ship_type_id": 587}]
        })
    }

    #[test]
    fn parses_esi_with_nested_items() {
        let km = parse_any(&esi(), "$").unwrap();
        assert_eq!(km.killmail_id, 10);
        assert_eq!(km.items.len(), 2);
        assert_eq!(km.items[1].parent_index, Some(0));
        assert_eq!(km.time, 1_774_448_796_000_000);
        assert!(km.zkb.is_none());
    }

    #[test]
    fn parses_r2z2_and_redisq_and_zkb_api() {
        let r2 = json!({"killmail_id": 10, "hash": "abc", "esi": esi(), "zkb": {"totalValue": 86180108.73, "points": 7, "npc": false, "solo": true, "awox": false}, "sequence_id": 5});
        let km = parse_any(&r2, "$").unwrap();
        assert_eq!(
            km.zkb.as_ref().unwrap().total_value_cents,
            Some(8_618_010_873)
        );
        assert_eq!(km.sequence_id, Some(5));
        assert_eq!(km.hash.as_deref(), Some("abc"));
        let rq = json!({"package": {"killID": 10, "killmail": esi(), "zkb": {"totalValue": 1e9}}});
        assert_eq!(
            parse_any(&rq, "$").unwrap().zkb.unwrap().total_value_cents,
            Some(100_000_000_000)
        );
        let mut api = esi();
        api["zkb"] = json!({"totalValue": 5});
        assert_eq!(
            parse_any(&api, "$").unwrap().zkb.unwrap().total_value_cents,
            Some(500)
        );
    }

    fn err(v: Value) -> KillboardError {
        parse_any(&v, "$").unwrap_err()
    }

    fn err_path_of(v: &Value) -> Option<String> {
        parse_any(v, "$").unwrap_err().path
    }

    #[test]
    fn bad_input_names_the_field_and_sqlstate() {
        let mut v = esi();
        v.as_object_mut().unwrap().remove("killmail_id");
        let e = err(v);
        assert_eq!(
            (e.sqlstate(), e.path.as_deref()),
            ("23502", Some("$.killmail_id"))
        );

        let mut v = esi();
        v["killmail_id"] = json!(-5);
        assert_eq!(err(v).path.as_deref(), Some("$.killmail_id"));
        let mut v = esi();
        v["killmail_id"] = json!("10");
        assert_eq!(err(v).sqlstate(), "22023");
        let mut v = esi();
        v["killmail_time"] = json!("2920-03-25T14:26:36.123457Z");
        assert_eq!(err(v).path.as_deref(), Some("$.killmail_time"));
        let mut v = esi();
        v["killmail_time"] = json!("yesterday");
        assert_eq!(err(v).path.as_deref(), Some("$.killmail_time"));
        let mut v = esi();
        v.as_object_mut().unwrap().remove("victim");
        assert_eq!(err(v).path.as_deref(), Some("$.victim"));
        let mut v = esi();
        v["victim"].as_object_mut().unwrap().remove("ship_type_id");
        assert_eq!(err(v).path.as_deref(), Some("$.victim.ship_type_id"));
        let mut v = esi();
        v["attackers"] = json!([]);
        assert_eq!(err(v).path.as_deref(), Some("$.attackers"));
        let mut v = esi();
        v["attackers"][0]["damage_done"] = json!(1.5);
        assert_eq!(err(v).path.as_deref(), Some("$.attackers[0].damage_done"));
        let mut v = esi();
        v["victim"]["items"][0]["items"][0]["item_type_id"] = json!(0);
        assert_eq!(
            err(v).path.as_deref(),
            Some("$.victim.items[0].items[0].item_type_id")
        );
        let r2 = json!({"killmail_id": 10, "esi": esi(), "zkb": {"totalValue": "lots"}});
        assert_eq!(err(r2).path.as_deref(), Some("$.zkb.totalValue"));
        let r2 = json!({"killmail_id": 10, "esi": esi(), "zkb": {"points": 2_147_483_648i64}});
        assert_eq!(
            (
                err(r2).sqlstate(),
                err_path_of(&json!({"killmail_id": 10, "esi": esi(), "zkb": {"points": -1}}))
            ),
            ("22003", Some("$.zkb.points".into()))
        );
        let r2 = json!({"killmail_id": 11, "esi": esi()});
        assert_eq!(err(r2).path.as_deref(), Some("$.killmail_id"));
        assert_eq!(
            err(json!({"package": null})).path.as_deref(),
            Some("$.package")
        );
        assert_eq!(err(json!([1])).sqlstate(), "22023");
    }

    #[test]
    fn deep_nesting_is_rejected() {
        let mut inner = json!([{"item_type_id": 34, "flag": 0}]);
        for _ in 0..20 {
            inner = json!([{"item_type_id": 34, "flag": 0, "items": inner}]);
        }
        let mut v = esi();
        v["victim"]["items"] = inner;
        assert_eq!(err(v).sqlstate(), "22023");
    }

    #[test]
    fn decimal_to_cents_is_exact() {
        assert_eq!(decimal_to_cents("86180108.73"), Some(8_618_010_873));
        assert_eq!(decimal_to_cents("0.005"), Some(1));
        assert_eq!(decimal_to_cents("1e9"), Some(100_000_000_000));
        assert_eq!(decimal_to_cents("1.5E+3"), Some(150_000));
        assert_eq!(
            decimal_to_cents("123456789012345.67"),
            Some(12_345_678_901_234_567)
        );
        assert_eq!(decimal_to_cents("1e17"), None);
        assert_eq!(decimal_to_cents("1e300"), None);
        assert_eq!(decimal_to_cents("abc"), None);
    }
}

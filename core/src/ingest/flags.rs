//! zKillboard's npc / solo / awox rules, for killmails that arrive without zkb.

use crate::model::{AttackerState, Flags, Party};

const CAPSULE_GROUP: i64 = 29;
const SHUTTLE_GROUP: i64 = 31;
const ROOKIE_SHIP_GROUP: i64 = 237;
const SHIP_CATEGORY: i64 = 6;
const STRUCTURE_CATEGORY: i64 = 65;

/// NPC corporations have ids 1,000,000..=1,999,999 (the contract says 2…1999999).
pub fn is_npc_corporation(id: Option<i64>) -> bool {
    matches!(id, Some(c) if (2..=1_999_999).contains(&c))
}
/// Player characters have ids above 3,999,999; below are NPC agents and rats.
pub fn is_player_character(id: Option<i64>) -> bool {
    matches!(id, Some(c) if c > 3_999_999)
}
fn is_player_corporation(id: Option<i64>) -> bool {
    matches!(id, Some(c) if c > 1_999_999)
}

pub fn derive(victim: &Party, attackers: &[AttackerState]) -> Flags {
    let npc = if victim.character_id.is_none() && is_npc_corporation(victim.corporation_id) {
        true
    } else {
        !attackers.iter().any(|a| {
            is_player_character(a.party.character_id)
                || is_player_corporation(a.party.corporation_id)
        })
    };
    if npc {
        return Flags {
            npc,
            solo: false,
            awox: false,
        };
    }
    let group = victim.ship_group_id;
    let awox = !matches!(group, Some(CAPSULE_GROUP) | Some(ROOKIE_SHIP_GROUP))
        && attackers.iter().find(|a| a.final_blow).is_some_and(|fb| {
            is_player_corporation(fb.party.corporation_id)
                && fb.party.corporation_id == victim.corporation_id
        });
    let players = attackers
        .iter()
        .filter(|a| is_player_character(a.party.character_id))
        .count();
    let solo = victim.ship_category_id == Some(SHIP_CATEGORY)
        && !matches!(
            group,
            Some(CAPSULE_GROUP) | Some(SHUTTLE_GROUP) | Some(ROOKIE_SHIP_GROUP)
        )
        && players == 1
        && !attackers
            .iter()
            .any(|a| a.party.ship_category_id == Some(STRUCTURE_CATEGORY));
    Flags { npc, solo, awox }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn player(ch: i64, corp: i64, fb: bool) -> AttackerState {
        AttackerState {
            party: Party {
                character_id: Some(ch),
                corporation_id: Some(corp),
                ship_category_id: Some(6),
                ..Default::default()
            },
            damage_done: 10,
            final_blow: fb,
        }
    }
    fn rat() -> AttackerState {
        AttackerState {
            party: Party {
                corporation_id: Some(1_000_125),
                ship_type_id: Some(100),
                ..Default::default()
            },
            damage_done: 5,
            final_blow: false,
        }
    }
    fn ship_victim(corp: i64) -> Party {
        Party {
            character_id: Some(90_000_001),
            corporation_id: Some(corp),
            ship_type_id: Some(587),
            ship_group_id: Some(25),
            ship_category_id: Some(6),
            ..Default::default()
        }
    }

    #[test]
    fn npc_when_only_rats() {
        let f = derive(&ship_victim(98_000_001), &[rat()]);
        assert!(f.npc && !f.solo && !f.awox);
    }

    #[test]
    fn npc_victim_without_character_in_npc_corp() {
        let v = Party {
            corporation_id: Some(1_000_125),
            ship_category_id: Some(6),
            ..Default::default()
        };
        assert!(derive(&v, &[player(90_000_002, 98_000_002, true)]).npc);
    }

    #[test]
    fn solo_one_player_plus_rats() {
        let f = derive(
            &ship_victim(98_000_001),
            &[player(90_000_002, 98_000_002, true), rat()],
        );
        assert!(!f.npc && f.solo && !f.awox);
    }

    #[test]
    fn not_solo_for_two_players_pods_or_structures() {
        let v = ship_victim(98_000_001);
        assert!(
            !derive(
                &v,
                &[
                    player(90_000_002, 98_000_002, true),
                    player(90_000_003, 98_000_002, false)
                ]
            )
            .solo
        );
        let mut pod = v.clone();
        pod.ship_group_id = Some(29);
        assert!(!derive(&pod, &[player(90_000_002, 98_000_002, true)]).solo);
        let mut s = player(90_000_002, 98_000_002, true);
        s.party.ship_category_id = Some(65);
        assert!(!derive(&v, &[s]).solo);
    }

    #[test]
    fn awox_final_blow_from_own_player_corp() {
        let f = derive(
            &ship_victim(98_000_001),
            &[player(90_000_002, 98_000_001, true)],
        );
        assert!(f.awox);
        let mut rookie = ship_victim(98_000_001);
        rookie.ship_group_id = Some(237);
        assert!(!derive(&rookie, &[player(90_000_002, 98_000_001, true)]).awox);
        assert!(
            !derive(
                &ship_victim(98_000_001),
                &[player(90_000_002, 98_000_009, true)]
            )
            .awox
        );
    }
}

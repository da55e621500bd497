//! Native triggers that keep stats exact for plain INSERT / UPDATE / DELETE /
//! COPY on the killmail tables. Each statement credits
//! `credits(after) - credits(before)` for the killmails it touched, so any
//! order of statements (killmail row first, attackers later) sums up right.
//! Deltas are merged in memory and written once by the deferred flush trigger.

use std::collections::BTreeSet;

use killboard_core::{KillboardError, Result as KbResult};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

use crate::error::raise;
use crate::gucs;
use crate::stats::load::{self, Filter, Source};
use crate::stats::{self, pending, spi_err};

type TriggerResult<'a> =
    core::result::Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, PgTriggerError>;

fn ids_of(client: &SpiClient, table: &str) -> KbResult<Vec<i64>> {
    // Only the fixed transition table names reach this format.
    let sql = format!("SELECT DISTINCT killmail_id FROM {table}");
    let mut out = Vec::new();
    for row in client.select(sql.as_str(), None, &[]).map_err(spi_err)? {
        if let Some(id) = row.get::<i64>(1).map_err(spi_err)? {
            out.push(id);
        }
    }
    Ok(out)
}

fn with_transition_tables<R>(
    trigger: &PgTrigger,
    f: impl FnOnce(&mut SpiClient) -> KbResult<R>,
) -> KbResult<R> {
    Spi::connect_mut(|client| {
        let td = trigger.trigger_data() as *const pg_sys::TriggerData as *mut pg_sys::TriggerData;
        let rc = unsafe { pg_sys::SPI_register_trigger_data(td) };
        if rc < 0 {
            return Err(KillboardError::internal(format!(
                "SPI_register_trigger_data failed: {rc}"
            )));
        }
        f(client)
    })
}

fn skip() -> bool {
    pending::triggers_suppressed()
}

/// A plain write touched killmails that ingest matched in this transaction:
/// the deferred match trigger must look at them again (profiles::forget_ingested).
fn unmatch_ingested(trigger: &PgTrigger, tables: &[&str]) {
    if skip() || !crate::profiles::any_ingested() {
        return;
    }
    let res = with_transition_tables(trigger, |c| {
        for t in tables {
            crate::profiles::forget_ingested(&ids_of(c, t)?);
        }
        Ok(())
    });
    res.unwrap_or_else(|e| raise(e));
}

/// With killboard.maintain_stats off a write only marks the store stale (once
/// per transaction): reading the changed killmails back would make the
/// "plain insert" path pay for stats it does not keep.
fn stats_off(trigger: &PgTrigger, table: &str) -> bool {
    if gucs::maintain_stats() {
        return false;
    }
    if !pending::stale_marked() {
        let res = with_transition_tables(trigger, |c| {
            // Only the fixed transition table names reach this format.
            let sql = format!("SELECT 1 FROM {table} LIMIT 1");
            if c.select(sql.as_str(), None, &[])
                .map_err(spi_err)?
                .is_empty()
            {
                return Ok(());
            }
            stats::mark_stale(c)
        });
        res.unwrap_or_else(|e| raise(e));
    }
    true
}

/// AFTER INSERT / UPDATE statement trigger on killboard.killmails.
#[pg_trigger]
fn _stats_killmails_stmt<'a>(trigger: &'a PgTrigger<'a>) -> TriggerResult<'a> {
    let op = trigger.op()?;
    if matches!(op, PgTriggerOperation::Update) {
        unmatch_ingested(trigger, &["new_rows"]);
    }
    if skip() || stats_off(trigger, "new_rows") {
        return Ok(None);
    }
    let res = with_transition_tables(trigger, |c| {
        let new_ids = ids_of(c, "new_rows")?;
        let after = load::states(c, Filter::Ids(&new_ids))?;
        let before = if matches!(op, PgTriggerOperation::Update) {
            let old_ids = ids_of(c, "old_rows")?;
            let rows = load::killmail_rows(c, Source::OldRows, Filter::Ids(&old_ids))?;
            let att = load::attacker_rows(c, Source::Tables, Filter::Ids(&old_ids))?;
            rows.iter()
                .map(|(id, r)| load::assemble(r, att.get(id)))
                .collect()
        } else {
            Vec::new()
        };
        stats::credit_change(c, &before, &after)
    });
    res.unwrap_or_else(|e| raise(e));
    Ok(None)
}

/// BEFORE DELETE row trigger on killboard.killmails: the attackers are still
/// there (the FK cascade runs later), so the whole killmail can be uncredited.
#[pg_trigger]
fn _stats_killmails_delete<'a>(trigger: &'a PgTrigger<'a>) -> TriggerResult<'a> {
    let old = trigger.old();
    if skip() {
        return Ok(old);
    }
    if crate::profiles::any_ingested() {
        if let Some(id) = old
            .as_ref()
            .and_then(|r| r.get_by_name::<i64>("killmail_id").ok().flatten())
        {
            crate::profiles::forget_ingested(&[id]);
        }
    }
    if !gucs::maintain_stats() {
        Spi::connect(stats::mark_stale).unwrap_or_else(|e| raise(e));
        return Ok(old);
    }
    let Some(row) = old.as_ref() else {
        return Ok(None);
    };
    let id: i64 = row
        .get_by_name::<i64>("killmail_id")
        .ok()
        .flatten()
        .unwrap_or(0);
    let res = Spi::connect_mut(|c| {
        let before = load::states(c, Filter::Ids(&[id]))?;
        stats::credit_change(c, &before, &[])
    });
    res.unwrap_or_else(|e| raise(e));
    Ok(old)
}

/// AFTER INSERT / UPDATE / DELETE statement trigger on killboard.attackers.
#[pg_trigger]
fn _stats_attackers_stmt<'a>(trigger: &'a PgTrigger<'a>) -> TriggerResult<'a> {
    let op = trigger.op()?;
    let probe = if matches!(op, PgTriggerOperation::Delete) {
        "old_rows"
    } else {
        "new_rows"
    };
    match op {
        PgTriggerOperation::Update => unmatch_ingested(trigger, &["new_rows", "old_rows"]),
        _ => unmatch_ingested(trigger, &[probe]),
    }
    if skip() || stats_off(trigger, probe) {
        return Ok(None);
    }
    let res = with_transition_tables(trigger, |c| {
        let mut ids: BTreeSet<i64> = BTreeSet::new();
        if !matches!(op, PgTriggerOperation::Delete) {
            ids.extend(ids_of(c, "new_rows")?);
        }
        if !matches!(op, PgTriggerOperation::Insert) {
            ids.extend(ids_of(c, "old_rows")?);
        }
        let ids: Vec<i64> = ids.into_iter().collect();
        // A killmail that is gone (cascade) was uncredited whole by its delete trigger.
        let rows = load::killmail_rows(c, Source::Tables, Filter::Ids(&ids))?;
        if rows.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = rows.keys().copied().collect();
        let current = load::attacker_rows(c, Source::Tables, Filter::Ids(&ids))?;
        let mut previous = current.clone();
        if !matches!(op, PgTriggerOperation::Delete) {
            for (id, added) in load::attacker_rows(c, Source::NewRows, Filter::Ids(&ids))? {
                if let Some(m) = previous.get_mut(&id) {
                    for idx in added.keys() {
                        m.remove(idx);
                    }
                }
            }
        }
        if !matches!(op, PgTriggerOperation::Insert) {
            for (id, removed) in load::attacker_rows(c, Source::OldRows, Filter::Ids(&ids))? {
                previous.entry(id).or_default().extend(removed);
            }
        }
        let after: Vec<_> = rows
            .iter()
            .map(|(id, r)| load::assemble(r, current.get(id)))
            .collect();
        let before: Vec<_> = rows
            .iter()
            .map(|(id, r)| load::assemble(r, previous.get(id)))
            .collect();
        stats::credit_change(c, &before, &after)
    });
    res.unwrap_or_else(|e| raise(e));
    Ok(None)
}

/// Deferred constraint trigger: writes this transaction's merged deltas once,
/// just before commit, when every statement has run.
#[pg_trigger]
fn _stats_flush<'a>(_trigger: &'a PgTrigger<'a>) -> TriggerResult<'a> {
    if pending::has_pending() {
        stats::flush_pending().unwrap_or_else(|e| raise(e));
    }
    Ok(None)
}

/// TRUNCATE of the killmail tables: the stats follow by a rebuild.
#[pg_trigger]
fn _stats_truncate<'a>(_trigger: &'a PgTrigger<'a>) -> TriggerResult<'a> {
    pending::discard_all();
    crate::profiles::forget_all_ingested();
    if gucs::maintain_stats() {
        crate::api::maintenance::rebuild().unwrap_or_else(|e| raise(e));
    }
    Ok(None)
}

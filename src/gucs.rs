//! Every `killboard.*` setting, defined once in `init()` and read through typed getters.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::PostgresGucEnum;

/// An enum setting, so `SET killboard.kill_credit = 'everyone'` is refused by PostgreSQL itself
/// (22023, listing the accepted values) instead of failing later at rebuild time.
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum KillCredit {
    #[name = c"involved"]
    Involved,
    #[name = c"final_blow"]
    FinalBlow,
}

static MAINTAIN_STATS: GucSetting<bool> = GucSetting::<bool>::new(true);
static KILL_CREDIT: GucSetting<KillCredit> = GucSetting::<KillCredit>::new(KillCredit::Involved);
static MATCH_ON_INGEST: GucSetting<bool> = GucSetting::<bool>::new(true);
static PROFILE_CACHE_SIZE: GucSetting<i32> = GucSetting::<i32>::new(10_000);
static SDE_CACHE_SIZE: GucSetting<i32> = GucSetting::<i32>::new(100_000);
static STATS_APPEND_MAX_ENTITIES: GucSetting<i32> = GucSetting::<i32>::new(256);

pub fn init() {
    GucRegistry::define_bool_guc(
        c"killboard.maintain_stats",
        c"Keep entity stats up to date on every killmail write.",
        c"Switch off in a session for a bulk load that is followed by killboard.rebuild_stats(); \
          while off, writes leave the stats behind (stats_health() reports it).",
        &MAINTAIN_STATS,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"killboard.kill_credit",
        c"Kill credit mode used by rebuild_stats(): involved or final_blow.",
        c"involved (zKillboard): every distinct attacker entity gets the kill; final_blow (EDK): only the \
          final-blow attacker's entities. The stats store keeps the mode it was built with \
          (killboard.stats_state); a change takes effect at the next rebuild_stats().",
        &KILL_CREDIT,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"killboard.match_on_ingest",
        c"Match filter profiles when killmails are written.",
        c"Matches go to killboard.profile_matches and NOTIFY killboard_match.",
        &MATCH_ON_INGEST,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"killboard.stats_append_max_entities",
        c"A transaction whose stats change touches at most this many entities appends it to stats_delta.",
        c"Appending never waits for another writer and costs an insert per entity; advance_windows() \
          folds the appended rows into the stats rows, and readers add them meanwhile. Larger \
          transactions (bulk loads) and any removal merge into the stats rows at commit instead. \
          0 always merges.",
        &STATS_APPEND_MAX_ENTITIES,
        0,
        1_000_000,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"killboard.profile_cache_size",
        c"Compiled profiles kept per backend (LRU).",
        c"Profiles beyond this are compiled again when needed; evictions show in cache_stats().",
        &PROFILE_CACHE_SIZE,
        1,
        10_000_000,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"killboard.sde_cache_size",
        c"Static-data entries (types, systems) kept per backend (LRU).",
        c"Entries beyond this are read again from the SDE tables; evictions show in cache_stats().",
        &SDE_CACHE_SIZE,
        1,
        10_000_000,
        GucContext::Userset,
        GucFlags::default(),
    );
}

pub fn maintain_stats() -> bool {
    MAINTAIN_STATS.get()
}

/// The configured credit mode, by the name core parses.
pub fn kill_credit() -> String {
    match KILL_CREDIT.get() {
        KillCredit::Involved => "involved",
        KillCredit::FinalBlow => "final_blow",
    }
    .to_string()
}

pub fn stats_append_max_entities() -> usize {
    STATS_APPEND_MAX_ENTITIES.get().max(0) as usize
}

pub fn match_on_ingest() -> bool {
    MATCH_ON_INGEST.get()
}

pub fn profile_cache_size() -> usize {
    PROFILE_CACHE_SIZE.get().max(1) as usize
}

pub fn sde_cache_size() -> usize {
    SDE_CACHE_SIZE.get().max(1) as usize
}

-- =============================================================================
-- pg_killboard: stats triggers
-- =============================================================================
-- Statement triggers see whole statements (transition tables), so a COPY of a
-- million rows is credited in a few set-based reads. Killmail deletes are
-- credited BEFORE the row goes, while its attackers still exist. The deferred
-- constraint triggers write each transaction's merged deltas once, at commit.

CREATE TRIGGER stats_killmails_insert AFTER INSERT ON killboard.killmails
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION killboard._stats_killmails_stmt();
CREATE TRIGGER stats_killmails_update AFTER UPDATE ON killboard.killmails
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION killboard._stats_killmails_stmt();
CREATE TRIGGER stats_killmails_delete BEFORE DELETE ON killboard.killmails
    FOR EACH ROW EXECUTE FUNCTION killboard._stats_killmails_delete();
CREATE TRIGGER stats_killmails_truncate AFTER TRUNCATE ON killboard.killmails
    FOR EACH STATEMENT EXECUTE FUNCTION killboard._stats_truncate();

CREATE TRIGGER stats_attackers_insert AFTER INSERT ON killboard.attackers
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION killboard._stats_attackers_stmt();
CREATE TRIGGER stats_attackers_update AFTER UPDATE ON killboard.attackers
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION killboard._stats_attackers_stmt();
CREATE TRIGGER stats_attackers_delete AFTER DELETE ON killboard.attackers
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION killboard._stats_attackers_stmt();
CREATE TRIGGER stats_attackers_truncate AFTER TRUNCATE ON killboard.attackers
    FOR EACH STATEMENT EXECUTE FUNCTION killboard._stats_truncate();

CREATE CONSTRAINT TRIGGER stats_flush_killmails AFTER INSERT OR UPDATE OR DELETE ON killboard.killmails
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION killboard._stats_flush();
CREATE CONSTRAINT TRIGGER stats_flush_attackers AFTER INSERT OR UPDATE OR DELETE ON killboard.attackers
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION killboard._stats_flush();

-- Writers with killboard.maintain_stats = off mark the store stale; they need
-- no UPDATE right on stats_state for that.
CREATE FUNCTION killboard._mark_stats_stale() RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, killboard AS $$
    -- Only the first stale write updates the row: concurrent plain-insert
    -- writers would otherwise queue on this one row.
    UPDATE killboard.stats_state SET stale_since = pg_catalog.now() WHERE stale_since IS NULL;
$$;

//! Reporting core errors to PostgreSQL: once, with their SQLSTATE and path.

use killboard_core::{KillboardError, SqlState};
use pgrx::pg_sys::errcodes::PgSqlErrorCode;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::PgLogLevel;

fn code(state: SqlState) -> PgSqlErrorCode {
    match state {
        SqlState::InvalidParameterValue => PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        SqlState::InvalidTextRepresentation => PgSqlErrorCode::ERRCODE_INVALID_TEXT_REPRESENTATION,
        SqlState::NotNullViolation => PgSqlErrorCode::ERRCODE_NOT_NULL_VIOLATION,
        SqlState::NumericValueOutOfRange => PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
        SqlState::InsufficientPrivilege => PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
        SqlState::ObjectNotInPrerequisiteState => {
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE
        }
        SqlState::FeatureNotSupported => PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
        SqlState::ProgramLimitExceeded => PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
        SqlState::Internal => PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
    }
}

/// Raise `err` as a PostgreSQL ERROR (does not return).
pub fn raise(err: KillboardError) -> ! {
    let mut report = ErrorReport::new(code(err.state), err.message, "pg_killboard");
    if let Some(path) = err.path {
        report = report.set_detail(format!("field: {path}"));
    }
    report.report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

/// Writing entry points call this first. On a hot standby pgrx's SPI would
/// fail assigning an xid ("cannot assign TransactionIds during recovery",
/// XX000) before PostgreSQL's own read-only check; say it with 25006.
pub fn require_writable(what: &str) {
    if unsafe { pgrx::pg_sys::RecoveryInProgress() } {
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_READ_ONLY_SQL_TRANSACTION,
            format!("cannot run {what} on a hot standby: it writes"),
            "pg_killboard",
        )
        .set_hint("Run it on the primary; entity_stats, top_entities and match_profiles work on the standby.")
        .report(PgLogLevel::ERROR);
    }
}

/// Unwrap a core result inside a `#[pg_extern]`, raising the error with its SQLSTATE.
pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T> OrRaise<T> for Result<T, KillboardError> {
    fn or_raise(self) -> T {
        match self {
            Ok(v) => v,
            Err(e) => raise(e),
        }
    }
}

impl<T> OrRaise<T> for Result<T, pgrx::spi::SpiError> {
    fn or_raise(self) -> T {
        match self {
            Ok(v) => v,
            Err(e) => raise(KillboardError::internal(format!("SPI: {e}"))),
        }
    }
}

//! The one error type of pg_killboard. Every user-facing failure carries a
//! SQLSTATE and, where it comes from input, the JSON path of the offending field,
//! so the glue can report it once with `ereport`.

use thiserror::Error;

/// SQLSTATE classes we raise. Kept as an enum so core stays free of pgrx.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlState {
    /// 22023 invalid_parameter_value: a value of the wrong kind or range.
    InvalidParameterValue,
    /// 22P02 invalid_text_representation: malformed JSON or text.
    InvalidTextRepresentation,
    /// 23502 not_null_violation: a required field is missing.
    NotNullViolation,
    /// 22003 numeric_value_out_of_range.
    NumericValueOutOfRange,
    /// 42501 insufficient_privilege.
    InsufficientPrivilege,
    /// 55000 object_not_in_prerequisite_state.
    ObjectNotInPrerequisiteState,
    /// 0A000 feature_not_supported.
    FeatureNotSupported,
    /// 54000 program_limit_exceeded.
    ProgramLimitExceeded,
    /// XX000 internal_error: "cannot happen".
    Internal,
}

impl SqlState {
    pub fn code(self) -> &'static str {
        match self {
            SqlState::InvalidParameterValue => "22023",
            SqlState::InvalidTextRepresentation => "22P02",
            SqlState::NotNullViolation => "23502",
            SqlState::NumericValueOutOfRange => "22003",
            SqlState::InsufficientPrivilege => "42501",
            SqlState::ObjectNotInPrerequisiteState => "55000",
            SqlState::FeatureNotSupported => "0A000",
            SqlState::ProgramLimitExceeded => "54000",
            SqlState::Internal => "XX000",
        }
    }
}

#[derive(Debug, Clone, Error, PartialEq)]
#[error("{message}")]
pub struct KillboardError {
    pub state: SqlState,
    pub message: String,
    /// JSON path (e.g. `$.victim.ship_type_id`) or parameter name, when known.
    pub path: Option<String>,
}

impl KillboardError {
    pub fn new(state: SqlState, message: impl Into<String>) -> Self {
        KillboardError {
            state,
            message: message.into(),
            path: None,
        }
    }
    pub fn at(state: SqlState, path: impl Into<String>, message: impl Into<String>) -> Self {
        let path = path.into();
        KillboardError {
            state,
            message: format!("{}: {}", path, message.into()),
            path: Some(path),
        }
    }
    pub fn invalid(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self::at(SqlState::InvalidParameterValue, path, message)
    }
    pub fn missing(path: impl Into<String>) -> Self {
        Self::at(
            SqlState::NotNullViolation,
            path,
            "required field is missing",
        )
    }
    pub fn malformed(message: impl Into<String>) -> Self {
        Self::new(SqlState::InvalidTextRepresentation, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(SqlState::Internal, message)
    }
    pub fn sqlstate(&self) -> &'static str {
        self.state.code()
    }
}

pub type Result<T> = std::result::Result<T, KillboardError>;

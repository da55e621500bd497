//! jsonb arguments decoded without a panic. pgrx's `JsonB` parses the text
//! form with serde_json and panics (XX000) on what serde_json refuses but
//! jsonb allows: nesting deeper than 128 levels, numbers beyond f64. Hostile
//! input must be refused with a SQLSTATE, so ingest and matching take `Json`.

use std::ffi::CStr;

use killboard_core::{KillboardError, SqlState};
use pgrx::callconv::{Arg, ArgAbi};
use pgrx::nullable::Nullable;
use pgrx::{direct_function_call, impl_sql_translatable, pg_sys, FromDatum};
use serde_json::Value;

use crate::error::raise;

/// A `jsonb` argument as a serde_json value.
pub struct Json(pub Value);

impl_sql_translatable!(Json, arg_only = "jsonb");

impl FromDatum for Json {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _: pg_sys::Oid,
    ) -> Option<Json> {
        if is_null {
            return None;
        }
        let text = unsafe { direct_function_call::<&CStr>(pg_sys::jsonb_out, &[Some(datum)]) }?;
        let Ok(text) = text.to_str() else {
            raise(KillboardError::malformed("jsonb text is not valid UTF-8"));
        };
        match serde_json::from_str(text) {
            Ok(v) => Some(Json(v)),
            Err(e) => raise(decode_error(&e)),
        }
    }
}

fn decode_error(e: &serde_json::Error) -> KillboardError {
    let msg = e.to_string();
    let state = if msg.contains("recursion limit") {
        SqlState::ProgramLimitExceeded
    } else if msg.contains("out of range") {
        SqlState::NumericValueOutOfRange
    } else {
        SqlState::InvalidTextRepresentation
    };
    let what = match state {
        SqlState::ProgramLimitExceeded => "JSON nested deeper than 128 levels".to_string(),
        SqlState::NumericValueOutOfRange => "a JSON number is out of range".to_string(),
        _ => format!("cannot read the JSON document: {msg}"),
    };
    KillboardError::at(state, "$", what)
}

unsafe impl<'fcx> ArgAbi<'fcx> for Json {
    unsafe fn unbox_arg_unchecked(arg: Arg<'_, 'fcx>) -> Self {
        let index = arg.index();
        unsafe {
            arg.unbox_arg_using_from_datum()
                .unwrap_or_else(|| panic!("argument {index} must not be null"))
        }
    }

    unsafe fn unbox_nullable_arg(arg: Arg<'_, 'fcx>) -> Nullable<Self> {
        unsafe { arg.unbox_arg_using_from_datum().into() }
    }
}

//! Filter profiles: parsing, validation, compilation and matching (see architecture.md).

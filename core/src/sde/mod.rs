//! Static data (SDE) facts as plain Rust, used by flag derivation and profile matching.

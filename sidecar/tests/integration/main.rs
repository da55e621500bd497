//! Integration tests of killboard-sidecar against a real PostgreSQL with the
//! extension and fake upstreams on 127.0.0.1.

mod support;

mod caches;
mod feed;
mod limits;
mod sde;

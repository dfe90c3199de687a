#![allow(clippy::type_complexity)] // test doubles record calls in nested collections
//! Integration tests of the b24 library (one binary, one module per area).

mod batch;
mod builder;
mod client;
mod errors;
mod export;
mod hostile_round;
mod operating;
mod pg_pool;
mod redirect;
mod robust;
mod shared_stores;
mod token_lock;
mod typed;

//! Conformance of the sandbox with docs/protocol.md, checked with a plain HTTP client
//! (never the b24 client, so a shared misunderstanding cannot hide).

mod conformance;
mod fidelity;
mod portals;
mod reference_data;
mod support;

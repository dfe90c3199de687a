//! One conformance suite for both queue backends, plus receiver and worker tests.

mod conformance;
mod receiver;
mod worker;

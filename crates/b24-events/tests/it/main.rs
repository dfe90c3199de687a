//! One conformance suite for both queue backends, plus receiver tests.

mod conformance;
mod receiver;

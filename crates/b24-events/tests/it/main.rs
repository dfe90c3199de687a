//! One conformance suite for both queue backends, plus receiver and worker tests.

mod conformance;
mod form_fuzz;
mod hostile;
mod receiver;
mod worker;

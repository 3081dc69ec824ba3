//! Shared harness of the cross-crate suites: random desired-state sequences, regression
//! cases as JSON, and a runner that checks every safety rule after every event.

pub mod case;
pub mod generator;

pub use case::{run_case, run_case_with, Case, Step};

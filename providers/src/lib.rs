//! `CloudProvider` implementations. Today: `mock`, an in-memory world with simulated time
//! and fault injection, used by `simulate` and the generative tests. `local`, `docker` and
//! `terraform` follow the same trait.

pub mod mock;

pub use mock::{FaultConfig, MockProvider, World};

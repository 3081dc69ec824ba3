//! `CloudProvider` implementations: `mock`, an in-memory world with simulated time and fault
//! injection (used by `simulate` and the generative tests), and `local`, where each VM is an
//! agent process on this machine (the embedded default). `docker` and `terraform` follow the
//! same trait.

pub mod local;
pub mod mock;

pub use local::LocalProvider;
pub use mock::{FaultConfig, MockProvider, World};

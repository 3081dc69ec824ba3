//! `ProcessRuntime` implementations. Today: `dummy`, which changes the simulated world as a
//! real run would. `direct` (spawned processes) and `supervisord` follow the same trait.

pub mod dummy;

pub use dummy::DummyRuntime;

//! `ProcessRuntime` implementations: `dummy` changes the simulated world (`sim-world`) as a
//! real run would; `dummy_vm` is the dummy of one real agent (files written, programs pretended).
//! `direct` (spawned processes) and `supervisord` follow the same trait.

pub mod dummy;
pub mod dummy_vm;

pub use dummy::DummyRuntime;
pub use dummy_vm::VmDummyRuntime;

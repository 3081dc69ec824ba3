//! `ProcessRuntime` implementations: `dummy` changes the simulated world (`sim-world`) as a
//! real run would; `dummy_vm` is the dummy of one real agent (files written, programs pretended).
//! `direct` runs RonDB's programs as processes of the agent; `supervisord` will follow the
//! same trait.

pub mod direct;
pub mod dummy;
pub mod dummy_vm;
pub mod mgm;

pub use direct::DirectRuntime;
pub use dummy::DummyRuntime;
pub use dummy_vm::VmDummyRuntime;

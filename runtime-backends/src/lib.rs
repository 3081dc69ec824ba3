//! `ProcessRuntime` implementations: `dummy` changes the simulated world (`sim-world`) as a
//! real run would; `dummy_vm` is the dummy of one real agent (files written, programs pretended).
//! `direct` runs RonDB's programs for real: installed from their tarballs, configured,
//! started with RonDB's command lines, watched through RonDB's own protocols. How a program
//! becomes a process is [`process::ProcessControl`]: a child of the agent
//! ([`process::ChildProcesses`], the `direct` runtime) or a program of supervisord
//! ([`supervisord::Supervisord`], the `supervisord` runtime).

pub mod direct;
pub mod dummy;
pub mod dummy_vm;
pub mod mgm;
pub mod process;
pub mod supervisord;

pub use direct::DirectRuntime;
pub use dummy::DummyRuntime;
pub use dummy_vm::VmDummyRuntime;

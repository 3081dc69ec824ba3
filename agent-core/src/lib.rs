//! The core of the managed-RonDB agent: the desired-state API and its validation, the
//! cluster-state model, the pure planner, and the reconcile loop.
//!
//! No backend lives here. The world is reached only through [`CloudProvider`] (machines) and
//! [`ProcessRuntime`] (RonDB programs on a machine), so the same loop drives an in-memory
//! simulation, local processes, containers or cloud VMs.

pub mod desired;

pub use desired::DesiredState;

//! The pure core of the managed-RonDB agent: the desired-state API and its validation, the
//! cluster-state model and its events, the planner, the safety rules, the cost model, and the
//! RonDB command lines. It decides and does no I/O: the agent crate drives it.
//!
//! No backend lives here. The world is reached only through [`CloudProvider`] (machines) and
//! [`ProcessRuntime`] (RonDB programs on a machine), so the same loop drives an in-memory
//! simulation, local processes, containers or cloud VMs.

pub mod desired;

pub use desired::DesiredState;
pub mod actions;
pub mod artifacts;
pub mod backend;
pub mod model;
pub mod planner;

pub use actions::{Action, ActionKind};
pub use backend::{CloudProvider, ProcessRuntime};
pub use model::{ClusterState, ReconciliationState, Role};
pub use planner::{diff, plan, Difference};
pub mod commands;
pub mod cost;
pub mod engine;
pub mod invariants;

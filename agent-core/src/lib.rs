//! The core of the managed-RonDB agent: the desired-state API and its validation, the
//! cluster-state model, the pure planner, and the reconcile loop.
//!
//! No backend lives here. The world is reached only through [`CloudProvider`] (machines) and
//! [`ProcessRuntime`] (RonDB programs on a machine), so the same loop drives an in-memory
//! simulation, local processes, containers or cloud VMs.

pub mod desired;

pub use desired::DesiredState;
pub mod actions;
pub mod backend;
pub mod model;
pub mod planner;

pub use actions::{Action, ActionKind};
pub use backend::{CloudProvider, ProcessRuntime};
pub use model::{ClusterState, ReconciliationState, Role};
pub use planner::{diff, plan};
pub mod agent;
pub mod commands;
pub mod cost;
pub mod invariants;
pub mod raft;
pub mod reconcile;

pub use reconcile::{EventHook, Journal, Reconciler, ReconcilerConfig, Submission, Submit};

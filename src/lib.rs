//! Wiring of the `ndb-agent` binary: backends chosen at the edge, plus the simulation that
//! runs the real reconciler against the mock world in simulated time.

pub mod cluster;
pub mod front;
pub mod simulation;

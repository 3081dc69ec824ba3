//! Protobuf definitions and generated gRPC code for agent-to-agent calls and the Raft
//! transport. Generated at build time from `proto/agent.proto` by `protox` + `tonic-build`.

#![allow(clippy::all, clippy::unwrap_used, clippy::expect_used, missing_docs)]

/// Version 1 of the agent protocol.
pub mod v1 {
    tonic::include_proto!("ndbagent.v1");
}

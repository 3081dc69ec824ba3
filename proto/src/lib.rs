//! Protobuf definitions and generated gRPC code for agent-to-agent calls and the Raft
//! transport. Empty until the distributed agents land: the reconciler core reaches backends
//! through the `CloudProvider` and `ProcessRuntime` traits in `agent-core`, and this crate will
//! carry those same operations over the network.

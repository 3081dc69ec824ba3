//! The Raft transport over gRPC: openraft's messages as JSON inside a protobuf envelope that
//! names the Raft id it is meant for.

use super::{AgentNode, NodeId, TypeConfig};
use crate::tls::AgentTls;
use ndb_proto::v1::raft_client::RaftClient;
use ndb_proto::v1::RaftRequest;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// Creates one connection per peer, over mutual TLS with the agent's certificate.
#[derive(Clone)]
pub struct GrpcNetwork {
    tls: AgentTls,
}

impl GrpcNetwork {
    pub fn new(tls: AgentTls) -> Self {
        GrpcNetwork { tls }
    }
}

impl RaftNetworkFactory<TypeConfig> for GrpcNetwork {
    type Network = GrpcConnection;

    async fn new_client(&mut self, target: NodeId, node: &AgentNode) -> Self::Network {
        GrpcConnection {
            target,
            addr: node.grpc_addr.clone(),
            tls: self.tls.clone(),
            client: None,
        }
    }
}

/// A lazily connected channel to one peer.
pub struct GrpcConnection {
    target: NodeId,
    addr: String,
    tls: AgentTls,
    client: Option<RaftClient<Channel>>,
}

/// A transport failure, as openraft's `Unreachable`/`NetworkError` wants it.
#[derive(Debug, thiserror::Error)]
#[error("raft peer {addr}: {reason}")]
pub struct TransportError {
    addr: String,
    reason: String,
}

/// The gRPC endpoint of an agent address (`host:port`): TLS only, with this agent's
/// certificate, and the server's checked against the cluster CA.
pub fn endpoint(addr: &str, tls: &AgentTls) -> Result<Endpoint, tonic::transport::Error> {
    Endpoint::from_shared(format!("https://{addr}"))?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .tls_config(tls.client_config())
}

type Rpc<E> = RPCError<NodeId, AgentNode, E>;

impl GrpcConnection {
    fn client(&mut self) -> Result<RaftClient<Channel>, TransportError> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let ep = endpoint(&self.addr, &self.tls).map_err(|e| TransportError {
            addr: self.addr.clone(),
            reason: e.to_string(),
        })?;
        let c = RaftClient::new(ep.connect_lazy());
        self.client = Some(c.clone());
        Ok(c)
    }

    async fn call<Req, Resp, E>(
        &mut self,
        kind: &'static str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, Rpc<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let body = serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut client = self
            .client()
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let mut request = tonic::Request::new(RaftRequest {
            target_raft_id: self.target,
            json: body,
        });
        request.set_timeout(timeout);
        let reply = match kind {
            "append" => client.append_entries(request).await,
            "vote" => client.vote(request).await,
            _ => client.install_snapshot(request).await,
        };
        let reply = match reply {
            Ok(r) => r.into_inner(),
            Err(status) => {
                let e = TransportError {
                    addr: self.addr.clone(),
                    reason: status.to_string(),
                };
                // A refused target id is a misrouted message, not a dead peer.
                return Err(match status.code() {
                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
                        self.client = None;
                        RPCError::Unreachable(Unreachable::new(&e))
                    }
                    _ => RPCError::Network(NetworkError::new(&e)),
                });
            }
        };
        let result: Result<Resp, E> = serde_json::from_slice(&reply.json)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for GrpcConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, Rpc<RaftError<NodeId>>> {
        self.call("append", &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, Rpc<RaftError<NodeId, InstallSnapshotError>>> {
        self.call("snapshot", &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, Rpc<RaftError<NodeId>>> {
        self.call("vote", &rpc, option.hard_ttl()).await
    }
}

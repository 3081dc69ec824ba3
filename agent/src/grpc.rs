//! The gRPC side of an agent: the agent service (runs operations on this VM through its
//! local `ProcessRuntime`) and the Raft service (hands Raft messages to this agent's node).

// Handlers answer `tonic::Status` directly; boxing it would only move the allocation.
#![allow(clippy::result_large_err)]

use super::AgentShared;
use crate::actions::RestoreStep;
use crate::backend::OpId;
use crate::backend::{
    BackendError, ErrorKind, MgmCommand, NodeStatus, ProcessRuntime, ProgramKind, ProgramSpec,
    RestoreRun, RonDbNode,
};
use crate::desired::{BackupSpec, SinkType};
use crate::model::ConfigFile;
use futures::future::{BoxFuture, FutureExt, Shared};
use ndb_proto::v1 as pb;
use ndb_proto::v1::agent_server::Agent;
use ndb_proto::v1::raft_server::Raft as RaftRpc;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use tonic::{Request, Response, Status};
use tracing::info;

type OpResult = Result<Vec<u32>, BackendError>;
type OpFuture = Shared<BoxFuture<'static, OpResult>>;

/// Operations this agent ran, by operation id: a repeated id gets the first run's result
/// (or waits for it), so a new leader resuming an action never does it twice.
#[derive(Default)]
struct OpCache {
    ops: HashMap<u64, OpFuture>,
    order: VecDeque<u64>,
}

const OP_CACHE_SIZE: usize = 4096;

/// The agent service of one VM.
pub struct AgentService {
    shared: Arc<AgentShared>,
    runtime: Arc<dyn ProcessRuntime>,
    ops: Mutex<OpCache>,
}

impl AgentService {
    pub fn new(shared: Arc<AgentShared>, runtime: Arc<dyn ProcessRuntime>) -> Self {
        AgentService {
            shared,
            runtime,
            ops: Mutex::new(OpCache::default()),
        }
    }

    fn check(&self, target: &Option<pb::Target>) -> Result<(String, u64), Status> {
        let t = target
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("the request names no target VM"))?;
        if t.vm != self.shared.vm {
            return Err(Status::permission_denied(format!(
                "this is the agent of VM {}, not of {}; the caller's address book is stale",
                self.shared.vm, t.vm
            )));
        }
        Ok((t.vm.clone(), t.op_id))
    }

    /// Runs `op` once per operation id; the run continues even if the caller goes away.
    async fn run(
        &self,
        op_id: u64,
        op: BoxFuture<'static, OpResult>,
    ) -> Result<Response<pb::OpReply>, Status> {
        let fut = if op_id == 0 {
            op.shared()
        } else {
            let mut cache = self
                .ops
                .lock()
                .map_err(|_| Status::internal("operation cache poisoned"))?;
            if let Some(f) = cache.ops.get(&op_id) {
                info!(op_id, vm = %self.shared.vm, "repeated operation: answering with its first result");
                f.clone()
            } else {
                let handle = tokio::spawn(op);
                let f: OpFuture = async move {
                    handle.await.unwrap_or_else(|e| {
                        Err(BackendError::refused(format!("operation panicked: {e}")))
                    })
                }
                .boxed()
                .shared();
                cache.ops.insert(op_id, f.clone());
                cache.order.push_back(op_id);
                while cache.order.len() > OP_CACHE_SIZE {
                    if let Some(old) = cache.order.pop_front() {
                        cache.ops.remove(&old);
                    }
                }
                f
            }
        };
        Ok(Response::new(match fut.await {
            Ok(node_ids) => pb::OpReply {
                node_ids,
                failure: None,
            },
            Err(e) => pb::OpReply {
                node_ids: vec![],
                failure: Some(failure_to_pb(&e)),
            },
        }))
    }
}

/// A failed operation as the agent answers it (and back, in [`failure_from_pb`]).
pub fn failure_to_pb(e: &BackendError) -> pb::Failure {
    pb::Failure {
        kind: match e.kind {
            ErrorKind::VmGone => pb::FailureKind::VmGone,
            ErrorKind::Transient => pb::FailureKind::Transient,
            ErrorKind::Refused => pb::FailureKind::Refused,
        } as i32,
        vm: e.vm.clone().unwrap_or_default(),
        op_id: e.op.0,
        message: e.message.clone(),
    }
}

/// The agent of `vm` answered that the operation failed.
pub fn failure_from_pb(vm: &str, f: pb::Failure) -> BackendError {
    let kind = match pb::FailureKind::try_from(f.kind) {
        Ok(pb::FailureKind::VmGone) => ErrorKind::VmGone,
        Ok(pb::FailureKind::Transient) => ErrorKind::Transient,
        _ => ErrorKind::Refused,
    };
    let on = if f.vm.is_empty() {
        vm.to_string()
    } else {
        f.vm
    };
    BackendError::new(kind, f.message)
        .on(on)
        .in_op(OpId(f.op_id))
}

pub fn kind_from_pb(k: i32) -> Result<ProgramKind, Status> {
    match pb::ProgramKind::try_from(k) {
        Ok(pb::ProgramKind::Mgmd) => Ok(ProgramKind::Mgmd),
        Ok(pb::ProgramKind::DataNode) => Ok(ProgramKind::DataNode),
        Ok(pb::ProgramKind::Mysqld) => Ok(ProgramKind::Mysqld),
        Ok(pb::ProgramKind::Api) => Ok(ProgramKind::Api),
        _ => Err(Status::invalid_argument(format!(
            "unknown program kind {k}"
        ))),
    }
}

pub fn kind_to_pb(k: ProgramKind) -> pb::ProgramKind {
    match k {
        ProgramKind::Mgmd => pb::ProgramKind::Mgmd,
        ProgramKind::DataNode => pb::ProgramKind::DataNode,
        ProgramKind::Mysqld => pb::ProgramKind::Mysqld,
        ProgramKind::Api => pb::ProgramKind::Api,
    }
}

/// RonDB's view of a program's nodes, for the wire.
pub fn rondb_to_pb(nodes: &[RonDbNode]) -> Vec<pb::RonDbNode> {
    nodes
        .iter()
        .map(|n| pb::RonDbNode {
            node_id: n.node_id,
            status: match n.status {
                NodeStatus::Unknown => pb::NodeStatus::Unknown,
                NodeStatus::NoContact => pb::NodeStatus::NoContact,
                NodeStatus::NotStarted => pb::NodeStatus::NotStarted,
                NodeStatus::Starting => pb::NodeStatus::Starting,
                NodeStatus::Started => pb::NodeStatus::Started,
                NodeStatus::ShuttingDown => pb::NodeStatus::ShuttingDown,
                NodeStatus::Restarting => pb::NodeStatus::Restarting,
                NodeStatus::SingleUserMode => pb::NodeStatus::SingleUserMode,
                NodeStatus::Resume => pb::NodeStatus::Resume,
                NodeStatus::Connected => pb::NodeStatus::Connected,
            } as i32,
            start_phase: n.start_phase,
        })
        .collect()
}

/// A status word this build does not know (a newer agent's) reads as `Unknown`.
pub fn rondb_from_pb(nodes: Vec<pb::RonDbNode>) -> Vec<RonDbNode> {
    nodes
        .into_iter()
        .map(|n| RonDbNode {
            node_id: n.node_id,
            status: match pb::NodeStatus::try_from(n.status) {
                Ok(pb::NodeStatus::NoContact) => NodeStatus::NoContact,
                Ok(pb::NodeStatus::NotStarted) => NodeStatus::NotStarted,
                Ok(pb::NodeStatus::Starting) => NodeStatus::Starting,
                Ok(pb::NodeStatus::Started) => NodeStatus::Started,
                Ok(pb::NodeStatus::ShuttingDown) => NodeStatus::ShuttingDown,
                Ok(pb::NodeStatus::Restarting) => NodeStatus::Restarting,
                Ok(pb::NodeStatus::SingleUserMode) => NodeStatus::SingleUserMode,
                Ok(pb::NodeStatus::Resume) => NodeStatus::Resume,
                Ok(pb::NodeStatus::Connected) => NodeStatus::Connected,
                Ok(pb::NodeStatus::Unknown) | Err(_) => NodeStatus::Unknown,
            },
            start_phase: n.start_phase,
        })
        .collect()
}

pub fn backup_from_pb(b: Option<pb::Backup>) -> Result<BackupSpec, Status> {
    let b = b.ok_or_else(|| Status::invalid_argument("the request names no backup"))?;
    let sink_type = match pb::SinkType::try_from(b.sink_type) {
        Ok(pb::SinkType::Local) => SinkType::Local,
        Ok(pb::SinkType::Docker) => SinkType::Docker,
        Ok(pb::SinkType::S3) => SinkType::S3,
        _ => {
            return Err(Status::invalid_argument(format!(
                "unknown sink type {}",
                b.sink_type
            )))
        }
    };
    let sink_parameters = b
        .sink_parameters
        .map(|st| {
            st.fields
                .into_iter()
                .map(|(k, v)| (k, json_from_pb(v)))
                .collect()
        })
        .unwrap_or_default();
    Ok(BackupSpec {
        id: b.id,
        sink_type,
        sink_parameters,
    })
}

pub fn backup_to_pb(b: &BackupSpec) -> pb::Backup {
    pb::Backup {
        id: b.id,
        sink_type: match b.sink_type {
            SinkType::Local => pb::SinkType::Local,
            SinkType::Docker => pb::SinkType::Docker,
            SinkType::S3 => pb::SinkType::S3,
        } as i32,
        sink_parameters: Some(prost_types::Struct {
            fields: b
                .sink_parameters
                .iter()
                .map(|(k, v)| (k.clone(), json_to_pb(v)))
                .collect(),
        }),
    }
}

/// A JSON value of the desired state as protobuf's own JSON value.
fn json_to_pb(v: &serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    use serde_json::Value as J;
    let kind = match v {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(*b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        J::String(s) => Kind::StringValue(s.clone()),
        J::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(json_to_pb).collect(),
        }),
        J::Object(o) => Kind::StructValue(prost_types::Struct {
            fields: o.iter().map(|(k, v)| (k.clone(), json_to_pb(v))).collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

fn json_from_pb(v: prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    use serde_json::Value as J;
    match v.kind {
        None | Some(Kind::NullValue(_)) => J::Null,
        Some(Kind::BoolValue(b)) => J::Bool(b),
        Some(Kind::NumberValue(n)) => {
            // Whole numbers come back as integers, as they were written.
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                J::from(n as i64)
            } else {
                serde_json::Number::from_f64(n).map_or(J::Null, J::Number)
            }
        }
        Some(Kind::StringValue(s)) => J::String(s),
        Some(Kind::ListValue(l)) => J::Array(l.values.into_iter().map(json_from_pb).collect()),
        Some(Kind::StructValue(st)) => J::Object(
            st.fields
                .into_iter()
                .map(|(k, v)| (k, json_from_pb(v)))
                .collect(),
        ),
    }
}

pub fn step_from_pb(s: i32) -> Result<RestoreStep, Status> {
    match pb::RestoreStep::try_from(s) {
        Ok(pb::RestoreStep::Meta) => Ok(RestoreStep::Meta),
        Ok(pb::RestoreStep::Data) => Ok(RestoreStep::Data),
        Ok(pb::RestoreStep::RebuildIndexes) => Ok(RestoreStep::RebuildIndexes),
        _ => Err(Status::invalid_argument(format!(
            "unknown restore step {s}"
        ))),
    }
}

pub fn step_to_pb(s: RestoreStep) -> pb::RestoreStep {
    match s {
        RestoreStep::Meta => pb::RestoreStep::Meta,
        RestoreStep::Data => pb::RestoreStep::Data,
        RestoreStep::RebuildIndexes => pb::RestoreStep::RebuildIndexes,
    }
}

macro_rules! op {
    ($self:ident, $vm:ident, $body:expr) => {{
        let rt = Arc::clone(&$self.runtime);
        let $vm = $vm.clone();
        async move {
            let rt = rt;
            $body(rt, $vm).await
        }
        .boxed()
    }};
}

#[tonic::async_trait]
impl Agent for AgentService {
    async fn install_software(
        &self,
        req: Request<pb::InstallSoftwareRequest>,
    ) -> Result<Response<pb::OpReply>, Status> {
        let r = req.into_inner();
        let (vm, op_id) = self.check(&r.target)?;
        let (version, url) = (r.version, r.url);
        let fut = op!(
            self,
            vm,
            |rt: Arc<dyn ProcessRuntime>, vm: String| async move {
                rt.install_software(OpId(op_id), &vm, &version, &url)
                    .await
                    .map(|_| vec![])
            }
        );
        self.run(op_id, fut).await
    }

    async fn write_files(
        &self,
        req: Request<pb::WriteFilesRequest>,
    ) -> Result<Response<pb::OpReply>, Status> {
        let r = req.into_inner();
        let (vm, op_id) = self.check(&r.target)?;
        let files: Vec<ConfigFile> = r
            .files
            .into_iter()
            .map(|f| ConfigFile {
                path: f.path,
                content: f.content,
            })
            .collect();
        let fut = op!(
            self,
            vm,
            |rt: Arc<dyn ProcessRuntime>, vm: String| async move {
                rt.write_files(OpId(op_id), &vm, &files)
                    .await
                    .map(|_| vec![])
            }
        );
        self.run(op_id, fut).await
    }

    async fn start_program(
        &self,
        req: Request<pb::StartProgramRequest>,
    ) -> Result<Response<pb::OpReply>, Status> {
        let r = req.into_inner();
        let (vm, op_id) = self.check(&r.target)?;
        let spec = ProgramSpec {
            kind: kind_from_pb(r.kind)?,
            version: r.version,
            node_ids: r.node_ids,
            initial: r.initial,
            command: r.command,
        };
        let fut = op!(
            self,
            vm,
            |rt: Arc<dyn ProcessRuntime>, vm: String| async move {
                rt.start_program(OpId(op_id), &vm, &spec)
                    .await
                    .map(|_| vec![])
            }
        );
        self.run(op_id, fut).await
    }

    async fn stop_program(
        &self,
        req: Request<pb::StopProgramRequest>,
    ) -> Result<Response<pb::OpReply>, Status> {
        let r = req.into_inner();
        let (vm, op_id) = self.check(&r.target)?;
        let kind = kind_from_pb(r.kind)?;
        let shutdown = r.cluster_shutdown;
        let fut = op!(
            self,
            vm,
            |rt: Arc<dyn ProcessRuntime>, vm: String| async move {
                rt.stop_program(OpId(op_id), &vm, kind, shutdown)
                    .await
                    .map(|_| vec![])
            }
        );
        self.run(op_id, fut).await
    }

    async fn program_status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::ProgramStatusReply>, Status> {
        let r = req.into_inner();
        let (vm, _) = self.check(&r.target)?;
        Ok(Response::new(match self.runtime.status(&vm).await {
            Ok(st) => pb::ProgramStatusReply {
                running: st.running,
                rondb: rondb_to_pb(&st.rondb),
                version: st.version.unwrap_or_default(),
                failure: None,
            },
            Err(e) => pb::ProgramStatusReply {
                running: false,
                version: String::new(),
                failure: Some(failure_to_pb(&e)),
                rondb: Vec::new(),
            },
        }))
    }

    async fn mgm_command(
        &self,
        req: Request<pb::MgmCommandRequest>,
    ) -> Result<Response<pb::OpReply>, Status> {
        let r = req.into_inner();
        let (vm, op_id) = self.check(&r.target)?;
        use pb::mgm_command_request::Command as C;
        let cmd = match r.command {
            Some(C::Activate(node_id)) => MgmCommand::Activate { node_id },
            Some(C::Deactivate(node_id)) => MgmCommand::Deactivate { node_id },
            Some(C::Hostname(h)) => MgmCommand::Hostname {
                node_id: h.node_id,
                host: h.host,
            },
            Some(C::StartBackup(backup_id)) => MgmCommand::StartBackup { backup_id },
            None => return Err(Status::invalid_argument("no management command given")),
        };
        let fut = op!(
            self,
            vm,
            |rt: Arc<dyn ProcessRuntime>, vm: String| async move {
                rt.mgm_command(OpId(op_id), &vm, &cmd).await
            }
        );
        self.run(op_id, fut).await
    }

    async fn restore(
        &self,
        req: Request<pb::RestoreRequest>,
    ) -> Result<Response<pb::OpReply>, Status> {
        let r = req.into_inner();
        let (vm, op_id) = self.check(&r.target)?;
        let run = RestoreRun {
            backup: backup_from_pb(r.backup)?,
            step: step_from_pb(r.step)?,
            api_node_id: r.api_node_id,
            original_node: r.original_node,
            command: r.command,
        };
        let fut = op!(
            self,
            vm,
            |rt: Arc<dyn ProcessRuntime>, vm: String| async move {
                rt.restore(OpId(op_id), &vm, &run).await
            }
        );
        self.run(op_id, fut).await
    }

    async fn delete_backup(
        &self,
        req: Request<pb::DeleteBackupRequest>,
    ) -> Result<Response<pb::OpReply>, Status> {
        let r = req.into_inner();
        let (vm, op_id) = self.check(&r.target)?;
        let backup = backup_from_pb(r.backup)?;
        let fut = op!(
            self,
            vm,
            |rt: Arc<dyn ProcessRuntime>, vm: String| async move {
                rt.delete_backup(OpId(op_id), &vm, &backup)
                    .await
                    .map(|_| vec![])
            }
        );
        self.run(op_id, fut).await
    }

    async fn restart_agent(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::OpReply>, Status> {
        let r = req.into_inner();
        let (vm, _) = self.check(&r.target)?;
        info!(%vm, "restart requested by the leader");
        self.shared.request_restart();
        Ok(Response::new(pb::OpReply::default()))
    }

    async fn upgrade_agent(
        &self,
        req: Request<pb::UpgradeAgentRequest>,
    ) -> Result<Response<pb::OpReply>, Status> {
        let r = req.into_inner();
        let (vm, op_id) = self.check(&r.target)?;
        let (version, url) = (r.version, r.url);
        let dir = self.shared.dir.clone();
        let fut = op!(
            self,
            vm,
            |rt: Arc<dyn ProcessRuntime>, vm: String| async move {
                super::upgrade::install(&dir, &version, &url).await?;
                rt.upgrade_agent(OpId(op_id), &vm, &version, &url)
                    .await
                    .map(|_| vec![])
            }
        );
        let reply = self.run(op_id, fut).await?;
        self.shared.request_restart();
        Ok(reply)
    }

    async fn take_leadership(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::OpReply>, Status> {
        let r = req.into_inner();
        self.check(&r.target)?;
        let (_, raft) = self
            .shared
            .raft()
            .ok_or_else(|| Status::unavailable("this agent has not joined the Raft group"))?;
        info!(vm = %self.shared.vm, "standing for election (leadership handover)");
        raft.trigger()
            .elect()
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::OpReply::default()))
    }

    async fn get_identity(
        &self,
        _req: Request<pb::IdentityRequest>,
    ) -> Result<Response<pb::Identity>, Status> {
        Ok(Response::new(self.shared.identity()))
    }

    async fn join(&self, req: Request<pb::JoinRequest>) -> Result<Response<pb::OpReply>, Status> {
        let r = req.into_inner();
        self.check(&r.target)?;
        self.shared
            .join(r.raft_id)
            .await
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        Ok(Response::new(pb::OpReply::default()))
    }
}

/// Hands Raft messages to this agent's Raft node, refusing ones meant for another id.
pub struct RaftService {
    shared: Arc<AgentShared>,
}

impl RaftService {
    pub fn new(shared: Arc<AgentShared>) -> Self {
        RaftService { shared }
    }

    fn raft(&self, target: u64) -> Result<crate::raft::Raft, Status> {
        let (id, raft) = self
            .shared
            .raft()
            .ok_or_else(|| Status::unavailable("this agent has not joined the Raft group yet"))?;
        if id != target {
            return Err(Status::permission_denied(format!(
                "this agent is Raft node {id}, not {target}"
            )));
        }
        Ok(raft)
    }
}

fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, Status> {
    serde_json::from_slice(b)
        .map_err(|e| Status::invalid_argument(format!("bad Raft message: {e}")))
}

fn reply<T: serde::Serialize>(v: &T) -> Result<Response<pb::RaftReply>, Status> {
    serde_json::to_vec(v)
        .map(|json| Response::new(pb::RaftReply { json }))
        .map_err(|e| Status::internal(format!("cannot encode Raft reply: {e}")))
}

impl RaftService {
    /// A Raft message must come from the VM that holds its sender's Raft id (when this
    /// replica knows the id: a lagging one learns new members from these very messages).
    fn check_sender<T>(
        &self,
        req: &Request<T>,
        sender: Option<crate::raft::NodeId>,
    ) -> Result<(), Status> {
        let Some(sender) = sender else {
            return Ok(());
        };
        let peer = req
            .peer_certs()
            .and_then(|c| crate::tls::peer_vm(&c))
            .ok_or_else(|| Status::unauthenticated("no client certificate naming a VM"))?;
        let Some(rep) = self.shared.replicated() else {
            return Ok(());
        };
        match rep.membership.membership().get_node(&sender) {
            Some(n) if n.vm != peer => Err(Status::permission_denied(format!(
                "a Raft message from node {sender} (VM {}) came with the certificate of VM {peer}",
                n.vm
            ))),
            _ => Ok(()),
        }
    }
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(
        &self,
        req: Request<pb::RaftRequest>,
    ) -> Result<Response<pb::RaftReply>, Status> {
        let raft = self.raft(req.get_ref().target_raft_id)?;
        let msg: openraft::raft::AppendEntriesRequest<crate::raft::TypeConfig> =
            decode(&req.get_ref().json)?;
        self.check_sender(&req, msg.vote.leader_id().voted_for())?;
        let res = raft.append_entries(msg).await;
        if matches!(
            &res,
            Ok(openraft::raft::AppendEntriesResponse::Success
                | openraft::raft::AppendEntriesResponse::PartialSuccess(_)
                | openraft::raft::AppendEntriesResponse::Conflict)
        ) {
            self.shared.heard_from_leader();
        }
        reply(&res)
    }

    async fn vote(&self, req: Request<pb::RaftRequest>) -> Result<Response<pb::RaftReply>, Status> {
        let raft = self.raft(req.get_ref().target_raft_id)?;
        let msg: openraft::raft::VoteRequest<crate::raft::NodeId> = decode(&req.get_ref().json)?;
        self.check_sender(&req, msg.vote.leader_id().voted_for())?;
        let res = raft.vote(msg).await;
        reply(&res)
    }

    async fn install_snapshot(
        &self,
        req: Request<pb::RaftRequest>,
    ) -> Result<Response<pb::RaftReply>, Status> {
        let raft = self.raft(req.get_ref().target_raft_id)?;
        let msg: openraft::raft::InstallSnapshotRequest<crate::raft::TypeConfig> =
            decode(&req.get_ref().json)?;
        self.check_sender(&req, msg.vote.leader_id().voted_for())?;
        let res = raft.install_snapshot(msg).await;
        reply(&res)
    }
}

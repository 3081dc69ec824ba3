//! The leader's `ProcessRuntime`: every call goes over gRPC to the agent of the target VM,
//! with the action's operation id, so a repeat after a leader change is answered, not redone.

use super::grpc::{backup_to_pb, failure_from_pb, kind_to_pb, rondb_from_pb, step_to_pb};
use super::AgentShared;
use crate::backend::{
    BackendError, ErrorKind, MgmCommand, OpId, ProcessRuntime, ProgramKind, ProgramSpec,
    ProgramStatus, RestoreRun,
};
use crate::desired::BackupSpec;
use crate::model::ConfigFile;
use async_trait::async_trait;
use ndb_proto::v1 as pb;
use ndb_proto::v1::agent_client::AgentClient;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// How long an agent may be unreachable before the VM counts as gone for this call.
pub const UNREACHABLE_AFTER: Duration = Duration::from_secs(3);

/// `ProcessRuntime` over the agents' gRPC services.
pub struct RemoteRuntime {
    shared: Arc<AgentShared>,
}

impl RemoteRuntime {
    pub fn new(shared: Arc<AgentShared>) -> Self {
        RemoteRuntime { shared }
    }

    async fn call<T, F, Fut>(&self, op: OpId, vm: &str, f: F) -> Result<T, BackendError>
    where
        T: Answer,
        F: Fn(AgentClient<Channel>, pb::Target) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call_within(op, vm, UNREACHABLE_AFTER, f).await
    }

    /// Calls `vm`'s agent, retrying while it is unreachable for up to `patience`.
    async fn call_within<T, F, Fut>(
        &self,
        op: OpId,
        vm: &str,
        patience: Duration,
        f: F,
    ) -> Result<T, BackendError>
    where
        T: Answer,
        F: Fn(AgentClient<Channel>, pb::Target) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        use backon::{ConstantBuilder, Retryable};
        let poll = Duration::from_millis(250);
        let attempt = || async {
            let Some(ep) = self.shared.endpoint_of(vm) else {
                return Err(Attempt::Failed(
                    BackendError::new(
                        ErrorKind::VmGone,
                        format!("{vm}: no agent of this VM is known to the cluster"),
                    )
                    .on(vm)
                    .in_op(op),
                ));
            };
            let client = self.shared.agent_client(&ep).map_err(|e| {
                Attempt::Failed(BackendError::refused(format!(
                    "{vm}: bad agent address {ep}: {e}"
                )))
            })?;
            let target = pb::Target {
                vm: vm.to_string(),
                op_id: op.0,
            };
            match f(client, target).await {
                Ok(r) => {
                    let mut r = r.into_inner();
                    match r.failure() {
                        Some(f) => Err(Attempt::Failed(failure_from_pb(vm, f).in_op(op))),
                        None => Ok(r),
                    }
                }
                Err(s) if unreachable(&s) => Err(Attempt::Unreachable(ep, s)),
                Err(s) => Err(Attempt::Failed(from_status(vm, s).in_op(op))),
            }
        };
        // Unreachable: try again every 250 ms for up to `patience` (an agent restarting).
        let tries = (patience.as_millis() / poll.as_millis()) as usize;
        match attempt
            .retry(
                ConstantBuilder::new()
                    .with_delay(poll)
                    .with_max_times(tries),
            )
            .when(|e| matches!(e, Attempt::Unreachable(..)))
            .await
        {
            Ok(r) => Ok(r),
            Err(Attempt::Failed(e)) => Err(e),
            Err(Attempt::Unreachable(ep, s)) => Err(BackendError::new(
                ErrorKind::VmGone,
                format!(
                    "{vm}: agent at {ep} unreachable for {:.1}s: {}",
                    patience.as_secs_f64(),
                    s.message()
                ),
            )
            .on(vm)
            .in_op(op)
            .caused_by(s)),
        }
    }
}

/// One call to an agent that did not answer: it could not be reached (worth another try
/// while it may be restarting), or it failed for good.
enum Attempt {
    Unreachable(String, Status),
    Failed(BackendError),
}

impl RemoteRuntime {
    /// The leader never restarts under its own feet: it hands the leadership over first;
    /// the next leader resumes the same action (same operation id) on this VM.
    async fn leader_last(&self, vm: &str) -> Result<(), BackendError> {
        if vm != self.shared.vm {
            return Ok(());
        }
        self.shared.hand_over_leadership().await?;
        Err(BackendError::transient(format!(
            "{vm} runs the leader; leadership was handed over and the next leader does this"
        )))
    }
}

/// An agent's answer, which may say that the operation failed.
trait Answer {
    fn failure(&mut self) -> Option<pb::Failure>;
}

impl Answer for pb::OpReply {
    fn failure(&mut self) -> Option<pb::Failure> {
        self.failure.take()
    }
}

impl Answer for pb::ProgramStatusReply {
    fn failure(&mut self) -> Option<pb::Failure> {
        self.failure.take()
    }
}

/// The call did not reach the agent (its answers, failures included, come as replies).
fn unreachable(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled
    )
}

/// A call the agent of `vm` turned away before running it (a malformed request, a stale
/// address book): retrying the same call does not help.
pub fn from_status(vm: &str, s: Status) -> BackendError {
    match s.code() {
        Code::ResourceExhausted | Code::DeadlineExceeded => {
            BackendError::transient(format!("{vm}: {}", s.message()))
        }
        _ => BackendError::refused(format!("{vm}: {}", s.message())),
    }
    .on(vm)
    .caused_by(s)
}

fn no_ids(r: Result<pb::OpReply, BackendError>) -> Result<(), BackendError> {
    r.map(|_| ())
}

#[async_trait]
impl ProcessRuntime for RemoteRuntime {
    async fn install_software(
        &self,
        op: OpId,
        vm: &str,
        version: &str,
        url: &str,
    ) -> Result<(), BackendError> {
        no_ids(
            self.call(op, vm, |mut c, target| async move {
                c.install_software(pb::InstallSoftwareRequest {
                    target: Some(target),
                    version: version.to_string(),
                    url: url.to_string(),
                })
                .await
            })
            .await,
        )
    }

    async fn write_files(
        &self,
        op: OpId,
        vm: &str,
        files: &[ConfigFile],
    ) -> Result<(), BackendError> {
        let files: Vec<pb::ConfigFile> = files
            .iter()
            .map(|f| pb::ConfigFile {
                path: f.path.clone(),
                content: f.content.clone(),
            })
            .collect();
        no_ids(
            self.call(op, vm, |mut c, target| {
                let files = files.clone();
                async move {
                    c.write_files(pb::WriteFilesRequest {
                        target: Some(target),
                        files,
                    })
                    .await
                }
            })
            .await,
        )
    }

    async fn start_program(
        &self,
        op: OpId,
        vm: &str,
        spec: &ProgramSpec,
    ) -> Result<(), BackendError> {
        no_ids(
            self.call(op, vm, |mut c, target| async move {
                c.start_program(pb::StartProgramRequest {
                    target: Some(target),
                    kind: kind_to_pb(spec.kind) as i32,
                    version: spec.version.clone(),
                    node_ids: spec.node_ids.clone(),
                    initial: spec.initial,
                    command: spec.command.clone(),
                })
                .await
            })
            .await,
        )
    }

    async fn stop_program(
        &self,
        op: OpId,
        vm: &str,
        kind: ProgramKind,
        cluster_shutdown: bool,
    ) -> Result<(), BackendError> {
        no_ids(
            self.call(op, vm, |mut c, target| async move {
                c.stop_program(pb::StopProgramRequest {
                    target: Some(target),
                    kind: kind_to_pb(kind) as i32,
                    cluster_shutdown,
                })
                .await
            })
            .await,
        )
    }

    async fn status(&self, vm: &str) -> Result<ProgramStatus, BackendError> {
        // Observation must be quick: one attempt; a dead agent is the provider's to judge.
        let r = self
            .call_within(OpId::NONE, vm, Duration::ZERO, |mut c, target| async move {
                let mut req = tonic::Request::new(pb::StatusRequest {
                    target: Some(target),
                });
                req.set_timeout(Duration::from_secs(1));
                c.program_status(req).await
            })
            .await?;
        Ok(ProgramStatus {
            running: r.running,
            version: Some(r.version).filter(|v| !v.is_empty()),
            rondb: rondb_from_pb(r.rondb),
        })
    }

    async fn mgm_command(
        &self,
        op: OpId,
        vm: &str,
        cmd: &MgmCommand,
    ) -> Result<Vec<u32>, BackendError> {
        use pb::mgm_command_request::Command as C;
        let command = match cmd {
            MgmCommand::Activate { node_id } => C::Activate(*node_id),
            MgmCommand::Deactivate { node_id } => C::Deactivate(*node_id),
            MgmCommand::Hostname { node_id, host } => C::Hostname(pb::Hostname {
                node_id: *node_id,
                host: host.clone(),
            }),
            MgmCommand::StartBackup { backup_id } => C::StartBackup(*backup_id),
        };
        let r = self
            .call(op, vm, |mut c, target| {
                let command = command.clone();
                async move {
                    c.mgm_command(pb::MgmCommandRequest {
                        target: Some(target),
                        command: Some(command),
                    })
                    .await
                }
            })
            .await?;
        Ok(r.node_ids)
    }

    async fn restore(
        &self,
        op: OpId,
        vm: &str,
        run: &RestoreRun,
    ) -> Result<Vec<u32>, BackendError> {
        let r = self
            .call(op, vm, |mut c, target| async move {
                c.restore(pb::RestoreRequest {
                    target: Some(target),
                    backup: Some(backup_to_pb(&run.backup)),
                    step: step_to_pb(run.step) as i32,
                    api_node_id: run.api_node_id,
                    original_node: run.original_node,
                    command: run.command.clone(),
                })
                .await
            })
            .await?;
        Ok(r.node_ids)
    }

    async fn delete_backup(
        &self,
        op: OpId,
        vm: &str,
        backup: &BackupSpec,
    ) -> Result<(), BackendError> {
        no_ids(
            self.call(op, vm, |mut c, target| async move {
                c.delete_backup(pb::DeleteBackupRequest {
                    target: Some(target),
                    backup: Some(backup_to_pb(backup)),
                })
                .await
            })
            .await,
        )
    }

    async fn restart_agent(&self, op: OpId, vm: &str) -> Result<(), BackendError> {
        self.leader_last(vm).await?;
        no_ids(
            self.call(op, vm, |mut c, target| async move {
                c.restart_agent(pb::StatusRequest {
                    target: Some(target),
                })
                .await
            })
            .await,
        )?;
        self.shared.wait_agent_back(vm).await
    }

    async fn upgrade_agent(
        &self,
        op: OpId,
        vm: &str,
        version: &str,
        url: &str,
    ) -> Result<(), BackendError> {
        self.leader_last(vm).await?;
        no_ids(
            self.call(op, vm, |mut c, target| async move {
                c.upgrade_agent(pb::UpgradeAgentRequest {
                    target: Some(target),
                    version: version.to_string(),
                    url: url.to_string(),
                })
                .await
            })
            .await,
        )?;
        self.shared.wait_agent_back(vm).await
    }
}

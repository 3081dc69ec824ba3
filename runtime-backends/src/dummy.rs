//! The dummy runtime: every call takes its simulated time and changes the mock world the way
//! the real program would, refusing what RonDB would refuse (the rules live in `sim-world`).

use agent_core::backend::{
    BackendError, MgmCommand, OpId, ProcessRuntime, ProgramKind, ProgramSpec, ProgramStatus,
    RestoreRun,
};
use agent_core::desired::BackupSpec;
use agent_core::engine::BackendCall;
use agent_core::model::{ConfigFile, Outcome};
use async_trait::async_trait;
use sim_world::{lock, run_call, SharedWorld};

/// `ProcessRuntime` over the mock world.
#[derive(Clone)]
pub struct DummyRuntime {
    pub world: SharedWorld,
}

impl DummyRuntime {
    pub fn new(world: SharedWorld) -> Self {
        DummyRuntime { world }
    }

    async fn done(&self, op: OpId, call: BackendCall) -> Result<(), BackendError> {
        run_call(&self.world, op, call).await.map(|_| ())
    }
}

#[async_trait]
impl ProcessRuntime for DummyRuntime {
    async fn install_software(
        &self,
        op: OpId,
        vm: &str,
        version: &str,
        url: &str,
    ) -> Result<(), BackendError> {
        let call = BackendCall::InstallSoftware {
            vm: vm.into(),
            version: version.into(),
            url: url.into(),
        };
        self.done(op, call).await
    }

    async fn write_files(
        &self,
        op: OpId,
        vm: &str,
        files: &[ConfigFile],
    ) -> Result<(), BackendError> {
        let call = BackendCall::WriteFiles {
            vm: vm.into(),
            files: files.to_vec(),
        };
        self.done(op, call).await
    }

    async fn start_program(
        &self,
        op: OpId,
        vm: &str,
        spec: &ProgramSpec,
    ) -> Result<(), BackendError> {
        let call = BackendCall::StartProgram {
            vm: vm.into(),
            spec: spec.clone(),
        };
        self.done(op, call).await
    }

    async fn stop_program(
        &self,
        op: OpId,
        vm: &str,
        kind: ProgramKind,
        cluster_shutdown: bool,
    ) -> Result<(), BackendError> {
        let call = BackendCall::StopProgram {
            vm: vm.into(),
            kind,
            cluster_shutdown,
        };
        self.done(op, call).await
    }

    async fn status(&self, vm: &str) -> Result<ProgramStatus, BackendError> {
        let w = lock(&self.world);
        if !w.vms.contains_key(vm) {
            return Err(BackendError::vm_gone(vm.to_string()));
        }
        Ok(w.status(vm))
    }

    async fn mgm_command(
        &self,
        op: OpId,
        vm: &str,
        cmd: &MgmCommand,
    ) -> Result<Vec<u32>, BackendError> {
        let call = match cmd {
            MgmCommand::StartBackup { backup_id } => BackendCall::StartBackup {
                via: vm.into(),
                backup_id: *backup_id,
            },
            _ => BackendCall::Mgm {
                via: vm.into(),
                cmd: cmd.clone(),
            },
        };
        Ok(match run_call(&self.world, op, call).await? {
            Outcome::BackupTaken { data_nodes } => data_nodes,
            _ => vec![],
        })
    }

    async fn restore(
        &self,
        op: OpId,
        vm: &str,
        run: &RestoreRun,
    ) -> Result<Vec<u32>, BackendError> {
        let call = BackendCall::Restore {
            vm: vm.into(),
            run: run.clone(),
        };
        Ok(match run_call(&self.world, op, call).await? {
            Outcome::RestoreMetaRead { original_nodes } => original_nodes,
            _ => vec![],
        })
    }

    async fn delete_backup(
        &self,
        op: OpId,
        vm: &str,
        backup: &BackupSpec,
    ) -> Result<(), BackendError> {
        let call = BackendCall::DeleteBackup {
            via: vm.into(),
            backup: backup.clone(),
        };
        self.done(op, call).await
    }

    async fn restart_agent(&self, op: OpId, vm: &str) -> Result<(), BackendError> {
        self.done(op, BackendCall::RestartAgent { vm: vm.into() })
            .await
    }

    async fn upgrade_agent(
        &self,
        op: OpId,
        vm: &str,
        version: &str,
        url: &str,
    ) -> Result<(), BackendError> {
        let call = BackendCall::UpgradeAgent {
            vm: vm.into(),
            version: version.into(),
            url: url.into(),
        };
        self.done(op, call).await
    }
}

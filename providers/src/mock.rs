//! `mock`: the `CloudProvider` of the simulated world (`sim-world`): VMs appear and vanish
//! in memory after the cost model's time, as a cloud's would.

use agent_core::backend::{BackendError, CloudProvider, OpId, VmInfo, VmSpec};
use agent_core::engine::BackendCall;
use agent_core::model::Outcome;
use async_trait::async_trait;
use sim_world::{lock, run_call, SharedWorld};

/// `CloudProvider` over the mock world.
#[derive(Clone)]
pub struct MockProvider {
    pub world: SharedWorld,
}

impl MockProvider {
    pub fn new(world: SharedWorld) -> Self {
        MockProvider { world }
    }
}

#[async_trait]
impl CloudProvider for MockProvider {
    async fn create_vm(&self, op: OpId, spec: &VmSpec) -> Result<VmInfo, BackendError> {
        match run_call(&self.world, op, BackendCall::CreateVm(spec.clone())).await? {
            Outcome::VmCreated(info) => Ok(info),
            other => Err(BackendError::refused(format!(
                "mock provider: creating {} answered {other:?}",
                spec.name
            ))),
        }
    }

    async fn delete_vm(&self, op: OpId, name: &str) -> Result<(), BackendError> {
        run_call(&self.world, op, BackendCall::DeleteVm { vm: name.into() })
            .await
            .map(|_| ())
    }

    async fn start_vm(&self, op: OpId, name: &str) -> Result<VmInfo, BackendError> {
        match run_call(&self.world, op, BackendCall::StartVm { vm: name.into() }).await? {
            Outcome::VmStarted(info) => Ok(info),
            other => Err(BackendError::refused(format!(
                "mock provider: starting {name} answered {other:?}"
            ))),
        }
    }

    async fn list_vms(&self) -> Result<Vec<VmInfo>, BackendError> {
        Ok(lock(&self.world)
            .vms
            .values()
            .map(|v| v.info.clone())
            .collect())
    }
}

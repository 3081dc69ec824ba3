//! `mock`: the `CloudProvider` of the simulated world (`sim-world`), used by `simulate` and
//! the generative tests.

use agent_core::backend::OpId;
use agent_core::backend::{BackendError, CloudProvider, VmInfo, VmSpec};
use async_trait::async_trait;
use sim_world::{lock, step, SharedWorld, WorldVm};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;

/// Runs provider work in its own task, so that it finishes even if the caller goes away.
async fn spawned<T: Send + 'static>(
    work: impl Future<Output = Result<T, BackendError>> + Send + 'static,
) -> Result<T, BackendError> {
    tokio::spawn(work).await.unwrap_or_else(|e| {
        Err(BackendError::Failed(format!(
            "provider operation panicked: {e}"
        )))
    })
}

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
    async fn create_vm(&self, _op: OpId, spec: &VmSpec) -> Result<VmInfo, BackendError> {
        let cost = lock(&self.world).cost.create_vm;
        let spec = spec.clone();
        let world = self.world.clone();
        // Spawned: a cloud finishes a create even when the leader that asked is gone.
        let work = async move {
            step(&world, cost, None, move |w| {
                // Idempotent by name, as every real provider: a new leader repeating the create
                // of a VM the old one made gets that VM.
                if let Some(v) = w.vms.get(&spec.name) {
                    return Ok(v.info.clone());
                }
                let info = VmInfo {
                    name: spec.name.clone(),
                    role: spec.role,
                    zone: spec.zone.clone(),
                    vm_type: spec.vm_type,
                    storage_gib: spec.storage_gib,
                    address: w.allocate_address(),
                    agent_endpoint: String::new(),
                };
                w.vms.insert(
                    spec.name.clone(),
                    WorldVm {
                        info: info.clone(),
                        installed: BTreeSet::new(),
                        files: BTreeMap::new(),
                        program: None,
                        fs: BTreeSet::new(),
                        agent_version: spec.agent_version.clone(),
                        agent_restarts: 0,
                    },
                );
                Ok(info)
            })
            .await
        };
        spawned(work).await
    }

    async fn delete_vm(&self, _op: OpId, name: &str) -> Result<(), BackendError> {
        let cost = lock(&self.world).cost.delete_vm;
        let name = name.to_string();
        let world = self.world.clone();
        spawned(async move {
            step(&world, cost, None, move |w| {
                w.vms.remove(&name);
                w.exiting.remove(&name);
                Ok(())
            })
            .await
        })
        .await
    }

    async fn list_vms(&self) -> Result<Vec<VmInfo>, BackendError> {
        Ok(lock(&self.world)
            .vms
            .values()
            .map(|v| v.info.clone())
            .collect())
    }
}

//! The `docker` provider (bollard): every VM is a container of the agent image on a
//! user-defined network, with a volume for its storage, memory and CPU limits per VM type,
//! labels `managed-rondb.cluster`, `managed-rondb.role`, `managed-rondb.zone`, and the Docker
//! socket (so its agent can lead). Listing asks Docker itself, so a new leader sees the
//! truth; only containers and volumes carrying this cluster's label are ever removed.

use crate::{ProviderConfig, VmConfig};
use agent_core::backend::OpId;
use agent_core::backend::{BackendError, CloudProvider, VmInfo, VmSpec};
use agent_core::desired::VmType;
use agent_core::model::Role;
use async_trait::async_trait;
use bollard::models::HostConfig;
use bollard::models::{ContainerCreateBody, VolumeCreateRequest};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    StartContainerOptions,
};
use bollard::Docker;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// The gRPC port every agent container listens on.
pub const AGENT_GRPC_PORT: u16 = 7100;
/// The HTTP API port every agent container listens on.
pub const AGENT_HTTP_PORT: u16 = 8181;
/// Where a VM's volume is mounted: the agent's directory.
pub const VM_DIR: &str = "/var/lib/ndb-agent";
/// The environment variable that hands a container its [`VmConfig`].
pub const VM_ENV: &str = "NDB_AGENT_VM";

pub const LABEL_CLUSTER: &str = "managed-rondb.cluster";
pub const LABEL_ROLE: &str = "managed-rondb.role";
pub const LABEL_ZONE: &str = "managed-rondb.zone";
pub const LABEL_VM: &str = "managed-rondb.vm";
pub const LABEL_VM_TYPE: &str = "managed-rondb.vm-type";
pub const LABEL_STORAGE: &str = "managed-rondb.storage-gib";

/// Settings of a Docker cluster.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DockerConfig {
    /// The cluster's name: container and volume names start with it; label value.
    pub cluster: String,
    /// The user-defined network every VM joins.
    pub network: String,
    /// The agent image VMs run.
    pub image: String,
    /// Environment passed on to every agent (e.g. the dummy runtime's delay).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// A VM type's container limits: memory bytes and CPUs (nano).
pub fn limits(t: VmType) -> (i64, i64) {
    let mib: i64 = 1024 * 1024;
    match t {
        VmType::Mini => (256 * mib, 500_000_000),
        VmType::Small => (512 * mib, 1_000_000_000),
        VmType::Medium => (1024 * mib, 1_000_000_000),
        VmType::Large => (2048 * mib, 2_000_000_000),
        VmType::Xlarge => (4096 * mib, 2_000_000_000),
        VmType::Xxlarge => (8192 * mib, 2_000_000_000),
    }
}

fn transient(what: &str, e: impl std::fmt::Display) -> BackendError {
    BackendError::transient(format!("{what}: {e}"))
}

fn is_404(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// The `docker` CloudProvider.
pub struct DockerProvider {
    docker: Docker,
    cfg: DockerConfig,
    runtime: crate::RuntimeKind,
    dead_since: Mutex<BTreeMap<String, Instant>>,
}

impl DockerProvider {
    /// Connects to the local Docker daemon (`DOCKER_HOST` or the Unix socket).
    pub fn new(cfg: DockerConfig, runtime: crate::RuntimeKind) -> Result<Self, BackendError> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(|e| BackendError::refused(format!("cannot connect to Docker: {e}")))?;
        Ok(DockerProvider {
            docker,
            cfg,
            runtime,
            dead_since: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn container_name(&self, vm: &str) -> String {
        format!("{}-{vm}", self.cfg.cluster)
    }

    fn volume_name(&self, vm: &str) -> String {
        format!("{}-{vm}-data", self.cfg.cluster)
    }

    /// The container's address on the cluster network, if it runs.
    async fn address(&self, container: &str) -> Result<Option<String>, BackendError> {
        let c = match self.docker.inspect_container(container, None).await {
            Ok(c) => c,
            Err(e) if is_404(&e) => return Ok(None),
            Err(e) => return Err(transient("docker inspect", e)),
        };
        let running = c.state.as_ref().and_then(|s| s.running).unwrap_or(false);
        if !running {
            return Ok(None);
        }
        Ok(c.network_settings
            .and_then(|n| n.networks)
            .and_then(|n| n.get(&self.cfg.network).cloned())
            .and_then(|n| n.ip_address)
            .filter(|ip| !ip.is_empty()))
    }

    fn info_from_labels(&self, labels: &HashMap<String, String>, ip: &str) -> Option<VmInfo> {
        let role: Role = labels.get(LABEL_ROLE)?.parse().ok()?;
        let vm_type: VmType = serde_json::from_value(serde_json::Value::String(
            labels.get(LABEL_VM_TYPE)?.clone(),
        ))
        .ok()?;
        Some(VmInfo {
            name: labels.get(LABEL_VM)?.clone(),
            role,
            zone: labels.get(LABEL_ZONE).cloned().unwrap_or_default(),
            vm_type,
            storage_gib: labels
                .get(LABEL_STORAGE)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            address: ip.to_string(),
            agent_endpoint: format!("{ip}:{AGENT_GRPC_PORT}"),
        })
    }
}

#[async_trait]
impl CloudProvider for DockerProvider {
    async fn create_vm(&self, _op: OpId, spec: &VmSpec) -> Result<VmInfo, BackendError> {
        let name = self.container_name(&spec.name);
        let vm_type = serde_json::to_value(spec.vm_type)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let labels: HashMap<String, String> = HashMap::from([
            (LABEL_CLUSTER.to_string(), self.cfg.cluster.clone()),
            (LABEL_ROLE.to_string(), spec.role.as_str().to_string()),
            (LABEL_ZONE.to_string(), spec.zone.clone()),
            (LABEL_VM.to_string(), spec.name.clone()),
            (LABEL_VM_TYPE.to_string(), vm_type),
            (LABEL_STORAGE.to_string(), spec.storage_gib.to_string()),
        ]);
        // Idempotent: a VM made by a leader that died before recording it is reused.
        if self.address(&name).await?.is_none() {
            let vm = VmConfig {
                spec: spec.clone(),
                runtime: self.runtime,
                provider: ProviderConfig::Docker(self.cfg.clone()),
            };
            let vm_json = serde_json::to_string(&vm)
                .map_err(|e| BackendError::refused(format!("VM config: {e}")))?;
            let volume = self.volume_name(&spec.name);
            self.docker
                .create_volume(VolumeCreateRequest {
                    name: Some(volume.clone()),
                    labels: Some(labels.clone()),
                    ..Default::default()
                })
                .await
                .map_err(|e| transient("docker volume create", e))?;
            let (memory, nano_cpus) = limits(spec.vm_type);
            let mut env = vec![format!("{VM_ENV}={vm_json}")];
            env.extend(self.cfg.env.iter().map(|(k, v)| format!("{k}={v}")));
            let config = ContainerCreateBody {
                image: Some(self.cfg.image.clone()),
                hostname: Some(name.clone()),
                env: Some(env),
                labels: Some(labels.clone()),
                host_config: Some(HostConfig {
                    memory: Some(memory),
                    nano_cpus: Some(nano_cpus),
                    network_mode: Some(self.cfg.network.clone()),
                    binds: Some(vec![
                        format!("{volume}:{VM_DIR}"),
                        "/var/run/docker.sock:/var/run/docker.sock".to_string(),
                    ]),
                    ..Default::default()
                }),
                ..Default::default()
            };
            match self
                .docker
                .create_container(
                    Some(CreateContainerOptionsBuilder::new().name(&name).build()),
                    config,
                )
                .await
            {
                Ok(_) => {}
                // A stopped container of this name (a half-made VM): start it again.
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 409, ..
                }) => {}
                Err(e) => return Err(transient("docker create", e)),
            }
            self.docker
                .start_container(&name, None::<StartContainerOptions>)
                .await
                .map_err(|e| transient("docker start", e))?;
            info!(vm = %spec.name, container = %name, "container started");
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(ip) = self.address(&name).await? {
                let ep = format!("{ip}:{AGENT_GRPC_PORT}");
                if tokio::net::TcpStream::connect(&ep).await.is_ok() {
                    return self
                        .info_from_labels(&labels, &ip)
                        .ok_or_else(|| BackendError::refused("bad container labels"));
                }
            }
            if Instant::now() > deadline {
                let _ = self.delete_vm(OpId::NONE, &spec.name).await;
                return Err(transient(
                    &format!("the agent of {} did not answer within 60 s", spec.name),
                    "the container was removed",
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn delete_vm(&self, _op: OpId, vm: &str) -> Result<(), BackendError> {
        let name = self.container_name(vm);
        // Only what this cluster created.
        match self
            .docker
            .inspect_container(
                &name,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
        {
            Ok(c) => {
                let ours = c
                    .config
                    .and_then(|c| c.labels)
                    .is_some_and(|l| l.get(LABEL_CLUSTER) == Some(&self.cfg.cluster));
                if !ours {
                    return Err(BackendError::refused(format!(
                        "container {name} is not labelled {LABEL_CLUSTER}={}; not removing it",
                        self.cfg.cluster
                    )));
                }
                match self
                    .docker
                    .remove_container(
                        &name,
                        Some(
                            RemoveContainerOptionsBuilder::new()
                                .force(true)
                                .v(true)
                                .build(),
                        ),
                    )
                    .await
                {
                    Ok(()) => {}
                    Err(e) if is_404(&e) => {}
                    Err(e) => return Err(transient("docker rm", e)),
                }
            }
            Err(e) if is_404(&e) => {}
            Err(e) => return Err(transient("docker inspect", e)),
        }
        match self
            .docker
            .remove_volume(
                &self.volume_name(vm),
                None::<bollard::query_parameters::RemoveVolumeOptions>,
            )
            .await
        {
            Ok(()) => {}
            Err(e) if is_404(&e) => {}
            Err(e) => return Err(transient("docker volume rm", e)),
        }
        info!(vm, container = %name, "container and volume removed");
        Ok(())
    }

    async fn list_vms(&self) -> Result<Vec<VmInfo>, BackendError> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{LABEL_CLUSTER}={}", self.cfg.cluster)],
        )]);
        let list = self
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::new()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(|e| transient("docker ps", e))?;
        let now = Instant::now();
        let mut out = Vec::new();
        for c in list {
            let labels = c.labels.clone().unwrap_or_default();
            if labels.get(LABEL_ROLE).map(String::as_str) == Some(Role::Bootstrap.as_str()) {
                continue;
            }
            let Some(vm) = labels.get(LABEL_VM).cloned() else {
                continue;
            };
            let ip = c
                .network_settings
                .as_ref()
                .and_then(|n| n.networks.as_ref())
                .and_then(|n| n.get(&self.cfg.network))
                .and_then(|n| n.ip_address.clone())
                .filter(|ip| !ip.is_empty());
            let running = c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING);
            match (running, ip) {
                (true, Some(ip)) => {
                    if let Ok(mut d) = self.dead_since.lock() {
                        d.remove(&vm);
                    }
                    if let Some(info) = self.info_from_labels(&labels, &ip) {
                        out.push(info);
                    }
                }
                _ => {
                    // A stopped container is a lost VM once it stays down (a restart
                    // within the grace period keeps it).
                    let since = self
                        .dead_since
                        .lock()
                        .map(|mut d| *d.entry(vm.clone()).or_insert(now))
                        .unwrap_or(now);
                    if now.duration_since(since) >= crate::local::LOST_AFTER {
                        warn!(%vm, state = ?c.state, "container is not running: VM lost; removing it");
                        if let Err(e) = self.delete_vm(OpId::NONE, &vm).await {
                            warn!(%vm, error = %e, "cannot remove the lost VM's container");
                        }
                        if let Ok(mut d) = self.dead_since.lock() {
                            d.remove(&vm);
                        }
                    }
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

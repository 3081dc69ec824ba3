//! The `docker` provider (bollard): every VM is a container of the agent image on a
//! user-defined network, with a volume for its storage, memory and CPU limits per VM type,
//! labels `managed-rondb.cluster`, `managed-rondb.role`, `managed-rondb.zone`. Only the cloud
//! front runs it (it alone mounts the Docker socket): the VMs it makes carry the front's
//! address and ask it when they lead. Listing asks Docker itself, so a restarted front sees
//! the truth; only containers and volumes carrying this cluster's label are ever removed.
//!
//! A stopped container is a VM that is down: `start_vm` starts it again with its volume. A
//! removed container is a VM that is gone. Every container gets a fixed address in the
//! network's subnet, so that the Raft group and RonDB's configuration, which name agents and
//! nodes by address, still hold after the containers are stopped and started in any order.

use crate::{ProviderConfig, VmConfig};
use agent_core::backend::OpId;
use agent_core::backend::{BackendError, CloudProvider, VmInfo, VmSpec, VmState};
use agent_core::desired::VmType;
use agent_core::model::Role;
use async_trait::async_trait;
use backon::{ConstantBuilder, Retryable};
use bollard::models::{
    ContainerCreateBody, EndpointIpamConfig, EndpointSettings, HostConfig, NetworkingConfig,
    VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    StartContainerOptions,
};
use bollard::Docker;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::time::Duration;
use tracing::info;

/// The gRPC port every agent container listens on.
pub const AGENT_GRPC_PORT: u16 = 7100;
/// The HTTP API port every agent container listens on.
pub const AGENT_HTTP_PORT: u16 = 8181;
/// Where a VM's volume is mounted: the agent's directory.
pub const VM_DIR: &str = "/var/lib/ndb-agent";
/// Where every VM container of a cluster mounts the cluster's backup volume: the backup
/// sink, so a backup taken on the data nodes' VMs can be restored on any other.
pub const BACKUP_DIR: &str = "/var/lib/ndb-backups";
/// The environment variable that hands a container its [`VmConfig`].
pub const VM_ENV: &str = "NDB_AGENT_VM";

pub const LABEL_CLUSTER: &str = "managed-rondb.cluster";
pub const LABEL_ROLE: &str = "managed-rondb.role";
pub const LABEL_ZONE: &str = "managed-rondb.zone";
pub const LABEL_VM: &str = "managed-rondb.vm";
pub const LABEL_VM_TYPE: &str = "managed-rondb.vm-type";
pub const LABEL_STORAGE: &str = "managed-rondb.storage-gib";

/// VMs get host numbers from here up in the network's subnet; the ones below are for the
/// containers a user starts with fixed addresses (the bootstrap agent, an artifact server).
pub const FIRST_VM_HOST: u32 = 16;

/// How long a started container's agent may take to answer.
const START_PATIENCE: Duration = Duration::from_secs(60);

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

/// Every container, running or stopped, matching one `docker ps` filter.
async fn containers(
    docker: &Docker,
    filter: &str,
    value: String,
) -> Result<Vec<bollard::models::ContainerSummary>, BackendError> {
    let filters = HashMap::from([(filter.to_string(), vec![value])]);
    docker
        .list_containers(Some(
            ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .map_err(|e| transient("docker ps", e))
}

/// The network's IPv4 subnet (`10.213.0.0/24`): VMs get fixed addresses in it.
async fn network_subnet(docker: &Docker, network: &str) -> Result<String, BackendError> {
    let net = docker
        .inspect_network(
            network,
            None::<bollard::query_parameters::InspectNetworkOptions>,
        )
        .await
        .map_err(|e| transient(&format!("docker network inspect {}", network), e))?;
    net.ipam
        .and_then(|i| i.config)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|c| c.subnet)
        .find(|s| parse_subnet(s).is_some())
        .ok_or_else(|| {
            BackendError::refused(format!(
                "network {network} has no IPv4 subnet of /30 or larger; create it with `docker network create --subnet 10.213.0.0/24 {network}` so VMs keep their addresses across restarts"
            ))
        })
}

/// The lowest address of the network's subnet (from [`FIRST_VM_HOST`]) that no
/// container on the network holds, running or stopped.
async fn free_address(docker: &Docker, network: &str) -> Result<String, BackendError> {
    let subnet = network_subnet(docker, network).await?;
    let Some((base, bits)) = parse_subnet(&subnet) else {
        return Err(BackendError::refused(format!(
            "network {network} has an unusable subnet {subnet}"
        )));
    };
    let list = containers(docker, "network", network.to_string()).await?;
    let used: BTreeSet<u32> = list
        .iter()
        .filter_map(|c| {
            address_on(
                c.network_settings
                    .as_ref()
                    .and_then(|n| n.networks.as_ref()),
                network,
            )
        })
        .filter_map(|ip| ip.parse::<Ipv4Addr>().ok())
        .map(u32::from)
        .collect();
    lowest_free_vm_address(base, 1u32 << (32 - bits), &used).ok_or_else(|| {
        BackendError::refused(format!(
            "network {} has no free address left for a VM; use a larger subnet",
            network
        ))
    })
}

/// The lowest VM address (host [`FIRST_VM_HOST`] up, broadcast excluded) of the subnet
/// starting at `base` with `hosts` addresses that is not in `used`.
pub(crate) fn lowest_free_vm_address(
    base: u32,
    hosts: u32,
    used: &BTreeSet<u32>,
) -> Option<String> {
    (FIRST_VM_HOST..hosts.saturating_sub(1))
        .map(|h| base + h)
        .find(|a| !used.contains(a))
        .map(|a| Ipv4Addr::from(a).to_string())
}

/// The port the cloud front listens on in its container.
pub const FRONT_PORT: u16 = 9090;
/// Where the front container keeps its state (its volume): the cluster's credential and CA.
pub const FRONT_DIR: &str = "/var/lib/cloud-front";
/// The role label of the front container (never listed as a VM).
pub const FRONT_ROLE: &str = "front";

/// What the front container makes VM containers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontKind {
    /// The docker provider, straight through the socket (the agent image runs it).
    Docker,
    /// The terraform provider with the local-docker target (an image holding the docker
    /// CLI and Terraform: compose/images/build-front.sh).
    Terraform,
}

/// The cloud front of a Docker cluster as a container, as `up --provider docker|terraform`
/// starts it.
pub struct FrontContainer {
    /// The cluster, its network, the VMs' image and the environment passed on to the VMs.
    pub cfg: DockerConfig,
    pub kind: FrontKind,
    /// The image the front runs.
    pub image: String,
    pub runtime: crate::RuntimeKind,
    /// The cluster's credential: the front accepts nothing else.
    pub credential: String,
}

impl FrontContainer {
    pub fn container_name(&self) -> String {
        format!("{}-front", self.cfg.cluster)
    }
}

/// The cloud front container as its clients reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontEndpoint {
    /// Its URL on the cluster's network (`https://10.213.0.4:9090`).
    pub url: String,
    /// The certificate of the cluster CA the front made: its HTTPS certificate is of this
    /// CA, so a client checks the front against it.
    pub ca_cert_pem: String,
}

/// How long a front may take to write its cluster CA when it starts for the first time.
const FRONT_CA_PATIENCE: Duration = Duration::from_secs(120);

/// Starts the cluster's cloud front container, or starts it again when it was stopped (a
/// host restart), or uses the one running, and returns how the VMs reach it. Only this
/// container mounts the Docker socket; it keeps a fixed address, so the URL every VM holds
/// stays true across restarts. It listens beyond loopback, so it serves HTTPS only.
pub async fn ensure_front(f: &FrontContainer) -> Result<FrontEndpoint, BackendError> {
    let docker = Docker::connect_with_local_defaults()
        .map_err(|e| BackendError::refused(format!("cannot connect to Docker: {e}")))?;
    let name = f.container_name();
    let url = ensure_front_container(&docker, f, &name).await?;
    let ca_cert_pem = front_ca_cert(&docker, &name, &f.cfg.cluster).await?;
    Ok(FrontEndpoint { url, ca_cert_pem })
}

/// The cluster CA's certificate, read out of the front container (it writes it to its
/// volume when it first starts): the caller checks the front's HTTPS against it, having no
/// other channel to the front that is not the front itself.
async fn front_ca_cert(docker: &Docker, name: &str, cluster: &str) -> Result<String, BackendError> {
    use futures::StreamExt;
    let path = format!("{FRONT_DIR}/clusters/{cluster}/tls/ca.pem");
    let deadline = tokio::time::Instant::now() + FRONT_CA_PATIENCE;
    loop {
        let exec = docker
            .create_exec(
                name,
                bollard::exec::CreateExecOptions {
                    cmd: Some(vec!["cat", path.as_str()]),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| transient("docker exec (reading the cloud front's CA)", e))?;
        let mut pem = String::new();
        let mut problem = String::new();
        match docker
            .start_exec(&exec.id, None)
            .await
            .map_err(|e| transient("docker exec (reading the cloud front's CA)", e))?
        {
            bollard::exec::StartExecResults::Attached { mut output, .. } => {
                while let Some(chunk) = output.next().await {
                    match chunk {
                        Ok(bollard::container::LogOutput::StdOut { message }) => {
                            pem.push_str(&String::from_utf8_lossy(&message))
                        }
                        Ok(other) => problem.push_str(&other.to_string()),
                        Err(e) => problem.push_str(&e.to_string()),
                    }
                }
            }
            bollard::exec::StartExecResults::Detached => {}
        }
        if pem.contains("-----END CERTIFICATE-----") {
            return Ok(pem);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(BackendError::transient(format!(
                "the cloud front container {name} did not write the cluster CA {path} within {} s ({}); see `docker logs {name}`",
                FRONT_CA_PATIENCE.as_secs(),
                problem.trim()
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// [`ensure_front`]'s container part: returns the front's URL.
async fn ensure_front_container(
    docker: &Docker,
    f: &FrontContainer,
    name: &str,
) -> Result<String, BackendError> {
    let name = name.to_string();
    let url = |ip: &str| format!("https://{ip}:{FRONT_PORT}");
    match docker
        .inspect_container(
            &name,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
    {
        Ok(c) => {
            let labels = c
                .config
                .as_ref()
                .and_then(|c| c.labels.clone())
                .unwrap_or_default();
            if labels.get(LABEL_CLUSTER) != Some(&f.cfg.cluster) {
                return Err(BackendError::refused(format!(
                    "container {name} exists but is not labelled {LABEL_CLUSTER}={}; remove it or choose another cluster name",
                    f.cfg.cluster
                )));
            }
            let ip = address_on(
                c.network_settings
                    .as_ref()
                    .and_then(|n| n.networks.as_ref()),
                &f.cfg.network,
            )
            .ok_or_else(|| {
                BackendError::refused(format!(
                    "the cloud front container {name} is not on network {}",
                    f.cfg.network
                ))
            })?;
            if !c.state.as_ref().and_then(|s| s.running).unwrap_or(false) {
                docker
                    .start_container(&name, None::<StartContainerOptions>)
                    .await
                    .map_err(|e| transient("docker start (cloud front)", e))?;
                info!(container = %name, %ip, "cloud front container started again");
            }
            return Ok(url(&ip));
        }
        Err(e) if is_404(&e) => {}
        Err(e) => return Err(transient("docker inspect (cloud front)", e)),
    }
    let labels = HashMap::from([
        (LABEL_CLUSTER.to_string(), f.cfg.cluster.clone()),
        (LABEL_ROLE.to_string(), FRONT_ROLE.to_string()),
    ]);
    let volume = format!("{}-front-data", f.cfg.cluster);
    docker
        .create_volume(VolumeCreateRequest {
            name: Some(volume.clone()),
            labels: Some(labels.clone()),
            ..Default::default()
        })
        .await
        .map_err(|e| transient("docker volume create (cloud front)", e))?;
    let ip = free_address(docker, &f.cfg.network).await?;
    let provider = match f.kind {
        FrontKind::Docker => vec!["--provider=docker".to_string()],
        FrontKind::Terraform => vec![
            "--provider=terraform".to_string(),
            "--target=local-docker".to_string(),
            format!("--subnet={}", network_subnet(docker, &f.cfg.network).await?),
        ],
    };
    let mut env = vec![format!("NDB_FRONT_CREDENTIAL={}", f.credential)];
    env.extend(f.cfg.env.iter().map(|(k, v)| format!("{k}={v}")));
    let runtime = f.runtime.to_string();
    let cmd: Vec<String> = ["ndb-agent", "cloud-front"]
        .iter()
        .map(|s| s.to_string())
        .chain(provider)
        .chain(
            [
                &format!("--cluster={}", f.cfg.cluster),
                &format!("--url={}", url(&ip)),
                &format!("--listen=0.0.0.0:{FRONT_PORT}"),
                &format!("--data-dir={FRONT_DIR}"),
                &format!("--docker-network={}", f.cfg.network),
                &format!("--agent-image={}", f.cfg.image),
                &format!("--runtime={runtime}"),
            ]
            .iter()
            .map(|s| s.to_string()),
        )
        .collect();
    let config = ContainerCreateBody {
        image: Some(f.image.clone()),
        hostname: Some(name.clone()),
        cmd: Some(cmd),
        env: Some(env),
        labels: Some(labels),
        host_config: Some(HostConfig {
            network_mode: Some(f.cfg.network.clone()),
            binds: Some(vec![
                format!("{volume}:{FRONT_DIR}"),
                "/var/run/docker.sock:/var/run/docker.sock".to_string(),
            ]),
            restart_policy: Some(bollard::models::RestartPolicy {
                name: Some(bollard::models::RestartPolicyNameEnum::UNLESS_STOPPED),
                maximum_retry_count: None,
            }),
            ..Default::default()
        }),
        networking_config: Some(fixed_address(&f.cfg.network, &ip)),
        ..Default::default()
    };
    docker
        .create_container(
            Some(CreateContainerOptionsBuilder::new().name(&name).build()),
            config,
        )
        .await
        .map_err(|e| transient("docker create (cloud front)", e))?;
    docker
        .start_container(&name, None::<StartContainerOptions>)
        .await
        .map_err(|e| transient("docker start (cloud front)", e))?;
    info!(container = %name, %ip, "cloud front container started");
    Ok(url(&ip))
}

/// A container's place on `network` at the fixed address `ip`: kept across restarts, so
/// the agents and RonDB, which name each other by address, find each other again.
fn fixed_address(network: &str, ip: &str) -> NetworkingConfig {
    NetworkingConfig {
        endpoints_config: Some(HashMap::from([(
            network.to_string(),
            EndpointSettings {
                ipam_config: Some(EndpointIpamConfig {
                    ipv4_address: Some(ip.to_string()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )])),
    }
}

/// The `docker` CloudProvider.
pub struct DockerProvider {
    docker: Docker,
    cfg: DockerConfig,
    runtime: crate::RuntimeKind,
    /// Held from choosing a free address until the container holding it exists, so that
    /// two VMs created at once never get the same one.
    addressing: tokio::sync::Mutex<()>,
    /// The cluster CA's certificate, handed to every VM it creates (never its key).
    ca_cert_pem: String,
    /// How the VMs it makes create VMs when they lead (through the cloud front).
    vm_provider: ProviderConfig,
}

/// `a.b.c.d/n` as its first address and prefix length.
fn parse_subnet(s: &str) -> Option<(u32, u32)> {
    let (ip, bits) = s.split_once('/')?;
    let ip: Ipv4Addr = ip.parse().ok()?;
    let bits: u32 = bits.parse().ok().filter(|b| *b <= 30)?;
    let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
    Some((u32::from(ip) & mask, bits))
}

/// The address a container has (or will have) on `network`: its fixed one, else the
/// current one.
fn address_on(
    networks: Option<&HashMap<String, EndpointSettings>>,
    network: &str,
) -> Option<String> {
    let ep = networks?.get(network)?;
    ep.ipam_config
        .as_ref()
        .and_then(|c| c.ipv4_address.clone())
        .or_else(|| ep.ip_address.clone())
        .filter(|ip| !ip.is_empty())
}

impl DockerProvider {
    /// Connects to the local Docker daemon (`DOCKER_HOST` or the Unix socket).
    pub fn new(
        cfg: DockerConfig,
        runtime: crate::RuntimeKind,
        ca_cert_pem: String,
        vm_provider: ProviderConfig,
    ) -> Result<Self, BackendError> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(|e| BackendError::refused(format!("cannot connect to Docker: {e}")))?;
        Ok(DockerProvider {
            docker,
            cfg,
            runtime,
            addressing: tokio::sync::Mutex::new(()),
            ca_cert_pem,
            vm_provider,
        })
    }

    /// Deletes every VM container of the cluster with its volume, and the cluster's backup
    /// volume: what `down --remove` through the front means.
    pub async fn delete_every_vm(&self) -> Result<(), BackendError> {
        for vm in self.list_vms().await? {
            self.delete_vm(OpId::NONE, &vm.name).await?;
        }
        match self
            .docker
            .remove_volume(
                &format!("{}-backups", self.cfg.cluster),
                None::<bollard::query_parameters::RemoveVolumeOptions>,
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_404(&e) => Ok(()),
            Err(e) => Err(transient("docker volume rm (backups)", e)),
        }
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

    async fn containers(
        &self,
        filter: &str,
        value: String,
    ) -> Result<Vec<bollard::models::ContainerSummary>, BackendError> {
        containers(&self.docker, filter, value).await
    }

    async fn free_address(&self) -> Result<String, BackendError> {
        free_address(&self.docker, &self.cfg.network).await
    }

    fn info_from_labels(
        &self,
        labels: &HashMap<String, String>,
        ip: &str,
        state: VmState,
    ) -> Option<VmInfo> {
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
            state,
            home: None,
            host_dir: None,
            backup_dir: Some(BACKUP_DIR.to_string()),
        })
    }

    /// Waits until the agent in container `name` accepts connections.
    async fn wait_agent(
        &self,
        vm: &str,
        name: &str,
        labels: &HashMap<String, String>,
    ) -> Result<VmInfo, BackendError> {
        let poll = Duration::from_millis(200);
        let tries = (START_PATIENCE.as_millis() / poll.as_millis()) as usize;
        let answer = || async {
            let ip = self
                .address(name)
                .await?
                .ok_or_else(|| BackendError::transient("container not running"))?;
            let ep = format!("{ip}:{AGENT_GRPC_PORT}");
            tokio::net::TcpStream::connect(&ep)
                .await
                .map_err(|e| transient(&format!("agent at {ep}"), e))?;
            Ok::<String, BackendError>(ip)
        };
        let ip = answer
            .retry(
                ConstantBuilder::new()
                    .with_delay(poll)
                    .with_max_times(tries),
            )
            .when(|e: &BackendError| e.kind == agent_core::backend::ErrorKind::Transient)
            .await
            .map_err(|e| {
                BackendError::transient(format!(
                    "the agent of {vm} did not answer within {} s: {}",
                    START_PATIENCE.as_secs(),
                    e.message
                ))
                .on(vm)
            })?;
        self.info_from_labels(labels, &ip, VmState::Running)
            .ok_or_else(|| BackendError::refused(format!("container {name} has bad labels")))
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
                provider: self.vm_provider.clone(),
                address: None,
                artifact_mirrors: Vec::new(),
                ca: agent_core::backend::VmTrust::CaCert {
                    cert_pem: self.ca_cert_pem.clone(),
                },
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
            let backups = format!("{}-backups", self.cfg.cluster);
            self.docker
                .create_volume(VolumeCreateRequest {
                    name: Some(backups.clone()),
                    labels: Some(HashMap::from([(
                        LABEL_CLUSTER.to_string(),
                        self.cfg.cluster.clone(),
                    )])),
                    ..Default::default()
                })
                .await
                .map_err(|e| transient("docker volume create", e))?;
            let (memory, nano_cpus) = limits(spec.vm_type);
            let mut env = vec![format!("{VM_ENV}={vm_json}")];
            env.extend(self.cfg.env.iter().map(|(k, v)| format!("{k}={v}")));
            let guard = self.addressing.lock().await;
            let ip = self.free_address().await?;
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
                        format!("{backups}:{BACKUP_DIR}"),
                    ]),
                    ..Default::default()
                }),
                networking_config: Some(fixed_address(&self.cfg.network, &ip)),
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
            drop(guard);
            self.docker
                .start_container(&name, None::<StartContainerOptions>)
                .await
                .map_err(|e| transient("docker start", e))?;
            info!(vm = %spec.name, container = %name, %ip, "container started");
        }
        match self.wait_agent(&spec.name, &name, &labels).await {
            Ok(info) => Ok(info),
            Err(e) => {
                // No half-made VMs: the retry creates it again.
                let _ = self.delete_vm(OpId::NONE, &spec.name).await;
                Err(e)
            }
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
        let list = self
            .containers("label", format!("{LABEL_CLUSTER}={}", self.cfg.cluster))
            .await?;
        let mut out = Vec::new();
        for c in list {
            let labels = c.labels.clone().unwrap_or_default();
            if labels.get(LABEL_ROLE).map(String::as_str) == Some(Role::Bootstrap.as_str()) {
                continue;
            }
            let running = c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING);
            let ip = address_on(
                c.network_settings
                    .as_ref()
                    .and_then(|n| n.networks.as_ref()),
                &self.cfg.network,
            )
            .unwrap_or_default();
            let state = if running && !ip.is_empty() {
                VmState::Running
            } else {
                VmState::Down
            };
            if let Some(info) = self.info_from_labels(&labels, &ip, state) {
                out.push(info);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn start_vm(&self, _op: OpId, vm: &str) -> Result<VmInfo, BackendError> {
        let name = self.container_name(vm);
        let c = match self
            .docker
            .inspect_container(
                &name,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
        {
            Ok(c) => c,
            Err(e) if is_404(&e) => return Err(BackendError::vm_gone(vm)),
            Err(e) => return Err(transient("docker inspect", e).on(vm)),
        };
        let labels = c.config.and_then(|c| c.labels).unwrap_or_default();
        if labels.get(LABEL_CLUSTER) != Some(&self.cfg.cluster) {
            return Err(BackendError::refused(format!(
                "container {name} is not labelled {LABEL_CLUSTER}={}; not starting it",
                self.cfg.cluster
            ))
            .on(vm));
        }
        let running = c.state.as_ref().and_then(|s| s.running).unwrap_or(false);
        if !running {
            self.docker
                .start_container(&name, None::<StartContainerOptions>)
                .await
                .map_err(|e| transient("docker start", e).on(vm))?;
            info!(%vm, container = %name, "stopped container started again");
        }
        self.wait_agent(vm, &name, &labels).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vms_get_the_lowest_free_address_from_host_16_and_never_the_broadcast() {
        let base = u32::from(Ipv4Addr::new(10, 213, 0, 0));
        let none = BTreeSet::new();
        assert_eq!(
            lowest_free_vm_address(base, 256, &none).as_deref(),
            Some("10.213.0.16")
        );
        let used: BTreeSet<u32> = [base + 16, base + 17, base + 19].into();
        assert_eq!(
            lowest_free_vm_address(base, 256, &used).as_deref(),
            Some("10.213.0.18")
        );
        // A /27 holds hosts 16..=30; 31 is its broadcast address.
        let full: BTreeSet<u32> = (16..31).map(|h| base + h).collect();
        assert_eq!(lowest_free_vm_address(base, 32, &full), None);
    }
}

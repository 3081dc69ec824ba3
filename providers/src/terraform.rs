//! The `terraform` provider: VMs are resources of one Terraform root module, rendered by the
//! `terraform-templates` crate from the provider's VM records and applied with
//! `terraform apply -auto-approve -input=false`.
//!
//! Meant to run in one long-lived process per installation (the cloud front), which alone
//! holds the Terraform state and the cloud's credentials. Its records (`vms.json`, the VMs
//! that should exist) are fsync'd before every apply, so a process killed mid-apply finishes
//! the job when it opens the same directory again: [`TerraformProvider::open`] applies at
//! once, and the `local-docker` target removes any container of the cluster that Terraform's
//! state does not hold. Concurrent requests are batched into one apply; one apply runs at a
//! time.

use crate::docker::{limits, AGENT_GRPC_PORT, BACKUP_DIR, LABEL_CLUSTER, VM_ENV};
use crate::local::write_synced;
use crate::{ProviderConfig, RuntimeKind, VmConfig};
use agent_core::backend::{
    BackendError, CloudProvider, ClusterCa, ErrorKind, OpId, VmInfo, VmSpec, VmState, VmTrust,
};
use agent_core::desired::VmType;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use terraform_templates::{Limits, Port, Target};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

/// How long the applier waits for more requests before an apply: VMs a leader creates at
/// once (a new node group, a batch of MySQL servers) go into one apply.
const BATCH_WINDOW: Duration = Duration::from_millis(100);
/// How long a created VM's agent may take to answer.
const START_PATIENCE: Duration = Duration::from_secs(60);
/// The records file: the VMs that should exist, with their specs and addresses.
const RECORDS_FILE: &str = "vms.json";
/// Present once the cluster was deleted through the front: no VM is created for it again.
const DELETED_FILE: &str = "cluster-deleted";
/// Marks containers made by the `local-docker` target (the docker provider's carry none).
const LABEL_CREATED_BY: &str = "managed-rondb.created-by";

/// Where the provider's Terraform creates VMs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "target", rename_all = "kebab-case")]
pub enum TerraformTarget {
    /// VM containers on this machine's Docker engine, made by `local-exec` provisioners.
    LocalDocker {
        cluster: String,
        /// A user-defined network with an IPv4 subnet; VMs get fixed addresses in it.
        network: String,
        /// The network's subnet (`10.213.0.0/24`); VMs are numbered from host 16 up.
        subnet: String,
        image: String,
        /// Environment passed on to every agent (e.g. the dummy runtime's delay).
        #[serde(default)]
        env: BTreeMap<String, String>,
    },
    /// EC2 instances; the user's variables (region, VPC, subnets, AMI, agent build) live in
    /// `terraform.tfvars` in the working directory.
    Aws { cluster: String, ports: Vec<Port> },
}

impl TerraformTarget {
    pub fn cluster(&self) -> &str {
        match self {
            TerraformTarget::LocalDocker { cluster, .. } | TerraformTarget::Aws { cluster, .. } => {
                cluster
            }
        }
    }
}

/// The settings of a [`TerraformProvider`].
#[derive(Debug, Clone)]
pub struct TerraformSettings {
    /// The `terraform` program (`scripts/install-terraform.sh` prints one).
    pub terraform: PathBuf,
    /// The root module, its state and the VMs' secrets (0700; files 0600).
    pub work_dir: PathBuf,
    pub target: TerraformTarget,
}

/// What one VM is: its spec and (local-docker) its fixed address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Record {
    spec: VmSpec,
    #[serde(default)]
    address: String,
}

enum Change {
    Put(VmSpec),
    Remove(String),
    /// Nothing to change: converge state and records (after a restart).
    Converge,
    /// Every VM removed, and none created from then on.
    DeleteCluster,
}

struct Job {
    change: Change,
    done: oneshot::Sender<Result<(), BackendError>>,
}

struct Inner {
    settings: TerraformSettings,
    runtime: RuntimeKind,
    /// The cluster CA. A VM gets its certificate only (it enrols with its join ticket); the
    /// key goes only into the configuration of a VM recorded before join tickets existed,
    /// whose configuration must not change (see `vm_config`).
    ca: ClusterCa,
    /// The provider configuration written into each VM's agent configuration: how the
    /// cluster's leader reaches the VMs' provider (the cloud front).
    vm_provider: ProviderConfig,
    /// The VMs that should exist, as last written to the records file. Only the applier
    /// changes them, so reading them never waits for an apply.
    records: std::sync::Mutex<BTreeMap<String, Record>>,
    /// The `vms` output of the last successful apply.
    outputs: std::sync::Mutex<BTreeMap<String, terraform_templates::VmOutput>>,
    applies: AtomicU64,
    /// Bumped when an apply starts and when it ends (odd while one runs): a container
    /// missing while an apply may be replacing it is not taken for gone.
    apply_phase: AtomicU64,
    initialized: std::sync::atomic::AtomicBool,
}

/// The `terraform` CloudProvider.
pub struct TerraformProvider {
    inner: Arc<Inner>,
    queue: mpsc::UnboundedSender<Job>,
}

fn tf_error(what: &str, e: impl std::fmt::Display) -> BackendError {
    BackendError::transient(format!("{what}: {e}"))
}

/// `a.b.c.d/n` as its first address and number of hosts.
fn subnet_hosts(s: &str) -> Option<(u32, u32)> {
    let (ip, bits) = s.split_once('/')?;
    let ip: Ipv4Addr = ip.parse().ok()?;
    let bits: u32 = bits.parse().ok().filter(|b| (8..=30).contains(b))?;
    let mask = u32::MAX << (32 - bits);
    Some((u32::from(ip) & mask, 1 << (32 - bits)))
}

impl TerraformProvider {
    /// Opens (or makes) the working directory and brings Terraform's state in line with the
    /// records, finishing whatever a killed predecessor left half done.
    pub async fn open(
        settings: TerraformSettings,
        runtime: RuntimeKind,
        ca: ClusterCa,
        vm_provider: ProviderConfig,
    ) -> Result<Self, BackendError> {
        make_private_dir(&settings.work_dir).map_err(|e| dir_error(&settings.work_dir, e))?;
        let path = settings.work_dir.join(RECORDS_FILE);
        let records: BTreeMap<String, Record> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                BackendError::refused(format!(
                    "{} is not a record file of this provider ({e}); move it away only if no VM it lists exists",
                    path.display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(dir_error(&path, e)),
        };
        let inner = Arc::new(Inner {
            settings,
            runtime,
            ca,
            vm_provider,
            records: std::sync::Mutex::new(records),
            outputs: std::sync::Mutex::new(BTreeMap::new()),
            applies: AtomicU64::new(0),
            apply_phase: AtomicU64::new(0),
            initialized: std::sync::atomic::AtomicBool::new(false),
        });
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(applier(inner.clone(), rx));
        let p = TerraformProvider { inner, queue };
        p.submit(Change::Converge).await?;
        Ok(p)
    }

    /// Deletes every VM of the cluster and refuses to create any from then on (a leader still
    /// running would otherwise make its VMs again). Kept across restarts of the front.
    pub async fn delete_cluster(&self) -> Result<(), BackendError> {
        info!(cluster = %self.inner.settings.target.cluster(), "deleting the cluster: every VM, and no new one");
        self.submit(Change::DeleteCluster).await
    }

    /// Whether the cluster was deleted ([`delete_cluster`](Self::delete_cluster)).
    pub fn cluster_deleted(&self) -> bool {
        self.inner.settings.work_dir.join(DELETED_FILE).exists()
    }

    /// Applies run since [`open`](Self::open) (the converging one included).
    pub fn applies(&self) -> u64 {
        self.inner.applies.load(Ordering::SeqCst)
    }

    /// The working directory (root module and state).
    pub fn work_dir(&self) -> &Path {
        &self.inner.settings.work_dir
    }

    async fn submit(&self, change: Change) -> Result<(), BackendError> {
        let (done, rx) = oneshot::channel();
        self.queue.send(Job { change, done }).map_err(|_| {
            BackendError::transient("the Terraform applier has stopped; restart the cloud front")
        })?;
        rx.await.map_err(|_| {
            BackendError::transient("the Terraform applier stopped mid-apply; try again")
        })?
    }

    fn info(&self, record: &Record, state: VmState) -> Option<VmInfo> {
        let out = self
            .inner
            .outputs
            .lock()
            .ok()?
            .get(&record.spec.name)?
            .clone();
        Some(VmInfo {
            name: record.spec.name.clone(),
            role: record.spec.role,
            zone: record.spec.zone.clone(),
            vm_type: record.spec.vm_type,
            storage_gib: record.spec.storage_gib,
            address: out.address,
            agent_endpoint: out.agent_endpoint,
            state,
            home: None,
            host_dir: None,
            backup_dir: Some(BACKUP_DIR.to_string()),
        })
    }

    /// Waits until the agent at `info.agent_endpoint` accepts connections.
    async fn wait_agent(&self, info: VmInfo) -> Result<VmInfo, BackendError> {
        let deadline = tokio::time::Instant::now() + START_PATIENCE;
        loop {
            match tokio::time::timeout(
                Duration::from_secs(2),
                tokio::net::TcpStream::connect(&info.agent_endpoint),
            )
            .await
            {
                Ok(Ok(_)) => return Ok(info),
                _ if tokio::time::Instant::now() >= deadline => {
                    return Err(BackendError::transient(format!(
                        "the agent of {} did not answer at {} within {} s",
                        info.name,
                        info.agent_endpoint,
                        START_PATIENCE.as_secs()
                    ))
                    .on(&info.name))
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Forgets a VM whose machine is gone behind Terraform's back (its container removed):
    /// the next apply drops it from the state, so state and containers agree again. The
    /// cluster replaces the VM under another name.
    fn forget(&self, vm: &str) {
        let (done, _) = oneshot::channel();
        if self
            .queue
            .send(Job {
                change: Change::Remove(vm.to_string()),
                done,
            })
            .is_ok()
        {
            warn!(%vm, "the VM's container is gone though Terraform made it; removing it from Terraform's state");
        }
    }
}

#[async_trait]
impl CloudProvider for TerraformProvider {
    async fn create_vm(&self, op: OpId, spec: &VmSpec) -> Result<VmInfo, BackendError> {
        if self.cluster_deleted() {
            return Err(BackendError::refused(format!(
                "cluster {} was deleted through the cloud front; no VM is made for it any more",
                self.inner.settings.target.cluster()
            ))
            .on(&spec.name)
            .in_op(op));
        }
        info!(%op, vm = %spec.name, "creating VM through Terraform");
        self.submit(Change::Put(spec.clone()))
            .await
            .map_err(|e| e.on(&spec.name).in_op(op))?;
        let record = self.inner.record(&spec.name);
        let info = record
            .and_then(|r| self.info(&r, VmState::Running))
            .ok_or_else(|| {
                BackendError::transient(format!(
                    "terraform apply succeeded but its output does not list VM {}",
                    spec.name
                ))
                .on(&spec.name)
                .in_op(op)
            })?;
        match self.wait_agent(info).await {
            Ok(info) => Ok(info),
            Err(e) => {
                // No half-made VMs: the retry creates it again.
                let _ = self.submit(Change::Remove(spec.name.clone())).await;
                Err(e.in_op(op))
            }
        }
    }

    async fn delete_vm(&self, op: OpId, name: &str) -> Result<(), BackendError> {
        info!(%op, vm = %name, "deleting VM through Terraform");
        self.submit(Change::Remove(name.to_string()))
            .await
            .map_err(|e| e.on(name).in_op(op))
    }

    async fn list_vms(&self) -> Result<Vec<VmInfo>, BackendError> {
        // Only VMs an apply has made (in its outputs) are listed. They are read before the
        // containers: a VM made meanwhile is left out until the next look, never taken for
        // gone; one deleted meanwhile is forgotten twice, which is harmless.
        let phase = self.inner.apply_phase.load(Ordering::SeqCst);
        let made: Vec<VmInfo> = self
            .inner
            .records()
            .values()
            .filter_map(|r| self.info(r, VmState::Running))
            .collect();
        let Some(containers) = self.inner.containers().await? else {
            // Targets that cannot tell: every VM runs.
            return Ok(made);
        };
        let quiet =
            phase.is_multiple_of(2) && self.inner.apply_phase.load(Ordering::SeqCst) == phase;
        let mut out = Vec::new();
        for info in made {
            match containers.get(&info.name) {
                Some(true) => out.push(info),
                None if quiet => self.forget(&info.name),
                // Stopped, or (while an apply runs) perhaps being replaced.
                Some(false) | None => out.push(VmInfo {
                    state: VmState::Down,
                    ..info
                }),
            }
        }
        Ok(out)
    }

    async fn start_vm(&self, op: OpId, name: &str) -> Result<VmInfo, BackendError> {
        let record = self.inner.record(name);
        let info = record
            .and_then(|r| self.info(&r, VmState::Running))
            .ok_or_else(|| BackendError::vm_gone(name).in_op(op))?;
        match &self.inner.settings.target {
            TerraformTarget::LocalDocker { cluster, .. } => {
                if self
                    .inner
                    .containers()
                    .await?
                    .is_some_and(|c| !c.contains_key(name))
                {
                    self.forget(name);
                    return Err(BackendError::vm_gone(name).in_op(op));
                }
                docker(&["start", &format!("{cluster}-{name}")])
                    .await
                    .map_err(|e| e.on(name).in_op(op))?;
            }
            TerraformTarget::Aws { .. } => return Err(BackendError::refused(
                "the aws target cannot start a stopped instance yet; start it in the EC2 console",
            )
            .on(name)
            .in_op(op)),
        }
        self.wait_agent(info).await.map_err(|e| e.in_op(op))
    }
}

/// Runs applies one at a time, each for every request that arrived while the last ran or
/// within [`BATCH_WINDOW`].
async fn applier(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<Job>) {
    while let Some(first) = rx.recv().await {
        tokio::time::sleep(BATCH_WINDOW).await;
        let mut jobs = vec![first];
        while let Ok(j) = rx.try_recv() {
            jobs.push(j);
        }
        let result = inner.apply(jobs.iter().map(|j| &j.change)).await;
        if let Err(e) = &result {
            warn!(error = %e, requests = jobs.len(), "terraform apply failed");
        }
        for j in jobs {
            let _ = j.done.send(result.clone());
        }
    }
}

impl Inner {
    fn records(&self) -> BTreeMap<String, Record> {
        self.records.lock().map(|r| r.clone()).unwrap_or_default()
    }

    fn record(&self, vm: &str) -> Option<Record> {
        self.records.lock().ok()?.get(vm).cloned()
    }

    async fn apply<'a>(
        &self,
        changes: impl Iterator<Item = &'a Change>,
    ) -> Result<(), BackendError> {
        let mut next = self.records();
        let dir = &self.settings.work_dir;
        for change in changes {
            match change {
                // A creation queued before the cluster was deleted is dropped.
                Change::Put(_) if dir.join(DELETED_FILE).exists() => {}
                Change::DeleteCluster => {
                    let marker = dir.join(DELETED_FILE);
                    write_synced(&marker, b"").map_err(|e| dir_error(&marker, e))?;
                    next.clear();
                }
                Change::Put(spec) => {
                    let record = match next.get(&spec.name) {
                        // A repeated creation (a new leader's) keeps the VM's configuration
                        // as it is, join ticket included: a changed one would make
                        // Terraform replace a VM that may hold data (user_data).
                        Some(r) => Record {
                            spec: VmSpec {
                                join: r.spec.join.clone(),
                                ..spec.clone()
                            },
                            address: r.address.clone(),
                        },
                        None => Record {
                            spec: spec.clone(),
                            address: self.free_address(&next).await?,
                        },
                    };
                    next.insert(spec.name.clone(), record);
                }
                Change::Remove(name) => {
                    next.remove(name);
                }
                Change::Converge => {}
            }
        }
        // The records first: a process killed from here on finds what it was doing.
        let json = serde_json::to_vec_pretty(&next)
            .map_err(|e| BackendError::refused(format!("cannot encode VM records: {e}")))?;
        write_synced(&dir.join(RECORDS_FILE), &json).map_err(|e| dir_error(dir, e))?;
        if let Ok(mut r) = self.records.lock() {
            *r = next.clone();
        }
        let records = next;
        self.write_secrets(&records)?;
        self.write_module(&records)?;
        self.terraform_init().await?;
        let n = self.applies.fetch_add(1, Ordering::SeqCst) + 1;
        let started = std::time::Instant::now();
        info!(apply = n, vms = records.len(), "terraform apply");
        self.apply_phase.fetch_add(1, Ordering::SeqCst);
        let applied = self
            .terraform(&["apply", "-auto-approve", "-input=false", "-no-color"])
            .await;
        self.apply_phase.fetch_add(1, Ordering::SeqCst);
        applied?;
        info!(
            apply = n,
            seconds = started.elapsed().as_secs_f64(),
            "terraform apply done"
        );
        let out = self.terraform(&["output", "-json"]).await?;
        let outputs = terraform_templates::parse_outputs(&out)
            .map_err(|e| BackendError::refused(e.to_string()))?;
        self.remove_orphans(&outputs).await?;
        self.forget_secrets(&records);
        if let Ok(mut o) = self.outputs.lock() {
            *o = outputs;
        }
        Ok(())
    }

    /// The lowest address of the subnet (from host [`FIRST_VM_HOST`](crate::docker::FIRST_VM_HOST)) that no record and no
    /// container on the network holds.
    async fn free_address(
        &self,
        records: &BTreeMap<String, Record>,
    ) -> Result<String, BackendError> {
        let TerraformTarget::LocalDocker {
            network, subnet, ..
        } = &self.settings.target
        else {
            return Ok(String::new());
        };
        let (base, hosts) = subnet_hosts(subnet).ok_or_else(|| {
            BackendError::refused(format!(
                "subnet {subnet:?} of the local-docker target is not an IPv4 a.b.c.d/n with n from 8 to 30"
            ))
        })?;
        let on_network = docker(&[
            "network",
            "inspect",
            network,
            "--format",
            "{{range .Containers}}{{.IPv4Address}} {{end}}",
        ])
        .await?;
        let used: BTreeSet<u32> = records
            .values()
            .map(|r| r.address.as_str())
            .chain(
                on_network
                    .split_whitespace()
                    .filter_map(|a| a.split('/').next()),
            )
            .filter_map(|a| a.parse::<Ipv4Addr>().ok())
            .map(u32::from)
            .collect();
        crate::docker::lowest_free_vm_address(base, hosts, &used).ok_or_else(|| {
            BackendError::refused(format!(
                "subnet {subnet} of network {network} has no free address left for a VM"
            ))
        })
    }

    fn target(&self) -> Target {
        match &self.settings.target {
            TerraformTarget::LocalDocker {
                cluster,
                network,
                image,
                ..
            } => Target::LocalDocker(terraform_templates::LocalDockerTarget {
                cluster: cluster.clone(),
                network: network.clone(),
                image: image.clone(),
                agent_grpc_port: AGENT_GRPC_PORT,
                limits: VmType::ALL
                    .iter()
                    .map(|t| {
                        let (memory_bytes, nano_cpus) = limits(*t);
                        Limits {
                            vm_type: t.as_str().to_string(),
                            memory_bytes,
                            cpus: format!("{}", nano_cpus as f64 / 1e9),
                        }
                    })
                    .collect(),
            }),
            TerraformTarget::Aws { cluster, ports } => {
                Target::Aws(terraform_templates::AwsTarget {
                    cluster: cluster.clone(),
                    agent_grpc_port: AGENT_GRPC_PORT,
                    ports: ports.clone(),
                })
            }
        }
    }

    fn vm_config(&self, spec: &VmSpec) -> Result<String, BackendError> {
        serde_json::to_string(&VmConfig {
            spec: spec.clone(),
            runtime: self.runtime,
            provider: self.vm_provider.clone(),
            address: None,
            artifact_mirrors: Vec::new(),
            // A VM recorded before join tickets existed keeps the configuration it was made
            // with: a changed one would make Terraform replace it (user_data on AWS), and
            // its data with it.
            ca: match spec.join {
                Some(_) => VmTrust::CaCert {
                    cert_pem: self.ca.cert_pem.clone(),
                },
                None => VmTrust::Ca(self.ca.clone()),
            },
        })
        .map_err(|e| BackendError::refused(format!("VM config: {e}")))
    }

    /// Each VM's agent configuration, which holds the cluster CA: an env file per VM
    /// (local-docker) or the `vm_configs` variable (aws), all 0600.
    fn write_secrets(&self, records: &BTreeMap<String, Record>) -> Result<(), BackendError> {
        let dir = &self.settings.work_dir;
        match &self.settings.target {
            TerraformTarget::LocalDocker { env, .. } => {
                let env_dir = dir.join("env");
                make_private_dir(&env_dir).map_err(|e| dir_error(&env_dir, e))?;
                for r in records.values() {
                    let mut text = format!("{VM_ENV}={}\n", self.vm_config(&r.spec)?);
                    for (k, v) in env {
                        text.push_str(&format!("{k}={v}\n"));
                    }
                    let path = env_dir.join(format!("{}.env", r.spec.name));
                    write_synced(&path, text.as_bytes()).map_err(|e| dir_error(&path, e))?;
                }
            }
            TerraformTarget::Aws { .. } => {
                let configs: BTreeMap<&str, String> = records
                    .values()
                    .map(|r| Ok((r.spec.name.as_str(), self.vm_config(&r.spec)?)))
                    .collect::<Result<_, BackendError>>()?;
                let json = serde_json::json!({ "vm_configs": configs });
                let path = dir.join("vm-configs.auto.tfvars.json");
                write_synced(&path, json.to_string().as_bytes())
                    .map_err(|e| dir_error(&path, e))?;
            }
        }
        Ok(())
    }

    /// Env files of VMs that are gone (after the apply that destroyed them).
    fn forget_secrets(&self, records: &BTreeMap<String, Record>) {
        let env_dir = self.settings.work_dir.join("env");
        let Ok(entries) = std::fs::read_dir(&env_dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(vm) = name.strip_suffix(".env") {
                if !records.contains_key(vm) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }

    fn write_module(&self, records: &BTreeMap<String, Record>) -> Result<(), BackendError> {
        let vms: Vec<terraform_templates::Vm> = records
            .values()
            .map(|r| terraform_templates::Vm {
                name: r.spec.name.clone(),
                role: r.spec.role.as_str().to_string(),
                zone: r.spec.zone.clone(),
                vm_type: r.spec.vm_type.as_str().to_string(),
                storage_gib: r.spec.storage_gib,
                address: r.address.clone(),
            })
            .collect();
        let module = terraform_templates::render(&self.target(), &vms)
            .map_err(|e| BackendError::refused(e.to_string()))?;
        let dir = &self.settings.work_dir;
        for (name, text) in &module.files {
            let path = dir.join(name);
            write_synced(&path, text.as_bytes()).map_err(|e| dir_error(&path, e))?;
        }
        Ok(())
    }

    async fn terraform_init(&self) -> Result<(), BackendError> {
        if self.initialized.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.terraform(&["init", "-input=false", "-no-color"])
            .await?;
        self.initialized.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Runs `terraform ARGS` in the working directory; its stdout, or its own error text.
    async fn terraform(&self, args: &[&str]) -> Result<String, BackendError> {
        let dir = &self.settings.work_dir;
        let rc = dir.join("terraformrc");
        if !rc.exists() {
            write_synced(&rc, b"").map_err(|e| dir_error(&rc, e))?;
        }
        let out = tokio::process::Command::new(&self.settings.terraform)
            .args(args)
            .current_dir(dir)
            .env("TF_CLI_CONFIG_FILE", &rc)
            .env("TF_IN_AUTOMATION", "1")
            .env("TF_INPUT", "0")
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| {
                BackendError::refused(format!(
                    "cannot run {} ({e}); install Terraform (scripts/install-terraform.sh prints one)",
                    self.settings.terraform.display()
                ))
            })?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let said = if stderr.trim().is_empty() {
            stdout.trim()
        } else {
            stderr.trim()
        };
        Err(BackendError::new(
            ErrorKind::Transient,
            format!("terraform {} failed ({}): {said}", args[0], out.status),
        ))
    }

    /// local-docker: containers of this cluster that Terraform made but its state does not
    /// hold (an apply killed between `docker run` and saving the state) are removed, with
    /// their volumes: a VM exists exactly when the state holds it.
    /// The VM containers Terraform made for the cluster (local-docker), running or not: VM
    /// name → running. None for targets that cannot tell.
    async fn containers(&self) -> Result<Option<BTreeMap<String, bool>>, BackendError> {
        let TerraformTarget::LocalDocker { cluster, .. } = &self.settings.target else {
            return Ok(None);
        };
        let out = docker(&[
            "ps",
            "-a",
            "--filter",
            &format!("label={LABEL_CLUSTER}={cluster}"),
            "--filter",
            &format!("label={LABEL_CREATED_BY}=terraform"),
            "--format",
            "{{.Label \"managed-rondb.vm\"}} {{.State}}",
        ])
        .await?;
        Ok(Some(
            out.lines()
                .filter_map(|l| l.split_once(' '))
                .map(|(vm, state)| (vm.to_string(), state == "running"))
                .collect(),
        ))
    }

    async fn remove_orphans(
        &self,
        outputs: &BTreeMap<String, terraform_templates::VmOutput>,
    ) -> Result<(), BackendError> {
        let (Some(containers), TerraformTarget::LocalDocker { cluster, .. }) =
            (self.containers().await?, &self.settings.target)
        else {
            return Ok(());
        };
        for vm in containers.keys().filter(|vm| !outputs.contains_key(*vm)) {
            warn!(%vm, "container not in Terraform's state (an apply was cut short); removing it");
            docker(&["rm", "-f", "-v", &format!("{cluster}-{vm}")]).await?;
            docker(&["volume", "rm", "-f", &format!("{cluster}-{vm}-data")]).await?;
        }
        Ok(())
    }
}

/// Runs `docker ARGS`; its stdout, or Docker's own error text.
async fn docker(args: &[&str]) -> Result<String, BackendError> {
    let out = tokio::process::Command::new("docker")
        .args(args)
        .output()
        .await
        .map_err(|e| tf_error("cannot run docker", e))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(BackendError::transient(format!(
            "docker {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn dir_error(path: &Path, e: std::io::Error) -> BackendError {
    BackendError::refused(format!("{}: {e}", path.display())).caused_by(e)
}

fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_give_their_first_address_and_size() {
        assert_eq!(
            subnet_hosts("10.213.0.0/24"),
            Some((u32::from(Ipv4Addr::new(10, 213, 0, 0)), 256))
        );
        assert_eq!(
            subnet_hosts("10.213.0.77/24").map(|s| s.0),
            Some(u32::from(Ipv4Addr::new(10, 213, 0, 0)))
        );
        assert_eq!(subnet_hosts("10.213.0.0/31"), None);
        assert_eq!(subnet_hosts("nonsense"), None);
    }
}

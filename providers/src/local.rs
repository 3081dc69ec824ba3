//! The `local` provider: every VM is an `ndb-agent agent` process on this machine with its
//! own directory `<data-dir>/vms/<vm>/` (its `vm.json`, `agent.pid`, `agent.json` with its
//! loopback addresses, Raft store and logs). VMs outlive the process that created them (each
//! agent runs in its own process group), any agent can list, start and delete them (the truth
//! is the directory tree and the processes). A directory whose agent is not running is a VM
//! that is down (started again with its data); a directory that was removed is a VM that is
//! gone.

pub use crate::{ProviderConfig, VmConfig};
use agent_core::backend::OpId;
use agent_core::backend::{BackendError, CloudProvider, VmInfo, VmSpec, VmState};
use agent_core::model::Role;
use async_trait::async_trait;
use backon::{ConstantBuilder, Retryable};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tracing::info;

/// Where the agent answers: written by the agent once it listens.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AgentAddress {
    pub pid: u32,
    pub grpc_addr: String,
    pub http_addr: String,
}

pub const VM_FILE: &str = "vm.json";
pub const ADDRESS_FILE: &str = "agent.json";
pub const PID_FILE: &str = "agent.pid";
/// Held (an exclusive lock) by the agent running on the directory: never two at once.
pub const LOCK_FILE: &str = "agent.lock";

/// How long a started agent may take to listen.
const START_PATIENCE: Duration = Duration::from_secs(30);

/// The `local` CloudProvider.
pub struct LocalProvider {
    data_dir: PathBuf,
    program: PathBuf,
    runtime: crate::RuntimeKind,
    /// Handed to every VM it creates.
    artifact_mirrors: Vec<agent_core::artifacts::ArtifactMirror>,
    /// Held while a VM's address is chosen and recorded: never two VMs on one address.
    addressing: tokio::sync::Mutex<()>,
    /// The cluster CA's certificate, handed to every VM it creates (never its key).
    ca_cert_pem: String,
}

fn absolute(p: &Path) -> String {
    std::path::absolute(p)
        .unwrap_or_else(|_| p.to_path_buf())
        .display()
        .to_string()
}

/// Kills every process working in a VM's directory (RonDB's programs run there): what
/// switching a machine off does to them. Returns how many it killed.
pub fn kill_vm_processes(vm_dir: &Path) -> usize {
    let Ok(dir) = vm_dir.canonicalize() else {
        return 0;
    };
    let me = std::process::id();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut killed = 0;
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let inside =
            std::fs::read_link(p.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(&dir));
        if inside {
            signal(pid, nix::sys::signal::Signal::SIGKILL);
            killed += 1;
        }
    }
    killed
}

/// Where RonDB lives in a local VM's directory (its files, logs and installed versions).
pub fn rondb_home(vm_dir: &Path) -> PathBuf {
    vm_dir.join("rondb")
}

fn failed(what: &str, e: impl std::fmt::Display) -> BackendError {
    BackendError::refused(format!("{what}: {e}"))
}

impl LocalProvider {
    /// `program` is the `ndb-agent` binary each VM runs; `runtime` the runtime it uses.
    pub fn new(
        data_dir: &Path,
        program: &Path,
        runtime: crate::RuntimeKind,
        ca_cert_pem: String,
    ) -> Self {
        LocalProvider {
            data_dir: data_dir.to_path_buf(),
            program: program.to_path_buf(),
            runtime,
            artifact_mirrors: Vec::new(),
            addressing: tokio::sync::Mutex::new(()),
            ca_cert_pem,
        }
    }

    /// The VMs it creates fetch tarballs through these mirrors.
    pub fn with_artifact_mirrors(
        mut self,
        mirrors: Vec<agent_core::artifacts::ArtifactMirror>,
    ) -> Self {
        self.artifact_mirrors = mirrors;
        self
    }

    pub fn vms_dir(&self) -> PathBuf {
        self.data_dir.join("vms")
    }

    pub fn vm_dir(&self, name: &str) -> PathBuf {
        self.vms_dir().join(name)
    }

    fn info(&self, vm: &VmConfig, addr: &AgentAddress) -> VmInfo {
        self.info_in_state(vm, Some(addr), VmState::Running)
    }

    fn info_in_state(&self, vm: &VmConfig, addr: Option<&AgentAddress>, state: VmState) -> VmInfo {
        VmInfo {
            name: vm.spec.name.clone(),
            role: vm.spec.role,
            zone: vm.spec.zone.clone(),
            vm_type: vm.spec.vm_type,
            storage_gib: vm.spec.storage_gib,
            address: vm.address.clone().unwrap_or_else(|| "127.0.0.1".into()),
            agent_endpoint: addr.map(|a| a.grpc_addr.clone()).unwrap_or_default(),
            state,
            // Absolute: RonDB's programs run with their own working directory.
            home: vm
                .runtime
                .runs_rondb()
                .then(|| absolute(&rondb_home(&self.vm_dir(&vm.spec.name)))),
            host_dir: vm.runtime.runs_rondb().then(|| absolute(&self.data_dir)),
            backup_dir: None,
        }
    }

    /// The lowest loopback address of this data directory's block (127.A.B.2 ...) that no
    /// VM holds. The block comes from the data directory's path, so two clusters on one
    /// machine do not meet on RonDB's ports.
    fn free_address(&self) -> Result<String, BackendError> {
        let h = self
            .data_dir
            .display()
            .to_string()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
        let (a, b) = (64 + h % 128, (h >> 8) % 254 + 1);
        let taken: Vec<String> = std::fs::read_dir(self.vms_dir())
            .map(|d| {
                d.flatten()
                    .filter_map(|e| read_vm(&e.path()).ok()?.address)
                    .collect()
            })
            .unwrap_or_default();
        (2..=254)
            .map(|x| format!("127.{a}.{b}.{x}"))
            .find(|addr| !taken.contains(addr))
            .ok_or_else(|| {
                BackendError::refused(
                    "no free loopback address left for another VM (253 per data directory)",
                )
            })
    }

    /// Starts the agent of the VM in `dir` and waits until it listens. Another agent that
    /// won the directory's lock meanwhile (a concurrent start) is as good.
    async fn start_agent(&self, vm: &VmConfig, dir: &Path) -> Result<VmInfo, BackendError> {
        let name = &vm.spec.name;
        let spawned = self.spawn_agent(dir)?;
        info!(vm = %name, pid = spawned.pid, "started agent process");
        match wait_listening(dir, &spawned, START_PATIENCE).await {
            Ok(addr) => Ok(self.info(vm, &addr)),
            Err(e) => {
                if let Some(addr) = running_agent(dir) {
                    return Ok(self.info(vm, &addr));
                }
                Err(e.on(name.clone()))
            }
        }
    }

    /// Starts the agent of the VM whose directory is `dir` (also used to restart one).
    pub fn spawn_agent(&self, dir: &Path) -> Result<Spawned, BackendError> {
        spawn_agent(&self.program, dir)
    }
}

/// A started agent process.
pub struct Spawned {
    pub pid: u32,
    /// Set once the process has exited (while the spawner lives).
    pub exited: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// Starts `program agent --vm-dir dir` in its own process group, logs to `dir/agent.log`.
pub fn spawn_agent(program: &Path, dir: &Path) -> Result<Spawned, BackendError> {
    use std::os::unix::process::CommandExt;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("agent.log"))
        .map_err(|e| failed("cannot open agent.log", e))?;
    let log2 = log
        .try_clone()
        .map_err(|e| failed("cannot open agent.log", e))?;
    let mut child = std::process::Command::new(program)
        .arg("agent")
        .arg("--vm-dir")
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0)
        .spawn()
        .map_err(|e| failed(&format!("cannot start {}", program.display()), e))?;
    let pid = child.id();
    let exited = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = std::sync::Arc::clone(&exited);
    // Reap it if it dies while we live; if we die first, init adopts it.
    std::thread::spawn(move || {
        let _ = child.wait();
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    Ok(Spawned { pid, exited })
}

/// Reads a VM's `vm.json`.
pub fn read_vm(dir: &Path) -> Result<VmConfig, String> {
    let p = dir.join(VM_FILE);
    let text = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))
}

/// Reads a VM's `agent.json`.
pub fn read_address(dir: &Path) -> Option<AgentAddress> {
    let text = std::fs::read_to_string(dir.join(ADDRESS_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Writes a file atomically.
/// Writes a file only its owner reads (mode 0600, it holds a secret), fsync'd, replacing
/// the old one at once.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(tmp, path)
}

/// Writes `path` 0600 through a fsync'd temporary file and a rename, then fsyncs the
/// directory, so a crash leaves the old content or the new, never a mix or nothing.
pub fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_private(path, bytes)?;
    if let Some(parent) = path.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(tmp, path)
}

/// The pid in `dir/agent.pid` if that process is alive and is this VM's agent.
pub fn live_pid(dir: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(dir.join(PID_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline);
    let dir_s = dir.to_string_lossy();
    cmdline.contains(dir_s.as_ref()).then_some(pid)
}

/// The agent running on `dir` and where it answers, if it runs and has said so.
pub fn running_agent(dir: &Path) -> Option<AgentAddress> {
    let pid = live_pid(dir)?;
    read_address(dir).filter(|a| a.pid == pid)
}

/// Why a started agent is not listening (yet).
#[derive(Debug)]
enum NotListening {
    Starting,
    Exited,
}

/// Waits until the agent `spawned` on `dir` writes its address. Fails at once when the
/// process exits (the end of its log says why) and after `patience` otherwise.
async fn wait_listening(
    dir: &Path,
    spawned: &Spawned,
    patience: Duration,
) -> Result<AgentAddress, BackendError> {
    let poll = Duration::from_millis(50);
    let tries = (patience.as_millis() / poll.as_millis()).max(1) as usize;
    let check = || async {
        if let Some(a) = read_address(dir).filter(|a| a.pid == spawned.pid) {
            return Ok(a);
        }
        // (Not /proc: between fork and exec a child still shows its parent's command.)
        if spawned.exited.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(NotListening::Exited);
        }
        Err(NotListening::Starting)
    };
    match check
        .retry(
            ConstantBuilder::new()
                .with_delay(poll)
                .with_max_times(tries),
        )
        .when(|e| matches!(e, NotListening::Starting))
        .await
    {
        Ok(a) => Ok(a),
        Err(NotListening::Exited) => {
            let log = std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            Err(BackendError::transient(format!(
                "the agent in {} exited at start; last log lines: {}",
                dir.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            )))
        }
        Err(NotListening::Starting) => Err(BackendError::transient(format!(
            "the agent in {} did not listen within {} s",
            dir.display(),
            patience.as_secs()
        ))),
    }
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    if let Ok(p) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), sig);
    }
}

#[async_trait]
impl CloudProvider for LocalProvider {
    async fn create_vm(&self, _op: OpId, spec: &VmSpec) -> Result<VmInfo, BackendError> {
        let dir = self.vm_dir(&spec.name);
        // Idempotent: a VM created by a leader that died before recording it is reused.
        if let (Some(addr), Ok(existing)) = (running_agent(&dir), read_vm(&dir)) {
            return Ok(self.info(&existing, &addr));
        }
        let _addressing = self.addressing.lock().await;
        let address = match self.runtime {
            crate::RuntimeKind::Direct | crate::RuntimeKind::Supervisord => {
                Some(self.free_address()?)
            }
            crate::RuntimeKind::Dummy => None,
        };
        let vm = VmConfig {
            spec: spec.clone(),
            runtime: self.runtime,
            provider: ProviderConfig::Local {
                data_dir: self.data_dir.clone(),
            },
            address,
            artifact_mirrors: self.artifact_mirrors.clone(),
            ca: agent_core::backend::VmTrust::CaCert {
                cert_pem: self.ca_cert_pem.clone(),
            },
        };
        std::fs::create_dir_all(&dir)
            .map_err(|e| failed(&format!("cannot create {}", dir.display()), e))?;
        let _ = std::fs::remove_file(dir.join(ADDRESS_FILE));
        let json = serde_json::to_vec_pretty(&vm).map_err(|e| failed("vm.json", e))?;
        write_private(&dir.join(VM_FILE), &json).map_err(|e| failed("cannot write vm.json", e))?;
        match self.start_agent(&vm, &dir).await {
            Ok(info) => Ok(info),
            Err(e) => {
                // No half-made VMs: the retry creates it again.
                let _ = self.delete_vm(OpId::NONE, &spec.name).await;
                Err(e)
            }
        }
    }

    async fn delete_vm(&self, _op: OpId, name: &str) -> Result<(), BackendError> {
        let dir = self.vm_dir(name);
        if let Some(pid) = live_pid(&dir) {
            signal(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(3);
            while live_pid(&dir).is_some() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if live_pid(&dir).is_some() {
                signal(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
        // The machine goes away with everything that ran on it.
        kill_vm_processes(&dir);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(failed(&format!("cannot remove {}", dir.display()), e)),
        }
        info!(vm = %name, "deleted");
        Ok(())
    }

    async fn list_vms(&self) -> Result<Vec<VmInfo>, BackendError> {
        let entries = match std::fs::read_dir(self.vms_dir()) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(failed("cannot list VMs", e)),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let dir = entry.path();
            let Ok(vm) = read_vm(&dir) else { continue };
            if vm.spec.role == Role::Bootstrap {
                continue;
            }
            out.push(match running_agent(&dir) {
                Some(a) => self.info(&vm, &a),
                None => self.info_in_state(&vm, read_address(&dir).as_ref(), VmState::Down),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn start_vm(&self, _op: OpId, name: &str) -> Result<VmInfo, BackendError> {
        let dir = self.vm_dir(name);
        let vm = match read_vm(&dir) {
            Ok(vm) => vm,
            Err(_) if !dir.exists() => return Err(BackendError::vm_gone(name)),
            Err(e) => {
                return Err(BackendError::refused(format!(
                    "cannot start {name}: {e}; its directory is kept for inspection"
                ))
                .on(name))
            }
        };
        if let Some(addr) = running_agent(&dir) {
            return Ok(self.info(&vm, &addr));
        }
        self.start_agent(&vm, &dir).await
    }
}

//! The dummy runtime of one real agent: it writes the real configuration files under the
//! VM's directory, records every call in `runtime/calls.log`, and pretends programs run,
//! keeping what it pretends in `runtime/state.json` so it survives an agent restart (as
//! programs under a supervisor would). It refuses what needs a missing step (starting a
//! version that is not installed, a management server without config.ini, restoring a backup
//! that is not in the sink).

use agent_core::actions::RestoreStep;
use agent_core::backend::OpId;
use agent_core::backend::{
    BackendError, MgmCommand, ProcessRuntime, ProgramKind, ProgramSpec, ProgramStatus, RestoreRun,
};
use agent_core::desired::BackupSpec;
use agent_core::model::ConfigFile;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use tokio::sync::Mutex;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Program {
    kind: Option<ProgramKind>,
    version: String,
    node_ids: Vec<u32>,
    running: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    installed: BTreeSet<String>,
    program: Program,
    /// Slot activations and host names as the management server on this VM holds them.
    active: BTreeMap<u32, bool>,
    hostnames: BTreeMap<u32, String>,
}

/// Pretends to run RonDB programs on the VM whose directory is `dir`.
pub struct VmDummyRuntime {
    vm: String,
    dir: PathBuf,
    /// Where backups go (shared by the VMs of one machine, like a cloud bucket).
    sink: PathBuf,
    /// How long a pretended program start or stop takes (0 by default; demos and failover
    /// tests slow it down to watch a rolling change).
    delay: std::time::Duration,
    state: Mutex<State>,
}

fn failed(msg: String) -> BackendError {
    BackendError::refused(msg)
}

fn io(what: &str, e: std::io::Error) -> BackendError {
    BackendError::transient(crate::io_message(what, &e))
}

impl VmDummyRuntime {
    pub fn new(vm: &str, dir: &Path, sink: &Path, delay: std::time::Duration) -> Self {
        let state = std::fs::read_to_string(dir.join("runtime/state.json"))
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default();
        VmDummyRuntime {
            vm: vm.to_string(),
            dir: dir.to_path_buf(),
            sink: sink.to_path_buf(),
            delay,
            state: Mutex::new(state),
        }
    }

    fn check(&self, vm: &str) -> Result<(), BackendError> {
        if vm == self.vm {
            Ok(())
        } else {
            Err(failed(format!(
                "this runtime runs on {}, not {vm}",
                self.vm
            )))
        }
    }

    /// One line per call, with the operation id it ran under: a test proves no operation
    /// ran twice from these lines (one agent's log of what it was asked to do).
    fn record(&self, op: OpId, line: &str) -> Result<(), BackendError> {
        let d = self.dir.join("runtime");
        std::fs::create_dir_all(&d).map_err(|e| io("runtime dir", e))?;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("calls.log"))
            .map_err(|e| io("calls.log", e))?;
        writeln!(f, "op={} {line}", op.0).map_err(|e| io("calls.log", e))
    }

    fn save(&self, s: &State) -> Result<(), BackendError> {
        let d = self.dir.join("runtime");
        std::fs::create_dir_all(&d).map_err(|e| io("runtime dir", e))?;
        let json = serde_json::to_vec_pretty(s).map_err(|e| failed(e.to_string()))?;
        let tmp = d.join("state.json.tmp");
        std::fs::write(&tmp, json).map_err(|e| io("state.json", e))?;
        std::fs::rename(&tmp, d.join("state.json")).map_err(|e| io("state.json", e))
    }

    /// A path of the VM's file system, under `<dir>/root`.
    fn root_path(&self, path: &str) -> PathBuf {
        self.dir.join("root").join(path.trim_start_matches('/'))
    }

    fn backup_dir(&self, id: u64) -> PathBuf {
        self.sink.join(format!("BACKUP-{id}"))
    }

    /// Active data nodes in the config.ini this VM holds.
    fn data_nodes(&self) -> Vec<u32> {
        let text = std::fs::read_to_string(self.root_path("/srv/rondb/mgmd/config.ini"))
            .unwrap_or_default();
        let mut out = Vec::new();
        let mut section = String::new();
        let mut node: Option<u32> = None;
        let mut active = false;
        let flush = |section: &str, node: Option<u32>, active: bool, out: &mut Vec<u32>| {
            if section == "ndbd" && active {
                if let Some(n) = node {
                    out.push(n);
                }
            }
        };
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                flush(&section, node, active, &mut out);
                section = line.trim_matches(|c| c == '[' || c == ']').to_string();
                node = None;
                active = false;
            } else if let Some(v) = line.strip_prefix("NodeId=") {
                node = v.parse().ok();
            } else if let Some(v) = line.strip_prefix("NodeActive=") {
                active = v == "1";
            }
        }
        flush(&section, node, active, &mut out);
        out
    }
}

#[async_trait]
impl ProcessRuntime for VmDummyRuntime {
    async fn install_software(
        &self,
        op: OpId,
        vm: &str,
        version: &str,
        url: &str,
    ) -> Result<(), BackendError> {
        self.check(vm)?;
        let mut s = self.state.lock().await;
        self.record(op, &format!("install {version} from {url}"))?;
        std::fs::create_dir_all(self.root_path(&format!("/srv/rondb/versions/{version}/bin")))
            .map_err(|e| io("install", e))?;
        s.installed.insert(version.to_string());
        self.save(&s)
    }

    async fn write_files(
        &self,
        op: OpId,
        vm: &str,
        files: &[ConfigFile],
    ) -> Result<(), BackendError> {
        self.check(vm)?;
        let _s = self.state.lock().await;
        for f in files {
            let p = self.root_path(&f.path);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).map_err(|e| io("config dir", e))?;
            }
            let tmp = p.with_extension("tmp");
            std::fs::write(&tmp, &f.content).map_err(|e| io(&f.path, e))?;
            std::fs::rename(&tmp, &p).map_err(|e| io(&f.path, e))?;
            self.record(op, &format!("write {}", f.path))?;
        }
        Ok(())
    }

    async fn start_program(
        &self,
        op: OpId,
        vm: &str,
        spec: &ProgramSpec,
    ) -> Result<(), BackendError> {
        self.check(vm)?;
        let mut s = self.state.lock().await;
        if !s.installed.contains(&spec.version) {
            return Err(failed(format!(
                "RonDB {} is not installed on {vm}; install it before starting {:?}",
                spec.version, spec.kind
            )));
        }
        if spec.kind == ProgramKind::Mgmd && !self.root_path("/srv/rondb/mgmd/config.ini").exists()
        {
            return Err(failed(format!(
                "{vm} has no config.ini; ndb_mgmd cannot start"
            )));
        }
        self.record(op, &format!("start {}", spec.command.join(" ")))?;
        tokio::time::sleep(self.delay).await;
        s.program = Program {
            kind: Some(spec.kind),
            version: spec.version.clone(),
            node_ids: spec.node_ids.clone(),
            running: true,
        };
        self.save(&s)
    }

    async fn stop_program(
        &self,
        op: OpId,
        vm: &str,
        kind: ProgramKind,
        cluster_shutdown: bool,
    ) -> Result<(), BackendError> {
        self.check(vm)?;
        let mut s = self.state.lock().await;
        self.record(
            op,
            &format!("stop {kind:?} cluster_shutdown={cluster_shutdown}"),
        )?;
        tokio::time::sleep(self.delay).await;
        s.program.running = false;
        self.save(&s)
    }

    async fn status(&self, vm: &str) -> Result<ProgramStatus, BackendError> {
        self.check(vm)?;
        let s = self.state.lock().await;
        Ok(ProgramStatus {
            running: s.program.running,
            version: s.program.running.then(|| s.program.version.clone()),
            rondb: Vec::new(),
        })
    }

    async fn mgm_command(
        &self,
        op: OpId,
        vm: &str,
        cmd: &MgmCommand,
    ) -> Result<Vec<u32>, BackendError> {
        self.check(vm)?;
        let mut s = self.state.lock().await;
        if !(s.program.running && s.program.kind == Some(ProgramKind::Mgmd)) {
            return Err(BackendError::transient(format!(
                "no management server runs on {vm}; ndb_mgm -e '{}' cannot connect",
                cmd.command_line()
            )));
        }
        self.record(op, &format!("ndb_mgm -e '{}'", cmd.command_line()))?;
        let out = match cmd {
            MgmCommand::Activate { node_id } => {
                s.active.insert(*node_id, true);
                vec![]
            }
            MgmCommand::Deactivate { node_id } => {
                s.active.insert(*node_id, false);
                vec![]
            }
            MgmCommand::Hostname { node_id, host } => {
                s.hostnames.insert(*node_id, host.clone());
                vec![]
            }
            MgmCommand::StartBackup { backup_id } => {
                let nodes = self.data_nodes();
                let d = self.backup_dir(*backup_id);
                std::fs::create_dir_all(&d).map_err(|e| io("backup sink", e))?;
                let json = serde_json::to_vec(&nodes).map_err(|e| failed(e.to_string()))?;
                std::fs::write(d.join("nodes.json"), json).map_err(|e| io("backup sink", e))?;
                nodes
            }
        };
        self.save(&s)?;
        Ok(out)
    }

    async fn restore(
        &self,
        op: OpId,
        vm: &str,
        run: &RestoreRun,
    ) -> Result<Vec<u32>, BackendError> {
        self.check(vm)?;
        let _s = self.state.lock().await;
        let d = self.backup_dir(run.backup.id);
        let nodes: Vec<u32> = match std::fs::read(d.join("nodes.json")) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| failed(format!("backup {}: {e}", run.backup.id)))?,
            Err(_) => {
                return Err(failed(format!(
                    "backup {} is not in the sink {}",
                    run.backup.id,
                    self.sink.display()
                )))
            }
        };
        self.record(op, &format!("restore {}", run.command.join(" ")))?;
        Ok(if run.step == RestoreStep::Meta {
            nodes
        } else {
            vec![]
        })
    }

    async fn delete_backup(
        &self,
        op: OpId,
        vm: &str,
        backup: &BackupSpec,
    ) -> Result<(), BackendError> {
        self.check(vm)?;
        self.record(op, &format!("delete backup {}", backup.id))?;
        match std::fs::remove_dir_all(self.backup_dir(backup.id)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("delete backup", e)),
        }
    }

    async fn restart_agent(&self, op: OpId, vm: &str) -> Result<(), BackendError> {
        self.check(vm)?;
        self.record(op, "restart agent")
    }

    async fn upgrade_agent(
        &self,
        op: OpId,
        vm: &str,
        version: &str,
        url: &str,
    ) -> Result<(), BackendError> {
        self.check(vm)?;
        self.record(op, &format!("upgrade agent to {version} from {url}"))?;
        // The dummy keeps this build and only records the version it was asked to run.
        let p = self.dir.join("agent_version");
        std::fs::write(&p, version).map_err(|e| io("agent_version", e))
    }
}

//! A local cluster for tests and benchmarks: `ndb-agent up` as a child process, every VM an
//! agent process under a temporary data directory, observed through the HTTP API. Dropping
//! it kills every agent it started, also when a test fails.

#![allow(dead_code)]

use crate::agents_client::AgentsClient;
use agent::http::Status;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct LocalCluster {
    pub dir: tempfile::TempDir,
    pub bin: PathBuf,
    pub http: String,
    up: Child,
    delay_ms: u64,
    /// RonDB's programs run (the direct runtime) instead of being pretended.
    attached: bool,
    extra: Vec<Child>,
    pub agents: AgentsClient,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// `ndb-agent up` over `dir/data`, following `dir/desired_state.jsonc`, logging to
/// `dir/up.log` (appended, so a restart keeps the first run's lines).
fn spawn_up(bin: &Path, dir: &Path, http: &str, delay_ms: u64, attached: bool) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("up.log"))
        .expect("up.log");
    Command::new(bin)
        .arg("up")
        .arg("--desired-state")
        .arg(dir.join("desired_state.jsonc"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--http")
        .arg(http)
        .env("NDB_DUMMY_PROGRAM_DELAY_MS", delay_ms.to_string())
        .args(if attached {
            &["--runtime", "direct"][..]
        } else {
            &[][..]
        })
        // The RonDB stand-in's start phases, short for tests.
        .env("RONDB_STANDIN_PHASE_MS", "50")
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start ndb-agent up")
}

impl LocalCluster {
    /// Starts `ndb-agent up` on `desired` (JSONC text); `delay_ms` slows the dummy runtime's
    /// program starts and stops.
    pub fn start(bin: &Path, desired: &str, delay_ms: u64) -> Self {
        Self::start_with(bin, desired, delay_ms, false, |_| {})
    }

    /// A cluster whose agents run RonDB's programs (the direct runtime).
    pub fn start_attached(bin: &Path, desired: &str) -> Self {
        Self::start_with(bin, desired, 0, true, |_| {})
    }

    /// [`Self::start_attached`], after `prepare` has put files into the data directory
    /// (another cluster's backup in the local sink).
    pub fn start_attached_prepared(bin: &Path, desired: &str, prepare: impl FnOnce(&Path)) -> Self {
        Self::start_with(bin, desired, 0, true, prepare)
    }

    fn start_with(
        bin: &Path,
        desired: &str,
        delay_ms: u64,
        attached: bool,
        prepare: impl FnOnce(&Path),
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        prepare(&dir.path().join("data"));
        let file = dir.path().join("desired_state.jsonc");
        std::fs::write(&file, desired).expect("write desired state");
        let http = format!("127.0.0.1:{}", free_port());
        let up = spawn_up(bin, dir.path(), &http, delay_ms, attached);
        // `up` writes the cluster's API token before any agent starts.
        let token_file = dir.path().join("data/api-token");
        let t = std::time::Instant::now();
        let token = loop {
            match std::fs::read_to_string(&token_file) {
                Ok(t) if t.ends_with('\n') => break t.trim().to_string(),
                _ => {
                    assert!(
                        t.elapsed() < Duration::from_secs(30),
                        "ndb-agent up wrote no {}",
                        token_file.display()
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        LocalCluster {
            bin: bin.to_path_buf(),
            http: http.clone(),
            up,
            delay_ms,
            attached,
            extra: vec![],
            agents: {
                let a = AgentsClient::new(&token);
                a.learn(&http);
                a
            },
            dir,
        }
    }

    /// A power cut: `ndb-agent up` (the bootstrap agent) and every VM's agent SIGKILLed at
    /// once; returns when none of them runs any more.
    pub fn kill_everything(&mut self) {
        let _ = self.up.kill();
        let _ = self.up.wait();
        for c in &mut self.extra {
            let _ = c.kill();
            let _ = c.wait();
        }
        let pids = self.agent_pids();
        for pid in &pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let t = std::time::Instant::now();
        while !self.agent_pids().is_empty() {
            assert!(t.elapsed() < Duration::from_secs(10), "agents still alive");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// CPU seconds `ndb-agent up` (the bootstrap agent and the file follower) has used.
    pub fn up_cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.up.id())).expect("stat");
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        // utime and stime: fields 14 and 15 of stat, 12 and 13 after the command name.
        let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
        let hz: f64 = Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0);
        ticks / hz
    }

    /// `ndb-agent up` again with the same arguments, on the same data directory.
    pub fn up_again(&mut self) {
        self.up = spawn_up(
            &self.bin,
            self.dir.path(),
            &self.http,
            self.delay_ms,
            self.attached,
        );
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn vm_dir(&self, vm: &str) -> PathBuf {
        self.data_dir().join("vms").join(vm)
    }

    /// The status from the agent at `addr`.
    pub fn status_at(&self, addr: &str) -> Option<Status> {
        self.agents.status_at(addr)
    }

    /// The status from any live agent, preferring the leader's view.
    pub fn status(&self) -> Option<Status> {
        self.agents.status()
    }

    /// Waits until `pred` holds for the status; panics with the last status and log tails.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Status) -> bool,
    ) -> Status {
        let last = match self.agents.wait_until(timeout, pred) {
            Ok((s, _)) => return s,
            Err(last) => *last,
        };
        panic!(
            "timed out after {timeout:?} waiting for {what}\nlast status: {}\nup.log tail:\n{}",
            serde_json::to_string_pretty(&last).unwrap_or_default(),
            self.tail("up.log", 40)
        );
    }

    /// Waits until the log `rel` holds `needle`: `up` prints what it did with the desired
    /// state file on its own schedule, after the cluster may already report it reached.
    pub fn wait_for_line(&self, rel: &str, needle: &str, timeout: Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let text = std::fs::read_to_string(self.dir.path().join(rel)).unwrap_or_default();
            if text.contains(needle) {
                return text;
            }
            if std::time::Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {needle:?} in {rel}; its tail:\n{}",
                    self.tail(rel, 60)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn tail(&self, rel: &str, n: usize) -> String {
        let text = std::fs::read_to_string(self.dir.path().join(rel)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    pub fn pid_of(&self, vm: &str) -> Option<i32> {
        std::fs::read_to_string(self.vm_dir(vm).join("agent.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// SIGKILLs the agent of `vm`.
    pub fn kill(&self, vm: &str) {
        let pid = self.pid_of(vm).unwrap_or_else(|| panic!("no pid for {vm}"));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap_or_else(|e| panic!("kill {vm} ({pid}): {e}"));
    }

    /// Starts the agent of `vm` again on its directory.
    pub fn restart_agent(&mut self, vm: &str) {
        let dir = self.vm_dir(vm);
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(dir.join("agent.log"))
            .expect("agent.log");
        let child = Command::new(&self.bin)
            .arg("agent")
            .arg("--vm-dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("restart agent");
        // The agent writes agent.pid itself once it holds the directory's lock.
        self.extra.push(child);
    }

    /// PUT /desired-state at `addr`; returns the HTTP code and body.
    pub fn apply_at(&self, addr: &str, desired: &str) -> (u16, serde_json::Value) {
        self.agents.put_desired(addr, desired)
    }

    /// The agent processes of the data directory that are alive.
    pub fn agent_pids(&self) -> Vec<i32> {
        self.recorded_pids()
            .into_iter()
            .filter(|pid| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let zombie = stat
                    .rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next())
                    .is_none_or(|st| st == "Z" || st == "X");
                !zombie
                    && std::fs::read(format!("/proc/{pid}/cmdline"))
                        .map(|c| String::from_utf8_lossy(&c).contains("ndb-agent"))
                        .unwrap_or(false)
            })
            .collect()
    }

    /// The pids the VM directories record.
    fn recorded_pids(&self) -> Vec<i32> {
        let mut out = vec![];
        if let Ok(entries) = std::fs::read_dir(self.data_dir().join("vms")) {
            for e in entries.flatten() {
                if let Some(pid) = std::fs::read_to_string(e.path().join("agent.pid"))
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                {
                    out.push(pid);
                }
            }
        }
        out
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let _ = self.up.kill();
        let _ = self.up.wait();
        for c in &mut self.extra {
            let _ = c.kill();
            let _ = c.wait();
        }
        for pid in self.recorded_pids() {
            let is_agent = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains("ndb-agent"))
                .unwrap_or(false);
            if is_agent {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        // RonDB's programs of every VM (the direct runtime) go with their machines.
        if let Ok(vms) = std::fs::read_dir(self.data_dir().join("vms")) {
            for vm in vms.flatten() {
                providers::local::kill_vm_processes(&vm.path());
            }
        }
        if std::env::var_os("KEEP_CLUSTER_DIR").is_some() {
            let p = self.dir.path().to_path_buf();
            eprintln!("cluster directory kept: {}", p.display());
            std::mem::forget(std::mem::replace(
                &mut self.dir,
                tempfile::tempdir().expect("tmp"),
            ));
        }
    }
}

/// The example cluster: 2 node groups x 2 replicas, 1 mgmd, 2 MySQLds, 1 API (8 VMs).
pub fn desired(id: u64, running_since: u64) -> String {
    format!(
        r#"{{
  "Id": {id},
  "RonDBRunning": true,
  "RonDBRunningSince": {running_since},
  "RonDBVersion": "22.10.1",
  "RonDBDownloadLink": "http://artifacts:8080/rondb/rondb-22.10.1-linux-glibc2.28-x86_64.tar.gz",
  "NdbAgentRunningSince": 1,
  "NdbAgentVersion": "1.0",
  "NdbAgentDownloadLink": "http://artifacts:8080/ndb-agent/ndb-agent-1.0.tar.gz",
  "SingleBackups": [],
  "TotalMemoryConfig": "2400M",
  "MaxReplicationFactor": 3,
  "ActiveReplicationFactor": 2,
  "NumNodeGroups": 2,
  "NumTotalMgmdSlots": 2,
  "NumTotalMysqldSlots": 8,
  "NumTotalApiSlots": 8,
  "NumMysqldSlotsPerVm": 1,
  "NumApiSlotsPerVm": 1,
  "NumManagedMgmdVms": 1,
  "NumManagedMysqldVms": 2,
  "NumManagedApiVms": 1,
  "ExternallyManagedNodes": [],
  "AllowRequestingTemporaryVms": true,
  "Region": "local",
  "AvailabilityZones": ["zone-a", "zone-b", "zone-c"],
  "VmTypeMgmds": "mini",
  "VmTypeNdbds": "small",
  "VmTypeMysqlds": "mini",
  "VmTypeApis": "mini",
  "StorageGiBPerMgmdVm": 5,
  "StorageGiBPerNdbdVm": 20,
  "StorageGiBPerMysqldVm": 5,
  "StorageGiBPerApiVm": 5,
  "DefaultMgmdPort": 1186,
  "DefaultNdbdPort": 11860,
  "DefaultMysqldPort": 3306
}}"#
    )
}

pub fn at_desired(s: &Status, id: u64) -> bool {
    s.accepted_id == Some(id)
        && s.pending_id.is_none()
        && s.reconciliation_state == "AT_DESIRED_STATE"
}

pub fn count_role(s: &Status, role: &str) -> usize {
    s.vms.iter().filter(|v| v.role == role).count()
}

pub fn voters(s: &Status) -> usize {
    s.agents.iter().filter(|a| a.voter).count()
}

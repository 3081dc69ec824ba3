//! The `direct` runtime: RonDB's programs as child processes of the agent, each in its own
//! process group with a pid record and a log under the VM's RonDB home. It execs the real
//! command lines (agent-core's) from an installed RonDB tarball and asks RonDB itself whether
//! a program is ready: the mgm protocol for management servers, data nodes and API nodes, a
//! MySQL-protocol ping for MySQL servers. An agent that restarts adopts the program still
//! running; a program that dies is reported as not running, never restarted behind the
//! leader's back.

use crate::mgm::{self, MgmSession};
use crate::process::{alive, ChildProcesses, Launch, ProcessControl};
use agent_core::actions::RestoreStep;
use agent_core::artifacts::{self, ArtifactMirror};
use agent_core::backend::{
    BackendError, MgmCommand, NodeStatus, OpId, ProcessRuntime, ProgramKind, ProgramSpec,
    ProgramStatus, RestoreRun, RonDbNode,
};
use agent_core::desired::BackupSpec;
use agent_core::model::ConfigFile;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::info;

/// How long each kind of wait may take before the call fails with what RonDB said.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub mgmd_start: Duration,
    /// A data node's start includes copying its node group's data.
    pub data_node_start: Duration,
    pub mysqld_start: Duration,
    pub stop: Duration,
    pub backup: Duration,
    pub restore: Duration,
    pub download: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            mgmd_start: Duration::from_secs(60),
            data_node_start: Duration::from_secs(600),
            mysqld_start: Duration::from_secs(300),
            stop: Duration::from_secs(120),
            backup: Duration::from_secs(3600),
            restore: Duration::from_secs(3600),
            download: Duration::from_secs(600),
        }
    }
}

/// The program this VM runs, as recorded when it was started.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Running {
    kind: ProgramKind,
    version: String,
    node_ids: Vec<u32>,
    pid: u32,
    command: Vec<String>,
    /// A management server's config.ini as it was when the server loaded it (sha256): a
    /// repeated start must not vouch for a server that serves an older file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    config_sha256: Option<String>,
}

pub struct DirectRuntime {
    vm: String,
    /// Where RonDB lives on this VM (`/srv/rondb` on a machine of its own).
    home: PathBuf,
    /// The backup sink: a directory every VM of the cluster reaches (a shared directory on
    /// one machine, a volume in Docker).
    sink: PathBuf,
    /// The VM's own address: where its servers answer.
    address: String,
    timeouts: Timeouts,
    /// Where tarballs are really fetched from (see `agent_core::artifacts`).
    mirrors: Vec<ArtifactMirror>,
    /// Children of this agent (`direct`) or programs of supervisord (`supervisord`).
    control: Arc<dyn ProcessControl>,
    lock: tokio::sync::Mutex<()>,
}

/// How long a status query waits for a management server (the leader's whole query of a VM
/// has one second).
const STATUS_PATIENCE: Duration = Duration::from_millis(500);

fn refused(msg: String) -> BackendError {
    BackendError::refused(msg)
}

fn transient(msg: String) -> BackendError {
    BackendError::transient(msg)
}

fn io(what: impl std::fmt::Display, e: std::io::Error) -> BackendError {
    BackendError::transient(crate::io_message(what, &e))
}

fn program_name(kind: ProgramKind) -> &'static str {
    match kind {
        ProgramKind::Mgmd => "ndb_mgmd",
        ProgramKind::DataNode => "ndbmtd",
        ProgramKind::Mysqld => "mysqld",
        ProgramKind::Api => "api",
    }
}

/// An option's value, given as `NAME=VALUE` or as `NAME VALUE` (rdrs2's `-config FILE`).
fn arg_value<'a>(command: &'a [String], name: &str) -> Option<&'a str> {
    let prefix = format!("{name}=");
    command
        .iter()
        .enumerate()
        .find_map(|(i, a)| match a.strip_prefix(prefix.as_str()) {
            Some(v) => Some(v),
            None if a == name => command.get(i + 1).map(String::as_str),
            None => None,
        })
}

/// `key=value` of an option file's or config.ini's section; sections by predicate.
fn ini_values(
    text: &str,
    in_section: impl Fn(&str, &[(String, String)]) -> bool,
) -> Vec<(String, String)> {
    let mut sections: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            sections.push((name.trim().to_ascii_lowercase(), Vec::new()));
        } else if let Some((_, kv)) = sections.last_mut() {
            let (k, v) = line.split_once('=').unwrap_or((line, ""));
            kv.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    sections
        .into_iter()
        .find(|(name, kv)| in_section(name, kv))
        .map(|(_, kv)| kv)
        .unwrap_or_default()
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", sha2::Sha256::digest(bytes))
}

fn get<'a>(kv: &'a [(String, String)], key: &str) -> Option<&'a str> {
    kv.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

impl DirectRuntime {
    pub fn new(vm: &str, home: &Path, sink: &Path, address: &str, timeouts: Timeouts) -> Self {
        DirectRuntime {
            vm: vm.to_string(),
            home: home.to_path_buf(),
            sink: sink.to_path_buf(),
            address: address.to_string(),
            timeouts,
            mirrors: Vec::new(),
            control: Arc::new(ChildProcesses),
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Runs the programs through `control` (supervisord) instead of as children.
    pub fn with_control(mut self, control: Arc<dyn ProcessControl>) -> Self {
        self.control = control;
        self
    }

    /// Fetches tarballs through these mirrors.
    pub fn with_mirrors(mut self, mirrors: Vec<ArtifactMirror>) -> Self {
        self.mirrors = mirrors;
        self
    }

    fn check(&self, vm: &str) -> Result<(), BackendError> {
        if vm == self.vm {
            Ok(())
        } else {
            Err(refused(format!(
                "this runtime runs on {}, not {vm}",
                self.vm
            )))
        }
    }

    fn record_path(&self) -> PathBuf {
        self.home.join("run").join("program.json")
    }

    fn log_path(&self, kind: ProgramKind) -> PathBuf {
        self.home
            .join("logs")
            .join(format!("{}.log", program_name(kind)))
    }

    fn running(&self) -> Option<Running> {
        let text = std::fs::read(self.record_path()).ok()?;
        serde_json::from_slice::<Running>(&text)
            .ok()
            .filter(|r| alive(r.pid))
    }

    fn save_record(&self, r: Option<&Running>) -> Result<(), BackendError> {
        let path = self.record_path();
        match r {
            None => match std::fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io(path.display(), e)),
            },
            Some(r) => {
                let json = serde_json::to_vec_pretty(r).map_err(|e| refused(e.to_string()))?;
                write_atomic(&path, &json).map_err(|e| io(path.display(), e))
            }
        }
    }

    /// The last lines of a program's log, for errors.
    fn log_tail(&self, kind: ProgramKind) -> String {
        let text = std::fs::read_to_string(self.log_path(kind)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(8)..].join("\n")
    }

    /// The running management server loaded another config.ini than the one on disk now.
    /// A record from before the digest was kept counts as unchanged.
    fn config_changed(&self, r: &Running) -> bool {
        r.kind == ProgramKind::Mgmd
            && r.config_sha256
                .as_ref()
                .is_some_and(|loaded| *loaded != sha256_hex(self.config_ini().as_bytes()))
    }

    fn config_ini(&self) -> String {
        std::fs::read_to_string(self.home.join("mgmd").join("config.ini")).unwrap_or_default()
    }

    /// `host:port` of the management server with node id `node` in this VM's config.ini.
    fn mgmd_addr(&self, node: u32) -> String {
        let ini = self.config_ini();
        let kv = ini_values(&ini, |name, kv| {
            (name == "ndb_mgmd" || name == "mgm") && get(kv, "nodeid") == Some(&node.to_string())
        });
        let host = get(&kv, "hostname").unwrap_or(&self.address).to_string();
        let port = get(&kv, "portnumber").unwrap_or("1186").to_string();
        format!("{host}:{port}")
    }

    /// Management servers a program's command line connects to.
    fn connect_addrs(command: &[String]) -> Vec<String> {
        arg_value(command, "--ndb-connectstring")
            .unwrap_or("")
            .split(',')
            .filter(|s| !s.is_empty() && !s.starts_with("nodeid="))
            .map(str::to_string)
            .collect()
    }

    /// The management servers a running program was configured with: on its command line
    /// (data nodes), in my.cnf (MySQL servers), in rdrs2's configuration (REST API).
    fn mgmds_of(&self, r: &Running) -> Vec<String> {
        match r.kind {
            ProgramKind::Mgmd => vec![self.mgmd_addr(r.node_ids.first().copied().unwrap_or(0))],
            ProgramKind::DataNode => Self::connect_addrs(&r.command),
            ProgramKind::Mysqld => {
                let cnf = arg_value(&r.command, "--defaults-file")
                    .and_then(|p| std::fs::read_to_string(p).ok())
                    .unwrap_or_default();
                let kv = ini_values(&cnf, |name, _| name == "mysqld");
                get(&kv, "ndb-connectstring")
                    .unwrap_or("")
                    .split(',')
                    .filter(|a| !a.is_empty())
                    .map(str::to_string)
                    .collect()
            }
            ProgramKind::Api => {
                #[derive(Deserialize)]
                struct Mgmd {
                    #[serde(rename = "IP")]
                    ip: String,
                    #[serde(rename = "Port")]
                    port: u32,
                }
                #[derive(Deserialize)]
                struct RonDb {
                    #[serde(rename = "Mgmds", default)]
                    mgmds: Vec<Mgmd>,
                }
                #[derive(Deserialize)]
                struct Config {
                    #[serde(rename = "RonDB")]
                    rondb: RonDb,
                }
                arg_value(&r.command, "-config")
                    .or_else(|| arg_value(&r.command, "--config"))
                    .and_then(|p| std::fs::read(p).ok())
                    .and_then(|b| serde_json::from_slice::<Config>(&b).ok())
                    .map(|c| {
                        c.rondb
                            .mgmds
                            .into_iter()
                            .map(|m| format!("{}:{}", m.ip, m.port))
                            .collect()
                    })
                    .unwrap_or_default()
            }
        }
    }

    /// What RonDB's management server says about the program's node ids; nothing when
    /// none answers quickly (status is observed often and must never hang).
    async fn rondb_view(&self, r: &Running) -> Vec<RonDbNode> {
        for addr in self.mgmds_of(r) {
            let Ok(Ok(nodes)) = tokio::time::timeout(STATUS_PATIENCE, mgm::status(&addr)).await
            else {
                continue;
            };
            return nodes
                .into_iter()
                .filter(|n| r.node_ids.contains(&n.id))
                .map(|n| RonDbNode {
                    node_id: n.id,
                    status: NodeStatus::from_rondb(&n.status),
                    start_phase: n.startphase,
                })
                .collect();
        }
        Vec::new()
    }

    /// Waits until `ready` says yes, failing early when the program exits.
    async fn wait_ready<F, Fut>(
        &self,
        kind: ProgramKind,
        pid: u32,
        timeout: Duration,
        what: &str,
        mut ready: F,
    ) -> Result<(), BackendError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<bool, String>>,
    {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no answer yet");
        loop {
            match ready().await {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => last = e,
            }
            if !alive(pid) {
                return Err(transient(format!(
                    "{} on {} exited while starting (waiting for {what}); RonDB said: {last}; its log ends with:\n{}",
                    program_name(kind),
                    self.vm,
                    self.log_tail(kind)
                )));
            }
            if Instant::now() >= deadline {
                return Err(transient(format!(
                    "{} on {} is not ready after {} s (waiting for {what}); RonDB said: {last}",
                    program_name(kind),
                    self.vm,
                    timeout.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// RonDB reports `node` in `status` on one of the management servers in `addrs`.
    async fn node_has_status(addrs: &[String], node: u32, wanted: &str) -> Result<bool, String> {
        let mut last = String::from("no management server given");
        for a in addrs {
            match mgm::status(a).await {
                Ok(nodes) => {
                    let n = nodes.iter().find(|n| n.id == node);
                    return match n {
                        Some(n) if n.status == wanted => Ok(true),
                        Some(n) => Err(format!(
                            "node {node} is {} (phase {})",
                            n.status, n.startphase
                        )),
                        None => Err(format!("node {node} is not in the configuration of {a}")),
                    };
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(last)
    }

    async fn wait_started(&self, spec: &ProgramSpec, pid: u32) -> Result<(), BackendError> {
        let node = spec.node_ids.first().copied().unwrap_or(0);
        match spec.kind {
            ProgramKind::Mgmd => {
                let addr = vec![self.mgmd_addr(node)];
                self.wait_ready(
                    spec.kind,
                    pid,
                    self.timeouts.mgmd_start,
                    "CONNECTED",
                    || {
                        let addr = addr.clone();
                        async move { Self::node_has_status(&addr, node, "CONNECTED").await }
                    },
                )
                .await
            }
            ProgramKind::DataNode => {
                let addrs = Self::connect_addrs(&spec.command);
                self.wait_ready(
                    spec.kind,
                    pid,
                    self.timeouts.data_node_start,
                    "STARTED",
                    || {
                        let addrs = addrs.clone();
                        async move { Self::node_has_status(&addrs, node, "STARTED").await }
                    },
                )
                .await
            }
            ProgramKind::Api => {
                let url = rdrs_health_url(&spec.command, &self.address);
                self.wait_ready(
                    spec.kind,
                    pid,
                    self.timeouts.mysqld_start,
                    "REST API health",
                    || {
                        let url = url.clone();
                        async move { http_ok(&url).await.map(|_| true) }
                    },
                )
                .await
            }
            ProgramKind::Mysqld => {
                let (host, port) = self.mysqld_endpoint(&spec.command);
                self.wait_ready(
                    spec.kind,
                    pid,
                    self.timeouts.mysqld_start,
                    "a MySQL ping",
                    || {
                        let host = host.clone();
                        async move { mysql_ping(&host, port).await.map(|_| true) }
                    },
                )
                .await
            }
        }
    }

    /// Where a MySQL server of this VM answers: my.cnf's port on the VM's address.
    fn mysqld_endpoint(&self, command: &[String]) -> (String, u16) {
        let cnf = arg_value(command, "--defaults-file")
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default();
        let kv = ini_values(&cnf, |name, _| name == "mysqld");
        let port = get(&kv, "port")
            .and_then(|p| p.parse().ok())
            .unwrap_or(3306);
        let host = match get(&kv, "bind-address") {
            Some(a) if a != "0.0.0.0" && !a.is_empty() => a.to_string(),
            _ => self.address.clone(),
        };
        (host, port)
    }

    /// A MySQL server's first start initialises its datadir, as MySQL needs.
    async fn initialise_mysqld(&self, spec: &ProgramSpec) -> Result<(), BackendError> {
        let Some(cnf_path) = arg_value(&spec.command, "--defaults-file") else {
            return Ok(());
        };
        let cnf = std::fs::read_to_string(cnf_path).map_err(|e| io(cnf_path, e))?;
        let kv = ini_values(&cnf, |name, _| name == "mysqld");
        let Some(datadir) = get(&kv, "datadir") else {
            return Ok(());
        };
        let initialised = std::fs::read_dir(datadir).is_ok_and(|mut d| d.next().is_some());
        if initialised {
            return Ok(());
        }
        info!(vm = %self.vm, datadir, "initialising the MySQL server's datadir");
        let out = tokio::time::timeout(
            self.timeouts.mysqld_start,
            tokio::process::Command::new(&spec.command[0])
                .arg(format!("--defaults-file={cnf_path}"))
                .arg("--initialize-insecure")
                .output(),
        )
        .await
        .map_err(|_| {
            transient(format!(
                "mysqld --initialize-insecure on {} timed out",
                self.vm
            ))
        })?
        .map_err(|e| io(format!("running {}", spec.command[0]), e))?;
        if !out.status.success() {
            return Err(refused(format!(
                "mysqld --initialize-insecure on {} failed: {}{}",
                self.vm,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    }

    /// Stops a data node through the management server, so RonDB refuses to stop the last
    /// node of a node group (unless the whole cluster stops). A management server that
    /// does not see the node yet (it has just restarted) is asked again until it does.
    async fn stop_through_mgmd(
        &self,
        vm: &str,
        r: &Running,
        cluster_shutdown: bool,
    ) -> Result<(), BackendError> {
        let node = r.node_ids.first().copied().unwrap_or(0);
        let deadline = Instant::now() + self.timeouts.stop;
        let mut last = String::from("no management server answered");
        while alive(r.pid) && Instant::now() < deadline {
            for addr in Self::connect_addrs(&r.command) {
                let mut s = match MgmSession::connect(&addr, Duration::from_secs(5)).await {
                    Ok(s) => s,
                    Err(e) => {
                        last = e.to_string();
                        continue;
                    }
                };
                let args = [
                    ("node", node.to_string()),
                    ("abort", "0".to_string()),
                    ("force", u8::from(cluster_shutdown).to_string()),
                ];
                match s.call("stop v2", &args, self.timeouts.stop).await {
                    Ok(reply) => match reply.get("result") {
                        Some("Ok") if reply.get("stopped").is_some_and(|n| n != "0") => {
                            return Ok(())
                        }
                        Some("Ok") => last = format!("{addr} does not see data node {node} yet"),
                        // RonDB stops one data node while none starts or stops: wait for
                        // the other node's restart (another node group's) to finish.
                        Some(text) if text.contains("nodes are starting or stopping") => {
                            last = text.to_string()
                        }
                        Some(text) if !cluster_shutdown => {
                            return Err(refused(format!(
                                "RonDB refused to stop data node {node} on {vm}: {text}"
                            )));
                        }
                        other => last = format!("{addr} answered {other:?}"),
                    },
                    Err(e) => last = e.to_string(),
                }
                break;
            }
            if cluster_shutdown && last.contains("cannot reach") {
                // The whole cluster stops and no management server is left: signals do.
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if alive(r.pid) && !cluster_shutdown {
            return Err(transient(format!(
                "data node {node} on {vm} did not stop through the management server within {} s: {last}",
                self.timeouts.stop.as_secs()
            )));
        }
        Ok(())
    }

    /// Copies each data node's backup files into the sink when they were written elsewhere
    /// (their `BackupDataDir`), and checks every node's files are there.
    fn collect_backup(&self, id: u64, nodes: &[u32]) -> Result<(), BackendError> {
        let dest = self.sink.join("BACKUP").join(format!("BACKUP-{id}"));
        std::fs::create_dir_all(&dest).map_err(|e| io(dest.display(), e))?;
        let ini = self.config_ini();
        for n in nodes {
            let kv = ini_values(&ini, |name, kv| {
                (name == "ndbd" || name == "db") && get(kv, "nodeid") == Some(&n.to_string())
            });
            let defaults = ini_values(&ini, |name, _| name == "ndbd default");
            let bdd = get(&kv, "backupdatadir")
                .or(get(&defaults, "backupdatadir"))
                .map(PathBuf::from);
            if let Some(src) = bdd.map(|b| b.join("BACKUP").join(format!("BACKUP-{id}"))) {
                if src != dest {
                    if let Ok(entries) = std::fs::read_dir(&src) {
                        for e in entries.flatten() {
                            let name = e.file_name().to_string_lossy().into_owned();
                            if name.contains(&format!(".{n}.")) {
                                std::fs::copy(e.path(), dest.join(&name))
                                    .map_err(|err| io(e.path().display(), err))?;
                            }
                        }
                    }
                }
            }
            if !dest.join(format!("BACKUP-{id}.{n}.ctl")).exists() {
                return Err(refused(format!(
                    "backup {id}: data node {n}'s files are not in the sink {} nor reachable from {}",
                    dest.display(),
                    self.vm
                )));
            }
        }
        Ok(())
    }

    /// Original data-node ids of a backup in the sink (from its `.ctl` files).
    fn backup_nodes(&self, id: u64) -> Vec<u32> {
        let dir = self.sink.join("BACKUP").join(format!("BACKUP-{id}"));
        let prefix = format!("BACKUP-{id}.");
        let mut nodes: Vec<u32> = std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        name.strip_prefix(&prefix)?
                            .strip_suffix(".ctl")?
                            .parse()
                            .ok()
                    })
                    .collect()
            })
            .unwrap_or_default();
        nodes.sort_unstable();
        nodes
    }
}

/// RonDB's REST API server answers `GET /health` with 200 once it is connected to RonDB.
fn rdrs_health_url(command: &[String], address: &str) -> String {
    let config = arg_value(command, "-config")
        .or_else(|| arg_value(command, "--config"))
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .unwrap_or_default();
    let ip = match config["REST"]["ServerIP"].as_str() {
        Some(ip) if ip != "0.0.0.0" && !ip.is_empty() => ip.to_string(),
        _ => address.to_string(),
    };
    let port = config["REST"]["ServerPort"].as_u64().unwrap_or(4406);
    format!("http://{ip}:{port}/health")
}

async fn http_ok(url: &str) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let resp = client.get(url).send().await.map_err(|e| e.to_string())?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("{url} answered {}", resp.status()))
    }
}

/// A MySQL-protocol ping: log in as RonDB's default `root` and ping.
async fn mysql_ping(host: &str, port: u16) -> Result<(), String> {
    use mysql_async::prelude::Queryable;
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname(host.to_string())
        .tcp_port(port)
        .user(Some("root"))
        .prefer_socket(false);
    let fut = async {
        let mut conn = mysql_async::Conn::new(opts)
            .await
            .map_err(|e| e.to_string())?;
        conn.ping().await.map_err(|e| e.to_string())?;
        let _ = conn.query_drop("SELECT 1").await;
        conn.disconnect().await.map_err(|e| e.to_string())
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .map_err(|_| format!("MySQL server {host}:{port} did not answer within 5 s"))?
}

pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Reads a `file://` or `http(s)://` URL.
async fn fetch(url: &str, timeout: Duration) -> Result<Vec<u8>, BackendError> {
    if let Some(path) = url.strip_prefix("file://") {
        return tokio::fs::read(path)
            .await
            .map_err(|e| refused(format!("cannot read {url}: {e}")));
    }
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| transient(format!("HTTP client: {e}")))?;
    let resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| transient(format!("cannot download {url}: {e}")))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let msg = format!("cannot download {url}: HTTP {status}");
        return Err(if status.is_client_error() {
            refused(msg)
        } else {
            transient(msg)
        });
    }
    resp.bytes()
        .await
        .map(|b| b.to_vec())
        .map_err(|e| transient(format!("download of {url} broke off: {e}")))
}

/// Unpacks a RonDB tarball (one top directory) into `dest`, via a sibling directory that
/// is renamed into place: a half-unpacked version is never used.
fn unpack(tarball: &[u8], dest: &Path) -> std::io::Result<()> {
    let parent = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let partial = parent.join(format!(
        ".{}.partial",
        dest.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    if partial.exists() {
        std::fs::remove_dir_all(&partial)?;
    }
    std::fs::create_dir_all(&partial)?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(tarball));
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        // Strip the tarball's top directory (rondb-VERSION-linux-glibc2.28-x86_64/).
        let inner: PathBuf = path.components().skip(1).collect();
        if inner.as_os_str().is_empty() {
            continue;
        }
        if inner
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("unsafe path in tarball: {}", path.display()),
            ));
        }
        let target = partial.join(&inner);
        if let Some(d) = target.parent() {
            std::fs::create_dir_all(d)?;
        }
        entry.unpack(&target)?;
    }
    if !partial.join("bin").is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the tarball has no bin/ directory under its top directory",
        ));
    }
    std::fs::rename(&partial, dest)
}

#[async_trait]
impl ProcessRuntime for DirectRuntime {
    async fn install_software(
        &self,
        _op: OpId,
        vm: &str,
        version: &str,
        url: &str,
    ) -> Result<(), BackendError> {
        self.check(vm)?;
        let dest = self.home.join("versions").join(version);
        if dest.join("bin").is_dir() {
            return Ok(());
        }
        let source = artifacts::resolve(&self.mirrors, url);
        if source == url {
            info!(vm = %self.vm, version, url, "downloading RonDB");
        } else {
            info!(vm = %self.vm, version, url, mirror = %source, "downloading RonDB from a mirror");
        }
        let tarball = fetch(&source, self.timeouts.download).await?;
        let sums = fetch(&format!("{source}.sha256"), self.timeouts.download).await?;
        let expected = String::from_utf8_lossy(&sums)
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        let actual = sha256_hex(&tarball);
        if expected != actual {
            return Err(refused(format!(
                "the RonDB {version} tarball from {source} does not match its checksum (expected {expected}, got {actual}); it was not installed"
            )));
        }
        let d = dest.clone();
        tokio::task::spawn_blocking(move || unpack(&tarball, &d))
            .await
            .map_err(|e| transient(format!("unpacking was interrupted: {e}")))?
            .map_err(|e| refused(format!("cannot unpack RonDB {version} from {source}: {e}")))?;
        info!(vm = %self.vm, version, "RonDB installed");
        Ok(())
    }

    async fn write_files(
        &self,
        _op: OpId,
        vm: &str,
        files: &[ConfigFile],
    ) -> Result<(), BackendError> {
        self.check(vm)?;
        for f in files {
            let path = PathBuf::from(&f.path);
            if !path.starts_with(&self.home) {
                return Err(refused(format!(
                    "{} is outside RonDB's home {} on {vm}; not written",
                    f.path,
                    self.home.display()
                )));
            }
            write_atomic(&path, f.content.as_bytes()).map_err(|e| io(&f.path, e))?;
        }
        Ok(())
    }

    async fn start_program(
        &self,
        _op: OpId,
        vm: &str,
        spec: &ProgramSpec,
    ) -> Result<(), BackendError> {
        self.check(vm)?;
        let _g = self.lock.lock().await;
        let exe = spec
            .command
            .first()
            .ok_or_else(|| refused("empty command line".into()))?;
        if !Path::new(exe).exists() {
            return Err(refused(format!(
                "RonDB {} is not installed on {vm} ({exe} is missing); install it before starting {}",
                spec.version,
                program_name(spec.kind)
            )));
        }
        if let Some(r) = self.running() {
            if r.kind != spec.kind || r.version != spec.version {
                return Err(refused(format!(
                    "{vm} runs {} {} (pid {}); stop it before starting {} {}",
                    program_name(r.kind),
                    r.version,
                    r.pid,
                    program_name(spec.kind),
                    spec.version
                )));
            }
            if !self.config_changed(&r) {
                // A repeated start (a new leader, a retry): the program runs; wait for it.
                return self.wait_started(spec, r.pid).await;
            }
            // A start that failed (timed out) may have left the server running with the file
            // of then, and the leader, seeing no server, changed slots in config.ini since:
            // the server must load the new file, or a data node given a slot it activated
            // would be refused as deactivated.
            info!(vm = %self.vm, pid = r.pid, "config.ini changed since the running ndb_mgmd loaded it; restarting it to load the new file");
            self.control.stop(r.pid, true).await;
            self.save_record(None)?;
        }
        if spec.kind == ProgramKind::Mgmd && !self.home.join("mgmd").join("config.ini").exists() {
            return Err(refused(format!(
                "{vm} has no config.ini; ndb_mgmd cannot start"
            )));
        }
        if spec.kind == ProgramKind::Mysqld {
            self.initialise_mysqld(spec).await?;
        }
        // Read before the start: the server loads the file as it is now.
        let config_sha256 =
            (spec.kind == ProgramKind::Mgmd).then(|| sha256_hex(self.config_ini().as_bytes()));
        let pid = self
            .control
            .start(&Launch {
                command: &spec.command,
                dir: &self.home,
                log: &self.log_path(spec.kind),
            })
            .await?;
        info!(vm = %self.vm, pid, command = %spec.command.join(" "), "started");
        self.save_record(Some(&Running {
            kind: spec.kind,
            version: spec.version.clone(),
            node_ids: spec.node_ids.clone(),
            pid,
            command: spec.command.clone(),
            config_sha256,
        }))?;
        self.wait_started(spec, pid).await
    }

    async fn stop_program(
        &self,
        _op: OpId,
        vm: &str,
        kind: ProgramKind,
        cluster_shutdown: bool,
    ) -> Result<(), BackendError> {
        self.check(vm)?;
        let _g = self.lock.lock().await;
        let Some(r) = self.running() else {
            return self.save_record(None);
        };
        if r.kind != kind {
            return Ok(());
        }
        if kind == ProgramKind::DataNode {
            self.stop_through_mgmd(vm, &r, cluster_shutdown).await?;
        }
        // A data node stopped through RonDB exits by itself (its angel too); everything
        // else is asked to stop (SIGTERM: RonDB's programs stop cleanly on it).
        self.control
            .stop(r.pid, kind != ProgramKind::DataNode)
            .await;
        info!(vm = %self.vm, program = program_name(kind), "stopped");
        self.save_record(None)
    }

    async fn status(&self, vm: &str) -> Result<ProgramStatus, BackendError> {
        self.check(vm)?;
        Ok(match self.running() {
            Some(r) => ProgramStatus {
                running: true,
                rondb: self.rondb_view(&r).await,
                version: Some(r.version),
            },
            None => ProgramStatus::default(),
        })
    }

    async fn mgm_command(
        &self,
        _op: OpId,
        vm: &str,
        cmd: &MgmCommand,
    ) -> Result<Vec<u32>, BackendError> {
        self.check(vm)?;
        let line = cmd.command_line();
        let r = self
            .running()
            .filter(|r| r.kind == ProgramKind::Mgmd)
            .ok_or_else(|| {
                transient(format!(
                    "no management server runs on {vm}; ndb_mgm -e '{line}' cannot connect"
                ))
            })?;
        let addr = self.mgmd_addr(r.node_ids.first().copied().unwrap_or(0));
        let exe = self
            .home
            .join("versions")
            .join(&r.version)
            .join("bin")
            .join("ndb_mgm");
        let timeout = match cmd {
            MgmCommand::StartBackup { .. } => self.timeouts.backup,
            _ => self.timeouts.stop,
        };
        // RonDB's configuration database runs one change at a time: ACTIVATE, DEACTIVATE
        // and HOSTNAME of several nodes at once collide, and the loser tries again (as
        // rondb-helm's scripts do).
        let mut attempt = 0u64;
        let (out, text) = loop {
            attempt += 1;
            let out = tokio::time::timeout(
                timeout,
                tokio::process::Command::new(&exe)
                    .arg(format!("--ndb-connectstring={addr}"))
                    .arg("--connect-retries=3")
                    .arg("--connect-retry-delay=1")
                    .arg("-e")
                    .arg(&line)
                    .output(),
            )
            .await
            .map_err(|_| {
                transient(format!(
                    "ndb_mgm -e '{line}' on {vm} took more than {} s",
                    timeout.as_secs()
                ))
            })?
            .map_err(|e| io(format!("running {}", exe.display()), e))?;
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if out.status.success() || !text.contains("one change at a time") || attempt >= 20 {
                break (out, text);
            }
            tokio::time::sleep(Duration::from_millis(
                50 * attempt + u64::from(std::process::id() % 50),
            ))
            .await;
        };
        let ok = out.status.success()
            // A repeated DEACTIVATE (RonDB's is not idempotent) finds its work done.
            || (matches!(cmd, MgmCommand::Deactivate { .. }) && text.contains("is already deactivated"));
        let backup_id = match cmd {
            MgmCommand::StartBackup { backup_id } => Some(*backup_id),
            _ => None,
        };
        let repeated_backup = backup_id.is_some() && text.contains("file already exists");
        if !ok && !repeated_backup {
            return Err(refused(format!(
                "ndb_mgm -e '{line}' on {vm} failed (exit {}): {}",
                out.status.code().unwrap_or(-1),
                text.trim()
            )));
        }
        let Some(id) = backup_id else {
            return Ok(vec![]);
        };
        let nodes: Vec<u32> = mgm::status(&addr)
            .await
            .map_err(|e| transient(e.to_string()))?
            .into_iter()
            .filter(|n| n.kind == "NDB" && n.status == "STARTED")
            .map(|n| n.id)
            .collect();
        // A backup taken by an earlier try is complete when every node's files are there.
        let written: Vec<u32> = if repeated_backup {
            self.backup_nodes(id)
        } else {
            nodes
        };
        if written.is_empty() {
            return Err(refused(format!(
                "backup {id} was taken, but no data node's files are in the sink {}; check BackupDataDir in config.ini and that every VM mounts the sink",
                self.sink.display()
            )));
        }
        self.collect_backup(id, &written)?;
        Ok(written)
    }

    async fn restore(
        &self,
        _op: OpId,
        vm: &str,
        run: &RestoreRun,
    ) -> Result<Vec<u32>, BackendError> {
        self.check(vm)?;
        let id = run.backup.id;
        let dir = self.sink.join("BACKUP").join(format!("BACKUP-{id}"));
        let originals = self.backup_nodes(id);
        if originals.is_empty() {
            return Err(refused(format!(
                "backup {id} is not in the sink {} (no BACKUP-{id}.<node>.ctl file)",
                self.sink.display()
            )));
        }
        // The files are where this runtime keeps the sink; the metadata is read from the
        // first original node's files (ndb_restore always needs a node id).
        let mut command: Vec<String> = run
            .command
            .iter()
            .map(|a| {
                if a.starts_with("--backup-path=") {
                    format!("--backup-path={}", dir.display())
                } else {
                    a.clone()
                }
            })
            .collect();
        if !command.iter().any(|a| a.starts_with("--nodeid=")) {
            command.push(format!("--nodeid={}", originals[0]));
        }
        let out = tokio::time::timeout(
            self.timeouts.restore,
            tokio::process::Command::new(&command[0])
                .args(&command[1..])
                .output(),
        )
        .await
        .map_err(|_| {
            transient(format!(
                "ndb_restore on {vm} took more than {} s",
                self.timeouts.restore.as_secs()
            ))
        })?
        .map_err(|e| io(format!("running {}", command[0]), e))?;
        if !out.status.success() {
            return Err(refused(format!(
                "ndb_restore on {vm} failed (exit {}): {}{}",
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(if run.step == RestoreStep::Meta {
            originals
        } else {
            vec![]
        })
    }

    async fn delete_backup(
        &self,
        _op: OpId,
        vm: &str,
        backup: &BackupSpec,
    ) -> Result<(), BackendError> {
        self.check(vm)?;
        let dir = self
            .sink
            .join("BACKUP")
            .join(format!("BACKUP-{}", backup.id));
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(dir.display(), e)),
        }
    }

    /// RonDB's programs run in their own process groups and outlive the agent; the agent
    /// restarts itself.
    async fn restart_agent(&self, _op: OpId, vm: &str) -> Result<(), BackendError> {
        self.check(vm)
    }

    async fn upgrade_agent(
        &self,
        _op: OpId,
        vm: &str,
        _version: &str,
        _url: &str,
    ) -> Result<(), BackendError> {
        self.check(vm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_read_in_both_forms_rondb_programs_use() {
        let cmd: Vec<String> = [
            "bin/rdrs2",
            "-config",
            "/srv/rondb/rdrs2.json",
            "--ndb-connectstring=10.0.0.2:1186,10.0.0.3:1186",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(arg_value(&cmd, "-config"), Some("/srv/rondb/rdrs2.json"));
        assert_eq!(
            arg_value(&cmd, "--ndb-connectstring"),
            Some("10.0.0.2:1186,10.0.0.3:1186")
        );
        assert_eq!(arg_value(&cmd, "--defaults-file"), None);
        // A flag at the end has no value to take.
        assert_eq!(arg_value(&["x".into(), "-config".into()], "-config"), None);
        assert_eq!(
            DirectRuntime::connect_addrs(&cmd),
            vec!["10.0.0.2:1186", "10.0.0.3:1186"]
        );
    }

    #[test]
    fn the_rest_servers_health_url_comes_from_its_config_in_either_option_form() {
        let dir = std::env::temp_dir().join(format!("rdrs-health-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_default();
        let cfg = dir.join("rdrs2.json");
        std::fs::write(
            &cfg,
            r#"{"REST":{"ServerIP":"10.0.0.9","ServerPort":5406}}"#,
        )
        .unwrap_or_default();
        let path = cfg.display().to_string();
        for cmd in [
            vec!["bin/rdrs2".to_string(), "-config".into(), path.clone()],
            vec!["bin/rdrs2".to_string(), format!("--config={path}")],
        ] {
            assert_eq!(
                rdrs_health_url(&cmd, "127.0.0.5"),
                "http://10.0.0.9:5406/health"
            );
        }
        // No readable config: RonDB's defaults on the VM's own address.
        assert_eq!(
            rdrs_health_url(&["bin/rdrs2".to_string()], "127.0.0.5"),
            "http://127.0.0.5:4406/health"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

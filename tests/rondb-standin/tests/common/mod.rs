//! Starts stand-in clusters on loopback addresses for the tests: every program on its own
//! 127.x.y.z address with RonDB's default ports, in its own process group, logs in the
//! test's directory.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use rondb_standin::mgm::{Message, NodeStatus};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const MGMD_ID: u32 = 65;

pub struct Cluster {
    pub dir: tempfile::TempDir,
    /// `127.A.B.` — each node adds its own last octet.
    prefix: String,
    /// Held while the cluster lives: no other test's cluster gets `prefix`.
    _prefix_lock: std::fs::File,
    pub procs: BTreeMap<String, Child>,
    pub replicas: u32,
    pub groups: u32,
}

pub fn standin() -> &'static str {
    env!("CARGO_BIN_EXE_rondb-standin")
}

/// A `127.A.B.` block of loopback addresses no other live cluster of any test process holds
/// (nextest runs every test in its own process, and the clusters use RonDB's fixed ports):
/// each block has a lock file, locked for the cluster's lifetime. `A` stays in 10..=63, below
/// the blocks the local provider's VMs take (64 and up).
fn reserve_prefix() -> (String, std::fs::File) {
    const BLOCKS: u32 = 54 * 250;
    let dir = std::env::temp_dir().join("rondb-standin-test-addresses");
    std::fs::create_dir_all(&dir).expect("the address lock directory");
    let start = std::process::id() % BLOCKS;
    for i in 0..BLOCKS {
        let n = (start + i) % BLOCKS;
        let prefix = format!("127.{}.{}.", 10 + n / 250, n % 250 + 1);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(format!("{prefix}lock")))
            .expect("an address lock file");
        if file.try_lock().is_ok() {
            return (prefix, file);
        }
    }
    panic!("all {BLOCKS} loopback blocks of the stand-in tests are taken");
}

impl Cluster {
    /// A cluster of `groups` x `replicas` data nodes (ids 1..), one management server (65)
    /// and API slots 67..=72.
    pub fn new(groups: u32, replicas: u32) -> Cluster {
        let (prefix, lock) = reserve_prefix();
        let c = Cluster {
            dir: tempfile::tempdir().expect("tempdir"),
            prefix,
            _prefix_lock: lock,
            procs: BTreeMap::new(),
            replicas,
            groups,
        };
        std::fs::write(c.config_path(), c.config_ini(&BTreeMap::new())).expect("config.ini");
        c
    }

    pub fn ip(&self, node: u32) -> String {
        format!("{}{}", self.prefix, node)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> PathBuf {
        self.path().join("config.ini")
    }

    pub fn connectstring(&self) -> String {
        format!("{}:1186", self.ip(MGMD_ID))
    }

    pub fn data_nodes(&self) -> Vec<u32> {
        (1..=self.groups * self.replicas).collect()
    }

    /// config.ini in the agent's style; `inactive` node ids get NodeActive=0.
    pub fn config_ini(&self, inactive: &BTreeMap<u32, bool>) -> String {
        let d = self.path().display();
        let mut s = format!(
            "[ndbd default]\nNoOfReplicas={}\nTotalMemoryConfig=2G\nServerPort=11860\nDataDir={d}/data\nFileSystemPath={d}/data/ndb_fs\nBackupDataDir={d}/backups\n\n",
            self.replicas
        );
        s += &format!(
            "[ndb_mgmd]\nNodeId={MGMD_ID}\nHostName={}\nPortNumber=1186\nDataDir={d}/mgmd\nNodeActive=1\n\n",
            self.ip(MGMD_ID)
        );
        for n in self.data_nodes() {
            let active = !inactive.get(&n).copied().unwrap_or(false);
            s += &format!(
                "[ndbd]\nNodeId={n}\nNodeGroup={}\nHostName={}\nNodeActive={}\n\n",
                (n - 1) / self.replicas,
                self.ip(n),
                u8::from(active)
            );
        }
        for n in 67..=72 {
            s += &format!("[mysqld]\nNodeId={n}\nNodeActive=1\n\n");
        }
        s
    }

    fn spawn(&mut self, name: &str, program: &str, args: &[String], env: &[(&str, &str)]) {
        use std::os::unix::process::CommandExt;
        let log = std::fs::File::create(self.path().join(format!("{name}.log"))).expect("log file");
        let mut cmd = Command::new(standin());
        cmd.arg(program)
            .args(args)
            .env("RONDB_STANDIN_PHASE_MS", "20")
            .env("RONDB_STANDIN_PARTIAL_MS", "500")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .process_group(0);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn the stand-in");
        self.procs.insert(name.to_string(), child);
    }

    pub fn start_mgmd(&mut self, extra_env: &[(&str, &str)]) {
        let args = vec![
            format!("--ndb-nodeid={MGMD_ID}"),
            "-f".into(),
            self.config_path().display().to_string(),
            format!("--configdir={}/mgmd", self.path().display()),
            "--initial".into(),
            "--nodaemon".into(),
        ];
        self.spawn("mgmd", "ndb_mgmd", &args, extra_env);
        self.wait_for("the management server to listen", |_| true);
    }

    pub fn start_data_node(&mut self, id: u32, initial: bool, extra_env: &[(&str, &str)]) {
        let mut args = vec![
            format!("--ndb-connectstring={}", self.connectstring()),
            format!("--ndb-nodeid={id}"),
            "--connect-retries=2".into(),
            "--connect-retry-delay=1".into(),
        ];
        if initial {
            args.push("--initial".into());
        }
        args.push("--nodaemon".into());
        self.spawn(&format!("ndbd-{id}"), "ndbmtd", &args, extra_env);
    }

    pub fn start_all_data_nodes(&mut self) {
        for id in self.data_nodes() {
            self.start_data_node(id, true, &[]);
        }
        self.wait_started(&self.data_nodes());
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    pub fn cluster_log(&self) -> String {
        std::fs::read_to_string(self.path().join(format!("mgmd/ndb_{MGMD_ID}_cluster.log")))
            .unwrap_or_default()
    }

    /// SIGKILL to a program's whole process group (angel and node).
    pub fn kill(&mut self, name: &str) {
        if let Some(mut c) = self.procs.remove(name) {
            let pgid = c.id() as i32;
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = c.wait();
        }
    }

    /// SIGKILL to data node `id`, then waits until the management server reports it
    /// NO_CONTACT: until then its status is still the killed instance's, and a test that
    /// starts the node again and waits for STARTED would see the old STARTED.
    pub fn kill_data_node(&mut self, id: u32) {
        self.kill(&format!("ndbd-{id}"));
        self.wait_for(&format!("node {id} NO_CONTACT"), |st| {
            st.iter().any(|n| n.id == id && n.status == "NO_CONTACT")
        });
    }

    /// Waits for a program to exit; its exit code.
    pub fn wait_exit(&mut self, name: &str, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.procs.get_mut(name)?;
            if let Ok(Some(status)) = c.try_wait() {
                self.procs.remove(name);
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `get status` over a blocking socket (tests call it from inside async code too).
    pub fn status(&self) -> Vec<NodeStatus> {
        use std::io::{BufRead, Write};
        let Ok(addr) = self.connectstring().parse::<std::net::SocketAddr>() else {
            return Vec::new();
        };
        let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
            return Vec::new();
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        if s.write_all(b"get status\n\n").is_err() {
            return Vec::new();
        }
        let mut r = std::io::BufReader::new(s);
        let mut msg = Message::new("");
        let mut line = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                msg.args.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        NodeStatus::parse_all(&msg)
    }

    pub fn node_status(&self, id: u32) -> String {
        self.status()
            .into_iter()
            .find(|n| n.id == id)
            .map(|n| n.status)
            .unwrap_or_default()
    }

    pub fn wait_for(&self, what: &str, mut done: impl FnMut(&[NodeStatus]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let st = self.status();
            if !st.is_empty() && done(&st) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; status: {st:?}\nmgmd log:\n{}",
                    self.log("mgmd")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn wait_started(&self, ids: &[u32]) {
        self.wait_for(&format!("data nodes {ids:?} STARTED"), |st| {
            ids.iter()
                .all(|id| st.iter().any(|n| n.id == *id && n.status == "STARTED"))
        });
    }

    /// Runs a stand-in program to completion: (exit code, stdout + stderr).
    pub fn run(&self, program: &str, args: &[&str]) -> (i32, String) {
        let out = Command::new(standin())
            .arg(program)
            .args(args)
            .env("RONDB_STANDIN_PHASE_MS", "20")
            .output()
            .expect("run the stand-in");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), text)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let names: Vec<String> = self.procs.keys().cloned().collect();
        for n in names {
            self.kill(&n);
        }
        // A failed test keeps its logs and files for whoever reads the failure.
        if std::thread::panicking() {
            let kept = self.dir.path().to_path_buf();
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
            let _ = dir.keep();
            eprintln!(
                "the failed test's cluster (logs, files) is kept in {}",
                kept.display()
            );
        }
    }
}

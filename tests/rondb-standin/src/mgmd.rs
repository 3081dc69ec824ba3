//! `ndb_mgmd`: reads config.ini (with RonDB's configuration cache in `--configdir`), serves
//! the mgm text protocol on its `HostName:PortNumber`, allocates node ids, tracks every
//! node's state, orders stops, restarts and backups, and keeps the cluster log. It also
//! decides what RonDB's data nodes decide among themselves: who holds each node group's
//! rows, and the forced shutdown of the cluster when a node group loses its last node.

use crate::cli::{self, flag, value, Opt};
use crate::config::{ClusterConfig, NodeType};
use crate::logging::Log;
use crate::mgm::{self, read_message, Message};
use crate::transporter::{
    self, DataStatus, FromMgmd, GroupView, JoinReply, Member, Membership, ToMgmd,
};
use crate::version::{Version, MYSQL_VERSION};
use base64::Engine as _;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

const OPTIONS: &[Opt] = &[
    value("config-file", Some('f')),
    value("configdir", None),
    value("config-dir", None),
    flag("initial", None),
    flag("reload", None),
    flag("config-cache", None),
    flag("nodaemon", None),
    flag("daemon", Some('d')),
    value("ndb-nodeid", None),
    value("bind-address", None),
    value("nowait-nodes", None),
    flag("print-full-config", Some('P')),
    flag("mycnf", None),
    flag("verbose", Some('v')),
    flag("version", Some('V')),
];

/// Error texts of the management server, as RonDB words them.
const SYSTEM_CRASH: &str =
    "Node shutdown would cause system crash: Permanent error: Application error";
const NODES_STARTING: &str = "Operation not allowed while nodes are starting or stopping.";
const BACKUP_EXISTS: &str = "Backup failed: file already exists (use 'START BACKUP <backup id>'): Temporary error: Temporary Resource error";
/// A configuration change based on a generation that is no longer current.
pub const CONFIG_CONFLICT: &str =
    "Config change failed: the configuration database can only run one change at a time";
const ARBITRATION: &str = "Node lost connection to other nodes and can not form a unpartitioned cluster, please investigate if there are error(s) on other node(s)(Arbitration error). Temporary error, restart node";

/// How long a node group waits for its other nodes before the newest files start alone
/// (RonDB's `StartPartialTimeout`, shortened; `RONDB_STANDIN_PARTIAL_MS` sets it).
fn partial_start_timeout() -> Duration {
    Duration::from_millis(
        std::env::var("RONDB_STANDIN_PARTIAL_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3000),
    )
}

/// How long a node group whose started nodes come back to a restarted management server
/// waits for the others before the ones back (if they hold its newest epoch) go on alone
/// (`RONDB_STANDIN_REJOIN_MS`; a node back later must catch up with a node restart).
fn rejoin_timeout() -> Duration {
    Duration::from_millis(
        std::env::var("RONDB_STANDIN_REJOIN_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000),
    )
}

pub async fn main(args: Vec<String>) -> i32 {
    let opts = match cli::parse(&args, OPTIONS) {
        Ok(o) => o,
        Err(cli::CliError::Unknown(a)) => {
            eprintln!("ERROR: Unknown option {a}");
            return 1;
        }
        Err(e) => {
            eprintln!("ERROR: {e}");
            return 1;
        }
    };
    let version = Version::current();
    if opts.flag("version") {
        println!("ndb_mgmd  Ver {MYSQL_VERSION} for Linux on x86_64 (RonDB-{version})");
        return 0;
    }
    let log = Log::stdout("MgmtSrvr");
    match start(&opts, &args, version, &log).await {
        Ok(code) => code,
        Err(e) => {
            log.error(&e);
            1
        }
    }
}

/// Loads the configuration, binds, and serves until SIGTERM.
async fn start(
    opts: &cli::Parsed,
    args: &[String],
    version: Version,
    out: &Log,
) -> Result<i32, String> {
    let configdir = opts.value("configdir").or(opts.value("config-dir"));
    if let Some(dir) = configdir {
        if !Path::new(dir).is_absolute() {
            return Err(format!(
                "Relative path ('{dir}') not supported for configdir, specify absolute path."
            ));
        }
    }
    let node_id: Option<u32> = opts.number("ndb-nodeid").map_err(|e| e.to_string())?;
    let cache = configdir.map(PathBuf::from);
    let config_file = opts.value("config-file");
    let use_cache = !matches!(opts.flags.get("config-cache"), Some(false));
    let config = load_config(
        config_file,
        cache.as_deref().filter(|_| use_cache),
        node_id,
        opts.flag("initial"),
        opts.flag("reload"),
        out,
    )?;
    let me = match node_id {
        Some(id) => id,
        None => config
            .nodes
            .values()
            .find(|n| n.kind == NodeType::Mgm)
            .map(|n| n.id)
            .ok_or("At least one management server (section [ndb_mgmd]) must be defined")?,
    };
    let own = config.nodes.get(&me).filter(|n| n.kind == NodeType::Mgm).ok_or_else(|| {
        format!("Could not determine which nodeid to use for this node. Node {me} is not a management server in the configuration; specify it with --ndb-nodeid=<nodeid> on command line")
    })?;
    if opts.flag("print-full-config") {
        print!("{}", config.render());
        return Ok(0);
    }
    // Like RonDB's, the configuration is checked before the server daemonizes, so a
    // bad one fails the command that started it.
    if !opts.flag("nodaemon") {
        return Ok(crate::daemonize("ndb_mgmd", args));
    }
    let bind_host = opts
        .value("bind-address")
        .map(str::to_string)
        .or_else(|| own.host.clone())
        .unwrap_or_else(|| "0.0.0.0".into());
    let bind_ip = crate::config::resolve(&bind_host).ok_or_else(|| {
        format!("Unable to resolve the management server's address '{bind_host}'")
    })?;
    let addr = SocketAddr::new(bind_ip, own.port);
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        format!("Unable to bind management service to address {addr}: {e}; is another ndb_mgmd running?")
    })?;
    let data_dir = PathBuf::from(&own.data_dir);
    let cluster_log = Log::to_file("MgmtSrvr", &data_dir.join(format!("ndb_{me}_cluster.log")))
        .map_err(|e| format!("Cannot open the cluster log in {}: {e}", data_dir.display()))?;
    cluster_log.info(&format!("RonDB Management Server RonDB-{version} started"));
    cluster_log.info(&format!("Node {me}: Node {me} Connected"));
    cluster_log.info(&format!(
        "Loaded config from '{}', generation: {}",
        config_file.unwrap_or("configuration cache"),
        config.generation
    ));
    let backups_file = data_dir.join(format!("ndb_{me}_backup_ids"));
    let used_backups = std::fs::read_to_string(&backups_file)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect();
    // The epoch each node group had under the previous run of this management server:
    // a started node coming back with an older one missed writes.
    let epochs_file = data_dir.join(format!("ndb_{me}_epochs"));
    let last_epochs = std::fs::read_to_string(&epochs_file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (g, e) = l.split_once(' ')?;
            Some((g.trim().parse().ok()?, e.trim().parse().ok()?))
        })
        .collect();
    let (changed, _) = watch::channel(0u64);
    let server = Arc::new(Server {
        me,
        version,
        cache,
        log: cluster_log,
        backups_file,
        epochs_file,
        changed,
        state: Mutex::new(State {
            config,
            nodes: BTreeMap::new(),
            epochs: BTreeMap::new(),
            used_backups,
            listeners: Vec::new(),
            next_session: 1,
            next_dynamic: 1,
            join_started: BTreeMap::new(),
            rejoin: BTreeMap::new(),
            last_epochs,
            gci: 1000,
            stop_requested: false,
        }),
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| e.to_string())?;
    let mut stop = server.changed.subscribe();
    loop {
        tokio::select! {
            _ = term.recv() => {
                server.log.info("Received SIGTERM. Performing stop.");
                break;
            }
            _ = int.recv() => {
                server.log.info("Received SIGINT. Performing stop.");
                break;
            }
            _ = stop.changed() => {
                if server.lock().stop_requested {
                    // A `stop` of this management server: let the session that asked read
                    // its reply before the process goes.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    server.log.info("Shutting down server...");
                    break;
                }
            }
            accepted = listener.accept() => {
                if let Ok((sock, peer)) = accepted {
                    let _ = sock.set_nodelay(true);
                    let s = server.clone();
                    tokio::spawn(async move { s.session(sock, peer).await });
                }
            }
        }
    }
    server.log.info("Shutdown complete");
    Ok(0)
}

/// The configuration to serve: config.ini, or the newest cached generation in `configdir`.
fn load_config(
    file: Option<&str>,
    cache: Option<&Path>,
    node_id: Option<u32>,
    initial: bool,
    reload: bool,
    log: &Log,
) -> Result<ClusterConfig, String> {
    let read_ini = |f: &str| -> Result<ClusterConfig, String> {
        let text = std::fs::read_to_string(f)
            .map_err(|e| format!("Could not load configuration from '{f}': {e}"))?;
        ClusterConfig::parse(&text)
            .map_err(|e| format!("Could not load configuration from '{f}': {e}"))
    };
    let Some(dir) = cache else {
        return read_ini(file.ok_or("No configuration file given: use -f <config.ini>")?);
    };
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("Cannot create configdir {}: {e}", dir.display()))?;
    let cached = newest_cache(dir, node_id);
    if initial {
        if let Some(f) = file {
            let cfg = read_ini(f)?;
            for (path, _) in cached_files(dir, node_id) {
                let _ = std::fs::remove_file(path);
            }
            save_cache(dir, node_id_for(&cfg, node_id), &cfg)?;
            return Ok(cfg);
        }
    }
    match (cached, file) {
        (Some(old), Some(f)) if reload => {
            let mut new = read_ini(f)?;
            if new.same_content(&old) {
                return Ok(old);
            }
            log.info(&format!(
                "Detected change of {f} on disk, will try to set it."
            ));
            new.generation = old.generation + 1;
            log.info(&format!(
                "Starting configuration change, generation: {}",
                new.generation
            ));
            save_cache(dir, node_id_for(&new, node_id), &new)?;
            Ok(new)
        }
        (Some(old), _) => Ok(old),
        (None, Some(f)) => {
            let cfg = read_ini(f)?;
            save_cache(dir, node_id_for(&cfg, node_id), &cfg)?;
            Ok(cfg)
        }
        (None, None) => Err(
            "No configuration file given and no configuration cache found: use -f <config.ini>"
                .into(),
        ),
    }
}

fn node_id_for(cfg: &ClusterConfig, given: Option<u32>) -> u32 {
    given
        .or_else(|| {
            cfg.nodes
                .values()
                .find(|n| n.kind == NodeType::Mgm)
                .map(|n| n.id)
        })
        .unwrap_or(0)
}

/// `ndb_<id>_config.bin.<generation>` files.
fn cached_files(dir: &Path, node_id: Option<u32>) -> Vec<(PathBuf, u32)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let rest = name.strip_prefix("ndb_")?;
            let (id, gen) = rest.split_once("_config.bin.")?;
            let id: u32 = id.parse().ok()?;
            if node_id.is_some_and(|n| n != id) {
                return None;
            }
            Some((e.path(), gen.parse().ok()?))
        })
        .collect()
}

fn newest_cache(dir: &Path, node_id: Option<u32>) -> Option<ClusterConfig> {
    let (path, gen) = cached_files(dir, node_id)
        .into_iter()
        .max_by_key(|(_, g)| *g)?;
    let mut cfg = ClusterConfig::parse(&std::fs::read_to_string(path).ok()?).ok()?;
    cfg.generation = gen;
    Some(cfg)
}

fn save_cache(dir: &Path, me: u32, cfg: &ClusterConfig) -> Result<(), String> {
    let path = dir.join(format!("ndb_{me}_config.bin.{}", cfg.generation));
    write_atomic(&path, cfg.render().as_bytes()).map_err(|e| {
        format!(
            "Cannot write the configuration cache {}: {e}",
            path.display()
        )
    })
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

struct Server {
    me: u32,
    version: Version,
    cache: Option<PathBuf>,
    log: Log,
    backups_file: PathBuf,
    /// Every node group's current epoch, kept for the next run of this management server.
    epochs_file: PathBuf,
    /// Bumped on every state change; waiters (stop, restart, backup) watch it.
    changed: watch::Sender<u64>,
    state: Mutex<State>,
}

struct State {
    config: ClusterConfig,
    nodes: BTreeMap<u32, NodeRt>,
    /// Per node group: changes whenever its members change.
    epochs: BTreeMap<u32, u64>,
    used_backups: BTreeSet<u32>,
    listeners: Vec<mpsc::UnboundedSender<String>>,
    next_session: u64,
    next_dynamic: u32,
    /// When a node group without a started node first had a node ask to join.
    join_started: BTreeMap<u32, Instant>,
    /// Node groups without members whose started nodes are coming back to this management
    /// server (it restarted): nobody is admitted until they are back, or the wait is over.
    rejoin: BTreeMap<u32, Rejoin>,
    /// Each node group's last epoch under the previous run of this management server.
    last_epochs: BTreeMap<u32, u64>,
    gci: u64,
    stop_requested: bool,
}

#[derive(Default)]
struct NodeRt {
    /// The session that allocated this node id (an angel, an API node).
    reserved_by: Option<u64>,
    conn: Option<Conn>,
    connect_count: u32,
    /// Data nodes: whether writes of its group reach it (joined in phase 4 or started).
    member: bool,
    /// Data nodes: lsn at its join request, while it waits for its group.
    joining_lsn: Option<u64>,
    acked_epoch: u64,
    backups: BTreeMap<u32, BackupResult>,
}

/// Started nodes back to a restarted management server, waiting to be members again.
struct Rejoin {
    since: Instant,
    /// Node → the epoch it holds.
    epochs: BTreeMap<u32, u64>,
}

/// A data node's part of a backup: (records, bytes) or (NDB error code, text).
type BackupResult = Result<(u64, u64), (u32, String)>;

struct Conn {
    session: u64,
    tx: mpsc::UnboundedSender<FromMgmd>,
    address: IpAddr,
    version: u32,
    /// Data nodes only.
    status: DataStatus,
    phase: u32,
    server_port: u16,
    dynamic_id: u32,
    is_data: bool,
}

impl Server {
    fn lock(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// Waits until `done` holds, up to `timeout`.
    async fn wait_for(&self, timeout: Duration, mut done: impl FnMut(&State) -> bool) -> bool {
        let mut rx = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if done(&self.lock()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return done(&self.lock());
            }
        }
    }

    async fn session(self: Arc<Self>, sock: TcpStream, peer: SocketAddr) {
        let session = {
            let mut st = self.lock();
            st.next_session += 1;
            st.next_session
        };
        let (r, mut w) = sock.into_split();
        let mut r = BufReader::new(r);
        loop {
            let msg =
                match tokio::time::timeout(mgm::SOCKET_TIMEOUT * 10, read_message(&mut r, false))
                    .await
                {
                    Ok(Ok(Some(m))) => m,
                    _ => break,
                };
            let cmd = msg.head.trim().to_string();
            match cmd.as_str() {
                "bye" | "end session" => {
                    if cmd == "end session" {
                        let _ = mgm::send(&mut w, &Message::new("end session reply")).await;
                    }
                    break;
                }
                "transporter connect" => {
                    let node = msg.get_u32("node").unwrap_or(0);
                    match self.transporter_allowed(node) {
                        Ok(()) => {
                            let ok = Message::new("transporter connect reply").arg("result", "Ok");
                            if mgm::send(&mut w, &ok).await.is_err() {
                                break;
                            }
                            self.clone().transporter(r, w, peer, session).await;
                            self.release_session(session);
                            return;
                        }
                        Err(text) => {
                            let _ = mgm::send(
                                &mut w,
                                &Message::new("transporter connect reply").arg("result", text),
                            )
                            .await;
                        }
                    }
                }
                "listen event" => {
                    let reply = Message::new("listen event").arg("result", 0);
                    if mgm::send(&mut w, &reply).await.is_err() {
                        break;
                    }
                    self.event_stream(w).await;
                    break;
                }
                _ => {
                    let reply = self.handle(&msg, session, peer).await;
                    if w.write_all(reply.as_bytes()).await.is_err() {
                        break;
                    }
                }
            }
        }
        self.release_session(session);
    }

    /// A node id reserved by a session that ends is free again (unless its node connected).
    fn release_session(&self, session: u64) {
        let mut st = self.lock();
        for n in st.nodes.values_mut() {
            if n.reserved_by == Some(session) && n.conn.is_none() {
                n.reserved_by = None;
            }
        }
        drop(st);
        self.bump();
    }

    async fn handle(&self, msg: &Message, session: u64, peer: SocketAddr) -> String {
        let cmd = msg.head.trim();
        if let Some(err) = check_args(cmd, msg) {
            return err;
        }
        match cmd {
            "get status" => self.get_status(),
            "get version" => self.get_version(),
            "get mgmd nodeid" => format!("get mgmd nodeid reply\nnodeid:{}\n\n", self.me),
            "get session id" => format!("get session id reply\nid: {session}\n\n"),
            "set clientversion" => reply("set clientversion reply", &[("result", "Ok")]),
            "check connection" => reply("check connection reply", &[("result", "Ok")]),
            "purge stale sessions" => reply("purge stale sessions reply", &[("result", "Ok")]),
            "get nodeid" => self.get_nodeid(msg, session, peer),
            "get config" | "get config_v2" => self.get_config(),
            "set config" | "set config_v2" => self.set_config(msg),
            "show config" => format!("show config reply\n{}\n", self.lock().config.render()),
            "stop" | "stop v2" => self.stop(msg, cmd == "stop v2").await,
            "stop all" => self.stop_all(msg).await,
            "restart node" | "restart node v2" => self.restart(msg, cmd == "restart node v2").await,
            "start" => self.start_node(msg),
            "start all" => self.start_all(),
            "start backup" => self.start_backup(msg).await,
            "abort backup" => {
                if let Some(id) = msg.get_u32("id") {
                    self.log
                        .info(&format!("Node {}: Backup {id} abort ordered", self.me));
                }
                reply("abort backup reply", &[("result", "Ok")])
            }
            "activate" => self.activate(msg, true),
            "deactivate" => self.activate(msg, false),
            "set_hostname" => self.set_hostname(msg),
            other => format!("result: Unknown command, '{other}'\n\n"),
        }
    }

    fn get_version(&self) -> String {
        let v = self.version;
        format!(
            "version\nid: {}\nmajor: {}\nminor: {}\nbuild: {}\nstring: RonDB-{v}\nmysql_major: {}\nmysql_minor: {}\nmysql_build: {}\n\n",
            v.packed(),
            v.major,
            v.minor,
            v.build,
            MYSQL_VERSION.major,
            MYSQL_VERSION.minor,
            MYSQL_VERSION.build
        )
    }

    fn get_status(&self) -> String {
        let st = self.lock();
        let any_data_alive = st
            .nodes
            .values()
            .any(|n| n.conn.as_ref().is_some_and(|c| c.is_data));
        let mut out = String::new();
        let mut count = 0;
        for kind in [NodeType::Ndb, NodeType::Mgm, NodeType::Api] {
            for def in st.config.nodes.values().filter(|n| n.kind == kind) {
                count += 1;
                let rt = st.nodes.get(&def.id);
                let conn = rt.and_then(|r| r.conn.as_ref());
                let (status, version, mysql, phase, dynamic, group, address) = match kind {
                    NodeType::Ndb => match conn {
                        Some(c) => {
                            let phase = if c.status == DataStatus::NotStarted {
                                0
                            } else {
                                c.phase
                            };
                            (
                                c.status.wire(),
                                c.version,
                                MYSQL_VERSION.packed(),
                                phase,
                                c.dynamic_id,
                                def.node_group.unwrap_or(0) as i64,
                                c.address.to_string(),
                            )
                        }
                        None => ("NO_CONTACT", 0, 0, 0, 0, 0, String::new()),
                    },
                    NodeType::Mgm if def.id == self.me => (
                        "CONNECTED",
                        self.version.packed(),
                        MYSQL_VERSION.packed(),
                        0,
                        0,
                        0,
                        def.ip().map(|i| i.to_string()).unwrap_or_default(),
                    ),
                    NodeType::Mgm => ("NO_CONTACT", 0, 0, 0, 0, 0, String::new()),
                    NodeType::Api => match (conn, any_data_alive) {
                        (_, false) => ("UNKNOWN", 0, 0, 0, 0, 0, String::new()),
                        (Some(c), true) => (
                            "CONNECTED",
                            c.version,
                            MYSQL_VERSION.packed(),
                            0,
                            0,
                            0,
                            c.address.to_string(),
                        ),
                        (None, true) => ("NO_CONTACT", 0, 0, 0, 0, 0, String::new()),
                    },
                };
                let id = def.id;
                let connects = rt.map(|r| r.connect_count).unwrap_or(0);
                out.push_str(&format!(
                    "node.{id}.type: {}\nnode.{id}.status: {status}\nnode.{id}.version: {version}\nnode.{id}.mysql_version: {mysql}\nnode.{id}.startphase: {phase}\nnode.{id}.dynamic_id: {dynamic}\nnode.{id}.node_group: {group}\nnode.{id}.connect_count: {connects}\nnode.{id}.address: {address}\n",
                    kind.status_name()
                ));
            }
        }
        format!("node status\nnodes: {count}\n{out}\n")
    }

    fn get_nodeid(&self, msg: &Message, session: u64, _peer: SocketAddr) -> String {
        let result = self.allocate(msg, session);
        match result {
            Ok(id) => reply(
                "get nodeid reply",
                &[("nodeid", &id.to_string()), ("result", "Ok")],
            ),
            Err(text) => {
                self.log.warn(&format!(
                    "Failed to allocate nodeid for {} node: {text}",
                    msg.get("name").unwrap_or("a")
                ));
                let mut r = format!("get nodeid reply\nresult: {text}\n");
                if msg.get("log_event").is_some() {
                    r.push_str("error_code: 5065\n");
                }
                r.push('\n');
                r
            }
        }
    }

    fn allocate(&self, msg: &Message, session: u64) -> Result<u32, String> {
        let kind = msg
            .get_u32("nodetype")
            .and_then(NodeType::from_wire)
            .ok_or("Unknown node type")?;
        let version = msg.get_u32("version").unwrap_or(0);
        let wanted = msg.get_u32("nodeid").unwrap_or(0);
        let mut st = self.lock();
        let data_versions: Vec<u32> = st
            .nodes
            .values()
            .filter_map(|n| n.conn.as_ref())
            .filter(|c| c.is_data && c.status == DataStatus::Started)
            .map(|c| c.version)
            .collect();
        let free = |st: &State, id: u32| {
            st.nodes
                .get(&id)
                .is_none_or(|n| n.conn.is_none() && n.reserved_by.is_none_or(|s| s == session))
        };
        let id = if wanted != 0 {
            let def = st
                .config
                .nodes
                .get(&wanted)
                .ok_or_else(|| format!("No node defined with id={wanted} in config file."))?;
            if def.kind != kind {
                return Err(format!(
                    "Id {wanted} configured as {}, connect attempted as {}.",
                    def.kind.long_name(),
                    kind.long_name()
                ));
            }
            if !def.active {
                return Err(format!(
                    "Unable to allocate nodeid {wanted} as node is currently deactivated"
                ));
            }
            if kind == NodeType::Mgm && wanted != self.me {
                return Err(format!("Id {wanted} already allocated by another node."));
            }
            if !free(&st, wanted) {
                return Err(format!("Id {wanted} already allocated by another node."));
            }
            wanted
        } else {
            let candidates: Vec<u32> = st
                .config
                .nodes
                .values()
                .filter(|n| n.kind == kind && n.active)
                .map(|n| n.id)
                .collect();
            *candidates
                .iter()
                .find(|id| free(&st, **id))
                .ok_or_else(|| format!("No free node id found for {}.", kind.long_name()))?
        };
        if version != 0 {
            let v = Version::from_packed(version);
            match kind {
                // RonDB's compatibility order: management servers, then data nodes, then
                // API nodes may be newer.
                NodeType::Ndb if version > self.version.packed() => {
                    return Err(format!(
                        "Node {id}: version RonDB-{v} is newer than management server version RonDB-{}: upgrade management servers before data nodes",
                        self.version
                    ));
                }
                NodeType::Api => {
                    if data_versions.is_empty() {
                        return Err(format!("No free node id found for {}.", kind.long_name()));
                    }
                    if let Some(min) = data_versions.iter().min().filter(|m| version > **m) {
                        return Err(format!(
                            "Node {id}: version RonDB-{v} is newer than data node version RonDB-{}: upgrade data nodes before API nodes",
                            Version::from_packed(*min)
                        ));
                    }
                }
                _ => {}
            }
        }
        st.nodes.entry(id).or_default().reserved_by = Some(session);
        drop(st);
        self.bump();
        Ok(id)
    }

    fn transporter_allowed(&self, node: u32) -> Result<(), String> {
        let st = self.lock();
        // A node id is reserved by `get nodeid` first; a started data node may reconnect
        // without one after this management server restarted.
        match st.nodes.get(&node) {
            Some(n) if n.conn.is_some() => {
                Err(format!("Id {node} already allocated by another node."))
            }
            _ if st.config.nodes.contains_key(&node) => Ok(()),
            _ => Err(format!("No node defined with id={node} in config file.")),
        }
    }

    fn get_config(&self) -> String {
        let text = self.lock().config.render();
        let b64 = base64::engine::general_purpose::STANDARD.encode(text.as_bytes());
        format!(
            "get config reply\nresult: Ok\nContent-Length: {}\nContent-Type: ndbconfig/octet-stream\nContent-Transfer-Encoding: base64\n\n{b64}\n",
            b64.len()
        )
    }

    fn set_config(&self, msg: &Message) -> String {
        let parsed = msg
            .body
            .as_deref()
            .ok_or_else(|| "Missing configuration".to_string())
            .and_then(|b| {
                base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .map_err(|e| format!("Failed to decode configuration: {e}"))
            })
            .and_then(|bytes| String::from_utf8(bytes).map_err(|e| e.to_string()))
            .and_then(|t| ClusterConfig::parse(&t).map_err(|e| e.to_string()));
        let mut new = match parsed {
            Ok(c) => c,
            Err(e) => return reply("set config reply", &[("result", &e)]),
        };
        let mut st = self.lock();
        // A change is made to the configuration it was read from: RonDB's configuration
        // database runs one change at a time, and a client that read an older generation
        // has to read it again (rondb-helm's ACTIVATE loops retry on exactly this).
        if new.generation != st.config.generation {
            return reply(
                "set config reply",
                &[(
                    "result",
                    &format!(
                        "{CONFIG_CONFLICT} (the change was made to generation {}, the configuration is at generation {})",
                        new.generation, st.config.generation
                    ),
                )],
            );
        }
        new.generation = st.config.generation + 1;
        self.log.info(&format!(
            "Starting configuration change, generation: {}",
            new.generation
        ));
        if let Some(dir) = &self.cache {
            if let Err(e) = save_cache(dir, self.me, &new) {
                return reply("set config reply", &[("result", &e)]);
            }
        }
        st.config = new;
        self.log
            .info(&format!("Configuration {} commited", st.config.generation));
        drop(st);
        self.bump();
        reply("set config reply", &[("result", "Ok")])
    }

    fn activate(&self, msg: &Message, on: bool) -> String {
        let head = if on {
            "activate reply"
        } else {
            "deactivate reply"
        };
        let Some(node) = msg.get_u32("node") else {
            return "result: Missing arg., 'node'\n\n".into();
        };
        let st = self.lock();
        let Some(def) = st.config.nodes.get(&node) else {
            return reply(
                head,
                &[(
                    "result",
                    "MGM Server received incorrect command from client",
                )],
            );
        };
        if def.active != on {
            // RonDB's client changes NodeActive in the configuration first.
            let text = if on {
                "Data nodes failed Activate Request"
            } else {
                "Data nodes failed Deactivate Request"
            };
            return reply(head, &[("result", text)]);
        }
        if !on && st.nodes.get(&node).is_some_and(|n| n.conn.is_some()) {
            return reply(head, &[("result", "Data nodes failed Deactivate Request")]);
        }
        drop(st);
        self.log.info(&format!(
            "Node {node}: {}",
            if on { "activated" } else { "deactivated" }
        ));
        reply(head, &[("result", "Ok")])
    }

    fn set_hostname(&self, msg: &Message) -> String {
        let (Some(node), Some(host)) = (msg.get_u32("node"), msg.get("new_hostname")) else {
            return "result: Missing arg., 'node'\n\n".into();
        };
        let mut st = self.lock();
        match st.config.nodes.get(&node) {
            Some(d) if !d.active => {
                st.config.set_hostname(node, host);
                reply("set_hostname reply", &[("result", "Ok")])
            }
            _ => reply(
                "set_hostname reply",
                &[("result", "Data nodes failed to set new hostname")],
            ),
        }
    }

    /// Data nodes whose stop would leave a node group without a started node.
    fn would_crash(st: &State, stopping: &BTreeSet<u32>) -> bool {
        st.config.node_groups().into_iter().any(|g| {
            let started: Vec<u32> = st
                .config
                .data_nodes()
                .filter(|d| d.node_group == Some(g))
                .filter(|d| {
                    st.nodes
                        .get(&d.id)
                        .and_then(|n| n.conn.as_ref())
                        .is_some_and(|c| c.status == DataStatus::Started)
                })
                .map(|d| d.id)
                .collect();
            !started.is_empty() && started.iter().all(|id| stopping.contains(id))
        })
    }

    fn any_starting(st: &State) -> bool {
        st.nodes.values().filter_map(|n| n.conn.as_ref()).any(|c| {
            c.is_data && matches!(c.status, DataStatus::Starting | DataStatus::ShuttingDown)
        })
    }

    fn parse_nodes(msg: &Message) -> Vec<u32> {
        msg.get("node")
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|s| s.parse().ok())
            .collect()
    }

    async fn stop(&self, msg: &Message, v2: bool) -> String {
        let nodes = Self::parse_nodes(msg);
        let abort = msg.get_u32("abort") == Some(1);
        let force = msg.get_u32("force") == Some(1);
        let finish = |result: &str, stopped: usize, disconnect: bool| {
            let mut args = vec![
                ("result", result.to_string()),
                ("stopped", stopped.to_string()),
            ];
            if v2 {
                args.push(("disconnect", u8::from(disconnect).to_string()));
            }
            let a: Vec<(&str, &str)> = args.iter().map(|(k, v)| (*k, v.as_str())).collect();
            reply("stop reply", &a)
        };
        let mut disconnect = false;
        let data: Option<BTreeSet<u32>> = {
            let st = self.lock();
            let mut data = BTreeSet::new();
            for id in &nodes {
                match st.config.nodes.get(id).map(|d| d.kind) {
                    Some(NodeType::Ndb) => {
                        data.insert(*id);
                    }
                    Some(NodeType::Mgm) if *id == self.me => disconnect = true,
                    _ => {
                        return finish(
                            &format!("Node {id} is not a data node or management server"),
                            0,
                            false,
                        )
                    }
                }
            }
            if !abort && !force && Self::any_starting(&st) && !data.is_empty() {
                return finish(NODES_STARTING, 0, false);
            }
            if Self::would_crash(&st, &data) {
                if !force {
                    return finish(SYSTEM_CRASH, 0, false);
                }
                // RonDB's forced stop of a node group's last node stops the whole cluster.
                None
            } else {
                Some(data)
            }
        };
        let Some(data) = data else {
            let all: BTreeSet<u32> = self.connected_data_nodes();
            let n = self.stop_data_nodes(&all, false, false, false).await;
            return finish("Ok", n, disconnect);
        };
        let stopped = self.stop_data_nodes(&data, false, false, false).await;
        if disconnect {
            self.lock().stop_requested = true;
            self.bump();
        }
        finish("Ok", stopped + usize::from(disconnect), disconnect)
    }

    async fn stop_all(&self, msg: &Message) -> String {
        let what = msg.get("stop").unwrap_or("db");
        let all = self.connected_data_nodes();
        let mut stopped = 0;
        if what.contains("db") {
            stopped = self.stop_data_nodes(&all, false, false, false).await;
        }
        let mgm = what.contains("mgm");
        if mgm {
            self.lock().stop_requested = true;
            self.bump();
        }
        let mut args = vec![
            ("result", "Ok".to_string()),
            ("stopped", stopped.to_string()),
        ];
        if msg.get("stop").is_some() {
            args.push(("disconnect", u8::from(mgm).to_string()));
        }
        let a: Vec<(&str, &str)> = args.iter().map(|(k, v)| (*k, v.as_str())).collect();
        reply("stop reply", &a)
    }

    fn connected_data_nodes(&self) -> BTreeSet<u32> {
        self.lock()
            .nodes
            .iter()
            .filter(|(_, n)| n.conn.as_ref().is_some_and(|c| c.is_data))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Orders a stop (or restart) and waits until each node's transporter is gone.
    async fn stop_data_nodes(
        &self,
        nodes: &BTreeSet<u32>,
        restart: bool,
        initial: bool,
        nostart: bool,
    ) -> usize {
        let sessions: BTreeMap<u32, u64> = {
            let st = self.lock();
            nodes
                .iter()
                .filter_map(|id| {
                    let c = st.nodes.get(id)?.conn.as_ref()?;
                    let _ = c.tx.send(FromMgmd::Stop {
                        restart,
                        initial,
                        nostart,
                    });
                    Some((*id, c.session))
                })
                .collect()
        };
        for id in sessions.keys() {
            self.log
                .info(&format!("Node {id}: Node shutdown initiated"));
        }
        let gone = |st: &State| {
            sessions
                .iter()
                .filter(|(id, s)| {
                    st.nodes
                        .get(id)
                        .and_then(|n| n.conn.as_ref())
                        .is_none_or(|c| c.session != **s)
                })
                .count()
        };
        self.wait_for(Duration::from_secs(120), |st| gone(st) == sessions.len())
            .await;
        gone(&self.lock())
    }

    async fn restart(&self, msg: &Message, v2: bool) -> String {
        let nodes: BTreeSet<u32> = Self::parse_nodes(msg).into_iter().collect();
        let initial = msg.get_u32("initialstart") == Some(1);
        let nostart = msg.get_u32("nostart") == Some(1);
        let abort = msg.get_u32("abort") == Some(1);
        let force = msg.get_u32("force") == Some(1);
        let finish = |result: &str, n: usize| {
            let mut args = vec![("result", result.to_string()), ("restarted", n.to_string())];
            if v2 {
                args.push(("disconnect", "0".to_string()));
            }
            let a: Vec<(&str, &str)> = args.iter().map(|(k, v)| (*k, v.as_str())).collect();
            reply("restart reply", &a)
        };
        let sessions: BTreeMap<u32, u64> = {
            let st = self.lock();
            for id in &nodes {
                if st.config.nodes.get(id).map(|d| d.kind) != Some(NodeType::Ndb) {
                    return finish(&format!("5002-Node {id} is not a data node"), 0);
                }
            }
            if !abort && !force && Self::any_starting(&st) {
                return finish(&format!("5063-{NODES_STARTING}"), 0);
            }
            if !force && Self::would_crash(&st, &nodes) {
                return finish(&format!("5028-{SYSTEM_CRASH}"), 0);
            }
            nodes
                .iter()
                .filter_map(|id| Some((*id, st.nodes.get(id)?.conn.as_ref()?.session)))
                .collect()
        };
        {
            let st = self.lock();
            for id in sessions.keys() {
                if let Some(c) = st.nodes.get(id).and_then(|n| n.conn.as_ref()) {
                    let _ = c.tx.send(FromMgmd::Stop {
                        restart: true,
                        initial,
                        nostart,
                    });
                }
            }
        }
        let left = |st: &State| {
            sessions.iter().all(|(id, s)| {
                st.nodes
                    .get(id)
                    .and_then(|n| n.conn.as_ref())
                    .is_none_or(|c| c.session != *s)
            })
        };
        if !self.wait_for(Duration::from_secs(12), left).await {
            return finish("5024-Time-out due to node shutdown not starting in time", 0);
        }
        // The reply comes when the node starts again (its angel connected a new child),
        // not when it is STARTED.
        let back = |st: &State| {
            sessions
                .keys()
                .all(|id| st.nodes.get(id).and_then(|n| n.conn.as_ref()).is_some())
        };
        if !self.wait_for(Duration::from_secs(120), back).await {
            return finish(
                "5025-Time-out due to node shutdown not completing in time",
                0,
            );
        }
        finish("Ok", sessions.len())
    }

    fn start_node(&self, msg: &Message) -> String {
        let st = self.lock();
        let mut started = 0;
        for id in Self::parse_nodes(msg) {
            if let Some(c) = st.nodes.get(&id).and_then(|n| n.conn.as_ref()) {
                if c.status == DataStatus::NotStarted {
                    let _ = c.tx.send(FromMgmd::Start);
                    started += 1;
                }
            }
        }
        if started == 0 {
            return reply(
                "start reply",
                &[("result", "Node is not in NOT_STARTED state")],
            );
        }
        reply("start reply", &[("result", "Ok")])
    }

    fn start_all(&self) -> String {
        let st = self.lock();
        let mut n = 0;
        for c in st.nodes.values().filter_map(|n| n.conn.as_ref()) {
            if c.is_data && c.status == DataStatus::NotStarted {
                let _ = c.tx.send(FromMgmd::Start);
                n += 1;
            }
        }
        reply(
            "start reply",
            &[("result", "Ok"), ("started", &n.to_string())],
        )
    }

    async fn start_backup(&self, msg: &Message) -> String {
        let completed = msg.get_u32("completed").unwrap_or(2);
        let fail = |text: &str| reply("start backup reply", &[("result", text)]);
        let (id, writers, master) = {
            let mut st = self.lock();
            let mut writers: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
            for g in st.config.node_groups() {
                let started: Vec<u32> = st
                    .config
                    .data_nodes()
                    .filter(|d| d.node_group == Some(g))
                    .filter(|d| {
                        st.nodes
                            .get(&d.id)
                            .and_then(|n| n.conn.as_ref())
                            .is_some_and(|c| c.status == DataStatus::Started)
                    })
                    .map(|d| d.id)
                    .collect();
                if started.is_empty() {
                    return fail("Backup failed: a node group has no started data node: Temporary error: Node Recovery error");
                }
                writers.insert(g, started);
            }
            let id = match msg.get_u32("backupid") {
                Some(id) if id > 0 => id,
                _ => st.used_backups.iter().max().copied().unwrap_or(0) + 1,
            };
            if st.used_backups.contains(&id) {
                return fail(BACKUP_EXISTS);
            }
            let master = writers.values().flatten().min().copied().unwrap_or(0);
            for w in writers.values().flatten() {
                if let Some(n) = st.nodes.get_mut(w) {
                    n.backups.remove(&id);
                    if let Some(c) = &n.conn {
                        let _ = c.tx.send(FromMgmd::Backup {
                            id,
                            mgmd: self.me,
                            writers: writers.clone(),
                        });
                    }
                }
            }
            st.gci += 3;
            (id, writers, master)
        };
        let start_gci = self.lock().gci;
        self.event(
            54,
            master,
            &[
                ("starting_node", self.me.to_string()),
                ("backup_id", id.to_string()),
            ],
        );
        self.log.info(&format!(
            "Node {master}: Backup {id} started from node {}",
            self.me
        ));
        if completed == 0 {
            return reply("start backup reply", &[("result", "Ok")]);
        }
        let all: Vec<u32> = writers.values().flatten().copied().collect();
        let finished = |st: &State| {
            all.iter()
                .all(|w| st.nodes.get(w).is_some_and(|n| n.backups.contains_key(&id)))
        };
        let done = self.wait_for(Duration::from_secs(600), finished).await;
        let mut st = self.lock();
        let mut records = 0;
        let mut bytes = 0;
        let mut error = None;
        for w in &all {
            match st.nodes.get(w).and_then(|n| n.backups.get(&id)) {
                Some(Ok((r, b))) => {
                    records += r;
                    bytes += b;
                }
                Some(Err((code, text))) => error = Some((*code, text.clone())),
                None => error = Some((1326, "Backup aborted due to node failure".into())),
            }
        }
        if !done && error.is_none() {
            error = Some((1326, "Backup aborted due to node failure".into()));
        }
        st.gci += 2;
        let stop_gci = st.gci;
        if let Some((code, text)) = error {
            drop(st);
            self.event(
                57,
                master,
                &[
                    ("starting_node", self.me.to_string()),
                    ("backup_id", id.to_string()),
                    ("error", code.to_string()),
                ],
            );
            self.log.alert(&format!(
                "Node {master}: Backup {id} started from {} has been aborted. Error: {code}",
                self.me
            ));
            let text = if code == 1350 {
                BACKUP_EXISTS.to_string()
            } else {
                format!("Backup failed: {text}: Temporary error: Temporary Resource error")
            };
            return fail(&text);
        }
        st.used_backups.insert(id);
        let ids: Vec<String> = st.used_backups.iter().map(|i| i.to_string()).collect();
        drop(st);
        if let Err(e) = write_atomic(&self.backups_file, ids.join(" ").as_bytes()) {
            self.log.warn(&format!(
                "Cannot record backup id {id} in {}: {e}",
                self.backups_file.display()
            ));
        }
        self.event(
            56,
            master,
            &[
                ("starting_node", self.me.to_string()),
                ("backup_id", id.to_string()),
                ("start_gci", start_gci.to_string()),
                ("stop_gci", stop_gci.to_string()),
                ("n_bytes", bytes.to_string()),
                ("n_records", records.to_string()),
                ("n_log_bytes", "0".into()),
                ("n_log_records", "0".into()),
                ("n_bytes_hi", "0".into()),
                ("n_records_hi", "0".into()),
                ("n_log_bytes_hi", "0".into()),
                ("n_log_records_hi", "0".into()),
            ],
        );
        self.log.info(&format!(
            "Node {master}: Backup {id} started from node {} completed. StartGCP: {start_gci} StopGCP: {stop_gci} #Records: {records} #LogRecords: 0 Data: {bytes} bytes Log: 0 bytes",
            self.me
        ));
        reply(
            "start backup reply",
            &[("result", "Ok"), ("id", &id.to_string())],
        )
    }

    /// Sends a parsable event to every `listen event` session.
    fn event(&self, kind: u32, source: u32, fields: &[(&str, String)]) {
        let mut text = format!(
            "log event reply\ntype={kind}\ntime={}\nsource_nodeid={source}\n",
            unix_time()
        );
        for (k, v) in fields {
            text.push_str(&format!("{k}={v}\n"));
        }
        text.push('\n');
        let mut st = self.lock();
        st.listeners.retain(|l| l.send(text.clone()).is_ok());
    }

    async fn event_stream(&self, mut w: tokio::net::tcp::OwnedWriteHalf) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.lock().listeners.push(tx);
        let mut ping = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Some(text) => if w.write_all(text.as_bytes()).await.is_err() { return },
                    None => return,
                },
                _ = ping.tick() => if w.write_all(b"<PING>\n").await.is_err() { return },
            }
        }
    }

    /// A data node's or API node's transporter: the node's messages in, orders out.
    async fn transporter(
        self: Arc<Self>,
        mut r: BufReader<tokio::net::tcp::OwnedReadHalf>,
        mut w: tokio::net::tcp::OwnedWriteHalf,
        peer: SocketAddr,
        session: u64,
    ) {
        let Ok(Some(hello)) = transporter::read_line::<_, ToMgmd>(&mut r).await else {
            return;
        };
        let (tx, mut rx) = mpsc::unbounded_channel::<FromMgmd>();
        // A node is reached at its configured HostName; the connection's source address
        // only when it has none (several nodes on one host connect from 127.0.0.1).
        let node_id = match &hello {
            ToMgmd::DataHello { node, .. } | ToMgmd::ApiHello { node, .. } => *node,
            _ => 0,
        };
        let address = self
            .lock()
            .config
            .nodes
            .get(&node_id)
            .and_then(|d| d.ip())
            .unwrap_or(peer.ip());
        let node = match hello {
            ToMgmd::DataHello {
                node,
                version,
                server_port,
                lsn: _,
                started,
                epoch,
            } => {
                let mut st = self.lock();
                st.next_dynamic += 1;
                let dynamic_id = st.next_dynamic;
                let config = st.config.render();
                let rt = st.nodes.entry(node).or_default();
                rt.connect_count += 1;
                // Never a member at once: a started node is one again only after its group
                // checked it missed nothing (below), a starting one after phase 4.
                rt.member = false;
                rt.joining_lsn = None;
                rt.conn = Some(Conn {
                    session,
                    tx: tx.clone(),
                    address,
                    version,
                    status: if started {
                        DataStatus::Started
                    } else {
                        DataStatus::NotStarted
                    },
                    phase: 0,
                    server_port,
                    dynamic_id,
                    is_data: true,
                });
                let _ = tx.send(FromMgmd::Welcome { config });
                let wait = if started {
                    self.started_back(&mut st, node, epoch)
                } else {
                    self.check_rejoin(&mut st, None);
                    None
                };
                drop(st);
                if let Some(g) = wait {
                    let s = self.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(rejoin_timeout()).await;
                        let mut st = s.lock();
                        s.check_rejoin(&mut st, Some(g));
                        drop(st);
                        s.bump();
                    });
                }
                self.log
                    .info(&format!("Node {node}: Data node connected ({})", peer.ip()));
                node
            }
            ToMgmd::ApiHello { node, version } => {
                let mut st = self.lock();
                let rt = st.nodes.entry(node).or_default();
                rt.connect_count += 1;
                rt.conn = Some(Conn {
                    session,
                    tx: tx.clone(),
                    address,
                    version,
                    status: DataStatus::Started,
                    phase: 0,
                    server_port: 0,
                    dynamic_id: 0,
                    is_data: false,
                });
                let m = membership(&st);
                let _ = tx.send(FromMgmd::Membership(m));
                drop(st);
                self.log
                    .info(&format!("Node {node}: API node connected ({})", peer.ip()));
                node
            }
            _ => return,
        };
        self.bump();
        let writer = tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                if transporter::write_line(&mut w, &m).await.is_err() {
                    break;
                }
            }
        });
        while let Ok(Some(msg)) = transporter::read_line::<_, ToMgmd>(&mut r).await {
            match msg {
                ToMgmd::Phase { status, phase } => self.phase(node, status, phase),
                ToMgmd::Join { lsn } => {
                    let s = self.clone();
                    tokio::spawn(async move { s.join(node, lsn).await });
                }
                ToMgmd::EpochAck { epoch, .. } => {
                    if let Some(n) = self.lock().nodes.get_mut(&node) {
                        n.acked_epoch = n.acked_epoch.max(epoch);
                    }
                    self.bump();
                }
                ToMgmd::BackupDone { id, records, bytes } => {
                    if let Some(n) = self.lock().nodes.get_mut(&node) {
                        n.backups.insert(id, Ok((records, bytes)));
                    }
                    self.bump();
                }
                ToMgmd::BackupFailed { id, code, text } => {
                    if let Some(n) = self.lock().nodes.get_mut(&node) {
                        n.backups.insert(id, Err((code, text)));
                    }
                    self.bump();
                }
                ToMgmd::Log { text } => self.log.info(&text),
                ToMgmd::DataHello { .. } | ToMgmd::ApiHello { .. } => {}
            }
        }
        writer.abort();
        self.disconnected(node, session);
    }

    fn phase(&self, node: u32, status: DataStatus, phase: u32) {
        let mut st = self.lock();
        let Some(c) = st.nodes.get_mut(&node).and_then(|n| n.conn.as_mut()) else {
            return;
        };
        let was = c.status;
        c.status = status;
        c.phase = phase;
        if status == DataStatus::Started && was != DataStatus::Started {
            let member = st.nodes.get(&node).is_some_and(|n| n.member);
            let group = st.config.nodes.get(&node).and_then(|d| d.node_group);
            match group {
                // Writes have not reached it since it lost this management server during
                // its start (it joined under the previous one): it copies again.
                Some(g) if !member => self.catch_up(&mut st, node, g),
                _ => {
                    self.log
                        .info(&format!("Node {node}: Started (RonDB-{})", self.version));
                    push_membership(&st);
                }
            }
        }
        drop(st);
        self.bump();
    }

    /// Phase 4 of a data node: how it gets its node group's rows. With a started node in
    /// the group the joiner becomes a member (a new epoch every member acknowledged, so no
    /// write can miss it) and copies from that node; without one, the node with the newest
    /// files starts from them once every node of the group asked or the wait is over.
    async fn join(&self, node: u32, lsn: u64) {
        let decision = {
            let mut st = self.lock();
            let Some(group) = st.config.nodes.get(&node).and_then(|d| d.node_group) else {
                return;
            };
            if let Some(n) = st.nodes.get_mut(&node) {
                n.joining_lsn = Some(lsn);
            }
            // Its group's started nodes are coming back to this management server: which of
            // them hold the rows is not decided yet.
            if st.rejoin.contains_key(&group) {
                drop(st);
                self.send_to(node, FromMgmd::Join(JoinReply::Wait));
                return;
            }
            let peers: Vec<(u32, &NodeRt)> = st
                .config
                .data_nodes()
                .filter(|d| d.node_group == Some(group) && d.id != node)
                .filter_map(|d| Some((d.id, st.nodes.get(&d.id)?)))
                .collect();
            let started = peers.iter().find_map(|(id, n)| {
                let c = n.conn.as_ref()?;
                (c.status == DataStatus::Started && n.member)
                    .then(|| (*id, format!("{}:{}", c.address, c.server_port)))
            });
            match started {
                Some((peer, addr)) => Some((group, JoinReply::CopyFrom { node: peer, addr })),
                None => {
                    let since = *st.join_started.entry(group).or_insert_with(Instant::now);
                    let waited = since.elapsed() >= partial_start_timeout();
                    let active: Vec<u32> = st
                        .config
                        .data_nodes()
                        .filter(|d| d.node_group == Some(group) && d.active)
                        .map(|d| d.id)
                        .collect();
                    let asking: Vec<(u32, u64)> = active
                        .iter()
                        .filter_map(|id| {
                            let n = st.nodes.get(id)?;
                            n.conn.as_ref()?;
                            Some((*id, n.joining_lsn?))
                        })
                        .collect();
                    let member_exists = st
                        .config
                        .data_nodes()
                        .filter(|d| d.node_group == Some(group) && d.id != node)
                        .any(|d| {
                            st.nodes
                                .get(&d.id)
                                .is_some_and(|n| n.member && n.conn.is_some())
                        });
                    let newest = asking
                        .iter()
                        .max_by_key(|(id, l)| (*l, std::cmp::Reverse(*id)))
                        .map(|(id, _)| *id);
                    if !member_exists
                        && newest == Some(node)
                        && (asking.len() == active.len() || waited)
                    {
                        Some((group, JoinReply::OwnFiles))
                    } else {
                        None
                    }
                }
            }
        };
        let Some((group, reply)) = decision else {
            self.send_to(node, FromMgmd::Join(JoinReply::Wait));
            return;
        };
        let epoch = {
            let mut st = self.lock();
            st.join_started.remove(&group);
            if let Some(n) = st.nodes.get_mut(&node) {
                n.member = true;
                n.joining_lsn = None;
            }
            self.new_epoch(&mut st, group)
        };
        self.wait_for(Duration::from_secs(5), |st| {
            members(st, group).iter().all(|id| {
                st.nodes
                    .get(id)
                    .is_none_or(|n| n.conn.is_none() || n.acked_epoch >= epoch)
            })
        })
        .await;
        push_membership(&self.lock());
        self.log.info(&format!(
            "Node {node}: joins node group {group} ({})",
            match &reply {
                JoinReply::CopyFrom { node: p, .. } => format!("copying from node {p}"),
                _ => "from its own files".into(),
            }
        ));
        self.send_to(node, FromMgmd::Join(reply));
        self.bump();
    }

    fn send_to(&self, node: u32, m: FromMgmd) {
        if let Some(c) = self.lock().nodes.get(&node).and_then(|n| n.conn.as_ref()) {
            let _ = c.tx.send(m);
        }
    }

    /// A transporter closed: the node stopped, crashed or was killed. A node group that
    /// lost its last started node takes the cluster down, as RonDB's arbitration does.
    fn disconnected(&self, node: u32, session: u64) {
        let mut st = self.lock();
        let Some(rt) = st.nodes.get_mut(&node) else {
            return;
        };
        if rt.conn.as_ref().is_none_or(|c| c.session != session) {
            return;
        }
        let conn = rt.conn.take();
        rt.reserved_by = None;
        let was_member = std::mem::take(&mut rt.member);
        rt.joining_lsn = None;
        let Some(conn) = conn else { return };
        st.rejoin.retain(|_, r| {
            r.epochs.remove(&node);
            !r.epochs.is_empty()
        });
        if !conn.is_data {
            self.log
                .info(&format!("Node {node}: Node {node} Disconnected"));
            drop(st);
            self.bump();
            return;
        }
        self.log
            .alert(&format!("Node {}: Node {node} Disconnected", self.me));
        let group = st.config.nodes.get(&node).and_then(|d| d.node_group);
        if let (Some(g), true) = (group, was_member) {
            self.new_epoch(&mut st, g);
        }
        let group_lost = conn.status == DataStatus::Started
            && group.is_some_and(|g| {
                !st.config
                    .data_nodes()
                    .filter(|d| d.node_group == Some(g))
                    .any(|d| {
                        st.nodes
                            .get(&d.id)
                            .and_then(|n| n.conn.as_ref())
                            .is_some_and(|c| c.status == DataStatus::Started)
                    })
            });
        if group_lost {
            self.log.alert(&format!(
                "Node {}: Arbitration check lost - missing node group {}",
                self.me,
                group.unwrap_or(0)
            ));
            for (id, n) in &st.nodes {
                if let Some(c) = n.conn.as_ref().filter(|c| c.is_data) {
                    self.log.alert(&format!(
                        "Node {id}: Forced node shutdown completed. Occurred during startphase {}. Caused by error 2305: '{ARBITRATION}'.",
                        c.phase
                    ));
                    let _ = c.tx.send(FromMgmd::Shutdown {
                        code: 2305,
                        text: ARBITRATION.into(),
                    });
                }
            }
        }
        push_membership(&st);
        drop(st);
        self.bump();
    }
}

impl Server {
    /// A new epoch of `group`, sent to its members (and kept for the next run of this
    /// management server); a member refuses writes of any other epoch.
    fn new_epoch(&self, st: &mut State, group: u32) -> u64 {
        let e = st.epochs.entry(group).or_insert_with(first_epoch);
        *e += 1;
        let epoch = *e;
        for id in members(st, group) {
            if let Some(c) = st.nodes.get(&id).and_then(|n| n.conn.as_ref()) {
                let _ = c.tx.send(FromMgmd::Epoch { group, epoch });
            }
        }
        let text: String = st
            .epochs
            .iter()
            .map(|(g, e)| format!("{g} {e}\n"))
            .collect();
        if let Err(e) = write_atomic(&self.epochs_file, text.as_bytes()) {
            self.log.warn(&format!(
                "Cannot record the node groups' epochs in {}: {e}",
                self.epochs_file.display()
            ));
        }
        epoch
    }

    /// A data node that was STARTED when its transporter (re)connected, holding `epoch`.
    /// If its group went on without it (it has members, which took writes this node does
    /// not have), it must catch up first: a node restart, which copies from a started
    /// member. Otherwise (this management server restarted) it waits for the group's other
    /// started nodes, so that one node back first does not take writes alone while an
    /// equally current peer is about to come back. Returns the group when its wait starts.
    fn started_back(&self, st: &mut State, node: u32, epoch: u64) -> Option<u32> {
        let g = st.config.nodes.get(&node).and_then(|d| d.node_group)?;
        if !members(st, g).is_empty() {
            self.catch_up(st, node, g);
            return None;
        }
        let first = !st.rejoin.contains_key(&g);
        st.rejoin
            .entry(g)
            .or_insert_with(|| Rejoin {
                since: Instant::now(),
                epochs: BTreeMap::new(),
            })
            .epochs
            .insert(node, epoch);
        self.log.info(&format!(
            "Node {node}: Started node back in node group {g} (epoch {epoch})"
        ));
        self.check_rejoin(st, Some(g));
        (first && st.rejoin.contains_key(&g)).then_some(g)
    }

    /// Admits the started nodes back in a waiting node group once every active node of the
    /// group is connected, or once the wait is over if one of them holds the group's last
    /// epoch: those with the newest epoch become members (a new epoch), the others catch
    /// up. `None`: every waiting group.
    fn check_rejoin(&self, st: &mut State, group: Option<u32>) {
        let groups: Vec<u32> = match group {
            Some(g) => vec![g],
            None => st.rejoin.keys().copied().collect(),
        };
        for g in groups {
            let Some(r) = st.rejoin.get(&g) else { continue };
            let Some(newest) = r.epochs.values().max().copied() else {
                st.rejoin.remove(&g);
                continue;
            };
            let all_back = st
                .config
                .data_nodes()
                .filter(|d| d.node_group == Some(g) && d.active)
                .all(|d| st.nodes.get(&d.id).is_some_and(|n| n.conn.is_some()));
            // Without a node holding the group's last epoch, the writes it took may be on
            // a node not back yet: wait for it (or for every node).
            let current = st.last_epochs.get(&g).is_none_or(|last| newest >= *last);
            if !(all_back || (current && r.since.elapsed() >= rejoin_timeout())) {
                continue;
            }
            let Some(r) = st.rejoin.remove(&g) else {
                continue;
            };
            let mut admitted = Vec::new();
            for (id, e) in r.epochs {
                if e == newest {
                    if let Some(n) = st.nodes.get_mut(&id) {
                        n.member = true;
                    }
                    admitted.push(id.to_string());
                } else {
                    self.catch_up(st, id, g);
                }
            }
            let epoch = self.new_epoch(st, g);
            self.log.info(&format!(
                "Node group {g}: node(s) {} members again (epoch {epoch})",
                admitted.join(", ")
            ));
            push_membership(st);
        }
    }

    /// `node` missed writes of its group: it is no member, serves no read, and does a node
    /// restart (its angel starts it again), copying from a started member in phase 4, as
    /// RonDB's nodes must after they lost contact with their group.
    fn catch_up(&self, st: &mut State, node: u32, group: u32) {
        let Some(n) = st.nodes.get_mut(&node) else {
            return;
        };
        n.member = false;
        if let Some(c) = n.conn.as_mut() {
            c.status = DataStatus::ShuttingDown;
            let _ = c.tx.send(FromMgmd::Stop {
                restart: true,
                initial: false,
                nostart: false,
            });
        }
        self.log.alert(&format!(
            "Node {node}: Node group {group} went on without node {node}; node restart to catch up"
        ));
        push_membership(st);
    }
}

/// Data nodes that take the writes of `group`.
fn members(st: &State, group: u32) -> Vec<u32> {
    st.config
        .data_nodes()
        .filter(|d| d.node_group == Some(group))
        .filter(|d| {
            st.nodes
                .get(&d.id)
                .is_some_and(|n| n.member && n.conn.is_some())
        })
        .map(|d| d.id)
        .collect()
}

fn membership(st: &State) -> Membership {
    let mut m = Membership::default();
    for g in st.config.node_groups() {
        let members = members(st, g)
            .into_iter()
            .filter_map(|id| {
                let c = st.nodes.get(&id)?.conn.as_ref()?;
                Some(Member {
                    node: id,
                    addr: format!("{}:{}", c.address, c.server_port),
                    started: c.status == DataStatus::Started,
                })
            })
            .collect();
        m.groups.insert(
            g,
            GroupView {
                epoch: st.epochs.get(&g).copied().unwrap_or(0),
                members,
            },
        );
    }
    m
}

fn push_membership(st: &State) {
    let m = membership(st);
    for n in st.nodes.values() {
        if let Some(c) = n.conn.as_ref().filter(|c| !c.is_data) {
            let _ = c.tx.send(FromMgmd::Membership(m.clone()));
        }
    }
}

/// A group's first epoch under this management server: the time in milliseconds, so epochs
/// never repeat across management-server restarts (a node or API node still holding an
/// epoch of the previous one never matches a new one by chance).
fn first_epoch() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(1)
}

fn unix_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn reply(head: &str, args: &[(&str, &str)]) -> String {
    let mut m = Message::new(head);
    for (k, v) in args {
        m = m.arg(k, v);
    }
    m.encode()
}

/// The argument rules of RonDB's command table for the commands that take arguments:
/// mandatory ones, optional ones; anything else is `Unknown argument`.
fn check_args(cmd: &str, msg: &Message) -> Option<String> {
    let (mandatory, optional): (&[&str], &[&str]) = match cmd {
        "get nodeid" => (
            &["version", "nodetype", "user", "password", "public key"],
            &[
                "nodeid",
                "endian",
                "name",
                "timeout",
                "log_event",
                "transporter",
            ],
        ),
        "stop" => (&["node", "abort"], &[]),
        "stop v2" => (&["node", "abort"], &["force"]),
        "stop all" => (&["abort"], &["stop"]),
        "restart node" | "restart node v2" => {
            (&["node"], &["initialstart", "nostart", "abort", "force"])
        }
        "start" => (&["node"], &[]),
        "start backup" => (
            &[],
            &[
                "completed",
                "backupid",
                "backuppoint",
                "encryption_password",
                "password_length",
            ],
        ),
        "abort backup" => (&["id"], &[]),
        "activate" | "deactivate" => (&["node"], &[]),
        "set_hostname" => (&["node", "new_hostname"], &[]),
        "get config" | "get config_v2" => (&["version"], &["node", "nodetype", "from_node"]),
        "set config" | "set config_v2" => (
            &[
                "Content-Length",
                "Content-Type",
                "Content-Transfer-Encoding",
            ],
            &[],
        ),
        "set clientversion" => (&["major", "minor", "build"], &[]),
        "get status" => (&[], &["types"]),
        _ => return None,
    };
    let mut seen = BTreeSet::new();
    for (k, _) in &msg.args {
        if !mandatory.contains(&k.as_str()) && !optional.contains(&k.as_str()) {
            return Some(format!("result: Unknown argument, '{k}'\n\n"));
        }
        if !seen.insert(k.as_str()) {
            return Some(format!("result: Argument given twice, '{k}'\n\n"));
        }
    }
    for m in mandatory {
        if !seen.contains(m) {
            return Some(format!("result: Missing arg., '{m}'\n\n"));
        }
    }
    None
}

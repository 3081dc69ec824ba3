//! `mysqld`: RonDB's MySQL server as a control plane sees it. It reads MySQL's option files
//! and command line, initialises a data directory (`--initialize-insecure`), joins the cluster
//! as one API node per pooled connection, and only then listens and says "ready for
//! connections". It speaks the MySQL client/server protocol (text protocol, `root` without a
//! password) for the SQL subset of `sql.rs`; rows live on the data nodes only, reached through
//! `ApiNode`, so a node group without a started data node fails statements with 4009 as
//! RonDB does. The protocol is written out here rather than taken from a server crate so that
//! handshake, auth failure (1045) and error packets carry exactly MySQL's codes and texts.

use crate::cli::{self, flag, value, Opt};
use crate::cluster::{ApiNode, ClusterError};
use crate::mgm::ConnectString;
use crate::sql::{self, Expr, Literal, SelectColumn, SqlError, Statement, TableName};
use crate::version::{Version, MYSQL_VERSION};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};

const OPTIONS: &[Opt] = &[
    value("defaults-file", None),
    value("defaults-extra-file", None),
    value("datadir", Some('h')),
    value("basedir", Some('b')),
    value("port", Some('P')),
    value("bind-address", None),
    value("socket", Some('S')),
    value("user", Some('u')),
    value("server-id", None),
    value("pid-file", None),
    value("log-error", None),
    value("ndb-connectstring", None),
    value("ndb-nodeid", None),
    value("ndb-cluster-connection-pool", None),
    value("ndb-cluster-connection-pool-nodeids", None),
    value("ndb-wait-setup", None),
    value("ndb-wait-connected", None),
    flag("ndbcluster", None),
    flag("initialize-insecure", None),
    flag("console", None),
    flag("name-resolve", None),
    flag("version", Some('V')),
];

/// Option groups of an option file that `mysqld` reads.
const GROUPS: &[&str] = &["mysqld", "server", "mysqld-8.0"];

/// Databases every MySQL server has; they hold no NDB tables in the stand-in.
const SYSTEM_DATABASES: &[&str] = &["information_schema", "mysql", "performance_schema", "sys"];

/// What `--initialize-insecure` leaves in the data directory (MySQL's data dictionary file).
const INIT_MARKER: &str = "mysql.ibd";

/// MySQL 8's error-log line: `2026-11-28T17:55:01.000000Z 0 [System] [MY-010931] [Server] ..`.
fn log(level: &str, code: u32, subsystem: &str, text: &str) {
    let ts = crate::logging::timestamp().replace(' ', "T");
    eprintln!("{ts}.000000Z 0 [{level}] [MY-{code:06}] [{subsystem}] {text}");
}

fn program_path() -> String {
    std::env::args()
        .next()
        .unwrap_or_else(|| "mysqld".to_string())
}

/// Reads the `[mysqld]` groups of an option file as `--name=value` arguments.
fn read_option_file(path: &Path) -> std::io::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)?;
    let mut args = Vec::new();
    let mut in_group = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(group) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_group = GROUPS.iter().any(|g| g.eq_ignore_ascii_case(group.trim()));
            continue;
        }
        if !in_group || line.starts_with('!') {
            continue;
        }
        match line.split_once('=') {
            Some((k, v)) => {
                let v = v.trim();
                let v = v
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                    .unwrap_or(v);
                args.push(format!("--{}={v}", k.trim()));
            }
            None => args.push(format!("--{line}")),
        }
    }
    Ok(args)
}

/// The option file named by `--defaults-file` / `--defaults-extra-file` anywhere in `args`.
fn option_file_args(args: &[String], name: &str) -> Option<String> {
    let long = format!("--{name}");
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if let Some(v) = a.strip_prefix(&format!("{long}=")) {
            return Some(v.to_string());
        }
        if *a == long {
            return it.next().cloned();
        }
    }
    None
}

/// Everything `mysqld` needs from its options.
#[derive(Debug, Clone)]
pub struct Settings {
    pub datadir: PathBuf,
    pub port: u16,
    pub bind_address: String,
    pub socket: String,
    pub server_id: u32,
    pub basedir: PathBuf,
    pub ndbcluster: bool,
    pub connectstring: Option<String>,
    /// One entry per pooled cluster connection (`None`: any free API slot).
    pub node_ids: Vec<Option<u32>>,
    pub initialize: bool,
    pub print_version: bool,
}

/// A startup failure: the lines MySQL prints for it.
#[derive(Debug)]
pub struct StartError(pub Vec<String>);

/// Parses option files and the command line (the command line wins) into settings.
pub fn settings(args: &[String]) -> Result<Settings, StartError> {
    let mut file_args = Vec::new();
    for name in ["defaults-file", "defaults-extra-file"] {
        if let Some(f) = option_file_args(args, name) {
            match read_option_file(Path::new(&f)) {
                Ok(a) => file_args.extend(a),
                Err(_) => {
                    return Err(StartError(vec![
                        format!("mysqld: [ERROR] Could not open required defaults file: {f}"),
                        "mysqld: [ERROR] Fatal error in defaults handling. Program aborted!"
                            .to_string(),
                    ]))
                }
            }
        }
    }
    if let Err(e) = cli::parse(&file_args, OPTIONS) {
        let text = match e {
            cli::CliError::Unknown(a) => {
                format!("unknown variable '{}'", a.trim_start_matches('-'))
            }
            other => other.to_string(),
        };
        return Err(StartError(vec![format!("mysqld: [ERROR] {text}.")]));
    }
    let mut all = file_args;
    all.extend(args.iter().cloned());
    let p =
        cli::parse(&all, OPTIONS).map_err(|e| StartError(vec![format!("mysqld: [ERROR] {e}.")]))?;
    if let Some(extra) = p.positional.first() {
        return Err(StartError(vec![format!(
            "mysqld: [ERROR] Too many arguments (first extra is '{extra}')."
        )]));
    }
    let num = |name: &str| {
        p.number::<u32>(name)
            .map_err(|e| StartError(vec![format!("mysqld: [ERROR] {e}.")]))
    };
    let basedir = p.value("basedir").map(PathBuf::from).unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|e| e.parent()?.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("."))
    });
    let datadir = p
        .value("datadir")
        .map(PathBuf::from)
        .unwrap_or_else(|| basedir.join("data"));
    let port = match num("port")? {
        None => 3306,
        Some(n) => u16::try_from(n)
            .map_err(|_| StartError(vec![format!("mysqld: [ERROR] port {n} out of range.")]))?,
    };
    let pool = num("ndb-cluster-connection-pool")?.unwrap_or(1).max(1) as usize;
    let mut node_ids: Vec<Option<u32>> = match p.value("ndb-cluster-connection-pool-nodeids") {
        Some(list) => list
            .split([',', ' '])
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.trim().parse::<u32>().map(Some).map_err(|_| {
                    StartError(vec![format!(
                        "mysqld: [ERROR] Invalid node id '{s}' in \
                         --ndb-cluster-connection-pool-nodeids."
                    )])
                })
            })
            .collect::<Result<_, _>>()?,
        None => match num("ndb-nodeid")? {
            Some(id) => vec![Some(id)],
            None => Vec::new(),
        },
    };
    if node_ids.is_empty() {
        node_ids = vec![None; pool];
    } else if p.value("ndb-cluster-connection-pool").is_some() && node_ids.len() != pool {
        return Err(StartError(vec![format!(
            "mysqld: [ERROR] --ndb-cluster-connection-pool-nodeids lists {} node ids but \
             --ndb-cluster-connection-pool is {pool}.",
            node_ids.len()
        )]));
    }
    Ok(Settings {
        datadir,
        port,
        bind_address: p.value("bind-address").unwrap_or("*").to_string(),
        socket: p.value("socket").unwrap_or("/tmp/mysql.sock").to_string(),
        server_id: num("server-id")?.unwrap_or(1),
        basedir,
        ndbcluster: p.flag("ndbcluster"),
        connectstring: p.value("ndb-connectstring").map(str::to_string),
        node_ids,
        initialize: p.flag("initialize-insecure"),
        print_version: p.flag("version"),
    })
}

/// `--initialize-insecure`: what MySQL leaves in a new data directory, with `root@localhost`
/// and no password. A directory that has files is refused, as MySQL refuses it.
pub fn initialize(datadir: &Path) -> Result<(), StartError> {
    let unusable = |why: String| {
        StartError(vec![
            why,
            format!(
                "[ERROR] [MY-013236] [Server] The designated data directory {}/ is unusable. \
                 You can remove all files that the server added to it.",
                datadir.display()
            ),
        ])
    };
    if let Ok(mut entries) = std::fs::read_dir(datadir) {
        if entries.next().is_some() {
            return Err(unusable(
                "[ERROR] [MY-010457] [Server] --initialize specified but the data directory \
                 has files in it. Aborting."
                    .to_string(),
            ));
        }
    }
    let create = || -> std::io::Result<()> {
        std::fs::create_dir_all(datadir.join("mysql"))?;
        std::fs::create_dir_all(datadir.join("performance_schema"))?;
        std::fs::create_dir_all(datadir.join("sys"))?;
        let uuid = format!(
            "{:016x}",
            crate::transporter::mix(std::process::id() as u64 ^ now_nanos())
        );
        std::fs::write(
            datadir.join("auto.cnf"),
            format!("[auto]\nserver-uuid={}-standin\n", uuid),
        )?;
        std::fs::write(
            datadir.join(INIT_MARKER),
            b"RonDB stand-in data dictionary\n",
        )
    };
    create().map_err(|e| {
        unusable(format!(
            "[ERROR] [MY-010187] [Server] Could not initialize data directory {}: {e}",
            datadir.display()
        ))
    })
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn initialized(datadir: &Path) -> bool {
    datadir.join(INIT_MARKER).is_file() && datadir.join("mysql").is_dir()
}

pub async fn main(args: Vec<String>) -> i32 {
    let s = match settings(&args) {
        Ok(s) => s,
        Err(StartError(lines)) => {
            for l in lines {
                eprintln!("{l}");
            }
            return 1;
        }
    };
    let version = Version::current();
    if s.print_version {
        println!(
            "{}  Ver {MYSQL_VERSION} for Linux on x86_64 (RonDB-{version})",
            program_path()
        );
        return 0;
    }
    let me = program_path();
    if s.initialize {
        log(
            "System",
            13169,
            "Server",
            &format!(
                "{me} (mysqld {MYSQL_VERSION}) initializing of server in progress as process {}",
                std::process::id()
            ),
        );
        return match initialize(&s.datadir) {
            Ok(()) => {
                log(
                    "Warning",
                    10453,
                    "Server",
                    "root@localhost is created with an empty password ! Please consider \
                     switching off the --initialize-insecure option.",
                );
                log(
                    "System",
                    13170,
                    "Server",
                    &format!("{me} (mysqld {MYSQL_VERSION}) initializing of server has completed"),
                );
                0
            }
            Err(StartError(lines)) => {
                for l in lines {
                    let (level_code, text) = split_logged(&l);
                    log("ERROR", level_code, "Server", text);
                }
                log("ERROR", 10119, "Server", "Aborting");
                1
            }
        };
    }
    log(
        "System",
        10116,
        "Server",
        &format!(
            "{me} (mysqld {MYSQL_VERSION}) starting as process {}",
            std::process::id()
        ),
    );
    if !initialized(&s.datadir) {
        if !s.datadir.is_dir() {
            log(
                "ERROR",
                10172,
                "Server",
                &format!(
                    "failed to set datadir to '{}/' (OS errno: 2 - No such file or directory)",
                    s.datadir.display()
                ),
            );
        } else {
            log(
                "ERROR",
                11011,
                "Server",
                "Failed to find valid data directory.",
            );
            log(
                "ERROR",
                10020,
                "Server",
                "Data Dictionary initialization failed.",
            );
        }
        log("ERROR", 10119, "Server", "Aborting");
        log(
            "System",
            10910,
            "Server",
            &format!("{me}: Shutdown complete (mysqld {MYSQL_VERSION})  RonDB-{version}."),
        );
        return 1;
    }
    let mut term = match signal(SignalKind::terminate()) {
        Ok(t) => t,
        Err(e) => {
            log(
                "ERROR",
                10119,
                "Server",
                &format!("cannot handle SIGTERM: {e}"),
            );
            return 1;
        }
    };
    let mut int = match signal(SignalKind::interrupt()) {
        Ok(t) => t,
        Err(e) => {
            log(
                "ERROR",
                10119,
                "Server",
                &format!("cannot handle SIGINT: {e}"),
            );
            return 1;
        }
    };
    let shutdown = async {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    tokio::pin!(shutdown);
    let joined = tokio::select! {
        r = join_cluster(&s) => r,
        _ = &mut shutdown => {
            stopped(&me, version);
            return 0;
        }
    };
    let nodes = match joined {
        Ok(n) => n,
        Err(text) => {
            log("ERROR", 10119, "NDB", &text);
            log("ERROR", 10119, "Server", "Aborting");
            return 1;
        }
    };
    let bind = if s.bind_address == "*" || s.bind_address.is_empty() {
        "0.0.0.0".to_string()
    } else {
        s.bind_address.clone()
    };
    let listener = match TcpListener::bind((bind.as_str(), s.port)).await {
        Ok(l) => l,
        Err(e) => {
            log(
                "ERROR",
                10262,
                "Server",
                &format!("Can't start server: Bind on TCP/IP port: {e}"),
            );
            log(
                "ERROR",
                10257,
                "Server",
                &format!(
                    "Do you already have another mysqld server running on port: {} ?",
                    s.port
                ),
            );
            log("ERROR", 10119, "Server", "Aborting");
            return 1;
        }
    };
    let server = Arc::new(Server {
        nodes,
        next: AtomicUsize::new(0),
        conn_ids: AtomicU32::new(8),
        version,
        settings: s.clone(),
    });
    log(
        "System",
        10931,
        "Server",
        &format!(
            "{me}: ready for connections. Version: '{MYSQL_VERSION}'  socket: '{}'  port: {}  \
             RonDB-{version}.",
            s.socket, s.port
        ),
    );
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, peer)) = accepted {
                    let server = server.clone();
                    tokio::spawn(async move {
                        let _ = server.serve(stream, peer.ip().to_string()).await;
                    });
                }
            }
            _ = &mut shutdown => break,
        }
    }
    log(
        "System",
        13172,
        "Server",
        &format!(
            "Received SHUTDOWN from user <via user signal>. Shutting down mysqld (Version: \
             {MYSQL_VERSION})."
        ),
    );
    stopped(&me, version);
    0
}

fn stopped(me: &str, version: Version) {
    log(
        "System",
        10910,
        "Server",
        &format!("{me}: Shutdown complete (mysqld {MYSQL_VERSION})  RonDB-{version}."),
    );
}

/// `[ERROR] [MY-010457] [Server] text` → (10457, text).
fn split_logged(line: &str) -> (u32, &str) {
    let code = line
        .split("[MY-")
        .nth(1)
        .and_then(|r| r.get(..6))
        .and_then(|c| c.parse().ok())
        .unwrap_or(10119);
    let text = line.rsplit("] ").next().unwrap_or(line);
    (code, text)
}

/// One API node per pooled connection, retried while the management server refuses (data
/// nodes not started, slot taken), then waits until every node group has a started node.
async fn join_cluster(s: &Settings) -> Result<Vec<Arc<ApiNode>>, String> {
    if !s.ndbcluster {
        log(
            "Warning",
            10068,
            "Server",
            "ndbcluster is disabled (no --ndbcluster): NDB tables are not available",
        );
        return Ok(Vec::new());
    }
    let cs_text = s
        .connectstring
        .clone()
        .unwrap_or_else(|| "localhost:1186".to_string());
    let cs = ConnectString::parse(&cs_text).map_err(|e| e.to_string())?;
    let mut nodes = Vec::new();
    for (i, id) in s.node_ids.iter().enumerate() {
        let mut delay = Duration::from_millis(100);
        let mut last = String::new();
        let node = loop {
            match ApiNode::connect(&cs, *id, "mysqld").await {
                Ok(n) => break n,
                Err(e) => {
                    let why = e.to_string();
                    if why != last {
                        log(
                            "Warning",
                            10877,
                            "NDB",
                            &format!(
                                "connection[{i}]: cannot connect to the cluster at \
                                 '{cs_text}': {why}; retrying"
                            ),
                        );
                        last = why;
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        };
        log(
            "System",
            10866,
            "NDB",
            &format!(
                "connection[{i}], NodeID: {}, connected to management server '{cs_text}'",
                node.node_id()
            ),
        );
        nodes.push(Arc::new(node));
    }
    for (i, n) in nodes.iter().enumerate() {
        loop {
            match n.wait_ready(Duration::from_secs(30)).await {
                Ok(()) => break,
                Err(_) => log(
                    "Warning",
                    10878,
                    "NDB",
                    &format!(
                        "connection[{i}], NodeID: {}: waiting for a started data node in \
                         every node group",
                        n.node_id()
                    ),
                ),
            }
        }
        log(
            "System",
            10493,
            "NDB",
            &format!(
                "connection[{i}], NodeID: {}, all storage nodes connected",
                n.node_id()
            ),
        );
    }
    Ok(nodes)
}

struct Server {
    nodes: Vec<Arc<ApiNode>>,
    next: AtomicUsize,
    conn_ids: AtomicU32,
    version: Version,
    settings: Settings,
}

// Capability flags of the client/server protocol.
const CLIENT_LONG_PASSWORD: u32 = 0x1;
const CLIENT_FOUND_ROWS: u32 = 0x2;
const CLIENT_LONG_FLAG: u32 = 0x4;
const CLIENT_CONNECT_WITH_DB: u32 = 0x8;
const CLIENT_PROTOCOL_41: u32 = 0x200;
const CLIENT_INTERACTIVE: u32 = 0x400;
const CLIENT_SSL: u32 = 0x800;
const CLIENT_TRANSACTIONS: u32 = 0x2000;
const CLIENT_SECURE_CONNECTION: u32 = 0x8000;
const CLIENT_MULTI_RESULTS: u32 = 0x20000;
const CLIENT_PLUGIN_AUTH: u32 = 0x80000;
const CLIENT_CONNECT_ATTRS: u32 = 0x100000;
const CLIENT_PLUGIN_AUTH_LENENC: u32 = 0x200000;

const SERVER_CAPABILITIES: u32 = CLIENT_LONG_PASSWORD
    | CLIENT_FOUND_ROWS
    | CLIENT_LONG_FLAG
    | CLIENT_CONNECT_WITH_DB
    | CLIENT_PROTOCOL_41
    | CLIENT_INTERACTIVE
    | CLIENT_TRANSACTIONS
    | CLIENT_SECURE_CONNECTION
    | CLIENT_MULTI_RESULTS
    | CLIENT_PLUGIN_AUTH
    | CLIENT_CONNECT_ATTRS
    | CLIENT_PLUGIN_AUTH_LENENC;

/// `SERVER_STATUS_AUTOCOMMIT`.
const STATUS_AUTOCOMMIT: u16 = 0x2;
/// `max_allowed_packet` (MySQL 8's default).
const MAX_PACKET: usize = 64 * 1024 * 1024;

const TYPE_LONGLONG: u8 = 0x08;
const TYPE_VAR_STRING: u8 = 0xfd;

/// A result value of the text protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Val {
    Int(i64),
    Str(String),
    Null,
}

impl Val {
    fn text(&self) -> Option<String> {
        match self {
            Val::Int(i) => Some(i.to_string()),
            Val::Str(s) => Some(s.clone()),
            Val::Null => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnDef {
    pub name: String,
    pub db: String,
    pub table: String,
    pub int: bool,
}

impl ColumnDef {
    fn expr(name: &str, int: bool) -> ColumnDef {
        ColumnDef {
            name: name.to_string(),
            db: String::new(),
            table: String::new(),
            int,
        }
    }
}

/// What a statement returns to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Ok {
        affected: u64,
        warnings: u16,
    },
    Rows {
        columns: Vec<ColumnDef>,
        rows: Vec<Vec<Val>>,
    },
}

fn ok(affected: u64) -> Result<Reply, SqlError> {
    Ok(Reply::Ok {
        affected,
        warnings: 0,
    })
}

/// How MySQL reports what the API node said.
fn cluster_error(e: ClusterError) -> SqlError {
    match e {
        ClusterError::ClusterFailure | ClusterError::Mgm(_) | ClusterError::NodeId(_) => {
            SqlError::ndb_temporary(crate::cluster::CLUSTER_FAILURE, "Cluster Failure")
        }
        ClusterError::TableExists(t) => SqlError::table_exists(&t),
        ClusterError::NoSuchTable(t) => SqlError::no_such_table(&t),
        ClusterError::DatabaseExists(d) => SqlError::database_exists(&d),
        ClusterError::NoSuchDatabase(d) => SqlError::unknown_database(&d),
        ClusterError::DataNode { code, text } => SqlError::ndb_error(code, &text),
    }
}

fn is_system_db(db: &str) -> bool {
    SYSTEM_DATABASES.iter().any(|s| s.eq_ignore_ascii_case(db))
}

/// One client connection's state.
pub struct Session {
    pub db: Option<String>,
    node: Option<Arc<ApiNode>>,
}

impl Server {
    fn node(&self, session: &Session) -> Result<Arc<ApiNode>, SqlError> {
        session
            .node
            .clone()
            .ok_or_else(|| SqlError::unknown_engine("ndbcluster"))
    }

    fn variable(&self, name: &str, session: &Session) -> Result<Val, SqlError> {
        let s = &self.settings;
        let v = match name {
            "version" => Val::Str(MYSQL_VERSION.to_string()),
            "version_comment" | "ndb_version_string" => Val::Str(format!("RonDB-{}", self.version)),
            "ndb_version" => Val::Int(i64::from(self.version.packed())),
            "max_allowed_packet" => Val::Int(MAX_PACKET as i64),
            "wait_timeout" | "interactive_timeout" => Val::Int(28800),
            "net_write_timeout" => Val::Int(60),
            "port" => Val::Int(i64::from(s.port)),
            "socket" => Val::Str(s.socket.clone()),
            "bind_address" => Val::Str(s.bind_address.clone()),
            "datadir" => Val::Str(format!("{}/", s.datadir.display())),
            "basedir" => Val::Str(format!("{}/", s.basedir.display())),
            "server_id" => Val::Int(i64::from(s.server_id)),
            "hostname" => Val::Str(
                std::fs::read_to_string("/etc/hostname")
                    .map(|h| h.trim().to_string())
                    .unwrap_or_else(|_| "localhost".into()),
            ),
            "autocommit" => Val::Int(1),
            "read_only" | "super_read_only" | "lower_case_table_names" => Val::Int(0),
            "character_set_client"
            | "character_set_connection"
            | "character_set_results"
            | "character_set_server"
            | "character_set_database" => Val::Str("utf8mb4".into()),
            "collation_connection" | "collation_server" | "collation_database" => {
                Val::Str("utf8mb4_0900_ai_ci".into())
            }
            "sql_mode" => Val::Str(
                "ONLY_FULL_GROUP_BY,STRICT_TRANS_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,\
                 ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION"
                    .into(),
            ),
            "time_zone" => Val::Str("SYSTEM".into()),
            "system_time_zone" => Val::Str("UTC".into()),
            "transaction_isolation" | "tx_isolation" => Val::Str("READ-COMMITTED".into()),
            "license" => Val::Str("GPL".into()),
            "version_compile_os" => Val::Str("Linux".into()),
            "version_compile_machine" => Val::Str("x86_64".into()),
            "have_ndbcluster" => Val::Str(if s.ndbcluster { "YES" } else { "NO" }.into()),
            "ndb_connectstring" => match &s.connectstring {
                Some(c) => Val::Str(c.clone()),
                None => Val::Null,
            },
            "default_storage_engine" => Val::Str("InnoDB".into()),
            "database" => match &session.db {
                Some(d) => Val::Str(d.clone()),
                None => Val::Null,
            },
            other => return Err(SqlError::unknown_variable(other)),
        };
        Ok(v)
    }

    fn db_of(&self, t: &TableName, session: &Session) -> Result<String, SqlError> {
        t.db.clone()
            .or_else(|| session.db.clone())
            .ok_or_else(SqlError::no_database)
    }

    async fn use_db(&self, db: &str, session: &mut Session) -> Result<Reply, SqlError> {
        if !is_system_db(db) {
            let node = self.node(session)?;
            let dbs = node.databases().await.map_err(cluster_error)?;
            if !dbs.iter().any(|d| d == db) {
                return Err(SqlError::unknown_database(db));
            }
        }
        session.db = Some(db.to_string());
        ok(0)
    }

    /// Runs one parsed statement.
    pub async fn execute(&self, st: Statement, session: &mut Session) -> Result<Reply, SqlError> {
        match st {
            Statement::Set => ok(0),
            Statement::SelectExprs(items) => {
                let mut columns = Vec::new();
                let mut row = Vec::new();
                for (e, label) in items {
                    let v = match e {
                        Expr::Literal(Literal::Int(i)) => Val::Int(i),
                        Expr::Literal(Literal::Str(s)) => Val::Str(s),
                        Expr::Literal(Literal::Null) => Val::Null,
                        Expr::Version => Val::Str(MYSQL_VERSION.to_string()),
                        Expr::Database => self.variable("database", session)?,
                        Expr::Variable(name) => self.variable(&name, session)?,
                    };
                    columns.push(ColumnDef::expr(&label, matches!(v, Val::Int(_))));
                    row.push(v);
                }
                Ok(Reply::Rows {
                    columns,
                    rows: vec![row],
                })
            }
            Statement::Use(db) => self.use_db(&db, session).await,
            Statement::ShowDatabases => {
                let node = self.node(session)?;
                let mut dbs: Vec<String> = node.databases().await.map_err(cluster_error)?;
                dbs.extend(SYSTEM_DATABASES.iter().map(|s| s.to_string()));
                dbs.sort();
                dbs.dedup();
                Ok(Reply::Rows {
                    columns: vec![ColumnDef::expr("Database", false)],
                    rows: dbs.into_iter().map(|d| vec![Val::Str(d)]).collect(),
                })
            }
            Statement::ShowTables(db) => {
                let db = db
                    .or_else(|| session.db.clone())
                    .ok_or_else(SqlError::no_database)?;
                let mut tables = if is_system_db(&db) {
                    Vec::new()
                } else {
                    let node = self.node(session)?;
                    node.tables(&db).await.map_err(cluster_error)?
                };
                tables.sort();
                Ok(Reply::Rows {
                    columns: vec![ColumnDef::expr(&format!("Tables_in_{db}"), false)],
                    rows: tables.into_iter().map(|t| vec![Val::Str(t)]).collect(),
                })
            }
            Statement::ShowWarnings => Ok(Reply::Rows {
                columns: vec![
                    ColumnDef::expr("Level", false),
                    ColumnDef::expr("Code", true),
                    ColumnDef::expr("Message", false),
                ],
                rows: Vec::new(),
            }),
            Statement::CreateDatabase {
                name,
                if_not_exists,
            } => {
                let r = if is_system_db(&name) {
                    Err(SqlError::database_exists(&name))
                } else {
                    let node = self.node(session)?;
                    node.create_database(&name).await.map_err(cluster_error)
                };
                match r {
                    Ok(()) => ok(1),
                    Err(e) if e.code == 1007 && if_not_exists => Ok(Reply::Ok {
                        affected: 0,
                        warnings: 1,
                    }),
                    Err(e) => Err(e),
                }
            }
            Statement::CreateTable {
                table,
                if_not_exists,
                key_column,
                value_column,
                value_len,
            } => {
                let db = self.db_of(&table, session)?;
                if is_system_db(&db) {
                    return Err(SqlError::unsupported(
                        "NDB tables in system databases in the RonDB stand-in",
                    ));
                }
                let node = self.node(session)?;
                match node
                    .create_table(&db, &table.name, &key_column, &value_column, value_len)
                    .await
                {
                    Ok(()) => ok(0),
                    Err(ClusterError::TableExists(_)) if if_not_exists => Ok(Reply::Ok {
                        affected: 0,
                        warnings: 1,
                    }),
                    Err(e) => Err(cluster_error(e)),
                }
            }
            Statement::Insert {
                table,
                columns,
                rows,
            } => self.insert(table, columns, rows, session).await,
            Statement::SelectRows {
                table,
                columns,
                filter,
                limit,
            } => self.select(table, columns, filter, limit, session).await,
            Statement::Count(table) => {
                let (db, node) = self.table_target(&table, session)?;
                let n = node.count(&db, &table.name).await.map_err(cluster_error)?;
                Ok(Reply::Rows {
                    columns: vec![ColumnDef::expr("COUNT(*)", true)],
                    rows: vec![vec![Val::Int(n as i64)]],
                })
            }
            Statement::Delete {
                table,
                column,
                value,
            } => {
                let (db, node) = self.table_target(&table, session)?;
                let def = node.table(&db, &table.name).await.map_err(cluster_error)?;
                if !column.eq_ignore_ascii_case(&def.key_column) {
                    return Err(where_error(&column, &def.value_column));
                }
                let Some(key) = key_of(&value) else {
                    return ok(0);
                };
                let existed = node
                    .delete(&db, &table.name, key)
                    .await
                    .map_err(cluster_error)?;
                ok(u64::from(existed))
            }
        }
    }

    /// The database of `table` and the API node to reach it; system databases hold no NDB
    /// tables.
    fn table_target(
        &self,
        table: &TableName,
        session: &Session,
    ) -> Result<(String, Arc<ApiNode>), SqlError> {
        let db = self.db_of(table, session)?;
        if is_system_db(&db) {
            return Err(SqlError::no_such_table(&format!("{db}.{}", table.name)));
        }
        Ok((db, self.node(session)?))
    }

    async fn insert(
        &self,
        table: TableName,
        columns: Option<Vec<String>>,
        rows: Vec<Vec<Literal>>,
        session: &Session,
    ) -> Result<Reply, SqlError> {
        let (db, node) = self.table_target(&table, session)?;
        let def = node.table(&db, &table.name).await.map_err(cluster_error)?;
        // Which position holds the key and the value.
        let names =
            columns.unwrap_or_else(|| vec![def.key_column.clone(), def.value_column.clone()]);
        let mut key_at = None;
        let mut value_at = None;
        for (i, n) in names.iter().enumerate() {
            let slot = if n.eq_ignore_ascii_case(&def.key_column) {
                &mut key_at
            } else if n.eq_ignore_ascii_case(&def.value_column) {
                &mut value_at
            } else {
                return Err(SqlError::unknown_column(n, "field list"));
            };
            if slot.replace(i).is_some() {
                return Err(SqlError::new(
                    1110,
                    "42000",
                    format!("Column '{n}' specified twice"),
                ));
            }
        }
        let Some(key_at) = key_at else {
            return Err(SqlError::new(
                1364,
                "HY000",
                format!("Field '{}' doesn't have a default value", def.key_column),
            ));
        };
        let mut out = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            let n = i + 1;
            if row.len() != names.len() {
                return Err(SqlError::column_count(n));
            }
            let key = match &row[key_at] {
                Literal::Int(k) => *k,
                Literal::Str(s) => s
                    .trim()
                    .parse()
                    .map_err(|_| SqlError::bad_integer(&def.key_column, s, n))?,
                Literal::Null => return Err(SqlError::not_null(&def.key_column)),
            };
            let value = match value_at.map(|at| &row[at]) {
                None | Some(Literal::Null) => None,
                Some(Literal::Int(v)) => Some(v.to_string()),
                Some(Literal::Str(s)) => Some(s.clone()),
            };
            if let Some(v) = &value {
                if v.chars().count() > def.value_len as usize {
                    return Err(SqlError::too_long(&def.value_column, n));
                }
            }
            out.push((key, value));
        }
        let written = node
            .put(&db, &table.name, out)
            .await
            .map_err(cluster_error)?;
        ok(written)
    }

    async fn select(
        &self,
        table: TableName,
        columns: Vec<SelectColumn>,
        filter: Option<(String, Literal)>,
        limit: Option<u64>,
        session: &Session,
    ) -> Result<Reply, SqlError> {
        let (db, node) = self.table_target(&table, session)?;
        let def = node.table(&db, &table.name).await.map_err(cluster_error)?;
        // (is the key, label)
        let mut picks: Vec<(bool, String)> = Vec::new();
        for c in columns {
            match c {
                SelectColumn::Star => {
                    picks.push((true, def.key_column.clone()));
                    picks.push((false, def.value_column.clone()));
                }
                SelectColumn::Named(n) if n.eq_ignore_ascii_case(&def.key_column) => {
                    picks.push((true, n))
                }
                SelectColumn::Named(n) if n.eq_ignore_ascii_case(&def.value_column) => {
                    picks.push((false, n))
                }
                SelectColumn::Named(n) => return Err(SqlError::unknown_column(&n, "field list")),
            }
        }
        let rows = match filter {
            Some((col, value)) => {
                if !col.eq_ignore_ascii_case(&def.key_column) {
                    return Err(where_error(&col, &def.value_column));
                }
                match key_of(&value) {
                    None => Vec::new(),
                    Some(k) => match node.get(&db, &table.name, k).await.map_err(cluster_error)? {
                        Some(v) => vec![(k, v)],
                        None => Vec::new(),
                    },
                }
            }
            None => node.scan(&db, &table.name).await.map_err(cluster_error)?,
        };
        let limit = limit.map(|l| l as usize).unwrap_or(usize::MAX);
        let out = rows
            .into_iter()
            .take(limit)
            .map(|(k, v)| {
                picks
                    .iter()
                    .map(|(is_key, _)| {
                        if *is_key {
                            Val::Int(k)
                        } else {
                            v.clone().map(Val::Str).unwrap_or(Val::Null)
                        }
                    })
                    .collect()
            })
            .collect();
        Ok(Reply::Rows {
            columns: picks
                .into_iter()
                .map(|(is_key, name)| ColumnDef {
                    name,
                    db: db.clone(),
                    table: table.name.clone(),
                    int: is_key,
                })
                .collect(),
            rows: out,
        })
    }
}

/// A `WHERE` on anything but the primary key.
fn where_error(column: &str, value_column: &str) -> SqlError {
    if column.eq_ignore_ascii_case(value_column) {
        SqlError::unsupported("WHERE on a non-key column in the RonDB stand-in")
    } else {
        SqlError::unknown_column(column, "where clause")
    }
}

/// The key a `WHERE k = lit` names; `None` when nothing can match (NULL, non-numbers).
fn key_of(v: &Literal) -> Option<i64> {
    match v {
        Literal::Int(k) => Some(*k),
        Literal::Str(s) => s.trim().parse().ok(),
        Literal::Null => None,
    }
}

// ---------------------------------------------------------------------------------------
// Wire protocol.

fn put_lenenc_int(b: &mut Vec<u8>, n: u64) {
    if n < 251 {
        b.push(n as u8);
    } else if n < 1 << 16 {
        b.push(0xfc);
        b.extend_from_slice(&(n as u16).to_le_bytes());
    } else if n < 1 << 24 {
        b.push(0xfd);
        b.extend_from_slice(&(n as u32).to_le_bytes()[..3]);
    } else {
        b.push(0xfe);
        b.extend_from_slice(&n.to_le_bytes());
    }
}

fn put_lenenc_str(b: &mut Vec<u8>, s: &[u8]) {
    put_lenenc_int(b, s.len() as u64);
    b.extend_from_slice(s);
}

/// Frames payloads as packets with consecutive sequence numbers.
struct Out {
    buf: Vec<u8>,
    seq: u8,
}

impl Out {
    fn new(seq: u8) -> Out {
        Out {
            buf: Vec::new(),
            seq,
        }
    }

    fn packet(&mut self, payload: &[u8]) {
        let mut rest = payload;
        loop {
            let n = rest.len().min(0xff_ffff);
            self.buf.extend_from_slice(&(n as u32).to_le_bytes()[..3]);
            self.buf.push(self.seq);
            self.seq = self.seq.wrapping_add(1);
            self.buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            if n < 0xff_ffff {
                break;
            }
        }
    }

    fn ok(&mut self, affected: u64, warnings: u16) {
        let mut p = vec![0x00];
        put_lenenc_int(&mut p, affected);
        put_lenenc_int(&mut p, 0);
        p.extend_from_slice(&STATUS_AUTOCOMMIT.to_le_bytes());
        p.extend_from_slice(&warnings.to_le_bytes());
        self.packet(&p);
    }

    fn eof(&mut self) {
        let mut p = vec![0xfe, 0, 0];
        p.extend_from_slice(&STATUS_AUTOCOMMIT.to_le_bytes());
        self.packet(&p);
    }

    fn err(&mut self, e: &SqlError) {
        let mut p = vec![0xff];
        p.extend_from_slice(&e.code.to_le_bytes());
        p.push(b'#');
        p.extend_from_slice(e.state.as_bytes());
        p.extend_from_slice(e.message.as_bytes());
        self.packet(&p);
    }

    fn reply(&mut self, r: &Reply) {
        match r {
            Reply::Ok { affected, warnings } => self.ok(*affected, *warnings),
            Reply::Rows { columns, rows } => {
                let mut p = Vec::new();
                put_lenenc_int(&mut p, columns.len() as u64);
                self.packet(&p);
                for c in columns {
                    let mut p = Vec::new();
                    put_lenenc_str(&mut p, b"def");
                    put_lenenc_str(&mut p, c.db.as_bytes());
                    put_lenenc_str(&mut p, c.table.as_bytes());
                    put_lenenc_str(&mut p, c.table.as_bytes());
                    put_lenenc_str(&mut p, c.name.as_bytes());
                    put_lenenc_str(&mut p, c.name.as_bytes());
                    p.push(0x0c);
                    let (charset, len, ty, flags): (u16, u32, u8, u16) = if c.int {
                        (63, 20, TYPE_LONGLONG, 0x80 | 0x8000)
                    } else {
                        (255, 1024, TYPE_VAR_STRING, 0)
                    };
                    p.extend_from_slice(&charset.to_le_bytes());
                    p.extend_from_slice(&len.to_le_bytes());
                    p.push(ty);
                    p.extend_from_slice(&flags.to_le_bytes());
                    p.push(0);
                    p.extend_from_slice(&[0, 0]);
                    self.packet(&p);
                }
                self.eof();
                for row in rows {
                    let mut p = Vec::new();
                    for v in row {
                        match v.text() {
                            Some(t) => put_lenenc_str(&mut p, t.as_bytes()),
                            None => p.push(0xfb),
                        }
                    }
                    self.packet(&p);
                }
                self.eof();
            }
        }
    }
}

/// Reads one logical packet (joining 16 MiB continuation packets): (sequence, payload).
async fn read_packet<R: AsyncReadExt + Unpin>(r: &mut R) -> std::io::Result<(u8, Vec<u8>)> {
    let mut payload = Vec::new();
    loop {
        let mut head = [0u8; 4];
        r.read_exact(&mut head).await?;
        let len = u32::from_le_bytes([head[0], head[1], head[2], 0]) as usize;
        if payload.len() + len > MAX_PACKET {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "Got a packet bigger than 'max_allowed_packet' bytes",
            ));
        }
        let start = payload.len();
        payload.resize(start + len, 0);
        r.read_exact(&mut payload[start..]).await?;
        if len < 0xff_ffff {
            return Ok((head[3], payload));
        }
    }
}

/// A cursor over a client packet that never panics on short input.
struct Cursor<'a> {
    b: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.b.len() < n {
            return None;
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Some(h)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn lenenc(&mut self) -> Option<u64> {
        match self.u8()? {
            n @ 0..=250 => Some(u64::from(n)),
            0xfc => self
                .take(2)
                .map(|b| u64::from(u16::from_le_bytes([b[0], b[1]]))),
            0xfd => self
                .take(3)
                .map(|b| u64::from(u32::from_le_bytes([b[0], b[1], b[2], 0]))),
            0xfe => self.take(8).map(|b| {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                u64::from_le_bytes(a)
            }),
            _ => None,
        }
    }

    fn nul_str(&mut self) -> Option<&'a [u8]> {
        let end = self.b.iter().position(|&c| c == 0)?;
        let s = &self.b[..end];
        self.b = &self.b[end + 1..];
        Some(s)
    }
}

/// What the client's HandshakeResponse41 says.
#[derive(Debug, PartialEq, Eq)]
pub struct ClientHello {
    pub capabilities: u32,
    pub user: String,
    pub auth: Vec<u8>,
    pub db: Option<String>,
}

pub fn parse_client_hello(p: &[u8]) -> Option<ClientHello> {
    let mut c = Cursor { b: p };
    let capabilities = c.u32()?;
    if capabilities & CLIENT_PROTOCOL_41 == 0 {
        return None;
    }
    c.take(4 + 1 + 23)?;
    let user = String::from_utf8_lossy(c.nul_str()?).into_owned();
    let auth = if capabilities & CLIENT_PLUGIN_AUTH_LENENC != 0 {
        let n = usize::try_from(c.lenenc()?).ok()?;
        c.take(n)?.to_vec()
    } else if capabilities & CLIENT_SECURE_CONNECTION != 0 {
        let n = c.u8()? as usize;
        c.take(n)?.to_vec()
    } else {
        c.nul_str()?.to_vec()
    };
    let db = if capabilities & CLIENT_CONNECT_WITH_DB != 0 {
        c.nul_str()
            .map(|d| String::from_utf8_lossy(d).into_owned())
            .filter(|d| !d.is_empty())
    } else {
        None
    };
    Some(ClientHello {
        capabilities,
        user,
        auth,
        db,
    })
}

impl Server {
    fn handshake(&self, conn_id: u32, scramble: &[u8; 20]) -> Vec<u8> {
        let mut p = vec![10];
        p.extend_from_slice(MYSQL_VERSION.to_string().as_bytes());
        p.push(0);
        p.extend_from_slice(&conn_id.to_le_bytes());
        p.extend_from_slice(&scramble[..8]);
        p.push(0);
        p.extend_from_slice(&(SERVER_CAPABILITIES as u16).to_le_bytes());
        p.push(255); // utf8mb4_0900_ai_ci
        p.extend_from_slice(&STATUS_AUTOCOMMIT.to_le_bytes());
        p.extend_from_slice(&((SERVER_CAPABILITIES >> 16) as u16).to_le_bytes());
        p.push(21);
        p.extend_from_slice(&[0; 10]);
        p.extend_from_slice(&scramble[8..]);
        p.push(0);
        p.extend_from_slice(b"mysql_native_password\0");
        p
    }

    async fn serve(self: Arc<Self>, stream: TcpStream, host: String) -> std::io::Result<()> {
        let _ = stream.set_nodelay(true);
        let (r, w) = stream.into_split();
        let mut r = BufReader::new(r);
        let mut w = BufWriter::new(w);
        let conn_id = self.conn_ids.fetch_add(1, Ordering::Relaxed);
        let mut scramble = [0u8; 20];
        let mut x = crate::transporter::mix(now_nanos() ^ u64::from(conn_id));
        for b in scramble.iter_mut() {
            x = crate::transporter::mix(x);
            *b = 0x21 + (x % 0x5e) as u8; // printable, never NUL or '$'-free concerns
        }
        let mut out = Out::new(0);
        out.packet(&self.handshake(conn_id, &scramble));
        w.write_all(&out.buf).await?;
        w.flush().await?;

        let (seq, p) = read_packet(&mut r).await?;
        let mut out = Out::new(seq.wrapping_add(1));
        let Some(hello) = parse_client_hello(&p) else {
            let ssl =
                p.len() >= 4 && u32::from_le_bytes([p[0], p[1], p[2], p[3]]) & CLIENT_SSL != 0;
            let text = if ssl {
                "SSL connection error: SSL is not enabled on the server"
            } else {
                "Bad handshake"
            };
            out.err(&SqlError::new(1043, "08S01", text));
            w.write_all(&out.buf).await?;
            return w.flush().await;
        };
        // root with an empty password, as `--initialize-insecure` leaves it.
        let empty = hello.auth.is_empty() || hello.auth == [0];
        if hello.user != "root" || !empty {
            out.err(&SqlError::access_denied(&hello.user, &host, !empty));
            w.write_all(&out.buf).await?;
            return w.flush().await;
        }
        let mut session = Session {
            db: None,
            node: if self.nodes.is_empty() {
                None
            } else {
                let i = self.next.fetch_add(1, Ordering::Relaxed) % self.nodes.len();
                self.nodes.get(i).cloned()
            },
        };
        if let Some(db) = &hello.db {
            if let Err(e) = self.use_db(db, &mut session).await {
                out.err(&e);
                w.write_all(&out.buf).await?;
                return w.flush().await;
            }
        }
        out.ok(0, 0);
        w.write_all(&out.buf).await?;
        w.flush().await?;

        loop {
            let (seq, p) = match read_packet(&mut r).await {
                Ok(x) => x,
                Err(_) => return Ok(()),
            };
            let mut out = Out::new(seq.wrapping_add(1));
            let Some((&cmd, body)) = p.split_first() else {
                return Ok(());
            };
            match cmd {
                0x01 => return Ok(()), // COM_QUIT
                0x02 => {
                    // COM_INIT_DB
                    let db = String::from_utf8_lossy(body).into_owned();
                    match self.use_db(&db, &mut session).await {
                        Ok(r) => out.reply(&r),
                        Err(e) => out.err(&e),
                    }
                }
                0x03 => {
                    // COM_QUERY
                    let q = String::from_utf8_lossy(body).into_owned();
                    let result = match sql::parse(&q) {
                        Ok(st) => self.execute(st, &mut session).await,
                        Err(e) => Err(e),
                    };
                    match result {
                        Ok(r) => out.reply(&r),
                        Err(e) => out.err(&e),
                    }
                }
                0x04 => out.eof(),           // COM_FIELD_LIST: no fields
                0x0e | 0x1f => out.ok(0, 0), // COM_PING, COM_RESET_CONNECTION
                0x1b => out.eof(),           // COM_SET_OPTION
                0x16 => out.err(&SqlError::new(
                    1295,
                    "HY000",
                    "This command is not supported in the prepared statement protocol yet",
                )),
                _ => out.err(&SqlError::unknown_command()),
            }
            w.write_all(&out.buf).await?;
            w.flush().await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn reads_the_option_file_and_lets_the_command_line_win() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("my.cnf");
        std::fs::write(
            &f,
            "[client]\nport=1\n[mysqld]\nndbcluster\nndb-connectstring=10.0.0.1:1186,10.0.0.2:1186\n\
             ndb-cluster-connection-pool=2\nndb-cluster-connection-pool-nodeids=67,68\n\
             port=3306\ndatadir=/var/lib/mysql\nbind-address=0.0.0.0\n",
        )
        .unwrap();
        let s = settings(&args(&[
            &format!("--defaults-file={}", f.display()),
            "--port=3307",
        ]))
        .unwrap();
        assert!(s.ndbcluster);
        assert_eq!(s.port, 3307);
        assert_eq!(s.datadir, PathBuf::from("/var/lib/mysql"));
        assert_eq!(s.bind_address, "0.0.0.0");
        assert_eq!(s.node_ids, vec![Some(67), Some(68)]);
        assert_eq!(
            s.connectstring.as_deref(),
            Some("10.0.0.1:1186,10.0.0.2:1186")
        );
        let s = settings(&args(&["--ndb-nodeid=70", "--datadir", "/d"])).unwrap();
        assert_eq!(s.node_ids, vec![Some(70)]);
        let s = settings(&args(&["--ndb-cluster-connection-pool=3"])).unwrap();
        assert_eq!(s.node_ids, vec![None, None, None]);
    }

    #[test]
    fn refuses_unknown_options_as_mysqld_does() {
        let e = settings(&args(&["--x"])).unwrap_err();
        assert_eq!(e.0, vec!["mysqld: [ERROR] unknown option '--x'."]);
        let e = settings(&args(&["--defaults-file=/nonexistent/my.cnf"])).unwrap_err();
        assert!(e.0[0].contains("Could not open required defaults file"));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("my.cnf");
        std::fs::write(&f, "[mysqld]\nbogus=1\n").unwrap();
        let e = settings(&args(&[&format!("--defaults-file={}", f.display())])).unwrap_err();
        assert_eq!(e.0, vec!["mysqld: [ERROR] unknown variable 'bogus=1'."]);
    }

    #[test]
    fn initializes_only_an_empty_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("data");
        assert!(!initialized(&d));
        initialize(&d).unwrap();
        assert!(initialized(&d));
        let e = initialize(&d).unwrap_err();
        assert!(e.0[0]
            .contains("--initialize specified but the data directory has files in it. Aborting."));
    }

    #[test]
    fn parses_a_client_hello() {
        let mut p = Vec::new();
        let caps = CLIENT_PROTOCOL_41
            | CLIENT_SECURE_CONNECTION
            | CLIENT_PLUGIN_AUTH_LENENC
            | CLIENT_CONNECT_WITH_DB
            | CLIENT_PLUGIN_AUTH;
        p.extend_from_slice(&caps.to_le_bytes());
        p.extend_from_slice(&[0; 28]);
        p.extend_from_slice(b"root\0");
        p.push(0);
        p.extend_from_slice(b"test\0mysql_native_password\0");
        let h = parse_client_hello(&p).unwrap();
        assert_eq!(h.user, "root");
        assert!(h.auth.is_empty());
        assert_eq!(h.db.as_deref(), Some("test"));
        for n in 0..p.len() {
            let _ = parse_client_hello(&p[..n]);
        }
    }

    #[test]
    fn frames_results_in_the_text_protocol() {
        let mut o = Out::new(1);
        o.reply(&Reply::Rows {
            columns: vec![ColumnDef::expr("1", true)],
            rows: vec![vec![Val::Int(1)]],
        });
        // column count, one column, EOF, one row, EOF
        let mut c = Cursor { b: &o.buf };
        let mut seqs = Vec::new();
        while let Some(h) = c.take(4) {
            seqs.push(h[3]);
            c.take(u32::from_le_bytes([h[0], h[1], h[2], 0]) as usize)
                .unwrap();
        }
        assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
        let mut o = Out::new(1);
        o.err(&SqlError::ndb_temporary(4009, "Cluster Failure"));
        assert_eq!(&o.buf[4..7], &[0xff, 0x11, 0x05]); // 1297
        assert!(String::from_utf8_lossy(&o.buf)
            .ends_with("#HY000Got temporary error 4009 'Cluster Failure' from NDBCLUSTER"));
    }
}

//! `ndb_mgm`, RonDB's management client, as the control plane runs it: `ndb_mgm -c CS -e
//! "CMD"`. Every text it prints and every exit code follows RonDB's `CommandInterpreter.cpp`
//! and `mgmclient/main.cpp`: the control plane greps these texts (`Node 3: started`) and
//! branches on the exit code (0, or 255 for any failed command or a failed connect), so a
//! wording or exit-code drift here would hide a bug in the code under test.
//!
//! The client connects lazily, as RonDB does: `HELP` and `QUIT` need no management server,
//! everything else (even an unknown command) connects first. RonDB prints everything,
//! errors included, on stdout; so does this.

use crate::cli::{self, flag, value, Opt};
use crate::config::{ClusterConfig, NodeType, DEFAULT_MGMD_PORT};
use crate::mgm::{read_message, ConnectString, Message, MgmClient, MgmError, NodeStatus};
use crate::version::Version;
use base64::Engine;
use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// mgmapi's default per-call timeout (`handle->timeout`).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// `ndb_mgm_call_slow`: stop and restart wait at least five minutes for their reply.
const SLOW_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// How long `START BACKUP` waits for one backup event before it counts a retry.
const EVENT_TIMEOUT: Duration = Duration::from_secs(60);
/// `MAX_BACKUPS` (0xFFFFFFFF): backup ids are 1 ..= MAX_BACKUPS - 1.
const MAX_BACKUPS: u64 = 0xFFFF_FFFF;
/// `RNIL` as `get status` prints it with `%d`: a data node that is in no node group yet.
const RNIL_GROUP: i64 = -256;
/// `MAX_NODES`: node ids the client accepts on its command line.
const MAX_NODES: i64 = 255;

/// mgmapi error codes (`mgmapi_error.h`) the client prints with `printError`.
pub mod code {
    pub const NO_ERROR: i32 = 0;
    pub const ILLEGAL_CONNECT_STRING: i32 = 1001;
    pub const ILLEGAL_SERVER_REPLY: i32 = 1006;
    pub const ILLEGAL_NODE_STATUS: i32 = 1008;
    pub const SERVER_NOT_CONNECTED: i32 = 1010;
    pub const START_FAILED: i32 = 2001;
    pub const STOP_FAILED: i32 = 2002;
    pub const RESTART_FAILED: i32 = 2003;
    pub const COULD_NOT_START_BACKUP: i32 = 3001;
    pub const COULD_NOT_ABORT_BACKUP: i32 = 3002;
    pub const CONFIG_CHANGE_FAILED: i32 = 4011;
    pub const GET_CONFIG_FAILED: i32 = 4012;
    /// errno's ETIMEDOUT: mgmapi reports a timed-out call with it.
    pub const TIMED_OUT: i32 = 110;
    /// The server's codes for a failed ACTIVATE / SET_HOSTNAME / DEACTIVATE
    /// (`ndb_mgmd_error.h`), which mgmapi passes through.
    pub const ACTIVATE_FAILED: i32 = 5064;
    pub const SET_HOSTNAME_FAILED: i32 = 5067;
    pub const DEACTIVATE_FAILED: i32 = 5068;
}

/// `ndb_mgm_get_latest_error_msg`: the fixed text of an mgmapi error code.
pub fn error_msg(code: i32) -> &'static str {
    match code {
        code::NO_ERROR => "No error",
        code::ILLEGAL_CONNECT_STRING => "Illegal connect string",
        code::ILLEGAL_SERVER_REPLY => "Illegal reply from server",
        code::ILLEGAL_NODE_STATUS => "Illegal node status",
        code::SERVER_NOT_CONNECTED => "Management server not connected",
        code::START_FAILED => "Start failed",
        code::STOP_FAILED => "Stop failed",
        code::RESTART_FAILED => "Restart failed",
        code::COULD_NOT_START_BACKUP => "Could not start backup",
        code::COULD_NOT_ABORT_BACKUP => "Could not abort backup",
        code::CONFIG_CHANGE_FAILED => "Failed to complete configuration change",
        code::GET_CONFIG_FAILED => "Failed to get configuration",
        _ => "Error",
    }
}

/// The latest error of an mgmapi call: a code and the server's (or mgmapi's) description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: i32,
    pub desc: String,
}

impl ApiError {
    fn new(code: i32, desc: impl Into<String>) -> ApiError {
        ApiError {
            code,
            desc: desc.into(),
        }
    }

    fn from_mgm(e: &MgmError) -> ApiError {
        match e {
            MgmError::Timeout { .. } => {
                ApiError::new(code::TIMED_OUT, "Time out talking to management server")
            }
            MgmError::Closed | MgmError::Io(_) => {
                ApiError::new(code::ILLEGAL_SERVER_REPLY, "Probably disconnected")
            }
            other => ApiError::new(code::ILLEGAL_SERVER_REPLY, other.to_string()),
        }
    }

    /// `printError`: `* %5d: %s` then `*        %s`.
    pub fn render(&self) -> String {
        format!(
            "* {:>5}: {}\n*        {}\n",
            self.code,
            error_msg(self.code),
            self.desc
        )
    }
}

/// `println!` that cannot panic: when whoever runs the client stops reading, the client
/// still finishes its command and exits with its code instead of crashing.
pub(crate) fn say(args: std::fmt::Arguments<'_>) {
    let mut o = std::io::stdout().lock();
    let _ = o.write_fmt(args);
    let _ = o.write_all(b"\n");
    let _ = o.flush();
}

/// `print!` without a newline (a prompt, text that ends in its own newline).
pub(crate) fn say_raw(args: std::fmt::Arguments<'_>) {
    let mut o = std::io::stdout().lock();
    let _ = o.write_fmt(args);
    let _ = o.flush();
}

/// `eprintln!` that cannot panic.
pub(crate) fn say_err(args: std::fmt::Arguments<'_>) {
    let mut o = std::io::stderr().lock();
    let _ = o.write_fmt(args);
    let _ = o.write_all(b"\n");
}

// ---------------------------------------------------------------------------------------------
// Connect strings and connecting
// ---------------------------------------------------------------------------------------------

/// Reads a connect string as RonDB's `LocalConfig` does: tokens split on `,`/`;`, with the
/// prefixes `nodeid=`, `host=`, `mgmd=`, `host://`, `bind-address=` (ignored here) and `#`
/// comments; `host port` (the client's positional form) means `host:port`. No host: the
/// `NDB_CONNECTSTRING` environment variable, else `localhost:1186`.
pub fn parse_connectstring(s: Option<&str>) -> Result<ConnectString, String> {
    let mut cs = ConnectString {
        node_id: None,
        hosts: Vec::new(),
    };
    if let Some(s) = s.filter(|s| !s.trim().is_empty()) {
        read_connectstring(s, &mut cs)?;
    }
    if cs.hosts.is_empty() {
        if let Ok(env) = std::env::var("NDB_CONNECTSTRING") {
            if !env.trim().is_empty() {
                let node_id = cs.node_id;
                read_connectstring(&env, &mut cs)?;
                cs.node_id = node_id.or(cs.node_id);
            }
        }
    }
    if cs.hosts.is_empty() {
        cs.hosts.push(("localhost".into(), DEFAULT_MGMD_PORT));
    }
    Ok(cs)
}

fn read_connectstring(s: &str, cs: &mut ConnectString) -> Result<(), String> {
    for tok in s.split([',', ';']).map(str::trim).filter(|t| !t.is_empty()) {
        if let Some(id) = tok.strip_prefix("nodeid=") {
            cs.node_id = Some(id.trim().parse().map_err(|_| s.to_string())?);
            continue;
        }
        if tok.starts_with('#') || tok.starts_with("bind-address=") {
            continue;
        }
        let host = ["host=", "mgmd=", "host://"]
            .iter()
            .find_map(|p| tok.strip_prefix(p))
            .unwrap_or(tok);
        cs.hosts
            .push(split_host_port(host).ok_or_else(|| s.to_string())?);
    }
    Ok(())
}

fn split_host_port(s: &str) -> Option<(String, u16)> {
    let s = s.trim();
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.trim().strip_prefix(':') {
            Some(p) => p.trim().parse().ok()?,
            None if after.trim().is_empty() => DEFAULT_MGMD_PORT,
            None => return None,
        };
        return Some((host.to_string(), port));
    }
    let (host, port) = match s.rsplit_once([':', ' ']) {
        Some((h, p)) if !h.contains(':') => (h.trim(), p.trim().parse().ok()?),
        Some(_) => (s, DEFAULT_MGMD_PORT), // a bare IPv6 address
        None => (s, DEFAULT_MGMD_PORT),
    };
    (!host.is_empty()).then(|| (host.to_string(), port))
}

/// `LocalConfig::makeConnectString`: what RonDB prints when it names the connect string.
pub fn connectstring_text(cs: &ConnectString) -> String {
    let mut s = format!("nodeid={}", cs.node_id.unwrap_or(0));
    for (h, p) in &cs.hosts {
        if h.contains(':') {
            s.push_str(&format!(",[{h}]:{p}"));
        } else {
            s.push_str(&format!(",{h}:{p}"));
        }
    }
    s
}

/// `ndb_mgm_connect(handle, no_retries, delay, verbose)`: one round over every management
/// server, then `no_retries` more rounds `delay` apart (`no_retries < 0`: forever), printing
/// on stdout what mgmapi prints when `verbose` (`ERROR: Unable to connect with connect
/// string: ...`, `Retrying every 5 seconds. Attempts left: 11 10 ..., failed.`).
pub(crate) async fn connect(
    cs: &ConnectString,
    mut no_retries: i64,
    delay_secs: u64,
    verbose: bool,
) -> Option<MgmClient> {
    let mut announced = false;
    loop {
        if let Ok(c) = MgmClient::connect(cs, 0, Duration::ZERO).await {
            if announced {
                say(format_args!(""));
            }
            return Some(c);
        }
        let mut out = std::io::stdout().lock();
        if verbose && !announced {
            let _ = writeln!(
                out,
                "ERROR: Unable to connect with connect string: {}",
                connectstring_text(cs)
            );
        }
        if no_retries == 0 {
            if verbose && announced {
                let _ = writeln!(out, ", failed.");
            }
            let _ = out.flush();
            return None;
        }
        if verbose && !announced {
            let _ = write!(out, "Retrying every {delay_secs} seconds");
            if no_retries > 0 {
                let _ = write!(out, ". Attempts left:");
            } else {
                let _ = write!(out, ", until connected.");
            }
            announced = true;
        }
        if no_retries > 0 {
            if verbose {
                let _ = write!(out, " {no_retries}");
            }
            no_retries -= 1;
        } else if verbose {
            let _ = write!(out, ".");
        }
        let _ = out.flush();
        drop(out);
        tokio::time::sleep(Duration::from_secs(delay_secs)).await;
    }
}

/// A `listen event` session: events are read from the first half; the second is kept open.
type EventStream = (
    BufReader<tokio::net::tcp::OwnedReadHalf>,
    tokio::net::tcp::OwnedWriteHalf,
);

/// A management session plus the calls the client makes on it, each returning the reply or
/// the mgmapi error the client would print.
pub(crate) struct Session {
    pub client: MgmClient,
}

impl Session {
    /// Sends `req` and checks the reply header. A reply without the expected header is the
    /// server's parser error (`result: Unknown command, '...'`) or a broken session.
    pub async fn call(
        &mut self,
        req: &Message,
        expect: &str,
        timeout: Duration,
        fail_code: i32,
    ) -> Result<Message, ApiError> {
        let reply = self
            .client
            .call(req, timeout)
            .await
            .map_err(|e| ApiError::from_mgm(&e))?;
        if reply.head == expect {
            return Ok(reply);
        }
        let text = reply
            .head
            .strip_prefix("result:")
            .map(|t| t.trim().to_string())
            .unwrap_or_else(|| reply.head.clone());
        Err(ApiError::new(fail_code, text))
    }

    /// `ndb_mgm_get_status`: every node, sorted by node id as mgmapi sorts them.
    pub async fn status(&mut self) -> Result<Vec<NodeStatus>, ApiError> {
        let reply = self
            .call(
                &Message::new("get status"),
                "node status",
                CALL_TIMEOUT,
                code::ILLEGAL_NODE_STATUS,
            )
            .await?;
        let mut nodes = NodeStatus::parse_all(&reply);
        if let Some(n) = reply.get_u32("nodes") {
            if n as usize != nodes.len() {
                return Err(ApiError::new(
                    code::ILLEGAL_NODE_STATUS,
                    "Node count mismatch",
                ));
            }
        }
        nodes.sort_by_key(|n| n.id);
        Ok(nodes)
    }

    /// `ndb_mgm_get_configuration`: the stand-in's configuration is config.ini text, base64.
    pub async fn config(&mut self) -> Result<ClusterConfig, ApiError> {
        let req = Message::new("get config").arg("version", Version::current().packed());
        let reply = self
            .call(
                &req,
                "get config reply",
                CALL_TIMEOUT,
                code::GET_CONFIG_FAILED,
            )
            .await?;
        reply
            .result()
            .map_err(|e| ApiError::new(code::GET_CONFIG_FAILED, e))?;
        let body = reply.body.as_deref().unwrap_or("");
        let compact: String = body.chars().filter(|c| !c.is_whitespace()).collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(compact.as_bytes())
            .map_err(|e| ApiError::new(code::ILLEGAL_SERVER_REPLY, format!("base64: {e}")))?;
        let text = String::from_utf8_lossy(&bytes);
        ClusterConfig::parse(&text)
            .map_err(|e| ApiError::new(code::ILLEGAL_SERVER_REPLY, e.to_string()))
    }

    /// `ndb_mgm_set_configuration` (`set config_v2`, the edited config as base64 body).
    pub async fn set_config(&mut self, cfg: &ClusterConfig) -> Result<(), ApiError> {
        let body = base64::engine::general_purpose::STANDARD.encode(cfg.render());
        let mut req = Message::new("set config_v2")
            .arg("Content-Length", body.len())
            .arg("Content-Type", "ndbconfig/octet-stream")
            .arg("Content-Transfer-Encoding", "base64");
        req.body = Some(body);
        let reply = self
            .call(
                &req,
                "set config reply",
                CALL_TIMEOUT,
                code::CONFIG_CHANGE_FAILED,
            )
            .await?;
        reply
            .result()
            .map_err(|e| ApiError::new(code::CONFIG_CHANGE_FAILED, e))
    }

    /// `stop v2` → (stopped, disconnect).
    async fn stop(
        &mut self,
        nodes: &[u32],
        abort: bool,
        force: bool,
    ) -> Result<(u32, bool), ApiError> {
        let req = Message::new("stop v2")
            .arg("node", join_ids(nodes))
            .arg("abort", u8::from(abort))
            .arg("force", u8::from(force));
        let reply = self
            .call(&req, "stop reply", SLOW_TIMEOUT, code::STOP_FAILED)
            .await?;
        finish_stop(&reply)
    }

    /// `stop all` (`stop: db` or `mgm,db`) → (stopped, disconnect).
    async fn stop_all(&mut self, abort: bool, with_mgm: bool) -> Result<(u32, bool), ApiError> {
        let req = Message::new("stop all")
            .arg("abort", u8::from(abort))
            .arg("stop", if with_mgm { "mgm,db" } else { "db" });
        let reply = self
            .call(&req, "stop reply", SLOW_TIMEOUT, code::STOP_FAILED)
            .await?;
        finish_stop(&reply)
    }
}

fn finish_stop(reply: &Message) -> Result<(u32, bool), ApiError> {
    let Some(stopped) = reply.get_u32("stopped") else {
        return Err(ApiError::new(
            code::STOP_FAILED,
            "Could not get number of stopped nodes from mgm server",
        ));
    };
    let disconnect = reply.get_u32("disconnect").unwrap_or(0) != 0;
    reply
        .result()
        .map_err(|e| ApiError::new(code::STOP_FAILED, e))?;
    Ok((stopped, disconnect))
}

fn join_ids(ids: &[u32]) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(" ")
}

// ---------------------------------------------------------------------------------------------
// Pure formatting (what SHOW / STATUS / backup events print)
// ---------------------------------------------------------------------------------------------

/// `ndbGetVersionString` as RonDB prints it: `RonDB-24.10.1`.
pub fn version_string(packed: u32) -> String {
    format!("RonDB-{}", Version::from_packed(packed))
}

/// `print_status`'s version for MGM/API nodes: `RonDB Version 24.10.1`; RonDB pads a
/// one-digit minor with a zero (`22.01.0`), a quirk kept.
fn rondb_version_words(packed: u32) -> String {
    let v = Version::from_packed(packed);
    if v.minor == 0 || v.minor >= 10 {
        format!("RonDB Version {}.{}.{}", v.major, v.minor, v.build)
    } else {
        format!("RonDB Version {}.0{}.{}", v.major, v.minor, v.build)
    }
}

/// `status_string`: the lowercase words SHOW and STATUS use for a node status.
pub fn status_words(status: &str) -> &'static str {
    match status {
        "NO_CONTACT" => "not connected",
        "NOT_STARTED" => "not started",
        "STARTING" => "starting",
        "STARTED" => "started",
        "SHUTTING_DOWN" => "shutting down",
        "RESTARTING" => "restarting",
        "SINGLE USER MODE" => "single user mode",
        _ => "unknown state",
    }
}

/// `print_status`: one `N STATUS` / `ALL STATUS` line.
pub fn format_status(n: &NodeStatus) -> String {
    if n.kind != "NDB" {
        return if n.version != 0 {
            format!(
                "Node {}: connected ({})",
                n.id,
                rondb_version_words(n.version)
            )
        } else {
            format!("Node {}: not connected", n.id)
        };
    }
    let mut s = format!("Node {}: {}", n.id, status_words(&n.status));
    if matches!(n.status.as_str(), "STARTING" | "SHUTTING_DOWN") {
        s.push_str(&format!(" (Last completed phase {})", n.startphase));
    }
    if n.status != "NO_CONTACT" {
        s.push_str(&format!(" ({})", version_string(n.version)));
    }
    s
}

/// `executeShow` without the connect line: the three node sections of SHOW. Connected nodes
/// come from `get status`; a node without contact is described from the configuration
/// (deactivated, or the host it accepts a connect from).
pub fn format_show(nodes: &[NodeStatus], cfg: &ClusterConfig) -> String {
    let mut sorted: Vec<&NodeStatus> = nodes.iter().collect();
    sorted.sort_by_key(|n| n.id);
    // The master is the started data node with the lowest dynamic id.
    let mut master = sorted
        .iter()
        .find(|n| n.kind == "NDB" && n.version != 0)
        .map(|n| n.dynamic_id)
        .unwrap_or(0);
    for n in sorted.iter().filter(|n| n.kind == "NDB") {
        if n.dynamic_id != 0 && n.dynamic_id < master {
            master = n.dynamic_id;
        }
    }
    let mut out = String::from("Cluster Configuration\n---------------------\n");
    for (name, kind, master) in [
        ("ndbd", "NDB", master),
        ("ndb_mgmd", "MGM", 0),
        ("mysqld", "API", 0),
    ] {
        let of_kind: Vec<&&NodeStatus> = sorted.iter().filter(|n| n.kind == kind).collect();
        out.push_str(&format!("[{name}({kind})]\t{} node(s)\n", of_kind.len()));
        for n in of_kind {
            out.push_str(&show_line(n, cfg, master));
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

fn show_line(n: &NodeStatus, cfg: &ClusterConfig, master: u32) -> String {
    let mut s = format!("id={}", n.id);
    if n.version == 0 {
        match cfg.nodes.get(&n.id) {
            None => s.push_str(&format!("Unable to find node with id: {}", n.id)),
            Some(def) if !def.active => s.push_str(" (not connected, node is deactivated)"),
            Some(def) => s.push_str(&format!(
                " (not connected, accepting connect from {})",
                def.host.as_deref().unwrap_or("any host")
            )),
        }
        return s;
    }
    let addr = n.address.trim();
    if addr.is_empty() || addr == "0.0.0.0" || addr == "::" {
        s.push(' ');
    } else {
        s.push_str(&format!("\t@{addr}"));
    }
    s.push_str(&format!("  ({}", version_string(n.version)));
    if n.kind == "NDB" {
        if n.status != "STARTED" {
            s.push_str(&format!(", {}", status_words(&n.status)));
        }
        if n.node_group >= 0 {
            s.push_str(&format!(", Nodegroup: {}", n.node_group));
        } else if n.node_group == RNIL_GROUP {
            s.push_str(", no nodegroup");
        }
        if (n.node_group >= 0 || n.node_group == RNIL_GROUP)
            && master != 0
            && n.dynamic_id == master
        {
            s.push_str(", *");
        }
    }
    s.push(')');
    s
}

/// One parsable event of a `listen event` stream: its `key=value` lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogEvent {
    pub fields: BTreeMap<String, String>,
}

impl LogEvent {
    pub fn num(&self, key: &str) -> u64 {
        self.fields
            .get(key)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// A 64-bit counter sent as `key` (low word) and `key_hi`.
    fn num64(&self, key: &str) -> u64 {
        self.num(key)
            .wrapping_add(self.num(&format!("{key}_hi")).wrapping_shl(32))
    }
}

/// Backup event types of the BACKUP category.
pub const BACKUP_STARTED: u64 = 54;
pub const BACKUP_FAILED_TO_START: u64 = 55;
pub const BACKUP_COMPLETED: u64 = 56;
pub const BACKUP_ABORTED: u64 = 57;

/// `printLogEvent` for the backup events (the only ones the client asks for).
pub fn format_event(ev: &LogEvent) -> Option<String> {
    let node = ev.num("source_nodeid");
    let id = ev.num("backup_id");
    let from = ev.num("starting_node");
    Some(match ev.num("type") {
        BACKUP_STARTED => format!("Node {node}: Backup {id} started from node {from}"),
        BACKUP_FAILED_TO_START => format!(
            "Node {node}: Backup request from {from} failed to start. Error: {}",
            ev.num("error")
        ),
        BACKUP_COMPLETED => format!(
            "Node {node}: Backup {id} started from node {from} completed\n StartGCP: {} StopGCP: {}\n #Records: {} #LogRecords: {}\n Data: {} bytes Log: {} bytes",
            ev.num("start_gci"),
            ev.num("stop_gci"),
            ev.num64("n_records"),
            ev.num64("n_log_records"),
            ev.num64("n_bytes"),
            ev.num64("n_log_bytes"),
        ),
        BACKUP_ABORTED => format!(
            "Node {node}: Backup {id} started from {from} has been aborted. Error: {}",
            ev.num("error")
        ),
        _ => return None,
    })
}

/// Reads the next parsable event of a `listen event` stream, skipping `<PING>` lines.
/// `None` at end of stream.
pub async fn read_event<R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
) -> std::io::Result<Option<LogEvent>> {
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        if line.trim() != "log event reply" {
            continue;
        }
        let mut ev = LogEvent::default();
        loop {
            line.clear();
            if r.read_line(&mut line).await? == 0 {
                return Ok(None);
            }
            let l = line.trim();
            if l.is_empty() {
                return Ok(Some(ev));
            }
            if let Some((k, v)) = l.split_once('=') {
                ev.fields.insert(k.trim().to_string(), v.trim().to_string());
            }
        }
    }
}

/// What `START BACKUP ...` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupArgs {
    /// 0 NOWAIT, 1 WAIT STARTED, 2 WAIT COMPLETED (the default).
    pub completed: u32,
    /// 0: the server picks the next id.
    pub backup_id: u32,
    /// 1 SNAPSHOTSTART, 0 SNAPSHOTEND (the default).
    pub backup_point: u32,
    pub password: Option<String>,
}

/// `executeStartBackup`'s argument parsing; `parameters` is the line after `START`
/// (`BACKUP 5 WAIT COMPLETED`). The error is the text to print.
pub fn parse_start_backup(parameters: &str) -> Result<BackupArgs, String> {
    let invalid = |msg: Option<&str>| invalid_command_text(parameters, msg);
    let args: Vec<String> = split_with_quotes(parameters)
        .into_iter()
        .map(|a| {
            let upper = a.to_ascii_uppercase();
            if upper.starts_with("PASSWORD=") {
                format!("PASSWORD={}", &a["PASSWORD=".len()..])
            } else {
                upper
            }
        })
        .collect();
    let mut out = BackupArgs {
        completed: 2,
        backup_id: 0,
        backup_point: 0,
        password: None,
    };
    let (mut b_log, mut b_wait) = (false, false);
    let mut i = 1;
    while i < args.len() {
        let a = args[i].as_str();
        if i == 1 {
            if let Some(n) = leading_u64(a) {
                let max_digits = format!("{MAX_BACKUPS}: ").len();
                if n > 0 && n < MAX_BACKUPS && a.len() <= max_digits {
                    out.backup_id = n as u32;
                    i += 1;
                    continue;
                }
                let msg = format!("Backup ID out of range [1 - {}]", MAX_BACKUPS - 1);
                return Err(invalid(Some(&msg)));
            }
        }
        match a {
            "SNAPSHOTEND" | "SNAPSHOTSTART" => {
                if b_log {
                    return Err(invalid(None));
                }
                b_log = true;
                out.backup_point = u32::from(a == "SNAPSHOTSTART");
            }
            "NOWAIT" => {
                if b_wait {
                    return Err(invalid(None));
                }
                b_wait = true;
                out.completed = 0;
            }
            "WAIT" => {
                if b_wait {
                    return Err(invalid(None));
                }
                b_wait = true;
                match args.get(i + 1).map(String::as_str) {
                    Some("COMPLETED") => out.completed = 2,
                    Some("STARTED") => out.completed = 1,
                    _ => return Err(invalid(None)),
                }
                i += 1;
            }
            "ENCRYPT" => {
                if out.password.is_some() {
                    return Err(invalid(None));
                }
                let Some(pw) = args.get(i + 1).and_then(|a| a.strip_prefix("PASSWORD=")) else {
                    return Err(invalid(None));
                };
                let quoted = pw.len() >= 2
                    && (pw.starts_with('"') || pw.starts_with('\''))
                    && pw.ends_with(&pw[..1]);
                if !quoted {
                    return Err(invalid(Some("Encryption password should be within quotes")));
                }
                out.password = Some(pw[1..pw.len() - 1].to_string());
                i += 1;
            }
            _ => return Err(invalid(None)),
        }
        i += 1;
    }
    Ok(out)
}

/// `sscanf("%llu")`: the leading digits of `s`, if any.
fn leading_u64(s: &str) -> Option<u64> {
    let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
    if digits.is_empty() {
        return None;
    }
    Some(digits.parse().unwrap_or(u64::MAX))
}

/// `BaseString::splitWithQuotedStrings`: split on spaces, keeping quoted parts together.
fn split_with_quotes(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    for c in s.chars() {
        match quote {
            Some(q) if c == q => {
                quote = None;
                cur.push(c);
            }
            Some(_) => cur.push(c),
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                cur.push(c);
            }
            None if c == ' ' => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            None => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// `invalid_command`: `Invalid command: <cmd>` [msg] `Type HELP for help.` and a blank line.
pub fn invalid_command_text(cmd: &str, msg: Option<&str>) -> String {
    let mut s = format!("Invalid command: {cmd}\n");
    if let Some(m) = msg {
        s.push_str(m);
        s.push('\n');
    }
    s.push_str("Type HELP for help.\n\n");
    s
}

const HELP_TEXT: &str = "---------------------------------------------------------------------------
 RonDB -- Management Client -- Help
---------------------------------------------------------------------------
HELP                                   Print help text
HELP COMMAND                           Print detailed help for COMMAND(e.g. SHOW)
SHOW                                   Print information about cluster
CREATE NODEGROUP <id>,<id>...          Add a Nodegroup containing nodes
DROP NODEGROUP <NG>                    Drop nodegroup with id NG
START BACKUP [<backup id>] [ENCRYPT PASSWORD='<password>'] [SNAPSHOTSTART | SNAPSHOTEND] [NOWAIT | WAIT STARTED | WAIT COMPLETED]
                                       Start backup (default WAIT COMPLETED,SNAPSHOTEND)
ABORT BACKUP <backup id>               Abort backup
SHUTDOWN                               Shutdown all processes in cluster
PROMPT [<prompt-string>]               Toggle the prompt between string specified
                                       or default prompt if no string specified
CLUSTERLOG ON [<severity>] ...         Enable Cluster logging
CLUSTERLOG OFF [<severity>] ...        Disable Cluster logging
CLUSTERLOG TOGGLE [<severity>] ...     Toggle severity filter on/off
CLUSTERLOG INFO                        Print cluster log information
<id> HOSTNAME [<hostname/IP>]          Change hostname of a deactivated node
<id> ACTIVATE                          Activate a node previously deactivated
<id> DEACTIVATE                        Deactivate a node (and stop it)
<id> START                             Start data node (started with -n)
<id> RESTART [-n] [-i] [-a] [-f]       Restart data or management server node
<id> STOP [-a] [-f]                    Stop data or management server node
<id> NODELOG DEBUG ON                  Enable Debug logging in node log
<id> NODELOG DEBUG OFF                 Disable Debug logging in node log
ENTER SINGLE USER MODE <id>            Enter single user mode
EXIT SINGLE USER MODE                  Exit single user mode
<id> STATUS                            Print status
<id> CLUSTERLOG {<category>=<level>}+  Set log level for cluster log
PURGE STALE SESSIONS                   Reset reserved nodeid's in the mgmt server
CONNECT [<connectstring>]              Connect to management server (reconnect if already connected)
<id> REPORT <report-type>              Display report for <report-type>
QUIT                                   Quit management client

<severity> = ALERT | CRITICAL | ERROR | WARNING | INFO | DEBUG
<category> = STARTUP | SHUTDOWN | STATISTICS | CHECKPOINT | NODERESTART | CONNECTION | INFO | ERROR | CONGESTION | DEBUG | BACKUP | SCHEMA
<report-type> = BACKUPSTATUS | MEMORYUSAGE | EVENTLOG
<level>    = 0 - 15
<id>       = ALL | Any database node id

For detailed help on COMMAND, use HELP COMMAND.
";

// ---------------------------------------------------------------------------------------------
// The command interpreter
// ---------------------------------------------------------------------------------------------

/// `CommandInterpreter`: the connect string, the session once connected, and the options
/// that shape its output.
pub struct Interpreter {
    cs: ConnectString,
    verbose: u32,
    /// `--connect-retries` / `--try-reconnect`; mgmapi is asked for `try_reconnect - 1`
    /// retries, so 0 retries forever, as in RonDB.
    try_reconnect: i64,
    retry_delay: u64,
    session: Option<Session>,
    out: String,
}

/// What the interpreter does with a line beyond printing: keep going or quit, and the error
/// (`m_error`: 0 or negative) `-e` turns into the exit code.
struct Outcome {
    go_on: bool,
    error: i32,
}

impl Interpreter {
    pub fn new(cs: ConnectString, verbose: u32, try_reconnect: i64, retry_delay: u64) -> Self {
        Interpreter {
            cs,
            verbose,
            try_reconnect,
            retry_delay,
            session: None,
            out: String::new(),
        }
    }

    fn p(&mut self, s: impl AsRef<str>) {
        self.out.push_str(s.as_ref());
        self.out.push('\n');
    }

    /// Prints what has been collected so far (before anything that may wait long).
    fn flush(&mut self) {
        if !self.out.is_empty() {
            let mut o = std::io::stdout().lock();
            let _ = o.write_all(self.out.as_bytes());
            let _ = o.flush();
            self.out.clear();
        }
    }

    async fn connect(&mut self) -> bool {
        if self.session.is_some() {
            return true;
        }
        self.flush();
        let Some(client) = connect(&self.cs, self.try_reconnect - 1, self.retry_delay, true).await
        else {
            return false;
        };
        if self.verbose > 0 {
            let at = client.connected_to.clone();
            self.p(format!("Connected to Management Server at: {at}"));
        }
        self.session = Some(Session { client });
        true
    }

    fn print_error(&mut self, e: &ApiError) {
        let text = e.render();
        self.out.push_str(&text);
    }

    /// Runs one command line; returns false when the client should quit.
    pub async fn execute(&mut self, line: &str) -> (bool, i32) {
        let o = self.execute_impl(line).await;
        self.flush();
        (o.go_on, o.error)
    }

    async fn execute_impl(&mut self, raw: &str) -> Outcome {
        let ok = |error: i32| Outcome { go_on: true, error };
        let mut line = raw.trim_matches([' ', '\t']).to_string();
        loop {
            if line.is_empty() || line.starts_with('#') {
                return ok(0);
            }
            match line.strip_suffix(';') {
                Some(l) => line = l.trim_matches([' ', '\t']).to_string(),
                None => break,
            }
        }
        let words: Vec<&str> = line.split(' ').filter(|w| !w.is_empty()).collect();
        let first = words.first().copied().unwrap_or("");
        let rest: Option<String> = line
            .trim_start_matches(' ')
            .split_once(' ')
            .map(|(_, r)| r.to_string());
        let rest_ref = rest.as_deref();
        let is = |w: &str| first.eq_ignore_ascii_case(w);

        if is("HELP") || is("?") {
            return ok(self.help(rest_ref));
        }
        if is("CONNECT") {
            self.session = None;
            if let Some(r) = rest_ref.filter(|r| !r.trim().is_empty()) {
                match parse_connectstring(Some(r.trim())) {
                    Ok(cs) => self.cs = cs,
                    Err(s) => {
                        self.print_error(&ApiError::new(code::ILLEGAL_CONNECT_STRING, s));
                        return ok(-1);
                    }
                }
            }
            return ok(if self.connect().await { 0 } else { -1 });
        }
        if is("SLEEP") {
            if let Some(secs) = rest_ref.and_then(|r| r.trim().parse::<u64>().ok()) {
                self.flush();
                tokio::time::sleep(Duration::from_secs(secs)).await;
            }
            return ok(0);
        }
        if (is("QUIT") || is("EXIT") || is("BYE")) && rest.is_none() {
            return Outcome {
                go_on: false,
                error: 0,
            };
        }
        if !self.connect().await {
            return ok(-1);
        }
        let starts = |prefix: &str| {
            rest_ref.is_some_and(|r| {
                r.len() >= prefix.len()
                    && r.is_char_boundary(prefix.len())
                    && r[..prefix.len()].eq_ignore_ascii_case(prefix)
            })
        };
        let rest_s = rest.clone().unwrap_or_default();
        let error = if is("SHOW") {
            self.show(rest_ref).await
        } else if is("SHUTDOWN") {
            self.shutdown().await
        } else if is("START") && starts("BACKUP") {
            self.start_backup(&rest_s).await
        } else if is("ABORT") && starts("BACKUP") {
            self.abort_backup(&rest_s).await
        } else if is("CLUSTERLOG")
            || is("PURGE")
            || is("PROMPT")
            || (is("ENTER") && starts("SINGLE USER MODE "))
            || (is("EXIT") && starts("SINGLE USER MODE "))
            || (is("CREATE") && starts("NODEGROUP"))
            || (is("DROP") && starts("NODEGROUP"))
        {
            self.unsupported(&line)
        } else if is("ALL") {
            self.after_first_token(None, rest_ref).await
        } else {
            let mut ids: Vec<u32> = Vec::new();
            for w in &words {
                let Some(id) = convert(w) else { break };
                if id <= 0 || id > MAX_NODES {
                    self.p(format!("Invalid node ID: {w}."));
                    return ok(0);
                }
                ids.push(id as u32);
            }
            if ids.is_empty() || ids.len() == words.len() {
                let text = invalid_command_text(raw, None);
                self.out.push_str(&text);
                return ok(-1);
            }
            if ids.len() == 1 {
                self.after_first_token(Some(ids[0]), rest_ref).await
            } else {
                self.multi_node(&ids, &words[ids.len()..]).await
            }
        };
        ok(error)
    }

    fn unsupported(&mut self, line: &str) -> i32 {
        self.p(format!(
            "ERROR: '{line}' is a RonDB command rondb-standin does not implement"
        ));
        -1
    }

    fn help(&mut self, topic: Option<&str>) -> i32 {
        match topic.map(str::trim).filter(|t| !t.is_empty()) {
            None => {
                self.out.push_str(HELP_TEXT);
                0
            }
            Some(t) => {
                self.p(format!("No help for {t} available"));
                -1
            }
        }
    }

    /// `analyseAfterFirstToken`: `<id> CMD ...` or `ALL CMD ...`, then a blank line.
    async fn after_first_token(&mut self, node: Option<u32>, rest: Option<&str>) -> i32 {
        let rest = rest.unwrap_or("");
        if rest.trim().is_empty() {
            self.p(match node {
                None => "Expected a command after ALL.",
                Some(_) => "Expected a command after node ID.",
            });
            return -1;
        }
        let rest = rest.trim_start_matches(' ');
        let (cmd, params) = match rest.split_once(' ') {
            Some((c, p)) => (c, Some(p)),
            None => (rest, None),
        };
        let upper = cmd.to_ascii_uppercase();
        let known = [
            "START",
            "RESTART",
            "STOP",
            "STATUS",
            "LOGLEVEL",
            "CLUSTERLOG",
            "NODELOG",
            "LOG",
            "TESTON",
            "TESTOFF",
            "DUMP",
            "REPORT",
            "HOSTNAME",
            "ACTIVATE",
            "DEACTIVATE",
        ];
        if !known.contains(&upper.as_str()) {
            let text = invalid_command_text(cmd, None);
            self.out.push_str(&text);
            return -1;
        }
        let words: Vec<&str> = params
            .unwrap_or("")
            .split(' ')
            .filter(|w| !w.is_empty())
            .collect();
        let r = match (node, upper.as_str()) {
            (Some(id), "STATUS") => self.status(Some(id), &words).await,
            (None, "STATUS") => {
                self.status(None, &words).await;
                0
            }
            (Some(id), "STOP") => self.stop(&[id], &words).await,
            (None, "STOP") => {
                self.p("Executing STOP on all nodes.");
                self.stop(&[], &words).await
            }
            (Some(id), "RESTART") => self.restart(&[id], &words).await,
            (None, "RESTART") => self.restart(&[], &words).await,
            (Some(id), "START") => self.start(Some(id)).await,
            (None, "START") => self.start(None).await,
            (Some(id), "ACTIVATE") => self.activate(id).await,
            (Some(id), "DEACTIVATE") => self.deactivate(id).await,
            (Some(id), "HOSTNAME") => self.hostname(id, params).await,
            (None, "ACTIVATE" | "DEACTIVATE" | "HOSTNAME") => {
                // executeForAll calls the command once per data node, each refusing.
                match self.data_node_ids().await {
                    Ok(ids) => {
                        let mut r = 0;
                        for _ in ids {
                            self.p(format!("ALL {upper} command not allowed"));
                            r = -1;
                        }
                        r
                    }
                    Err(e) => {
                        self.p("Unable get status from management server");
                        self.print_error(&e);
                        return -1;
                    }
                }
            }
            _ => {
                let line = format!("{} {cmd}", node.map_or("ALL".into(), |n| n.to_string()));
                self.unsupported(&line)
            }
        };
        self.p("");
        r
    }

    async fn data_node_ids(&mut self) -> Result<Vec<u32>, ApiError> {
        let s = self.session_mut()?;
        Ok(s.status()
            .await?
            .into_iter()
            .filter(|n| n.kind == "NDB")
            .map(|n| n.id)
            .collect())
    }

    fn session_mut(&mut self) -> Result<&mut Session, ApiError> {
        self.session
            .as_mut()
            .ok_or_else(|| ApiError::new(code::SERVER_NOT_CONNECTED, ""))
    }

    /// `executeCommand`: `1 2 STOP` and the like; no blank line after.
    async fn multi_node(&mut self, ids: &[u32], words: &[&str]) -> i32 {
        let cmd = words.first().copied().unwrap_or("");
        let rest = &words[1.min(words.len())..];
        match cmd.to_ascii_uppercase().as_str() {
            "STOP" => self.stop(ids, rest).await,
            "RESTART" => self.restart(ids, rest).await,
            "START" => self.start_many(ids).await,
            _ => {
                self.p(format!(
                    "Invalid command: '{cmd}' after multi node id list. Expected STOP, START, or RESTART."
                ));
                -1
            }
        }
    }

    async fn show(&mut self, params: Option<&str>) -> i32 {
        if let Some(p) = params.filter(|p| !p.trim().is_empty()) {
            self.p(format!("Invalid argument: '{p}'"));
            return -1;
        }
        let status = match self.session_mut() {
            Ok(s) => s.status().await,
            Err(e) => Err(e),
        };
        let nodes = match status {
            Ok(n) => n,
            Err(e) => {
                self.p("Could not get status");
                self.print_error(&e);
                return -1;
            }
        };
        let cfg = match self.config().await {
            Ok(c) => c,
            Err(e) => {
                self.p("Could not get configuration");
                self.print_error(&e);
                return -1;
            }
        };
        let text = format_show(&nodes, &cfg);
        self.out.push_str(&text);
        0
    }

    async fn config(&mut self) -> Result<ClusterConfig, ApiError> {
        self.session_mut()?.config().await
    }

    async fn status(&mut self, node: Option<u32>, words: &[&str]) -> i32 {
        if !words.is_empty() {
            self.p("No parameters expected to this command.");
            return -1;
        }
        let status = match self.session_mut() {
            Ok(s) => s.status().await,
            Err(e) => Err(e),
        };
        let nodes = match status {
            Ok(n) => n,
            Err(e) => {
                self.p(format!("Can't get status of node {}.", node.unwrap_or(0)));
                self.print_error(&e);
                return -1;
            }
        };
        match node {
            None => {
                for n in nodes.iter().filter(|n| n.kind == "NDB") {
                    self.p(format_status(n));
                }
                0
            }
            Some(id) => match nodes.iter().find(|n| n.id == id) {
                Some(n) => {
                    self.p(format_status(n));
                    0
                }
                None => {
                    self.p(format!("{id}: Node not found"));
                    -1
                }
            },
        }
    }

    /// `executeStop`: options `-A` (abort) and `-F` (force); a deactivated node is refused
    /// before anything is sent.
    async fn stop(&mut self, ids: &[u32], words: &[&str]) -> i32 {
        let (mut abort, mut force) = (false, false);
        for w in words {
            match w.to_ascii_uppercase().as_str() {
                "-A" => abort = true,
                "-F" => force = true,
                _ => {
                    self.p(format!(
                        "Invalid option: {w}. Expecting -A or -F after STOP"
                    ));
                    return -1;
                }
            }
        }
        if !ids.is_empty() {
            let cfg = match self.config().await {
                Ok(c) => c,
                Err(e) => {
                    self.p("Could not get configuration");
                    self.print_error(&e);
                    return -1;
                }
            };
            for id in ids {
                match cfg.nodes.get(id) {
                    None => {
                        self.node_not_in_config(*id);
                        return -1;
                    }
                    Some(def) if !def.active => {
                        self.p(format!("Node {id} is deactivated, is already stopped"));
                        return -1;
                    }
                    Some(_) => {}
                }
            }
        }
        self.flush();
        let result = match self.session_mut() {
            Ok(s) if ids.is_empty() => s.stop_all(abort, false).await,
            Ok(s) => s.stop(ids, abort, force).await,
            Err(e) => Err(e),
        };
        let (r, disconnect) = match result {
            Err(e) => {
                self.p("Shutdown failed.");
                self.print_error(&e);
                (-1, false)
            }
            Ok((_, disconnect)) => {
                if ids.is_empty() {
                    self.p("RonDB has shutdown.");
                } else {
                    self.p(format!("Node {} has shutdown.", join_ids(ids)));
                }
                (0, disconnect)
            }
        };
        if disconnect {
            self.p("Disconnecting to allow Management Server to shutdown");
            self.session = None;
        }
        r
    }

    /// `get_node_section` failing: the node is not in the configuration.
    fn node_not_in_config(&mut self, id: u32) {
        self.p(format!("Node {id} not found in configuration"));
        self.print_error(&ApiError::new(
            code::NO_ERROR,
            "Executing: ndb_mgm_get_configuration",
        ));
        self.p(format!("Failed to get configuration of node {id}"));
    }

    /// `executeRestart`: `-N` (no start), `-I` (initial), `-A` (abort), `-F` (force).
    async fn restart(&mut self, ids: &[u32], words: &[&str]) -> i32 {
        let (mut nostart, mut initial, mut abort, mut force) = (false, false, false, false);
        for w in words {
            match w.to_ascii_uppercase().as_str() {
                "-N" => nostart = true,
                "-I" => initial = true,
                "-A" => abort = true,
                "-F" => force = true,
                _ => {
                    self.p(format!(
                        "Invalid option: {w}. Expecting -A,-N,-I or -F after RESTART"
                    ));
                    return -1;
                }
            }
        }
        let status = match self.session_mut() {
            Ok(s) => s.status().await,
            Err(e) => Err(e),
        };
        let nodes = match status {
            Ok(n) => n,
            Err(e) => {
                self.p("Could not get status");
                self.print_error(&e);
                return -1;
            }
        };
        if !ids.is_empty() && nodes.iter().any(|n| n.status == "SINGLE USER MODE") {
            self.p("Cannot restart nodes: single user mode");
            return -1;
        }
        if ids.is_empty() {
            self.p("Executing RESTART on all nodes.");
            self.p("Starting shutdown. This may take a while. Please wait...");
        }
        for id in ids {
            match nodes.iter().find(|n| n.id == *id) {
                None => {
                    self.p(format!("{id}: Node not found"));
                    return -1;
                }
                Some(n) if n.kind == "MGM" => {
                    self.p(format!("Shutting down MGM node {id} for restart"));
                }
                Some(_) => {}
            }
        }
        self.flush();
        let flags = |m: Message| {
            m.arg("abort", u8::from(abort))
                .arg("initialstart", u8::from(initial))
                .arg("nostart", u8::from(nostart))
        };
        let req = if ids.is_empty() {
            flags(Message::new("restart all"))
        } else {
            flags(Message::new("restart node v2").arg("node", join_ids(ids)))
                .arg("force", u8::from(force))
        };
        let reply = match self.session_mut() {
            Ok(s) => {
                s.call(&req, "restart reply", SLOW_TIMEOUT, code::RESTART_FAILED)
                    .await
            }
            Err(e) => Err(e),
        };
        let result = reply.and_then(|r| {
            r.result()
                .map_err(|e| ApiError::new(code::RESTART_FAILED, e))?;
            let restarted = r.get_u32("restarted");
            if ids.is_empty() && restarted.is_none() {
                return Err(ApiError::new(
                    code::RESTART_FAILED,
                    "Could not get restarted number of nodes from mgm server",
                ));
            }
            Ok((
                restarted.unwrap_or(0),
                r.get_u32("disconnect").unwrap_or(0) != 0,
            ))
        });
        match result {
            Ok((restarted, disconnect)) if restarted > 0 => {
                if ids.is_empty() {
                    self.p("All DB nodes are being restarted.");
                } else {
                    self.p(format!("Node {} is being restarted", join_ids(ids)));
                }
                if disconnect {
                    self.session = None;
                }
                0
            }
            Ok(_) => {
                // mgmapi returns the restarted count; 0 counts as a failure.
                self.p("Restart failed.");
                self.print_error(&ApiError::new(
                    code::NO_ERROR,
                    "Executing: ndb_mgm_restart4",
                ));
                -1
            }
            Err(e) => {
                self.p("Restart failed.");
                self.print_error(&e);
                -1
            }
        }
    }

    /// `ndb_mgm_start`: one `start` per node (the count of those that went Ok), or
    /// `start all`.
    async fn send_start(&mut self, ids: &[u32]) -> Result<u32, ApiError> {
        let s = self.session_mut()?;
        if ids.is_empty() {
            let r = s
                .call(
                    &Message::new("start all"),
                    "start reply",
                    CALL_TIMEOUT,
                    code::START_FAILED,
                )
                .await?;
            r.result()
                .map_err(|e| ApiError::new(code::START_FAILED, e))?;
            return Ok(r.get_u32("started").unwrap_or(0));
        }
        let mut started = 0;
        let mut last = None;
        for id in ids {
            let req = Message::new("start").arg("node", id);
            let r = s
                .call(&req, "start reply", CALL_TIMEOUT, code::START_FAILED)
                .await?;
            match r.result() {
                Ok(()) => started += 1,
                Err(e) => last = Some(ApiError::new(code::START_FAILED, e)),
            }
        }
        match (started, last) {
            (0, Some(e)) => Err(e),
            (n, _) => Ok(n),
        }
    }

    async fn start(&mut self, node: Option<u32>) -> i32 {
        let ids: Vec<u32> = node.into_iter().collect();
        match self.send_start(&ids).await {
            Ok(n) if n > 0 => {
                match node {
                    None => self.p("RonDB is being started."),
                    Some(id) => self.p(format!("Database node {id} is being started.")),
                }
                0
            }
            Ok(_) => {
                self.p("Start failed.");
                self.print_error(&ApiError::new(code::NO_ERROR, "Executing: ndb_mgm_start"));
                -1
            }
            Err(e) => {
                self.p("Start failed.");
                self.print_error(&e);
                -1
            }
        }
    }

    async fn start_many(&mut self, ids: &[u32]) -> i32 {
        match self.send_start(ids).await {
            Ok(n) if n > 0 => {
                self.p(format!("Node {} is being started", join_ids(ids)));
                0
            }
            Ok(_) => {
                self.p("Start failed.");
                self.print_error(&ApiError::new(code::NO_ERROR, "Executing: ndb_mgm_start"));
                -1
            }
            Err(e) => {
                self.p("Start failed.");
                self.print_error(&e);
                -1
            }
        }
    }

    async fn shutdown(&mut self) -> i32 {
        let status = match self.session_mut() {
            Ok(s) => s.status().await,
            Err(e) => Err(e),
        };
        if let Err(e) = status {
            self.p("Could not get status");
            self.print_error(&e);
            return 1;
        }
        self.flush();
        let result = match self.session_mut() {
            Ok(s) => s.stop_all(false, true).await,
            Err(e) => Err(e),
        };
        match result {
            Err(e) => {
                self.p("Shutdown of RonDB node(s) failed.");
                self.print_error(&e);
                -1
            }
            Ok((stopped, disconnect)) => {
                self.p(format!("{stopped} RonDB node(s) have shutdown."));
                if disconnect {
                    self.p("Disconnecting to allow management server to shutdown.");
                    self.session = None;
                }
                0
            }
        }
    }

    /// `check_before_config_change` / `get_node_status`: the node's type and whether it is
    /// up (`version != 0`); every node of `get status` counts, as in RonDB.
    async fn node_before_config_change(&mut self, id: u32) -> Option<(NodeType, bool)> {
        let status = match self.session_mut() {
            Ok(s) => s.status().await,
            Err(e) => Err(e),
        };
        let nodes = match status {
            Ok(n) => n,
            Err(e) => {
                self.p("Could not get status of node to deactivate");
                self.print_error(&e);
                self.p("Failed get_node_status");
                return None;
            }
        };
        let Some(n) = nodes.iter().find(|n| n.id == id) else {
            self.p(format!("Node {id} doesn't exist in cluster"));
            self.p("Failed get_node_status");
            return None;
        };
        let kind = match n.kind.as_str() {
            "NDB" => NodeType::Ndb,
            "MGM" => NodeType::Mgm,
            "API" => NodeType::Api,
            _ => {
                self.p(format!("Unknown node type in status for node {id}"));
                self.p("Failed get_node_status");
                return None;
            }
        };
        if !nodes.iter().any(|n| n.kind == "MGM") {
            self.p("At least one MGM server need to be alive to change the config");
            return None;
        }
        Some((kind, n.version != 0))
    }

    /// The configuration with `id`'s section, printing RonDB's texts when it is missing.
    async fn config_with_node(&mut self, id: u32) -> Option<ClusterConfig> {
        let cfg = match self.config().await {
            Ok(c) => c,
            Err(e) => {
                self.p("Could not get configuration");
                self.print_error(&e);
                return None;
            }
        };
        if !cfg.nodes.contains_key(&id) {
            self.node_not_in_config(id);
            return None;
        }
        Some(cfg)
    }

    async fn set_config(&mut self, cfg: &ClusterConfig) -> bool {
        let r = match self.session_mut() {
            Ok(s) => s.set_config(cfg).await,
            Err(e) => Err(e),
        };
        match r {
            Ok(()) => true,
            Err(e) => {
                self.p("Failed to change configuration");
                self.print_error(&e);
                false
            }
        }
    }

    /// `activate` / `deactivate` / `set_hostname` on the server.
    async fn simple_call(&mut self, req: Message, expect: &str, fail: i32) -> Result<(), ApiError> {
        let s = self.session_mut()?;
        let r = s.call(&req, expect, SLOW_TIMEOUT, fail).await?;
        r.result().map_err(|e| ApiError::new(fail, e))
    }

    /// `executeActivate`: NodeActive=1 in the configuration, then `activate`. An active
    /// node is fine (exit 0): activation is idempotent.
    async fn activate(&mut self, id: u32) -> i32 {
        if self.node_before_config_change(id).await.is_none() {
            return -1;
        }
        let Some(mut cfg) = self.config_with_node(id).await else {
            return -1;
        };
        if cfg.nodes.get(&id).is_some_and(|n| n.active) {
            self.p(format!("Node {id} is already activated"));
            return 0;
        }
        cfg.set_active(id, true);
        self.flush();
        if !self.set_config(&cfg).await {
            return -1;
        }
        self.p("Configuration changed to reflect activated node");
        self.p("Now activating the node in the cluster");
        self.flush();
        let req = Message::new("activate").arg("node", id);
        match self
            .simple_call(req, "activate reply", code::ACTIVATE_FAILED)
            .await
        {
            Ok(()) => {
                self.p(format!("Node {id} is now activated in the cluster"));
                0
            }
            Err(e) => {
                self.p(format!("Failed to activate node {id} in the cluster"));
                self.print_error(&e);
                -1
            }
        }
    }

    /// `stop_node`: the graceful stop DEACTIVATE does first. RonDB then waits up to 3 s for
    /// a stop event that a `-e` client never receives (it has no event thread); the stand-in
    /// skips that dead wait: `stop v2` only replies once the node is down anyway.
    async fn stop_for_deactivate(&mut self, id: u32) -> i32 {
        self.p(format!("Stopping node {id}"));
        self.flush();
        let r = match self.session_mut() {
            Ok(s) => s.stop(&[id], false, false).await,
            Err(e) => Err(e),
        };
        match r {
            Ok(_) => {
                self.p(format!("Node {id} was successfully stopped"));
                0
            }
            Err(e) => {
                self.p(format!("Node {id} failed to stop"));
                self.print_error(&e);
                -1
            }
        }
    }

    /// `executeDeactivate`: refuse an already deactivated node (exit 255: not idempotent),
    /// the last active data node or management server, and the management server this
    /// client is connected to; stop an up data node (refused stop: config unchanged); then
    /// NodeActive=0 in the configuration and `deactivate`.
    async fn deactivate(&mut self, id: u32) -> i32 {
        let Some((kind, is_up)) = self.node_before_config_change(id).await else {
            return -1;
        };
        let Some(mut cfg) = self.config_with_node(id).await else {
            return -1;
        };
        if cfg.nodes.get(&id).is_some_and(|n| !n.active) {
            self.p(format!(
                "Node {id} is already deactivated, need not be deactivated"
            ));
            return -1;
        }
        let active = cfg
            .nodes
            .values()
            .filter(|n| n.kind == kind && n.active)
            .count();
        if active == 1 {
            match kind {
                NodeType::Mgm => {
                    self.p(format!("Cannot deactivate node {id} since we need at least one active MGM server in a cluster"));
                    return -1;
                }
                NodeType::Ndb => {
                    self.p(format!("Cannot deactivate node {id} since we need at least one active Data node in a cluster"));
                    return -1;
                }
                NodeType::Api => self.p(format!("Deactivating node {id} means no API nodes can connect to the cluster, this is allowed, so proceeding")),
            }
        } else if active == 0 {
            self.p("There are no active nodes to deactivate");
            return 0;
        } else if kind == NodeType::Mgm {
            let own = self.connected_mgmd_id().await;
            match own {
                Err(e) => {
                    self.print_error(&e);
                    self.p("Failed to get node id of connected MGM server");
                    return -1;
                }
                Ok(own) if own == id => {
                    self.p("The MGM client is connected to the node you are trying to deactivate, this is not allowed.\nConnect to the other MGM server to perform the deactivation");
                    return -1;
                }
                Ok(_) => {}
            }
        }
        cfg.set_active(id, false);
        if is_up {
            match kind {
                NodeType::Ndb => {
                    if self.stop_for_deactivate(id).await < 0 {
                        return -1;
                    }
                }
                NodeType::Mgm => self.p(format!("Node {id} is a MGM server, need to deactivate it before stopping it\nsince otherwise the config change transaction will fail")),
                NodeType::Api => self.p(format!("Node {id} is an API/mysqld node, we cannot stop it from here\nwe will proceeed with deactivation still")),
            }
        } else {
            self.p(format!(
                "Node {id} is already down, proceeding to deactivation immediately"
            ));
        }
        self.flush();
        if !self.set_config(&cfg).await {
            return -1;
        }
        self.p("Configuration changed to reflect deactivated node");
        self.p("Now deactivating the node in the cluster");
        self.flush();
        let req = Message::new("deactivate").arg("node", id);
        match self
            .simple_call(req, "deactivate reply", code::DEACTIVATE_FAILED)
            .await
        {
            Ok(()) => self.p(format!("Node {id} is now deactivated in the cluster")),
            Err(e) => {
                self.p(format!("Failed to deactivate node {id} in the cluster"));
                self.print_error(&e);
                return -1;
            }
        }
        if kind == NodeType::Mgm && self.stop_for_deactivate(id).await < 0 {
            return -1;
        }
        0
    }

    /// `get mgmd nodeid` → `nodeid:<id>`.
    async fn connected_mgmd_id(&mut self) -> Result<u32, ApiError> {
        let s = self.session_mut()?;
        let r = s
            .call(
                &Message::new("get mgmd nodeid"),
                "get mgmd nodeid reply",
                CALL_TIMEOUT,
                code::ILLEGAL_SERVER_REPLY,
            )
            .await?;
        r.get_u32("nodeid")
            .ok_or_else(|| ApiError::new(code::ILLEGAL_SERVER_REPLY, "no nodeid in reply"))
    }

    /// `executeHostname`: only a deactivated node's hostname may change.
    async fn hostname(&mut self, id: u32, params: Option<&str>) -> i32 {
        if self.node_before_config_change(id).await.is_none() {
            return -1;
        }
        let Some(params) = params else {
            self.p("Need a hostname parameter to this command");
            self.p("<id> HOSTNAME hostname");
            return -1;
        };
        let words: Vec<&str> = params.split(' ').filter(|w| !w.is_empty()).collect();
        if words.len() != 1 {
            self.p("Command have too many parameters");
            self.p("<id> HOSTNAME hostname");
            return -1;
        }
        let host = words[0];
        let Some(mut cfg) = self.config_with_node(id).await else {
            return -1;
        };
        if cfg.nodes.get(&id).is_some_and(|n| n.active) {
            self.p(format!(
                "Node {id} is active, can only change hostname of a deactivated node"
            ));
            return -1;
        }
        cfg.set_hostname(id, host);
        self.flush();
        if !self.set_config(&cfg).await {
            return -1;
        }
        self.p(format!(
            "Configuration changed to reflect new hostname of node {id}"
        ));
        self.p("Now changing hostname in the cluster");
        self.flush();
        let req = Message::new("set_hostname")
            .arg("node", id)
            .arg("new_hostname", host);
        match self
            .simple_call(req, "set_hostname reply", code::SET_HOSTNAME_FAILED)
            .await
        {
            Ok(()) => {
                self.p(format!("Node {id} now has hostname {host} in the cluster"));
                0
            }
            Err(e) => {
                self.p(format!(
                    "Failed to set hostname for node {id} in the cluster"
                ));
                self.print_error(&e);
                -1
            }
        }
    }

    /// `executeStartBackup`. With a wait, a second session listens for BACKUP events
    /// (`filter: BACKUP=15`, parsable) before the backup is asked for, and the client prints
    /// the Started and Completed (or Aborted) events of this backup: up to two events, each
    /// awaited at most 60 s, three timeouts at most.
    async fn start_backup(&mut self, parameters: &str) -> i32 {
        let args = match parse_start_backup(parameters) {
            Ok(a) => a,
            Err(text) => {
                self.out.push_str(&text);
                return -1;
            }
        };
        match args.completed {
            2 => self.p("Waiting for completed, this may take several minutes"),
            1 => self.p("Waiting for started, this may take several minutes"),
            _ => {}
        }
        self.flush();
        let mut events = None;
        if args.completed > 0 {
            match self.listen_backup_events().await {
                Ok(r) => events = Some(r),
                Err(e) => {
                    self.p("Initializing start of backup failed");
                    self.print_error(&e);
                    return -1;
                }
            }
        }
        let mut req = Message::new("start backup").arg("completed", args.completed);
        if args.backup_id != 0 {
            req = req.arg("backupid", args.backup_id);
        }
        req = req.arg("backuppoint", args.backup_point);
        if let Some(pw) = &args.password {
            req = req
                .arg("encryption_password", pw)
                .arg("password_length", pw.len());
        }
        let timeout = match args.completed {
            2 => Duration::from_secs(48 * 3600),
            1 => Duration::from_secs(600),
            _ => CALL_TIMEOUT,
        };
        let reply = match self.session_mut() {
            Ok(s) => {
                s.call(
                    &req,
                    "start backup reply",
                    timeout,
                    code::COULD_NOT_START_BACKUP,
                )
                .await
            }
            Err(e) => Err(e),
        };
        let backup_id = match reply.and_then(|r| {
            r.result()
                .map_err(|e| ApiError::new(code::COULD_NOT_START_BACKUP, e))?;
            Ok(r.get_u32("id").unwrap_or(args.backup_id))
        }) {
            Ok(id) => id,
            Err(e) => {
                self.p("Backup failed");
                self.print_error(&e);
                return -1;
            }
        };
        // The write half stays open while reading: closing it would end the session.
        let Some((mut reader, _writer)) = events else {
            return 0;
        };
        let (mut count, mut retry) = (0, 0);
        while count < 2 && retry < 3 {
            match tokio::time::timeout(EVENT_TIMEOUT, read_event(&mut reader)).await {
                Err(_) => retry += 1,
                Ok(Err(_)) | Ok(Ok(None)) => break,
                Ok(Ok(Some(ev))) => {
                    let ty = ev.num("type");
                    let ours = matches!(ty, BACKUP_STARTED | BACKUP_COMPLETED | BACKUP_ABORTED)
                        && ev.num("backup_id") == u64::from(backup_id);
                    if !ours {
                        continue;
                    }
                    if let Some(text) = format_event(&ev) {
                        self.p(text);
                        self.flush();
                    }
                    count += 1;
                    if args.completed == 1 && ty == BACKUP_STARTED {
                        return 0;
                    }
                }
            }
        }
        if retry >= 3 {
            self.p(format!("get backup event failed for {retry} times"));
        }
        0
    }

    /// `ndb_mgm_create_logevent_handle` for BACKUP=15: a second session to the same server.
    async fn listen_backup_events(&mut self) -> Result<EventStream, ApiError> {
        let at = self
            .session
            .as_ref()
            .map(|s| s.client.connected_to.clone())
            .ok_or_else(|| ApiError::new(code::SERVER_NOT_CONNECTED, ""))?;
        let cs = ConnectString {
            node_id: None,
            hosts: split_host_port(&at).into_iter().collect(),
        };
        let client = MgmClient::connect(&cs, 0, Duration::ZERO)
            .await
            .map_err(|e| ApiError::new(code::SERVER_NOT_CONNECTED, e.to_string()))?;
        let (mut reader, mut writer) = client.into_parts();
        let req = Message::new("listen event")
            .arg("filter", "BACKUP=15")
            .arg("parsable", 1);
        crate::mgm::send(&mut writer, &req)
            .await
            .map_err(|e| ApiError::new(code::ILLEGAL_SERVER_REPLY, e.to_string()))?;
        let reply = tokio::time::timeout(CALL_TIMEOUT, read_message(&mut reader, false))
            .await
            .map_err(|_| ApiError::new(code::TIMED_OUT, "Time out talking to management server"))?
            .map_err(|e| ApiError::new(code::ILLEGAL_SERVER_REPLY, e.to_string()))?
            .ok_or_else(|| ApiError::new(code::ILLEGAL_SERVER_REPLY, "Probably disconnected"))?;
        if reply.head != "listen event" || reply.get("result") != Some("0") {
            let msg = reply
                .get("msg")
                .map(str::to_string)
                .unwrap_or_else(|| reply.head.clone());
            return Err(ApiError::new(code::ILLEGAL_SERVER_REPLY, msg));
        }
        Ok((reader, writer))
    }

    /// `executeAbortBackup`.
    async fn abort_backup(&mut self, parameters: &str) -> i32 {
        let id_text = parameters
            .trim_start_matches(' ')
            .split_once(' ')
            .map(|(_, r)| r.trim_start_matches(' '))
            .filter(|r| !r.is_empty());
        let Some(id_text) = id_text else {
            self.p("Invalid arguments: expected <BackupId>");
            return -1;
        };
        let Some(n) = leading_u64(id_text) else {
            self.p("Invalid arguments: expected <BackupId>");
            return -1;
        };
        if n == 0 || n >= MAX_BACKUPS || id_text.len() > MAX_BACKUPS.to_string().len() {
            self.p(format!(
                "Invalid arguments: <BackupId> out of range [1-{}]",
                MAX_BACKUPS - 1
            ));
            return -1;
        }
        let req = Message::new("abort backup").arg("id", n);
        match self
            .simple_call(req, "abort backup reply", code::COULD_NOT_ABORT_BACKUP)
            .await
        {
            Ok(()) => {
                self.p(format!("Abort of backup {n} ordered"));
                0
            }
            Err(e) => {
                self.p(format!("Abort of backup {n} failed"));
                self.print_error(&e);
                -1
            }
        }
    }
}

/// `convert`: a whole-word decimal integer (`strtol` with nothing left over).
fn convert(w: &str) -> Option<i64> {
    let t = w.trim_start();
    let digits = t.strip_prefix(['+', '-']).unwrap_or(t);
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    t.parse().ok()
}

/// Options of `ndb_mgm` (`NdbStdOpt` plus its own).
const OPTS: &[Opt] = &[
    flag("help", Some('?')),
    flag("usage", None),
    flag("version", Some('V')),
    value("ndb-connectstring", Some('c')),
    value("connect-string", None),
    value("ndb-mgmd-host", None),
    value("ndb-nodeid", None),
    value("connect-retry-delay", None),
    value("connect-retries", None),
    value("try-reconnect", Some('t')),
    value("execute", Some('e')),
    value("prompt", Some('p')),
    value("verbose", Some('v')),
    value("backup-password", None),
    flag("backup-password-from-stdin", None),
    flag("encrypt-backup", None),
    value("ndb-tls-search-path", None),
    value("ndb-mgm-tls", None),
    flag("ndb-optimized-node-selection", None),
];

/// `my_getopt`'s exit code and message for a bad command line.
pub(crate) fn option_error(program: &str, e: &cli::CliError) -> i32 {
    say_err(format_args!("{program}: [ERROR] {e}"));
    match e {
        cli::CliError::Unknown(_) => 2,
        cli::CliError::MissingValue(_) => 5,
        cli::CliError::NotANumber { .. } => 13,
    }
}

/// The connect string from `-c`/`--ndb-connectstring`/`--connect-string`/
/// `--ndb-mgmd-host`, or the positional one.
pub(crate) fn connectstring_option(p: &cli::Parsed) -> Option<String> {
    p.value("ndb-connectstring")
        .or_else(|| p.value("connect-string"))
        .or_else(|| p.value("ndb-mgmd-host"))
        .map(str::to_string)
}

pub async fn main(args: Vec<String>) -> i32 {
    let p = match cli::parse(&args, OPTS) {
        Ok(p) => p,
        Err(e) => return option_error("ndb_mgm", &e),
    };
    if p.flag("help") || p.flag("usage") {
        say(format_args!("Usage: ndb_mgm [OPTIONS] [hostname [port]]"));
        return 0;
    }
    if p.flag("version") {
        say(format_args!(
            "ndb_mgm  Ver {}",
            version_string(Version::current().packed())
        ));
        return 0;
    }
    let numbers = (|| -> Result<(u32, i64, u64), cli::CliError> {
        let verbose = p.number::<u32>("verbose")?.unwrap_or(1);
        let retries = match p.number::<i64>("try-reconnect")? {
            Some(n) => n,
            None => p.number::<i64>("connect-retries")?.unwrap_or(12),
        };
        let delay = p.number::<u64>("connect-retry-delay")?.unwrap_or(5);
        Ok((verbose, retries, delay))
    })();
    let (verbose, retries, delay) = match numbers {
        Ok(n) => n,
        Err(e) => return option_error("ndb_mgm", &e),
    };
    let mut text = connectstring_option(&p);
    match p.positional.as_slice() {
        [] => {}
        [host] => text = Some(host.clone()),
        [host, port, ..] => text = Some(format!("{host}:{port}")),
    }
    let cs = match parse_connectstring(text.as_deref()) {
        Ok(cs) => cs,
        Err(s) => {
            say_raw(format_args!(
                "{}",
                ApiError::new(code::ILLEGAL_CONNECT_STRING, s).render()
            ));
            return 255;
        }
    };
    let mut interp = Interpreter::new(cs, verbose, retries, delay);
    let ret = match p.value("execute") {
        Some(cmd) => interp.execute(cmd).await.1,
        None => interactive(&mut interp).await,
    };
    if ret < 0 {
        255
    } else {
        ret
    }
}

/// Without `-e`: RonDB's banner, then one command per stdin line until QUIT or end of input.
async fn interactive(interp: &mut Interpreter) -> i32 {
    say(format_args!("-- RonDB -- Management Client --"));
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        say_raw(format_args!("ndb_mgm> "));
        let _ = std::io::stdout().flush();
        let Ok(Some(line)) = lines.next_line().await else {
            return 0;
        };
        if !interp.execute(&line).await.0 {
            return 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "[ndbd default]\nNoOfReplicas=2\n[ndb_mgmd]\nNodeId=65\nHostName=10.0.0.5\n\
[ndbd]\nNodeId=1\nNodeGroup=0\nHostName=10.0.0.11\n[ndbd]\nNodeId=2\nNodeGroup=0\nHostName=10.0.0.12\n\
[ndbd]\nNodeId=3\nNodeGroup=1\nHostName=node-group-0-2.ndbmtd-ng-0.ns.svc.cluster.local\n\
[ndbd]\nNodeId=4\nNodeGroup=1\nNodeActive=0\n[mysqld]\nNodeId=67\nHostName=10.0.0.6\n[mysqld]\nNodeId=68\n";

    fn node(
        id: u32,
        kind: &str,
        status: &str,
        version: u32,
        group: i64,
        dynamic: u32,
        addr: &str,
    ) -> NodeStatus {
        NodeStatus {
            id,
            kind: kind.into(),
            status: status.into(),
            version,
            mysql_version: 0,
            startphase: if status == "STARTING" { 4 } else { 0 },
            dynamic_id: dynamic,
            node_group: group,
            connect_count: 0,
            address: addr.into(),
        }
    }

    const V: u32 = (24 << 16) | (10 << 8) | 17;

    #[test]
    fn show_prints_rondbs_layout() {
        let cfg = ClusterConfig::parse(CONFIG).unwrap();
        let nodes = vec![
            node(67, "API", "CONNECTED", V, 0, 0, "10.0.0.6"),
            node(1, "NDB", "STARTED", V, 0, 2, "10.0.0.11"),
            node(2, "NDB", "STARTING", V, 0, 3, "10.0.0.12"),
            node(3, "NDB", "NO_CONTACT", 0, 0, 0, ""),
            node(4, "NDB", "NO_CONTACT", 0, 0, 0, ""),
            node(65, "MGM", "CONNECTED", V, 0, 0, "10.0.0.5"),
            node(68, "API", "NO_CONTACT", 0, 0, 0, ""),
        ];
        assert_eq!(
            format_show(&nodes, &cfg),
            "Cluster Configuration\n---------------------\n\
[ndbd(NDB)]\t4 node(s)\n\
id=1\t@10.0.0.11  (RonDB-24.10.17, Nodegroup: 0, *)\n\
id=2\t@10.0.0.12  (RonDB-24.10.17, starting, Nodegroup: 0)\n\
id=3 (not connected, accepting connect from node-group-0-2.ndbmtd-ng-0.ns.svc.cluster.local)\n\
id=4 (not connected, node is deactivated)\n\n\
[ndb_mgmd(MGM)]\t1 node(s)\n\
id=65\t@10.0.0.5  (RonDB-24.10.17)\n\n\
[mysqld(API)]\t2 node(s)\n\
id=67\t@10.0.0.6  (RonDB-24.10.17)\n\
id=68 (not connected, accepting connect from any host)\n\n"
        );
    }

    #[test]
    fn show_marks_nodes_without_group_and_address() {
        let cfg = ClusterConfig::parse(CONFIG).unwrap();
        let nodes = vec![node(1, "NDB", "STARTED", V, RNIL_GROUP, 1, "")];
        let text = format_show(&nodes, &cfg);
        assert!(
            text.contains("id=1   (RonDB-24.10.17, no nodegroup, *)\n"),
            "{text}"
        );
    }

    #[test]
    fn status_lines_match_rondb() {
        assert_eq!(
            format_status(&node(1, "NDB", "STARTED", V, 0, 1, "x")),
            "Node 1: started (RonDB-24.10.17)"
        );
        assert_eq!(
            format_status(&node(2, "NDB", "STARTING", V, 0, 1, "x")),
            "Node 2: starting (Last completed phase 4) (RonDB-24.10.17)"
        );
        assert_eq!(
            format_status(&node(3, "NDB", "NO_CONTACT", 0, 0, 0, "")),
            "Node 3: not connected"
        );
        assert_eq!(
            format_status(&node(3, "NDB", "NOT_STARTED", V, 0, 0, "")),
            "Node 3: not started (RonDB-24.10.17)"
        );
        assert_eq!(
            format_status(&node(65, "MGM", "CONNECTED", V, 0, 0, "")),
            "Node 65: connected (RonDB Version 24.10.17)"
        );
        assert_eq!(
            format_status(&node(67, "API", "NO_CONTACT", 0, 0, 0, "")),
            "Node 67: not connected"
        );
        assert_eq!(
            format_status(&node(
                66,
                "API",
                "CONNECTED",
                (22 << 16) | (1 << 8),
                0,
                0,
                ""
            )),
            "Node 66: connected (RonDB Version 22.01.0)"
        );
    }

    #[test]
    fn backup_events_print_as_rondb() {
        let mut ev = LogEvent::default();
        for (k, v) in [
            ("type", "56"),
            ("source_nodeid", "1"),
            ("starting_node", "65"),
            ("backup_id", "5"),
            ("start_gci", "1234"),
            ("stop_gci", "1237"),
            ("n_bytes", "51880"),
            ("n_records", "2059"),
            ("n_log_bytes", "0"),
            ("n_log_records", "0"),
        ] {
            ev.fields.insert(k.into(), v.into());
        }
        assert_eq!(
            format_event(&ev).unwrap(),
            "Node 1: Backup 5 started from node 65 completed\n StartGCP: 1234 StopGCP: 1237\n #Records: 2059 #LogRecords: 0\n Data: 51880 bytes Log: 0 bytes"
        );
        ev.fields.insert("type".into(), "54".into());
        assert_eq!(
            format_event(&ev).unwrap(),
            "Node 1: Backup 5 started from node 65"
        );
        ev.fields.insert("type".into(), "99".into());
        assert_eq!(format_event(&ev), None);
    }

    #[tokio::test]
    async fn reads_parsable_events_between_pings() {
        let wire = b"<PING>\nlog event reply\ntype=54\ntime=1\nsource_nodeid=2\nstarting_node=65\nbackup_id=7\n\n<PING>\n" as &[u8];
        let mut r = BufReader::new(wire);
        let ev = read_event(&mut r).await.unwrap().unwrap();
        assert_eq!(ev.num("type"), 54);
        assert_eq!(ev.num("backup_id"), 7);
        assert_eq!(read_event(&mut r).await.unwrap(), None);
    }

    #[test]
    fn parses_start_backup_like_rondb() {
        let a = parse_start_backup("BACKUP 5 SNAPSHOTEND WAIT COMPLETED").unwrap();
        assert_eq!((a.backup_id, a.backup_point, a.completed), (5, 0, 2));
        let a = parse_start_backup("backup snapshotstart nowait").unwrap();
        assert_eq!((a.backup_id, a.backup_point, a.completed), (0, 1, 0));
        let a = parse_start_backup("BACKUP WAIT STARTED").unwrap();
        assert_eq!(a.completed, 1);
        let a = parse_start_backup("BACKUP 9 ENCRYPT PASSWORD='Secret Word'").unwrap();
        assert_eq!(a.password.as_deref(), Some("Secret Word"));
        assert_eq!(
            parse_start_backup("BACKUP 0").unwrap_err(),
            "Invalid command: BACKUP 0\nBackup ID out of range [1 - 4294967294]\nType HELP for help.\n\n"
        );
        assert_eq!(
            parse_start_backup("BACKUP WAIT").unwrap_err(),
            "Invalid command: BACKUP WAIT\nType HELP for help.\n\n"
        );
        assert!(parse_start_backup("BACKUP NOWAIT WAIT STARTED").is_err());
        assert!(parse_start_backup("BACKUP SNAPSHOTEND SNAPSHOTSTART").is_err());
        assert!(parse_start_backup("BACKUP 5 BOGUS").is_err());
    }

    #[test]
    fn reads_connect_strings_as_localconfig() {
        let cs = parse_connectstring(Some("nodeid=4,host=10.0.0.5:1187;mgmd2")).unwrap();
        assert_eq!(cs.node_id, Some(4));
        assert_eq!(
            cs.hosts,
            vec![("10.0.0.5".into(), 1187), ("mgmd2".into(), 1186)]
        );
        assert_eq!(connectstring_text(&cs), "nodeid=4,10.0.0.5:1187,mgmd2:1186");
        let cs = parse_connectstring(Some("127.0.0.3 1200")).unwrap();
        assert_eq!(cs.hosts, vec![("127.0.0.3".into(), 1200)]);
        assert!(parse_connectstring(Some("h:notaport")).is_err());
    }

    #[test]
    fn prints_errors_as_print_error() {
        let e = ApiError::new(
            code::STOP_FAILED,
            "Node shutdown would cause system crash: Permanent error: Application error",
        );
        assert_eq!(
            e.render(),
            "*  2002: Stop failed\n*        Node shutdown would cause system crash: Permanent error: Application error\n"
        );
    }

    #[test]
    fn node_ids_are_whole_integers() {
        assert_eq!(convert("3"), Some(3));
        assert_eq!(convert("-1"), Some(-1));
        assert_eq!(convert("3x"), None);
        assert_eq!(convert("SHOW"), None);
    }
}

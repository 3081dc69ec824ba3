//! `ndb_waiter`: waits until every data node is in one state (STARTED by default), as RonDB's
//! `tools/waiter.cpp` does. Control planes gate SQL nodes on it (`ndb_waiter -c CS
//! --timeout=N`, retried with growing timeouts), so its timing rules matter as much as its
//! texts: it polls `get status` every 100 ms, looks at data nodes only, skips the nodes the
//! configuration says are inactive (`Node N: INACTIVE`), and, while waiting for STARTED,
//! restarts the timeout (up to ten times) as long as every node is STARTED or STARTING.
//!
//! Exit codes: 0 all nodes in the state; 1 timeout or mismatch; 2 bad arguments; 3 no
//! management server (`Connection to <connect string> failed` on stderr).

use crate::cli::{self, flag, value, Opt};
use crate::mgm::{ConnectString, NodeStatus};
use crate::ndb_mgm::{self, connectstring_text, say, say_err, say_raw, Session};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const OK: i32 = 0;
const FAILED: i32 = 1;
const WRONG_ARGS: i32 = 2;
const CONNECT_FAILED: i32 = 3;

/// `ABS_MAX_NODES`: node ids in a wait/nowait mask are 1..=255.
const MAX_NODE_ID: u32 = 255;
/// How often the timeout may be restarted while nodes are still starting.
const MAX_RESET_ATTEMPTS: u32 = 10;
const POLL: Duration = Duration::from_millis(100);

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
    value("ndb-tls-search-path", None),
    value("ndb-mgm-tls", None),
    flag("no-contact", Some('n')),
    flag("not-started", None),
    flag("single-user", None),
    value("timeout", Some('t')),
    value("wait-nodes", Some('w')),
    value("nowait-nodes", None),
    flag("allow-partial-start", None),
    value("verbose", Some('v')),
];

/// Why a node mask was refused (`parse_mask`: -2 an id out of range, -1 a syntax error).
#[derive(Debug, PartialEq, Eq)]
pub enum MaskError {
    InvalidNodeId,
    Syntax,
}

/// `parse_mask`: `1,2-4` → {1, 2, 3, 4}. Node id 0 is refused as RonDB refuses it.
pub fn parse_mask(s: &str) -> Result<BTreeSet<u32>, MaskError> {
    let mut out = BTreeSet::new();
    for part in s.split(',').map(str::trim) {
        if part.is_empty() {
            return Err(MaskError::Syntax);
        }
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let a: u32 = a.parse().map_err(|_| MaskError::Syntax)?;
        let b: u32 = b.parse().map_err(|_| MaskError::Syntax)?;
        if a > b {
            return Err(MaskError::Syntax);
        }
        if b > MAX_NODE_ID || a == 0 {
            return Err(MaskError::InvalidNodeId);
        }
        out.extend(a..=b);
    }
    Ok(out)
}

/// `ndb_mgm_get_node_status_string`: statuses mgmapi does not know print as UNKNOWN.
pub fn status_name(s: &str) -> &'static str {
    match s {
        "NO_CONTACT" => "NO_CONTACT",
        "NOT_STARTED" => "NOT_STARTED",
        "STARTING" => "STARTING",
        "STARTED" => "STARTED",
        "SHUTTING_DOWN" => "SHUTTING_DOWN",
        "RESTARTING" => "RESTARTING",
        "SINGLE USER MODE" => "SINGLE USER MODE",
        "RESUME" => "RESUME",
        "CONNECTED" => "CONNECTED",
        _ => "UNKNOWN",
    }
}

/// `printNodesStatus`: one line per waited-for data node; a node not in `target` gets
/// ` (waited for TARGET)`. The flag says whether every node matched.
pub fn final_lines(nodes: &[NodeStatus], target: &str) -> (String, bool) {
    let mut out = String::new();
    let mut all = true;
    for n in nodes {
        let s = status_name(&n.status);
        out.push_str(&format!("Node {}: {s}", n.id));
        if s != target {
            all = false;
            out.push_str(&format!(" (waited for {target})"));
        }
        out.push('\n');
    }
    (out, all)
}

/// The data nodes the waiter looks at: NDB nodes not in the nowait set.
pub fn waited_nodes(all: Vec<NodeStatus>, nowait: &BTreeSet<u32>) -> Vec<NodeStatus> {
    all.into_iter()
        .filter(|n| n.kind == "NDB" && !nowait.contains(&n.id))
        .collect()
}

/// Whether the poll loop is done: every waited-for node in `target` (and at least one
/// node), or with `--allow-partial-start` any node STARTED.
pub fn all_in_state(nodes: &[NodeStatus], target: &str, allow_partial: bool) -> bool {
    let mut all = !nodes.is_empty();
    let mut any_started = false;
    for n in nodes {
        let s = status_name(&n.status);
        if s != target {
            all = false;
        }
        if s == "STARTED" {
            any_started = true;
        }
    }
    all || (target == "STARTED" && any_started && allow_partial)
}

struct Waiter {
    cs: ConnectString,
    target: &'static str,
    timeout_secs: u64,
    allow_partial: bool,
    verbose: i64,
    retries: i64,
    delay: u64,
    nowait: BTreeSet<u32>,
    nodes: Vec<NodeStatus>,
    session: Option<Session>,
}

/// How `waitClusterStatus` ended.
enum Wait {
    Done,
    Failed,
    NoConnection,
    /// No configuration from the server: RonDB exits with -1 (255).
    NoConfig,
}

impl Waiter {
    fn failed_connection(&self) {
        say_err(format_args!(
            "Connection to {} failed",
            connectstring_text(&self.cs)
        ));
    }

    /// `getStatus`: on a failed `get status`, reconnect once (with the connect retries) and
    /// ask again; no reconnect is a lost management server (exit 3).
    async fn poll(&mut self) -> Result<(), Wait> {
        let first = match self.session.as_mut() {
            Some(s) => s.status().await.ok(),
            None => None,
        };
        let all = match first {
            Some(all) => all,
            None => {
                self.session = None;
                let client =
                    ndb_mgm::connect(&self.cs, self.retries - 1, self.delay, self.verbose > 1)
                        .await;
                let Some(client) = client else {
                    if self.verbose > 1 {
                        say_err(format_args!("Reconnect failed"));
                    }
                    return Err(Wait::NoConnection);
                };
                if self.verbose > 1 {
                    say(format_args!("Connect succeeded"));
                }
                let mut s = Session { client };
                let again = s.status().await;
                self.session = Some(s);
                again.map_err(|_| Wait::Failed)?
            }
        };
        self.nodes = waited_nodes(all, &self.nowait);
        Ok(())
    }

    async fn wait(&mut self) -> Wait {
        if self.verbose > 1 {
            say(format_args!(
                "Connecting to management server at {} (using cleartext)",
                connectstring_text(&self.cs)
            ));
        }
        let Some(client) =
            ndb_mgm::connect(&self.cs, self.retries - 1, self.delay, self.verbose > 1).await
        else {
            self.failed_connection();
            return Wait::NoConnection;
        };
        let mut session = Session { client };
        // RonDB's fix for activation pickup: inactive data nodes are not waited for.
        match session.config().await {
            Ok(cfg) => {
                for n in cfg.data_nodes().filter(|n| !n.active) {
                    say(format_args!("Node {}: INACTIVE", n.id));
                    self.nowait.insert(n.id);
                }
            }
            Err(_) => {
                say(format_args!(
                    "Could not get configuration from MGM Server, exiting"
                ));
                return Wait::NoConfig;
            }
        }
        self.session = Some(session);
        let mut attempts: u64 = 0;
        let mut resets = 0;
        let mut start = Instant::now();
        let mut now = start;
        loop {
            if self.timeout_secs > 0 && now.duration_since(start).as_secs() > self.timeout_secs {
                let still_starting = self.target == "STARTED"
                    && self
                        .nodes
                        .iter()
                        .all(|n| matches!(status_name(&n.status), "STARTED" | "STARTING"));
                if !still_starting || resets > MAX_RESET_ATTEMPTS {
                    if self.verbose > 1 {
                        say_err(format_args!(
                            "waitNodeState({}, -1) timeout after {attempts} attempts",
                            self.target
                        ));
                    }
                    return Wait::Failed;
                }
                if self.verbose > 1 {
                    say_err(format_args!(
                        "waitNodeState({}, -1) resetting timeout {resets}",
                        self.target
                    ));
                }
                start = now;
                resets += 1;
            }
            if attempts > 0 {
                tokio::time::sleep(POLL).await;
            }
            if let Err(w) = self.poll().await {
                if matches!(w, Wait::NoConnection) {
                    self.failed_connection();
                }
                return w;
            }
            let done = all_in_state(&self.nodes, self.target, self.allow_partial);
            if self.verbose > 1 {
                for n in &self.nodes {
                    say(format_args!("Node {}: {}", n.id, status_name(&n.status)));
                }
                if !done {
                    say(format_args!(
                        "[{}] Waiting for cluster enter state {}",
                        clock(),
                        self.target
                    ));
                }
            }
            if done {
                return Wait::Done;
            }
            attempts += 1;
            now = Instant::now();
        }
    }
}

/// `hh:mm:ss` of the current time (UTC: the stand-in runs in containers without a zone).
fn clock() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!(
        "{:02}:{:02}:{:02}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60
    )
}

pub async fn main(args: Vec<String>) -> i32 {
    let p = match cli::parse(&args, OPTS) {
        Ok(p) => p,
        Err(e) => {
            ndb_mgm::option_error("ndb_waiter", &e);
            return WRONG_ARGS;
        }
    };
    if p.flag("help") || p.flag("usage") {
        say(format_args!("Usage: ndb_waiter [OPTIONS] [connectstring]"));
        return OK;
    }
    if p.flag("version") {
        say(format_args!(
            "ndb_waiter  Ver {}",
            ndb_mgm::version_string(crate::version::Version::current().packed())
        ));
        return OK;
    }
    let numbers = (|| -> Result<(i64, i64, i64, u64), cli::CliError> {
        Ok((
            p.number::<i64>("timeout")?.unwrap_or(120),
            p.number::<i64>("verbose")?.unwrap_or(1),
            p.number::<i64>("connect-retries")?.unwrap_or(12),
            p.number::<u64>("connect-retry-delay")?.unwrap_or(5),
        ))
    })();
    let (timeout, verbose, retries, delay) = match numbers {
        Ok(n) => n,
        Err(e) => {
            ndb_mgm::option_error("ndb_waiter", &e);
            return WRONG_ARGS;
        }
    };
    let target = if p.flag("no-contact") {
        "NO_CONTACT"
    } else if p.flag("not-started") {
        "NOT_STARTED"
    } else if p.flag("single-user") {
        "SINGLE USER MODE"
    } else {
        "STARTED"
    };
    let mut nowait = BTreeSet::new();
    if let Some(m) = p.value("nowait-nodes") {
        match parse_mask(m) {
            Ok(set) => nowait = set,
            Err(MaskError::InvalidNodeId) => {
                say(format_args!(
                    "Invalid nodeid specified in nowait-nodes: {m}"
                ));
                return WRONG_ARGS;
            }
            Err(MaskError::Syntax) => {
                say(format_args!("Unable to parse nowait-nodes argument: {m}"));
                return WRONG_ARGS;
            }
        }
    }
    if let Some(m) = p.value("wait-nodes") {
        if p.value("nowait-nodes").is_some() {
            say(format_args!(
                "Can not set both wait-nodes and nowait-nodes."
            ));
            return WRONG_ARGS;
        }
        match parse_mask(m) {
            // Don't wait for any other nodes than the ones given.
            Ok(set) => nowait = (1..=MAX_NODE_ID).filter(|i| !set.contains(i)).collect(),
            Err(MaskError::InvalidNodeId) => {
                say(format_args!("Invalid nodeid specified in wait-nodes: {m}"));
                return WRONG_ARGS;
            }
            Err(MaskError::Syntax) => {
                say(format_args!("Unable to parse wait-nodes argument: {m}"));
                return WRONG_ARGS;
            }
        }
    }
    // RonDB takes the first positional argument as the connect string.
    let text = p
        .positional
        .first()
        .cloned()
        .or_else(|| ndb_mgm::connectstring_option(&p));
    let cs = match ndb_mgm::parse_connectstring(text.as_deref()) {
        Ok(cs) => cs,
        Err(s) => {
            say_err(format_args!("Connectstring {s} is invalid"));
            return CONNECT_FAILED;
        }
    };
    let mut w = Waiter {
        cs,
        target,
        timeout_secs: u64::try_from(timeout).unwrap_or(0),
        allow_partial: p.flag("allow-partial-start"),
        verbose,
        retries,
        delay,
        nowait,
        nodes: Vec::new(),
        session: None,
    };
    let mut ok = match w.wait().await {
        Wait::NoConnection => return CONNECT_FAILED,
        Wait::NoConfig => return 255,
        Wait::Done => true,
        Wait::Failed => false,
    };
    if verbose == 1 {
        // Only verbose=1 prints (and re-checks) the final state: 0 prints nothing, 2 has
        // printed every poll already.
        let (text, all) = final_lines(&w.nodes, target);
        say_raw(format_args!("{text}"));
        ok = all;
    }
    if ok {
        OK
    } else {
        FAILED
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ndb(id: u32, status: &str) -> NodeStatus {
        NodeStatus {
            id,
            kind: "NDB".into(),
            status: status.into(),
            version: 0,
            mysql_version: 0,
            startphase: 0,
            dynamic_id: 0,
            node_group: 0,
            connect_count: 0,
            address: String::new(),
        }
    }

    #[test]
    fn masks_parse_like_parse_mask() {
        assert_eq!(
            parse_mask("1,2-4").unwrap().into_iter().collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        assert_eq!(parse_mask("0"), Err(MaskError::InvalidNodeId));
        assert_eq!(parse_mask("300"), Err(MaskError::InvalidNodeId));
        assert_eq!(parse_mask("a"), Err(MaskError::Syntax));
        assert_eq!(parse_mask("1,,2"), Err(MaskError::Syntax));
    }

    #[test]
    fn final_lines_mark_mismatches() {
        let nodes = vec![ndb(1, "STARTED"), ndb(2, "STARTING"), ndb(3, "WEIRD")];
        let (text, all) = final_lines(&nodes, "STARTED");
        assert_eq!(
            text,
            "Node 1: STARTED\nNode 2: STARTING (waited for STARTED)\nNode 3: UNKNOWN (waited for STARTED)\n"
        );
        assert!(!all);
        let (_, all) = final_lines(&nodes[..1], "STARTED");
        assert!(all);
    }

    #[test]
    fn waits_only_for_active_data_nodes() {
        let mut api = ndb(67, "CONNECTED");
        api.kind = "API".into();
        let nowait: BTreeSet<u32> = [2].into_iter().collect();
        let nodes = waited_nodes(vec![ndb(1, "STARTED"), ndb(2, "NO_CONTACT"), api], &nowait);
        assert_eq!(nodes.iter().map(|n| n.id).collect::<Vec<_>>(), vec![1]);
        assert!(all_in_state(&nodes, "STARTED", false));
        assert!(!all_in_state(&[], "STARTED", false));
        let mixed = vec![ndb(1, "STARTED"), ndb(2, "STARTING")];
        assert!(!all_in_state(&mixed, "STARTED", false));
        assert!(all_in_state(&mixed, "STARTED", true));
        assert!(!all_in_state(&mixed, "NOT_STARTED", true));
    }
}

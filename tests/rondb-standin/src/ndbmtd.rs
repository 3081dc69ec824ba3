//! `ndbmtd` / `ndbd`: a data node. By default (and with `--nodaemon`) an *angel* process
//! allocates the node id from the management server and runs the real node as its child; the
//! angel ignores SIGTERM, respawns the child when it exits asking for a restart (how an mgm
//! `RESTART` works) and exits 0 after a graceful stop. `--foreground` runs the node without
//! an angel. The node walks NOT_STARTED → STARTING (start phases) → STARTED, holds its node
//! group's rows in its file system, copies what it missed from a started node of its group,
//! serves API nodes on its `ServerPort`, and shuts down when its node group is lost.

use crate::backup::{self, CtlFile, DataFile};
use crate::cli::{self, flag, value, Opt};
use crate::config::{ClusterConfig, NodeDef, NodeType};
use crate::logging::Log;
use crate::mgm::{ConnectString, Message, MgmClient};
use crate::store::{NodeData, Store, StoreError};
use crate::transporter::{self, DataReply, DataRequest, DataStatus, FromMgmd, JoinReply, ToMgmd};
use crate::version::Version;
use base64::Engine as _;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::BufReader;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const OPTIONS: &[Opt] = &[
    value("ndb-connectstring", Some('c')),
    value("connect-string", None),
    value("ndb-nodeid", None),
    flag("initial", None),
    flag("nostart", Some('n')),
    flag("daemon", Some('d')),
    flag("nodaemon", None),
    flag("foreground", None),
    value("nowait-nodes", None),
    flag("initial-start", None),
    value("bind-address", None),
    value("connect-retries", None),
    value("connect-retry-delay", None),
    flag("verbose", Some('v')),
    value("logbuffer-size", None),
    flag("version", Some('V')),
    // Passed by the angel to its child, as RonDB's angel does.
    value("allocated-nodeid", None),
    value("angel-pid", None),
];

/// Child exit codes the angel understands (RonDB's NdbRestartType).
const EXIT_STOPPED: i32 = 0;
const EXIT_RESTART_NOSTART: i32 = 1;
const EXIT_RESTART: i32 = 2;
const EXIT_INITIAL_NOSTART: i32 = 3;
const EXIT_INITIAL: i32 = 4;
/// A forced shutdown (error): with the default `StopOnError=1` the angel exits too.
const EXIT_ERROR: i32 = 255;

/// How long each start phase takes (`RONDB_STANDIN_PHASE_MS`, default 200 ms), so tests
/// can make starts fast while the sequence stays RonDB's.
fn phase_time() -> Duration {
    Duration::from_millis(
        std::env::var("RONDB_STANDIN_PHASE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(200),
    )
}

/// Test-only (`RONDB_STANDIN_RECONNECT_DELAY_MS`, default 0): how long a node waits before
/// it tries to reconnect to a management server it lost, so tests can make one node's link
/// come back late.
fn reconnect_delay() -> Duration {
    Duration::from_millis(
        std::env::var("RONDB_STANDIN_RECONNECT_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    )
}

pub async fn main(args: Vec<String>) -> i32 {
    let opts = match cli::parse(&args, OPTIONS) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("ndbmtd: [ERROR] {e}");
            return 1;
        }
    };
    let version = Version::current();
    if opts.flag("version") {
        println!("ndbmtd  Ver 8.0.37 for Linux on x86_64 (RonDB-{version})");
        return 0;
    }
    let cs_text = opts
        .value("ndb-connectstring")
        .or(opts.value("connect-string"))
        .unwrap_or("localhost:1186");
    let cs = match ConnectString::parse(cs_text) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ndbmtd: [ERROR] {e}");
            return 1;
        }
    };
    let retries: u32 = opts.number("connect-retries").ok().flatten().unwrap_or(12);
    let delay = Duration::from_secs(
        opts.number("connect-retry-delay")
            .ok()
            .flatten()
            .unwrap_or(5),
    );
    let log = Log::stdout("ndbd");
    if let Some(id) = opts.number::<u32>("allocated-nodeid").ok().flatten() {
        return node(&opts, &cs, id, version, &log).await;
    }
    if !opts.flag("nodaemon") && !opts.flag("foreground") {
        return crate::daemonize("ndbmtd", &args);
    }
    let wanted = opts
        .number::<u32>("ndb-nodeid")
        .ok()
        .flatten()
        .or(cs.node_id);
    if opts.flag("foreground") {
        // No angel: the node allocates its own id and runs in this process.
        let id = match allocate(&cs, wanted, version, retries, delay, &log).await {
            Ok((_, id)) => id,
            Err(e) => {
                log.error(&e);
                return 1;
            }
        };
        return node(&opts, &cs, id, version, &log).await;
    }
    angel(&args, &cs, wanted, version, retries, delay, &log).await
}

/// Allocates a data node id (retrying as RonDB's angel does), keeping the session open:
/// the reservation lasts as long as it.
async fn allocate(
    cs: &ConnectString,
    wanted: Option<u32>,
    version: Version,
    retries: u32,
    delay: Duration,
    log: &Log,
) -> Result<(MgmClient, u32), String> {
    let mut last = String::new();
    // RonDB's angel tries 10 times, 3 s apart; fewer when told to retry connecting less.
    for attempt in 0..retries.clamp(1, 10) {
        if attempt > 0 {
            tokio::time::sleep(delay.min(Duration::from_secs(3))).await;
        }
        let mut c = match MgmClient::connect(cs, retries, delay).await {
            Ok(c) => c,
            Err(e) => return Err(format!("Failed to connect to management server: {e}")),
        };
        if attempt == 0 {
            log.info(&format!("Angel connected to '{}'", c.connected_to));
        }
        let req = Message::new("get nodeid")
            .arg("version", version.packed())
            .arg("nodetype", NodeType::Ndb.wire())
            .arg("nodeid", wanted.unwrap_or(0))
            .arg("user", "mysqld")
            .arg("password", "mysqld")
            .arg("public key", "a public key")
            .arg("endian", "little")
            .arg("timeout", 20);
        match c.call(&req, Duration::from_secs(30)).await {
            Ok(r) => match (r.result(), r.get_u32("nodeid")) {
                (Ok(()), Some(id)) => return Ok((c, id)),
                (Err(text), _) => {
                    last = format!("Could not alloc node id at {}: {text}", c.connected_to);
                    log.warn(&format!("Failed to allocate nodeid, error: '{last}'"));
                    // A newer data node than the management server never gets an id.
                    if text.contains("is newer than") {
                        break;
                    }
                }
                (Ok(()), None) => last = "no nodeid in the reply".into(),
            },
            Err(e) => last = e.to_string(),
        }
    }
    Err(format!("Failed to allocate nodeid, error: '{last}'"))
}

/// The angel: allocate, run the node as a child, respawn it when it asks for a restart.
async fn angel(
    args: &[String],
    cs: &ConnectString,
    wanted: Option<u32>,
    version: Version,
    retries: u32,
    delay: Duration,
    log: &Log,
) -> i32 {
    let (mut session, id) = match allocate(cs, wanted, version, retries, delay, log).await {
        Ok(x) => x,
        Err(e) => {
            log.error(&e);
            return 1;
        }
    };
    log.info(&format!("Angel allocated nodeid: {id}"));
    // After forking, RonDB's angel ignores these signals: only the node stops gracefully.
    let mut ignored = Vec::new();
    for kind in [
        tokio::signal::unix::SignalKind::terminate(),
        tokio::signal::unix::SignalKind::interrupt(),
        tokio::signal::unix::SignalKind::hangup(),
        tokio::signal::unix::SignalKind::quit(),
        tokio::signal::unix::SignalKind::pipe(),
    ] {
        if let Ok(s) = tokio::signal::unix::signal(kind) {
            ignored.push(s);
        }
    }
    let base: Vec<String> = args
        .iter()
        .filter(|a| *a != "--initial" && *a != "--nostart" && *a != "-n")
        .cloned()
        .collect();
    let mut initial = args.iter().any(|a| a == "--initial");
    let mut nostart = args.iter().any(|a| a == "--nostart" || a == "-n");
    let Ok(exe) = std::env::current_exe() else {
        log.error("Cannot find my own executable to start the node");
        return 1;
    };
    let program = std::env::args()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .filter(|n| n != "rondb-standin")
        .unwrap_or_else(|| "ndbmtd".into());
    loop {
        let mut cmd = tokio::process::Command::new(&exe);
        if exe.file_name().is_some_and(|n| n == "rondb-standin") {
            cmd.arg(&program);
        } else {
            cmd.arg0(&program);
        }
        cmd.args(&base)
            .arg(format!("--allocated-nodeid={id}"))
            .arg(format!("--angel-pid={}", std::process::id()));
        if initial {
            cmd.arg("--initial");
        }
        if nostart {
            cmd.arg("--nostart");
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                log.error(&format!("Angel could not start the node: {e}"));
                return 1;
            }
        };
        log.info(&format!(
            "Angel pid: {} started child: {}",
            std::process::id(),
            child.id().unwrap_or(0)
        ));
        let status = child.wait().await;
        let code = status.ok().and_then(|s| s.code());
        match code {
            Some(EXIT_STOPPED) => {
                log.info("Angel shutting down");
                return 0;
            }
            Some(
                c @ (EXIT_RESTART_NOSTART | EXIT_RESTART | EXIT_INITIAL_NOSTART | EXIT_INITIAL),
            ) => {
                initial = c == EXIT_INITIAL || c == EXIT_INITIAL_NOSTART;
                nostart = c == EXIT_RESTART_NOSTART || c == EXIT_INITIAL_NOSTART;
                log.info(&format!(
                    "Ndb has terminated (pid {}) restarting",
                    std::process::id()
                ));
                // Allocate the same node id again before respawning, as RonDB's angel does.
                let again = Message::new("get nodeid")
                    .arg("version", version.packed())
                    .arg("nodetype", NodeType::Ndb.wire())
                    .arg("nodeid", id)
                    .arg("user", "mysqld")
                    .arg("password", "mysqld")
                    .arg("public key", "a public key")
                    .arg("endian", "little")
                    .arg("timeout", 20);
                let ok = match session.call(&again, Duration::from_secs(30)).await {
                    Ok(r) => r.result().is_ok(),
                    Err(_) => false,
                };
                if !ok {
                    match allocate(cs, Some(id), version, retries, delay, log).await {
                        Ok((s, _)) => session = s,
                        Err(e) => {
                            log.error(&e);
                            return 1;
                        }
                    }
                }
            }
            other => {
                // StopOnError=1 (RonDB's default): an error stop ends the angel too.
                log.alert(&format!(
                    "Angel received ndbd exit {}; StopOnError is set, not restarting",
                    other
                        .map(|c| c.to_string())
                        .unwrap_or_else(|| "by signal".into())
                ));
                return 1;
            }
        }
    }
}

/// The running node's shared state.
struct Node {
    id: u32,
    log: Log,
    def: NodeDef,
    store: Store,
    status: DataStatus,
    /// The epoch of this node's group; writes of another epoch are refused.
    epoch: u64,
    /// Member of the group (joined in phase 4): writes reach it.
    member: bool,
    /// Writes taken while joining (phase 4), applied again over a copy from a peer.
    replay: Option<Vec<DataRequest>>,
    phase: u32,
    join_reply: Option<JoinReply>,
    start_ordered: bool,
}

type Shared = Arc<Mutex<Node>>;

fn lock(n: &Shared) -> MutexGuard<'_, Node> {
    match n.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// How the node's process ends.
enum End {
    Stop {
        restart: bool,
        initial: bool,
        nostart: bool,
    },
    Forced {
        code: u32,
        text: String,
        phase: u32,
    },
}

async fn node(opts: &cli::Parsed, cs: &ConnectString, id: u32, version: Version, log: &Log) -> i32 {
    let initial = opts.flag("initial");
    let nostart = opts.flag("nostart");
    // The configuration first: it says where the file system is and which port to serve.
    let mut client = match MgmClient::connect(cs, 12, Duration::from_secs(1)).await {
        Ok(c) => c,
        Err(e) => {
            log.error(&e.to_string());
            return EXIT_ERROR;
        }
    };
    let config = match fetch_config(&mut client).await {
        Ok(c) => c,
        Err(e) => {
            log.error(&format!(
                "Could not get the configuration from {}: {e}",
                client.connected_to
            ));
            return EXIT_ERROR;
        }
    };
    let Some(def) = config
        .nodes
        .get(&id)
        .filter(|d| d.kind == NodeType::Ndb)
        .cloned()
    else {
        log.error(&format!(
            "Node {id} is not a data node in the configuration"
        ));
        return EXIT_ERROR;
    };
    let node_log = match Log::to_file(
        "ndbd",
        &std::path::Path::new(&def.data_dir).join(format!("ndb_{id}_out.log")),
    ) {
        Ok(l) => l,
        Err(e) => {
            log.error(&format!(
                "Cannot open the node log in {}: {e}",
                def.data_dir
            ));
            return EXIT_ERROR;
        }
    };
    let bind_host = opts
        .value("bind-address")
        .map(str::to_string)
        .or(def.host.clone())
        .unwrap_or_else(|| "0.0.0.0".into());
    let Some(ip) = crate::config::resolve(&bind_host) else {
        node_log.error(&format!(
            "Cannot resolve this node's HostName '{bind_host}'"
        ));
        return EXIT_ERROR;
    };
    let listener = match TcpListener::bind(SocketAddr::new(ip, def.port)).await {
        Ok(l) => l,
        Err(e) => {
            node_log.error(&format!(
                "Unable to listen on {ip}:{} (ServerPort): {e}",
                def.port
            ));
            return EXIT_ERROR;
        }
    };
    // The file system: wiped by --initial; a non-initial start needs one.
    let store = match Store::open(&def.fs_dir(), initial) {
        Ok(s) => s,
        Err(e @ StoreError::NoFileSystem(_)) => {
            node_log.alert(&format!(
                "Forced node shutdown completed. Occurred during startphase 1. Caused by error 2352: '{e}'. Permanent error, external action needed."
            ));
            return EXIT_ERROR;
        }
        Err(e) => {
            node_log.alert(&format!("Forced node shutdown completed. Occurred during startphase 1. Caused by error 2353: '{e}'."));
            return EXIT_ERROR;
        }
    };
    let lsn = store.data.lsn;
    let (mut r, mut w) = match connect_transporter(client, id).await {
        Ok(x) => x,
        Err(e) => {
            node_log.error(&e);
            return EXIT_ERROR;
        }
    };
    let hello = ToMgmd::DataHello {
        node: id,
        version: version.packed(),
        server_port: def.port,
        lsn,
        started: false,
        epoch: 0,
    };
    if transporter::write_line(&mut w, &hello).await.is_err() {
        node_log.error("Lost the management server before the start");
        return EXIT_ERROR;
    }
    let shared: Shared = Arc::new(Mutex::new(Node {
        id,
        log: Log::stdout("ndbd"),
        def: def.clone(),
        store,
        status: DataStatus::NotStarted,
        epoch: 0,
        member: false,
        replay: None,
        phase: 0,
        join_reply: None,
        start_ordered: false,
    }));
    // Serve API nodes and joining peers on ServerPort.
    {
        let shared = shared.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let shared = shared.clone();
                tokio::spawn(async move { serve(shared, sock).await });
            }
        });
    }
    let (to_mgmd, mut outbox) = mpsc::unbounded_channel::<ToMgmd>();
    let (orders_tx, mut orders) = mpsc::unbounded_channel::<FromMgmd>();
    // The transporter to the management server: orders in, reports out; reconnects if the
    // management server restarts (the node keeps running meanwhile, as RonDB's does).
    {
        let shared = shared.clone();
        let cs = cs.clone();
        tokio::spawn(async move {
            loop {
                // Orders are read by a task of their own: a line read is never cut short by
                // a report going out (reading is not cancel-safe).
                let (closed_tx, mut closed) = tokio::sync::oneshot::channel::<()>();
                let reader = {
                    let orders_tx = orders_tx.clone();
                    tokio::spawn(async move {
                        while let Ok(Some(order)) =
                            transporter::read_line::<_, FromMgmd>(&mut r).await
                        {
                            let _ = orders_tx.send(order);
                        }
                        let _ = closed_tx.send(());
                        r
                    })
                };
                loop {
                    tokio::select! {
                        m = outbox.recv() => match m {
                            Some(m) => if transporter::write_line(&mut w, &m).await.is_err() { break },
                            None => return,
                        },
                        _ = &mut closed => break,
                    }
                }
                reader.abort();
                // Test-only: a node whose link comes back late (the others went on meanwhile).
                tokio::time::sleep(reconnect_delay()).await;
                loop {
                    // Back soon: while this node is away from the management server, its
                    // orders (stop, restart) wait.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let Ok(c) = MgmClient::connect(&cs, 0, Duration::from_secs(1)).await else {
                        continue;
                    };
                    let Ok((nr, mut nw)) = connect_transporter(c, id).await else {
                        continue;
                    };
                    let (lsn, started, epoch) = {
                        let n = lock(&shared);
                        (n.store.data.lsn, n.status == DataStatus::Started, n.epoch)
                    };
                    let hello = ToMgmd::DataHello {
                        node: id,
                        version: version.packed(),
                        server_port: def.port,
                        lsn,
                        started,
                        epoch,
                    };
                    if transporter::write_line(&mut nw, &hello).await.is_ok() {
                        r = nr;
                        w = nw;
                        break;
                    }
                }
            }
        });
    }
    let report = |m: ToMgmd| {
        let _ = to_mgmd.send(m);
    };
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            node_log.error(&e.to_string());
            return EXIT_ERROR;
        }
    };
    let mut int = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()) {
        Ok(s) => s,
        Err(e) => {
            node_log.error(&e.to_string());
            return EXIT_ERROR;
        }
    };
    let wake = Arc::new(tokio::sync::Notify::new());
    let starting = start(
        shared.clone(),
        wake.clone(),
        id,
        nostart,
        &report,
        &node_log,
    );
    tokio::pin!(starting);
    let mut started = false;
    let end = loop {
        tokio::select! {
            _ = term.recv() => {
                node_log.info("Received signal 15. Performing stop.");
                break End::Stop { restart: false, initial: false, nostart: false };
            }
            _ = int.recv() => {
                node_log.info("Received signal 2. Performing stop.");
                break End::Stop { restart: false, initial: false, nostart: false };
            }
            res = &mut starting, if !started => {
                started = true;
                if let Err(end) = res {
                    break end;
                }
            }
            order = orders.recv() => {
                let Some(order) = order else { continue };
                match order {
                    FromMgmd::Stop { restart, initial, nostart } => break End::Stop { restart, initial, nostart },
                    FromMgmd::Shutdown { code, text } => {
                        let phase = lock(&shared).phase;
                        break End::Forced { code, text, phase };
                    }
                    FromMgmd::Epoch { group, epoch } => {
                        lock(&shared).epoch = epoch;
                        report(ToMgmd::EpochAck { group, epoch });
                    }
                    FromMgmd::Backup { id: backup_id, mgmd, writers } => {
                        let result = take_backup(&shared, backup_id, mgmd, &writers);
                        report(match result {
                            Ok((records, bytes)) => ToMgmd::BackupDone { id: backup_id, records, bytes },
                            Err((code, text)) => ToMgmd::BackupFailed { id: backup_id, code, text },
                        });
                    }
                    FromMgmd::Join(reply) => {
                        lock(&shared).join_reply = Some(reply);
                        wake.notify_one();
                    }
                    FromMgmd::Start => {
                        lock(&shared).start_ordered = true;
                        wake.notify_one();
                    }
                    FromMgmd::Welcome { .. } | FromMgmd::Membership(_) | FromMgmd::Refused { .. } => {}
                }
            }
        }
    };
    match end {
        End::Stop {
            restart,
            initial,
            nostart,
        } => {
            {
                let mut n = lock(&shared);
                n.status = DataStatus::ShuttingDown;
                n.member = false;
            }
            for phase in 1..=4 {
                report(ToMgmd::Phase {
                    status: DataStatus::ShuttingDown,
                    phase,
                });
                tokio::time::sleep(phase_time() / 4).await;
            }
            node_log.info("Node shutdown completed.");
            report(ToMgmd::Log {
                text: format!(
                    "Node {id}: Node shutdown completed{}.",
                    if restart { ", restarting" } else { "" }
                ),
            });
            // Let the transporter deliver the last reports.
            tokio::time::sleep(Duration::from_millis(50)).await;
            match (restart, initial, nostart) {
                (false, _, _) => EXIT_STOPPED,
                (true, false, false) => EXIT_RESTART,
                (true, false, true) => EXIT_RESTART_NOSTART,
                (true, true, false) => EXIT_INITIAL,
                (true, true, true) => EXIT_INITIAL_NOSTART,
            }
        }
        End::Forced { code, text, phase } => {
            node_log.alert(&format!(
                "Forced node shutdown completed. Occurred during startphase {phase}. Caused by error {code}: '{text}'."
            ));
            EXIT_ERROR
        }
    }
}

async fn fetch_config(client: &mut MgmClient) -> Result<ClusterConfig, String> {
    let req = Message::new("get config").arg("version", Version::current().packed());
    let reply = client
        .call(&req, Duration::from_secs(30))
        .await
        .map_err(|e| e.to_string())?;
    reply.result()?;
    let body = reply.body.ok_or("the reply has no configuration")?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8(bytes).map_err(|e| e.to_string())?;
    ClusterConfig::parse(&text).map_err(|e| e.to_string())
}

type Transporter = (
    BufReader<tokio::net::tcp::OwnedReadHalf>,
    tokio::net::tcp::OwnedWriteHalf,
);

async fn connect_transporter(mut client: MgmClient, id: u32) -> Result<Transporter, String> {
    let reply = client
        .call(
            &Message::new("transporter connect").arg("node", id),
            Duration::from_secs(10),
        )
        .await
        .map_err(|e| e.to_string())?;
    reply
        .result()
        .map_err(|e| format!("The management server refused node {id}'s transporter: {e}"))?;
    Ok(client.into_parts())
}

fn set_phase(shared: &Shared, status: DataStatus, phase: u32, report: &impl Fn(ToMgmd)) {
    {
        let mut n = lock(shared);
        n.status = status;
        n.phase = phase;
    }
    report(ToMgmd::Phase { status, phase });
}

/// The start: NOT_STARTED (until `START` with `--nostart`), phases 1-3, phase 4 joins the
/// node group (copying from a started peer), phases 5-9, STARTED.
async fn start(
    shared: Shared,
    wake: Arc<tokio::sync::Notify>,
    id: u32,
    nostart: bool,
    report: &impl Fn(ToMgmd),
    log: &Log,
) -> Result<(), End> {
    if nostart {
        log.info("Waiting for START (started with --nostart)");
        while !lock(&shared).start_ordered {
            let _ = tokio::time::timeout(Duration::from_secs(1), wake.notified()).await;
        }
    }
    for phase in 1..=3 {
        set_phase(&shared, DataStatus::Starting, phase, report);
        tokio::time::sleep(phase_time()).await;
        log.info(&format!("Start phase {phase} completed"));
        report(ToMgmd::Log {
            text: format!("Node {id}: Start phase {phase} completed"),
        });
    }
    set_phase(&shared, DataStatus::Starting, 4, report);
    lock(&shared).replay = Some(Vec::new());
    loop {
        let lsn = lock(&shared).store.data.lsn;
        report(ToMgmd::Join { lsn });
        let reply = loop {
            if let Some(r) = lock(&shared).join_reply.take() {
                break Some(r);
            }
            if tokio::time::timeout(Duration::from_secs(10), wake.notified())
                .await
                .is_err()
            {
                break None;
            }
        };
        match reply {
            None | Some(JoinReply::Wait) => {
                tokio::time::sleep(phase_time()).await;
            }
            Some(JoinReply::OwnFiles) => {
                let mut n = lock(&shared);
                n.replay = None;
                n.member = true;
                log.info("Starting from this node's own file system (newest in its node group)");
                break;
            }
            Some(JoinReply::CopyFrom { node: peer, addr }) => {
                let group = lock(&shared).def.node_group.unwrap_or(0);
                log.info(&format!(
                    "Copying node group {group}'s data from node {peer}"
                ));
                match crate::cluster::request(&addr, &DataRequest::Copy { group }).await {
                    Ok(DataReply::State {
                        dictionary,
                        rows,
                        lsn,
                    }) => {
                        let mut n = lock(&shared);
                        let own = n.store.data.lsn;
                        n.store.data = NodeData {
                            dictionary,
                            rows,
                            lsn: lsn.max(own),
                        };
                        let replay = n.replay.take().unwrap_or_default();
                        for req in &replay {
                            apply(&mut n.store, req);
                        }
                        if let Err(e) = n.store.save() {
                            let text = e.to_string();
                            return Err(End::Forced {
                                code: 2353,
                                text,
                                phase: 4,
                            });
                        }
                        n.member = true;
                        report(ToMgmd::Log {
                            text: format!(
                                "Node {id}: Copied node group {group}'s data from node {peer}"
                            ),
                        });
                        break;
                    }
                    other => {
                        log.warn(&format!(
                            "Copy from node {peer} failed ({other:?}); asking again"
                        ));
                        tokio::time::sleep(phase_time()).await;
                    }
                }
            }
        }
    }
    log.info("Start phase 4 completed");
    for phase in 5..=9 {
        set_phase(&shared, DataStatus::Starting, phase, report);
        tokio::time::sleep(phase_time()).await;
        report(ToMgmd::Log {
            text: format!("Node {id}: Start phase {phase} completed"),
        });
    }
    set_phase(&shared, DataStatus::Started, 0, report);
    log.info("Node started");
    Ok(())
}

/// Applies a write or dictionary change to the store (the caller saves).
fn apply(store: &mut Store, req: &DataRequest) -> u64 {
    match req {
        DataRequest::CreateDatabase { name, .. } => {
            store.data.dictionary.databases.insert(name.clone());
            0
        }
        DataRequest::CreateTable { def, .. } => {
            store.data.dictionary.databases.insert(def.db.clone());
            store.data.rows.entry(def.full_name()).or_default();
            store
                .data
                .dictionary
                .tables
                .insert(def.full_name(), def.clone());
            0
        }
        DataRequest::Write { table, ops, .. } => store.apply(table, ops),
        _ => 0,
    }
}

fn epoch_of(req: &DataRequest) -> Option<u64> {
    match req {
        DataRequest::CreateDatabase { epoch, .. }
        | DataRequest::CreateTable { epoch, .. }
        | DataRequest::Write { epoch, .. } => Some(*epoch),
        _ => None,
    }
}

/// One API node's or peer's connection to this node's `ServerPort`.
async fn serve(shared: Shared, sock: tokio::net::TcpStream) {
    let _ = sock.set_nodelay(true);
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    while let Ok(Some(req)) = transporter::read_line::<_, DataRequest>(&mut r).await {
        let reply = answer(&shared, req);
        if transporter::write_line(&mut w, &reply).await.is_err() {
            return;
        }
    }
}

fn answer(shared: &Shared, req: DataRequest) -> DataReply {
    let mut n = lock(shared);
    if let Some(epoch) = epoch_of(&req) {
        if epoch != n.epoch || !(n.member || n.replay.is_some()) {
            return DataReply::StaleEpoch { current: n.epoch };
        }
        if let DataRequest::Write { table, .. } = &req {
            if n.replay.is_none() && !n.store.data.dictionary.tables.contains_key(table) {
                return DataReply::Error {
                    code: 723,
                    text: format!("No such table existed: {table}"),
                };
            }
        }
        let count = apply(&mut n.store, &req);
        if let Some(replay) = n.replay.as_mut() {
            replay.push(req);
        }
        if let Err(e) = n.store.save() {
            n.log.error(&format!("Cannot write the file system: {e}"));
            return DataReply::Error {
                code: 2353,
                text: e.to_string(),
            };
        }
        return DataReply::Written(count);
    }
    if n.status != DataStatus::Started {
        return DataReply::NotStarted;
    }
    let missing = |t: &str| DataReply::Error {
        code: 723,
        text: format!("No such table existed: {t}"),
    };
    match req {
        DataRequest::Dictionary => DataReply::Dictionary(n.store.data.dictionary.clone()),
        DataRequest::Read { table, key } => match n.store.data.rows.get(&table) {
            Some(rows) => DataReply::Row(rows.get(&key).cloned()),
            None => missing(&table),
        },
        DataRequest::Count { table } => match n.store.data.rows.get(&table) {
            Some(rows) => DataReply::Count(rows.len() as u64),
            None => missing(&table),
        },
        DataRequest::Scan { table } => match n.store.data.rows.get(&table) {
            Some(rows) => DataReply::Rows(rows.iter().map(|(k, v)| (*k, v.clone())).collect()),
            None => missing(&table),
        },
        DataRequest::Copy { .. } => DataReply::State {
            dictionary: n.store.data.dictionary.clone(),
            rows: n.store.data.rows.clone(),
            lsn: n.store.data.lsn,
        },
        _ => DataReply::Error {
            code: 4000,
            text: "unexpected request".into(),
        },
    }
}

/// Writes this node's backup files: the dictionary, and its share of its group's rows.
fn take_backup(
    shared: &Shared,
    id: u32,
    mgmd: u32,
    writers: &BTreeMap<u32, Vec<u32>>,
) -> Result<(u64, u64), (u32, String)> {
    let n = lock(shared);
    if n.status != DataStatus::Started {
        return Err((1326, "Backup aborted due to node failure".into()));
    }
    let group = n.def.node_group.unwrap_or(0);
    let mates = writers.get(&group).cloned().unwrap_or_default();
    let me = mates.iter().position(|x| *x == n.id).unwrap_or(0);
    let tables = n
        .store
        .data
        .rows
        .iter()
        .map(|(t, rows)| {
            let mine = rows
                .iter()
                .filter(|(k, _)| backup::writer_of(**k, mates.len()) == me)
                .map(|(k, v)| (*k, v.clone()))
                .collect();
            (t.clone(), mine)
        })
        .collect();
    let ctl = CtlFile {
        backup_id: id,
        node_id: n.id,
        version: Version::current().to_string(),
        stop_gci: n.store.data.lsn,
        dictionary: n.store.data.dictionary.clone(),
    };
    let data = DataFile {
        backup_id: id,
        node_id: n.id,
        tables,
    };
    let dir = std::path::PathBuf::from(&n.def.backup_dir);
    let result = backup::write_node_backup(&dir, &ctl, &data);
    n.log.info(&format!(
        "Backup {id} started from node {mgmd}: {}",
        if result.is_ok() { "written" } else { "failed" }
    ));
    result.map_err(|e| match e {
        backup::BackupFileError::Exists(_) => (1350, e.to_string()),
        other => (1347, other.to_string()),
    })
}

//! Process-level behaviour: the angel, restarts through the management server, signals,
//! and the management server's start-up checks.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Cluster, MGMD_ID};
use rondb_standin::mgm::{ConnectString, Message, MgmClient};
use std::time::Duration;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn mgm(c: &Cluster, req: Message) -> Message {
    rt().block_on(async {
        let cs = ConnectString::parse(&c.connectstring()).unwrap();
        let mut m = MgmClient::connect(&cs, 0, Duration::from_millis(100))
            .await
            .unwrap();
        m.call(&req, Duration::from_secs(120)).await.unwrap()
    })
}

/// The pids the angel logged for its latest child.
fn child_pid(c: &Cluster, name: &str) -> i32 {
    c.log(name)
        .lines()
        .rev()
        .find_map(|l| l.split("started child: ").nth(1))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no child pid in {}", c.log(name)))
}

fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).unwrap();
}

#[test]
fn restart_through_the_management_server_respawns_the_node_under_the_same_angel() {
    let mut c = Cluster::new(1, 2);
    c.start_mgmd(&[]);
    c.start_all_data_nodes();
    let angel = c.procs["ndbd-1"].id();
    let first_child = child_pid(&c, "ndbd-1");
    let r = mgm(
        &c,
        Message::new("restart node v2")
            .arg("node", 1)
            .arg("initialstart", 0)
            .arg("nostart", 0)
            .arg("abort", 0)
            .arg("force", 0),
    );
    assert_eq!(
        r.encode(),
        "restart reply\nresult: Ok\nrestarted: 1\ndisconnect: 0\n\n"
    );
    c.wait_started(&[1]);
    assert_eq!(c.procs["ndbd-1"].id(), angel, "the angel stays");
    assert_ne!(child_pid(&c, "ndbd-1"), first_child, "a new node process");
    assert!(c.log("ndbd-1").contains("Ndb has terminated"));

    // -n: the node waits in NOT_STARTED for START.
    let r = mgm(
        &c,
        Message::new("restart node v2")
            .arg("node", 2)
            .arg("nostart", 1),
    );
    assert_eq!(r.get("result"), Some("Ok"));
    c.wait_for("node 2 NOT_STARTED", |st| {
        st.iter().any(|n| n.id == 2 && n.status == "NOT_STARTED")
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(c.node_status(2), "NOT_STARTED");
    let r = mgm(&c, Message::new("start").arg("node", 2));
    assert_eq!(r.encode(), "start reply\nresult: Ok\n\n");
    c.wait_started(&[2]);
}

#[test]
fn sigterm_stops_the_node_gracefully_and_the_angel_ignores_it() {
    let mut c = Cluster::new(1, 2);
    c.start_mgmd(&[]);
    c.start_all_data_nodes();
    let angel = c.procs["ndbd-1"].id() as i32;
    signal(angel, nix::sys::signal::Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(c.node_status(1), "STARTED", "the angel ignores SIGTERM");
    signal(child_pid(&c, "ndbd-1"), nix::sys::signal::Signal::SIGTERM);
    assert_eq!(c.wait_exit("ndbd-1", Duration::from_secs(10)), Some(0));
    let log = c.log("ndbd-1");
    assert!(
        log.contains("Received signal 15. Performing stop."),
        "{log}"
    );
    assert!(log.contains("Angel shutting down"), "{log}");
    assert_eq!(c.node_status(1), "NO_CONTACT");
}

#[test]
fn a_non_initial_start_without_a_file_system_is_refused() {
    let mut c = Cluster::new(1, 1);
    c.start_mgmd(&[]);
    c.start_data_node(1, false, &[]);
    assert_eq!(c.wait_exit("ndbd-1", Duration::from_secs(10)), Some(1));
    assert!(
        c.log("ndbd-1").contains("Caused by error 2352"),
        "{}",
        c.log("ndbd-1")
    );
}

#[test]
fn a_deactivated_slot_cannot_allocate_its_node_id() {
    let mut c = Cluster::new(1, 2);
    let ini = c.config_ini(&[(2, true)].into());
    std::fs::write(c.config_path(), ini).unwrap();
    c.start_mgmd(&[]);
    c.start_data_node(1, true, &[]);
    c.wait_started(&[1]);
    c.start_data_node(2, true, &[]);
    assert_eq!(c.wait_exit("ndbd-2", Duration::from_secs(20)), Some(1));
    assert!(
        c.log("ndbd-2")
            .contains("Unable to allocate nodeid 2 as node is currently deactivated"),
        "{}",
        c.log("ndbd-2")
    );
}

#[test]
fn the_management_server_refuses_bad_configurations_and_stops_on_sigterm() {
    let mut c = Cluster::new(1, 2);
    let ini = c
        .config_ini(&Default::default())
        .replace("NodeId=2\n", "NodeId=1\n");
    let bad = c.path().join("bad.ini");
    std::fs::write(&bad, ini).unwrap();
    let cfg = format!("--configdir={}/cache", c.path().display());
    let (code, out) = c.run(
        "ndb_mgmd",
        &[
            "-f",
            bad.to_str().unwrap(),
            &cfg,
            "--initial",
            "--nodaemon",
            "--ndb-nodeid=65",
        ],
    );
    assert_eq!(code, 1);
    assert!(out.contains("Node id 1 already used"), "{out}");
    let (code, out) = c.run(
        "ndb_mgmd",
        &["-f", bad.to_str().unwrap(), "--configdir=relative/dir"],
    );
    assert_eq!(code, 1);
    assert!(
        out.contains("Relative path ('relative/dir') not supported for configdir"),
        "{out}"
    );
    let (code, out) = c.run("ndb_mgmd", &["--no-such-option"]);
    assert_eq!(code, 1);
    assert!(out.contains("Unknown option"), "{out}");

    c.start_mgmd(&[]);
    assert!(c
        .cluster_log()
        .contains("RonDB Management Server RonDB-24.10.1 started"));
    let pid = c.procs["mgmd"].id() as i32;
    signal(pid, nix::sys::signal::Signal::SIGTERM);
    assert_eq!(c.wait_exit("mgmd", Duration::from_secs(10)), Some(0));
    assert!(c.log("mgmd").contains("Received SIGTERM. Performing stop."));
    let _ = MGMD_ID;
}

#[test]
fn the_management_server_daemonizes_by_default_and_stops_itself_on_request() {
    let c = Cluster::new(1, 1);
    let cfg = format!("--configdir={}/mgmd", c.path().display());
    let (code, out) = c.run(
        "ndb_mgmd",
        &[
            "-f",
            c.config_path().to_str().unwrap(),
            &cfg,
            "--initial",
            "--ndb-nodeid=65",
        ],
    );
    assert_eq!(code, 0, "{out}");
    c.wait_for("the daemon to serve", |st| {
        st.iter()
            .any(|n| n.id == MGMD_ID && n.status == "CONNECTED")
    });
    let r = mgm(
        &c,
        Message::new("stop v2").arg("node", MGMD_ID).arg("abort", 0),
    );
    assert_eq!(
        r.encode(),
        "stop reply\nresult: Ok\nstopped: 1\ndisconnect: 1\n\n"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !c.status().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the management server did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // It came back up from its configuration cache (generation 1) when started again
    // without -f: the cache in --configdir is what it serves.
    let (code, out) = c.run("ndb_mgmd", &[&cfg, "--ndb-nodeid=65"]);
    assert_eq!(code, 0, "{out}");
    c.wait_for("the daemon to serve from its cache", |st| {
        st.iter().any(|n| n.id == MGMD_ID)
    });
    let r = mgm(
        &c,
        Message::new("stop v2").arg("node", MGMD_ID).arg("abort", 0),
    );
    assert_eq!(r.get("disconnect"), Some("1"));
}

#[test]
fn data_nodes_follow_a_restarted_management_server() {
    let mut c = Cluster::new(1, 2);
    c.start_mgmd(&[]);
    c.start_all_data_nodes();
    c.kill("mgmd");
    c.start_mgmd(&[]);
    // The data nodes kept running and come back to the new management server as started.
    c.wait_started(&[1, 2]);
    let r = mgm(&c, Message::new("stop v2").arg("node", 1).arg("abort", 0).arg("force", 0));
    assert_eq!(r.encode(), "stop reply\nresult: Ok\nstopped: 1\ndisconnect: 0\n\n");
    assert_eq!(c.wait_exit("ndbd-1", Duration::from_secs(10)), Some(0));
}

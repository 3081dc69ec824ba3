//! `ndb_waiter` against a stand-in cluster: exit 3 without a management server, 2 for bad
//! arguments, 1 on timeout with RonDB's final per-node lines, 0 once every active data node
//! is STARTED; inactive nodes (NodeActive=0) are announced and not waited for.

mod common;

use common::{standin, Cluster};
use std::collections::BTreeMap;
use std::process::{Command, Output};

fn waiter(args: &[&str]) -> Output {
    Command::new(standin())
        .arg("ndb_waiter")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run ndb_waiter: {e}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn without_a_management_server_it_exits_3() {
    let c = Cluster::new(1, 1);
    let cs = c.connectstring();
    let out = waiter(&["-c", &cs, "--connect-retries=1", "--timeout=5"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(text(&out.stdout), "");
    assert_eq!(
        text(&out.stderr),
        format!("Connection to nodeid=0,{cs} failed\n")
    );
    // The first positional argument is the connect string too.
    let out = waiter(&[&cs, "--connect-retries=1"]);
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn bad_arguments_exit_2() {
    let out = waiter(&["--wait-nodes=1", "--nowait-nodes=2"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stdout),
        "Can not set both wait-nodes and nowait-nodes.\n"
    );
    let out = waiter(&["--wait-nodes=0"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stdout),
        "Invalid nodeid specified in wait-nodes: 0\n"
    );
    let out = waiter(&["--bogus"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn waits_for_active_data_nodes_only_and_times_out_with_mismatches() {
    let mut c = Cluster::new(2, 2);
    // Node 4 is an inactive slot: not waited for.
    let inactive: BTreeMap<u32, bool> = [(4, true)].into_iter().collect();
    std::fs::write(c.config_path(), c.config_ini(&inactive)).expect("config.ini");
    c.start_mgmd(&[]);
    let cs = c.connectstring();

    let out = waiter(&["-c", &cs, "--timeout=1"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert_eq!(
        text(&out.stdout),
        "Node 4: INACTIVE\nNode 1: NO_CONTACT (waited for STARTED)\nNode 2: NO_CONTACT (waited for STARTED)\nNode 3: NO_CONTACT (waited for STARTED)\n"
    );
    let out = waiter(&["-c", &cs, "--no-contact", "--timeout=5"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stdout),
        "Node 4: INACTIVE\nNode 1: NO_CONTACT\nNode 2: NO_CONTACT\nNode 3: NO_CONTACT\n"
    );

    // The waiter runs while the data nodes start.
    let pending = Command::new(standin())
        .arg("ndb_waiter")
        .args(["-c", &cs, "--timeout=60"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn ndb_waiter");
    for id in [1, 2, 3] {
        c.start_data_node(id, true, &[]);
    }
    let out = pending.wait_with_output().expect("ndb_waiter output");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert_eq!(
        text(&out.stdout),
        "Node 4: INACTIVE\nNode 1: STARTED\nNode 2: STARTED\nNode 3: STARTED\n"
    );
    // --wait-nodes narrows the set; verbose 0 prints nothing.
    let out = waiter(&["-c", &cs, "-w", "2", "-v", "0"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), "Node 4: INACTIVE\n");
}

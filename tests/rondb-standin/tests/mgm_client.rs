//! `ndb_mgm -e` against a stand-in management server and data nodes prints what RonDB's
//! management client prints and exits as it exits (0, or 255 for a failed command or a
//! failed connect), including the RonDB-only ACTIVATE / DEACTIVATE / HOSTNAME flow and
//! `START BACKUP ... WAIT COMPLETED`.

mod common;

use common::{standin, Cluster, MGMD_ID};
use std::process::Command;

/// Runs `ndb_mgm -c <cs> --connect-retries=1 -e CMD`: (exit code, stdout, stderr).
fn mgm(c: &Cluster, cmd: &str) -> (i32, String, String) {
    mgm_args(&["-c", &c.connectstring(), "--connect-retries=1", "-e", cmd])
}

fn mgm_args(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(standin())
        .arg("ndb_mgm")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run ndb_mgm: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn connected(c: &Cluster) -> String {
    format!("Connected to Management Server at: {}\n", c.connectstring())
}

#[test]
fn a_failed_connect_prints_mgmapis_error_and_exits_255() {
    let c = Cluster::new(1, 1);
    // Nothing listens on the management server's address: the server is never started.
    let (code, out, _) = mgm(&c, "SHOW");
    assert_eq!(code, 255);
    assert_eq!(
        out,
        format!(
            "ERROR: Unable to connect with connect string: nodeid=0,{}\n",
            c.connectstring()
        )
    );
    // Retries are counted down as mgmapi counts them.
    let (code, out, _) = mgm_args(&[
        "-c",
        &c.connectstring(),
        "--connect-retries=3",
        "--connect-retry-delay=0",
        "-e",
        "1 status",
    ]);
    assert_eq!(code, 255);
    assert!(
        out.ends_with("Retrying every 0 seconds. Attempts left: 2 1, failed.\n"),
        "{out}"
    );
    // HELP needs no management server.
    let (code, out, _) = mgm(&c, "help");
    assert_eq!(code, 0);
    assert!(
        out.contains(" RonDB -- Management Client -- Help\n"),
        "{out}"
    );
}

#[test]
fn show_status_and_errors_print_as_rondb_prints_them() {
    let mut c = Cluster::new(2, 2);
    c.start_mgmd(&[]);
    // Before any data node runs: all "not connected".
    let (code, out, _) = mgm(&c, "ALL STATUS");
    assert_eq!(code, 0);
    assert_eq!(
        out,
        format!(
            "{}Node 1: not connected\nNode 2: not connected\nNode 3: not connected\nNode 4: not connected\n\n",
            connected(&c)
        )
    );
    c.start_all_data_nodes();

    let (code, out, _) = mgm(&c, "SHOW");
    assert_eq!(code, 0, "{out}");
    let v = "RonDB-24.10.1";
    let mut expected = connected(&c);
    expected += "Cluster Configuration\n---------------------\n[ndbd(NDB)]\t4 node(s)\n";
    for id in 1..=4 {
        expected += &format!(
            "id={id}\t@{}  ({v}, Nodegroup: {})\n",
            c.ip(id),
            (id - 1) / 2
        );
    }
    expected += &format!(
        "\n[ndb_mgmd(MGM)]\t1 node(s)\nid={MGMD_ID}\t@{}  ({v})\n\n[mysqld(API)]\t6 node(s)\n",
        c.ip(MGMD_ID)
    );
    for id in 67..=72 {
        expected += &format!("id={id} (not connected, accepting connect from any host)\n");
    }
    expected += "\n";
    // Exactly one data node is the master ("*"); which one is the server's choice.
    assert_eq!(out.matches(", *)").count(), 1, "{out}");
    assert_eq!(out.replace(", *)", ")"), expected);

    let (code, out, _) = mgm(&c, "1 status;");
    assert_eq!(code, 0);
    assert_eq!(out, format!("{}Node 1: started ({v})\n\n", connected(&c)));
    let (code, out, _) = mgm(&c, &format!("{MGMD_ID} STATUS"));
    assert_eq!(code, 0);
    assert_eq!(
        out,
        format!(
            "{}Node {MGMD_ID}: connected (RonDB Version 24.10.1)\n\n",
            connected(&c)
        )
    );
    let (code, out, _) = mgm_args(&["-c", &c.connectstring(), "-v", "0", "-e", "99 STATUS"]);
    assert_eq!((code, out.as_str()), (255, "99: Node not found\n\n"));
    let (code, out, _) = mgm(&c, "FROB");
    assert_eq!(code, 255);
    assert_eq!(
        out,
        format!(
            "{}Invalid command: FROB\nType HELP for help.\n\n",
            connected(&c)
        )
    );
    let (code, out, _) = mgm(&c, "1 FROB");
    assert_eq!(code, 255);
    assert!(
        out.ends_with("Invalid command: FROB\nType HELP for help.\n\n"),
        "{out}"
    );
    let (code, out, _) = mgm(&c, "1 STOP -x");
    assert_eq!(code, 255);
    assert!(
        out.ends_with("Invalid option: -x. Expecting -A or -F after STOP\n\n"),
        "{out}"
    );

    // A node group's last node cannot be stopped; the other one can.
    let (code, out, _) = mgm(&c, "2 STOP");
    assert_eq!(
        (code, out),
        (0, format!("{}Node 2 has shutdown.\n\n", connected(&c)))
    );
    let (code, out, _) = mgm(&c, "1 STOP");
    assert_eq!(code, 255);
    assert_eq!(
        out,
        format!(
            "{}Shutdown failed.\n*  2002: Stop failed\n*        Node shutdown would cause system crash: Permanent error: Application error\n\n",
            connected(&c)
        )
    );
    let (code, out, _) = mgm(&c, "2 STATUS");
    assert_eq!(
        (code, out),
        (0, format!("{}Node 2: not connected\n\n", connected(&c)))
    );
}

#[test]
fn deactivate_and_activate_follow_rondbs_flow() {
    let mut c = Cluster::new(1, 2);
    c.start_mgmd(&[]);
    c.start_all_data_nodes();
    let cn = connected(&c);

    let (code, out, _) = mgm(&c, "2 DEACTIVATE");
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out,
        format!(
            "{cn}Stopping node 2\nNode 2 was successfully stopped\nConfiguration changed to reflect deactivated node\nNow deactivating the node in the cluster\nNode 2 is now deactivated in the cluster\n\n"
        )
    );
    let (_, out, _) = mgm(&c, "SHOW");
    assert!(
        out.contains("\nid=2 (not connected, node is deactivated)\n"),
        "{out}"
    );
    // Not idempotent: a second DEACTIVATE fails.
    let (code, out, _) = mgm(&c, "2 deactivate");
    assert_eq!(code, 255);
    assert_eq!(
        out,
        format!("{cn}Node 2 is already deactivated, need not be deactivated\n\n")
    );
    // The last active data node is not deactivated.
    let (code, out, _) = mgm(&c, "1 DEACTIVATE");
    assert_eq!(code, 255);
    assert_eq!(
        out,
        format!("{cn}Cannot deactivate node 1 since we need at least one active Data node in a cluster\n\n")
    );
    // A stopped node is "deactivated, is already stopped".
    let (code, out, _) = mgm(&c, "2 STOP");
    assert_eq!(
        (code, out),
        (
            255,
            format!("{cn}Node 2 is deactivated, is already stopped\n\n")
        )
    );
    // Only a deactivated node's hostname may change.
    let (code, out, _) = mgm(&c, "1 HOSTNAME 10.9.9.9");
    assert_eq!(code, 255);
    assert_eq!(
        out,
        format!("{cn}Node 1 is active, can only change hostname of a deactivated node\n\n")
    );
    let host = c.ip(2);
    let (code, out, _) = mgm(&c, &format!("2 HOSTNAME {host}"));
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out,
        format!("{cn}Configuration changed to reflect new hostname of node 2\nNow changing hostname in the cluster\nNode 2 now has hostname {host} in the cluster\n\n")
    );

    let (code, out, _) = mgm(&c, "2 ACTIVATE");
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out,
        format!("{cn}Configuration changed to reflect activated node\nNow activating the node in the cluster\nNode 2 is now activated in the cluster\n\n")
    );
    // Idempotent: activating an active node succeeds.
    let (code, out, _) = mgm(&c, "2 ACTIVATE");
    assert_eq!(
        (code, out),
        (0, format!("{cn}Node 2 is already activated\n\n"))
    );
    let (_, out, _) = mgm(&c, "SHOW");
    assert!(
        out.contains(&format!(
            "\nid=2 (not connected, accepting connect from {host})\n"
        )),
        "{out}"
    );

    // With node 2 down but active, deactivating node 1 would stop the cluster: refused,
    // and the configuration stays as it was.
    c.kill_data_node(2);
    let (code, out, _) = mgm(&c, "1 DEACTIVATE");
    assert_eq!(code, 255);
    assert_eq!(
        out,
        format!("{cn}Stopping node 1\nNode 1 failed to stop\n*  2002: Stop failed\n*        Node shutdown would cause system crash: Permanent error: Application error\n\n")
    );
    let (_, out, _) = mgm(&c, "1 STATUS");
    assert_eq!(out, format!("{cn}Node 1: started (RonDB-24.10.1)\n\n"));
    let (code, out, _) = mgm(&c, "2 DEACTIVATE");
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("Node 2 is already down, proceeding to deactivation immediately\n"),
        "{out}"
    );
}

#[test]
fn start_backup_waits_for_completion_and_refuses_a_used_id() {
    let mut c = Cluster::new(1, 2);
    c.start_mgmd(&[]);
    c.start_all_data_nodes();
    let cn = connected(&c);

    let (code, out, _) = mgm(&c, "START BACKUP 5 SNAPSHOTEND WAIT COMPLETED");
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], cn.trim_end());
    assert_eq!(
        lines[1],
        "Waiting for completed, this may take several minutes"
    );
    assert!(
        lines[2].starts_with("Node ") && lines[2].ends_with(": Backup 5 started from node 65"),
        "{out}"
    );
    assert!(
        lines[3].ends_with(": Backup 5 started from node 65 completed"),
        "{out}"
    );
    assert!(lines[4].starts_with(" StartGCP: "), "{out}");
    assert!(lines[5].starts_with(" #Records: "), "{out}");
    assert!(
        lines[6].starts_with(" Data: ") && lines[6].ends_with(" bytes"),
        "{out}"
    );
    assert_eq!(lines.len(), 7, "{out}");

    let (code, out, _) = mgm(&c, "start backup 5");
    assert_eq!(code, 255);
    assert_eq!(
        out,
        format!("{cn}Waiting for completed, this may take several minutes\nBackup failed\n*  3001: Could not start backup\n*        Backup failed: file already exists (use 'START BACKUP <backup id>'): Temporary error: Temporary Resource error\n")
    );
    let (code, out, _) = mgm(&c, "START BACKUP 6 NOWAIT");
    assert_eq!((code, out), (0, cn.clone()));
    let (code, out, _) = mgm(&c, "START BACKUP 0");
    assert_eq!(code, 255);
    assert_eq!(
        out,
        format!("{cn}Invalid command: BACKUP 0\nBackup ID out of range [1 - 4294967294]\nType HELP for help.\n\n")
    );
    let (code, out, _) = mgm(&c, "ABORT BACKUP 6");
    assert_eq!((code, out), (0, format!("{cn}Abort of backup 6 ordered\n")));
}

#[test]
fn restart_and_start_report_as_rondb() {
    let mut c = Cluster::new(1, 2);
    c.start_mgmd(&[]);
    c.start_all_data_nodes();
    let cn = connected(&c);
    let (code, out, _) = mgm(&c, "2 RESTART -n");
    assert_eq!(
        (code, out),
        (0, format!("{cn}Node 2 is being restarted\n\n"))
    );
    c.wait_for("node 2 NOT_STARTED", |st| {
        st.iter().any(|n| n.id == 2 && n.status == "NOT_STARTED")
    });
    let (code, out, _) = mgm(&c, "2 START");
    assert_eq!(
        (code, out),
        (0, format!("{cn}Database node 2 is being started.\n\n"))
    );
    c.wait_started(&[2]);
    let (code, out, _) = mgm(&c, "1 RESTART -q");
    assert_eq!(code, 255);
    assert!(
        out.ends_with("Invalid option: -q. Expecting -A,-N,-I or -F after RESTART\n\n"),
        "{out}"
    );
}

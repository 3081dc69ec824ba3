//! The RonDB-attached tier on the local provider: `ndb-agent up --runtime direct` runs real
//! (stand-in) RonDB programs, installed from the stand-in's tarballs, every VM on its own
//! loopback address. One client writes and reads rows through the MySQL servers the whole
//! time (another MySQL server when one goes away) while the agents apply live operations:
//! rolling restart, upgrade and downgrade, more replicas, more and fewer MySQL servers, a
//! backup, every data-node VM replaced by one of another type, a data node killed -9, a
//! data-node VM gone; then a fresh cluster of another shape is restored from the backup.
//! After every step every row written is read back, no cluster log has a forced shutdown,
//! and the client's failed operations are counted.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

#[path = "../common/agents_client.rs"]
mod agents_client;
mod client;
#[path = "../local_cluster/harness.rs"]
mod harness;
mod mgmd_restart;

use agent_core::backend::NodeStatus;
use client::{check_rows, opts, Client};
use harness::{at_desired, count_role, LocalCluster};
use mysql_async::prelude::Queryable;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ndb-agent");

/// The stand-in's tarballs of both versions, made by its package.sh (cached).
fn tarballs() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = root.join("target").join("attached-tarballs");
    let status = std::process::Command::new(root.join("tests/rondb-standin/package.sh"))
        .arg(&out)
        .args(["22.10.1", "22.10.2"])
        .status()
        .expect("run package.sh");
    assert!(status.success(), "package.sh failed");
    out
}

fn desired(id: u64, dir: &Path, f: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut d: serde_json::Value = serde_json::from_str(&harness::desired(id, 1)).unwrap();
    d["RonDBDownloadLink"] = format!(
        "file://{}/rondb-22.10.1-linux-glibc2.28-x86_64.tar.gz",
        dir.display()
    )
    .into();
    f(&mut d);
    serde_json::to_string_pretty(&d).unwrap()
}

/// Forced shutdowns in every management server's cluster log.
fn forced_shutdowns(c: &LocalCluster) -> usize {
    let mut n = 0;
    if let Ok(vms) = std::fs::read_dir(c.data_dir().join("vms")) {
        for vm in vms.flatten() {
            if let Ok(files) = std::fs::read_dir(vm.path().join("rondb/mgmd")) {
                for f in files.flatten() {
                    if f.file_name().to_string_lossy().ends_with("_cluster.log") {
                        let text = std::fs::read_to_string(f.path()).unwrap_or_default();
                        n += text.matches("Forced node shutdown").count();
                    }
                }
            }
        }
    }
    n
}

#[test]
fn live_operations_keep_every_row_and_the_cluster_up() {
    let dir = tarballs();
    let started = Instant::now();
    let mut c = LocalCluster::start_attached(Path::new(BIN), &desired(1, &dir, |_| {}));
    let s = c.wait_for("the attached cluster", Duration::from_secs(180), |s| {
        at_desired(s, 1) && s.mysqld_endpoints.len() == 2
    });
    println!(
        "up to AT_DESIRED_STATE (attached, 2 x 2 + 2 MySQLds + 1 API): {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // The status carries RonDB's own view of every program: data nodes STARTED, the
    // management server, MySQL servers and the REST API's node CONNECTED.
    c.wait_for(
        "RonDB's view of every program in the status",
        Duration::from_secs(30),
        |s| {
            s.vms.iter().all(|v| {
                let want = if v.role == "ndbd" {
                    NodeStatus::Started
                } else {
                    NodeStatus::Connected
                };
                !v.rondb.is_empty() && v.rondb.iter().all(|n| n.status == want)
            })
        },
    );
    let client = Client::start(s.mysqld_endpoints.clone(), 1000);
    // The 1,000 rows are in before the first live operation.
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.record.lock().unwrap().written.len() < 1000 {
        assert!(
            Instant::now() < deadline,
            "the client did not write its 1,000 rows"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut id = 1;
    let mut report = Vec::new();
    let mut apply = |c: &mut LocalCluster, name: &str, f: &dyn Fn(&mut serde_json::Value)| {
        id += 1;
        client.step(name);
        let t = Instant::now();
        std::fs::write(
            c.dir.path().join("desired_state.jsonc"),
            desired(id, &dir, |d| f(d)),
        )
        .unwrap();
        let this = id;
        let s = c.wait_for(name, Duration::from_secs(300), |s| at_desired(s, this));
        let took = t.elapsed().as_secs_f64();
        client.set_endpoints(s.mysqld_endpoints.clone());
        std::thread::sleep(Duration::from_millis(500));
        let written = client.record.lock().unwrap().written.clone();
        let lost = check_rows(&s.mysqld_endpoints, &written);
        let forced = forced_shutdowns(c);
        let failed = client.failures_in(name);
        println!(
            "{name}: {took:.1} s, {} client operation(s) failed after a retry on another MySQL server, {lost} of {} rows lost, {forced} forced shutdown(s)",
            failed.len(),
            written.len()
        );
        for f in failed.iter().take(5) {
            println!("    {f}");
        }
        report.push((name.to_string(), failed.len(), lost, forced));
        assert_eq!(lost, 0, "{name}: rows lost");
        assert_eq!(forced, 0, "{name}: a forced shutdown in a cluster log");
        s
    };
    apply(&mut c, "rolling restart", &|d| {
        d["RonDBRunningSince"] = 2.into()
    });
    apply(&mut c, "upgrade 22.10.1 -> 22.10.2", &|d| {
        d["RonDBRunningSince"] = 2.into();
        d["RonDBVersion"] = "22.10.2".into();
        let link = d["RonDBDownloadLink"]
            .as_str()
            .unwrap()
            .replace("22.10.1", "22.10.2");
        d["RonDBDownloadLink"] = link.into();
    });
    apply(&mut c, "downgrade 22.10.2 -> 22.10.1", &|d| {
        d["RonDBRunningSince"] = 2.into()
    });
    apply(&mut c, "replicas 2 -> 3", &|d| {
        d["RonDBRunningSince"] = 2.into();
        d["ActiveReplicationFactor"] = 3.into();
    });
    let s = apply(&mut c, "MySQLds 2 -> 3", &|d| {
        d["RonDBRunningSince"] = 2.into();
        d["ActiveReplicationFactor"] = 3.into();
        d["NumManagedMysqldVms"] = 3.into();
    });
    assert_eq!(s.mysqld_endpoints.len(), 3);
    let s = apply(&mut c, "MySQLds 3 -> 2", &|d| {
        d["RonDBRunningSince"] = 2.into();
        d["ActiveReplicationFactor"] = 3.into();
    });
    assert_eq!(count_role(&s, "mysqld"), 2);

    // A backup while the client writes: every row acknowledged before it started is in it.
    let before_backup = client.record.lock().unwrap().written.clone();
    let backup = serde_json::json!([{ "Id": 1, "SinkType": "local", "SinkParameters": { "Directory": "/backups" } }]);
    let b = backup.clone();
    apply(&mut c, "backup", &move |d| {
        d["RonDBRunningSince"] = 2.into();
        d["ActiveReplicationFactor"] = 3.into();
        d["SingleBackups"] = b.clone();
    });
    let after_backup = client.record.lock().unwrap().written.clone();
    let sink = c.data_dir().join("backups/BACKUP/BACKUP-1");
    let ctl: Vec<String> = std::fs::read_dir(&sink)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".ctl"))
                .collect()
        })
        .unwrap_or_default();
    // Every started data node (2 node groups x 3 replicas) wrote its part.
    assert_eq!(ctl.len(), 6, "backup files in {}: {ctl:?}", sink.display());

    // Data-node VMs of another type: every data node moves to a new VM (its own address)
    // and copies its node group's rows from a live replica.
    let s = apply(&mut c, "data-node VM type change", &|d| {
        d["RonDBRunningSince"] = 2.into();
        d["ActiveReplicationFactor"] = 3.into();
        d["SingleBackups"] = serde_json::json!([{ "Id": 1, "SinkType": "local", "SinkParameters": { "Directory": "/backups" } }]);
        d["VmTypeNdbds"] = "medium".into();
    });
    assert_eq!(count_role(&s, "ndbd"), 6);

    // A data node's processes killed -9: RonDB's other replicas serve; the agents see the
    // program gone and start it again.
    client.step("data node killed -9");
    let victim = s
        .vms
        .iter()
        .find(|v| v.role == "ndbd")
        .map(|v| v.name.clone())
        .unwrap();
    let before = s.actions_completed;
    let t = Instant::now();
    providers::local::kill_vm_processes(&c.vm_dir(&victim).join("rondb"));
    // Noticed and started again: an action ran after the kill (the restart can be over
    // before a look at the status sees the node down).
    let s = c.wait_for(
        "the killed data node started again",
        Duration::from_secs(300),
        |s| {
            at_desired(s, id)
                && s.actions_completed > before
                && s.vms.iter().any(|v| v.name == victim && v.running)
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    let written = client.record.lock().unwrap().written.clone();
    let lost = check_rows(&s.mysqld_endpoints, &written);
    let failed = client.failures_in("data node killed -9");
    println!(
        "data node killed -9: back in {:.1} s, {} client operation(s) failed, {lost} rows lost",
        t.elapsed().as_secs_f64(),
        failed.len()
    );
    assert_eq!(lost, 0, "rows lost after a data node was killed");
    assert_eq!(forced_shutdowns(&c), 0);

    // A data node's whole VM gone (its directory removed, everything on it killed): the
    // agents replace it; the new VM's data node copies its group's rows from a replica.
    client.step("data-node VM gone");
    let gone = s
        .vms
        .iter()
        .find(|v| v.role == "ndbd")
        .map(|v| v.name.clone())
        .unwrap();
    let t = Instant::now();
    let pid = c.pid_of(&gone).expect("the VM's agent pid");
    providers::local::kill_vm_processes(&c.vm_dir(&gone).join("rondb"));
    std::fs::remove_dir_all(c.vm_dir(&gone)).unwrap();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    let s = c.wait_for(
        "the gone data-node VM replaced",
        Duration::from_secs(300),
        |s| {
            at_desired(s, id) && !s.vms.iter().any(|v| v.name == gone) && count_role(s, "ndbd") == 6
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    let written = client.record.lock().unwrap().written.clone();
    let lost = check_rows(&s.mysqld_endpoints, &written);
    println!(
        "data-node VM gone: replaced in {:.1} s, {} client operation(s) failed, {lost} rows lost",
        t.elapsed().as_secs_f64(),
        client.failures_in("data-node VM gone").len()
    );
    assert_eq!(lost, 0, "rows lost after a data-node VM was lost");
    assert_eq!(forced_shutdowns(&c), 0);

    let record = client.finish();
    println!(
        "client: {} operations, {} failed after a retry, {} rows written and read back",
        record.ops,
        record.failures.len(),
        record.written.len()
    );

    // A fresh cluster of another shape (1 node group x 2) restored from that backup.
    let t = Instant::now();
    let restore = serde_json::json!({ "Id": 1, "SinkType": "local", "SinkParameters": { "Directory": "/backups" } });
    let fresh = desired(1, &dir, |d| {
        d["NumNodeGroups"] = 1.into();
        d["SingleBackups"] = backup.clone();
        d["RestoreFromBackup"] = restore.clone();
    });
    let from = c.data_dir().join("backups");
    let r = LocalCluster::start_attached_prepared(Path::new(BIN), &fresh, |data| {
        copy_dir(&from, &data.join("backups"));
    });
    let s = r.wait_for("the restored cluster", Duration::from_secs(300), |s| {
        at_desired(s, 1) && !s.mysqld_endpoints.is_empty()
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let restored: BTreeSet<i64> = rt.block_on(async {
        let mut conn = mysql_async::Conn::new(opts(&s.mysqld_endpoints[0]))
            .await
            .unwrap();
        let rows: Vec<(i64, String)> = conn.query("SELECT k, v FROM shop.items").await.unwrap();
        assert!(rows.iter().all(|(k, v)| *v == format!("v{k}")));
        rows.into_iter().map(|(k, _)| k).collect()
    });
    println!(
        "restore into 1 x 2: {:.1} s, {} rows ({} acknowledged before the backup, {} by its end)",
        t.elapsed().as_secs_f64(),
        restored.len(),
        before_backup.len(),
        after_backup.len()
    );
    assert!(
        before_backup.is_subset(&restored),
        "rows acknowledged before the backup are missing"
    );
    assert!(
        restored.is_subset(&after_backup),
        "the restore holds rows never acknowledged"
    );
    assert_eq!(forced_shutdowns(&r), 0);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

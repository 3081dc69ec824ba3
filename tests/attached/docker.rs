//! The RonDB-attached suite in Docker: VM containers made through Terraform by the cloud
//! front container that `ndb-agent up --provider terraform` starts (the local-docker target),
//! the supervisord runtime in the agent image, the RonDB stand-in's tarballs from the
//! artifact server. The fixtures (the artifact server and the bootstrap agent) are started
//! with testcontainers from the images built on this machine (no registry).
//!
//! The same sequence as the local attached suite, while one client thread writes and reads
//! rows through the MySQL servers: create 2 x 2 + 2 MySQLds, 1,000 rows, rolling restart,
//! upgrade 22.10.1 -> 22.10.2 and back, replicas 2 -> 3, MySQLds 2 -> 3 -> 2, a backup, a
//! data-node VM type change, a data node killed -9, a data-node container removed, a
//! data-node container frozen (`docker pause`) until it is given up and replaced, and a
//! fresh cluster of another shape restored from the backup. After each step: no
//! acknowledged row lost, no forced shutdown in the cluster log, client failures counted.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

#[path = "../common/agents_client.rs"]
mod agents_client;
mod client;
#[path = "../common/docker_cli.rs"]
mod docker_cli;

use agent::http::Status;
use agent_core::backend::NodeStatus;
use agents_client::AgentsClient;
use client::{check_rows, opts, Client};
use docker_cli::docker;
use mysql_async::prelude::Queryable;
use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};
use testcontainers::core::{Mount, WaitFor};
use testcontainers::runners::SyncRunner;
use testcontainers::{Container, GenericImage, ImageExt};

const BIN: &str = env!("CARGO_BIN_EXE_ndb-agent");
const AGENT_IMAGE: &str = "managed-rondb/ndb-agent";
const BASE_IMAGE: &str = "managed-rondb/base:bookworm-1";
/// Where the VM containers mount the cluster's backup volume (providers::docker::BACKUP_DIR).
const BACKUP_DIR: &str = "/var/lib/ndb-backups";
/// `VmDownGraceSeconds` of these clusters: how long a frozen VM is waited for.
const FROZEN_GRACE_SECONDS: u64 = 20;

/// Everything of a cluster is removed at the end, also when the test fails.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let label = format!("label=managed-rondb.cluster={}", self.0);
        for (list, rm) in [
            (vec!["ps", "-aq", "--filter"], vec!["rm", "-f", "-v"]),
            (
                vec!["volume", "ls", "-q", "--filter"],
                vec!["volume", "rm", "-f"],
            ),
            (
                vec!["network", "ls", "-q", "--filter"],
                vec!["network", "rm"],
            ),
        ] {
            let ids = Command::new("docker")
                .args(&list)
                .arg(&label)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                .unwrap_or_default();
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let _ = Command::new("docker").args(&rm).args(&ids).output();
            }
        }
    }
}

/// One cluster: its network, its fixtures, its agents.
struct DockerCluster {
    name: String,
    dir: tempfile::TempDir,
    agents: AgentsClient,
    _bootstrap: Container<GenericImage>,
    _artifacts: Container<GenericImage>,
    _cleanup: Cleanup,
}

/// The desired state of the Docker demo (compose/desired_state.jsonc) for cluster `name`.
fn desired(id: u64, name: &str, f: impl FnOnce(&mut serde_json::Value)) -> String {
    let base = agent_core::desired::parse(include_bytes!("../../compose/desired_state.jsonc"))
        .expect("compose/desired_state.jsonc parses");
    let mut d = serde_json::to_value(base).unwrap();
    d["Id"] = id.into();
    d["RonDBDownloadLink"] =
        format!("http://{name}-artifacts:8080/rondb/rondb-22.10.1-linux-glibc2.28-x86_64.tar.gz")
            .into();
    // A frozen VM is given up after this long (the default is 300 s).
    d["VmDownGraceSeconds"] = FROZEN_GRACE_SECONDS.into();
    f(&mut d);
    serde_json::to_string_pretty(&d).unwrap()
}

impl DockerCluster {
    /// A network with a subnet of its own, the artifact server, and the bootstrap agent
    /// applying `desired`. `prepare` runs once the cluster's backup volume exists, before
    /// the bootstrap agent starts.
    fn start(name: &str, subnet: &str, desired: &str, prepare: impl FnOnce(&str)) -> DockerCluster {
        let cleanup = Cleanup(name.to_string());
        let label = format!("managed-rondb.cluster={name}");
        docker(&[
            "network", "create", "--subnet", subnet, "--label", &label, name,
        ]);
        docker(&[
            "volume",
            "create",
            "--label",
            &label,
            &format!("{name}-backups"),
        ]);
        prepare(name);
        let artifacts = GenericImage::new("managed-rondb/artifacts", "latest")
            .with_wait_for(WaitFor::seconds(1))
            .with_container_name(format!("{name}-artifacts"))
            .with_network(name)
            .with_label("managed-rondb.cluster", name)
            .with_label("managed-rondb.role", "artifacts")
            .start()
            .expect("start the artifact server (managed-rondb/artifacts:latest)");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("desired_state.jsonc"), desired).unwrap();
        let token = agents_client::test_token();
        let bootstrap = GenericImage::new(AGENT_IMAGE, "latest")
            .with_wait_for(WaitFor::message_on_stdout("bootstrap agent: HTTP API"))
            .with_cmd([
                "ndb-agent".to_string(),
                "up".into(),
                "--provider=terraform".into(),
                "--runtime=supervisord".into(),
                "--desired-state=/config/desired_state.jsonc".into(),
                "--data-dir=/var/lib/ndb-agent".into(),
                "--http=0.0.0.0:8181".into(),
                format!("--cluster-name={name}"),
                format!("--docker-network={name}"),
                format!("--agent-image={AGENT_IMAGE}:latest"),
            ])
            .with_container_name(format!("{name}-bootstrap"))
            .with_network(name)
            .with_label("managed-rondb.cluster", name)
            .with_label("managed-rondb.role", "bootstrap")
            .with_mount(Mount::bind_mount(
                dir.path().display().to_string(),
                "/config",
            ))
            .with_mount(Mount::bind_mount(
                "/var/run/docker.sock",
                "/var/run/docker.sock",
            ))
            .with_env_var("NDB_AGENT_TOKEN", &token)
            .with_startup_timeout(Duration::from_secs(60))
            .start()
            .expect("start the bootstrap agent (managed-rondb/ndb-agent:latest)");
        let ip = docker(&[
            "inspect",
            "-f",
            &format!("{{{{(index .NetworkSettings.Networks \"{name}\").IPAddress}}}}"),
            &format!("{name}-bootstrap"),
        ]);
        let agents = AgentsClient::new(&token);
        agents.learn(&format!("{ip}:8181"));
        agents.trust(&docker_cli::bootstrap_ca(&format!("{name}-bootstrap")));
        DockerCluster {
            name: name.to_string(),
            dir,
            agents,
            _bootstrap: bootstrap,
            _artifacts: artifacts,
            _cleanup: cleanup,
        }
    }

    fn wait_for(&self, what: &str, patience: Duration, pred: impl Fn(&Status) -> bool) -> Status {
        match self.agents.wait_until(patience, |s| pred(s)) {
            Ok((s, _)) => s,
            Err(last) => {
                let logs = Command::new("docker")
                    .args(["logs", "--tail", "40", &format!("{}-bootstrap", self.name)])
                    .output()
                    .map(|o| {
                        String::from_utf8_lossy(&o.stdout).to_string()
                            + &String::from_utf8_lossy(&o.stderr)
                    })
                    .unwrap_or_default();
                panic!(
                    "timed out waiting for {what}\nlast status: {}\nbootstrap log:\n{logs}",
                    serde_json::to_string_pretty(&*last).unwrap_or_default()
                )
            }
        }
    }

    /// The bootstrap agent follows the file, as a user's saved edit.
    fn write_desired(&self, text: &str) {
        std::fs::write(self.dir.path().join("desired_state.jsonc"), text).unwrap();
    }

    /// The container of VM `vm`.
    fn container(&self, vm: &str) -> String {
        docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=managed-rondb.cluster={}", self.name),
            "--filter",
            &format!("label=managed-rondb.vm={vm}"),
        ])
    }

    /// Forced shutdowns in the management servers' cluster logs.
    fn forced_shutdowns(&self, s: &Status) -> usize {
        s.vms
            .iter()
            .filter(|v| v.role == "mgmd")
            .map(|v| {
                let out = Command::new("docker")
                    .args([
                        "exec",
                        &self.container(&v.name),
                        "sh",
                        "-c",
                        "cat /srv/rondb/mgmd/*_cluster.log 2>/dev/null",
                    ])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                    .unwrap_or_default();
                out.matches("Forced node shutdown").count()
            })
            .sum()
    }
}

fn at_desired(s: &Status, id: u64) -> bool {
    s.accepted_id == Some(id)
        && s.pending_id.is_none()
        && s.reconciliation_state == "AT_DESIRED_STATE"
}

fn count_role(s: &Status, role: &str) -> usize {
    s.vms.iter().filter(|v| v.role == role).count()
}

fn build_images() {
    let build = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/compose/images/build.sh"
    ))
    .env("NDB_AGENT_BIN", BIN)
    .status()
    .expect("run compose/images/build.sh");
    assert!(build.success(), "building the images failed");
    let front = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/compose/images/build-front.sh"
    ))
    .status()
    .expect("run compose/images/build-front.sh");
    assert!(front.success(), "building the cloud front image failed");
}

/// The VMs in the front's Terraform state and the cluster's VM containers: the same names.
fn terraform_state_matches_containers(name: &str) {
    let state = docker(&[
        "exec",
        &format!("{name}-front"),
        "terraform",
        &format!("-chdir=/var/lib/cloud-front/clusters/{name}/terraform"),
        "state",
        "list",
    ]);
    let in_state: BTreeSet<String> = state
        .lines()
        .filter_map(|l| l.split('"').nth(1).map(str::to_string))
        .collect();
    let containers: BTreeSet<String> = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=managed-rondb.cluster={name}"),
        "--format",
        "{{.Label \"managed-rondb.vm\"}} {{.Label \"managed-rondb.role\"}}",
    ])
    .lines()
    .filter_map(|l| l.split_once(' '))
    .filter(|(_, role)| ["mgmd", "ndbd", "mysqld", "api"].contains(role))
    .map(|(vm, _)| vm.to_string())
    .collect();
    assert!(!in_state.is_empty(), "an empty Terraform state: {state}");
    assert_eq!(
        in_state, containers,
        "Terraform's state and the VM containers"
    );
}

#[test]
fn docker_live_operations_keep_every_row_and_the_cluster_up() {
    docker(&["info", "--format", "{{.ServerVersion}}"]);
    build_images();
    let pid = std::process::id();
    let name = format!("mrdb-a{pid}");
    let started = Instant::now();
    let c = DockerCluster::start(
        &name,
        &format!("10.214.{}.0/24", pid % 250),
        &desired(1, &name, |_| {}),
        |_| {},
    );
    let s = c.wait_for("the attached cluster", Duration::from_secs(300), |s| {
        at_desired(s, 1) && s.mysqld_endpoints.len() == 2
    });
    println!(
        "up to AT_DESIRED_STATE (Docker, supervisord, 2 x 2 + 2 MySQLds + 1 API): {:.1} s",
        started.elapsed().as_secs_f64()
    );
    terraform_state_matches_containers(&name);
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
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.record.lock().unwrap().written.len() < 1000 {
        assert!(
            Instant::now() < deadline,
            "the client did not write its 1,000 rows"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let backup_sink = format!(
        r#"[{{ "Id": 1, "SinkType": "local", "SinkParameters": {{ "Directory": "{BACKUP_DIR}" }} }}]"#
    );
    let backup: serde_json::Value = serde_json::from_str(&backup_sink).unwrap();
    let mut id = 1;
    let mut apply = |name: &str, f: &dyn Fn(&mut serde_json::Value)| {
        id += 1;
        client.step(name);
        let t = Instant::now();
        c.write_desired(&desired(id, &c.name, |d| f(d)));
        let this = id;
        let s = c.wait_for(name, Duration::from_secs(600), |s| at_desired(s, this));
        let took = t.elapsed().as_secs_f64();
        client.set_endpoints(s.mysqld_endpoints.clone());
        std::thread::sleep(Duration::from_millis(500));
        let written = client.record.lock().unwrap().written.clone();
        let lost = check_rows(&s.mysqld_endpoints, &written);
        let forced = c.forced_shutdowns(&s);
        let failed = client.failures_in(name);
        println!(
            "{name}: {took:.1} s, {} client operation(s) failed after a retry on another MySQL server, {lost} of {} rows lost, {forced} forced shutdown(s)",
            failed.len(),
            written.len()
        );
        for f in failed.iter().take(5) {
            println!("    {f}");
        }
        assert_eq!(lost, 0, "{name}: rows lost");
        assert_eq!(forced, 0, "{name}: a forced shutdown in a cluster log");
        s
    };
    let v2 = |d: &mut serde_json::Value| {
        d["RonDBVersion"] = "22.10.2".into();
        let link = d["RonDBDownloadLink"]
            .as_str()
            .unwrap()
            .replace("22.10.1", "22.10.2");
        d["RonDBDownloadLink"] = link.into();
    };
    apply("rolling restart", &|d| d["RonDBRunningSince"] = 2.into());
    apply("upgrade 22.10.1 -> 22.10.2", &|d| {
        d["RonDBRunningSince"] = 2.into();
        v2(d);
    });
    apply("downgrade 22.10.2 -> 22.10.1", &|d| {
        d["RonDBRunningSince"] = 2.into()
    });
    let three = |d: &mut serde_json::Value| {
        d["RonDBRunningSince"] = 2.into();
        d["ActiveReplicationFactor"] = 3.into();
    };
    apply("replicas 2 -> 3", &|d| three(d));
    let s = apply("MySQLds 2 -> 3", &|d| {
        three(d);
        d["NumManagedMysqldVms"] = 3.into();
    });
    assert_eq!(s.mysqld_endpoints.len(), 3);
    let s = apply("MySQLds 3 -> 2", &|d| three(d));
    assert_eq!(count_role(&s, "mysqld"), 2);

    let before_backup = client.record.lock().unwrap().written.clone();
    let b = backup.clone();
    let s = apply("backup", &move |d| {
        three(d);
        d["SingleBackups"] = b.clone();
    });
    let after_backup = client.record.lock().unwrap().written.clone();
    let ndbd = s
        .vms
        .iter()
        .find(|v| v.role == "ndbd")
        .unwrap()
        .name
        .clone();
    let files = docker(&[
        "exec",
        &c.container(&ndbd),
        "ls",
        &format!("{BACKUP_DIR}/BACKUP/BACKUP-1"),
    ]);
    let ctl = files.lines().filter(|f| f.ends_with(".ctl")).count();
    assert_eq!(
        ctl, 6,
        "backup files in the cluster's backup volume: {files}"
    );

    let b = backup.clone();
    let s = apply("data-node VM type change", &move |d| {
        three(d);
        d["SingleBackups"] = b.clone();
        d["VmTypeNdbds"] = "medium".into();
    });
    assert_eq!(count_role(&s, "ndbd"), 6);

    // A data node's processes killed -9 in its container: the agents start it again.
    client.step("data node killed -9");
    let victim = s
        .vms
        .iter()
        .find(|v| v.role == "ndbd")
        .unwrap()
        .name
        .clone();
    let before = s.actions_completed;
    let t = Instant::now();
    docker(&["exec", &c.container(&victim), "pkill", "-9", "-f", "ndbmtd"]);
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
    println!(
        "data node killed -9: back in {:.1} s, {} client operation(s) failed, {lost} rows lost",
        t.elapsed().as_secs_f64(),
        client.failures_in("data node killed -9").len()
    );
    assert_eq!(lost, 0, "rows lost after a data node was killed");
    assert_eq!(c.forced_shutdowns(&s), 0);

    // A data node's whole VM gone (its container removed): the agents replace it.
    client.step("data-node VM gone");
    let gone = s
        .vms
        .iter()
        .find(|v| v.role == "ndbd")
        .unwrap()
        .name
        .clone();
    let t = Instant::now();
    docker(&["rm", "-f", &c.container(&gone)]);
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
    assert_eq!(c.forced_shutdowns(&s), 0);
    // The container removed behind Terraform's back left no entry in its state.
    terraform_state_matches_containers(&name);

    // A data-node VM frozen (`docker pause`: its processes stop without dying, its agent
    // stops answering, its container stays). The provider lists it as down; it cannot be
    // started while frozen, so after VmDownGraceSeconds the agents give it up, delete it and
    // replace it. Its node id must never run twice: the frozen container is deleted, not
    // thawed, and RonDB sees that node id on one VM only.
    client.step("data-node VM frozen");
    let s = c.wait_for(
        "RonDB's view of every data node in the status",
        Duration::from_secs(30),
        |s| {
            s.vms
                .iter()
                .filter(|v| v.role == "ndbd")
                .all(|v| !v.rondb.is_empty())
        },
    );
    let frozen = s
        .vms
        .iter()
        .find(|v| v.role == "ndbd" && Some(&v.name) != s.leader_vm.as_ref())
        .unwrap()
        .clone();
    let node_id = frozen
        .rondb
        .first()
        .map(|n| n.node_id)
        .expect("RonDB's view of the data node to freeze");
    let frozen_container = c.container(&frozen.name);
    let t = Instant::now();
    docker(&["pause", &frozen_container]);
    let s = c.wait_for(
        "the frozen data-node VM replaced",
        Duration::from_secs(300),
        |s| {
            at_desired(s, id)
                && !s.vms.iter().any(|v| v.name == frozen.name)
                && count_role(s, "ndbd") == 6
                && s.vms.iter().any(|v| {
                    v.running
                        && v.rondb
                            .iter()
                            .any(|n| n.node_id == node_id && n.status == NodeStatus::Started)
                })
        },
    );
    let recovered = t.elapsed().as_secs_f64();
    let holders: Vec<&str> = s
        .vms
        .iter()
        .filter(|v| v.rondb.iter().any(|n| n.node_id == node_id))
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(
        holders.len(),
        1,
        "node {node_id} of the frozen VM {} is seen on {holders:?}",
        frozen.name
    );
    let left = docker(&["ps", "-aq", "--filter", &format!("id={frozen_container}")]);
    assert!(
        left.is_empty(),
        "the frozen container of {} still exists; it could thaw and run node {node_id} again",
        frozen.name
    );
    std::thread::sleep(Duration::from_millis(500));
    let written = client.record.lock().unwrap().written.clone();
    let lost = check_rows(&s.mysqld_endpoints, &written);
    println!(
        "data-node VM frozen (docker pause): given up after VmDownGraceSeconds ({FROZEN_GRACE_SECONDS} s) and replaced in {recovered:.1} s, node {node_id} now on {}, the frozen container deleted, {} client operation(s) failed, {lost} rows lost",
        holders[0],
        client.failures_in("data-node VM frozen").len()
    );
    assert_eq!(lost, 0, "rows lost after a data-node VM froze");
    assert_eq!(c.forced_shutdowns(&s), 0);
    terraform_state_matches_containers(&name);

    let record = client.finish();
    println!(
        "client: {} operations, {} failed after a retry, {} rows written and read back",
        record.ops,
        record.failures.len(),
        record.written.len()
    );

    // A fresh cluster of another shape (1 x 2), its backup volume holding the backup.
    let t = Instant::now();
    let fresh_name = format!("mrdb-r{pid}");
    let restore: serde_json::Value = backup[0].clone();
    let fresh = desired(1, &fresh_name, |d| {
        d["NumNodeGroups"] = 1.into();
        d["SingleBackups"] = backup.clone();
        d["RestoreFromBackup"] = restore.clone();
    });
    let r = DockerCluster::start(
        &fresh_name,
        &format!("10.215.{}.0/24", pid % 250),
        &fresh,
        |n| {
            docker(&[
                "run",
                "--rm",
                "-v",
                &format!("{name}-backups:/from:ro"),
                "-v",
                &format!("{n}-backups:/to"),
                BASE_IMAGE,
                "cp",
                "-a",
                "/from/.",
                "/to/",
            ]);
        },
    );
    let s = r.wait_for("the restored cluster", Duration::from_secs(600), |s| {
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
        "restore into 1 x 2 (Docker): {:.1} s, {} rows ({} acknowledged before the backup, {} by its end)",
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
    assert_eq!(r.forced_shutdowns(&s), 0);
}

//! The `ndb-agent` command line as a user runs it: exit codes, messages, the `simulate`
//! output contract.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ndb-agent"))
        .args(args)
        .output()
        .expect("ndb-agent runs")
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("compose/desired_state.jsonc")
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p.display().to_string()
}

fn example_with(changes: &[(&str, serde_json::Value)]) -> String {
    let text = std::fs::read_to_string(example()).expect("example");
    let d = agent_core::desired::parse(text.as_bytes()).expect("parses");
    let mut v = serde_json::to_value(d).expect("json");
    for (k, x) in changes {
        v[*k] = x.clone();
    }
    v.to_string()
}

#[test]
fn validate_accepts_the_example_with_a_summary() {
    let out = agent(&["validate", example().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("valid: desired state 1: 2 node group(s) x 2 replica(s)"),
        "{stdout}"
    );
}

#[test]
fn validate_lists_every_problem_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        dir.path(),
        "bad.jsonc",
        r#"{ "Id": 3, "RonDBRuning": true, "RonDBRunningSince": 9, "RonDBVersion": "22.x" }"#,
    );
    let out = agent(&["validate", &bad]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("did you mean `RonDBRunning`"), "{err}");
    assert!(err.contains("RonDBRunningSince = 9 (Id 3)"), "{err}");
    assert!(err.contains("RonDBVersion = \"22.x\""), "{err}");
    assert!(err.contains("Region: required field is missing"), "{err}");
}

#[test]
fn validate_survives_deep_binary_and_huge_input() {
    let dir = tempfile::tempdir().unwrap();
    let deep = write(dir.path(), "deep.json", &"[".repeat(200_000));
    let out = agent(&["validate", &deep]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nesting deeper"));
    let bin = dir.path().join("bin");
    std::fs::write(&bin, [0u8, 159, 146, 150, 255, 0, 1]).unwrap();
    let out = agent(&["validate", bin.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let huge = write(dir.path(), "huge.json", &" ".repeat(3 << 20));
    let out = agent(&["validate", &huge]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("at most"));
}

#[test]
fn validate_applies_transition_rules_with_previous() {
    let dir = tempfile::tempdir().unwrap();
    let new = write(
        dir.path(),
        "new.json",
        &example_with(&[("Id", 1.into()), ("NumNodeGroups", 3.into())]),
    );
    let out = agent(&["validate", &new, "--previous", example().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Id (was 1, now 1)") && err.contains("stale"),
        "{err}"
    );
    assert!(
        err.contains("NumNodeGroups (was 2, now 3)") && err.contains("immutable"),
        "{err}"
    );
}

#[test]
fn simulate_json_follows_the_output_contract() {
    let dir = tempfile::tempdir().unwrap();
    let second = write(
        dir.path(),
        "2.json",
        &example_with(&[("Id", 2.into()), ("RonDBRunningSince", 2.into())]),
    );
    let stale = write(dir.path(), "3.json", &example_with(&[("Id", 2.into())]));
    let out = agent(&[
        "simulate",
        "--json",
        example().to_str().unwrap(),
        &second,
        &stale,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert_eq!(lines[0]["outcome"], "AT_DESIRED_STATE");
    assert_eq!(lines[0]["desired_id"], 1);
    assert!(lines[0]["makespan_s"].as_f64().unwrap() > 0.0);
    assert_eq!(lines[0]["invariant_violations"], serde_json::json!([]));
    let actions = lines[0]["actions"].as_array().unwrap();
    let create = actions.iter().find(|a| a["kind"] == "CreateVm").unwrap();
    for f in [
        "vm",
        "role",
        "zone",
        "vm_type",
        "storage_gib",
        "temporary",
        "start_s",
        "end_s",
    ] {
        assert!(!create[f].is_null(), "CreateVm lacks {f}: {create}");
    }
    let start = actions
        .iter()
        .find(|a| a["kind"] == "StartDataNode")
        .unwrap();
    for f in ["vm", "role", "node_id", "node_group", "version", "initial"] {
        assert!(!start[f].is_null(), "StartDataNode lacks {f}: {start}");
    }
    assert_eq!(start["initial"], true);
    assert_eq!(lines[1]["outcome"], "AT_DESIRED_STATE");
    let restarts: Vec<_> = lines[1]["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == "StartDataNode")
        .collect();
    assert!(restarts.iter().all(|a| a["initial"] == false));
    assert_eq!(lines[2]["outcome"], "REJECTED");
    assert!(lines[2]["rejection"].as_str().unwrap().contains("stale"));
    assert_eq!(
        out.status.code(),
        Some(3),
        "a rejected state makes the exit status 3"
    );
}

#[test]
fn simulate_restores_an_existing_backup_before_sql_starts() {
    let dir = tempfile::tempdir().unwrap();
    let b = serde_json::json!({"Id": 42, "SinkType": "local", "SinkParameters": {"Directory": "/backups"}});
    let f = write(
        dir.path(),
        "r.json",
        &example_with(&[
            ("SingleBackups", serde_json::json!([b])),
            ("RestoreFromBackup", b.clone()),
        ]),
    );
    let out = agent(&["simulate", "--json", "--existing-backup", "42", &f]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let actions = line["actions"].as_array().unwrap();
    let last_restore = actions
        .iter()
        .filter(|a| a["kind"] == "RestoreBackup")
        .map(|a| a["end_s"].as_f64().unwrap())
        .fold(0.0, f64::max);
    let first_mysqld = actions
        .iter()
        .filter(|a| a["kind"] == "StartMysqld")
        .map(|a| a["start_s"].as_f64().unwrap())
        .fold(f64::MAX, f64::min);
    assert!(
        last_restore > 0.0 && first_mysqld >= last_restore,
        "restore {last_restore}, mysqld {first_mysqld}"
    );
    // Without the backup in the sink, the restore fails after its attempts.
    let out = agent(&["simulate", "--json", &f]);
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["outcome"], "ERROR_STATE");
    assert!(line["error"].as_str().unwrap().contains("not found"));
}

#[test]
fn simulate_with_faults_still_reaches_the_desired_state() {
    let out = agent(&[
        "simulate",
        "--json",
        "--seed",
        "3",
        "--fault-rate",
        "0.2",
        "--max-attempts",
        "30",
        example().to_str().unwrap(),
    ]);
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["outcome"], "AT_DESIRED_STATE");
    let failed = line["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["failed"] == true)
        .count();
    assert!(failed > 0, "a 20% fault rate shows failed attempts");
}

#[test]
fn simulate_takes_a_cost_model_and_refuses_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let cost = write(dir.path(), "cost.json", r#"{"create_vm": 600}"#);
    let out = agent(&[
        "simulate",
        "--json",
        "--cost-model",
        &cost,
        example().to_str().unwrap(),
    ]);
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let create = line["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "CreateVm")
        .unwrap();
    assert_eq!(
        create["end_s"].as_f64().unwrap() - create["start_s"].as_f64().unwrap(),
        600.0
    );
    let bad = write(dir.path(), "bad.json", r#"{"create_vms": 600}"#);
    let out = agent(&[
        "simulate",
        "--cost-model",
        &bad,
        example().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a cost model"));
}

/// The cluster's credential never crosses a network in the clear: a front beyond loopback
/// serves HTTPS only, so a plain `http://` URL for it is refused before anything starts, on
/// both sides, with the URL to give instead.
#[test]
fn a_front_url_that_cannot_reach_an_https_front_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("front");
    let out = agent(&[
        "cloud-front",
        "--provider",
        "docker",
        "--cluster",
        "c1",
        "--listen",
        "0.0.0.0:0",
        "--url",
        "http://10.213.0.4:9090",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("serves HTTPS only"), "{err}");
    assert!(!data.exists(), "a refused front wrote {}", data.display());

    let out = down_via_front("http://10.213.0.4:9090");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("use https://10.213.0.4:9090"), "{err}");

    let out = down_via_front("https://10.213.0.4:9090");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--front-ca-file"), "{err}");
}

/// `down --provider front --remove` against `url`, with a credential and no CA file.
fn down_via_front(url: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ndb-agent"))
        .args([
            "down",
            "--provider",
            "front",
            "--remove",
            "--cluster-name",
            "c1",
            "--front-url",
            url,
        ])
        .env("NDB_FRONT_CREDENTIAL", "c0ffee")
        .env_remove("NDB_FRONT_CA_FILE")
        .output()
        .unwrap()
}

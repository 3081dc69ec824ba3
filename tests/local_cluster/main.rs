//! Multi-process integration test on loopback: `ndb-agent up` with the `local` provider and
//! the dummy runtime. A 9-agent cluster reaches its desired state; the leader is SIGKILLed
//! twice (once at rest, once in the middle of a rolling restart) and a new leader finishes the
//! work; the lost VM is replaced; no accepted desired state is lost; an agent restarted on its
//! own directory rejoins under its id; a wiped agent is removed and comes back under a new id.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

#[path = "../common/agents_client.rs"]
mod agents_client;
mod harness;

use harness::{at_desired, count_role, desired, voters, LocalCluster};
use std::path::Path;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ndb-agent");

fn roles_match(s: &agent::http::Status) -> bool {
    count_role(s, "mgmd") == 1
        && count_role(s, "ndbd") == 4
        && count_role(s, "mysqld") == 2
        && count_role(s, "api") == 1
}

fn starts_in(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("runtime/calls.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("start "))
        .count()
}

#[test]
fn leader_failover_rejoin_and_wipe() {
    let mut c = LocalCluster::start(Path::new(BIN), &desired(1, 1), 150);
    let long = Duration::from_secs(120);

    // The cluster is created and the Raft group grows to 5 voters.
    let s = c.wait_for("desired state 1", long, |s| {
        at_desired(s, 1) && roles_match(s) && voters(s) == 5
    });
    assert!(s.agents.len() >= 6, "at least 6 agents: {:?}", s.agents);
    assert_eq!(s.leader_vm.as_deref(), Some("bootstrap"));
    let mut seen_ids: Vec<u64> = s.agents.iter().map(|a| a.raft_id).collect();

    // 0. `up` follows the file: a saved edit is the next desired state.
    std::fs::write(c.dir.path().join("desired_state.jsonc"), desired(2, 1)).unwrap();
    c.wait_for("desired state 2 from the edited file", long, |s| {
        at_desired(s, 2)
    });

    // 1. SIGKILL the leader (the bootstrap agent) at rest.
    let t = Instant::now();
    c.kill("bootstrap");
    let s = c.wait_for(
        "a new leader after killing the bootstrap agent",
        Duration::from_secs(30),
        |s| s.leader_vm.as_deref().is_some_and(|l| l != "bootstrap"),
    );
    eprintln!(
        "failover 1: new leader {:?} after {:?}",
        s.leader_vm,
        t.elapsed()
    );
    let s = c.wait_for("the dead bootstrap agent leaves the group", long, |s| {
        !s.agents.iter().any(|a| a.vm == "bootstrap") && voters(s) == 5 && at_desired(s, 2)
    });
    let leader = s.leader_vm.clone().unwrap();
    let follower = s
        .agents
        .iter()
        .find(|a| a.vm != leader)
        .unwrap()
        .http_addr
        .clone();

    // 2. A rolling restart, submitted to a follower (forwarded to the leader) ...
    let (code, body) = c.apply_at(&follower, &desired(3, 2));
    assert_eq!(code, 202, "{body}");
    let base = s.actions_completed;
    let s = c.wait_for("the rolling restart under way", long, |s| {
        s.accepted_id == Some(3)
            && s.reconciliation_state == "WORKING_TOWARDS_DESIRED_STATE"
            && s.actions_completed >= base + 3
    });
    // ... and the leader killed in the middle of it: its VM is lost.
    let leader = s.leader_vm.clone().unwrap();
    let killed_at = s.actions_completed;
    let t = Instant::now();
    c.kill(&leader);
    let s = c.wait_for(
        "a new leader mid-rolling-restart",
        Duration::from_secs(30),
        |s| s.leader_vm.as_deref().is_some_and(|l| l != leader),
    );
    let elected = t.elapsed();
    c.wait_for("the reconciliation resumed", Duration::from_secs(30), |s| {
        s.actions_completed > killed_at
    });
    eprintln!(
        "failover 2: new leader {:?} after {elected:?}, resumed after {:?}",
        s.leader_vm,
        t.elapsed()
    );
    let s = c.wait_for(
        "desired state 3 after the failover, lost VM replaced",
        long,
        |s| {
            at_desired(s, 3)
                && roles_match(s)
                && !s.vms.iter().any(|v| v.name == leader)
                && !s.agents.iter().any(|a| a.vm == leader)
                && voters(s) == 5
        },
    );
    // Every data node that lived through it was restarted (2 starts: create + restart).
    for v in s.vms.iter().filter(|v| v.role == "ndbd") {
        let n = starts_in(&c.vm_dir(&v.name));
        assert!(n >= 1, "{} never started", v.name);
    }
    let restarted = s
        .vms
        .iter()
        .filter(|v| v.role == "ndbd" && starts_in(&c.vm_dir(&v.name)) >= 2)
        .count();
    assert!(
        restarted >= 3,
        "the rolling restart restarted {restarted} surviving data nodes"
    );
    seen_ids.extend(s.agents.iter().map(|a| a.raft_id));

    // 3. An agent restarted on its own directory rejoins under its old id.
    let leader = s.leader_vm.clone().unwrap();
    let victim = s
        .agents
        .iter()
        .find(|a| a.vm != leader && a.role == "ndbd")
        .cloned()
        .unwrap();
    c.kill(&victim.vm);
    c.restart_agent(&victim.vm);
    let s = c.wait_for("the restarted agent rejoins", long, |s| {
        c.status_at(&victim.http_addr)
            .is_some_and(|own| own.answered_by == victim.vm && own.accepted_id == Some(3))
            && s.agents
                .iter()
                .any(|a| a.vm == victim.vm && a.raft_id == victim.raft_id)
            && at_desired(s, 3)
    });
    assert!(s.vms.iter().any(|v| v.name == victim.vm), "its VM was kept");

    // 4. A wiped agent (Raft data gone) is removed and joins again under a new id only.
    let leader = s.leader_vm.clone().unwrap();
    let wiped = s
        .agents
        .iter()
        .find(|a| a.vm != leader && a.role == "mysqld")
        .cloned()
        .unwrap();
    c.kill(&wiped.vm);
    let dir = c.vm_dir(&wiped.vm);
    std::fs::remove_file(dir.join("raft.redb")).unwrap();
    std::fs::remove_file(dir.join("raft_id")).unwrap();
    c.restart_agent(&wiped.vm);
    let max_before = seen_ids.iter().copied().max().unwrap();
    let s = c.wait_for("the wiped agent replaced under a new id", long, |s| {
        !s.agents.iter().any(|a| a.raft_id == wiped.raft_id)
            && s.agents
                .iter()
                .any(|a| a.vm == wiped.vm && a.raft_id > max_before)
            && at_desired(s, 3)
            && roles_match(s)
    });
    eprintln!(
        "wiped agent {} rejoined as {:?}",
        wiped.vm,
        s.agents.iter().find(|a| a.vm == wiped.vm)
    );

    // Nothing accepted was lost: every agent's own replica holds desired state 3.
    c.wait_for("every agent's replica at desired state 3", long, |s| {
        s.agents.iter().all(|a| {
            c.status_at(&a.http_addr).is_some_and(|own| {
                own.accepted_id == Some(3) && own.reconciliation_state == "AT_DESIRED_STATE"
            })
        })
    });

    // Bad input gets a clear error and changes nothing.
    let s = c.status().unwrap();
    let any = &s.agents[0].http_addr;
    let (code, body) = c.apply_at(any, "{ \"Id\": ");
    assert_eq!(code, 400, "{body}");
    assert!(
        body["errors"][0].as_str().unwrap().contains("syntax"),
        "{body}"
    );
    let (code, body) = c.apply_at(any, &desired(1, 1));
    assert_eq!(code, 400, "{body}");
    assert!(body.to_string().contains("Id"), "{body}");
    let after = c.status().unwrap();
    assert_eq!((after.accepted_id, after.pending_id), (Some(3), None));

    // No half-made VMs: the provider's VMs are exactly the cluster state's.
    let mut on_disk: Vec<String> = std::fs::read_dir(c.data_dir().join("vms"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n != "bootstrap")
        .collect();
    on_disk.sort();
    let mut in_state: Vec<String> = after.vms.iter().map(|v| v.name.clone()).collect();
    in_state.sort();
    assert_eq!(on_disk, in_state, "orphan or missing VM directories");
}

/// A leader that loses its quorum stops claiming anything: within 2 s its status reports no
/// leader, the reconciliation state `UNKNOWN`, and why (no quorum, naming the voters).
#[test]
fn a_leader_that_lost_its_quorum_says_so() {
    let c = LocalCluster::start(Path::new(BIN), &desired(1, 1), 0);
    let s = c.wait_for(
        "desired state 1 with 5 voters",
        Duration::from_secs(120),
        |s| at_desired(s, 1) && voters(s) == 5,
    );
    assert_eq!(s.leader_vm.as_deref(), Some("bootstrap"));
    assert_eq!(s.leader_problem, None);
    // Four of the five voters die: the bootstrap agent is alone with non-voters.
    let others: Vec<String> = s
        .agents
        .iter()
        .filter(|a| a.voter && a.vm != "bootstrap")
        .map(|a| a.vm.clone())
        .collect();
    assert_eq!(others.len(), 4);
    let t = Instant::now();
    for vm in &others {
        c.kill(vm);
    }
    let mut last = None;
    while t.elapsed() < Duration::from_secs(2) {
        last = c.status_at(&c.http);
        if last
            .as_ref()
            .is_some_and(|s| s.leader_vm.is_none() && s.reconciliation_state == "UNKNOWN")
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let s = last.expect("the bootstrap agent still answers");
    assert_eq!(s.leader_vm, None, "after {:?}: {s:?}", t.elapsed());
    assert_eq!(s.reconciliation_state, "UNKNOWN");
    let why = s.leader_problem.unwrap_or_default();
    assert!(why.contains("no quorum"), "{why}");
    for vm in &others {
        assert!(why.contains(vm.as_str()), "{vm} not named in: {why}");
    }
    eprintln!(
        "no leader reported {:?} after losing the quorum: {why}",
        t.elapsed()
    );
}

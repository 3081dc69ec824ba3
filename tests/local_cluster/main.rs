//! Multi-process integration tests on loopback: `ndb-agent up` with the `local` provider and
//! the dummy runtime. A 9-agent cluster reaches its desired state; the leader is SIGKILLed
//! twice (once at rest, once in the middle of a rolling restart) and a new leader finishes the
//! work; the killed leader's VM is started again, not replaced; no accepted desired state is
//! lost; an agent restarted on its own directory rejoins under its id; a wiped agent is
//! removed and comes back under a new id. Every agent killed at once (at rest, and in the
//! middle of a rolling restart) comes back with one `ndb-agent up`: the same VMs, the same
//! Raft ids, nothing replaced. A removed VM directory is a VM gone (replaced); a node group
//! whose every VM is gone is never recreated empty. The bootstrap agent killed the moment the
//! first desired state is reported reached leaves a group that elects a leader. An agent in a
//! crash loop harms nothing else; a VM with a full disk gets a clear error and harms nothing
//! else. Every agent's API needs the cluster's token.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

#[path = "../common/agents_client.rs"]
mod agents_client;
mod harness;

use agents_client::AgentsClient;
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

/// The VM directories of the data directory (the bootstrap agent's aside), sorted.
fn vm_dirs(c: &LocalCluster) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(c.data_dir().join("vms"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n != "bootstrap")
        .collect();
    out.sort();
    out
}

fn starts_in(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("runtime/calls.log"))
        .unwrap_or_default()
        .lines()
        // "op=<id> start ...": one line per start the agent ran.
        .filter(|l| {
            l.split_once(' ')
                .is_some_and(|(_, call)| call.starts_with("start "))
        })
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
    // The killed leader's VM is down, not gone: the new leader starts its agent again, which
    // rejoins under its Raft id; nothing is replaced.
    let killed_id = s.agents.iter().find(|a| a.vm == leader).map(|a| a.raft_id);
    let s = c.wait_for(
        "desired state 3 after the failover, the killed leader's VM back",
        long,
        |s| {
            at_desired(s, 3)
                && roles_match(s)
                && s.vms.iter().any(|v| v.name == leader)
                && s.agents
                    .iter()
                    .any(|a| a.vm == leader && Some(a.raft_id) == killed_id)
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
    let on_disk = vm_dirs(&c);
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

/// Every agent's API, followers included, answers only callers with the cluster's token
/// (which `up` wrote 0600 into its data directory); a follower forwards a desired state with
/// the caller's token, so the leader checks it too; health stays open.
#[test]
fn every_agent_api_needs_the_clusters_token() {
    use std::os::unix::fs::PermissionsExt;
    let c = LocalCluster::start(Path::new(BIN), &desired(1, 1), 0);
    let s = c.wait_for(
        "desired state 1 with 5 voters",
        Duration::from_secs(120),
        |s| at_desired(s, 1) && voters(s) == 5,
    );
    // The secrets on disk are the owner's alone: the API token, the cluster CA's key, and
    // every VM's vm.json (the bootstrap's holds the CA; the others their join ticket) and
    // the certificate, key and CA key an agent got for its ticket.
    let mut secrets = vec![
        c.dir.path().join("data/api-token"),
        c.dir.path().join("data/tls/ca-key.pem"),
    ];
    let mut enrolled = 0;
    for e in std::fs::read_dir(c.dir.path().join("data/vms")).unwrap() {
        let dir = e.unwrap().path();
        secrets.push(dir.join("vm.json"));
        if dir.ends_with("bootstrap") {
            continue;
        }
        // A VM the leader created got a ticket, never the CA's key, and traded it for a
        // certificate naming it.
        let vm_json = std::fs::read_to_string(dir.join("vm.json")).unwrap();
        assert!(
            !vm_json.contains("PRIVATE KEY"),
            "{}: {vm_json}",
            dir.display()
        );
        assert!(
            vm_json.contains("\"join\""),
            "{} holds no join ticket",
            dir.display()
        );
        for f in ["cert.pem", "key.pem", "ca-key.pem"] {
            secrets.push(dir.join("agent-tls").join(f));
        }
        enrolled += 1;
    }
    assert!(enrolled >= 4, "{enrolled} VMs enrolled");
    assert!(secrets.len() > 5, "{secrets:?}");
    for file in &secrets {
        let mode = std::fs::metadata(file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} is {mode:o}", file.display());
    }
    for a in &s.agents {
        assert_eq!(
            c.agents.get_without_token(&a.http_addr, "/status"),
            401,
            "GET /status of {} without the token",
            a.vm
        );
        assert_eq!(
            c.agents.get_without_token(&a.http_addr, "/health"),
            200,
            "GET /health of {}",
            a.vm
        );
        assert!(
            c.status_at(&a.http_addr).is_some(),
            "{} with the token",
            a.vm
        );
    }
    let follower = s
        .agents
        .iter()
        .find(|a| a.vm != "bootstrap" && a.voter)
        .expect("a follower");
    let wrong = AgentsClient::new("not-the-token");
    let (code, body) = wrong.put_desired(&follower.http_addr, &desired(2, 2));
    assert_eq!(code, 401, "{body}");
    let (code, body) = c.apply_at(&follower.http_addr, &desired(2, 2));
    assert_eq!(
        code, 202,
        "forwarded by {} with the caller's token: {body}",
        follower.vm
    );
    c.wait_for("desired state 2", Duration::from_secs(120), |s| {
        at_desired(s, 2)
    });
}

/// (VM, Raft id) of every agent but the bootstrap's, and the VM names, sorted.
fn identity(s: &agent::http::Status) -> (Vec<(String, u64)>, Vec<String>) {
    let mut agents: Vec<(String, u64)> = s
        .agents
        .iter()
        .filter(|a| a.vm != "bootstrap")
        .map(|a| (a.vm.clone(), a.raft_id))
        .collect();
    agents.sort();
    let mut vms: Vec<String> = s.vms.iter().map(|v| v.name.clone()).collect();
    vms.sort();
    (agents, vms)
}

/// Every agent of the status answers itself, from a replica that holds desired state `id`.
fn all_answer(c: &LocalCluster, s: &agent::http::Status, id: u64) -> bool {
    s.agents.iter().all(|a| {
        c.status_at(&a.http_addr)
            .is_some_and(|own| own.answered_by == a.vm && own.accepted_id == Some(id))
    })
}

/// A power cut, twice: every agent (the bootstrap's included) SIGKILLed at rest, and again
/// in the middle of a rolling restart. `ndb-agent up` on the same data directory brings back
/// the same cluster each time: same VMs, same Raft ids, the accepted desired state kept,
/// nothing created or replaced, the interrupted rolling restart finished.
#[test]
fn a_whole_cluster_killed_at_once_resumes_with_one_up() {
    let mut c = LocalCluster::start(Path::new(BIN), &desired(1, 1), 100);
    let long = Duration::from_secs(120);
    let s = c.wait_for("desired state 1 with 5 voters", long, |s| {
        at_desired(s, 1) && roles_match(s) && voters(s) == 5
    });
    let before = identity(&s);
    assert_eq!(before.1.len(), 8, "{:?}", before.1);
    // At rest `up` waits: following the file must not wake itself by reading it.
    let cpu = c.up_cpu_seconds();
    std::thread::sleep(Duration::from_secs(3));
    let used = c.up_cpu_seconds() - cpu;
    assert!(
        used < 0.6,
        "`up` used {used:.2} CPU seconds in 3 s at rest: a busy loop"
    );

    // 1. At rest.
    c.kill_everything();
    let t = Instant::now();
    c.up_again();
    let s = c.wait_for("the same cluster back at desired state 1", long, |s| {
        at_desired(s, 1) && voters(s) == 5 && identity(s) == before && all_answer(&c, s, 1)
    });
    eprintln!(
        "resumed at rest in {:?}; leader {:?}",
        t.elapsed(),
        s.leader_vm
    );
    c.wait_for_line(
        "up.log",
        "resuming the existing cluster: starting 8 VM(s) that are down",
        long,
    );
    c.wait_for_line("up.log", "is the cluster's accepted state already", long);

    // 2. In the middle of a rolling restart, submitted through the followed file.
    let base = s.actions_completed;
    std::fs::write(c.dir.path().join("desired_state.jsonc"), desired(2, 2)).unwrap();
    c.wait_for("the rolling restart under way", long, |s| {
        s.accepted_id == Some(2)
            && s.reconciliation_state == "WORKING_TOWARDS_DESIRED_STATE"
            && s.actions_completed >= base + 3
    });
    c.kill_everything();
    let t = Instant::now();
    c.up_again();
    let s = c.wait_for(
        "the same cluster back, the rolling restart finished",
        long,
        |s| at_desired(s, 2) && voters(s) == 5 && identity(s) == before && all_answer(&c, s, 2),
    );
    eprintln!("resumed mid-rolling-restart in {:?}", t.elapsed());
    // Every data node was restarted for RonDBRunningSince 2: started at creation and again.
    for v in s.vms.iter().filter(|v| v.role == "ndbd") {
        let n = starts_in(&c.vm_dir(&v.name));
        assert!(n >= 2, "{} started {n} time(s)", v.name);
    }
    // No VM directory was created or moved: exactly the cluster's VMs (and the bootstrap).
    let on_disk = vm_dirs(&c);
    assert_eq!(on_disk, before.1);
}

/// A VM directory removed while its agent is dead is a VM gone: replaced. Both VMs of a node
/// group removed: ERROR_STATE naming the node group and the backup restore, and no VM is
/// created for the group.
#[test]
fn removed_vm_directories_are_gone_vms() {
    let c = LocalCluster::start(Path::new(BIN), &desired(1, 1), 0);
    let long = Duration::from_secs(120);
    let s = c.wait_for("desired state 1 with 5 voters", long, |s| {
        at_desired(s, 1) && roles_match(s) && voters(s) == 5
    });
    let leader = s.leader_vm.clone().unwrap();
    // A MySQL server's VM: agent killed, directory removed.
    let gone = s
        .vms
        .iter()
        .find(|v| v.role == "mysqld" && v.name != leader)
        .map(|v| v.name.clone())
        .unwrap();
    // Removed first, then killed: nobody can start its agent again in between.
    let pid = c.pid_of(&gone).unwrap();
    std::fs::remove_dir_all(c.vm_dir(&gone)).unwrap();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    let s = c.wait_for("the gone MySQL server VM replaced", long, |s| {
        at_desired(s, 1) && roles_match(s) && !s.vms.iter().any(|v| v.name == gone)
    });
    let vms_before = identity(&s).1;

    // Both data-node VMs of node group 1: gone at once.
    let group: Vec<String> = s
        .vms
        .iter()
        .filter(|v| v.role == "ndbd" && v.name.starts_with("ndbd-1-"))
        .map(|v| v.name.clone())
        .collect();
    assert_eq!(group.len(), 2, "{:?}", s.vms);
    for vm in &group {
        let pid = c.pid_of(vm).unwrap();
        std::fs::remove_dir_all(c.vm_dir(vm)).unwrap();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let s = c.wait_for("ERROR_STATE naming node group 1", long, |s| {
        s.reconciliation_state == "ERROR_STATE"
            && s.last_error
                .as_deref()
                .is_some_and(|e| e.contains("node group 1 lost every replica"))
    });
    let e = s.last_error.clone().unwrap_or_default();
    assert!(e.contains("RestoreFromBackup"), "{e}");
    // Nothing was created for the group: its VMs are simply missing.
    let names = identity(&s).1;
    assert!(
        !names.iter().any(|n| n.starts_with("ndbd-1-")),
        "a VM was created for the lost node group: {names:?}"
    );
    let expected: Vec<String> = vms_before
        .into_iter()
        .filter(|n| !group.contains(n))
        .collect();
    assert_eq!(names, expected);
}

/// AT_DESIRED_STATE means fault tolerant: the moment the first desired state is reported
/// reached, the new agents vote already, so the bootstrap agent (which the user may now
/// remove) can go and the rest elects a leader.
#[test]
fn the_bootstrap_agent_can_go_the_moment_the_first_desired_state_is_reached() {
    let c = LocalCluster::start(Path::new(BIN), &desired(1, 1), 0);
    let s = c.wait_for("desired state 1", Duration::from_secs(120), |s| {
        at_desired(s, 1)
    });
    assert_eq!(
        voters(&s),
        5,
        "reported reached with learners left: {:?}",
        s.agents
    );
    assert_eq!(s.agent_losses_survived, 2);
    let t = Instant::now();
    c.kill("bootstrap");
    let s = c.wait_for(
        "a new leader once the bootstrap agent is gone",
        Duration::from_secs(30),
        |s| s.leader_vm.as_deref().is_some_and(|l| l != "bootstrap"),
    );
    eprintln!(
        "bootstrap agent killed right at AT_DESIRED_STATE: new leader {:?} after {:.2} s",
        s.leader_vm,
        t.elapsed().as_secs_f64()
    );
}

/// An agent in a crash loop: a data node's agent SIGKILLed every time it comes back, for
/// 15 s, in the middle of a rolling restart. Its VM is down to the provider and started again
/// and again; the rest of the cluster is not harmed: every other VM is restarted exactly once
/// for the rolling restart (nothing done twice), the crash-looping VM is started again rather
/// than replaced (the loop is shorter than VmDownGraceSeconds), the accepted desired state is
/// kept, and once the loop stops the rolling restart finishes.
#[test]
fn an_agent_in_a_crash_loop_harms_nothing_else() {
    let c = LocalCluster::start(Path::new(BIN), &desired(1, 1), 100);
    let long = Duration::from_secs(120);
    let s = c.wait_for("desired state 1 with 5 voters", long, |s| {
        at_desired(s, 1) && roles_match(s) && voters(s) == 5
    });
    let before = identity(&s);
    let victim = s
        .vms
        .iter()
        .find(|v| v.role == "ndbd" && Some(&v.name) != s.leader_vm.as_ref())
        .unwrap()
        .name
        .clone();
    let base = s.actions_completed;
    std::fs::write(c.dir.path().join("desired_state.jsonc"), desired(2, 2)).unwrap();
    c.wait_for("the rolling restart under way", long, |s| {
        s.accepted_id == Some(2) && s.actions_completed > base
    });

    let t = Instant::now();
    let mut kills = 0;
    let mut seen_down = false;
    let mut last_poll = Instant::now();
    while t.elapsed() < Duration::from_secs(15) {
        if let Some(pid) = c.pid_of(&victim) {
            if nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            )
            .is_ok()
            {
                kills += 1;
            }
        }
        if last_poll.elapsed() > Duration::from_millis(500) {
            last_poll = Instant::now();
            if let Some(s) = c.status() {
                assert_eq!(
                    s.accepted_id,
                    Some(2),
                    "the accepted desired state changed during the crash loop"
                );
                seen_down |= s.vms.iter().any(|v| v.name == victim && v.down);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        kills >= 2,
        "the agent of {victim} was killed {kills} time(s)"
    );
    assert!(seen_down, "{victim} was never reported down");
    let loop_over = Instant::now();
    let s = c.wait_for(
        "the rolling restart finished after the crash loop",
        long,
        |s| at_desired(s, 2) && voters(s) == 5 && identity(s) == before && all_answer(&c, s, 2),
    );
    eprintln!(
        "agent of {victim} in a crash loop for 15 s ({kills} SIGKILLs): the rolling restart finished {:.1} s after the loop, leader {:?}",
        loop_over.elapsed().as_secs_f64(),
        s.leader_vm
    );
    // Every other VM was started once at creation and once for the rolling restart.
    for v in s.vms.iter().filter(|v| v.name != victim) {
        let n = starts_in(&c.vm_dir(&v.name));
        assert_eq!(n, 2, "{} started {n} time(s)", v.name);
    }
}

/// A small tmpfs, filled to the last page, mounted over a directory with a copy of what the
/// directory held: writes there fail with "No space left on device" while reads still work.
/// Unmounted (the directory as it was) when dropped, also when the test fails.
struct FullDisk {
    over: std::path::PathBuf,
    staging: std::path::PathBuf,
}

impl FullDisk {
    fn mount(over: &Path, staging: &Path) -> FullDisk {
        let run = |args: &[&str]| {
            let out = std::process::Command::new(args[0])
                .args(&args[1..])
                .output()
                .unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert!(
                out.status.success(),
                "{args:?} failed (this test mounts a tmpfs, so it needs root): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        std::fs::create_dir_all(staging).unwrap();
        let (o, st) = (over.to_str().unwrap(), staging.to_str().unwrap());
        run(&["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", st]);
        let disk = FullDisk {
            over: over.to_path_buf(),
            staging: staging.to_path_buf(),
        };
        run(&["cp", "-a", &format!("{o}/."), st]);
        // Fill what is left, page by page, until the file system refuses.
        use std::io::Write;
        let mut filler = std::fs::File::create(staging.join("filler")).unwrap();
        let page = [0u8; 4096];
        while filler
            .write_all(&page)
            .and_then(|()| filler.sync_all())
            .is_ok()
        {}
        run(&["mount", "--bind", st, o]);
        disk
    }
}

impl Drop for FullDisk {
    fn drop(&mut self) {
        for dir in [&self.over, &self.staging] {
            let _ = std::process::Command::new("umount").arg(dir).status();
        }
    }
}

/// A VM whose disk is full: its agent's runtime cannot write its files. The action on it
/// fails with an error that names the VM and the full disk (`ERROR_STATE`, the accepted
/// desired state kept); nothing else is harmed: every node group keeps a running data node,
/// no other VM is started twice. Once space is freed the agents retry and finish.
#[test]
fn a_vm_with_a_full_disk_gets_a_clear_error_and_harms_nothing_else() {
    let c = LocalCluster::start(Path::new(BIN), &desired(1, 1), 100);
    let long = Duration::from_secs(120);
    let s = c.wait_for("desired state 1 with 5 voters", long, |s| {
        at_desired(s, 1) && roles_match(s) && voters(s) == 5
    });
    let before = identity(&s);
    let victim = s
        .vms
        .iter()
        .find(|v| v.role == "mysqld" && Some(&v.name) != s.leader_vm.as_ref())
        .unwrap()
        .name
        .clone();
    let disk = FullDisk::mount(
        &c.vm_dir(&victim).join("runtime"),
        &c.dir.path().join("full-disk"),
    );

    std::fs::write(c.dir.path().join("desired_state.jsonc"), desired(2, 2)).unwrap();
    let t = Instant::now();
    let s = c.wait_for("ERROR_STATE naming the full disk", long, |s| {
        s.accepted_id == Some(2) && s.reconciliation_state == "ERROR_STATE"
    });
    let error = s.last_error.clone().unwrap_or_default();
    eprintln!(
        "full disk on {victim}: ERROR_STATE after {:.1} s: {error}",
        t.elapsed().as_secs_f64()
    );
    assert!(
        error.contains(&victim) && error.contains("disk is full") && error.contains("free space"),
        "the error must name the VM, the full disk and what to do: {error}"
    );
    for g in ["ndbd-0-", "ndbd-1-"] {
        assert!(
            s.vms
                .iter()
                .any(|v| v.name.starts_with(g) && v.running && !v.down),
            "node group {g}: no running data node while a MySQL server's disk is full: {:?}",
            s.vms
        );
    }
    assert!(s.vms.iter().all(|v| !v.down), "a VM is down: {:?}", s.vms);

    drop(disk);
    let freed = Instant::now();
    let s = c.wait_for("desired state 2 once space is freed", long, |s| {
        at_desired(s, 2) && identity(s) == before
    });
    eprintln!(
        "space freed on {victim}: AT_DESIRED_STATE {:.1} s later",
        freed.elapsed().as_secs_f64()
    );
    for v in s.vms.iter().filter(|v| v.name != victim) {
        let n = starts_in(&c.vm_dir(&v.name));
        assert_eq!(n, 2, "{} started {n} time(s)", v.name);
    }
}

/// Agents renew their certificates before they expire and restart to serve them: a VM's
/// agent (it execs itself) and the bootstrap agent (its `ndb-agent up` starts itself again).
/// The cluster stays the same, at its desired state, with every agent answering.
#[test]
fn agents_renew_their_certificates_and_restart_to_serve_them() {
    use agent::tls::{AgentTls, TLS_DIR};
    let mut c = LocalCluster::start(Path::new(BIN), &desired(1, 1), 0);
    let long = Duration::from_secs(120);
    let s = c.wait_for("desired state 1 with 5 voters", long, |s| {
        at_desired(s, 1) && voters(s) == 5
    });
    let before = identity(&s);
    let victim = s
        .vms
        .iter()
        .find(|v| v.role == "ndbd")
        .map(|v| v.name.clone())
        .unwrap();
    let tls = c.data_dir().join("tls");
    let ca = agent_core::backend::ClusterCa {
        cert_pem: std::fs::read_to_string(tls.join("ca.pem")).unwrap(),
        key_pem: std::fs::read_to_string(tls.join("ca-key.pem")).unwrap(),
    };
    // While every agent is down, two get certificates that are due in seconds.
    c.kill_everything();
    for vm in [victim.as_str(), "bootstrap"] {
        AgentTls::issue_for(&ca, vm, Duration::from_secs(4))
            .unwrap()
            .save(&c.vm_dir(vm).join(TLS_DIR))
            .unwrap();
    }
    let t = Instant::now();
    c.up_again();
    c.wait_for_line("up.log", "restarting the bootstrap agent", long);
    c.wait_for_line(
        &format!("data/vms/{victim}/agent.log"),
        "renewed this agent's certificate; restarting to serve it",
        long,
    );
    let s = c.wait_for(
        "the same cluster at desired state 1 after both renewals",
        long,
        |s| at_desired(s, 1) && voters(s) == 5 && identity(s) == before && all_answer(&c, s, 1),
    );
    for vm in [victim.as_str(), "bootstrap"] {
        let dir = c.vm_dir(vm).join(TLS_DIR);
        let renewed = AgentTls::load(&dir, &ca.cert_pem).unwrap().unwrap();
        let (_, until) = renewed.validity().unwrap();
        let left = until.duration_since(std::time::SystemTime::now()).unwrap();
        assert!(
            left > Duration::from_secs(300 * 24 * 3600),
            "{vm}: {left:?}"
        );
    }
    eprintln!(
        "{victim} and the bootstrap agent renewed their certificates; the cluster answered at desired state 1 again {:.1} s after up started, leader {:?}",
        t.elapsed().as_secs_f64(),
        s.leader_vm
    );
}

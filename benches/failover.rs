//! Failover and idle-agent benchmark on a local cluster (9 agents, `local` provider, dummy
//! runtime slowed to 150 ms per program start/stop so a rolling restart is in progress).
//!
//! `cargo bench --bench failover` (FAILOVERS=N, default 5): for each round a rolling restart is
//! submitted, the leader is SIGKILLed in the middle of it, and the time to a new leader and to
//! the reconciliation making progress again is measured. Then every agent's resident memory
//! and CPU use over 10 idle seconds are read from /proc.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

#[path = "../tests/common/agents_client.rs"]
mod agents_client;
#[path = "../tests/local_cluster/harness.rs"]
mod harness;

use harness::{at_desired, desired, voters, LocalCluster};
use std::path::Path;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ndb-agent");

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn proc_field(pid: i32, key: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn cpu_ticks(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; after ")" they are at 11 and 12.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn main() {
    let rounds: usize = std::env::var("FAILOVERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let long = Duration::from_secs(180);
    let c = LocalCluster::start(Path::new(BIN), &desired(1, 1), 150);
    let t0 = Instant::now();
    c.wait_for("the first desired state", long, |s| {
        at_desired(s, 1) && voters(s) == 5
    });
    println!(
        "cluster of 8 VMs + bootstrap at its desired state after {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    let (mut elected, mut resumed) = (vec![], vec![]);
    for round in 0..rounds {
        let id = round as u64 + 2;
        let s = c.status().expect("status");
        let any = s
            .agents
            .iter()
            .find(|a| a.vm == s.answered_by)
            .unwrap()
            .http_addr
            .clone();
        let base = s.actions_completed;
        let (code, body) = c.apply_at(&any, &desired(id, id));
        assert_eq!(code, 202, "{body}");
        let s = c.wait_for("a rolling restart in progress", long, |s| {
            s.accepted_id == Some(id)
                && s.reconciliation_state == "WORKING_TOWARDS_DESIRED_STATE"
                && s.actions_completed >= base + 3
        });
        let leader = s.leader_vm.clone().unwrap();
        let done = s.actions_completed;
        let t = Instant::now();
        c.kill(&leader);
        c.wait_for("a new leader", long, |s| {
            s.leader_vm.as_deref().is_some_and(|l| l != leader)
        });
        let e = t.elapsed().as_secs_f64();
        c.wait_for("progress again", long, |s| s.actions_completed > done);
        let r = t.elapsed().as_secs_f64();
        println!("round {}: killed leader {leader}: new leader after {e:.2} s, reconciliation resumed after {r:.2} s", round + 1);
        elected.push(e);
        resumed.push(r);
        c.wait_for("the rolling restart finished", long, |s| {
            at_desired(s, id) && voters(s) == 5
        });
    }
    println!(
        "failover over {rounds} rounds: median new leader {:.2} s (max {:.2}), median resumed {:.2} s (max {:.2})",
        median(&mut elected.clone()),
        elected.iter().cloned().fold(0.0, f64::max),
        median(&mut resumed.clone()),
        resumed.iter().cloned().fold(0.0, f64::max),
    );

    // Idle agents.
    std::thread::sleep(Duration::from_secs(3));
    let s = c.status().expect("status");
    let leader = s.leader_vm.clone().unwrap_or_default();
    let pids: Vec<(String, i32)> = s
        .agents
        .iter()
        .filter_map(|a| c.pid_of(&a.vm).map(|p| (a.vm.clone(), p)))
        .collect();
    let before: Vec<Option<u64>> = pids.iter().map(|(_, p)| cpu_ticks(*p)).collect();
    let window = Duration::from_secs(10);
    std::thread::sleep(window);
    let hz = 100.0; // USER_HZ on Linux
    let mut rss = vec![];
    let mut cpu = vec![];
    for ((vm, pid), b) in pids.iter().zip(before) {
        let (Some(b), Some(a)) = (b, cpu_ticks(*pid)) else {
            continue;
        };
        let pct = (a - b) as f64 / hz / window.as_secs_f64() * 100.0;
        let kib = proc_field(*pid, "VmRSS:").unwrap_or(0.0);
        println!(
            "  {vm:<12}{} RSS {:>5.1} MiB  CPU {pct:.2}% of a core",
            if *vm == leader {
                " (leader)"
            } else {
                "         "
            },
            kib / 1024.0
        );
        rss.push(kib / 1024.0);
        cpu.push(pct);
    }
    println!(
        "idle agents ({}): median RSS {:.1} MiB (max {:.1}), median CPU {:.2}% (max {:.2}%) of a core",
        rss.len(),
        median(&mut rss.clone()),
        rss.iter().cloned().fold(0.0, f64::max),
        median(&mut cpu.clone()),
        cpu.iter().cloned().fold(0.0, f64::max),
    );
}

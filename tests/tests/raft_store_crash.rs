//! Crash test of the Raft store: a writer is SIGKILLed in the middle of appending and
//! applying entries; after reopening, every entry it acknowledged is in the log and applied
//! to the state machine. Repeated at several kill points, on the same store.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use agent::raft::store;
use openraft::storage::RaftStateMachine;
use openraft::RaftLogReader;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const WRITER: &str = env!("CARGO_BIN_EXE_raft-store-writer");

#[test]
fn nothing_acknowledged_is_lost_when_killed() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut total_acked = 0u64;
    for (round, kill_after) in [5u64, 40, 1, 120, 17].into_iter().enumerate() {
        let mut child = Command::new(WRITER)
            .arg(dir.path())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the writer");
        let stdout = child.stdout.take().unwrap();
        let mut last = 0u64;
        let mut seen = 0u64;
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            last = line.trim_start_matches("acked ").parse().unwrap();
            seen += 1;
            if seen >= kill_after {
                break;
            }
        }
        // Killed while it goes on writing (the next entry may be half done).
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            last > total_acked,
            "round {round}: the writer made progress"
        );
        total_acked = last;

        let (mut log, mut sm) = store::open(&dir.path().join("raft.redb")).unwrap();
        rt.block_on(async {
            let entries = log.try_get_log_entries(1..=last).await.unwrap();
            assert_eq!(
                entries.len() as u64,
                last,
                "round {round}: acknowledged log entries missing"
            );
            for (i, e) in entries.iter().enumerate() {
                assert_eq!(
                    e.log_id.index,
                    i as u64 + 1,
                    "round {round}: hole in the log"
                );
            }
            let (applied, _) = sm.applied_state().await.unwrap();
            let applied = applied.map(|l| l.index).unwrap_or(0);
            assert!(
                applied >= last,
                "round {round}: applied {applied} < acknowledged {last}"
            );
        });
        let rep = sm.shared();
        let rep = rep.read().unwrap();
        for i in 1..=last {
            assert!(
                rep.raft_ids.contains_key(&format!("vm-{i}")),
                "round {round}: entry {i} not in the state machine"
            );
        }
    }
}

//! Crash-test helper: appends Raft entries to the redb store in DIR one at a time, applies
//! each to the state machine, and prints `acked N` only after both returned (the moment
//! openraft would consider them durable). The crash test SIGKILLs it at a random moment.

use agent::raft::store;
use agent::raft::{Request, TypeConfig};
use openraft::storage::{RaftLogStorageExt, RaftStateMachine};
use openraft::{Entry, EntryPayload};
use std::io::Write;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .ok_or("usage: raft-store-writer DIR")?;
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    rt.block_on(async {
        let (mut log, mut sm) = store::open(&std::path::Path::new(&dir).join("raft.redb"))?;
        let (applied, _) = sm.applied_state().await?;
        let mut i = applied.map(|l| l.index).unwrap_or(0) + 1;
        let mut out = std::io::stdout().lock();
        loop {
            let entry: Entry<TypeConfig> = Entry {
                log_id: openraft::testing::log_id(1, 1, i),
                payload: EntryPayload::Normal(Request::AllocateRaftId {
                    vm: format!("vm-{i}"),
                }),
            };
            log.blocking_append([entry.clone()]).await?;
            sm.apply([entry]).await?;
            writeln!(out, "acked {i}")?;
            out.flush()?;
            i += 1;
        }
    })
}

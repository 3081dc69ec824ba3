//! Durable Raft storage in one redb file: the log, the vote, the committed id, the state
//! machine and the last snapshot. redb commits with fsync (`Durability::Immediate`), so
//! nothing is acknowledged to openraft before it is on disk.

// openraft's trait signatures fix the error type (`StorageError`); helpers return it too.
#![allow(clippy::result_large_err)]

use super::{NodeId, Replicated, TypeConfig};
use agent_core::model::Event;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use redb::{Database, ReadableTable, TableDefinition};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::{Arc, RwLock};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";
const STATE_MACHINE: &str = "state_machine";
const SNAPSHOT: &str = "snapshot";

/// Why the store cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open the Raft store {path}: {source}; is another agent using this directory?")]
    Open {
        path: String,
        #[source]
        source: redb::DatabaseError,
    },
    #[error("the Raft store {path} is damaged: {reason}; move it away to rejoin as a new agent")]
    Damaged { path: String, reason: String },
}

type StResult<T> = Result<T, StorageError<NodeId>>;

fn io_err<E: std::error::Error + 'static>(
    make: fn(AnyError) -> StorageIOError<NodeId>,
) -> impl Fn(E) -> StorageError<NodeId> {
    move |e| StorageError::IO {
        source: make(AnyError::new(&e)),
    }
}

fn read_err<E: std::error::Error + 'static>(e: E) -> StorageError<NodeId> {
    io_err(StorageIOError::read)(e)
}

fn write_err<E: std::error::Error + 'static>(e: E) -> StorageError<NodeId> {
    io_err(StorageIOError::write)(e)
}

fn encode<T: Serialize>(v: &T) -> StResult<Vec<u8>> {
    serde_json::to_vec(v).map_err(write_err)
}

fn decode<T: DeserializeOwned>(b: &[u8]) -> StResult<T> {
    serde_json::from_slice(b).map_err(read_err)
}

fn get_meta<T: DeserializeOwned>(db: &Database, key: &str) -> StResult<Option<T>> {
    let tx = db.begin_read().map_err(read_err)?;
    let table = match tx.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    match table.get(key).map_err(read_err)? {
        Some(v) => Ok(Some(decode(v.value())?)),
        None => Ok(None),
    }
}

fn put_meta<T: Serialize>(db: &Database, key: &str, v: &T) -> StResult<()> {
    let bytes = encode(v)?;
    let tx = db.begin_write().map_err(write_err)?;
    {
        let mut t = tx.open_table(META).map_err(write_err)?;
        t.insert(key, bytes.as_slice()).map_err(write_err)?;
    }
    tx.commit().map_err(write_err)
}

/// Opens (or creates) the store at `path`; returns its log and state-machine halves.
pub fn open(path: &Path) -> Result<(LogStore, StateMachineStore), OpenError> {
    let db = Database::create(path).map_err(|source| OpenError::Open {
        path: path.display().to_string(),
        source,
    })?;
    let db = Arc::new(db);
    let data: Replicated = get_meta(&db, STATE_MACHINE)
        .map_err(|e| OpenError::Damaged {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?
        .unwrap_or_default();
    let snapshot: Option<StoredSnapshot> =
        get_meta(&db, SNAPSHOT).map_err(|e| OpenError::Damaged {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
    Ok((
        LogStore {
            db: Arc::clone(&db),
        },
        StateMachineStore {
            db,
            data: Arc::new(RwLock::new(data)),
            snapshot_seq: snapshot.map(|s| s.seq).unwrap_or(0),
        },
    ))
}

/// The Raft log, vote and committed id.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StResult<Vec<Entry<TypeConfig>>> {
        let tx = self.db.begin_read().map_err(read_err)?;
        let table = match tx.open_table(LOG) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(vec![]),
            Err(e) => return Err(read_err(e)),
        };
        let mut out = Vec::new();
        for item in table.range(range).map_err(read_err)? {
            let (_, v) = item.map_err(read_err)?;
            out.push(decode(v.value())?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StResult<LogState<TypeConfig>> {
        let last_purged: Option<LogId<NodeId>> = get_meta(&self.db, LAST_PURGED)?;
        let tx = self.db.begin_read().map_err(read_err)?;
        let last = match tx.open_table(LOG) {
            Ok(t) => match t.last().map_err(read_err)? {
                Some((_, v)) => Some(decode::<Entry<TypeConfig>>(v.value())?.log_id),
                None => None,
            },
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(read_err(e)),
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StResult<()> {
        put_meta(&self.db, VOTE, vote)
    }

    async fn read_vote(&mut self) -> StResult<Option<Vote<NodeId>>> {
        get_meta(&self.db, VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StResult<()> {
        put_meta(&self.db, COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> StResult<Option<LogId<NodeId>>> {
        Ok(get_meta::<Option<LogId<NodeId>>>(&self.db, COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let tx = self.db.begin_write().map_err(write_err)?;
        {
            let mut t = tx.open_table(LOG).map_err(write_err)?;
            for e in entries {
                let bytes = encode(&e)?;
                t.insert(e.log_id.index, bytes.as_slice())
                    .map_err(write_err)?;
            }
        }
        // Immediate durability: the commit returns after fsync.
        tx.commit().map_err(write_err)?;
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StResult<()> {
        let tx = self.db.begin_write().map_err(write_err)?;
        {
            let mut t = tx.open_table(LOG).map_err(write_err)?;
            t.retain_in(log_id.index.., |_, _| false)
                .map_err(write_err)?;
        }
        tx.commit().map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StResult<()> {
        let bytes = encode(&Some(log_id))?;
        let tx = self.db.begin_write().map_err(write_err)?;
        {
            let mut m = tx.open_table(META).map_err(write_err)?;
            m.insert(LAST_PURGED, bytes.as_slice()).map_err(write_err)?;
            let mut t = tx.open_table(LOG).map_err(write_err)?;
            t.retain_in(..=log_id.index, |_, _| false)
                .map_err(write_err)?;
        }
        tx.commit().map_err(write_err)
    }
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    seq: u64,
    meta: SnapshotMeta<NodeId, super::AgentNode>,
    data: Vec<u8>,
}

/// The state machine: the replicated cluster state, persisted at every apply.
pub struct StateMachineStore {
    db: Arc<Database>,
    data: Arc<RwLock<Replicated>>,
    snapshot_seq: u64,
}

impl StateMachineStore {
    /// A read handle on the applied state, for the HTTP API and a new leader.
    pub fn shared(&self) -> Arc<RwLock<Replicated>> {
        Arc::clone(&self.data)
    }

    fn read(&self) -> StResult<std::sync::RwLockReadGuard<'_, Replicated>> {
        self.data
            .read()
            .map_err(|_| read_err(std::io::Error::other("state machine lock poisoned")))
    }

    fn persist(&self, data: &Replicated) -> StResult<()> {
        put_meta(&self.db, STATE_MACHINE, data)
    }
}

/// Builds a snapshot from a copy of the state machine.
pub struct SnapshotBuilder {
    db: Arc<Database>,
    data: Replicated,
    seq: u64,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StResult<Snapshot<TypeConfig>> {
        let bytes = encode(&self.data)?;
        let last = self.data.last_applied;
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: self.data.membership.clone(),
            snapshot_id: format!("{}-{}", last.map(|l| l.index).unwrap_or(0), self.seq),
        };
        put_meta(
            &self.db,
            SNAPSHOT,
            &StoredSnapshot {
                seq: self.seq,
                meta: meta.clone(),
                data: bytes.clone(),
            },
        )?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> StResult<(
        Option<LogId<NodeId>>,
        StoredMembership<NodeId, super::AgentNode>,
    )> {
        let d = self.read()?;
        Ok((d.last_applied, d.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StResult<Vec<super::Response>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Apply to a copy, persist it, then publish it: readers never see an unsaved state.
        let mut next = self.read()?.clone();
        let mut out = Vec::new();
        for e in entries {
            next.last_applied = Some(e.log_id);
            match e.payload {
                EntryPayload::Blank => out.push(super::Response::Done),
                EntryPayload::Normal(req) => {
                    if let super::Request::Events(evs) = &req {
                        if evs.iter().any(|ev| matches!(ev, Event::Observed { .. })) {
                            next.looked_in_term = e.log_id.leader_id.term;
                        }
                    }
                    out.push(next.apply_request(&req));
                }
                EntryPayload::Membership(m) => {
                    next.membership = StoredMembership::new(Some(e.log_id), m);
                    out.push(super::Response::Done);
                }
            }
        }
        self.persist(&next)?;
        let mut w = self
            .data
            .write()
            .map_err(|_| write_err(std::io::Error::other("state machine lock poisoned")))?;
        *w = next;
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_seq += 1;
        let data = self.data.read().map(|d| d.clone()).unwrap_or_default();
        SnapshotBuilder {
            db: Arc::clone(&self.db),
            data,
            seq: self.snapshot_seq,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, super::AgentNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StResult<()> {
        let bytes = snapshot.into_inner();
        let mut data: Replicated = decode(&bytes)?;
        data.last_applied = meta.last_log_id;
        data.membership = meta.last_membership.clone();
        self.snapshot_seq += 1;
        put_meta(
            &self.db,
            SNAPSHOT,
            &StoredSnapshot {
                seq: self.snapshot_seq,
                meta: meta.clone(),
                data: bytes,
            },
        )?;
        self.persist(&data)?;
        let mut w = self
            .data
            .write()
            .map_err(|_| write_err(std::io::Error::other("state machine lock poisoned")))?;
        *w = data;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StResult<Option<Snapshot<TypeConfig>>> {
        let s: Option<StoredSnapshot> = get_meta(&self.db, SNAPSHOT)?;
        Ok(s.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

#[cfg(test)]
mod tests;

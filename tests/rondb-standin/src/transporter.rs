//! What the stand-in's programs say to each other once a connection is a transporter. In
//! RonDB these are NDB signals over transporters (a `transporter connect` on the mgm port,
//! or a data node's `ServerPort`); the stand-in sends one JSON message per line instead.
//! Nothing outside the stand-in reads these messages.

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::BTreeMap;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

/// A data node's or an API node's message to the management server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToMgmd {
    /// First message of a data node's transporter (`lsn`: how much it has applied;
    /// `started`: a started node reconnecting to a management server that restarted or a
    /// transporter that broke; `epoch`: its group's epoch as it holds it).
    DataHello {
        node: u32,
        version: u32,
        server_port: u16,
        lsn: u64,
        started: bool,
        #[serde(default)]
        epoch: u64,
    },
    /// First message of an API node's transporter.
    ApiHello {
        node: u32,
        version: u32,
    },
    Phase {
        status: DataStatus,
        phase: u32,
    },
    /// Phase 4: the node asks how to get its node group's rows.
    Join {
        lsn: u64,
    },
    EpochAck {
        group: u32,
        epoch: u64,
    },
    BackupDone {
        id: u32,
        records: u64,
        bytes: u64,
    },
    BackupFailed {
        id: u32,
        code: u32,
        text: String,
    },
    /// A line for the cluster log (already prefixed with `Node N: `).
    Log {
        text: String,
    },
}

/// The management server's message to a data node or API node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FromMgmd {
    /// The configuration the node must use (config.ini text with its generation).
    Welcome {
        config: String,
    },
    Membership(Membership),
    /// A new epoch of the node's group: acknowledge, and refuse writes of other epochs.
    Epoch {
        group: u32,
        epoch: u64,
    },
    Join(JoinReply),
    /// Graceful stop; `restart` asks the angel to start the node again.
    Stop {
        restart: bool,
        initial: bool,
        nostart: bool,
    },
    /// Leave NOT_STARTED (`--nostart`, `restart -n`).
    Start,
    /// Forced node shutdown with an NDB exit code (2305, 6302, ...).
    Shutdown {
        code: u32,
        text: String,
    },
    /// Take backup `id`: `writers[group]` are the started nodes sharing the group's rows.
    Backup {
        id: u32,
        mgmd: u32,
        writers: BTreeMap<u32, Vec<u32>>,
    },
    Refused {
        text: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataStatus {
    NotStarted,
    Starting,
    Started,
    ShuttingDown,
}

impl DataStatus {
    pub fn wire(self) -> &'static str {
        match self {
            DataStatus::NotStarted => "NOT_STARTED",
            DataStatus::Starting => "STARTING",
            DataStatus::Started => "STARTED",
            DataStatus::ShuttingDown => "SHUTTING_DOWN",
        }
    }
}

/// Who holds each node group's rows: where API nodes write and read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub groups: BTreeMap<u32, GroupView>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupView {
    /// Changes whenever the members change; a data node refuses writes of another epoch.
    pub epoch: u64,
    pub members: Vec<Member>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub node: u32,
    /// `ip:ServerPort`.
    pub addr: String,
    /// Only started members answer reads; joining ones take writes already.
    pub started: bool,
}

impl GroupView {
    pub fn started(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| m.started)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum JoinReply {
    /// Copy everything from this started member (writes already reach the joiner).
    CopyFrom { node: u32, addr: String },
    /// No member started: this node's own files are the newest; start from them.
    OwnFiles,
    /// A peer with newer files may still come: ask again.
    Wait,
}

/// A table as the dictionary keeps it. Rows are `key BIGINT PRIMARY KEY` → `value VARCHAR`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableDef {
    pub db: String,
    pub name: String,
    pub key_column: String,
    pub value_column: String,
    pub value_len: u32,
    /// The node groups the table is partitioned over, fixed when it is created.
    pub node_groups: Vec<u32>,
}

impl TableDef {
    pub fn full_name(&self) -> String {
        format!("{}.{}", self.db, self.name)
    }

    /// The node group holding `key` (hash partitioning over the table's node groups).
    pub fn group_of(&self, key: i64) -> u32 {
        let n = self.node_groups.len().max(1) as u64;
        let idx = (mix(key as u64) % n) as usize;
        self.node_groups.get(idx).copied().unwrap_or(0)
    }
}

/// A stable 64-bit mix (splitmix64): partitioning must be the same in every program.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The dictionary: every data node holds all of it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dictionary {
    pub databases: std::collections::BTreeSet<String>,
    /// By `db.table`.
    pub tables: BTreeMap<String, TableDef>,
}

pub type Row = (i64, Option<String>);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RowOp {
    Put(i64, Option<String>),
    Delete(i64),
}

/// An API node's (or a joining data node's) request to a data node's `ServerPort`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum DataRequest {
    Dictionary,
    /// Dictionary changes go to every member of every group, with the group's epoch.
    CreateDatabase {
        name: String,
        group: u32,
        epoch: u64,
    },
    CreateTable {
        def: TableDef,
        group: u32,
        epoch: u64,
    },
    Write {
        table: String,
        group: u32,
        epoch: u64,
        ops: Vec<RowOp>,
    },
    Read {
        table: String,
        key: i64,
    },
    Count {
        table: String,
    },
    Scan {
        table: String,
    },
    /// A joining node of the same group asks for everything.
    Copy {
        group: u32,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum DataReply {
    Ok,
    /// Rows affected by a write (deletes of missing keys do not count).
    Written(u64),
    StaleEpoch {
        current: u64,
    },
    Dictionary(Dictionary),
    Row(Option<Option<String>>),
    Count(u64),
    Rows(Vec<Row>),
    State {
        dictionary: Dictionary,
        rows: BTreeMap<String, BTreeMap<i64, Option<String>>>,
        lsn: u64,
    },
    NotStarted,
    Error {
        code: u32,
        text: String,
    },
}

/// Writes one message as a JSON line.
pub async fn write_line<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> std::io::Result<()> {
    let mut s = serde_json::to_string(msg).map_err(std::io::Error::other)?;
    s.push('\n');
    w.write_all(s.as_bytes()).await
}

/// Reads one JSON line; `None` at end of stream.
pub async fn read_line<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut BufReader<R>,
) -> std::io::Result<Option<T>> {
    let mut line = String::new();
    if r.read_line(&mut line).await? == 0 {
        return Ok(None);
    }
    serde_json::from_str(&line)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

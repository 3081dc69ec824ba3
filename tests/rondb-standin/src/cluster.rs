//! An API node: what `mysqld`, `rdrs2` and `ndb_restore` use to reach the data. It takes a
//! node id from the management server (`get nodeid`, type API), keeps a transporter to it to
//! learn which data nodes hold each node group, and reads and writes rows on the data nodes
//! themselves: a write reaches every member of the row's node group before it returns.

use crate::config::NodeType;
use crate::mgm::{ConnectString, Message, MgmClient, MgmError};
use crate::transporter::{
    self, DataReply, DataRequest, Dictionary, FromMgmd, Membership, Row, RowOp, TableDef, ToMgmd,
};
use crate::version::Version;
use futures::future::join_all;
use std::time::Duration;
use tokio::io::BufReader;
use tokio::net::TcpStream;
use tokio::sync::watch;

/// NDB's error for a statement that needs a node group without a started data node.
pub const CLUSTER_FAILURE: u32 = 4009;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("Got temporary error 4009 'Cluster Failure' from NDBCLUSTER")]
    ClusterFailure,
    #[error("{0}")]
    Mgm(#[from] MgmError),
    /// The management server refused a node id (its text, as RonDB words it).
    #[error("{0}")]
    NodeId(String),
    #[error("Table '{0}' already exists")]
    TableExists(String),
    #[error("Table '{0}' doesn't exist")]
    NoSuchTable(String),
    #[error("Can't create database '{0}'; database exists")]
    DatabaseExists(String),
    #[error("Unknown database '{0}'")]
    NoSuchDatabase(String),
    #[error("data node error {code}: {text}")]
    DataNode { code: u32, text: String },
}

/// A connected API node.
pub struct ApiNode {
    node_id: u32,
    membership: watch::Receiver<Membership>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ApiNode {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How long after connecting to a management server its view of the data nodes is taken
/// with a grain of salt (data nodes reconnect to a restarted one within moments).
const MGMD_SETTLE: Duration = Duration::from_secs(3);

/// How long a read waits for news of the members when none of those it knows answers.
const READ_RETRY_FOR: Duration = Duration::from_secs(2);

/// How long a statement keeps retrying while the members of a node group change.
const WRITE_RETRY_FOR: Duration = Duration::from_secs(10);

impl ApiNode {
    /// Allocates a node id (the given one, or any free API slot) and connects. `program`
    /// names the node to the management server (`get nodeid`'s `name`).
    pub async fn connect(
        cs: &ConnectString,
        node_id: Option<u32>,
        program: &str,
    ) -> Result<ApiNode, ClusterError> {
        let (client, id) = allocate(cs, node_id.or(cs.node_id), program).await?;
        let (tx, rx) = watch::channel(Membership::default());
        let cs = cs.clone();
        let program = program.to_string();
        let task = tokio::spawn(async move {
            let mut client = Some(client);
            let mut reconnect = false;
            loop {
                if let Some(c) = client.take() {
                    follow(c, id, &tx, reconnect).await;
                    reconnect = true;
                }
                // The data nodes keep serving while the management server is away (as
                // RonDB's do): the last membership stays; the data nodes' epochs say
                // whether it is still current.
                // Like the NDB API, reconnect with the same node id when the management
                // server comes back.
                tokio::time::sleep(Duration::from_millis(500)).await;
                if let Ok((c, _)) = allocate(&cs, Some(id), &program).await {
                    client = Some(c);
                }
            }
        });
        Ok(ApiNode {
            node_id: id,
            membership: rx,
            task,
        })
    }

    pub fn node_id(&self) -> u32 {
        self.node_id
    }

    pub fn membership(&self) -> Membership {
        self.membership.borrow().clone()
    }

    /// Every node group has a started data node (what a MySQL server waits for).
    pub fn ready(&self) -> bool {
        let m = self.membership.borrow();
        !m.groups.is_empty() && m.groups.values().all(|g| g.started().next().is_some())
    }

    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), ClusterError> {
        let mut rx = self.membership.clone();
        let ok = tokio::time::timeout(timeout, async {
            loop {
                {
                    let m = rx.borrow_and_update();
                    if !m.groups.is_empty()
                        && m.groups.values().all(|g| g.started().next().is_some())
                    {
                        return;
                    }
                }
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        })
        .await;
        ok.map_err(|_| ClusterError::ClusterFailure)
    }

    pub async fn dictionary(&self) -> Result<Dictionary, ClusterError> {
        self.with_members(|m| async move {
            for g in m.groups.values() {
                for member in g.started() {
                    if let Ok(DataReply::Dictionary(d)) =
                        request(&member.addr, &DataRequest::Dictionary).await
                    {
                        return Some(Ok(d));
                    }
                }
            }
            None
        })
        .await
    }

    /// Runs `f` on the members as this node knows them; when no member answered (a node
    /// failed and the news is on its way, as NDB's API learns of failures moments later) it
    /// waits for the next membership change and tries again, for a short while.
    async fn with_members<T, F, Fut>(&self, f: F) -> Result<T, ClusterError>
    where
        F: Fn(Membership) -> Fut,
        Fut: std::future::Future<Output = Option<Result<T, ClusterError>>>,
    {
        let deadline = tokio::time::Instant::now() + READ_RETRY_FOR;
        let mut rx = self.membership.clone();
        loop {
            let m = rx.borrow_and_update().clone();
            if let Some(r) = f(m).await {
                return r;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(ClusterError::ClusterFailure);
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), rx.changed()).await;
        }
    }

    pub async fn table(&self, db: &str, table: &str) -> Result<TableDef, ClusterError> {
        let d = self.dictionary().await?;
        if !d.databases.contains(db) {
            return Err(ClusterError::NoSuchDatabase(db.into()));
        }
        d.tables
            .get(&format!("{db}.{table}"))
            .cloned()
            .ok_or_else(|| ClusterError::NoSuchTable(format!("{db}.{table}")))
    }

    pub async fn create_database(&self, name: &str) -> Result<(), ClusterError> {
        if self.dictionary().await?.databases.contains(name) {
            return Err(ClusterError::DatabaseExists(name.into()));
        }
        self.to_every_member(|group, epoch| DataRequest::CreateDatabase {
            name: name.into(),
            group,
            epoch,
        })
        .await
    }

    /// Creates `db.name (key BIGINT PRIMARY KEY, value VARCHAR(len))`, partitioned over
    /// every node group of the cluster now.
    pub async fn create_table(
        &self,
        db: &str,
        name: &str,
        key_column: &str,
        value_column: &str,
        value_len: u32,
    ) -> Result<(), ClusterError> {
        let d = self.dictionary().await?;
        if !d.databases.contains(db) {
            return Err(ClusterError::NoSuchDatabase(db.into()));
        }
        let full = format!("{db}.{name}");
        if d.tables.contains_key(&full) {
            return Err(ClusterError::TableExists(name.into()));
        }
        let def = TableDef {
            db: db.into(),
            name: name.into(),
            key_column: key_column.into(),
            value_column: value_column.into(),
            value_len,
            node_groups: self.membership().groups.keys().copied().collect(),
        };
        self.to_every_member(|group, epoch| DataRequest::CreateTable {
            def: def.clone(),
            group,
            epoch,
        })
        .await
    }

    pub async fn tables(&self, db: &str) -> Result<Vec<String>, ClusterError> {
        let d = self.dictionary().await?;
        if !d.databases.contains(db) {
            return Err(ClusterError::NoSuchDatabase(db.into()));
        }
        Ok(d.tables
            .values()
            .filter(|t| t.db == db)
            .map(|t| t.name.clone())
            .collect())
    }

    pub async fn databases(&self) -> Result<Vec<String>, ClusterError> {
        Ok(self.dictionary().await?.databases.into_iter().collect())
    }

    /// Writes (insert or replace) rows; returns how many rows were written.
    pub async fn put(&self, db: &str, table: &str, rows: Vec<Row>) -> Result<u64, ClusterError> {
        let def = self.table(db, table).await?;
        let ops = rows.into_iter().map(|(k, v)| RowOp::Put(k, v)).collect();
        self.write(&def, ops).await
    }

    /// Deletes a row; returns whether it existed.
    pub async fn delete(&self, db: &str, table: &str, key: i64) -> Result<bool, ClusterError> {
        let def = self.table(db, table).await?;
        Ok(self.write(&def, vec![RowOp::Delete(key)]).await? > 0)
    }

    /// `Some(value)` when the row exists (its value may be NULL).
    pub async fn get(
        &self,
        db: &str,
        table: &str,
        key: i64,
    ) -> Result<Option<Option<String>>, ClusterError> {
        let def = self.table(db, table).await?;
        let group = def.group_of(key);
        let req = DataRequest::Read {
            table: def.full_name(),
            key,
        };
        match self.read_from(group, &req).await? {
            DataReply::Row(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    pub async fn count(&self, db: &str, table: &str) -> Result<u64, ClusterError> {
        let def = self.table(db, table).await?;
        let mut total = 0;
        for g in &def.node_groups {
            match self
                .read_from(
                    *g,
                    &DataRequest::Count {
                        table: def.full_name(),
                    },
                )
                .await?
            {
                DataReply::Count(n) => total += n,
                other => return Err(unexpected(other)),
            }
        }
        Ok(total)
    }

    /// Every row, ordered by key.
    pub async fn scan(&self, db: &str, table: &str) -> Result<Vec<Row>, ClusterError> {
        let def = self.table(db, table).await?;
        let mut all = Vec::new();
        for g in &def.node_groups {
            match self
                .read_from(
                    *g,
                    &DataRequest::Scan {
                        table: def.full_name(),
                    },
                )
                .await?
            {
                DataReply::Rows(rows) => all.extend(rows),
                other => return Err(unexpected(other)),
            }
        }
        all.sort_by_key(|r| r.0);
        Ok(all)
    }

    /// A read goes to one started member of the group (the lowest node id first).
    async fn read_from(&self, group: u32, req: &DataRequest) -> Result<DataReply, ClusterError> {
        self.with_members(|m| async move {
            let view = m.groups.get(&group).cloned().unwrap_or_default();
            for member in view.started() {
                match request(&member.addr, req).await {
                    Ok(DataReply::NotStarted) | Err(_) => continue,
                    Ok(DataReply::Error { code, text }) => {
                        return Some(Err(data_error(code, text)))
                    }
                    Ok(r) => return Some(Ok(r)),
                }
            }
            None
        })
        .await
    }

    async fn write(&self, def: &TableDef, ops: Vec<RowOp>) -> Result<u64, ClusterError> {
        let mut by_group: std::collections::BTreeMap<u32, Vec<RowOp>> = Default::default();
        for op in ops {
            let key = match &op {
                RowOp::Put(k, _) | RowOp::Delete(k) => *k,
            };
            by_group.entry(def.group_of(key)).or_default().push(op);
        }
        let mut written = 0;
        for (group, ops) in by_group {
            let table = def.full_name();
            written += self
                .to_group(group, |epoch| DataRequest::Write {
                    table: table.clone(),
                    group,
                    epoch,
                    ops: ops.clone(),
                })
                .await?;
        }
        Ok(written)
    }

    async fn to_every_member(
        &self,
        make: impl Fn(u32, u64) -> DataRequest,
    ) -> Result<(), ClusterError> {
        let groups: Vec<u32> = self.membership().groups.keys().copied().collect();
        if groups.is_empty() {
            return Err(ClusterError::ClusterFailure);
        }
        for g in groups {
            self.to_group(g, |epoch| make(g, epoch)).await?;
        }
        Ok(())
    }

    /// Sends a write to every member of `group` with the group's epoch; retries with the new
    /// epoch while members change. Returns the count the first member reported.
    async fn to_group(
        &self,
        group: u32,
        make: impl Fn(u64) -> DataRequest,
    ) -> Result<u64, ClusterError> {
        let deadline = tokio::time::Instant::now() + WRITE_RETRY_FOR;
        let mut rx = self.membership.clone();
        loop {
            let view = rx
                .borrow_and_update()
                .groups
                .get(&group)
                .cloned()
                .unwrap_or_default();
            if view.started().next().is_none() {
                return Err(ClusterError::ClusterFailure);
            }
            let req = make(view.epoch);
            let replies = join_all(view.members.iter().map(|m| request(&m.addr, &req))).await;
            let mut count = None;
            let mut retry = false;
            for r in replies {
                match r {
                    Ok(DataReply::Written(n)) => {
                        count.get_or_insert(n);
                    }
                    Ok(DataReply::Ok) => {
                        count.get_or_insert(0);
                    }
                    Ok(DataReply::Error { code, text }) => return Err(data_error(code, text)),
                    // A member that changed epoch, stopped or died: the management server
                    // publishes the new members; write again to them.
                    _ => retry = true,
                }
            }
            if !retry {
                return Ok(count.unwrap_or(0));
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(ClusterError::ClusterFailure);
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), rx.changed()).await;
        }
    }
}

fn unexpected(r: DataReply) -> ClusterError {
    ClusterError::DataNode {
        code: 4000,
        text: format!("unexpected reply {r:?}"),
    }
}

fn data_error(code: u32, text: String) -> ClusterError {
    match code {
        CLUSTER_FAILURE => ClusterError::ClusterFailure,
        _ => ClusterError::DataNode { code, text },
    }
}

/// One request on a fresh connection to a data node's `ServerPort`.
pub async fn request(addr: &str, req: &DataRequest) -> std::io::Result<DataReply> {
    let fut = async {
        let s = TcpStream::connect(addr).await?;
        let _ = s.set_nodelay(true);
        let (r, mut w) = s.into_split();
        transporter::write_line(&mut w, req).await?;
        let mut r = BufReader::new(r);
        transporter::read_line::<_, DataReply>(&mut r)
            .await?
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "data node closed the connection",
                )
            })
    };
    tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("data node {addr} did not answer"),
            )
        })?
}

/// `get nodeid` for an API node, then `transporter connect` on the same session.
async fn allocate(
    cs: &ConnectString,
    node_id: Option<u32>,
    program: &str,
) -> Result<(MgmClient, u32), ClusterError> {
    let mut c = MgmClient::connect(cs, 0, Duration::from_secs(1)).await?;
    let version = Version::current();
    let req = Message::new("get nodeid")
        .arg("version", version.packed())
        .arg("nodetype", NodeType::Api.wire())
        .arg("nodeid", node_id.unwrap_or(0))
        .arg("user", "mysqld")
        .arg("password", "mysqld")
        .arg("public key", "a public key")
        .arg("endian", "little")
        .arg("name", program)
        .arg("timeout", 20)
        .arg("log_event", 1);
    let reply = c.call(&req, Duration::from_secs(30)).await?;
    reply.result().map_err(ClusterError::NodeId)?;
    let id = reply
        .get_u32("nodeid")
        .ok_or_else(|| ClusterError::NodeId("no nodeid in reply".into()))?;
    let reply = c
        .call(
            &Message::new("transporter connect").arg("node", id),
            Duration::from_secs(10),
        )
        .await?;
    reply.result().map_err(ClusterError::NodeId)?;
    Ok((c, id))
}

/// Reads membership pushes until the management server goes away.
async fn follow(c: MgmClient, id: u32, tx: &watch::Sender<Membership>, reconnect: bool) {
    let (mut r, mut w) = c.into_parts();
    let hello = ToMgmd::ApiHello {
        node: id,
        version: Version::current().packed(),
    };
    if transporter::write_line(&mut w, &hello).await.is_err() {
        return;
    }
    // A management server that has just started does not know the started data nodes yet
    // (they reconnect within moments): for a short while a group it reports without a
    // started node keeps the members last seen started. After that its word holds.
    let connected = tokio::time::Instant::now();
    let latest: std::sync::Arc<std::sync::Mutex<Option<Membership>>> = Default::default();
    let settle = {
        let latest = latest.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            if !reconnect {
                return;
            }
            tokio::time::sleep_until(connected + MGMD_SETTLE).await;
            let raw = latest.lock().ok().and_then(|l| l.clone());
            if let Some(m) = raw {
                tx.send_replace(m);
            }
        })
    };
    while let Ok(Some(msg)) = transporter::read_line::<_, FromMgmd>(&mut r).await {
        if let FromMgmd::Membership(m) = msg {
            if let Ok(mut l) = latest.lock() {
                *l = Some(m.clone());
            }
            let mut shown = m;
            if reconnect && connected.elapsed() < MGMD_SETTLE {
                let last = tx.borrow().clone();
                for (g, view) in shown.groups.iter_mut() {
                    if view.started().next().is_none() {
                        if let Some(old) =
                            last.groups.get(g).filter(|o| o.started().next().is_some())
                        {
                            *view = old.clone();
                        }
                    }
                }
            }
            tx.send_replace(shown);
        }
    }
    settle.abort();
}

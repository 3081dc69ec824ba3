//! A client of RonDB's management protocol (the mgm text protocol on `PortNumber`, 1186 by
//! default): what the real runtimes ask RonDB itself — is this data node STARTED, is this
//! management server up — and how they stop a data node so that RonDB can refuse to stop the
//! last node of a node group. Requests are a command line, `key: value` lines and an empty
//! line; replies the same.

use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum MgmError {
    #[error("cannot reach the management server at {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("the management server at {addr} did not answer '{command}' within {secs} s")]
    Timeout {
        addr: String,
        command: String,
        secs: u64,
    },
    #[error("the management server at {addr} closed the connection during '{command}'")]
    Closed { addr: String, command: String },
}

/// One node's line of `get status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    pub id: u32,
    /// `NDB`, `MGM` or `API`.
    pub kind: String,
    /// RonDB's status word: `STARTED`, `STARTING`, `NO_CONTACT`, `CONNECTED`, ...
    pub status: String,
    pub startphase: u32,
    pub version: u32,
}

/// A reply: its header line and `key: value` lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reply {
    pub head: String,
    pub args: Vec<(String, String)>,
}

impl Reply {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

pub struct MgmSession {
    addr: String,
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
}

impl MgmSession {
    pub async fn connect(addr: &str, timeout: Duration) -> Result<MgmSession, MgmError> {
        let unreachable = |reason: String| MgmError::Unreachable {
            addr: addr.to_string(),
            reason,
        };
        let s = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| unreachable("timed out".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        let _ = s.set_nodelay(true);
        let (r, w) = s.into_split();
        Ok(MgmSession {
            addr: addr.to_string(),
            r: BufReader::new(r),
            w,
        })
    }

    pub async fn call(
        &mut self,
        command: &str,
        args: &[(&str, String)],
        timeout: Duration,
    ) -> Result<Reply, MgmError> {
        let mut req = format!("{command}\n");
        for (k, v) in args {
            req.push_str(&format!("{k}: {v}\n"));
        }
        req.push('\n');
        let closed = || MgmError::Closed {
            addr: self.addr.clone(),
            command: command.to_string(),
        };
        let fut = async {
            self.w.write_all(req.as_bytes()).await.map_err(|_| closed())?;
            let mut reply = Reply::default();
            let mut first = true;
            loop {
                let mut line = String::new();
                if self.r.read_line(&mut line).await.map_err(|_| closed())? == 0 {
                    return Err(closed());
                }
                let l = line.trim_end_matches(['\n', '\r']);
                if l.is_empty() {
                    if first {
                        continue;
                    }
                    return Ok(reply);
                }
                // Replies without a header (`result: Unknown command, ...`) start with a
                // `key: value` line.
                match (first, l.split_once(':')) {
                    (true, Some((k, v))) if k == "result" => {
                        reply.args.push((k.to_string(), v.trim().to_string()))
                    }
                    (true, _) => reply.head = l.to_string(),
                    (false, Some((k, v))) => {
                        reply.args.push((k.trim().to_string(), v.trim().to_string()))
                    }
                    (false, None) => reply.args.push((l.to_string(), String::new())),
                }
                first = false;
            }
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| MgmError::Timeout {
                addr: self.addr.clone(),
                command: command.to_string(),
                secs: timeout.as_secs(),
            })?
    }

    /// `get status`: every configured node.
    pub async fn status(&mut self) -> Result<Vec<NodeState>, MgmError> {
        let reply = self
            .call("get status", &[], Duration::from_secs(10))
            .await?;
        let mut nodes: Vec<NodeState> = Vec::new();
        for (k, v) in &reply.args {
            let Some((id, field)) = k
                .strip_prefix("node.")
                .and_then(|r| r.split_once('.'))
            else {
                continue;
            };
            let Ok(id) = id.parse::<u32>() else { continue };
            if nodes.last().map(|n| n.id) != Some(id) {
                nodes.push(NodeState {
                    id,
                    kind: String::new(),
                    status: String::new(),
                    startphase: 0,
                    version: 0,
                });
            }
            if let Some(n) = nodes.last_mut() {
                match field {
                    "type" => n.kind = v.clone(),
                    "status" => n.status = v.clone(),
                    "startphase" => n.startphase = v.parse().unwrap_or(0),
                    "version" => n.version = v.parse().unwrap_or(0),
                    _ => {}
                }
            }
        }
        Ok(nodes)
    }
}

/// `get status` on a fresh session.
pub async fn status(addr: &str) -> Result<Vec<NodeState>, MgmError> {
    MgmSession::connect(addr, Duration::from_secs(5))
        .await?
        .status()
        .await
}

//! The mgm text protocol: a request is a command line, `key: value` lines and an empty line;
//! a reply is a header line, `key: value` lines and an empty line (`get config` adds a
//! base64 body). Sessions are long-lived. Shared by `ndb_mgmd` (server side) and every
//! program that talks to it (`ndb_mgm`, `ndb_waiter`, the data node's angel, API nodes).

use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// RonDB's per-read socket timeout on a session (`SOCKET_TIMEOUT`).
pub const SOCKET_TIMEOUT: Duration = Duration::from_millis(30_000);

#[derive(Debug, thiserror::Error)]
pub enum MgmError {
    #[error("Unable to connect with connect string: {connectstring}: {reason}")]
    Connect {
        connectstring: String,
        reason: String,
    },
    #[error("malformed connect string '{0}'")]
    ConnectString(String),
    #[error("management server closed the connection")]
    Closed,
    #[error("management server did not answer '{command}' within {secs} s")]
    Timeout { command: String, secs: u64 },
    #[error("unexpected reply to '{command}': {reply}")]
    Protocol { command: String, reply: String },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// One request or reply: the first line and its `key: value` lines in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    pub head: String,
    pub args: Vec<(String, String)>,
    /// `get config` / `set config_v2` carry a base64 body after the blank line.
    pub body: Option<String>,
}

impl Message {
    pub fn new(head: impl Into<String>) -> Message {
        Message {
            head: head.into(),
            args: Vec::new(),
            body: None,
        }
    }

    pub fn arg(mut self, key: &str, value: impl ToString) -> Message {
        self.args.push((key.to_string(), value.to_string()));
        self
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn get_u32(&self, key: &str) -> Option<u32> {
        self.get(key)?.trim().parse().ok()
    }

    /// `result: Ok` — anything else is the error text RonDB sent.
    pub fn result(&self) -> Result<(), String> {
        match self.get("result") {
            Some("Ok") | Some("0") => Ok(()),
            Some(other) => Err(other.to_string()),
            None => Err(format!("no result in reply '{}'", self.head)),
        }
    }

    /// Wire form. A value may be empty (`user: `), as the operator's client sends it.
    pub fn encode(&self) -> String {
        let mut s = String::with_capacity(64 + 24 * self.args.len());
        if !self.head.is_empty() {
            s.push_str(&self.head);
            s.push('\n');
        }
        for (k, v) in &self.args {
            s.push_str(k);
            s.push_str(": ");
            s.push_str(v);
            s.push('\n');
        }
        s.push('\n');
        if let Some(b) = &self.body {
            s.push_str(b);
            s.push('\n');
        }
        s
    }
}

/// Reads one message: lines up to an empty line. A leading empty line is skipped (RonDB
/// ignores an empty line alone). `None` at end of stream.
pub async fn read_message<R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
    header_is_key_value: bool,
) -> std::io::Result<Option<Message>> {
    let mut msg = Message::default();
    let mut line = String::new();
    let mut first = true;
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        let l = line.trim_end_matches(['\n', '\r']);
        if l.is_empty() {
            if first {
                continue;
            }
            break;
        }
        if first && !header_is_key_value {
            msg.head = l.to_string();
        } else if let Some((k, v)) = l.split_once(':') {
            msg.args.push((k.trim().to_string(), v.trim().to_string()));
        } else {
            msg.args.push((l.to_string(), String::new()));
        }
        first = false;
    }
    if let Some(len) = msg
        .get("Content-Length")
        .and_then(|n| n.parse::<usize>().ok())
    {
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).await?;
        let mut nl = String::new();
        r.read_line(&mut nl).await?;
        msg.body = Some(String::from_utf8_lossy(&body).into_owned());
    }
    Ok(Some(msg))
}

/// A connect string: `[nodeid=N,]host[:port][,host[:port]...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectString {
    pub node_id: Option<u32>,
    pub hosts: Vec<(String, u16)>,
}

impl ConnectString {
    pub fn parse(s: &str) -> Result<ConnectString, MgmError> {
        let mut cs = ConnectString {
            node_id: None,
            hosts: Vec::new(),
        };
        for part in s.split([',', ';']).map(str::trim).filter(|p| !p.is_empty()) {
            if let Some(id) = part.strip_prefix("nodeid=") {
                cs.node_id = Some(id.parse().map_err(|_| MgmError::ConnectString(s.into()))?);
                continue;
            }
            let (host, port) = match part.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    p.parse().map_err(|_| MgmError::ConnectString(s.into()))?,
                ),
                None => (part.to_string(), crate::config::DEFAULT_MGMD_PORT),
            };
            cs.hosts.push((host, port));
        }
        if cs.hosts.is_empty() {
            cs.hosts
                .push(("localhost".into(), crate::config::DEFAULT_MGMD_PORT));
        }
        Ok(cs)
    }

    pub fn to_string_plain(&self) -> String {
        self.hosts
            .iter()
            .map(|(h, p)| format!("{h}:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A client session with one management server.
pub struct MgmClient {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    /// `host:port` of the management server this session reached.
    pub connected_to: String,
}

impl MgmClient {
    /// Tries every management server of the connect string, `retries` rounds `delay` apart.
    pub async fn connect(
        cs: &ConnectString,
        retries: u32,
        delay: Duration,
    ) -> Result<MgmClient, MgmError> {
        let mut last = String::from("no management server given");
        for attempt in 0..=retries {
            if attempt > 0 {
                tokio::time::sleep(delay).await;
            }
            for (host, port) in &cs.hosts {
                let addr = format!("{host}:{port}");
                match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(&addr)).await
                {
                    Ok(Ok(s)) => {
                        let _ = s.set_nodelay(true);
                        let (r, w) = s.into_split();
                        return Ok(MgmClient {
                            reader: BufReader::new(r),
                            writer: w,
                            connected_to: addr,
                        });
                    }
                    Ok(Err(e)) => last = format!("{addr}: {e}"),
                    Err(_) => last = format!("{addr}: timed out"),
                }
            }
        }
        Err(MgmError::Connect {
            connectstring: cs.to_string_plain(),
            reason: last,
        })
    }

    /// Sends a request and reads its reply, within `timeout`.
    pub async fn call(&mut self, req: &Message, timeout: Duration) -> Result<Message, MgmError> {
        self.writer.write_all(req.encode().as_bytes()).await?;
        let reply = tokio::time::timeout(timeout, read_message(&mut self.reader, false))
            .await
            .map_err(|_| MgmError::Timeout {
                command: req.head.clone(),
                secs: timeout.as_secs(),
            })??;
        reply.ok_or(MgmError::Closed)
    }

    /// `get status` as the client library parses it.
    pub async fn status(&mut self) -> Result<Vec<NodeStatus>, MgmError> {
        let reply = self
            .call(&Message::new("get status"), SOCKET_TIMEOUT)
            .await?;
        if reply.head != "node status" {
            return Err(MgmError::Protocol {
                command: "get status".into(),
                reply: reply.encode(),
            });
        }
        Ok(NodeStatus::parse_all(&reply))
    }

    /// Turns the session into a byte stream (transporters and `listen event`).
    pub fn into_parts(self) -> (BufReader<OwnedReadHalf>, OwnedWriteHalf) {
        (self.reader, self.writer)
    }
}

/// Writes raw bytes on a session's write half.
pub async fn send<W: AsyncWrite + Unpin>(w: &mut W, m: &Message) -> std::io::Result<()> {
    w.write_all(m.encode().as_bytes()).await
}

/// One node's block of a `get status` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    pub id: u32,
    pub kind: String,
    pub status: String,
    pub version: u32,
    pub mysql_version: u32,
    pub startphase: u32,
    pub dynamic_id: u32,
    pub node_group: i64,
    pub connect_count: u32,
    pub address: String,
}

impl NodeStatus {
    pub fn parse_all(reply: &Message) -> Vec<NodeStatus> {
        let mut out: Vec<NodeStatus> = Vec::new();
        for (k, v) in &reply.args {
            let Some(rest) = k.strip_prefix("node.") else {
                continue;
            };
            let Some((id, field)) = rest.split_once('.') else {
                continue;
            };
            let Ok(id) = id.parse::<u32>() else { continue };
            if out.last().map(|n| n.id) != Some(id) {
                out.push(NodeStatus {
                    id,
                    kind: String::new(),
                    status: String::new(),
                    version: 0,
                    mysql_version: 0,
                    startphase: 0,
                    dynamic_id: 0,
                    node_group: 0,
                    connect_count: 0,
                    address: String::new(),
                });
            }
            let Some(n) = out.last_mut() else { continue };
            let num = || v.parse::<u32>().unwrap_or(0);
            match field {
                "type" => n.kind = v.clone(),
                "status" => n.status = v.clone(),
                "version" => n.version = num(),
                "mysql_version" => n.mysql_version = num(),
                "startphase" => n.startphase = num(),
                "dynamic_id" => n.dynamic_id = num(),
                "node_group" => n.node_group = v.parse().unwrap_or(0),
                "connect_count" => n.connect_count = num(),
                "address" => n.address = v.clone(),
                _ => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_requests_and_bodies() {
        let m = Message::new("stop v2").arg("node", 2).arg("abort", 0);
        assert_eq!(m.encode(), "stop v2\nnode: 2\nabort: 0\n\n");
        let wire = b"\nget config reply\nresult: Ok\nContent-Length: 4\n\nQUJD\n" as &[u8];
        let mut r = BufReader::new(wire);
        let got = read_message(&mut r, false).await.unwrap().unwrap();
        assert_eq!(got.head, "get config reply");
        assert_eq!(got.body.as_deref(), Some("QUJD"));
        assert_eq!(got.result(), Ok(()));
    }

    #[test]
    fn parses_connect_strings() {
        let cs = ConnectString::parse("nodeid=3,10.0.0.5:1186,10.0.0.6").unwrap();
        assert_eq!(cs.node_id, Some(3));
        assert_eq!(
            cs.hosts,
            vec![("10.0.0.5".into(), 1186), ("10.0.0.6".into(), 1186)]
        );
    }
}

//! Raft (openraft 0.9, storage v2): what the agents replicate, how it is stored, and how
//! Raft messages travel between agents.
//!
//! The state machine is the cluster model itself: every reconcile event is a Raft entry, so
//! a new leader starts from exactly what the old one had committed.

pub mod network;
pub mod store;

use crate::model::{ClusterState, Event};
use crate::reconcile::{Journal, JournalError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::io::Cursor;

/// Raft node ids: assigned by the leader from a counter in the state machine, never reused.
pub type NodeId = u64;

/// What the cluster knows about an agent; carried in the Raft membership so every agent can
/// reach every other one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentNode {
    pub vm: String,
    pub role: String,
    pub zone: String,
    pub grpc_addr: String,
    pub http_addr: String,
}

impl fmt::Display for AgentNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.vm, self.grpc_addr)
    }
}

/// A replicated command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Reconcile events, applied in order to the cluster state.
    Events(Vec<Event>),
    /// Reserve the next Raft id for the agent of `vm`.
    AllocateRaftId { vm: String },
    /// These ids left the group for good: an agent holding one must start over.
    RetireRaftIds(std::collections::BTreeSet<NodeId>),
    /// From now on the HTTP API accepts the token with this SHA-256 (lowercase hex) only.
    SetApiToken { sha256: String },
    /// A join ticket for the VM `vm` the leader is about to create (its SHA-256, lowercase
    /// hex). Tickets that expired by `issued_unix_ms` are dropped with it.
    IssueJoinTicket {
        vm: String,
        sha256: String,
        issued_unix_ms: u64,
        expires_unix_ms: u64,
    },
    /// The agent of `vm` shows a ticket: if it is one of `vm`'s and has not expired at
    /// `now_unix_ms`, every ticket of `vm` is used up and the answer is
    /// [`Response::TicketTaken`]; otherwise [`Response::TicketRefused`].
    UseJoinTicket {
        vm: String,
        sha256: String,
        now_unix_ms: u64,
    },
}

/// The state machine's answer to a command.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    #[default]
    Done,
    RaftId(NodeId),
    TicketTaken,
    TicketRefused,
}

/// A join ticket on record: only its hash, so the log opens nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketRecord {
    pub sha256: String,
    pub expires_unix_ms: u64,
}

openraft::declare_raft_types!(
    /// The Raft types of managed RonDB.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = AgentNode,
);

/// The openraft handle of an agent.
pub type Raft = openraft::Raft<TypeConfig>;

/// Records reconcile events as Raft entries: the reconciler's [`Journal`] on a real cluster.
/// A write returns once a majority has it on disk; any refusal stops the reconciler.
pub struct RaftJournal {
    raft: Raft,
}

impl RaftJournal {
    pub fn new(raft: Raft) -> Self {
        RaftJournal { raft }
    }
}

#[async_trait::async_trait]
impl Journal for RaftJournal {
    async fn append(&self, events: Vec<Event>) -> Result<(), JournalError> {
        use openraft::error::{ClientWriteError, RaftError};
        match self.raft.client_write(Request::Events(events)).await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(JournalError::NotLeader {
                    leader: f.leader_node.map(|n| n.vm),
                })
            }
            Err(e) => Err(JournalError::Refused(e.to_string())),
        }
    }
}

/// Everything the state machine holds; also the snapshot's content.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Replicated {
    pub last_applied: Option<openraft::LogId<NodeId>>,
    pub membership: openraft::StoredMembership<NodeId, AgentNode>,
    pub cluster: ClusterState,
    /// The next Raft id to hand out (ids start at 2; 1 is the bootstrap agent).
    pub next_raft_id: NodeId,
    /// The Raft ids handed out per VM, latest last (a VM re-created gets a new id).
    pub raft_ids: BTreeMap<String, Vec<NodeId>>,
    /// Ids removed from the group; never admitted again.
    #[serde(default)]
    pub retired: std::collections::BTreeSet<NodeId>,
    /// The Raft term whose leader last looked at the world (recorded an observation). A
    /// replica in a later term knows a new leader has not looked yet, even before that
    /// leader's first entries reach it: the state on record is not vouched for.
    #[serde(default)]
    pub looked_in_term: u64,
    /// SHA-256 (lowercase hex) of the HTTP API's bearer token, recorded by the bootstrap
    /// agent: every agent checks callers against it, none holds the token itself.
    #[serde(default)]
    pub api_token_sha256: Option<String>,
    /// Join tickets not used yet, per VM (a VM created again by a new leader may hold an
    /// older one).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub join_tickets: BTreeMap<String, Vec<TicketRecord>>,
}

impl Replicated {
    /// `vm` had agents in the group and has none any more: every Raft id it held is retired
    /// and no member runs on it (a deleted VM, or a wiped one not admitted again yet).
    pub fn left_the_cluster(&self, vm: &str) -> bool {
        let member = self
            .membership
            .membership()
            .nodes()
            .any(|(_, n)| n.vm == vm);
        let retired = self
            .raft_ids
            .get(vm)
            .is_some_and(|ids| !ids.is_empty() && ids.iter().all(|id| self.retired.contains(id)));
        retired && !member
    }

    /// `sha256` is the hash of a ticket of `vm` that has not expired at `now_unix_ms`.
    pub fn ticket_valid(&self, vm: &str, sha256: &str, now_unix_ms: u64) -> bool {
        self.join_tickets.get(vm).is_some_and(|tickets| {
            tickets
                .iter()
                .any(|t| t.sha256 == sha256 && t.expires_unix_ms > now_unix_ms)
        })
    }

    /// Applies one command; deterministic, so every agent computes the same state.
    pub fn apply_request(&mut self, req: &Request) -> Response {
        match req {
            Request::Events(events) => {
                for ev in events {
                    self.cluster.apply(ev);
                }
                Response::Done
            }
            Request::AllocateRaftId { vm } => {
                let id = self.next_raft_id.max(FIRST_ALLOCATED_ID);
                self.next_raft_id = id + 1;
                self.raft_ids.entry(vm.clone()).or_default().push(id);
                Response::RaftId(id)
            }
            Request::RetireRaftIds(ids) => {
                self.retired.extend(ids.iter().copied());
                Response::Done
            }
            Request::SetApiToken { sha256 } => {
                self.api_token_sha256 = Some(sha256.clone());
                Response::Done
            }
            Request::IssueJoinTicket {
                vm,
                sha256,
                issued_unix_ms,
                expires_unix_ms,
            } => {
                for tickets in self.join_tickets.values_mut() {
                    tickets.retain(|t| t.expires_unix_ms > *issued_unix_ms);
                }
                self.join_tickets.retain(|_, t| !t.is_empty());
                self.join_tickets
                    .entry(vm.clone())
                    .or_default()
                    .push(TicketRecord {
                        sha256: sha256.clone(),
                        expires_unix_ms: *expires_unix_ms,
                    });
                Response::Done
            }
            Request::UseJoinTicket {
                vm,
                sha256,
                now_unix_ms,
            } => {
                if self.ticket_valid(vm, sha256, *now_unix_ms) {
                    self.join_tickets.remove(vm);
                    Response::TicketTaken
                } else {
                    Response::TicketRefused
                }
            }
        }
    }
}

/// The bootstrap agent's Raft id.
pub const BOOTSTRAP_ID: NodeId = 1;
const FIRST_ALLOCATED_ID: NodeId = 2;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vm_has_left_once_every_raft_id_it_held_is_retired_and_it_is_no_member() {
        let mut r = Replicated::default();
        assert!(
            !r.left_the_cluster("ndbd-0-1"),
            "a VM never seen has not left"
        );
        let Response::RaftId(first) = r.apply_request(&Request::AllocateRaftId {
            vm: "ndbd-0-1".into(),
        }) else {
            panic!("no id")
        };
        assert!(!r.left_the_cluster("ndbd-0-1"));
        r.apply_request(&Request::RetireRaftIds([first].into()));
        assert!(
            r.left_the_cluster("ndbd-0-1"),
            "deleted: its certificate is refused"
        );
        // Created again under the same name: a new id, the VM is back.
        r.apply_request(&Request::AllocateRaftId {
            vm: "ndbd-0-1".into(),
        });
        assert!(!r.left_the_cluster("ndbd-0-1"));
    }

    fn issue(r: &mut Replicated, vm: &str, sha: &str, at: u64) {
        r.apply_request(&Request::IssueJoinTicket {
            vm: vm.into(),
            sha256: sha.into(),
            issued_unix_ms: at,
            expires_unix_ms: at + 1000,
        });
    }

    fn take(r: &mut Replicated, vm: &str, sha: &str, now: u64) -> Response {
        r.apply_request(&Request::UseJoinTicket {
            vm: vm.into(),
            sha256: sha.into(),
            now_unix_ms: now,
        })
    }

    #[test]
    fn a_join_ticket_is_taken_once_by_its_own_vm_before_it_expires() {
        let mut r = Replicated::default();
        issue(&mut r, "ndbd-0-1", "aa", 100);
        assert_eq!(
            take(&mut r, "ndbd-0-2", "aa", 200),
            Response::TicketRefused,
            "another VM's ticket"
        );
        assert_eq!(
            take(&mut r, "ndbd-0-1", "bb", 200),
            Response::TicketRefused,
            "a wrong secret"
        );
        assert_eq!(
            take(&mut r, "ndbd-0-1", "aa", 1100),
            Response::TicketRefused,
            "expired"
        );
        assert_eq!(take(&mut r, "ndbd-0-1", "aa", 200), Response::TicketTaken);
        assert_eq!(
            take(&mut r, "ndbd-0-1", "aa", 300),
            Response::TicketRefused,
            "used"
        );
        assert!(r.join_tickets.is_empty());
    }

    #[test]
    fn a_vm_created_again_takes_either_ticket_and_expired_ones_are_dropped() {
        let mut r = Replicated::default();
        issue(&mut r, "mysqld-1", "old", 100);
        issue(&mut r, "api-1", "gone", 150);
        // A new leader creates mysqld-1 again: its agent may still hold the first ticket.
        issue(&mut r, "mysqld-1", "new", 900);
        assert_eq!(r.join_tickets["mysqld-1"].len(), 2);
        assert_eq!(take(&mut r, "mysqld-1", "old", 1000), Response::TicketTaken);
        assert_eq!(
            take(&mut r, "mysqld-1", "new", 1000),
            Response::TicketRefused,
            "every ticket of the VM is used up by its first enrolment"
        );
        // Issuing after api-1's ticket expired drops it from the state.
        issue(&mut r, "ndbd-0-1", "x", 2000);
        assert!(
            !r.join_tickets.contains_key("api-1"),
            "{:?}",
            r.join_tickets
        );
        assert_eq!(r.join_tickets.len(), 1);
    }
}

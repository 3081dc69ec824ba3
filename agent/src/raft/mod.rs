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
    /// The agent of `vm` shows a ticket for the key with SHA-256 `key_sha256`: if it is one
    /// of `vm`'s, has not expired at `now_unix_ms` and `vm` used none yet (or used this one
    /// for this key: the agent asks again because the answer was lost), it is used for that
    /// key, every other ticket of `vm` is used up and the answer is
    /// [`Response::TicketTaken`]; otherwise [`Response::TicketRefused`]. Without a key (an
    /// entry written by an older version) a ticket works once.
    UseJoinTicket {
        vm: String,
        sha256: String,
        now_unix_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key_sha256: Option<String>,
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
    /// Used (until it expires) by the agent whose key has this SHA-256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_by_key: Option<String>,
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
    /// Join tickets per VM until they expire: not used yet (a VM created again by a new
    /// leader may hold an older one), or used, by the key they were used for.
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

    /// `sha256` is the hash of a ticket of `vm` that has not expired at `now_unix_ms` and
    /// lets in the key with SHA-256 `key_sha256`: `vm` used no ticket yet, or used this one
    /// for that key.
    pub fn ticket_valid(
        &self,
        vm: &str,
        sha256: &str,
        now_unix_ms: u64,
        key_sha256: Option<&str>,
    ) -> bool {
        let Some(tickets) = self.join_tickets.get(vm) else {
            return false;
        };
        let Some(t) = tickets
            .iter()
            .find(|t| t.sha256 == sha256 && t.expires_unix_ms > now_unix_ms)
        else {
            return false;
        };
        match &t.used_by_key {
            Some(used) => key_sha256 == Some(used.as_str()),
            None => tickets.iter().all(|t| t.used_by_key.is_none()),
        }
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
                // A VM made again under its name is a new machine: what the last one used
                // its ticket for no longer counts.
                if let Some(tickets) = self.join_tickets.get_mut(vm) {
                    tickets.retain(|t| t.used_by_key.is_none());
                }
                self.join_tickets.retain(|_, t| !t.is_empty());
                self.join_tickets
                    .entry(vm.clone())
                    .or_default()
                    .push(TicketRecord {
                        sha256: sha256.clone(),
                        expires_unix_ms: *expires_unix_ms,
                        used_by_key: None,
                    });
                Response::Done
            }
            Request::UseJoinTicket {
                vm,
                sha256,
                now_unix_ms,
                key_sha256,
            } => {
                if !self.ticket_valid(vm, sha256, *now_unix_ms, key_sha256.as_deref()) {
                    return Response::TicketRefused;
                }
                match key_sha256 {
                    Some(key) => {
                        if let Some(tickets) = self.join_tickets.get_mut(vm) {
                            tickets.retain(|t| t.sha256 == *sha256);
                            for t in tickets {
                                t.used_by_key = Some(key.clone());
                            }
                        }
                    }
                    None => {
                        self.join_tickets.remove(vm);
                    }
                }
                Response::TicketTaken
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
        take_for(r, vm, sha, now, "key-1")
    }

    fn take_for(r: &mut Replicated, vm: &str, sha: &str, now: u64, key: &str) -> Response {
        r.apply_request(&Request::UseJoinTicket {
            vm: vm.into(),
            sha256: sha.into(),
            now_unix_ms: now,
            key_sha256: Some(key.into()),
        })
    }

    #[test]
    fn a_join_ticket_lets_in_one_key_of_its_own_vm_until_it_expires() {
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
            take_for(&mut r, "ndbd-0-1", "aa", 300, "key-2"),
            Response::TicketRefused,
            "used, by another key"
        );
        // The agent that used it asks again (the answer was lost): let in, until it expires.
        assert_eq!(take(&mut r, "ndbd-0-1", "aa", 300), Response::TicketTaken);
        assert_eq!(
            take(&mut r, "ndbd-0-1", "aa", 1100),
            Response::TicketRefused,
            "expired"
        );
        // Expired records leave with the next ticket issued.
        issue(&mut r, "mysqld-1", "cc", 1200);
        assert!(!r.join_tickets.contains_key("ndbd-0-1"));
    }

    /// Entries written before tickets remembered their key: a ticket works once.
    #[test]
    fn a_ticket_used_without_a_key_works_once() {
        let mut r = Replicated::default();
        issue(&mut r, "ndbd-0-1", "aa", 100);
        let old = serde_json::json!({"UseJoinTicket": {"vm": "ndbd-0-1", "sha256": "aa", "now_unix_ms": 200}});
        let req: Request = serde_json::from_value(old).unwrap();
        assert_eq!(r.apply_request(&req), Response::TicketTaken);
        assert_eq!(r.apply_request(&req), Response::TicketRefused);
        assert_eq!(take(&mut r, "ndbd-0-1", "aa", 300), Response::TicketRefused);
    }

    #[test]
    fn a_vm_made_again_under_its_name_enrols_with_its_new_ticket() {
        let mut r = Replicated::default();
        issue(&mut r, "ndbd-0-1", "first", 100);
        assert_eq!(
            take(&mut r, "ndbd-0-1", "first", 200),
            Response::TicketTaken
        );
        issue(&mut r, "ndbd-0-1", "second", 300);
        assert_eq!(
            take_for(&mut r, "ndbd-0-1", "first", 400, "key-1"),
            Response::TicketRefused,
            "the old machine's ticket"
        );
        assert_eq!(
            take_for(&mut r, "ndbd-0-1", "second", 400, "key-2"),
            Response::TicketTaken
        );
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

//! Raft membership follows the VMs: an agent on a new VM joins as a learner, up to five
//! voters are kept, spread over zones, a VM leaves the membership before it is deleted, and
//! agents that are dead or wiped are removed. Raft ids are never reused. One membership
//! change runs at a time.

use super::AgentShared;
use crate::backend::OpId;
use crate::backend::{BackendError, CloudProvider, JoinTicket, VmInfo, VmSpec};
use crate::raft::{AgentNode, NodeId, Raft, Request, Response};
use agent_core::Role;
use async_trait::async_trait;
use openraft::ChangeMembers;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Most voters the group keeps (more only slow down commits).
pub const MAX_VOTERS: usize = 5;
/// An agent silent this long, whose VM the provider no longer lists, leaves the membership.
pub const DEAD_AFTER: Duration = Duration::from_secs(4);

/// The leader's provider: the real one plus the membership bookkeeping around it.
pub struct Membership {
    shared: Arc<AgentShared>,
    raft: Raft,
    change: tokio::sync::Mutex<()>,
    /// One upkeep pass at a time (the periodic loop and the reconciler's looks share it).
    pass: tokio::sync::Mutex<()>,
    last_seen: Mutex<BTreeMap<NodeId, Instant>>,
}

fn transient(what: &str, e: impl std::fmt::Display) -> BackendError {
    BackendError::transient(format!("{what}: {e}"))
}

impl Membership {
    pub fn new(shared: Arc<AgentShared>, raft: Raft) -> Self {
        Membership {
            shared,
            raft,
            change: tokio::sync::Mutex::new(()),
            pass: tokio::sync::Mutex::new(()),
            last_seen: Mutex::new(BTreeMap::new()),
        }
    }

    fn members(&self) -> (BTreeSet<NodeId>, BTreeMap<NodeId, AgentNode>) {
        let m = self.raft.metrics().borrow().membership_config.clone();
        let voters: BTreeSet<NodeId> = m.membership().voter_ids().collect();
        let nodes = m
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.clone()))
            .collect();
        (voters, nodes)
    }

    /// Gives the agent of a new VM a Raft id and adds it as a learner (idempotent).
    async fn admit(&self, info: &VmInfo) -> Result<(), BackendError> {
        let ep = info.agent_endpoint.clone();
        if ep.is_empty() {
            return Ok(());
        }
        if let Ok(mut f) = self.shared.fresh.lock() {
            f.insert(info.name.clone(), ep.clone());
        }
        // A new VM's agent serves only once it has enrolled (a round trip to this leader
        // and a Raft commit): give it a few seconds.
        let ident = {
            use backon::{ConstantBuilder, Retryable};
            (|| self.shared.identity_of(&ep, Duration::from_secs(2)))
                .retry(
                    ConstantBuilder::new()
                        .with_delay(Duration::from_millis(200))
                        .with_max_times(25),
                )
                .await
                .map_err(|e| transient(&format!("the agent of {} does not answer", info.name), e))?
        };
        if ident.vm != info.name {
            return Err(BackendError::refused(format!(
                "the agent at {ep} is VM {}, not {}",
                ident.vm, info.name
            )));
        }
        let _g = self.change.lock().await;
        let (_, nodes) = self.members();
        let rep = self.shared.replicated().unwrap_or_default();
        let latest = rep.raft_ids.get(&info.name).and_then(|v| v.last().copied());
        let id = if ident.raft_id != 0
            && (nodes.contains_key(&ident.raft_id)
                || (latest == Some(ident.raft_id) && !rep.retired.contains(&ident.raft_id)))
        {
            // Already a member, or joined before its learner entry was written.
            ident.raft_id
        } else {
            let id = if ident.raft_id != 0 {
                // Joined under an id the group removed: it never comes back under it.
                return Err(BackendError::refused(format!(
                    "the agent of {} holds Raft id {} that left the group; wipe its Raft data (raft.redb, raft_id) so it can join under a new id",
                    info.name, ident.raft_id
                )));
            } else {
                match self
                    .raft
                    .client_write(Request::AllocateRaftId {
                        vm: info.name.clone(),
                    })
                    .await
                {
                    Ok(r) => match r.data {
                        Response::RaftId(id) => id,
                        other => {
                            return Err(BackendError::refused(format!(
                                "unexpected answer to a Raft id request: {other:?}"
                            )))
                        }
                    },
                    Err(e) => return Err(transient("cannot allocate a Raft id", e)),
                }
            };
            let mut c = self
                .shared
                .agent_client(&ep)
                .map_err(|e| transient("bad agent address", e))?;
            c.join(ndb_proto::v1::JoinRequest {
                target: Some(ndb_proto::v1::Target {
                    vm: info.name.clone(),
                    op_id: 0,
                }),
                raft_id: id,
            })
            .await
            .map_err(|s| transient(&format!("{} refused to join", info.name), s.message()))?;
            id
        };
        let node = AgentNode {
            vm: ident.vm.clone(),
            role: ident.role.clone(),
            zone: ident.zone.clone(),
            grpc_addr: ident.grpc_addr.clone(),
            http_addr: ident.http_addr.clone(),
        };
        self.raft
            .add_learner(id, node, true)
            .await
            .map_err(|e| transient(&format!("cannot add {} as a learner", info.name), e))?;
        info!(vm = %info.name, raft_id = id, "agent joined as a learner");
        Ok(())
    }

    /// Removes every Raft id of `vm` from the membership.
    async fn expel(&self, vm: &str) -> Result<(), BackendError> {
        let _g = self.change.lock().await;
        let (voters, nodes) = self.members();
        let ids: BTreeSet<NodeId> = nodes
            .iter()
            .filter(|(_, n)| n.vm == vm)
            .map(|(id, _)| *id)
            .collect();
        self.remove_ids(&voters, ids).await
    }

    async fn remove_ids(
        &self,
        voters: &BTreeSet<NodeId>,
        ids: BTreeSet<NodeId>,
    ) -> Result<(), BackendError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.raft
            .client_write(Request::RetireRaftIds(ids.clone()))
            .await
            .map_err(|e| transient("cannot record the removal", e))?;
        let voting: BTreeSet<NodeId> = ids.intersection(voters).copied().collect();
        if !voting.is_empty() {
            if voters.len() <= voting.len() {
                return Err(BackendError::refused(
                    "removing these agents would leave the Raft group without voters",
                ));
            }
            self.change_members(
                ChangeMembers::RemoveVoters(voting),
                false,
                "cannot remove voters",
            )
            .await?;
        }
        self.change_members(
            ChangeMembers::RemoveNodes(ids.clone()),
            false,
            "cannot remove agents from the group",
        )
        .await?;
        info!(raft_ids = ?ids, "agents left the Raft group");
        Ok(())
    }

    /// The membership upkeep loop of the leader.
    pub async fn upkeep(self: Arc<Self>) {
        loop {
            if let Err(e) = self.upkeep_once().await {
                warn!(error = %e, "membership upkeep");
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    /// One upkeep pass now, and the agents it wants as voters that do not vote yet (by VM).
    /// The reconciler asks at every look: a desired state counts as reached only when this
    /// is empty, so the group survives losing any one agent from then on.
    pub async fn settle_voters(&self) -> Result<BTreeSet<String>, BackendError> {
        let mut want = self.upkeep_once().await?;
        let (voters, nodes) = self.members();
        // Members that did not answer are wanted too while the group is smaller than its
        // size calls for: they must answer (or leave the group) before it is fault tolerant.
        if voters.len() < voter_target(nodes.len()) {
            want.extend(nodes.keys().filter(|id| !voters.contains(id)));
        }
        Ok(want
            .difference(&voters)
            .map(|id| {
                nodes
                    .get(id)
                    .map(|n| n.vm.clone())
                    .unwrap_or_else(|| format!("raft id {id}"))
            })
            .collect())
    }

    /// Removes dead agents, admits missing ones, moves the voters where they should be;
    /// returns the voters it wants.
    async fn upkeep_once(&self) -> Result<BTreeSet<NodeId>, BackendError> {
        let _pass = self.pass.lock().await;
        let my_id = self.shared.raft_id().unwrap_or(0);
        let (mut voters, mut nodes) = self.members();
        let now = Instant::now();
        let mut alive: BTreeSet<NodeId> = BTreeSet::from([my_id]);
        let mut wiped: BTreeSet<NodeId> = BTreeSet::new();
        // Every agent asked at once: a dead one costs one timeout, not one each.
        let answers = futures::future::join_all(nodes.iter().filter(|(id, _)| **id != my_id).map(
            |(id, node)| async move {
                let r = self
                    .shared
                    .identity_of(&node.grpc_addr, Duration::from_millis(500))
                    .await;
                (*id, node, r)
            },
        ))
        .await;
        for (id, node, answer) in answers {
            match answer {
                Ok(ident) if ident.raft_id == id && ident.vm == node.vm => {
                    alive.insert(id);
                    if let Ok(mut s) = self.last_seen.lock() {
                        s.insert(id, now);
                    }
                }
                Ok(ident) => {
                    warn!(raft_id = id, vm = %node.vm, answered_as = ident.raft_id,
                        "agent answers under another identity (wiped?); it is removed and comes back only under a new id");
                    wiped.insert(id);
                }
                Err(_) => {}
            }
        }
        // Dead: silent for DEAD_AFTER and the provider no longer lists its VM.
        let infos = self.shared.provider.list_vms().await?;
        let listed: BTreeSet<String> = infos.iter().map(|v| v.name.clone()).collect();
        let mut dead = wiped;
        for (id, node) in &nodes {
            if alive.contains(id) {
                continue;
            }
            let seen = self
                .last_seen
                .lock()
                .ok()
                .and_then(|s| s.get(id).copied())
                .unwrap_or_else(|| {
                    if let Ok(mut s) = self.last_seen.lock() {
                        s.insert(*id, now);
                    }
                    now
                });
            if now.duration_since(seen) >= DEAD_AFTER && !listed.contains(&node.vm) {
                dead.insert(*id);
            }
        }
        if !dead.is_empty() {
            let _g = self.change.lock().await;
            info!(raft_ids = ?dead, "removing dead or wiped agents from the Raft group");
            self.remove_ids(&voters, dead.clone()).await?;
            // The voters are chosen from the group as it is now.
            (voters, nodes) = self.members();
        }
        // A VM whose agent is in no membership (wiped, or created by a leader that died
        // before admitting it) joins under a new id.
        let known = self
            .shared
            .replicated()
            .map(|r| r.cluster.vms)
            .unwrap_or_default();
        for info in &infos {
            // Only VMs the cluster state holds: one being created is admitted by create_vm.
            if known.contains_key(&info.name) && !nodes.values().any(|n| n.vm == info.name) {
                info!(vm = %info.name, "agent of a listed VM is not in the Raft group; admitting it under a new id");
                self.admit(info).await?;
            }
        }
        // A voter that missed this one probe (a busy machine, an agent restarting) stays a
        // candidate until it has been silent for DEAD_AFTER: demoting voters on one missed
        // answer could shrink the group to the leader alone, and losing that one agent
        // would then leave a group that never elects again.
        let responsive: BTreeSet<NodeId> = nodes
            .keys()
            .filter(|id| {
                alive.contains(id)
                    || (voters.contains(id)
                        && self
                            .last_seen
                            .lock()
                            .ok()
                            .and_then(|s| s.get(id).copied())
                            .is_some_and(|seen| now.duration_since(seen) < DEAD_AFTER))
            })
            .copied()
            .collect();
        let want = choose_voters(my_id, &nodes, &voters, &responsive);
        // `voters` is the union of a joint configuration's two sets: a change left joint
        // (see `change_members`) must be finished even when the union is what is wanted.
        let joint = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_joint_config()
            .len()
            > 1;
        if want != voters || joint {
            let _g = self.change.lock().await;
            info!(voters = ?want, joint, "changing the Raft voters");
            self.change_members(
                ChangeMembers::ReplaceAllVoters(want.clone()),
                true,
                "cannot change voters",
            )
            .await?;
        }
        Ok(want)
    }

    /// Runs a membership change to its end on a task of its own. openraft drives the two
    /// steps of a change (the joint configuration, then the uniform one) from the caller's
    /// future: dropped between them (the leader's reconciler stopped, an observation given
    /// up), the group stays joint, where a majority of the *old* voters is still needed to
    /// elect. A group grown from the bootstrap agent alone then never elects a leader again
    /// once that agent is gone.
    async fn change_members(
        &self,
        changes: ChangeMembers<NodeId, AgentNode>,
        retain: bool,
        what: &'static str,
    ) -> Result<(), BackendError> {
        let raft = self.raft.clone();
        tokio::spawn(async move { raft.change_membership(changes, retain).await.map(|_| ()) })
            .await
            .map_err(|e| transient(what, e))?
            .map_err(|e| transient(what, e))
    }
}

/// Voters for a group of `agents`: as many as make a majority survive the loss of one
/// agent (three) or two (five); a group of one or two agents cannot survive any loss.
fn voter_target(agents: usize) -> usize {
    match agents {
        n if n >= MAX_VOTERS => MAX_VOTERS,
        n if n >= 3 => 3,
        _ => 1,
    }
}

/// The voters among the `responsive` members: as many as `voter_target` asks for, each
/// next one from the zone with the fewest voters so far (the leader's zone counts the
/// leader), so losing a zone loses as few voters as possible; among equals the current
/// voters first (no churn), then long-lived roles.
fn choose_voters(
    my_id: NodeId,
    nodes: &BTreeMap<NodeId, AgentNode>,
    voters: &BTreeSet<NodeId>,
    responsive: &BTreeSet<NodeId>,
) -> BTreeSet<NodeId> {
    let mut pool = responsive.clone();
    pool.insert(my_id);
    let target = voter_target(pool.len());
    let mut by_zone: BTreeMap<&str, Vec<VoterCandidate>> = BTreeMap::new();
    for id in pool.iter().filter(|id| **id != my_id) {
        let Some(n) = nodes.get(id) else { continue };
        let key = (u8::from(!voters.contains(id)), role_rank(&n.role));
        by_zone.entry(n.zone.as_str()).or_default().push((key, *id));
    }
    for v in by_zone.values_mut() {
        v.sort();
        v.reverse(); // the best last
    }
    let mut chosen: BTreeMap<&str, usize> = BTreeMap::new();
    if let Some(n) = nodes.get(&my_id) {
        *chosen.entry(n.zone.as_str()).or_default() += 1;
    }
    let mut want: BTreeSet<NodeId> = BTreeSet::from([my_id]);
    while want.len() < target {
        let next = by_zone
            .iter()
            .filter_map(|(zone, v)| {
                let best = v.last()?;
                Some((chosen.get(zone).copied().unwrap_or(0), best.0, *zone))
            })
            .min()
            .map(|(_, _, zone)| zone);
        let Some(zone) = next else { break };
        if let Some((_, id)) = by_zone.get_mut(zone).and_then(Vec::pop) {
            want.insert(id);
            *chosen.entry(zone).or_default() += 1;
        }
    }
    want
}

/// (is not a voter, role rank) and the id: smaller is preferred.
type VoterCandidate = ((u8, u8), NodeId);

/// Voter preference: VMs that live long first.
fn role_rank(role: &str) -> u8 {
    match role.parse::<Role>() {
        Ok(Role::Mgmd) => 0,
        Ok(Role::Ndbd) => 1,
        Ok(Role::Bootstrap) => 2,
        Ok(Role::Mysqld) => 3,
        Ok(Role::Api) | Err(_) => 4,
    }
}

impl Membership {
    /// A one-time ticket for the agent of `vm` to enrol with, on record in the Raft log
    /// (its hash) before anyone can hold it.
    pub(crate) async fn mint_ticket(&self, vm: &str) -> Result<JoinTicket, BackendError> {
        use crate::enrolment::{new_secret, now_unix_ms, TICKET_TTL};
        let secret = new_secret();
        let issued = now_unix_ms();
        let expires = issued + TICKET_TTL.as_millis() as u64;
        self.raft
            .client_write(Request::IssueJoinTicket {
                vm: vm.to_string(),
                sha256: crate::api_token::token_sha256(&secret),
                issued_unix_ms: issued,
                expires_unix_ms: expires,
            })
            .await
            .map_err(|e| transient(&format!("cannot record a join ticket for {vm}"), e))?;
        // This leader first: it is the one waiting for the new agent.
        let mut agents = vec![self.shared.grpc_addr.clone()];
        for (_, n) in self.members().1 {
            if !agents.contains(&n.grpc_addr) {
                agents.push(n.grpc_addr);
            }
        }
        Ok(JoinTicket {
            secret,
            agents,
            expires_unix_ms: expires,
        })
    }
}

#[async_trait]
impl CloudProvider for Membership {
    async fn create_vm(&self, op: OpId, spec: &VmSpec) -> Result<VmInfo, BackendError> {
        let spec = VmSpec {
            join: Some(Box::new(self.mint_ticket(&spec.name).await?)),
            ..spec.clone()
        };
        let spec = &spec;
        let info = self.shared.provider.create_vm(op, spec).await?;
        if let Err(e) = self.admit(&info).await {
            // No half-made VMs: the retry creates it again.
            warn!(vm = %info.name, error = %e, "agent could not join; deleting the VM");
            let _ = self.expel(&info.name).await;
            let _ = self.shared.provider.delete_vm(op, &info.name).await;
            return Err(e);
        }
        Ok(info)
    }

    async fn delete_vm(&self, op: OpId, name: &str) -> Result<(), BackendError> {
        if name == self.shared.vm {
            // The leader's own VM: leave the group first; the next leader deletes it.
            self.expel(name).await?;
            return Err(BackendError::transient(format!(
                "{name} runs the leader; leadership is handed over and the next leader deletes it"
            )));
        }
        self.expel(name).await?;
        self.shared.provider.delete_vm(op, name).await
    }

    async fn list_vms(&self) -> Result<Vec<VmInfo>, BackendError> {
        self.shared.provider.list_vms().await
    }

    /// The VM's agent keeps its Raft id and store: once up it catches up with the log.
    async fn start_vm(&self, op: OpId, name: &str) -> Result<VmInfo, BackendError> {
        self.shared.provider.start_vm(op, name).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(members: &[(NodeId, &str, &str)]) -> BTreeMap<NodeId, AgentNode> {
        members
            .iter()
            .map(|(id, role, zone)| {
                (
                    *id,
                    AgentNode {
                        vm: format!("vm-{id}"),
                        role: (*role).to_string(),
                        zone: (*zone).to_string(),
                        grpc_addr: String::new(),
                        http_addr: String::new(),
                    },
                )
            })
            .collect()
    }

    fn ids(v: &[NodeId]) -> BTreeSet<NodeId> {
        v.iter().copied().collect()
    }

    /// Ten agents over three zones, five of them voters, the bootstrap agent (1) leading.
    fn ten() -> BTreeMap<NodeId, AgentNode> {
        group(&[
            (1, "bootstrap", "zone-a"),
            (2, "mgmd", "zone-a"),
            (3, "ndbd", "zone-a"),
            (4, "ndbd", "zone-b"),
            (5, "ndbd", "zone-c"),
            (6, "ndbd", "zone-a"),
            (7, "ndbd", "zone-b"),
            (8, "ndbd", "zone-c"),
            (9, "mysqld", "zone-a"),
            (10, "api", "zone-b"),
        ])
    }

    #[test]
    fn voters_that_answered_stay_voters() {
        let voters = ids(&[1, 2, 4, 5, 7]);
        let all: BTreeSet<NodeId> = ten().keys().copied().collect();
        assert_eq!(choose_voters(1, &ten(), &voters, &all), voters);
    }

    #[test]
    fn voters_still_within_their_grace_keep_the_group_at_five() {
        // Only the leader and one learner answered this pass (a busy machine); the voters
        // that missed it are still responsive: nothing changes, and above all the group does
        // not shrink to the leader alone.
        let voters = ids(&[1, 2, 4, 5, 7]);
        let responsive = ids(&[1, 9, 2, 4, 5, 7]);
        assert_eq!(choose_voters(1, &ten(), &voters, &responsive), voters);
    }

    #[test]
    fn a_voter_silent_past_its_grace_is_replaced_by_an_answering_agent() {
        let voters = ids(&[1, 2, 4, 5, 7]);
        let responsive = ids(&[1, 2, 4, 5, 8, 9]);
        let want = choose_voters(1, &ten(), &voters, &responsive);
        assert_eq!(want.len(), 5);
        assert!(!want.contains(&7), "{want:?}");
        assert!(want.is_subset(&responsive), "{want:?}");
    }

    #[test]
    fn voters_spread_over_zones() {
        let want = choose_voters(1, &ten(), &ids(&[1]), &ten().keys().copied().collect());
        let zones: BTreeSet<String> = want.iter().map(|id| ten()[id].zone.clone()).collect();
        assert_eq!(want.len(), 5);
        assert_eq!(zones.len(), 3, "{want:?}");
        assert!(want.contains(&1));
        // No zone holds a majority: losing any one zone leaves a quorum.
        for z in &zones {
            let n = want.iter().filter(|id| &ten()[*id].zone == z).count();
            assert!(n <= 2, "{z} holds {n} of the voters: {want:?}");
        }
    }

    #[test]
    fn a_group_too_small_to_survive_a_loss_keeps_one_voter() {
        let g = group(&[(1, "bootstrap", "zone-a"), (2, "mgmd", "zone-b")]);
        assert_eq!(choose_voters(1, &g, &ids(&[1]), &ids(&[1, 2])), ids(&[1]));
        let g3 = group(&[
            (1, "bootstrap", "zone-a"),
            (2, "mgmd", "zone-b"),
            (3, "ndbd", "zone-c"),
        ]);
        assert_eq!(
            choose_voters(1, &g3, &ids(&[1]), &ids(&[1, 2, 3])),
            ids(&[1, 2, 3])
        );
    }
}

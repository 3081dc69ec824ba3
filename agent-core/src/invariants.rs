//! The safety rules of architecture.md, checked after every event by the generative tests
//! and by `simulate` (its `invariant_violations`).

use crate::actions::ActionKind;
use crate::desired::DesiredState;
use crate::desired::RonDbVersion;
use crate::model::{ClusterState, Event, Role, Slot};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

/// Checks the rules that hold at every moment. Stateful: it remembers whether the cluster
/// has been serving and how many VMs each role had when a desired state was accepted.
#[derive(Debug, Default, Clone)]
pub struct InvariantChecker {
    was_serving: bool,
    baseline: BTreeMap<(Role, Option<u32>), usize>,
    /// Node groups whose every replica vanished in the world (observed, not done by the
    /// agents): reported as lost, not counted against the agents.
    lost_by_world: BTreeSet<u32>,
    /// Rule violations seen so far, with the event that revealed them.
    pub violations: Vec<String>,
}

/// VMs per role and node group, in key order. A short list: a cluster has a handful of
/// (role, node group) pairs, and this runs after every step of a simulation.
fn counts(s: &ClusterState) -> Vec<((Role, Option<u32>), usize)> {
    let mut m: Vec<((Role, Option<u32>), usize)> = Vec::with_capacity(8);
    for v in s.vms.values() {
        let key = (v.role, v.node_group);
        match m.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => *n += 1,
            None => m.push((key, 1)),
        }
    }
    m.sort_unstable_by_key(|(k, _)| *k);
    m
}

impl InvariantChecker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks the state right after `ev` was applied.
    pub fn check(&mut self, s: &ClusterState, ev: &Event) {
        self.check_all(s, std::slice::from_ref(ev));
    }

    /// [`check`](Self::check) of every event of a batch against the same state, the one
    /// after the whole batch (an engine applies the events of a step at once, so a driver
    /// sees only that state). The same as checking each event in turn; what depends on the
    /// state alone (slots by host, started node groups, rules 3 to 5) is computed once per
    /// batch, not once per event: a result and the starts it allows come in one step.
    pub fn check_all(&mut self, s: &ClusterState, events: &[Event]) {
        let Some(d) = s.accepted.as_ref() else {
            return;
        };
        let mut facts: Option<Facts> = None;
        for ev in events {
            self.check_one(s, d, ev, &mut facts);
        }
    }

    fn check_one<'s>(
        &mut self,
        s: &'s ClusterState,
        d: &DesiredState,
        ev: &Event,
        facts: &mut Option<Facts<'s>>,
    ) {
        let mut bad = Vec::new();
        if let Event::Accepted(_) = ev {
            self.baseline = counts(s).into_iter().collect();
        }
        // Only these events change VMs, slots or programs; the others cannot break a rule
        // (a started action is checked for rule 2 alone).
        let changes_world = matches!(
            ev,
            Event::Accepted(_) | Event::ActionSucceeded { .. } | Event::Observed { .. }
        );
        if !changes_world && !matches!(ev, Event::ActionStarted(_)) {
            return;
        }
        let f = facts.get_or_insert_with(|| Facts::of(s, d));
        let holds = |vm: &str| !slots_of(&f.held, vm).is_empty();
        if let Event::Observed { .. } = ev {
            for g in &s.started_groups {
                if crate::planner::node_group_lost(s, *g) {
                    self.lost_by_world.insert(*g);
                }
            }
        }
        // Rule 1: a serving cluster keeps a started data node in every node group.
        let ng_up = |g: u32| f.up_groups.contains(&g);
        let serving = f.serving;
        if !d.rondb_running || (!serving && matches!(ev, Event::Observed { .. })) {
            // Stopped on purpose, or taken out of service by the world (VMs down or lost,
            // programs dead): not the agents' doing. The rule holds again once it serves.
            self.was_serving = false;
        } else if self.was_serving && !serving {
            // A node group whose every replica the world took away (lost VMs) is not the
            // agents' doing: it is reported as lost, and nothing may be done to it.
            let down: Vec<u32> = (0..d.num_node_groups)
                .filter(|g| !ng_up(*g) && !self.lost_by_world.contains(g))
                .collect();
            if !down.is_empty() {
                bad.push(format!(
                    "rule 1: node group(s) {down:?} have no started data node while RonDB should serve"
                ));
            }
        }
        if d.rondb_running && serving {
            self.was_serving = true;
        }
        // Rule 2: no empty start unless a started replica holds the data or the cluster is new.
        if let Event::ActionStarted(a) = ev {
            if let ActionKind::StartDataNode {
                vm,
                node_group,
                initial: true,
                ..
            } = &a.kind
            {
                let peer = s.vms_of(Role::Ndbd).any(|v| {
                    &v.name != vm
                        && v.node_group == Some(*node_group)
                        && v.running
                        && holds(&v.name)
                });
                if s.started_groups.contains(node_group) && !peer {
                    bad.push(format!(
                        "rule 2: {vm} started --initial with no started replica in node group {node_group}"
                    ));
                }
            }
        }
        if changes_world {
            // Rules 3 and 5 depend on the state alone.
            let w = f
                .world
                .get_or_insert_with(|| WorldFacts::of(s, d, &f.held, &f.per_vm));
            bad.extend(w.rule3.iter().cloned());
            // Rule 4: no more VMs than desired (or than existed), plus temporary ones if
            // allowed.
            let temp = usize::from(d.allow_requesting_temporary_vms);
            for &((role, ng), n) in &w.counts {
                let target = if role == Role::Bootstrap {
                    1
                } else {
                    crate::model::target_vms(d, role)
                };
                let base = self.baseline.get(&(role, ng)).copied().unwrap_or(0);
                if n > target.max(base) + temp {
                    bad.push(format!(
                        "rule 4: {n} {role} VM(s) in group {ng:?}; allowed {} (+{temp} temporary)",
                        target.max(base)
                    ));
                }
            }
            bad.extend(w.rule5.iter().cloned());
        }
        for b in bad {
            self.violations.push(format!("after {}: {b}", describe(ev)));
        }
    }
}

/// What the rules read from one state, computed once for all the events checked against it.
struct Facts<'s> {
    /// Active slots by host, in slot order within a host: one buffer rather than a map of
    /// vectors.
    held: Vec<(&'s str, &'s Slot)>,
    /// Where each VM's active slots are in `held`, in the order of `s.vms`.
    per_vm: Vec<Range<usize>>,
    /// Node groups with a started data node that holds an active slot.
    up_groups: BTreeSet<u32>,
    /// Every node group has a started data node.
    serving: bool,
    /// What rules 3 to 5 read, once an event that changes the world needs it.
    world: Option<WorldFacts>,
}

/// The parts of the rules checked after events that change the world that depend on the
/// state alone.
struct WorldFacts {
    /// VMs per role and node group (rule 4), in key order.
    counts: Vec<((Role, Option<u32>), usize)>,
    rule3: Vec<String>,
    rule5: Vec<String>,
}

impl WorldFacts {
    fn of(
        s: &ClusterState,
        d: &DesiredState,
        held: &[(&str, &Slot)],
        per_vm: &[Range<usize>],
    ) -> Self {
        WorldFacts {
            counts: counts(s),
            rule3: rule3(s),
            rule5: rule5(s, d, held, per_vm),
        }
    }
}

impl<'s> Facts<'s> {
    fn of(s: &'s ClusterState, d: &DesiredState) -> Self {
        let mut held: Vec<(&str, &Slot)> = s
            .slots
            .values()
            .filter(|x| x.active && !x.external)
            .filter_map(|x| x.host.as_deref().map(|h| (h, x)))
            .collect();
        held.sort_by(|a, b| a.0.cmp(b.0));
        let per_vm = held_per_vm(s, &held);
        let mut up_groups = BTreeSet::new();
        for (v, r) in s.vms.values().zip(&per_vm) {
            if v.role == Role::Ndbd && v.running && !r.is_empty() {
                if let Some(g) = v.node_group {
                    up_groups.insert(g);
                }
            }
        }
        let serving = (0..d.num_node_groups).all(|g| up_groups.contains(&g));
        Facts {
            held,
            per_vm,
            up_groups,
            serving,
            world: None,
        }
    }
}

/// Rule 3: versions never increase along management -> data -> MySQLd/API.
fn rule3(s: &ClusterState) -> Vec<String> {
    let mut bad = Vec::new();
    // Indexed by phase (0..=3), so no map is built per event.
    let mut lo: [Option<RonDbVersion>; 4] = [None; 4];
    let mut hi: [Option<RonDbVersion>; 4] = [None; 4];
    for v in s.vms.values().filter(|v| v.running) {
        if let Some(ver) = v.version.as_deref().and_then(RonDbVersion::parse) {
            let ph = usize::from(v.role.phase());
            lo[ph] = Some(lo[ph].map_or(ver, |x| x.min(ver)));
            hi[ph] = Some(hi[ph].map_or(ver, |x| x.max(ver)));
        }
    }
    let phases =
        |m: [Option<RonDbVersion>; 4]| (0u8..).zip(m).filter_map(|(ph, v)| v.map(|v| (ph, v)));
    for (pi, low) in phases(lo) {
        for (pj, high) in phases(hi) {
            if pi < pj && low < high {
                bad.push(format!(
                    "rule 3: phase {pj} runs {high} while phase {pi} still runs {low}"
                ));
            }
        }
    }
    bad
}

/// Rule 5: node ids in range, each data-node VM holds at most one slot of its group.
fn rule5(
    s: &ClusterState,
    d: &DesiredState,
    held: &[(&str, &Slot)],
    per_vm: &[Range<usize>],
) -> Vec<String> {
    let mut bad = Vec::new();
    for (v, r) in s.vms.values().zip(per_vm) {
        let held = &held[r.clone()];
        let max = match v.role {
            Role::Mysqld => d.num_mysqld_slots_per_vm as usize,
            Role::Api => d.num_api_slots_per_vm as usize,
            _ => 1,
        };
        if held.len() > max {
            bad.push(format!(
                "rule 5: {} holds {} active slots",
                v.name,
                held.len()
            ));
        }
        for &(_, x) in held {
            if x.kind != v.role || x.node_group != v.node_group || x.node_id == 0 || x.node_id > 255
            {
                bad.push(format!(
                    "rule 5: slot {} is bound to {} of the wrong kind or group",
                    x.node_id, v.name
                ));
            }
        }
    }
    bad
}

/// For each VM (in the order of `s.vms`), where its active slots are in `held` (sorted by
/// host): the same as [`slots_of`] per VM, found by walking both sorted lists together
/// rather than searching once per VM.
fn held_per_vm(s: &ClusterState, held: &[(&str, &Slot)]) -> Vec<Range<usize>> {
    let mut out = Vec::with_capacity(s.vms.len());
    let mut i = 0;
    for (key, v) in &s.vms {
        if *key != v.name {
            // Keys are names (the state's own events keep them so); a state that says
            // otherwise is searched by name rather than walked.
            out.push(slots_range(held, &v.name));
            continue;
        }
        let name = key.as_str();
        while i < held.len() && held[i].0 < name {
            i += 1;
        }
        let lo = i;
        while i < held.len() && held[i].0 == name {
            i += 1;
        }
        out.push(lo..i);
    }
    out
}

/// The active slots bound to `vm`, from the slots sorted by host.
fn slots_of<'b, 's>(held: &'b [(&'s str, &'s Slot)], vm: &str) -> &'b [(&'s str, &'s Slot)] {
    &held[slots_range(held, vm)]
}

/// Where the active slots bound to `vm` are in `held` (sorted by host).
fn slots_range(held: &[(&str, &Slot)], vm: &str) -> Range<usize> {
    let lo = held.partition_point(|(h, _)| *h < vm);
    let hi = lo + held[lo..].partition_point(|(h, _)| *h == vm);
    lo..hi
}

/// Rule 6, checked once the desired state is reached: replicas of a node group sit in
/// different zones when there are enough zones.
pub fn check_settled(s: &ClusterState) -> Vec<String> {
    let Some(d) = s.accepted.as_ref() else {
        return vec![];
    };
    let mut out = Vec::new();
    if !d.rondb_running {
        // Replicas move between zones only while RonDB runs (they copy from a live peer).
        return out;
    }
    for g in 0..d.num_node_groups {
        let zones: Vec<&str> = s
            .vms_of(Role::Ndbd)
            .filter(|v| v.node_group == Some(g))
            .map(|v| v.zone.as_str())
            .collect();
        let mut distinct = zones.clone();
        distinct.sort();
        distinct.dedup();
        let possible = zones.len().min(d.availability_zones.len());
        if distinct.len() < possible {
            out.push(format!(
                "rule 6: node group {g} replicas share zones: {zones:?}"
            ));
        }
    }
    out
}

fn describe(ev: &Event) -> String {
    match ev {
        Event::Accepted(d) => format!("accepting desired state {}", d.id),
        Event::Queued(d) => format!("queueing desired state {}", d.id),
        Event::PendingDropped { id, .. } => format!("dropping pending desired state {id}"),
        Event::ActionStarted(a) => format!("start of {a}"),
        Event::ActionSucceeded { op_id, .. } => format!("success of #{op_id}"),
        Event::ActionFailed { op_id, .. } => format!("failure of #{op_id}"),
        Event::Observed { .. } => "an observation".into(),
        Event::ReconciliationChanged { state, .. } => format!("change to {state}"),
        Event::LeaderChanged { vm } => format!("{vm} taking the leadership"),
        Event::VmAbandoned { vm, .. } => format!("giving up {vm}"),
    }
}

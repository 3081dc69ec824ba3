//! `ndb-agent simulate`: the reconcile engine (`agent_core::engine`) with the simulated world
//! (`sim-world`), driven as a discrete-event loop in simulated time: no async runtime, no
//! clock; an action's end is an event at its start time plus its cost, and the loop jumps
//! from one event to the next.
//!
//! With leader changes on, the simulation also plays the part of Raft: every event goes
//! through a journal that holds the committed state, and the leader can lose its leadership
//! between any two writes (at random, when its VM is lost, or when it hands the leadership
//! over before its own VM is deleted or its agent restarted). The next leader starts from the
//! committed state on a VM chosen at random, observes the world and resumes the actions in
//! flight under their operation ids, which the world runs once each, as agents do.

use agent_core::actions::ActionKind;
use agent_core::backend::BackendError;
use agent_core::cost::CostModel;
use agent_core::desired::VmType;
use agent_core::desired::{DesiredState, Violation};
use agent_core::diff;
use agent_core::engine::{BackendCall, Command, Engine, Input, StandardPolicy, Submission};
use agent_core::invariants::{check_settled, InvariantChecker};
use agent_core::model::{ClusterState, Event, Outcome, ReconciliationState, Role};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use sim_world::{lock, FaultConfig, Pending, SharedWorld, SinkBackup, World};
use std::collections::BTreeMap;
use std::time::Duration;

/// Settings of one simulation run.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub seed: u64,
    pub faults: FaultConfig,
    /// Backups of another cluster already in the sink (for `RestoreFromBackup`).
    pub existing_backups: Vec<u64>,
    pub cost: CostModel,
    pub max_attempts: u32,
    /// `Some(p)` turns on the Raft part (a journal, handovers before the leader's own VM is
    /// deleted or its agent restarted, the leader dying with its VM), and the leader also
    /// loses its leadership at any one write to the log with probability `p`. `None`: one
    /// leader throughout, events applied as they come.
    pub leader_change_rate: Option<f64>,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            seed: 1,
            faults: FaultConfig::default(),
            existing_backups: vec![],
            cost: CostModel::default(),
            max_attempts: 3,
            leader_change_rate: None,
        }
    }
}

/// Leader changes per reconciliation beyond which the simulation stops: a leader that keeps
/// losing its leadership before doing anything is a bug of the simulation or the handover.
const MAX_LEADER_CHANGES: u32 = 10_000;

/// How long handing the leadership over takes (the membership change and an election);
/// the old leader's writes still commit meanwhile.
const HANDOVER: Duration = Duration::from_millis(1500);

/// The Raft log of the simulation: committed events, and the leader losing its leadership.
struct SimJournal {
    committed: ClusterState,
    /// Random leadership loss only while reconciling (a submission is never cut).
    armed: bool,
    rate: f64,
    rng: ChaCha8Rng,
    /// The leader loses its leadership right after the success of an action of this kind
    /// (`DeactivateNode`, ...) is committed: a deterministic cut for regression cases.
    cut_after: Option<String>,
    cut_next: bool,
}

impl SimJournal {
    /// Commits the events, or refuses them (the leader lost its leadership).
    fn append(&mut self, events: &[Event], leader_gone: bool) -> bool {
        if leader_gone || std::mem::take(&mut self.cut_next) {
            return false;
        }
        if self.armed && self.rate > 0.0 && self.rng.random_bool(self.rate.min(1.0)) {
            return false;
        }
        for ev in events {
            if let (Event::ActionSucceeded { op_id, .. }, Some(kind)) = (ev, &self.cut_after) {
                let hit = self
                    .committed
                    .in_flight
                    .get(op_id)
                    .is_some_and(|a| a.kind.name() == kind);
                if hit {
                    self.cut_after = None;
                    self.cut_next = true;
                }
            }
            self.committed.apply(ev);
        }
        true
    }
}

/// The leader's VM is special to its own agent: deleting it, or restarting or upgrading its
/// agent, first hands the leadership over (the next leader does it), as the agents do.
fn hands_over(call: &BackendCall, leader: Option<&str>) -> Option<String> {
    let vm = match call {
        BackendCall::DeleteVm { vm }
        | BackendCall::RestartAgent { vm }
        | BackendCall::UpgradeAgent { vm, .. } => vm,
        _ => return None,
    };
    (leader == Some(vm.as_str())).then(|| vm.clone())
}

/// One action as the simulation saw it.
#[derive(Debug, Clone, Serialize)]
pub struct ActionRecord {
    #[serde(flatten)]
    pub action: serde_json::Value,
    pub start_s: f64,
    pub end_s: f64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub failed: bool,
}

/// One VM in a [`StepReport`].
#[derive(Debug, Clone, Serialize)]
pub struct VmSnapshot {
    pub vm: String,
    pub role: Role,
    pub zone: String,
    pub vm_type: VmType,
    pub storage_gib: u32,
    pub address: String,
    pub temporary: bool,
    pub node_group: Option<u32>,
    pub running: bool,
    pub version: Option<String>,
    pub node_ids: Vec<u32>,
    pub agent_version: String,
}

/// The cluster after a step of the simulation (the `cluster` object of `simulate --json`).
#[derive(Debug, Clone, Serialize)]
pub struct ClusterSnapshot {
    pub reconciliation_state: ReconciliationState,
    pub accepted_id: Option<u64>,
    pub rondb_has_run: bool,
    pub vms: Vec<VmSnapshot>,
    pub backups: Vec<u64>,
    pub restore_done: bool,
    pub world_lost_vms: Vec<String>,
}

/// The result of submitting one desired state: one JSON line of `simulate --json`.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub desired_id: u64,
    pub outcome: String,
    pub rejection: Option<String>,
    pub makespan_s: f64,
    pub actions: Vec<ActionRecord>,
    pub invariant_violations: Vec<String>,
    /// The cluster as the leader sees it afterwards; `None` for a document that did not
    /// parse.
    pub cluster: Option<ClusterSnapshot>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

struct Recorder {
    started: BTreeMap<u64, (serde_json::Value, f64)>,
    done: Vec<ActionRecord>,
    checker: InvariantChecker,
    /// Print progress lines as actions start and finish (human mode).
    verbose: bool,
    /// Keep every action (as JSON) for the step reports. Off for callers that read only
    /// outcomes and safety rules: rendering each action as JSON is a large share of a
    /// simulation's time.
    actions: bool,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            started: BTreeMap::new(),
            done: Vec::new(),
            checker: InvariantChecker::default(),
            verbose: false,
            actions: true,
        }
    }
}

fn action_json(s: &ClusterState, k: &ActionKind) -> serde_json::Value {
    let mut v = serde_json::to_value(k).unwrap_or(serde_json::Value::Null);
    if let serde_json::Value::Object(m) = &mut v {
        if !m.contains_key("role") {
            if let Some(role) = k.vm().and_then(|vm| s.vms.get(vm)).map(|vm| vm.role) {
                m.insert("role".into(), serde_json::json!(role));
            }
        }
    }
    v
}

impl Recorder {
    /// Notes an action's start or end (the safety rules are checked per entry, by the
    /// caller).
    fn on_event(&mut self, state: &ClusterState, event: &Event, t: f64) {
        let r = self;
        if !r.actions && !r.verbose {
            return;
        }
        match event {
            Event::ActionStarted(a) => {
                if r.verbose {
                    println!("[{t:>7.1}s] start {a}");
                }
                r.started.insert(a.op_id, (action_json(state, &a.kind), t));
            }
            Event::ActionSucceeded { op_id, .. } | Event::ActionFailed { op_id, .. } => {
                let failed = matches!(event, Event::ActionFailed { .. });
                if let Some((action, start_s)) = r.started.remove(op_id) {
                    if r.verbose {
                        let name = action
                            .get("kind")
                            .and_then(|k| k.as_str())
                            .unwrap_or("?")
                            .to_string();
                        let vm = action
                            .get("vm")
                            .and_then(|k| k.as_str())
                            .unwrap_or("")
                            .to_string();
                        let what = if failed { "FAILED" } else { "done " };
                        println!("[{t:>7.1}s] {what} #{op_id} {name} {vm}");
                    }
                    r.done.push(ActionRecord {
                        action,
                        start_s,
                        end_s: t,
                        failed,
                    });
                }
            }
            Event::Observed { vms, programs } if r.verbose => {
                let lost: Vec<&String> = state
                    .vms
                    .keys()
                    .filter(|n| !vms.iter().any(|v| &&v.name == n))
                    .collect();
                let stopped: Vec<&String> = programs
                    .iter()
                    .filter(|(_, p)| !p.running)
                    .map(|(n, _)| n)
                    .collect();
                println!(
                    "[{t:>7.1}s] observed drift; lost VMs {lost:?}; programs not running {stopped:?}; repairing"
                );
            }
            _ => {}
        }
    }
}

/// Something due at a simulated time.
enum Due {
    /// A backend call ends in the world.
    End {
        op: u64,
        token: u64,
        pending: Pending,
    },
    /// A backend call answers without the world (handover, or a repeat of a finished run).
    Answer {
        op: u64,
        token: u64,
        result: Result<Outcome, BackendError>,
        /// The answer of a leader that handed its leadership over: it leads no more.
        hand_over: bool,
    },
    /// The leader looks at the world.
    Observe { generation: u64 },
    /// The engine asked to be woken.
    Wake { generation: u64 },
}

/// An agent's run of one operation id: running, or its result kept for repeats.
enum OpRun {
    Running { token: u64 },
    Done(Result<Outcome, BackendError>),
}

/// A simulated cluster: the world, and the engine of the leader acting on it.
pub struct Simulation {
    pub world: SharedWorld,
    engine: Engine,
    policy: StandardPolicy,
    recorder: Recorder,
    /// The Raft part, with leader changes on.
    journal: Option<SimJournal>,
    leader_rng: ChaCha8Rng,
    /// Leaders so far (the bootstrap agent first).
    pub leader_changes: u64,
    now: Duration,
    queue: BTreeMap<(Duration, u64), Due>,
    seq: u64,
    /// Bumped at each leader change: what was due for the old leader is dropped.
    generation: u64,
    /// Operations the current leader waits for, with the run whose end answers it.
    awaiting: BTreeMap<u64, u64>,
    /// Agents' runs by operation id.
    runs: BTreeMap<u64, OpRun>,
    next_token: u64,
    wake_at: Option<Duration>,
    observe_queued: bool,
    /// The journal refused a write: the next leader must take over before anything else.
    leader_lost: bool,
}

impl Simulation {
    pub fn new(opts: &SimOptions) -> Self {
        let mut world = World::new(opts.seed, opts.faults, opts.cost.clone());
        for id in &opts.existing_backups {
            world.sink.insert(
                *id,
                SinkBackup {
                    data_nodes: vec![1, 2],
                },
            );
        }
        let policy = StandardPolicy {
            max_attempts: opts.max_attempts,
            observe_every: Duration::from_secs(30),
            ..Default::default()
        };
        // Its own stream, so that turning leader changes on leaves the world's draws alone.
        let mut leader_rng = ChaCha8Rng::seed_from_u64(opts.seed ^ 0x1ead_e7c4_a46e);
        let journal = opts.leader_change_rate.map(|rate| SimJournal {
            committed: ClusterState::default(),
            armed: false,
            rate,
            rng: ChaCha8Rng::seed_from_u64(leader_rng.random()),
            cut_after: None,
            cut_next: false,
        });
        Simulation {
            world: world.shared(),
            engine: Engine::new(ClusterState::default(), Box::new(policy.clone())),
            policy,
            recorder: Recorder::default(),
            journal,
            leader_rng,
            leader_changes: 0,
            now: Duration::ZERO,
            queue: BTreeMap::new(),
            seq: 0,
            generation: 0,
            awaiting: BTreeMap::new(),
            runs: BTreeMap::new(),
            next_token: 0,
            wake_at: None,
            observe_queued: false,
            leader_lost: false,
        }
    }

    fn secs(&self) -> f64 {
        self.now.as_secs_f64()
    }

    fn at(&mut self, t: Duration, due: Due) {
        self.seq += 1;
        self.queue.insert((t, self.seq), due);
    }

    fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    /// Feeds one input to the engine and carries out its commands; returns the verdict on
    /// a submission.
    fn step(&mut self, input: Input) -> Option<Result<Submission, Vec<Violation>>> {
        if self.leader_lost {
            return None;
        }
        let mut verdict = None;
        // The engine applied every event of this step before returning its commands, so the
        // safety rules see each event against the state after the step, as the recorder does.
        // They are checked together at the end (or before a refused write ends the step):
        // the checker reads that state once rather than once per entry.
        let mut committed: Vec<Event> = Vec::new();
        // Appends of a step that follow each other are one write, as the agent's driver does.
        for c in agent_core::engine::coalesce_appends(self.engine.step(self.now, input)) {
            match c {
                Command::Append(events) => {
                    if let Some(j) = &mut self.journal {
                        let gone = lock(&self.world).leader_gone;
                        if !j.append(&events, gone) {
                            // Nothing after a refused write happens.
                            self.recorder
                                .checker
                                .check_all(self.engine.state(), &committed);
                            self.leader_lost = true;
                            return None;
                        }
                    }
                    let t = self.secs();
                    for ev in &events {
                        self.recorder.on_event(self.engine.state(), ev, t);
                    }
                    committed.extend(events);
                }
                Command::Run { action, call } => self.run(action.op_id, call),
                Command::Observe => {
                    if !self.observe_queued {
                        self.observe_queued = true;
                        let generation = self.generation;
                        self.at(self.now, Due::Observe { generation });
                    }
                }
                Command::Verdict(v) => verdict = Some(v),
                Command::Report { .. } => {}
                Command::WakeAt(t) => {
                    self.wake_at = Some(t);
                    let generation = self.generation;
                    self.at(t, Due::Wake { generation });
                }
            }
        }
        self.recorder
            .checker
            .check_all(self.engine.state(), &committed);
        verdict
    }

    /// Starts an action's backend call in the world (or joins the run already under way
    /// for its operation id).
    fn run(&mut self, op: u64, call: BackendCall) {
        let leader = lock(&self.world).leader.clone();
        if self.journal.is_some() {
            if let Some(vm) = hands_over(&call, leader.as_deref()) {
                let result = Err(BackendError::transient(format!(
                    "{vm} runs the leader; leadership was handed over and the next leader does this"
                )));
                // The handover completes when that answer is due.
                self.answer_later(op, HANDOVER, result, true);
                return;
            }
        }
        if call.runs_once_per_op() {
            match self.runs.get(&op) {
                Some(OpRun::Running { token }) => {
                    self.awaiting.insert(op, *token);
                    return;
                }
                Some(OpRun::Done(result)) => {
                    let result = result.clone();
                    self.answer_later(op, Duration::ZERO, result, false);
                    return;
                }
                None => {}
            }
        }
        let token = self.token();
        if call.runs_once_per_op() {
            self.runs.insert(op, OpRun::Running { token });
        }
        self.awaiting.insert(op, token);
        let pending = {
            let mut w = lock(&self.world);
            w.now = self.secs();
            w.begin(call)
        };
        let end = self.now + Duration::from_secs_f64(pending.seconds);
        self.at(end, Due::End { op, token, pending });
    }

    /// The leader waits for `op`, answered `after` from now without the world.
    fn answer_later(
        &mut self,
        op: u64,
        after: Duration,
        result: Result<Outcome, BackendError>,
        hand_over: bool,
    ) {
        let token = self.token();
        self.awaiting.insert(op, token);
        self.at(
            self.now + after,
            Due::Answer {
                op,
                token,
                result,
                hand_over,
            },
        );
    }

    /// Handles the next thing due; false when nothing is.
    fn advance(&mut self) -> bool {
        let Some(((t, _), due)) = self.queue.pop_first() else {
            return false;
        };
        self.now = self.now.max(t);
        match due {
            Due::End { .. } | Due::Answer { .. } => {
                // Every result due at this instant reaches the leader at once: it plans once.
                let mut results = Vec::new();
                let mut next = Some(due);
                while let Some(due) = next.take() {
                    if let Some(r) = self.result_of(due) {
                        results.push(r);
                    }
                    let same_instant = self.queue.first_key_value().is_some_and(|((at, _), d)| {
                        *at == t && matches!(d, Due::End { .. } | Due::Answer { .. })
                    });
                    if same_instant {
                        next = self.queue.pop_first().map(|(_, d)| d);
                    }
                }
                if !results.is_empty() {
                    self.step(Input::ActionsDone(results));
                }
            }
            Due::Observe { generation } if generation == self.generation => {
                self.observe_queued = false;
                let observation = {
                    let mut w = lock(&self.world);
                    w.now = self.secs();
                    let state = self.engine.state();
                    w.observe(|n| state.vms.contains_key(n))
                };
                self.step(Input::Observed(Ok(observation)));
            }
            Due::Wake { generation }
                if generation == self.generation && self.wake_at == Some(t) =>
            {
                self.wake_at = None;
                self.step(Input::Tick);
            }
            Due::Observe { .. } | Due::Wake { .. } => {}
        }
        true
    }

    /// Ends a run (or takes an answer) and returns the result if the leader waits for it.
    fn result_of(&mut self, due: Due) -> Option<(u64, Result<Outcome, BackendError>)> {
        let (op, token, result) = match due {
            Due::End { op, token, pending } => {
                let result = {
                    let mut w = lock(&self.world);
                    w.now = self.secs();
                    w.finish(pending)
                };
                if let Some(r) = self.runs.get_mut(&op) {
                    if matches!(r, OpRun::Running { token: x } if *x == token) {
                        *r = OpRun::Done(result.clone());
                    }
                }
                (op, token, result)
            }
            Due::Answer {
                op,
                token,
                result,
                hand_over,
            } => {
                if hand_over && self.awaiting.get(&op) == Some(&token) {
                    lock(&self.world).leader_gone = true;
                }
                (op, token, result)
            }
            Due::Observe { .. } | Due::Wake { .. } => return None,
        };
        if self.awaiting.get(&op) == Some(&token) {
            self.awaiting.remove(&op);
            Some((op, result))
        } else {
            None
        }
    }

    /// The leader's agent is gone or stepped down: another agent, on a VM chosen at random
    /// (any VM may lead), takes over from what was committed. With `to`, that VM leads.
    pub fn change_leader(&mut self, to: Option<&str>) {
        let Some(journal) = &self.journal else {
            return;
        };
        let committed = journal.committed.clone();
        let leader = match to {
            Some(vm) => Some(vm.to_string()),
            None => {
                let w = lock(&self.world);
                let candidates: Vec<&String> = w.vms.keys().collect();
                (!candidates.is_empty())
                    .then(|| candidates[self.leader_rng.random_range(0..candidates.len())].clone())
            }
        };
        {
            let mut w = lock(&self.world);
            w.leader = leader.clone();
            w.leader_gone = false;
        }
        self.leader_changes += 1;
        if self.recorder.verbose {
            println!(
                "[{:>7.1}s] leader change: {} takes over",
                self.secs(),
                leader.as_deref().unwrap_or("the bootstrap agent")
            );
        }
        self.generation += 1;
        self.awaiting.clear();
        self.wake_at = None;
        self.observe_queued = false;
        self.leader_lost = false;
        self.engine = Engine::new(committed, Box::new(self.policy.clone()));
        if let Some(vm) = leader {
            self.step(Input::Leading { vm });
        }
    }

    /// The leader will lose its leadership right after the next success of an action of
    /// `kind` is committed (needs leader changes on).
    pub fn cut_leader_after(&mut self, kind: &str) -> bool {
        match &mut self.journal {
            Some(j) => {
                j.cut_after = Some(kind.to_string());
                true
            }
            None => false,
        }
    }

    fn arm(&mut self, on: bool) {
        if let Some(j) = &mut self.journal {
            j.armed = on;
        }
    }

    /// Prints progress lines while reconciling (the human-readable mode of `simulate`).
    pub fn set_verbose(&mut self, verbose: bool) {
        self.recorder.verbose = verbose;
    }

    /// Whether step reports list the actions (on by default). Off, `actions` stays empty
    /// unless verbose mode is on: for callers that check outcomes and safety rules alone,
    /// which then skip rendering every action as JSON. Decisions are the same either way.
    pub fn set_action_records(&mut self, on: bool) {
        self.recorder.actions = on;
    }

    pub fn state(&self) -> &ClusterState {
        self.engine.state()
    }

    /// Submits a desired state and reconciles until it is reached or given up.
    pub fn submit(&mut self, d: DesiredState) -> StepReport {
        let t0 = self.secs();
        self.recorder.done.clear();
        let desired_id = d.id;
        if self.leader_lost || lock(&self.world).leader_gone {
            self.change_leader(None);
        }
        let verdict = self.step(Input::Submit(Box::new(d)));
        let rejection = match verdict {
            Some(Ok(_)) => None,
            Some(Err(v)) => Some(
                v.iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            None => Some("not recorded: the leader lost its leadership; submit it again".into()),
        };
        if let Some(text) = rejection {
            return StepReport {
                desired_id,
                outcome: "REJECTED".into(),
                rejection: Some(text),
                makespan_s: 0.0,
                actions: vec![],
                invariant_violations: vec![],
                cluster: self.cluster_json(),
                error: None,
            };
        }
        self.settle(t0, desired_id)
    }

    /// Reconciles again without a new desired state (after injected drift).
    pub fn repair(&mut self) -> StepReport {
        let t0 = self.secs();
        self.recorder.done.clear();
        let id = self.state().accepted.as_ref().map(|d| d.id).unwrap_or(0);
        if self.leader_lost || lock(&self.world).leader_gone {
            self.change_leader(None);
        }
        self.step(Input::Resync);
        self.settle(t0, id)
    }

    /// Runs the world until the leader's reconciliation ends (across leader changes).
    fn settle(&mut self, t0: f64, desired_id: u64) -> StepReport {
        let mut changes = 0;
        self.arm(true);
        let outcome = loop {
            if self.leader_lost {
                changes += 1;
                if changes > MAX_LEADER_CHANGES {
                    break ReconciliationState::ERROR_STATE;
                }
                self.change_leader(None);
                if !self.engine.is_busy() {
                    self.step(Input::Resync);
                }
                continue;
            }
            let waiting = self.engine.is_busy() || !self.awaiting.is_empty() || self.observe_queued;
            if !waiting || !self.advance() {
                break self.state().reconciliation;
            }
        };
        self.arm(false);
        let t1 = self.secs();
        let mut actions = std::mem::take(&mut self.recorder.done);
        actions.sort_by(|a, b| a.start_s.total_cmp(&b.start_s));
        let mut violations = std::mem::take(&mut self.recorder.checker.violations);
        if outcome == ReconciliationState::AT_DESIRED_STATE {
            violations.extend(check_settled(self.state()));
        }
        for a in &mut actions {
            a.start_s -= t0;
            a.end_s -= t0;
        }
        StepReport {
            desired_id,
            outcome: outcome.to_string(),
            rejection: None,
            makespan_s: t1 - t0,
            actions,
            invariant_violations: violations,
            cluster: self.cluster_json(),
            error: self.state().last_error.clone(),
        }
    }

    /// What still differs from the accepted desired state, as people read it (empty when
    /// reached).
    pub fn remaining(&self) -> Vec<String> {
        match &self.state().accepted {
            Some(d) => diff(d, self.state())
                .iter()
                .map(ToString::to_string)
                .collect(),
            None => vec![],
        }
    }

    fn cluster_json(&self) -> Option<ClusterSnapshot> {
        let s = self.state();
        Some(ClusterSnapshot {
            reconciliation_state: s.reconciliation,
            accepted_id: s.accepted.as_ref().map(|d| d.id),
            rondb_has_run: s.rondb_has_run,
            vms: s
                .vms
                .values()
                .map(|v| VmSnapshot {
                    vm: v.name.clone(),
                    role: v.role,
                    zone: v.zone.clone(),
                    vm_type: v.vm_type,
                    storage_gib: v.storage_gib,
                    address: v.address.clone(),
                    temporary: v.temporary,
                    node_group: v.node_group,
                    running: v.running,
                    version: v.version.clone(),
                    node_ids: s.active_slots_of(&v.name).map(|x| x.node_id).collect(),
                    agent_version: v.agent_version.clone(),
                })
                .collect(),
            backups: s.backups.keys().copied().collect(),
            restore_done: s.restore.done,
            world_lost_vms: lock(&self.world).lost_vms.clone(),
        })
    }
}

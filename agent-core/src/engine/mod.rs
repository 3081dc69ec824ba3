//! The reconcile engine: every decision of the leader's reconciliation as a deterministic
//! state machine, in the style of openraft's `Engine`. It takes [`Input`]s (a desired state
//! submitted, an action's result, an observation of the world, this agent leading, time
//! passed) and returns [`Command`]s (make these events durable, run these actions, observe,
//! answer the submitter, report the outcome, wake me at T). It does no I/O and reads no
//! clock: time comes in with every input, so the same engine runs under the agent's async
//! driver and under the simulation's discrete-event loop, and every decision is unit-tested
//! without a runtime.
//!
//! The engine applies its events to its own state at once; the driver must make each
//! [`Command::Append`] durable before it executes any command after it, and stop (discarding
//! the engine) if the log refuses it: the next leader resumes from what was committed.

mod call;
mod policy;
#[cfg(test)]
mod tests;

pub use call::{prepare, BackendCall};
pub use policy::{FailureVerdict, Policy, StandardPolicy};

use crate::actions::Action;
use crate::backend::{BackendError, ProgramStatus, VmInfo, VmState};
use crate::desired::{self, DesiredState, TransitionContext, Violation};
use crate::model::{ClusterState, Event, Outcome, ReconciliationState, Role};
use crate::planner::{diff_with, plan_with, ConfigCache};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tracing::{info, warn};

/// What happened to a submitted desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submission {
    /// It is now the accepted state and is being reconciled.
    Accepted,
    /// The leader is working; it waits as the pending state (the latest submitted wins).
    Queued,
}

/// What the world looks like: the provider's VMs and each known VM's program.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Observation {
    pub vms: Vec<VmInfo>,
    pub programs: BTreeMap<String, ProgramStatus>,
    /// VMs the provider reports running whose agent did not say how its program is (it is
    /// still starting, or unreachable): their program state on record is not confirmed.
    pub unanswered: BTreeSet<String>,
    /// The agents (by VM) the Raft membership wants as voters that do not vote yet; `None`
    /// when not checked (no Raft group, as in a simulation): the last answer stands.
    pub voters_missing: Option<BTreeSet<String>>,
}

/// Something the engine must react to. Every input comes with the driver's time now.
#[derive(Debug, Clone)]
pub enum Input {
    /// This agent leads now (on `vm`): resume from the state the engine was made with.
    Leading { vm: String },
    /// A user submitted a desired state; the answer is the [`Command::Verdict`] returned.
    Submit(Box<DesiredState>),
    /// The answer to [`Command::Observe`]; an error keeps what is known.
    Observed(Result<Observation, BackendError>),
    /// The result of an action started with [`Command::Run`].
    ActionDone {
        op_id: u64,
        result: Result<Outcome, BackendError>,
    },
    /// Results that arrived together: recorded in order, then planned for once.
    ActionsDone(Vec<(u64, Result<Outcome, BackendError>)>),
    /// Time passed (the driver woke the engine at or after its [`Command::WakeAt`]).
    Tick,
    /// Look at the world now rather than at the next deadline (an operator's nudge, or a
    /// simulation that just injected drift). Does nothing while a reconciliation runs.
    Resync,
}

/// What the engine asks its driver to do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Make these events durable (one Raft entry); they are applied in the engine already.
    Append(Vec<Event>),
    /// Run this action; answer with [`Input::ActionDone`].
    Run { action: Action, call: BackendCall },
    /// Look at the world; answer with [`Input::Observed`].
    Observe,
    /// The answer to the [`Input::Submit`] just handled, once the appends before it are
    /// durable.
    Verdict(Result<Submission, Vec<Violation>>),
    /// A reconciliation ended in this state.
    Report {
        state: ReconciliationState,
        error: Option<String>,
    },
    /// Wake the engine with [`Input::Tick`] at this time (replaces any earlier request).
    WakeAt(Duration),
}

/// The same commands with every run of consecutive [`Command::Append`]s merged into one, in
/// order: a driver that writes each append as one log entry then writes the events of one
/// step as one entry wherever nothing else happens between them. No replica ever holds half
/// of what one decision wrote; for instance a first look at a restarted cluster without the
/// `WORKING_TOWARDS_DESIRED_STATE` recorded right after it, which a status read in between
/// would report as the old `AT_DESIRED_STATE` over programs that do not run yet.
pub fn coalesce_appends(commands: Vec<Command>) -> Vec<Command> {
    let mut out: Vec<Command> = Vec::with_capacity(commands.len());
    for c in commands {
        match (out.last_mut(), c) {
            (Some(Command::Append(last)), Command::Append(events)) => last.extend(events),
            (_, c) => out.push(c),
        }
    }
    out
}

/// How soon a new leader looks again when some agents did not answer its first look.
const FIRST_LOOK_RETRY: Duration = Duration::from_millis(500);

/// Where the engine is between inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Resting until `Tick` at the deadline (or a submission).
    Idle,
    /// A reconciliation is about to begin: waiting for the first observation.
    Starting,
    /// Actions are planned and running.
    Working,
}

/// The reconcile engine of one leader over one cluster.
pub struct Engine {
    state: ClusterState,
    policy: Box<dyn Policy>,
    phase: Phase,
    /// An observation was asked for and has not come back; nothing is planned meanwhile.
    observing: bool,
    /// Actions started in the current reconciliation.
    started: u64,
    /// Why the current reconciliation gives up (it starts nothing more and ends in
    /// `ERROR_STATE` once the running actions are done).
    give_up: Option<String>,
    /// Reconciliations in a row that ended in `ERROR_STATE`.
    failed_rounds: u32,
    /// When to rest until (Idle) or observe next (Working).
    deadline: Option<Duration>,
    /// The last wake-up asked for, so it is asked once.
    asked_wake: Option<Duration>,
    /// When this agent began to lead: a new leader waits (up to the policy's patience)
    /// for every running VM's agent to answer before it vouches for the state on record.
    leading_since: Option<Duration>,
    /// The agents the membership wants as voters that did not vote at the last look: until
    /// they do, losing one agent could leave the group without a leader, so the desired
    /// state is not reported reached.
    voters_missing: BTreeSet<String>,
    /// Since when a reconciliation with nothing left to do waits for those voters.
    voters_wait_since: Option<Duration>,
    /// Observations tell about the voters (a Raft group is behind this engine).
    voters_tracked: bool,
    /// The voters were looked at after the last action ended (a VM just created brings an
    /// agent the last look did not know).
    voters_fresh: bool,
    /// When this leader first saw each VM that is down. Not replicated: a new leader
    /// waits a whole grace period again, which errs on the side of keeping data.
    down_since: BTreeMap<String, Duration>,
    /// The planner proposed nothing for the state as it is now: planning again before an
    /// event changes it would propose nothing again (the planner is a pure function of the
    /// state), so periodic observations that find nothing new skip it.
    planned_nothing: bool,
    /// The configuration files of the state and their fingerprints, kept across planning
    /// rounds and emptied by every event that may change what they are made of.
    config: ConfigCache,
    out: Vec<Command>,
}

impl Engine {
    /// An engine over `state` (the committed state, for a new leader); it does nothing until
    /// [`Input::Leading`].
    pub fn new(state: ClusterState, policy: Box<dyn Policy>) -> Self {
        Engine {
            state,
            policy,
            phase: Phase::Idle,
            observing: false,
            started: 0,
            give_up: None,
            failed_rounds: 0,
            deadline: None,
            asked_wake: None,
            leading_since: None,
            voters_missing: BTreeSet::new(),
            voters_wait_since: None,
            voters_tracked: false,
            voters_fresh: false,
            down_since: BTreeMap::new(),
            planned_nothing: false,
            config: ConfigCache::default(),
            out: Vec::new(),
        }
    }

    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    /// Whether a reconciliation is under way (observing first, or acting).
    pub fn is_busy(&self) -> bool {
        self.phase != Phase::Idle
    }

    /// Handles one input at time `now` and returns what the driver must do, in order.
    pub fn step(&mut self, now: Duration, input: Input) -> Vec<Command> {
        match input {
            Input::Leading { vm } => {
                // Recorded also when the same agent leads again: until it has looked at the
                // world, the reconciliation state on record is not vouched for.
                self.record(vec![Event::LeaderChanged { vm }]);
                self.leading_since = Some(now);
                self.begin(now);
            }
            Input::Submit(d) => self.on_submit(now, *d),
            Input::Observed(r) => self.on_observed(now, r),
            Input::ActionDone { op_id, result } => self.on_actions_done(now, vec![(op_id, result)]),
            Input::ActionsDone(results) => self.on_actions_done(now, results),
            Input::Tick => self.on_tick(now),
            Input::Resync => {
                if self.phase == Phase::Idle {
                    self.begin(now);
                }
            }
        }
        if self.deadline != self.asked_wake {
            self.asked_wake = self.deadline;
            if let Some(t) = self.deadline {
                self.out.push(Command::WakeAt(t));
            }
        }
        std::mem::take(&mut self.out)
    }

    /// Applies events and asks for them to be made durable (one entry).
    fn record(&mut self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        for ev in &events {
            self.apply(ev);
        }
        self.planned_nothing = false;
        self.out.push(Command::Append(events));
    }

    /// Applies one event to the state, forgetting the configuration files it may change.
    fn apply(&mut self, ev: &Event) {
        if self.state.changes_config_inputs(ev) {
            self.config = ConfigCache::default();
        }
        self.state.apply(ev);
    }

    fn observe(&mut self) {
        if !self.observing {
            self.observing = true;
            self.out.push(Command::Observe);
        }
    }

    /// A reconciliation begins: look at the world first.
    fn begin(&mut self, _now: Duration) {
        self.deadline = None;
        if self.state.accepted.is_none() {
            // Nothing to reconcile until a desired state arrives.
            self.phase = Phase::Idle;
            return;
        }
        self.phase = Phase::Starting;
        self.observe();
    }

    fn on_submit(&mut self, now: Duration, d: DesiredState) {
        // The same state again, unchanged: a client retrying after a lost reply (its first
        // try was recorded) gets the first answer, and nothing is recorded twice.
        if self.state.pending.as_ref() == Some(&d) {
            self.out.push(Command::Verdict(Ok(Submission::Queued)));
            return;
        }
        if self.state.pending.is_none() && self.state.accepted.as_ref() == Some(&d) {
            self.out.push(Command::Verdict(Ok(Submission::Accepted)));
            return;
        }
        if let Err(v) = self.validate(&d, true) {
            self.out.push(Command::Verdict(Err(v)));
            return;
        }
        if self.state.reconciliation == ReconciliationState::WORKING_TOWARDS_DESIRED_STATE {
            info!(
                desired_id = d.id,
                "desired state queued until the current one is reached"
            );
            self.record(vec![Event::Queued(d)]);
            self.out.push(Command::Verdict(Ok(Submission::Queued)));
        } else {
            info!(desired_id = d.id, "desired state accepted");
            self.record(vec![Event::Accepted(d)]);
            self.out.push(Command::Verdict(Ok(Submission::Accepted)));
            self.failed_rounds = 0;
            if self.phase == Phase::Idle {
                self.begin(now);
            }
        }
    }

    /// The desired state's own rules and the transition from the accepted one. Bad input
    /// changes nothing.
    fn validate(&self, d: &DesiredState, against_pending: bool) -> Result<(), Vec<Violation>> {
        let mut v = desired::validate(d);
        match &self.state.accepted {
            Some(old) => v.extend(desired::validate_transition(
                old,
                d,
                TransitionContext {
                    rondb_has_run: self.state.rondb_has_run,
                },
            )),
            None => v.extend(desired::validate_first(d)),
        }
        if let Some(p) = self.state.pending.as_ref().filter(|_| against_pending) {
            if d.id <= p.id {
                v.push(Violation {
                    field: "Id".into(),
                    value: Some(d.id.to_string()),
                    old: Some(p.id.to_string()),
                    rule: "must be larger than the pending desired state's Id".into(),
                });
            }
        }
        if v.is_empty() {
            Ok(())
        } else {
            Err(v)
        }
    }

    fn on_observed(&mut self, now: Duration, r: Result<Observation, BackendError>) {
        self.observing = false;
        match r {
            Ok(obs) => {
                if !self.state.world_seen && self.phase == Phase::Starting {
                    if let Some(silent) = self.silent_agents(now, &obs) {
                        // After a whole-cluster restart the VMs run again before their
                        // agents answer; what the log says their programs were doing is from
                        // before the restart and must not be reported as the truth.
                        info!(vms = %silent, "waiting for the agents of these VMs to answer before vouching for the cluster's state");
                        self.deadline =
                            Some(now + self.policy.observe_every().min(FIRST_LOOK_RETRY));
                        return;
                    }
                }
                if let Some(m) = &obs.voters_missing {
                    self.voters_missing.clone_from(m);
                    self.voters_tracked = true;
                    self.voters_fresh = true;
                }
                // The first look of a leader is always recorded: it vouches for the state.
                if !self.state.world_seen || self.observation_changes(&obs) {
                    self.record(vec![Event::Observed {
                        vms: obs.vms,
                        programs: obs.programs,
                    }]);
                }
            }
            Err(e) => warn!(error = %e, "cannot observe the world; keeping what is known"),
        }
        self.give_up_down_vms(now);
        match self.phase {
            Phase::Starting => self.start_working(now),
            Phase::Working => self.drive(now),
            Phase::Idle => {}
        }
    }

    /// VMs down for longer than `VmDownGraceSeconds` are given up (and so replaced), but
    /// only where that loses nothing: a data node's group must keep a started replica to
    /// copy its rows from. A node group whose every replica is down is waited for.
    fn give_up_down_vms(&mut self, now: Duration) {
        let Some(grace) = self
            .state
            .accepted
            .as_ref()
            .map(|d| Duration::from_secs(d.vm_down_grace_seconds))
        else {
            return;
        };
        let s = &self.state;
        self.down_since
            .retain(|vm, _| s.vms.get(vm).is_some_and(|v| v.down));
        let mut events = Vec::new();
        for v in s.vms.values().filter(|v| v.down) {
            let since = *self.down_since.entry(v.name.clone()).or_insert(now);
            let busy = s.in_flight.values().any(|a| a.kind.vm() == Some(&v.name));
            if now.saturating_sub(since) < grace || busy {
                continue;
            }
            let replica_left = v.role != Role::Ndbd
                || s.vms_of(Role::Ndbd).any(|w| {
                    w.name != v.name && w.node_group == v.node_group && w.running && !w.down
                });
            if !replica_left {
                continue;
            }
            events.push(Event::VmAbandoned {
                vm: v.name.clone(),
                reason: format!(
                    "down for {:.0} s, longer than VmDownGraceSeconds ({} s)",
                    now.saturating_sub(since).as_secs_f64(),
                    grace.as_secs()
                ),
            });
        }
        for ev in &events {
            if let Event::VmAbandoned { vm, .. } = ev {
                self.down_since.remove(vm);
            }
        }
        self.record(events);
    }

    /// The known, running VMs whose agent did not answer a new leader's look, while the
    /// leader is still willing to wait for them (a VM whose agent stays silent longer than
    /// the policy's patience is taken as the log has it, and its actions will tell).
    fn silent_agents(&self, now: Duration, obs: &Observation) -> Option<String> {
        let since = self.leading_since?;
        if now.saturating_sub(since) >= self.policy.first_look_patience() {
            return None;
        }
        let silent: Vec<&str> = obs
            .vms
            .iter()
            .filter(|v| v.state != VmState::Down && obs.unanswered.contains(&v.name))
            .filter(|v| self.state.vms.contains_key(&v.name))
            .map(|v| v.name.as_str())
            .collect();
        (!silent.is_empty()).then(|| silent.join(", "))
    }

    /// Whether an observation tells something new: a known VM gone, down or back, a
    /// program that started or stopped behind the leader's back, or whether a program whose
    /// start failed runs after all.
    fn observation_changes(&self, obs: &Observation) -> bool {
        let present: BTreeMap<&str, VmState> =
            obs.vms.iter().map(|v| (v.name.as_str(), v.state)).collect();
        self.state.vms.values().any(|v| {
            present
                .get(v.name.as_str())
                .is_none_or(|st| (*st == VmState::Down) != v.down)
                || obs
                    .programs
                    .get(&v.name)
                    .is_some_and(|p| p.running != v.running || v.start_unconfirmed)
        })
    }

    /// After the first observation of a reconciliation: rest if the cluster is where it
    /// should be, otherwise work (resuming the actions a previous leader left in flight).
    fn start_working(&mut self, now: Duration) {
        let Some(d) = self.state.accepted.clone() else {
            self.phase = Phase::Idle;
            return;
        };
        if self.state.reconciliation != ReconciliationState::WORKING_TOWARDS_DESIRED_STATE
            && self.state.in_flight.is_empty()
            && self.voters_missing.is_empty()
            && diff_with(&d, &self.state, &mut self.config).is_empty()
        {
            if self.state.reconciliation == ReconciliationState::ERROR_STATE {
                // What failed is no longer missing (the world healed, or a retry of an
                // earlier round got there): say so.
                self.finish(now);
            } else {
                self.rest(now);
            }
            return;
        }
        if self.state.reconciliation != ReconciliationState::WORKING_TOWARDS_DESIRED_STATE {
            // Drift, or a retry from ERROR_STATE: work again.
            self.record(vec![Event::ReconciliationChanged {
                state: ReconciliationState::WORKING_TOWARDS_DESIRED_STATE,
                error: None,
            }]);
        }
        self.phase = Phase::Working;
        self.started = 0;
        self.give_up = None;
        self.deadline = Some(now + self.policy.observe_every());
        // Actions a previous leader started and did not record: run them again under the
        // same operation id (agents answer a repeated id with its first result).
        let resumed: Vec<Action> = self.state.in_flight.values().cloned().collect();
        for action in resumed {
            info!(op_id = action.op_id, desired_id = d.id, "resume {action}");
            let call = call::prepare_with(&d, &self.state, &action, &mut self.config.config_ini);
            self.out.push(Command::Run { action, call });
        }
        self.drive(now);
    }

    /// Starts every safe action the planner proposes; ends the reconciliation when nothing
    /// runs any more.
    fn drive(&mut self, now: Duration) {
        if self.phase != Phase::Working || self.observing {
            // Planning waits for the observation asked for (after a failure, or periodic).
            return;
        }
        let Some(d) = self.state.accepted.as_ref() else {
            return;
        };
        if self.started > self.policy.max_actions() && self.give_up.is_none() {
            self.give_up = Some(format!(
                "the reconciliation does not converge: {} actions started; this is a planner bug, please report it with the desired state",
                self.started
            ));
        }
        if self.give_up.is_none() {
            let kinds = if self.planned_nothing {
                Vec::new()
            } else {
                plan_with(d, &self.state, &mut self.config)
            };
            self.planned_nothing = kinds.is_empty();
            let mut batch = Vec::with_capacity(kinds.len());
            let mut runs = Vec::with_capacity(kinds.len());
            // Every call is prepared from the state before the batch starts: starting an
            // action changes only what is in flight and the id counters, which no call
            // reads, so the desired state need not be copied out of the state to apply the
            // starts one by one.
            for (op_id, kind) in (self.state.next_op_id..).zip(kinds) {
                let action = Action { op_id, kind };
                self.started += 1;
                info!(op_id = action.op_id, desired_id = d.id, "start {action}");
                let call = call::prepare_with(d, &self.state, &action, &mut self.config.config_ini);
                batch.push(Event::ActionStarted(action.clone()));
                runs.push(Command::Run { action, call });
            }
            for ev in &batch {
                self.apply(ev);
            }
            // Journaled (one entry) before any of them runs, so a new leader knows what may
            // have started.
            if !batch.is_empty() {
                self.out.push(Command::Append(batch));
                self.out.extend(runs);
            }
        }
        if self.state.in_flight.is_empty() && !self.waiting_for_voters(now) {
            self.finish(now);
        }
    }

    /// Nothing is left to do but some agents do not vote yet: look again soon rather than
    /// report the desired state reached. Past the policy's patience the reconciliation
    /// gives up and says which agents never became voters.
    fn waiting_for_voters(&mut self, now: Duration) -> bool {
        if self.give_up.is_some() {
            self.voters_wait_since = None;
            return false;
        }
        if self.voters_tracked && !self.voters_fresh {
            // Look at the voters as the last actions left them before saying anything.
            self.observe();
            return true;
        }
        if self.voters_missing.is_empty() {
            self.voters_wait_since = None;
            return false;
        }
        let since = *self.voters_wait_since.get_or_insert(now);
        let missing = self
            .voters_missing
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        let waited = now.saturating_sub(since);
        if waited >= self.policy.first_look_patience() {
            self.give_up = Some(format!(
                "the agents of {missing} did not become Raft voters within {:.0} s: losing one agent could leave the cluster without a leader; check that they run and reach the leader",
                waited.as_secs_f64()
            ));
            self.voters_wait_since = None;
            return false;
        }
        info!(agents = %missing, "the cluster is as desired; waiting for these agents to become Raft voters before reporting it reached");
        self.deadline = Some(now + self.policy.observe_every().min(FIRST_LOOK_RETRY));
        true
    }

    /// The reconciliation ends: report where it got, then take the pending desired state.
    fn finish(&mut self, now: Duration) {
        let Some(d) = self.state.accepted.as_ref() else {
            self.phase = Phase::Idle;
            return;
        };
        let desired_id = d.id;
        let (state, error) = match self.give_up.take() {
            Some(e) => (ReconciliationState::ERROR_STATE, Some(e)),
            None => {
                let left = diff_with(d, &self.state, &mut self.config);
                if left.is_empty() {
                    (ReconciliationState::AT_DESIRED_STATE, None)
                } else {
                    let e = format!(
                        "no safe action is left but the cluster still differs: {}",
                        left.iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("; ")
                    );
                    (ReconciliationState::ERROR_STATE, Some(e))
                }
            }
        };
        match &error {
            Some(e) => warn!(desired_id, error = %e, "reconciliation failed"),
            None => info!(desired_id, "at desired state"),
        }
        self.record(vec![Event::ReconciliationChanged {
            state,
            error: error.clone(),
        }]);
        self.out.push(Command::Report { state, error });
        self.phase = Phase::Idle;
        self.failed_rounds = if state == ReconciliationState::ERROR_STATE {
            self.failed_rounds + 1
        } else {
            0
        };
        if let Some(p) = self.state.pending.clone() {
            // Validated again: the rules may depend on what the cluster did meanwhile.
            match self.validate(&p, false) {
                Ok(()) => {
                    info!(desired_id = p.id, "pending desired state accepted");
                    self.record(vec![Event::Accepted(p)]);
                    self.failed_rounds = 0;
                    self.begin(now);
                    return;
                }
                Err(v) => {
                    let reason = v
                        .iter()
                        .map(|x| x.to_string())
                        .collect::<Vec<_>>()
                        .join("; ");
                    warn!(desired_id = p.id, %reason, "pending desired state no longer valid; dropped");
                    self.record(vec![Event::PendingDropped { id: p.id, reason }]);
                }
            }
        }
        self.rest(now);
    }

    /// Rests until the policy says to look again.
    fn rest(&mut self, now: Duration) {
        self.phase = Phase::Idle;
        let pause = self
            .policy
            .requeue_after(self.state.reconciliation, self.failed_rounds);
        self.deadline = Some(now + pause);
    }

    fn on_actions_done(
        &mut self,
        now: Duration,
        results: Vec<(u64, Result<Outcome, BackendError>)>,
    ) {
        let mut any = false;
        for (op_id, result) in results {
            any |= self.on_action_done(op_id, result);
        }
        if any {
            self.voters_fresh = false;
        }
        if any {
            self.drive(now);
        }
    }

    /// Records one result; false if it was not in flight.
    fn on_action_done(&mut self, op_id: u64, result: Result<Outcome, BackendError>) -> bool {
        let Some(action) = self.state.in_flight.get(&op_id) else {
            // Not in flight (answered twice, or from before a restart): already recorded.
            return false;
        };
        let desired_id = self.state.accepted.as_ref().map(|d| d.id);
        match result {
            Ok(outcome) => {
                info!(op_id, ?desired_id, "done {action}");
                self.record(vec![Event::ActionSucceeded { op_id, outcome }]);
            }
            Err(e) => {
                // Copied only here: the policy judges the failure after it is recorded.
                let action = action.clone();
                let drift = e.is_drift();
                warn!(op_id, ?desired_id, error = %e, "failed {action}");
                self.record(vec![Event::ActionFailed {
                    op_id,
                    error: e.to_string(),
                    drift,
                }]);
                if !drift {
                    let attempts = self
                        .state
                        .failures
                        .get(&action.kind.retry_key())
                        .copied()
                        .unwrap_or(0);
                    if let FailureVerdict::GiveUp { reason } =
                        self.policy.on_failure(&action, &e, attempts)
                    {
                        self.give_up.get_or_insert(reason);
                    }
                }
                // Drift means the world changed; a failure may come from drift too (a
                // program died): look before planning again.
                self.observe();
            }
        }
        true
    }

    fn on_tick(&mut self, now: Duration) {
        let Some(at) = self.deadline.filter(|at| *at <= now) else {
            return;
        };
        match self.phase {
            Phase::Idle => {
                let _ = at;
                self.begin(now);
            }
            Phase::Working => {
                self.deadline = Some(now + self.policy.observe_every());
                self.observe();
            }
            Phase::Starting => {
                // A new leader looks again for agents that had not answered yet.
                self.deadline = None;
                self.observe();
            }
        }
    }
}

//! The async driver of the reconcile engine (`agent_core::engine`): it turns the engine's
//! commands into I/O — events into the Raft log, actions into backend calls run
//! concurrently, observations of the world, wake-ups on the tokio clock — and feeds the
//! results back as inputs. Every decision is the engine's.

use crate::backend::{BackendError, CloudProvider, OpId, ProcessRuntime, ProgramStatus};
use crate::desired::{DesiredState, Violation};
use crate::model::{ClusterState, Event, Outcome};
pub use agent_core::engine::Submission;
use agent_core::engine::{Command, Engine, Input, Observation, StandardPolicy};
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tracing::{warn, Instrument};

/// Knobs of the loop: the engine's standard policy (attempts per action, observation
/// period, action cap, backoff).
pub type ReconcilerConfig = StandardPolicy;

/// Where events become durable before they take effect: the Raft log on a real cluster.
/// An error means this reconciler may no longer write (leadership lost): it stops at once,
/// and the new leader resumes from what was committed.
#[async_trait::async_trait]
pub trait Journal: Send + Sync {
    async fn append(&self, events: Vec<Event>) -> Result<(), JournalError>;
}

/// Why the log did not take a write. Either way this reconciler stops writing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JournalError {
    /// Another agent leads now, or none is known yet.
    #[error("this agent no longer leads{}", leader.as_ref().map(|l| format!("; {l} does")).unwrap_or_default())]
    NotLeader { leader: Option<String> },
    /// The log could not take the write (its storage failed, or the Raft node stopped).
    #[error("the replicated log refused the write: {0}")]
    Refused(String),
}

/// A desired state handed to a running reconciler, with where to send the verdict.
pub struct Submit {
    pub desired: DesiredState,
    pub reply: tokio::sync::oneshot::Sender<Result<Submission, Vec<Violation>>>,
}

type Running = BoxFuture<'static, (u64, Result<Outcome, BackendError>)>;
type Observing = BoxFuture<'static, Result<Observation, BackendError>>;

/// The leader's reconciler over one cluster.
pub struct Reconciler {
    provider: Arc<dyn CloudProvider>,
    runtime: Arc<dyn ProcessRuntime>,
    engine: Engine,
    journal: Option<Arc<dyn Journal>>,
    inbox: Option<tokio::sync::mpsc::Receiver<Submit>>,
    /// Set when the journal refused a write: this reconciler must stop.
    halted: Option<JournalError>,
    /// The engine's time zero.
    epoch: tokio::time::Instant,
    running: FuturesUnordered<Running>,
    observing: Option<Observing>,
    wake_at: Option<Duration>,
    /// Where the last look at every VM's program is published (for `GET /status`).
    programs_seen: Option<ProgramsSeen>,
    /// The Raft membership, asked at every look whether the voters are settled.
    membership: Option<Arc<crate::membership::Membership>>,
}

/// The leader's last look at every VM's program, RonDB's view included. Not replicated:
/// it is only as fresh as the observation that made it, and a new leader looks again.
pub type ProgramsSeen = Arc<std::sync::Mutex<BTreeMap<String, ProgramStatus>>>;

impl Reconciler {
    pub fn new(
        provider: Arc<dyn CloudProvider>,
        runtime: Arc<dyn ProcessRuntime>,
        state: ClusterState,
        config: ReconcilerConfig,
    ) -> Self {
        Reconciler {
            provider,
            runtime,
            engine: Engine::new(state, Box::new(config)),
            journal: None,
            inbox: None,
            halted: None,
            epoch: tokio::time::Instant::now(),
            running: FuturesUnordered::new(),
            observing: None,
            wake_at: None,
            programs_seen: None,
            membership: None,
        }
    }

    /// Asks `membership` at every look whether every agent that should vote does: the
    /// desired state is reported reached only then.
    pub fn with_membership(mut self, membership: Arc<crate::membership::Membership>) -> Self {
        self.membership = Some(membership);
        self
    }

    /// Publishes every observation's program statuses there.
    pub fn with_programs_seen(mut self, seen: ProgramsSeen) -> Self {
        self.programs_seen = Some(seen);
        self
    }

    /// Makes every event durable through `journal` before anything after it happens.
    pub fn with_journal(mut self, journal: Arc<dyn Journal>) -> Self {
        self.journal = Some(journal);
        self
    }

    /// Desired states submitted while the reconciler runs ([`Reconciler::serve`]).
    pub fn with_inbox(mut self, inbox: tokio::sync::mpsc::Receiver<Submit>) -> Self {
        self.inbox = Some(inbox);
        self
    }

    /// Records that this reconciler's agent (on `vm`) leads now, and starts reconciling.
    pub async fn record_leader(&mut self, vm: &str) {
        self.step(Input::Leading { vm: vm.to_string() }).await;
    }

    /// Why the reconciler stopped writing, if it did.
    pub fn halted(&self) -> Option<&JournalError> {
        self.halted.as_ref()
    }

    pub fn state(&self) -> &ClusterState {
        self.engine.state()
    }

    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// Feeds one input to the engine and carries out its commands; returns the verdict on a
    /// submission.
    async fn step(&mut self, input: Input) -> Option<Result<Submission, Vec<Violation>>> {
        if self.halted.is_some() {
            return None;
        }
        let is_submit = matches!(input, Input::Submit(_));
        // One log entry per run of appends: a reader of any replica sees a step's events
        // all or none.
        let commands = agent_core::engine::coalesce_appends(self.engine.step(self.now(), input));
        let mut verdict = None;
        for c in commands {
            match c {
                Command::Append(events) => {
                    if let Some(j) = &self.journal {
                        if let Err(e) = j.append(events.clone()).await {
                            warn!(error = %e, "cannot record events; this reconciler stops");
                            self.halted = Some(e.clone());
                            // Nothing after a refused write happens; a submitter hears why.
                            return is_submit.then(|| Err(not_recorded(&e)));
                        }
                    }
                }
                Command::Run { action, call } => {
                    let provider = Arc::clone(&self.provider);
                    let runtime = Arc::clone(&self.runtime);
                    let op_id = action.op_id;
                    let desired_id = self.engine.state().accepted.as_ref().map(|d| d.id);
                    let span = tracing::info_span!("action", op_id, desired_id);
                    self.running.push(Box::pin(
                        async move {
                            (
                                op_id,
                                call.execute(OpId(op_id), &*provider, &*runtime).await,
                            )
                        }
                        .instrument(span),
                    ));
                }
                Command::Observe => self.observing = Some(self.observation()),
                Command::Verdict(v) => verdict = Some(v),
                // The outcome is in the log already (ReconciliationChanged); the engine
                // logged it.
                Command::Report { .. } => {}
                Command::WakeAt(t) => self.wake_at = Some(t),
            }
        }
        verdict
    }

    /// Looks at the world: the provider's VMs, and the program of every VM the state knows,
    /// all at once (one slow or dead agent must not delay the others).
    fn observation(&self) -> Observing {
        let provider = Arc::clone(&self.provider);
        let runtime = Arc::clone(&self.runtime);
        let known: BTreeSet<String> = self.engine.state().vms.keys().cloned().collect();
        let members = self.membership.clone();
        Box::pin(async move {
            let vms = provider.list_vms().await?;
            let queries = vms.iter().filter(|vm| known.contains(&vm.name)).map(|vm| {
                let runtime = Arc::clone(&runtime);
                async move { (vm.name.clone(), runtime.status(&vm.name).await) }
            });
            let mut programs = BTreeMap::new();
            let mut unanswered = BTreeSet::new();
            for (name, r) in futures::future::join_all(queries).await {
                match r {
                    Ok(st) => {
                        programs.insert(name, st);
                    }
                    Err(e) if e.is_drift() => {}
                    Err(e) => {
                        warn!(vm = %name, error = %e, "cannot query program status");
                        unanswered.insert(name);
                    }
                }
            }
            let voters_missing = match &members {
                Some(m) => match m.settle_voters().await {
                    Ok(missing) => Some(missing),
                    Err(e) => {
                        warn!(error = %e, "cannot check the Raft voters");
                        None
                    }
                },
                None => None,
            };
            Ok(Observation {
                vms,
                programs,
                unanswered,
                voters_missing,
            })
        })
    }

    /// Waits for the next thing the engine must hear about and hands it over. Returns false
    /// when there is nothing to wait for.
    async fn next(&mut self) -> bool {
        let wake = self.wake_at.map(|t| self.epoch + t);
        let has_running = !self.running.is_empty();
        let has_observing = self.observing.is_some();
        let observing = &mut self.observing;
        let input = tokio::select! {
            Some((op_id, result)) = self.running.next(), if has_running => {
                Input::ActionDone { op_id, result }
            }
            r = async {
                match observing.as_mut() {
                    Some(f) => f.await,
                    None => std::future::pending().await,
                }
            }, if has_observing => {
                self.observing = None;
                if let (Ok(o), Some(seen)) = (&r, &self.programs_seen) {
                    if let Ok(mut m) = seen.lock() {
                        m.clone_from(&o.programs);
                    }
                }
                Input::Observed(r)
            }
            _ = tokio::time::sleep_until(wake.unwrap_or(self.epoch)), if wake.is_some() => {
                self.wake_at = None;
                Input::Tick
            }
            Some(m) = recv(&mut self.inbox) => {
                let verdict = self.submit(m.desired).await;
                let _ = m.reply.send(verdict);
                return true;
            }
            else => return false,
        };
        self.step(input).await;
        true
    }

    /// Runs as the leader's reconciler until the journal refuses a write: reconciles, takes
    /// submissions from the inbox, and observes for drift while idle.
    pub async fn serve(&mut self) -> JournalError {
        loop {
            if let Some(h) = &self.halted {
                return h.clone();
            }
            if !self.next().await {
                // No inbox and nothing scheduled: nothing can ever happen again.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Validates a desired state against its own rules and the transition from the accepted
    /// one. Bad input changes nothing; a good one is accepted now or queued as pending.
    pub async fn submit(&mut self, d: DesiredState) -> Result<Submission, Vec<Violation>> {
        match self.step(Input::Submit(Box::new(d))).await {
            Some(v) => v,
            None => Err(not_recorded(
                self.halted
                    .as_ref()
                    .unwrap_or(&JournalError::NotLeader { leader: None }),
            )),
        }
    }
}

fn not_recorded(e: &JournalError) -> Vec<Violation> {
    vec![Violation {
        field: "Id".into(),
        value: None,
        old: None,
        rule: format!("not recorded, submit it again: {e}"),
    }]
}

/// The next submission, or never when there is no inbox.
async fn recv(inbox: &mut Option<tokio::sync::mpsc::Receiver<Submit>>) -> Option<Submit> {
    match inbox {
        Some(i) => i.recv().await,
        None => std::future::pending().await,
    }
}

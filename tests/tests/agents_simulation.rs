//! Deterministic simulation of the agents: five agents, each with the product's Raft node
//! (openraft over the redb store), state machine and reconciler, over a simulated network in
//! simulated time (one tokio thread, paused clock), acting on the simulated world of the mock
//! provider and the dummy runtime. A seeded schedule partitions agents, crashes them (Raft
//! shut down, started again from its store), and loses messages while random desired states
//! are submitted and reconciled. After the faults stop it checks:
//!
//! - at most one leader per Raft term;
//! - every desired state acknowledged to the client is in the committed log, and the last
//!   one is the accepted state, reached (`AT_DESIRED_STATE`, nothing in flight);
//! - no action executed twice: every operation id is started once in the committed log,
//!   and every call the world received carries an operation id started there, for the same
//!   call (a deposed leader that acted without the log would show here);
//! - every agent holds the same state, and replaying the committed log gives that state with
//!   no safety rule broken.
//!
//! `AGENT_SIM_SEEDS=N` sets the number of seeds (CI: the default below); `AGENT_SIM_SEED=S`
//! replays one seed. A failure names its seed. The seed fixes the faults, the desired
//! states, the network's latencies and losses and every agent's election timeout; the one
//! thing it does not fix is the order in which tokio's `select!` polls branches that are
//! ready at the same simulated instant.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]
// openraft's network trait fixes the error type (`RPCError`); the helpers return it too.
#![allow(clippy::result_large_err)]

use agent::raft::{store, AgentNode, NodeId, Raft, RaftJournal, Replicated, Request, TypeConfig};
use agent::{Reconciler, ReconcilerConfig, Submission, Submit};
use agent_core::desired::DesiredState;
use agent_core::engine::BackendCall;
use agent_core::invariants::InvariantChecker;
use agent_core::model::{ClusterState, Event, ReconciliationState};
use integration_tests::generator::{self, FOREIGN_BACKUP};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{EntryPayload, RaftLogReader, ServerState};
use providers::mock::MockProvider;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use runtime_backends::dummy::DummyRuntime;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sim_world::{lock, FaultConfig, SharedWorld, SinkBackup, World};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

const AGENTS: u64 = 5;
/// At most this many agents are crashed or cut off at once: a majority stays.
const MAX_DOWN: usize = 2;
const DESIRED_STATES: u64 = 2;
const HEARTBEAT_MS: u64 = 100;

fn seeds() -> Vec<u64> {
    if let Some(s) = std::env::var("AGENT_SIM_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return vec![s];
    }
    let n: u64 = std::env::var("AGENT_SIM_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    (1..=n).collect()
}

#[test]
fn agents_survive_partitions_crashes_and_message_loss() {
    let started = std::time::Instant::now();
    let seeds = seeds();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let totals = Mutex::new(Totals::default());
    let failures = Mutex::new(BTreeMap::<u64, String>::new());
    // Two workers (the machine's cores), each seed on a runtime of its own: a seed's run
    // does not depend on which worker takes it.
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| loop {
                let k = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Some(&seed) = seeds.get(k) else { return };
                if !failures.lock().unwrap().is_empty() {
                    return;
                }
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .start_paused(true)
                    .build()
                    .unwrap();
                let t = std::time::Instant::now();
                match rt.block_on(run(seed)) {
                    Ok(r) => {
                        eprintln!(
                            "seed {seed}: {} desired state(s) reached; {} partition(s), {} \
                             crash(es), {} loss period(s); {} term(s) committed entries; back \
                             {:.1} s after the faults stopped; {:.0} s simulated in {:.2} s; \
                             log {}",
                            r.acked,
                            r.partitions,
                            r.crashes,
                            r.losses,
                            r.terms,
                            r.recovery_s,
                            r.simulated_s,
                            t.elapsed().as_secs_f64(),
                            r.log_digest
                        );
                        totals.lock().unwrap().add(&r);
                    }
                    Err(e) => {
                        failures.lock().unwrap().insert(seed, e);
                    }
                }
            });
        }
    });
    if let Some((seed, e)) = failures.into_inner().unwrap().into_iter().next() {
        panic!(
            "seed {seed}: {e}\nreplay: AGENT_SIM_SEED={seed} cargo test --release --locked \
             -p integration-tests --test agents_simulation"
        );
    }
    let totals = totals.into_inner().unwrap();
    eprintln!(
        "{} seed(s) in {:.1} s ({:.0} s simulated): {} desired state(s) reached, {} \
         partition(s), {} crash(es), {} loss period(s), {} term(s) committed entries, {} \
         term(s) had two would-be leaders (only one committed), {} action(s) started, {} \
         message(s) dropped of {}; longest recovery after the faults stopped {:.1} s \
         (simulated)",
        totals.seeds,
        started.elapsed().as_secs_f64(),
        totals.simulated_s,
        totals.reached,
        totals.partitions,
        totals.crashes,
        totals.losses,
        totals.terms,
        totals.contested,
        totals.actions,
        totals.dropped,
        totals.sent,
        totals.worst_recovery_s
    );
    let mut f = totals.failovers.clone();
    f.sort_by(f64::total_cmp);
    if !f.is_empty() {
        let at = |q: f64| f[((f.len() - 1) as f64 * q).round() as usize];
        eprintln!(
            "a new leader after the leader was crashed or cut off ({} times, other faults going \
             on): median {:.2} s, 90th percentile {:.2} s, max {:.2} s (simulated; heartbeat \
             {HEARTBEAT_MS} ms)",
            f.len(),
            at(0.5),
            at(0.9),
            at(1.0)
        );
    }
}

/// The same seed twice gives the same committed log.
#[test]
fn a_seed_replays_the_same_run() {
    let digest = |seed| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(run(seed)).unwrap().log_digest
    };
    assert_eq!(digest(7), digest(7));
}

#[derive(Default)]
struct Totals {
    seeds: u64,
    reached: u64,
    partitions: u64,
    crashes: u64,
    losses: u64,
    terms: u64,
    contested: u64,
    actions: u64,
    dropped: u64,
    sent: u64,
    worst_recovery_s: f64,
    simulated_s: f64,
    failovers: Vec<f64>,
}

impl Totals {
    fn add(&mut self, r: &Report) {
        self.seeds += 1;
        self.reached += r.acked;
        self.partitions += r.partitions;
        self.crashes += r.crashes;
        self.losses += r.losses;
        self.terms += r.terms;
        self.contested += r.contested;
        self.failovers.extend(&r.failovers);
        self.simulated_s += r.simulated_s;
        self.actions += r.actions;
        self.dropped += r.dropped;
        self.sent += r.sent;
        self.worst_recovery_s = self.worst_recovery_s.max(r.recovery_s);
    }
}

struct Report {
    /// Seconds from a fault that took the leader to another agent leading.
    failovers: Vec<f64>,
    acked: u64,
    contested: u64,
    simulated_s: f64,
    partitions: u64,
    crashes: u64,
    losses: u64,
    terms: u64,
    actions: u64,
    dropped: u64,
    sent: u64,
    recovery_s: f64,
    log_digest: String,
}

// ---------------------------------------------------------------------------------------
// What happened, for the report of a failing seed.

thread_local! {
    static TRACE: std::cell::RefCell<(Option<Instant>, Vec<String>)> =
        const { std::cell::RefCell::new((None, Vec::new())) };
}

fn note(what: String) {
    TRACE.with(|t| {
        let mut t = t.borrow_mut();
        let start = *t.0.get_or_insert_with(Instant::now);
        let at = start.elapsed().as_secs_f64();
        t.1.push(format!("{at:>10.3} s  {what}"));
    });
}

fn trace_tail(n: usize) -> String {
    TRACE.with(|t| {
        let t = t.borrow();
        t.1[t.1.len().saturating_sub(n)..].join("\n")
    })
}

fn trace_matching(needle: &str) -> String {
    TRACE.with(|t| {
        let t = t.borrow();
        t.1.iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    })
}

fn trace_reset() {
    TRACE.with(|t| *t.borrow_mut() = (None, Vec::new()));
    FAILOVER.with(|f| *f.borrow_mut() = (None, Vec::new()));
}

/// The term whose leader a fault just took (and when), and the seconds each earlier such
/// fault took until a leader of a later term led.
type Failovers = (Option<(Instant, u64)>, Vec<f64>);

thread_local! {
    static FAILOVER: std::cell::RefCell<Failovers> =
        const { std::cell::RefCell::new((None, Vec::new())) };
}

/// The leader of `term` was just crashed or cut off.
fn leader_lost(term: u64) {
    FAILOVER.with(|f| {
        let mut f = f.borrow_mut();
        if f.0.is_none() {
            f.0 = Some((Instant::now(), term));
        }
    });
}

/// An agent leads in `term`: a leader of a later term than the one lost ends a failover.
fn leading_now(term: u64) {
    FAILOVER.with(|f| {
        let mut f = f.borrow_mut();
        if let Some((t, lost)) = f.0 {
            if term > lost {
                f.1.push(t.elapsed().as_secs_f64());
                f.0 = None;
            }
        }
    });
}

fn failovers() -> Vec<f64> {
    FAILOVER.with(|f| f.borrow().1.clone())
}

// ---------------------------------------------------------------------------------------
// The network.

/// Who can reach whom, and what happens to a message on its way.
struct Net {
    rafts: BTreeMap<NodeId, Raft>,
    /// Agents cut off from every other agent.
    isolated: BTreeSet<NodeId>,
    loss: f64,
    rng: ChaCha8Rng,
    sent: u64,
    dropped: u64,
}

type SharedNet = Arc<Mutex<Net>>;

impl Net {
    /// The target's Raft handle and the message's latency, or `None` when it is lost.
    fn hop(&mut self, from: NodeId, to: NodeId) -> Option<(Raft, Duration)> {
        self.sent += 1;
        let latency = Duration::from_micros(self.rng.random_range(300..3_000));
        let lost = self.loss > 0.0 && self.rng.random_bool(self.loss);
        let through = !lost && !self.isolated.contains(&from) && !self.isolated.contains(&to);
        match self.rafts.get(&to) {
            Some(r) if through => Some((r.clone(), latency)),
            _ => {
                self.dropped += 1;
                None
            }
        }
    }
}

struct SimNetwork {
    from: NodeId,
    net: SharedNet,
}

impl RaftNetworkFactory<TypeConfig> for SimNetwork {
    type Network = SimConnection;

    async fn new_client(&mut self, target: NodeId, _node: &AgentNode) -> SimConnection {
        SimConnection {
            from: self.from,
            to: target,
            net: Arc::clone(&self.net),
        }
    }
}

struct SimConnection {
    from: NodeId,
    to: NodeId,
    net: SharedNet,
}

type Rpc<E> = RPCError<NodeId, AgentNode, E>;

fn lost<E: std::error::Error>() -> Rpc<E> {
    let e = std::io::Error::new(std::io::ErrorKind::NotConnected, "message lost");
    RPCError::Unreachable(Unreachable::new(&e))
}

/// What the wire does to a message: it travels as JSON, as between real agents.
fn wire<T: Serialize + DeserializeOwned, E: std::error::Error>(m: &T) -> Result<T, Rpc<E>> {
    serde_json::to_vec(m)
        .and_then(|b| serde_json::from_slice(&b))
        .map_err(|e| RPCError::Network(NetworkError::new(&e)))
}

impl SimConnection {
    /// There: the target's handle after the latency, or the message lost.
    async fn there<E: std::error::Error>(&self) -> Result<Raft, Rpc<E>> {
        let hop = self.net.lock().unwrap().hop(self.from, self.to);
        let (raft, latency) = hop.ok_or_else(lost)?;
        tokio::time::sleep(latency).await;
        Ok(raft)
    }

    /// And back: the reply can be lost too.
    async fn back<E: std::error::Error>(&self) -> Result<(), Rpc<E>> {
        let hop = self.net.lock().unwrap().hop(self.to, self.from);
        let (_, latency) = hop.ok_or_else(lost)?;
        tokio::time::sleep(latency).await;
        Ok(())
    }
}

impl SimConnection {
    /// One call: the request travels, the target's Raft `handle`s it, the reply travels
    /// back, all within openraft's deadline `ttl`.
    async fn call<Req, Resp, E, F, Fut>(
        &self,
        req: &Req,
        ttl: Duration,
        handle: F,
    ) -> Result<Resp, Rpc<E>>
    where
        Req: Serialize + DeserializeOwned,
        Resp: Serialize + DeserializeOwned,
        E: std::error::Error,
        F: FnOnce(Raft, Req) -> Fut,
        Fut: std::future::Future<Output = Result<Resp, E>>,
    {
        let call = async {
            let raft = self.there().await?;
            let reply = handle(raft, wire(req)?)
                .await
                .map_err(|e| RPCError::RemoteError(RemoteError::new(self.to, e)))?;
            self.back().await?;
            wire(&reply)
        };
        tokio::time::timeout(ttl, call)
            .await
            .unwrap_or_else(|_| Err(lost()))
    }
}

impl RaftNetwork<TypeConfig> for SimConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, Rpc<RaftError<NodeId>>> {
        self.call(&rpc, option.hard_ttl(), |raft, rpc| async move {
            raft.append_entries(rpc).await
        })
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, Rpc<RaftError<NodeId, InstallSnapshotError>>> {
        self.call(&rpc, option.hard_ttl(), |raft, rpc| async move {
            raft.install_snapshot(rpc).await
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, Rpc<RaftError<NodeId>>> {
        self.call(&rpc, option.hard_ttl(), |raft, rpc| async move {
            raft.vote(rpc).await
        })
        .await
    }
}

// ---------------------------------------------------------------------------------------
// The agents.

/// Aborts a task when dropped (a dropped `JoinHandle` only detaches it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

type Inbox = Arc<Mutex<Option<mpsc::Sender<Submit>>>>;

/// Which agents led in which term, as their metrics said.
type LeadersByTerm = Arc<Mutex<BTreeMap<u64, BTreeSet<NodeId>>>>;

struct Agent {
    id: NodeId,
    dir: PathBuf,
    election_timeout_ms: u64,
    raft: Option<Raft>,
    view: Option<Arc<RwLock<Replicated>>>,
    inbox: Inbox,
    watch: Option<AbortOnDrop>,
}

fn vm(id: NodeId) -> String {
    format!("agent-{id}")
}

fn node(id: NodeId) -> AgentNode {
    AgentNode {
        vm: vm(id),
        role: "mgmd".into(),
        zone: "zone-a".into(),
        grpc_addr: format!("sim-{id}"),
        http_addr: format!("sim-{id}"),
    }
}

struct Sim {
    agents: Vec<Agent>,
    net: SharedNet,
    world: SharedWorld,
    leaders: LeadersByTerm,
    _dir: tempfile::TempDir,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            tempfile::tempdir_in("/dev/shm")
        } else {
            tempfile::tempdir()
        }
        .unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
        // Distinct timeouts: with a range of one millisecond openraft draws no randomness,
        // and no two agents stand for election at the same instant every time.
        let mut timeouts: Vec<u64> = (0..AGENTS).map(|i| 300 + i * 23).collect();
        for i in (1..timeouts.len()).rev() {
            timeouts.swap(i, rng.random_range(0..=i));
        }
        let agents = (1..=AGENTS)
            .map(|id| {
                let dir = base.path().join(vm(id));
                std::fs::create_dir_all(&dir).unwrap();
                Agent {
                    id,
                    dir,
                    election_timeout_ms: timeouts[(id - 1) as usize] + rng.random_range(0..20),
                    raft: None,
                    view: None,
                    inbox: Arc::default(),
                    watch: None,
                }
            })
            .collect();
        let mut world = World::new(seed, FaultConfig::default(), Default::default());
        world.sink.insert(
            FOREIGN_BACKUP,
            SinkBackup {
                data_nodes: vec![1, 2],
            },
        );
        world.ledger = Some(Vec::new());
        Sim {
            agents,
            net: Arc::new(Mutex::new(Net {
                rafts: BTreeMap::new(),
                isolated: BTreeSet::new(),
                loss: 0.0,
                rng: ChaCha8Rng::seed_from_u64(seed ^ 0x0e7),
                sent: 0,
                dropped: 0,
            })),
            world: world.shared(),
            leaders: Arc::default(),
            _dir: base,
        }
    }

    /// Starts agent `i`'s Raft node from its store, and its leadership watch.
    async fn start(&mut self, i: usize) {
        let a = &mut self.agents[i];
        let path = a.dir.join("raft.redb");
        // A crashed node's store closes once its tasks are gone.
        let mut tries = 0;
        let (log, sm) = loop {
            match store::open(&path) {
                Ok(s) => break s,
                Err(_) if tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("reopening {}: {e}", path.display()),
            }
        };
        let view = sm.shared();
        let config = openraft::Config {
            cluster_name: "managed-rondb".into(),
            heartbeat_interval: HEARTBEAT_MS,
            election_timeout_min: a.election_timeout_ms,
            election_timeout_max: a.election_timeout_ms + 1,
            // The whole log stays: the checks replay it.
            snapshot_policy: openraft::SnapshotPolicy::Never,
            ..Default::default()
        }
        .validate()
        .unwrap();
        let network = SimNetwork {
            from: a.id,
            net: Arc::clone(&self.net),
        };
        let raft = Raft::new(a.id, Arc::new(config), network, log, sm)
            .await
            .unwrap();
        self.net.lock().unwrap().rafts.insert(a.id, raft.clone());
        a.watch = Some(AbortOnDrop(tokio::spawn(watch(
            a.id,
            raft.clone(),
            Arc::clone(&view),
            Arc::clone(&a.inbox),
            Arc::clone(&self.world),
            Arc::clone(&self.leaders),
        ))));
        a.raft = Some(raft);
        a.view = Some(view);
    }

    /// Kills agent `i`: its leader duties and its Raft node stop; its store stays.
    async fn crash(&mut self, i: usize) {
        let a = &mut self.agents[i];
        a.watch = None;
        *a.inbox.lock().unwrap() = None;
        self.net.lock().unwrap().rafts.remove(&a.id);
        if let Some(r) = a.raft.take() {
            let _ = r.shutdown().await;
        }
        a.view = None;
        tokio::task::yield_now().await;
    }

    fn term_of(&self, i: usize) -> u64 {
        self.agents[i]
            .raft
            .as_ref()
            .map_or(0, |r| r.metrics().borrow().current_term)
    }

    fn up(&self, i: usize) -> bool {
        self.agents[i].raft.is_some()
    }

    /// The agent that leads now (by its own metrics) and takes submissions.
    fn leader(&self) -> Option<usize> {
        self.agents.iter().position(|a| {
            a.raft.as_ref().is_some_and(|r| {
                let m = r.metrics();
                let m = m.borrow();
                m.state == ServerState::Leader && m.current_leader == Some(a.id)
            }) && a.inbox.lock().unwrap().is_some()
        })
    }

    fn state_of(&self, i: usize) -> Option<Replicated> {
        self.agents[i]
            .view
            .as_ref()
            .map(|v| v.read().unwrap().clone())
    }
}

/// Starts the leader's duties when the agent leads and stops them when it does not, as the
/// agent's own leadership watch does; records who led in which term.
async fn watch(
    id: NodeId,
    raft: Raft,
    view: Arc<RwLock<Replicated>>,
    inbox: Inbox,
    world: SharedWorld,
    leaders: LeadersByTerm,
) {
    let mut metrics = raft.metrics();
    let mut task: Option<AbortOnDrop> = None;
    loop {
        let (leading, term) = {
            let m = metrics.borrow();
            (
                m.current_leader == Some(id) && m.state == ServerState::Leader,
                m.current_term,
            )
        };
        if leading {
            let fresh = !leaders
                .lock()
                .unwrap()
                .get(&term)
                .is_some_and(|l| l.contains(&id));
            if fresh {
                leading_now(term);
                let m = metrics.borrow();
                note(format!(
                    "agent-{id} leads in term {term} (vote {}, last log {:?})",
                    m.vote, m.last_log_index
                ));
            }
            leaders.lock().unwrap().entry(term).or_default().insert(id);
        }
        let running = task.as_ref().is_some_and(|t| !t.0.is_finished());
        if leading && !running {
            task = Some(AbortOnDrop(tokio::spawn(lead(
                id,
                raft.clone(),
                Arc::clone(&view),
                Arc::clone(&inbox),
                Arc::clone(&world),
            ))));
        } else if !leading && running {
            task = None;
            *inbox.lock().unwrap() = None;
        }
        tokio::select! {
            r = metrics.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// The leader's reconciler, resumed from what the log holds.
async fn lead(
    id: NodeId,
    raft: Raft,
    view: Arc<RwLock<Replicated>>,
    inbox: Inbox,
    world: SharedWorld,
) {
    if raft.ensure_linearizable().await.is_err() {
        return;
    }
    let cluster = view.read().unwrap().cluster.clone();
    let (tx, rx) = mpsc::channel(16);
    *inbox.lock().unwrap() = Some(tx);
    let policy = ReconcilerConfig {
        max_attempts: 3,
        observe_every: Duration::from_secs(30),
        ..Default::default()
    };
    let mut reconciler = Reconciler::new(
        Arc::new(MockProvider::new(Arc::clone(&world))),
        Arc::new(DummyRuntime::new(world)),
        cluster,
        policy,
    )
    .with_journal(Arc::new(RaftJournal::new(raft)))
    .with_inbox(rx);
    reconciler.record_leader(&vm(id)).await;
    let _ = reconciler.serve().await;
    *inbox.lock().unwrap() = None;
}

// ---------------------------------------------------------------------------------------
// One run.

/// Submits `d` to whichever agent leads until one records it or refuses it. `Ok(true)`:
/// acknowledged; `Ok(false)`: refused on its merits.
async fn submit(sim: &tokio::sync::Mutex<Sim>, d: &DesiredState) -> Result<bool, String> {
    let give_up = Instant::now() + Duration::from_secs(3_600);
    while Instant::now() < give_up {
        let tx = {
            let s = sim.lock().await;
            s.leader()
                .and_then(|i| s.agents[i].inbox.lock().unwrap().clone())
        };
        if let Some(tx) = tx {
            let (reply, answer) = oneshot::channel();
            let sent = tx
                .send(Submit {
                    desired: d.clone(),
                    reply,
                })
                .await;
            if sent.is_ok() {
                match tokio::time::timeout(Duration::from_secs(10), answer).await {
                    Ok(Ok(Ok(Submission::Accepted | Submission::Queued))) => return Ok(true),
                    // The leader lost its leadership before the log had it: not recorded.
                    Ok(Ok(Err(v))) if v.iter().any(|v| v.rule.starts_with("not recorded")) => {}
                    Ok(Ok(Err(v))) => {
                        let why: Vec<String> = v.iter().map(|v| v.rule.clone()).collect();
                        eprintln!("desired state {} refused: {why:?}", d.id);
                        return Ok(false);
                    }
                    Ok(Err(_)) | Err(_) => {}
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!(
        "desired state {} found no leader to take it in an hour",
        d.id
    ))
}

/// The leader's state, once it has reached desired state `id` with nothing left to do.
fn reached(sim: &Sim, id: u64) -> Option<Replicated> {
    let i = sim.leader()?;
    let r = sim.state_of(i)?;
    let c = &r.cluster;
    (c.accepted.as_ref().map(|d| d.id) == Some(id)
        && c.pending.is_none()
        && c.in_flight.is_empty()
        && c.reconciliation == ReconciliationState::AT_DESIRED_STATE
        && c.world_seen)
        .then_some(r)
}

#[derive(Default)]
struct FaultCounts {
    partitions: u64,
    crashes: u64,
    losses: u64,
}

enum Heal {
    Reconnect(NodeId),
    Restart(usize),
    NoLoss,
}

/// Injects faults until `stop` is set, then heals everything.
async fn inject(
    sim: Arc<tokio::sync::Mutex<Sim>>,
    seed: u64,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> FaultCounts {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xfa17);
    let mut counts = FaultCounts::default();
    let mut heals: Vec<(Instant, Heal)> = Vec::new();
    let mut next_fault = Instant::now() + Duration::from_secs(rng.random_range(2..10));
    loop {
        let stopping = stop.load(std::sync::atomic::Ordering::SeqCst);
        let due_heal = heals.iter().map(|(t, _)| *t).min();
        let wake = match (stopping, due_heal) {
            (true, _) => Instant::now(),
            (false, Some(h)) => h.min(next_fault),
            (false, None) => next_fault,
        };
        tokio::time::sleep_until(wake.min(Instant::now() + Duration::from_secs(1))).await;
        let now = Instant::now();
        let stopping = stop.load(std::sync::atomic::Ordering::SeqCst);
        // Heal what is due (everything once stopping).
        let (due, later): (Vec<_>, Vec<_>) =
            heals.into_iter().partition(|(t, _)| stopping || *t <= now);
        heals = later;
        for (_, h) in due {
            match h {
                Heal::Reconnect(id) => {
                    note(format!("agent-{id} reconnected"));
                    sim.lock().await.net.lock().unwrap().isolated.remove(&id);
                }
                Heal::Restart(i) => {
                    note(format!("agent-{} restarted", i + 1));
                    sim.lock().await.start(i).await;
                }
                Heal::NoLoss => {
                    note("no more message loss".into());
                    sim.lock().await.net.lock().unwrap().loss = 0.0
                }
            }
        }
        if stopping {
            return counts;
        }
        if now < next_fault {
            continue;
        }
        next_fault = now + Duration::from_millis(rng.random_range(1_000..15_000));
        let down = heals
            .iter()
            .filter(|(_, h)| !matches!(h, Heal::NoLoss))
            .count();
        let leader = sim.lock().await.leader();
        let pick = |rng: &mut ChaCha8Rng| match leader {
            Some(l) if rng.random_bool(0.6) => l,
            _ => rng.random_range(0..AGENTS as usize),
        };
        let heal_at = now + Duration::from_millis(rng.random_range(300..10_000));
        match rng.random_range(0..3) {
            0 if down < MAX_DOWN => {
                let i = pick(&mut rng);
                let id = sim.lock().await.agents[i].id;
                let fresh = sim.lock().await.net.lock().unwrap().isolated.insert(id);
                if fresh && sim.lock().await.up(i) {
                    note(format!("agent-{id} cut off"));
                    if leader == Some(i) {
                        leader_lost(sim.lock().await.term_of(i));
                    }
                    counts.partitions += 1;
                    heals.push((heal_at, Heal::Reconnect(id)));
                } else if fresh {
                    sim.lock().await.net.lock().unwrap().isolated.remove(&id);
                }
            }
            1 if down < MAX_DOWN => {
                let i = pick(&mut rng);
                let cut = {
                    let s = sim.lock().await;
                    let id = s.agents[i].id;
                    let cut = s.net.lock().unwrap().isolated.contains(&id);
                    cut
                };
                if sim.lock().await.up(i) && !cut {
                    note(format!("agent-{} crashed", i + 1));
                    if leader == Some(i) {
                        leader_lost(sim.lock().await.term_of(i));
                    }
                    sim.lock().await.crash(i).await;
                    counts.crashes += 1;
                    heals.push((heal_at, Heal::Restart(i)));
                }
            }
            2 => {
                let has_loss = heals.iter().any(|(_, h)| matches!(h, Heal::NoLoss));
                if !has_loss {
                    let loss = rng.random_range(0.05..0.3);
                    note(format!("{:.0}% of messages lost", loss * 100.0));
                    sim.lock().await.net.lock().unwrap().loss = loss;
                    counts.losses += 1;
                    heals.push((heal_at, Heal::NoLoss));
                }
            }
            _ => {}
        }
    }
}

async fn run(seed: u64) -> Result<Report, String> {
    trace_reset();
    let began = Instant::now();
    let mut sim = Sim::new(seed);
    for i in 0..AGENTS as usize {
        sim.start(i).await;
    }
    let members: BTreeMap<NodeId, AgentNode> = (1..=AGENTS).map(|id| (id, node(id))).collect();
    sim.agents[0]
        .raft
        .as_ref()
        .unwrap()
        .initialize(members)
        .await
        .map_err(|e| format!("initializing the group: {e}"))?;
    let sim = Arc::new(tokio::sync::Mutex::new(sim));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let faults = tokio::spawn(inject(Arc::clone(&sim), seed, Arc::clone(&stop)));

    // The client: random desired states, each submitted until an agent records it, then
    // given time to be reached (or not: the next one may come while it is worked on).
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut acked: Vec<u64> = Vec::new();
    let mut last: Option<DesiredState> = None;
    for _ in 0..DESIRED_STATES {
        let d = match &last {
            None => generator::first(&mut rng),
            Some(prev) => {
                let has_run = {
                    let s = sim.lock().await;
                    (0..AGENTS as usize)
                        .filter_map(|i| s.state_of(i))
                        .any(|r| r.cluster.rondb_has_run)
                };
                generator::next(&mut rng, prev, has_run)
            }
        };
        if submit(&sim, &d).await? {
            acked.push(d.id);
            last = Some(d.clone());
        }
        let patience = if rng.random_bool(0.7) { 900 } else { 60 };
        let until = Instant::now() + Duration::from_secs(patience);
        while Instant::now() < until && reached(&*sim.lock().await, d.id).is_none() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    // The faults stop; the cluster must get there.
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let counts = faults.await.map_err(|e| format!("fault injector: {e}"))?;
    let Some(&last_id) = acked.last() else {
        return Err("no desired state was acknowledged".into());
    };
    let healed = Instant::now();
    let deadline = healed + Duration::from_secs(4 * 3_600);
    let final_state = loop {
        if let Some(r) = reached(&*sim.lock().await, last_id) {
            break r;
        }
        if Instant::now() > deadline {
            let s = sim.lock().await;
            let states: Vec<String> = (0..AGENTS as usize)
                .map(|i| match s.state_of(i) {
                    Some(r) => format!(
                        "{}: accepted {:?} pending {:?} {} in flight {:?} error {:?}",
                        vm(i as u64 + 1),
                        r.cluster.accepted.as_ref().map(|d| d.id),
                        r.cluster.pending.as_ref().map(|d| d.id),
                        r.cluster.reconciliation,
                        r.cluster.in_flight.keys().collect::<Vec<_>>(),
                        r.cluster.last_error
                    ),
                    None => format!("{}: down", vm(i as u64 + 1)),
                })
                .collect();
            return Err(format!(
                "desired state {last_id} not reached 4 h after the faults stopped; leader {:?}\n{}\nlast events:\n{}",
                s.leader(),
                states.join("\n"),
                trace_tail(40)
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let recovery_s = healed.elapsed().as_secs_f64();

    // Every agent catches up to the same state.
    let catch_up = Instant::now() + Duration::from_secs(60);
    loop {
        let same = {
            let s = sim.lock().await;
            let states: Vec<Replicated> =
                (0..AGENTS as usize).filter_map(|i| s.state_of(i)).collect();
            states.len() == AGENTS as usize
                && states.iter().all(|r| {
                    r.last_applied == states[0].last_applied && r.cluster == states[0].cluster
                })
                && states[0].last_applied >= final_state.last_applied
        };
        if same {
            break;
        }
        if Instant::now() > catch_up {
            return Err("the agents hold different states a minute after the leader reached the desired state".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Terms in which two agents believed they led. openraft orders votes by (term, node
    // id), so a voter may move its vote to a higher node id within a term: two candidates
    // can both count a majority, but only the later one can get an entry committed.
    let leaders = sim.lock().await.leaders.lock().unwrap().clone();
    let contested = leaders.values().filter(|ids| ids.len() > 1).count() as u64;
    // Stop everything and read agent-1's committed log back from its store.
    let mut s = sim.lock().await;
    let committed = s.state_of(0).and_then(|r| r.last_applied).map(|l| l.index);
    for i in 0..AGENTS as usize {
        s.crash(i).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (mut log, _) = store::open(&s.agents[0].dir.join("raft.redb"))
        .map_err(|e| format!("reading agent-1's log: {e}"))?;
    let entries = log
        .try_get_log_entries(0..=committed.unwrap_or(0))
        .await
        .map_err(|e| format!("reading agent-1's log: {e}"))?;

    // One leader per term: the committed entries of a term all come from one leader.
    let mut committers: BTreeMap<u64, BTreeSet<NodeId>> = BTreeMap::new();
    for e in &entries {
        let l = e.log_id.leader_id;
        committers.entry(l.term).or_default().insert(l.node_id);
    }
    if let Some((term, ids)) = committers.iter().find(|(_, ids)| ids.len() > 1) {
        return Err(format!(
            "term {term} has committed entries of leaders {ids:?}\n{}",
            trace_matching(&format!("term {term} "))
        ));
    }

    // Replay: the same state, no safety rule broken, every acknowledged state recorded, each
    // action started once.
    let mut replay = ClusterState::default();
    let mut rules = InvariantChecker::new();
    let mut recorded: Vec<u64> = Vec::new();
    let mut started: BTreeMap<u64, u32> = BTreeMap::new();
    let mut digest = String::new();
    for e in &entries {
        if let EntryPayload::Normal(Request::Events(events)) = &e.payload {
            for ev in events {
                replay.apply(ev);
                rules.check(&replay, ev);
                match ev {
                    Event::Accepted(d) | Event::Queued(d) => recorded.push(d.id),
                    Event::ActionStarted(a) => *started.entry(a.op_id).or_default() += 1,
                    _ => {}
                }
            }
            digest.push_str(&serde_json::to_string(events).unwrap_or_default());
        }
    }
    if replay != final_state.cluster {
        return Err("replaying the committed log does not give the agents' state".into());
    }
    if let Some(v) = rules.violations.first() {
        return Err(format!("safety rule broken: {v}"));
    }
    for id in &acked {
        if !recorded.contains(id) {
            return Err(format!(
                "desired state {id} was acknowledged but is not in the committed log"
            ));
        }
    }
    if let Some((op, n)) = started.iter().find(|(_, n)| **n > 1) {
        return Err(format!("operation {op} was started {n} times in the log"));
    }
    let ledger = lock(&s.world).ledger.clone().unwrap_or_default();
    let mut calls: BTreeMap<u64, &BackendCall> = BTreeMap::new();
    for (op, call) in &ledger {
        if !started.contains_key(&op.0) {
            return Err(format!(
                "operation {} ran in the world ({call:?}) without being started in the log",
                op.0
            ));
        }
        match calls.get(&op.0) {
            Some(first) if *first != call => {
                return Err(format!(
                    "operation {} named two different calls: {first:?} and {call:?}",
                    op.0
                ))
            }
            _ => {
                calls.insert(op.0, call);
            }
        }
    }
    let (sent, dropped) = {
        let n = s.net.lock().unwrap();
        (n.sent, n.dropped)
    };
    Ok(Report {
        failovers: failovers(),
        acked: acked.len() as u64,
        partitions: counts.partitions,
        crashes: counts.crashes,
        losses: counts.losses,
        terms: committers.len() as u64,
        contested,
        simulated_s: began.elapsed().as_secs_f64(),
        actions: started.len() as u64,
        dropped,
        sent,
        recovery_s,
        log_digest: format!("{:x}", fnv1a(&digest)),
    })
}

/// A short fingerprint of the log's text (FNV-1a): equal runs give equal fingerprints.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

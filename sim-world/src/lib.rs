//! The simulated world that the `mock` cloud provider and the `dummy` process runtime share:
//! VMs, RonDB programs, the configuration the management servers hold, and a backup sink,
//! all in memory. Its operations are synchronous ([`World::begin`], [`World::finish`]), so the
//! discrete-event simulation drives it in simulated time; [`run_call`] runs one on tokio's
//! clock for the async backends. It lives in its own crate so that the two backends never
//! depend on each other. It enforces
//! RonDB's rules (a data node without a file system cannot start without `--initial`,
//! `DEACTIVATE` of an inactive node fails, `HOSTNAME` needs an inactive node, ...), so a
//! planner mistake shows up as a failed action rather than passing silently.

mod ops;

pub use ops::Pending;

use agent_core::backend::{BackendError, OpId, VmInfo};
use agent_core::cost::CostModel;
use agent_core::engine::BackendCall;
use agent_core::model::Outcome;
use agent_core::model::Role;
use futures::future::{BoxFuture, FutureExt, Shared};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

/// Probabilities of injected faults, each drawn per action from the world's seeded RNG.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FaultConfig {
    /// An action fails after its duration and changes nothing.
    pub action_failure_rate: f64,
    /// A VM whose loss the cluster survives disappears.
    pub vm_loss_rate: f64,
    /// A RonDB program whose loss the cluster survives dies.
    pub process_death_rate: f64,
    /// A VM stops (a host reboot): listed but down, its disks kept, until the agents start
    /// it again.
    pub vm_down_rate: f64,
}

/// A RonDB program running on a VM.
#[derive(Debug, Clone, PartialEq)]
pub struct WorldProgram {
    pub kind: agent_core::backend::ProgramKind,
    pub version: String,
    pub node_ids: Vec<u32>,
    pub command: Vec<String>,
}

/// A VM of the simulated world.
#[derive(Debug, Clone)]
pub struct WorldVm {
    pub info: VmInfo,
    pub installed: BTreeSet<String>,
    pub files: BTreeMap<String, String>,
    pub program: Option<WorldProgram>,
    /// Data-node file systems present on this VM, by node id.
    pub fs: BTreeSet<u32>,
    pub agent_version: String,
    pub agent_restarts: u32,
}

/// A node entry of the configuration the management servers serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorldSlot {
    pub section: String,
    pub node_group: Option<u32>,
    pub host: Option<String>,
    pub active: bool,
}

/// The keys of one config.ini section that [`World::load_config_ini`] reads, as slices of
/// the file.
#[derive(Default)]
struct IniSection<'t> {
    node_id: Option<&'t str>,
    node_group: Option<&'t str>,
    host_name: Option<&'t str>,
    node_active: Option<&'t str>,
}

/// A backup stored in the sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkBackup {
    pub data_nodes: Vec<u32>,
}

/// Everything that exists in the simulation.
#[derive(Debug)]
pub struct World {
    pub vms: BTreeMap<String, WorldVm>,
    /// The configuration loaded by the management servers (from config.ini on `--initial`
    /// or `--reload`, then changed by `ndb_mgm` commands).
    pub cluster_config: BTreeMap<u32, WorldSlot>,
    pub sink: BTreeMap<u64, SinkBackup>,
    pub faults: FaultConfig,
    pub cost: CostModel,
    pub lost_vms: Vec<String>,
    /// VMs the faults stopped (down, not gone).
    pub stopped_vms: Vec<String>,
    pub killed_programs: Vec<String>,
    /// VMs whose program is being stopped right now: not counted as a live peer when
    /// choosing a survivable fault.
    pub stopping: BTreeSet<String>,
    /// Data-node processes that `DEACTIVATE` stopped but that have not exited yet, with when
    /// they exit: RonDB's client reports success once the stop has begun, so for a while the
    /// VM's agent still sees the process run.
    pub exiting: BTreeMap<String, (WorldProgram, f64)>,
    /// Simulated seconds since the world began, set by whoever drives it.
    pub now: f64,
    /// Where tokio's clock started for [`run_call`].
    origin: Option<tokio::time::Instant>,
    /// The VM whose agent leads (the simulation moves it); `None` = the bootstrap agent.
    pub leader: Option<String>,
    /// The leader's agent is gone (its VM was lost) or handed its leadership over: its next
    /// write to the Raft log is refused.
    pub leader_gone: bool,
    /// When set, every call that [`run_call`] receives with its operation id, in order,
    /// before anything answers it from an earlier run: what the agents were asked to do, for
    /// tests that check that one operation id never names two different actions.
    pub ledger: Option<Vec<(OpId, BackendCall)>>,
    ops: OpCache,
    rng: ChaCha8Rng,
    next_ip: u32,
}

/// Operations the agents ran, by operation id (see [`once`]).
#[derive(Default)]
struct OpCache(BTreeMap<u64, Box<dyn Any + Send>>);

impl std::fmt::Debug for OpCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} operation(s)", self.0.len())
    }
}

type OpResult<T> = Shared<BoxFuture<'static, Result<T, BackendError>>>;

/// The world shared by the mock provider and the dummy runtime.
pub type SharedWorld = Arc<Mutex<World>>;

/// Locks the world; a poisoned lock (a panic elsewhere) is still usable for a simulation.
pub fn lock(w: &SharedWorld) -> MutexGuard<'_, World> {
    w.lock().unwrap_or_else(|e| e.into_inner())
}

impl World {
    pub fn new(seed: u64, faults: FaultConfig, cost: CostModel) -> Self {
        World {
            vms: BTreeMap::new(),
            cluster_config: BTreeMap::new(),
            sink: BTreeMap::new(),
            faults,
            cost,
            lost_vms: Vec::new(),
            stopped_vms: Vec::new(),
            killed_programs: Vec::new(),
            stopping: BTreeSet::new(),
            exiting: BTreeMap::new(),
            now: 0.0,
            origin: None,
            leader: None,
            leader_gone: false,
            ledger: None,
            ops: OpCache::default(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            next_ip: 10,
        }
    }

    pub fn shared(self) -> SharedWorld {
        Arc::new(Mutex::new(self))
    }

    /// Draws whether the next action fails, and maybe loses a VM or kills a program.
    pub fn roll(&mut self) -> bool {
        if self.faults.vm_loss_rate > 0.0 && self.rng.random_bool(self.faults.vm_loss_rate.min(1.0))
        {
            let candidates = self.survivable(true);
            if !candidates.is_empty() {
                let i = self.rng.random_range(0..candidates.len());
                self.lose_vm(&candidates[i]);
            }
        }
        if self.faults.vm_down_rate > 0.0 && self.rng.random_bool(self.faults.vm_down_rate.min(1.0))
        {
            let candidates: Vec<String> = self
                .survivable(true)
                .into_iter()
                .filter(|n| !self.is_down(n))
                .collect();
            if !candidates.is_empty() {
                let i = self.rng.random_range(0..candidates.len());
                let name = candidates[i].clone();
                self.take_down(&name);
                self.stopped_vms.push(name);
            }
        }
        if self.faults.process_death_rate > 0.0
            && self
                .rng
                .random_bool(self.faults.process_death_rate.min(1.0))
        {
            let candidates: Vec<String> = self
                .survivable(false)
                .into_iter()
                .filter(|n| self.vms.get(n).is_some_and(|v| v.program.is_some()))
                .collect();
            if !candidates.is_empty() {
                let i = self.rng.random_range(0..candidates.len());
                let name = candidates[i].clone();
                if let Some(v) = self.vms.get_mut(&name) {
                    v.program = None;
                }
                tracing::info!(vm = %name, "mock: injected death of the RonDB program");
                self.killed_programs.push(name);
            }
        }
        self.faults.action_failure_rate > 0.0
            && self
                .rng
                .random_bool(self.faults.action_failure_rate.min(1.0))
    }

    /// VMs (or programs) whose loss the cluster survives: a data node with a started peer
    /// in its node group, a management server with another one running, any MySQLd or API.
    fn survivable(&self, whole_vm: bool) -> Vec<String> {
        let running_data = |g: u32| -> usize {
            self.vms
                .values()
                .filter(|v| !self.stopping.contains(&v.info.name))
                .filter(|v| {
                    v.program.as_ref().is_some_and(|p| {
                        p.kind == agent_core::backend::ProgramKind::DataNode
                            && p.node_ids.iter().any(|n| {
                                self.cluster_config.get(n).and_then(|s| s.node_group) == Some(g)
                            })
                    })
                })
                .count()
        };
        let mgmds = self
            .vms
            .values()
            .filter(|v| !self.stopping.contains(&v.info.name))
            .filter(|v| {
                v.program
                    .as_ref()
                    .is_some_and(|p| p.kind == agent_core::backend::ProgramKind::Mgmd)
            })
            .count();
        self.vms
            .values()
            .filter(|v| !self.stopping.contains(&v.info.name))
            .filter(|v| match v.info.role {
                Role::Ndbd => match &v.program {
                    Some(p) => p
                        .node_ids
                        .first()
                        .and_then(|n| self.cluster_config.get(n))
                        .and_then(|s| s.node_group)
                        .is_some_and(|g| running_data(g) >= 2),
                    None => whole_vm && v.fs.is_empty(),
                },
                Role::Mgmd => v.program.is_some() && mgmds >= 2,
                Role::Mysqld | Role::Api => true,
                Role::Bootstrap => false,
            })
            .map(|v| v.info.name.clone())
            .collect()
    }

    /// Makes a VM disappear, as a crashed cloud VM would.
    pub fn lose_vm(&mut self, name: &str) {
        self.exiting.remove(name);
        if self.vms.remove(name).is_some() {
            tracing::info!(vm = %name, "mock: injected loss of the VM");
            self.lost_vms.push(name.to_string());
            if self.leader.as_deref() == Some(name) {
                self.leader_gone = true;
            }
        }
    }

    /// Stops a VM without removing it, as a host reboot or a stopped container would: its
    /// program dies, its disks (the data node's file system) stay.
    pub fn take_down(&mut self, name: &str) {
        self.exiting.remove(name);
        if let Some(v) = self.vms.get_mut(name) {
            tracing::info!(vm = %name, "mock: injected stop of the VM");
            v.info.state = agent_core::backend::VmState::Down;
            v.program = None;
            if self.leader.as_deref() == Some(name) {
                self.leader_gone = true;
            }
        }
    }

    /// Whether the VM exists and is down.
    pub fn is_down(&self, name: &str) -> bool {
        self.vms
            .get(name)
            .is_some_and(|v| v.info.state == agent_core::backend::VmState::Down)
    }

    /// The program the VM's agent sees: a running one, or one still exiting.
    pub fn visible_program(&self, vm: &str) -> Option<&WorldProgram> {
        self.program_seen(vm, self.vms.get(vm))
    }

    /// [`World::visible_program`] of `vm`, already looked up (an observation walks every VM).
    pub(crate) fn program_seen<'w>(
        &'w self,
        vm: &str,
        found: Option<&'w WorldVm>,
    ) -> Option<&'w WorldProgram> {
        let running = found.and_then(|v| v.program.as_ref());
        running.or_else(|| {
            self.exiting
                .get(vm)
                .filter(|(_, at)| self.now < *at)
                .map(|(p, _)| p)
        })
    }

    /// Whether a running management server exists (data nodes need one to start).
    pub fn mgmd_running(&self) -> bool {
        self.vms.values().any(|v| {
            v.program
                .as_ref()
                .is_some_and(|p| p.kind == agent_core::backend::ProgramKind::Mgmd)
        })
    }

    /// Every node group has a running data node.
    pub fn all_node_groups_started(&self) -> bool {
        let groups: BTreeSet<u32> = self
            .cluster_config
            .values()
            .filter(|s| s.active)
            .filter_map(|s| s.node_group)
            .collect();
        !groups.is_empty()
            && groups.iter().all(|g| {
                self.vms.values().any(|v| {
                    v.program.as_ref().is_some_and(|p| {
                        p.kind == agent_core::backend::ProgramKind::DataNode
                            && p.node_ids.iter().any(|n| {
                                self.cluster_config.get(n).and_then(|s| s.node_group) == Some(*g)
                            })
                    })
                })
            })
    }

    /// Loads a config.ini the way ndb_mgmd does on `--initial` / `--reload`.
    ///
    /// Every start of a management server loads the file, so it is read in place: only the
    /// keys the world uses are kept, as slices of `text` (the last value of a key wins).
    pub fn load_config_ini(&mut self, text: &str) -> Result<(), String> {
        let mut out = BTreeMap::new();
        let mut section: Option<&str> = None;
        let mut cur = IniSection::default();
        let flush = |section: Option<&str>,
                     cur: &mut IniSection,
                     out: &mut BTreeMap<u32, WorldSlot>|
         -> Result<(), String> {
            if let Some(sec) = section {
                if !sec.ends_with("default]") {
                    let id: u32 = cur
                        .node_id
                        .and_then(|x| x.parse().ok())
                        .ok_or_else(|| format!("{sec} without a valid NodeId"))?;
                    if out.contains_key(&id) {
                        return Err(format!("NodeId {id} defined twice"));
                    }
                    out.insert(
                        id,
                        WorldSlot {
                            section: sec.to_string(),
                            node_group: cur.node_group.and_then(|x| x.parse().ok()),
                            host: cur.host_name.map(str::to_string),
                            active: cur.node_active.map(|x| x == "1").unwrap_or(true),
                        },
                    );
                }
            }
            *cur = IniSection::default();
            Ok(())
        };
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line.starts_with('[') {
                flush(section, &mut cur, &mut out)?;
                section = Some(line);
            } else if let Some((k, v)) = line.split_once('=') {
                let v = Some(v.trim());
                match k.trim() {
                    "NodeId" => cur.node_id = v,
                    "NodeGroup" => cur.node_group = v,
                    "HostName" => cur.host_name = v,
                    "NodeActive" => cur.node_active = v,
                    _ => {}
                }
            } else {
                return Err(format!("config.ini: cannot parse line {line:?}"));
            }
        }
        flush(section, &mut cur, &mut out)?;
        self.cluster_config = out;
        Ok(())
    }

    /// The next free address of the simulated network.
    pub fn allocate_address(&mut self) -> String {
        let n = self.next_ip;
        self.next_ip += 1;
        format!("10.0.{}.{}", n / 250, n % 250 + 1)
    }
}

/// Runs one backend call on tokio's clock, the way the VM's agent or the cloud does: to its
/// end even if the leader that asked is gone (the work is spawned); an agent's call once per
/// operation id (see [`once`]), a provider's again (it is idempotent by VM name).
pub async fn run_call(
    world: &SharedWorld,
    op: OpId,
    call: BackendCall,
) -> Result<Outcome, BackendError> {
    let once_per_op = call.runs_once_per_op();
    if let Some(ledger) = lock(world).ledger.as_mut() {
        ledger.push((op, call.clone()));
    }
    let w = world.clone();
    let work = async move {
        let pending = {
            let mut g = lock(&w);
            g.sync_clock();
            g.begin(call)
        };
        tokio::time::sleep(std::time::Duration::from_secs_f64(pending.seconds)).await;
        let mut g = lock(&w);
        g.sync_clock();
        g.finish(pending)
    };
    if once_per_op {
        once(world, op, work).await
    } else {
        tokio::spawn(work).await.unwrap_or_else(|e| {
            Err(BackendError::refused(format!(
                "provider operation panicked: {e}"
            )))
        })
    }
}

impl World {
    /// Sets [`World::now`] from tokio's clock (for [`run_call`]).
    fn sync_clock(&mut self) {
        self.now = self
            .origin
            .get_or_insert_with(tokio::time::Instant::now)
            .elapsed()
            .as_secs_f64();
    }
}

/// Runs an operation the way an agent does: to its end even if the leader that asked for it
/// is gone (the work is spawned), and once per operation id: a new leader repeating an
/// operation it found in flight gets the first run's result, waiting for it if needed.
/// Outside an action (operation id 0) the work simply runs.
pub async fn once<T, F>(world: &SharedWorld, op: OpId, work: F) -> Result<T, BackendError>
where
    T: Clone + Send + Sync + 'static,
    F: Future<Output = Result<T, BackendError>> + Send + 'static,
{
    if op == OpId::NONE {
        return work.await;
    }
    let op = op.0;
    let shared: OpResult<T> = {
        let mut w = lock(world);
        let known = w
            .ops
            .0
            .get(&op)
            .and_then(|b| b.downcast_ref::<OpResult<T>>())
            .cloned();
        match known {
            Some(s) => s,
            None => {
                let handle = tokio::spawn(work);
                let s = async move {
                    handle.await.unwrap_or_else(|e| {
                        Err(BackendError::refused(format!(
                            "operation {op} panicked: {e}"
                        )))
                    })
                }
                .boxed()
                .shared();
                w.ops.0.insert(op, Box::new(s.clone()));
                s
            }
        }
    };
    shared.await
}

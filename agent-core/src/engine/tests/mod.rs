//! Unit tests of the engine, one module per concern; each feeds inputs and asserts the exact
//! commands returned. No runtime, no clock: time is an argument.

mod backoff;
mod down;
mod drift;
mod leader_change;
mod pending;
mod retries;
mod voters;

use super::*;
use crate::actions::ActionKind;
use crate::backend::VmState;
use crate::desired::DesiredState;
use crate::model::ReconciliationState::*;
use crate::planner::tests::at_desired;

pub(super) const OBSERVE: Duration = Duration::from_secs(30);
pub(super) const PATIENCE: Duration = Duration::from_secs(60);

pub(super) fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

pub(super) fn policy() -> Box<dyn Policy> {
    Box::new(StandardPolicy {
        max_attempts: 2,
        observe_every: OBSERVE,
        max_actions: 100,
        max_backoff_doublings: 3,
        first_look_patience: PATIENCE,
    })
}

/// A cluster at the example desired state, resting, as a leader found it.
pub(super) fn settled() -> (DesiredState, ClusterState) {
    let d = DesiredState::example();
    let mut s = at_desired(&d);
    s.apply(&Event::ReconciliationChanged {
        state: AT_DESIRED_STATE,
        error: None,
    });
    s.leader_vm = Some("mgmd-1".into());
    (d, s)
}

/// What the world says when it matches `s` exactly.
pub(super) fn world_of(s: &ClusterState) -> Observation {
    Observation {
        vms: s
            .vms
            .values()
            .map(|v| VmInfo {
                home: None,
                host_dir: None,
                backup_dir: None,
                name: v.name.clone(),
                role: v.role,
                zone: v.zone.clone(),
                vm_type: v.vm_type,
                storage_gib: v.storage_gib,
                address: v.address.clone(),
                agent_endpoint: String::new(),
                state: if v.down {
                    VmState::Down
                } else {
                    VmState::Running
                },
            })
            .collect(),
        programs: s
            .vms
            .values()
            .map(|v| {
                (
                    v.name.clone(),
                    ProgramStatus {
                        running: v.running,
                        version: v.version.clone(),
                        rondb: Vec::new(),
                    },
                )
            })
            .collect(),
        unanswered: BTreeSet::new(),
        voters_missing: None,
    }
}

/// The world as a new leader sees it while `vm`'s agent does not answer yet.
pub(super) fn with_silent_agent(s: &ClusterState, vm: &str) -> Observation {
    let mut o = world_of(s);
    o.programs.remove(vm);
    o.unanswered.insert(vm.to_string());
    o
}

/// The name of the first MySQLd VM.
pub(super) fn mysqld_vm(s: &ClusterState) -> String {
    s.vms_of(crate::model::Role::Mysqld)
        .next()
        .map(|v| v.name.clone())
        .unwrap_or_default()
}

/// The world with the MySQLd on `vm` dead.
pub(super) fn with_dead_program(s: &ClusterState, vm: &str) -> Observation {
    let mut o = world_of(s);
    if let Some(p) = o.programs.get_mut(vm) {
        p.running = false;
    }
    o
}

/// The command recording `o` in the log.
pub(super) fn recorded(o: &Observation) -> Command {
    Command::Append(vec![Event::Observed {
        vms: o.vms.clone(),
        programs: o.programs.clone(),
    }])
}

/// `e` is told it leads on `vm`: it records that (at every election, so the state on
/// record is not vouched for until it looked) and asks to look at the world first.
pub(super) fn leads(e: &mut Engine, at: Duration, vm: &str) {
    assert_eq!(
        e.step(at, Input::Leading { vm: vm.into() }),
        vec![
            Command::Append(vec![Event::LeaderChanged { vm: vm.into() }]),
            Command::Observe
        ]
    );
}

/// A new leader of a settled cluster (after a restart, say) that has not looked yet.
pub(super) fn new_leader() -> Engine {
    let (_, s) = settled();
    let mut e = Engine::new(s, policy());
    leads(&mut e, secs(0), "mgmd-1");
    e
}

/// An engine leading a settled cluster, resting after its first look at the world.
pub(super) fn resting() -> (DesiredState, Engine) {
    let (d, s) = settled();
    let world = world_of(&s);
    let mut e = Engine::new(s, policy());
    leads(&mut e, secs(0), "mgmd-1");
    // The first look of a leader is recorded even when nothing changed: it vouches for the
    // state on record.
    assert_eq!(
        e.step(secs(0), Input::Observed(Ok(world.clone()))),
        vec![
            Command::Append(vec![Event::Observed {
                vms: world.vms,
                programs: world.programs
            }]),
            Command::WakeAt(OBSERVE)
        ]
    );
    assert!(e.state().world_seen);
    (d, e)
}

/// The commands that start `kind` as the next operation, prepared from the engine's state.
pub(super) fn starts(e: &Engine, d: &DesiredState, op_id: u64, kind: ActionKind) -> Vec<Command> {
    let action = Action { op_id, kind };
    let call = prepare(d, e.state(), &action);
    vec![
        Command::Append(vec![Event::ActionStarted(action.clone())]),
        Command::Run { action, call },
    ]
}

/// A resting engine whose MySQLd on the first MySQLd VM died: returns it working on the
/// restart (operation `op`), at time 30 s.
pub(super) fn restarting_mysqld() -> (DesiredState, Engine, String, u64) {
    let (d, mut e) = resting();
    let vm = mysqld_vm(e.state());
    assert_eq!(e.step(OBSERVE, Input::Tick), vec![Command::Observe]);
    let dead = with_dead_program(e.state(), &vm);
    let op = e.state().next_op_id;
    let cmds = e.step(OBSERVE, Input::Observed(Ok(dead.clone())));
    let mut want = vec![
        Command::Append(vec![Event::Observed {
            vms: dead.vms,
            programs: dead.programs,
        }]),
        Command::Append(vec![Event::ReconciliationChanged {
            state: WORKING_TOWARDS_DESIRED_STATE,
            error: None,
        }]),
    ];
    let start = start_mysqld(&e, &vm, op);
    want.extend(starts(&e, &d, op, start));
    want.push(Command::WakeAt(OBSERVE * 2));
    assert_eq!(cmds, want);
    (d, e, vm, op)
}

/// The action that restarts the MySQLd on `vm`, as the engine started it.
pub(super) fn start_mysqld(e: &Engine, vm: &str, op: u64) -> ActionKind {
    let kind = e
        .state()
        .in_flight
        .get(&op)
        .map(|a| a.kind.clone())
        .expect("the engine started an action");
    assert!(
        matches!(&kind, ActionKind::StartMysqld { vm: v, .. } if v == vm),
        "{kind:?}"
    );
    kind
}

pub(super) fn failed(e: &str) -> Result<Outcome, BackendError> {
    Err(BackendError::refused(e))
}

//! The rules the engine consults when something goes wrong or nothing is left to do: how
//! often an action may fail before the reconciliation gives up, how long to rest between
//! reconciliations (and how that grows while the cluster stays in `ERROR_STATE`), how often
//! to look for drift while working. kube-rs' `error_policy` is the model: the engine decides
//! *when* to ask, the policy decides *what*.

use crate::actions::Action;
use crate::backend::BackendError;
use crate::model::ReconciliationState;
use std::time::Duration;

/// What to do after an action failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureVerdict {
    /// Plan again after observing (the planner proposes the action again if still needed).
    Retry,
    /// Start nothing more; once the running actions finish, report `ERROR_STATE` with this.
    GiveUp { reason: String },
}

/// Retry, backoff and give-up rules of a reconciliation.
pub trait Policy: Send {
    /// Called after an action failed for the `attempts`-th time in a row (drift, such as
    /// a VM that vanished, is not an attempt and never reaches the policy).
    fn on_failure(&self, action: &Action, error: &BackendError, attempts: u32) -> FailureVerdict;
    /// How long to rest after a reconciliation ended in `outcome`; `failed_rounds` counts
    /// the rounds in a row that ended in `ERROR_STATE` (this one included).
    fn requeue_after(&self, outcome: ReconciliationState, failed_rounds: u32) -> Duration;
    /// How often the world is observed for drift while working.
    fn observe_every(&self) -> Duration;
    /// Actions one reconciliation may start before it is declared not to converge.
    fn max_actions(&self) -> u64;
    /// How long a new leader waits for the agents of running VMs to answer its first look
    /// before it takes the state on record as it is.
    fn first_look_patience(&self) -> Duration;
}

/// The policy of every agent: a few attempts per action, then `ERROR_STATE`, retried less and
/// less often (doubling up to 64 observation periods) so a stuck cluster is reported, not
/// hammered. A new desired state is tried at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandardPolicy {
    /// Attempts of one action before the reconciliation gives up with `ERROR_STATE`.
    pub max_attempts: u32,
    /// How often the world is observed for drift, and the rest between reconciliations.
    pub observe_every: Duration,
    /// Actions one reconciliation may start before it is declared not to converge.
    pub max_actions: u64,
    /// The rest after repeated `ERROR_STATE` doubles at most this many times.
    pub max_backoff_doublings: u32,
    /// How long a new leader waits for silent agents before it vouches for the state.
    pub first_look_patience: Duration,
}

impl Default for StandardPolicy {
    fn default() -> Self {
        StandardPolicy {
            max_attempts: 3,
            observe_every: Duration::from_secs(30),
            max_actions: 20_000,
            max_backoff_doublings: 6,
            first_look_patience: Duration::from_secs(60),
        }
    }
}

impl Policy for StandardPolicy {
    fn on_failure(&self, action: &Action, error: &BackendError, attempts: u32) -> FailureVerdict {
        if attempts >= self.max_attempts {
            FailureVerdict::GiveUp {
                reason: format!(
                    "{action} failed {attempts} time(s) (limit {}): {error}",
                    self.max_attempts
                ),
            }
        } else {
            FailureVerdict::Retry
        }
    }

    fn requeue_after(&self, outcome: ReconciliationState, failed_rounds: u32) -> Duration {
        if outcome == ReconciliationState::ERROR_STATE {
            self.observe_every * 2u32.pow(failed_rounds.min(self.max_backoff_doublings))
        } else {
            self.observe_every
        }
    }

    fn observe_every(&self) -> Duration {
        self.observe_every
    }

    fn max_actions(&self) -> u64 {
        self.max_actions
    }

    fn first_look_patience(&self) -> Duration {
        self.first_look_patience
    }
}

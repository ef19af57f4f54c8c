//! VM lifecycle: states, user actions, runtime events and the one transition table.
//!
//! Two pure functions decide everything:
//! - [`check_action`]: may a user action start in this state, and which state does the VM
//!   enter while the action runs;
//! - [`apply_event`]: which state follows when the runtime reports an event.
//!
//! Invariants (checked by proptest below): `Stopped` and `Crashed` are the only states without
//! a QEMU process; every state can reach `Stopped` (via `Kill` or `Stop`); `Delete` is only
//! allowed when no QEMU process exists.

use serde::{Deserialize, Serialize};

/// Observable state of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// No QEMU process; the VM can be started, changed or deleted.
    Stopped,
    /// QEMU was spawned and is being connected/configured.
    Starting,
    /// The guest CPUs run.
    Running,
    /// QEMU is alive but the guest CPUs are stopped.
    Paused,
    /// A graceful shutdown was requested and is in progress.
    Stopping,
    /// QEMU exited without being asked to.
    Crashed,
}

impl VmState {
    pub const ALL: [VmState; 6] = [
        VmState::Stopped,
        VmState::Starting,
        VmState::Running,
        VmState::Paused,
        VmState::Stopping,
        VmState::Crashed,
    ];

    /// Whether a QEMU process is expected to exist in this state.
    pub fn has_process(self) -> bool {
        !matches!(self, VmState::Stopped | VmState::Crashed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Stopped => "stopped",
            VmState::Starting => "starting",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Stopping => "stopping",
            VmState::Crashed => "crashed",
        }
    }
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for VmState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        VmState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown VM state {s:?}"))
    }
}

/// An action a user asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmAction {
    Start,
    Stop,
    Restart,
    Pause,
    Resume,
    Kill,
    Delete,
}

impl VmAction {
    pub const ALL: [VmAction; 7] = [
        VmAction::Start,
        VmAction::Stop,
        VmAction::Restart,
        VmAction::Pause,
        VmAction::Resume,
        VmAction::Kill,
        VmAction::Delete,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            VmAction::Start => "start",
            VmAction::Stop => "stop",
            VmAction::Restart => "restart",
            VmAction::Pause => "pause",
            VmAction::Resume => "resume",
            VmAction::Kill => "kill",
            VmAction::Delete => "delete",
        }
    }
}

impl std::fmt::Display for VmAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something the runtime observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VmEvent {
    /// QEMU is up, QMP connected and the guest CPUs run.
    Started,
    /// Spawning or configuring QEMU failed; no process remains.
    StartFailed,
    /// QMP reported the guest CPUs stopped (our `stop` or a guest/QEMU-initiated pause).
    CpusStopped,
    /// QMP reported the guest CPUs resumed.
    CpusResumed,
    /// QEMU exited. `requested` is true when we asked for it (stop, kill, guest poweroff
    /// reported by a QMP SHUTDOWN event before the exit).
    Exited { requested: bool },
}

/// Why an action cannot start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {action} a VM that is {state}")]
pub struct InvalidTransition {
    pub action: VmAction,
    pub state: VmState,
}

/// Decides whether `action` may start in `state`, returning the state the VM is in while the
/// action runs (the final state is then reached through [`apply_event`]).
pub fn check_action(state: VmState, action: VmAction) -> Result<VmState, InvalidTransition> {
    use VmAction as A;
    use VmState as S;
    let next = match (state, action) {
        (S::Stopped | S::Crashed, A::Start) => S::Starting,
        (S::Stopped | S::Crashed, A::Delete) => state,
        // Acknowledging a crash: the VM becomes plainly stopped.
        (S::Crashed, A::Stop) => S::Stopped,
        (S::Running | S::Paused, A::Stop) => S::Stopping,
        (S::Running | S::Paused, A::Restart) => S::Running,
        (S::Running, A::Pause) => S::Paused,
        (S::Paused, A::Resume) => S::Running,
        (S::Starting | S::Running | S::Paused | S::Stopping, A::Kill) => S::Stopping,
        _ => return Err(InvalidTransition { action, state }),
    };
    Ok(next)
}

/// The state that follows `event` in `state`. Events that do not apply leave the state as is
/// (e.g. a late `CpusResumed` after a stop request).
pub fn apply_event(state: VmState, event: VmEvent) -> VmState {
    use VmEvent as E;
    use VmState as S;
    match (state, event) {
        (S::Starting, E::Started) => S::Running,
        (S::Starting, E::StartFailed) => S::Stopped,
        (S::Running, E::CpusStopped) => S::Paused,
        (S::Paused, E::CpusResumed) => S::Running,
        (_, E::Exited { requested: true }) => S::Stopped,
        (S::Stopping, E::Exited { requested: false }) => S::Stopped,
        (S::Starting | S::Running | S::Paused, E::Exited { requested: false }) => S::Crashed,
        (s, _) => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_state() -> impl Strategy<Value = VmState> {
        proptest::sample::select(VmState::ALL.to_vec())
    }
    fn any_action() -> impl Strategy<Value = VmAction> {
        proptest::sample::select(VmAction::ALL.to_vec())
    }
    fn any_event() -> impl Strategy<Value = VmEvent> {
        proptest::sample::select(vec![
            VmEvent::Started,
            VmEvent::StartFailed,
            VmEvent::CpusStopped,
            VmEvent::CpusResumed,
            VmEvent::Exited { requested: true },
            VmEvent::Exited { requested: false },
        ])
    }

    #[derive(Debug, Clone)]
    enum Step {
        Act(VmAction),
        Ev(VmEvent),
    }

    fn any_step() -> impl Strategy<Value = Step> {
        prop_oneof![
            any_action().prop_map(Step::Act),
            any_event().prop_map(Step::Ev)
        ]
    }

    #[test]
    fn table_matches_expectations() {
        use VmAction as A;
        use VmState as S;
        assert_eq!(check_action(S::Stopped, A::Start), Ok(S::Starting));
        assert_eq!(check_action(S::Running, A::Pause), Ok(S::Paused));
        assert_eq!(check_action(S::Paused, A::Resume), Ok(S::Running));
        assert_eq!(check_action(S::Running, A::Stop), Ok(S::Stopping));
        assert!(check_action(S::Running, A::Delete).is_err());
        assert!(check_action(S::Stopped, A::Pause).is_err());
        assert!(check_action(S::Paused, A::Pause).is_err());
        assert_eq!(
            check_action(S::Stopped, A::Stop).unwrap_err().to_string(),
            "cannot stop a VM that is stopped"
        );
    }

    proptest! {
        #[test]
        fn delete_only_without_process(state in any_state()) {
            if check_action(state, VmAction::Delete).is_ok() {
                prop_assert!(!state.has_process());
            }
        }

        #[test]
        fn every_state_can_reach_stopped(state in any_state()) {
            // Kill (or, without a process, Stop/nothing) followed by the process exit ends in
            // Stopped — the VM can always be brought back to a clean state.
            let s = match check_action(state, VmAction::Kill) {
                Ok(during) => apply_event(during, VmEvent::Exited { requested: true }),
                Err(_) => match check_action(state, VmAction::Stop) {
                    Ok(during) if during.has_process() =>
                        apply_event(during, VmEvent::Exited { requested: true }),
                    Ok(during) => during,
                    Err(_) => state,
                },
            };
            prop_assert_eq!(s, VmState::Stopped);
        }

        #[test]
        fn random_walks_stay_consistent(steps in proptest::collection::vec(any_step(), 0..64)) {
            let mut state = VmState::Stopped;
            for step in steps {
                match step {
                    Step::Act(a) => {
                        if let Ok(next) = check_action(state, a) {
                            // Actions never create a process out of nothing except Start.
                            if !state.has_process() && next.has_process() {
                                prop_assert_eq!(a, VmAction::Start);
                            }
                            state = next;
                        }
                    }
                    Step::Ev(e) => {
                        let next = apply_event(state, e);
                        // Exits always leave a process-less state.
                        if matches!(e, VmEvent::Exited { .. }) && state.has_process() {
                            prop_assert!(!next.has_process());
                        }
                        // Only an unrequested exit produces Crashed.
                        if next == VmState::Crashed && state != VmState::Crashed {
                            prop_assert_eq!(e, VmEvent::Exited { requested: false });
                        }
                        state = next;
                    }
                }
            }
        }

        #[test]
        fn state_names_round_trip(state in any_state()) {
            prop_assert_eq!(state.as_str().parse::<VmState>().unwrap(), state);
        }
    }
}

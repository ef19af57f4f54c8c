//! Waiting for operations and guest readiness, with a progress bar on a terminal.
//!
//! Invariants: progress is drawn on stderr and only when stderr is a terminal; a finished
//! operation that did not succeed is an error carrying its failure message; every wait has a
//! deadline.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use vireo_api::operations::{Operation, OperationStatus};
use vireo_api::vms::VmInfo;
use vireo_client::Client;
use vireo_types::VmState;

/// Why waiting failed.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("{kind} of {target} failed: {message}")]
    Failed {
        kind: String,
        target: String,
        message: String,
    },
    #[error("{kind} of {target} was cancelled")]
    Cancelled { kind: String, target: String },
    #[error("{kind} of {target} is still running")]
    StillRunning { kind: String, target: String },
    #[error("VM {name} is {state}; its guest will not become ready")]
    NotRunning { name: String, state: VmState },
    #[error("VM {name}'s guest was not ready after {}s", after.as_secs())]
    GuestTimeout { name: String, after: Duration },
    #[error("waiting for the operation failed")]
    Client(#[from] vireo_client::ClientError),
}

/// Whether to draw progress (stderr is a terminal).
pub fn interactive() -> bool {
    std::io::stderr().is_terminal()
}

/// Template while an operation reports no percentage.
const SPINNER_TEMPLATE: &str = "{spinner} [{elapsed}] {wide_msg}";
/// Template once it does; `wide_msg` is cut to the terminal width so lines never wrap.
const BAR_TEMPLATE: &str = "{spinner} [{elapsed}] {bar:30} {pos:>3}% {wide_msg}";

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn spinner(message: String) -> ProgressBar {
    let spinner = ProgressBar::new(100);
    spinner.set_style(style(SPINNER_TEMPLATE));
    spinner.set_message(message);
    spinner.enable_steady_tick(Duration::from_millis(120));
    spinner
}

/// Turns a final operation into `Ok` when it succeeded.
pub fn check_final(op: Operation) -> Result<Operation, WaitError> {
    match op.status {
        OperationStatus::Succeeded => Ok(op),
        OperationStatus::Running => Err(WaitError::StillRunning {
            kind: op.kind,
            target: op.target,
        }),
        OperationStatus::Failed => Err(WaitError::Failed {
            message: op
                .error
                .clone()
                .unwrap_or_else(|| "no reason given".to_string()),
            kind: op.kind,
            target: op.target,
        }),
        OperationStatus::Cancelled => Err(WaitError::Cancelled {
            kind: op.kind,
            target: op.target,
        }),
    }
}

/// Waits for `op` to finish (showing its progress on a terminal) and requires success.
pub async fn wait_operation(
    client: &Client,
    op: &Operation,
    timeout: Duration,
) -> Result<Operation, WaitError> {
    if op.status.is_final() {
        return check_final(op.clone());
    }
    let done = if interactive() {
        let label = format!("{} {}", op.kind, op.target);
        let bar = spinner(label.clone());
        let mut showing_bar = false;
        let result = client
            .watch_operation(op.id, timeout, |current| {
                if let Some(p) = current.progress.percent {
                    if !showing_bar {
                        bar.set_style(style(BAR_TEMPLATE));
                        showing_bar = true;
                    }
                    bar.set_position(p.clamp(0.0, 100.0) as u64);
                }
                match &current.progress.stage {
                    Some(stage) => bar.set_message(format!("{label}: {stage}")),
                    None => bar.set_message(label.clone()),
                }
            })
            .await;
        bar.finish_and_clear();
        result?
    } else {
        client.wait_operation(op.id, timeout).await?
    };
    check_final(done)
}

/// Waits until the VM's guest agent answers (`guest_ready`). Wakes on the VM's events when
/// the events stream is available and polls every second in any case, so a lost event
/// cannot stall it.
pub async fn wait_guest_ready(
    client: &Client,
    name: &str,
    timeout: Duration,
) -> Result<VmInfo, WaitError> {
    let deadline = Instant::now() + timeout;
    let spinner = interactive().then(|| spinner(format!("waiting for VM {name}'s guest")));
    // Events only wake us up; the VM's own record is the truth.
    let mut events = match client.events(None).await {
        Ok(stream) => Some(stream),
        Err(e) => {
            tracing::debug!(error = %e, "events stream unavailable; polling only");
            None
        }
    };
    let suffix = format!("/{name}");
    let result = loop {
        let vm = client.get_vm(name).await?;
        if vm.guest_ready {
            break Ok(vm);
        }
        if !vm.state.has_process() {
            break Err(WaitError::NotRunning {
                name: name.to_string(),
                state: vm.state,
            });
        }
        let now = Instant::now();
        if now >= deadline {
            break Err(WaitError::GuestTimeout {
                name: name.to_string(),
                after: timeout,
            });
        }
        let tick = tokio::time::sleep(Duration::from_secs(1).min(deadline - now));
        match events.as_mut() {
            Some(stream) => {
                tokio::select! {
                    _ = tick => {}
                    next = async {
                        loop {
                            match stream.next().await {
                                Some(Ok(event)) if !event.target.ends_with(&suffix) => continue,
                                other => return other,
                            }
                        }
                    } => {
                        if !matches!(next, Some(Ok(_))) {
                            events = None;
                        }
                    }
                }
            }
            None => tick.await,
        }
    };
    if let Some(s) = spinner {
        s.finish_and_clear();
    }
    result
}

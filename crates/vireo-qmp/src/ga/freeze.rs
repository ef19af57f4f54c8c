//! Guest filesystem freeze through qemu-guest-agent (`qga/qapi-schema.json`):
//! `guest-fsfreeze-freeze` (returns how many filesystems were frozen),
//! `guest-fsfreeze-thaw` (returns how many were thawed) and `guest-fsfreeze-status`
//! (`"thawed"` | `"frozen"`).
//!
//! While frozen, the guest's writes to those filesystems block, and qemu-ga itself refuses
//! most commands; so a freeze must never outlive the work it protects.
//! [`GuestAgent::with_frozen_filesystems`] enforces that: whatever happens after a freeze was
//! attempted (work error, work timeout, freeze timeout), it thaws, retrying the thaw a few
//! times, and reports a thaw failure alongside the work's own outcome.

use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{GuestAgent, GuestAgentError};

/// How many times a thaw is attempted before giving up.
const THAW_ATTEMPTS: u32 = 3;

/// `guest-fsfreeze-status` reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsFreezeStatus {
    Thawed,
    Frozen,
}

/// Outcome of [`GuestAgent::with_frozen_filesystems`] when something went wrong.
#[derive(Debug, thiserror::Error)]
pub enum FreezeError<E: std::error::Error + 'static> {
    #[error("cannot freeze the guest filesystems (they were thawed again)")]
    Freeze(#[source] GuestAgentError),
    #[error("work on frozen guest filesystems failed (they were thawed again)")]
    Work(#[source] E),
    #[error(
        "work on frozen guest filesystems took longer than {limit:?} (they were thawed again)"
    )]
    WorkTimeout { limit: Duration },
    /// The work finished (successfully or not: see `work_failed`) but the filesystems could
    /// not be thawed; the guest's writes may stay blocked until a later thaw succeeds.
    #[error(
        "cannot thaw the guest filesystems after {attempts} attempts (work {outcome})",
        outcome = if *work_failed { "failed" } else { "succeeded" }
    )]
    Thaw {
        attempts: u32,
        work_failed: bool,
        #[source]
        source: GuestAgentError,
    },
}

impl GuestAgent {
    /// `guest-fsfreeze-freeze`: flushes and freezes every freezable guest filesystem; returns
    /// how many were frozen. On an error qemu-ga thaws what it had frozen.
    pub async fn fsfreeze_freeze(&self, timeout: Duration) -> Result<u32, GuestAgentError> {
        self.call_count("guest-fsfreeze-freeze", timeout).await
    }

    /// `guest-fsfreeze-thaw`: thaws the filesystems; returns how many were thawed (0 when
    /// nothing was frozen).
    pub async fn fsfreeze_thaw(&self, timeout: Duration) -> Result<u32, GuestAgentError> {
        self.call_count("guest-fsfreeze-thaw", timeout).await
    }

    /// `guest-fsfreeze-status`.
    pub async fn fsfreeze_status(&self) -> Result<FsFreezeStatus, GuestAgentError> {
        let v = self.call("guest-fsfreeze-status", None).await?;
        serde_json::from_value(v).map_err(|source| GuestAgentError::Decode {
            command: "guest-fsfreeze-status".into(),
            source,
        })
    }

    async fn call_count(&self, command: &str, timeout: Duration) -> Result<u32, GuestAgentError> {
        let v = self.call_with_timeout(command, None, timeout).await?;
        serde_json::from_value(v).map_err(|source| GuestAgentError::Decode {
            command: command.into(),
            source,
        })
    }

    /// Freezes the guest filesystems, runs `work` (at most `work_limit`), and thaws them
    /// again whatever happened, returning `work`'s value.
    ///
    /// The freeze may take up to `freeze_timeout` (it flushes dirty data). After a freeze
    /// timeout the agent may still complete the freeze later; the thaw is queued behind it,
    /// so it is attempted then too. A freeze the agent rejected (an error reply) is returned
    /// as [`FreezeError::Freeze`] without a thaw, and `work` does not run. Each thaw attempt
    /// uses the agent's default timeout.
    pub async fn with_frozen_filesystems<T, E, Fut>(
        &self,
        freeze_timeout: Duration,
        work_limit: Duration,
        work: Fut,
    ) -> Result<T, FreezeError<E>>
    where
        E: std::error::Error + 'static,
        Fut: Future<Output = Result<T, E>>,
    {
        let outcome = match self.fsfreeze_freeze(freeze_timeout).await {
            // The agent answered with an error: it thawed whatever it had frozen itself (and a
            // thaw may be refused just the same, e.g. when freezing is disabled).
            Err(e @ GuestAgentError::Command { .. }) => return Err(FreezeError::Freeze(e)),
            // No answer: the freeze may still happen; thaw below.
            Err(e) => Err(FreezeError::Freeze(e)),
            Ok(frozen) => {
                tracing::debug!(frozen, "guest filesystems frozen");
                match tokio::time::timeout(work_limit, work).await {
                    Ok(Ok(v)) => Ok(v),
                    Ok(Err(e)) => Err(FreezeError::Work(e)),
                    Err(_) => Err(FreezeError::WorkTimeout { limit: work_limit }),
                }
            }
        };
        match self.thaw_with_retries().await {
            Ok(thawed) => {
                tracing::debug!(thawed, "guest filesystems thawed");
                outcome
            }
            Err((attempts, source)) => {
                tracing::warn!(error = %source, "guest filesystems could not be thawed");
                Err(FreezeError::Thaw {
                    attempts,
                    work_failed: outcome.is_err(),
                    source,
                })
            }
        }
    }

    async fn thaw_with_retries(&self) -> Result<u32, (u32, GuestAgentError)> {
        let mut attempt = 1;
        loop {
            match self.fsfreeze_thaw(self.default_timeout).await {
                Ok(n) => return Ok(n),
                Err(e) if attempt >= THAW_ATTEMPTS => return Err((attempt, e)),
                Err(e) => {
                    tracing::debug!(attempt, error = %e, "guest-fsfreeze-thaw failed; retrying");
                    attempt += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_decodes() {
        let s: FsFreezeStatus = serde_json::from_value(serde_json::json!("frozen")).unwrap();
        assert_eq!(s, FsFreezeStatus::Frozen);
        assert!(serde_json::from_value::<FsFreezeStatus>(serde_json::json!("melting")).is_err());
    }
}

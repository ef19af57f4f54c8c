//! QEMU background jobs (`qapi/job.json`) and the VM snapshot jobs built on them
//! (`snapshot-save`, `snapshot-load`, `snapshot-delete` from `qapi/migration.json`, QEMU ≥ 6.0).
//!
//! A job goes `created → running → (waiting → pending →) concluded`, or through `aborting` to
//! `concluded` on failure; a concluded job keeps its error text in `query-jobs` until
//! `job-dismiss` removes it (status `null`). The snapshot jobs are created with manual
//! dismissal, so their error can always be read.
//!
//! Invariants:
//! - the event subscription is taken before the job is started, so no `JOB_STATUS_CHANGE` is
//!   missed; `query-jobs` is also polled, so a lagging subscriber cannot stall the wait;
//! - every job this module waits for to conclusion is dismissed, failed or not (its error
//!   text is read first and returned in [`JobError::Failed`]), so job ids can be reused;
//! - a job that does not conclude within the timeout is left alone and reported as
//!   [`JobError::Timeout`]; [`QmpClient::wait_job`] can pick it up again later.
//!
//! Memory snapshots ("restore resumes exactly where the VM was"):
//! 1. save: [`QmpClient::snapshot_save`] with `vmstate` = one qcow2 format node and `devices`
//!    = every writable disk's format node. QEMU pauses the vCPUs for the duration, writes RAM
//!    and device state into `vmstate`'s image and an internal snapshot `tag` into every
//!    device, then resumes the vCPUs if they were running;
//! 2. restore: [`QmpClient::snapshot_restore`]: `stop` (the guest must not run while its
//!    disks are reverted under it), `snapshot-load` of the same tag/vmstate/devices, then
//!    `cont` when the VM should run. The guest continues from the instruction it was at when
//!    the snapshot was saved, with the RAM, device and disk contents of that moment. If the
//!    load fails the VM is left paused: its state may be partially restored, so it must not be
//!    resumed blindly;
//!    A VM that is not running is restored the same way after starting QEMU with its vCPUs
//!    stopped (`-S`, `vireo_qemu::argv::LaunchOptions::start_paused`): `snapshot-load` in
//!    `prelaunch`, then `cont`; no guest code runs before the load. The machine must have the
//!    same devices as when the snapshot was saved (hot-added ones on the same ports), or QEMU
//!    rejects the device state;
//! 3. delete: [`QmpClient::snapshot_delete`] with every device that holds the tag.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;

use crate::qmp::{QmpClient, QmpError};

/// How often a wait re-reads `query-jobs` besides listening for events.
const JOB_POLL: Duration = Duration::from_millis(250);

/// Job states (`JobStatus` in qapi/job.json); unknown future states are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobStatus {
    Undefined,
    Created,
    Running,
    Paused,
    Ready,
    Standby,
    Waiting,
    Pending,
    Aborting,
    Concluded,
    Null,
    Other(String),
}

impl JobStatus {
    const TABLE: [(&'static str, JobStatus); 11] = [
        ("undefined", JobStatus::Undefined),
        ("created", JobStatus::Created),
        ("running", JobStatus::Running),
        ("paused", JobStatus::Paused),
        ("ready", JobStatus::Ready),
        ("standby", JobStatus::Standby),
        ("waiting", JobStatus::Waiting),
        ("pending", JobStatus::Pending),
        ("aborting", JobStatus::Aborting),
        ("concluded", JobStatus::Concluded),
        ("null", JobStatus::Null),
    ];

    pub fn parse(s: &str) -> JobStatus {
        Self::TABLE
            .iter()
            .find(|(name, _)| *name == s)
            .map(|(_, st)| st.clone())
            .unwrap_or_else(|| JobStatus::Other(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        match self {
            JobStatus::Other(s) => s,
            known => Self::TABLE
                .iter()
                .find(|(_, st)| st == known)
                .map(|(name, _)| *name)
                .unwrap_or("unknown"),
        }
    }

    /// The job has finished (successfully or not) and waits to be dismissed, or is gone.
    pub fn is_final(&self) -> bool {
        matches!(self, JobStatus::Concluded | JobStatus::Null)
    }
}

impl<'de> Deserialize<'de> for JobStatus {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(JobStatus::parse(&String::deserialize(d)?))
    }
}

impl Serialize for JobStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One `query-jobs` entry (`JobInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct JobInfo {
    pub id: String,
    /// Job type (`snapshot-save`, `snapshot-load`, `snapshot-delete`, `mirror`, …).
    #[serde(rename = "type")]
    pub job_type: String,
    pub status: JobStatus,
    /// Progress in arbitrary units, comparable to `total_progress`.
    #[serde(default)]
    pub current_progress: u64,
    #[serde(default)]
    pub total_progress: u64,
    /// Why the job failed; present only for failed jobs.
    #[serde(default)]
    pub error: Option<String>,
}

/// What a VM snapshot job works on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSnapshot {
    /// Job id for QEMU; must not collide with another live job.
    pub job_id: String,
    /// Snapshot name inside each image.
    pub tag: String,
    /// Format node that stores (or stores) the RAM and device state; must be qcow2.
    pub vmstate: String,
    /// Format nodes whose disk contents are saved/loaded/deleted with the tag.
    pub devices: Vec<String>,
}

/// Errors of jobs and the snapshot jobs.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("cannot start {command} job {job_id}")]
    Start {
        command: &'static str,
        job_id: String,
        #[source]
        source: QmpError,
    },
    #[error("job {job_id} ({job_type}) failed: {message}")]
    Failed {
        job_id: String,
        job_type: String,
        /// QEMU's error text for the job.
        message: String,
    },
    #[error("job {job_id} did not conclude within {timeout:?} (last status: {last_status})")]
    Timeout {
        job_id: String,
        timeout: Duration,
        last_status: String,
    },
    #[error("job {job_id} does not exist")]
    NotFound { job_id: String },
    #[error("{command} for job {job_id} failed")]
    Qmp {
        command: &'static str,
        job_id: String,
        #[source]
        source: QmpError,
    },
}

fn status_event_for<'a>(name: &str, data: &'a Value, job_id: &str) -> Option<&'a str> {
    if name != "JOB_STATUS_CHANGE" || data.get("id").and_then(Value::as_str) != Some(job_id) {
        return None;
    }
    data.get("status").and_then(Value::as_str)
}

impl QmpClient {
    /// `query-jobs`: every job QEMU knows, including concluded ones not yet dismissed.
    pub async fn query_jobs(&self) -> Result<Vec<JobInfo>, QmpError> {
        self.execute_typed("query-jobs", None).await
    }

    /// `job-dismiss {"id"}`: removes a concluded job.
    pub async fn job_dismiss(&self, job_id: &str) -> Result<(), JobError> {
        self.execute("job-dismiss", Some(json!({"id": job_id})))
            .await
            .map(drop)
            .map_err(|source| JobError::Qmp {
                command: "job-dismiss",
                job_id: job_id.to_string(),
                source,
            })
    }

    async fn job_info(&self, job_id: &str) -> Result<Option<JobInfo>, JobError> {
        let jobs = self.query_jobs().await.map_err(|source| JobError::Qmp {
            command: "query-jobs",
            job_id: job_id.to_string(),
            source,
        })?;
        Ok(jobs.into_iter().find(|j| j.id == job_id))
    }

    /// Waits until job `job_id` concludes, dismisses it, and returns its final info, or
    /// [`JobError::Failed`] with QEMU's error text. Listens for `JOB_STATUS_CHANGE` and polls
    /// `query-jobs`.
    pub async fn wait_job(&self, job_id: &str, timeout: Duration) -> Result<JobInfo, JobError> {
        let events = self.events();
        self.wait_job_with(events, job_id, timeout).await
    }

    async fn wait_job_with(
        &self,
        mut events: tokio::sync::broadcast::Receiver<crate::QmpEvent>,
        job_id: &str,
        timeout: Duration,
    ) -> Result<JobInfo, JobError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut poll = tokio::time::interval(JOB_POLL);
        let mut last_status = String::from("unknown");
        loop {
            // The first tick fires at once, so the job's state is read immediately.
            tokio::select! {
                event = events.recv() => match event {
                    Ok(ev) => match status_event_for(&ev.name, &ev.data, job_id) {
                        Some(status) if JobStatus::parse(status).is_final() => {}
                        Some(status) => {
                            last_status = status.to_string();
                            continue;
                        }
                        None => continue,
                    },
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => {
                        return Err(JobError::Qmp {
                            command: "query-jobs",
                            job_id: job_id.to_string(),
                            source: QmpError::Closed { command: "query-jobs".into() },
                        })
                    }
                },
                _ = poll.tick() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(JobError::Timeout {
                        job_id: job_id.to_string(),
                        timeout,
                        last_status,
                    });
                }
            }
            let Some(info) = self.job_info(job_id).await? else {
                return Err(JobError::NotFound {
                    job_id: job_id.to_string(),
                });
            };
            last_status = info.status.as_str().to_string();
            if info.status != JobStatus::Concluded {
                continue;
            }
            self.job_dismiss(job_id).await?;
            tracing::debug!(job = job_id, job_type = %info.job_type, error = ?info.error, "job concluded");
            return match info.error {
                Some(message) => Err(JobError::Failed {
                    job_id: info.id,
                    job_type: info.job_type,
                    message,
                }),
                None => Ok(info),
            };
        }
    }

    /// Starts job command `command` with `arguments` and waits for it (see
    /// [`QmpClient::wait_job`]).
    async fn run_job(
        &self,
        command: &'static str,
        job_id: &str,
        arguments: Value,
        timeout: Duration,
    ) -> Result<JobInfo, JobError> {
        let events = self.events();
        self.execute(command, Some(arguments))
            .await
            .map_err(|source| JobError::Start {
                command,
                job_id: job_id.to_string(),
                source,
            })?;
        self.wait_job_with(events, job_id, timeout).await
    }

    /// Saves a VM snapshot: RAM and device state into `snap.vmstate`, disk contents of
    /// `snap.devices` as internal snapshots named `snap.tag`.
    ///
    /// QMP contract: `snapshot-save {"job-id", "tag", "vmstate", "devices": [...]}` starts a
    /// job; the vCPUs are paused while it runs and resumed afterwards if they were running. An
    /// existing tag fails the job ("already exists").
    pub async fn snapshot_save(
        &self,
        snap: &VmSnapshot,
        timeout: Duration,
    ) -> Result<JobInfo, JobError> {
        self.run_job(
            "snapshot-save",
            &snap.job_id,
            json!({"job-id": snap.job_id, "tag": snap.tag, "vmstate": snap.vmstate,
                   "devices": snap.devices}),
            timeout,
        )
        .await
    }

    /// Loads a VM snapshot saved by [`QmpClient::snapshot_save`] (same tag, vmstate node and
    /// devices). Prefer [`QmpClient::snapshot_restore`], which stops the VM first.
    ///
    /// QMP contract: `snapshot-load {"job-id", "tag", "vmstate", "devices": [...]}` starts a
    /// job that replaces RAM, device state and the disk contents of `devices`; an unknown tag
    /// fails the job ("does not exist in one or more devices").
    pub async fn snapshot_load(
        &self,
        snap: &VmSnapshot,
        timeout: Duration,
    ) -> Result<JobInfo, JobError> {
        self.run_job(
            "snapshot-load",
            &snap.job_id,
            json!({"job-id": snap.job_id, "tag": snap.tag, "vmstate": snap.vmstate,
                   "devices": snap.devices}),
            timeout,
        )
        .await
    }

    /// Deletes the snapshot `tag` from `devices` (the vmstate lives in one of them).
    ///
    /// QMP contract: `snapshot-delete {"job-id", "tag", "devices": [...]}` starts a job.
    pub async fn snapshot_delete(
        &self,
        job_id: &str,
        tag: &str,
        devices: &[String],
        timeout: Duration,
    ) -> Result<JobInfo, JobError> {
        self.run_job(
            "snapshot-delete",
            job_id,
            json!({"job-id": job_id, "tag": tag, "devices": devices}),
            timeout,
        )
        .await
    }

    /// Restores a memory snapshot so the guest resumes exactly where it was when the snapshot
    /// was saved: `stop`, [`QmpClient::snapshot_load`], then `cont` if `resume` (see the
    /// module docs). On a failed load the VM stays paused.
    pub async fn snapshot_restore(
        &self,
        snap: &VmSnapshot,
        resume: bool,
        timeout: Duration,
    ) -> Result<JobInfo, JobError> {
        let qmp_err = |command: &'static str| {
            move |source| JobError::Qmp {
                command,
                job_id: snap.job_id.clone(),
                source,
            }
        };
        self.stop().await.map_err(qmp_err("stop"))?;
        let info = self.snapshot_load(snap, timeout).await?;
        if resume {
            self.cont().await.map_err(qmp_err("cont"))?;
        }
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_info_decodes_failed_jobs() {
        let jobs: Vec<JobInfo> = serde_json::from_value(json!([
            {"current-progress": 1, "status": "concluded", "total-progress": 1,
             "type": "snapshot-load", "id": "j2",
             "error": "Snapshot 'nosuch' does not exist in one or more devices"},
            {"current-progress": 0, "status": "future-state", "total-progress": 1,
             "type": "mirror", "id": "j3"}
        ]))
        .unwrap();
        assert_eq!(jobs[0].status, JobStatus::Concluded);
        assert!(jobs[0].error.as_deref().unwrap().contains("nosuch"));
        assert_eq!(jobs[1].status, JobStatus::Other("future-state".into()));
        assert!(!jobs[1].status.is_final());
    }

    #[test]
    fn status_names_round_trip() {
        for (name, status) in JobStatus::TABLE.iter() {
            assert_eq!(&JobStatus::parse(name), status);
            assert_eq!(status.as_str(), *name);
        }
    }

    #[test]
    fn status_events_are_matched_by_job_id() {
        let data = json!({"status": "concluded", "id": "j1"});
        assert_eq!(
            status_event_for("JOB_STATUS_CHANGE", &data, "j1"),
            Some("concluded")
        );
        assert_eq!(status_event_for("JOB_STATUS_CHANGE", &data, "j2"), None);
        assert_eq!(status_event_for("BLOCK_JOB_COMPLETED", &data, "j1"), None);
    }
}

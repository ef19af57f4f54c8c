//! [`NetHypervisor`]: wraps any [`Hypervisor`] so that a VM's taps exist exactly while its
//! QEMU runs. Before a launch (and on adoption after a daemon restart) the VM's managed NICs
//! are plugged — taps created, attached, firewalled — and when the machine reports `Exited`
//! they are removed. The actor and the engine's lifecycle code stay unaware of networking.
//!
//! Invariant: taps are tied to one QEMU generation ([`NetManager::plug_for_launch`]), so the
//! late exit of an old QEMU never removes the taps of the VM's next run.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::broadcast;
use uuid::Uuid;
use vireo_types::{Name, NicBackend};

use super::model::NicAttachment;
use super::NetManager;
use crate::hv::{HvError, Hypervisor, LaunchRequest, Machine, MachineEvent};

#[derive(Debug)]
pub struct NetHypervisor {
    inner: Arc<dyn Hypervisor>,
    net: Arc<NetManager>,
}

impl NetHypervisor {
    pub fn new(inner: Arc<dyn Hypervisor>, net: Arc<NetManager>) -> Self {
        NetHypervisor { inner, net }
    }

    /// The managed NICs of `req` (tap backends with an attachment record).
    async fn nics_of(&self, req: &LaunchRequest) -> Result<Vec<NicAttachment>, HvError> {
        let taps: Vec<&str> = req
            .spec
            .nics
            .iter()
            .filter_map(|n| match &n.backend {
                NicBackend::Tap { ifname } => Some(ifname.as_str()),
                NicBackend::User => None,
            })
            .collect();
        if taps.is_empty() {
            return Ok(vec![]);
        }
        let rec = self
            .net
            .vm_nics(req.uuid)
            .await
            .map_err(|e| launch_err(req, &e))?;
        Ok(rec
            .map(|r| r.nics)
            .unwrap_or_default()
            .into_iter()
            .filter(|a| taps.contains(&a.tap.as_str()))
            .collect())
    }

    async fn plug(&self, req: &LaunchRequest) -> Result<Option<u64>, HvError> {
        let nics = self.nics_of(req).await?;
        if nics.is_empty() {
            return Ok(None);
        }
        let vm = Name::new(req.name.clone()).map_err(|e| HvError::Launch {
            vm: req.name.clone(),
            detail: e.to_string(),
        })?;
        self.net
            .plug_for_launch(req.uuid, &vm, &nics)
            .await
            .map(Some)
            .map_err(|e| launch_err(req, &e))
    }

    fn watch(&self, m: &Arc<dyn Machine>, vm_uuid: Uuid, generation: u64) {
        let net = self.net.clone();
        let mut events = m.subscribe();
        let m = m.clone();
        tokio::spawn(async move {
            if !m.has_exited() {
                loop {
                    match events.recv().await {
                        Ok(MachineEvent::Exited) | Err(broadcast::error::RecvError::Closed) => {
                            break
                        }
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                            if m.has_exited() {
                                break;
                            }
                        }
                    }
                }
            }
            drop(m);
            if let Err(e) = net.unplug_machine(vm_uuid, generation).await {
                tracing::warn!(vm = %vm_uuid, error = %crate::error::chain(&e), "removing taps of an exited VM failed");
            }
        });
    }
}

fn launch_err(req: &LaunchRequest, e: &crate::error::EngineError) -> HvError {
    HvError::Launch {
        vm: req.name.clone(),
        detail: format!("preparing its network: {}", crate::error::chain(e)),
    }
}

#[async_trait]
impl Hypervisor for NetHypervisor {
    async fn launch(&self, req: &LaunchRequest) -> Result<Arc<dyn Machine>, HvError> {
        let generation = self.plug(req).await?;
        match self.inner.launch(req).await {
            Ok(m) => {
                if let Some(g) = generation {
                    self.watch(&m, req.uuid, g);
                }
                Ok(m)
            }
            Err(e) => {
                if let Some(g) = generation {
                    if let Err(u) = self.net.unplug_machine(req.uuid, g).await {
                        tracing::warn!(vm = %req.name, error = %crate::error::chain(&u), "removing taps after a failed launch");
                    }
                }
                Err(e)
            }
        }
    }

    async fn adopt(&self, req: &LaunchRequest, pid: u32) -> Result<Arc<dyn Machine>, HvError> {
        let m = self.inner.adopt(req, pid).await?;
        // The surviving QEMU holds its taps open; plugging re-registers them (and re-creates
        // whatever went missing while the daemon was away).
        match self.plug(req).await {
            Ok(Some(g)) => self.watch(&m, req.uuid, g),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(vm = %req.name, error = %e, "re-plugging an adopted VM's NICs failed")
            }
        }
        Ok(m)
    }

    fn accel_name(&self) -> String {
        self.inner.accel_name()
    }
}

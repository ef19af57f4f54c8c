//! Facts about this host reported by `GET /v1/host`.

use vireo_api::host::HostInfo;

use crate::api::AppState;

/// What is decided once at start-up.
#[derive(Debug, Clone)]
pub struct HostFacts {
    pub hostname: String,
    pub hv: std::sync::Arc<vireo_engine::qemu_hv::QemuHypervisor>,
}

pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

fn fs_space(path: &std::path::Path) -> (u64, u64) {
    match nix::sys::statvfs::statvfs(path) {
        Ok(s) => {
            let frag = s.fragment_size();
            (s.blocks() * frag, s.blocks_available() * frag)
        }
        Err(_) => (0, 0),
    }
}

pub fn host_info(s: &AppState) -> HostInfo {
    let (mem_total, mem_avail) = vireo_engine::engine::host_memory_mib();
    let (st_total, st_avail) = fs_space(&s.engine.config().state_dir);
    let (total, running) = s.engine.vm_counts();
    HostInfo {
        node: s.engine.config().node.clone(),
        hostname: s.host.hostname.clone(),
        vireo_version: env!("CARGO_PKG_VERSION").to_string(),
        qemu_version: s.host.hv.qemu_version(),
        accel: s.host.hv.accel_info(),
        cpus: std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
        memory_total_mib: mem_total,
        memory_available_mib: mem_avail,
        storage_total_bytes: st_total,
        storage_available_bytes: st_avail,
        vms_total: total,
        vms_running: running,
        uptime_s: s.engine.uptime().as_secs(),
        network: Default::default(),
    }
}

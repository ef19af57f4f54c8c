//! Image operations of the engine facade: list, build (through builders), delete.

use chrono::Utc;
use uuid::Uuid;
use vireo_api::images::{BuildImageRequest, ImageContent, ImageInfo};
use vireo_api::operations::Operation;

use super::*;
use crate::error::{chain, EngineError, Result};
use crate::ops::Cleanup;
use crate::records::{self, ImageFiles, ImageRecord};

impl Engine {
    pub async fn list_images(&self) -> Result<Vec<ImageInfo>> {
        let mut v: Vec<ImageInfo> = self
            .inner
            .db
            .list_images()
            .await?
            .into_iter()
            .map(|r| r.info)
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    pub async fn get_image(&self, name: &str) -> Result<ImageInfo> {
        self.inner
            .db
            .get_image(name)
            .await?
            .map(|r| r.info)
            .ok_or_else(|| not_found("image", name))
    }

    pub async fn build_image(&self, req: BuildImageRequest, requestor: &str) -> Result<Operation> {
        let builder = self
            .inner
            .builders
            .get(req.builder.as_str())
            .cloned()
            .ok_or_else(|| {
                let mut known: Vec<&String> = self.inner.builders.keys().collect();
                known.sort();
                EngineError::invalid(
                    "builder",
                    format!(
                        "unknown image builder {:?} (available: {})",
                        req.builder.as_str(),
                        known
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })?;
        let params = BuildParams {
            release: req.release.clone(),
            size_mib: req.size_mib,
            packages: req.packages.clone(),
        };
        builder
            .check(&params)
            .map_err(|e| EngineError::invalid(e.field, e.message))?;
        let name = req.name.clone().unwrap_or_else(|| req.builder.clone());
        if self.inner.db.get_image(name.as_str()).await?.is_some() {
            return Err(EngineError::Conflict(format!(
                "image {:?} already exists",
                name.as_str()
            )));
        }
        let uuid = Uuid::now_v7();
        let dir = self
            .inner
            .cfg
            .state_dir
            .join("images")
            .join(format!("{name}-{uuid}"));
        let op = self
            .inner
            .ops
            .begin("image.build", &format!("image/{name}"), requestor, false)
            .await;
        let op2 = op.clone();
        let db = self.inner.db.clone();
        let events = self.inner.events.clone();
        let requestor = requestor.to_string();
        let builder_name = req.builder.to_string();
        tokio::spawn(async move {
            let res = async {
                op2.journal(Cleanup::RemovePath { path: dir.clone() }).await;
                std::fs::create_dir_all(&dir)
                    .map_err(|e| EngineError::internal("creating the image directory", e))?;
                let out = dir.clone();
                let progress_op = op2.clone();
                let built = tokio::task::spawn_blocking(move || {
                    builder.build(&params, &out, &move |s: &str| progress_op.stage(s))
                })
                .await
                .map_err(|e| EngineError::internal("running the image builder", e))?
                .map_err(|e| {
                    EngineError::Unavailable(format!(
                        "building image {name} failed: {}",
                        chain(e.as_ref())
                    ))
                })?;
                let size_bytes = dir_size(&dir);
                let (content, files) = match built {
                    BuiltImage::Kernel {
                        kernel,
                        initrd,
                        cmdline,
                        kernel_version,
                        ready_marker,
                        default_data_disk_mib,
                    } => (
                        ImageContent::Kernel {
                            kernel_version,
                            cmdline,
                            ready_marker,
                            default_data_disk_mib,
                        },
                        ImageFiles::Kernel { kernel, initrd },
                    ),
                    BuiltImage::Disk {
                        path,
                        firmware,
                        virtual_size_bytes,
                    } => (
                        ImageContent::Disk {
                            firmware,
                            virtual_size_bytes,
                        },
                        ImageFiles::Disk { path },
                    ),
                };
                let rec = ImageRecord {
                    info: ImageInfo {
                        name: name.clone(),
                        uuid,
                        created_at: Utc::now(),
                        content,
                        size_bytes,
                        source: format!("build:{builder_name}"),
                    },
                    dir: dir.clone(),
                    files,
                };
                op2.journal(Cleanup::DeleteKey {
                    key: records::image_key(name.as_str()),
                })
                .await;
                db.create_image(&rec).await?;
                events.emit(
                    "image.created",
                    None,
                    &format!("image/{name}"),
                    &requestor,
                    serde_json::json!({}),
                );
                Ok::<(), EngineError>(())
            }
            .await;
            match res {
                Ok(()) => op2.succeed().await,
                Err(e) => op2.fail(&e.to_string()).await,
            }
        });
        Ok(op.snapshot().unwrap_or_else(|| unreachable_op(op.id)))
    }

    pub async fn delete_image(&self, name: &str, requestor: &str) -> Result<Operation> {
        let rec = self
            .inner
            .db
            .get_image(name)
            .await?
            .ok_or_else(|| not_found("image", name))?;
        let users: Vec<String> = self
            .lock_vms()
            .values()
            .map(|h| h.view().record)
            .filter(|r| r.image.as_ref().is_some_and(|i| i.as_str() == name))
            .map(|r| format!("{}/{}", r.project, r.name))
            .collect();
        if !users.is_empty() {
            return Err(EngineError::Conflict(format!(
                "image {name:?} is used by VMs: {}",
                users.join(", ")
            )));
        }
        let linked: Vec<String> = self
            .inner
            .db
            .list_volumes(None)
            .await?
            .into_iter()
            .filter(|v| v.backing_image.as_ref().is_some_and(|i| i.as_str() == name))
            .map(|v| v.reference().to_string())
            .collect();
        if !linked.is_empty() {
            return Err(EngineError::Conflict(format!(
                "image {name:?} is the base of volumes: {}",
                linked.join(", ")
            )));
        }
        let op = self
            .inner
            .ops
            .begin("image.delete", &format!("image/{name}"), requestor, false)
            .await;
        let db = self.inner.db.clone();
        let events = self.inner.events.clone();
        let (name, requestor) = (name.to_string(), requestor.to_string());
        let op2 = op.clone();
        tokio::spawn(async move {
            let res = async {
                db.delete_key(&records::image_key(&name)).await?;
                if let Err(e) = tokio::fs::remove_dir_all(&rec.dir).await {
                    tracing::warn!(dir = %rec.dir.display(), error = %e, "removing image directory failed");
                }
                events.emit("image.deleted", None, &format!("image/{name}"), &requestor, serde_json::json!({}));
                Ok::<(), EngineError>(())
            }
            .await;
            match res {
                Ok(()) => op2.succeed().await,
                Err(e) => op2.fail(&e.to_string()).await,
            }
        });
        Ok(op.snapshot().unwrap_or_else(|| unreachable_op(op.id)))
    }
}

impl Engine {
    /// Registers the uploaded disk image at `upload` (any format the image engine reads,
    /// detected by content; from [`Engine::volume_upload_path`], removed when done) as disk
    /// image `name`, converted to qcow2. VMs made from it get copy-on-write overlays.
    pub async fn import_image(
        &self,
        name: vireo_types::Name,
        firmware: vireo_types::Firmware,
        upload: std::path::PathBuf,
        requestor: &str,
    ) -> Result<Operation> {
        let upload_dir = upload.parent().map(std::path::PathBuf::from);
        let discard = || {
            if let Some(d) = &upload_dir {
                let _ = std::fs::remove_dir_all(d);
            }
        };
        match self.inner.db.get_image(name.as_str()).await {
            Ok(None) => {}
            Ok(Some(_)) => {
                discard();
                return Err(EngineError::Conflict(format!(
                    "image {:?} already exists",
                    name.as_str()
                )));
            }
            Err(e) => {
                discard();
                return Err(e);
            }
        }
        let uuid = Uuid::now_v7();
        let dir = self
            .inner
            .cfg
            .state_dir
            .join("images")
            .join(format!("{name}-{uuid}"));
        let target = format!("image/{name}");
        let op = self
            .inner
            .ops
            .begin("image.import", &target, requestor, true)
            .await;
        if let Some(d) = &upload_dir {
            op.journal(Cleanup::RemovePath { path: d.clone() }).await;
        }
        let (engine, op2, requestor) = (self.clone(), op.clone(), requestor.to_string());
        tokio::spawn(async move {
            let res = async {
                op2.journal(Cleanup::RemovePath { path: dir.clone() }).await;
                std::fs::create_dir_all(&dir)
                    .map_err(|e| EngineError::internal("creating the image directory", e))?;
                op2.stage("converting to qcow2");
                let (src, dst, op_p) = (upload.clone(), dir.join("disk.qcow2"), op2.clone());
                let dst2 = dst.clone();
                super::storage::blocking("importing the image", move || {
                    let cancel = std::sync::atomic::AtomicBool::new(false);
                    let mut progress = |done: u64, total: u64| {
                        if op_p.is_cancelled() {
                            cancel.store(true, std::sync::atomic::Ordering::Relaxed);
                        }
                        op_p.progress(super::storage::bytes_progress(done, total, "converting"));
                    };
                    crate::storage::dir::convert_untrusted(&src, &dst2, &mut progress, &cancel)
                })
                .await?;
                let rec = ImageRecord {
                    info: ImageInfo {
                        name: name.clone(),
                        uuid,
                        created_at: Utc::now(),
                        content: ImageContent::Disk {
                            firmware,
                            virtual_size_bytes: disk_virtual_size(&dst),
                        },
                        size_bytes: dir_size(&dir),
                        source: "import".into(),
                    },
                    dir: dir.clone(),
                    files: ImageFiles::Disk { path: dst },
                };
                op2.journal(Cleanup::DeleteKey {
                    key: records::image_key(name.as_str()),
                })
                .await;
                engine.inner.db.create_image(&rec).await?;
                engine.inner.events.emit(
                    "image.created",
                    None,
                    &target,
                    &requestor,
                    serde_json::json!({"source": "import"}),
                );
                Ok::<(), EngineError>(())
            }
            .await;
            if let Some(d) = &upload_dir {
                let _ = tokio::fs::remove_dir_all(d).await;
            }
            match res {
                Ok(()) => op2.succeed().await,
                Err(e) => {
                    tracing::warn!(error = %chain(&e), "image import failed");
                    op2.fail(&e.to_string()).await
                }
            }
        });
        Ok(op.snapshot().unwrap_or_else(|| unreachable_op(op.id)))
    }

    /// The qcow2 file of disk image `name`, for export (images are immutable).
    pub async fn image_disk(&self, name: &str) -> Result<std::path::PathBuf> {
        let rec = self
            .inner
            .db
            .get_image(name)
            .await?
            .ok_or_else(|| not_found("image", name))?;
        match rec.files {
            ImageFiles::Disk { path } => Ok(path),
            ImageFiles::Kernel { .. } => Err(EngineError::Conflict(format!(
                "image {name:?} is a kernel image (kernel + initramfs), not a disk; export a VM made from it instead"
            ))),
        }
    }
}

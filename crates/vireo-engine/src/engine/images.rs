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
                    builder.build(&out, &move |s: &str| progress_op.stage(s))
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

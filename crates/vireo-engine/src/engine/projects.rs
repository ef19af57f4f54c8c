//! Project operations of the engine facade.

use chrono::Utc;
use vireo_api::projects::{CreateProjectRequest, ProjectInfo};
use vireo_api::DEFAULT_PROJECT;

use super::*;
use crate::error::{EngineError, Result};
use crate::records;

impl Engine {
    pub async fn list_projects(&self) -> Result<Vec<ProjectInfo>> {
        let mut v = self.inner.db.list_projects().await?;
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    pub async fn create_project(
        &self,
        req: CreateProjectRequest,
        requestor: &str,
    ) -> Result<ProjectInfo> {
        if req.description.len() > 1024 {
            return Err(EngineError::invalid(
                "description",
                "description is longer than 1024 bytes",
            ));
        }
        let p = ProjectInfo {
            name: req.name,
            created_at: Utc::now(),
            description: req.description,
        };
        self.inner.db.create_project(&p).await?;
        self.inner.events.emit(
            "project.created",
            Some(p.name.as_str()),
            &format!("project/{}", p.name),
            requestor,
            serde_json::json!({}),
        );
        Ok(p)
    }

    pub async fn delete_project(&self, name: &str, requestor: &str) -> Result<()> {
        if name == DEFAULT_PROJECT {
            return Err(EngineError::Conflict(
                "the default project cannot be deleted".into(),
            ));
        }
        if self.inner.db.get_project(name).await?.is_none() {
            return Err(not_found("project", name));
        }
        let n = self.lock_vms().keys().filter(|(p, _)| p == name).count();
        if n > 0 {
            return Err(EngineError::Conflict(format!(
                "project {name:?} still has {n} VMs"
            )));
        }
        self.inner
            .db
            .delete_key(&records::project_key(name))
            .await?;
        self.inner.events.emit(
            "project.deleted",
            Some(name),
            &format!("project/{name}"),
            requestor,
            serde_json::json!({}),
        );
        Ok(())
    }
}

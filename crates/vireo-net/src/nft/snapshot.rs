//! Read-back of Vireo's tables (`nft -j list table …`) for drift detection: rule handles are
//! stripped, so two snapshots are equal exactly when the tables hold the same rules.

use super::*;

/// Could not interpret `nft -j` output.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("nft -j output is not JSON")]
    Json(#[source] serde_json::Error),
    #[error("nft -j output has no \"nftables\" array")]
    Shape,
}

/// The content of Vireo's tables as listed by `nft -j`, with kernel-assigned handles removed,
/// so two snapshots are equal iff the tables hold the same chains and rules in the same order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftSnapshot {
    /// Chain and rule objects (as JSON without `handle`), in listing order.
    pub objects: Vec<Value>,
}

impl NftSnapshot {
    /// Parses one or more concatenated `nft -j list table …` outputs.
    pub fn parse(listing: &str) -> Result<Self, SnapshotError> {
        let mut objects = Vec::new();
        for doc in serde_json::Deserializer::from_str(listing).into_iter::<Value>() {
            let doc = doc.map_err(SnapshotError::Json)?;
            let items = doc
                .get("nftables")
                .and_then(Value::as_array)
                .ok_or(SnapshotError::Shape)?;
            for item in items {
                let Some(obj) = item.as_object() else {
                    continue;
                };
                if obj.contains_key("metainfo") {
                    continue;
                }
                let mut item = item.clone();
                strip_handles(&mut item);
                objects.push(item);
            }
        }
        Ok(Self { objects })
    }

    /// Number of rules in the snapshot.
    pub fn rule_count(&self) -> usize {
        self.objects
            .iter()
            .filter(|o| o.get("rule").is_some())
            .count()
    }

    /// Names of the chains in `family`.
    pub fn chains(&self, family: &str) -> Vec<String> {
        self.objects
            .iter()
            .filter_map(|o| o.get("chain"))
            .filter(|c| c.get("family").and_then(Value::as_str) == Some(family))
            .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_owned))
            .collect()
    }
}

fn strip_handles(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.remove("handle");
            map.values_mut().for_each(strip_handles);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_handles),
        _ => {}
    }
}

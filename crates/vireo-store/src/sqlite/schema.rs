//! Schema of `state.db` and its migrations.
//!
//! The schema version is SQLite's `PRAGMA user_version`; `PRAGMA application_id` marks the
//! file as Vireo's. Migrations are append-only and ordered: migration `n` turns a version
//! `n - 1` database into version `n`, inside one transaction together with the version bump,
//! so a crash leaves the database at a whole version. A database newer than this build is
//! refused rather than guessed at.
//!
//! Tables (current version):
//! - `meta(name, value)`: `revision` = the store's global revision;
//! - `kv(key BLOB, value, create_revision, mod_revision, version, lease)`: live keys only;
//!   keys are `BLOB`s so SQLite orders them bytewise, like etcd;
//! - `leases(id, ttl_ms, deadline_ms)`: deadlines are wall-clock Unix milliseconds so they
//!   survive restarts; `AUTOINCREMENT` keeps lease ids from ever being reused.

use std::path::Path;

use rusqlite::Connection;

use crate::error::StoreError;

/// `application_id` of a Vireo state database ("VIRE").
pub const APPLICATION_ID: i64 = 0x5649_5245;

/// One schema step.
#[derive(Debug)]
pub struct Migration {
    pub version: i64,
    pub description: &'static str,
    pub sql: &'static str,
}

/// Every migration, in order; `MIGRATIONS[i].version == i + 1`.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "keys and the global revision",
        sql: "
            CREATE TABLE meta (
                name  TEXT PRIMARY KEY NOT NULL,
                value INTEGER NOT NULL
            ) STRICT;
            INSERT INTO meta (name, value) VALUES ('revision', 0);
            CREATE TABLE kv (
                key             BLOB PRIMARY KEY NOT NULL,
                value           BLOB NOT NULL,
                create_revision INTEGER NOT NULL,
                mod_revision    INTEGER NOT NULL,
                version         INTEGER NOT NULL
            ) STRICT, WITHOUT ROWID;
        ",
    },
    Migration {
        version: 2,
        description: "leases",
        sql: "
            CREATE TABLE leases (
                id          INTEGER PRIMARY KEY AUTOINCREMENT,
                ttl_ms      INTEGER NOT NULL,
                deadline_ms INTEGER NOT NULL
            ) STRICT;
            CREATE INDEX leases_by_deadline ON leases (deadline_ms);
            ALTER TABLE kv ADD COLUMN lease INTEGER;
            CREATE INDEX kv_by_lease ON kv (lease) WHERE lease IS NOT NULL;
        ",
    },
];

/// The schema version this build writes.
pub fn latest_version() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

fn sql_error(operation: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::backend(operation, source)
}

/// Brings the database at `path` (shown in errors) up to `target` (at most
/// [`latest_version`]). Returns the version found before migrating.
pub fn migrate(conn: &mut Connection, path: &Path, target: i64) -> Result<i64, StoreError> {
    let found: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(sql_error("reading the schema version"))?;
    let application_id: i64 = conn
        .pragma_query_value(None, "application_id", |row| row.get(0))
        .map_err(sql_error("reading the application id"))?;
    let ours = application_id == APPLICATION_ID || (application_id == 0 && found == 0);
    if !ours {
        return Err(StoreError::ForeignDatabase {
            path: path.to_owned(),
            application_id,
        });
    }
    if found == 0 {
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |row| row.get(0))
            .map_err(sql_error("inspecting a new database"))?;
        if tables > 0 {
            return Err(StoreError::ForeignDatabase {
                path: path.to_owned(),
                application_id,
            });
        }
    }
    if found > latest_version() {
        return Err(StoreError::SchemaTooNew {
            path: path.to_owned(),
            found,
            supported: latest_version(),
        });
    }
    for migration in MIGRATIONS
        .iter()
        .filter(|m| m.version > found && m.version <= target)
    {
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)
            .map_err(sql_error("starting a schema migration"))?;
        tx.execute_batch(migration.sql)
            .map_err(sql_error("applying a schema migration"))?;
        tx.pragma_update(None, "application_id", APPLICATION_ID)
            .map_err(sql_error("marking the database as Vireo's"))?;
        tx.pragma_update(None, "user_version", migration.version)
            .map_err(sql_error("recording the schema version"))?;
        tx.commit()
            .map_err(sql_error("committing a schema migration"))?;
        tracing::info!(
            path = %path.display(),
            version = migration.version,
            description = migration.description,
            "applied state database migration"
        );
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_versions_are_dense_and_ordered() {
        for (index, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(migration.version, index as i64 + 1);
        }
    }

    /// The schema every migration path ends at, compared with a committed golden file
    /// (regenerate with `VIREO_BLESS=1 cargo test -p vireo-store`).
    #[test]
    fn final_schema_matches_golden() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, Path::new(":memory:"), latest_version()).unwrap();
        let mut stmt = conn
            .prepare("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY type, name")
            .unwrap();
        let mut schema: String = stmt
            .query_map([], |row| row.get::<_, String>(0))
            .unwrap()
            .map(|sql| sql.unwrap() + ";\n")
            .collect();
        schema.push_str(&format!("-- user_version = {}\n", latest_version()));
        let golden_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/schema.sql");
        if std::env::var_os("VIREO_BLESS").is_some() {
            std::fs::create_dir_all(golden_path.parent().unwrap()).unwrap();
            std::fs::write(&golden_path, &schema).unwrap();
        }
        let golden = std::fs::read_to_string(&golden_path).unwrap();
        assert_eq!(
            schema,
            golden,
            "schema drifted from {}",
            golden_path.display()
        );
    }

    #[test]
    fn refuses_newer_and_foreign_databases() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, Path::new("x"), latest_version()).unwrap();
        conn.pragma_update(None, "user_version", latest_version() + 1)
            .unwrap();
        assert!(matches!(
            migrate(&mut conn, Path::new("x"), latest_version()),
            Err(StoreError::SchemaTooNew { found, .. }) if found == latest_version() + 1
        ));

        let mut other = Connection::open_in_memory().unwrap();
        other.execute_batch("CREATE TABLE t (x)").unwrap();
        assert!(matches!(
            migrate(&mut other, Path::new("y"), latest_version()),
            Err(StoreError::ForeignDatabase { .. })
        ));
        other.pragma_update(None, "application_id", 42).unwrap();
        other.pragma_update(None, "user_version", 1).unwrap();
        assert!(matches!(
            migrate(&mut other, Path::new("y"), latest_version()),
            Err(StoreError::ForeignDatabase {
                application_id: 42,
                ..
            })
        ));
    }

    #[test]
    fn migrating_step_by_step_equals_migrating_at_once() {
        let dump = |conn: &Connection| -> Vec<String> {
            let mut stmt = conn
                .prepare("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name")
                .unwrap();
            let rows = stmt.query_map([], |row| row.get(0)).unwrap();
            rows.map(Result::unwrap).collect()
        };
        let mut stepwise = Connection::open_in_memory().unwrap();
        for target in 1..=latest_version() {
            let found = migrate(&mut stepwise, Path::new("s"), target).unwrap();
            assert_eq!(found, target - 1);
        }
        let mut at_once = Connection::open_in_memory().unwrap();
        assert_eq!(
            migrate(&mut at_once, Path::new("a"), latest_version()).unwrap(),
            0
        );
        assert_eq!(dump(&stepwise), dump(&at_once));
    }
}

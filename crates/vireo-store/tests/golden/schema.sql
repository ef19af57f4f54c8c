CREATE INDEX kv_by_lease ON kv (lease) WHERE lease IS NOT NULL;
CREATE INDEX leases_by_deadline ON leases (deadline_ms);
CREATE TABLE kv (
                key             BLOB PRIMARY KEY NOT NULL,
                value           BLOB NOT NULL,
                create_revision INTEGER NOT NULL,
                mod_revision    INTEGER NOT NULL,
                version         INTEGER NOT NULL
            , lease INTEGER) STRICT, WITHOUT ROWID;
CREATE TABLE leases (
                id          INTEGER PRIMARY KEY AUTOINCREMENT,
                ttl_ms      INTEGER NOT NULL,
                deadline_ms INTEGER NOT NULL
            ) STRICT;
CREATE TABLE meta (
                name  TEXT PRIMARY KEY NOT NULL,
                value INTEGER NOT NULL
            ) STRICT;
CREATE TABLE sqlite_sequence(name,seq);
-- user_version = 2

//! The embedded default store: a data directory with content-addressed blobs and an SQLite
//! database of named, versioned objects (components and model artifacts) and pipeline
//! versions. Each change is one transaction, and blobs are written atomically before the
//! rows that name them, so `kill -9` at any moment leaves a store that opens and holds the
//! last completed change.

mod blobs;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, bail};
use rusqlite::{Connection, OptionalExtension, params};
use semver::{Version, VersionReq};
use serde::Serialize;

use blobs::Blobs;
pub use blobs::write_atomically;

/// What a named object is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A WebAssembly component that fills a stage.
    Component,
    /// A model artifact (weights, coefficients) that a model stage reads.
    Artifact,
}

impl Kind {
    /// `component` or `artifact`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Component => "component",
            Kind::Artifact => "artifact",
        }
    }
}

/// A stored, immutable `name@version` and the digest of its bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Object {
    pub kind: Kind,
    pub name: String,
    pub version: Version,
    pub digest: String,
    /// For components: the stage worlds it fits, e.g. `preprocessor,model,postprocessor`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub worlds: String,
    pub size: u64,
}

impl Object {
    /// `name@version`.
    pub fn reference(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

/// A stored pipeline version.
#[derive(Clone, Debug, Serialize)]
pub struct PipelineVersion {
    pub pipeline: String,
    pub version: u64,
    /// The pinned specification, as JSON (the `pipeline` module gives it meaning).
    pub spec: String,
    pub created_at: String,
}

/// A pipeline and which version serves.
#[derive(Clone, Debug, Serialize)]
pub struct PipelineRecord {
    pub name: String,
    /// The active version; `None` while the pipeline is unloaded.
    pub active: Option<u64>,
    /// The version `load` restores after an unload.
    pub last_active: Option<u64>,
}

/// The store: blobs plus one SQLite connection, used by one admin operation at a time.
pub struct Store {
    dir: PathBuf,
    blobs: Blobs,
    db: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    digest TEXT NOT NULL,
    worlds TEXT NOT NULL DEFAULT '',
    size INTEGER NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (kind, name, version)
);
CREATE TABLE IF NOT EXISTS pipelines (
    name TEXT PRIMARY KEY,
    active INTEGER,
    last_active INTEGER
);
CREATE TABLE IF NOT EXISTS pipeline_versions (
    pipeline TEXT NOT NULL REFERENCES pipelines(name),
    version INTEGER NOT NULL,
    spec TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (pipeline, version)
);
CREATE TABLE IF NOT EXISTS pins (
    pipeline TEXT NOT NULL,
    version INTEGER NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    object_version TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS pins_by_object ON pins (kind, name, object_version);
CREATE TABLE IF NOT EXISTS command_line_specs (
    pipeline TEXT PRIMARY KEY,
    spec TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS experiments (
    pipeline TEXT PRIMARY KEY REFERENCES pipelines(name),
    record TEXT NOT NULL
);
";

impl Store {
    /// Open (creating) the store in `dir`.
    pub fn open(dir: &Path) -> anyhow::Result<Store> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let blobs = Blobs::open(dir.join("blobs"))?;
        let db_path = dir.join("weir.db");
        if !db_path.exists() {
            std::fs::File::create(&db_path)
                .with_context(|| format!("creating the database {}", db_path.display()))?;
        }
        // SQLite gives its -wal and -shm files the database file's mode.
        restrict_to_owner(&db_path)?;
        let db = Connection::open(&db_path)
            .with_context(|| format!("opening the database {}", db_path.display()))?;
        // WAL with full sync: a committed change survives a crash or power loss.
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "FULL")?;
        db.pragma_update(None, "foreign_keys", "ON")?;
        db.execute_batch(SCHEMA)?;
        Ok(Store {
            dir: dir.to_path_buf(),
            blobs,
            db: Mutex::new(db),
        })
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Store `bytes` as `kind` `name@version`. The same bytes again is a no-op (returns
    /// `false`); other bytes under an existing `name@version` are refused: versions are
    /// immutable.
    pub fn put(
        &self,
        kind: Kind,
        name: &str,
        version: &Version,
        worlds: &str,
        bytes: &[u8],
    ) -> anyhow::Result<(Object, bool)> {
        check_name(&format!("{} name", kind.as_str()), name)?;
        let digest = crate::digest(bytes);
        if let Some(existing) = self.get(kind, name, version)? {
            if existing.digest != digest {
                bail!(StoreError::Immutable(format!(
                    "{} {name}@{version} already exists with other bytes ({}); versions are \
                     immutable: push a new version",
                    kind.as_str(),
                    existing.digest
                )));
            }
            return Ok((existing, false));
        }
        self.blobs.put(bytes)?;
        let object = Object {
            kind,
            name: name.to_owned(),
            version: version.clone(),
            digest,
            worlds: worlds.to_owned(),
            size: bytes.len() as u64,
        };
        self.db().execute(
            "INSERT INTO objects (kind, name, version, digest, worlds, size) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![kind.as_str(), name, version.to_string(), object.digest, worlds, object.size],
        )?;
        Ok((object, true))
    }

    /// The bytes stored under `digest`.
    pub fn blob(&self, digest: &str) -> anyhow::Result<Vec<u8>> {
        self.blobs.get(digest)
    }

    /// `kind` `name@version`, if stored.
    pub fn get(&self, kind: Kind, name: &str, version: &Version) -> anyhow::Result<Option<Object>> {
        Ok(self
            .list(kind, Some(name))?
            .into_iter()
            .find(|o| &o.version == version))
    }

    /// The highest stored version of `kind` `name` that matches `requirement`.
    pub fn resolve(
        &self,
        kind: Kind,
        name: &str,
        requirement: &VersionReq,
    ) -> anyhow::Result<Object> {
        let candidates = self.list(kind, Some(name))?;
        let found = candidates
            .iter()
            .filter(|o| requirement.matches(&o.version))
            .max_by(|a, b| a.version.cmp(&b.version));
        match found {
            Some(object) => Ok(object.clone()),
            None => {
                let versions: Vec<String> =
                    candidates.iter().map(|o| o.version.to_string()).collect();
                bail!(StoreError::NotFound(format!(
                    "no {} {name} matches {requirement} (stored versions: {})",
                    kind.as_str(),
                    if versions.is_empty() {
                        "none".to_owned()
                    } else {
                        versions.join(", ")
                    }
                )))
            }
        }
    }

    /// Every stored object of `kind` (named `name`, if given), by name then version.
    pub fn list(&self, kind: Kind, name: Option<&str>) -> anyhow::Result<Vec<Object>> {
        let db = self.db();
        let mut statement = db.prepare(
            "SELECT name, version, digest, worlds, size FROM objects \
             WHERE kind = ?1 AND (?2 IS NULL OR name = ?2)",
        )?;
        let rows = statement.query_map(params![kind.as_str(), name], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, u64>(4)?,
            ))
        })?;
        let mut objects = Vec::new();
        for row in rows {
            let (name, version, digest, worlds, size) = row?;
            objects.push(Object {
                kind,
                name,
                version: version.parse()?,
                digest,
                worlds,
                size,
            });
        }
        objects.sort_by(|a, b| a.name.cmp(&b.name).then(a.version.cmp(&b.version)));
        Ok(objects)
    }

    /// Delete `kind` `name@version`, unless a retained pipeline version pins it. Its blob
    /// stays (another name may share the bytes).
    pub fn delete(&self, kind: Kind, name: &str, version: &Version) -> anyhow::Result<()> {
        let db = self.db();
        let pinned: Vec<(String, u64)> = db
            .prepare("SELECT pipeline, version FROM pins WHERE kind = ?1 AND name = ?2 AND object_version = ?3")?
            .query_map(params![kind.as_str(), name, version.to_string()], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        if !pinned.is_empty() {
            let by: Vec<String> = pinned.iter().map(|(p, v)| format!("{p} v{v}")).collect();
            bail!(StoreError::Pinned(format!(
                "{} {name}@{version} is pinned by pipeline versions {}",
                kind.as_str(),
                by.join(", ")
            )));
        }
        let deleted = db.execute(
            "DELETE FROM objects WHERE kind = ?1 AND name = ?2 AND version = ?3",
            params![kind.as_str(), name, version.to_string()],
        )?;
        if deleted == 0 {
            bail!(StoreError::NotFound(format!(
                "no {} {name}@{version}",
                kind.as_str()
            )));
        }
        Ok(())
    }

    /// Record the next version of `pipeline` with its pinned objects, and make it active if
    /// `activate`; one transaction. Returns the new version number.
    pub fn add_version(
        &self,
        pipeline: &str,
        spec: &str,
        pins: &[&Object],
        activate: bool,
    ) -> anyhow::Result<u64> {
        let mut db = self.db();
        let tx = db.transaction()?;
        tx.execute(
            "INSERT INTO pipelines (name) VALUES (?1) ON CONFLICT (name) DO NOTHING",
            params![pipeline],
        )?;
        let version: u64 = tx.query_row(
            "SELECT COALESCE(MAX(version), 0) + 1 FROM pipeline_versions WHERE pipeline = ?1",
            params![pipeline],
            |r| r.get(0),
        )?;
        tx.execute(
            "INSERT INTO pipeline_versions (pipeline, version, spec) VALUES (?1, ?2, ?3)",
            params![pipeline, version, spec],
        )?;
        for object in pins {
            tx.execute(
                "INSERT INTO pins (pipeline, version, kind, name, object_version) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![pipeline, version, object.kind.as_str(), object.name, object.version.to_string()],
            )?;
        }
        if activate {
            set_active(&tx, pipeline, Some(version))?;
        }
        tx.commit()?;
        Ok(version)
    }

    /// Make `version` of `pipeline` the active one, or unload it (`None`).
    pub fn set_active(&self, pipeline: &str, version: Option<u64>) -> anyhow::Result<()> {
        let mut db = self.db();
        let tx = db.transaction()?;
        set_active(&tx, pipeline, version)?;
        tx.commit()?;
        Ok(())
    }

    /// Record `pipeline`'s experiment (JSON), and when `activate` is given make that version
    /// active: one transaction, so a promotion is never half done.
    pub fn set_experiment(
        &self,
        pipeline: &str,
        record: &str,
        activate: Option<u64>,
    ) -> anyhow::Result<()> {
        let mut db = self.db();
        let tx = db.transaction()?;
        if let Some(version) = activate {
            set_active(&tx, pipeline, Some(version))?;
        }
        tx.execute(
            "INSERT INTO experiments (pipeline, record) VALUES (?1, ?2) \
             ON CONFLICT (pipeline) DO UPDATE SET record = excluded.record",
            params![pipeline, record],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Every pipeline's last experiment (JSON).
    pub fn experiments(&self) -> anyhow::Result<Vec<(String, String)>> {
        let db = self.db();
        let mut statement = db.prepare("SELECT pipeline, record FROM experiments")?;
        let rows = statement.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every pipeline with its active version.
    pub fn pipelines(&self) -> anyhow::Result<Vec<PipelineRecord>> {
        let db = self.db();
        let mut statement =
            db.prepare("SELECT name, active, last_active FROM pipelines ORDER BY name")?;
        let rows = statement.query_map([], |r| {
            Ok(PipelineRecord {
                name: r.get(0)?,
                active: r.get(1)?,
                last_active: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The spec (JSON) that the manifest named on `weir serve`'s command line for `pipeline`
    /// last resolved to, if one was ever deployed from there.
    pub fn command_line_spec(&self, pipeline: &str) -> anyhow::Result<Option<String>> {
        Ok(self
            .db()
            .query_row(
                "SELECT spec FROM command_line_specs WHERE pipeline = ?1",
                params![pipeline],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Remember `spec` as what `pipeline`'s command-line manifest resolves to now.
    pub fn set_command_line_spec(&self, pipeline: &str, spec: &str) -> anyhow::Result<()> {
        self.db().execute(
            "INSERT INTO command_line_specs (pipeline, spec) VALUES (?1, ?2) \
             ON CONFLICT (pipeline) DO UPDATE SET spec = excluded.spec",
            params![pipeline, spec],
        )?;
        Ok(())
    }

    /// Every stored version of `pipeline`, oldest first.
    pub fn versions(&self, pipeline: &str) -> anyhow::Result<Vec<PipelineVersion>> {
        let db = self.db();
        let mut statement = db.prepare(
            "SELECT version, spec, created_at FROM pipeline_versions WHERE pipeline = ?1 ORDER BY version",
        )?;
        let rows = statement.query_map(params![pipeline], |r| {
            Ok(PipelineVersion {
                pipeline: pipeline.to_owned(),
                version: r.get(0)?,
                spec: r.get(1)?,
                created_at: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

fn set_active(
    tx: &rusqlite::Transaction,
    pipeline: &str,
    version: Option<u64>,
) -> anyhow::Result<()> {
    let exists: Option<String> = tx
        .query_row(
            "SELECT name FROM pipelines WHERE name = ?1",
            params![pipeline],
            |r| r.get(0),
        )
        .optional()?;
    if exists.is_none() {
        bail!(StoreError::NotFound(format!("no pipeline '{pipeline}'")));
    }
    tx.execute(
        "UPDATE pipelines SET active = ?2, last_active = COALESCE(?2, last_active) WHERE name = ?1",
        params![pipeline, version],
    )?;
    Ok(())
}

/// Make `path` readable and writable by its owner only (0600): the token, the database and
/// the payload log hold what nobody else on the machine should read.
#[cfg(unix)]
pub fn restrict_to_owner(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making {} readable by its owner only", path.display()))
}

#[cfg(not(unix))]
pub fn restrict_to_owner(_path: &Path) -> anyhow::Result<()> {
    Ok(())
}

/// The longest name of a pipeline, component, artifact or artifact key.
pub const MAX_NAME: usize = 128;

/// Refuse a name that is not 1 to [`MAX_NAME`] ASCII letters, digits, `-`, `_` or `.`,
/// starting with a letter or digit. Names appear in URLs, file names, log lines and
/// `name@version` references, so none may hold a `/`, an `@` or a control character, or be
/// `.` or `..`.
/// `what` names the field in the message.
pub fn check_name(what: &str, name: &str) -> anyhow::Result<()> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
    let starts_well = name.starts_with(|c: char| c.is_ascii_alphanumeric());
    if name.len() > MAX_NAME || !starts_well || !name.chars().all(allowed) {
        let shown: String = name
            .chars()
            .take(40)
            .collect::<String>()
            .escape_debug()
            .to_string();
        bail!(
            "{what} '{shown}' must be 1 to {MAX_NAME} ASCII letters, digits, '-', '_' or '.', \
             starting with a letter or digit"
        );
    }
    Ok(())
}

/// Store refusals a caller must tell apart (to answer 404 or 409).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Pinned(String),
    #[error("{0}")]
    Immutable(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_keep_to_their_character_set_and_length() {
        for good in [
            "iris",
            "standard-scaler",
            "iris.model",
            "v1_2",
            "A",
            &"a".repeat(128),
        ] {
            assert!(check_name("name", good).is_ok(), "{good}");
        }
        let long = "a".repeat(129);
        for bad in [
            "", ".", "..", "../x", "a/b", "a@b", "a\nb", "a\0b", "-a", "é", &long,
        ] {
            let error = check_name("artifact name", bad).unwrap_err().to_string();
            assert!(error.starts_with("artifact name '"), "{bad}: {error}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn the_database_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        Store::open(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join("weir.db"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

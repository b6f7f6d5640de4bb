//! Revisions of the pipeline under `data_dir/pipeline` (the file layout and
//! write order are in the module doc of [`crate::pipeline`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One applied document, as `rN.json` holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Revision {
    pub revision: u64,
    /// RFC 3339, UTC.
    pub applied_at: String,
    /// What applied it: `file` (start or reload), `api`, `rollback of N`.
    pub source: String,
    /// SHA-256 of the document's canonical JSON.
    pub digest: String,
    pub document: Value,
}

/// A revision as `GET /api/v1/pipeline/revisions` lists it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RevisionInfo {
    pub revision: u64,
    pub applied_at: String,
    pub source: String,
    pub digest: String,
    pub live: bool,
}

/// Why the revisions could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct RevisionError {
    pub path: String,
    pub reason: String,
}

fn fail(path: &Path, e: impl std::fmt::Display) -> RevisionError {
    RevisionError {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Revisions kept besides the live one and the newest from the config file
/// (which a restart compares the file with); older ones are deleted.
pub const KEPT: usize = 100;

/// The revision files of one pipeline.
#[derive(Debug)]
pub struct Revisions {
    dir: PathBuf,
}

impl Revisions {
    pub fn open(dir: PathBuf) -> Result<Revisions, RevisionError> {
        std::fs::create_dir_all(&dir).map_err(|e| fail(&dir, e))?;
        Ok(Revisions { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, revision: u64) -> PathBuf {
        self.dir.join(format!("r{revision}.json"))
    }

    fn pointer(&self) -> PathBuf {
        self.dir.join("live")
    }

    /// The numbers of every stored revision, ascending.
    fn numbers(&self) -> Result<Vec<u64>, RevisionError> {
        let mut out = Vec::new();
        for item in std::fs::read_dir(&self.dir).map_err(|e| fail(&self.dir, e))? {
            let name = item.map_err(|e| fail(&self.dir, e))?.file_name();
            let name = name.to_string_lossy();
            if let Some(n) = name
                .strip_prefix('r')
                .and_then(|rest| rest.strip_suffix(".json"))
                .and_then(|n| n.parse().ok())
            {
                out.push(n);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// The number of the live revision, if one was applied.
    pub fn live_number(&self) -> Result<Option<u64>, RevisionError> {
        let path = self.pointer();
        match std::fs::read_to_string(&path) {
            Ok(text) => text
                .trim()
                .parse()
                .map(Some)
                .map_err(|e| fail(&path, format!("not a revision number: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(fail(&path, e)),
        }
    }

    pub fn get(&self, revision: u64) -> Result<Option<Revision>, RevisionError> {
        let path = self.path(revision);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| fail(&path, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(fail(&path, e)),
        }
    }

    /// The live revision, if one was applied.
    pub fn live(&self) -> Result<Option<Revision>, RevisionError> {
        let Some(n) = self.live_number()? else {
            return Ok(None);
        };
        self.get(n)?
            .map(Some)
            .ok_or_else(|| fail(&self.path(n), "the live revision's file is missing"))
    }

    /// The newest revision that came from the config file.
    pub fn last_from_file(&self) -> Result<Option<Revision>, RevisionError> {
        for n in self.numbers()?.into_iter().rev() {
            if let Some(r) = self.get(n)?
                && r.source == "file"
            {
                return Ok(Some(r));
            }
        }
        Ok(None)
    }

    pub fn list(&self) -> Result<Vec<RevisionInfo>, RevisionError> {
        let live = self.live_number()?;
        let mut out = Vec::new();
        for n in self.numbers()? {
            if let Some(r) = self.get(n)? {
                out.push(RevisionInfo {
                    revision: r.revision,
                    applied_at: r.applied_at,
                    source: r.source,
                    digest: r.digest,
                    live: Some(n) == live,
                });
            }
        }
        Ok(out)
    }

    /// The number the next revision gets.
    pub fn next_number(&self) -> Result<u64, RevisionError> {
        Ok(self.numbers()?.last().map_or(1, |n| n + 1))
    }

    /// Stores `revision` and makes it live: its file first, then the
    /// pointer, each durably. A crash between the two leaves the old
    /// revision live (the new file is listed, not live).
    pub fn commit(&self, revision: &Revision) -> Result<(), RevisionError> {
        let path = self.path(revision.revision);
        let bytes = serde_json::to_vec_pretty(revision).map_err(|e| fail(&path, e))?;
        crate::durable::write(&path, &bytes).map_err(|e| fail(&path, e))?;
        let pointer = self.pointer();
        crate::durable::write(&pointer, format!("{}\n", revision.revision).as_bytes())
            .map_err(|e| fail(&pointer, e))?;
        self.prune(revision.revision);
        Ok(())
    }

    /// Deletes revisions older than the newest [`KEPT`], except `live` and
    /// the newest one from the file. A failure only leaves a file behind.
    fn prune(&self, live: u64) {
        let Ok(numbers) = self.numbers() else { return };
        if numbers.len() <= KEPT {
            return;
        }
        let from_file = self.last_from_file().ok().flatten().map(|r| r.revision);
        let cut = numbers.len() - KEPT;
        for n in &numbers[..cut] {
            if *n != live && Some(*n) != from_file {
                let path = self.path(*n);
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot delete an old pipeline revision");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revision(n: u64, source: &str) -> Revision {
        Revision {
            revision: n,
            applied_at: String::new(),
            source: source.into(),
            digest: format!("d{n}"),
            document: serde_json::json!({}),
        }
    }

    #[test]
    fn old_revisions_go_but_the_live_one_and_the_newest_from_the_file_stay() {
        let dir = tempfile::tempdir().unwrap();
        let revisions = Revisions::open(dir.path().to_owned()).unwrap();
        revisions.commit(&revision(1, "file")).unwrap();
        for n in 2..=(KEPT as u64 + 20) {
            revisions.commit(&revision(n, "api")).unwrap();
        }
        let listed: Vec<u64> = revisions
            .list()
            .unwrap()
            .iter()
            .map(|r| r.revision)
            .collect();
        assert_eq!(listed.len(), KEPT + 1, "{listed:?}");
        assert_eq!(listed[0], 1, "the newest from the file stays");
        assert_eq!(listed[1], 21);
        assert_eq!(revisions.live_number().unwrap(), Some(KEPT as u64 + 20));
        assert_eq!(revisions.next_number().unwrap(), KEPT as u64 + 21);
    }
}

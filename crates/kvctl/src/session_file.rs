//! A session's causal context kept in a file, so that a session spans commands.
//!
//! The file holds the session's context as a JSON clock. Updating it merges
//! under an exclusive lock and replaces the file atomically (write to a
//! temporary file, then rename), so concurrent kvctl processes of one session
//! neither corrupt it nor lose each other's clocks.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use vclock_proto::VClock;

/// The file of one named session.
#[derive(Debug, Clone)]
pub struct SessionFile {
    path: PathBuf,
    lock: PathBuf,
}

impl SessionFile {
    /// The session `name` in the user's state directory
    /// (`$XDG_STATE_HOME/kvctl/sessions`, else `~/.local/state/kvctl/sessions`).
    pub fn open(name: &str) -> io::Result<Self> {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            || name.starts_with('.')
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("session name {name:?}: use letters, digits, '-', '_' and '.'"),
            ));
        }
        let base = std::env::var_os("XDG_STATE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
            .ok_or_else(|| io::Error::other("neither XDG_STATE_HOME nor HOME is set"))?;
        Self::in_dir(&base.join("kvctl").join("sessions"), name)
    }

    /// The session `name` in `dir`.
    pub fn in_dir(dir: &Path, name: &str) -> io::Result<Self> {
        fs::create_dir_all(dir)
            .map_err(|e| io::Error::new(e.kind(), format!("creating {}: {e}", dir.display())))?;
        Ok(Self {
            path: dir.join(format!("{name}.json")),
            lock: dir.join(format!("{name}.lock")),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The session's context (empty for a new session).
    pub fn load(&self) -> io::Result<VClock> {
        match fs::read_to_string(&self.path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is not a session file: {e}", self.path.display()),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(VClock::new()),
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!("reading {}: {e}", self.path.display()),
            )),
        }
    }

    /// Merges `seen` into the stored context.
    pub fn merge(&self, seen: &VClock) -> io::Result<VClock> {
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock)?;
        lock.lock()?;
        let mut context = self.load()?;
        context.merge(seen);
        let tmp = self
            .path
            .with_extension(format!("json.{}", std::process::id()));
        let mut file = File::create(&tmp)?;
        file.write_all(serde_json::to_string(&context)?.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, &self.path)?;
        lock.unlock()?;
        Ok(context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_merge_across_processes_without_loss() {
        let dir = tempfile::tempdir().unwrap();
        let file = SessionFile::in_dir(dir.path(), "s").unwrap();
        assert!(file.load().unwrap().is_empty());
        let threads: Vec<_> = (0..8u64)
            .map(|i| {
                let file = file.clone();
                std::thread::spawn(move || {
                    for n in 1..=20 {
                        let seen: VClock = [(format!("node{i}"), n)].into_iter().collect();
                        file.merge(&seen).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let context = file.load().unwrap();
        for i in 0..8 {
            assert_eq!(context.get(&format!("node{i}")), 20);
        }
    }

    #[test]
    fn bad_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(SessionFile::in_dir(dir.path(), "ok-name_1").is_ok());
        for bad in ["", "../x", "a/b", ".hidden"] {
            assert!(SessionFile::open(bad).is_err(), "{bad:?}");
        }
    }
}

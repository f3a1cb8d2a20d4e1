//! The temporary directory a local stack lives in, and the clean-up of those a crashed run left.
//!
//! Each stack gets `$TMPDIR/orders-cache-stack-XXXXXX/` holding every server's data and logs, and an
//! `owner` file with the pid of the process that started it. A run that was killed (so `Drop` never ran)
//! leaves its directory behind; its servers died with it (parent-death signal), so the next start only
//! has to notice that the owner is gone and delete the directory. Ports are never reused from a
//! previous run, so a leftover can never make a new stack fail to bind (ports: [`super::super::ports`]).

use std::path::Path;

use tempfile::TempDir;

use crate::stack::error::Result;

const PREFIX: &str = "orders-cache-stack-";

pub struct WorkDir {
    dir: TempDir,
    /// Set once every server answered: a stack dropped before that failed to start.
    started: bool,
}

impl WorkDir {
    pub fn create() -> Result<Self> {
        remove_leftovers();
        let dir = tempfile::Builder::new().prefix(PREFIX).tempdir()?;
        // PostgreSQL runs as an unprivileged user when we are root: it must be able to reach its directory.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        std::fs::write(dir.path().join("owner"), std::process::id().to_string())?;
        Ok(Self { dir, started: false })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Every server answered: from now on the logs are kept only if the stack is dropped by a panic.
    pub fn mark_started(&mut self) {
        self.started = true;
    }
}

/// A stack that never started, or one dropped while its test panics, leaves its servers' logs under
/// `target/test-logs/` before its directory goes.
impl Drop for WorkDir {
    fn drop(&mut self) {
        if !self.started || std::thread::panicking() {
            let name = self.dir.path().file_name().unwrap_or_default().to_string_lossy();
            crate::test_logs::keep(self.dir.path(), &name);
        }
    }
}

/// Deletes the directories of earlier stacks whose owner process no longer exists.
fn remove_leftovers() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(PREFIX) {
            continue;
        }
        let owner = std::fs::read_to_string(entry.path().join("owner")).ok();
        let alive = owner
            .and_then(|pid| pid.trim().parse::<u32>().ok())
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

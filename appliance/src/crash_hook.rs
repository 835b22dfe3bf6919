//! For crash tests: `LIVEMOUNT_TEST_KILL_AFTER=POINT` makes the daemon kill itself with SIGKILL right after
//! the named point (an AWS call such as `RunInstances` that succeeded, or `mount-commit-read`), before
//! anything after it runs or is recorded: exactly the crash that journals, reconciliation and atomic
//! backups must recover from. Not set, it costs nothing.

const VAR: &str = "LIVEMOUNT_TEST_KILL_AFTER";

/// The point the hook is set to, if any.
pub fn point() -> Option<String> {
    std::env::var(VAR).ok().filter(|p| !p.is_empty())
}

/// Whether the hook is set to `point`.
pub fn armed_at(point: &str) -> bool {
    self::point().is_some_and(|p| p == point)
}

/// Kills this process with SIGKILL, saying why in the log.
pub fn kill(point: &str) {
    tracing::warn!("{VAR}={point}: killing the daemon with SIGKILL");
    let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
}

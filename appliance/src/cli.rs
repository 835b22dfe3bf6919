//! The command line: one variant per subcommand, each implemented in `commands/<name>.rs`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::commands::{backup::BackupCmd, library::LibraryCmd};

/// Where the library is when nothing else says.
pub const DEFAULT_LIBRARY: &str = "/var/lib/livemount/library";

/// livemount: use a backup instantly, without restoring it.
#[derive(Debug, Parser)]
#[command(name = "livemount", version, about, long_about = None)]
pub struct Cli {
    /// The library folder.
    #[arg(long, global = true, env = "LIVEMOUNT_LIBRARY", default_value = DEFAULT_LIBRARY)]
    pub library: PathBuf,

    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create and look after the dedup library.
    #[command(subcommand)]
    Library(LibraryCmd),
    /// Back disks up into the library, list, show, restore, verify and forget backups.
    #[command(subcommand)]
    Backup(BackupCmd),
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}

//! The command line: one variant per subcommand, each implemented in `commands/<name>.rs`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::client::ApiAddr;
use crate::commands::browse::{BrowseArgs, UnbrowseArgs};
use crate::commands::mount::{MountArgs, UnmountArgs};
use crate::commands::serve::ServeArgs;
use crate::commands::{backup::BackupCmd, cloud::CloudCmd, image::ImageCmd, library::LibraryCmd};

/// Where the library is when nothing else says.
pub const DEFAULT_LIBRARY: &str = "/var/lib/livemount/library";

/// livemount: use a backup instantly, without restoring it.
#[derive(Debug, Parser)]
#[command(name = "livemount", version, about, long_about = None)]
pub struct Cli {
    /// The library: a folder, or s3://BUCKET/PREFIX (the AWS SDK's default chain gives credentials, region
    /// and endpoint).
    #[arg(long, global = true, env = "LIVEMOUNT_LIBRARY", default_value = DEFAULT_LIBRARY)]
    pub library: PathBuf,

    /// The daemon's control API: a Unix socket path, or ADDR:PORT on loopback.
    #[arg(long, global = true, env = "LIVEMOUNT_API", default_value = "/run/livemount/api.sock")]
    pub api: ApiAddr,

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
    /// Run the appliance daemon: the FUSE file view, the live mounts and the control API.
    Serve(ServeArgs),
    /// Live-mount a backup: its disks become writable pseudo-disks, without a restore.
    Mount(Box<MountArgs>),
    /// List the live mounts with their counters.
    Mounts,
    /// Remove a live mount: delete its stores; the backup stays exactly as it was.
    Unmount(UnmountArgs),
    /// Mount a backup's file systems read-only to copy files out.
    Browse(BrowseArgs),
    /// Undo a browse.
    Unbrowse(UnbrowseArgs),
    /// Build appliance images (the iPXE boot disk).
    #[command(subcommand)]
    Image(ImageCmd),
    /// AWS: accounts, the iPXE machine image, and the resources this appliance made.
    #[command(subcommand)]
    Cloud(CloudCmd),
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

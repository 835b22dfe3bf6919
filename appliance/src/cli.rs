//! The command line: one variant per subcommand, each implemented in `commands/<name>.rs`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::client::ApiAddr;
use crate::commands::browse::{BrowseArgs, UnbrowseArgs};
use crate::commands::generate::GenerateArgs;
use crate::commands::mount::{MountArgs, UnmountArgs};
use crate::commands::serve::ServeArgs;
use crate::commands::token::TokenCmd;
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

    /// The daemon's control API: a Unix socket path, ADDR:PORT on loopback, or https://HOST:PORT of an
    /// appliance's remote API (with --token).
    #[arg(long, global = true, env = "LIVEMOUNT_API", default_value = "/run/livemount/api.sock")]
    pub api: ApiAddr,

    /// The bearer token of the remote API (`livemount token create` on the appliance gives one).
    #[arg(long, global = true, env = "LIVEMOUNT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// The certificate (PEM) to trust for the remote API, such as the appliance's self-signed one; without
    /// it the system's trusted authorities are used.
    #[arg(long, global = true, env = "LIVEMOUNT_CA_CERT")]
    pub ca_cert: Option<PathBuf>,

    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,

    /// Whether --library and --api were left at their defaults (then the daemon's configuration file
    /// may set them).
    #[arg(skip)]
    pub library_is_default: bool,
    #[arg(skip)]
    pub api_is_default: bool,
}

impl Cli {
    /// Parses the process's arguments, noting which settings were left at their defaults.
    pub fn from_args() -> Cli {
        use clap::{CommandFactory, FromArgMatches};
        let matches = Cli::command().get_matches();
        let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        let default = |id| matches.value_source(id) == Some(clap::parser::ValueSource::DefaultValue);
        cli.library_is_default = default("library");
        cli.api_is_default = default("api");
        cli
    }
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
    /// One screen of what the appliance is doing: mounts, sessions, jobs, cache and library.
    Status,
    /// Tokens of the remote API (managed on the appliance itself, over the local socket).
    #[command(subcommand)]
    Token(TokenCmd),
    /// Write the man pages and shell completions (for packaging).
    #[command(hide = true)]
    Generate(GenerateArgs),
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

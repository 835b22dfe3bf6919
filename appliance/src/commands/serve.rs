//! `livemount serve`: run the appliance daemon.

use std::path::PathBuf;

use clap::Args;

use crate::cli::Cli;
use crate::daemon::{self, ServeOptions};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Where mounts and their stores are kept (survives restarts).
    #[arg(long, default_value = "/var/lib/livemount")]
    pub state_dir: PathBuf,
    /// Where the FUSE file view is mounted.
    #[arg(long, default_value = "/run/livemount/fs")]
    pub fuse_root: PathBuf,
}

pub fn run(cli: &Cli, args: &ServeArgs) -> anyhow::Result<i32> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LIVEMOUNT_LOG")
        .unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    daemon::run(ServeOptions {
        state_dir: args.state_dir.clone(),
        fuse_root: args.fuse_root.clone(),
        api: cli.api.clone(),
        library: cli.library.clone(),
    })?;
    Ok(0)
}

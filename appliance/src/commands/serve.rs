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
    /// The iSCSI portal's address.
    #[arg(long, default_value = "0.0.0.0:3260")]
    pub portal: std::net::SocketAddr,
    /// The HTTP server for iPXE scripts.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub http: std::net::SocketAddr,
    /// Packages installed into guests that lack the iSCSI initiator (default: STATE_DIR/guest-packages).
    #[arg(long)]
    pub guest_packages: Option<PathBuf>,
    /// The address initiators reach the appliance at (default: the portal's address, or 127.0.0.1 when it
    /// listens on every address).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Where attached EBS volumes appear as devices named by their volume id (udev's Nitro NVMe names).
    #[arg(long, default_value = "/dev/disk/by-id")]
    pub ebs_devices: PathBuf,
    /// Bytes of chunks kept on this machine's disk (in LIVEMOUNT_CACHE/chunks) for the mounts and browses of
    /// a library in S3, shared by all of them; 0 keeps none. (A library in a folder is read where it is.)
    #[arg(long, default_value = "4G", value_parser = crate::output::parse_size)]
    pub chunk_cache_size: u64,
}

pub fn run(cli: &Cli, args: &ServeArgs) -> anyhow::Result<i32> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LIVEMOUNT_LOG").unwrap_or_else(|_| "info".into());
    use std::io::IsTerminal;
    // Colours only on a terminal: logs in files and the journal stay plain text.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let advertise = args.advertise.clone().unwrap_or_else(|| {
        if args.portal.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            args.portal.ip().to_string()
        }
    });
    daemon::run(ServeOptions {
        portal: args.portal,
        advertise,
        http: args.http,
        guest_packages: args.guest_packages.clone().unwrap_or_else(|| args.state_dir.join("guest-packages")),
        state_dir: args.state_dir.clone(),
        fuse_root: args.fuse_root.clone(),
        api: cli.api.clone(),
        library: cli.library.clone(),
        ebs_devices: args.ebs_devices.clone(),
        chunk_cache_size: args.chunk_cache_size,
    })?;
    Ok(0)
}

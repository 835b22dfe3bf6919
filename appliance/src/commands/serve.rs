//! `livemount serve`: run the appliance daemon, configured by flags, then the configuration file, then the
//! defaults.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use crate::cli::Cli;
use crate::client::ApiAddr;
use crate::config::{Config, DEFAULT_CONFIG};
use crate::daemon::remote::RemoteApiOptions;
use crate::daemon::{self, ServeOptions};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The configuration file (TOML); a flag given here wins over it. A missing file at the default place
    /// means the defaults.
    #[arg(long, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Where mounts and their stores are kept (survives restarts) [default: /var/lib/livemount].
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Where the FUSE file view is mounted [default: /run/livemount/fs].
    #[arg(long)]
    pub fuse_root: Option<PathBuf>,
    /// The iSCSI portal's address [default: 0.0.0.0:3260].
    #[arg(long)]
    pub portal: Option<SocketAddr>,
    /// The HTTP server for iPXE scripts [default: 0.0.0.0:8080].
    #[arg(long)]
    pub http: Option<SocketAddr>,
    /// Packages installed into guests that lack the iSCSI initiator [default: STATE_DIR/guest-packages].
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
    /// [default: 4G]
    #[arg(long, value_parser = crate::output::parse_size)]
    pub chunk_cache_size: Option<u64>,
    /// Also serve the control API on this TCP address, with TLS and bearer tokens (`livemount token`).
    #[arg(long)]
    pub remote_api: Option<SocketAddr>,
    /// The remote API's certificate chain and key (PEM); without them a self-signed pair is made in
    /// STATE_DIR/tls.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Read the configuration and the flags, print the settings the daemon would run with, and exit.
    #[arg(long)]
    pub check_config: bool,
}

pub fn run(cli: &Cli, args: &ServeArgs) -> anyhow::Result<i32> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LIVEMOUNT_LOG").unwrap_or_else(|_| "info".into());
    use std::io::IsTerminal;
    // Colours only on a terminal: logs in files and the journal stay plain text. Under systemd the journal
    // stamps every line itself (JOURNAL_STREAM says stderr goes there), so the lines carry no time of ours.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        logs.without_time().init();
    } else {
        logs.init();
    }
    let config = Config::load(&args.config)?;
    let options = options(cli, args, config);
    if args.check_config {
        println!("{options:#?}");
        return Ok(0);
    }
    daemon::run(options)?;
    Ok(0)
}

/// Each setting from the flag, else the configuration file, else the default.
fn options(cli: &Cli, args: &ServeArgs, config: Config) -> ServeOptions {
    let chunk_cache_size = args.chunk_cache_size.or(config.chunk_cache_bytes()).unwrap_or(4 << 30);
    let state_dir = args.state_dir.clone().or(config.state_dir).unwrap_or_else(|| "/var/lib/livemount".into());
    let portal = args.portal.or(config.portal).unwrap_or_else(|| "0.0.0.0:3260".parse().expect("valid"));
    let advertise = args.advertise.clone().or(config.advertise).unwrap_or_else(|| {
        if portal.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            portal.ip().to_string()
        }
    });
    // The global --library and --api have defaults of their own: the file counts only where they were left.
    let library = match (cli.library_is_default, config.library) {
        (true, Some(from_file)) => from_file,
        _ => cli.library.clone(),
    };
    let api = match (cli.api_is_default, config.api_socket) {
        (true, Some(socket)) => ApiAddr::Unix(socket),
        _ => cli.api.clone(),
    };
    let accounts = config
        .accounts
        .iter()
        .map(|a| crate::cloud::accounts::Account {
            name: a.name.clone(),
            role_arn: Some(a.role_arn.clone()),
            external_id: a.external_id.clone(),
            region: a.region.clone(),
        })
        .collect();
    let remote_api = match (args.remote_api, config.remote_api) {
        (Some(listen), _) => Some(RemoteApiOptions { listen, cert: args.tls_cert.clone(), key: args.tls_key.clone() }),
        (None, Some(r)) => Some(RemoteApiOptions {
            listen: r.listen,
            cert: args.tls_cert.clone().or(r.cert),
            key: args.tls_key.clone().or(r.key),
        }),
        (None, None) => None,
    };
    let guest_packages =
        args.guest_packages.clone().or(config.guest_packages).unwrap_or_else(|| default_guest_packages(&state_dir));
    ServeOptions {
        portal,
        advertise,
        http: args.http.or(config.http).unwrap_or_else(|| "0.0.0.0:8080".parse().expect("valid")),
        guest_packages,
        fuse_root: args.fuse_root.clone().or(config.fuse_root).unwrap_or_else(|| "/run/livemount/fs".into()),
        state_dir,
        api,
        library,
        ebs_devices: args.ebs_devices.clone(),
        chunk_cache_size,
        remote_api,
        accounts,
    }
}

/// The guest packages when nothing names them: the state folder's own copy when there is one, else what the
/// Debian package ships.
fn default_guest_packages(state_dir: &std::path::Path) -> PathBuf {
    let own = state_dir.join("guest-packages");
    let packaged = PathBuf::from(PACKAGED_GUEST_PACKAGES);
    if !own.exists() && packaged.exists() {
        return packaged;
    }
    own
}

/// Where the Debian package puts the open-iscsi packages for guests.
const PACKAGED_GUEST_PACKAGES: &str = "/usr/share/livemount/guest-packages";

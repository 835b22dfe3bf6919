//! `livemount serve`: the appliance daemon. It serves the FUSE file view, keeps the live mounts (restored
//! after a restart) and answers the control API on a Unix socket or loopback TCP.

mod api;
mod api_info;
mod backups_view;
mod boot;
mod browse;
mod cloud_api;
mod error;
mod jobs;
pub use jobs::JobInfo;
pub use mounts::CommitOrigin;
mod loopdev;
mod metrics;
mod mounts;
mod openapi;
pub mod remote;
mod status;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use blockdev::engine::Engine;
use blockdev::fuse::FileView;

use crate::client::ApiAddr;

#[derive(Debug)]
pub struct ServeOptions {
    pub portal: std::net::SocketAddr,
    /// The address initiators are told to reach the portal at (TargetAddress, iSCSI URLs).
    pub advertise: String,
    /// The HTTP server for iPXE scripts.
    pub http: std::net::SocketAddr,
    /// Packages the appliance installs into guests that lack the iSCSI initiator.
    pub guest_packages: PathBuf,
    pub state_dir: PathBuf,
    pub fuse_root: PathBuf,
    pub api: ApiAddr,
    pub library: PathBuf,
    /// Where attached EBS volumes appear (see `streaming_backup`).
    pub ebs_devices: PathBuf,
    /// The bound of the chunk cache of a library in S3 (0: none).
    pub chunk_cache_size: u64,
    /// The control API on TCP with TLS and tokens, when configured.
    pub remote_api: Option<remote::RemoteApiOptions>,
    /// Member accounts the configuration declares.
    pub accounts: Vec<crate::cloud::accounts::Account>,
}

/// The chunk cache every mount and browse of the library shares, for a library in S3: each chunk fetched
/// once for all of them, kept across restarts. (A folder library is on this machine already.)
fn chunk_cache(opts: &ServeOptions) -> anyhow::Result<Option<std::sync::Arc<dedup::cache::ChunkCache>>> {
    if !dedup::library::in_s3(&opts.library) || opts.chunk_cache_size == 0 {
        return Ok(None);
    }
    let dir = dedup::library::cache_root().join("chunks");
    let cache = dedup::cache::ChunkCache::open(&dir, opts.chunk_cache_size)?;
    tracing::info!("chunk cache {}: {} chunks kept from before", dir.display(), cache.stats().chunks);
    Ok(Some(std::sync::Arc::new(cache)))
}

pub fn run(opts: ServeOptions) -> anyhow::Result<()> {
    keep_large_buffers();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build()?;
    rt.block_on(serve(opts))
}

/// Serves large allocations (the read buffers of 1 MiB reads, recalled chunks) from the heap and keeps freed
/// memory there. By default glibc maps each one afresh and unmaps it when freed: 256 page faults, each page
/// zeroed by the kernel, per megabyte read, which cost more than the read itself on a warm disk. What stays
/// kept is bounded: at most 64 MiB free at the top of each heap before it is given back, and at most four
/// heaps (arenas) however many threads allocate.
fn keep_large_buffers() {
    #[cfg(target_env = "gnu")]
    {
        // nix has no binding of mallopt, so this stays a libc call.
        // SAFETY: mallopt takes no pointers; it only changes the allocator's settings, under its own lock.
        let ok = unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 16 << 20) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20) == 1
                && libc::mallopt(libc::M_ARENA_MAX, 4) == 1
        };
        if !ok {
            tracing::warn!("the allocator refused a setting; large reads will be slower");
        }
    }
}

async fn serve(opts: ServeOptions) -> anyhow::Result<()> {
    if !Path::new("/dev/fuse").exists() {
        bail!("/dev/fuse is missing, so the file view cannot be served: load the fuse module (`modprobe fuse`) or, in a container, pass the device through (`--device /dev/fuse`)");
    }
    detach_stale_mount(&opts.fuse_root);
    for dir in [&opts.state_dir, &opts.fuse_root] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }

    let engine = Engine::start().context("starting the block engine")?;
    tracing::info!(backend = ?engine.backend(), "block engine");
    let view = FileView::new();
    let iscsi = tokio::net::TcpListener::bind(opts.portal).await.with_context(|| {
        format!("binding the iSCSI portal {} (is another target, such as tgtd, using the port?)", opts.portal)
    })?;
    let advertise = format!("{}:{}", opts.advertise, iscsi.local_addr()?.port());
    let portal = blockdev::iscsi::Portal::new(advertise);
    tracing::info!(portal = %opts.portal, advertise = %portal.advertise, "iSCSI portal listening");
    tokio::spawn(blockdev::iscsi::serve(iscsi, portal.clone()));
    let http = tokio::net::TcpListener::bind(opts.http)
        .await
        .with_context(|| format!("binding the HTTP address {} for iPXE scripts", opts.http))?;
    let http_base = format!("http://{}:{}", opts.advertise, http.local_addr()?.port());
    tracing::info!(http = %opts.http, base = %http_base, "iPXE scripts served");
    let boot = boot::BootSettings { http_base, packages_dir: opts.guest_packages.clone() };
    let cloud = std::sync::Arc::new(crate::cloud::Cloud::open(&opts.state_dir).context("opening the cloud state")?);
    for account in &opts.accounts {
        cloud
            .accounts
            .declare(account.clone())
            .with_context(|| format!("the configuration's account {}", account.name))?;
    }
    let services = mounts::Services {
        engine,
        view: view.clone(),
        portal,
        boot,
        cloud,
        ebs_devices: opts.ebs_devices.clone(),
        chunk_cache: chunk_cache(&opts)?,
    };
    let manager = mounts::Manager::new(&opts.state_dir, &opts.fuse_root, &opts.library, services);
    let ipxe = api::ipxe_routes(manager.clone());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(http, ipxe).await {
            tracing::error!("the iPXE HTTP server stopped: {e}");
        }
    });
    manager.show_backups();
    manager.load().await;
    // AWS may be slow or out of reach: reconciling must not hold up the mounts that are back.
    let reconciling = manager.clone();
    tokio::spawn(async move { reconciling.reconcile_cloud().await });

    let fuse = blockdev::fuse::mount(view, &opts.fuse_root, tokio::runtime::Handle::current()).with_context(|| {
        format!("mounting the file view at {} (is the daemon running as root?)", opts.fuse_root.display())
    })?;
    tracing::info!(path = %opts.fuse_root.display(), "file view mounted");

    // The same API on the local socket and, for other machines, behind TLS and tokens; the tokens' own
    // routes only locally. Both serve one OpenAPI document, of every route: the remote API's documents the
    // token routes it does not serve.
    let tokens = std::sync::Arc::new(remote::Tokens::open(&opts.state_dir)?);
    let remote_addr = match &opts.remote_api {
        Some(r) => {
            let names = certificate_names(&opts.advertise);
            let shared = shared_routes(&manager, &opts, Some(r.listen.to_string()));
            let api = openapi::serve(shared, remote::token_routes(tokens.clone()).into_openapi());
            Some(remote::start(r, &opts.state_dir, &names, api, tokens.clone()).await?)
        }
        None => None,
    };
    let remote_shown = remote_addr.as_ref().map(|(a, _)| a.to_string());
    let local = shared_routes(&manager, &opts, remote_shown).merge(remote::token_routes(tokens));
    let app = openapi::serve(local, utoipa::openapi::OpenApi::default());
    start_watchdog();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
        tracing::info!("stopping");
    };
    let served = match &opts.api {
        ApiAddr::Unix(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let _ = std::fs::remove_file(path);
            let listener = tokio::net::UnixListener::bind(path)
                .with_context(|| format!("binding the API socket {}", path.display()))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
            tracing::info!(socket = %path.display(), "API listening");
            notify_ready();
            axum::serve(listener, app).with_graceful_shutdown(shutdown).await
        }
        ApiAddr::Tcp(addr) => {
            let listener =
                tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding the API address {addr}"))?;
            tracing::info!(%addr, "API listening");
            notify_ready();
            axum::serve(listener, app).with_graceful_shutdown(shutdown).await
        }
        ApiAddr::Https { .. } => {
            bail!("the daemon's own API is a Unix socket or loopback ADDR:PORT (the remote API: --remote-api)")
        }
    };
    if let Some((_, task)) = remote_addr {
        task.abort();
    }
    manager.shutdown().await;
    drop(fuse);
    detach_stale_mount(&opts.fuse_root);
    if let ApiAddr::Unix(path) = &opts.api {
        let _ = std::fs::remove_file(path);
    }
    served.context("serving the API")
}

/// The routes both the local socket and the remote API serve: the control API, the status and the metrics.
fn shared_routes(
    manager: &std::sync::Arc<mounts::Manager>,
    opts: &ServeOptions,
    remote: Option<String>,
) -> utoipa_axum::router::OpenApiRouter {
    api::control_routes(manager.clone())
        .merge(status::routes(manager.clone(), opts.library.display().to_string(), remote))
        .merge(metrics::routes(manager.clone()))
}

/// The names a self-signed certificate of the remote API carries: the advertised address, this host's name
/// and loopback.
fn certificate_names(advertise: &str) -> Vec<String> {
    let mut names = vec![advertise.to_string(), "localhost".to_string(), "127.0.0.1".to_string()];
    if let Ok(host) = nix::unistd::gethostname() {
        names.extend(host.into_string().ok());
    }
    names.sort();
    names.dedup();
    names
}

/// Tells systemd (Type=notify) that the daemon is ready; nothing happens outside systemd.
fn notify_ready() {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
}

/// Under a unit with `WatchdogSec=`, pings systemd at half the interval from a task of the daemon's runtime:
/// when the runtime stops making progress (every worker stuck), the pings stop and systemd restarts the
/// daemon, which recovers its mounts from their state.
fn start_watchdog() {
    // As sd_watchdog_enabled(3) reads them: WATCHDOG_USEC is the interval, and WATCHDOG_PID, when set, says
    // which process it is meant for (not a child that inherited the variables).
    let usec = std::env::var("WATCHDOG_USEC").ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let for_us = std::env::var("WATCHDOG_PID").map_or(true, |pid| pid.parse() == Ok(std::process::id()));
    if usec == 0 || !for_us {
        return;
    }
    let every = std::time::Duration::from_micros(usec / 2);
    tracing::info!(every = ?every, "systemd watchdog on");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
        }
    });
}

/// A file view left mounted by a daemon that died is detached, so that the new one can mount there.
fn detach_stale_mount(path: &Path) {
    // Nothing mounted there (EINVAL) or no such folder (ENOENT) is the usual case, and fine.
    let _ = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH);
}

//! `livemount status`: one screen of what the appliance is doing: the daemon, its mounts with their reads
//! and recalls, the iSCSI sessions, the running jobs and the chunk cache.

use crate::api_types::{MountInfo, StatusInfo};
use crate::cli::Cli;
use crate::client::Client;
use crate::daemon::JobInfo;
use crate::output::{print_json, size};

pub fn run(cli: &Cli) -> anyhow::Result<i32> {
    let client = Client::new(cli)?;
    let status: StatusInfo = client.get("/v1/status")?;
    let mounts: Vec<MountInfo> = client.get("/v1/mounts")?;
    let jobs: Vec<JobInfo> = client.get("/v1/jobs")?;
    let running: Vec<&JobInfo> = jobs.iter().filter(|j| j.state == "running").collect();
    if cli.json {
        print_json(&serde_json::json!({ "status": status, "mounts": mounts, "jobs_running": running }));
        return Ok(0);
    }
    let up = status.uptime_secs;
    println!("livemount {}  up {}h{:02}m{:02}s", status.version, up / 3600, up / 60 % 60, up % 60);
    println!("library     {}", status.library);
    println!("portal      {}  ({} iSCSI sessions)", status.portal, status.iscsi_sessions);
    if let Some(remote) = &status.remote_api {
        println!("remote API  https://{remote}");
    }
    if let Some(c) = &status.chunk_cache {
        println!(
            "chunk cache {} of {}  ({} chunks, {} hits, {} fetched, {} evicted)",
            size(c.bytes),
            size(c.capacity),
            c.chunks,
            c.hits,
            c.fetches,
            c.evictions
        );
    }
    println!();
    println!("{} mounts", mounts.len());
    for m in &mounts {
        let (read, recalled, written) = m.disks.iter().fold((0, 0, 0), |(r, c, w), d| {
            (r + d.counters.bytes_read, c + d.counters.bytes_recalled, w + d.counters.bytes_written)
        });
        let what = match (&m.boot, &m.browse, m.read_only) {
            (Some(_), _, _) => "boot",
            (_, Some(_), _) => "browsed",
            (_, _, true) => "read-only",
            _ => "",
        };
        println!(
            "  {}  {:<16} backup {}  {} disks  read {}  recalled {}  written {}  {what}",
            &m.id,
            m.name.as_deref().unwrap_or("-"),
            m.backup,
            m.disks.len(),
            size(read),
            size(recalled),
            size(written),
        );
    }
    println!("{} jobs running", running.len());
    for j in running {
        println!("  {}  {}  {}  {}/{}", j.id, j.kind, j.step, j.done, j.total);
    }
    Ok(0)
}

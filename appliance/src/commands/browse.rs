//! `livemount browse|unbrowse`: a backup's file systems mounted read-only for file recovery.

use clap::Args;

use crate::api_types::{BrowseRequest, MountInfo};
use crate::cli::Cli;
use crate::client::Client;
use crate::output::print_json;

#[derive(Debug, Args)]
pub struct BrowseArgs {
    /// Backup id, unique id prefix, or name; or `ebs:snap-…` (with --account).
    pub backup: String,
    /// With `ebs:snap-…`: the cloud account that reads the snapshot.
    #[arg(long)]
    pub account: Option<String>,
}

#[derive(Debug, Args)]
pub struct UnbrowseArgs {
    /// The browse's mount id (as `browse` printed it) or a unique prefix.
    pub mount: String,
}

pub fn browse(cli: &Cli, args: &BrowseArgs) -> anyhow::Result<i32> {
    let client = Client::new(cli)?;
    let info: MountInfo =
        client.post("/v1/browse", &BrowseRequest { backup: args.backup.clone(), account: args.account.clone() })?;
    if cli.json {
        print_json(&info);
    } else {
        println!("browsing backup {} as mount {} (read-only)", info.backup, info.id);
        for fs in info.browse.iter().flat_map(|b| &b.filesystems) {
            println!("  disk {} partition {} ({}): {}", fs.disk, fs.partition, fs.fstype, fs.path);
        }
        println!("when done: livemount unbrowse {}", info.id);
    }
    Ok(0)
}

pub fn unbrowse(cli: &Cli, args: &UnbrowseArgs) -> anyhow::Result<i32> {
    let client = Client::new(cli)?;
    let info: MountInfo = client.delete(&format!("/v1/browse/{}", args.mount))?;
    if cli.json {
        print_json(&info);
    } else {
        println!("unbrowsed {}", info.id);
    }
    Ok(0)
}

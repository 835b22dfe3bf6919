//! `livemount mount|mounts|unmount`: live mounts, through the daemon.

use clap::{Args, Subcommand};

use crate::api_types::{BootRequest, CloudRequest, CommitRequest, MountInfo, MountRequest, TargetAccess};
use crate::cli::Cli;
use crate::client::Client;
use crate::daemon::JobInfo;
use crate::output::{print_json, size};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct MountArgs {
    #[command(subcommand)]
    pub action: Option<MountAction>,
    /// Backup id, unique id prefix, or name; or `ebs:snap-…` (with --account): an EBS snapshot read
    /// through the EBS direct APIs, with nothing made in AWS.
    #[arg(required = true)]
    pub backup: Option<String>,
    /// With `ebs:snap-…`: the cloud account that reads the snapshot.
    #[arg(long)]
    pub account: Option<String>,
    /// Serve the disks read-only.
    #[arg(long)]
    pub read_only: bool,
    /// A name to find the mount by.
    #[arg(long)]
    pub name: Option<String>,
    /// Require CHAP: the user initiators log in as (with --chap-secret).
    #[arg(long, requires = "chap_secret")]
    pub chap_user: Option<String>,
    /// The CHAP secret initiators must prove (12 to 16 characters is what most initiators accept).
    #[arg(long, requires = "chap_user")]
    pub chap_secret: Option<String>,
    /// Mutual CHAP: the user the target answers as (with --mutual-chap-secret).
    #[arg(long, requires_all = ["mutual_chap_secret", "chap_user"])]
    pub mutual_chap_user: Option<String>,
    #[arg(long, requires = "mutual_chap_user")]
    pub mutual_chap_secret: Option<String>,
    /// Prepare the guest to boot from iSCSI and publish an iPXE script (a live-mounted VM).
    #[arg(long)]
    pub boot: bool,
    /// With --boot: the MAC address of the machine that boots it (the entry script picks the mount by it).
    #[arg(long, requires = "boot")]
    pub mac: Option<String>,
    /// With --boot: the guest already boots from iSCSI (e.g. it was prepared before); change nothing in it.
    #[arg(long, requires = "boot")]
    pub skip_prepare: bool,
    /// Only these initiator IQNs may log in (repeat for several).
    #[arg(long = "allow-initiator")]
    pub allow_initiators: Vec<String>,
    /// With --boot: launch the VM in AWS, in this account (a member's name, or `service`), from the iPXE
    /// image. Only that VM may log in to the mount's target (CHAP secret and initiator name per mount).
    #[arg(long, requires = "boot", conflicts_with_all = ["chap_user", "mutual_chap_user", "allow_initiators"])]
    pub cloud: Option<String>,
    /// With --cloud: the Region (default: the account's).
    #[arg(long, requires = "cloud")]
    pub region: Option<String>,
    /// With --cloud: the subnet to launch in (default: the account's default VPC).
    #[arg(long, requires = "cloud")]
    pub subnet: Option<String>,
    /// With --cloud: security groups of the VM (repeat for several).
    #[arg(long = "security-group", requires = "cloud")]
    pub security_groups: Vec<String>,
    /// With --cloud: the instance type (default t3.small).
    #[arg(long, requires = "cloud")]
    pub instance_type: Option<String>,
}

/// What else `mount` does with a live mount.
#[derive(Debug, Subcommand)]
pub enum MountAction {
    /// Keep what a live mount holds now as a new version of its backup: only the chunks it changed are
    /// read and stored; the mount goes on (its writes wait while the commit runs).
    Commit(CommitArgs),
}

#[derive(Debug, Args)]
pub struct CommitArgs {
    /// Mount id, unique id prefix, or name.
    pub mount: String,
    /// The new backup's name.
    #[arg(long)]
    pub name: Option<String>,
}

#[derive(Debug, Args)]
pub struct UnmountArgs {
    /// Mount id, unique id prefix, or name.
    pub mount: String,
}

pub fn mount(cli: &Cli, args: &MountArgs) -> anyhow::Result<i32> {
    let client = Client::new(cli)?;
    if let Some(MountAction::Commit(c)) = &args.action {
        return commit(cli, &client, c);
    }
    let backup = args.backup.clone().expect("clap requires BACKUP without a subcommand");
    let access = TargetAccess {
        chap: args.chap_user.clone().zip(args.chap_secret.clone()),
        mutual_chap: args.mutual_chap_user.clone().zip(args.mutual_chap_secret.clone()),
        allowed_initiators: args.allow_initiators.clone(),
    };
    let cloud = args.cloud.as_ref().map(|account| CloudRequest {
        account: account.clone(),
        region: args.region.clone(),
        subnet: args.subnet.clone(),
        security_groups: args.security_groups.clone(),
        instance_type: args.instance_type.clone(),
    });
    let boot = args.boot.then(|| BootRequest { mac: args.mac.clone(), skip_prepare: args.skip_prepare, cloud });
    let req = MountRequest {
        backup,
        name: args.name.clone(),
        read_only: args.read_only,
        access,
        boot,
        account: args.account.clone(),
    };
    let info: MountInfo = client.post("/v1/mounts", &req)?;
    if cli.json {
        print_json(&info);
    } else {
        println!("mount {} of backup {}{}", info.id, info.backup, if info.read_only { " (read-only)" } else { "" });
        println!("  iSCSI target {}", info.iqn);
        if let Some(b) = &info.boot {
            println!("  guest {} prepared: {}", b.guest_os, b.changes.join("; "));
            println!("  ready to boot: iPXE script {}", b.script_url);
            println!("                 entry script {} (for boot images; picks the mount by MAC)", b.entry_url);
            println!("                 sanboot {}", b.sanboot);
            if info.cloud.is_none() {
                println!("  boot it with:  {}", b.qemu_command);
            }
        }
        if let Some(c) = &info.cloud {
            let m = &c.mount;
            println!(
                "  VM {} running in account {} ({}), private address {}",
                m.instance_id.as_deref().unwrap_or("?"),
                m.account,
                m.region,
                m.private_ip.as_deref().unwrap_or("unknown")
            );
            if let Some(console) = &c.console {
                println!("  its console:   {console}");
            }
        }
        for d in &info.disks {
            println!("  disk {}: {} ({})", d.disk, d.fuse_path, size(d.size));
            println!("          {}", d.iscsi_url);
        }
    }
    Ok(0)
}

/// `mount commit`: starts the daemon's commit job and follows it.
fn commit(cli: &Cli, client: &Client, args: &CommitArgs) -> anyhow::Result<i32> {
    let req = CommitRequest { name: args.name.clone() };
    let job: JobInfo = client.post(&format!("/v1/mounts/{}/commit", args.mount), &req)?;
    let job = super::cloud::follow(cli, client, job, "commit")?;
    if cli.json {
        print_json(&job);
    }
    let Some(result) = job.result.filter(|_| job.state == "succeeded") else {
        eprintln!("livemount: mount commit failed: {}", job.error.unwrap_or(job.state));
        return Ok(1);
    };
    if !cli.json {
        let stats = &result["stats"];
        println!(
            "backup {} committed from mount {} (a new version of backup {}): read {}, stored {} new",
            result["id"].as_str().unwrap_or("?"),
            args.mount,
            result["origin"]["parent_backup"].as_str().unwrap_or("?"),
            size(stats["bytes_read"].as_u64().unwrap_or(0)),
            size(stats["new_bytes_stored"].as_u64().unwrap_or(0)),
        );
    }
    Ok(0)
}

pub fn list(cli: &Cli) -> anyhow::Result<i32> {
    let client = Client::new(cli)?;
    let mounts: Vec<MountInfo> = client.get("/v1/mounts")?;
    if cli.json {
        print_json(&mounts);
        return Ok(0);
    }
    if mounts.is_empty() {
        println!("no mounts");
    }
    for m in &mounts {
        println!(
            "{}  backup {}  {}{}{}",
            m.id,
            m.backup,
            m.name.as_deref().unwrap_or("-"),
            if m.read_only { "  read-only" } else { "" },
            if m.browse.is_some() { "  browsed" } else { "" }
        );
        for d in &m.disks {
            let c = &d.counters;
            println!(
                "  disk {} {}: read {}, written {}, recalled {} ({}/{} chunks), private {} blocks",
                d.disk,
                d.fuse_path,
                size(c.bytes_read),
                size(c.bytes_written),
                size(c.bytes_recalled),
                c.recalled_chunks,
                c.chunks_total,
                c.private_blocks
            );
        }
    }
    Ok(0)
}

pub fn unmount(cli: &Cli, args: &UnmountArgs) -> anyhow::Result<i32> {
    let client = Client::new(cli)?;
    let info: MountInfo = client.delete(&format!("/v1/mounts/{}", args.mount))?;
    if cli.json {
        print_json(&info);
    } else {
        if let Some(c) = &info.cloud {
            println!("VM {} terminated", c.mount.instance_id.as_deref().unwrap_or("?"));
        }
        println!("unmounted {}; its stores are deleted and backup {} is as it was", info.id, info.backup);
    }
    Ok(0)
}

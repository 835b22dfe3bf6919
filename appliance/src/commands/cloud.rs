//! `livemount cloud ...`: AWS accounts, the iPXE machine image, the account workflows (streaming and
//! snapshot backups of instances, backup copies), and what this appliance made in AWS.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::api_types::{AccessNodeImageRequest, AccountCheck, AccountRequest, CleanupRequest, IpxeImageRequest};
use crate::cli::Cli;
use crate::client::Client;
use crate::cloud::accounts::Account;
use crate::cloud::cleanup::{Found, Inventory};
use crate::cloud::images::IpxeImage;
use crate::daemon::JobInfo;
use crate::output::{print_json, size};

#[derive(Debug, Subcommand)]
pub enum CloudCmd {
    /// The AWS accounts the appliance works in (the service account is its own; members are roles).
    #[command(subcommand)]
    Account(AccountCmd),
    /// Machine images.
    #[command(subcommand)]
    Image(ImageCmd),
    /// What this appliance made in AWS that still exists (by journal and by tag, in every known account).
    Resources,
    /// Remove what this appliance made that no live mount uses.
    Cleanup(CleanupArgs),
    /// Streaming backup of an EC2 instance of a member account: an image of it in the member account, its
    /// snapshots made volumes attached to the access node, read as one backup; all of it removed after.
    Backup(CloudBackupArgs),
    /// Snapshot backup of an EC2 instance of a member account: an image of it that stays there, and a
    /// catalog entry of the instance's configuration and snapshots; no data is copied.
    Snap(CloudSnapArgs),
    /// Copy a snapshot backup's data into the library: its snapshots made volumes attached to the access
    /// node, read as one backup; the volumes removed after.
    BackupCopy(BackupCopyArgs),
    /// Restore a backup into a member account: HotAdd (volumes attached to the access node, written,
    /// snapshotted, shared, made the member's volumes) or, with --as-image, an image written through the
    /// EBS direct APIs and shared with the member; --launch also starts the instance there.
    Restore(CloudRestoreArgs),
    /// Agentless file recovery: files and folders of a backup uploaded into a bucket of the service
    /// account (mode, owner and modification time as object metadata), readable by a member account.
    RecoverFiles(RecoverFilesArgs),
    /// The jobs the daemon runs or has run (backups, copies, restores).
    Jobs,
}

#[derive(Debug, Args)]
pub struct CloudRestoreArgs {
    /// Backup id, unique id prefix, or name.
    pub backup: String,
    /// The member account that gets the restored machine.
    #[arg(long)]
    pub account: String,
    /// Write the disks into snapshots through the EBS direct APIs and register an image of them.
    #[arg(long)]
    pub as_image: bool,
    /// Launch an instance in the member account with the backup's configuration.
    #[arg(long)]
    pub launch: bool,
    /// The subnet of the launched instance (default: the backed-up instance's).
    #[arg(long)]
    pub subnet: Option<String>,
    /// The instance type of the launched instance (default: the backed-up instance's).
    #[arg(long)]
    pub instance_type: Option<String>,
    #[arg(long)]
    pub region: Option<String>,
    /// HotAdd: the instance of the service account the volumes are attached to (default: this one, from
    /// its instance metadata).
    #[arg(long)]
    pub access_node: Option<String>,
}

#[derive(Debug, Args)]
pub struct RecoverFilesArgs {
    /// Backup id, unique id prefix, or name.
    pub backup: String,
    /// Files or folders as the guest has them (/etc/hostname), or within one of the backup's file
    /// systems (disk0p1:/etc); a folder comes with everything under it.
    #[arg(required = true)]
    pub paths: Vec<String>,
    /// The member account that may read the recovered files.
    #[arg(long)]
    pub account: String,
    /// A bucket of the service account, in the member account's Region.
    #[arg(long)]
    pub bucket: String,
    /// The folder of the bucket the files go under (default: recovered/BACKUP-ID).
    #[arg(long)]
    pub prefix: Option<String>,
    /// Also print a presigned download URL of each file, valid this long (e.g. 900, 15m, 12h, 7d).
    #[arg(long, value_parser = crate::output::parse_seconds)]
    pub presign: Option<u64>,
    #[arg(long)]
    pub region: Option<String>,
}

#[derive(Debug, Args)]
pub struct CloudSnapArgs {
    /// The instance id (i-...).
    pub instance: String,
    /// The member account the instance is in.
    #[arg(long)]
    pub account: String,
    /// The backup's name (default: the instance's Name tag).
    #[arg(long)]
    pub name: Option<String>,
    /// Image the instance without rebooting it (the snapshots are then crash-consistent only).
    #[arg(long)]
    pub no_reboot: bool,
    #[arg(long)]
    pub region: Option<String>,
}

#[derive(Debug, Args)]
pub struct BackupCopyArgs {
    /// The snapshot backup (id, unique id prefix, or name).
    pub backup: String,
    /// The copy's name (default: the snapshot backup's).
    #[arg(long)]
    pub name: Option<String>,
    /// The instance of the service account the volumes are attached to (default: this one, from its
    /// instance metadata).
    #[arg(long)]
    pub access_node: Option<String>,
    /// How the snapshots are read: EBS direct (nothing made or shared), through volumes, or EBS direct
    /// when the member account allows it.
    #[arg(long, value_enum, default_value_t)]
    pub via: crate::cloud::backup_copy::CopyVia,
}

#[derive(Debug, Args)]
pub struct CloudBackupArgs {
    #[command(flatten)]
    pub instance: CloudSnapArgs,
    /// The instance of the service account the volumes are attached to (default: this one, from its
    /// instance metadata).
    #[arg(long)]
    pub access_node: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum AccountCmd {
    /// Add a member account: a role the appliance assumes with STS AssumeRole. No secret is stored.
    Add(AddAccountArgs),
    /// List the member accounts the appliance knows.
    List,
    /// Forget a member account (what the appliance made there stays until `cloud cleanup`).
    Remove { name: String },
    /// Assume the account's role and print the account id it reached.
    Check { name: String },
}

#[derive(Debug, Args)]
pub struct AddAccountArgs {
    pub name: String,
    /// arn:aws:iam::ACCOUNT:role/NAME
    #[arg(long)]
    pub role_arn: String,
    /// The ExternalId the role's trust policy requires.
    #[arg(long)]
    pub external_id: Option<String>,
    /// The account's default Region.
    #[arg(long)]
    pub region: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Build the iPXE boot disk for EC2, upload it through the EBS direct APIs and register it as the
    /// image every cloud live mount launches from. Running it again finds the same image.
    Ipxe(IpxeArgs),
    /// Upload the access node's disk image (`livemount image appliance`, raw) through the EBS direct APIs
    /// and register it as a machine image that access nodes launch from; the same content is found again.
    Publish(PublishArgs),
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The raw disk image; its path as the daemon sees it.
    pub disk: PathBuf,
    #[arg(long)]
    pub region: Option<String>,
    /// Accounts (names or ids) that may launch it.
    #[arg(long = "share-with")]
    pub share_with: Vec<String>,
}

#[derive(Debug, Args)]
pub struct IpxeArgs {
    #[arg(long)]
    pub region: Option<String>,
    /// Accounts (names or ids) that may launch it.
    #[arg(long = "share-with")]
    pub share_with: Vec<String>,
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// Only show what would be removed.
    #[arg(long)]
    pub dry_run: bool,
    /// Also remove the iPXE images (cloud mounts cannot launch until `cloud image ipxe` runs again).
    #[arg(long)]
    pub images: bool,
}

pub fn run(cli: &Cli, cmd: &CloudCmd) -> anyhow::Result<i32> {
    let client = Client::new(cli)?;
    match cmd {
        CloudCmd::Account(AccountCmd::Add(a)) => {
            let req = AccountRequest {
                name: a.name.clone(),
                role_arn: a.role_arn.clone(),
                external_id: a.external_id.clone(),
                region: a.region.clone(),
            };
            let added: Account = client.post("/v1/cloud/accounts", &req)?;
            if cli.json {
                print_json(&added);
            } else {
                println!("account {} added: role {}", added.name, added.role_arn.unwrap_or_default());
                println!("  `livemount cloud account check {}` assumes it", added.name);
            }
        }
        CloudCmd::Account(AccountCmd::List) => {
            let list: Vec<Account> = client.get("/v1/cloud/accounts")?;
            if cli.json {
                print_json(&list);
            } else {
                for a in list {
                    let role = a.role_arn.as_deref().unwrap_or("the appliance's own credentials");
                    let ext = if a.external_id.is_some() { " (with ExternalId)" } else { "" };
                    let region = a.region.map(|r| format!(", {r}")).unwrap_or_default();
                    println!("{}  {role}{ext}{region}", a.name);
                }
            }
        }
        CloudCmd::Account(AccountCmd::Remove { name }) => {
            let gone: Account = client.delete(&format!("/v1/cloud/accounts/{name}"))?;
            if cli.json {
                print_json(&gone);
            } else {
                println!("account {} removed", gone.name);
            }
        }
        CloudCmd::Account(AccountCmd::Check { name }) => {
            let c: AccountCheck = client.post(&format!("/v1/cloud/accounts/{name}/check"), &())?;
            if cli.json {
                print_json(&c);
            } else {
                println!("{}: account {} as {} ({})", c.name, c.account_id, c.arn, c.region);
            }
        }
        CloudCmd::Image(ImageCmd::Publish(a)) => {
            let disk = std::path::absolute(&a.disk).unwrap_or_else(|_| a.disk.clone());
            let req = AccessNodeImageRequest {
                disk: disk.display().to_string(),
                region: a.region.clone(),
                share_with: a.share_with.clone(),
            };
            let img: IpxeImage = client.post("/v1/cloud/images/access-node", &req)?;
            if cli.json {
                print_json(&img);
            } else {
                println!(
                    "access-node image {} in {} (snapshot {}; uploaded {})",
                    img.image_id,
                    img.region,
                    img.snapshot_id,
                    crate::output::size(img.bytes_uploaded)
                );
            }
        }
        CloudCmd::Image(ImageCmd::Ipxe(a)) => {
            let req = IpxeImageRequest { region: a.region.clone(), share_with: a.share_with.clone() };
            let img: IpxeImage = client.post("/v1/cloud/images/ipxe", &req)?;
            if cli.json {
                print_json(&img);
            } else {
                println!("iPXE image {} in {} (snapshot {})", img.image_id, img.region, img.snapshot_id);
                if img.bytes_uploaded > 0 {
                    println!("  uploaded {} in {:.1} s", size(img.bytes_uploaded), img.upload_seconds);
                } else {
                    println!("  already there: nothing uploaded");
                }
                if !img.shared_with.is_empty() {
                    println!("  launchable by {}", img.shared_with.join(", "));
                }
            }
        }
        CloudCmd::Resources => {
            let inv: Inventory = client.get("/v1/cloud/resources")?;
            print_inventory(cli, &inv, "nothing: this appliance has no resources in AWS", "");
        }
        CloudCmd::Backup(a) => {
            let (i, access_node) = (&a.instance, a.access_node.clone());
            let req = crate::cloud::streaming_backup::Request {
                instance: i.instance.clone(),
                account: i.account.clone(),
                name: i.name.clone(),
                no_reboot: i.no_reboot,
                access_node,
                region: i.region.clone(),
            };
            let Some(result) = run_job(cli, &client, "/v1/cloud/backups", &req, "cloud backup")? else { return Ok(1) };
            if !cli.json {
                println!("backup {} of {} created", result["id"].as_str().unwrap_or("?"), i.instance);
                print_stored(&result, "nothing left in either account");
            }
        }
        CloudCmd::Snap(a) => {
            let req = crate::cloud::snapshot_backup::Request {
                instance: a.instance.clone(),
                account: a.account.clone(),
                name: a.name.clone(),
                no_reboot: a.no_reboot,
                region: a.region.clone(),
            };
            let Some(result) = run_job(cli, &client, "/v1/cloud/snapshot-backups", &req, "cloud snap")? else {
                return Ok(1);
            };
            if !cli.json {
                let id = result["id"].as_str().unwrap_or("?");
                let origin = &result["origin"];
                println!("snapshot backup {id} of {} created", a.instance);
                println!(
                    "  image {} and its snapshots stay in account {}; `livemount cloud backup-copy {id}` copies the data into the library",
                    origin["image_id"].as_str().unwrap_or("?"),
                    a.account
                );
            }
        }
        CloudCmd::BackupCopy(a) => {
            let req = crate::cloud::backup_copy::Request {
                backup: a.backup.clone(),
                name: a.name.clone(),
                access_node: a.access_node.clone(),
                via: a.via,
            };
            let Some(result) = run_job(cli, &client, "/v1/cloud/backup-copies", &req, "cloud backup-copy")? else {
                return Ok(1);
            };
            if !cli.json {
                println!("backup {} copied from snapshot backup {}", result["id"].as_str().unwrap_or("?"), a.backup);
                print_stored(&result, "nothing left in either account");
            }
        }
        CloudCmd::Restore(a) => {
            let req = crate::cloud::restore::Request {
                backup: a.backup.clone(),
                account: a.account.clone(),
                as_image: a.as_image,
                launch: a.launch,
                subnet: a.subnet.clone(),
                instance_type: a.instance_type.clone(),
                region: a.region.clone(),
                access_node: a.access_node.clone(),
            };
            let Some(result) = run_job(cli, &client, "/v1/cloud/restores", &req, "cloud restore")? else {
                return Ok(1);
            };
            if !cli.json {
                let r: crate::cloud::restore::Restored = serde_json::from_value(result)?;
                println!("backup {} restored into account {} ({})", r.backup, r.account, r.region);
                if let Some(image) = &r.image_id {
                    println!("  image {image}, launchable by account {}", r.account);
                }
                if !r.volumes.is_empty() {
                    println!("  volumes {}", r.volumes.join(", "));
                }
                if let Some(i) = &r.instance_id {
                    println!("  instance {i} launched");
                }
                println!("  wrote {} in {:.1} s", size(r.bytes_written), r.seconds);
            }
        }
        CloudCmd::RecoverFiles(a) => {
            let req = crate::cloud::recover_files::Request {
                backup: a.backup.clone(),
                paths: a.paths.clone(),
                account: a.account.clone(),
                bucket: a.bucket.clone(),
                prefix: a.prefix.clone(),
                presign_seconds: a.presign,
                region: a.region.clone(),
            };
            let Some(result) = run_job(cli, &client, "/v1/cloud/file-recoveries", &req, "cloud recover-files")? else {
                return Ok(1);
            };
            if !cli.json {
                let r: crate::cloud::recover_files::Recovered = serde_json::from_value(result)?;
                for f in &r.files {
                    println!("{}  {}  {} {}", f.url, size(f.size), f.mode, f.path);
                    if let Some(u) = &f.presigned_url {
                        println!("  {u}");
                    }
                }
                for s in &r.skipped {
                    println!("skipped {}: {}", s.path, s.why);
                }
                println!(
                    "{} file(s), {} from backup {} in {:.1} s; account {} ({}) may read s3://{}/{}/",
                    r.files.len(),
                    size(r.bytes),
                    r.backup,
                    r.seconds,
                    r.account,
                    r.account_id,
                    r.bucket,
                    r.prefix
                );
            }
        }
        CloudCmd::Jobs => {
            let jobs: Vec<JobInfo> = client.get("/v1/jobs")?;
            if cli.json {
                print_json(&jobs);
            } else {
                for j in jobs {
                    let end = j.error.map(|e| format!(": {e}")).unwrap_or_default();
                    println!("{}  {}  {}  started {}  {}{end}", j.id, j.kind, j.state, j.started, j.step);
                }
            }
        }
        CloudCmd::Cleanup(a) => {
            let req = CleanupRequest { dry_run: a.dry_run, images: a.images };
            let inv: Inventory = client.post("/v1/cloud/cleanup", &req)?;
            let verb = if a.dry_run { "would remove " } else { "removed " };
            print_inventory(cli, &inv, "nothing to remove", verb);
            if !inv.errors.is_empty() {
                return Ok(1);
            }
        }
    }
    Ok(0)
}

/// Starts a job with `req` at `path` and follows it; prints it with --json. Gives its result when it
/// succeeded; otherwise says why it failed and gives None.
fn run_job<B: serde::Serialize>(
    cli: &Cli,
    client: &Client,
    path: &str,
    req: &B,
    what: &str,
) -> anyhow::Result<Option<serde_json::Value>> {
    let job: JobInfo = client.post(path, req)?;
    let job = follow(cli, client, job, what)?;
    if cli.json {
        print_json(&job);
    }
    match job.result.filter(|_| job.state == "succeeded") {
        Some(result) => Ok(Some(result)),
        None => {
            eprintln!("livemount: {what} failed: {}", job.error.unwrap_or_else(|| job.state.clone()));
            Ok(None)
        }
    }
}

/// What a backup job read and stored.
fn print_stored(result: &serde_json::Value, end: &str) {
    let stats = &result["stats"];
    println!(
        "  read {} in {:.1} s; stored {} new; {end}",
        size(stats["bytes_read"].as_u64().unwrap_or(0)),
        stats["seconds"].as_f64().unwrap_or(0.0),
        size(stats["new_bytes_stored"].as_u64().unwrap_or(0)),
    );
}

/// Follows a job until it ends, with a progress bar (none with --json); gives how it ended.
pub(super) fn follow(cli: &Cli, client: &Client, mut job: JobInfo, what: &str) -> anyhow::Result<JobInfo> {
    let bar = crate::output::byte_bar(0, cli.json, what);
    while job.state == "running" {
        bar.set_length(job.total);
        bar.set_position(job.done);
        bar.set_message(job.step.clone());
        // The daemon answers when the job ends or after 200 ms, whichever is first.
        job = client.get(&format!("/v1/jobs/{}?wait_ms=200", job.id))?;
    }
    bar.finish_and_clear();
    Ok(job)
}

fn print_inventory(cli: &Cli, inv: &Inventory, empty: &str, verb: &str) {
    if cli.json {
        print_json(inv);
        return;
    }
    if inv.resources.is_empty() {
        println!("{empty}");
    }
    for f in &inv.resources {
        println!("{verb}{}", describe(f));
    }
    for e in &inv.errors {
        eprintln!("livemount: could not look at {e}");
    }
}

fn describe(f: &Found) -> String {
    use crate::cloud::journal::Purpose;
    let purpose = match &f.purpose {
        Some(Purpose::Mount(m)) => format!("mount {m}"),
        Some(Purpose::IpxeImage(h)) => format!("iPXE image {}", &h[..16.min(h.len())]),
        Some(Purpose::AccessNodeImage(h)) => format!("access-node image {}", &h[..16.min(h.len())]),
        Some(Purpose::Job(j)) => format!("job {j}"),
        Some(Purpose::Backup(b)) => format!("backup {b}"),
        None => "unknown purpose".into(),
    };
    format!(
        "{} {}  {}  account {} ({})  {}{}",
        f.kind,
        f.id.as_deref().unwrap_or("(no id recorded)"),
        f.state,
        f.account,
        f.region,
        purpose,
        if f.in_use { "  in use" } else { "" }
    )
}

//! `livemount cloud ...`: AWS accounts, the iPXE machine image, and what this appliance made in AWS.

use clap::{Args, Subcommand};

use crate::api_types::{AccountCheck, AccountRequest, CleanupRequest, IpxeImageRequest};
use crate::cli::Cli;
use crate::client::Client;
use crate::cloud::accounts::Account;
use crate::cloud::cleanup::{Found, Inventory};
use crate::cloud::images::IpxeImage;
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
}

#[derive(Debug, Subcommand)]
pub enum AccountCmd {
    /// Add a member account: a role the appliance assumes with STS AssumeRole. No secret is stored.
    Add(AddAccountArgs),
    List,
    Remove {
        name: String,
    },
    /// Assume the account's role and print the account id it reached.
    Check {
        name: String,
    },
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
    let client = Client::new(cli.api.clone())?;
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

//! The cloud half of the appliance: the AWS accounts it works in (`accounts`), the journal of every
//! resource it makes (`journal`), the iPXE machine image (`images`, uploaded through `ebs_upload`), the
//! instances that boot live mounts (`instances`), the account workflows (`streaming_backup`,
//! `snapshot_backup`, `backup_copy`, `hotadd_restore`, `restore_image`, `recover_files`, on the steps of
//! `workflow`, `restore` and `s3_objects`; what they keep of an instance is `instance_config`), and
//! finding and removing what was left behind (`cleanup`). `sdk` is how every call reaches AWS.
//!
//! ```text
//! <state>/cloud/appliance-id    this appliance's id, in the livemount:appliance tag of all it makes
//! <state>/cloud/accounts.json   the member accounts (role ARN, ExternalId, Region; no secrets)
//! <state>/cloud/journal.jsonl   every resource made, from before the call that makes it until it is gone
//! <state>/cloud/images.json     the iPXE image of each Region
//! ```

pub mod accounts;
pub mod backup_copy;
pub mod cleanup;
pub mod ebs_backup;
pub mod ebs_restore;
pub mod ebs_snapshot;
pub mod ebs_upload;
pub mod error;
pub mod hotadd_restore;
pub mod images;
pub mod instance_config;
pub mod instances;
pub mod journal;
mod poll;
pub mod recover_files;
pub mod restore;
pub mod restore_image;
pub mod s3_objects;
pub mod sdk;
pub mod snapshot_backup;
pub mod streaming_backup;
pub mod workflow;

use std::path::{Path, PathBuf};

pub use error::CloudError;

/// The tag every resource carries: which appliance made it.
pub const TAG_APPLIANCE: &str = "livemount:appliance";
/// On a live mount's resources: the mount.
pub const TAG_MOUNT: &str = "livemount:mount";
/// On the resources of a job (a streaming backup): the job.
pub const TAG_JOB: &str = "livemount:job";
/// On what holds a backup's data in AWS (a snapshot backup's image and snapshots): the backup.
pub const TAG_BACKUP: &str = "livemount:backup";
/// On the iPXE image and its snapshot: the hash of the boot disk's content.
pub const TAG_IPXE: &str = "livemount:ipxe-content";
/// The content hash of the access node's own image and its snapshot.
pub const TAG_ACCESS_NODE: &str = "livemount:access-node-content";

pub struct Cloud {
    pub dir: PathBuf,
    pub appliance_id: String,
    pub accounts: accounts::Accounts,
    pub journal: journal::Journal,
    pub images: images::ImageRecords,
}

impl Cloud {
    /// Opens (or starts) the cloud state under the daemon's state folder.
    pub fn open(state_dir: &Path) -> Result<Cloud, CloudError> {
        let dir = state_dir.join("cloud");
        std::fs::create_dir_all(&dir).map_err(CloudError::io("create", &dir))?;
        let id_path = dir.join("appliance-id");
        let appliance_id = match std::fs::read_to_string(&id_path) {
            Ok(id) if !id.trim().is_empty() => id.trim().to_string(),
            _ => {
                let id = crate::random::hex(8);
                dedup::durable::write_file(&id_path, id.as_bytes()).map_err(CloudError::io("write", &id_path))?;
                id
            }
        };
        Ok(Cloud {
            accounts: accounts::Accounts::load(&dir, &appliance_id)?,
            journal: journal::Journal::open(&dir)?,
            images: images::ImageRecords::load(&dir)?,
            appliance_id,
            dir,
        })
    }

    /// The tags of a resource made for `purpose`.
    pub fn tags(&self, purpose: &journal::Purpose) -> Vec<(String, String)> {
        let mut tags = vec![(TAG_APPLIANCE.to_string(), self.appliance_id.clone())];
        match purpose {
            journal::Purpose::Mount(id) => {
                tags.push((TAG_MOUNT.into(), id.clone()));
                tags.push(("Name".into(), format!("livemount mount {id}")));
            }
            journal::Purpose::IpxeImage(hash) => {
                tags.push((TAG_IPXE.into(), hash.clone()));
                tags.push(("Name".into(), format!("livemount iPXE {}", &hash[..16.min(hash.len())])));
            }
            journal::Purpose::AccessNodeImage(hash) => {
                tags.push((TAG_ACCESS_NODE.into(), hash.clone()));
                tags.push(("Name".into(), format!("livemount access node {}", &hash[..16.min(hash.len())])));
            }
            journal::Purpose::Job(id) => {
                tags.push((TAG_JOB.into(), id.clone()));
                tags.push(("Name".into(), format!("livemount job {id}")));
            }
            journal::Purpose::Backup(id) => {
                tags.push((TAG_BACKUP.into(), id.clone()));
                tags.push(("Name".into(), format!("livemount backup {id}")));
            }
        }
        tags
    }
}

/// Tags as EC2 takes them.
pub fn ec2_tags(tags: &[(String, String)]) -> Vec<aws_sdk_ec2::types::Tag> {
    tags.iter().map(|(k, v)| aws_sdk_ec2::types::Tag::builder().key(k).value(v).build()).collect()
}

/// A filter of EC2's Describe calls.
pub fn filter(name: &str, values: &[&str]) -> aws_sdk_ec2::types::Filter {
    let mut f = aws_sdk_ec2::types::Filter::builder().name(name);
    for v in values {
        f = f.values(*v);
    }
    f.build()
}

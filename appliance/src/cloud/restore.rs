//! What the two restores of a backup into a member account share (`restore_image`: snapshots written
//! through the EBS direct APIs and registered as an image; `hotadd_restore`: volumes attached to the
//! access node and written there): the request, what the backup says about the instance it was, the
//! member's instance launched with that configuration, and what the user gets in the end.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use aws_sdk_ec2::types::{
    ArchitectureValues, BlockDeviceMapping, BootModeValues, EbsBlockDevice, InstanceStateName, InstanceType,
    LaunchPermission, LaunchPermissionModifications, ResourceType, TagSpecification, VolumeType,
};
use serde::{Deserialize, Serialize};

use super::instance_config::{BlockDevice, InstanceConfig};
use super::journal::{Kind, Resource};
use super::workflow::{image_named, Made, Report, Workflow};
use super::{accounts::SERVICE, ec2_tags, Cloud, CloudError, TAG_APPLIANCE, TAG_JOB};

/// What `cloud restore` asks for.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = RestoreRequest)]
pub struct Request {
    /// Backup id, unique id prefix, or name.
    pub backup: String,
    /// The member account that gets the restored machine.
    pub account: String,
    /// Write snapshots through the EBS direct APIs and register an image (no volume, no access node);
    /// otherwise HotAdd: volumes attached to the access node.
    #[serde(default)]
    pub as_image: bool,
    /// Also launch an instance in the member account with the backup's configuration.
    #[serde(default)]
    pub launch: bool,
    #[serde(default)]
    pub subnet: Option<String>,
    #[serde(default)]
    pub instance_type: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    /// HotAdd: the instance of the service account the volumes are attached to (default: this one).
    #[serde(default)]
    pub access_node: Option<String>,
}

/// What a restore gave the member account.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Restored {
    pub backup: String,
    pub account: String,
    pub region: String,
    /// Restore to an image: the image (in the service account, launchable by the member account).
    #[serde(default)]
    pub image_id: Option<String>,
    /// The snapshots of the backup's disks, in disk order (in the service account, shared with the member).
    #[serde(default)]
    pub snapshots: Vec<String>,
    /// HotAdd without launch: the member's new volumes, in disk order.
    #[serde(default)]
    pub volumes: Vec<String>,
    /// With launch: the member's new instance.
    #[serde(default)]
    pub instance_id: Option<String>,
    pub bytes_written: u64,
    pub seconds: f64,
}

/// The instance a backup was of, or for a backup of local disks, a plain x86_64 machine whose disk 0 is
/// its root; one block device per disk, each at least the disk's size.
pub fn config_of(manifest: &dedup::Manifest) -> Result<InstanceConfig, CloudError> {
    if manifest.disks.is_empty() {
        return Err(CloudError::BadRequest(format!(
            "backup {} holds no disk in the library (a snapshot backup: `livemount cloud backup-copy {}` copies it in first)",
            manifest.id, manifest.id
        )));
    }
    let mut config = InstanceConfig::of(manifest).unwrap_or_else(|| InstanceConfig {
        architecture: Some("x86_64".into()),
        root_device_name: Some("/dev/xvda".into()),
        ..Default::default()
    });
    let mut devices = Vec::new();
    for (n, disk) in manifest.disks.iter().enumerate() {
        let gib = disk.size.div_ceil(1 << 30).max(1) as i32;
        let bd = config.block_devices.get(n).cloned().unwrap_or_else(|| BlockDevice {
            device_name: if n == 0 {
                config.root_device_name.clone().unwrap_or_else(|| "/dev/xvda".into())
            } else {
                // /dev/sdf to /dev/sdp are the names AWS recommends for EBS data volumes.
                format!("/dev/sd{}", (b'f' + (n as u8 - 1) % 11) as char)
            },
            delete_on_termination: Some(true),
            ..Default::default()
        });
        devices.push(BlockDevice { size_gib: bd.size_gib.max(gib), snapshot_id: None, ..bd });
    }
    config.block_devices = devices;
    Ok(config)
}

/// Tags of what a restore makes: this appliance's and the job's (until it is handed over), with `more`.
pub fn restore_tags(job: &Workflow<'_>, more: &BTreeMap<String, String>) -> Vec<aws_sdk_ec2::types::Tag> {
    let mut tags: Vec<(String, String)> = more.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    tags.retain(|(k, _)| !k.starts_with("aws:") && !k.starts_with("livemount:"));
    tags.push((TAG_APPLIANCE.into(), job.cloud.appliance_id.clone()));
    tags.push((TAG_JOB.into(), job.job_id.clone()));
    ec2_tags(&tags)
}

/// Launches the restored instance in the member account from `image` with the backup's configuration
/// (instance type, subnet, security groups, tags; `req` may override the first two) and waits until it
/// runs. Its volumes carry the job's tag until it is handed over.
pub async fn launch(
    job: &Workflow<'_>,
    image: &str,
    config: &InstanceConfig,
    req: &Request,
    made: &mut Made,
) -> Result<String, CloudError> {
    let account = job.member_account.as_str();
    let token = format!("{}-instance", job.job_id);
    job.cloud.journal.intent(&Resource::planned(Kind::Instance, account, &job.region, &job.purpose, &token))?;
    let instance_type = req.instance_type.clone().or(config.instance_type.clone()).unwrap_or("t3.small".into());
    // The saved security groups belong to the saved subnet's network: with another subnet they are left
    // to its default.
    let subnet = req.subnet.clone().or(config.subnet_id.clone());
    let groups = (subnet == config.subnet_id && !config.security_group_ids.is_empty())
        .then(|| config.security_group_ids.clone());
    let tags = restore_tags(job, &config.tags);
    let out = job
        .member
        .run_instances()
        .image_id(image)
        .instance_type(InstanceType::from(instance_type.as_str()))
        .min_count(1)
        .max_count(1)
        .client_token(&token)
        .set_subnet_id(subnet)
        .set_security_group_ids(groups)
        .tag_specifications(
            TagSpecification::builder().resource_type(ResourceType::Instance).set_tags(Some(tags.clone())).build(),
        )
        .tag_specifications(
            TagSpecification::builder().resource_type(ResourceType::Volume).set_tags(Some(tags)).build(),
        )
        .send()
        .await;
    let out = match out {
        Ok(out) => out,
        Err(e) => {
            // Had it been launched after all, it carries the job's tag, by which the job's sweep finds it.
            job.cloud.journal.gone(&token)?;
            return Err(CloudError::aws(account, "RunInstances")(e));
        }
    };
    let id = out.instances().first().and_then(|i| i.instance_id()).unwrap_or_default().to_string();
    job.cloud.journal.made(&token, &id)?;
    made.add(Kind::Instance, true, &token, &id);
    super::instances::wait_state(&job.member, account, &id, InstanceStateName::Running).await?;
    // The volumes RunInstances made carry the job's tag too: they are handed over (or undone) with it.
    let described = job.member.describe_instances().instance_ids(&id).send().await;
    let described = described.map_err(CloudError::aws(account, "DescribeInstances"))?;
    let volumes = described
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .flat_map(|i| i.block_device_mappings())
        .filter_map(|m| m.ebs().and_then(|e| e.volume_id()));
    for (n, volume) in volumes.enumerate() {
        // Journaled as well: should the job die after their tags were taken off, the journal still knows them.
        let vtoken = format!("{token}-volume-{n}");
        job.cloud.journal.intent(&Resource::planned(Kind::Volume, account, &job.region, &job.purpose, &vtoken))?;
        job.cloud.journal.made(&vtoken, volume)?;
        made.add(Kind::Volume, true, &vtoken, volume);
    }
    Ok(id)
}

/// Restores `backup` into the member account, as an image (`req.as_image`) or HotAdd through the access
/// node's `devices_dir`; gives what the member got. What the restore made is handed over to the user when
/// it succeeded, else undone (and swept for by the job's tag).
pub async fn run(
    cloud: &Cloud,
    library: Arc<dedup::Library>,
    devices_dir: &Path,
    job_id: &str,
    backup: &dedup::Manifest,
    req: &Request,
    report: Arc<dyn Report>,
) -> Result<Restored, CloudError> {
    let config = config_of(backup)?;
    let region = req.region.clone().or((!config.region.is_empty()).then(|| config.region.clone()));
    let job = Workflow::new(cloud, job_id, &req.account, region.as_deref()).await?;
    let mut made = Made::default();
    let result = if req.as_image {
        super::restore_image::restore(&job, library, backup, &config, req, report.clone(), &mut made).await
    } else {
        super::hotadd_restore::restore(&job, library, devices_dir, backup, &config, req, report.clone(), &mut made)
            .await
    };
    let result = match result {
        Ok(r) => {
            report.step("handing the restored machine over");
            job.hand_over(&mut made).await.map(|()| r)
        }
        Err(e) => {
            report.step("removing what the restore made");
            Err(e)
        }
    };
    job.finish(result, &made, &job.purpose, |r: &Restored| format!("backup {} was restored", r.backup)).await
}

/// The tags that say what a restored resource is: its name and the backup it came from.
pub fn name_tags(backup: &dedup::Manifest) -> BTreeMap<String, String> {
    let mut tags = BTreeMap::new();
    tags.insert("Name".to_string(), format!("restore of {}", backup.name.as_deref().unwrap_or(&backup.id)));
    tags.insert("livemount-restored-from".to_string(), backup.id.clone());
    tags
}

/// Gives account `to` launch permission on the service account's image.
pub async fn share_image(job: &Workflow<'_>, image: &str, to: &str) -> Result<(), CloudError> {
    job.service
        .modify_image_attribute()
        .image_id(image)
        .launch_permission(
            LaunchPermissionModifications::builder().add(LaunchPermission::builder().user_id(to).build()).build(),
        )
        .send()
        .await
        .map_err(CloudError::aws(SERVICE, "ModifyImageAttribute"))?;
    Ok(())
}

/// RegisterImage of the snapshots with the saved configuration. RegisterImage has no client token: its
/// name, unique per account and Region, makes it idempotent.
pub async fn register(
    job: &Workflow<'_>,
    config: &InstanceConfig,
    snapshots: &[String],
    name_tag: &BTreeMap<String, String>,
    made: &mut Made,
) -> Result<String, CloudError> {
    let name = format!("livemount-restore-{}", job.job_id);
    let token = format!("{}-image", job.job_id);
    job.cloud.journal.intent(&Resource::planned(Kind::Image, SERVICE, &job.region, &job.purpose, &token))?;
    let mappings: Vec<BlockDeviceMapping> = config
        .block_devices
        .iter()
        .zip(snapshots)
        .map(|(bd, snap)| {
            let ebs = EbsBlockDevice::builder()
                .snapshot_id(snap)
                .volume_size(bd.size_gib.max(1))
                .set_volume_type(bd.volume_type.as_deref().map(VolumeType::from))
                .delete_on_termination(bd.delete_on_termination.unwrap_or(true))
                .build();
            BlockDeviceMapping::builder().device_name(&bd.device_name).ebs(ebs).build()
        })
        .collect();
    let root = config.root_device_name.clone().unwrap_or_else(|| config.block_devices[0].device_name.clone());
    let out = job
        .service
        .register_image()
        .name(&name)
        .description(format!("livemount restore of {} ({})", config.instance_id, job.job_id))
        .architecture(ArchitectureValues::from(config.architecture.as_deref().unwrap_or("x86_64")))
        .virtualization_type("hvm")
        .set_ena_support(config.ena_support)
        .set_boot_mode(config.boot_mode.as_deref().map(BootModeValues::from))
        .root_device_name(root)
        .set_block_device_mappings(Some(mappings))
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Image)
                .set_tags(Some(restore_tags(job, name_tag)))
                .build(),
        )
        .send()
        .await;
    let image = match out {
        Ok(o) => o.image_id().unwrap_or_default().to_string(),
        Err(e) => {
            let err = CloudError::aws(SERVICE, "RegisterImage")(e);
            if err.code() != Some("InvalidAMIName.Duplicate") {
                job.cloud.journal.gone(&token)?;
                return Err(err);
            }
            // Registered by a retry of a call that had worked.
            image_named(&job.service, SERVICE, &name).await?.ok_or(err)?
        }
    };
    job.cloud.journal.made(&token, &image)?;
    made.add(Kind::Image, false, &token, &image);
    Ok(image)
}

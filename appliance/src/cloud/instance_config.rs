//! What a restore needs to launch an EC2 instance again, as a backup of it keeps it: its type, boot mode,
//! ENA, network placement, tags and block device mapping, read with DescribeInstances and DescribeVolumes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::CloudError;

/// What a restore needs to launch the instance again, kept in the backup's manifest.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct InstanceConfig {
    pub kind: String,
    pub account: String,
    pub region: String,
    pub instance_id: String,
    pub instance_type: Option<String>,
    pub architecture: Option<String>,
    pub boot_mode: Option<String>,
    pub ena_support: Option<bool>,
    pub root_device_name: Option<String>,
    pub subnet_id: Option<String>,
    pub availability_zone: Option<String>,
    pub security_group_ids: Vec<String>,
    pub tags: BTreeMap<String, String>,
    /// One entry per backed-up disk, in the backup's disk order.
    pub block_devices: Vec<BlockDevice>,
    /// A snapshot backup: the image (CreateImage) that holds its snapshots in the instance's account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// A backup copy: the snapshot backup it was copied from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_of: Option<String>,
}

/// `InstanceConfig::kind` of a backup whose data is in the library (streaming backup, backup copy).
pub const KIND_INSTANCE: &str = "ec2-instance";
/// `InstanceConfig::kind` of a snapshot backup: its data stays in EBS snapshots of the member account.
pub const KIND_SNAPSHOTS: &str = "ec2-snapshots";

impl InstanceConfig {
    /// The configuration a backup's manifest holds, if it is one of an EC2 instance.
    pub fn of(manifest: &dedup::Manifest) -> Option<InstanceConfig> {
        let origin = manifest.origin.as_ref()?;
        let config: InstanceConfig = serde_json::from_value(origin.clone()).ok()?;
        (config.kind == KIND_INSTANCE || config.kind == KIND_SNAPSHOTS).then_some(config)
    }

    pub fn is_snapshot_backup(&self) -> bool {
        self.kind == KIND_SNAPSHOTS
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BlockDevice {
    pub device_name: String,
    pub volume_id: String,
    pub size_gib: i32,
    pub volume_type: Option<String>,
    pub delete_on_termination: Option<bool>,
    /// A snapshot backup: the snapshot of this disk, kept in the instance's account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
}

/// The instance's configuration; refuses an instance whose root is not on EBS.
pub async fn describe(
    member: &aws_sdk_ec2::Client,
    account: &str,
    region: &str,
    id: &str,
) -> Result<InstanceConfig, CloudError> {
    let out = member.describe_instances().instance_ids(id).send().await.map_err(|e| {
        let err = CloudError::aws(account, "DescribeInstances")(e);
        match err.code() {
            Some("InvalidInstanceID.NotFound") | Some("InvalidInstanceID.Malformed") => CloudError::Missing(format!(
                "no instance {id} in account {account} ({}): check the id and the account's Region",
                region
            )),
            _ => err,
        }
    })?;
    let Some(inst) = out.reservations().iter().flat_map(|r| r.instances()).next() else {
        return Err(CloudError::Missing(format!("no instance {id} in account {account} ({})", region)));
    };
    if inst.root_device_type().map(|t| t.as_str()) == Some("instance-store") {
        return Err(CloudError::BadRequest(format!(
            "instance {id} has an instance-store root: only EBS-backed instances can be imaged and backed up"
        )));
    }
    // One DescribeVolumes for all of the instance's volumes: their sizes and types.
    let ebs_mappings: Vec<_> = inst.block_device_mappings().iter().filter_map(|m| Some((m, m.ebs()?))).collect();
    let ids: Vec<String> = ebs_mappings.iter().filter_map(|(_, e)| e.volume_id().map(str::to_string)).collect();
    let volumes = if ids.is_empty() {
        Vec::new()
    } else {
        let out = member.describe_volumes().set_volume_ids(Some(ids)).send().await;
        out.map_err(CloudError::aws(account, "DescribeVolumes"))?.volumes().to_vec()
    };
    let mut block_devices = Vec::new();
    for (m, ebs) in ebs_mappings {
        let volume_id = ebs.volume_id().unwrap_or_default().to_string();
        let v = volumes.iter().find(|v| v.volume_id() == Some(volume_id.as_str()));
        block_devices.push(BlockDevice {
            device_name: m.device_name().unwrap_or_default().to_string(),
            volume_id,
            size_gib: v.and_then(|v| v.size()).unwrap_or(0),
            volume_type: v.and_then(|v| v.volume_type()).map(|t| t.as_str().to_string()),
            delete_on_termination: ebs.delete_on_termination(),
            snapshot_id: None,
        });
    }
    if block_devices.is_empty() {
        return Err(CloudError::BadRequest(format!("instance {id} has no EBS volume to back up")));
    }
    // The root device first (a restore boots disk 0), then the others in device-name order.
    let root = inst.root_device_name().unwrap_or_default();
    block_devices.sort_by(|a, b| (a.device_name != root, &a.device_name).cmp(&(b.device_name != root, &b.device_name)));
    // An instance shows its boot mode and ENA support only when its AMI named them; the AMI, while it
    // still exists, says what the instance was launched with.
    let mut boot_mode = inst.boot_mode().map(|b| b.as_str().to_string());
    let mut ena_support = inst.ena_support();
    if boot_mode.is_none() || ena_support.is_none() {
        if let Some(image) = source_image(member, inst.image_id()).await {
            boot_mode = boot_mode.or(image.boot_mode().map(|b| b.as_str().to_string()));
            ena_support = ena_support.or(image.ena_support());
        }
    }
    Ok(InstanceConfig {
        kind: KIND_INSTANCE.into(),
        account: account.to_string(),
        region: region.to_string(),
        instance_id: id.to_string(),
        instance_type: inst.instance_type().map(|t| t.as_str().to_string()),
        architecture: inst.architecture().map(|a| a.as_str().to_string()),
        boot_mode,
        ena_support,
        root_device_name: inst.root_device_name().map(str::to_string),
        subnet_id: inst.subnet_id().map(str::to_string),
        availability_zone: inst.placement().and_then(|p| p.availability_zone()).map(str::to_string),
        security_group_ids: inst.security_groups().iter().filter_map(|g| g.group_id()).map(str::to_string).collect(),
        tags: inst.tags().iter().filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string()))).collect(),
        block_devices,
        image_id: None,
        copy_of: None,
    })
}

/// The image the instance was launched from, if it can still be described.
async fn source_image(member: &aws_sdk_ec2::Client, image_id: Option<&str>) -> Option<aws_sdk_ec2::types::Image> {
    let out = member.describe_images().image_ids(image_id?).send().await.ok()?;
    out.images().first().cloned()
}

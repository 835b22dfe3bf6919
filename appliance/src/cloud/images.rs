//! The iPXE machine image: one fixed image per Region that boots every cloud live mount. Its boot disk is
//! `image::bootdisk` with the EC2 script (`image::ipxe::ec2_script`: DHCP, then the instance's user-data,
//! which chains to the mount's script on this appliance). The disk goes up as a snapshot through the EBS
//! direct APIs (`ebs_upload`), becomes an image, and is shared with member accounts by launch permission.
//! The image and its snapshot carry the hash of the disk's content, so that publishing it again finds
//! them and uploads nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{
    ArchitectureValues, BlockDeviceMapping, BootModeValues, EbsBlockDevice, LaunchPermission,
    LaunchPermissionModifications, ResourceType, SnapshotState, TagSpecification, VolumeType,
};
use serde::{Deserialize, Serialize};

use super::accounts::SERVICE;
use super::ebs_upload::Upload;
use super::journal::{Kind, Purpose, Resource};
use super::poll::Poll;
use super::{ec2_tags, filter, sdk, Cloud, CloudError, TAG_ACCESS_NODE, TAG_APPLIANCE, TAG_IPXE};

/// The iPXE image of one Region.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IpxeImage {
    pub region: String,
    pub image_id: String,
    pub snapshot_id: String,
    /// BLAKE3 of the boot disk's bytes.
    pub content_hash: String,
    /// The boot disk's size (the snapshot's volume is that rounded up to GiB).
    #[serde(default)]
    pub disk_bytes: u64,
    /// Account ids with launch permission.
    pub shared_with: Vec<String>,
    /// What this publication uploaded (0 when the image existed).
    #[serde(default)]
    pub bytes_uploaded: u64,
    #[serde(default)]
    pub upload_seconds: f64,
}

/// `<state>/cloud/images.json`: the iPXE image of each Region, as last published.
pub struct ImageRecords {
    path: PathBuf,
    map: Mutex<BTreeMap<String, IpxeImage>>,
}

impl ImageRecords {
    pub fn load(cloud_dir: &Path) -> Result<ImageRecords, CloudError> {
        let path = cloud_dir.join("images.json");
        let map = match std::fs::read(&path) {
            Ok(d) => serde_json::from_slice(&d).unwrap_or_default(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(CloudError::io("read", &path)(e)),
        };
        Ok(ImageRecords { path, map: Mutex::new(map) })
    }

    pub fn get(&self, region: &str) -> Option<IpxeImage> {
        self.map.lock().expect("not poisoned").get(region).cloned()
    }

    pub fn all(&self) -> Vec<IpxeImage> {
        self.map.lock().expect("not poisoned").values().cloned().collect()
    }

    pub fn set(&self, image: &IpxeImage) -> Result<(), CloudError> {
        let mut map = self.map.lock().expect("not poisoned");
        map.insert(image.region.clone(), image.clone());
        self.save(&map)
    }

    pub fn forget(&self, region: &str) -> Result<(), CloudError> {
        let mut map = self.map.lock().expect("not poisoned");
        if map.remove(region).is_some() {
            self.save(&map)?;
        }
        Ok(())
    }

    fn save(&self, map: &BTreeMap<String, IpxeImage>) -> Result<(), CloudError> {
        let json = serde_json::to_vec_pretty(map).expect("plain data");
        dedup::durable::write_file(&self.path, &json).map_err(CloudError::io("write", &self.path))
    }
}

/// Builds the iPXE boot disk for EC2 in `work` and publishes it in `region` of the service account,
/// shared with `share_with` (account names or ids). Idempotent: the same disk content gives the same image.
pub async fn publish_ipxe(
    cloud: &Cloud,
    region: &str,
    share_with: &[String],
    work: &Path,
) -> Result<IpxeImage, CloudError> {
    std::fs::create_dir_all(work).map_err(CloudError::io("create", work))?;
    let disk = work.join("ipxe-ec2.img");
    let disk2 = disk.clone();
    tokio::task::spawn_blocking(move || image::bootdisk::build(&disk2, &image::ipxe::ec2_script()))
        .await
        .map_err(|e| CloudError::Conflict(format!("building the iPXE boot disk: {e}")))??;
    let mut image = publish_disk(cloud, region, &disk, Published::Ipxe).await?;
    if let Some(old) = cloud.images.get(region).filter(|o| o.image_id == image.image_id) {
        image.shared_with = old.shared_with;
    }
    cloud.images.set(&image)?;
    for account in share_with {
        share(cloud, region, account).await?;
    }
    let _ = std::fs::remove_dir_all(work);
    Ok(cloud.images.get(region).unwrap_or(image))
}

/// Publishes the access node's disk image (`livemount image appliance`, raw) in `region` of the service
/// account, shared with `share_with` (account ids or names). Idempotent like the iPXE image: the same
/// content finds its image and uploads nothing.
pub async fn publish_access_node(
    cloud: &Cloud,
    region: &str,
    disk: &Path,
    share_with: &[String],
) -> Result<IpxeImage, CloudError> {
    let mut image = publish_disk(cloud, region, disk, Published::AccessNode).await?;
    let config = cloud.accounts.config(SERVICE, region, "image").await?;
    for account in share_with {
        let id = cloud.accounts.account_id(account, region).await?;
        add_launch_permission(&config, &image.image_id, &id).await?;
        image.shared_with.push(id);
    }
    Ok(image)
}

/// The two images the appliance publishes: how each is tagged, named and described.
#[derive(Clone, Copy, Debug)]
enum Published {
    /// The iPXE boot disk every cloud mount launches from.
    Ipxe,
    /// The access node itself.
    AccessNode,
}

impl Published {
    fn tag(self) -> &'static str {
        match self {
            Published::Ipxe => TAG_IPXE,
            Published::AccessNode => TAG_ACCESS_NODE,
        }
    }

    fn purpose(self, hash: &str) -> Purpose {
        match self {
            Published::Ipxe => Purpose::IpxeImage(hash.to_string()),
            Published::AccessNode => Purpose::AccessNodeImage(hash.to_string()),
        }
    }

    /// The image's name and the client tokens' stem, from the content hash.
    fn name(self, hash: &str) -> String {
        match self {
            Published::Ipxe => format!("livemount-ipxe-{}", &hash[..16]),
            Published::AccessNode => format!("livemount-access-node-{}", &hash[..16]),
        }
    }

    fn description(self) -> &'static str {
        match self {
            Published::Ipxe => {
                "livemount: boots a live-mounted backup over iSCSI (the instance's user-data names the mount)"
            }
            Published::AccessNode => {
                "livemount access node: the appliance (its settings from the instance's user-data on first boot)"
            }
        }
    }
}

/// Uploads `disk` as a snapshot through EBS direct and registers it as an image, unless an image (or a
/// completed snapshot) of the same content is there from an earlier run.
async fn publish_disk(cloud: &Cloud, region: &str, disk: &Path, kind: Published) -> Result<IpxeImage, CloudError> {
    let (content_hash, disk_bytes) = content_of(disk).await?;
    let config = cloud.accounts.config(SERVICE, region, "image").await?;
    let ec2 = sdk::ec2(&config);
    let purpose = kind.purpose(&content_hash);
    let tags = cloud.tags(&purpose);

    let (mut image, uploaded) = match find_image(&ec2, region, &cloud.appliance_id, kind, &content_hash).await? {
        Some(found) => (found, (0, 0.0)),
        None => {
            let started = Instant::now();
            let (snapshot_id, bytes) = match find_snapshot(&ec2, &cloud.appliance_id, kind, &content_hash).await? {
                Some(id) => (id, 0),
                None => upload(cloud, &config, region, disk, kind, &purpose, &tags).await?,
            };
            wait_snapshot(&ec2, &snapshot_id).await?;
            let image_id = register(cloud, &ec2, region, &snapshot_id, kind, &purpose, &tags).await?;
            let image = IpxeImage {
                region: region.to_string(),
                image_id,
                snapshot_id,
                content_hash: content_hash.clone(),
                shared_with: Vec::new(),
                bytes_uploaded: 0,
                upload_seconds: 0.0,
                disk_bytes,
            };
            (image, (bytes, started.elapsed().as_secs_f64()))
        }
    };
    (image.bytes_uploaded, image.upload_seconds) = uploaded;
    image.disk_bytes = disk_bytes;
    Ok(image)
}

/// BLAKE3 of a disk's bytes and its size, read in a blocking task (an access-node disk is gigabytes).
async fn content_of(disk: &Path) -> Result<(String, u64), CloudError> {
    let path = disk.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&path).map_err(CloudError::io("open", &path))?;
        let bytes = file.metadata().map_err(CloudError::io("read", &path))?.len();
        let mut hasher = blake3::Hasher::new();
        hasher
            .update_reader(std::io::BufReader::with_capacity(1 << 20, file))
            .map_err(CloudError::io("read", &path))?;
        Ok((hasher.finalize().to_hex().to_string(), bytes))
    })
    .await
    .map_err(|e| CloudError::Conflict(format!("hashing {}: {e}", disk.display())))?
}

/// The iPXE image of `region`, made launchable by `account` (shared with it unless it is the service
/// account). A Region without the image is an error that says how to publish it.
pub async fn launchable_image(cloud: &Cloud, region: &str, account: &str) -> Result<String, CloudError> {
    let missing = || {
        CloudError::Missing(format!(
            "there is no iPXE image in {region}: publish it with `livemount cloud image ipxe --region {region}`"
        ))
    };
    let image = cloud.images.get(region).ok_or_else(missing)?;
    let config = cloud.accounts.config(SERVICE, region, "mount").await?;
    let ec2 = sdk::ec2(&config);
    let exists = ec2.describe_images().image_ids(&image.image_id).send().await;
    match exists {
        Ok(out) if !out.images().is_empty() => {}
        Ok(_) => return Err(missing()),
        Err(e) => {
            let err = CloudError::aws(SERVICE, "DescribeImages")(e);
            return Err(if err.code() == Some("InvalidAMIID.NotFound") { missing() } else { err });
        }
    }
    if account != SERVICE {
        share(cloud, region, account).await?;
    }
    Ok(image.image_id)
}

/// Gives `account` launch permission on the Region's iPXE image (idempotent).
async fn share(cloud: &Cloud, region: &str, account: &str) -> Result<(), CloudError> {
    let Some(mut image) = cloud.images.get(region) else { return Ok(()) };
    let id = cloud.accounts.account_id(account, region).await?;
    if image.shared_with.contains(&id) {
        return Ok(());
    }
    let config = cloud.accounts.config(SERVICE, region, "image").await?;
    add_launch_permission(&config, &image.image_id, &id).await?;
    image.shared_with.push(id);
    cloud.images.set(&image)
}

/// Lets account `id` launch the service account's image (idempotent in EC2).
async fn add_launch_permission(config: &aws_config::SdkConfig, image_id: &str, id: &str) -> Result<(), CloudError> {
    sdk::ec2(config)
        .modify_image_attribute()
        .image_id(image_id)
        .launch_permission(
            LaunchPermissionModifications::builder().add(LaunchPermission::builder().user_id(id).build()).build(),
        )
        .send()
        .await
        .map_err(CloudError::aws(SERVICE, "ModifyImageAttribute"))?;
    Ok(())
}

async fn find_image(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    appliance: &str,
    kind: Published,
    hash: &str,
) -> Result<Option<IpxeImage>, CloudError> {
    let out = ec2
        .describe_images()
        .owners("self")
        .filters(filter(&format!("tag:{}", kind.tag()), &[hash]))
        .filters(filter(&format!("tag:{TAG_APPLIANCE}"), &[appliance]))
        .send()
        .await
        .map_err(CloudError::aws(SERVICE, "DescribeImages"))?;
    let Some(img) = out.images().iter().find(|i| i.state().map(|s| s.as_str()) != Some("deregistered")) else {
        return Ok(None);
    };
    let snapshot_id = img
        .block_device_mappings()
        .iter()
        .find_map(|m| m.ebs().and_then(|e| e.snapshot_id()))
        .unwrap_or_default()
        .to_string();
    Ok(Some(IpxeImage {
        region: region.to_string(),
        image_id: img.image_id().unwrap_or_default().to_string(),
        snapshot_id,
        content_hash: hash.to_string(),
        shared_with: Vec::new(),
        bytes_uploaded: 0,
        upload_seconds: 0.0,
        disk_bytes: 0,
    }))
}

/// A completed snapshot of this content from an earlier run that stopped before the image was registered.
async fn find_snapshot(
    ec2: &aws_sdk_ec2::Client,
    appliance: &str,
    kind: Published,
    hash: &str,
) -> Result<Option<String>, CloudError> {
    let out = ec2
        .describe_snapshots()
        .owner_ids("self")
        .filters(filter(&format!("tag:{}", kind.tag()), &[hash]))
        .filters(filter(&format!("tag:{TAG_APPLIANCE}"), &[appliance]))
        .filters(filter("status", &["completed"]))
        .send()
        .await
        .map_err(CloudError::aws(SERVICE, "DescribeSnapshots"))?;
    Ok(out.snapshots().first().and_then(|s| s.snapshot_id()).map(str::to_string))
}

async fn upload(
    cloud: &Cloud,
    config: &aws_config::SdkConfig,
    region: &str,
    disk: &Path,
    kind: Published,
    purpose: &Purpose,
    tags: &[(String, String)],
) -> Result<(String, u64), CloudError> {
    // One token per publish: a retry of this call is idempotent, while a publish after the image was
    // cleaned up must not get the deleted snapshot back (StartSnapshot answers a reused token with the
    // original result).
    let token = format!("{}-snap-{}", kind.name(purpose.id()), crate::random::hex(8));
    let resource = Resource::planned(Kind::Snapshot, SERVICE, region, purpose, &token);
    cloud.journal.intent(&resource)?;
    let ebs = sdk::ebs(config);
    let up = Upload {
        ebs: &ebs,
        account: SERVICE,
        client_token: &token,
        description: kind.name(purpose.id()),
        tags: tags.to_vec(),
    };
    let done = up.run(disk, |id| cloud.journal.made(&token, id)).await?;
    tracing::info!(snapshot = %done.snapshot_id, blocks = done.blocks_written, ?kind, "disk uploaded");
    Ok((done.snapshot_id, done.bytes_written))
}

/// Waits until the service account's snapshot is completed.
pub(super) async fn wait_snapshot(ec2: &aws_sdk_ec2::Client, snapshot_id: &str) -> Result<(), CloudError> {
    let limit = Duration::from_secs(1800);
    let mut poll = Poll::steady(format!("snapshot {snapshot_id}"), "completed", limit, Duration::from_secs(2));
    loop {
        let out = ec2
            .describe_snapshots()
            .snapshot_ids(snapshot_id)
            .send()
            .await
            .map_err(CloudError::aws(SERVICE, "DescribeSnapshots"))?;
        let state = out.snapshots().first().and_then(|s| s.state().cloned());
        match state {
            Some(SnapshotState::Completed) => return Ok(()),
            Some(SnapshotState::Error) => {
                return Err(CloudError::Conflict(format!(
                    "snapshot {snapshot_id} went into the error state; run the command again"
                )))
            }
            _ => poll.pause(format!("{state:?}")).await?,
        }
    }
}

async fn register(
    cloud: &Cloud,
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    snapshot_id: &str,
    kind: Published,
    purpose: &Purpose,
    tags: &[(String, String)],
) -> Result<String, CloudError> {
    let name = kind.name(purpose.id());
    let token = format!("{name}-image-{}", crate::random::hex(8));
    let resource = Resource::planned(Kind::Image, SERVICE, region, purpose, &token);
    cloud.journal.intent(&resource)?;
    let out = ec2
        .register_image()
        .name(&name)
        .description(kind.description())
        .architecture(ArchitectureValues::X8664)
        .virtualization_type("hvm")
        .ena_support(true)
        .boot_mode(BootModeValues::LegacyBios)
        .root_device_name("/dev/sda1")
        .block_device_mappings(
            BlockDeviceMapping::builder()
                .device_name("/dev/sda1")
                .ebs(
                    EbsBlockDevice::builder()
                        .snapshot_id(snapshot_id)
                        .volume_type(VolumeType::Gp3)
                        .delete_on_termination(true)
                        .build(),
                )
                .build(),
        )
        .tag_specifications(
            TagSpecification::builder().resource_type(ResourceType::Image).set_tags(Some(ec2_tags(tags))).build(),
        )
        .send()
        .await;
    let image_id = match out {
        Ok(o) => o.image_id().unwrap_or_default().to_string(),
        Err(e) => {
            let err = CloudError::aws(SERVICE, "RegisterImage")(e);
            if err.code() != Some("InvalidAMIName.Duplicate") {
                cloud.journal.gone(&token)?;
                return Err(err);
            }
            // Registered by an earlier run that stopped before recording it.
            super::workflow::image_named(ec2, SERVICE, &name).await?.ok_or(err)?
        }
    };
    cloud.journal.made(&token, &image_id)?;
    Ok(image_id)
}

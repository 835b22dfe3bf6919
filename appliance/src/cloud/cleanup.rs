//! What this appliance made that still exists, and removing what no live mount uses. Two sources agree
//! here: the journal (every resource from before the call that made it) and the tags (every resource
//! carries `livemount:appliance`), so that neither a crash before an id was recorded nor a lost journal
//! hides a resource.

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_ec2::types::OperationType;
use serde::{Deserialize, Serialize};

use super::journal::{Kind, Purpose};
use super::poll::Poll;
use super::{
    filter, instances, sdk, Cloud, CloudError, TAG_ACCESS_NODE, TAG_APPLIANCE, TAG_BACKUP, TAG_IPXE, TAG_JOB, TAG_MOUNT,
};

/// One resource found in AWS or in the journal.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Found {
    pub kind: Kind,
    pub account: String,
    pub region: String,
    /// None: the journal says it was about to be made, and AWS shows nothing by its tags.
    pub id: Option<String>,
    pub purpose: Option<Purpose>,
    pub state: String,
    /// The journal's client token, when the journal knows it.
    pub token: Option<String>,
    /// A live mount, a running job, a backup of the library, or the Region's current iPXE image, uses it.
    pub in_use: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Inventory {
    pub resources: Vec<Found>,
    /// Accounts or Regions that could not be looked at, and why.
    pub errors: Vec<String>,
}

/// Everything this appliance made that may still exist, in every account it knows and every Region it
/// has used. `live` are the ids of the mounts the daemon has, of the jobs it is running (and the backups
/// they are making), and of the library's backups.
pub async fn inventory(cloud: &Cloud, live: &BTreeSet<String>) -> Inventory {
    let mut places: BTreeSet<(String, String)> = BTreeSet::new();
    for r in cloud.journal.live() {
        places.insert((r.account, r.region));
    }
    for img in cloud.images.all() {
        places.insert((super::accounts::SERVICE.into(), img.region));
    }
    for a in cloud.accounts.list() {
        if let Ok(region) = cloud.accounts.region_of(&a.name, None).await {
            places.insert((a.name, region));
        }
    }
    let mut inv = Inventory::default();
    let mut seen_ids = BTreeSet::new();
    for (account, region) in &places {
        match scan(cloud, account, region).await {
            Ok(found) => {
                for f in found {
                    seen_ids.insert((f.kind, f.id.clone().unwrap_or_default()));
                    inv.resources.push(f);
                }
            }
            Err(e) => inv.errors.push(format!("{account} ({region}): {e}")),
        }
    }
    // Journal entries: attach their tokens, and list what AWS did not show by tag.
    // By kind and id: a share's id is its snapshot's.
    let by_id: BTreeMap<(Kind, String), String> =
        cloud.journal.live().into_iter().filter_map(|r| r.id.clone().map(|id| ((r.kind, id), r.token))).collect();
    for f in &mut inv.resources {
        f.token = f.id.as_ref().and_then(|id| by_id.get(&(f.kind, id.clone())).cloned());
    }
    for r in cloud.journal.live() {
        let shown = r.id.as_ref().is_some_and(|id| seen_ids.contains(&(r.kind, id.clone())));
        let place_failed = inv.errors.iter().any(|e| e.starts_with(&format!("{} ({})", r.account, r.region)));
        if !shown && !place_failed {
            // Not found by its tags: gone, or its tags were taken off (a hand-over cut short); asking by
            // its id tells which.
            let state = match &r.id {
                None => Ok("never made".to_string()),
                Some(id) => state_of(cloud, &r.account, &r.region, r.kind, id).await,
            };
            let state = match state {
                Ok(s) => s,
                Err(e) => {
                    inv.errors.push(format!("{} ({}): {e}", r.account, r.region));
                    continue;
                }
            };
            inv.resources.push(Found {
                kind: r.kind,
                account: r.account.clone(),
                region: r.region.clone(),
                id: r.id.clone(),
                purpose: Some(r.purpose.clone()),
                state,
                token: Some(r.token.clone()),
                in_use: false,
            });
        }
    }
    for f in &mut inv.resources {
        f.in_use = match &f.purpose {
            Some(Purpose::Mount(m)) | Some(Purpose::Job(m)) | Some(Purpose::Backup(m)) => {
                live.contains(m) && f.state != "gone" && f.state != "never made"
            }
            // Kept until asked for (`cleanup --images`): access nodes are launched from it by people.
            Some(Purpose::AccessNodeImage(_)) => true,
            Some(Purpose::IpxeImage(_)) => cloud
                .images
                .get(&f.region)
                .is_some_and(|img| f.id.as_deref() == Some(&img.image_id) || f.id.as_deref() == Some(&img.snapshot_id)),
            None => false,
        };
    }
    inv
}

/// The state EC2 shows of one resource by its id, "gone" when it shows none.
async fn state_of(cloud: &Cloud, account: &str, region: &str, kind: Kind, id: &str) -> Result<String, CloudError> {
    let ec2 = sdk::ec2(&cloud.accounts.config(account, region, "inventory").await?);
    let gone = |e: CloudError| if e.code().is_some_and(|c| c.ends_with(".NotFound")) { Ok(None) } else { Err(e) };
    let state = match kind {
        Kind::Instance => match ec2.describe_instances().instance_ids(id).send().await {
            Ok(o) => o
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .find_map(|i| i.state().and_then(|s| s.name()).map(|n| n.as_str().to_string()))
                .filter(|s| s != "terminated"),
            Err(e) => gone(CloudError::aws(account, "DescribeInstances")(e))?,
        },
        Kind::Volume => match ec2.describe_volumes().volume_ids(id).send().await {
            Ok(o) => o.volumes().first().and_then(|v| v.state()).map(|s| s.as_str().to_string()),
            Err(e) => gone(CloudError::aws(account, "DescribeVolumes")(e))?,
        },
        Kind::Image => match ec2.describe_images().image_ids(id).send().await {
            Ok(o) => o.images().first().and_then(|i| i.state()).map(|s| s.as_str().to_string()),
            Err(e) => gone(CloudError::aws(account, "DescribeImages")(e))?,
        },
        Kind::Snapshot => match ec2.describe_snapshots().snapshot_ids(id).send().await {
            Ok(o) => o.snapshots().first().and_then(|s| s.state()).map(|s| s.as_str().to_string()),
            Err(e) => gone(CloudError::aws(account, "DescribeSnapshots")(e))?,
        },
        // A share lasts as long as its snapshot, until it is taken back.
        Kind::Share => match ec2.describe_snapshots().snapshot_ids(id).send().await {
            Ok(o) => o.snapshots().first().map(|_| "shared".to_string()),
            Err(e) => gone(CloudError::aws(account, "DescribeSnapshots")(e))?,
        },
        Kind::Object | Kind::Grant => return super::s3_objects::state_of(cloud, region, kind, id).await,
    };
    Ok(state.filter(|s| s != "deregistered" && s != "deleted").unwrap_or_else(|| "gone".into()))
}

/// What EC2 shows in one account and Region with this appliance's tag.
async fn scan(cloud: &Cloud, account: &str, region: &str) -> Result<Vec<Found>, CloudError> {
    let config = cloud.accounts.config(account, region, "inventory").await?;
    let ec2 = sdk::ec2(&config);
    let mine = filter(&format!("tag:{TAG_APPLIANCE}"), &[&cloud.appliance_id]);
    let mut out = Vec::new();
    let place = |kind, id: Option<&str>, state: String, tags: &[aws_sdk_ec2::types::Tag]| Found {
        kind,
        account: account.into(),
        region: region.into(),
        id: id.map(str::to_string),
        purpose: purpose_of(tags),
        state,
        token: None,
        in_use: false,
    };
    let inst = ec2
        .describe_instances()
        .filters(mine.clone())
        .send()
        .await
        .map_err(CloudError::aws(account, "DescribeInstances"))?;
    for i in inst.reservations().iter().flat_map(|r| r.instances()) {
        let state = i.state().and_then(|s| s.name()).map(|n| n.as_str().to_string()).unwrap_or_default();
        if state != "terminated" {
            out.push(place(Kind::Instance, i.instance_id(), state, i.tags()));
        }
    }
    let vols = ec2
        .describe_volumes()
        .filters(mine.clone())
        .send()
        .await
        .map_err(CloudError::aws(account, "DescribeVolumes"))?;
    for v in vols.volumes() {
        let state = v.state().map(|s| s.as_str().to_string()).unwrap_or_default();
        out.push(place(Kind::Volume, v.volume_id(), state, v.tags()));
    }
    let imgs = ec2
        .describe_images()
        .owners("self")
        .filters(mine.clone())
        .send()
        .await
        .map_err(CloudError::aws(account, "DescribeImages"))?;
    for i in imgs.images() {
        let state = i.state().map(|s| s.as_str().to_string()).unwrap_or_default();
        out.push(place(Kind::Image, i.image_id(), state, i.tags()));
    }
    let snaps = ec2
        .describe_snapshots()
        .owner_ids("self")
        .filters(mine)
        .send()
        .await
        .map_err(CloudError::aws(account, "DescribeSnapshots"))?;
    for s in snaps.snapshots() {
        let state = s.state().map(|s| s.as_str().to_string()).unwrap_or_default();
        out.push(place(Kind::Snapshot, s.snapshot_id(), state, s.tags()));
    }
    Ok(out)
}

fn purpose_of(tags: &[aws_sdk_ec2::types::Tag]) -> Option<Purpose> {
    let get = |k: &str| tags.iter().find(|t| t.key() == Some(k)).and_then(|t| t.value()).map(str::to_string);
    get(TAG_MOUNT)
        .map(Purpose::Mount)
        .or_else(|| get(TAG_IPXE).map(Purpose::IpxeImage))
        .or_else(|| get(TAG_ACCESS_NODE).map(Purpose::AccessNodeImage))
        .or_else(|| get(TAG_JOB).map(Purpose::Job))
        .or_else(|| get(TAG_BACKUP).map(Purpose::Backup))
}

/// Removes what no live mount uses (instances first, then volumes, images, snapshots), and with
/// `images` also the current iPXE images. Gives what was (or, with `dry_run`, would be) removed.
pub async fn cleanup(
    cloud: &Cloud,
    live_mounts: &BTreeSet<String>,
    dry_run: bool,
    images: bool,
) -> Result<Inventory, CloudError> {
    let inv = inventory(cloud, live_mounts).await;
    let mut chosen: Vec<Found> = inv
        .resources
        .into_iter()
        .filter(|f| {
            let image = matches!(f.purpose, Some(Purpose::IpxeImage(_) | Purpose::AccessNodeImage(_)));
            !f.in_use || (images && image)
        })
        .collect();
    chosen.sort_by_key(|f| f.kind);
    let mut done = Inventory { resources: Vec::new(), errors: inv.errors };
    for f in chosen {
        if !dry_run {
            if let Err(e) = remove(cloud, &f).await {
                done.errors.push(format!("{} {}: {e}", f.kind, f.id.as_deref().unwrap_or("?")));
                continue;
            }
        }
        done.resources.push(f);
    }
    Ok(done)
}

async fn remove(cloud: &Cloud, f: &Found) -> Result<(), CloudError> {
    if f.state != "gone" && f.state != "never made" {
        let id = f.id.clone().unwrap_or_default();
        let config = cloud.accounts.config(&f.account, &f.region, "cleanup").await?;
        let ec2 = sdk::ec2(&config);
        let account = f.account.as_str();
        match f.kind {
            Kind::Instance => instances::terminate(&ec2, account, std::slice::from_ref(&id)).await?,
            Kind::Volume => delete_volume(&ec2, account, &id).await?,
            Kind::Image => {
                // An image made by CreateImage owns its snapshots: they go with it (a crash may have come
                // before they were tagged or journaled).
                for snap in deregister_image(&ec2, account, &id).await? {
                    delete_snapshot(&ec2, account, &snap).await?;
                }
                if cloud.images.get(&f.region).is_some_and(|i| i.image_id == id) {
                    cloud.images.forget(&f.region)?;
                }
            }
            Kind::Snapshot => delete_snapshot(&ec2, account, &id).await?,
            Kind::Share => unshare(cloud, &ec2, account, &f.region, &id).await?,
            Kind::Object | Kind::Grant => super::s3_objects::remove(cloud, &f.region, f.kind, &id).await?,
        }
        tracing::info!(kind = %f.kind, %id, account = %f.account, "removed");
    }
    if let Some(t) = &f.token {
        cloud.journal.gone(t)?;
    }
    Ok(())
}

/// Removes what the journal shows of jobs that are not running (they died with an earlier daemon) and of
/// backups the library does not list (a snapshot backup cut off before its catalog entry was written, or
/// forgotten before its snapshots could be removed), found in AWS by journal and by tag; `live` as for
/// `inventory`. Gives how many resources were removed.
pub async fn remove_orphans(cloud: &Cloud, live: &BTreeSet<String>) -> Result<usize, CloudError> {
    let dead = |p: &Purpose| matches!(p, Purpose::Job(id) | Purpose::Backup(id) if !live.contains(id));
    if !cloud.journal.live().iter().any(|r| dead(&r.purpose)) {
        return Ok(0);
    }
    remove_of(cloud, live, dead).await
}

/// Removes whatever made for `purpose` (a job, a backup) is still in AWS, found by journal and by tag: a
/// call whose answer was lost may have made its resource all the same, and that resource carries the
/// tag. Gives how many resources were removed.
pub async fn remove_purpose(cloud: &Cloud, purpose: &Purpose) -> Result<usize, CloudError> {
    remove_of(cloud, &BTreeSet::new(), |p| p == purpose).await
}

async fn remove_of(
    cloud: &Cloud,
    live_mounts: &BTreeSet<String>,
    chosen: impl Fn(&Purpose) -> bool,
) -> Result<usize, CloudError> {
    let inv = inventory(cloud, live_mounts).await;
    if !inv.errors.is_empty() {
        // What could not be listed may hold the job's resources: saying "nothing left" would be a guess.
        return Err(CloudError::Conflict(format!("cannot list what is left: {}", inv.errors.join("; "))));
    }
    let mut found: Vec<Found> = inv.resources.into_iter().filter(|f| f.purpose.as_ref().is_some_and(&chosen)).collect();
    found.sort_by_key(|f| f.kind);
    for f in &found {
        remove(cloud, f).await?;
    }
    Ok(found.len())
}

/// Deregisters an image (gone already is fine); gives the snapshots it was made of.
pub(super) async fn deregister_image(
    ec2: &aws_sdk_ec2::Client,
    account: &str,
    id: &str,
) -> Result<Vec<String>, CloudError> {
    let described = ec2.describe_images().image_ids(id).send().await;
    let snapshots = match described.map_err(CloudError::aws(account, "DescribeImages")) {
        Ok(out) => out
            .images()
            .iter()
            .flat_map(|i| i.block_device_mappings())
            .filter_map(|m| m.ebs().and_then(|e| e.snapshot_id()).map(str::to_string))
            .collect(),
        Err(e) => {
            ignore_not_found(Err(e))?;
            Vec::new()
        }
    };
    let r = ec2.deregister_image().image_id(id).send().await;
    ignore_not_found(r.map(|_| ()).map_err(CloudError::aws(account, "DeregisterImage")))?;
    Ok(snapshots)
}

/// Takes back the service account's permission to make volumes of snapshot `id` of `account` (a
/// snapshot that is gone is fine).
pub(super) async fn unshare(
    cloud: &Cloud,
    ec2: &aws_sdk_ec2::Client,
    account: &str,
    region: &str,
    id: &str,
) -> Result<(), CloudError> {
    let service = cloud.accounts.account_id(super::accounts::SERVICE, region).await?;
    let ids = [id.to_string()];
    let r = super::workflow::share_snapshots(ec2, account, &ids, &service, OperationType::Remove).await;
    ignore_not_found(r)
}

/// Deletes a snapshot (gone already is fine).
pub(super) async fn delete_snapshot(ec2: &aws_sdk_ec2::Client, account: &str, id: &str) -> Result<(), CloudError> {
    let r = ec2.delete_snapshot().snapshot_id(id).send().await;
    ignore_not_found(r.map(|_| ()).map_err(CloudError::aws(account, "DeleteSnapshot")))
}

/// Deletes a volume, detaching it first when it is still attached to something.
pub(super) async fn delete_volume(ec2: &aws_sdk_ec2::Client, account: &str, id: &str) -> Result<(), CloudError> {
    let r = ec2.delete_volume().volume_id(id).send().await;
    match r.map(|_| ()).map_err(CloudError::aws(account, "DeleteVolume")) {
        Err(e) if e.code() == Some("VolumeInUse") => {
            let r = ec2.detach_volume().volume_id(id).send().await;
            match r.map(|_| ()).map_err(CloudError::aws(account, "DetachVolume")) {
                // Detaching already (an earlier try): waiting is all there is to do.
                Err(e) if e.code() == Some("IncorrectState") => {}
                other => ignore_not_found(other)?,
            }
            // DetachVolume returns while the volume is still `in-use` (detaching); it can be deleted once
            // it is `available` (EC2 user guide, "Detach an Amazon EBS volume from an instance").
            wait_detached(ec2, account, id).await?;
            let r = ec2.delete_volume().volume_id(id).send().await;
            ignore_not_found(r.map(|_| ()).map_err(CloudError::aws(account, "DeleteVolume")))
        }
        other => ignore_not_found(other),
    }
}

/// Waits for a volume being detached to become `available` (or gone).
async fn wait_detached(ec2: &aws_sdk_ec2::Client, account: &str, id: &str) -> Result<(), CloudError> {
    let (limit, first) = (std::time::Duration::from_secs(300), std::time::Duration::from_millis(100));
    let mut poll = Poll::new(format!("volume {id} in account {account}"), "available (detached)", limit, first);
    loop {
        let out = ec2.describe_volumes().volume_ids(id).send().await;
        let state = match out.map_err(CloudError::aws(account, "DescribeVolumes")) {
            Ok(out) => out.volumes().first().and_then(|v| v.state()).map(|s| s.as_str().to_string()),
            Err(e) if e.code().is_some_and(|c| c.ends_with(".NotFound")) => return Ok(()),
            Err(e) => return Err(e),
        };
        match state.as_deref() {
            None | Some("available") | Some("deleted") | Some("deleting") => return Ok(()),
            Some(last) => poll.pause(last).await?,
        }
    }
}

fn ignore_not_found(r: Result<(), CloudError>) -> Result<(), CloudError> {
    match r {
        Err(e) if e.code().is_some_and(|c| c.ends_with(".NotFound")) => Ok(()),
        other => other,
    }
}

/// Removes every resource of mount `mount_id` in `account`/`region`: its instances (terminated, waited
/// for) and then any volume left with its tag. Used by unmount, by a mount's rollback and after a crash.
pub async fn remove_mount_resources(
    cloud: &Cloud,
    account: &str,
    region: &str,
    mount_id: &str,
) -> Result<(), CloudError> {
    instances::terminate_mount(cloud, account, region, mount_id).await?;
    let config = cloud.accounts.config(account, region, "unmount").await?;
    let ec2 = sdk::ec2(&config);
    let vols = ec2
        .describe_volumes()
        .filters(filter(&format!("tag:{TAG_APPLIANCE}"), &[&cloud.appliance_id]))
        .filters(filter(&format!("tag:{TAG_MOUNT}"), &[mount_id]))
        .send()
        .await
        .map_err(CloudError::aws(account, "DescribeVolumes"))?;
    for v in vols.volumes() {
        if let Some(id) = v.volume_id() {
            delete_volume(&ec2, account, id).await?;
        }
    }
    Ok(())
}

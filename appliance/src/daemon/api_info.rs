//! The daemon's state of a mount turned into the API's answer about it (`MountInfo`, `DiskInfo`,
//! `BootInfo`): where each disk is reached (FUSE path, iSCSI URL) and how a boot mount is booted.

use std::path::Path;
use std::sync::Arc;

use blockdev::PseudoDisk;

use super::boot::{self, BootSettings, BootState};
use super::mounts::{disk_file, iqn_of, MountState};
use crate::api_types::{BootInfo, CloudInfo, DiskCounters, DiskInfo, MountInfo};

/// Where the daemon serves mounts: what an answer is made of besides the mount itself.
#[derive(Clone, Copy)]
pub struct Reach<'a> {
    pub fuse_root: &'a Path,
    /// The iSCSI portal's advertised address (`host:port`).
    pub advertise: &'a str,
    pub boot: &'a BootSettings,
}

/// A mount as of now: its state, its disks and where they are served.
pub struct MountView<'a> {
    pub state: MountState,
    pub disks: &'a [Arc<PseudoDisk>],
    pub reach: Reach<'a>,
}

impl From<MountView<'_>> for MountInfo {
    fn from(v: MountView<'_>) -> Self {
        let s = v.state;
        let disks = v
            .disks
            .iter()
            .enumerate()
            .map(|(d, disk)| DiskInfo {
                disk: d,
                size: disk.size(),
                fuse_path: disk_file(v.reach.fuse_root, &s.id, d).display().to_string(),
                iscsi_url: format!("iscsi://{}/{}/{d}", v.reach.advertise, iqn_of(&s.id)),
                counters: DiskCounters { chunks_total: disk.chunk_count(), ..disk.counters().into() },
            })
            .collect();
        MountInfo {
            disks,
            iqn: iqn_of(&s.id),
            boot: s.boot.as_ref().map(|b| BootInfo::from(BootView { mount_id: &s.id, boot: b, reach: v.reach })),
            cloud: s.cloud.map(|c| CloudInfo { console: c.console_hint(), mount: c }),
            id: s.id,
            name: s.name,
            backup: s.backup,
            read_only: s.read_only,
            created: s.created,
            browse: s.browse,
        }
    }
}

/// A boot mount's published state and where it is served.
pub struct BootView<'a> {
    pub mount_id: &'a str,
    pub boot: &'a BootState,
    pub reach: Reach<'a>,
}

impl From<BootView<'_>> for BootInfo {
    fn from(v: BootView<'_>) -> Self {
        let b = v.boot;
        let target = boot::boot_target(v.reach.advertise, v.mount_id, b);
        let script_url = v.reach.boot.script_url(&b.token);
        BootInfo {
            qemu_command: format!(
                "qemu-system-x86_64 -accel tcg -m 1024 -nographic -netdev user,id=n0,bootfile={script_url} -device virtio-net-pci,netdev=n0,disable-legacy=on{} -boot n",
                b.mac.as_ref().map(|m| format!(",mac={m}")).unwrap_or_default()
            ),
            script_url,
            entry_url: v.reach.boot.entry_url(),
            sanboot: image::ipxe::sanboot_uri(&target),
            initiator_iqn: b.initiator_iqn.clone(),
            mac: b.mac.clone(),
            guest_os: b.guest_os.clone(),
            changes: b.changes.clone(),
        }
    }
}

//! Guest disk images: what is on a disk (partition tables) and, later, preparing a guest to boot from
//! iSCSI, iPXE scripts and the iPXE boot image (issue 5).

pub mod appliance;
pub mod bootdisk;
pub mod guest;
pub mod ipxe;
pub mod partition;

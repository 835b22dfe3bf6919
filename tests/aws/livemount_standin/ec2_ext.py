"""Patches on moto's EC2 models and responses, applied once at start (not in --stock).

1. Sharing visibility of images (launch permissions) and snapshots (create
   volume permissions) across accounts.
2. The block data plane: volumes and snapshots keep their bytes under --data,
   CreateImage snapshots the instance's volumes, RegisterImage keeps its block
   device mapping, attachments show as udev device links.
Every patch names the EC2 API reference action and the sentence it follows.
"""

from moto.ec2.exceptions import (
    EC2ClientError,
    InvalidAMIIdError,
    InvalidSnapshotIdError,
    MalformedAMIIdError,
)
from moto.ec2.models import EC2Backend, ec2_backends
from moto.ec2.models.amis import Ami
from moto.ec2.models.elastic_block_store import Snapshot
from moto.ec2.models.instances import Instance
from moto.ec2.responses.amis import AmisResponse
from moto.ec2.responses.elastic_block_store import ElasticBlockStore
from moto.ec2.utils import generic_filter, random_snapshot_id
from moto.core.responses import ActionResult

from .blocks import BlockStore

_applied = False


def _region_backends(region: str):
    """The EC2 backends that exist for a region, without creating new ones."""
    for account in list(ec2_backends.keys()):
        per = ec2_backends[account]
        if region in dict.keys(per):
            yield account, dict.__getitem__(per, region)


# ---------------------------------------------------------------- images

def _launchable_by(ami: Ami, account: str) -> bool:
    return ami.is_public or {"UserId": account} in ami.launch_permissions


def _visible_images(backend: EC2Backend) -> dict[str, Ami]:
    """DescribeImages: "The images available to you include public images,
    private images that you own, and private images owned by other Amazon Web
    Services accounts for which you have explicit launch permissions."
    moto copies its stock public images into every account, so of another
    account only the images that account owns itself are considered."""
    me = backend.account_id
    images = dict(backend.amis)
    for account, other in _region_backends(backend.region_name):
        if account == me:
            continue
        for ami in list(other.amis.values()):
            if ami.owner_id == account and ami.id not in images and _launchable_by(ami, me):
                images[ami.id] = ami
    return images


def describe_images(self, ami_ids=None, filters=None, exec_users=None, owners=None):
    me = self.account_id
    images = _visible_images(self)
    if ami_ids:
        malformed = [i for i in ami_ids if not i.startswith("ami-")]
        if malformed:
            raise MalformedAMIIdError(malformed)
        # DescribeImages, ImageIds: an id that is not available to the caller
        # answers InvalidAMIID.NotFound ("The specified AMI doesn't exist" in the
        # EC2 error codes), whether it does not exist or is not shared.
        missing = [i for i in ami_ids if i not in images and i not in self.deleted_amis]
        if missing:
            raise InvalidAMIIdError(missing)
        result = [images[i] for i in ami_ids if i in images]
    else:
        result = list(images.values())
    if exec_users:
        # DescribeImages, ExecutableUsers: "Scopes the images by users with explicit
        # launch permissions. Specify an Amazon Web Services account ID, self (the
        # sender of the request), or all (public AMIs)." Explicit permissions: an
        # image the caller owns is not listed for self (Find AMIs in the EC2 user
        # guide: "This list does not include any AMIs that you own").
        users = {me if u == "self" else u for u in exec_users}
        result = [
            a
            for a in result
            if ("all" in users and a.is_public)
            or any(lp.get("UserId") in users for lp in a.launch_permissions)
        ]
    if owners:
        # DescribeImages, Owners: "Scopes the results to images with the specified
        # owners. You can specify a combination of Amazon Web Services account IDs,
        # self, amazon, aws-backup-vault, and aws-marketplace."
        wanted = {me if o == "self" else o for o in owners}
        result = [a for a in result if a.owner_id in wanted or (a.owner_alias and a.owner_alias in wanted)]
    if filters:
        result = generic_filter(filters, result)
    return result


def _own_image(self, ami_id: str) -> Ami:
    if ami_id in self.amis:
        return self.amis[ami_id]
    if ami_id in _visible_images(self):
        # ModifyImageAttribute: only the owner can change an image's attributes.
        raise EC2ClientError("AuthFailure", f"Not authorized for image:{ami_id}")
    raise InvalidAMIIdError(ami_id)


# ---------------------------------------------------------------- snapshots

def _snapshot_visible_to(snap: Snapshot, account: str) -> bool:
    return (
        snap.owner_id == account
        or account in snap.create_volume_permission_userids
        or "all" in snap.create_volume_permission_groups
    )


def _visible_snapshots(backend: EC2Backend) -> dict[str, Snapshot]:
    """DescribeSnapshots: "The snapshots available to you include public
    snapshots, private snapshots that you own, and private snapshots owned by
    other Amazon Web Services accounts for which you have explicit create volume
    permissions." """
    me = backend.account_id
    snaps = dict(backend.snapshots)
    for account, other in _region_backends(backend.region_name):
        if account == me:
            continue
        for snap in list(other.snapshots.values()):
            if snap.owner_id == account and snap.id not in snaps and _snapshot_visible_to(snap, me):
                snaps[snap.id] = snap
    return snaps


# Set while RunInstances builds an instance's volumes from its image: launching
# an AMI shared by launch permission needs no create volume permission on the
# AMI's snapshots (EC2 user guide, "Share an AMI": the snapshots are shared by
# the AMI's launch permission for launching).
_launching = [False]


def get_snapshot(self, snapshot_id: str) -> Snapshot:
    # CreateVolume, SnapshotId: "The snapshot from which to create the volume."
    # A snapshot that is neither owned nor shared with the caller answers
    # InvalidSnapshot.NotFound ("The specified snapshot does not exist").
    snap = _visible_snapshots(self).get(snapshot_id)
    if snap is None and _launching[0]:
        snap = next((b.snapshots[snapshot_id] for _, b in _region_backends(self.region_name)
                     if snapshot_id in b.snapshots), None)
    if snap is None:
        raise InvalidSnapshotIdError()
    return snap


def _own_snapshot(self, snapshot_id: str) -> Snapshot:
    snap = self.snapshots.get(snapshot_id)
    if snap is not None and snap.owner_id == self.account_id:
        return snap
    if snapshot_id in _visible_snapshots(self):
        # ModifySnapshotAttribute: only the owner changes create volume permissions.
        raise EC2ClientError("AuthFailure", f"Not authorized for snapshot:{snapshot_id}")
    raise InvalidSnapshotIdError()


def response_describe_snapshots(self) -> ActionResult:
    # DescribeSnapshots: "If you specify one or more snapshot IDs, only snapshots
    # that have the specified IDs are returned. If you specify an invalid snapshot
    # ID, an error is returned. If you specify a snapshot ID for which you do not
    # have access, it is not included in the returned results."
    # OwnerIds: "Scopes the results to snapshots with the specified owners. You can
    # specify a combination of Amazon Web Services account IDs, self, and amazon."
    # RestorableByUserIds: "The IDs of the Amazon Web Services accounts that can
    # create volumes from the snapshot."
    backend = self.ec2_backend
    me = backend.account_id
    filters = self._filters_from_querystring()
    ids = self._get_param("SnapshotIds", []) or []
    owners = self._get_param("OwnerIds", []) or []
    restorable = self._get_param("RestorableByUserIds", []) or []
    visible = _visible_snapshots(backend)
    if ids:
        existing = {sid for _, b in _region_backends(backend.region_name) for sid in b.snapshots}
        if any(i not in existing for i in ids):
            raise InvalidSnapshotIdError()
        result = [visible[i] for i in ids if i in visible]
    else:
        result = list(visible.values())
    if owners:
        wanted = {me if o == "self" else o for o in owners}
        result = [s for s in result if s.owner_id in wanted]
    if restorable:
        users = {me if u == "self" else u for u in restorable}
        result = [
            s
            for s in result
            if any(
                u == s.owner_id or u in s.create_volume_permission_userids for u in users
            )
            or ("all" in users and "all" in s.create_volume_permission_groups)
        ]
    if filters:
        result = generic_filter(filters, result)
    return ActionResult({"Snapshots": result})


# ---------------------------------------------------------------- apply

def apply(store: BlockStore) -> None:
    global _applied
    if _applied:
        return
    _applied = True

    EC2Backend.describe_images = describe_images

    orig_modify_image = EC2Backend.modify_image_attribute

    def modify_image_attribute(self, ami_id, launch_permissions_to_add, launch_permissions_to_remove):
        _own_image(self, ami_id)
        return orig_modify_image(self, ami_id, launch_permissions_to_add, launch_permissions_to_remove)

    EC2Backend.modify_image_attribute = modify_image_attribute

    orig_describe_image_attribute = EC2Backend.describe_image_attribute

    def describe_image_attribute(self, ami_id, attribute_name):
        _own_image(self, ami_id)
        return orig_describe_image_attribute(self, ami_id, attribute_name)

    EC2Backend.describe_image_attribute = describe_image_attribute

    EC2Backend.get_snapshot = get_snapshot
    ElasticBlockStore.describe_snapshots = response_describe_snapshots

    for name in ("add_create_volume_permission", "remove_create_volume_permission"):
        orig = getattr(EC2Backend, name)

        def owner_only(self, snapshot_id, *args, _orig=orig, **kwargs):
            _own_snapshot(self, snapshot_id)
            return _orig(self, snapshot_id, *args, **kwargs)

        setattr(EC2Backend, name, owner_only)

    # ---- data plane: volumes ----
    orig_create_volume = EC2Backend.create_volume

    def create_volume(self, size, zone_name, snapshot_id=None, *args, **kwargs):
        # CreateVolume: "You can create a new empty volume or restore a volume from
        # an EBS snapshot." The volume's file holds the snapshot's blocks.
        volume = orig_create_volume(self, size, zone_name, snapshot_id, *args, **kwargs)
        store.create_volume(volume.id, int(volume.size), snapshot_id)
        return volume

    EC2Backend.create_volume = create_volume

    orig_delete_volume = EC2Backend.delete_volume

    def delete_volume(self, volume_id):
        volume = orig_delete_volume(self, volume_id)
        store.delete_volume(volume_id)
        return volume

    EC2Backend.delete_volume = delete_volume

    # ---- data plane: snapshots ----
    orig_create_snapshot = EC2Backend.create_snapshot

    def create_snapshot(self, volume_id, description, owner_id=None, from_ami=None):
        # CreateSnapshot: "Creates a snapshot of an EBS volume and stores it in
        # Amazon S3. You can use snapshots for backups, to make copies of EBS
        # volumes, and to save data before shutting down an instance." The
        # snapshot holds the volume's data (its non-zero blocks).
        snap = orig_create_snapshot(self, volume_id, description, owner_id, from_ami)
        store.snapshot_from_volume(snap.id, volume_id, int(snap.volume.size))
        return snap

    EC2Backend.create_snapshot = create_snapshot

    orig_delete_snapshot = EC2Backend.delete_snapshot

    def delete_snapshot(self, snapshot_id):
        snap = orig_delete_snapshot(self, snapshot_id)
        store.delete_snapshot(snapshot_id)
        return snap

    EC2Backend.delete_snapshot = delete_snapshot

    def copy_snapshot(self, source_snapshot_id, source_region, description, kms_key_id):
        # CopySnapshot: "Copies a point-in-time snapshot of an EBS volume and stores
        # it in Amazon S3. You can copy a snapshot within the same Region or from
        # one Region to another." A snapshot shared with the caller can be copied.
        source = get_snapshot(ec2_backends[self.account_id][source_region], source_snapshot_id)
        snapshot_id = random_snapshot_id()
        snap = Snapshot(
            self,
            snapshot_id,
            volume=source.volume,
            description=description,
            encrypted=source.encrypted,
            kms_key_id=kms_key_id,
        )
        self.snapshots[snapshot_id] = snap
        store.copy_snapshot(source_snapshot_id, snapshot_id)
        return snap

    EC2Backend.copy_snapshot = copy_snapshot

    # ---- attachments ----
    orig_attach = EC2Backend.attach_volume

    def attach_volume(self, volume_id, instance_id, device_path, delete_on_termination=False):
        volume = self.get_volume(volume_id)
        instance = self.get_instance(instance_id)
        # AttachVolume: "If a volume has an Amazon Web Services Marketplace product
        # code ... " is not modelled; what is: a volume can be attached to one
        # instance (VolumeInUse otherwise) and the device name must be free on the
        # instance (InvalidParameterValue: "Attachment point ... is already in use").
        if volume.attachment is not None:
            raise EC2ClientError("VolumeInUse", f"{volume_id} is already attached to an instance")
        if device_path in instance.block_device_mapping:
            raise EC2ClientError(
                "InvalidParameterValue",
                f"Invalid value '{device_path}' for unixDevice. Attachment point {device_path} is already in use",
            )
        attachment = orig_attach(self, volume_id, instance_id, device_path, delete_on_termination)
        store.attach(volume_id, instance_id)
        return attachment

    EC2Backend.attach_volume = attach_volume

    orig_detach = EC2Backend.detach_volume

    def detach_volume(self, volume_id, instance_id, device_path):
        # DetachVolume, InstanceId: "The ID of the instance. If you are detaching a
        # Multi-Attach enabled volume, you must specify an instance ID." Otherwise
        # it is optional: the instance is the one the volume is attached to.
        volume = self.get_volume(volume_id)
        if not instance_id and volume.attachment is not None:
            instance_id = volume.attachment.instance.id
        attachment = orig_detach(self, volume_id, instance_id, device_path)
        store.detach(volume_id, instance_id)
        return attachment

    EC2Backend.detach_volume = detach_volume

    # ---- images with their block device mappings ----
    orig_bdm = Ami.block_device_mappings

    def block_device_mappings(self):
        mapped = getattr(self, "standin_bdm", None)
        return mapped if mapped is not None else orig_bdm.fget(self)

    Ami.block_device_mappings = property(block_device_mappings)

    def _drop_auto_snapshot(backend, ami):
        # moto gives every new image an unrelated 15 GiB snapshot; an image made
        # by CreateImage or RegisterImage with a mapping has its own instead.
        auto = getattr(ami, "ebs_snapshot", None)
        if auto is not None and auto.id in backend.snapshots:
            backend.snapshots.pop(auto.id)
            store.delete_snapshot(auto.id)

    orig_create_image = EC2Backend.create_image

    def create_image(self, instance_id, name, description, tag_specifications):
        # CreateImage: "Creates an Amazon EBS-backed AMI from an Amazon EBS-backed
        # instance that is either running or stopped." and "If you customized your
        # instance with instance store volumes or Amazon EBS volumes in addition to
        # the root device volume, the new AMI contains block device mapping
        # information for those volumes." Each attached volume is snapshotted.
        ami = orig_create_image(self, instance_id, name, description, tag_specifications)
        instance = self.get_instance(instance_id)
        _drop_auto_snapshot(self, ami)
        mappings = []
        first = None
        for device, bdt in sorted(instance.block_device_mapping.items()):
            volume = self.get_volume(bdt.volume_id)
            snap = create_snapshot(self, volume.id, f"Created by CreateImage({instance_id}) for {ami.id}",
                                   from_ami=ami.id)
            first = first or snap
            mappings.append({
                "DeviceName": device,
                "Ebs": {
                    "SnapshotId": snap.id,
                    "VolumeSize": int(volume.size),
                    "DeleteOnTermination": bool(bdt.delete_on_termination),
                    "VolumeType": volume.volume_type or "gp2",
                    "Encrypted": bool(volume.encrypted),
                },
            })
        if first is not None:
            ami.ebs_snapshot = first
        ami.standin_bdm = mappings
        ami.root_device_type = "ebs"
        ami.root_device_name = instance.root_device_name
        return ami

    EC2Backend.create_image = create_image

    def register_image(self) -> ActionResult:
        # RegisterImage: "To register an AMI from a snapshot of a root device
        # volume, specify the snapshot in a block device mapping" with
        # RootDeviceName, EnaSupport, BootMode, Architecture, VirtualizationType as
        # given (moto 5.2.1 drops them all and invents a 15 GiB snapshot).
        backend = self.ec2_backend
        name = self._get_param("Name")
        description = self._get_param("Description", "")
        mappings = self._get_param("BlockDeviceMappings", []) or []
        self.error_on_dryrun()
        checked = []
        for m in mappings:
            ebs = dict(m.get("Ebs") or {})
            if ebs.get("SnapshotId"):
                snap = get_snapshot(backend, ebs["SnapshotId"])
                ebs.setdefault("VolumeSize", int(snap.volume.size))
                ebs.setdefault("Encrypted", bool(snap.encrypted))
            if ebs:
                ebs.setdefault("DeleteOnTermination", True)
                ebs.setdefault("VolumeType", "gp2")
            entry = {k: v for k, v in m.items() if k != "Ebs"}
            if ebs:
                entry["Ebs"] = ebs
            checked.append(entry)
        image = backend.register_image(name, description)
        if checked:
            _drop_auto_snapshot(backend, image)
            image.standin_bdm = checked
            image.root_device_type = "ebs"
        root = self._get_param("RootDeviceName")
        if root:
            image.root_device_name = root
        for param, attr in (("Architecture", "architecture"), ("VirtualizationType", "virtualization_type"),
                            ("BootMode", "boot_mode"), ("ImdsSupport", "imds_support"),
                            ("TpmSupport", "tpm_support"), ("SriovNetSupport", "sriov")):
            value = self._get_param(param)
            if value is not None:
                setattr(image, attr, value)
        ena = self._get_param("EnaSupport")
        if ena is not None:
            image.ena_support = ena in (True, "true", "True")
        if image.virtualization_type is None:
            image.virtualization_type = "hvm"
        # RegisterImage, TagSpecifications: "The tags to apply to the AMI. To tag the
        # AMI, the value for ResourceType must be image. If you specify another value
        # for ResourceType, the request fails." (moto 5.2.1 ignores them.)
        tags = self._parse_tag_specification(expected_type="image").get("image", {})
        if tags:
            backend.create_tags([image.id], tags)
        return ActionResult({"ImageId": image.id})

    AmisResponse.register_image = register_image

    orig_run_instances = EC2Backend.run_instances

    def run_instances(self, image_id, count, user_data, security_group_names, **kwargs):
        # RunInstances, ImageId: "The ID of the AMI." An AMI the caller can neither
        # see nor launch (not owned, not public, not shared by launch permission)
        # answers InvalidAMIID.NotFound. moto checks this only with
        # MOTO_ENABLE_AMI_VALIDATION; here always.
        if image_id:
            self.describe_images(ami_ids=[image_id])
        return orig_run_instances(self, image_id, count, user_data, security_group_names, **kwargs)

    EC2Backend.run_instances = run_instances

    orig_setup_defaults = Instance.setup_defaults

    def setup_defaults(self) -> None:
        # RunInstances: the root volume of an instance launched from an EBS-backed
        # AMI is created from the snapshot of the AMI's root device mapping.
        amis = self.ec2_backend.describe_images(filters={"image-id": self.image_id})
        ami = amis[0] if amis else None
        mapped = getattr(ami, "standin_bdm", None) if ami else None
        if not mapped:
            return orig_setup_defaults(self)
        for m in mapped:
            ebs = m.get("Ebs")
            if not ebs:
                continue
            _launching[0] = True
            try:
                volume = self.ec2_backend.create_volume(
                    size=ebs.get("VolumeSize") or 8,
                    zone_name=self._placement.zone,
                    snapshot_id=ebs.get("SnapshotId"),
                )
            finally:
                _launching[0] = False
            self.ec2_backend.attach_volume(volume.id, self.id, m["DeviceName"],
                                           bool(ebs.get("DeleteOnTermination", True)))
        self.root_device_name = ami.root_device_name

    Instance.setup_defaults = setup_defaults


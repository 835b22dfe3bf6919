"""Tests of the AWS stand-in (tests/aws/standin) through boto3, on 127.0.0.1 only.

Run: python3 -m unittest discover -s tests/aws
Each test talks to a stand-in started on a free loopback port with a temporary
--data directory; a service account (moto's default 123456789012) and a member
account reached by STS AssumeRole (arn:aws:iam::111111111111:role/x).
"""

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
STANDIN = os.path.join(HERE, "standin")
SERVICE = "123456789012"
MEMBER = "111111111111"
BLOCK = 524288
REGION = "us-east-1"

# Dummy credentials, one region, and nothing that could reach past loopback
# (no profile, no instance metadata lookups).
for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
    os.environ.pop(var, None)
os.environ.update({
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
})

import boto3  # noqa: E402
from botocore.config import Config  # noqa: E402
from botocore.exceptions import ClientError  # noqa: E402

NO_RETRY = Config(retries={"mode": "standard", "total_max_attempts": 1})


class Standin:
    """A stand-in process on a free 127.0.0.1 port."""

    def __init__(self, stock: bool = False):
        self.data = tempfile.TemporaryDirectory(prefix="standin-")
        cmd = [sys.executable, STANDIN, "--port", "0", "--data", self.data.name]
        if stock:
            cmd.append("--stock")
        started = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        self.start_seconds = time.monotonic() - started
        if "listening on 127.0.0.1:" not in line:
            self.proc.kill()
            raise RuntimeError(f"stand-in did not start: {line!r}")
        self.port = int(line.split("127.0.0.1:")[1].split()[0])
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.proc.stdout.close()
        self.data.cleanup()

    def control(self, method: str, path: str, doc=None):
        body = json.dumps(doc).encode() if doc is not None else None
        req = urllib.request.Request(self.url + path, data=body, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def client(self, service: str, creds: dict | None = None, config: Config | None = None):
        kwargs = {}
        if creds:
            kwargs = {
                "aws_access_key_id": creds["AccessKeyId"],
                "aws_secret_access_key": creds["SecretAccessKey"],
                "aws_session_token": creds["SessionToken"],
            }
        return boto3.client(service, region_name=REGION, endpoint_url=self.url, config=config, **kwargs)

    def member_creds(self) -> dict:
        sts = self.client("sts")
        return sts.assume_role(RoleArn=f"arn:aws:iam::{MEMBER}:role/x", RoleSessionName="test-session",
                               ExternalId="livemount-ext")["Credentials"]


def sha(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def block_of(seed: int) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (BLOCK // 32)


def upload(ebs, blocks: dict[int, bytes], size_gib: int = 1, parent: str | None = None,
           aggregate: bool = True, count: int | None = None) -> str:
    """Upload blocks (index -> 512 KiB) as coldsnap does; the snapshot id."""
    args = {"VolumeSize": size_gib, "Description": "test"}
    if parent:
        args["ParentSnapshotId"] = parent
    sid = ebs.start_snapshot(**args)["SnapshotId"]
    for idx, data in sorted(blocks.items()):
        ebs.put_snapshot_block(SnapshotId=sid, BlockIndex=idx, BlockData=data, DataLength=len(data),
                               Checksum=sha(data), ChecksumAlgorithm="SHA256")
    extra = {}
    if aggregate:
        agg = hashlib.sha256(b"".join(hashlib.sha256(blocks[i]).digest() for i in sorted(blocks)))
        extra = {"Checksum": base64.b64encode(agg.digest()).decode(), "ChecksumAlgorithm": "SHA256",
                 "ChecksumAggregationMethod": "LINEAR"}
    ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=len(blocks) if count is None else count, **extra)
    return sid


def all_blocks(ebs, sid: str, page: int = 10000) -> list[dict]:
    out, token = [], None
    while True:
        args = {"SnapshotId": sid, "MaxResults": page}
        if token:
            args["NextToken"] = token
        resp = ebs.list_snapshot_blocks(**args)
        out += resp["Blocks"]
        token = resp.get("NextToken")
        if not token:
            return out


def error_code(ctx) -> str:
    return ctx.exception.response["Error"]["Code"]


def s3_client(standin, creds: dict | None = None):
    return standin.client("s3", creds, Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}))


def completed_root(s3, bucket: str, key: str) -> str:
    """Uploads `key` in one part; the root element of CompleteMultipartUpload's answer, as sent."""
    roots = []

    def keep(http_response, **_):
        after_declaration = http_response.content.decode().split("?>", 1)[-1]
        roots.append(re.search(r"<(\w+)[\s>]", after_declaration).group(1))

    s3.meta.events.register("after-call.s3.CompleteMultipartUpload", keep)
    up = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    etag = s3.upload_part(Bucket=bucket, Key=key, UploadId=up, PartNumber=1, Body=b"one part")["ETag"]
    s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=up,
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]})
    return roots[0]


def grant(bucket: str, prefix: str, account: str) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [{
        "Sid": "Member", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
        "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{bucket}/{prefix}/*"}]})


class Extended(unittest.TestCase):
    """The stand-in with its extensions."""

    @classmethod
    def setUpClass(cls):
        cls.s = Standin()
        print(f"\nstand-in started in {cls.s.start_seconds:.2f}s", file=sys.stderr)

    @classmethod
    def tearDownClass(cls):
        cls.s.stop()

    def setUp(self):
        self.s.control("POST", "/standin/reset", {})
        self.ec2 = self.s.client("ec2")
        self.ebs = self.s.client("ebs")
        creds = self.s.member_creds()
        self.m_ec2 = self.s.client("ec2", creds)
        self.m_ebs = self.s.client("ebs", creds)
        self.m_sts = self.s.client("sts", creds)

    def data_path(self, *parts) -> str:
        return os.path.join(self.s.data.name, *parts)

    def service_image(self, name: str = "ipxe") -> tuple[str, str]:
        sid = upload(self.ebs, {0: block_of(1)})
        ami = self.ec2.register_image(
            Name=name, RootDeviceName="/dev/xvda", EnaSupport=True, BootMode="uefi",
            Architecture="x86_64", VirtualizationType="hvm",
            BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": sid}}],
            TagSpecifications=[{"ResourceType": "image", "Tags": [{"Key": "purpose", "Value": name}]}],
        )["ImageId"]
        return ami, sid

    # ---- accounts ----
    def test_member_account_through_assume_role(self):
        self.assertEqual(self.s.client("sts").get_caller_identity()["Account"], SERVICE)
        self.assertEqual(self.m_sts.get_caller_identity()["Account"], MEMBER)
        vol = self.m_ec2.create_volume(Size=1, AvailabilityZone="us-east-1a")["VolumeId"]
        mine = [v["VolumeId"] for v in self.ec2.describe_volumes()["Volumes"]]
        self.assertNotIn(vol, mine)

    # ---- 1. sharing ----
    def test_image_visible_to_member_only_once_shared(self):
        ami, _ = self.service_image()
        with self.assertRaises(ClientError) as ctx:
            self.m_ec2.describe_images(ImageIds=[ami])
        self.assertEqual(error_code(ctx), "InvalidAMIID.NotFound")
        with self.assertRaises(ClientError) as ctx:
            self.m_ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1)
        self.assertEqual(error_code(ctx), "InvalidAMIID.NotFound")

        self.ec2.modify_image_attribute(ImageId=ami, LaunchPermission={"Add": [{"UserId": MEMBER}]})
        got = self.m_ec2.describe_images(ImageIds=[ami])["Images"]
        self.assertEqual([i["ImageId"] for i in got], [ami])
        self.assertEqual(got[0]["OwnerId"], SERVICE)
        shared = self.m_ec2.describe_images(ExecutableUsers=["self"])["Images"]
        self.assertEqual([i["ImageId"] for i in shared], [ami])
        by_owner = self.m_ec2.describe_images(Owners=[SERVICE])["Images"]
        self.assertEqual([i["ImageId"] for i in by_owner], [ami])
        self.assertEqual(self.m_ec2.describe_images(Owners=["self"])["Images"], [])
        # The owner's own image is not "explicitly shared" with itself.
        self.assertEqual(self.ec2.describe_images(ExecutableUsers=["self"])["Images"], [])
        self.assertEqual([i["ImageId"] for i in self.ec2.describe_images(ExecutableUsers=[MEMBER])["Images"]],
                         [ami])

        inst = self.m_ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1)["Instances"][0]
        self.assertEqual(inst["ImageId"], ami)
        # Only the owner changes launch permissions.
        with self.assertRaises(ClientError) as ctx:
            self.m_ec2.modify_image_attribute(ImageId=ami, LaunchPermission={"Add": [{"UserId": "222222222222"}]})
        self.assertEqual(error_code(ctx), "AuthFailure")

        other, _ = self.service_image("unshared")
        with self.assertRaises(ClientError) as ctx:
            self.m_ec2.run_instances(ImageId=other, MinCount=1, MaxCount=1)
        self.assertEqual(error_code(ctx), "InvalidAMIID.NotFound")

    def test_snapshot_usable_by_member_only_once_shared(self):
        data = {0: block_of(5), 3: block_of(6)}
        sid = upload(self.ebs, data)
        with self.assertRaises(ClientError) as ctx:
            self.m_ec2.create_volume(SnapshotId=sid, AvailabilityZone="us-east-1a")
        self.assertEqual(error_code(ctx), "InvalidSnapshot.NotFound")
        self.assertEqual(self.m_ec2.describe_snapshots(RestorableByUserIds=["self"])["Snapshots"], [])
        # DescribeSnapshots leaves out an id the caller has no access to.
        self.assertEqual(self.m_ec2.describe_snapshots(SnapshotIds=[sid])["Snapshots"], [])

        self.ec2.modify_snapshot_attribute(SnapshotId=sid, Attribute="createVolumePermission",
                                           OperationType="add", UserIds=[MEMBER])
        restorable = self.m_ec2.describe_snapshots(RestorableByUserIds=["self"])["Snapshots"]
        self.assertEqual([x["SnapshotId"] for x in restorable], [sid])
        self.assertEqual(
            [x["SnapshotId"] for x in self.m_ec2.describe_snapshots(OwnerIds=[SERVICE])["Snapshots"]], [sid])
        self.assertEqual(self.m_ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"], [])
        vol = self.m_ec2.create_volume(SnapshotId=sid, AvailabilityZone="us-east-1a")
        self.assertEqual(vol["Size"], 1)
        with open(self.data_path("volumes", vol["VolumeId"] + ".img"), "rb") as f:
            self.assertEqual(f.read(BLOCK), data[0])
            f.seek(3 * BLOCK)
            self.assertEqual(f.read(BLOCK), data[3])
        # The member also reads the shared snapshot through EBS direct.
        self.assertEqual([b["BlockIndex"] for b in all_blocks(self.m_ebs, sid)], [0, 3])

    def test_register_image_keeps_its_mapping(self):
        snaps_before = {x["SnapshotId"] for x in self.ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]}
        ami, sid = self.service_image()
        img = self.ec2.describe_images(ImageIds=[ami])["Images"][0]
        self.assertEqual(img["RootDeviceName"], "/dev/xvda")
        self.assertEqual(img["RootDeviceType"], "ebs")
        self.assertTrue(img["EnaSupport"])
        self.assertEqual(img["BootMode"], "uefi")
        self.assertEqual(img["BlockDeviceMappings"][0]["DeviceName"], "/dev/xvda")
        self.assertEqual(img["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"], sid)
        self.assertEqual(img["Tags"], [{"Key": "purpose", "Value": "ipxe"}], "tagged on create")
        tagged = self.ec2.describe_images(Owners=["self"], Filters=[{"Name": "tag:purpose", "Values": ["ipxe"]}])
        self.assertEqual([i["ImageId"] for i in tagged["Images"]], [ami])
        snaps_after = {x["SnapshotId"] for x in self.ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]}
        self.assertEqual(snaps_after - snaps_before, {sid})
        # An instance launched from it gets a root volume holding the snapshot's data.
        inst = self.ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1)["Instances"][0]
        vols = self.ec2.describe_volumes(Filters=[{"Name": "attachment.instance-id",
                                                   "Values": [inst["InstanceId"]]}])["Volumes"]
        self.assertEqual([v["SnapshotId"] for v in vols], [sid])
        with open(self.data_path("volumes", vols[0]["VolumeId"] + ".img"), "rb") as f:
            self.assertEqual(f.read(BLOCK), block_of(1))

    # ---- 2. ClientToken ----
    def test_client_token_run_instances(self):
        ami, _ = self.service_image()
        a = self.ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, ClientToken="tok-1")
        b = self.ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, ClientToken="tok-1")
        self.assertEqual(a["Instances"][0]["InstanceId"], b["Instances"][0]["InstanceId"])
        ids = [i["InstanceId"] for r in self.ec2.describe_instances()["Reservations"] for i in r["Instances"]]
        self.assertEqual(ids, [a["Instances"][0]["InstanceId"]])
        with self.assertRaises(ClientError) as ctx:
            self.ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, InstanceType="m5.large",
                                   ClientToken="tok-1")
        self.assertEqual(error_code(ctx), "IdempotentParameterMismatch")
        # The token is per account: the member's own RunInstances with it is new.
        self.ec2.modify_image_attribute(ImageId=ami, LaunchPermission={"Add": [{"UserId": MEMBER}]})
        c = self.m_ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, ClientToken="tok-1")
        self.assertNotEqual(c["Instances"][0]["InstanceId"], a["Instances"][0]["InstanceId"])

    def test_client_token_create_volume_and_start_snapshot(self):
        a = self.ec2.create_volume(Size=2, AvailabilityZone="us-east-1a", ClientToken="v1")
        b = self.ec2.create_volume(Size=2, AvailabilityZone="us-east-1a", ClientToken="v1")
        self.assertEqual(a["VolumeId"], b["VolumeId"])
        self.assertEqual(len(self.ec2.describe_volumes()["Volumes"]), 1)
        with self.assertRaises(ClientError) as ctx:
            self.ec2.create_volume(Size=3, AvailabilityZone="us-east-1a", ClientToken="v1")
        self.assertEqual(error_code(ctx), "IdempotentParameterMismatch")

        s1 = self.ebs.start_snapshot(VolumeSize=1, ClientToken="s1")["SnapshotId"]
        s2 = self.ebs.start_snapshot(VolumeSize=1, ClientToken="s1")["SnapshotId"]
        self.assertEqual(s1, s2)
        with self.assertRaises(ClientError) as ctx:
            self.ebs.start_snapshot(VolumeSize=2, ClientToken="s1")
        self.assertEqual(error_code(ctx), "ConflictException")

    # ---- 3. EBS direct ----
    def test_ebs_direct_upload_and_read_back(self):
        # A 4 MiB disk: 8 blocks, blocks 2 and 5 all zero and so not uploaded.
        disk = b"".join(bytes(BLOCK) if i in (2, 5) else block_of(100 + i) for i in range(8))
        blocks = {i: disk[i * BLOCK:(i + 1) * BLOCK] for i in range(8) if i not in (2, 5)}
        start = self.ebs.start_snapshot(VolumeSize=1, Description="disk")
        self.assertEqual(start["BlockSize"], BLOCK)
        self.assertEqual(start["Status"], "pending")
        sid = start["SnapshotId"]
        pending = self.ec2.describe_snapshots(SnapshotIds=[sid])["Snapshots"][0]
        self.assertEqual(pending["State"], "pending")
        for idx, data in blocks.items():
            resp = self.ebs.put_snapshot_block(SnapshotId=sid, BlockIndex=idx, BlockData=data, DataLength=BLOCK,
                                               Checksum=sha(data), ChecksumAlgorithm="SHA256")
            self.assertEqual(resp["Checksum"], sha(data))
        agg = hashlib.sha256(b"".join(hashlib.sha256(blocks[i]).digest() for i in sorted(blocks))).digest()
        done = self.ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=len(blocks),
                                          Checksum=base64.b64encode(agg).decode(), ChecksumAlgorithm="SHA256",
                                          ChecksumAggregationMethod="LINEAR")
        self.assertEqual(done["Status"], "completed")
        snap = self.ec2.describe_snapshots(OwnerIds=["self"], SnapshotIds=[sid])["Snapshots"][0]
        self.assertEqual((snap["State"], snap["VolumeSize"], snap["OwnerId"]), ("completed", 1, SERVICE))

        listed = all_blocks(self.ebs, sid)
        self.assertEqual([b["BlockIndex"] for b in listed], sorted(blocks))
        back = bytearray(len(disk))
        for b in listed:
            got = self.ebs.get_snapshot_block(SnapshotId=sid, BlockIndex=b["BlockIndex"], BlockToken=b["BlockToken"])
            data = got["BlockData"].read()
            self.assertEqual(got["Checksum"], sha(data))
            self.assertEqual(got["ChecksumAlgorithm"], "SHA256")
            self.assertEqual(got["DataLength"], BLOCK)
            back[b["BlockIndex"] * BLOCK:(b["BlockIndex"] + 1) * BLOCK] = data
        self.assertEqual(bytes(back), disk)

    def test_ebs_direct_rejects_bad_blocks(self):
        sid = self.ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
        data = block_of(7)
        with self.assertRaises(ClientError) as ctx:
            self.ebs.put_snapshot_block(SnapshotId=sid, BlockIndex=0, BlockData=data, DataLength=BLOCK,
                                        Checksum=sha(b"other"), ChecksumAlgorithm="SHA256")
        self.assertEqual(error_code(ctx), "ValidationException")
        short = data[:4096]
        with self.assertRaises(ClientError) as ctx:
            self.ebs.put_snapshot_block(SnapshotId=sid, BlockIndex=0, BlockData=short, DataLength=len(short),
                                        Checksum=sha(short), ChecksumAlgorithm="SHA256")
        self.assertEqual(error_code(ctx), "ValidationException")
        with self.assertRaises(ClientError) as ctx:
            self.ebs.put_snapshot_block(SnapshotId=sid, BlockIndex=2048, BlockData=data, DataLength=BLOCK,
                                        Checksum=sha(data), ChecksumAlgorithm="SHA256")
        self.assertEqual(error_code(ctx), "ValidationException")
        self.ebs.put_snapshot_block(SnapshotId=sid, BlockIndex=1, BlockData=data, DataLength=BLOCK,
                                    Checksum=sha(data), ChecksumAlgorithm="SHA256")
        with self.assertRaises(ClientError) as ctx:
            self.ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=2)
        self.assertEqual(error_code(ctx), "ValidationException")
        with self.assertRaises(ClientError) as ctx:
            self.ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=1, Checksum=sha(b"x"),
                                       ChecksumAlgorithm="SHA256", ChecksumAggregationMethod="LINEAR")
        self.assertEqual(error_code(ctx), "ValidationException")
        self.ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=1)
        # A block never written has no token: a ValidationException, not a 500.
        token = all_blocks(self.ebs, sid)[0]["BlockToken"]
        with self.assertRaises(ClientError) as ctx:
            self.ebs.get_snapshot_block(SnapshotId=sid, BlockIndex=0, BlockToken=token)
        self.assertEqual(error_code(ctx), "ValidationException")
        self.assertEqual(ctx.exception.response["ResponseMetadata"]["HTTPStatusCode"], 400)
        with self.assertRaises(ClientError) as ctx:
            self.ebs.list_snapshot_blocks(SnapshotId="snap-0000000000000000f")
        self.assertEqual(error_code(ctx), "ResourceNotFoundException")
        # Writing to a completed snapshot is refused.
        with self.assertRaises(ClientError) as ctx:
            self.ebs.put_snapshot_block(SnapshotId=sid, BlockIndex=0, BlockData=data, DataLength=BLOCK,
                                        Checksum=sha(data), ChecksumAlgorithm="SHA256")
        self.assertEqual(error_code(ctx), "ValidationException")

    def test_parent_snapshot_and_changed_blocks(self):
        parent_blocks = {i: block_of(200 + i) for i in range(6)}
        parent = upload(self.ebs, parent_blocks)
        child_writes = {1: block_of(301), 7: block_of(307)}
        child = upload(self.ebs, child_writes, parent=parent)
        self.assertEqual([b["BlockIndex"] for b in all_blocks(self.ebs, child)], [0, 1, 2, 3, 4, 5, 7])
        changed = self.ebs.list_changed_blocks(FirstSnapshotId=parent, SecondSnapshotId=child)["ChangedBlocks"]
        self.assertEqual([c["BlockIndex"] for c in changed], [1, 7])
        self.assertIn("FirstBlockToken", changed[0])
        self.assertIn("SecondBlockToken", changed[0])
        self.assertNotIn("FirstBlockToken", changed[1])
        # Unchanged blocks read the parent's data through the child.
        c0 = [b for b in all_blocks(self.ebs, child) if b["BlockIndex"] == 0][0]
        got = self.ebs.get_snapshot_block(SnapshotId=child, BlockIndex=0, BlockToken=c0["BlockToken"])
        self.assertEqual(got["BlockData"].read(), parent_blocks[0])
        g1 = self.ebs.get_snapshot_block(SnapshotId=child, BlockIndex=1, BlockToken=changed[0]["SecondBlockToken"])
        self.assertEqual(g1["BlockData"].read(), child_writes[1])
        g1p = self.ebs.get_snapshot_block(SnapshotId=parent, BlockIndex=1, BlockToken=changed[0]["FirstBlockToken"])
        self.assertEqual(g1p["BlockData"].read(), parent_blocks[1])
        unrelated = upload(self.ebs, {0: block_of(9)})
        with self.assertRaises(ClientError) as ctx:
            self.ebs.list_changed_blocks(FirstSnapshotId=unrelated, SecondSnapshotId=child)
        self.assertEqual(error_code(ctx), "ValidationException")

    def test_block_tokens_lapse_at_their_expiry_time(self):
        # "Block tokens returned by EBS direct APIs are temporary. They change on the expiry timestamp
        # specified for them" (EBS user guide); the lifetime is the stand-in's setting (7 days by default).
        sid = upload(self.ebs, {0: block_of(1), 3: block_of(4)})
        listing = self.ebs.list_snapshot_blocks(SnapshotId=sid)
        self.assertGreater(listing["ExpiryTime"].timestamp(), time.time() + 6 * 24 * 3600)
        self.s.control("POST", "/standin/settings", {"block_token_lifetime": 1})
        try:
            listing = self.ebs.list_snapshot_blocks(SnapshotId=sid)
            self.assertLess(listing["ExpiryTime"].timestamp(), time.time() + 2)
            token = listing["Blocks"][1]["BlockToken"]
            self.assertRegex(token, r"^[A-Za-z0-9+/=]+$")
            got = self.ebs.get_snapshot_block(SnapshotId=sid, BlockIndex=3, BlockToken=token)
            self.assertEqual(got["BlockData"].read(), block_of(4))
            time.sleep(1.2)
            with self.assertRaises(ClientError) as ctx:
                self.ebs.get_snapshot_block(SnapshotId=sid, BlockIndex=3, BlockToken=token)
            self.assertEqual(error_code(ctx), "ValidationException")
            self.assertEqual(ctx.exception.response["Reason"], "INVALID_BLOCK_TOKEN")
            # A new listing gives a token that works again.
            fresh = self.ebs.list_snapshot_blocks(SnapshotId=sid)["Blocks"][1]["BlockToken"]
            got = self.ebs.get_snapshot_block(SnapshotId=sid, BlockIndex=3, BlockToken=fresh)
            self.assertEqual(got["BlockData"].read(), block_of(4))
        finally:
            self.s.control("POST", "/standin/settings", {"block_token_lifetime": 7 * 24 * 3600})

    def test_listing_pages(self):
        blocks = {i: block_of(i) for i in range(130)}
        sid = upload(self.ebs, blocks, aggregate=False)
        first = self.ebs.list_snapshot_blocks(SnapshotId=sid, MaxResults=100)
        self.assertEqual(len(first["Blocks"]), 100)
        self.assertIn("NextToken", first)
        listed = all_blocks(self.ebs, sid, page=100)
        self.assertEqual([b["BlockIndex"] for b in listed], list(range(130)))
        tail = self.ebs.list_snapshot_blocks(SnapshotId=sid, StartingBlockIndex=125)["Blocks"]
        self.assertEqual([b["BlockIndex"] for b in tail], [125, 126, 127, 128, 129])

    # ---- 4. data plane ----
    def test_volume_devices_and_snapshot_of_volume(self):
        ami, _ = self.service_image()
        src = upload(self.ebs, {0: block_of(40), 2: block_of(42)})
        inst = self.ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
        vol = self.ec2.create_volume(SnapshotId=src, AvailabilityZone="us-east-1a")["VolumeId"]
        name = "nvme-Amazon_Elastic_Block_Store_" + vol.replace("-", "")
        link = self.data_path("devices", name)
        self.assertFalse(os.path.lexists(link))
        self.ec2.attach_volume(VolumeId=vol, InstanceId=inst, Device="/dev/sdf")
        self.assertTrue(os.path.islink(link))
        self.assertTrue(os.path.islink(self.data_path("devices", inst, name)))
        with open(link, "r+b") as dev:
            self.assertEqual(dev.read(BLOCK), block_of(40))
            dev.seek(2 * BLOCK)
            self.assertEqual(dev.read(BLOCK), block_of(42))
            # The appliance writes through the device: block 5.
            dev.seek(5 * BLOCK)
            dev.write(block_of(45))
        other = self.ec2.create_volume(Size=1, AvailabilityZone="us-east-1a")["VolumeId"]
        with self.assertRaises(ClientError) as ctx:
            self.ec2.attach_volume(VolumeId=other, InstanceId=inst, Device="/dev/sdf")
        self.assertEqual(error_code(ctx), "InvalidParameterValue")
        with self.assertRaises(ClientError) as ctx:
            self.ec2.attach_volume(VolumeId=vol, InstanceId=inst, Device="/dev/sdg")
        self.assertEqual(error_code(ctx), "VolumeInUse")

        snap = self.ec2.create_snapshot(VolumeId=vol)["SnapshotId"]
        self.assertEqual([b["BlockIndex"] for b in all_blocks(self.ebs, snap)], [0, 2, 5])
        changed = self.ebs.list_changed_blocks(FirstSnapshotId=src, SecondSnapshotId=snap)["ChangedBlocks"]
        self.assertEqual([c["BlockIndex"] for c in changed], [5])

        self.ec2.detach_volume(VolumeId=vol)  # no InstanceId
        self.assertFalse(os.path.lexists(link))
        self.assertEqual(self.ec2.describe_volumes(VolumeIds=[vol])["Volumes"][0]["State"], "available")
        restored = self.ec2.create_volume(SnapshotId=snap, AvailabilityZone="us-east-1a")["VolumeId"]
        with open(self.data_path("volumes", restored + ".img"), "rb") as f:
            f.seek(5 * BLOCK)
            self.assertEqual(f.read(BLOCK), block_of(45))

    def test_create_image_snapshots_the_instance_volumes(self):
        ami, root_snap = self.service_image()
        inst = self.ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
        data_vol = self.ec2.create_volume(Size=2, AvailabilityZone="us-east-1a")["VolumeId"]
        self.ec2.attach_volume(VolumeId=data_vol, InstanceId=inst, Device="/dev/sdf")
        with open(self.data_path("volumes", data_vol + ".img"), "r+b") as f:
            f.seek(3 * BLOCK)
            f.write(block_of(77))
        image = self.ec2.create_image(InstanceId=inst, Name="backup")["ImageId"]
        bdm = self.ec2.describe_images(ImageIds=[image])["Images"][0]["BlockDeviceMappings"]
        by_dev = {m["DeviceName"]: m["Ebs"] for m in bdm}
        self.assertEqual(set(by_dev), {"/dev/xvda", "/dev/sdf"})
        self.assertEqual(by_dev["/dev/sdf"]["VolumeSize"], 2)
        self.assertEqual(by_dev["/dev/xvda"]["VolumeSize"], 1)
        sdf = by_dev["/dev/sdf"]["SnapshotId"]
        self.assertEqual([b["BlockIndex"] for b in all_blocks(self.ebs, sdf)], [3])
        root = by_dev["/dev/xvda"]["SnapshotId"]
        changed = self.ebs.list_changed_blocks(FirstSnapshotId=root_snap, SecondSnapshotId=root)["ChangedBlocks"]
        self.assertEqual(changed, [])
        sizes = {s["VolumeSize"] for s in self.ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]}
        self.assertNotIn(15, sizes)

    # ---- 5. counters, faults, reset ----
    def test_counters_per_action_and_account(self):
        self.ec2.describe_volumes()
        self.ec2.describe_volumes()
        self.m_ec2.describe_volumes()
        self.ebs.start_snapshot(VolumeSize=1)
        counts = self.s.control("GET", "/standin/counters")["actions"]
        self.assertEqual(counts["DescribeVolumes"], {SERVICE: 2, MEMBER: 1})
        self.assertEqual(counts["StartSnapshot"], {SERVICE: 1})
        self.assertEqual(counts["AssumeRole"], {SERVICE: 1})

    def test_fault_nth_call_per_account(self):
        self.s.control("POST", "/standin/faults", {"action": "DescribeVolumes", "account": MEMBER, "nth": 2,
                                                   "times": 1, "code": "InternalError", "status": 500})
        ec2 = self.s.client("ec2", self.s.member_creds(), NO_RETRY)
        ec2.describe_volumes()
        self.ec2.describe_volumes()  # another account: not counted by the fault
        with self.assertRaises(ClientError) as ctx:
            ec2.describe_volumes()
        self.assertEqual(error_code(ctx), "InternalError")
        self.assertEqual(ctx.exception.response["ResponseMetadata"]["HTTPStatusCode"], 500)
        ec2.describe_volumes()
        faults = self.s.control("GET", "/standin/faults")["faults"]
        self.assertEqual((faults[0]["seen"], faults[0]["fired"]), (3, 1))

    def test_fault_forever_and_throttle(self):
        self.s.control("POST", "/standin/faults", {"action": "CreateVolume", "times": None,
                                                   "code": "InsufficientVolumeCapacity", "status": 503})
        ec2 = self.s.client("ec2", config=NO_RETRY)
        for _ in range(3):
            with self.assertRaises(ClientError) as ctx:
                ec2.create_volume(Size=1, AvailabilityZone="us-east-1a")
            self.assertEqual(error_code(ctx), "InsufficientVolumeCapacity")
        self.s.control("DELETE", "/standin/faults")
        ec2.create_volume(Size=1, AvailabilityZone="us-east-1a")

        self.s.control("POST", "/standin/faults", {"action": "DescribeInstances", "throttle_seconds": 1})
        self.s.control("POST", "/standin/faults", {"action": "StartSnapshot", "throttle_seconds": 1})
        with self.assertRaises(ClientError) as ctx:
            ec2.describe_instances()
        self.assertEqual(error_code(ctx), "RequestLimitExceeded")
        with self.assertRaises(ClientError) as ctx:
            self.s.client("ebs", config=NO_RETRY).start_snapshot(VolumeSize=1)
        self.assertEqual(error_code(ctx), "ThrottlingException")
        time.sleep(1.1)
        ec2.describe_instances()
        # The SDK's own retries ride out a short throttle.
        self.s.control("POST", "/standin/faults", {"action": "DescribeVolumes", "nth": 1, "times": 2,
                                                   "code": "RequestLimitExceeded", "status": 503})
        self.ec2.describe_volumes()
        self.assertEqual(self.s.control("GET", "/standin/counters")["actions"]["DescribeVolumes"][SERVICE], 3)

    def test_fault_after_the_call_carries_it_out_and_loses_the_answer(self):
        self.s.control("POST", "/standin/faults", {"action": "CreateVolume", "after": True, "times": 1,
                                                   "code": "InternalError", "status": 500})
        ec2 = self.s.client("ec2", config=NO_RETRY)
        with self.assertRaises(ClientError) as ctx:
            ec2.create_volume(Size=1, AvailabilityZone="us-east-1a", ClientToken="lost-answer")
        self.assertEqual(error_code(ctx), "InternalError")
        made = [v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]]
        self.assertEqual(len(made), 1, "the volume was made although the caller saw an error")
        # The retry a client makes with the same token gets that volume, not a second one.
        again = ec2.create_volume(Size=1, AvailabilityZone="us-east-1a", ClientToken="lost-answer")
        self.assertEqual([again["VolumeId"]], made)
        self.assertGreater(self.s.control("GET", "/standin/counters")["seconds"]["CreateVolume"], 0)

    # ---- 6. S3: cross-account bucket policy, CompleteMultipartUpload ----
    def test_s3_cross_account_read_needs_a_bucket_policy_statement(self):
        s3, m_s3 = s3_client(self.s), s3_client(self.s, self.s.member_creds())
        s3.create_bucket(Bucket="files")
        s3.put_object(Bucket="files", Key="granted/a", Body=b"for the member")
        s3.put_object(Bucket="files", Key="other/b", Body=b"not for the member")
        with self.assertRaises(ClientError) as ctx:
            m_s3.get_object(Bucket="files", Key="granted/a")
        self.assertEqual(error_code(ctx), "AccessDenied")
        s3.put_bucket_policy(Bucket="files", Policy=grant("files", "granted", MEMBER))
        self.assertEqual(m_s3.get_object(Bucket="files", Key="granted/a")["Body"].read(), b"for the member")
        for denied in (lambda: m_s3.get_object(Bucket="files", Key="other/b"),
                       lambda: m_s3.put_object(Bucket="files", Key="granted/c", Body=b"x"),
                       lambda: m_s3.list_objects_v2(Bucket="files")):
            with self.assertRaises(ClientError) as ctx:
                denied()
            self.assertEqual(error_code(ctx), "AccessDenied")
        # A Deny wins over the Allow; the owner is never asked for a policy.
        policy = json.loads(grant("files", "granted", MEMBER))
        policy["Statement"].append(dict(policy["Statement"][0], Sid="No", Effect="Deny"))
        s3.put_bucket_policy(Bucket="files", Policy=json.dumps(policy))
        with self.assertRaises(ClientError) as ctx:
            m_s3.get_object(Bucket="files", Key="granted/a")
        self.assertEqual(error_code(ctx), "AccessDenied")
        self.assertEqual(s3.get_object(Bucket="files", Key="other/b")["Body"].read(), b"not for the member")
        self.assertEqual(self.s.control("GET", "/standin/counters")["actions"]["GetObject"], {SERVICE: 1, MEMBER: 4})

    def test_s3_complete_multipart_upload_answers_as_aws_documents(self):
        s3 = s3_client(self.s)
        s3.create_bucket(Bucket="parts")
        self.assertEqual(completed_root(s3, "parts", "k"), "CompleteMultipartUploadResult")
        self.assertEqual(s3.get_object(Bucket="parts", Key="k")["Body"].read(), b"one part")

    def test_fault_damages_an_answer_or_gives_a_reason(self):
        sid = upload(self.ebs, {0: block_of(4)})
        token = all_blocks(self.ebs, sid)[0]["BlockToken"]
        self.s.control("POST", "/standin/faults", {"action": "GetSnapshotBlock", "times": 1, "corrupt": True})
        got = self.ebs.get_snapshot_block(SnapshotId=sid, BlockIndex=0, BlockToken=token)
        data = got["BlockData"].read()
        self.assertEqual(len(data), BLOCK)
        self.assertNotEqual(data, block_of(4), "one byte flipped")
        self.assertEqual(got["Checksum"], sha(block_of(4)), "the checksum is the block's, as sent")
        self.s.control("POST", "/standin/faults", {"action": "GetSnapshotBlock", "times": 1, "status": 400,
                                                   "code": "ValidationException", "reason": "INVALID_BLOCK_TOKEN"})
        with self.assertRaises(ClientError) as ctx:
            self.ebs.get_snapshot_block(SnapshotId=sid, BlockIndex=0, BlockToken=token)
        self.assertEqual(ctx.exception.response["Reason"], "INVALID_BLOCK_TOKEN")
        again = self.ebs.get_snapshot_block(SnapshotId=sid, BlockIndex=0, BlockToken=token)["BlockData"].read()
        self.assertEqual(again, block_of(4))

    def test_reset_clears_everything(self):
        self.upload_marker = upload(self.ebs, {0: block_of(1)})
        self.ec2.create_volume(Size=1, AvailabilityZone="us-east-1a")
        self.s.control("POST", "/standin/faults", {"action": "DescribeVolumes", "code": "X", "times": None})
        self.s.control("POST", "/standin/reset", {})
        self.assertEqual(self.ec2.describe_volumes()["Volumes"], [])
        self.assertEqual(self.ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"], [])
        self.assertEqual(os.listdir(self.data_path("snapshots")), [])
        self.assertEqual(self.s.control("GET", "/standin/counters")["actions"],
                         {"DescribeVolumes": {SERVICE: 1}, "DescribeSnapshots": {SERVICE: 1}})


class Coldsnap(unittest.TestCase):
    """coldsnap (crates.io, installed by `scripts/install-deps.sh test`), an EBS direct client written by
    others, uploads a disk to the stand-in and downloads it back: the stand-in's EBS direct is what a
    real client expects, and both directions give identical bytes (also read back through boto3)."""

    @classmethod
    def setUpClass(cls):
        cls.s = Standin()

    @classmethod
    def tearDownClass(cls):
        cls.s.stop()

    def coldsnap(self, *args) -> str:
        env = dict(os.environ, AWS_ENDPOINT_URL=self.s.url, AWS_REGION=REGION, AWS_DEFAULT_REGION=REGION)
        out = subprocess.run(["coldsnap", *args], env=env, capture_output=True, text=True, timeout=300)
        self.assertEqual(out.returncode, 0, f"coldsnap {args}: {out.stderr}")
        return out.stdout.strip()

    def test_coldsnap_upload_and_download_round_trip(self):
        with tempfile.TemporaryDirectory() as tmp:
            # 5 MiB: block 1 all zero, the last block only half used.
            disk = block_of(7) + bytes(BLOCK) + b"".join(block_of(20 + i) for i in range(7)) + block_of(9)[:BLOCK // 2]
            disk += bytes((-len(disk)) % BLOCK)
            src, back = os.path.join(tmp, "disk.img"), os.path.join(tmp, "back.img")
            with open(src, "wb") as f:
                f.write(disk)
            sid = self.coldsnap("upload", "--wait", src).split()[-1]
            self.assertTrue(sid.startswith("snap-"), sid)
            snap = self.s.client("ec2").describe_snapshots(SnapshotIds=[sid])["Snapshots"][0]
            self.assertEqual((snap["State"], snap["VolumeSize"]), ("completed", 1))
            # coldsnap 0.12 uploads every block of the file, zero blocks too; every non-zero one must be there.
            listed = {b["BlockIndex"] for b in all_blocks(self.s.client("ebs"), sid)}
            self.assertTrue({0} | set(range(2, len(disk) // BLOCK)) <= listed, listed)
            self.coldsnap("download", sid, back)
            with open(back, "rb") as f:
                got = f.read()
            self.assertEqual(len(got), 1 << 30, "coldsnap writes the whole volume")
            self.assertEqual(got[:len(disk)], disk)
            self.assertEqual(got[len(disk):].count(0), (1 << 30) - len(disk))


class Stock(unittest.TestCase):
    """--stock: moto 5.2.1 as it is, to document what the extensions change."""

    @classmethod
    def setUpClass(cls):
        cls.s = Standin(stock=True)

    @classmethod
    def tearDownClass(cls):
        cls.s.stop()

    def test_shared_image_stays_invisible_in_stock_moto(self):
        ec2 = self.s.client("ec2")
        m_ec2 = self.s.client("ec2", self.s.member_creds())
        ami = ec2.register_image(Name="ipxe", RootDeviceName="/dev/xvda")["ImageId"]
        ec2.modify_image_attribute(ImageId=ami, LaunchPermission={"Add": [{"UserId": MEMBER}]})
        with self.assertRaises(ClientError) as ctx:
            m_ec2.describe_images(ImageIds=[ami])
        self.assertEqual(error_code(ctx), "InvalidAMIID.NotFound")
        # Stock moto also drops RegisterImage's root device name and makes a 15 GiB snapshot.
        img = ec2.describe_images(ImageIds=[ami])["Images"][0]
        self.assertEqual(img["RootDeviceName"], "/dev/sda1")
        self.assertEqual(img["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"], 15)

    def test_stock_ebs_accepts_a_wrong_checksum(self):
        ebs = self.s.client("ebs")
        sid = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
        data = block_of(3)
        ebs.put_snapshot_block(SnapshotId=sid, BlockIndex=0, BlockData=data, DataLength=BLOCK,
                               Checksum=sha(b"wrong"), ChecksumAlgorithm="SHA256")
        # ...and makes a new snapshot for a repeated ClientToken.
        self.assertNotEqual(ebs.start_snapshot(VolumeSize=1, ClientToken="t")["SnapshotId"],
                            ebs.start_snapshot(VolumeSize=1, ClientToken="t")["SnapshotId"])

    def test_stock_s3_lets_any_account_read_and_misnames_the_upload_result(self):
        s3, m_s3 = s3_client(self.s), s3_client(self.s, self.s.member_creds())
        s3.create_bucket(Bucket="files")
        s3.put_object(Bucket="files", Key="other/b", Body=b"not for the member")
        self.assertEqual(m_s3.get_object(Bucket="files", Key="other/b")["Body"].read(), b"not for the member")
        self.assertEqual(completed_root(s3, "files", "k"), "CompleteMultipartUploadResponse")


if __name__ == "__main__":
    unittest.main()

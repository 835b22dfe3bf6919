"""EBS direct APIs over the block data plane (replaces moto's `ebs` service).

Follows the "Amazon Elastic Block Store direct APIs" API reference: actions
StartSnapshot, PutSnapshotBlock, CompleteSnapshot, ListSnapshotBlocks,
ListChangedBlocks, GetSnapshotBlock. Each handler names the sentence of that
reference it implements. The snapshot also exists in EC2 (moto's model) so
DescribeSnapshots of the owner shows it, pending then completed.
"""

import base64
import hashlib
import json
import re
import time
from urllib.parse import parse_qs

from moto.ec2.models import ec2_backends
from moto.ec2.models.elastic_block_store import Snapshot
from moto.ec2.utils import random_snapshot_id

from .awserr import AwsError
from .blocks import BLOCK_SIZE, BlockStore

_ROUTES = [
    ("POST", re.compile(r"^/snapshots/?$"), "StartSnapshot"),
    ("POST", re.compile(r"^/snapshots/completion/(?P<sid>[^/]+)$"), "CompleteSnapshot"),
    ("PUT", re.compile(r"^/snapshots/(?P<sid>[^/]+)/blocks/(?P<idx>[^/]+)$"), "PutSnapshotBlock"),
    ("GET", re.compile(r"^/snapshots/(?P<sid>[^/]+)/blocks/(?P<idx>[^/]+)$"), "GetSnapshotBlock"),
    ("GET", re.compile(r"^/snapshots/(?P<sid>[^/]+)/blocks$"), "ListSnapshotBlocks"),
    ("GET", re.compile(r"^/snapshots/(?P<sid>[^/]+)/changedblocks$"), "ListChangedBlocks"),
]

# Block tokens: "Block tokens returned by EBS direct APIs are temporary. They change on the expiry
# timestamp specified for them" (EBS user guide, Concepts for EBS direct APIs); "Block tokens are valid
# for seven days" (EBS direct APIs FAQ). A listing answers ExpiryTime; a token used after it is refused.
# The lifetime is a setting of the stand-in (POST /standin/settings) so that tests can see tokens lapse.
TOKEN_LIFETIME = 7 * 24 * 3600


def action_of(method: str, path: str) -> tuple[str | None, dict]:
    for m, rx, name in _ROUTES:
        if m == method:
            match = rx.match(path)
            if match:
                return name, match.groupdict()
    return None, {}


class FakeSourceVolume:
    """What EC2 shows as the source volume of a snapshot made by EBS direct:
    AWS reports the placeholder vol-ffffffff for such snapshots."""

    id = "vol-ffffffff"
    encrypted = False

    def __init__(self, size: int):
        self.size = size


def _validation(message: str, reason: str = "INVALID_PARAMETER_VALUE") -> AwsError:
    return AwsError("ValidationException", message, 400, Reason=reason)


def _not_found(snapshot_id: str) -> AwsError:
    return AwsError(
        "ResourceNotFoundException",
        f"The snapshot '{snapshot_id}' does not exist.",
        404,
        Reason="SNAPSHOT_NOT_FOUND",
    )


class EbsDirect:
    def __init__(self, store: BlockStore):
        self.store = store
        # (account, region, ClientToken) -> (fingerprint, response document)
        self.start_tokens: dict[tuple[str, str, str], tuple[str, dict]] = {}
        self.token_lifetime: float = TOKEN_LIFETIME

    def reset(self) -> None:
        self.start_tokens.clear()
        self.token_lifetime = TOKEN_LIFETIME

    # ---- block tokens ----
    @staticmethod
    def _issue(stored: str, expiry: float) -> str:
        """The token a listing hands out for a block: its stored token and when it lapses, as one string of
        the Block type's pattern (^[A-Za-z0-9+/=]+$)."""
        return base64.b64encode(f"{stored}:{expiry:.3f}".encode()).decode()

    @staticmethod
    def _redeem(token: str | None) -> tuple[str | None, float]:
        """The stored token and expiry a handed-out token names; (None, 0) for one this stand-in never issued."""
        try:
            stored, _, expiry = base64.b64decode(token or "", validate=True).decode().rpartition(":")
            return (stored or None), float(expiry)
        except (ValueError, UnicodeDecodeError):
            return None, 0.0

    # ---- lookups ----
    def _find(self, snapshot_id: str, region: str) -> Snapshot | None:
        for account in list(ec2_backends.keys()):
            per = ec2_backends[account]
            if region in dict.keys(per):
                snap = dict.__getitem__(per, region).snapshots.get(snapshot_id)
                if snap is not None:
                    return snap
        return None

    def _owned(self, snapshot_id: str, account: str, region: str) -> Snapshot:
        snap = self._find(snapshot_id, region)
        if snap is None or snap.owner_id != account or snapshot_id not in self.store.snaps:
            raise _not_found(snapshot_id)
        return snap

    def _readable(self, snapshot_id: str, account: str, region: str) -> Snapshot:
        snap = self._find(snapshot_id, region)
        visible = snap is not None and (
            snap.owner_id == account
            or account in snap.create_volume_permission_userids
            or "all" in snap.create_volume_permission_groups
        )
        if not visible or snapshot_id not in self.store.snaps:
            raise _not_found(snapshot_id)
        if snap.status != "completed":
            # Read APIs work on completed snapshots only.
            raise _validation(f"The snapshot '{snapshot_id}' is not completed.", "INVALID_SNAPSHOT_ID")
        return snap

    # ---- dispatch ----
    def handle(self, action: str, groups: dict, method: str, query: str, headers: dict, body: bytes,
               account: str, region: str):
        q = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
        h = {k.lower(): v for k, v in headers.items()}
        with self.store.lock:
            if action == "StartSnapshot":
                return self.start_snapshot(json.loads(body or b"{}"), account, region)
            if action == "PutSnapshotBlock":
                return self.put_snapshot_block(groups["sid"], groups["idx"], h, body, account, region)
            if action == "CompleteSnapshot":
                return self.complete_snapshot(groups["sid"], h, account, region)
            if action == "ListSnapshotBlocks":
                return self.list_snapshot_blocks(groups["sid"], q, account, region)
            if action == "ListChangedBlocks":
                return self.list_changed_blocks(groups["sid"], q, account, region)
            if action == "GetSnapshotBlock":
                return self.get_snapshot_block(groups["sid"], groups["idx"], q, account, region)
        raise AwsError("ValidationException", f"unknown action {action}", 400)

    # ---- StartSnapshot ----
    def start_snapshot(self, doc: dict, account: str, region: str):
        # StartSnapshot, ClientToken: "Idempotency ensures that an API request
        # completes only once. With an idempotent request, if the original request
        # completes successfully, the subsequent retries with the same client token
        # return the result from the original successful request and they have no
        # additional effect." A reuse with other parameters is ConflictException:
        # "The request uses the same client token as a previous, but non-identical request."
        token = doc.get("ClientToken")
        fingerprint = json.dumps({k: v for k, v in doc.items() if k != "ClientToken"}, sort_keys=True)
        if token:
            seen = self.start_tokens.get((account, region, token))
            if seen:
                if seen[0] != fingerprint:
                    raise AwsError(
                        "ConflictException",
                        "The request uses the same client token as a previous, but non-identical request.",
                        409,
                    )
                return 201, [("Content-Type", "application/json")], json.dumps(seen[1]).encode()

        size = doc.get("VolumeSize")
        # StartSnapshot, VolumeSize: "The size of the volume, in GiB. The maximum size is 65536 GiB (64 TiB)."
        if not isinstance(size, int) or size < 1 or size > 65536:
            raise _validation(f"Invalid VolumeSize {size!r}.", "INVALID_VOLUME_SIZE")
        parent = doc.get("ParentSnapshotId")
        # StartSnapshot, ParentSnapshotId: "You can't specify ParentSnapshotId and
        # Encrypted in the same request. If you specify both parameters, the request
        # fails with ValidationException."
        if parent and doc.get("Encrypted") is not None:
            raise _validation("ParentSnapshotId and Encrypted can't be given together.", "INVALID_PARAMETER_VALUE")
        if parent:
            parent_snap = self._readable(parent, account, region)
            if size < parent_snap.volume_size:
                raise _validation("VolumeSize is smaller than the parent snapshot's.", "INVALID_VOLUME_SIZE")

        backend = ec2_backends[account][region]
        snapshot_id = random_snapshot_id()
        snap = Snapshot(
            backend,
            snapshot_id,
            FakeSourceVolume(size),
            doc.get("Description") or "",
            encrypted=bool(doc.get("Encrypted")),
            kms_key_id=doc.get("KmsKeyArn"),
            owner_id=account,
        )
        snap.status = "pending"
        if doc.get("Tags"):
            snap.add_tags({t["Key"]: t["Value"] for t in doc["Tags"]})
        # A new snapshot with a parent "starts with the parent's blocks" (the
        # parent's unchanged blocks need not be written again).
        self.store.new_snapshot(snapshot_id, size, parent)
        backend.snapshots[snapshot_id] = snap
        resp = {
            "SnapshotId": snapshot_id,
            "OwnerId": account,
            "Status": "pending",
            "StartTime": time.time(),
            "VolumeSize": size,
            "BlockSize": BLOCK_SIZE,
            "Description": doc.get("Description") or "",
            "Tags": doc.get("Tags") or [],
            "SseType": "none" if not doc.get("Encrypted") else "sse-kms",
        }
        if parent:
            resp["ParentSnapshotId"] = parent
        if doc.get("KmsKeyArn"):
            resp["KmsKeyArn"] = doc["KmsKeyArn"]
        if token:
            self.start_tokens[(account, region, token)] = (fingerprint, resp)
        return 201, [("Content-Type", "application/json")], json.dumps(resp).encode()

    # ---- PutSnapshotBlock ----
    def put_snapshot_block(self, sid: str, idx_s: str, h: dict, body: bytes, account: str, region: str):
        snap = self._owned(sid, account, region)
        if snap.status != "pending":
            raise _validation(f"The snapshot '{sid}' is not pending.", "INVALID_SNAPSHOT_ID")
        meta = self.store.snaps[sid]
        try:
            idx = int(idx_s)
        except ValueError:
            raise _validation(f"Invalid BlockIndex {idx_s!r}.", "INVALID_BLOCK")
        # PutSnapshotBlock, BlockIndex: "A block index is a logical index in units of
        # 512 KiB blocks." It must lie inside the snapshot's VolumeSize.
        if idx < 0 or idx >= meta.block_count:
            raise _validation(f"BlockIndex {idx} is outside the volume.", "INVALID_BLOCK")
        # PutSnapshotBlock, DataLength: "The size of the data to write to the block,
        # in bytes. Currently, the only supported size is 524288 bytes."
        try:
            length = int(h.get("x-amz-data-length", "-1"))
        except ValueError:
            length = -1
        if length != BLOCK_SIZE or len(body) != BLOCK_SIZE:
            raise _validation(
                f"DataLength must be {BLOCK_SIZE} bytes and match the data (header {length}, data {len(body)}).",
                "INVALID_PARAMETER_VALUE",
            )
        # PutSnapshotBlock, ChecksumAlgorithm: "The algorithm used to generate the
        # checksum. Currently, the only supported algorithm is SHA256."
        algorithm = h.get("x-amz-checksum-algorithm")
        if algorithm != "SHA256":
            raise _validation(f"Unsupported ChecksumAlgorithm {algorithm!r}.", "INVALID_PARAMETER_VALUE")
        # PutSnapshotBlock, Checksum: "A Base64-encoded SHA256 checksum of the data.
        # Only SHA256 checksums are supported." A checksum that does not match the
        # data fails the request.
        expected = base64.b64encode(hashlib.sha256(body).digest()).decode()
        if h.get("x-amz-checksum") != expected:
            raise _validation("The checksum does not match the block data.", "INVALID_PARAMETER_VALUE")
        self.store.put_block(sid, idx, body)
        return 201, [
            ("Content-Type", "application/json"),
            ("x-amz-Checksum", expected),
            ("x-amz-Checksum-Algorithm", "SHA256"),
        ], b""

    # ---- CompleteSnapshot ----
    def complete_snapshot(self, sid: str, h: dict, account: str, region: str):
        snap = self._owned(sid, account, region)
        meta = self.store.snaps[sid]
        if snap.status == "completed":
            return 202, [("Content-Type", "application/json")], json.dumps({"Status": "completed"}).encode()
        # CompleteSnapshot, ChangedBlocksCount: "The number of blocks that were
        # written to the snapshot." A different count fails the request here (AWS
        # may instead put the snapshot into the error state).
        try:
            count = int(h.get("x-amz-changedblockscount", ""))
        except ValueError:
            raise _validation("ChangedBlocksCount is required.", "INVALID_PARAMETER_VALUE")
        if count != len(meta.written):
            raise _validation(
                f"ChangedBlocksCount {count} does not match the {len(meta.written)} blocks written.",
                "INVALID_PARAMETER_VALUE",
            )
        checksum = h.get("x-amz-checksum")
        if checksum:
            # CompleteSnapshot, Checksum: "To generate the aggregated checksum using
            # the linear aggregation method, arrange the checksums for each written
            # block in ascending order of their block index, concatenate them to form
            # a single string, and then generate the checksum on the entire string
            # using the SHA256 algorithm." The checksums concatenated are the raw
            # 32-byte SHA-256 digests (what coldsnap sends and AWS accepts).
            if h.get("x-amz-checksum-algorithm") != "SHA256" or h.get(
                "x-amz-checksum-aggregation-method"
            ) != "LINEAR":
                raise _validation("Only SHA256 with the LINEAR aggregation method is supported.")
            agg = hashlib.sha256()
            for idx in sorted(meta.written):
                agg.update(meta.blocks[idx][1])
            if base64.b64encode(agg.digest()).decode() != checksum:
                raise _validation("The aggregated checksum does not match the written blocks.")
        snap.status = "completed"
        return 202, [("Content-Type", "application/json")], json.dumps({"Status": "completed"}).encode()

    # ---- paging ----
    @staticmethod
    def _page(entries: list[dict], q: dict):
        # ListSnapshotBlocks/ListChangedBlocks, MaxResults: "The maximum number of
        # blocks to be returned by the request." NextToken: "The token to request
        # the next page of results." StartingBlockIndex: "The block index from which
        # the list should start. The list in the response will start from this
        # block index or the next valid block index in the snapshot."
        try:
            max_results = int(q.get("maxResults", "10000"))
            start = int(q.get("startingBlockIndex", "0"))
        except ValueError:
            raise _validation("Invalid MaxResults or StartingBlockIndex.")
        token = q.get("pageToken")
        if token:
            try:
                start = max(start, int(base64.b64decode(token).decode().split(":")[1]))
            except (ValueError, IndexError, UnicodeDecodeError):
                raise _validation("Invalid NextToken.", "INVALID_PAGE_TOKEN")
        rest = [e for e in entries if e["BlockIndex"] >= start]
        page = rest[:max_results]
        next_token = None
        if len(rest) > max_results:
            next_token = base64.b64encode(f"next:{rest[max_results]['BlockIndex']}".encode()).decode()
        return page, next_token

    def _listing(self, key: str, page: list, next_token, meta) -> tuple:
        expiry = time.time() + self.token_lifetime
        for entry in page:
            for field in ("BlockToken", "FirstBlockToken", "SecondBlockToken"):
                if field in entry:
                    entry[field] = self._issue(entry[field], expiry)
        doc = {
            key: page,
            "ExpiryTime": expiry,
            "VolumeSize": meta.size_gib,
            "BlockSize": BLOCK_SIZE,
        }
        if next_token:
            doc["NextToken"] = next_token
        return 200, [("Content-Type", "application/json")], json.dumps(doc).encode()

    # ---- ListSnapshotBlocks ----
    def list_snapshot_blocks(self, sid: str, q: dict, account: str, region: str):
        # ListSnapshotBlocks: "Returns information about the blocks in an Amazon
        # Elastic Block Store snapshot." Blocks never written (all zero) are not listed.
        self._readable(sid, account, region)
        meta = self.store.snaps[sid]
        entries = [{"BlockIndex": i, "BlockToken": meta.blocks[i][0]} for i in sorted(meta.blocks)]
        page, nxt = self._page(entries, q)
        return self._listing("Blocks", page, nxt, meta)

    # ---- ListChangedBlocks ----
    def list_changed_blocks(self, second: str, q: dict, account: str, region: str):
        # ListChangedBlocks: "Returns information about the blocks that are different
        # between two Amazon Elastic Block Store snapshots of the same volume/snapshot
        # lineage." Without FirstSnapshotId every block of the second is listed.
        self._readable(second, account, region)
        meta2 = self.store.snaps[second]
        first = q.get("firstSnapshotId")
        if first:
            self._readable(first, account, region)
            meta1 = self.store.snaps[first]
            if meta1.lineage != meta2.lineage:
                raise _validation("The snapshots are not of the same lineage.", "UNRELATED_SNAPSHOTS")
            blocks1 = meta1.blocks
        else:
            blocks1 = {}
        entries = []
        for idx in sorted(set(blocks1) | set(meta2.blocks)):
            t1 = blocks1.get(idx, (None,))[0]
            t2 = meta2.blocks.get(idx, (None,))[0]
            if t1 == t2:
                continue
            entry = {"BlockIndex": idx}
            if t1:
                entry["FirstBlockToken"] = t1
            if t2:
                entry["SecondBlockToken"] = t2
            entries.append(entry)
        page, nxt = self._page(entries, q)
        return self._listing("ChangedBlocks", page, nxt, meta2)

    # ---- GetSnapshotBlock ----
    def get_snapshot_block(self, sid: str, idx_s: str, q: dict, account: str, region: str):
        # GetSnapshotBlock, BlockToken: "The block token of the block from which to
        # get data. You can obtain the BlockToken by running the ListChangedBlocks or
        # ListSnapshotBlocks operations." A block not listed has no valid token:
        # ValidationException with reason INVALID_BLOCK_TOKEN.
        self._readable(sid, account, region)
        meta = self.store.snaps[sid]
        try:
            idx = int(idx_s)
        except ValueError:
            raise _validation(f"Invalid BlockIndex {idx_s!r}.", "INVALID_BLOCK")
        stored, expiry = self._redeem(q.get("blockToken"))
        held = meta.blocks.get(idx)
        if held is None or stored != held[0]:
            raise _validation(f"The block token for block {idx} is not valid.", "INVALID_BLOCK_TOKEN")
        if time.time() > expiry:
            raise _validation(f"The block token for block {idx} has expired.", "INVALID_BLOCK_TOKEN")
        data = self.store.read_block(sid, idx)
        return 200, [
            ("Content-Type", "application/octet-stream"),
            ("x-amz-Data-Length", str(len(data))),
            ("x-amz-Checksum", base64.b64encode(held[1]).decode()),
            ("x-amz-Checksum-Algorithm", "SHA256"),
        ], data

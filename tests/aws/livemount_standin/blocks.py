"""Block data plane: the bytes of snapshots and volumes as sparse files.

Layout under the --data directory:
  snapshots/snap-x.img   one file per snapshot, VolumeSize GiB, sparse
  volumes/vol-x.img      one file per volume, Size GiB, sparse
  devices/nvme-Amazon_Elastic_Block_Store_volX -> ../volumes/vol-X.img
  devices/<instance-id>/nvme-Amazon_Elastic_Block_Store_volX (same, per instance)

Besides the bytes, each snapshot keeps the set of its written blocks with a
block token and the SHA-256 of each block: that is what EBS direct lists and
compares. The token of a block is inherited by a child snapshot as long as the
block is unchanged, so ListChangedBlocks compares tokens. Snapshot ids are
unique over all accounts, so the store is keyed by id alone.
"""

import base64
import hashlib
import os
import shutil
import threading
import uuid

BLOCK_SIZE = 524288  # EBS direct: "Currently, the only supported size is 524288 bytes."
GIB = 1 << 30
ZERO_BLOCK = bytes(BLOCK_SIZE)


def device_name(volume_id: str) -> str:
    """udev's by-id name of an EBS volume on a Nitro instance: the NVMe serial is
    the volume id without its dash ("vol0123..."), and udev builds
    nvme-<model>_<serial> with spaces turned into underscores."""
    return "nvme-Amazon_Elastic_Block_Store_" + volume_id.replace("-", "")


def new_token() -> str:
    return base64.b64encode(uuid.uuid4().bytes + uuid.uuid4().bytes).decode()


class SnapMeta:
    def __init__(self, snapshot_id: str, size_gib: int, lineage: str, parent: str | None):
        self.id = snapshot_id
        self.size_gib = size_gib
        self.lineage = lineage
        self.parent = parent
        # block index -> (token, raw sha256 digest)
        self.blocks: dict[int, tuple[str, bytes]] = {}
        # block indexes written through PutSnapshotBlock in this snapshot (not inherited)
        self.written: set[int] = set()

    @property
    def block_count(self) -> int:
        return self.size_gib * GIB // BLOCK_SIZE


class BlockStore:
    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.lock = threading.RLock()
        self.snaps: dict[str, SnapMeta] = {}
        # volume id -> lineage it descends from (the snapshot's), for snapshot lineage
        self.volume_lineage: dict[str, str] = {}
        self.volume_source: dict[str, str] = {}
        self.reset()

    # ---- layout ----
    def reset(self) -> None:
        with self.lock:
            self.snaps.clear()
            self.volume_lineage.clear()
            self.volume_source.clear()
            for sub in ("snapshots", "volumes", "devices"):
                path = os.path.join(self.root, sub)
                shutil.rmtree(path, ignore_errors=True)
                os.makedirs(path, exist_ok=True)

    def snapshot_path(self, snapshot_id: str) -> str:
        return os.path.join(self.root, "snapshots", snapshot_id + ".img")

    def volume_path(self, volume_id: str) -> str:
        return os.path.join(self.root, "volumes", volume_id + ".img")

    # ---- snapshots ----
    def new_snapshot(self, snapshot_id: str, size_gib: int, parent: str | None = None) -> SnapMeta:
        """A pending snapshot; with a parent it starts with the parent's blocks."""
        with self.lock:
            parent_meta = self.snaps.get(parent) if parent else None
            lineage = parent_meta.lineage if parent_meta else snapshot_id
            meta = SnapMeta(snapshot_id, size_gib, lineage, parent)
            with open(self.snapshot_path(snapshot_id), "wb") as f:
                f.truncate(size_gib * GIB)
            if parent_meta:
                with open(self.snapshot_path(snapshot_id), "r+b") as dst:
                    for idx in sorted(parent_meta.blocks):
                        if idx >= meta.block_count:
                            continue
                        dst.seek(idx * BLOCK_SIZE)
                        dst.write(self.read_block(parent, idx))
                        meta.blocks[idx] = parent_meta.blocks[idx]
            self.snaps[snapshot_id] = meta
            return meta

    def copy_snapshot(self, source_id: str, snapshot_id: str) -> None:
        """CopySnapshot: the copy holds the same blocks; it starts a lineage of its own."""
        with self.lock:
            source = self.snaps.get(source_id)
            if source is None:
                return
            meta = SnapMeta(snapshot_id, source.size_gib, snapshot_id, None)
            with open(self.snapshot_path(snapshot_id), "wb") as f:
                f.truncate(source.size_gib * GIB)
            with open(self.snapshot_path(snapshot_id), "r+b") as dst:
                for idx in sorted(source.blocks):
                    dst.seek(idx * BLOCK_SIZE)
                    dst.write(self.read_block(source_id, idx))
                    meta.blocks[idx] = (new_token(), source.blocks[idx][1])
            self.snaps[snapshot_id] = meta

    def put_block(self, snapshot_id: str, idx: int, data: bytes) -> None:
        with self.lock:
            meta = self.snaps[snapshot_id]
            self._ensure_file(snapshot_id)
            with open(self.snapshot_path(snapshot_id), "r+b") as f:
                f.seek(idx * BLOCK_SIZE)
                f.write(data)
            meta.blocks[idx] = (new_token(), hashlib.sha256(data).digest())
            meta.written.add(idx)

    def _ensure_file(self, snapshot_id: str) -> None:
        path = self.snapshot_path(snapshot_id)
        if not os.path.exists(path):
            with open(path, "wb") as f:
                f.truncate(self.snaps[snapshot_id].size_gib * GIB)

    def read_block(self, snapshot_id: str, idx: int) -> bytes:
        if not os.path.exists(self.snapshot_path(snapshot_id)):
            return bytes(BLOCK_SIZE)
        with open(self.snapshot_path(snapshot_id), "rb") as f:
            f.seek(idx * BLOCK_SIZE)
            data = f.read(BLOCK_SIZE)
        return data + bytes(BLOCK_SIZE - len(data))

    def delete_snapshot(self, snapshot_id: str) -> None:
        with self.lock:
            self.snaps.pop(snapshot_id, None)
            try:
                os.unlink(self.snapshot_path(snapshot_id))
            except FileNotFoundError:
                pass

    def snapshot_from_volume(self, snapshot_id: str, volume_id: str, size_gib: int) -> SnapMeta:
        """CreateSnapshot: copy the volume's non-zero blocks into the snapshot.
        A block equal to the one in the snapshot the volume was made from keeps
        that block's token, so ListChangedBlocks sees only the changed ones."""
        with self.lock:
            source = self.volume_source.get(volume_id)
            source_meta = self.snaps.get(source) if source else None
            lineage = self.volume_lineage.get(volume_id) or snapshot_id
            meta = SnapMeta(snapshot_id, size_gib, lineage, source)
            dst_path = self.snapshot_path(snapshot_id)
            src_path = self.volume_path(volume_id)
            dst = None
            if os.path.exists(src_path):
                with open(src_path, "rb") as src:
                    for idx in _data_blocks(src, meta.block_count):
                        src.seek(idx * BLOCK_SIZE)
                        data = src.read(BLOCK_SIZE)
                        if not data.strip(b"\0"):
                            continue
                        data = data + bytes(BLOCK_SIZE - len(data))
                        if dst is None:
                            # The file is made at the first data block: moto makes an
                            # empty snapshot for each of its stock images, in every account.
                            with open(dst_path, "wb") as f:
                                f.truncate(size_gib * GIB)
                            dst = open(dst_path, "r+b")
                        dst.seek(idx * BLOCK_SIZE)
                        dst.write(data)
                        digest = hashlib.sha256(data).digest()
                        old = source_meta.blocks.get(idx) if source_meta else None
                        token = old[0] if old and old[1] == digest else new_token()
                        meta.blocks[idx] = (token, digest)
            if dst is not None:
                dst.close()
            self.snaps[snapshot_id] = meta
            return meta

    # ---- volumes ----
    def create_volume(self, volume_id: str, size_gib: int, snapshot_id: str | None) -> None:
        """CreateVolume: a sparse file; from a snapshot it holds the snapshot's blocks."""
        with self.lock:
            path = self.volume_path(volume_id)
            with open(path, "wb") as f:
                f.truncate(size_gib * GIB)
            meta = self.snaps.get(snapshot_id) if snapshot_id else None
            if meta is None:
                return
            self.volume_lineage[volume_id] = meta.lineage
            self.volume_source[volume_id] = meta.id
            with open(path, "r+b") as dst:
                for idx in sorted(meta.blocks):
                    if idx * BLOCK_SIZE >= size_gib * GIB:
                        continue
                    dst.seek(idx * BLOCK_SIZE)
                    dst.write(self.read_block(meta.id, idx))

    def delete_volume(self, volume_id: str) -> None:
        with self.lock:
            self.volume_lineage.pop(volume_id, None)
            self.volume_source.pop(volume_id, None)
            try:
                os.unlink(self.volume_path(volume_id))
            except FileNotFoundError:
                pass

    # ---- devices ----
    def _device_links(self, volume_id: str, instance_id: str) -> list[str]:
        name = device_name(volume_id)
        return [
            os.path.join(self.root, "devices", name),
            os.path.join(self.root, "devices", instance_id, name),
        ]

    def attach(self, volume_id: str, instance_id: str) -> None:
        target = self.volume_path(volume_id)
        if not os.path.exists(target):
            return
        for link in self._device_links(volume_id, instance_id):
            os.makedirs(os.path.dirname(link), exist_ok=True)
            if os.path.lexists(link):
                os.unlink(link)
            os.symlink(target, link)

    def detach(self, volume_id: str, instance_id: str) -> None:
        for link in self._device_links(volume_id, instance_id):
            if os.path.lexists(link):
                os.unlink(link)


def _data_blocks(f, block_count: int):
    """Indexes of the blocks of f that hold data, found with SEEK_DATA/SEEK_HOLE
    so a sparse multi-GiB file is walked in the time of its data."""
    fd = f.fileno()
    end = block_count * BLOCK_SIZE
    pos = 0
    seen = set()
    while pos < end:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:
            break
        if start >= end:
            break
        stop = min(os.lseek(fd, start, os.SEEK_HOLE), end)
        for idx in range(start // BLOCK_SIZE, (stop + BLOCK_SIZE - 1) // BLOCK_SIZE):
            if idx not in seen:
                seen.add(idx)
                yield idx
        pos = stop

//! Reading an EBS snapshot through the EBS direct APIs, with no volume: which 512 KiB blocks it holds
//! (ListSnapshotBlocks: a block it does not list reads as zeros), what changed since an older snapshot of
//! its lineage (ListChangedBlocks), and the bytes of one block (GetSnapshotBlock), checked against the
//! SHA-256 EBS sends with them. Calls in flight are bounded by a budget shared by every reader of the
//! snapshot; throttling and transient faults are retried by the SDK's standard retry (exponential
//! backoff with jitter, see `sdk`). A block token that expired or that EBS no longer takes is renewed by
//! listing again from that block. An error is always an error: a block is never answered with zeros
//! unless EBS says it holds none.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_sdk_ebs::operation::get_snapshot_block::GetSnapshotBlockError;
use aws_sdk_ebs::types::{ChecksumAlgorithm, ValidationExceptionReason};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use super::ebs_upload::BLOCK;
use super::CloudError;

/// GetSnapshotBlock calls in flight per snapshot when no budget is given.
pub const DEFAULT_REQUEST_BUDGET: usize = 32;

/// Tokens are renewed this long before EBS says they expire (or a quarter of their lifetime, when that is
/// shorter), so that no call starts with one that lapses on the way. AWS's tokens last seven days: a live
/// mount that runs longer renews them.
const RENEW_BEFORE: Duration = Duration::from_secs(60);

/// What EC2 says of a snapshot, checked before any EBS direct call.
#[derive(Debug, Clone)]
pub struct SnapshotInfo {
    pub snapshot_id: String,
    /// The volume it was taken of; `vol-ffffffff` for one written through EBS direct.
    pub volume_id: String,
    pub size_gib: u64,
    pub owner: String,
}

/// Asks EC2 for `snapshot` in `account` (the account's name, for messages): it must exist, be visible
/// to the account and be completed.
pub async fn describe(ec2: &aws_sdk_ec2::Client, account: &str, snapshot: &str) -> Result<SnapshotInfo, CloudError> {
    let out = ec2.describe_snapshots().snapshot_ids(snapshot).send().await;
    let missing = || CloudError::Missing(format!("account {account} has no snapshot {snapshot} it can read"));
    let out = match out {
        Ok(out) => out,
        Err(e) => {
            let err = CloudError::aws(account, "DescribeSnapshots")(e);
            return Err(match err.code() {
                Some(c) if c.starts_with("InvalidSnapshot") => missing(),
                _ => err,
            });
        }
    };
    let snap = out.snapshots().first().ok_or_else(missing)?;
    let state = snap.state().map(|s| s.as_str().to_string()).unwrap_or_default();
    if state != "completed" {
        return Err(CloudError::Conflict(format!(
            "snapshot {snapshot} of account {account} is {state} ({}): it can be read once it is completed",
            snap.progress().unwrap_or("no progress reported")
        )));
    }
    Ok(SnapshotInfo {
        snapshot_id: snapshot.to_string(),
        volume_id: snap.volume_id().unwrap_or_default().to_string(),
        size_gib: snap.volume_size().unwrap_or(0).max(0) as u64,
        owner: snap.owner_id().unwrap_or_default().to_string(),
    })
}

/// One snapshot's blocks, read through EBS direct.
pub struct SnapshotBlocks {
    ebs: aws_sdk_ebs::Client,
    account: String,
    snapshot_id: String,
    size: u64,
    /// Listed blocks and their tokens; an index not here is all zeros.
    tokens: Mutex<Tokens>,
    budget: Arc<Semaphore>,
}

struct Tokens {
    by_block: BTreeMap<u32, String>,
    /// When the tokens expire, by the first block of the range a listing gave them to: the tokens of the
    /// blocks from one key up to the next expire at that key's time.
    expiry: BTreeMap<u32, SystemTime>,
    /// How long before their expiry tokens are renewed.
    margin: Duration,
}

impl Tokens {
    fn empty() -> Tokens {
        Tokens { by_block: BTreeMap::new(), expiry: BTreeMap::new(), margin: RENEW_BEFORE }
    }

    /// Whether block `i`'s token may still be used.
    fn fresh(&self, i: u32) -> bool {
        let expires = self.expiry.range(..=i).next_back().map(|(_, e)| *e);
        expires.is_none_or(|e| SystemTime::now() + self.margin < e)
    }

    /// Takes the tokens of a listing from block `from` on (the blocks it did not list are gone from that
    /// range; `from` itself when it listed nothing).
    fn renew(&mut self, from: u32, listed: BTreeMap<u32, String>, expires: Option<SystemTime>) {
        let end = listed.keys().next_back().unwrap_or(&from).saturating_add(1);
        let stale: Vec<u32> = self.by_block.range(from..end).map(|(b, _)| *b).collect();
        for b in stale {
            self.by_block.remove(&b);
        }
        self.by_block.extend(listed);
        let Some(expires) = expires else { return };
        // The tokens after the listed range keep the expiry they had.
        let after = self.expiry.range(..=end).next_back().map(|(_, e)| *e);
        let covered: Vec<u32> = self.expiry.range(from..=end).map(|(b, _)| *b).collect();
        for b in covered {
            self.expiry.remove(&b);
        }
        self.expiry.insert(from, expires);
        if let Some(after) = after {
            self.expiry.insert(end, after);
        }
        let lifetime = expires.duration_since(SystemTime::now()).unwrap_or_default();
        self.margin = RENEW_BEFORE.min(lifetime / 4);
    }
}

impl SnapshotBlocks {
    /// Lists the snapshot's blocks (every page). `budget`: GetSnapshotBlock calls in flight at once.
    pub async fn open(
        ebs: aws_sdk_ebs::Client,
        account: &str,
        snapshot_id: &str,
        budget: usize,
    ) -> Result<SnapshotBlocks, CloudError> {
        let mut blocks = SnapshotBlocks {
            ebs,
            account: account.to_string(),
            snapshot_id: snapshot_id.to_string(),
            size: 0,
            tokens: Mutex::new(Tokens::empty()),
            budget: Arc::new(Semaphore::new(budget.max(1))),
        };
        let (listed, size, expires) = blocks.list_from(0, None).await?;
        blocks.size = size;
        blocks.tokens.lock().expect("not poisoned").renew(0, listed, expires);
        Ok(blocks)
    }

    /// Lists blocks from `start` (up to `limit` of them; all without one): their tokens, the volume's
    /// size in bytes and when the tokens expire.
    async fn list_from(
        &self,
        start: u32,
        limit: Option<usize>,
    ) -> Result<(BTreeMap<u32, String>, u64, Option<SystemTime>), CloudError> {
        let mut listed = BTreeMap::new();
        let (mut expires, mut next) = (None, None::<String>);
        loop {
            let out = self
                .ebs
                .list_snapshot_blocks()
                .snapshot_id(&self.snapshot_id)
                .starting_block_index(start as i32)
                .set_next_token(next.take())
                .send()
                .await
                .map_err(CloudError::aws(&self.account, "ListSnapshotBlocks"))?;
            check_block_size(out.block_size(), &self.snapshot_id)?;
            let size = out.volume_size().unwrap_or(0).max(0) as u64 * (1 << 30);
            expires = expires.or(out.expiry_time().and_then(|t| SystemTime::try_from(*t).ok()));
            for b in out.blocks() {
                if let (Some(i), Some(t)) = (b.block_index(), b.block_token()) {
                    listed.insert(i as u32, t.to_string());
                }
            }
            next = out.next_token().map(str::to_string);
            if next.is_none() || limit.is_some_and(|n| listed.len() >= n) {
                // Every page of a listing gives the volume's size.
                return Ok((listed, size, expires));
            }
        }
    }

    pub fn snapshot_id(&self) -> &str {
        &self.snapshot_id
    }

    /// The volume's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether EBS listed the block (a block it does not list is all zeros).
    pub fn is_listed(&self, index: u64) -> bool {
        u32::try_from(index).is_ok_and(|i| self.tokens.lock().expect("not poisoned").by_block.contains_key(&i))
    }

    /// The first listed block at or after `from`, and how many listed blocks follow it without a gap.
    pub fn next_listed_run(&self, from: u64) -> Option<(u64, u64)> {
        let from = u32::try_from(from).ok()?;
        let tokens = self.tokens.lock().expect("not poisoned");
        let mut blocks = tokens.by_block.range(from..).map(|(i, _)| u64::from(*i));
        let first = blocks.next()?;
        let mut len = 1;
        for i in blocks {
            if i != first + len {
                break;
            }
            len += 1;
        }
        Some((first, len))
    }

    /// Number of listed blocks.
    pub fn listed_count(&self) -> usize {
        self.tokens.lock().expect("not poisoned").by_block.len()
    }

    /// The blocks that differ between `older` (a snapshot of the same lineage) and this one; `None` when
    /// EBS says the two are unrelated.
    pub async fn changed_since(&self, older: &str) -> Result<Option<BTreeSet<u64>>, CloudError> {
        let mut changed = BTreeSet::new();
        let mut next = None::<String>;
        loop {
            let out = self
                .ebs
                .list_changed_blocks()
                .first_snapshot_id(older)
                .second_snapshot_id(&self.snapshot_id)
                .set_next_token(next.take())
                .send()
                .await;
            let out = match out {
                Ok(out) => out,
                Err(e) => {
                    let unrelated = e.as_service_error().is_some_and(|s| match s {
                        aws_sdk_ebs::operation::list_changed_blocks::ListChangedBlocksError::ValidationException(v) => {
                            v.reason() == Some(&ValidationExceptionReason::UnrelatedSnapshots)
                        }
                        _ => false,
                    });
                    if unrelated {
                        return Ok(None);
                    }
                    return Err(CloudError::aws(&self.account, "ListChangedBlocks")(e));
                }
            };
            check_block_size(out.block_size(), &self.snapshot_id)?;
            changed.extend(out.changed_blocks().iter().filter_map(|b| b.block_index()).map(|i| i as u64));
            next = out.next_token().map(str::to_string);
            if next.is_none() {
                return Ok(Some(changed));
            }
        }
    }

    /// Block `index`, checked against its SHA-256; `None` when EBS lists no data for it (zeros).
    pub async fn read_block(&self, index: u64) -> Result<Option<Vec<u8>>, CloudError> {
        let Ok(i) = u32::try_from(index) else { return Ok(None) };
        let mut renewed = false;
        loop {
            let Some(token) = self.token(i, renewed).await? else { return Ok(None) };
            let _permit = self.budget.acquire().await.expect("the budget is never closed");
            let out = self
                .ebs
                .get_snapshot_block()
                .snapshot_id(&self.snapshot_id)
                .block_index(i as i32)
                .block_token(&token)
                .send()
                .await;
            let out = match out {
                Ok(out) => out,
                Err(e) if !renewed && token_refused(&e) => {
                    // Expired early, or renewed by EBS: list again from this block, once.
                    renewed = true;
                    continue;
                }
                Err(e) => return Err(CloudError::aws(&self.account, "GetSnapshotBlock")(e)),
            };
            let (checksum, algorithm) = (out.checksum().map(str::to_string), out.checksum_algorithm().cloned());
            // The answer's pieces hashed as they arrive (the hash overlaps the transfer instead of following
            // it) and copied into one buffer. (`AggregatedBytes::to_vec`, used before, goes byte by byte: it
            // cost more than the call itself, 40% of a cold read's CPU.)
            let (mut body, mut data, mut sha) = (out.block_data, Vec::with_capacity(BLOCK), Sha256::new());
            while let Some(piece) = body.try_next().await.map_err(|e| {
                CloudError::Conflict(format!(
                    "reading block {index} of snapshot {} in account {}: the answer broke off: {e}",
                    self.snapshot_id, self.account
                ))
            })? {
                sha.update(&piece);
                data.extend_from_slice(&piece);
            }
            self.check(index, data.len(), &sha.finalize(), checksum.as_deref(), algorithm.as_ref())?;
            return Ok(Some(data));
        }
    }

    /// The block's token: the listed one while it is fresh, else (or when `renew`) a new listing's.
    async fn token(&self, i: u32, renew: bool) -> Result<Option<String>, CloudError> {
        let (held, fresh) = {
            let t = self.tokens.lock().expect("not poisoned");
            (t.by_block.get(&i).cloned(), t.fresh(i))
        };
        let Some(held) = held else { return Ok(None) };
        if fresh && !renew {
            return Ok(Some(held));
        }
        // One page from this block on: the blocks read next get fresh tokens with it.
        let (listed, _, expires) = self.list_from(i, Some(1)).await?;
        let renewed = listed.get(&i).cloned();
        self.tokens.lock().expect("not poisoned").renew(i, listed, expires);
        Ok(renewed)
    }

    /// Checks a block of `len` bytes whose SHA-256 is `digest` against what EBS said of it.
    fn check(
        &self,
        index: u64,
        len: usize,
        digest: &[u8],
        checksum: Option<&str>,
        algorithm: Option<&ChecksumAlgorithm>,
    ) -> Result<(), CloudError> {
        let bad = |why: String| {
            CloudError::Conflict(format!(
                "block {index} of snapshot {} in account {} came back damaged: {why}; nothing was answered from it",
                self.snapshot_id, self.account
            ))
        };
        if len != BLOCK {
            return Err(bad(format!("{len} bytes instead of {BLOCK}")));
        }
        if algorithm != Some(&ChecksumAlgorithm::ChecksumAlgorithmSha256) {
            return Err(bad(format!("EBS sent no SHA-256 checksum (algorithm {algorithm:?})")));
        }
        let want = base64::engine::general_purpose::STANDARD.encode(digest);
        match checksum {
            Some(c) if c == want => Ok(()),
            other => Err(bad(format!("its SHA-256 is {want}, EBS said {}", other.unwrap_or("nothing")))),
        }
    }
}

/// Whether GetSnapshotBlock refused the token (INVALID_BLOCK_TOKEN): a new listing gives a new one.
fn token_refused<R>(e: &aws_smithy_runtime_api::client::result::SdkError<GetSnapshotBlockError, R>) -> bool {
    matches!(
        e.as_service_error(),
        Some(GetSnapshotBlockError::ValidationException(v))
            if v.reason() == Some(&ValidationExceptionReason::InvalidBlockToken)
    )
}

/// The EBS direct API reference fixes blocks at 524288 bytes; a listing that says otherwise is not one
/// this reader can follow.
fn check_block_size(said: Option<i32>, snapshot: &str) -> Result<(), CloudError> {
    match said {
        Some(s) if s as usize != BLOCK => Err(CloudError::Conflict(format!(
            "EBS lists snapshot {snapshot} in blocks of {s} bytes; the EBS direct APIs define 524288"
        ))),
        _ => Ok(()),
    }
}

/// A snapshot as a pseudo-disk's source: chunk N is block N (512 KiB), recalled with GetSnapshotBlock;
/// an unlisted block is zeros, known without a call.
pub struct SnapshotSource {
    pub blocks: Arc<SnapshotBlocks>,
    pub runtime: tokio::runtime::Handle,
}

impl blockdev::Source for SnapshotSource {
    fn size(&self) -> u64 {
        self.blocks.size()
    }

    fn chunk_size(&self) -> u32 {
        BLOCK as u32
    }

    fn read_chunk(&self, index: u64, buf: &mut Vec<u8>) -> Result<(), blockdev::SourceError> {
        // Called on a blocking thread: waiting here for the runtime's call is what it is for.
        *buf = self.runtime.block_on(block_bytes(self.blocks.clone(), index))?;
        Ok(())
    }

    fn read_chunk_async(
        &self,
        index: u64,
    ) -> Option<blockdev::source::BoxFuture<Result<Vec<u8>, blockdev::SourceError>>> {
        Some(Box::pin(block_bytes(self.blocks.clone(), index)))
    }

    fn is_zero_chunk(&self, index: u64) -> bool {
        !self.blocks.is_listed(index)
    }

    fn parallel_reads(&self) -> usize {
        // Each GetSnapshotBlock is a round trip of milliseconds: the requests in flight set the speed.
        // Half of them readahead: 16 blocks of 512 KiB, 8 MiB.
        32
    }

    fn describe(&self) -> String {
        format!("EBS snapshot {}", self.blocks.snapshot_id())
    }
}

/// Block `index` of a snapshot as a chunk of its disk: the block's bytes cut at the disk's end, zeros for a
/// block the snapshot does not list.
async fn block_bytes(blocks: Arc<SnapshotBlocks>, index: u64) -> Result<Vec<u8>, blockdev::SourceError> {
    let data = blocks
        .read_block(index)
        .await
        .map_err(|e| blockdev::SourceError::Other { chunk: index, source: Box::new(e) })?;
    let len = (blocks.size() - index * BLOCK as u64).min(BLOCK as u64) as usize;
    Ok(match data {
        Some(mut d) => {
            d.truncate(len);
            d
        }
        None => vec![0u8; len],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(blocks: &[u32], tag: &str) -> BTreeMap<u32, String> {
        blocks.iter().map(|b| (*b, format!("{tag}{b}"))).collect()
    }

    #[test]
    fn a_renewal_refreshes_only_the_range_it_listed() {
        let now = SystemTime::now();
        let mut t = Tokens::empty();
        t.renew(0, listing(&[0, 1, 5, 9], "a"), Some(now + Duration::from_secs(2)));
        assert!(t.fresh(0) && t.fresh(9));
        assert!(t.margin <= Duration::from_millis(500) && t.margin > Duration::from_millis(400), "a quarter");
        // Blocks 0 to 1 lapse; a listing from 5 covers 5 and 9 (block 7 is gone from the snapshot).
        t.expiry.insert(0, now - Duration::from_secs(1));
        t.renew(5, listing(&[5, 9], "b"), Some(now + Duration::from_secs(3600)));
        assert!(!t.fresh(0) && !t.fresh(1), "outside the renewed range: still lapsed");
        assert!(t.fresh(5) && t.fresh(9));
        assert_eq!(t.by_block.get(&5).map(String::as_str), Some("b5"));
        assert_eq!(t.by_block.get(&0).map(String::as_str), Some("a0"));
        assert_eq!(t.margin, Duration::from_secs(60), "at most a minute before");
        // A listing from 1 that covers only block 1 leaves what follows as it was.
        t.renew(1, listing(&[1], "c"), Some(now + Duration::from_secs(7200)));
        assert!(t.fresh(1) && !t.fresh(0));
        assert_eq!(t.expiry.range(..=5).next_back().map(|(_, e)| *e), Some(now + Duration::from_secs(3600)));
        // A block a listing no longer names is zeros from then on.
        t.renew(9, BTreeMap::new(), None);
        assert!(!t.by_block.contains_key(&9));
    }
}

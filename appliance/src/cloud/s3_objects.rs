//! What a file recovery makes in a bucket of the service account: objects, and the bucket-policy
//! statement that lets a member account read them. An object's bucket and key are chosen by the
//! appliance, so they are its journal id before the call that makes it: after a crash the journal names
//! every object that may exist, and removing one also aborts a multipart upload of its key that was cut
//! off. Files upload in one PutObject, or in parts several at a time when large; either way the object
//! appears whole or not at all, and never replaces an object that was there (`If-None-Match: *`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use serde_json::{json, Value};

use super::journal::Kind;
use super::{accounts::SERVICE, sdk, Cloud, CloudError};

/// Files larger than this upload in parts of this size (S3 takes 5 MiB to 5 GiB per part, at most
/// 10,000 parts: files up to about 78 GiB at this size; larger ones get larger parts).
pub const PART_SIZE: u64 = 8 << 20;
const MAX_PARTS: u64 = 10_000;
/// Parts uploading at once: enough to keep a link busy without holding much in memory.
const PARTS_IN_FLIGHT: usize = 4;

/// The journal id of an object: `BUCKET/KEY` (a bucket name holds no `/`).
pub fn object_id(bucket: &str, key: &str) -> String {
    format!("{bucket}/{key}")
}

/// The journal id of a bucket-policy statement: `BUCKET/SID`.
pub fn grant_id(bucket: &str, sid: &str) -> String {
    format!("{bucket}/{sid}")
}

fn split_id(id: &str) -> (&str, &str) {
    id.split_once('/').unwrap_or((id, ""))
}

/// Uploads `file` (`size` bytes) as `key` with `metadata`; `sent` is told each part's bytes as they go.
pub async fn upload(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    file: &Path,
    size: u64,
    metadata: HashMap<String, String>,
    sent: Arc<dyn Fn(u64) + Send + Sync>,
) -> Result<(), CloudError> {
    if size <= PART_SIZE {
        let body = ByteStream::from_path(file).await.map_err(|e| read_error(file, e))?;
        s3.put_object()
            .bucket(bucket)
            .key(key)
            .body(body)
            .content_length(size as i64)
            .set_metadata(Some(metadata))
            .if_none_match("*")
            .send()
            .await
            .map_err(CloudError::aws(SERVICE, "PutObject"))
            .map_err(|e| exists_already(e, bucket, key))?;
        sent(size);
        return Ok(());
    }
    let part_size = PART_SIZE.max(size.div_ceil(MAX_PARTS));
    let created = s3
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .set_metadata(Some(metadata))
        .send()
        .await
        .map_err(CloudError::aws(SERVICE, "CreateMultipartUpload"))?;
    let upload_id = created.upload_id().unwrap_or_default().to_string();
    let parts = size.div_ceil(part_size);
    let mut running = tokio::task::JoinSet::new();
    let mut done: Vec<CompletedPart> = Vec::new();
    let mut next = 0u64;
    let mut failed = None;
    // Parts go several at a time; the first failure starts no more, and those in flight are waited for,
    // so that the caller's undo (which aborts the upload) comes after every part.
    while (next < parts && failed.is_none()) || !running.is_empty() {
        while next < parts && failed.is_none() && running.len() < PARTS_IN_FLIGHT {
            let (s3, bucket, key, upload_id) = (s3.clone(), bucket.to_string(), key.to_string(), upload_id.clone());
            let (file, sent) = (file.to_path_buf(), sent.clone());
            let offset = next * part_size;
            let len = part_size.min(size - offset);
            let number = next as i32 + 1;
            running.spawn(async move {
                let body = ByteStream::read_from()
                    .path(&file)
                    .offset(offset)
                    .length(Length::Exact(len))
                    .build()
                    .await
                    .map_err(|e| read_error(&file, e))?;
                let out = s3
                    .upload_part()
                    .bucket(&bucket)
                    .key(&key)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .content_length(len as i64)
                    .body(body)
                    .send()
                    .await
                    .map_err(CloudError::aws(SERVICE, "UploadPart"))?;
                sent(len);
                Ok::<_, CloudError>(CompletedPart::builder().part_number(number).set_e_tag(out.e_tag).build())
            });
            next += 1;
        }
        if let Some(joined) = running.join_next().await {
            match joined.map_err(|e| CloudError::Conflict(format!("a part's upload stopped: {e}"))) {
                Ok(Ok(part)) => done.push(part),
                Ok(Err(e)) | Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    done.sort_by_key(|p| p.part_number());
    s3.complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(&upload_id)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(done)).build())
        .if_none_match("*")
        .send()
        .await
        .map_err(CloudError::aws(SERVICE, "CompleteMultipartUpload"))
        .map_err(|e| exists_already(e, bucket, key))?;
    Ok(())
}

fn read_error(file: &Path, e: impl std::fmt::Display) -> CloudError {
    CloudError::Conflict(format!("cannot read {} from the backup: {e}", file.display()))
}

fn exists_already(e: CloudError, bucket: &str, key: &str) -> CloudError {
    if e.code() == Some("PreconditionFailed") {
        return CloudError::Conflict(format!(
            "s3://{bucket}/{key} appeared while it was being written (another writer): nothing of it was replaced"
        ));
    }
    e
}

/// Whether `key` exists in `bucket`.
pub async fn exists(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Result<bool, CloudError> {
    match s3.head_object().bucket(bucket).key(key).send().await.map_err(CloudError::aws(SERVICE, "HeadObject")) {
        Ok(_) => Ok(true),
        Err(e) if matches!(e.code(), Some("NotFound") | Some("NoSuchKey")) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Removes the object `key`, and first any multipart upload of exactly that key (one cut off by a crash
/// holds parts that cost storage until aborted). Gone already is fine.
async fn remove_object(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Result<(), CloudError> {
    let uploads = s3
        .list_multipart_uploads()
        .bucket(bucket)
        .prefix(key)
        .send()
        .await
        .map_err(CloudError::aws(SERVICE, "ListMultipartUploads"));
    let uploads = match uploads {
        Ok(u) => u,
        Err(e) if e.code() == Some("NoSuchBucket") => return Ok(()),
        Err(e) => return Err(e),
    };
    for u in uploads.uploads().iter().filter(|u| u.key() == Some(key)) {
        let r = s3
            .abort_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(u.upload_id().unwrap_or_default())
            .send()
            .await
            .map_err(CloudError::aws(SERVICE, "AbortMultipartUpload"));
        ignore_gone(r.map(|_| ()))?;
    }
    let r = s3.delete_object().bucket(bucket).key(key).send().await.map_err(CloudError::aws(SERVICE, "DeleteObject"));
    ignore_gone(r.map(|_| ()))
}

fn ignore_gone(r: Result<(), CloudError>) -> Result<(), CloudError> {
    match r {
        Err(e) if matches!(e.code(), Some("NoSuchKey" | "NoSuchUpload" | "NoSuchBucket" | "NotFound")) => Ok(()),
        other => other,
    }
}

/// The Region `bucket` is in, as GetBucketLocation gives it (no constraint: us-east-1).
pub async fn bucket_region(s3: &aws_sdk_s3::Client, bucket: &str) -> Result<String, CloudError> {
    let out = s3.get_bucket_location().bucket(bucket).send().await.map_err(|e| {
        let e = CloudError::aws(SERVICE, "GetBucketLocation")(e);
        match e.code() {
            Some("NoSuchBucket") => {
                CloudError::Missing(format!("the service account has no bucket {bucket}: create it or name another"))
            }
            _ => e,
        }
    })?;
    Ok(match out.location_constraint().map(|c| c.as_str()) {
        None | Some("") => "us-east-1".to_string(),
        // The legacy name of eu-west-1 (S3 API reference, GetBucketLocation).
        Some("EU") => "eu-west-1".to_string(),
        Some(r) => r.to_string(),
    })
}

/// The id of the statement that lets account `reader` read `prefix` of a bucket: one per reader and
/// prefix, so that granting again adds nothing.
pub fn grant_sid(reader: &str, prefix: &str) -> String {
    let hash = blake3::hash(format!("{reader}\n{prefix}").as_bytes()).to_hex();
    format!("livemount{}", &hash[..16])
}

/// The AWS partition of a Region, for ARNs.
fn partition(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else {
        "aws"
    }
}

/// Bucket policies are read, changed and written whole: one change at a time from this appliance.
static POLICY_EDIT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Lets account `reader` get the objects under `prefix/` of `bucket` (in `region`): a statement added to
/// the bucket policy, the way S3 grants another account access (S3 user guide, "Bucket owner granting
/// cross-account bucket permissions"). `before` runs just before the policy is written (the journal's
/// intent). Gives whether the statement was added (false: it was there already, and is not ours to take
/// back).
pub async fn grant_read(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
    reader: &str,
    region: &str,
    before: impl FnOnce() -> Result<(), CloudError>,
) -> Result<bool, CloudError> {
    let _edit = POLICY_EDIT.lock().await;
    let sid = grant_sid(reader, prefix);
    let mut policy = bucket_policy(s3, bucket).await?.unwrap_or_else(|| json!({"Version": "2012-10-17"}));
    let mut statements = statements(&policy);
    if statements.iter().any(|s| s["Sid"] == sid.as_str()) {
        return Ok(false);
    }
    let p = partition(region);
    statements.push(json!({
        "Sid": sid,
        "Effect": "Allow",
        "Principal": {"AWS": format!("arn:{p}:iam::{reader}:root")},
        "Action": "s3:GetObject",
        "Resource": format!("arn:{p}:s3:::{bucket}/{prefix}/*"),
    }));
    policy["Statement"] = Value::Array(statements);
    before()?;
    put_policy(s3, bucket, &policy).await?;
    Ok(true)
}

async fn put_policy(s3: &aws_sdk_s3::Client, bucket: &str, policy: &Value) -> Result<(), CloudError> {
    s3.put_bucket_policy()
        .bucket(bucket)
        .policy(policy.to_string())
        .send()
        .await
        .map(|_| ())
        .map_err(CloudError::aws(SERVICE, "PutBucketPolicy"))
}

/// Takes the statement `sid` out of the bucket policy (absent already is fine); a policy left without
/// statements is deleted.
async fn revoke(s3: &aws_sdk_s3::Client, bucket: &str, sid: &str) -> Result<(), CloudError> {
    let _edit = POLICY_EDIT.lock().await;
    let Some(mut policy) = bucket_policy(s3, bucket).await? else { return Ok(()) };
    let before = statements(&policy);
    let kept: Vec<Value> = before.iter().filter(|s| s["Sid"] != sid).cloned().collect();
    if kept.len() == before.len() {
        return Ok(());
    }
    if kept.is_empty() {
        let r = s3.delete_bucket_policy().bucket(bucket).send().await;
        return ignore_gone(r.map(|_| ()).map_err(CloudError::aws(SERVICE, "DeleteBucketPolicy")));
    }
    policy["Statement"] = Value::Array(kept);
    put_policy(s3, bucket, &policy).await?;
    Ok(())
}

/// The bucket's policy, None when it has none (or the bucket is gone).
async fn bucket_policy(s3: &aws_sdk_s3::Client, bucket: &str) -> Result<Option<Value>, CloudError> {
    match s3.get_bucket_policy().bucket(bucket).send().await.map_err(CloudError::aws(SERVICE, "GetBucketPolicy")) {
        Ok(out) => {
            let text = out.policy().unwrap_or("{}");
            let policy = serde_json::from_str(text)
                .map_err(|e| CloudError::Conflict(format!("the policy of bucket {bucket} is not JSON: {e}")))?;
            Ok(Some(policy))
        }
        Err(e) if matches!(e.code(), Some("NoSuchBucketPolicy" | "NoSuchBucket")) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A policy's statements as a list (IAM takes one statement or a list).
fn statements(policy: &Value) -> Vec<Value> {
    match &policy["Statement"] {
        Value::Array(a) => a.clone(),
        Value::Null => Vec::new(),
        one => vec![one.clone()],
    }
}

async fn client(cloud: &Cloud, region: &str) -> Result<aws_sdk_s3::Client, CloudError> {
    Ok(sdk::s3(&cloud.accounts.config(SERVICE, region, "files").await?))
}

/// Removes an object or a grant of the journal (kind and id as journaled).
pub async fn remove(cloud: &Cloud, region: &str, kind: Kind, id: &str) -> Result<(), CloudError> {
    let s3 = client(cloud, region).await?;
    let (bucket, rest) = split_id(id);
    match kind {
        Kind::Object => remove_object(&s3, bucket, rest).await,
        Kind::Grant => revoke(&s3, bucket, rest).await,
        other => Err(CloudError::Conflict(format!("a {other} is not an S3 resource"))),
    }
}

/// What S3 shows of an object or a grant of the journal: "stored", "uploading" (a multipart upload of its
/// key, no object yet), "granted", or "gone".
pub async fn state_of(cloud: &Cloud, region: &str, kind: Kind, id: &str) -> Result<String, CloudError> {
    let s3 = client(cloud, region).await?;
    let (bucket, rest) = split_id(id);
    let state = match kind {
        Kind::Object => match exists(&s3, bucket, rest).await {
            Ok(true) => "stored",
            Ok(false) => {
                let out = s3.list_multipart_uploads().bucket(bucket).prefix(rest).send().await;
                match out.map_err(CloudError::aws(SERVICE, "ListMultipartUploads")) {
                    Ok(o) if o.uploads().iter().any(|u| u.key() == Some(rest)) => "uploading",
                    Ok(_) => "gone",
                    Err(e) if e.code() == Some("NoSuchBucket") => "gone",
                    Err(e) => return Err(e),
                }
            }
            Err(e) if e.code() == Some("NoSuchBucket") => "gone",
            Err(e) => return Err(e),
        },
        Kind::Grant => {
            let policy = bucket_policy(&s3, bucket).await?;
            let has = policy.is_some_and(|p| statements(&p).iter().any(|s| s["Sid"] == rest));
            if has {
                "granted"
            } else {
                "gone"
            }
        }
        other => return Err(CloudError::Conflict(format!("a {other} is not an S3 resource"))),
    };
    Ok(state.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_is_one_statement_per_reader_and_prefix() {
        assert_eq!(grant_sid("111111111111", "a/b"), grant_sid("111111111111", "a/b"));
        assert_ne!(grant_sid("111111111111", "a/b"), grant_sid("222222222222", "a/b"));
        assert_ne!(grant_sid("111111111111", "a/b"), grant_sid("111111111111", "a/c"));
        assert!(grant_sid("1", "p").bytes().all(|b| b.is_ascii_alphanumeric()), "IAM takes only A-Z a-z 0-9 in a Sid");
    }

    #[test]
    fn ids_split_at_the_bucket() {
        assert_eq!(split_id(&object_id("b", "recovered/x/etc/a b")), ("b", "recovered/x/etc/a b"));
        assert_eq!(split_id(&grant_id("b", "livemount0")), ("b", "livemount0"));
    }

    #[test]
    fn one_statement_or_a_list() {
        assert_eq!(statements(&json!({"Statement": {"Sid": "a"}})).len(), 1);
        assert_eq!(statements(&json!({"Statement": [{"Sid": "a"}, {"Sid": "b"}]})).len(), 2);
        assert!(statements(&json!({"Version": "2012-10-17"})).is_empty());
    }
}

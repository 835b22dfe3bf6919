//! The library's objects in S3, as blocking calls: the library's writers and readers are threads (ingest
//! workers, seal threads, a mount's recall threads), so each call is handed to a small runtime of this
//! client's own and waited for. That runtime is never the caller's: a call made from a thread of the daemon's
//! runtime works too.
//!
//! Credentials, region and endpoint come from the AWS SDK's default chain (`AWS_ENDPOINT_URL` aims it at an
//! S3-compatible store, which is then addressed in path style). Throttling and transient faults are retried
//! by the SDK's standard retry; what is left is an error naming the object and what S3 said.

use std::future::Future;
use std::time::{Duration, SystemTime};

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use super::S3Url;
use crate::error::{Error, Result};

/// Calls are tried this often in all before their error is reported.
const MAX_ATTEMPTS: u32 = 5;
/// A single attempt that takes longer than this (a network that stopped answering) is tried again.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The first pause before a GET whose answer was cut short is sent again; it doubles each time.
const BODY_RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Objects larger than this are uploaded in parts of this size (the last smaller), several at a time. S3
/// takes parts of at least 5 MiB.
const PART_SIZE: usize = 8 << 20;
const PARTS_IN_FLIGHT: usize = 4;
/// Threads of the client's own runtime: the requests wait on the network, not on the CPU.
const RUNTIME_THREADS: usize = 2;

/// One object under the library's prefix.
#[derive(Clone, Debug)]
pub struct ObjectInfo {
    /// Its name under the library's prefix.
    pub name: String,
    pub size: u64,
    pub modified: SystemTime,
}

pub struct S3Objects {
    url: S3Url,
    client: aws_sdk_s3::Client,
    /// Always `Some` until dropped (taken out to be shut down without blocking).
    runtime: Option<tokio::runtime::Runtime>,
}

impl S3Objects {
    /// A client for the library at `url`. Nothing is sent yet.
    pub fn connect(url: &S3Url) -> Result<S3Objects> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RUNTIME_THREADS)
            .thread_name("s3-client")
            .enable_all()
            .build()
            .map_err(|e| Error::io("start the S3 client for", url.to_string(), e))?;
        // Not `block_on`: the caller may be a thread of another runtime (the daemon's), where that panics.
        let config = run_on(&runtime, async {
            let http = aws_smithy_http_client::Builder::new()
                .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
                .build_https();
            let timeouts = TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .build();
            let config = aws_config::defaults(BehaviorVersion::latest())
                .http_client(http)
                .retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS))
                .timeout_config(timeouts)
                .load()
                .await;
            if config.region().is_none() {
                config.into_builder().region(aws_config::Region::from_static("us-east-1")).build()
            } else {
                config
            }
        });
        // An S3-compatible store answers on one host name, not one per bucket.
        let s3_config =
            aws_sdk_s3::config::Builder::from(&config).force_path_style(config.endpoint_url().is_some()).build();
        Ok(S3Objects { url: url.clone(), client: aws_sdk_s3::Client::from_conf(s3_config), runtime: Some(runtime) })
    }

    pub fn url(&self) -> &S3Url {
        &self.url
    }

    /// Runs a request on the client's runtime and waits for it, from any thread.
    fn run<T: Send + 'static>(&self, request: impl Future<Output = T> + Send + 'static) -> T {
        run_on(self.runtime.as_ref().expect("alive until dropped"), request)
    }

    /// Writes an object whole (replacing one of the same name). Large objects go up in parts. (`Bytes`: a
    /// caller that keeps the data, such as a pack store answering reads from a pack being uploaded, shares
    /// it rather than copying it.)
    pub fn put(&self, name: &str, data: impl Into<bytes::Bytes>) -> Result<()> {
        let data: bytes::Bytes = data.into();
        if data.len() > PART_SIZE {
            return self.put_in_parts(name, data);
        }
        let (client, bucket, key) = (self.client.clone(), self.url.bucket.clone(), self.url.key(name));
        self.run(async move { client.put_object().bucket(bucket).key(key).body(ByteStream::from(data)).send().await })
            .map(drop)
            .map_err(|e| self.error("write", name, &e))
    }

    /// Writes an object only if none of that name exists (a conditional create, `If-None-Match: *`): true
    /// when this call created it.
    pub fn create_new(&self, name: &str, data: Vec<u8>) -> Result<bool> {
        let (client, bucket, key) = (self.client.clone(), self.url.bucket.clone(), self.url.key(name));
        let sent = self.run(async move {
            client.put_object().bucket(bucket).key(key).if_none_match("*").body(ByteStream::from(data)).send().await
        });
        match sent {
            Ok(_) => Ok(true),
            // 412: it exists. 409: another conditional write of the same name is in progress.
            Err(e) if matches!(status_of(&e), Some(412 | 409)) => Ok(false),
            Err(e) => Err(self.error("create", name, &e)),
        }
    }

    fn put_in_parts(&self, name: &str, data: bytes::Bytes) -> Result<()> {
        let (client, bucket, key) = (self.client.clone(), self.url.bucket.clone(), self.url.key(name));
        let outcome = self.run(async move {
            let started = client.create_multipart_upload().bucket(&bucket).key(&key).send().await?;
            let upload_id = started.upload_id().unwrap_or_default().to_string();
            let uploaded = upload_parts(&client, &bucket, &key, &upload_id, data).await;
            let parts = match uploaded {
                Ok(parts) => parts,
                Err(e) => {
                    // Parts of an upload never completed cost storage until aborted.
                    let _ =
                        client.abort_multipart_upload().bucket(&bucket).key(&key).upload_id(&upload_id).send().await;
                    return Err(e);
                }
            };
            let done = CompletedMultipartUpload::builder().set_parts(Some(parts)).build();
            let completed = client
                .complete_multipart_upload()
                .bucket(&bucket)
                .key(&key)
                .upload_id(&upload_id)
                .multipart_upload(done)
                .send()
                .await;
            if completed.is_err() {
                let _ = client.abort_multipart_upload().bucket(&bucket).key(&key).upload_id(&upload_id).send().await;
            }
            completed.map(drop).map_err(PartsError::from)
        });
        outcome.map_err(|e: PartsError| Error::Remote {
            op: "upload".into(),
            object: self.url.object_url(name),
            reason: e.0,
        })
    }

    /// Reads an object whole; `None` when there is none of that name.
    pub fn get(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.get_bytes(name, None)
    }

    /// Reads `len` bytes at `offset` of an object (one ranged GET); `None` when there is no object of that
    /// name. Fewer bytes come back when the object ends before.
    pub fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Option<Vec<u8>>> {
        if len == 0 {
            return Ok(Some(Vec::new()));
        }
        self.get_bytes(name, Some(format!("bytes={offset}-{}", offset + len - 1)))
    }

    fn get_bytes(&self, name: &str, range: Option<String>) -> Result<Option<Vec<u8>>> {
        let (client, bucket, key) = (self.client.clone(), self.url.bucket.clone(), self.url.key(name));
        let got = self.run(async move {
            let mut attempt = 1;
            loop {
                let resp = client
                    .get_object()
                    .bucket(&bucket)
                    .key(&key)
                    .set_range(range.clone())
                    .send()
                    .await
                    .map_err(Got::Call)?;
                // A body cut short is an error of the stream, not fewer bytes. The SDK tries a request again
                // only until its answer begins, so a connection lost mid-answer (a restore's span of 8 MiB, a
                // network that drops) would fail the read at once: the whole GET is tried again here instead.
                match resp.body.collect().await {
                    Ok(body) => return Ok(body.to_vec()),
                    Err(_) if attempt < MAX_ATTEMPTS => {
                        tokio::time::sleep(BODY_RETRY_PAUSE * 2u32.pow(attempt - 1)).await;
                        attempt += 1;
                    }
                    Err(e) => {
                        return Err(Got::Body(format!(
                            "{}; the answer was cut short each time it was read ({MAX_ATTEMPTS} attempts): check \
                             the network to the store",
                            causes(&e)
                        )))
                    }
                }
            }
        });
        match got {
            Ok(data) => Ok(Some(data)),
            Err(Got::Call(e)) if is_not_found(&e) => Ok(None),
            Err(Got::Call(e)) => Err(self.error("read", name, &e)),
            Err(Got::Body(reason)) => {
                Err(Error::Remote { op: "read".into(), object: self.url.object_url(name), reason })
            }
        }
    }

    /// The objects whose names start with `sub_prefix` (under the library's prefix), in name order.
    pub fn list(&self, sub_prefix: &str) -> Result<Vec<ObjectInfo>> {
        let (client, bucket) = (self.client.clone(), self.url.bucket.clone());
        let (prefix, skip) = (self.url.key(sub_prefix), self.url.prefix.len());
        let listed = self.run(async move {
            let mut out = Vec::new();
            let mut pages = client.list_objects_v2().bucket(bucket).prefix(prefix).into_paginator().send();
            while let Some(page) = pages.next().await {
                for o in page?.contents() {
                    let Some(key) = o.key() else { continue };
                    let modified =
                        o.last_modified().and_then(|t| SystemTime::try_from(*t).ok()).unwrap_or(SystemTime::UNIX_EPOCH);
                    let size = o.size().unwrap_or(0).max(0) as u64;
                    out.push(ObjectInfo { name: key[skip.min(key.len())..].to_string(), size, modified });
                }
            }
            Ok::<_, SdkError<_, _>>(out)
        });
        listed.map_err(|e| self.error("list", sub_prefix, &e))
    }

    /// Removes an object; removing one that is not there is not an error.
    pub fn delete(&self, name: &str) -> Result<()> {
        let (client, bucket, key) = (self.client.clone(), self.url.bucket.clone(), self.url.key(name));
        match self.run(async move { client.delete_object().bucket(bucket).key(key).send().await }) {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(self.error("remove", name, &e)),
        }
    }

    fn error<E, R>(&self, op: &str, name: &str, e: &SdkError<E, R>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: RawAnswer + std::fmt::Debug,
    {
        Error::Remote { op: op.into(), object: self.url.object_url(name), reason: explain(e) }
    }
}

impl Drop for S3Objects {
    fn drop(&mut self) {
        // The last user may be a task of an async runtime, where waiting for threads is not allowed.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Runs `work` on `runtime` and waits for it, from any thread (also one of another runtime).
fn run_on<T: Send + 'static>(runtime: &tokio::runtime::Runtime, work: impl Future<Output = T> + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = tx.send(work.await);
    });
    rx.recv().expect("the S3 client's runtime runs every task it is given")
}

/// What a GET ran into: the call itself, or the body's stream after the answer began.
enum Got<E> {
    Call(E),
    Body(String),
}

/// A failed multipart upload, described.
struct PartsError(String);

impl<E, R> From<SdkError<E, R>> for PartsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: RawAnswer + std::fmt::Debug,
{
    fn from(e: SdkError<E, R>) -> Self {
        PartsError(explain(&e))
    }
}

/// Uploads `data` in parts of `PART_SIZE`, `PARTS_IN_FLIGHT` at a time, and says what S3 needs to complete.
async fn upload_parts(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    upload_id: &str,
    data: bytes::Bytes,
) -> std::result::Result<Vec<CompletedPart>, PartsError> {
    let mut running = tokio::task::JoinSet::new();
    let mut parts = Vec::new();
    for (n, start) in (0..data.len()).step_by(PART_SIZE).enumerate() {
        let number = n as i32 + 1;
        let body = data.slice(start..(start + PART_SIZE).min(data.len()));
        let call = client.upload_part().bucket(bucket).key(key).upload_id(upload_id).part_number(number);
        running.spawn(async move { (number, call.body(ByteStream::from(body)).send().await) });
        while running.len() >= PARTS_IN_FLIGHT {
            parts.push(finished_part(running.join_next().await)?);
        }
    }
    while let Some(done) = running.join_next().await {
        parts.push(finished_part(Some(done))?);
    }
    parts.sort_by_key(|p| p.part_number());
    Ok(parts)
}

type PartResult = std::result::Result<
    aws_sdk_s3::operation::upload_part::UploadPartOutput,
    SdkError<aws_sdk_s3::operation::upload_part::UploadPartError, aws_smithy_runtime_api::http::Response>,
>;

fn finished_part(
    joined: Option<std::result::Result<(i32, PartResult), tokio::task::JoinError>>,
) -> std::result::Result<CompletedPart, PartsError> {
    let (number, sent) = joined
        .expect("called only with parts running")
        .map_err(|e| PartsError(format!("an upload task failed: {e}")))?;
    let out = sent?;
    Ok(CompletedPart::builder().part_number(number).set_e_tag(out.e_tag().map(str::to_string)).build())
}

fn status_of<E, R>(e: &SdkError<E, R>) -> Option<u16>
where
    R: RawAnswer,
{
    e.raw_response().map(RawAnswer::status_code)
}

/// What an error answer carries besides its error document: its HTTP status, headers and body as sent (the
/// SDK's response type). Some answers have no error document (a 403 with an empty body), and some say where
/// the bucket is only in a header or an element the SDK does not parse.
trait RawAnswer {
    fn status_code(&self) -> u16;
    fn header(&self, name: &str) -> Option<&str>;
    fn body_bytes(&self) -> Option<&[u8]>;
}

impl RawAnswer for aws_smithy_runtime_api::http::Response {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers().get(name)
    }

    fn body_bytes(&self) -> Option<&[u8]> {
        self.body().bytes()
    }
}

fn is_not_found<E, R>(e: &SdkError<E, R>) -> bool
where
    E: ProvideErrorMetadata,
    R: RawAnswer,
{
    status_of(e) == Some(404)
        && !matches!(e.as_service_error().and_then(|s| s.code()), Some("NoSuchBucket" | "NoSuchUpload"))
}

/// The code and message of an SDK error, for one-line reports. A service error gives its AWS error code; a
/// transport failure (no connection, timeout) gives what the SDK saw, with its causes.
pub fn describe<E, R>(e: &SdkError<E, R>) -> (Option<String>, String)
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match e {
        SdkError::ServiceError(s) => {
            let err = s.err();
            let code = err.code().map(str::to_string);
            let message = match (&code, err.message()) {
                (_, Some(m)) => m.to_string(),
                (None, None) => aws_smithy_types::error::display::DisplayErrorContext(err).to_string(),
                (Some(_), None) => err.to_string(),
            };
            (code, message)
        }
        other => (None, aws_smithy_types::error::display::DisplayErrorContext(other).to_string()),
    }
}

/// One line for the user: what S3 said (its error code and message, or the HTTP status of an answer without
/// an error document, or what the network did) and, where the cause is known, what to do about it.
fn explain<E, R>(e: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: RawAnswer + std::fmt::Debug,
{
    let answer = e.raw_response();
    let status = answer.map(RawAnswer::status_code);
    let (code, message) = match e {
        // A service error with neither code nor message is an answer without an error document (AWS sends
        // none for a HEAD; moto sends none for a bucket policy's Deny): the SDK's own words for it are a debug
        // dump ("unhandled error: Error { aws_request_id: .. }"), so its HTTP status is what there is to say.
        SdkError::ServiceError(s) if s.err().code().is_none() && s.err().message().is_none() => {
            let status = s.raw().status_code();
            let message = match status {
                403 => "access denied (HTTP 403 Forbidden, without details)".to_string(),
                _ => format!(
                    "HTTP {status} {} (without details)",
                    http::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("")
                ),
            };
            (None, message)
        }
        SdkError::ServiceError(_) => describe(e),
        // The SDK's text for these ends in a debug dump of the whole error; its chain of causes says it all.
        other => (None, causes(other)),
    };
    let hint = match (code.as_deref(), status) {
        (Some("NoSuchBucket"), _) => "create the bucket first, or check the library's URL".to_string(),
        (Some("AccessDenied" | "AllAccessDisabled"), _) | (None, Some(403)) => {
            "check the credentials in use (the AWS SDK's default chain), their permissions and the bucket's \
             policy"
                .to_string()
        }
        (Some("InvalidAccessKeyId" | "SignatureDoesNotMatch" | "ExpiredToken" | "InvalidToken"), _) => {
            "check the credentials in use (the AWS SDK's default chain) and their permissions on the bucket".to_string()
        }
        (Some("PermanentRedirect" | "AuthorizationHeaderMalformed" | "IllegalLocationConstraintException"), _)
        | (None, Some(301 | 307)) => match answer.and_then(bucket_region) {
            Some(region) => format!("the bucket is in region {region}: set AWS_REGION={region}"),
            None => "the bucket is in another region: set AWS_REGION to the bucket's region".to_string(),
        },
        _ => match e {
            SdkError::DispatchFailure(d) if d.is_io() || d.is_timeout() => format!(
                "the connection to the store failed, also when tried again (up to {MAX_ATTEMPTS} attempts): \
                 check the network to it and its endpoint"
            ),
            SdkError::TimeoutError(_) => format!(
                "the store did not answer in time, also when tried again (up to {MAX_ATTEMPTS} attempts): \
                 check the network to it and its endpoint"
            ),
            _ => String::new(),
        },
    };
    let said = match code {
        Some(code) => format!("{code}: {message}"),
        None => message,
    };
    if hint.is_empty() {
        said
    } else {
        // "... this endpoint.; the bucket ..." reads badly: the hint follows the message's last word.
        format!("{}; {hint}", said.trim_end().trim_end_matches('.'))
    }
}

/// An error and its causes, each said once: "dispatch failure: io error: ...: Connection reset by peer".
fn causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !text.is_empty() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

/// The region an answer says the bucket is in: the `x-amz-bucket-region` header (a redirect), else the
/// `Region` element of the error document (AuthorizationHeaderMalformed names it only there).
fn bucket_region<R: RawAnswer>(answer: &R) -> Option<String> {
    let valid = |r: &str| !r.is_empty() && r.len() <= 32 && r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if let Some(r) = answer.header("x-amz-bucket-region").map(str::trim).filter(|r| valid(r)) {
        return Some(r.to_string());
    }
    let body = std::str::from_utf8(answer.body_bytes()?).ok()?;
    let start = body.find("<Region>")? + "<Region>".len();
    let region = body[start..].split("</Region>").next()?.trim();
    valid(region).then(|| region.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer as a store sends it, for `bucket_region`.
    struct Answer {
        headers: Vec<(&'static str, &'static str)>,
        body: &'static str,
    }

    impl RawAnswer for Answer {
        fn status_code(&self) -> u16 {
            400
        }

        fn header(&self, name: &str) -> Option<&str> {
            self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| *v)
        }

        fn body_bytes(&self) -> Option<&[u8]> {
            Some(self.body.as_bytes())
        }
    }

    #[test]
    fn the_bucket_region_comes_from_the_header_or_the_error_document() {
        let redirect = Answer { headers: vec![("x-amz-bucket-region", "eu-west-1")], body: "" };
        assert_eq!(bucket_region(&redirect).as_deref(), Some("eu-west-1"));
        let malformed = Answer {
            headers: vec![],
            body: "<Error><Code>AuthorizationHeaderMalformed</Code><Region>ap-southeast-2</Region></Error>",
        };
        assert_eq!(bucket_region(&malformed).as_deref(), Some("ap-southeast-2"));
        // Nothing that could not be a region is offered as one to set.
        let odd = Answer { headers: vec![("x-amz-bucket-region", "eu west; rm")], body: "<Region></Region>" };
        assert_eq!(bucket_region(&odd), None);
    }
}

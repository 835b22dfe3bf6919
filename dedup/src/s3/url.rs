//! `s3://BUCKET/PREFIX`: the bucket and the key prefix under which a library's objects live.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    /// Empty, or ending in `/`: a key is the prefix followed by the library's own name for the object.
    pub prefix: String,
}

impl S3Url {
    /// Parses `s3://BUCKET` or `s3://BUCKET/PREFIX`; `None` when `s` does not start with `s3://`. A bucket
    /// name that S3 would refuse is an error here, before any request.
    pub fn parse(s: &str) -> Option<Result<S3Url, String>> {
        let rest = s.strip_prefix("s3://")?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && bucket.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && bucket.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
        if !valid_bucket {
            return Some(Err(format!(
                "{s}: {bucket:?} is not a bucket name (3 to 63 lowercase letters, digits, dots and hyphens)"
            )));
        }
        let prefix = prefix.trim_matches('/');
        let prefix = if prefix.is_empty() { String::new() } else { format!("{prefix}/") };
        Some(Ok(S3Url { bucket: bucket.to_string(), prefix }))
    }

    /// The full key of a library object.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The URL of a library object, for messages.
    pub fn object_url(&self, name: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.key(name))
    }
}

impl fmt::Display for S3Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix.trim_end_matches('/'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_bad_buckets_are_refused() {
        let u = S3Url::parse("s3://backups/site-a/lib/").unwrap().unwrap();
        assert_eq!((u.bucket.as_str(), u.prefix.as_str()), ("backups", "site-a/lib/"));
        assert_eq!(u.key("packs/x.pack"), "site-a/lib/packs/x.pack");
        assert_eq!(u.to_string(), "s3://backups/site-a/lib");
        let bare = S3Url::parse("s3://backups").unwrap().unwrap();
        assert_eq!(bare.key("library.json"), "library.json");
        assert!(S3Url::parse("/var/lib/livemount").is_none());
        assert!(S3Url::parse("s3://Bad_Bucket/x").unwrap().is_err());
        assert!(S3Url::parse("s3:///x").unwrap().is_err());
    }
}

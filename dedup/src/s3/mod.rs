//! A library in S3 (or any S3-compatible store): where its objects are (`url.rs`) and the blocking client the
//! rest of the library calls (`objects.rs`). The pack store over it is `store::S3PackStore`; the backups,
//! holds, registry and gc lock over it are `library::s3`.

mod objects;
mod url;

pub use objects::{describe, ObjectInfo, S3Objects};
pub use url::S3Url;

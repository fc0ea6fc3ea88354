//! `ColdStore`: the cold tier, content-addressed objects in an object store.
//!
//! The data plane goes through `object_store` (S3-compatible endpoints, the local
//! filesystem, or memory for tests); the S3-only control plane (storage class of an
//! existing object, the restore flow of archive classes) through `aws-sdk-s3`, which is
//! present only when the cold URL is `s3://`.
//!
//! ## Keys
//! An object with id `abcd…` lives at `<prefix>/packs/ab/abcd….tar`: the key is derived
//! from the id alone, never from a caller-supplied string, and a retried upload of the
//! same bytes lands on the same key (so a crash between upload and record leaves at most
//! one stray object, which `list` finds). The `.tar` suffix says what the caller stores
//! here (study packs); this module does not look inside. [`ColdStore::replicas`] is the
//! same tier seen under `<prefix>/objects/ab/abcd….dcm`, for single objects as stored.
//!
//! ## Durability and trust
//! `put` and [`ColdStore::put_file`] refuse bytes that do not hash to the id. Nothing here
//! trusts an upload call's success: [`ColdStore::verify`] reads the object back and
//! re-hashes it, which is what the mover does before it deletes a hot copy.
//!
//! ## Archive classes
//! Reading an object in an archive class (GLACIER, DEEP_ARCHIVE) that has not been
//! restored gives [`TierError::PendingRestore`] after asking the store to restore it; a
//! later read succeeds once the restore completed.

use crate::{check_content_address, BlobStore, ObjectId, ObjectMeta, PutOutcome, TierError};
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as StorePath;
use object_store::{
    Attribute, Attributes, BackoffConfig, GetOptions, GetRange, GetResultPayload, ObjectStore,
    ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions, PutPayload, RetryConfig,
    WriteMultipart,
};
use std::io::Read;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Objects at or above this size are uploaded in parts.
pub const MULTIPART_THRESHOLD: u64 = 16 * 1024 * 1024;
/// Part size of multipart uploads.
const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts in flight per multipart upload.
const PARTS_IN_FLIGHT: usize = 4;
/// Bytes read per blocking call when a `file://` cold tier streams a range.
const FILE_CHUNK: u64 = 256 * 1024;

/// Streams `range` of a file of a `file://` cold tier, [`FILE_CHUNK`] bytes per
/// positioned read (`pread`) on the blocking pool. object_store's own stream of a local
/// file reads 8 KiB per blocking call: a 100 MB pack span cost 12,800 thread hand-offs,
/// which on 2 cores made a WADO-RS retrieve from cold spend more time switching threads
/// than decompressing (docs/benchmarks.md).
fn file_chunks(
    file: std::fs::File,
    path: std::path::PathBuf,
    range: Range<u64>,
) -> BoxStream<'static, Result<Bytes, TierError>> {
    let file = Arc::new(file);
    futures::stream::try_unfold(range.start, move |at| {
        let (file, path, end) = (file.clone(), path.clone(), range.end);
        async move {
            if at >= end {
                return Ok(None);
            }
            let want = (end - at).min(FILE_CHUNK) as usize;
            let task_path = path.clone();
            // a file shorter than the range ends the stream early, as object_store's
            // does; the caller compares what it got with what it asked for
            let chunk = tokio::task::spawn_blocking(move || {
                read_at_most(&file, want, at).map_err(|e| TierError::io("read", &task_path, e))
            })
            .await
            .map_err(|e| TierError::io("read", &path, std::io::Error::other(e)))??;
            if chunk.is_empty() {
                return Ok(None);
            }
            let next = if chunk.len() < want {
                end
            } else {
                at + want as u64
            };
            Ok(Some((Bytes::from(chunk), next)))
        }
    })
    .boxed()
}

/// Up to `len` bytes of `file` from `offset` (positioned reads, `pread`): fewer only
/// where the file ends first.
fn read_at_most(file: &std::fs::File, len: usize, offset: u64) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

/// Where the cold tier lives. `url` is `file:///path`, `s3://bucket/prefix` or `memory:`.
#[derive(Debug, Clone, Default)]
pub struct ColdSpec {
    pub url: String,
    /// S3 endpoint for S3-compatible servers (`http://127.0.0.1:9000`); AWS when unset.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Allow plain HTTP (loopback test servers).
    pub allow_http: bool,
    /// Path-style requests (`endpoint/bucket/key`), needed by most S3-compatible servers.
    pub path_style: bool,
    /// Request timeout; a stopped endpoint fails within it instead of hanging the mover.
    pub timeout: Duration,
    /// Retries of one request inside object_store before the caller sees the error.
    pub max_retries: usize,
}

/// The S3 archive storage classes, whose objects must be restored before they are read.
pub fn is_archive_class(class: &str) -> bool {
    matches!(class, "GLACIER" | "DEEP_ARCHIVE")
}

/// The storage classes Strata knows how to ask for.
pub const STORAGE_CLASSES: [&str; 5] = [
    "STANDARD",
    "STANDARD_IA",
    "GLACIER_IR",
    "GLACIER",
    "DEEP_ARCHIVE",
];

#[derive(Clone)]
struct S3Control {
    client: aws_sdk_s3::Client,
    bucket: String,
    /// Set once a HeadBucket found the bucket, before this store's first write: some
    /// engines (SeaweedFS) create a missing bucket on the first PUT into it, and Strata
    /// never creates buckets (a mistyped name must not become a new bucket).
    bucket_found: Arc<tokio::sync::OnceCell<()>>,
}

impl std::fmt::Debug for S3Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Control")
            .field("bucket", &self.bucket)
            .finish()
    }
}

/// What a view of the cold tier holds: the folder its keys live under, and their suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Namespace {
    dir: &'static str,
    suffix: &'static str,
}

/// Study packs: `packs/ab/abcd….tar`.
const PACKS: Namespace = Namespace {
    dir: "packs",
    suffix: ".tar",
};

/// Replicas of single objects, as stored (Part-10 files): `objects/ab/abcd….dcm`.
const REPLICAS: Namespace = Namespace {
    dir: "objects",
    suffix: ".dcm",
};

/// The cold tier. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ColdStore {
    store: Arc<dyn ObjectStore>,
    /// The same store when it is a `file://` tier, for reads on the calling thread
    /// ([`ColdStore::read_range_local_blocking`]).
    local: Option<Arc<LocalFileSystem>>,
    prefix: StorePath,
    s3: Option<S3Control>,
    describe: String,
    namespace: Namespace,
}

fn remote(action: &'static str, key: &StorePath, e: object_store::Error) -> TierError {
    let chain = error_chain(&e);
    match e {
        // S3 says which: the object, or the whole bucket (a write can only mean that)
        object_store::Error::NotFound { .. } if chain.contains("NoSuchBucket") => {
            TierError::Remote {
                action,
                key: key.to_string(),
                detail: "the bucket does not exist (NoSuchBucket): create it first; Strata \
                         never creates buckets"
                    .into(),
            }
        }
        // the AWS credential chain found nothing and fell back to EC2 instance metadata
        _ if chain.contains("169.254.169.254") => TierError::Remote {
            action,
            key: key.to_string(),
            detail: "no S3 credentials were found (the AWS credential chain ended at the EC2 \
                     instance metadata service): set AWS_ACCESS_KEY_ID and \
                     AWS_SECRET_ACCESS_KEY for this command as for the server"
                .into(),
        },
        object_store::Error::NotFound { .. } => TierError::RemoteNotFound {
            key: key.to_string(),
        },
        other => TierError::Remote {
            action,
            key: key.to_string(),
            detail: error_chain(&other),
        },
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn sdk_error<E: std::error::Error + 'static>(action: &'static str, key: &str, e: E) -> TierError {
    TierError::Remote {
        action,
        key: key.to_string(),
        detail: error_chain(&e),
    }
}

/// The endpoint of `bucket` in virtual-hosted style (`scheme://bucket.host[:port]`).
/// object_store sends virtual-hosted requests to the endpoint as given, so a custom
/// endpoint must name the bucket's own host, or the first segment of every key would be
/// taken for the bucket. An endpoint already naming the bucket is kept; an IP address
/// cannot carry a bucket name, and is refused (use `path_style = true`).
fn virtual_hosted_endpoint(endpoint: &str, bucket: &str) -> Result<String, TierError> {
    let (scheme, rest) = endpoint
        .split_once("://")
        .ok_or_else(|| TierError::config(format!("endpoint {endpoint:?} has no scheme")))?;
    let host_port = rest.split('/').next().unwrap_or("");
    let host = host_port
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(host_port)
        .trim_matches(['[', ']']);
    if host.starts_with(&format!("{bucket}.")) {
        return Ok(endpoint.trim_end_matches('/').to_string());
    }
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Err(TierError::config(format!(
            "path_style = false needs a host name that can carry the bucket \
             ({bucket}.<host>), and {endpoint} is an IP address: set path_style = true"
        )));
    }
    Ok(format!("{scheme}://{bucket}.{host_port}"))
}

impl ColdStore {
    /// Opens the cold tier a spec names. Creates a `file://` directory if missing.
    pub fn open(spec: &ColdSpec) -> Result<Self, TierError> {
        let url = spec.url.trim();
        if let Some(path) = url.strip_prefix("file://") {
            let dir = Path::new(path);
            std::fs::create_dir_all(dir).map_err(|e| TierError::io("create", dir, e))?;
            let fs = Arc::new(
                LocalFileSystem::new_with_prefix(dir)
                    .map_err(|e| TierError::config(format!("cold directory {path}: {e}")))?
                    .with_fsync(true),
            );
            return Ok(ColdStore {
                store: fs.clone(),
                local: Some(fs),
                prefix: StorePath::default(),
                s3: None,
                describe: url.to_string(),
                namespace: PACKS,
            });
        }
        if url == "memory:" {
            return Ok(Self::in_memory());
        }
        let Some(rest) = url.strip_prefix("s3://") else {
            return Err(TierError::config(format!(
                "cold url {url:?}: expected file:///path or s3://bucket/prefix"
            )));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(TierError::config(format!(
                "cold url {url:?} names no bucket"
            )));
        }
        let region = spec.region.clone().unwrap_or_else(|| "us-east-1".into());
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(2),
                base: 2.0,
            },
            max_retries: spec.max_retries,
            retry_timeout: spec.timeout * 2,
        };
        // Credentials come from the environment and the standard AWS chain, never from
        // the config file.
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_region(&region)
            .with_allow_http(spec.allow_http)
            .with_virtual_hosted_style_request(!spec.path_style)
            .with_retry(retry)
            .with_client_options(
                object_store::ClientOptions::new()
                    .with_timeout(spec.timeout)
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_allow_http(spec.allow_http),
            );
        if let Some(endpoint) = &spec.endpoint {
            builder = builder.with_endpoint(if spec.path_style {
                endpoint.clone()
            } else {
                virtual_hosted_endpoint(endpoint, bucket)?
            });
        }
        let s3: AmazonS3 = builder
            .build()
            .map_err(|e| TierError::config(format!("cold url {url:?}: {e}")))?;
        let control = S3Control {
            client: sdk_client(spec, &region, &s3),
            bucket: bucket.to_string(),
            bucket_found: Arc::default(),
        };
        Ok(ColdStore {
            store: Arc::new(s3),
            local: None,
            prefix: StorePath::from(prefix.trim_matches('/')),
            s3: Some(control),
            describe: url.to_string(),
            namespace: PACKS,
        })
    }

    /// A cold tier in memory (tests).
    pub fn in_memory() -> Self {
        ColdStore {
            store: Arc::new(InMemory::new()),
            local: None,
            prefix: StorePath::default(),
            s3: None,
            describe: "memory:".into(),
            namespace: PACKS,
        }
    }

    /// The URL this store was opened from, for logs and `tier status`.
    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// Whether storage classes and restores are available (S3 only).
    pub fn supports_storage_classes(&self) -> bool {
        self.s3.is_some()
    }

    /// The same tier, for replicas of single objects (`<prefix>/objects/ab/abcd….dcm`,
    /// each a Part-10 file as stored: its blake3 is its id) instead of study packs. Every
    /// operation of the returned store works on that namespace only; packs and replicas
    /// never see each other's keys.
    pub fn replicas(&self) -> ColdStore {
        ColdStore {
            namespace: REPLICAS,
            ..self.clone()
        }
    }

    fn under_prefix(&self, name: String) -> StorePath {
        if self.prefix.as_ref().is_empty() {
            StorePath::from(name)
        } else {
            StorePath::from(format!("{}/{name}", self.prefix))
        }
    }

    fn key(&self, id: &ObjectId) -> StorePath {
        let hex = id.to_hex();
        let Namespace { dir, suffix } = self.namespace;
        self.under_prefix(format!("{dir}/{}/{hex}{suffix}", &hex[..2]))
    }

    /// The key of an object, as shown to operators (`strata show`).
    pub fn key_of(&self, id: &ObjectId) -> String {
        self.key(id).to_string()
    }

    fn id_of_key(&self, key: &StorePath) -> Option<ObjectId> {
        let name = key.filename()?;
        ObjectId::from_hex(name.strip_suffix(self.namespace.suffix)?)
    }

    fn class_attributes(&self, storage_class: Option<&str>) -> Attributes {
        let mut attributes = Attributes::new();
        if let (Some(class), Some(_)) = (storage_class, &self.s3) {
            attributes.insert(Attribute::StorageClass, class.to_string().into());
        }
        attributes
    }

    /// Uploads `head` followed by the contents of `body` as object `id`, in parts when
    /// large, checking on the way that the bytes hash to `id`. An object already present
    /// under `id` is left alone. `storage_class` applies on S3 only.
    pub async fn put_file(
        &self,
        id: &ObjectId,
        head: Bytes,
        body: &Path,
        storage_class: Option<&str>,
    ) -> Result<PutOutcome, TierError> {
        let key = self.key(id);
        if self.exists(&key).await? {
            return Ok(PutOutcome::AlreadyPresent);
        }
        let body_len = std::fs::metadata(body)
            .map_err(|e| TierError::io("stat", body, e))?
            .len();
        let total = head.len() as u64 + body_len;
        let mut file = std::fs::File::open(body).map_err(|e| TierError::io("open", body, e))?;
        let mut hasher = blake3::Hasher::new();
        hasher.update(&head);
        if total < MULTIPART_THRESHOLD {
            let mut bytes = Vec::with_capacity(total as usize);
            bytes.extend_from_slice(&head);
            file.read_to_end(&mut bytes)
                .map_err(|e| TierError::io("read", body, e))?;
            let bytes = Bytes::from(bytes);
            check_content_address(id, &bytes)?;
            return self
                .put_with(&key, bytes, storage_class)
                .await
                .map(|()| PutOutcome::Stored);
        }
        self.bucket_for_writes().await?;
        let upload = self
            .store
            .put_multipart_opts(
                &key,
                PutMultipartOptions {
                    attributes: self.class_attributes(storage_class),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| remote("start upload of", &key, e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        writer.put(head);
        let mut buf = vec![0u8; PART_SIZE];
        loop {
            // File reads are short and local; a part upload is what takes the time.
            let n = file
                .read(&mut buf)
                .map_err(|e| TierError::io("read", body, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            writer
                .wait_for_capacity(PARTS_IN_FLIGHT)
                .await
                .map_err(|e| remote("upload", &key, e))?;
            writer.write(&buf[..n]);
        }
        let actual = ObjectId::from_bytes(*hasher.finalize().as_bytes());
        if &actual != id {
            writer.abort().await.ok();
            return Err(TierError::HashMismatch {
                expected: *id,
                actual,
            });
        }
        writer
            .finish()
            .await
            .map_err(|e| remote("complete upload of", &key, e))?;
        Ok(PutOutcome::Stored)
    }

    async fn exists(&self, key: &StorePath) -> Result<bool, TierError> {
        match self.store.head(key).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(remote("look up", key, e)),
        }
    }

    /// Before the first write of this store (and its clones): on S3, that the bucket
    /// exists ([`ColdStore::check_bucket`]'s error otherwise). Once found, never asked
    /// again.
    async fn bucket_for_writes(&self) -> Result<(), TierError> {
        if let Some(s3) = &self.s3 {
            s3.bucket_found
                .get_or_try_init(|| self.check_bucket())
                .await?;
        }
        Ok(())
    }

    async fn put_with(
        &self,
        key: &StorePath,
        bytes: Bytes,
        storage_class: Option<&str>,
    ) -> Result<(), TierError> {
        self.bucket_for_writes().await?;
        let opts = PutOptions {
            mode: PutMode::Create,
            attributes: self.class_attributes(storage_class),
            ..Default::default()
        };
        match self
            .store
            .put_opts(key, PutPayload::from_bytes(bytes), opts)
            .await
        {
            // Same key, same bytes: someone (a retried request) got there first.
            Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(remote("upload", key, e)),
        }
    }

    /// Reads the whole object back and re-hashes it: the check that makes a remote copy
    /// trustworthy, independent of what the upload call said. Returns the size.
    pub async fn verify(&self, id: &ObjectId) -> Result<u64, TierError> {
        let key = self.key(id);
        let mut stream = self.get_stream(&key, None).await?;
        let mut hasher = blake3::Hasher::new();
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            size += chunk.len() as u64;
            hasher.update(&chunk);
        }
        let actual = ObjectId::from_bytes(*hasher.finalize().as_bytes());
        if &actual != id {
            return Err(TierError::HashMismatch {
                expected: *id,
                actual,
            });
        }
        Ok(size)
    }

    /// Streams `range` of the object (or all of it). Archive-class objects that are not
    /// restored start a restore and give [`TierError::PendingRestore`].
    pub async fn stream_range(
        &self,
        id: &ObjectId,
        range: Option<Range<u64>>,
    ) -> Result<BoxStream<'static, Result<Bytes, TierError>>, TierError> {
        let key = self.key(id);
        match self.get_stream(&key, range).await {
            // S3 refuses a GET of an archived object (InvalidObjectState); which one it
            // is, is asked of S3's typed HEAD answer, not read from the error's text
            Err(e @ TierError::Remote { .. }) => match self.awaits_restore(id).await {
                Ok(true) => Err(self.start_restore(id).await?),
                _ => Err(e),
            },
            other => other,
        }
    }

    /// Whether the object sits in an archive storage class (GLACIER, DEEP_ARCHIVE)
    /// without a completed restore: S3's HEAD reports the class in
    /// `x-amz-storage-class` and a restore in `x-amz-restore`
    /// (`ongoing-request="false"` once the copy is readable).
    async fn awaits_restore(&self, id: &ObjectId) -> Result<bool, TierError> {
        let Some(head) = self.s3_head(id).await? else {
            return Ok(false);
        };
        let archived = head
            .storage_class()
            .is_some_and(|c| is_archive_class(c.as_str()));
        let restored = head
            .restore()
            .is_some_and(|r| r.contains("ongoing-request=\"false\""));
        Ok(archived && !restored)
    }

    async fn get_stream(
        &self,
        key: &StorePath,
        range: Option<Range<u64>>,
    ) -> Result<BoxStream<'static, Result<Bytes, TierError>>, TierError> {
        let opts = GetOptions {
            range: range.map(GetRange::Bounded),
            ..Default::default()
        };
        let result = self
            .store
            .get_opts(key, opts)
            .await
            .map_err(|e| remote("read", key, e))?;
        let key = key.clone();
        let range = result.range.clone();
        match result.payload {
            GetResultPayload::File(file, path) => Ok(file_chunks(file, path, range)),
            GetResultPayload::Stream(stream) => {
                Ok(stream.map_err(move |e| remote("read", &key, e)).boxed())
            }
        }
    }

    /// Whether this is a `file://` tier, which
    /// [`ColdStore::read_range_local_blocking`] reads.
    pub fn is_local(&self) -> bool {
        self.local.is_some()
    }

    /// Reads `range` of an object of a `file://` tier exactly, on the calling thread
    /// (blocking): one open and positioned reads, so a caller already on the blocking
    /// pool reads a pack member without the two hand-offs of [`ColdStore::read_range`]
    /// (object_store opens, then reads, each on a blocking thread of its own). Errors:
    /// [`TierError::RemoteNotFound`] for a missing object, [`TierError::InvalidRange`]
    /// past its end, [`TierError::Unsupported`] on any other tier.
    pub fn read_range_local_blocking(
        &self,
        id: &ObjectId,
        range: Range<u64>,
    ) -> Result<Vec<u8>, TierError> {
        let local = self.local.as_ref().ok_or_else(|| {
            TierError::Unsupported(format!("{} is not a file:// tier", self.describe))
        })?;
        let key = self.key(id);
        let path = local
            .path_to_filesystem(&key)
            .map_err(|e| remote("read", &key, e))?;
        let file = std::fs::File::open(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => TierError::RemoteNotFound {
                key: key.to_string(),
            },
            _ => TierError::io("open", &path, e),
        })?;
        let invalid = |size| TierError::InvalidRange {
            id: *id,
            start: range.start,
            end: range.end,
            size,
        };
        let want = usize::try_from(
            range
                .end
                .checked_sub(range.start)
                .ok_or_else(|| invalid(0))?,
        )
        .map_err(|_| invalid(0))?;
        let buf =
            read_at_most(&file, want, range.start).map_err(|e| TierError::io("read", &path, e))?;
        if buf.len() < want {
            return Err(invalid(range.start + buf.len() as u64));
        }
        Ok(buf)
    }

    /// Reads `range` exactly: one ranged GET.
    pub async fn read_range(&self, id: &ObjectId, range: Range<u64>) -> Result<Bytes, TierError> {
        if range.start > range.end {
            return Err(TierError::InvalidRange {
                id: *id,
                start: range.start,
                end: range.end,
                size: 0,
            });
        }
        if range.is_empty() {
            self.head(id).await?;
            return Ok(Bytes::new());
        }
        let want = range.end - range.start;
        let mut stream = self.stream_range(id, Some(range.clone())).await?;
        let mut out = Vec::with_capacity(want as usize);
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?);
        }
        if out.len() as u64 != want {
            return Err(TierError::InvalidRange {
                id: *id,
                start: range.start,
                end: range.end,
                size: range.start + out.len() as u64,
            });
        }
        Ok(Bytes::from(out))
    }

    /// The object's storage class (S3 only; `None` elsewhere or when the store reports
    /// none, which S3 does for STANDARD).
    pub async fn storage_class(&self, id: &ObjectId) -> Result<Option<String>, TierError> {
        let head = self.s3_head(id).await?;
        Ok(head.and_then(|h| h.storage_class().map(|c| c.as_str().to_string())))
    }

    /// S3's HEAD of the object (typed: storage class, restore status); `None` when the
    /// store is not S3.
    async fn s3_head(
        &self,
        id: &ObjectId,
    ) -> Result<Option<aws_sdk_s3::operation::head_object::HeadObjectOutput>, TierError> {
        let Some(s3) = &self.s3 else { return Ok(None) };
        let key = self.key(id).to_string();
        let head = s3
            .client
            .head_object()
            .bucket(&s3.bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| sdk_error("look up", &key, e))?;
        Ok(Some(head))
    }

    /// Changes the storage class of a stored object in place (S3 CopyObject onto itself).
    pub async fn set_storage_class(&self, id: &ObjectId, class: &str) -> Result<(), TierError> {
        let Some(s3) = &self.s3 else {
            return Err(TierError::Unsupported(format!(
                "storage class {class}: the cold tier {} is not S3",
                self.describe
            )));
        };
        let key = self.key(id).to_string();
        s3.client
            .copy_object()
            .bucket(&s3.bucket)
            .key(&key)
            .copy_source(format!("{}/{}", s3.bucket, key))
            .storage_class(aws_sdk_s3::types::StorageClass::from(class))
            .metadata_directive(aws_sdk_s3::types::MetadataDirective::Copy)
            .send()
            .await
            .map_err(|e| sdk_error("change the storage class of", &key, e))?;
        Ok(())
    }

    /// Asks S3 to restore an archived object for `days`, and says it is pending. A
    /// restore already in progress is not an error.
    async fn start_restore(&self, id: &ObjectId) -> Result<TierError, TierError> {
        use aws_sdk_s3::error::ProvideErrorMetadata;
        let Some(s3) = &self.s3 else {
            return Ok(TierError::PendingRestore { id: *id });
        };
        let key = self.key(id).to_string();
        let request = aws_sdk_s3::types::RestoreRequest::builder()
            .days(7)
            .glacier_job_parameters(
                aws_sdk_s3::types::GlacierJobParameters::builder()
                    .tier(aws_sdk_s3::types::Tier::Standard)
                    .build()
                    .map_err(|e| sdk_error("restore", &key, e))?,
            )
            .build();
        match s3
            .client
            .restore_object()
            .bucket(&s3.bucket)
            .key(&key)
            .restore_request(request)
            .send()
            .await
        {
            Ok(_) => Ok(TierError::PendingRestore { id: *id }),
            // the SDK's typed error metadata (S3 error code, RestoreObject API reference)
            Err(e) if e.code() == Some("RestoreAlreadyInProgress") => {
                Ok(TierError::PendingRestore { id: *id })
            }
            Err(e) => Err(sdk_error("restore", &key, e)),
        }
    }

    fn named_key(&self, name: &str) -> StorePath {
        if self.prefix.as_ref().is_empty() {
            StorePath::from(name)
        } else {
            StorePath::from(format!("{}/{name}", self.prefix))
        }
    }

    /// Multipart uploads begun under this tier's prefix and never completed nor aborted
    /// (S3 ListMultipartUploads): `(key, upload id, initiated ms since the epoch)`. They
    /// cost storage and hold no pack. Empty for stores without multipart uploads.
    pub async fn incomplete_uploads(&self) -> Result<Vec<(String, String, i64)>, TierError> {
        let Some(s3) = &self.s3 else {
            return Ok(Vec::new());
        };
        let prefix = if self.prefix.as_ref().is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let mut out = Vec::new();
        let (mut key_marker, mut upload_marker) = (None::<String>, None::<String>);
        loop {
            let page = s3
                .client
                .list_multipart_uploads()
                .bucket(&s3.bucket)
                .prefix(&prefix)
                .set_key_marker(key_marker.clone())
                .set_upload_id_marker(upload_marker.clone())
                .send()
                .await
                .map_err(|e| sdk_error("list the multipart uploads of", &prefix, e))?;
            for u in page.uploads() {
                if let (Some(key), Some(id)) = (u.key(), u.upload_id()) {
                    let initiated = u
                        .initiated()
                        .map(|t| t.to_millis().unwrap_or(0))
                        .unwrap_or(0);
                    out.push((key.to_string(), id.to_string(), initiated));
                }
            }
            if page.is_truncated() != Some(true) {
                return Ok(out);
            }
            key_marker = page.next_key_marker().map(str::to_string);
            upload_marker = page.next_upload_id_marker().map(str::to_string);
            if key_marker.is_none() && upload_marker.is_none() {
                return Ok(out);
            }
        }
    }

    /// Aborts one incomplete multipart upload (its parts are freed).
    pub async fn abort_upload(&self, key: &str, upload_id: &str) -> Result<(), TierError> {
        let Some(s3) = &self.s3 else {
            return Ok(());
        };
        s3.client
            .abort_multipart_upload()
            .bucket(&s3.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
            .map_err(|e| sdk_error("abort the multipart upload of", key, e))?;
        Ok(())
    }

    /// For S3, whether the bucket exists and the credentials are accepted, by a typed
    /// HeadBucket answer (404 = no such bucket, 401/403 = credentials refused, no answer =
    /// unreachable or no credentials), said as a [`TierError::Config`] naming the fix. A
    /// filesystem cold tier always passes (its directory is created on first write).
    /// Cheap: one request; `/readyz` uses it.
    pub async fn check_bucket(&self) -> Result<(), TierError> {
        if let Some(s3) = &self.s3 {
            let head = s3.client.head_bucket().bucket(&s3.bucket).send().await;
            if let Err(e) = head {
                let status = match &e {
                    aws_sdk_s3::error::SdkError::ServiceError(se) => {
                        Some(se.raw().status().as_u16())
                    }
                    _ => None,
                };
                let bucket = &s3.bucket;
                let at = &self.describe;
                return Err(TierError::config(match status {
                    Some(404) => format!(
                        "the bucket {bucket} does not exist ({at}): create it first; Strata never creates buckets"
                    ),
                    Some(401 | 403) => format!(
                        "the S3 credentials are refused for the bucket {bucket} ({at}): check \
                         AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or the AWS credential chain) \
                         and the bucket's policy"
                    ),
                    Some(other) => format!("the bucket {bucket} ({at}) answers HTTP {other}"),
                    None if error_chain(&e).contains("169.254.169.254") => format!(
                        "no S3 credentials were found for {at} (the AWS credential chain ended at \
                         the EC2 instance metadata service, which did not give any): set \
                         AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for this command as for the \
                         server"
                    ),
                    None => format!(
                        "no answer from {at}: the endpoint is unreachable, or no S3 credentials \
                         were found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or use the \
                         AWS credential chain): {}",
                        error_chain(&e)
                    ),
                }));
            }
        }
        Ok(())
    }

    /// Checks that the cold tier can be used, and says exactly what is wrong when it
    /// cannot: for S3, the bucket must exist and the credentials must be accepted (a
    /// typed HeadBucket answer: 404 = no such bucket, 403 = credentials refused; no
    /// answer = unreachable or no credentials); then, for every store, a small test
    /// object is written, read back and deleted under `strata-preflight/`.
    pub async fn preflight(&self) -> Result<(), TierError> {
        self.check_bucket().await?;
        // One name per process, and one preflight at a time in it: a probe left by a
        // failure (its delete failed too) is overwritten and deleted by the next one.
        static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let _one = ONE_AT_A_TIME.lock().await;
        let key = self.named_key(&format!("strata-preflight/{}", std::process::id()));
        let probe = Bytes::from_static(b"strata preflight");
        let failed = |step: &str, e: object_store::Error| {
            TierError::config(format!(
                "{}: cannot {step} a test object {key}: {}",
                self.describe,
                error_chain(&e)
            ))
        };
        self.store
            .put(&key, PutPayload::from_bytes(probe.clone()))
            .await
            .map_err(|e| failed("write", e))?;
        let read = match self.store.get(&key).await {
            Ok(got) => got.bytes().await,
            Err(e) => Err(e),
        };
        // delete whatever the read gave
        let deleted = self.store.delete(&key).await;
        let back = read.map_err(|e| failed("read", e))?;
        deleted.map_err(|e| failed("delete", e))?;
        if back != probe {
            return Err(TierError::config(format!(
                "{}: a test object {key} read back different bytes",
                self.describe
            )));
        }
        Ok(())
    }

    /// Stores a small named object (`audit/heads/…`): names come from the caller's code,
    /// never from the network. An existing object of that name is left as it is.
    pub async fn put_named(&self, name: &str, bytes: Bytes) -> Result<(), TierError> {
        let key = self.named_key(name);
        self.put_with(&key, bytes, None).await
    }

    /// Stores a small named object under S3 Object Lock (COMPLIANCE mode) until
    /// `retain_until_ms`, so that nobody can overwrite or delete it before then. Returns
    /// `false`, having stored it without a lock, where the store cannot lock (not S3, or
    /// a bucket without Object Lock).
    pub async fn put_named_locked(
        &self,
        name: &str,
        bytes: Bytes,
        retain_until_ms: i64,
    ) -> Result<bool, TierError> {
        let Some(s3) = &self.s3 else {
            self.put_named(name, bytes).await?;
            return Ok(false);
        };
        self.bucket_for_writes().await?;
        let key = self.named_key(name).to_string();
        let locked = s3
            .client
            .put_object()
            .bucket(&s3.bucket)
            .key(&key)
            .body(bytes.clone().into())
            .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Sha256)
            .object_lock_mode(aws_sdk_s3::types::ObjectLockMode::Compliance)
            .object_lock_retain_until_date(aws_smithy_types::DateTime::from_millis(retain_until_ms))
            .send()
            .await;
        match locked {
            Ok(_) => Ok(true),
            Err(e) => {
                tracing::warn!(key, error = %error_chain(&e), "object lock refused; storing without it");
                self.put_named(name, bytes).await?;
                Ok(false)
            }
        }
    }

    /// A small named object's content, or `None` when there is none of that name (one
    /// GET: no listing, so a lagging LIST does not hide it).
    pub async fn get_named(&self, name: &str) -> Result<Option<Bytes>, TierError> {
        let key = self.named_key(name);
        match self.store.get(&key).await {
            Ok(got) => Ok(Some(
                got.bytes().await.map_err(|e| remote("read", &key, e))?,
            )),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(remote("read", &key, e)),
        }
    }

    /// Every named object under `prefix`, with its content, in key order.
    pub async fn get_named_under(&self, prefix: &str) -> Result<Vec<(String, Bytes)>, TierError> {
        let key = self.named_key(prefix);
        let mut metas: Vec<_> = self
            .store
            .list(Some(&key))
            .try_collect()
            .await
            .map_err(|e| remote("list", &key, e))?;
        metas.sort_by(|a, b| a.location.cmp(&b.location));
        let mut out = Vec::new();
        for m in metas {
            let bytes = self
                .store
                .get(&m.location)
                .await
                .map_err(|e| remote("read", &m.location, e))?
                .bytes()
                .await
                .map_err(|e| remote("read", &m.location, e))?;
            out.push((m.location.to_string(), bytes));
        }
        Ok(out)
    }

    /// Every object in the tier with its size and modification time (ms since the epoch).
    /// Keys that are not Strata objects are skipped.
    pub async fn list_detailed(&self) -> Result<Vec<(ObjectId, u64, i64)>, TierError> {
        let prefix = self.under_prefix(self.namespace.dir.to_string());
        let metas: Vec<_> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| remote("list", &prefix, e))?;
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                self.id_of_key(&m.location)
                    .map(|id| (id, m.size, m.last_modified.timestamp_millis()))
            })
            .collect())
    }
}

/// Builds the aws-sdk-s3 client for the control plane, with the same endpoint, region
/// and credentials as the data plane (object_store's credential chain).
fn sdk_client(spec: &ColdSpec, region: &str, s3: &AmazonS3) -> aws_sdk_s3::Client {
    use aws_sdk_s3::config::{
        Region, RequestChecksumCalculation, ResponseChecksumValidation,
        StalledStreamProtectionConfig,
    };
    let mut config = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .force_path_style(spec.path_style)
        .credentials_provider(BridgedCredentials(s3.credentials().clone()))
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .stalled_stream_protection(StalledStreamProtectionConfig::disabled())
        .timeout_config(
            aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                .operation_timeout(spec.timeout)
                .build(),
        );
    if let Some(endpoint) = &spec.endpoint {
        config = config.endpoint_url(endpoint);
    }
    aws_sdk_s3::Client::from_conf(config.build())
}

/// object_store's AWS credential chain (environment, web identity, ECS, IMDS) offered to
/// aws-sdk-s3, so both planes sign with the same credentials.
#[derive(Debug)]
struct BridgedCredentials(object_store::aws::AwsCredentialProvider);

impl aws_sdk_s3::config::ProvideCredentials for BridgedCredentials {
    fn provide_credentials<'a>(
        &'a self,
    ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        aws_credential_types::provider::future::ProvideCredentials::new(async move {
            let c = self.0.get_credential().await.map_err(|e| {
                aws_credential_types::provider::error::CredentialsError::provider_error(e)
            })?;
            Ok(aws_sdk_s3::config::Credentials::new(
                c.key_id.clone(),
                c.secret_key.clone(),
                c.token.clone(),
                None,
                "object_store",
            ))
        })
    }
}

#[async_trait::async_trait]
impl BlobStore for ColdStore {
    async fn put(&self, id: &ObjectId, bytes: Bytes) -> Result<PutOutcome, TierError> {
        check_content_address(id, &bytes)?;
        let key = self.key(id);
        if self.exists(&key).await? {
            return Ok(PutOutcome::AlreadyPresent);
        }
        self.put_with(&key, bytes, None).await?;
        Ok(PutOutcome::Stored)
    }

    async fn get(&self, id: &ObjectId) -> Result<Bytes, TierError> {
        let mut stream = self
            .stream_range(id, None)
            .await
            .map_err(|e| e.for_id(id))?;
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(Bytes::from(out))
    }

    async fn get_range(&self, id: &ObjectId, range: Range<u64>) -> Result<Bytes, TierError> {
        self.read_range(id, range).await.map_err(|e| e.for_id(id))
    }

    async fn head(&self, id: &ObjectId) -> Result<ObjectMeta, TierError> {
        let key = self.key(id);
        let meta = self
            .store
            .head(&key)
            .await
            .map_err(|e| remote("look up", &key, e).for_id(id))?;
        Ok(ObjectMeta {
            id: *id,
            size: meta.size,
        })
    }

    async fn delete(&self, id: &ObjectId) -> Result<(), TierError> {
        let key = self.key(id);
        match self.store.delete(&key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(remote("delete", &key, e)),
        }
    }

    async fn list(&self) -> Result<Vec<ObjectId>, TierError> {
        Ok(self
            .list_detailed()
            .await?
            .into_iter()
            .map(|(id, _, _)| id)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `file://` cold tier under `dir`.
    fn file_tier(dir: &tempfile::TempDir) -> ColdStore {
        ColdStore::open(&ColdSpec {
            url: format!("file://{}", dir.path().join("cold").display()),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn virtual_hosted_requests_address_the_configured_bucket() {
        // issue 12: with path_style = false, keys must not be sent to the endpoint's root,
        // where their first segment would be taken for the bucket
        assert_eq!(
            virtual_hosted_endpoint("https://s3.example.org:9000", "strata-cold").unwrap(),
            "https://strata-cold.s3.example.org:9000"
        );
        assert_eq!(
            virtual_hosted_endpoint("https://strata-cold.s3.example.org/", "strata-cold").unwrap(),
            "https://strata-cold.s3.example.org"
        );
        let e = virtual_hosted_endpoint("http://127.0.0.1:9000", "strata-cold").unwrap_err();
        assert!(e.to_string().contains("path_style = true"), "{e}");
    }

    #[tokio::test]
    async fn in_memory_cold_store_passes_conformance() {
        crate::conformance::run_suite(&ColdStore::in_memory()).await;
    }

    #[tokio::test]
    async fn local_filesystem_cold_store_passes_conformance() {
        let dir = tempfile::tempdir().unwrap();
        crate::conformance::run_suite(&file_tier(&dir)).await;
    }

    #[tokio::test]
    async fn a_file_tier_streams_ranges_in_large_chunks_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let store = file_tier(&dir);
        let bytes: Vec<u8> = (0..(3 * FILE_CHUNK as usize + 1000))
            .map(|i| (i % 251) as u8)
            .collect();
        let id = ObjectId::of_bytes(&bytes);
        store.put(&id, Bytes::from(bytes.clone())).await.unwrap();
        let chunks_of = |range: Range<u64>| {
            let store = store.clone();
            async move {
                let chunks: Vec<Bytes> = store
                    .stream_range(&id, Some(range))
                    .await
                    .unwrap()
                    .try_collect()
                    .await
                    .unwrap();
                chunks
            }
        };
        // a span across chunk boundaries: FILE_CHUNK per read (not 8 KiB), the bytes exact
        let (start, end) = (FILE_CHUNK - 7, 3 * FILE_CHUNK + 500);
        let chunks = chunks_of(start..end).await;
        assert_eq!(
            chunks.len(),
            3,
            "{:?}",
            chunks.iter().map(Bytes::len).collect::<Vec<_>>()
        );
        assert_eq!(chunks.concat(), bytes[start as usize..end as usize]);
        // the whole object, and a small member as one chunk
        assert_eq!(
            store
                .stream_range(&id, None)
                .await
                .unwrap()
                .try_collect::<Vec<_>>()
                .await
                .unwrap()
                .concat(),
            bytes
        );
        assert_eq!(
            chunks_of(10..20).await,
            vec![Bytes::copy_from_slice(&bytes[10..20])]
        );
        // a range past the end of the file is refused, as object_store's own stream does
        let past = store.read_range(&id, 10..bytes.len() as u64 + 5).await;
        assert!(past.is_err(), "{past:?}");

        // the same reads on the calling thread agree with object_store's
        assert!(store.is_local() && !ColdStore::in_memory().is_local());
        assert_eq!(
            store.read_range_local_blocking(&id, start..end).unwrap(),
            store.read_range(&id, start..end).await.unwrap()
        );
        assert!(matches!(
            store.read_range_local_blocking(&id, 10..bytes.len() as u64 + 5),
            Err(TierError::InvalidRange { size, .. }) if size == bytes.len() as u64
        ));
        let missing = ObjectId::of_bytes(b"never stored");
        assert!(matches!(
            store.read_range_local_blocking(&missing, 0..1),
            Err(TierError::RemoteNotFound { .. })
        ));
        assert!(matches!(
            ColdStore::in_memory().read_range_local_blocking(&id, 0..1),
            Err(TierError::Unsupported(_))
        ));
    }

    #[tokio::test]
    async fn replicas_are_a_namespace_of_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let packs = file_tier(&dir);
        let replicas = packs.replicas();
        crate::conformance::run_suite(&replicas).await;
        for id in replicas.list().await.unwrap() {
            replicas.delete(&id).await.unwrap();
        }
        let bytes = Bytes::from_static(b"a Part-10 object");
        let id = ObjectId::of_bytes(&bytes);
        replicas.put(&id, bytes.clone()).await.unwrap();
        assert!(
            packs.list().await.unwrap().is_empty(),
            "packs see no replica"
        );
        assert_eq!(replicas.list().await.unwrap(), vec![id]);
        let hex = id.to_hex();
        let file = dir
            .path()
            .join(format!("cold/objects/{}/{hex}.dcm", &hex[..2]));
        assert_eq!(std::fs::read(file).unwrap(), bytes, "the object as stored");
        assert_eq!(replicas.verify(&id).await.unwrap(), bytes.len() as u64);
    }

    #[tokio::test]
    async fn put_file_uploads_in_parts_and_refuses_a_wrong_id() {
        let dir = tempfile::tempdir().unwrap();
        let store = file_tier(&dir);
        let head = Bytes::from_static(b"head of the object");
        let body: Vec<u8> = (0..(MULTIPART_THRESHOLD as usize + 12345))
            .map(|i| (i % 253) as u8)
            .collect();
        let body_path = dir.path().join("body");
        std::fs::write(&body_path, &body).unwrap();
        let mut whole = head.to_vec();
        whole.extend_from_slice(&body);
        let id = ObjectId::of_bytes(&whole);

        let wrong = ObjectId::of_bytes(b"not it");
        assert!(matches!(
            store
                .put_file(&wrong, head.clone(), &body_path, None)
                .await
                .unwrap_err(),
            TierError::HashMismatch { .. }
        ));
        assert!(store.list().await.unwrap().is_empty());

        assert_eq!(
            store
                .put_file(&id, head.clone(), &body_path, None)
                .await
                .unwrap(),
            PutOutcome::Stored
        );
        assert_eq!(
            store.put_file(&id, head, &body_path, None).await.unwrap(),
            PutOutcome::AlreadyPresent
        );
        assert_eq!(store.verify(&id).await.unwrap(), whole.len() as u64);
        assert_eq!(
            store.read_range(&id, 5..100).await.unwrap(),
            Bytes::copy_from_slice(&whole[5..100])
        );
    }
}

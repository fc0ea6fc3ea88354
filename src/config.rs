//! Configuration: a TOML file read into [`Config`], every field defaulted, unknown keys an
//! error (a misspelt key silently ignored is how a PACS admin loses an afternoon).
//!
//! Secrets never live here: later S3 credentials come from the environment. The
//! documented example with every key is `config/strata.toml`; `strata config` prints the
//! effective configuration.

use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub archive: ArchiveConfig,
    pub dicom: DicomConfig,
    pub http: HttpConfig,
    pub ingest: IngestConfig,
    pub cold: ColdConfig,
    pub tiering: TieringConfig,
    pub audit: AuditConfig,
    pub scrub: ScrubConfig,
    pub retention: RetentionConfig,
    pub web: WebConfig,
    pub tls: TlsConfig,
    pub auth: AuthConfig,
    pub access: AccessConfig,
    pub hl7: Hl7Config,
    pub prefetch: PrefetchConfig,
    pub patients: PatientsConfig,
    pub index: IndexConfig,
    pub cluster: ClusterConfig,
}

/// This node among the nodes that share one index and one cold bucket (`[cluster]`,
/// docs/scale-out.md). A single archive is a cluster of one.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// The node's name, unique among the nodes and stable across restarts (its hot
    /// disk's objects are known by it); empty: the host name.
    pub node_id: String,
    /// When a store is acknowledged: `local` (after this node's fsync and the index
    /// commit; a replica follows within a bounded lag on nodes that replicate), or
    /// `replicated` (only once a replica in the cold tier is written, read back and
    /// recorded: a second durable copy off this node's disk). docs/scale-out.md.
    pub ack_after: AckAfter,
    /// How often the node records that it is alive; one silent for three of these is
    /// shown down (`strata cluster status`).
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// A file holding the secret the nodes share (at least 32 bytes, not readable by
    /// others): each node signs its requests to another node's internal route
    /// (`/internal/objects/{id}`, docs/scale-out.md) with it. Empty: no internal route,
    /// and an object hot only on another node is read from its cold copy.
    pub secret_file: PathBuf,
    /// The base URL other nodes reach this node's HTTP port at (`http://10.0.0.5:8042`);
    /// empty: `http(s)://` + `[http] bind` (the host name when it binds every address)
    /// + `:` + `[http] port`.
    pub advertise_url: String,
    /// How long a node's lease on a job (moving a study to cold, an orphan scan) lasts
    /// unless renewed; the holder renews it every third of this while it works, so a
    /// dead node's job is taken by another within this time.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            node_id: String::new(),
            ack_after: AckAfter::Local,
            heartbeat: Duration::from_secs(10),
            secret_file: PathBuf::new(),
            advertise_url: String::new(),
            lease: Duration::from_secs(60),
        }
    }
}

/// When a store is acknowledged (`[cluster] ack_after`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckAfter {
    Local,
    Replicated,
}

impl Config {
    /// Whether this node writes a replica of each object it receives to the cold tier
    /// (docs/scale-out.md "Durability across nodes"): on a shared (PostgreSQL) index,
    /// where another node must be able to serve what this one acked if its disk is lost,
    /// and whenever `[cluster] ack_after = "replicated"`. An archive of one node on
    /// RocksDB relies on its own disk until its studies age to cold.
    pub fn replicates(&self) -> bool {
        self.index.backend == IndexBackend::Postgres
            || self.cluster.ack_after == AckAfter::Replicated
    }
}

impl ClusterConfig {
    /// The node id: `node_id`, else the host name, else `node`.
    pub fn node(&self) -> String {
        if !self.node_id.trim().is_empty() {
            return self.node_id.trim().to_string();
        }
        host_name().unwrap_or_else(|| "node".to_string())
    }

    /// The shared secret of the nodes' internal route, from `secret_file`: `None` when
    /// unset; refused when others may read the file or it holds under 32 bytes.
    pub fn secret(&self) -> Result<Option<Vec<u8>>, ConfigError> {
        if self.secret_file.as_os_str().is_empty() {
            return Ok(None);
        }
        let secret = read_private_file(&self.secret_file, "[cluster] secret_file")?;
        let secret = secret.trim_ascii_end().to_vec();
        if secret.len() < 32 {
            return Err(ConfigError::Invalid(format!(
                "[cluster] secret_file {} holds {} bytes; it needs at least 32 (say, `head -c 48 /dev/urandom | base64`)",
                self.secret_file.display(),
                secret.len()
            )));
        }
        Ok(Some(secret))
    }

    /// The base URL other nodes reach this node at (`advertise_url`, or one made of
    /// `[http]`), without a trailing slash.
    pub fn advertise(&self, http: &HttpConfig) -> String {
        if !self.advertise_url.trim().is_empty() {
            return self.advertise_url.trim().trim_end_matches('/').to_string();
        }
        let scheme = if http.tls { "https" } else { "http" };
        let host = if http.bind.is_unspecified() {
            self.node_host()
        } else if http.bind.is_ipv6() {
            format!("[{}]", http.bind)
        } else {
            http.bind.to_string()
        };
        format!("{scheme}://{host}:{}", http.port)
    }

    fn node_host(&self) -> String {
        host_name().unwrap_or_else(|| "localhost".to_string())
    }
}

/// The machine's host name (`/proc/sys/kernel/hostname`), read once per process: every
/// store's provenance names its node, and a renamed host is a new node only after a
/// restart.
fn host_name() -> Option<String> {
    static HOST: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    HOST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
    })
    .clone()
}

/// The bytes of a file that holds a secret, refused when others may read it.
fn read_private_file(path: &Path, what: &str) -> Result<Vec<u8>, ConfigError> {
    let meta = std::fs::metadata(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    use std::os::unix::fs::PermissionsExt;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(ConfigError::Invalid(format!(
            "{what} {} may be read by others: chmod 600 it",
            path.display()
        )));
    }
    std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Where the index lives (`[index]`): RocksDB under the data directory (the embedded
/// default), or a PostgreSQL database that several nodes share (docs/scale-out.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IndexConfig {
    pub backend: IndexBackend,
    /// For `postgres`: a libpq-style connection string, several hosts allowed
    /// (`postgresql://strata@db1:5432,db2:5432/strata?target_session_attrs=read-write`).
    /// No password in it: `PGPASSWORD`, or `password_file`.
    pub url: String,
    /// For `postgres`: a file holding the password (not world-readable); empty:
    /// `PGPASSWORD`, else none.
    pub password_file: PathBuf,
    /// For `postgres` with `sslmode=require` (or `verify-ca`, `verify-full`) in `url`:
    /// the CA certificates (PEM) the server's certificate must chain to; empty: the
    /// system's roots. The server's certificate is always verified, and must name the
    /// host dialled.
    pub ca_file: PathBuf,
}

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig {
            backend: IndexBackend::Rocksdb,
            url: String::new(),
            password_file: PathBuf::new(),
            ca_file: PathBuf::new(),
        }
    }
}

/// The index's engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IndexBackend {
    Rocksdb,
    Postgres,
}

impl IndexConfig {
    /// The password of the PostgreSQL index: from `password_file` (refused when others
    /// may read it), else `PGPASSWORD`, else none.
    /// The CA file of the PostgreSQL server's certificate, when set.
    pub fn ca(&self) -> Option<&Path> {
        (!self.ca_file.as_os_str().is_empty()).then_some(self.ca_file.as_path())
    }

    pub fn password(&self) -> Result<Option<String>, ConfigError> {
        if self.password_file.as_os_str().is_empty() {
            return Ok(std::env::var("PGPASSWORD").ok().filter(|p| !p.is_empty()));
        }
        let bytes = read_private_file(&self.password_file, "[index] password_file")?;
        let text = String::from_utf8(bytes).map_err(|_| {
            ConfigError::Invalid(format!(
                "[index] password_file {} is not UTF-8",
                self.password_file.display()
            ))
        })?;
        Ok(Some(text.trim_end_matches(['\n', '\r']).to_string()))
    }
}

/// Who issued the PatientIDs of senders whose data sets do not say
/// (IssuerOfPatientID (0010,0021) absent): a patient is its (PatientID, issuer) pair
/// (docs/patients.md "The identity model").
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PatientsConfig {
    /// The issuer of every sender without its own entry below; empty: unknown.
    pub default_issuer: String,
    /// Per sending AE title (C-STORE's calling AE).
    pub issuer: Vec<AeIssuer>,
}

/// `[[patients.issuer]]`: the issuer of the PatientIDs one sender sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AeIssuer {
    pub calling_ae: String,
    pub issuer: String,
}

impl PatientsConfig {
    /// The issuer to assume for a data set without IssuerOfPatientID sent by
    /// `calling_ae` (an AE title; `import`, a web service name for other paths).
    pub fn issuer_for(&self, calling_ae: &str) -> Option<&str> {
        self.issuer
            .iter()
            .find(|a| a.calling_ae.trim() == calling_ae.trim())
            .map(|a| a.issuer.as_str())
            .or(Some(self.default_issuer.as_str()))
            .filter(|i| !i.is_empty())
    }

    /// Whether any default is configured.
    pub fn any(&self) -> bool {
        !self.default_issuer.is_empty() || !self.issuer.is_empty()
    }
}

/// Prior prefetch on orders (HL7 ORM^O01, OMI^O23; [`crate::archive::prefetch`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrefetchConfig {
    /// Act on orders at all (off: they are answered AR).
    pub enabled: bool,
    /// How many of the patient's most recent studies count as priors.
    pub max_studies: usize,
    /// Only studies with one of these modalities (ModalitiesInStudy); empty: any.
    pub modalities: Vec<String>,
    /// Only studies no older than this (StudyDate); "0s": any age.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
}

impl Default for PrefetchConfig {
    fn default() -> Self {
        PrefetchConfig {
            enabled: true,
            max_studies: 3,
            modalities: Vec::new(),
            max_age: Duration::from_secs(5 * 365 * 86400),
        }
    }
}

/// The HL7 v2 listener (MLLP): the hospital's ADT feed of patient identity changes
/// ([`crate::hl7`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Hl7Config {
    /// TCP port of the MLLP listener; 0 (the default) = off.
    pub port: u16,
    /// Address to listen on: loopback by default, for the feed changes patients'
    /// identities and carries no authentication of its own (put the interface
    /// engine's address here, and firewall the port to it).
    pub bind: IpAddr,
    /// Largest message accepted, in KiB; a longer one ends its connection.
    pub max_message_kb: usize,
    /// Serve MLLP over TLS (1.2 and 1.3) with the `[tls]` certificate and key; with
    /// `[tls] client_ca_file`, the interface engine must present a certificate.
    pub tls: bool,
    /// A connection silent this long between messages is closed (interface engines
    /// reconnect).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
}

impl Default for Hl7Config {
    fn default() -> Self {
        Hl7Config {
            port: 0,
            bind: IpAddr::from([127, 0, 0, 1]),
            max_message_kb: 1024,
            tls: false,
            idle_timeout: Duration::from_secs(600),
        }
    }
}

/// Bearer tokens for the web APIs (DICOMweb, WADO-URI, FHIR, the viewer's calls, the
/// admin API): JWTs from an OIDC issuer ([`crate::oidc`], docs/security.md "Tokens").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The issuer (`iss`) tokens must name, e.g. `https://login.hospital.org/realms/pacs`.
    /// Empty: tokens are off and web clients get `[access] web_anonymous`.
    pub issuer: String,
    /// The issuer's JWKS (its signing keys). Empty: taken from the issuer's discovery
    /// document, `<issuer>/.well-known/openid-configuration` (`jwks_uri`).
    pub jwks_url: String,
    /// The audience (`aud`) tokens must be issued for.
    pub audience: String,
    /// How long fetched keys are used before they are fetched again (an unknown `kid`
    /// fetches them at once, at most once per 30 s).
    #[serde(with = "humantime_serde")]
    pub jwks_refresh: Duration,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// The claim listing Strata role names (a JSON array or a space-separated string);
    /// dots descend into objects (`realm_access.roles` for Keycloak).
    pub roles_claim: String,
    /// The claim naming the one patient a token is restricted to (a PatientID, or the
    /// FHIR Patient.id Strata gives it); SMART's launch context is `patient`.
    pub patient_claim: String,
    /// PEM bundle of extra CAs trusted for an https issuer (besides the system's).
    pub ca_file: PathBuf,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            issuer: String::new(),
            jwks_url: String::new(),
            audience: "strata".into(),
            jwks_refresh: Duration::from_secs(600),
            leeway: Duration::from_secs(30),
            roles_claim: "roles".into(),
            patient_claim: "patient".into(),
            ca_file: PathBuf::new(),
        }
    }
}

impl AuthConfig {
    /// Whether bearer tokens are required on the web APIs.
    pub fn enabled(&self) -> bool {
        !self.issuer.trim().is_empty()
    }
}

/// Which roles callers that carry no token get (docs/security.md "Roles").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    /// Roles of a DICOM peer that no `[[access.dicom]]` rule names.
    pub dicom_default: crate::roles::Roles,
    /// Roles of web clients while tokens are off (`[auth] issuer` empty).
    pub web_anonymous: crate::roles::Roles,
    /// Roles of the admin API's loopback callers while tokens are off (with tokens on,
    /// the admin API wants a token with the `admin` role).
    pub admin_loopback: crate::roles::Roles,
    /// DICOM callers by AE title and/or certificate subject; the first rule that matches
    /// gives the roles.
    pub dicom: Vec<DicomAccessRule>,
}

impl Default for AccessConfig {
    fn default() -> Self {
        use crate::roles::{Role, Roles};
        let open = Roles::of(&[Role::Viewer, Role::Uploader]);
        AccessConfig {
            dicom_default: open,
            web_anonymous: open,
            admin_loopback: Roles::ALL,
            dicom: Vec::new(),
        }
    }
}

/// One `[[access.dicom]]` rule: a caller matches when every field set matches.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DicomAccessRule {
    /// The calling AE title (trailing spaces ignored).
    #[serde(default)]
    pub ae_title: String,
    /// The client certificate's subject, RFC 4514 form as Strata prints it
    /// (`CN=ct1,O=Clinic`).
    #[serde(default)]
    pub certificate: String,
    pub roles: crate::roles::Roles,
}

/// TLS material shared by the HTTPS endpoint (`[http] tls`) and the DICOM TLS port:
/// paths only, never the secrets themselves ([`crate::tls`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain of this server, the leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1); refused when world-readable.
    pub key_file: PathBuf,
    /// PEM bundle of the CAs whose client certificates are accepted. Set: every TLS
    /// client must present one (mutual TLS). Empty: no client certificates.
    pub client_ca_file: PathBuf,
    /// PEM bundle of the CAs that sign the certificates of peers Strata connects to over
    /// TLS (C-MOVE destinations with `tls = true`). Required by such a peer.
    pub peer_ca_file: PathBuf,
}

/// The zero-footprint viewer (OHIF) served same-origin on the HTTP port.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// Serve the viewer: `http://HOST:PORT/viewer?StudyInstanceUIDs=<uid>` opens a study.
    pub viewer: bool,
    /// The viewer's prebuilt `dist/` (OHIF, fetched by `scripts/install-viewer.sh`, never
    /// committed). Strata answers its `app-config.js` itself, pointed at `/dicom-web`.
    pub viewer_dir: PathBuf,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            viewer: true,
            viewer_dir: PathBuf::from("/usr/local/share/strata/viewer"),
        }
    }
}

/// Retention rules (off by default): `strata retention run` deletes, with a tombstone
/// and an audit record each, the studies they select, never one under a legal hold.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Studies whose StudyDate is older than this are deleted; "0s" disables. Studies
    /// without a valid StudyDate are never deleted by retention.
    #[serde(with = "humantime_serde")]
    pub study_age: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            study_age: Duration::ZERO,
        }
    }
}

/// The continuous fixity check of `strata serve`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScrubConfig {
    pub enabled: bool,
    /// Every object in every tier is re-hashed once per cycle.
    #[serde(with = "humantime_serde")]
    pub cycle: Duration,
    /// Reads never exceed this many MB/s (10^6 bytes).
    pub max_mb_per_s: u64,
}

impl Default for ScrubConfig {
    fn default() -> Self {
        ScrubConfig {
            enabled: true,
            cycle: Duration::from_secs(30 * 86400),
            max_mb_per_s: 50,
        }
    }
}

/// The audit log.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Record every store, query, retrieve, export, tier move and verify.
    pub enabled: bool,
    /// How often `strata serve` copies the chain head to the cold tier (and at stop).
    #[serde(with = "humantime_serde")]
    pub anchor_interval: Duration,
    /// Keep each anchor under S3 Object Lock (COMPLIANCE) for this many days, where the
    /// bucket has Object Lock enabled; 0: no lock.
    pub anchor_lock_days: u32,
    /// Refuse access to pixel data (C-MOVE, C-GET, WADO-RS, WADO-URI) when its
    /// audit record cannot be written and synced first. Off: the access goes on, and the
    /// failure is logged as `AUDIT RECORD NOT WRITTEN`.
    pub fail_closed: bool,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            enabled: true,
            anchor_interval: Duration::from_secs(600),
            anchor_lock_days: 0,
            fail_closed: true,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// Root of the archive: `hot/` objects, `index/` (RocksDB), the lock file.
    pub data_dir: PathBuf,
    /// Refuse stores (0xA700) while the hot filesystem has fewer free MiB than this.
    pub min_free_space_mb: u64,
    /// What to do when a known SOP Instance UID arrives with different bytes.
    pub on_conflicting_version: ConflictPolicy,
}

/// What to do when a known SOP Instance UID arrives with different bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConflictPolicy {
    /// Store it as a new version; every version is kept and the newest is served.
    Keep,
    /// Refuse it (status 0x0111, Duplicate SOP Instance); the stored version stays.
    Reject,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DicomConfig {
    /// Our AE title; associations calling another AE title are rejected.
    pub ae_title: String,
    /// TCP port of the plain DICOM listener; 0 = none (DICOM over TLS only).
    pub port: u16,
    /// Address to listen on.
    pub bind: IpAddr,
    /// TCP port of the DICOM TLS listener (PS3.15 B.1, the `[tls]` files; conventionally
    /// 2762); 0 = none.
    pub tls_port: u16,
    /// If not empty, only these calling AE titles may associate.
    pub allowed_calling_ae_titles: Vec<String>,
    /// If not empty, only these peer IP addresses may connect.
    pub allowed_addresses: Vec<IpAddr>,
    /// Cap on concurrent associations; extra ones are rejected (transient, local limit).
    pub max_associations: usize,
    /// Largest PDU we accept (bytes); longer PDUs abort the association.
    pub max_pdu_length: u32,
    /// Association negotiation and per-PDU read timeout.
    #[serde(with = "humantime_serde")]
    pub read_timeout: Duration,
    /// Timeout for writing a PDU to the peer.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// An association idle this long between messages is aborted.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Largest object (data set) accepted over the network, in MiB; a larger one aborts
    /// its association.
    pub max_object_mb: u64,
    /// Associations a C-MOVE opens to its destination at once, sharing the instances.
    pub move_associations: usize,
    /// Known DICOM nodes: the C-MOVE destinations (`[[dicom.peers]]`).
    pub peers: Vec<PeerConfig>,
    /// Accept C-STORE for SOP classes that are not in the standard dictionary (private
    /// vendor classes). Standard non-storage classes are never accepted for C-STORE.
    pub accept_private_sop_classes: bool,
}

/// A DICOM node Strata may open associations to (a C-MOVE destination).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub ae_title: String,
    /// Host name or IP address; over TLS, the name its certificate must carry.
    pub host: String,
    pub port: u16,
    /// Reach this peer over DICOM TLS (PS3.15 B.1), verifying its certificate against
    /// `[tls] peer_ca_file` and presenting `[tls] cert_file` as the client certificate.
    #[serde(default)]
    pub tls: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// TCP port for `/metrics` and `/healthz`.
    pub port: u16,
    /// Address to listen on.
    pub bind: IpAddr,
    /// Serve HTTPS on `port` with the `[tls]` certificate and key (TLS 1.2 and 1.3).
    pub tls: bool,
    /// With `tls`: also serve plain HTTP on 127.0.0.1 at this port (0 = off), for the
    /// CLI's admin client and local probes. Never on another address.
    pub loopback_port: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Most instances made durable by one group commit (one sync, one index batch).
    pub max_commit_batch: usize,
    /// Parallel workers for `strata import` (0 = number of CPUs).
    pub import_workers: usize,
    /// Make small commit groups durable through the ingest journal: one `fdatasync` of a
    /// preallocated segment instead of syncing each file, its directory and the index
    /// (docs/architecture.md "The ingest journal"). Off: every group is synced in place.
    pub journal: bool,
    /// How often (milliseconds) the journal is checkpointed while stores come in: what
    /// was applied since is synced in place and its segments freed for reuse.
    pub journal_checkpoint_ms: u64,
}

/// The cold tier: where study packs go. Credentials are never read from here: they come
/// from the standard AWS environment variables and credential chain.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ColdConfig {
    /// `s3://bucket/prefix` or `file:///path`; empty means `<data_dir>/cold`.
    pub url: String,
    /// S3 endpoint of an S3-compatible server; empty means AWS.
    pub endpoint: String,
    pub region: String,
    /// Allow plain HTTP to the endpoint (loopback test servers only).
    pub allow_http: bool,
    /// Path-style requests (`endpoint/bucket/key`), as most S3-compatible servers need.
    pub path_style: bool,
    /// Storage class of new packs (S3 only): STANDARD, STANDARD_IA, GLACIER_IR, GLACIER
    /// or DEEP_ARCHIVE.
    pub storage_class: String,
    /// Timeout of one request to the cold tier.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How long `/readyz` reuses the cold tier's last answer (each fresh answer costs 3
    /// requests); "0s" asks at every probe.
    #[serde(with = "humantime_serde")]
    pub readiness_interval: Duration,
    /// The most of a pack (MiB, as stored) one ranged GET reads for a retrieval: the
    /// member asked for and those of the same pack the retrieval reads around it
    /// ([`crate::tiering::ahead`]); 0 reads each member by itself; at most 64 (more is
    /// taken as 64). A `file://` tier always reads members singly.
    pub read_window_mb: u64,
}

/// When studies move between tiers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TieringConfig {
    /// Run the tiering worker inside `strata serve`.
    pub enabled: bool,
    /// A study not accessed (stored, retrieved, exported) for this long moves to cold.
    /// Unlike `archive_after` and `study_age`, "0s" is not "never": it moves every study
    /// at the next pass. To keep studies hot, set `enabled = false` or a long age.
    #[serde(with = "humantime_serde")]
    pub hot_max_age: Duration,
    /// How often the worker looks for due work.
    #[serde(with = "humantime_serde")]
    pub scan_interval: Duration,
    /// Above this use of the hot filesystem (percent), the least recently accessed
    /// studies move to cold early, until use is below `hot_low_watermark_percent`.
    pub hot_high_watermark_percent: u8,
    pub hot_low_watermark_percent: u8,
    /// A study whose objects exceed this many MiB spans several packs.
    pub pack_max_mb: u64,
    /// zstd level for pack members (1-19); members that do not shrink are stored raw.
    pub zstd_level: i32,
    /// Packs older than this move to `archive_storage_class` (S3 only); "0s" disables.
    #[serde(with = "humantime_serde")]
    pub archive_after: Duration,
    pub archive_storage_class: String,
    /// Uploads nobody recorded (a crash between upload and record) older than this are
    /// deleted from the cold tier.
    #[serde(with = "humantime_serde")]
    pub orphan_grace: Duration,
    /// How often the background worker looks for unrecorded uploads and incomplete
    /// multipart uploads (a LIST of the whole bucket); `strata tier run` always does.
    #[serde(with = "humantime_serde")]
    pub orphan_scan_interval: Duration,
    /// Longest wait between retries while the cold tier fails.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
}

impl Default for ColdConfig {
    fn default() -> Self {
        ColdConfig {
            url: String::new(),
            endpoint: String::new(),
            region: "us-east-1".into(),
            allow_http: false,
            path_style: true,
            storage_class: "STANDARD".into(),
            request_timeout: Duration::from_secs(30),
            readiness_interval: Duration::from_secs(30),
            read_window_mb: 8,
        }
    }
}

impl Default for TieringConfig {
    fn default() -> Self {
        TieringConfig {
            enabled: true,
            hot_max_age: Duration::from_secs(30 * 86400),
            scan_interval: Duration::from_secs(60),
            hot_high_watermark_percent: 90,
            hot_low_watermark_percent: 80,
            pack_max_mb: 1024,
            zstd_level: 3,
            archive_after: Duration::ZERO,
            archive_storage_class: "DEEP_ARCHIVE".into(),
            orphan_grace: Duration::from_secs(3600),
            orphan_scan_interval: Duration::from_secs(86400),
            max_backoff: Duration::from_secs(300),
        }
    }
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            data_dir: PathBuf::from("./strata-data"),
            min_free_space_mb: 1024,
            on_conflicting_version: ConflictPolicy::Keep,
        }
    }
}

impl Default for DicomConfig {
    fn default() -> Self {
        DicomConfig {
            ae_title: "STRATA".into(),
            port: 11112,
            bind: IpAddr::from([0, 0, 0, 0]),
            tls_port: 0,
            allowed_calling_ae_titles: Vec::new(),
            allowed_addresses: Vec::new(),
            max_associations: 64,
            max_pdu_length: 262_144,
            read_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(300),
            max_object_mb: 4096,
            move_associations: 4,
            peers: Vec::new(),
            accept_private_sop_classes: true,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            port: 8080,
            bind: IpAddr::from([0, 0, 0, 0]),
            tls: false,
            loopback_port: 0,
        }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            max_commit_batch: 64,
            import_workers: 0,
            journal: true,
            journal_checkpoint_ms: 100,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads and validates a config file; `None` gives the built-in defaults.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let config = match path {
            None => Config::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                Config::from_toml(&text).map_err(|e| match e {
                    ConfigError::Parse { source, .. } => ConfigError::Parse {
                        path: path.to_path_buf(),
                        source,
                    },
                    other => other,
                })?
            }
        };
        Ok(config)
    }

    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: PathBuf::new(),
            source: Box::new(source),
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.cold.url.trim() == "memory:" {
            return Err(ConfigError::Invalid(
                "[cold] url = \"memory:\" keeps packs only in this process's memory: a study moved \
                 to cold would lose its only copy at the next restart. Use file:///path or \
                 s3://bucket/prefix"
                    .into(),
            ));
        }
        let url = self.cold.url.trim();
        let bucket = url
            .strip_prefix("s3://")
            .map(|rest| rest.split('/').next().unwrap_or(""));
        if !(url.is_empty() || url.starts_with("file:///") || bucket.is_some_and(|b| !b.is_empty()))
        {
            return Err(ConfigError::Invalid(format!(
                "[cold] url {url:?} is neither file:///absolute/path nor s3://bucket/prefix \
                 (a relative file:// path would move with the working directory)"
            )));
        }
        if self.cold.endpoint.starts_with("http://") && !self.cold.allow_http {
            return Err(ConfigError::Invalid(format!(
                "[cold] endpoint {:?} is plain HTTP: use https://, or set allow_http = true \
                 (loopback test servers only)",
                self.cold.endpoint
            )));
        }
        if self.dicom.port == 0 && self.dicom.tls_port == 0 {
            return Err(ConfigError::Invalid(
                "[dicom] port and tls_port are both 0: no DICOM listener would run".into(),
            ));
        }
        if self.dicom.port != 0 && self.dicom.port == self.dicom.tls_port {
            return Err(ConfigError::Invalid(
                "[dicom] tls_port must differ from [dicom] port".into(),
            ));
        }
        if self.http.loopback_port != 0 && !self.http.tls {
            return Err(ConfigError::Invalid(
                "[http] loopback_port is for keeping plain HTTP on loopback beside HTTPS: \
                 set [http] tls = true, or leave loopback_port at 0"
                    .into(),
            ));
        }
        if self.http.tls && self.http.loopback_port == self.http.port {
            return Err(ConfigError::Invalid(
                "[http] loopback_port must differ from [http] port".into(),
            ));
        }
        for rule in &self.access.dicom {
            if rule.ae_title.trim().is_empty() && rule.certificate.trim().is_empty() {
                return Err(ConfigError::Invalid(
                    "[[access.dicom]] needs ae_title or certificate (a rule that names \
                     nobody would match everybody: use [access] dicom_default)"
                        .into(),
                ));
            }
        }
        if self.auth.enabled() {
            let issuer = self.auth.issuer.trim();
            if !(issuer.starts_with("https://") || issuer.starts_with("http://")) {
                return Err(ConfigError::Invalid(format!(
                    "[auth] issuer {issuer:?} must be an http(s) URL"
                )));
            }
            if self.auth.audience.trim().is_empty() {
                return Err(ConfigError::Invalid(
                    "[auth] audience must name this archive (tokens for another service \
                     must not open it)"
                        .into(),
                ));
            }
        }
        let mut peers = std::collections::HashSet::new();
        for peer in &self.dicom.peers {
            if peer.tls && self.tls.peer_ca_file.as_os_str().is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "[[dicom.peers]] {:?} has tls = true: set [tls] peer_ca_file to the CAs \
                     that sign its certificate",
                    peer.ae_title
                )));
            }
            if !peers.insert(peer.ae_title.trim()) {
                return Err(ConfigError::Invalid(format!(
                    "[[dicom.peers]] names {:?} twice: a C-MOVE destination must be one node",
                    peer.ae_title
                )));
            }
        }
        if self.cluster.ack_after == AckAfter::Replicated && self.cold.url.trim().is_empty() {
            return Err(ConfigError::Invalid(
                "[cluster] ack_after = \"replicated\" acknowledges once a second copy is in the \
                 cold tier, and [cold] url is empty: the default cold tier is <data_dir>/cold, on \
                 this node's own disk. Name the shared bucket (s3://bucket/prefix) or another \
                 file system (file:///path)"
                    .into(),
            ));
        }
        self.cluster.secret()?;
        if self.cluster.lease < Duration::from_secs(3) {
            return Err(ConfigError::Invalid(
                "[cluster] lease must be at least 3s".into(),
            ));
        }
        if self.cluster.heartbeat.is_zero() {
            return Err(ConfigError::Invalid(
                "[cluster] heartbeat must be more than 0s".into(),
            ));
        }
        if self.index.backend == IndexBackend::Postgres {
            let url = self.index.url.trim();
            if url.is_empty() {
                return Err(ConfigError::Invalid(
                    "[index] backend = \"postgres\" needs [index] url".into(),
                ));
            }
            // the password never in the configuration (PGPASSWORD or password_file)
            let in_url = url
                .split_once("://")
                .and_then(|(_, rest)| rest.split(['/', '?']).next())
                .and_then(|authority| authority.rsplit_once('@'))
                .is_some_and(|(userinfo, _)| userinfo.contains(':'))
                || url.contains("password=");
            if in_url {
                return Err(ConfigError::Invalid(
                    "[index] url must not hold the password: use PGPASSWORD or [index] password_file"
                        .into(),
                ));
            }
        }
        let issuers = std::iter::once(&self.patients.default_issuer)
            .chain(self.patients.issuer.iter().map(|a| &a.issuer));
        for issuer in issuers {
            if issuer.chars().count() > 64 || issuer.chars().any(|c| c == '\\' || c.is_control()) {
                return Err(ConfigError::Invalid(format!(
                    "[patients] issuer {issuer:?} is not a valid IssuerOfPatientID (LO: at most \
                     64 characters, no backslash)"
                )));
            }
        }
        let ae = &self.dicom.ae_title;
        if ae.is_empty()
            || ae.len() > 16
            || !ae.chars().all(|c| c.is_ascii_graphic() || c == ' ')
            || ae.contains('\\')
        {
            return Err(ConfigError::Invalid(format!(
                "[dicom] ae_title {ae:?} must be 1-16 printable ASCII characters without backslash"
            )));
        }
        if self.dicom.max_pdu_length < 4096 {
            return Err(ConfigError::Invalid(
                "[dicom] max_pdu_length must be at least 4096".into(),
            ));
        }
        if self.dicom.max_associations == 0 {
            return Err(ConfigError::Invalid(
                "[dicom] max_associations must be at least 1".into(),
            ));
        }
        for (key, class) in [
            ("[cold] storage_class", &self.cold.storage_class),
            (
                "[tiering] archive_storage_class",
                &self.tiering.archive_storage_class,
            ),
        ] {
            if !strata_tiers::cold::STORAGE_CLASSES.contains(&class.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "{key} {class:?} is not one of {:?}",
                    strata_tiers::cold::STORAGE_CLASSES
                )));
            }
        }
        let t = &self.tiering;
        if t.hot_low_watermark_percent > t.hot_high_watermark_percent
            || t.hot_high_watermark_percent > 100
        {
            return Err(ConfigError::Invalid(
                "[tiering] watermarks: need low <= high <= 100".into(),
            ));
        }
        let archive_class = strata_tiers::cold::is_archive_class(&self.cold.storage_class)
            || !t.archive_after.is_zero();
        if archive_class && t.pack_max_mb > 5000 {
            return Err(ConfigError::Invalid(
                "[tiering] pack_max_mb must be at most 5000 with an archive storage class (S3 changes the class of objects up to 5 GiB in place)".into(),
            ));
        }
        if !(1..=19).contains(&t.zstd_level) || t.pack_max_mb == 0 {
            return Err(ConfigError::Invalid(
                "[tiering] zstd_level must be 1-19 and pack_max_mb at least 1".into(),
            ));
        }
        if self.ingest.max_commit_batch == 0 {
            return Err(ConfigError::Invalid(
                "[ingest] max_commit_batch must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// The effective configuration as TOML (what `strata config` prints).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }

    /// Threads for parallel work over many files (import, verify):
    /// `[ingest] import_workers`, or the number of CPUs when it is 0.
    pub fn workers(&self) -> usize {
        match self.ingest.import_workers {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            n => n,
        }
    }

    pub fn hot_dir(&self) -> PathBuf {
        self.archive.data_dir.join("hot")
    }

    pub fn index_dir(&self) -> PathBuf {
        self.archive.data_dir.join("index")
    }

    /// Scratch space for packs being built (on the hot filesystem).
    pub fn pack_tmp_dir(&self) -> PathBuf {
        self.archive.data_dir.join("tmp-packs")
    }

    /// The cold tier as `strata-tiers` wants it; the embedded default is
    /// `<data_dir>/cold` on the local filesystem.
    pub fn cold_spec(&self) -> strata_tiers::ColdSpec {
        let c = &self.cold;
        let url = if c.url.is_empty() {
            let dir = self.archive.data_dir.join("cold");
            let dir = std::path::absolute(&dir).unwrap_or(dir);
            format!("file://{}", dir.display())
        } else {
            c.url.clone()
        };
        strata_tiers::ColdSpec {
            url,
            endpoint: (!c.endpoint.is_empty()).then(|| c.endpoint.clone()),
            region: (!c.region.is_empty()).then(|| c.region.clone()),
            allow_http: c.allow_http,
            path_style: c.path_style,
            timeout: c.request_timeout,
            max_retries: 2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cold_tier_that_forgets_on_restart_is_refused() {
        // issue 12: `memory:` would receive the only copy of cold studies and lose it
        let e = Config::from_toml("[cold]\nurl = \"memory:\"\n").unwrap_err();
        assert!(
            e.to_string().contains("only in this process's memory"),
            "{e}"
        );
        assert!(Config::from_toml("[cold]\nurl = \"s3://bucket/p\"\n").is_ok());
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.dicom.ae_title, "STRATA");
        assert_eq!(c.dicom.port, 11112);
        assert_eq!(c.http.port, 8080);
        assert_eq!(c.archive.data_dir, PathBuf::from("./strata-data"));
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(Config::from_toml("[dicom]\nae_titel = \"X\"\n").is_err());
        assert!(Config::from_toml("[nope]\n").is_err());
    }

    #[test]
    fn printed_config_reads_back() {
        let c = Config::from_toml("[dicom]\nae_title = \"ARCH\"\nread_timeout = \"5s\"\n").unwrap();
        let again = Config::from_toml(&c.to_toml()).unwrap();
        assert_eq!(again.dicom.ae_title, "ARCH");
        assert_eq!(again.dicom.read_timeout, Duration::from_secs(5));
    }

    #[test]
    fn example_config_is_complete_and_valid() {
        let text = include_str!("../config/strata.toml");
        let example = Config::from_toml(text).unwrap();
        // every key of the effective config must be documented in the example
        let effective: toml::Table = toml::from_str(&Config::default().to_toml()).unwrap();
        let documented: toml::Table = toml::from_str(text).unwrap();
        for (section, keys) in &effective {
            let doc = documented.get(section).and_then(|v| v.as_table());
            for key in keys.as_table().unwrap().keys() {
                assert!(
                    doc.is_some_and(|d| d.contains_key(key)),
                    "config/strata.toml lacks [{section}] {key}"
                );
            }
        }
        assert_eq!(example.dicom.ae_title, "STRATA");
    }

    #[test]
    fn following_the_example_s_peers_instructions_works() {
        // issue 12: "replace `peers = []` with one table per node" must give a valid file
        let text = include_str!("../config/strata.toml").replace(
            "\npeers = []\n",
            "\n[[dicom.peers]]\nae_title = \"VIEWER\"\nhost = \"10.0.0.20\"\nport = 104\n",
        );
        let config = Config::from_toml(&text).unwrap();
        assert_eq!(config.dicom.peers.len(), 1);
        assert_eq!(config.dicom.peers[0].ae_title, "VIEWER");
    }
}

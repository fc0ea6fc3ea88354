//! # TLS for the network services (BCP 195; PS3.15 Annex B for DICOM)
//!
//! One server configuration, built once from `[tls]` and shared by the HTTPS endpoint
//! (`[http] tls`) and, later, the DICOM TLS port: rustls with the *ring* provider, TLS 1.2
//! and 1.3 only (rustls offers nothing older, and only AEAD suites with forward secrecy,
//! as BCP 195 asks), the certificate chain and key from PEM files, and — when
//! `client_ca_file` is set — mutual TLS: every client must present a certificate that
//! chains to one of those CAs (webpki verification), or the handshake fails.
//!
//! Secrets never sit in the config file, only the paths: the key file is refused when
//! anyone but its owner and group may read it (mode `o+r`), so a key left world-readable
//! is found at start, not after a breach.
//!
//! [`TlsListener`] accepts TCP connections and runs their handshakes concurrently (a
//! slow or silent client never holds up the others; each handshake has [`HANDSHAKE_TIMEOUT`]),
//! handing finished TLS streams to `axum::serve`. Refused handshakes are logged and
//! counted (`strata_tls_handshake_failures_total`).

use crate::config::TlsConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;

/// Longest a client may take to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("[tls] {what} is not set (needed by {by})")]
    Missing { what: &'static str, by: String },
    #[error("cannot read {path}: {detail}")]
    Read { path: String, detail: String },
    #[error(
        "{path} is readable by everyone (mode {mode:o}); a private key must not be: \
         chmod o-rwx {path}"
    )]
    WorldReadableKey { path: String, mode: u32 },
    #[error("{path} holds no {what} in PEM form")]
    Empty { path: String, what: &'static str },
    #[error("TLS configuration refused: {0}")]
    Rustls(String),
}

/// The rustls crypto provider Strata uses: *ring* (keeps the build free of aws-lc's C
/// and CMake).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server configuration from `[tls]` for the service named `by` (in errors): the
/// certificate chain and key, TLS 1.2 and 1.3, and client certificates required and
/// verified when `client_ca_file` is set. `alpn` lists the application protocols
/// offered (`http/1.1` for HTTPS; none for DICOM).
pub fn server_config(
    config: &TlsConfig,
    by: &str,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let missing = |what| TlsError::Missing {
        what,
        by: by.to_string(),
    };
    if config.cert_file.as_os_str().is_empty() {
        return Err(missing("cert_file"));
    }
    if config.key_file.as_os_str().is_empty() {
        return Err(missing("key_file"));
    }
    let chain = certificates(&config.cert_file)?;
    let key = private_key(&config.key_file)?;
    let rustls_error = |e: rustls::Error| TlsError::Rustls(e.to_string());
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(rustls_error)?;
    let builder = if config.client_ca_file.as_os_str().is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for ca in certificates(&config.client_ca_file)? {
            roots.add(ca).map_err(rustls_error)?;
        }
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider())
                .build()
                .map_err(|e| TlsError::Rustls(e.to_string()))?;
        builder.with_client_cert_verifier(verifier)
    };
    let mut server = builder.with_single_cert(chain, key).map_err(rustls_error)?;
    server.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(server))
}

/// The client configuration for connecting out over TLS (C-MOVE destinations with
/// `tls = true`): peers verified against `peer_ca_file` (webpki, for the name dialled),
/// TLS 1.2 and 1.3, and `cert_file`/`key_file` presented as the client certificate when
/// set (peers that require mutual TLS).
pub fn client_config(config: &TlsConfig) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    if config.peer_ca_file.as_os_str().is_empty() {
        return Err(TlsError::Missing {
            what: "peer_ca_file",
            by: "a peer with tls = true".into(),
        });
    }
    let mut roots = rustls::RootCertStore::empty();
    let rustls_error = |e: rustls::Error| TlsError::Rustls(e.to_string());
    for ca in certificates(&config.peer_ca_file)? {
        roots.add(ca).map_err(rustls_error)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(rustls_error)?
        .with_root_certificates(roots);
    let client =
        if config.cert_file.as_os_str().is_empty() || config.key_file.as_os_str().is_empty() {
            builder.with_no_client_auth()
        } else {
            builder
                .with_client_auth_cert(
                    certificates(&config.cert_file)?,
                    private_key(&config.key_file)?,
                )
                .map_err(rustls_error)?
        };
    Ok(Arc::new(client))
}

/// The client configuration for a server that only needs verifying (the PostgreSQL
/// index with `sslmode=require`): its certificate must chain to one of `ca_file`'s
/// certificates (PEM), or, without one, to the system's roots (`rustls-native-certs`),
/// and name the host dialled (webpki); TLS 1.2 and 1.3; no client certificate.
pub fn verifying_client(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let rustls_error = |e: rustls::Error| TlsError::Rustls(e.to_string());
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for ca in certificates(path)? {
                roots.add(ca).map_err(rustls_error)?;
            }
        }
        None => {
            for ca in rustls_native_certs::load_native_certs().certs {
                // a system certificate rustls cannot use is skipped, as browsers do
                let _ = roots.add(ca);
            }
        }
    }
    let client = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(rustls_error)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(client))
}

/// Every certificate in a PEM file, in order (a chain: the leaf first).
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read = |e: rustls::pki_types::pem::Error| TlsError::Read {
        path: path.display().to_string(),
        detail: e.to_string(),
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(read)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read)?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: path.display().to_string(),
            what: "certificate",
        });
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1), after checking that the file
/// is not world-readable.
fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    check_secret_file(path)?;
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            path: path.display().to_string(),
            what: "private key",
        },
        e => TlsError::Read {
            path: path.display().to_string(),
            detail: e.to_string(),
        },
    })
}

/// Refuses a secret file anyone may read (`o+r`): keys and token files must be kept to
/// their owner (and group, such as Debian's `ssl-cert`).
pub fn check_secret_file(path: &Path) -> Result<(), TlsError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| TlsError::Read {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?
        .permissions()
        .mode();
    if mode & 0o004 != 0 {
        return Err(TlsError::WorldReadableKey {
            path: path.display().to_string(),
            mode: mode & 0o7777,
        });
    }
    Ok(())
}

/// The subject of a certificate in RFC 4514 form (`CN=EHR-VIEWER, O=Hospital`), parsed
/// by x509-parser; `None` when the certificate does not parse.
pub fn subject_of(certificate: &CertificateDer<'_>) -> Option<String> {
    x509_parser::parse_x509_certificate(certificate.as_ref())
        .ok()
        .map(|(_, cert)| cert.subject().to_string())
}

/// A TCP listener whose connections come out as finished TLS streams, for `axum::serve`.
/// Handshakes run in their own tasks; at most [`MAX_PENDING_HANDSHAKES`] wait at once
/// (more connections wait in the kernel's backlog).
pub struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    _acceptor: tokio::task::JoinHandle<()>,
}

/// Handshakes in progress at once, per listener.
pub const MAX_PENDING_HANDSHAKES: usize = 64;

impl TlsListener {
    /// Starts accepting on `listener` with `config`; `failed` is called (with the peer
    /// and the reason) for every handshake that does not complete.
    pub fn new(
        listener: TcpListener,
        config: Arc<rustls::ServerConfig>,
        failed: impl Fn(SocketAddr, String) + Send + Sync + 'static,
    ) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let (tx, ready) = tokio::sync::mpsc::channel(MAX_PENDING_HANDSHAKES);
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_HANDSHAKES));
        let failed = Arc::new(failed);
        let task = tokio::spawn(async move {
            let mut backoff = Duration::from_millis(10);
            loop {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => {
                        backoff = Duration::from_millis(10);
                        c
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, tx, failed) = (acceptor.clone(), tx.clone(), failed.clone());
                tokio::spawn(async move {
                    let done = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                    drop(slot);
                    match done {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => failed(peer, e.to_string()),
                        Err(_) => failed(peer, "no TLS handshake within 10 s".into()),
                    }
                });
            }
        });
        Ok(TlsListener {
            ready,
            local,
            _acceptor: task,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self._acceptor.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // the acceptor task only ends when aborted (with the listener): never ready
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn world_readable_keys_and_missing_files_are_refused_with_the_reason() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.pem");
        std::fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = check_secret_file(&key).unwrap_err();
        assert!(e.to_string().contains("readable by everyone"), "{e}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        check_secret_file(&key).unwrap();
        let config = TlsConfig {
            cert_file: dir.path().join("absent.pem"),
            key_file: key,
            ..Default::default()
        };
        let e = server_config(&config, "[http] tls", &[]).unwrap_err();
        assert!(e.to_string().contains("absent.pem"), "{e}");
        let e = server_config(&TlsConfig::default(), "[http] tls", &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "[tls] cert_file is not set (needed by [http] tls)"
        );
    }
}

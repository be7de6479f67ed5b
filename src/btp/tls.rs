//! TLS for BTP (`wss`), with rustls (ring provider): the server's config from PEM certificate
//! and key files, the client's trusting the system roots plus an optional CA file, and
//! [`Stream`], the one stream type every link runs on (plain TCP, or TLS either way).
//!
//! Invariants: a file that cannot be read or parsed is an error naming the file (the config
//! check reports it); client configs are built once per CA file and shared.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};
use futures_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use glommio::net::TcpStream;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A link's byte stream.
pub enum Stream {
    Plain(TcpStream),
    Client(Box<futures_rustls::client::TlsStream<TcpStream>>),
    Server(Box<futures_rustls::server::TlsStream<TcpStream>>),
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stream::Plain(_) => "Stream::Plain",
            Stream::Client(_) => "Stream::Client(TLS)",
            Stream::Server(_) => "Stream::Server(TLS)",
        })
    }
}

/// A WebSocket (past its handshake) over a link's stream.
pub type Ws = super::socket::Socket<Stream>;

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Stream::Plain($s) => $e,
            Stream::Client($s) => $e,
            Stream::Server($s) => $e,
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_flush(cx))
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_close(cx))
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates of a PEM file: at least one, or an error naming the file.
fn read_certs(file: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(file)
        .and_then(|i| i.collect::<Result<_, _>>())
        .map_err(|e| format!("{file}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{file}: no certificate in it"));
    }
    Ok(certs)
}

/// The server side from a PEM certificate chain and a PEM private key.
pub fn server_config(cert_file: &str, key_file: &str) -> Result<Arc<ServerConfig>, String> {
    let certs = read_certs(cert_file)?;
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| format!("{key_file}: {e}"))?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("{cert_file} / {key_file}: {e}"))?;
    Ok(Arc::new(config))
}

/// The client side: the system's roots, plus the certificates of `ca_file` (PEM) if given.
/// Built once per CA file.
pub fn client_config(ca_file: Option<&str>) -> Result<Arc<ClientConfig>, String> {
    static BUILT: OnceLock<Mutex<HashMap<Option<String>, Arc<ClientConfig>>>> = OnceLock::new();
    let built = BUILT.get_or_init(Mutex::default);
    let key = ca_file.map(str::to_owned);
    if let Some(c) = built.lock().ok().and_then(|m| m.get(&key).cloned()) {
        return Ok(c);
    }
    let mut roots = RootCertStore::empty();
    // Unreadable system certificates are skipped (a minimal container may have none).
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(file) = ca_file {
        for c in read_certs(file)? {
            roots.add(c).map_err(|e| format!("{file}: {e}"))?;
        }
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let config = Arc::new(config);
    if let Ok(mut m) = built.lock() {
        m.insert(key, config.clone());
    }
    Ok(config)
}

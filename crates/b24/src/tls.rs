//! TLS set-up for the HTTP client, chosen for start-up cost.
//!
//! A `b24` process usually makes one call and exits, so what TLS costs before the first byte
//! is most of its run time. Two costs dominated: the aws-lc crypto provider initialises its
//! entropy source on first use (tens of milliseconds of CPU), and the platform verifier reads
//! the system CA bundle (well over a hundred files) whenever the HTTP client is built — even for
//! a plain-http loopback portal. Here the provider is *ring* (no start-up self-test), the trust
//! anchors are Mozilla's set compiled into the binary (`webpki-roots`: nothing read from disk),
//! and a client that will only ever speak plain http gets no anchors at all.
//!
//! A private CA (a corporate proxy, the sandbox's `--tls`) is added with `B24_CA_FILE`.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::Error;

/// Which trust anchors a client needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Roots {
    /// Some address is https: the public web PKI (plus any extra CA).
    WebPki,
    /// Every address is plain http (loopback): no anchors, nothing loaded.
    None,
}

/// The rustls configuration handed to reqwest.
pub(crate) fn client_config(
    roots: Roots,
    extra_ca: Option<&Path>,
) -> Result<rustls::ClientConfig, Error> {
    let mut store = rustls::RootCertStore::empty();
    if roots == Roots::WebPki {
        store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if let Some(path) = extra_ca {
        let pem = std::fs::read(path)
            .map_err(|e| Error::Config(format!("B24_CA_FILE {}: {e}", path.display())))?;
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| {
                Error::Config(format!(
                    "B24_CA_FILE {}: not a PEM certificate ({e})",
                    path.display()
                ))
            })?;
            store.add(cert).map_err(|e| {
                Error::Config(format!(
                    "B24_CA_FILE {}: unusable certificate ({e})",
                    path.display()
                ))
            })?;
            added += 1;
        }
        if added == 0 {
            return Err(Error::Config(format!(
                "B24_CA_FILE {}: no PEM certificate in the file",
                path.display()
            )));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS: {e}")))?
        .with_root_certificates(store)
        .with_no_client_auth();
    // reqwest leaves ALPN to whoever preconfigures TLS: offer HTTP/2 and HTTP/1.1 as it would.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

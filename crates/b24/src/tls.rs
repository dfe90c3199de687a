//! TLS set-up for the HTTP client, chosen for start-up cost.
//!
//! A `b24` process usually makes one call and exits, so what TLS costs before the first byte
//! is most of its run time. Two costs dominated: the aws-lc crypto provider (no longer in the
//! build at all) initialised its entropy source on first use (tens of milliseconds of CPU), and
//! the platform verifier reads
//! the system CA bundle (well over a hundred files) whenever the HTTP client is built — even for
//! a plain-http loopback portal. Here the provider is *ring* (no start-up self-test), the trust
//! anchors are Mozilla's set compiled into the binary (`webpki-roots`: nothing read from disk),
//! and a client that will only ever speak plain http gets no anchors at all.
//!
//! A private CA (a corporate proxy, the sandbox's `--tls`) is added with `B24_CA_FILE`.
//!
//! The workspace builds one crypto provider, ring: reqwest is built with `rustls-no-provider`
//! (its `rustls` feature would compile aws-lc-rs and its C library). Such a reqwest *panics* when
//! a client is built without preconfigured TLS and no process-default provider is installed,
//! so whatever builds one that way calls [`install_default_provider`] first.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::Error;

/// Make ring the process-default rustls crypto provider, unless one is installed already.
///
/// reqwest (built without a provider of its own) panics when `Client::new()` or
/// `ClientBuilder::build()` runs without preconfigured TLS and without a default provider; so
/// does a rustls server configured from PEM files. Every place that builds one of those calls
/// this first: the `b24` binary at start, and library functions that build their own
/// `reqwest::Client` (they cannot know whether their caller did). Idempotent and cheap: a
/// second call, or a provider someone else installed first, leaves the default as it is.
pub fn install_default_provider() {
    // Err means a default exists already — exactly what the caller needs.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// After the call a default provider exists (so reqwest cannot panic) and it is ring, the
    /// one provider the workspace builds; a second call changes nothing.
    #[test]
    fn the_default_provider_is_ring_and_installing_is_idempotent() {
        install_default_provider();
        let first = rustls::crypto::CryptoProvider::get_default().expect("a default provider");
        let ring = rustls::crypto::ring::default_provider();
        let names = |p: &rustls::crypto::CryptoProvider| {
            p.cipher_suites
                .iter()
                .map(|s| s.suite())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(first), names(&ring));
        assert_eq!(
            first.kx_groups.iter().map(|g| g.name()).collect::<Vec<_>>(),
            ring.kx_groups.iter().map(|g| g.name()).collect::<Vec<_>>()
        );
        install_default_provider();
        let second = rustls::crypto::CryptoProvider::get_default().expect("still installed");
        assert!(Arc::ptr_eq(first, second));
        // And reqwest builds a client without preconfigured TLS (it panics without a default).
        #[allow(clippy::disallowed_methods)] // what the test is about
        reqwest::Client::builder().build().expect("a client");
    }
}

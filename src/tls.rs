//! TLS for the server's outgoing connections (webhook deliveries, the
//! PostgreSQL store): rustls with the ring provider, trusting the system's
//! root certificates plus any named in a PEM file.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{pem::PemObject, CertificateDer};

/// The certificates of the PEM file `path`; `Err` when it cannot be read or
/// holds none. `what` names the flag in messages.
pub fn pem_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} {}: no PEM certificate in it",
            path.display()
        ));
    }
    Ok(certs)
}

/// A client configuration trusting the system's roots and `extra`.
pub fn client_config(
    extra: Vec<CertificateDer<'static>>,
    what: &str,
) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!("system root certificates: {e}");
    }
    roots.add_parsable_certificates(native.certs);
    for cert in extra {
        roots.add(cert).map_err(|e| format!("{what}: {e}"))?;
    }
    if roots.is_empty() {
        tracing::warn!("{what}: no root certificates (system store empty, no CA file): TLS servers will be refused");
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("{what}: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

//! TLS for `wss://` event sockets (`https://` servers).
//!
//! The socket client builds its rustls configuration with the process-wide default provider,
//! and rustls refuses to guess one when more than one backend is compiled in (the workspace
//! has both). So the console installs one explicitly before connecting.

/// Installs ring as the process's TLS provider; a provider installed earlier is kept.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_client_configuration_can_be_built_after_installing() {
        super::install_provider();
        // Panics when no provider can be chosen: what `wss://` connections would hit.
        let _config = rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        // Installing twice is harmless.
        super::install_provider();
    }
}

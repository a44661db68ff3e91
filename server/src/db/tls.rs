//! TLS to PostgreSQL with rustls, honouring libpq's `sslmode` and `sslrootcert` in
//! `DATABASE_URL`, for every connection the service opens (pool, LISTEN, migrations).
//!
//! tokio-postgres knows only `disable`, `prefer` and `require` and leaves certificate checks to
//! the connector, so the URL is read here first:
//!
//! | `sslmode` | TLS | certificate checked against the roots | host name checked |
//! |---|---|---|---|
//! | `disable` | never | - | - |
//! | `prefer` (default) | if the server offers it | only with `sslrootcert` | no |
//! | `require` | always | only with `sslrootcert` (as libpq) | no |
//! | `verify-ca` | always | yes | no |
//! | `verify-full` | always | yes | yes |
//!
//! Roots: the PEM file named by `sslrootcert`, or the system's trust store when it is absent
//! or `system`. Client certificates (`sslcert`, `sslkey`) are refused with a clear message.
//! The crypto provider is rustls' `ring`, named explicitly so that the process-wide default
//! (unset, since two providers are compiled in through other crates) does not matter.
//!
//! Why one file: one concern, the `sslmode` table above and the connector that implements it
//! (URL reading, root loading, the two verifiers); split apart, each row of the table would live in
//! two places.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::Context as _;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(text: &str) -> anyhow::Result<Self> {
        Ok(match text {
            "disable" => Self::Disable,
            // libpq's `allow` tries plaintext first; TLS-if-offered is the closest we do.
            "allow" | "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => anyhow::bail!(
                "sslmode must be disable, prefer, require, verify-ca or verify-full (got {other:?})"
            ),
        })
    }

    /// What the driver is told: it only decides whether TLS is attempted and required.
    fn driver_mode(self) -> tokio_postgres::config::SslMode {
        match self {
            Self::Disable => tokio_postgres::config::SslMode::Disable,
            Self::Prefer => tokio_postgres::config::SslMode::Prefer,
            Self::Require | Self::VerifyCa | Self::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        }
    }
}

/// A parsed `DATABASE_URL`: the driver's settings and the connector that does its TLS.
pub struct DbTarget {
    pub config: tokio_postgres::Config,
    pub ssl_mode: SslMode,
    pub tls: MakeRustls,
}

/// Parses a PostgreSQL URL (`postgres://...` or `key=value ...`), taking out the TLS options
/// the driver does not understand.
pub fn parse(url: &str) -> anyhow::Result<DbTarget> {
    let (rest, options) = split_tls_options(url);
    let mut ssl_mode = SslMode::Prefer;
    let mut root_cert: Option<String> = None;
    for (key, value) in options {
        match key.as_str() {
            "sslmode" => ssl_mode = SslMode::parse(&value)?,
            "sslrootcert" => root_cert = Some(value),
            "sslcert" | "sslkey" if !value.is_empty() => {
                anyhow::bail!("client certificates ({key}) are not supported in DATABASE_URL")
            }
            _ => {}
        }
    }
    let mut config = tokio_postgres::Config::from_str(&rest).context("parsing DATABASE_URL")?;
    config.ssl_mode(ssl_mode.driver_mode());
    let tls = MakeRustls::new(ssl_mode, root_cert.as_deref())?;
    Ok(DbTarget {
        config,
        ssl_mode,
        tls,
    })
}

/// Options handled here rather than by the driver.
const TLS_KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// `url` without the TLS options, and those options (values decoded).
fn split_tls_options(url: &str) -> (String, Vec<(String, String)>) {
    let mut taken = Vec::new();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return (url.to_owned(), taken);
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode(key);
            if TLS_KEYS.contains(&key.as_str()) {
                taken.push((key, percent_decode(value)));
            } else {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        (rest, taken)
    } else {
        // key=value form; values with spaces must be quoted, which TLS options never need.
        let mut kept = Vec::new();
        for token in url.split_whitespace() {
            match token.split_once('=') {
                Some((key, value)) if TLS_KEYS.contains(&key) => {
                    taken.push((key.to_owned(), value.trim_matches('\'').to_owned()));
                }
                _ => kept.push(token),
            }
        }
        (kept.join(" "), taken)
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(byte) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The roots to check server certificates against.
fn roots(root_cert: Option<&str>) -> anyhow::Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    match root_cert {
        Some(path) if path != "system" => {
            let certs = CertificateDer::pem_file_iter(path)
                .with_context(|| format!("reading sslrootcert {path}"))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("parsing sslrootcert {path}"))?;
            let (added, _) = store.add_parsable_certificates(certs);
            anyhow::ensure!(added > 0, "sslrootcert {path} holds no usable certificate");
        }
        _ => {
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
            anyhow::ensure!(
                !store.is_empty(),
                "no system root certificates found; give one with sslrootcert"
            );
        }
    }
    Ok(store)
}

/// The rustls client configuration for `mode`.
fn client_config(mode: SslMode, root_cert: Option<&str>) -> anyhow::Result<ClientConfig> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    // libpq checks the chain under `require`/`prefer` only when a root certificate is given.
    let check_chain = match mode {
        SslMode::Disable => false,
        SslMode::Prefer | SslMode::Require => root_cert.is_some(),
        SslMode::VerifyCa | SslMode::VerifyFull => true,
    };
    let verifier: Arc<dyn ServerCertVerifier> = if check_chain {
        let webpki =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots(root_cert)?), provider)
                .build()
                .context("building the certificate verifier")?;
        if mode == SslMode::VerifyFull {
            webpki
        } else {
            Arc::new(ChainOnly(webpki))
        }
    } else {
        Arc::new(EncryptOnly(provider))
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// Encryption without authentication (`sslmode=require` without a root certificate, as libpq
/// does it): any certificate is accepted, but handshake signatures are still checked.
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the host name is not compared.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// tokio-postgres' TLS connector over rustls. Cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct MakeRustls {
    /// `None` under `sslmode=disable`: the driver then never asks for TLS.
    config: Option<Arc<ClientConfig>>,
}

impl MakeRustls {
    pub fn new(mode: SslMode, root_cert: Option<&str>) -> anyhow::Result<Self> {
        let config = match mode {
            SslMode::Disable => None,
            _ => Some(Arc::new(client_config(mode, root_cert)?)),
        };
        Ok(Self { config })
    }
}

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<RustlsConnect> {
        // The driver asks for a connector before it knows whether TLS is used (over a Unix
        // socket the domain is empty): a bad name only fails an actual handshake.
        let name = ServerName::try_from(domain.to_owned()).ok();
        Ok(RustlsConnect {
            config: self.config.clone(),
            name,
        })
    }
}

pub struct RustlsConnect {
    config: Option<Arc<ClientConfig>>,
    name: Option<ServerName<'static>>,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let (Some(config), Some(name)) = (self.config, self.name) else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "TLS is disabled or the host has no valid TLS name",
                ));
            };
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, stream)
                .await?;
            Ok(RustlsStream(Box::new(stream)))
        })
    }
}

/// An established TLS connection to the server.
pub struct RustlsStream<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM channel binding is optional (`channel_binding=prefer` falls back without it).
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_options_are_taken_out_of_urls() {
        let (rest, taken) = split_tls_options(
            "postgres://u:p@db.example:5432/app?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem",
        );
        assert_eq!(
            rest,
            "postgres://u:p@db.example:5432/app?application_name=x"
        );
        assert_eq!(
            taken,
            vec![
                ("sslmode".to_owned(), "verify-full".to_owned()),
                ("sslrootcert".to_owned(), "/etc/ca.pem".to_owned())
            ]
        );
        let (rest, taken) = split_tls_options("host=db user=u sslmode=require dbname=app");
        assert_eq!(rest, "host=db user=u dbname=app");
        assert_eq!(taken, vec![("sslmode".to_owned(), "require".to_owned())]);
        let (rest, taken) = split_tls_options("postgres://u@h/app?sslmode=disable");
        assert_eq!(rest, "postgres://u@h/app");
        assert_eq!(taken.len(), 1);
    }

    #[test]
    fn every_libpq_mode_parses_and_unknown_ones_are_refused() {
        for (url, mode) in [
            ("postgres://u@h/app", SslMode::Prefer),
            ("postgres://u@h/app?sslmode=disable", SslMode::Disable),
            ("postgres://u@h/app?sslmode=require", SslMode::Require),
        ] {
            assert_eq!(parse(url).unwrap().ssl_mode, mode, "{url}");
        }
        let target = parse("postgres://u@h/app?sslmode=require").unwrap();
        assert_eq!(
            target.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        assert!(parse("postgres://u@h/app?sslmode=sometimes").is_err());
        assert!(
            parse("postgres://u@h/app?sslmode=verify-ca&sslrootcert=/nonexistent.pem").is_err()
        );
        assert!(parse("postgres://u@h/app?sslcert=/c.pem").is_err());
    }
}

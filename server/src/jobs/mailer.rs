//! Sending mail: the [`Mailer`] trait the outbox worker delivers through, a console mailer
//! (`MAILER=console`, the default) and an SMTP mailer over lettre (`MAILER=smtp://...` or
//! `smtps://...`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::future::BoxFuture;
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::config::Config;

/// How long one SMTP exchange may take before the attempt counts as failed. Kept below the
/// shutdown grace period so a stalled relay cannot hold up a drain.
const SMTP_TIMEOUT: Duration = Duration::from_secs(15);

/// One message to deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    pub to: String,
    pub subject: String,
    /// Plain text.
    pub body: String,
}

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// Cannot succeed however often it is retried (a malformed address).
    #[error("{0}")]
    Permanent(String),
    /// The relay refused or could not be reached; worth retrying later.
    #[error("{0}")]
    Transient(String),
}

impl MailError {
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Permanent(_))
    }
}

/// Where mail goes. A trait so the worker does not care whether it logs or talks SMTP.
pub trait Mailer: Send + Sync {
    fn send<'a>(&'a self, mail: &'a Mail) -> BoxFuture<'a, Result<(), MailError>>;

    /// For logs: the kind and endpoint, never credentials.
    fn describe(&self) -> String;
}

/// Builds the mailer `MAILER` asks for, with `MAIL_FROM` as the sender.
pub fn from_config(config: &Config) -> anyhow::Result<Arc<dyn Mailer>> {
    let from: Mailbox = config
        .mail_from
        .parse()
        .with_context(|| format!("MAIL_FROM {:?} is not a valid address", config.mail_from))?;
    let url = config.mailer.expose();
    if url == "console" {
        return Ok(Arc::new(ConsoleMailer::new(from)));
    }
    Ok(Arc::new(SmtpMailer::from_url(url, from)?))
}

/// Logs each mail instead of sending it: the default, for development and demos.
#[derive(Debug, Clone)]
pub struct ConsoleMailer {
    from: Mailbox,
}

impl ConsoleMailer {
    pub fn new(from: Mailbox) -> Self {
        Self { from }
    }
}

impl Mailer for ConsoleMailer {
    fn send<'a>(&'a self, mail: &'a Mail) -> BoxFuture<'a, Result<(), MailError>> {
        Box::pin(async move {
            tracing::info!(
                from = %self.from,
                to = %mail.to,
                subject = %mail.subject,
                body = %mail.body,
                "mail (console mailer; set MAILER=smtp://... to send it)"
            );
            Ok(())
        })
    }

    fn describe(&self) -> String {
        "console".to_owned()
    }
}

/// Sends through an SMTP relay with lettre. `smtp://` talks plain SMTP (for a relay on
/// loopback or a private network), `smtps://` wraps the connection in TLS (rustls);
/// `smtp://...?tls=required` uses STARTTLS. Credentials come from the URL's userinfo.
pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    /// `scheme://host:port` with the credentials stripped, for logs.
    endpoint: String,
}

impl SmtpMailer {
    pub fn from_url(url: &str, from: Mailbox) -> anyhow::Result<Self> {
        let endpoint = redact(url);
        // lettre's URL errors name the problem, not the URL, so credentials cannot leak here.
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .with_context(|| format!("MAILER {endpoint} is not a usable SMTP URL"))?
            .timeout(Some(SMTP_TIMEOUT))
            .build();
        Ok(Self {
            transport,
            from,
            endpoint,
        })
    }
}

impl Mailer for SmtpMailer {
    fn send<'a>(&'a self, mail: &'a Mail) -> BoxFuture<'a, Result<(), MailError>> {
        Box::pin(async move {
            let to: Mailbox = mail.to.parse().map_err(|e| {
                MailError::Permanent(format!("invalid recipient address {:?}: {e}", mail.to))
            })?;
            let message = Message::builder()
                .from(self.from.clone())
                .to(to)
                .subject(mail.subject.clone())
                .header(ContentType::TEXT_PLAIN)
                .body(mail.body.clone())
                .map_err(|e| MailError::Permanent(format!("cannot build the message: {e}")))?;
            // Every relay error is retried, 5xx included: a relay that rejects because of its
            // own misconfiguration is often fixed within the retry window, and attempts are
            // bounded anyway. lettre's error text carries the SMTP reply, not credentials.
            self.transport
                .send(message)
                .await
                .map(drop)
                .map_err(|e| MailError::Transient(format!("SMTP {}: {e}", self.endpoint)))
        })
    }

    fn describe(&self) -> String {
        self.endpoint.clone()
    }
}

/// `smtps://user:pass@host:465/x?y` → `smtps://host:465`.
fn redact(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("smtp", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    format!("{scheme}://{host}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_strips_credentials_and_path() {
        assert_eq!(
            redact("smtps://bob:s3cr%40t@mail.example:465/x?tls=1"),
            "smtps://mail.example:465"
        );
        assert_eq!(redact("smtp://127.0.0.1:2525"), "smtp://127.0.0.1:2525");
    }

    #[test]
    fn smtp_mailer_description_has_no_password() {
        let from: Mailbox = "Support <support@example.com>".parse().unwrap();
        let mailer = SmtpMailer::from_url("smtp://bob:hunter2@127.0.0.1:2525", from).unwrap();
        assert_eq!(mailer.describe(), "smtp://127.0.0.1:2525");
        let from: Mailbox = "support@example.com".parse().unwrap();
        let err = SmtpMailer::from_url("ftp://bob:hunter2@host", from)
            .err()
            .unwrap();
        assert!(!format!("{err:#}").contains("hunter2"));
    }
}

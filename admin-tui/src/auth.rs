//! Logging in and keeping the access token fresh.
//!
//! The current access token lives in a `watch` channel: the refresher is its only writer, and
//! every request or reconnect reads whatever is current, so nobody holds a stale copy for long.

use std::time::Duration;

use protocol::auth::TokenPair;
use tokio::sync::{mpsc, watch};

use crate::api::{ApiClient, ApiError};
use crate::app::AppEvent;

pub use protocol::Secret;

/// How the console proves it is an admin.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// Log in, and log in again if the refresh token is refused.
    Password { username: String, password: Secret },
    /// A ready access token: used as it is, it cannot be refreshed.
    Token(Secret),
}

/// How long before expiry to refresh: a fifth of the lifetime, at least 10 s, so a slow
/// server or a short-lived token still gets a new one in time.
pub fn refresh_delay(expires_in: u64) -> Duration {
    let margin = (expires_in / 5).max(10);
    Duration::from_secs(expires_in.saturating_sub(margin).max(1))
}

/// Logs in (or takes the given token) and returns the first access token.
pub async fn start(api: &ApiClient, credentials: &Credentials) -> Result<Tokens, ApiError> {
    match credentials {
        Credentials::Password { username, password } => {
            let pair = api.login(username, password.expose()).await?;
            Ok(Tokens::Pair(pair))
        }
        Credentials::Token(token) => Ok(Tokens::Fixed(token.clone())),
    }
}

/// Deliberately not `Debug`: both variants are credentials.
pub enum Tokens {
    Pair(TokenPair),
    Fixed(Secret),
}

impl Tokens {
    pub fn access(&self) -> String {
        match self {
            Tokens::Pair(pair) => pair.access.clone(),
            Tokens::Fixed(token) => token.expose().to_owned(),
        }
    }
}

/// Refreshes the pair before the access token expires, for as long as the receiver lives.
/// Failures go to the status bar and are retried; a refused refresh token means logging in
/// again with the password.
pub async fn keep_fresh(
    api: ApiClient,
    credentials: Credentials,
    tokens: Tokens,
    access: watch::Sender<String>,
    events: mpsc::Sender<AppEvent>,
) {
    let Tokens::Pair(mut pair) = tokens else {
        // A bare token cannot be renewed; it works until it expires.
        return;
    };
    let mut delay = refresh_delay(pair.expires_in);
    loop {
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = access.closed() => return,
        }
        let renewed = match api.refresh(&pair.refresh).await {
            Err(e) if e.is_auth() => match &credentials {
                Credentials::Password { username, password } => {
                    api.login(username, password.expose()).await
                }
                Credentials::Token(_) => Err(e),
            },
            other => other,
        };
        match renewed {
            Ok(new) => {
                delay = refresh_delay(new.expires_in);
                pair = new;
                if access.send(pair.access.clone()).is_err() {
                    return;
                }
            }
            Err(e) => {
                delay = Duration::from_secs(5);
                let _ = events
                    .send(AppEvent::Error(format!("token refresh failed: {e}")))
                    .await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refreshes_well_before_expiry() {
        assert_eq!(refresh_delay(900), Duration::from_secs(720));
        assert_eq!(refresh_delay(30), Duration::from_secs(20));
        assert_eq!(refresh_delay(5), Duration::from_secs(1));
    }

    #[test]
    fn secrets_do_not_print() {
        let c = Credentials::Password {
            username: "boss".into(),
            password: Secret::new("hunter2"),
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("boss"));
    }
}

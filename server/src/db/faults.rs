//! Bounded waits on the database, so an outage or a network partition turns into quick 503s
//! instead of hung requests, and the classification of errors worth retrying.
//!
//! - connect timeout: a connection attempt to an unreachable host gives up;
//! - pool wait: a request waiting for a pooled connection gives up;
//! - statement timeout (server side): a query stuck behind locks or load gives up;
//! - TCP keepalive and `TCP_USER_TIMEOUT`: a half-open connection (the peer vanished without a
//!   FIN, as in a partition) is noticed by the kernel within seconds, idle or busy, and the
//!   query on it fails instead of waiting for minutes.

use std::time::Duration;

use tokio_postgres::error::SqlState;

use crate::config::Config;

/// How long database operations may wait, from the `DB_*` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbTimeouts {
    pub connect: Duration,
    pub pool_wait: Duration,
    /// `None`: no server-side statement timeout.
    pub statement: Option<Duration>,
    /// Idle time before TCP keepalive probes start; probes then go every third of it.
    pub keepalive_idle: Duration,
    /// Unacknowledged data older than this breaks the connection (Linux `TCP_USER_TIMEOUT`).
    pub tcp_user_timeout: Duration,
}

impl Default for DbTimeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            pool_wait: Duration::from_secs(5),
            statement: Some(Duration::from_secs(15)),
            keepalive_idle: Duration::from_secs(30),
            tcp_user_timeout: Duration::from_secs(20),
        }
    }
}

impl DbTimeouts {
    pub fn from_config(config: &Config) -> Self {
        let secs = |s: u64| Duration::from_secs(s.max(1));
        Self {
            connect: secs(config.db_connect_timeout_secs),
            pool_wait: secs(config.db_pool_wait_secs),
            statement: (config.db_statement_timeout_secs > 0)
                .then(|| Duration::from_secs(config.db_statement_timeout_secs)),
            keepalive_idle: secs(config.db_keepalive_secs),
            tcp_user_timeout: secs(config.db_tcp_user_timeout_secs),
        }
    }

    /// Sets the client-side limits on `config` (all connections).
    pub fn apply_transport(&self, config: &mut tokio_postgres::Config) {
        config.connect_timeout(self.connect);
        config.keepalives(true);
        config.keepalives_idle(self.keepalive_idle);
        config.keepalives_interval((self.keepalive_idle / 3).max(Duration::from_secs(1)));
        config.keepalives_retries(3);
        config.tcp_user_timeout(self.tcp_user_timeout);
    }

    /// Adds the statement timeout to the session options of `config` (pooled connections only:
    /// migrations and the LISTEN connection may legitimately wait longer).
    pub fn apply_statement_timeout(&self, config: &mut tokio_postgres::Config) {
        let Some(timeout) = self.statement else {
            return;
        };
        let option = format!("-c statement_timeout={}", timeout.as_millis());
        let options = match config.get_options() {
            Some(existing) if !existing.trim().is_empty() => format!("{existing} {option}"),
            _ => option,
        };
        config.options(options);
    }
}

/// A failure that may go away by itself: the connection broke, the server is restarting or
/// unreachable, a timeout fired, or a serialization conflict. Constraint violations, syntax
/// errors and the like are not.
pub fn is_transient(error: &tokio_postgres::Error) -> bool {
    if error.is_closed() {
        return true;
    }
    match error.code() {
        Some(code) => {
            let class = &code.code()[..2];
            // 08: connection exception; 53: insufficient resources; 57: operator intervention
            // (admin shutdown, cannot connect now, statement timeout); 58: system error.
            matches!(class, "08" | "53" | "57" | "58")
                || *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED
        }
        // No SQLSTATE: the failure is below SQL (I/O, TLS, connect, timeout).
        None => {
            std::error::Error::source(error).is_some_and(|source| source.is::<std::io::Error>())
        }
    }
}

/// Same as [`is_transient`] for a pool checkout: timeouts and failures to connect.
pub fn is_transient_pool(error: &deadpool_postgres::PoolError) -> bool {
    use deadpool_postgres::PoolError;
    match error {
        PoolError::Timeout(_) => true,
        PoolError::Backend(e) => is_transient(e),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_timeout_joins_existing_options() {
        let timeouts = DbTimeouts::default();
        let mut config: tokio_postgres::Config = "postgres://u@h/db".parse().unwrap();
        timeouts.apply_statement_timeout(&mut config);
        assert_eq!(config.get_options(), Some("-c statement_timeout=15000"));
        let mut config: tokio_postgres::Config = "postgres://u@h/db?options=-c%20search_path%3Dx"
            .parse()
            .unwrap();
        timeouts.apply_statement_timeout(&mut config);
        assert_eq!(
            config.get_options(),
            Some("-c search_path=x -c statement_timeout=15000")
        );
        let none = DbTimeouts {
            statement: None,
            ..timeouts
        };
        let mut config: tokio_postgres::Config = "postgres://u@h/db".parse().unwrap();
        none.apply_statement_timeout(&mut config);
        assert_eq!(config.get_options(), None);
    }
}

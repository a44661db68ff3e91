//! A fake SMTP relay on loopback speaking enough of the protocol for lettre: `EHLO`, optional
//! `AUTH PLAIN`, `MAIL FROM`/`RCPT TO`/`DATA`. It records every message, and can refuse or stall
//! (never answer `MAIL FROM`) the next transactions, like a busy or hung relay.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

#[derive(Debug, Clone)]
pub struct Received {
    pub from: String,
    pub to: Vec<String>,
    pub data: String,
}

#[derive(Default)]
struct Behaviour {
    /// Answer `MAIL FROM` with this reply for the next `refusals` transactions.
    refusals: u32,
    refusal: String,
    /// Never answer `MAIL FROM` on the next `stalls` transactions (a hung relay).
    stalls: u32,
    /// Advertise `AUTH PLAIN` and require this base64 `\0user\0password` payload.
    auth_plain: Option<String>,
}

#[derive(Default)]
struct Shared {
    behaviour: Mutex<Behaviour>,
    received: Mutex<Vec<Received>>,
    logins: Mutex<Vec<String>>,
    /// Transactions that reached `MAIL FROM` (refused, stalled or accepted).
    attempts: Mutex<u32>,
    changed: Notify,
}

#[derive(Clone)]
pub struct SmtpServer {
    pub port: u16,
    shared: Arc<Shared>,
}

impl SmtpServer {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared::default());
        let accept_shared = shared.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(session(stream, accept_shared.clone()));
            }
        });
        Self { port, shared }
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Answer the next `times` transactions with `reply` (e.g. `451 4.3.0 busy`).
    pub fn refuse(&self, times: u32, reply: &str) {
        let mut b = self.shared.behaviour.lock().unwrap();
        b.refusals = times;
        b.refusal = reply.to_owned();
    }

    pub fn require_auth_plain(&self, payload: &str) {
        self.shared.behaviour.lock().unwrap().auth_plain = Some(payload.to_owned());
    }

    /// `AUTH` payloads the server accepted.
    pub fn logins(&self) -> Vec<String> {
        self.shared.logins.lock().unwrap().clone()
    }

    pub fn stall(&self, times: u32) {
        self.shared.behaviour.lock().unwrap().stalls = times;
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    pub fn attempts(&self) -> u32 {
        *self.shared.attempts.lock().unwrap()
    }

    /// Waits until `done` holds (checked on every change), or panics after `timeout`.
    pub async fn wait_for(&self, timeout: Duration, what: &str, done: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            let changed = self.shared.changed.notified();
            if done(self) {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out after {timeout:?} waiting for {what}"
            );
            let _ = tokio::time::timeout(left.min(Duration::from_millis(100)), changed).await;
        }
    }
}

async fn session(stream: TcpStream, shared: Arc<Shared>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let _ = write.write_all(b"220 fake-smtp ESMTP ready\r\n").await;
    let mut from = String::new();
    let mut to = Vec::new();
    let auth_required = shared.behaviour.lock().unwrap().auth_plain.clone();
    let mut authenticated = auth_required.is_none();
    while let Ok(Some(line)) = lines.next_line().await {
        let upper = line.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") {
            if auth_required.is_some() {
                "250-fake-smtp\r\n250-AUTH PLAIN\r\n250 8BITMIME".to_owned()
            } else {
                "250-fake-smtp\r\n250 8BITMIME".to_owned()
            }
        } else if upper.starts_with("AUTH PLAIN ") {
            let payload = line[11..].trim().to_owned();
            if Some(&payload) == auth_required.as_ref() {
                authenticated = true;
                shared.logins.lock().unwrap().push(payload);
                "235 2.7.0 authenticated".to_owned()
            } else {
                "535 5.7.8 bad credentials".to_owned()
            }
        } else if upper.starts_with("MAIL FROM:") && !authenticated {
            "530 5.7.0 authentication required".to_owned()
        } else if upper.starts_with("HELO")
            || upper.starts_with("RSET")
            || upper.starts_with("NOOP")
        {
            "250 OK".to_owned()
        } else if upper.starts_with("MAIL FROM:") {
            *shared.attempts.lock().unwrap() += 1;
            let action = {
                let mut b = shared.behaviour.lock().unwrap();
                if b.stalls > 0 {
                    b.stalls -= 1;
                    Some(None)
                } else if b.refusals > 0 {
                    b.refusals -= 1;
                    Some(Some(b.refusal.clone()))
                } else {
                    None
                }
            };
            shared.changed.notify_waiters();
            match action {
                // Hung relay: hold the connection without answering until the client goes.
                Some(None) => {
                    while let Ok(Some(_)) = lines.next_line().await {}
                    return;
                }
                Some(Some(refusal)) => refusal,
                None => {
                    from = address(&line[10..]);
                    to.clear();
                    "250 OK".to_owned()
                }
            }
        } else if upper.starts_with("RCPT TO:") {
            to.push(address(&line[8..]));
            "250 OK".to_owned()
        } else if upper == "DATA" {
            let _ = write.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await;
            let mut data = String::new();
            while let Ok(Some(line)) = lines.next_line().await {
                if line == "." {
                    break;
                }
                data.push_str(line.strip_prefix('.').unwrap_or(&line));
                data.push('\n');
            }
            shared.received.lock().unwrap().push(Received {
                from: from.clone(),
                to: std::mem::take(&mut to),
                data,
            });
            shared.changed.notify_waiters();
            "250 OK queued".to_owned()
        } else if upper == "QUIT" {
            let _ = write.write_all(b"221 bye\r\n").await;
            return;
        } else {
            "502 command not implemented".to_owned()
        };
        if write
            .write_all(format!("{reply}\r\n").as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}

fn address(arg: &str) -> String {
    arg.trim()
        .trim_start_matches('<')
        .split('>')
        .next()
        .unwrap_or_default()
        .to_owned()
}

//! The event loop: one channel carries keys, ticks, socket events and the results of
//! background requests; the loop applies each to the [`App`] and redraws. Requests run as
//! spawned tasks so the screen never waits on the network.

use std::time::Duration;

use anyhow::Context;
use crossterm::event::{Event, EventStream};
use futures::StreamExt;
use ratatui::DefaultTerminal;
use tokio::sync::{mpsc, watch};

use crate::api::ApiClient;
use crate::app::{Action, App, AppEvent, RUNS_SHOWN};
use crate::auth::{self, Credentials};
use crate::{events, ui};

/// What `chat-admin` needs to start, already resolved from flags, environment and prompts.
#[derive(Debug, Clone)]
pub struct Config {
    /// `http://host:port` of the chat server.
    pub server: String,
    pub credentials: Credentials,
}

/// How often the screen redraws on its own (elapsed-time counters).
const TICK: Duration = Duration::from_millis(500);
/// How often stats and the cleanup-run list are fetched again (they have no live events
/// for everything: message counts, scheduled runs on other instances).
const POLL: Duration = Duration::from_secs(5);

/// Logs in, then runs the console until the user quits. The terminal is restored on every
/// way out: normal return, error (the guard's drop) and panic (ratatui's panic hook).
pub async fn run(config: Config) -> anyhow::Result<()> {
    let api = ApiClient::new(&config.server);
    // Before the terminal switches to the alternate screen, so a bad password reads plainly.
    let tokens = auth::start(&api, &config.credentials)
        .await
        .with_context(|| format!("logging in to {}", api.base()))?;
    // A non-admin account logs in fine but would get nothing but 403s on every screen:
    // say so now, in plain text, instead.
    let kb = api
        .kb(&tokens.access())
        .await
        .context("checking admin access")?;

    // Bounded: if drawing falls behind, producers wait rather than memory growing.
    let (tx, mut rx) = mpsc::channel::<AppEvent>(256);
    let (access_tx, access) = watch::channel(tokens.access());
    tokio::spawn(auth::keep_fresh(
        api.clone(),
        config.credentials.clone(),
        tokens,
        access_tx,
        tx.clone(),
    ));
    tokio::spawn(events::run(
        api.base().to_owned(),
        access.clone(),
        tx.clone(),
    ));

    let mut terminal = TerminalGuard::new()?;
    tokio::spawn(terminal_events(tx.clone()));

    let requests = Requests { api, access, tx };
    let mut app = App::new(requests.api.base());
    app.apply(AppEvent::KbLoaded(Ok(kb)));
    let mut poll = tokio::time::interval(POLL);
    loop {
        terminal.draw(|frame| ui::draw(frame, &app))?;
        tokio::select! {
            event = rx.recv() => {
                let Some(event) = event else { break };
                match event {
                    AppEvent::Key(key) => match app.handle_key(key) {
                        Some(Action::Quit) => break,
                        Some(Action::ReloadKb) => requests.reload(),
                        Some(Action::RunCleanup) => requests.cleanup(),
                        None => {}
                    },
                    other => app.apply(other),
                }
            }
            // The first tick is immediate: the initial load.
            _ = poll.tick() => {
                requests.stats();
                requests.runs();
            }
        }
        if app.should_quit {
            break;
        }
    }
    Ok(())
}

/// Starts requests in the background; each result comes back through the channel.
struct Requests {
    api: ApiClient,
    access: watch::Receiver<String>,
    tx: mpsc::Sender<AppEvent>,
}

impl Requests {
    fn spawn<F, T>(&self, request: impl FnOnce(ApiClient, String) -> F, into: fn(T) -> AppEvent)
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let token = self.access.borrow().clone();
        let tx = self.tx.clone();
        let future = request(self.api.clone(), token);
        tokio::spawn(async move {
            let _ = tx.send(into(future.await)).await;
        });
    }

    fn reload(&self) {
        self.spawn(
            |api, t| async move { api.reload_kb(&t).await },
            AppEvent::KbReloaded,
        );
    }

    fn cleanup(&self) {
        self.spawn(
            |api, t| async move { api.cleanup(&t).await },
            AppEvent::CleanupDone,
        );
    }

    fn runs(&self) {
        self.spawn(
            |api, t| async move { api.cleanup_runs(&t, RUNS_SHOWN).await },
            AppEvent::RunsLoaded,
        );
    }

    fn stats(&self) {
        self.spawn(
            |api, t| async move { api.stats(&t).await },
            AppEvent::StatsLoaded,
        );
    }
}

/// Keys, resizes and ticks into the app channel.
async fn terminal_events(tx: mpsc::Sender<AppEvent>) {
    let mut input = EventStream::new();
    let mut tick = tokio::time::interval(TICK);
    loop {
        let event = tokio::select! {
            _ = tick.tick() => AppEvent::Tick,
            input = input.next() => match input {
                Some(Ok(Event::Key(key))) => AppEvent::Key(key),
                Some(Ok(Event::Resize(..))) => AppEvent::Resize,
                Some(Ok(_)) => continue,
                Some(Err(e)) => AppEvent::Error(format!("terminal input: {e}")),
                None => return,
            },
            () = tx.closed() => return,
        };
        if tx.send(event).await.is_err() {
            return;
        }
    }
}

/// The terminal in raw mode on the alternate screen, restored when dropped.
struct TerminalGuard(DefaultTerminal);

impl TerminalGuard {
    fn new() -> anyhow::Result<Self> {
        // try_init also installs a panic hook that restores the terminal before the message.
        let terminal = ratatui::try_init().context("setting up the terminal")?;
        Ok(Self(terminal))
    }
}

impl std::ops::Deref for TerminalGuard {
    type Target = DefaultTerminal;
    fn deref(&self) -> &DefaultTerminal {
        &self.0
    }
}

impl std::ops::DerefMut for TerminalGuard {
    fn deref_mut(&mut self) -> &mut DefaultTerminal {
        &mut self.0
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

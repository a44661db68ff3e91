//! The event loop: one channel carries keys, ticks, socket events and the results of
//! background requests; the loop applies each to the [`App`] and redraws. Requests run as
//! spawned tasks so the screen never waits on the network.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use crossterm::event::{Event, EventStream};
use futures::StreamExt;
use ratatui::DefaultTerminal;
use tokio::sync::{mpsc, watch};

use crate::api::ApiClient;
use crate::api::ApiError;
use crate::app::{Action, App, AppEvent, RUNS_SHOWN};
use crate::auth::{self, Credentials};
use crate::views::content_type_for;
use crate::{events, ui};
use protocol::admin::AdminEvent;

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
/// How many ratings the feedback view asks for.
const FEEDBACK_SHOWN: u32 = 100;
/// Files larger than this are not read for upload (the server's own limit is usually lower
/// and answers with a clear 413).
const MAX_UPLOAD_BYTES: u64 = 64 * 1024 * 1024;

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
    // Whose answers the event socket relays: the open session detail's user.
    let (watched_tx, watched) = watch::channel(None);
    tokio::spawn(events::run(
        api.base().to_owned(),
        access.clone(),
        watched,
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
                        Some(Action::LoadGaps) => requests.gaps(),
                        Some(Action::LoadFeedback) => requests.feedback(),
                        Some(Action::LoadDocuments) => requests.documents(),
                        Some(Action::UploadDocument(path)) => requests.upload(path),
                        Some(Action::DeleteDocument(name)) => requests.delete_document(name),
                        Some(Action::LoadQuestions(user_id)) => requests.questions(user_id),
                        Some(Action::Disconnect(session_id)) => requests.disconnect(session_id),
                        None => {}
                    },
                    // A change shows in the list at once.
                    changed @ AppEvent::DocumentChanged(_) => {
                        app.apply(changed);
                        requests.documents();
                    }
                    // The open session's question list follows its live answers: the question
                    // is stored by the first delta, the answer by the end.
                    AppEvent::Server(event) => {
                        let refresh = match &event {
                            AdminEvent::AnswerDelta { user_id, seq: 0, .. }
                            | AdminEvent::AnswerEnded { user_id, .. } => Some(*user_id),
                            _ => None,
                        };
                        app.apply(AppEvent::Server(event));
                        if let Some(user_id) = refresh
                            && app.watched_user() == Some(user_id)
                        {
                            requests.questions(user_id);
                        }
                    }
                    other => app.apply(other),
                }
            }
            // The first tick is immediate: the initial load.
            _ = poll.tick() => {
                requests.stats();
                requests.series();
                requests.runs();
            }
        }
        if app.should_quit {
            break;
        }
        let user = app.watched_user();
        watched_tx.send_if_modified(|current| {
            let changed = *current != user;
            *current = user;
            changed
        });
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

    fn questions(&self, user_id: uuid::Uuid) {
        let token = self.access.borrow().clone();
        let tx = self.tx.clone();
        let api = self.api.clone();
        tokio::spawn(async move {
            let result = api.user_questions(&token, user_id, 10).await;
            let _ = tx.send(AppEvent::QuestionsLoaded(user_id, result)).await;
        });
    }

    fn series(&self) {
        self.spawn(
            |api, t| async move { api.stats_series(&t).await },
            AppEvent::SeriesLoaded,
        );
    }

    fn gaps(&self) {
        self.spawn(
            |api, t| async move { api.gaps(&t).await },
            AppEvent::GapsLoaded,
        );
    }

    fn feedback(&self) {
        self.spawn(
            |api, t| async move { api.feedback(&t, FEEDBACK_SHOWN).await },
            AppEvent::FeedbackLoaded,
        );
    }

    fn documents(&self) {
        self.spawn(
            |api, t| async move { api.documents(&t).await },
            AppEvent::DocumentsLoaded,
        );
    }

    fn upload(&self, path: PathBuf) {
        self.spawn(
            move |api, t| async move { upload_file(&api, &t, &path).await },
            AppEvent::DocumentChanged,
        );
    }

    fn delete_document(&self, name: String) {
        self.spawn(
            move |api, t| async move {
                api.delete_document(&t, &name)
                    .await
                    .map(|()| format!("deleted {name}"))
            },
            AppEvent::DocumentChanged,
        );
    }

    fn disconnect(&self, session_id: uuid::Uuid) {
        self.spawn(
            move |api, t| async move { api.disconnect(&t, session_id).await },
            AppEvent::Disconnected,
        );
    }

    fn stats(&self) {
        self.spawn(
            |api, t| async move { api.stats(&t).await },
            AppEvent::StatsLoaded,
        );
    }
}

/// Reads `path` from the admin's disk and uploads it under its file name, typed by extension.
pub async fn upload_file(api: &ApiClient, token: &str, path: &Path) -> Result<String, ApiError> {
    let local = |message: String| ApiError::Server {
        status: 0,
        code: None,
        message,
    };
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| local(format!("{}: not a file name", path.display())))?;
    let content_type = content_type_for(path).ok_or_else(|| {
        local(format!(
            "{name}: only .md, .txt, .html and .pdf files can be uploaded"
        ))
    })?;
    let size = tokio::fs::metadata(path)
        .await
        .map_err(|e| local(format!("{}: {e}", path.display())))?
        .len();
    if size > MAX_UPLOAD_BYTES {
        return Err(local(format!(
            "{name}: {size} bytes is too large to upload"
        )));
    }
    let body = tokio::fs::read(path)
        .await
        .map_err(|e| local(format!("{}: {e}", path.display())))?;
    let document = api.put_document(token, name, content_type, body).await?;
    Ok(format!(
        "uploaded {} ({} chunks)",
        document.name, document.chunks
    ))
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

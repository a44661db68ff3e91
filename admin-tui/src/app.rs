//! The console's state and how keys and events change it. No I/O here: a key may produce an
//! [`Action`] that the run loop carries out, and results come back as [`AppEvent`]s.

use std::time::Instant;

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use protocol::admin::{
    AdminEvent, CleanupRun, KbInfo, KbProgress, RecentQuestion, SessionInfo, Stats, StatsSeries,
};
use protocol::documents::KbDocument;
use protocol::feedback::FeedbackEntry;
use protocol::gaps::GapsReport;

use crate::api::ApiError;
use crate::views::{DocumentsView, FeedbackView, GapsView};

/// Everything that arrives on the app channel.
#[derive(Debug, Clone)]
pub enum AppEvent {
    /// Redraw (elapsed times, spinners).
    Tick,
    Key(KeyEvent),
    /// The terminal changed size: just redraw.
    Resize,
    /// A frame from the admin event socket.
    Server(AdminEvent),
    Connection(ConnectionState),
    KbLoaded(Result<KbInfo, ApiError>),
    KbReloaded(Result<KbInfo, ApiError>),
    RunsLoaded(Result<Vec<CleanupRun>, ApiError>),
    CleanupDone(Result<CleanupRun, ApiError>),
    StatsLoaded(Result<Stats, ApiError>),
    SeriesLoaded(Result<StatsSeries, ApiError>),
    /// A user's recent questions, for the session detail (tagged with the user's id).
    QuestionsLoaded(uuid::Uuid, Result<Vec<RecentQuestion>, ApiError>),
    GapsLoaded(Result<GapsReport, ApiError>),
    FeedbackLoaded(Result<Vec<FeedbackEntry>, ApiError>),
    DocumentsLoaded(Result<Vec<KbDocument>, ApiError>),
    /// An upload or delete finished: what was done, or why it failed.
    DocumentChanged(Result<String, ApiError>),
    /// A disconnect was asked of the server (the session's close shows as a session event).
    Disconnected(Result<(), ApiError>),
    /// Something failed in the background (token refresh, an unreadable frame).
    Error(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    Connecting,
    Connected,
    /// Dropped or refused; the next attempt is at `next_attempt`.
    Retrying {
        reason: String,
        next_attempt: Instant,
    },
}

/// Work for the run loop, produced by keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Quit,
    ReloadKb,
    RunCleanup,
    LoadGaps,
    LoadFeedback,
    LoadDocuments,
    /// Read this file and upload it under its file name.
    UploadDocument(std::path::PathBuf),
    DeleteDocument(String),
    /// Fetch this user's recent questions (the session detail).
    LoadQuestions(uuid::Uuid),
    /// Close this live session's socket (on whichever instance holds it).
    Disconnect(uuid::Uuid),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    Sessions,
    Kb,
    Cleanup,
    Stats,
    Gaps,
    Feedback,
    Documents,
}

impl Tab {
    pub const ALL: [Tab; 7] = [
        Tab::Sessions,
        Tab::Kb,
        Tab::Cleanup,
        Tab::Stats,
        Tab::Gaps,
        Tab::Feedback,
        Tab::Documents,
    ];

    pub fn index(self) -> usize {
        match self {
            Tab::Sessions => 0,
            Tab::Kb => 1,
            Tab::Cleanup => 2,
            Tab::Stats => 3,
            Tab::Gaps => 4,
            Tab::Feedback => 5,
            Tab::Documents => 6,
        }
    }

    fn from_index(i: usize) -> Tab {
        Tab::ALL[i % Tab::ALL.len()]
    }
}

/// What a relayed frame does to a live answer.
enum AnswerChange {
    Started,
    Delta(String),
    Ended(String),
}

/// A dialog waiting for y/n.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirm {
    ReloadKb,
    RunCleanup,
    /// Delete the named knowledge-base document.
    DeleteDocument(String),
    /// Disconnect the live session with this id.
    Disconnect(uuid::Uuid),
}

/// A long operation's state, for its tab.
#[derive(Debug, Clone, PartialEq)]
pub enum Job<T> {
    Idle,
    Running { since: Instant },
    Done(T),
    Failed(String),
}

impl<T> Job<T> {
    pub fn is_running(&self) -> bool {
        matches!(self, Job::Running { .. })
    }
}

#[derive(Debug)]
pub struct App {
    pub server: String,
    pub tab: Tab,
    pub connection: ConnectionState,
    /// Live sessions, oldest first (as the server lists them).
    pub sessions: Vec<SessionInfo>,
    pub selected_session: usize,
    pub kb: Option<KbInfo>,
    pub reload: Job<()>,
    pub runs: Vec<CleanupRun>,
    pub selected_run: usize,
    pub cleanup: Job<CleanupRun>,
    pub stats: Option<Stats>,
    pub stats_at: Option<Instant>,
    pub confirm: Option<Confirm>,
    pub show_help: bool,
    /// The latest failure, for the status bar. It stays until replaced or dismissed with `x`:
    /// clearing it on the next success would hide a flapping failure.
    pub last_error: Option<String>,
    pub should_quit: bool,
    /// The latest progress of a knowledge-base load on the instance we are connected to. It
    /// stays after the load ends: its last state (`done`, with the cache hits and chunks
    /// embedded) says what that load did.
    pub kb_progress: Option<KbProgress>,
    /// The last hour, minute by minute, for the stats tab's sparklines.
    pub series: Option<StatsSeries>,
    /// The session whose detail is open, and its user's recent questions once loaded.
    pub session_detail: Option<(uuid::Uuid, Option<Vec<RecentQuestion>>)>,
    /// The open session's user's answers as they stream (newest last), relayed by the event
    /// socket while the detail is open.
    pub live_answers: Vec<LiveAnswer>,
    /// The server's `watching` answer: whose answers it relays, and how many of that user's
    /// sockets are on the instance we are connected to (0: answers are not relayed).
    pub watching: Option<(uuid::Uuid, usize)>,
    pub gaps: GapsView,
    pub feedback: FeedbackView,
    pub documents: DocumentsView,
}

/// How many cleanup runs the console keeps and asks for.
pub const RUNS_SHOWN: u32 = 50;

/// Answers kept for the open session's detail (newest last).
const LIVE_ANSWERS_KEPT: usize = 4;
/// Characters kept of a live answer (its end, which is what is streaming).
const LIVE_ANSWER_CHARS: usize = 4000;

/// One answer of the watched user, as relayed by the event socket.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveAnswer {
    /// The ask id the user's client chose.
    pub id: String,
    pub text: String,
    /// Characters dropped from the front to keep [`LIVE_ANSWER_CHARS`].
    pub dropped: bool,
    /// `None` while streaming; then `stop`, `cancelled`, `error`, or `refused`.
    pub ended: Option<String>,
}

impl App {
    pub fn new(server: impl Into<String>) -> Self {
        Self {
            server: server.into(),
            tab: Tab::Sessions,
            connection: ConnectionState::Connecting,
            sessions: Vec::new(),
            selected_session: 0,
            kb: None,
            reload: Job::Idle,
            runs: Vec::new(),
            selected_run: 0,
            cleanup: Job::Idle,
            stats: None,
            stats_at: None,
            confirm: None,
            show_help: false,
            last_error: None,
            should_quit: false,
            kb_progress: None,
            series: None,
            session_detail: None,
            live_answers: Vec::new(),
            watching: None,
            gaps: GapsView::default(),
            feedback: FeedbackView::default(),
            documents: DocumentsView::default(),
        }
    }

    pub fn handle_key(&mut self, key: KeyEvent) -> Option<Action> {
        // Terminals that report releases (Windows, kitty protocol) would act twice otherwise.
        if key.kind == KeyEventKind::Release {
            return None;
        }
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return self.quit();
        }
        if let Some(confirm) = self.confirm.clone() {
            return match key.code {
                KeyCode::Char('y' | 'Y') | KeyCode::Enter => {
                    self.confirm = None;
                    Some(self.start(confirm))
                }
                KeyCode::Char('n' | 'N') | KeyCode::Esc | KeyCode::Char('q') => {
                    self.confirm = None;
                    None
                }
                _ => None,
            };
        }
        if self.documents.input.is_some() {
            return self.documents.handle_input_key(key.code);
        }
        if self.show_help {
            // Any key closes help; quitting from it takes a second press, which is harmless.
            self.show_help = false;
            return None;
        }
        if self.tab == Tab::Sessions
            && let Some((session_id, _)) = &self.session_detail
        {
            match key.code {
                KeyCode::Esc | KeyCode::Enter | KeyCode::Char('q') | KeyCode::Backspace => {
                    self.close_session_detail();
                }
                // `k` is "up" in the lists; in an open session it disconnects it (after y/n).
                KeyCode::Char('k') => self.confirm = Some(Confirm::Disconnect(*session_id)),
                _ => {}
            }
            return None;
        }
        if self.tab == Tab::Gaps && self.gaps.open {
            self.gaps.handle_open_key(key.code);
            return None;
        }
        let tab_before = self.tab;
        match key.code {
            KeyCode::Char('q') | KeyCode::Esc => return self.quit(),
            KeyCode::Char('?') => self.show_help = true,
            KeyCode::Tab => self.tab = Tab::from_index(self.tab.index() + 1),
            KeyCode::BackTab => self.tab = Tab::from_index(self.tab.index() + Tab::ALL.len() - 1),
            KeyCode::Char(c @ '1'..='7') => self.tab = Tab::from_index(c as usize - '1' as usize),
            KeyCode::Up | KeyCode::Char('k') => self.move_selection(-1),
            KeyCode::Down | KeyCode::Char('j') => self.move_selection(1),
            KeyCode::Home => self.move_selection(isize::MIN),
            KeyCode::End => self.move_selection(isize::MAX),
            KeyCode::Char('r') if self.tab == Tab::Kb => {
                if self.reload.is_running() {
                    self.last_error = Some("a reload is already running".into());
                } else {
                    self.confirm = Some(Confirm::ReloadKb);
                }
            }
            KeyCode::Char('c') if self.tab == Tab::Cleanup => {
                if self.cleanup.is_running() {
                    self.last_error = Some("a cleanup is already running".into());
                } else {
                    self.confirm = Some(Confirm::RunCleanup);
                }
            }
            KeyCode::Char('x') => self.last_error = None,
            KeyCode::Enter if self.tab == Tab::Gaps => self.gaps.open_selected(),
            KeyCode::Enter if self.tab == Tab::Sessions => {
                if let Some(session) = self.sessions.get(self.selected_session) {
                    self.session_detail = Some((session.session_id, None));
                    self.live_answers.clear();
                    self.watching = None;
                    return Some(Action::LoadQuestions(session.user_id));
                }
            }
            KeyCode::Char('r')
                if matches!(self.tab, Tab::Gaps | Tab::Feedback | Tab::Documents) =>
            {
                return self.load(self.tab);
            }
            KeyCode::Char('u') if self.tab == Tab::Documents => {
                self.documents.input = Some(String::new());
            }
            KeyCode::Char('d') if self.tab == Tab::Documents => {
                match self.documents.selected_name() {
                    Some(name) => self.confirm = Some(Confirm::DeleteDocument(name)),
                    None => self.last_error = Some("no document selected".into()),
                }
            }
            _ => {}
        }
        if self.tab != tab_before {
            return self.load(self.tab);
        }
        None
    }

    /// What to fetch when a tab that has no live events is shown (or `r` is pressed on it).
    fn load(&self, tab: Tab) -> Option<Action> {
        match tab {
            Tab::Gaps => Some(Action::LoadGaps),
            Tab::Feedback => Some(Action::LoadFeedback),
            Tab::Documents => Some(Action::LoadDocuments),
            Tab::Sessions | Tab::Kb | Tab::Cleanup | Tab::Stats => None,
        }
    }

    fn close_session_detail(&mut self) {
        self.session_detail = None;
        self.live_answers.clear();
        self.watching = None;
    }

    fn quit(&mut self) -> Option<Action> {
        self.should_quit = true;
        Some(Action::Quit)
    }

    fn start(&mut self, confirm: Confirm) -> Action {
        let since = Instant::now();
        match confirm {
            Confirm::ReloadKb => {
                self.reload = Job::Running { since };
                Action::ReloadKb
            }
            Confirm::RunCleanup => {
                self.cleanup = Job::Running { since };
                Action::RunCleanup
            }
            Confirm::DeleteDocument(name) => {
                self.documents.busy = true;
                self.documents.outcome = None;
                Action::DeleteDocument(name)
            }
            Confirm::Disconnect(session_id) => {
                self.close_session_detail();
                Action::Disconnect(session_id)
            }
        }
    }

    fn move_selection(&mut self, delta: isize) {
        let (selected, len) = match self.tab {
            Tab::Sessions => (&mut self.selected_session, self.sessions.len()),
            Tab::Cleanup => (&mut self.selected_run, self.runs.len()),
            Tab::Gaps => {
                let len = self.gaps.len();
                (&mut self.gaps.selected, len)
            }
            Tab::Feedback => {
                let len = self.feedback.len();
                (&mut self.feedback.selected, len)
            }
            Tab::Documents => {
                let len = self.documents.len();
                (&mut self.documents.selected, len)
            }
            Tab::Kb | Tab::Stats => return,
        };
        if len == 0 {
            *selected = 0;
            return;
        }
        let next = selected.saturating_add_signed(delta);
        *selected = next.min(len - 1);
    }

    pub fn apply(&mut self, event: AppEvent) {
        match event {
            AppEvent::Tick | AppEvent::Resize => {}
            AppEvent::Key(key) => {
                // Keys normally go through `handle_key` so the caller sees the action; this
                // keeps `apply` total for callers that do not care.
                let _ = self.handle_key(key);
            }
            AppEvent::Server(event) => self.apply_server(event),
            AppEvent::Connection(state) => self.connection = state,
            AppEvent::KbLoaded(result) => match result {
                Ok(kb) => self.kb = Some(kb),
                Err(e) => self.last_error = Some(format!("knowledge base: {e}")),
            },
            AppEvent::KbReloaded(result) => match result {
                Ok(kb) => {
                    self.kb = Some(kb);
                    self.reload = Job::Done(());
                }
                Err(e) if e.is_conflict() => {
                    self.reload = Job::Failed("a reload is already running".into());
                }
                Err(e) => {
                    self.reload = Job::Failed(e.to_string());
                    self.last_error = Some(format!("reload: {e}"));
                }
            },
            AppEvent::RunsLoaded(result) => match result {
                Ok(runs) => {
                    self.runs = runs;
                    self.clamp_selection();
                }
                Err(e) => self.last_error = Some(format!("cleanup runs: {e}")),
            },
            AppEvent::CleanupDone(result) => match result {
                Ok(run) => {
                    self.add_run(run.clone());
                    self.cleanup = Job::Done(run);
                }
                Err(e) if e.is_conflict() => {
                    self.cleanup = Job::Failed("a cleanup is already running".into());
                }
                Err(e) => {
                    self.cleanup = Job::Failed(e.to_string());
                    self.last_error = Some(format!("cleanup: {e}"));
                }
            },
            AppEvent::StatsLoaded(result) => match result {
                Ok(stats) => {
                    self.stats = Some(stats);
                    self.stats_at = Some(Instant::now());
                }
                Err(e) => self.last_error = Some(format!("stats: {e}")),
            },
            AppEvent::QuestionsLoaded(user_id, result) => {
                let open_for_user = self.session_detail.as_ref().is_some_and(|(id, _)| {
                    self.sessions
                        .iter()
                        .any(|s| s.session_id == *id && s.user_id == user_id)
                });
                match result {
                    Ok(questions) if open_for_user => {
                        if let Some((_, slot)) = self.session_detail.as_mut() {
                            *slot = Some(questions);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => self.last_error = Some(format!("recent questions: {e}")),
                }
            }
            AppEvent::SeriesLoaded(result) => match result {
                Ok(series) => self.series = Some(series),
                Err(e) => self.last_error = Some(format!("stats series: {e}")),
            },
            AppEvent::GapsLoaded(result) => match result {
                Ok(report) => self.gaps.set(report),
                Err(e) => self.last_error = Some(format!("gaps: {e}")),
            },
            AppEvent::FeedbackLoaded(result) => match result {
                Ok(entries) => self.feedback.set(entries),
                Err(e) => self.last_error = Some(format!("feedback: {e}")),
            },
            AppEvent::DocumentsLoaded(result) => match result {
                Ok(documents) => self.documents.set(documents),
                Err(e) => self.last_error = Some(format!("documents: {e}")),
            },
            AppEvent::DocumentChanged(result) => {
                self.documents.busy = false;
                self.documents.outcome = Some(result.map_err(|e| e.to_string()));
            }
            AppEvent::Disconnected(Err(e)) => {
                self.last_error = Some(format!("disconnect failed: {e}"));
            }
            AppEvent::Disconnected(Ok(())) => {}
            AppEvent::Error(message) => self.last_error = Some(message),
        }
    }

    fn apply_server(&mut self, event: AdminEvent) {
        match event {
            AdminEvent::Snapshot { sessions } => self.sessions = sessions,
            AdminEvent::SessionOpened { session } | AdminEvent::SessionUpdated { session } => {
                match self
                    .sessions
                    .iter_mut()
                    .find(|s| s.session_id == session.session_id)
                {
                    Some(existing) => *existing = session,
                    None => self.sessions.push(session),
                }
            }
            AdminEvent::SessionClosed { session_id } => {
                self.sessions.retain(|s| s.session_id != session_id);
            }
            // Another admin's reload (or ours, arriving before the HTTP answer).
            AdminEvent::KbReloaded { kb } => self.kb = Some(kb),
            AdminEvent::KbProgress { progress } => self.kb_progress = Some(progress),
            AdminEvent::CleanupFinished { run } => self.add_run(run),
            AdminEvent::Watching {
                user_id,
                local_sessions,
            } => self.watching = Some((user_id, local_sessions)),
            AdminEvent::AnswerStarted { user_id, id } => {
                self.apply_answer(user_id, id, AnswerChange::Started);
            }
            AdminEvent::AnswerDelta {
                user_id, id, text, ..
            } => self.apply_answer(user_id, id, AnswerChange::Delta(text)),
            AdminEvent::AnswerEnded {
                user_id,
                id,
                finish_reason,
                error,
                ..
            } => {
                let how = match (finish_reason, error) {
                    (_, Some(code)) => format!("error: {code}"),
                    (Some(reason), None) => format!("{reason:?}").to_lowercase(),
                    (None, None) => "refused".to_owned(),
                };
                self.apply_answer(user_id, id, AnswerChange::Ended(how));
            }
        }
        self.clamp_selection();
    }

    /// Adds a run at the top, once: our own run arrives both as the answer and as an event.
    fn add_run(&mut self, run: CleanupRun) {
        match self.runs.iter_mut().find(|r| r.id == run.id) {
            Some(existing) => *existing = run,
            None => {
                self.runs.insert(0, run);
                self.runs.truncate(RUNS_SHOWN as usize);
            }
        }
    }

    fn clamp_selection(&mut self) {
        self.selected_session = self
            .selected_session
            .min(self.sessions.len().saturating_sub(1));
        self.selected_run = self.selected_run.min(self.runs.len().saturating_sub(1));
    }

    /// Whose answers the event socket should relay: the open session detail's user.
    pub fn watched_user(&self) -> Option<uuid::Uuid> {
        let (session_id, _) = self.session_detail.as_ref()?;
        self.sessions
            .iter()
            .find(|s| s.session_id == *session_id)
            .map(|s| s.user_id)
    }

    fn apply_answer(&mut self, user_id: uuid::Uuid, id: String, change: AnswerChange) {
        if self.watched_user() != Some(user_id) {
            return;
        }
        let position = self.live_answers.iter().position(|a| a.id == id);
        let answer = match (position, &change) {
            // A (re)started answer starts afresh: a watch replays running answers.
            (Some(i), AnswerChange::Started) => {
                let mut answer = self.live_answers.remove(i);
                answer.text.clear();
                answer.dropped = false;
                answer.ended = None;
                self.live_answers.push(answer);
                return;
            }
            (Some(i), _) => &mut self.live_answers[i],
            (None, _) => {
                self.live_answers.push(LiveAnswer {
                    id,
                    text: String::new(),
                    dropped: false,
                    ended: None,
                });
                if self.live_answers.len() > LIVE_ANSWERS_KEPT {
                    self.live_answers.remove(0);
                }
                let last = self.live_answers.len() - 1;
                &mut self.live_answers[last]
            }
        };
        match change {
            AnswerChange::Started => {}
            AnswerChange::Delta(text) => {
                answer.text.push_str(&text);
                let chars = answer.text.chars().count();
                if chars > LIVE_ANSWER_CHARS {
                    answer.text = answer
                        .text
                        .chars()
                        .skip(chars - LIVE_ANSWER_CHARS)
                        .collect();
                    answer.dropped = true;
                }
            }
            AnswerChange::Ended(how) => answer.ended = Some(how),
        }
    }

    /// Answers being generated across the live sessions.
    pub fn answering(&self) -> u32 {
        self.sessions.iter().map(|s| s.answering).sum()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use protocol::ErrorCode;
    use protocol::admin::CleanupTrigger;
    use uuid::Uuid;

    pub fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    pub fn session(name: &str, n: u128) -> SessionInfo {
        SessionInfo {
            session_id: Uuid::from_u128(n),
            user_id: Uuid::from_u128(1000 + n),
            username: name.into(),
            connected_at: Utc.with_ymd_and_hms(2026, 11, 29, 8, 0, n as u32).unwrap(),
            remote_addr: Some("10.0.0.7:5555".into()),
            user_agent: Some("Mozilla/5.0".into()),
            asks: 3,
            answering: 1,
        }
    }

    pub fn run(id: i64) -> CleanupRun {
        CleanupRun {
            id,
            trigger: CleanupTrigger::Manual,
            started_at: Utc.with_ymd_and_hms(2026, 11, 29, 3, 0, 0).unwrap(),
            finished_at: Some(Utc.with_ymd_and_hms(2026, 11, 29, 3, 0, 2).unwrap()),
            messages_deleted: 42,
            conversations_deleted: 7,
            error: None,
        }
    }

    fn conflict() -> ApiError {
        ApiError::Server {
            status: 409,
            code: Some(ErrorCode::Conflict),
            message: "busy".into(),
        }
    }

    #[test]
    fn tabs_switch_with_tab_backtab_and_digits() {
        let mut app = App::new("http://x");
        assert_eq!(app.handle_key(key(KeyCode::Tab)), None);
        assert_eq!(app.tab, Tab::Kb);
        app.handle_key(key(KeyCode::BackTab));
        app.handle_key(key(KeyCode::BackTab));
        assert_eq!(app.tab, Tab::Documents, "back-tab wraps around");
        app.handle_key(key(KeyCode::Char('3')));
        assert_eq!(app.tab, Tab::Cleanup);
        app.handle_key(key(KeyCode::Char('1')));
        assert_eq!(app.tab, Tab::Sessions);
    }

    #[test]
    fn quit_keys_produce_quit() {
        for k in [
            key(KeyCode::Char('q')),
            key(KeyCode::Esc),
            KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL),
        ] {
            let mut app = App::new("http://x");
            assert_eq!(app.handle_key(k), Some(Action::Quit), "{k:?}");
            assert!(app.should_quit);
        }
    }

    #[test]
    fn reload_needs_confirmation_and_can_be_cancelled() {
        let mut app = App::new("http://x");
        app.handle_key(key(KeyCode::Char('2')));
        assert_eq!(app.handle_key(key(KeyCode::Char('r'))), None);
        assert_eq!(app.confirm, Some(Confirm::ReloadKb));
        // Esc answers the dialog, it does not quit.
        assert_eq!(app.handle_key(key(KeyCode::Esc)), None);
        assert_eq!(app.confirm, None);
        assert!(!app.should_quit);

        app.handle_key(key(KeyCode::Char('r')));
        assert_eq!(
            app.handle_key(key(KeyCode::Char('y'))),
            Some(Action::ReloadKb)
        );
        assert!(app.reload.is_running());
        // A second `r` while running does not stack another reload.
        assert_eq!(app.handle_key(key(KeyCode::Char('r'))), None);
        assert_eq!(app.confirm, None);
        assert!(
            app.last_error
                .as_deref()
                .unwrap()
                .contains("already running")
        );
    }

    #[test]
    fn keys_only_act_on_their_tab() {
        let mut app = App::new("http://x");
        app.handle_key(key(KeyCode::Char('r')));
        app.handle_key(key(KeyCode::Char('c')));
        assert_eq!(app.confirm, None, "sessions tab has neither action");
        app.handle_key(key(KeyCode::Char('3')));
        app.handle_key(key(KeyCode::Char('c')));
        assert_eq!(app.confirm, Some(Confirm::RunCleanup));
        assert_eq!(
            app.handle_key(key(KeyCode::Enter)),
            Some(Action::RunCleanup)
        );
    }

    #[test]
    fn cleanup_conflict_reads_already_running() {
        let mut app = App::new("http://x");
        app.cleanup = Job::Running {
            since: Instant::now(),
        };
        app.apply(AppEvent::CleanupDone(Err(conflict())));
        assert_eq!(
            app.cleanup,
            Job::Failed("a cleanup is already running".into())
        );
    }

    #[test]
    fn own_cleanup_is_listed_once() {
        let mut app = App::new("http://x");
        app.apply(AppEvent::RunsLoaded(Ok(vec![run(1)])));
        app.apply(AppEvent::Server(AdminEvent::CleanupFinished {
            run: run(2),
        }));
        app.apply(AppEvent::CleanupDone(Ok(run(2))));
        let ids: Vec<i64> = app.runs.iter().map(|r| r.id).collect();
        assert_eq!(ids, [2, 1]);
        assert!(matches!(app.cleanup, Job::Done(ref r) if r.id == 2));
    }

    #[test]
    fn session_events_update_the_list_and_snapshot_resets_it() {
        let mut app = App::new("http://x");
        app.apply(AppEvent::Server(AdminEvent::Snapshot {
            sessions: vec![session("alice", 1), session("bob", 2)],
        }));
        app.apply(AppEvent::Server(AdminEvent::SessionOpened {
            session: session("carol", 3),
        }));
        let mut bob = session("bob", 2);
        bob.asks = 9;
        app.apply(AppEvent::Server(AdminEvent::SessionUpdated {
            session: bob,
        }));
        app.handle_key(key(KeyCode::End));
        assert_eq!(app.selected_session, 2);
        app.apply(AppEvent::Server(AdminEvent::SessionClosed {
            session_id: Uuid::from_u128(3),
        }));
        let names: Vec<&str> = app.sessions.iter().map(|s| s.username.as_str()).collect();
        assert_eq!(names, ["alice", "bob"]);
        assert_eq!(app.sessions[1].asks, 9);
        assert_eq!(app.selected_session, 1, "selection stays inside the list");

        // After a reconnect the snapshot is the truth, not a merge.
        app.apply(AppEvent::Server(AdminEvent::Snapshot {
            sessions: vec![session("dave", 4)],
        }));
        assert_eq!(app.sessions.len(), 1);
        assert_eq!(app.selected_session, 0);
    }

    #[test]
    fn selection_moves_within_bounds() {
        let mut app = App::new("http://x");
        app.handle_key(key(KeyCode::Down));
        assert_eq!(app.selected_session, 0, "empty list");
        app.sessions = vec![session("a", 1), session("b", 2)];
        app.handle_key(key(KeyCode::Down));
        app.handle_key(key(KeyCode::Down));
        assert_eq!(app.selected_session, 1);
        app.handle_key(key(KeyCode::Up));
        app.handle_key(key(KeyCode::Up));
        assert_eq!(app.selected_session, 0);
    }

    #[test]
    fn help_opens_and_any_key_closes_it() {
        let mut app = App::new("http://x");
        app.handle_key(key(KeyCode::Char('?')));
        assert!(app.show_help);
        assert_eq!(app.handle_key(key(KeyCode::Char('q'))), None);
        assert!(!app.show_help);
        assert!(!app.should_quit);
    }
}

//! Drawing: a pure function of [`App`]. Nothing here changes state.

use std::time::Instant;

use chrono::{DateTime, Local, Utc};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Clear, Paragraph, Row, Table, TableState, Tabs, Wrap};

use crate::app::{App, Confirm, ConnectionState, Job, Tab};

pub fn draw(frame: &mut Frame, app: &App) {
    let [tabs, body, status] = frame.area().layout(&Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(0),
        Constraint::Length(1),
    ]));
    draw_tabs(frame, app, tabs);
    match app.tab {
        Tab::Sessions => draw_sessions(frame, app, body),
        Tab::Kb => draw_kb(frame, app, body),
        Tab::Cleanup => draw_cleanup(frame, app, body),
        Tab::Stats => draw_stats(frame, app, body),
        Tab::Gaps => crate::ui_views::draw_gaps(frame, app, body),
        Tab::Feedback => crate::ui_views::draw_feedback(frame, app, body),
        Tab::Documents => crate::ui_views::draw_documents(frame, app, body),
    }
    draw_status(frame, app, status);
    if let Some(confirm) = app.confirm.clone() {
        draw_confirm(frame, confirm);
    } else if app.show_help {
        draw_help(frame);
    }
}

fn draw_tabs(frame: &mut Frame, app: &App, area: Rect) {
    let titles = [
        format!("1 Sessions ({})", app.sessions.len()),
        "2 Knowledge base".to_owned(),
        format!("3 Cleanup ({})", app.runs.len()),
        "4 Stats".to_owned(),
        "5 Gaps".to_owned(),
        "6 Feedback".to_owned(),
        "7 Documents".to_owned(),
    ];
    let tabs = Tabs::new(titles)
        .select(app.tab.index())
        .highlight_style(Style::new().reversed().bold())
        .divider("|");
    frame.render_widget(tabs, area);
}

fn draw_sessions(frame: &mut Frame, app: &App, area: Rect) {
    let block = Block::bordered().title(format!(
        " Live sessions: {}, answering {} ",
        app.sessions.len(),
        app.answering()
    ));
    if app.sessions.is_empty() {
        let text = match app.connection {
            ConnectionState::Connected => "No one is connected.",
            _ => "Waiting for the event socket…",
        };
        frame.render_widget(Paragraph::new(text).block(block), area);
        return;
    }
    let header = Row::new([
        "user",
        "connected since",
        "remote addr",
        "user agent",
        "asks",
        "answering",
    ])
    .bold();
    let rows = app.sessions.iter().map(|s| {
        Row::new([
            Cell::from(s.username.clone()),
            Cell::from(since(s.connected_at)),
            Cell::from(s.remote_addr.clone().unwrap_or_else(|| "-".into())),
            Cell::from(s.user_agent.clone().unwrap_or_else(|| "-".into())),
            Cell::from(s.asks.to_string()),
            Cell::from(if s.answering > 0 {
                Span::from(s.answering.to_string()).green().bold()
            } else {
                Span::from("0")
            }),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Length(16),
            Constraint::Length(26),
            Constraint::Length(22),
            Constraint::Min(10),
            Constraint::Length(5),
            Constraint::Length(9),
        ],
    )
    .header(header)
    .block(block)
    .row_highlight_style(Style::new().reversed())
    .highlight_symbol("> ");
    // A fresh state each frame: the selection lives in App, and ratatui scrolls to keep it
    // visible on its own.
    let mut state = TableState::default().with_selected(Some(app.selected_session));
    frame.render_stateful_widget(table, area, &mut state);
    crate::ui_views::draw_session_detail(frame, app, area);
}

fn draw_kb(frame: &mut Frame, app: &App, area: Rect) {
    let block = Block::bordered().title(" Knowledge base (r: reload) ");
    let mut lines: Vec<Line> = Vec::new();
    match &app.reload {
        Job::Idle => {}
        Job::Running { since } => lines.push(
            Line::from(format!(
                "Reloading… {}s",
                Instant::now().saturating_duration_since(*since).as_secs()
            ))
            .yellow()
            .bold(),
        ),
        Job::Done(()) => {
            lines.push(Line::from("Reload finished: the figures below are from it.").green())
        }
        Job::Failed(e) => lines.push(Line::from(format!("Reload failed: {e}")).red().bold()),
    }
    if let Some(progress) = &app.kb_progress {
        lines.push(crate::ui_views::progress_line(progress));
    }
    if !lines.is_empty() {
        lines.push(Line::from(""));
    }
    match &app.kb {
        None => lines.push(Line::from("Loading…")),
        Some(kb) => {
            let field = |name: &str, value: String| {
                Line::from(vec![
                    Span::from(format!("{name:<12}")).bold(),
                    Span::from(value),
                ])
            };
            lines.push(field("documents", kb.documents.to_string()));
            lines.push(field("chunks", kb.chunks.to_string()));
            lines.push(field(
                "embeddings",
                format!(
                    "{} / {} ({} dimensions)",
                    kb.embedding_provider, kb.embedding_model, kb.dimension
                ),
            ));
            lines.push(field("index", kb.index_kind.clone()));
            lines.push(field("loaded at", local_time(kb.loaded_at)));
            lines.push(field(
                "this load",
                format!(
                    "{} embedded, {} cached, took {} ms",
                    kb.embedded, kb.cached, kb.took_ms
                ),
            ));
            if kb.errors.is_empty() {
                lines.push(field("errors", "none".into()));
            } else {
                lines.push(
                    Line::from(format!("{} documents failed to load:", kb.errors.len()))
                        .red()
                        .bold(),
                );
                for e in &kb.errors {
                    lines.push(Line::from(format!("  {}: {}", e.document, e.message)).red());
                }
            }
        }
    }
    frame.render_widget(
        Paragraph::new(lines)
            .block(block)
            .wrap(Wrap { trim: false }),
        area,
    );
}

fn draw_cleanup(frame: &mut Frame, app: &App, area: Rect) {
    let [state_area, table_area] = area.layout(&Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(0),
    ]));
    let line = match &app.cleanup {
        Job::Idle => Line::from("c: run a cleanup now"),
        Job::Running { since } => Line::from(format!(
            "Cleanup running… {}s",
            Instant::now().saturating_duration_since(*since).as_secs()
        ))
        .yellow()
        .bold(),
        Job::Done(run) => Line::from(format!(
            "Cleanup #{} finished: {} messages, {} conversations deleted",
            run.id, run.messages_deleted, run.conversations_deleted
        ))
        .green(),
        Job::Failed(e) => Line::from(format!("Cleanup failed: {e}")).red().bold(),
    };
    frame.render_widget(Paragraph::new(line), state_area);

    let block = Block::bordered().title(" Recent cleanup runs ");
    if app.runs.is_empty() {
        frame.render_widget(Paragraph::new("No runs yet.").block(block), table_area);
        return;
    }
    let header = Row::new([
        "#", "trigger", "started", "took", "messages", "convs", "result",
    ])
    .bold();
    let rows = app.runs.iter().map(|r| {
        let took = r
            .finished_at
            .map(|f| format!("{} ms", (f - r.started_at).num_milliseconds()))
            .unwrap_or_else(|| "running".into());
        let result = match (&r.error, r.finished_at) {
            (Some(e), _) => Span::from(e.clone()).red(),
            (None, Some(_)) => Span::from("ok").green(),
            (None, None) => Span::from("…"),
        };
        Row::new([
            Cell::from(r.id.to_string()),
            Cell::from(format!("{:?}", r.trigger).to_lowercase()),
            Cell::from(local_time(r.started_at)),
            Cell::from(took),
            Cell::from(r.messages_deleted.to_string()),
            Cell::from(r.conversations_deleted.to_string()),
            Cell::from(result),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Length(6),
            Constraint::Length(10),
            Constraint::Length(20),
            Constraint::Length(10),
            Constraint::Length(9),
            Constraint::Length(6),
            Constraint::Min(6),
        ],
    )
    .header(header)
    .block(block)
    .row_highlight_style(Style::new().reversed())
    .highlight_symbol("> ");
    let mut state = TableState::default().with_selected(Some(app.selected_run));
    frame.render_stateful_widget(table, table_area, &mut state);
}

fn draw_stats(frame: &mut Frame, app: &App, area: Rect) {
    let title = match app.stats_at {
        Some(at) => format!(
            " Stats (updated {}s ago) ",
            Instant::now().saturating_duration_since(at).as_secs()
        ),
        None => " Stats ".to_owned(),
    };
    let block = Block::bordered().title(title);
    let Some(stats) = &app.stats else {
        frame.render_widget(Paragraph::new("Loading…").block(block), area);
        return;
    };
    let rows = [
        ("users", stats.users.to_string()),
        ("conversations", stats.conversations.to_string()),
        ("messages", stats.messages.to_string()),
        ("live sessions", stats.live_sessions.to_string()),
        ("answering now", stats.answering_now.to_string()),
        ("outbox pending", stats.outbox_pending.to_string()),
        ("outbox failed", stats.outbox_failed.to_string()),
    ]
    .map(|(name, value)| {
        let value = if name == "outbox failed" && stats.outbox_failed > 0 {
            Cell::from(Span::from(value).red().bold())
        } else {
            Cell::from(value)
        };
        Row::new([Cell::from(name), value])
    });
    let table = Table::new(rows, [Constraint::Length(16), Constraint::Min(8)]).block(block);
    match &app.series {
        None => frame.render_widget(table, area),
        Some(series) => {
            let [table_area, series_area] = area.layout(&Layout::vertical([
                Constraint::Length(9),
                Constraint::Min(0),
            ]));
            frame.render_widget(table, table_area);
            crate::ui_views::draw_series(frame, series, series_area);
        }
    }
}

fn draw_status(frame: &mut Frame, app: &App, area: Rect) {
    let connection = match &app.connection {
        ConnectionState::Connecting => Span::from("connecting…").yellow(),
        ConnectionState::Connected => Span::from("● live").green(),
        ConnectionState::Retrying {
            reason,
            next_attempt,
        } => Span::from(format!(
            "disconnected, retrying in {}s ({reason})",
            // Rounded up: "in 0s" while still waiting would read as a hang.
            next_attempt
                .saturating_duration_since(Instant::now())
                .as_millis()
                .div_ceil(1000)
        ))
        .red()
        .bold(),
    };
    let mut spans = vec![
        Span::from(format!(" {} ", app.server)).bold(),
        Span::from("| "),
        connection,
    ];
    match &app.last_error {
        Some(e) => {
            spans.push(Span::from(" | "));
            spans.push(Span::from(format!("error: {e} (x: dismiss)")).red());
        }
        None => spans.push(Span::from(" | ?: help  q: quit").dark_gray()),
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn draw_confirm(frame: &mut Frame, confirm: Confirm) {
    let delete_question;
    let (title, question) = match confirm {
        Confirm::DeleteDocument(name) => {
            delete_question =
                format!("Delete the document {name}? Answers stop using it on every instance.");
            (" Delete document ", delete_question.as_str())
        }
        Confirm::Disconnect(_) => (
            " Disconnect session ",
            "Close this user's socket now? The page tells them an administrator disconnected it.",
        ),
        Confirm::ReloadKb => (
            " Reload knowledge base ",
            "Reload the knowledge base from disk now? Questions in flight keep the old index.",
        ),
        Confirm::RunCleanup => (
            " Run cleanup ",
            "Delete history older than the retention period now?",
        ),
    };
    let area = popup(frame.area(), 60, 7);
    let text = vec![
        Line::from(question),
        Line::from(""),
        Line::from("y / Enter: yes    n / Esc: no").bold(),
    ];
    frame.render_widget(Clear, area);
    frame.render_widget(
        Paragraph::new(text)
            .wrap(Wrap { trim: true })
            .block(Block::bordered().title(title).border_style(Color::Yellow)),
        area,
    );
}

fn draw_help(frame: &mut Frame) {
    let keys = [
        ("Tab / Shift-Tab", "next / previous tab"),
        (
            "1 … 7",
            "sessions, knowledge base, cleanup, stats, gaps, feedback, documents",
        ),
        ("↑ ↓ (k j)", "select a row"),
        (
            "r",
            "reload the knowledge base (knowledge-base tab); refresh (tabs 5-7)",
        ),
        ("c", "run a cleanup now (cleanup tab)"),
        (
            "(stats tab)",
            "sparklines of the last hour: asks/min, latency p50/p95, provider errors",
        ),
        (
            "Enter",
            "open the selected session (live answer) or knowledge gap; Esc: back",
        ),
        (
            "k (in a session)",
            "disconnect it, after a y/n: its socket closes with a reason",
        ),
        ("u", "upload a file from this disk by path (documents tab)"),
        (
            "d",
            "delete the selected document, after a y/n (documents tab)",
        ),
        ("x", "dismiss the last error"),
        ("?", "this help"),
        ("q / Esc / Ctrl-C", "quit"),
    ];
    let lines: Vec<Line> = keys
        .iter()
        .map(|(k, what)| {
            Line::from(vec![
                Span::from(format!("{k:<18}")).bold(),
                Span::from(*what),
            ])
        })
        .collect();
    let area = popup(frame.area(), 90, lines.len() as u16 + 2);
    frame.render_widget(Clear, area);
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" Keys (any key closes) ")),
        area,
    );
}

/// A centred box of at most `width` × `height`, clipped to the screen.
fn popup(area: Rect, width: u16, height: u16) -> Rect {
    area.centered(
        Constraint::Length(width.min(area.width)),
        Constraint::Length(height.min(area.height)),
    )
}

fn local_time(at: DateTime<Utc>) -> String {
    at.with_timezone(&Local)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// "08:12:03 (5m ago)": when, and for how long, at a glance.
fn since(at: DateTime<Utc>) -> String {
    let age = Utc::now().signed_duration_since(at);
    let ago = if age.num_hours() > 0 {
        format!("{}h{}m", age.num_hours(), age.num_minutes() % 60)
    } else if age.num_minutes() > 0 {
        format!("{}m", age.num_minutes())
    } else {
        format!("{}s", age.num_seconds().max(0))
    };
    format!(
        "{} ({ago} ago)",
        at.with_timezone(&Local).format("%H:%M:%S")
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use protocol::admin::{AdminEvent, KbError, KbInfo, Stats};
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    use super::*;
    use crate::api::ApiError;
    use crate::app::AppEvent;
    use crate::app::tests::{key, run, session};
    use crossterm::event::KeyCode;

    /// The screen as text, one line per row, after drawing `app` at `width` × `height`.
    fn render(app: &App, width: u16, height: u16) -> String {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|frame| draw(frame, app)).unwrap();
        let buffer = terminal.backend().buffer();
        let mut text = String::new();
        for y in 0..buffer.area.height {
            for x in 0..buffer.area.width {
                text.push_str(buffer[(x, y)].symbol());
            }
            text.push('\n');
        }
        text
    }

    fn kb() -> KbInfo {
        KbInfo {
            documents: 12,
            chunks: 345,
            embedding_provider: "local".into(),
            embedding_model: "all-MiniLM-L6-v2".into(),
            dimension: 384,
            index_kind: "flat".into(),
            loaded_at: chrono::Utc::now(),
            embedded: 5,
            cached: 340,
            took_ms: 1234,
            errors: vec![KbError {
                document: "broken.md".into(),
                message: "not UTF-8".into(),
            }],
        }
    }

    #[test]
    fn sessions_appear_with_their_count() {
        let mut app = App::new("http://127.0.0.1:8000");
        app.apply(AppEvent::Connection(ConnectionState::Connected));
        app.apply(AppEvent::Server(AdminEvent::Snapshot {
            sessions: vec![session("alice", 1), session("bob", 2)],
        }));
        let screen = render(&app, 120, 20);
        assert!(screen.contains("1 Sessions (2)"), "{screen}");
        assert!(screen.contains("alice"), "{screen}");
        assert!(screen.contains("bob"), "{screen}");
        assert!(screen.contains("10.0.0.7:5555"), "{screen}");
        assert!(screen.contains("Mozilla/5.0"), "{screen}");
        assert!(
            screen.contains("> alice"),
            "the first row is selected: {screen}"
        );
        assert!(screen.contains("http://127.0.0.1:8000"), "{screen}");
        assert!(screen.contains("● live"), "{screen}");
    }

    #[test]
    fn an_empty_list_says_so() {
        let mut app = App::new("http://x");
        app.apply(AppEvent::Connection(ConnectionState::Connected));
        let screen = render(&app, 80, 12);
        assert!(screen.contains("No one is connected."), "{screen}");
    }

    #[test]
    fn disconnection_and_errors_show_in_the_status_bar() {
        let mut app = App::new("http://x");
        app.apply(AppEvent::Connection(ConnectionState::Retrying {
            reason: "connection refused".into(),
            next_attempt: Instant::now() + Duration::from_millis(3500),
        }));
        app.apply(AppEvent::StatsLoaded(Err(ApiError::Server {
            status: 403,
            code: Some(protocol::ErrorCode::Forbidden),
            message: "admins only".into(),
        })));
        let screen = render(&app, 160, 10);
        let status = screen.lines().last().unwrap();
        assert!(status.contains("disconnected, retrying in 4s"), "{status}");
        assert!(status.contains("stats: admins only (403)"), "{status}");
    }

    #[test]
    fn kb_tab_shows_the_index_and_load_errors() {
        let mut app = App::new("http://x");
        app.apply(AppEvent::KbLoaded(Ok(kb())));
        app.handle_key(key(KeyCode::Char('2')));
        let screen = render(&app, 100, 20);
        for expected in [
            "documents   12",
            "chunks      345",
            "local / all-MiniLM-L6-v2 (384 dimensions)",
            "flat",
            "5 embedded, 340 cached, took 1234 ms",
            "1 documents failed to load",
            "broken.md: not UTF-8",
        ] {
            assert!(screen.contains(expected), "missing {expected:?}:\n{screen}");
        }
    }

    #[test]
    fn reload_shows_the_dialog_then_progress_then_the_error() {
        let mut app = App::new("http://x");
        app.apply(AppEvent::KbLoaded(Ok(kb())));
        app.handle_key(key(KeyCode::Char('2')));
        app.handle_key(key(KeyCode::Char('r')));
        let screen = render(&app, 100, 20);
        assert!(screen.contains("Reload the knowledge base"), "{screen}");
        assert!(screen.contains("y / Enter: yes"), "{screen}");

        app.handle_key(key(KeyCode::Char('y')));
        let screen = render(&app, 100, 20);
        assert!(
            !screen.contains("y / Enter: yes"),
            "dialog closed: {screen}"
        );
        assert!(screen.contains("Reloading…"), "{screen}");

        app.apply(AppEvent::KbReloaded(Err(ApiError::Server {
            status: 503,
            code: Some(protocol::ErrorCode::ProviderUnavailable),
            message: "the embedding provider is unavailable".into(),
        })));
        let screen = render(&app, 100, 20);
        assert!(
            screen.contains("Reload failed: the embedding provider is unavailable (503)"),
            "{screen}"
        );
    }

    #[test]
    fn cleanup_tab_lists_runs_and_reports_already_running() {
        let mut app = App::new("http://x");
        let mut failed = run(7);
        failed.error = Some("lock timeout".into());
        app.apply(AppEvent::RunsLoaded(Ok(vec![failed, run(6)])));
        app.handle_key(key(KeyCode::Char('3')));
        app.handle_key(key(KeyCode::Char('c')));
        assert!(render(&app, 100, 20).contains("Delete history older than"));
        app.handle_key(key(KeyCode::Char('y')));
        app.apply(AppEvent::CleanupDone(Err(ApiError::Server {
            status: 409,
            code: Some(protocol::ErrorCode::Conflict),
            message: "a cleanup is in progress".into(),
        })));
        let screen = render(&app, 100, 20);
        assert!(screen.contains("3 Cleanup (2)"), "{screen}");
        assert!(screen.contains("lock timeout"), "{screen}");
        assert!(screen.contains("2000 ms"), "{screen}");
        assert!(screen.contains("manual"), "{screen}");
        assert!(
            screen.contains("Cleanup failed: a cleanup is already running"),
            "{screen}"
        );
    }

    #[test]
    fn stats_tab_shows_every_count() {
        let mut app = App::new("http://x");
        app.apply(AppEvent::StatsLoaded(Ok(Stats {
            users: 31,
            conversations: 52,
            messages: 1093,
            live_sessions: 4,
            answering_now: 2,
            outbox_pending: 6,
            outbox_failed: 1,
        })));
        app.handle_key(key(KeyCode::Char('4')));
        let screen = render(&app, 80, 14);
        for (name, value) in [
            ("users", "31"),
            ("conversations", "52"),
            ("messages", "1093"),
            ("live sessions", "4"),
            ("answering now", "2"),
            ("outbox pending", "6"),
            ("outbox failed", "1"),
        ] {
            let line = screen
                .lines()
                .find(|l| l.contains(name))
                .unwrap_or_else(|| panic!("no {name:?} row:\n{screen}"));
            let shown = line.trim_matches(|c: char| c == '│' || c.is_whitespace());
            assert_eq!(
                shown.strip_prefix(name).map(str::trim),
                Some(value),
                "{line}"
            );
        }
    }

    #[test]
    fn help_lists_the_keys() {
        let mut app = App::new("http://x");
        app.handle_key(key(KeyCode::Char('?')));
        let screen = render(&app, 100, 20);
        assert!(screen.contains("reload the knowledge base"), "{screen}");
        assert!(screen.contains("q / Esc / Ctrl-C"), "{screen}");
    }

    #[test]
    fn tiny_terminals_do_not_panic() {
        let mut app = App::new("http://x");
        app.sessions = vec![session("alice", 1)];
        app.confirm = Some(Confirm::RunCleanup);
        for (w, h) in [(1, 1), (10, 3), (20, 5)] {
            render(&app, w, h);
        }
    }
}

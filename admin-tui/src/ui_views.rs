//! Drawing the support-loop views (gaps, feedback, documents) and the reload progress bar.
//! Pure functions of [`App`], like [`crate::ui`].

use chrono::{DateTime, Local, Utc};
use protocol::admin::{KbProgress, StatsSeries};
use protocol::feedback::Rating;
use protocol::gaps::GapReason;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Clear, Paragraph, Row, Sparkline, Table, TableState, Wrap};

use crate::app::App;

fn short_time(at: DateTime<Utc>) -> String {
    at.with_timezone(&Local).format("%m-%d %H:%M").to_string()
}

fn score(s: Option<f32>) -> String {
    s.map_or_else(|| "-".into(), |s| format!("{s:.2}"))
}

pub fn draw_gaps(frame: &mut Frame, app: &App, area: Rect) {
    let view = &app.gaps;
    let Some(report) = &view.report else {
        let block = Block::bordered().title(" Knowledge gaps ");
        frame.render_widget(Paragraph::new("Loading…").block(block), area);
        return;
    };
    let block = Block::bordered().title(format!(
        " Knowledge gaps since {}: {} questions in {} groups (Enter: open, r: refresh) ",
        report.since.with_timezone(&Local).format("%Y-%m-%d"),
        report.questions,
        report.gaps.len()
    ));
    if report.gaps.is_empty() {
        let text = "No refused, rated-down or weakly grounded questions in this window.";
        frame.render_widget(Paragraph::new(text).block(block), area);
        return;
    }
    let header = Row::new([
        "#",
        "size",
        "last asked",
        "best",
        "closest document",
        "question",
    ])
    .bold();
    let rows = report.gaps.iter().enumerate().map(|(i, g)| {
        Row::new([
            Cell::from((i + 1).to_string()),
            Cell::from(Span::from(g.size.to_string()).bold()),
            Cell::from(short_time(g.last_asked)),
            Cell::from(score(g.best_score)),
            Cell::from(g.best_document.clone().unwrap_or_else(|| "-".into())),
            Cell::from(g.representative.clone()),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Length(3),
            Constraint::Length(5),
            Constraint::Length(12),
            Constraint::Length(5),
            Constraint::Length(30),
            Constraint::Min(20),
        ],
    )
    .header(header)
    .block(block)
    .row_highlight_style(Style::new().reversed())
    .highlight_symbol("> ");
    let mut state = TableState::default().with_selected(Some(view.selected));
    frame.render_stateful_widget(table, area, &mut state);

    if view.open
        && let Some(gap) = report.gaps.get(view.selected)
    {
        let mut lines = vec![
            Line::from(vec![
                Span::from("Representative: ").bold(),
                Span::from(gap.representative.clone()),
            ]),
            Line::from(format!(
                "{} questions: {} refused, {} rated down, {} weakly grounded; last asked {}",
                gap.size,
                gap.refused,
                gap.rated_down,
                gap.weakly_grounded,
                short_time(gap.last_asked)
            )),
            Line::from(format!(
                "Closest document: {} (similarity {})",
                gap.best_document.as_deref().unwrap_or("none"),
                score(gap.best_score)
            )),
            Line::from(""),
            Line::from("Examples, newest first:").bold(),
        ];
        for e in &gap.examples {
            let reasons: Vec<&str> = e
                .reasons
                .iter()
                .map(|r| match r {
                    GapReason::Refused => "refused",
                    GapReason::RatedDown => "rated down",
                    GapReason::WeaklyGrounded => "weak",
                })
                .collect();
            lines.push(Line::from(format!(
                "  {}  {}  [{}; best {}]",
                short_time(e.asked_at),
                e.question,
                reasons.join(", "),
                score(e.best_score)
            )));
            if let Some(c) = &e.comment {
                lines.push(Line::from(format!("      comment: {c}")).italic());
            }
        }
        lines.push(Line::from(""));
        lines.push(Line::from("Esc / Enter: back").dark_gray());
        let height = (lines.len() as u16).saturating_add(2);
        let popup = area.centered(
            Constraint::Length(area.width.saturating_sub(4).min(110)),
            Constraint::Length(height.min(area.height)),
        );
        frame.render_widget(Clear, popup);
        frame.render_widget(
            Paragraph::new(lines)
                .wrap(Wrap { trim: false })
                .block(Block::bordered().title(" Gap ").border_style(Color::Cyan)),
            popup,
        );
    }
}

pub fn draw_feedback(frame: &mut Frame, app: &App, area: Rect) {
    let view = &app.feedback;
    let block = Block::bordered().title(" Latest answer ratings (r: refresh) ");
    let Some(entries) = &view.entries else {
        frame.render_widget(Paragraph::new("Loading…").block(block), area);
        return;
    };
    if entries.is_empty() {
        frame.render_widget(Paragraph::new("No ratings yet.").block(block), area);
        return;
    }
    let header = Row::new(["when", "user", "rating", "question", "answer", "comment"]).bold();
    let rows = entries.iter().map(|f| {
        let rating = match f.rating {
            Rating::Up => Span::from("up").green(),
            Rating::Down => Span::from("down").red().bold(),
        };
        Row::new([
            Cell::from(short_time(f.rated_at)),
            Cell::from(f.username.clone()),
            Cell::from(rating),
            Cell::from(f.question.clone()),
            Cell::from(f.answer_excerpt.replace('\n', " ")),
            Cell::from(f.comment.clone().unwrap_or_default()),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Length(12),
            Constraint::Length(12),
            Constraint::Length(6),
            Constraint::Percentage(30),
            Constraint::Percentage(30),
            Constraint::Min(10),
        ],
    )
    .header(header)
    .block(block)
    .row_highlight_style(Style::new().reversed())
    .highlight_symbol("> ");
    let mut state = TableState::default().with_selected(Some(view.selected));
    frame.render_stateful_widget(table, area, &mut state);
}

pub fn draw_documents(frame: &mut Frame, app: &App, area: Rect) {
    let view = &app.documents;
    let [table_area, status_area] = area.layout(&Layout::vertical([
        Constraint::Min(0),
        Constraint::Length(1),
    ]));
    let block = Block::bordered().title(" Documents (u: upload a file, d: delete, r: refresh) ");
    match &view.documents {
        None => frame.render_widget(Paragraph::new("Loading…").block(block), table_area),
        Some(documents) => {
            let header = Row::new([
                "name",
                "title",
                "kind",
                "stored in",
                "bytes",
                "chunks",
                "modified",
            ])
            .bold();
            let rows = documents.iter().map(|d| {
                Row::new([
                    Cell::from(d.name.clone()),
                    Cell::from(d.title.clone()),
                    Cell::from(d.kind.clone()),
                    Cell::from(match d.source {
                        protocol::documents::DocumentSource::Folder => "folder",
                        protocol::documents::DocumentSource::Database => "database",
                    }),
                    Cell::from(d.bytes.to_string()),
                    Cell::from(d.chunks.to_string()),
                    Cell::from(d.modified.map(short_time).unwrap_or_default()),
                ])
            });
            let table = Table::new(
                rows,
                [
                    Constraint::Min(16),
                    Constraint::Min(16),
                    Constraint::Length(9),
                    Constraint::Length(9),
                    Constraint::Length(8),
                    Constraint::Length(6),
                    Constraint::Length(12),
                ],
            )
            .header(header)
            .block(block)
            .row_highlight_style(Style::new().reversed())
            .highlight_symbol("> ");
            let mut state = TableState::default().with_selected(Some(view.selected));
            frame.render_stateful_widget(table, table_area, &mut state);
        }
    }
    let status = if let Some(input) = &view.input {
        Line::from(vec![
            Span::from("Upload file: ").bold(),
            Span::from(input.clone()),
            Span::from("█"),
            Span::from("  (Enter: upload, Esc: cancel)").dark_gray(),
        ])
    } else if view.busy {
        Line::from("Working… the index is rebuilt before the server answers.").yellow()
    } else {
        match &view.outcome {
            Some(Ok(done)) => Line::from(done.clone()).green(),
            Some(Err(e)) => Line::from(format!("failed: {e}")).red().bold(),
            None => Line::from(""),
        }
    };
    frame.render_widget(Paragraph::new(status), status_area);
}

/// The open session's detail over the sessions table: who, from where, answering now (live,
/// from the event socket), and the user's recent questions with the start of each answer.
pub fn draw_session_detail(frame: &mut Frame, app: &App, area: Rect) {
    let Some((session_id, questions)) = &app.session_detail else {
        return;
    };
    let Some(session) = app.sessions.iter().find(|s| s.session_id == *session_id) else {
        let popup = area.centered(Constraint::Length(50), Constraint::Length(3));
        frame.render_widget(Clear, popup);
        frame.render_widget(
            Paragraph::new("This session has ended. Esc: back").block(Block::bordered()),
            popup,
        );
        return;
    };
    let mut lines = vec![
        Line::from(vec![
            Span::from(session.username.clone()).bold(),
            Span::from(format!(
                "  connected {}  from {}  asks {}",
                short_time(session.connected_at),
                session.remote_addr.as_deref().unwrap_or("-"),
                session.asks
            )),
        ]),
        if session.answering > 0 {
            Line::from(format!("answering now: {}", session.answering))
                .green()
                .bold()
        } else {
            Line::from("idle").dark_gray()
        },
        Line::from(""),
        Line::from("Recent questions, newest first:").bold(),
    ];
    match questions {
        None => lines.push(Line::from("  loading…")),
        Some(q) if q.is_empty() => lines.push(Line::from("  none yet")),
        Some(q) => {
            for item in q {
                let status = match item.answer_status {
                    None => "answering…".to_owned(),
                    Some(s) => format!("{s:?}").to_lowercase(),
                };
                lines.push(Line::from(format!(
                    "  {}  {}  [{status}]",
                    short_time(item.asked_at),
                    item.question
                )));
                if let Some(answer) = &item.answer_excerpt {
                    let short: String = answer.replace('\n', " ").chars().take(140).collect();
                    lines.push(Line::from(format!("      → {short}")).dark_gray());
                }
            }
        }
    }
    let width = area.width.saturating_sub(4).min(120);
    live_answer_lines(app, &mut lines, width.saturating_sub(2));
    lines.push(Line::from(""));
    lines.push(Line::from("k: disconnect (y/n)   Esc / Enter: back").dark_gray());
    let height = (lines.len() as u16).saturating_add(2);
    let popup = area.centered(
        Constraint::Length(width),
        Constraint::Length(height.min(area.height)),
    );
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(lines).wrap(Wrap { trim: false }).block(
            Block::bordered()
                .title(" Session ")
                .border_style(Color::Cyan),
        ),
        popup,
    );
}

/// Characters of a live answer shown: its end, which is what is streaming.
const LIVE_SHOWN_CHARS: usize = 600;

/// The watched user's latest answer as it streams (the server relays it while the detail is
/// open), pre-wrapped to `width` so the popup's height can count its lines.
fn live_answer_lines(app: &App, lines: &mut Vec<Line<'static>>, width: u16) {
    lines.push(Line::from(""));
    if let Some((_, 0)) = app.watching {
        lines.push(
            Line::from("Live answer: not streamed here (this user is on another instance).")
                .dark_gray(),
        );
        return;
    }
    let Some(answer) = app.live_answers.last() else {
        lines.push(Line::from("Live answer: none since the detail was opened.").dark_gray());
        return;
    };
    let running = app
        .live_answers
        .iter()
        .filter(|a| a.ended.is_none())
        .count();
    let title = match &answer.ended {
        None if running > 1 => {
            format!("Live answer ({}, streaming; {running} running):", answer.id)
        }
        None => format!("Live answer ({}, streaming):", answer.id),
        Some(how) => format!("Last answer ({}, ended: {how}):", answer.id),
    };
    lines.push(if answer.ended.is_none() {
        Line::from(title).green().bold()
    } else {
        Line::from(title).bold()
    });
    let text = answer.text.replace('\n', " ");
    let chars = text.chars().count();
    let mut shown: String = text
        .chars()
        .skip(chars.saturating_sub(LIVE_SHOWN_CHARS))
        .collect();
    if answer.dropped || chars > LIVE_SHOWN_CHARS {
        shown.insert(0, '…');
    }
    if answer.ended.is_none() {
        shown.push('▌');
    }
    let width = usize::from(width.saturating_sub(2)).max(10);
    let mut row = String::new();
    for word in shown.split(' ') {
        if !row.is_empty() && row.chars().count() + 1 + word.chars().count() > width {
            lines.push(Line::from(format!("  {row}")));
            row.clear();
        }
        if !row.is_empty() {
            row.push(' ');
        }
        row.push_str(word);
    }
    if !row.is_empty() {
        lines.push(Line::from(format!("  {row}")));
    }
}

/// Sparklines of the last hour (one bar per minute): asks, latency p50 and p95, provider
/// errors, each titled with its latest and highest value.
pub fn draw_series(frame: &mut Frame, series: &StatsSeries, area: Rect) {
    let asks: Vec<u64> = series
        .minutes
        .iter()
        .map(|m| m.asks.max(0) as u64)
        .collect();
    let p50: Vec<u64> = series
        .minutes
        .iter()
        .map(|m| m.latency_p50_ms.unwrap_or(0.0).max(0.0) as u64)
        .collect();
    let p95: Vec<u64> = series
        .minutes
        .iter()
        .map(|m| m.latency_p95_ms.unwrap_or(0.0).max(0.0) as u64)
        .collect();
    let errors: Vec<u64> = series
        .minutes
        .iter()
        .map(|m| m.provider_errors.max(0) as u64)
        .collect();
    let lines = [
        ("asks/min", asks, "", Color::Cyan),
        ("latency p50", p50, " ms", Color::Green),
        ("latency p95", p95, " ms", Color::Yellow),
        ("provider errors/min", errors, "", Color::Red),
    ];
    let areas = area.layout_vec(&Layout::vertical([Constraint::Length(3); 4]));
    for ((name, data, unit, color), area) in lines.into_iter().zip(areas) {
        let last = data.last().copied().unwrap_or(0);
        let max = data.iter().copied().max().unwrap_or(0);
        let title = format!(" {name}, last hour: now {last}{unit}, max {max}{unit} ");
        let sparkline = Sparkline::default()
            .block(Block::bordered().title(title))
            .style(Style::new().fg(color))
            .data(data);
        frame.render_widget(sparkline, area);
    }
}

/// `reading 14 documents  [██████░░░░]  64/70 chunks ready (60 from the cache, 4 embedded)`
pub fn progress_line(p: &KbProgress) -> Line<'static> {
    const WIDTH: usize = 20;
    let filled = (p.chunks_ready * WIDTH)
        .checked_div(p.chunks_total)
        .unwrap_or(WIDTH)
        .min(WIDTH);
    Line::from(vec![
        Span::from(if p.phase == "done" {
            format!("last load: {} documents  ", p.documents)
        } else {
            format!("{} {} documents  ", p.phase, p.documents)
        })
        .bold(),
        Span::from("█".repeat(filled)).cyan(),
        Span::from("░".repeat(WIDTH - filled)).dark_gray(),
        Span::from(format!(
            "  {}/{} chunks ready ({} from the cache, {} embedded)",
            p.chunks_ready, p.chunks_total, p.cache_hits, p.chunks_embedded
        )),
    ])
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
    use protocol::documents::{DocumentSource, KbDocument};
    use protocol::feedback::FeedbackEntry;
    use protocol::gaps::{Gap, GapExample, GapsReport};
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    use uuid::Uuid;

    use super::*;
    use crate::app::{Action, AppEvent, Confirm, Tab};

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    fn render(app: &App, width: u16, height: u16) -> String {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|frame| crate::ui::draw(frame, app)).unwrap();
        let buffer = terminal.backend().buffer();
        let mut text = String::new();
        for y in 0..buffer.area.height {
            let line: String = (0..buffer.area.width)
                .map(|x| buffer[(x, y)].symbol())
                .collect();
            text.push_str(line.trim_end());
            text.push('\n');
        }
        text
    }

    fn at(day: u32, hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, day, hour, 0, 0).unwrap()
    }

    fn example(question: &str, day: u32, reasons: Vec<GapReason>) -> GapExample {
        GapExample {
            question: question.into(),
            asked_at: at(day, 9),
            reasons,
            best_score: Some(0.31),
            comment: None,
        }
    }

    pub fn report() -> GapsReport {
        GapsReport {
            since: at(1, 0),
            questions: 9,
            similarity: 0.68,
            weak_score: 0.41,
            half_life_hours: 168.0,
            gaps: vec![
                Gap {
                    size: 5,
                    representative: "Are dogs allowed in your store?".into(),
                    examples: vec![
                        example(
                            "Can I bring my dog into the store?",
                            30,
                            vec![GapReason::Refused],
                        ),
                        GapExample {
                            comment: Some("Guide dogs at least?".into()),
                            ..example(
                                "Is my dog allowed inside the shop?",
                                29,
                                vec![GapReason::Refused, GapReason::RatedDown],
                            )
                        },
                        example(
                            "Are dogs allowed in your store?",
                            28,
                            vec![GapReason::Refused],
                        ),
                    ],
                    best_document: Some("contact-and-opening-hours.md".into()),
                    best_score: Some(0.33),
                    refused: 5,
                    rated_down: 1,
                    weakly_grounded: 0,
                    last_asked: at(30, 9),
                    score: 4.6,
                },
                Gap {
                    size: 3,
                    representative: "Do you offer a student discount?".into(),
                    examples: vec![example(
                        "Is there a discount for students?",
                        29,
                        vec![GapReason::Refused],
                    )],
                    best_document: Some("promotions-and-price-match.md".into()),
                    best_score: Some(0.35),
                    refused: 3,
                    rated_down: 0,
                    weakly_grounded: 0,
                    last_asked: at(29, 9),
                    score: 2.5,
                },
                Gap {
                    size: 1,
                    representative: "Can I pay with a cheque?".into(),
                    examples: vec![example(
                        "Can I pay with a cheque?",
                        27,
                        vec![GapReason::WeaklyGrounded],
                    )],
                    best_document: Some("payments.md".into()),
                    best_score: Some(0.38),
                    refused: 0,
                    rated_down: 0,
                    weakly_grounded: 1,
                    last_asked: at(27, 9),
                    score: 0.6,
                },
            ],
        }
    }

    #[test]
    fn gaps_view_lists_groups_and_enter_opens_one() {
        let mut app = App::new("http://127.0.0.1:8000");
        assert_eq!(
            app.handle_key(key(KeyCode::Char('5'))),
            Some(Action::LoadGaps)
        );
        assert_eq!(app.tab, Tab::Gaps);
        assert!(render(&app, 110, 20).contains("Loading…"));
        app.apply(AppEvent::GapsLoaded(Ok(report())));
        let screen = render(&app, 110, 20);
        assert!(screen.contains("9 questions in 3 groups"), "{screen}");
        assert!(
            screen.contains("Are dogs allowed in your store?"),
            "{screen}"
        );
        assert!(
            screen.contains("0.33  contact-and-opening-hours.md"),
            "{screen}"
        );

        app.handle_key(key(KeyCode::Enter));
        assert!(app.gaps.open);
        let screen = render(&app, 110, 24);
        assert!(
            screen.contains("5 questions: 5 refused, 1 rated down"),
            "{screen}"
        );
        assert!(screen.contains("comment: Guide dogs at least?"), "{screen}");
        // Esc closes the group, it does not quit.
        assert_eq!(app.handle_key(key(KeyCode::Esc)), None);
        assert!(!app.gaps.open);
        assert!(!app.should_quit);
        app.handle_key(key(KeyCode::Down));
        app.handle_key(key(KeyCode::Down));
        app.handle_key(key(KeyCode::Down));
        assert_eq!(app.gaps.selected, 2, "selection stays inside the list");
        assert_eq!(
            app.handle_key(key(KeyCode::Char('r'))),
            Some(Action::LoadGaps)
        );
    }

    /// The README's text capture of the Gaps view: `cargo test -p admin-tui gaps_capture --
    /// --nocapture` prints it.
    #[test]
    fn gaps_capture() {
        let mut app = App::new("http://127.0.0.1:8000");
        app.handle_key(key(KeyCode::Char('5')));
        app.apply(AppEvent::GapsLoaded(Ok(report())));
        let screen = render(&app, 100, 9);
        println!("{screen}");
        assert!(screen.contains("1 Sessions"));
        app.handle_key(key(KeyCode::Enter));
        let opened = render(&app, 100, 16);
        println!("{opened}");
        assert!(opened.contains("Examples, newest first"));
    }

    #[test]
    fn feedback_view_shows_ratings_with_their_comment() {
        let mut app = App::new("http://x");
        assert_eq!(
            app.handle_key(key(KeyCode::Char('6'))),
            Some(Action::LoadFeedback)
        );
        app.apply(AppEvent::FeedbackLoaded(Ok(vec![FeedbackEntry {
            message_id: Uuid::nil(),
            username: "alice".into(),
            rating: Rating::Down,
            comment: Some("Which countries?".into()),
            question: "How much is shipping?".into(),
            answer_excerpt: "Standard shipping is free over 50 euros.".into(),
            rated_at: at(30, 10),
        }])));
        let screen = render(&app, 140, 8);
        for text in ["alice", "down", "How much is shipping?", "Which countries?"] {
            assert!(screen.contains(text), "{text}: {screen}");
        }
    }

    #[test]
    fn documents_view_uploads_by_path_and_deletes_after_confirmation() {
        let mut app = App::new("http://x");
        assert_eq!(
            app.handle_key(key(KeyCode::Char('7'))),
            Some(Action::LoadDocuments)
        );
        app.apply(AppEvent::DocumentsLoaded(Ok(vec![KbDocument {
            name: "returns.md".into(),
            title: "Returns and refunds".into(),
            bytes: 1234,
            chunks: 3,
            modified: Some(at(29, 8)),
            source: DocumentSource::Folder,
            kind: "markdown".into(),
        }])));
        let screen = render(&app, 120, 8);
        assert!(screen.contains("Returns and refunds"), "{screen}");
        assert!(screen.contains("folder"), "{screen}");

        // `u` opens the prompt; typed keys (even `q`) go into it.
        app.handle_key(key(KeyCode::Char('u')));
        for c in "/tmp/q.pdf".chars() {
            assert_eq!(app.handle_key(key(KeyCode::Char(c))), None);
        }
        assert!(!app.should_quit);
        assert!(render(&app, 120, 8).contains("Upload file: /tmp/q.pdf"));
        assert_eq!(
            app.handle_key(key(KeyCode::Enter)),
            Some(Action::UploadDocument("/tmp/q.pdf".into()))
        );
        app.apply(AppEvent::DocumentChanged(Err(
            crate::api::ApiError::Server {
                status: 422,
                code: None,
                message: "body: the document has no text".into(),
            },
        )));
        assert!(render(&app, 120, 8).contains("failed: body: the document has no text"));

        app.handle_key(key(KeyCode::Char('d')));
        assert_eq!(
            app.confirm,
            Some(Confirm::DeleteDocument("returns.md".into()))
        );
        assert!(render(&app, 120, 12).contains("Delete the document returns.md?"));
        assert_eq!(
            app.handle_key(key(KeyCode::Char('y'))),
            Some(Action::DeleteDocument("returns.md".into()))
        );
        assert!(app.documents.busy);
    }

    #[test]
    fn stats_show_sparklines_of_the_last_hour() {
        let mut app = App::new("http://x");
        app.handle_key(key(KeyCode::Char('4')));
        let minutes = (0..60)
            .map(|i| protocol::admin::MinuteStats {
                at: at(30, 9) + chrono::Duration::minutes(i),
                asks: i % 7,
                latency_p50_ms: Some(400.0 + i as f64),
                latency_p95_ms: Some(900.0),
                provider_errors: i64::from(i == 59),
            })
            .collect();
        app.apply(AppEvent::SeriesLoaded(Ok(StatsSeries { minutes })));
        app.apply(AppEvent::StatsLoaded(Ok(protocol::admin::Stats {
            users: 1,
            conversations: 2,
            messages: 3,
            live_sessions: 0,
            answering_now: 0,
            outbox_pending: 0,
            outbox_failed: 0,
        })));
        let screen = render(&app, 100, 24);
        assert!(
            screen.contains("asks/min, last hour: now 3, max 6"),
            "{screen}"
        );
        assert!(
            screen.contains("latency p50, last hour: now 459 ms, max 459 ms"),
            "{screen}"
        );
        assert!(
            screen.contains("latency p95, last hour: now 900 ms"),
            "{screen}"
        );
        assert!(
            screen.contains("provider errors/min, last hour: now 1, max 1"),
            "{screen}"
        );
        assert!(screen.contains("messages"), "the counts stay: {screen}");
    }

    #[test]
    fn enter_opens_a_session_with_its_recent_questions() {
        let mut app = App::new("http://x");
        app.apply(AppEvent::Server(protocol::admin::AdminEvent::Snapshot {
            sessions: vec![crate::app::tests::session("alice", 1)],
        }));
        let user_id = app.sessions[0].user_id;
        assert_eq!(
            app.handle_key(key(KeyCode::Enter)),
            Some(Action::LoadQuestions(user_id))
        );
        assert!(render(&app, 120, 16).contains("loading…"));
        app.apply(AppEvent::QuestionsLoaded(
            user_id,
            Ok(vec![protocol::admin::RecentQuestion {
                asked_at: at(30, 9),
                question: "How long do refunds take?".into(),
                answer_status: Some(protocol::chat::MessageStatus::Complete),
                answer_excerpt: Some("Refunds are issued within 5 business days.".into()),
            }]),
        ));
        let screen = render(&app, 120, 16);
        assert!(screen.contains("answering now: 1"), "{screen}");
        assert!(
            screen.contains("How long do refunds take?  [complete]"),
            "{screen}"
        );
        assert!(
            screen.contains("→ Refunds are issued within 5 business days."),
            "{screen}"
        );
        // `q` closes the detail, it does not quit.
        assert_eq!(app.handle_key(key(KeyCode::Char('q'))), None);
        assert!(app.session_detail.is_none());
        assert!(!app.should_quit);
    }

    #[test]
    fn k_in_an_open_session_disconnects_it_after_a_yes() {
        let mut app = App::new("http://x");
        app.apply(AppEvent::Server(protocol::admin::AdminEvent::Snapshot {
            sessions: vec![crate::app::tests::session("alice", 1)],
        }));
        let session_id = app.sessions[0].session_id;
        // In the list, `k` only moves the selection.
        assert_eq!(app.handle_key(key(KeyCode::Char('k'))), None);
        assert!(app.confirm.is_none());
        app.handle_key(key(KeyCode::Enter));
        assert!(render(&app, 120, 16).contains("k: disconnect"));
        assert_eq!(app.handle_key(key(KeyCode::Char('k'))), None);
        assert_eq!(app.confirm, Some(Confirm::Disconnect(session_id)));
        assert!(render(&app, 120, 16).contains("Disconnect session"));
        // `n` keeps it; `k` then `y` disconnects and closes the detail.
        assert_eq!(app.handle_key(key(KeyCode::Char('n'))), None);
        assert!(app.session_detail.is_some());
        app.handle_key(key(KeyCode::Char('k')));
        assert_eq!(
            app.handle_key(key(KeyCode::Char('y'))),
            Some(Action::Disconnect(session_id))
        );
        assert!(app.session_detail.is_none());
        app.apply(AppEvent::Disconnected(Err(crate::api::ApiError::Server {
            status: 404,
            code: Some(protocol::ErrorCode::NotFound),
            message: "no such live session".into(),
        })));
        assert!(
            app.last_error
                .as_deref()
                .is_some_and(|e| e.contains("disconnect failed")),
            "{:?}",
            app.last_error
        );
    }

    #[test]
    fn an_open_session_streams_its_users_answer_live() {
        use protocol::admin::AdminEvent;
        let mut app = App::new("http://x");
        let alice = crate::app::tests::session("alice", 1);
        let bob = crate::app::tests::session("bob", 2);
        let alice_id = alice.user_id;
        app.apply(AppEvent::Server(AdminEvent::Snapshot {
            sessions: vec![alice, bob.clone()],
        }));
        assert_eq!(app.watched_user(), None, "nothing open, nothing watched");
        app.handle_key(key(KeyCode::Enter));
        assert_eq!(app.watched_user(), Some(alice_id));
        let screen = render(&app, 120, 24);
        assert!(
            screen.contains("Live answer: none since the detail was opened."),
            "{screen}"
        );

        let delta = |user_id, seq: u64, text: &str| {
            AppEvent::Server(AdminEvent::AnswerDelta {
                user_id,
                id: "q7".into(),
                seq,
                text: text.into(),
            })
        };
        app.apply(AppEvent::Server(AdminEvent::AnswerStarted {
            user_id: alice_id,
            id: "q7".into(),
        }));
        app.apply(delta(alice_id, 0, "Refunds are "));
        app.apply(delta(alice_id, 1, "issued within "));
        // Another user's frames (a stale relay) are not mixed in.
        app.apply(delta(bob.user_id, 2, "NOT ALICE "));
        let screen = render(&app, 120, 24);
        assert!(screen.contains("Live answer (q7, streaming):"), "{screen}");
        assert!(screen.contains("Refunds are issued within ▌"), "{screen}");
        assert!(!screen.contains("NOT ALICE"), "{screen}");

        app.apply(delta(alice_id, 2, "5 business days."));
        app.apply(AppEvent::Server(AdminEvent::AnswerEnded {
            user_id: alice_id,
            id: "q7".into(),
            finish_reason: Some(protocol::chat::FinishReason::Stop),
            message_id: Some(Uuid::nil()),
            error: None,
        }));
        let screen = render(&app, 120, 24);
        assert!(
            screen.contains("Last answer (q7, ended: stop):"),
            "{screen}"
        );
        assert!(
            screen.contains("Refunds are issued within 5 business days."),
            "{screen}"
        );

        // A watch answered with no local socket: the answers are generated elsewhere.
        app.apply(AppEvent::Server(AdminEvent::Watching {
            user_id: alice_id,
            local_sessions: 0,
        }));
        assert!(render(&app, 120, 24).contains("not streamed here"));

        // Closing the detail stops the watch and forgets the answers.
        app.handle_key(key(KeyCode::Esc));
        assert_eq!(app.watched_user(), None);
        assert!(app.live_answers.is_empty());
        assert_eq!(app.watching, None);
    }

    #[test]
    fn long_live_answers_keep_their_end() {
        use protocol::admin::AdminEvent;
        let mut app = App::new("http://x");
        let alice = crate::app::tests::session("alice", 1);
        let user_id = alice.user_id;
        app.apply(AppEvent::Server(AdminEvent::Snapshot {
            sessions: vec![alice],
        }));
        app.handle_key(key(KeyCode::Enter));
        for seq in 0..2000 {
            app.apply(AppEvent::Server(AdminEvent::AnswerDelta {
                user_id,
                id: "long".into(),
                seq,
                text: format!("w{seq} "),
            }));
        }
        let answer = app.live_answers.last().unwrap();
        assert!(answer.dropped);
        assert!(answer.text.chars().count() <= 4000);
        assert!(answer.text.ends_with("w1999 "));
        let screen = render(&app, 100, 40);
        assert!(screen.contains("w1999"), "{screen}");
        assert!(screen.contains('…'), "{screen}");
    }

    #[test]
    fn reload_progress_shows_as_a_bar() {
        let mut app = App::new("http://x");
        app.handle_key(key(KeyCode::Char('2')));
        app.apply(AppEvent::Server(protocol::admin::AdminEvent::KbProgress {
            progress: KbProgress {
                phase: "embedding".into(),
                documents: 14,
                chunks_total: 70,
                chunks_ready: 35,
                chunks_embedded: 5,
                cache_hits: 30,
            },
        }));
        let screen = render(&app, 120, 10);
        assert!(screen.contains("embedding 14 documents"), "{screen}");
        assert!(screen.contains("██████████░░░░░░░░░░"), "{screen}");
        assert!(screen.contains("35/70 chunks ready (30 from the cache, 5 embedded)"));
    }
}

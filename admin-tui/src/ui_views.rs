//! Drawing the support-loop views (gaps, feedback, documents) and the reload progress bar.
//! Pure functions of [`App`], like [`crate::ui`].

use chrono::{DateTime, Local, Utc};
use protocol::admin::KbProgress;
use protocol::feedback::Rating;
use protocol::gaps::GapReason;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Clear, Paragraph, Row, Table, TableState, Wrap};

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
    let header = Row::new(["#", "size", "last asked", "closest document", "question"]).bold();
    let rows = report.gaps.iter().enumerate().map(|(i, g)| {
        let document = match &g.best_document {
            Some(d) => format!("{d} ({})", score(g.best_score)),
            None => "-".into(),
        };
        Row::new([
            Cell::from((i + 1).to_string()),
            Cell::from(Span::from(g.size.to_string()).bold()),
            Cell::from(short_time(g.last_asked)),
            Cell::from(document),
            Cell::from(g.representative.clone()),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Length(3),
            Constraint::Length(5),
            Constraint::Length(12),
            Constraint::Length(28),
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

/// `reading 14 documents  [██████░░░░]  64/70 chunks ready (60 from the cache, 4 embedded)`
pub fn progress_line(p: &KbProgress) -> Line<'static> {
    const WIDTH: usize = 20;
    let filled = (p.chunks_ready * WIDTH)
        .checked_div(p.chunks_total)
        .unwrap_or(WIDTH)
        .min(WIDTH);
    Line::from(vec![
        Span::from(format!("{} {} documents  ", p.phase, p.documents)).bold(),
        Span::from("█".repeat(filled)).cyan(),
        Span::from("░".repeat(WIDTH - filled)).dark_gray(),
        Span::from(format!(
            "  {}/{} chunks ready ({} from the cache, {} embedded)",
            p.chunks_ready, p.chunks_total, p.cache_hits, p.chunks_embedded
        )),
    ])
}

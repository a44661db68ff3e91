//! State of the support-loop views (knowledge gaps, feedback, documents) and how keys change
//! it. No I/O: keys produce [`Action`]s for the run loop, as in [`crate::app`].

use std::path::{Path, PathBuf};

use crossterm::event::KeyCode;
use protocol::documents::KbDocument;
use protocol::feedback::FeedbackEntry;
use protocol::gaps::GapsReport;

use crate::app::Action;

/// Longest path the upload prompt takes.
const MAX_INPUT_CHARS: usize = 4096;

/// The knowledge-gaps view: groups, one selected, optionally opened.
#[derive(Debug, Default)]
pub struct GapsView {
    pub report: Option<GapsReport>,
    pub selected: usize,
    /// The selected group is shown in full (examples, reasons, comments).
    pub open: bool,
}

impl GapsView {
    pub fn len(&self) -> usize {
        self.report.as_ref().map_or(0, |r| r.gaps.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keys while a group is open: anything that means "back" closes it. Always consumed.
    pub fn handle_open_key(&mut self, code: KeyCode) {
        if matches!(
            code,
            KeyCode::Esc | KeyCode::Enter | KeyCode::Char('q') | KeyCode::Backspace
        ) {
            self.open = false;
        }
    }

    pub fn open_selected(&mut self) {
        self.open = !self.is_empty();
    }

    pub fn set(&mut self, report: GapsReport) {
        self.report = Some(report);
        self.selected = self.selected.min(self.len().saturating_sub(1));
        if self.is_empty() {
            self.open = false;
        }
    }
}

/// The feedback view: the latest ratings.
#[derive(Debug, Default)]
pub struct FeedbackView {
    pub entries: Option<Vec<FeedbackEntry>>,
    pub selected: usize,
}

impl FeedbackView {
    pub fn len(&self) -> usize {
        self.entries.as_ref().map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn set(&mut self, entries: Vec<FeedbackEntry>) {
        self.entries = Some(entries);
        self.selected = self.selected.min(self.len().saturating_sub(1));
    }
}

/// The documents view: the list, the upload prompt, the last change's outcome.
#[derive(Debug, Default)]
pub struct DocumentsView {
    pub documents: Option<Vec<KbDocument>>,
    pub selected: usize,
    /// The upload prompt's text while it is open.
    pub input: Option<String>,
    /// An upload or delete waiting for the server.
    pub busy: bool,
    /// The outcome of the last change: what happened, or why it failed.
    pub outcome: Option<Result<String, String>>,
}

impl DocumentsView {
    pub fn len(&self) -> usize {
        self.documents.as_ref().map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn selected_name(&self) -> Option<String> {
        self.documents
            .as_ref()
            .and_then(|d| d.get(self.selected))
            .map(|d| d.name.clone())
    }

    pub fn set(&mut self, documents: Vec<KbDocument>) {
        self.documents = Some(documents);
        self.selected = self.selected.min(self.len().saturating_sub(1));
    }

    /// Keys while the upload prompt is open; always consumed.
    pub fn handle_input_key(&mut self, code: KeyCode) -> Option<Action> {
        let input = self.input.as_mut()?;
        match code {
            KeyCode::Esc => self.input = None,
            KeyCode::Enter => {
                let path = input.trim().to_owned();
                self.input = None;
                if !path.is_empty() {
                    self.busy = true;
                    self.outcome = None;
                    return Some(Action::UploadDocument(PathBuf::from(path)));
                }
            }
            KeyCode::Backspace => {
                input.pop();
            }
            KeyCode::Char(c) if input.chars().count() < MAX_INPUT_CHARS => input.push(c),
            _ => {}
        }
        None
    }
}

/// The `Content-Type` an upload is sent with, from the file's extension; `None` for files the
/// server does not take.
pub fn content_type_for(path: &Path) -> Option<&'static str> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    match ext.as_str() {
        "md" | "markdown" => Some("text/markdown"),
        "txt" => Some("text/plain"),
        "html" | "htm" => Some("text/html"),
        "pdf" => Some("application/pdf"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upload_prompt_edits_and_submits_a_path() {
        let mut view = DocumentsView {
            input: Some(String::new()),
            ..Default::default()
        };
        for c in "/tmp/a.mdx".chars() {
            assert_eq!(view.handle_input_key(KeyCode::Char(c)), None);
        }
        view.handle_input_key(KeyCode::Backspace);
        assert_eq!(view.input.as_deref(), Some("/tmp/a.md"));
        assert_eq!(
            view.handle_input_key(KeyCode::Enter),
            Some(Action::UploadDocument(PathBuf::from("/tmp/a.md")))
        );
        assert!(view.busy);
        assert_eq!(view.input, None);

        view.input = Some("   ".into());
        assert_eq!(view.handle_input_key(KeyCode::Enter), None, "blank");
        view.input = Some("x".into());
        view.handle_input_key(KeyCode::Esc);
        assert_eq!(view.input, None);
    }

    #[test]
    fn uploads_are_typed_by_extension() {
        assert_eq!(
            content_type_for(Path::new("a/B.PDF")),
            Some("application/pdf")
        );
        assert_eq!(content_type_for(Path::new("x.htm")), Some("text/html"));
        assert_eq!(content_type_for(Path::new("x.docx")), None);
        assert_eq!(content_type_for(Path::new("README")), None);
    }
}

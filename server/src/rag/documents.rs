//! Documents managed through the admin API, stored in PostgreSQL (`kb_documents`) and laid over
//! the knowledge-base folder.
//!
//! The loaded set is the folder's `.md`/`.txt` files with the table's rows applied: a live row
//! adds a document or replaces the file of the same name, a tombstone (deleted row) hides the
//! file. The folder is never written. With one instance the folder stays the baseline an
//! operator edits; with several, every instance reads the same rows, so all of them serve the
//! same set whatever their local folders hold (they should ship the same folder).
//!
//! A change is stored and the index rebuilt under the reload lock (waiting for a running
//! reload rather than refusing); if the rebuild fails, the change is undone and the old index
//! keeps serving. Text is extracted before anything is stored: a document that yields no text
//! is refused and changes nothing.
//!
//! Why one file: one change protocol (validate, store, rebuild, undo on failure) under the reload
//! lock, with the folder/table overlay it applies; the steps share the lock and the undo.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use protocol::admin::KbInfo;
use protocol::documents::{DocumentSource, KbDocument};
use tokio::sync::Semaphore;
use uuid::Uuid;

use super::loader::{self, ChunkData, Loaded};
use super::{Rag, RagError};

/// Longest document name, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Folder levels a name may have (`a/b/c.md` has three).
const MAX_NAME_DEPTH: usize = 4;
/// Uploads parsed at once (PDF parsing is CPU- and memory-hungry); others wait their turn.
static EXTRACTING: Semaphore = Semaphore::const_new(2);

/// How a document's bytes become text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocumentKind {
    Markdown,
    Text,
    Html,
    Pdf,
}

impl DocumentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Markdown => "markdown",
            Self::Text => "text",
            Self::Html => "html",
            Self::Pdf => "pdf",
        }
    }

    /// From a `Content-Type` header (parameters such as `charset` ignored); `None` for types
    /// that say nothing (`application/octet-stream`) or that are not documents.
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "text/markdown" | "text/x-markdown" => Some(Self::Markdown),
            "text/plain" => Some(Self::Text),
            "text/html" | "application/xhtml+xml" => Some(Self::Html),
            "application/pdf" => Some(Self::Pdf),
            _ => None,
        }
    }

    /// From the name's extension.
    pub fn from_name(name: &str) -> Option<Self> {
        let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
        match ext.as_str() {
            "md" | "markdown" => Some(Self::Markdown),
            "txt" => Some(Self::Text),
            "html" | "htm" => Some(Self::Html),
            "pdf" => Some(Self::Pdf),
            _ => None,
        }
    }
}

/// Checks a document name: `/`-separated segments of letters, digits, `-`, `_`, `.` and
/// spaces, none empty, none starting with a dot (no hidden files, no `..`), a known extension,
/// bounded length and depth. Returns the kind its extension names.
pub fn validate_name(name: &str) -> Result<DocumentKind, String> {
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(format!("must be 1 to {MAX_NAME_CHARS} characters"));
    }
    let segments: Vec<&str> = name.split('/').collect();
    if segments.len() > MAX_NAME_DEPTH {
        return Err(format!("at most {MAX_NAME_DEPTH} folder levels"));
    }
    for segment in &segments {
        if segment.is_empty() {
            return Err("empty path segment".into());
        }
        if segment.starts_with('.') {
            return Err("no hidden files and no `..`: segments must not start with a dot".into());
        }
        if segment.trim() != *segment {
            return Err("segments must not start or end with a space".into());
        }
        if !segment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ' '))
        {
            return Err("only letters, digits, `-`, `_`, `.`, spaces and `/` are allowed".into());
        }
    }
    DocumentKind::from_name(name)
        .ok_or_else(|| "the extension must be .md, .markdown, .txt, .html, .htm or .pdf".into())
}

/// The text of a document (blocking: PDF parsing is CPU work). An error says why it is
/// unusable, in words fit for the admin.
pub fn extract_text(kind: DocumentKind, bytes: &[u8]) -> Result<String, String> {
    let text = match kind {
        DocumentKind::Markdown | DocumentKind::Text => utf8(bytes)?,
        DocumentKind::Html => {
            // Kept as HTML: the chunker reads HTML itself (headings become section paths), as
            // it does for `.html` files in the folder. Only whether it holds any text is
            // checked here.
            let html = utf8(bytes)?;
            if super::html::to_markdown(&html).trim().is_empty() {
                return Err("the document has no text".into());
            }
            html
        }
        DocumentKind::Pdf => {
            // The parser panics on some malformed files: a bad upload must not take a worker.
            let parsed = std::panic::catch_unwind(|| pdf_extract::extract_text_from_mem(bytes));
            match parsed {
                Ok(Ok(text)) => text,
                Ok(Err(e)) => return Err(format!("unreadable PDF: {e}")),
                Err(_) => return Err("unreadable PDF: the file is malformed".into()),
            }
        }
    };
    if text.trim().is_empty() {
        return Err("the document has no text".into());
    }
    Ok(text)
}

fn utf8(bytes: &[u8]) -> Result<String, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        format!(
            "not UTF-8 text (invalid byte at offset {}); save it as UTF-8",
            e.valid_up_to()
        )
    })?;
    Ok(text.strip_prefix('\u{feff}').unwrap_or(text).to_owned())
}

/// [`extract_text`] then chunking, on the blocking pool, at most [`EXTRACTING`] at once.
pub async fn prepare(
    name: String,
    kind: DocumentKind,
    bytes: Arc<Vec<u8>>,
) -> Result<(String, usize), String> {
    let _permit = EXTRACTING
        .acquire()
        .await
        .map_err(|_| "the server is shutting down".to_owned())?;
    tokio::task::spawn_blocking(move || {
        let text = extract_text(kind, &bytes)?;
        let chunks = loader::chunk_document(&name, &text).len();
        if chunks == 0 {
            return Err("the document has no text".to_owned());
        }
        Ok((text, chunks))
    })
    .await
    .map_err(|_| "the document could not be parsed".to_owned())?
}

/// A change to the stored documents.
#[derive(Debug, Clone)]
pub enum DocumentChange {
    /// Add or replace `name` with `body` (and the text extracted from it).
    Put {
        name: String,
        kind: DocumentKind,
        body: Arc<Vec<u8>>,
        text: String,
    },
    Delete {
        name: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error("no such document")]
    NotFound,
    #[error(transparent)]
    Rag(#[from] RagError),
}

impl From<tokio_postgres::Error> for DocumentError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Rag(RagError::Internal(e.into()))
    }
}

impl From<deadpool_postgres::PoolError> for DocumentError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        Self::Rag(RagError::Internal(e.into()))
    }
}

/// A row of `kb_documents` as it was before a change, to put back if the reload fails.
struct Previous {
    kind: String,
    body: Option<Vec<u8>>,
    text: Option<String>,
    deleted: bool,
    updated_by: Option<Uuid>,
    updated_at: DateTime<Utc>,
}

/// Applies the stored rows to what the folder loaded (see the module doc).
pub(super) async fn overlay(db: &Pool, kb_dir: &Path, loaded: &mut Loaded) -> anyhow::Result<()> {
    let client = db.get().await?;
    let stmt = client
        .prepare_cached("SELECT name, text, deleted FROM kb_documents ORDER BY name")
        .await?;
    let rows = client.query(&stmt, &[]).await?;
    drop(client);
    let mut added: Vec<(String, String)> = Vec::new();
    for row in &rows {
        let name: String = row.get(0);
        let failed = loaded.errors.iter().any(|e| e.document == name);
        let in_folder = loaded.chunks.iter().any(|c| c.document == name)
            || (!failed && tokio::fs::metadata(kb_dir.join(&name)).await.is_ok());
        loaded.chunks.retain(|c| c.document != name);
        loaded.errors.retain(|e| e.document != name);
        if in_folder {
            loaded.documents = loaded.documents.saturating_sub(1);
        }
        let deleted: bool = row.get(2);
        let text: Option<String> = row.get(1);
        if let (false, Some(text)) = (deleted, text) {
            added.push((name, text));
        }
    }
    if !added.is_empty() {
        let chunks: Vec<ChunkData> = tokio::task::spawn_blocking(move || {
            added
                .iter()
                .flat_map(|(name, text)| loader::chunk_document(name, text))
                .collect::<Vec<_>>()
        })
        .await?;
        let mut names: Vec<&str> = chunks.iter().map(|c| c.document.as_str()).collect();
        names.dedup();
        loaded.documents += names.len();
        loaded.chunks.extend(chunks);
    }
    Ok(())
}

impl Rag {
    /// The knowledge-base folder.
    pub fn kb_dir(&self) -> &Path {
        &self.kb_dir
    }

    /// Stores `change` and rebuilds the index, as one step: waits for a running reload, and
    /// if the rebuild fails puts the row back as it was, so the old index and the stored set
    /// stay in agreement. A delete of a name that is not loaded is [`DocumentError::NotFound`].
    pub async fn change_document(
        &self,
        change: DocumentChange,
        by: Uuid,
    ) -> Result<KbInfo, DocumentError> {
        let _guard = self.reload_lock.lock().await;
        let name = match &change {
            DocumentChange::Put { name, .. } | DocumentChange::Delete { name } => name.clone(),
        };
        let client = self.db.get().await?;
        let previous = {
            let stmt = client
                .prepare_cached(
                    "SELECT kind, body, text, deleted, updated_by, updated_at \
                     FROM kb_documents WHERE name = $1",
                )
                .await?;
            client
                .query_opt(&stmt, &[&name])
                .await?
                .map(|row| Previous {
                    kind: row.get(0),
                    body: row.get(1),
                    text: row.get(2),
                    deleted: row.get(3),
                    updated_by: row.get(4),
                    updated_at: row.get(5),
                })
        };
        let in_folder = self.folder_has(&name).await;
        match &change {
            DocumentChange::Put {
                kind, body, text, ..
            } => {
                let stmt = client
                    .prepare_cached(
                        "INSERT INTO kb_documents (name, kind, body, text, deleted, updated_by) \
                         VALUES ($1, $2, $3, $4, false, $5) \
                         ON CONFLICT (name) DO UPDATE SET kind = EXCLUDED.kind, \
                           body = EXCLUDED.body, text = EXCLUDED.text, deleted = false, \
                           updated_by = EXCLUDED.updated_by, updated_at = now()",
                    )
                    .await?;
                let body: &[u8] = body.as_slice();
                client
                    .execute(&stmt, &[&name, &kind.as_str(), &body, text, &by])
                    .await?;
            }
            DocumentChange::Delete { .. } => {
                let live_row = previous.as_ref().is_some_and(|p| !p.deleted);
                let hidden = previous.as_ref().is_some_and(|p| p.deleted);
                if !live_row && (hidden || !in_folder) {
                    return Err(DocumentError::NotFound);
                }
                if in_folder {
                    let kind = DocumentKind::from_name(&name).unwrap_or(DocumentKind::Text);
                    let stmt = client
                        .prepare_cached(
                            "INSERT INTO kb_documents (name, kind, body, text, deleted, updated_by) \
                             VALUES ($1, $2, NULL, NULL, true, $3) \
                             ON CONFLICT (name) DO UPDATE SET body = NULL, text = NULL, \
                               deleted = true, updated_by = EXCLUDED.updated_by, updated_at = now()",
                        )
                        .await?;
                    client.execute(&stmt, &[&name, &kind.as_str(), &by]).await?;
                } else {
                    let stmt = client
                        .prepare_cached("DELETE FROM kb_documents WHERE name = $1")
                        .await?;
                    client.execute(&stmt, &[&name]).await?;
                }
            }
        }
        drop(client);

        let rebuilt = super::build_snapshot(
            self.embedder.as_ref(),
            &self.db,
            &self.kb_dir,
            &self.progress,
        )
        .await;
        match rebuilt {
            Ok(snapshot) => {
                let info = snapshot.info.clone();
                super::log_loaded(&info);
                self.current.store(Arc::new(snapshot));
                Ok(info)
            }
            Err(e) => {
                if let Err(restore) = self.restore(&name, previous).await {
                    tracing::error!(error = %restore, document = %name,
                        "could not undo a document change after a failed reload");
                }
                Err(e.into())
            }
        }
    }

    async fn folder_has(&self, name: &str) -> bool {
        tokio::fs::metadata(self.kb_dir.join(name))
            .await
            .is_ok_and(|m| m.is_file())
            && matches!(
                DocumentKind::from_name(name),
                Some(DocumentKind::Markdown | DocumentKind::Text)
            )
            && !name.ends_with(".markdown")
    }

    async fn restore(&self, name: &str, previous: Option<Previous>) -> anyhow::Result<()> {
        let mut client = self.db.get().await?;
        let tx = client.transaction().await?;
        tx.execute("DELETE FROM kb_documents WHERE name = $1", &[&name])
            .await?;
        if let Some(p) = previous {
            tx.execute(
                "INSERT INTO kb_documents (name, kind, body, text, deleted, updated_by, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &name,
                    &p.kind,
                    &p.body,
                    &p.text,
                    &p.deleted,
                    &p.updated_by,
                    &p.updated_at,
                ],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The loaded documents, by name: what the serving index holds, with sizes and times from
    /// the table or the folder.
    pub async fn documents(&self) -> anyhow::Result<Vec<KbDocument>> {
        let snapshot = self.current.load_full();
        // name → (first heading, chunks), in the index's order.
        let mut order: Vec<String> = Vec::new();
        let mut seen: HashMap<String, (String, usize)> = HashMap::new();
        for chunk in &snapshot.index.chunks {
            let entry = seen.entry(chunk.document.clone()).or_insert_with(|| {
                order.push(chunk.document.clone());
                let title = chunk
                    .heading
                    .split(" > ")
                    .next()
                    .unwrap_or(&chunk.heading)
                    .to_owned();
                (title, 0)
            });
            entry.1 += 1;
        }
        let client = self.db.get().await?;
        let stmt = client
            .prepare_cached(
                "SELECT name, kind, octet_length(body)::bigint, updated_at \
                 FROM kb_documents WHERE NOT deleted",
            )
            .await?;
        let rows: HashMap<String, (String, i64, DateTime<Utc>)> = client
            .query(&stmt, &[])
            .await?
            .iter()
            .map(|row| (row.get(0), (row.get(1), row.get(2), row.get(3))))
            .collect();
        drop(client);
        let mut out = Vec::with_capacity(order.len());
        for name in order {
            let (title, chunks) = seen.remove(&name).unwrap_or_default();
            let document = match rows.get(&name) {
                Some((kind, bytes, updated_at)) => KbDocument {
                    name,
                    title,
                    bytes: u64::try_from(*bytes).unwrap_or(0),
                    chunks,
                    modified: Some(*updated_at),
                    source: DocumentSource::Database,
                    kind: kind.clone(),
                },
                None => {
                    let meta = tokio::fs::metadata(self.kb_dir.join(&name)).await.ok();
                    let kind = DocumentKind::from_name(&name).unwrap_or(DocumentKind::Text);
                    KbDocument {
                        bytes: meta.as_ref().map_or(0, |m| m.len()),
                        modified: meta
                            .and_then(|m| m.modified().ok())
                            .map(DateTime::<Utc>::from),
                        name,
                        title,
                        chunks,
                        source: DocumentSource::Folder,
                        kind: kind.as_str().to_owned(),
                    }
                }
            };
            out.push(document);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert_eq!(validate_name("returns.md"), Ok(DocumentKind::Markdown));
        assert_eq!(
            validate_name("manuals/Oven 3000.pdf"),
            Ok(DocumentKind::Pdf)
        );
        assert_eq!(validate_name("faq.HTML"), Ok(DocumentKind::Html));
        for bad in [
            "",
            "../etc/passwd.md",
            "a/../b.md",
            ".env.md",
            "a/.hidden.txt",
            "/abs.md",
            "a//b.md",
            "noext",
            "script.exe",
            "back\\slash.md",
            "nul\0.md",
            "a/b/c/d/e.md",
            " lead.md",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_name(&format!("{}.md", "a".repeat(MAX_NAME_CHARS))).is_err());
    }

    #[test]
    fn content_types_name_kinds() {
        assert_eq!(
            DocumentKind::from_content_type("text/markdown; charset=utf-8"),
            Some(DocumentKind::Markdown)
        );
        assert_eq!(
            DocumentKind::from_content_type("application/pdf"),
            Some(DocumentKind::Pdf)
        );
        assert_eq!(
            DocumentKind::from_content_type("application/octet-stream"),
            None
        );
    }

    #[test]
    fn text_is_extracted_or_refused() {
        assert_eq!(
            extract_text(DocumentKind::Markdown, "\u{feff}# T\n\nHello".as_bytes()).unwrap(),
            "# T\n\nHello"
        );
        assert!(extract_text(DocumentKind::Text, b"  \n\t").is_err());
        assert!(extract_text(DocumentKind::Text, &[0xff, 0xfe, 0x00]).is_err());
        let html = extract_text(
            DocumentKind::Html,
            b"<html><head><title>x</title><style>p{}</style></head><body><h1>Parking</h1>\
              <p>Customers park <b>free</b> for two hours.</p><script>var a=1;</script></body></html>",
        )
        .unwrap();
        // Kept as HTML for the chunker, which reads it like the folder's `.html` files.
        let text = crate::rag::html::to_markdown(&html);
        assert!(text.contains("# Parking"), "{text}");
        assert!(text.contains("free for two hours"), "{text}");
        assert!(!text.contains("var a"), "{text}");
        assert!(
            extract_text(
                DocumentKind::Html,
                b"<html><head><script>var a=1;</script></head><body> </body></html>"
            )
            .is_err()
        );
        assert!(extract_text(DocumentKind::Pdf, b"%PDF-1.4 garbage").is_err());
    }
}

//! Knowledge-base documents over the admin API (`/api/admin/kb/documents`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Where a document's current version comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DocumentSource {
    /// A file in `KNOWLEDGE_BASE_DIR`.
    Folder,
    /// Uploaded through the admin API, stored in PostgreSQL (shared by every instance).
    Database,
}

/// A loaded document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KbDocument {
    /// Path relative to the knowledge base, `/`-separated (what sources cite).
    pub name: String,
    /// Its first heading, else a title made from the name.
    pub title: String,
    /// Size of the document as stored (the uploaded bytes, or the file).
    pub bytes: u64,
    pub chunks: usize,
    pub modified: Option<DateTime<Utc>>,
    pub source: DocumentSource,
    /// `markdown`, `text`, `html` or `pdf`.
    pub kind: String,
}

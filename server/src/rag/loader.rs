//! Knowledge-base loading and chunking: `.md` and `.txt` files (recursively) → chunks split by
//! headings and paragraphs, bounded in size, overlapping a little, each with its document path
//! and heading trail.

use std::path::{Path, PathBuf};

use protocol::admin::KbError;

/// Largest chunk, in characters. MiniLM reads at most 256 tokens (~1,000 characters of English);
/// staying well under keeps the whole chunk visible to every embedder and keeps passages focused.
pub const MAX_CHUNK_CHARS: usize = 800;
/// Text carried from the end of one chunk into the next when a section is split, so a fact that
/// straddles the cut is whole in at least one chunk.
pub const OVERLAP_CHARS: usize = 150;
/// Files above this size are refused rather than loaded into memory.
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// Folder depth bound, against symlink loops.
const MAX_DEPTH: usize = 16;

/// One passage of a document.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkData {
    /// Path relative to the knowledge-base folder, `/`-separated.
    pub document: String,
    /// Position of the chunk within its document, from 0.
    pub index: u32,
    /// Heading trail, e.g. `Returns and refunds > Refund times`; the document title when the
    /// text has no headings.
    pub heading: String,
    pub text: String,
}

impl ChunkData {
    /// What gets embedded: the heading trail gives short passages their topic.
    pub fn embedding_text(&self) -> String {
        format!("{}\n{}", self.heading, self.text)
    }
}

/// The outcome of loading a folder: what loaded, and what failed with why.
#[derive(Debug, Default)]
pub struct Loaded {
    pub documents: usize,
    pub chunks: Vec<ChunkData>,
    pub errors: Vec<KbError>,
}

/// Loads every `.md` / `.txt` below `dir`, in path order. A file that cannot be read or is not
/// UTF-8 is recorded in `errors` and the rest still load; only an unreadable `dir` fails.
pub fn load_dir(dir: &Path) -> std::io::Result<Loaded> {
    let mut files = Vec::new();
    collect_files(dir, dir, 0, &mut files)?;
    files.sort();
    let mut loaded = Loaded::default();
    for path in files {
        let name = relative_name(dir, &path);
        match read_text(&path) {
            Ok(text) => {
                loaded.documents += 1;
                loaded.chunks.extend(chunk_document(&name, &text));
            }
            Err(message) => {
                tracing::warn!(document = %name, %message, "skipping knowledge-base file");
                loaded.errors.push(KbError {
                    document: name,
                    message,
                });
            }
        }
    }
    Ok(loaded)
}

fn collect_files(
    root: &Path,
    dir: &Path,
    depth: usize,
    out: &mut Vec<PathBuf>,
) -> std::io::Result<()> {
    if depth > MAX_DEPTH {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if hidden {
            continue;
        }
        let file_type = std::fs::metadata(&path).map(|m| m.file_type());
        match file_type {
            Ok(t) if t.is_dir() => {
                // A subfolder that cannot be listed is skipped, not fatal.
                if let Err(e) = collect_files(root, &path, depth + 1, out) {
                    tracing::warn!(folder = %relative_name(root, &path), error = %e, "skipping folder");
                }
            }
            Ok(t) if t.is_file() && is_document(&path) => out.push(path),
            _ => {}
        }
    }
    Ok(())
}

fn is_document(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("md") || e.eq_ignore_ascii_case("txt"))
}

fn relative_name(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

fn read_text(path: &Path) -> Result<String, String> {
    let size = std::fs::metadata(path)
        .map_err(|e| format!("cannot read: {e}"))?
        .len();
    if size > MAX_FILE_BYTES {
        return Err(format!(
            "file is too large ({size} bytes; the limit is {MAX_FILE_BYTES})"
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        format!(
            "not UTF-8 text (invalid byte at offset {}); save it as UTF-8",
            e.utf8_error().valid_up_to()
        )
    })?;
    Ok(text.strip_prefix('\u{feff}').unwrap_or(&text).to_owned())
}

/// A paragraph with the heading trail in force where it appeared.
struct Paragraph {
    trail: Vec<String>,
    text: String,
}

/// Splits one document into chunks. Headings (`#`..`######`, outside code fences) open a new
/// section; paragraphs of a section are packed up to [`MAX_CHUNK_CHARS`]; a longer paragraph is
/// cut at sentence, then word, then character boundaries, with [`OVERLAP_CHARS`] of overlap.
pub fn chunk_document(name: &str, text: &str) -> Vec<ChunkData> {
    let title = title_from_name(name);
    let paragraphs = paragraphs(text);
    let mut chunks: Vec<ChunkData> = Vec::new();
    let mut i = 0;
    while i < paragraphs.len() {
        // One section: consecutive paragraphs under the same heading trail.
        let trail = &paragraphs[i].trail;
        let mut j = i;
        while j < paragraphs.len() && paragraphs[j].trail == *trail {
            j += 1;
        }
        let heading = if trail.is_empty() {
            title.clone()
        } else {
            trail.join(" > ")
        };
        for piece in pack(paragraphs[i..j].iter().map(|p| p.text.as_str())) {
            chunks.push(ChunkData {
                document: name.to_owned(),
                index: chunks.len() as u32,
                heading: heading.clone(),
                text: piece,
            });
        }
        i = j;
    }
    chunks
}

/// `returns/refund-policy.md` → `refund policy`.
fn title_from_name(name: &str) -> String {
    let file = name.rsplit('/').next().unwrap_or(name);
    let stem = file.rsplit_once('.').map_or(file, |(s, _)| s);
    stem.replace(['-', '_'], " ")
}

fn heading_of(line: &str) -> Option<(usize, String)> {
    let level = line.chars().take_while(|&c| c == '#').count();
    if !(1..=6).contains(&level) {
        return None;
    }
    let rest = &line[level..];
    if !rest.is_empty() && !rest.starts_with(' ') {
        return None; // `#hashtag`, not a heading
    }
    let title = rest.trim().trim_end_matches('#').trim();
    Some((level, title.to_owned()))
}

fn paragraphs(text: &str) -> Vec<Paragraph> {
    let mut out = Vec::new();
    // (level, title) of the headings in force.
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    let mut in_fence = false;
    let flush =
        |current: &mut Vec<&str>, stack: &Vec<(usize, String)>, out: &mut Vec<Paragraph>| {
            let text = current.join("\n").trim().to_owned();
            current.clear();
            if !text.is_empty() {
                out.push(Paragraph {
                    trail: stack.iter().map(|(_, t)| t.clone()).collect(),
                    text,
                });
            }
        };
    for line in text.lines() {
        let trimmed = line.trim_end();
        if trimmed.trim_start().starts_with("```") {
            in_fence = !in_fence;
            current.push(trimmed);
            continue;
        }
        if !in_fence && let Some((level, title)) = heading_of(trimmed) {
            flush(&mut current, &stack, &mut out);
            while stack.last().is_some_and(|(l, _)| *l >= level) {
                stack.pop();
            }
            if !title.is_empty() {
                stack.push((level, title));
            }
            continue;
        }
        if trimmed.trim().is_empty() && !in_fence {
            flush(&mut current, &stack, &mut out);
        } else {
            current.push(trimmed);
        }
    }
    flush(&mut current, &stack, &mut out);
    out
}

/// Packs paragraphs into chunks of at most [`MAX_CHUNK_CHARS`] characters.
fn pack<'a>(paragraphs: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut current = String::new();
    for paragraph in paragraphs {
        let pieces = if char_len(paragraph) > MAX_CHUNK_CHARS {
            split_long(paragraph)
        } else {
            vec![paragraph.to_owned()]
        };
        for piece in pieces {
            if current.is_empty() {
                current = piece;
            } else if char_len(&current) + 2 + char_len(&piece) <= MAX_CHUNK_CHARS {
                current.push_str("\n\n");
                current.push_str(&piece);
            } else {
                let tail = overlap_tail(&current);
                out.push(std::mem::take(&mut current));
                current = match tail {
                    Some(tail) if char_len(&tail) + 2 + char_len(&piece) <= MAX_CHUNK_CHARS => {
                        format!("{tail}\n\n{piece}")
                    }
                    _ => piece,
                };
            }
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

fn char_len(s: &str) -> usize {
    s.chars().count()
}

/// The last whole sentence(s) of `text` within [`OVERLAP_CHARS`], if any.
fn overlap_tail(text: &str) -> Option<String> {
    let sentences = split_sentences(text);
    let mut tail: Vec<&str> = Vec::new();
    let mut len = 0;
    for s in sentences.iter().rev() {
        let l = char_len(s);
        if len + l > OVERLAP_CHARS {
            break;
        }
        len += l + 1;
        tail.push(s);
    }
    if tail.is_empty() {
        return None;
    }
    tail.reverse();
    Some(tail.join(" "))
}

/// Sentences keep their end punctuation; splitting happens after `.`, `?`, `!` or a line break.
fn split_sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    for (i, &(pos, c)) in chars.iter().enumerate() {
        let boundary = match c {
            '.' | '?' | '!' => chars.get(i + 1).is_none_or(|&(_, n)| n.is_whitespace()),
            '\n' => true,
            _ => false,
        };
        if boundary {
            let end = pos + c.len_utf8();
            let s = text[start..end].trim();
            if !s.is_empty() {
                out.push(s);
            }
            start = end;
        }
    }
    let s = text[start..].trim();
    if !s.is_empty() {
        out.push(s);
    }
    out
}

/// Cuts an over-long paragraph into pieces of at most [`MAX_CHUNK_CHARS`], each starting with
/// up to [`OVERLAP_CHARS`] of the previous piece.
fn split_long(paragraph: &str) -> Vec<String> {
    // Units: sentences, and any sentence too long by itself cut into words or characters.
    let mut units: Vec<String> = Vec::new();
    for sentence in split_sentences(paragraph) {
        // Room for the overlap and the space that joins it.
        let unit_limit = MAX_CHUNK_CHARS - OVERLAP_CHARS - 1;
        if char_len(sentence) <= unit_limit {
            units.push(sentence.to_owned());
        } else {
            units.extend(hard_split(sentence, unit_limit));
        }
    }
    let mut out: Vec<String> = Vec::new();
    let mut current = String::new();
    for unit in units {
        if current.is_empty() {
            current = unit;
        } else if char_len(&current) + 1 + char_len(&unit) <= MAX_CHUNK_CHARS {
            current.push(' ');
            current.push_str(&unit);
        } else {
            let tail = char_tail(&current, OVERLAP_CHARS);
            out.push(std::mem::take(&mut current));
            current = format!("{tail} {unit}");
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Cuts at word boundaries where there are any, else at character boundaries.
fn hard_split(text: &str, limit: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for word in text.split_whitespace() {
        let mut word = word;
        // A "word" longer than the limit (a URL, a base64 blob) is cut by characters.
        while char_len(word) > limit {
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
            let cut = word
                .char_indices()
                .nth(limit)
                .map_or(word.len(), |(i, _)| i);
            out.push(word[..cut].to_owned());
            word = &word[cut..];
        }
        if current.is_empty() {
            current = word.to_owned();
        } else if char_len(&current) + 1 + char_len(word) <= limit {
            current.push(' ');
            current.push_str(word);
        } else {
            out.push(std::mem::replace(&mut current, word.to_owned()));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// The last `n` characters of `s`, starting at a word boundary when there is one.
fn char_tail(s: &str, n: usize) -> String {
    let total = char_len(s);
    if total <= n {
        return s.to_owned();
    }
    let start = s.char_indices().nth(total - n).map_or(0, |(i, _)| i);
    let tail = &s[start..];
    match tail.find(' ') {
        Some(space) if space + 1 < tail.len() => tail[space + 1..].to_owned(),
        _ => tail.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_blank_files_have_no_chunks() {
        assert!(chunk_document("empty.md", "").is_empty());
        assert!(chunk_document("blank.md", "\n\n   \n").is_empty());
        assert!(chunk_document("headings.md", "# Title\n## Only headings\n").is_empty());
    }

    #[test]
    fn headings_build_trails_and_split_sections() {
        let text = "# Returns\nIntro paragraph.\n\n## Refunds\nRefunds take 5 days.\n\n\
                    ### Card refunds\nCards take 3 days.\n\n## Exchanges\nExchanges are free.\n";
        let chunks = chunk_document("returns.md", text);
        let trails: Vec<&str> = chunks.iter().map(|c| c.heading.as_str()).collect();
        assert_eq!(
            trails,
            vec![
                "Returns",
                "Returns > Refunds",
                "Returns > Refunds > Card refunds",
                "Returns > Exchanges"
            ]
        );
        assert_eq!(chunks[3].text, "Exchanges are free.");
        assert_eq!(
            chunks.iter().map(|c| c.index).collect::<Vec<_>>(),
            vec![0, 1, 2, 3]
        );
    }

    #[test]
    fn no_headings_uses_the_file_name_as_title() {
        let chunks = chunk_document("faq/shipping-times.txt", "First para.\n\nSecond para.");
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].heading, "shipping times");
        assert_eq!(chunks[0].text, "First para.\n\nSecond para.");
    }

    #[test]
    fn hash_inside_code_fence_is_not_a_heading() {
        let text = "# Doc\n```\n# not a heading\n```\n";
        let chunks = chunk_document("d.md", text);
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].heading, "Doc");
        assert!(chunks[0].text.contains("# not a heading"));
    }

    #[test]
    fn huge_paragraph_is_bounded_and_overlaps() {
        let sentence = "Orders placed before noon ship the same working day from our depot. ";
        let para = sentence.repeat(60);
        let chunks = chunk_document("big.md", &format!("# Big\n{para}"));
        assert!(chunks.len() > 3, "{}", chunks.len());
        for c in &chunks {
            assert!(
                char_len(&c.text) <= MAX_CHUNK_CHARS,
                "{}",
                char_len(&c.text)
            );
        }
        // Each later chunk starts with text that ended the previous one.
        for pair in chunks.windows(2) {
            let head: String = pair[1].text.chars().take(30).collect();
            assert!(pair[0].text.contains(head.trim()), "no overlap: {head:?}");
        }
    }

    #[test]
    fn a_word_longer_than_a_chunk_is_cut_on_char_boundaries() {
        let blob = "é".repeat(3 * MAX_CHUNK_CHARS);
        let chunks = chunk_document("blob.md", &blob);
        assert!(chunks.len() >= 3);
        assert!(chunks.iter().all(|c| char_len(&c.text) <= MAX_CHUNK_CHARS));
    }

    #[test]
    fn paragraphs_pack_up_to_the_bound() {
        let paras: Vec<String> = (0..30)
            .map(|i| format!("Paragraph number {i} says a thing."))
            .collect();
        let chunks = chunk_document("p.md", &paras.join("\n\n"));
        assert!(chunks.len() > 1 && chunks.len() < 30);
        assert!(chunks.iter().all(|c| char_len(&c.text) <= MAX_CHUNK_CHARS));
        let all: String = chunks
            .iter()
            .map(|c| c.text.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        for p in &paras {
            assert!(all.contains(p.as_str()), "lost {p}");
        }
    }

    #[test]
    fn load_dir_records_bad_files_and_loads_the_rest() {
        let dir = std::env::temp_dir().join(format!("kb-load-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("a.md"), "# A\nAlpha text.").unwrap();
        std::fs::write(dir.join("sub/b.txt"), "Beta text.").unwrap();
        std::fs::write(dir.join("bad.md"), [0x66, 0x6f, 0xff, 0xfe, 0x6f]).unwrap();
        std::fs::write(dir.join("empty.md"), "").unwrap();
        std::fs::write(dir.join("image.png"), [0u8, 1, 2]).unwrap();
        std::fs::write(dir.join(".hidden.md"), "# Hidden").unwrap();
        let loaded = load_dir(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(loaded.documents, 3, "a.md, empty.md, sub/b.txt");
        let docs: Vec<&str> = loaded.chunks.iter().map(|c| c.document.as_str()).collect();
        assert_eq!(docs, vec!["a.md", "sub/b.txt"]);
        assert_eq!(loaded.errors.len(), 1);
        assert_eq!(loaded.errors[0].document, "bad.md");
        assert!(
            loaded.errors[0].message.contains("UTF-8"),
            "{}",
            loaded.errors[0].message
        );
        assert!(loaded.errors[0].message.contains("offset 2"));
    }
}

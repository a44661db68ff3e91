//! Knowledge-base loading and chunking: `.md`, `.txt` and `.html` files (recursively) → chunks
//! that follow the documents' structure (headings of Markdown, HTML and plain text; paragraphs,
//! lists and question/answer pairs kept whole), bounded in size, each with its document path
//! and heading trail; only a paragraph too long for one chunk is cut, with a little overlap.
//!
//! Why one file: one pipeline, files → blocks → chunks; the three formats differ only in how they
//! find blocks, and the size bound, overlap and heading trail are shared by all of them.

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
    /// What gets embedded and searched: the section path gives the passage its topic, and
    /// inline markup (links, code spans, roles) is reduced to the words it shows.
    pub fn embedding_text(&self) -> String {
        format!("{}\n{}", self.heading, crate::markup::plain(&self.text))
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
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
        ["md", "markdown", "txt", "html", "htm"]
            .iter()
            .any(|known| e.eq_ignore_ascii_case(known))
    })
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

/// Splits one document into chunks. Headings open a new section: Markdown `#`..`######`
/// (outside code fences), underlined (and overlined) plain-text headings as in Markdown setext
/// and reStructuredText, numbered headings standing alone (`2.3. Title`), and HTML `<h1>`..`<h6>`
/// for `.html` documents. Paragraphs of a section are packed whole up to [`MAX_CHUNK_CHARS`];
/// an introduction ending in `:` stays with what it introduces, list items stay together, and a
/// question stays with its answer. Only a paragraph longer than a chunk is cut, at sentence,
/// then word, then character boundaries, with [`OVERLAP_CHARS`] of overlap.
pub fn chunk_document(name: &str, text: &str) -> Vec<ChunkData> {
    let title = title_from_name(name);
    let html_text;
    let text = if super::html::is_html(name) {
        html_text = super::html::to_markdown(text);
        html_text.as_str()
    } else {
        text
    };
    let fixed_setext = super::html::is_html(name) || is_markdown(name);
    let paragraphs = paragraphs(text, fixed_setext);
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
        let units = units(paragraphs[i..j].iter().map(|p| p.text.as_str()));
        for piece in pack(units) {
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

fn is_markdown(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.ends_with(".md") || lower.ends_with(".markdown")
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

/// Characters that underline (or overline) a plain-text heading: `=` and `-` in Markdown,
/// any of these in reStructuredText.
const ADORNMENTS: &[char] = &[
    '=', '-', '~', '^', '*', '+', '#', '"', '\'', '`', ':', '.', '_',
];

/// The character of a heading underline or a rule: one character repeated, at least 3 times,
/// from the first column.
fn adornment(line: &str) -> Option<char> {
    let c = line.chars().next()?;
    (ADORNMENTS.contains(&c) && line.len() >= 3 && line.chars().all(|x| x == c)).then_some(c)
}

/// Longest line taken for a heading: longer ones are prose.
const MAX_HEADING_CHARS: usize = 150;

/// A numbered heading standing alone on its line: `2.3. Title`, `2.3 Title`, `Chapter 4. Title`
/// (levels from the number of parts). A single number (`1. Title`) is a list item, not a heading.
fn numbered_heading(line: &str) -> Option<(usize, String)> {
    let line = line.trim();
    if char_len(line) > MAX_HEADING_CHARS || line.ends_with(['.', ',', ';', ':']) {
        return None;
    }
    for word in ["Chapter ", "Appendix ", "Part "] {
        if let Some(rest) = line.strip_prefix(word) {
            let (number, title) = rest.split_once(' ')?;
            let number = number.trim_end_matches(['.', ':']);
            if !number.is_empty()
                && number.chars().all(|c| c.is_ascii_alphanumeric())
                && number.len() <= 4
                && !title.trim().is_empty()
            {
                return Some((1, line.to_owned()));
            }
            return None;
        }
    }
    let (number, title) = line.split_once(' ')?;
    let parts: Vec<&str> = number.trim_end_matches('.').split('.').collect();
    let numeric = parts
        .iter()
        .all(|p| !p.is_empty() && p.len() <= 3 && p.chars().all(|c| c.is_ascii_digit()));
    let title = title.trim();
    let starts_upper = title.chars().next().is_some_and(|c| c.is_uppercase());
    (numeric && parts.len() >= 2 && starts_upper).then(|| (parts.len(), line.to_owned()))
}

/// Whether a line starts a list item: `-`, `*`, `+`, `•` or `1.` / `1)` / `a)` markers.
fn is_list_item(line: &str) -> bool {
    let t = line.trim_start();
    if let Some(rest) = t.strip_prefix(['-', '*', '+', '•']) {
        return rest.starts_with(' ');
    }
    let digits = t.chars().take_while(char::is_ascii_digit).count();
    let marker = if digits > 0 {
        digits
    } else {
        usize::from(t.chars().next().is_some_and(|c| c.is_ascii_lowercase()))
    };
    marker > 0
        && marker <= 3
        && (t[marker..].starts_with(". ") || t[marker..].starts_with(") "))
        && (digits > 0 || t[marker..].starts_with(") "))
}

/// Heading levels of one document: `#` counts give Markdown levels; underline styles get theirs
/// in order of first appearance (reStructuredText), or `=` 1 and `-` 2 in Markdown and HTML.
struct Levels {
    fixed_setext: bool,
    /// (character, overlined) in order of first appearance.
    styles: Vec<(char, bool)>,
}

impl Levels {
    fn of(&mut self, style: (char, bool)) -> usize {
        if self.fixed_setext {
            return match style.0 {
                '=' => 1,
                _ => 2,
            };
        }
        match self.styles.iter().position(|s| *s == style) {
            Some(i) => i + 1,
            None => {
                self.styles.push(style);
                self.styles.len()
            }
        }
    }
}

fn paragraphs(text: &str, fixed_setext: bool) -> Vec<Paragraph> {
    let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
    let mut out = Vec::new();
    // (level, title) of the headings in force.
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    let mut in_fence = false;
    let mut levels = Levels {
        fixed_setext,
        styles: Vec::new(),
    };
    let flush =
        |current: &mut Vec<&str>, stack: &Vec<(usize, String)>, out: &mut Vec<Paragraph>| {
            let text = current.join("\n").trim_matches('\n').to_owned();
            current.clear();
            if !text.trim().is_empty() {
                out.push(Paragraph {
                    trail: stack.iter().map(|(_, t)| t.clone()).collect(),
                    text,
                });
            }
        };
    let open = |stack: &mut Vec<(usize, String)>, level: usize, title: &str| {
        while stack.last().is_some_and(|(l, _)| *l >= level) {
            stack.pop();
        }
        let title = title.trim();
        if !title.is_empty() {
            stack.push((level, title.to_owned()));
        }
    };
    let blank = |i: usize| lines.get(i).is_none_or(|l| l.trim().is_empty());
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.trim_start().starts_with("```") || line.trim_start().starts_with("~~~") {
            in_fence = !in_fence;
            current.push(line);
            i += 1;
            continue;
        }
        if in_fence {
            current.push(line);
            i += 1;
            continue;
        }
        if let Some((level, title)) = heading_of(line) {
            flush(&mut current, &stack, &mut out);
            open(&mut stack, level, &title);
            i += 1;
            continue;
        }
        let starts_block = current.is_empty();
        if let Some(c) = adornment(line) {
            // Overline, title, underline.
            if starts_block
                && let (Some(title), Some(under)) = (lines.get(i + 1), lines.get(i + 2))
                && adornment(under) == Some(c)
                && !title.trim().is_empty()
                && adornment(title).is_none()
                && char_len(title.trim()) <= MAX_HEADING_CHARS
            {
                let level = levels.of((c, true));
                open(&mut stack, level, title);
                i += 3;
                continue;
            }
            // A rule (`---`, `***`) or an underline with no title of its own: a paragraph
            // break, not text.
            flush(&mut current, &stack, &mut out);
            i += 1;
            continue;
        }
        // Title then underline; the title stands alone (a paragraph of one line).
        if starts_block
            && !line.trim().is_empty()
            && !line.starts_with([' ', '\t'])
            && !is_list_item(line)
            && !line.starts_with('|')
            && char_len(line) <= MAX_HEADING_CHARS
            && let Some(c) = lines.get(i + 1).and_then(|l| adornment(l))
            && blank(i + 2)
        {
            let level = levels.of((c, false));
            open(&mut stack, level, line);
            i += 2;
            continue;
        }
        // A numbered heading on a line of its own.
        if starts_block
            && blank(i + 1)
            && (i == 0 || blank(i - 1))
            && let Some((level, title)) = numbered_heading(line)
        {
            open(&mut stack, level, &title);
            i += 1;
            continue;
        }
        // reStructuredText comments, labels and directive lines (`.. _label:`, `.. note::`)
        // are markup, not text; a directive's indented body is kept.
        if line.starts_with(".. ") || line == ".." {
            i += 1;
            continue;
        }
        if line.trim().is_empty() {
            flush(&mut current, &stack, &mut out);
        } else {
            current.push(line);
        }
        i += 1;
    }
    flush(&mut current, &stack, &mut out);
    out
}

/// Whether a paragraph introduces what follows (`... as follows:`, reStructuredText `::`).
fn introduces(paragraph: &str) -> bool {
    paragraph.trim_end().ends_with(':')
}

/// Whether a paragraph is a question on its own (an FAQ entry without a heading), to be kept
/// with its answer.
fn is_question(paragraph: &str) -> bool {
    let t = paragraph.trim();
    let plain = t.trim_matches(|c: char| c == '*' || c == '_');
    !t.contains('\n')
        && char_len(t) <= MAX_HEADING_CHARS
        && (plain.ends_with('?') || t.starts_with("Q:") || t.starts_with("Q."))
}

fn is_list(paragraph: &str) -> bool {
    paragraph.lines().next().is_some_and(is_list_item)
}

/// Groups a section's paragraphs into units that belong together: an introduction with what it
/// introduces, a question with its answer, the items of one list.
fn units<'a>(paragraphs: impl Iterator<Item = &'a str>) -> Vec<Vec<&'a str>> {
    let mut out: Vec<Vec<&'a str>> = Vec::new();
    let mut glue_next = false;
    for paragraph in paragraphs {
        let joins_list = is_list(paragraph)
            && out
                .last()
                .and_then(|u| u.last())
                .is_some_and(|last| is_list(last));
        match out.last_mut() {
            Some(unit) if glue_next || joins_list => unit.push(paragraph),
            _ => out.push(vec![paragraph]),
        }
        glue_next = introduces(paragraph) || is_question(paragraph);
    }
    out
}

/// Packs units into chunks of at most [`MAX_CHUNK_CHARS`] characters. Whole paragraphs carry
/// no overlap; a unit too big for one chunk is packed paragraph by paragraph, and only a
/// paragraph bigger than a chunk is cut (with overlap, see [`split_long`]).
fn pack(units: Vec<Vec<&str>>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut current = String::new();
    let add = |piece: String, out: &mut Vec<String>, current: &mut String| {
        if current.is_empty() {
            *current = piece;
        } else if char_len(current) + 2 + char_len(&piece) <= MAX_CHUNK_CHARS {
            current.push_str("\n\n");
            current.push_str(&piece);
        } else {
            out.push(std::mem::replace(current, piece));
        }
    };
    for unit in units {
        let whole = unit.join("\n\n");
        if char_len(&whole) <= MAX_CHUNK_CHARS {
            add(whole, &mut out, &mut current);
            continue;
        }
        for paragraph in unit {
            if char_len(paragraph) <= MAX_CHUNK_CHARS {
                add(paragraph.to_owned(), &mut out, &mut current);
            } else {
                // The cut pieces start chunks of their own.
                if !current.is_empty() {
                    out.push(std::mem::take(&mut current));
                }
                let mut pieces = split_long(paragraph);
                let last = pieces.pop();
                out.extend(pieces);
                current = last.unwrap_or_default();
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

    fn trails(chunks: &[ChunkData]) -> Vec<&str> {
        chunks.iter().map(|c| c.heading.as_str()).collect()
    }

    #[test]
    fn restructuredtext_underlines_and_overlines_build_trails() {
        let text = ":tocdepth: 2\n\n=======\nPython FAQ\n=======\n\n.. contents::\n\n\
                    General\n=======\n\nWhat is Python?\n---------------\n\nA language.\n\n\
                    .. _label:\n\nWhy the name?\n-------------\n\nA comedy show.\n\n\
                    Threads\n=======\n\nThe GIL\n-------\n\nOne at a time.\n";
        let chunks = chunk_document("faq/general.txt", text);
        assert_eq!(
            trails(&chunks),
            vec![
                "general",
                "Python FAQ > General > What is Python?",
                "Python FAQ > General > Why the name?",
                "Python FAQ > Threads > The GIL",
            ]
        );
        assert_eq!(chunks[0].text, ":tocdepth: 2");
        assert_eq!(chunks[1].text, "A language.", "directive lines are dropped");
        assert_eq!(chunks[2].text, "A comedy show.");
    }

    #[test]
    fn markdown_setext_headings_and_rules() {
        let text = "Shipping\n========\n\nWe ship daily.\n\n---\n\nCosts\n-----\n\n\
                    Free over 50 euros.\n\n***\n\nAnother paragraph.\n";
        let chunks = chunk_document("shipping.md", text);
        assert_eq!(trails(&chunks), vec!["Shipping", "Shipping > Costs"]);
        assert_eq!(chunks[0].text, "We ship daily.");
        assert_eq!(chunks[1].text, "Free over 50 euros.\n\nAnother paragraph.");
        // A dashed line under a multi-line paragraph is a rule, not a heading.
        let chunks = chunk_document("p.md", "Line one\nline two\n---\n\nNext.");
        assert_eq!(trails(&chunks), vec!["p"]);
    }

    #[test]
    fn numbered_headings_standing_alone() {
        let text = "Chapter 1. Basics\n\nIntro text.\n\n1.1. What is it?\n\nIt is a tool.\n\n\
                    1.2 Where is it?\n\nHere.\n\n1. A list item, not a heading\n";
        let chunks = chunk_document("manual.txt", text);
        assert_eq!(
            trails(&chunks),
            vec![
                "Chapter 1. Basics",
                "Chapter 1. Basics > 1.1. What is it?",
                "Chapter 1. Basics > 1.2 Where is it?",
            ]
        );
        assert_eq!(chunks[2].text, "Here.\n\n1. A list item, not a heading");
    }

    #[test]
    fn html_headings_and_blocks() {
        let html = "<html><body><nav>Home | Next</nav><h1>FAQ</h1><h2>Shipping</h2>\
                    <p>Parcels ship in <b>2 days</b>.</p><h2>Payment</h2><ul><li>Cards</li>\
                    <li>PayPal</li></ul></body></html>";
        let chunks = chunk_document("help/faq.html", html);
        assert_eq!(trails(&chunks), vec!["FAQ > Shipping", "FAQ > Payment"]);
        assert_eq!(chunks[0].text, "Parcels ship in 2 days.");
        assert_eq!(chunks[1].text, "- Cards\n- PayPal");
    }

    #[test]
    fn introductions_lists_and_questions_stay_with_what_follows() {
        let filler = "Filler sentence about something else entirely. ".repeat(14);
        let list = "We accept these payment methods:\n\n- Visa and Mastercard\n\n\
                    - PayPal, for orders up to 2,000 euros\n\n- Klarna, pay within 30 days";
        let qa = "Can I pay on delivery?\n\nNo, cash on delivery is not offered anywhere; pay by \
                  card, PayPal or Klarna instead, and keep the receipt for any later return.";
        let text = format!("# Payments\n\n{filler}\n\n{list}\n\n{filler}\n\n{qa}\n");
        let chunks = chunk_document("payments.md", &text);
        assert!(chunks.len() >= 3, "{chunks:#?}");
        assert!(
            chunks
                .iter()
                .any(|c| c.text.contains("payment methods:") && c.text.contains("Klarna")),
            "{chunks:#?}"
        );
        assert!(
            chunks
                .iter()
                .any(|c| c.text.contains("pay on delivery?") && c.text.contains("not offered")),
            "{chunks:#?}"
        );
        // Whole paragraphs are not repeated from one chunk in the next.
        for pair in chunks.windows(2) {
            assert!(!pair[1].text.contains(&pair[0].text), "{chunks:#?}");
        }
    }

    #[test]
    fn embedding_text_has_the_section_path_and_no_markup() {
        let chunks = chunk_document(
            "d.txt",
            "Files\n=====\n\nUse :func:`os.remove` or ``os.unlink``; see `the docs <https://x>`_.",
        );
        assert_eq!(
            chunks[0].embedding_text(),
            "Files\nUse os.remove or os.unlink; see the docs."
        );
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
        std::fs::write(dir.join("page.html"), "<h1>Page</h1><p>Gamma text.</p>").unwrap();
        std::fs::write(dir.join(".hidden.md"), "# Hidden").unwrap();
        let loaded = load_dir(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(loaded.documents, 4, "a.md, empty.md, page.html, sub/b.txt");
        let docs: Vec<&str> = loaded.chunks.iter().map(|c| c.document.as_str()).collect();
        assert_eq!(docs, vec!["a.md", "page.html", "sub/b.txt"]);
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

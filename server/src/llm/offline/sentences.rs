//! A passage read as pieces the offline answerer can quote: sentences of prose and list items
//! (wrapped lines joined), table rows as sentences, code blocks whole; and the content words a
//! piece is matched on.

/// Words that carry no topic: ignored when matching sentences to the question.
const STOPWORDS: &[&str] = &[
    "a", "about", "after", "all", "am", "an", "and", "any", "are", "as", "at", "be", "been",
    "before", "being", "but", "by", "can", "could", "did", "do", "does", "doing", "for", "from",
    "get", "got", "had", "has", "have", "how", "i", "if", "in", "into", "is", "it", "its", "me",
    "my", "of", "on", "or", "our", "please", "should", "so", "that", "the", "their", "them",
    "then", "there", "these", "they", "this", "to", "us", "was", "we", "were", "what", "when",
    "where", "which", "who", "why", "will", "with", "would", "you", "your", "yours", "i'm", "im",
    "want", "need", "know", "tell", "there's", "much", "many", "long",
];

/// Lower-cased content words with a crude suffix stem, so "refunds" meets "refund".
pub(super) fn terms(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric() && c != '\'')
        .map(|w| w.trim_matches('\'').to_lowercase())
        .filter(|w| !w.is_empty() && !STOPWORDS.contains(&w.as_str()))
        .map(|w| stem(&w))
        .collect()
}

fn stem(word: &str) -> String {
    for suffix in ["ing", "ed", "es", "s"] {
        if word.len() > suffix.len() + 3
            && let Some(base) = word.strip_suffix(suffix)
        {
            return base.to_owned();
        }
    }
    word.to_owned()
}

/// One piece of a passage: a sentence of prose or of a list item, a table row, or a code block.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Piece {
    pub(super) text: String,
    /// Code (a fenced or literal block, an interactive session): shown only after the sentence
    /// that introduces it, never picked on its own.
    pub(super) code: bool,
    /// Index of the paragraph (blank-line separated block) the piece comes from.
    pub(super) block: usize,
}

/// Whether an indented block is a quotation in prose rather than code or program output:
/// lines of several plain words, no assignments or calls.
fn reads_as_prose(lines: &[&str]) -> bool {
    let text = lines.join(" ");
    let words = text.split_whitespace().count();
    words >= 6 * lines.len().max(1)
        && !text.contains(" = ")
        && !text.contains("()")
        && text.trim_end().ends_with(['.', '!', '?', ')', '"'])
}

/// Whether a line of a block reads as code rather than prose.
fn code_line(line: &str) -> bool {
    let t = line.trim_start();
    t.starts_with(">>>") || t.starts_with("...") || t.starts_with("$ ") || t.starts_with("```")
}

/// Splits a passage into pieces. Lines of a paragraph wrapped in the source are joined before
/// the split into sentences (at `. `, `? `, `! `); each list item is read on its own; table rows
/// become one sentence each, their cells labelled with the header (`Cost: €4.95`), so a row
/// reads on its own; code blocks (fenced, after a `::` introduction, interactive sessions) stay
/// whole.
pub(super) fn pieces(text: &str) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut blocks: Vec<Vec<&str>> = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    let mut in_fence = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
        }
        if line.trim().is_empty() && !in_fence {
            if !current.is_empty() {
                blocks.push(std::mem::take(&mut current));
            }
        } else {
            current.push(line);
        }
    }
    if !current.is_empty() {
        blocks.push(current);
    }
    let mut literal_next = false;
    for (block, lines) in blocks.iter().enumerate() {
        let indented = lines.iter().all(|l| l.starts_with([' ', '\t']));
        let is_code = lines
            .first()
            .is_some_and(|l| l.trim_start().starts_with("```"))
            || (literal_next && indented)
            || (indented && !reads_as_prose(lines))
            || lines.iter().all(|l| code_line(l));
        literal_next =
            lines.last().is_some_and(|l| l.trim_end().ends_with("::")) || (literal_next && is_code);
        if is_code {
            let code: Vec<&str> = lines
                .iter()
                .filter(|l| !l.trim_start().starts_with("```"))
                .copied()
                .collect();
            out.push(Piece {
                text: dedent(&code),
                code: true,
                block,
            });
            continue;
        }
        let mut table_header: Option<Vec<String>> = None;
        // Prose and list items, each joined across its wrapped lines.
        let mut items: Vec<String> = Vec::new();
        let mut item = String::new();
        let flush = |item: &mut String, items: &mut Vec<String>| {
            if !item.trim().is_empty() {
                items.push(std::mem::take(item));
            }
            item.clear();
        };
        for line in lines {
            let trimmed = line.trim();
            if trimmed.starts_with('|') {
                flush(&mut item, &mut items);
                if let Some(row) = table_row(trimmed, &mut table_header) {
                    items.push(row);
                }
                continue;
            }
            table_header = None;
            let bare = trimmed.trim_start_matches(['>']).trim();
            let bullet = bare
                .strip_prefix(['-', '*', '+', '•'])
                .filter(|rest| rest.starts_with(' '));
            if let Some(rest) = bullet {
                flush(&mut item, &mut items);
                item.push_str(rest.trim());
            } else if strip_ordinal(bare) != bare {
                flush(&mut item, &mut items);
                item.push_str(strip_ordinal(bare));
            } else {
                if !item.is_empty() {
                    item.push(' ');
                }
                item.push_str(bare);
            }
        }
        flush(&mut item, &mut items);
        for item in items {
            for sentence in split_sentences(&item) {
                out.push(Piece {
                    text: sentence,
                    code: false,
                    block,
                });
            }
        }
    }
    out
}

/// A table row as one sentence; `None` for the header row and the `|---|` separator.
fn table_row(line: &str, header: &mut Option<Vec<String>>) -> Option<String> {
    let cells: Vec<String> = line
        .trim_matches('|')
        .split('|')
        .map(|c| c.trim().to_owned())
        .collect();
    if cells
        .iter()
        .all(|c| c.chars().all(|ch| matches!(ch, '-' | ':' | ' ')))
    {
        return None; // the |---|---| separator
    }
    match header {
        None => {
            *header = Some(cells);
            None
        }
        Some(header) => {
            let row: Vec<String> = cells
                .iter()
                .enumerate()
                .filter(|(_, c)| !c.is_empty())
                .map(|(i, c)| match header.get(i) {
                    Some(h) if i > 0 && !h.is_empty() => format!("{h}: {c}"),
                    _ => c.clone(),
                })
                .collect();
            Some(format!("{}.", row.join("; ")))
        }
    }
}

/// Splits prose at `.`, `?`, `!` followed by a space, keeping the punctuation.
fn split_sentences(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut start = 0;
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    // Inside a ``literal`` nothing ends a sentence (`match ... case`).
    let mut literal = false;
    for (i, &(pos, c)) in chars.iter().enumerate() {
        if line[pos..].starts_with("``") && !line[..pos].ends_with('`') {
            literal = !literal;
        }
        if literal {
            continue;
        }
        let next_is_space = chars.get(i + 1).is_some_and(|&(_, n)| n == ' ');
        // "e.g. " and "i.e. " do not end a sentence.
        let abbreviation = c == '.' && {
            let before = &line[start..pos];
            before.ends_with("e.g") || before.ends_with("i.e") || before.ends_with("etc")
        };
        if matches!(c, '.' | '?' | '!') && next_is_space && !abbreviation {
            let sentence = line[start..=pos].trim();
            if !sentence.is_empty() {
                out.push(sentence.to_owned());
            }
            start = pos + 1;
        }
    }
    let rest = line[start..].trim();
    if !rest.is_empty() {
        out.push(rest.to_owned());
    }
    out
}

/// Code lines without their common indentation.
fn dedent(lines: &[&str]) -> String {
    let indent = lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    lines
        .iter()
        .map(|l| l.get(indent..).unwrap_or(l.trim_start()).trim_end())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Drops a leading `1.` / `12)` list number.
fn strip_ordinal(line: &str) -> &str {
    let digits = line.chars().take_while(char::is_ascii_digit).count();
    if digits > 0 {
        let rest = &line[digits..];
        if let Some(r) = rest.strip_prefix(". ").or_else(|| rest.strip_prefix(") ")) {
            return r.trim();
        }
    }
    line
}

/// Inline markup removed so the answer reads as plain text (a reStructuredText `::` that
/// introduces code reads as `:`).
pub(super) fn plain(sentence: &str) -> String {
    let text = crate::markup::plain(sentence)
        .replace('|', " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    match text.strip_suffix("::") {
        Some(intro) => format!("{}:", intro.trim_end()),
        None => text,
    }
}

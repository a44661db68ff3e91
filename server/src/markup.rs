//! Inline markup removed from text that is embedded, searched or read out: Markdown links,
//! images, code spans and bold; reStructuredText roles (`:func:`len``), literals and links.
//! Whatever is not recognised stays as written.

/// Longest span taken for markup: an unmatched backtick or bracket must not swallow a page.
const MAX_SPAN: usize = 300;

/// `text` with inline markup replaced by the words it shows.
pub fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find([':', '`', '[', '!', '*']) {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        match markup_at(tail) {
            Some((consumed, shown)) => {
                out.push_str(&shown);
                rest = &tail[consumed..];
            }
            None => {
                // The markers are ASCII: one byte.
                out.push_str(&tail[..1]);
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Markup starting at the first byte of `s`: (bytes consumed, text shown).
fn markup_at(s: &str) -> Option<(usize, String)> {
    let b = s.as_bytes();
    match b.first()? {
        b'*' if s.starts_with("**") => Some((2, String::new())),
        b':' => {
            // `:role:` or `:domain:role:` right before a backtick span.
            let mut i = 1;
            loop {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'-' || b[i] == b'_')
                {
                    i += 1;
                }
                if i == start || i >= b.len() || b[i] != b':' {
                    return None;
                }
                i += 1;
                if b.get(i) == Some(&b'`') {
                    break;
                }
            }
            let (len, shown) = backticks(&s[i..])?;
            Some((i + len, shown))
        }
        b'`' => backticks(s),
        b'[' => link(s),
        b'!' if s.starts_with("![") => link(&s[1..]).map(|(len, shown)| (len + 1, shown)),
        _ => None,
    }
}

/// A backtick span: ``literal``, `text <target>`_ (link), `text` (role content or code).
fn backticks(s: &str) -> Option<(usize, String)> {
    if let Some(inner) = s.strip_prefix("``") {
        let end = inner.find("``").filter(|&e| e > 0 && e <= MAX_SPAN)?;
        return Some((end + 4, inner[..end].to_owned()));
    }
    let inner = &s[1..];
    let end = inner.find('`').filter(|&e| e > 0 && e <= MAX_SPAN)?;
    let content = &inner[..end];
    if content.contains("\n\n") {
        return None;
    }
    let mut len = end + 2;
    let after = &s[len..];
    if after.starts_with("__") {
        len += 2;
    } else if after.starts_with('_') {
        len += 1;
    }
    let shown = match content.rfind('<') {
        Some(lt) if content.ends_with('>') => {
            let text = content[..lt].trim();
            if text.is_empty() {
                &content[lt + 1..content.len() - 1]
            } else {
                text
            }
        }
        _ => content,
    };
    Some((len, shown.trim_start_matches(['~', '!']).to_owned()))
}

/// A Markdown link `[text](target)`: its text.
fn link(s: &str) -> Option<(usize, String)> {
    let close = s.find(']').filter(|&c| c <= MAX_SPAN)?;
    let text = &s[1..close];
    if text.contains('\n') || text.contains('[') {
        return None;
    }
    let target = s[close + 1..].strip_prefix('(')?;
    let end = target.find(')').filter(|&e| e <= MAX_SPAN)?;
    if target[..end].contains(char::is_whitespace) && !target[..end].contains('"') {
        return None;
    }
    Some((close + 1 + 1 + end + 1, text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restructuredtext_roles_literals_and_links() {
        assert_eq!(
            plain(
                "Use :func:`~os.unlink` or ``os.remove(f)``; see :pep:`8` and `the page <https://x.org/>`_."
            ),
            "Use os.unlink or os.remove(f); see 8 and the page."
        );
        assert_eq!(
            plain("the :c:func:`Tclsam_init` call"),
            "the Tclsam_init call"
        );
        assert_eq!(plain(":mod:`documented <pdb>`"), "documented");
    }

    #[test]
    fn markdown_links_images_code_and_bold() {
        assert_eq!(
            plain("**Note:** see [our page](https://x.example/a) and ![logo](l.png), run `make`."),
            "Note: see our page and logo, run make."
        );
    }

    #[test]
    fn unmatched_markers_stay() {
        for text in [
            "a: b",
            "time 10:30",
            "[x] done",
            "a ` b",
            "5 * 3",
            "Hello!",
            "`",
        ] {
            assert_eq!(plain(text), text);
        }
    }
}

//! HTML documents as Markdown-like text for the chunker: `<h1>`..`<h6>` become `#` headings,
//! block elements become paragraphs, list items `- ` lines, table rows `|` lines, `<pre>`
//! fenced code; scripts, styles and navigation are dropped and entities decoded. A small
//! tolerant scanner, not a full parser: knowledge-base pages are documents, not applications.

/// Whether a document name is an HTML page.
pub fn is_html(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.ends_with(".html") || lower.ends_with(".htm")
}

/// Elements whose content is not document text.
const SKIPPED: &[&str] = &[
    "script", "style", "head", "nav", "noscript", "template", "svg", "button", "form",
];

/// Elements that end a paragraph.
const BLOCKS: &[&str] = &[
    "p",
    "div",
    "section",
    "article",
    "main",
    "header",
    "footer",
    "aside",
    "blockquote",
    "ul",
    "ol",
    "dl",
    "table",
    "thead",
    "tbody",
    "figure",
    "figcaption",
    "hr",
    "address",
    "details",
    "summary",
    "body",
    "html",
    "center",
];

/// The text of an HTML page, with its structure in Markdown form.
pub fn to_markdown(html: &str) -> String {
    let mut out = String::new();
    // Depth inside skipped elements, and inside `<pre>`.
    let mut skipping: Vec<String> = Vec::new();
    let mut pre = 0usize;
    let mut rest = html;
    while !rest.is_empty() {
        let Some(lt) = rest.find('<') else {
            if skipping.is_empty() {
                push_text(&mut out, rest, pre > 0);
            }
            break;
        };
        if skipping.is_empty() {
            push_text(&mut out, &rest[..lt], pre > 0);
        }
        rest = &rest[lt..];
        // Comments and declarations.
        if let Some(body) = rest.strip_prefix("<!--") {
            rest = body.find("-->").map_or("", |end| &body[end + 3..]);
            continue;
        }
        if rest.starts_with("<!") || rest.starts_with("<?") {
            rest = rest.find('>').map_or("", |end| &rest[end + 1..]);
            continue;
        }
        let Some(gt) = rest.find('>') else {
            // A stray `<` in text.
            if skipping.is_empty() {
                push_text(&mut out, rest, pre > 0);
            }
            break;
        };
        let tag = &rest[1..gt];
        rest = &rest[gt + 1..];
        let closing = tag.starts_with('/');
        let name: String = tag
            .trim_start_matches('/')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        if name.is_empty() {
            if skipping.is_empty() {
                push_text(&mut out, "<", pre > 0);
                push_text(&mut out, tag, pre > 0);
                push_text(&mut out, ">", pre > 0);
            }
            continue;
        }
        if SKIPPED.contains(&name.as_str()) {
            if closing {
                if let Some(pos) = skipping.iter().rposition(|s| *s == name) {
                    skipping.truncate(pos);
                }
            } else if !tag.ends_with('/') {
                skipping.push(name);
            }
            continue;
        }
        if !skipping.is_empty() {
            continue;
        }
        match (name.as_str(), closing) {
            ("h1" | "h2" | "h3" | "h4" | "h5" | "h6", false) => {
                let level = usize::from(name.as_bytes()[1] - b'0');
                break_paragraph(&mut out);
                out.push_str(&"#".repeat(level));
                out.push(' ');
            }
            ("h1" | "h2" | "h3" | "h4" | "h5" | "h6", true) => break_paragraph(&mut out),
            ("pre", false) => {
                break_paragraph(&mut out);
                out.push_str("```\n");
                pre += 1;
            }
            ("pre", true) => {
                pre = pre.saturating_sub(1);
                if !out.ends_with('\n') {
                    out.push('\n');
                }
                out.push_str("```");
                break_paragraph(&mut out);
            }
            ("br", _) => out.push('\n'),
            ("li", false) => {
                break_line(&mut out);
                out.push_str("- ");
            }
            ("dt", false) => break_paragraph(&mut out),
            ("dd", false) | ("tr", false) => break_line(&mut out),
            ("td" | "th", false) => {
                if out.ends_with('\n') || out.is_empty() {
                    out.push('|');
                }
                if !out.ends_with(' ') {
                    out.push(' ');
                }
            }
            ("td" | "th", true) => out.push_str(" |"),
            (block, _) if BLOCKS.contains(&block) => break_paragraph(&mut out),
            _ => {}
        }
    }
    // Tidy: no runs of blank lines, no trailing spaces.
    let mut tidy = String::with_capacity(out.len());
    let mut blank = true;
    for line in out.lines() {
        let line = line.trim_end();
        if line.trim().is_empty() {
            if !blank {
                tidy.push('\n');
            }
            blank = true;
        } else {
            tidy.push_str(line);
            tidy.push('\n');
            blank = false;
        }
    }
    tidy.truncate(tidy.trim_end().len());
    tidy.push('\n');
    tidy
}

fn break_line(out: &mut String) {
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
}

fn break_paragraph(out: &mut String) {
    break_line(out);
    if !out.is_empty() && !out.ends_with("\n\n") {
        out.push('\n');
    }
}

/// Appends text: entities decoded, whitespace collapsed outside `<pre>`.
fn push_text(out: &mut String, text: &str, preformatted: bool) {
    let text = decode_entities(text);
    if preformatted {
        out.push_str(&text);
        return;
    }
    let leading_space = text.starts_with(char::is_whitespace);
    for (i, word) in text.split_whitespace().enumerate() {
        let spaced = out.is_empty() || out.ends_with(['\n', ' ']);
        if !spaced && (i > 0 || leading_space) {
            out.push(' ');
        }
        out.push_str(word);
    }
    if text.ends_with(char::is_whitespace) && !out.is_empty() && !out.ends_with(['\n', ' ']) {
        out.push(' ');
    }
}

fn decode_entities(text: &str) -> String {
    if !text.contains('&') {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let end = rest[1..]
            .find(|c: char| !c.is_ascii_alphanumeric() && c != '#')
            .map(|e| e + 1);
        let decoded = match end {
            Some(end) if rest[end..].starts_with(';') => {
                let entity = &rest[1..end];
                let c = match entity {
                    "amp" => Some('&'),
                    "lt" => Some('<'),
                    "gt" => Some('>'),
                    "quot" => Some('"'),
                    "apos" => Some('\''),
                    "nbsp" => Some(' '),
                    "ndash" => Some('–'),
                    "mdash" => Some('—'),
                    "hellip" => Some('…'),
                    "rsquo" | "lsquo" => Some('\''),
                    "ldquo" | "rdquo" => Some('"'),
                    "euro" => Some('€'),
                    "copy" => Some('©'),
                    _ => entity.strip_prefix('#').and_then(|n| {
                        let code = match n.strip_prefix(['x', 'X']) {
                            Some(hex) => u32::from_str_radix(hex, 16).ok(),
                            None => n.parse().ok(),
                        };
                        code.and_then(char::from_u32)
                    }),
                };
                c.map(|c| (c, end + 1))
            }
            _ => None,
        };
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headings_paragraphs_lists_and_tables_keep_their_shape() {
        let html = "<html><head><title>x</title><style>p{}</style></head><body>\
            <nav><a href=/>Home</a></nav>\
            <h1>Returns</h1><p>You can return items\n   within <b>30 days</b>.</p>\
            <h2 id=r>Refund &amp; exchange</h2><ul><li>Cards: 3 days</li><li>PayPal: 1 day</li></ul>\
            <table><tr><th>Zone</th><th>Cost</th></tr><tr><td>EU</td><td>&euro;9.95</td></tr></table>\
            <pre>line 1\n  line 2</pre><script>alert(1)</script><!-- note --></body></html>";
        let md = to_markdown(html);
        assert_eq!(
            md,
            "# Returns\n\nYou can return items within 30 days.\n\n## Refund & exchange\n\n\
             - Cards: 3 days\n- PayPal: 1 day\n\n| Zone | Cost |\n| EU | €9.95 |\n\n\
             ```\nline 1\n  line 2\n```\n"
        );
    }

    #[test]
    fn entities_decode_and_bad_ones_stay() {
        assert_eq!(
            decode_entities("a &lt;b&gt; &#233; &#x41; &bogus; & c"),
            "a <b> é A &bogus; & c"
        );
    }
}

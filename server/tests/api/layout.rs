//! The plan of `server/src`: module-level `use` arrows between files never run in a circle, and a
//! file past the size budget says in its `//!` why it is one room ("Why one file:").

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Lines (before the unit tests) past which a file must justify being one room.
const BUDGET: usize = 400;

type Module = Vec<String>;

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read server/src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn module_of(root: &Path, file: &Path) -> Module {
    let rel = file
        .strip_prefix(root)
        .expect("under src")
        .with_extension("");
    let mut parts: Module = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The code before `#[cfg(test)] mod tests`.
fn non_test(text: &str) -> &str {
    let mut offset = 0;
    let mut previous = "";
    for line in text.split_inclusive('\n') {
        if previous.trim() == "#[cfg(test)]" && line.starts_with("mod tests") {
            return &text[..offset - previous.len()];
        }
        offset += line.len();
        previous = line;
    }
    text
}

/// `a::{b, c::{d, e}}` → `a::b`, `a::c::d`, `a::c::e`.
fn expand(path: &str) -> Vec<String> {
    let path = path.trim();
    let Some(open) = path.find('{') else {
        return vec![path.to_string()];
    };
    let (prefix, rest) = path.split_at(open);
    let inner = &rest[1..rest.rfind('}').expect("closing brace")];
    let mut parts = Vec::new();
    let (mut depth, mut current) = (0, String::new());
    for ch in inner.chars() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(ch);
    }
    parts.push(current);
    parts
        .iter()
        .filter(|p| !p.trim().is_empty())
        .flat_map(|p| expand(p).into_iter().map(move |q| format!("{prefix}{q}")))
        .collect()
}

/// Module-level `use` statements of a file (indented ones sit inside functions or test modules).
fn uses(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut statement: Option<String> = None;
    for line in code.lines() {
        if let Some(s) = statement.as_mut() {
            s.push_str(line);
        } else {
            let rest = line
                .strip_prefix("pub(crate) ")
                .or_else(|| line.strip_prefix("pub "))
                .unwrap_or(line);
            if let Some(u) = rest.strip_prefix("use ") {
                statement = Some(u.to_string());
            }
        }
        if statement.as_ref().is_some_and(|s| s.contains(';')) {
            let s = statement.take().expect("statement");
            out.push(s[..s.find(';').expect("semicolon")].to_string());
        }
    }
    out
}

fn arrows(modules: &BTreeMap<Module, String>) -> BTreeMap<Module, BTreeSet<Module>> {
    let known: BTreeSet<&Module> = modules.keys().collect();
    let mut graph = BTreeMap::new();
    for (module, code) in modules {
        let mut targets = BTreeSet::new();
        for statement in uses(code) {
            for path in expand(&statement) {
                let path = path.split(" as ").next().unwrap_or_default();
                let mut segments: Vec<String> =
                    path.split("::").map(|s| s.trim().to_string()).collect();
                match segments.first().map(String::as_str) {
                    Some("crate") => {
                        segments.remove(0);
                    }
                    Some("super") => {
                        let mut base = module[..module.len().saturating_sub(1)].to_vec();
                        segments.remove(0);
                        while segments.first().is_some_and(|s| s == "super") {
                            base.pop();
                            segments.remove(0);
                        }
                        base.extend(segments);
                        segments = base;
                    }
                    Some("self") => {
                        let mut base = module.clone();
                        base.extend(segments.drain(1..));
                        segments = base;
                    }
                    _ => continue,
                }
                let target = (1..=segments.len())
                    .rev()
                    .map(|n| segments[..n].to_vec())
                    .find(|candidate| known.contains(candidate));
                if let Some(target) = target
                    && !module.starts_with(&target)
                {
                    targets.insert(target);
                }
            }
        }
        graph.insert(module.clone(), targets);
    }
    graph
}

/// Strongly connected components with more than one file (Tarjan).
fn circles(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    struct Walk<'a> {
        graph: &'a BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<&'a Module, usize>,
        low: BTreeMap<&'a Module, usize>,
        stack: Vec<&'a Module>,
        found: Vec<Vec<Module>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, v: &'a Module) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            for w in &self.graph[v] {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.stack.contains(&w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    component.push(w.clone());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !walk.index.contains_key(v) {
            walk.visit(v);
        }
    }
    walk.found
}

fn server_modules() -> BTreeMap<Module, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    files
        .iter()
        .map(|f| {
            (
                module_of(&root, f),
                std::fs::read_to_string(f).expect("read source"),
            )
        })
        .collect()
}

#[test]
fn module_imports_run_in_no_circle() {
    let modules = server_modules();
    let code: BTreeMap<Module, String> = modules
        .iter()
        .map(|(m, text)| (m.clone(), non_test(text).to_string()))
        .collect();
    let graph = arrows(&code);
    assert!(
        graph.values().map(BTreeSet::len).sum::<usize>() > 50,
        "the import parser found too few arrows"
    );
    let found = circles(&graph);
    let shown: Vec<String> = found
        .iter()
        .map(|c| {
            c.iter()
                .map(|m| m.join("::"))
                .collect::<Vec<_>>()
                .join(" ↔ ")
        })
        .collect();
    assert!(found.is_empty(), "import circles in server/src: {shown:#?}");
}

#[test]
fn the_checker_sees_a_circle_when_there_is_one() {
    let mut modules = BTreeMap::new();
    modules.insert(
        vec!["a".to_string()],
        "use crate::b::{Thing, other::{X}};\n".to_string(),
    );
    modules.insert(vec!["b".to_string()], "use std::fmt;\n".to_string());
    modules.insert(
        vec!["b".to_string(), "other".to_string()],
        "use super::super::a::Y;\n".to_string(),
    );
    let found = circles(&arrows(&modules));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].len(), 2);
}

#[test]
fn large_rooms_say_why_they_are_one_file() {
    let unexplained: Vec<String> = server_modules()
        .iter()
        .filter(|(_, text)| non_test(text).lines().count() > BUDGET)
        .filter(|(_, text)| {
            !text
                .lines()
                .take_while(|l| l.starts_with("//!") || l.is_empty())
                .any(|l| l.contains("Why one file:"))
        })
        .map(|(m, text)| {
            format!(
                "{} ({} lines)",
                m.join("::"),
                non_test(text).lines().count()
            )
        })
        .collect();
    assert!(
        unexplained.is_empty(),
        "rooms over {BUDGET} lines without a `Why one file:` note: {unexplained:#?}"
    );
}

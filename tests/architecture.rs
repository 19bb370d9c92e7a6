//! The module graph of `src/` is a DAG: no module depends, directly or through others, on
//! itself. Read from the source text (`crate::name` paths and `use crate::{a, b}` groups, code
//! only, comments and test modules left out), one node per top-level module (a folder module
//! such as `storage/` is one node).
//!
//! `cargo test --test integration architecture -- --nocapture` prints the graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The top-level module a file under `src/` belongs to (`storage/s3.rs` → `storage`).
fn module_of(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    match name {
        "lib" | "main" => None,
        _ => Some(name.to_string()),
    }
}

/// The code of a file without comments and without its `#[cfg(test)]` modules (tests may
/// reach anywhere; the build graph is what must be acyclic).
fn code_of(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") {
            if let Some(next) = lines.peek() {
                let n = next.trim_start();
                if n.starts_with("mod ") || n.starts_with("pub(crate) mod ") {
                    // The test module runs to the end of the file (the house style).
                    break;
                }
            }
        }
        let code = match t.find("//") {
            Some(i) if !t[..i].contains('"') => &t[..i],
            _ => t,
        };
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// The top-level modules `code` names through `crate::`.
fn uses(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        // `$crate::` in a macro is the same crate; other `xcrate::` are not paths.
        let before = rest[..i].chars().last();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a, b::c, d::{e, f}}`: the names at depth 0 of the group.
            let mut depth = 0;
            let mut start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if start && depth == 0 && !c.is_whitespace() => {
                        start = false;
                        let name = ident(&group[j..]);
                        if !name.is_empty() && name != "self" {
                            found.insert(name);
                        }
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph = Graph::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let rel = path.strip_prefix(&src).expect("under src");
            let Some(module) = module_of(rel) else {
                continue;
            };
            let text = std::fs::read_to_string(&path).expect("read source");
            let deps = graph.entry(module.clone()).or_default();
            for used in uses(&code_of(&text)) {
                if used != module {
                    deps.insert(used);
                }
            }
        }
    }
    // Names that are not modules (re-exported items such as `crate::Result`) are not edges.
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for deps in graph.values_mut() {
        deps.retain(|d| modules.contains(d));
    }
    graph
}

/// The strongly connected components with more than one module (Tarjan).
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    struct State<'a> {
        graph: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in &s.graph[v] {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut scc = Vec::new();
            loop {
                let w = s.stack.pop().expect("on stack");
                s.on_stack.remove(w);
                scc.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                scc.sort();
                s.out.push(scc);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

#[test]
fn the_parser_reads_paths_and_groups() {
    let code = code_of(
        "use crate::a::X;\nuse crate::{b, c::{D, E}, self};\n// crate::commented\nlet x = crate::f::g();\n$crate::h::i!();\n#[cfg(test)]\nmod tests {\n use crate::t;\n}\n",
    );
    let found: Vec<String> = uses(&code).into_iter().collect();
    assert_eq!(found, ["a", "b", "c", "f", "h"]);
    let mut g = Graph::new();
    g.insert("x".into(), ["y".to_string()].into());
    g.insert("y".into(), ["z".to_string()].into());
    g.insert("z".into(), ["x".to_string()].into());
    g.insert("w".into(), ["x".to_string()].into());
    assert_eq!(cycles(&g), [["x", "y", "z"]]);
}

/// Cycles being taken apart, each with why it still exists. When one is gone, delete it here:
/// the test insists the list is exact, so it cannot go stale.
const KNOWN_CYCLES: &[(&[&str], &str)] = &[];

#[test]
fn src_modules_have_no_import_cycles() {
    let graph = graph();
    assert!(
        graph.len() > 10,
        "the src/ modules were not found: {graph:?}"
    );
    for (m, deps) in &graph {
        let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
        println!("{m} -> {}", deps.join(" "));
    }
    let mut found = cycles(&graph);
    found.sort();
    for c in &found {
        println!("cycle: {{{}}}", c.join(", "));
    }
    let known: Vec<Vec<String>> = KNOWN_CYCLES
        .iter()
        .map(|(c, _)| c.iter().map(ToString::to_string).collect())
        .collect();
    assert_eq!(
        found, known,
        "import cycles among src/ modules (each set depends on itself) differ from KNOWN_CYCLES \
         (a new cycle: break it with a leaf module; a known one gone: delete it from the list)"
    );
}

/// `lib.rs`'s layout map has one line per module, so a newcomer finds any behaviour in one hop.
#[test]
fn the_lib_rs_layout_map_names_every_module() {
    let lib = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs"))
        .expect("read lib.rs");
    let declared: BTreeSet<&str> = lib
        .lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let l = l
                .strip_prefix("pub mod ")
                .or_else(|| l.strip_prefix("pub(crate) mod "))
                .or_else(|| l.strip_prefix("mod "))?;
            l.strip_suffix(';')
        })
        .collect();
    assert!(declared.len() > 10, "{declared:?}");
    let mapped: BTreeSet<&str> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("//! - [`")?.split('`').next())
        .collect();
    assert_eq!(
        declared, mapped,
        "modules declared vs. lines in the layout map of src/lib.rs"
    );
}

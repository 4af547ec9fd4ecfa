//! The server crate's layers, checked: each module imports only modules of the layers
//! below it, so the import graph has no cycle and the layout shows the architecture
//! (ARCHITECTURE.md, "Layers of the server crate"). A new module must be given a layer
//! here, or this test fails.
//!
//! The check reads the source: every `crate::…`, `super::…` and `self::…` path outside
//! comments and `#[cfg(test)]` items, resolved to the file of the module it names. Edges
//! from a folder's `mod.rs` to its own children (declarations and re-exports) are the
//! folder's shape, not imports.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Bottom first. A module may import modules of earlier layers only.
const LAYERS: &[&[&str]] = &[
    &["logging", "metrics", "templates", "tls", "user_agent"],
    &["stores"],
    &["config"],
    &["forward_auth"],
    &["state"],
    &["accounts"],
    &["error"],
    &["routes"],
    &["server"],
    &["cli"],
];

/// Inside `routes/`, bottom first: the shared files, then one file per area (which may not
/// import each other), then the router.
const ROUTE_LAYERS: &[&[&str]] = &[
    &["extract", "html", "schema"],
    &["guards", "request_id", "views"],
    &[
        "account",
        "admin",
        "api",
        "authz",
        "health",
        "login",
        "metrics",
        "passkeys",
        "two_factor",
    ],
    // The OpenAPI description names the handlers of every area.
    &["openapi"],
    &["mod"],
];

type Module = Vec<String>;

fn module_of(src: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Module = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file's code without comments and without `#[cfg(test)]` items.
fn production_code(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]") {
            let indent = line.len() - trimmed.len();
            // Skip further attributes, then the item: one line (`mod x;`) or up to the
            // closing brace at the same indentation.
            while lines
                .peek()
                .is_some_and(|l| l.trim_start().starts_with("#["))
            {
                lines.next();
            }
            let Some(item) = lines.next() else { break };
            if item.trim_end().ends_with('{') {
                let close = format!("{}}}", " ".repeat(indent));
                for l in lines.by_ref() {
                    if l.trim_end() == close {
                        break;
                    }
                }
            }
            continue;
        }
        let code = match line.find("//") {
            // Good enough for this crate: no `//` inside the string literals of paths.
            Some(i) if !line[..i].contains('"') => &line[..i],
            Some(_) | None => line,
        };
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// Every path the code names that starts with `crate::`, `super::` or `self::`, as its
/// segments (`use a::{b, c::d}` gives `a::b` and `a::c::d`).
fn paths(code: &str) -> Vec<Vec<String>> {
    let bytes = code.as_bytes();
    let mut out = Vec::new();
    for start in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(start) {
            let at = from + i;
            from = at + start.len();
            if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
                continue;
            }
            let head = start.trim_end_matches("::").to_owned();
            expand(&code[from..], vec![head], &mut out);
        }
    }
    out
}

/// Reads `a::b`, `a::{b, c}` (nested) after a prefix.
fn expand(rest: &str, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let rest = rest.trim_start();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut depth = 0;
        let mut item_start = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    expand(&inner[item_start..i], prefix.clone(), out);
                    return;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&inner[item_start..i], prefix.clone(), out);
                    item_start = i + 1;
                }
                _ => {}
            }
        }
        return;
    }
    let ident: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    let mut path = prefix;
    if ident.is_empty() || ident == "self" {
        out.push(path);
        return;
    }
    path.push(ident.clone());
    match rest[ident.len()..].strip_prefix("::") {
        Some(more) => expand(more, path, out),
        None => out.push(path),
    }
}

/// The module (a file) a path in `from`'s code names: its longest prefix that is a module
/// (`None` for the crate root's re-exports).
fn resolve(from: &Module, path: &[String], modules: &BTreeSet<Module>) -> Option<Module> {
    let mut base: Module = match path.first().map(String::as_str) {
        Some("crate") => Vec::new(),
        Some("self") => from.clone(),
        // `super` of `a::b` (file `a/b.rs` or `a/b/mod.rs`) is `a`.
        Some("super") => from[..from.len().saturating_sub(1)].to_vec(),
        _ => return None,
    };
    let mut best = modules.contains(&base).then(|| base.clone());
    for seg in &path[1..] {
        if seg == "super" {
            base.pop();
            best = modules.contains(&base).then(|| base.clone());
            continue;
        }
        base.push(seg.clone());
        if !modules.contains(&base) {
            break;
        }
        best = Some(base.clone());
    }
    best
}

fn rank(layers: &[&[&str]], name: &str) -> Option<usize> {
    layers.iter().position(|l| l.contains(&name))
}

#[test]
fn each_module_imports_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.retain(|f| {
        !["lib.rs", "main.rs", "layers.rs"]
            .iter()
            .any(|n| f.ends_with(n))
    });
    let modules: BTreeSet<Module> = files.iter().map(|f| module_of(&src, f)).collect();

    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    let mut wrong = Vec::new();
    for file in &files {
        let from = module_of(&src, file);
        let is_mod_rs = file.ends_with("mod.rs");
        let code = production_code(&std::fs::read_to_string(file).unwrap());
        for path in paths(&code) {
            let Some(to) = resolve(&from, &path, &modules) else {
                continue;
            };
            // Itself, or a folder's facade naming its own children.
            if to == from || (is_mod_rs && to.starts_with(&from)) {
                continue;
            }
            edges.entry(from.clone()).or_default().insert(to.clone());
            let (a, b) = (&from[0], &to[0]);
            if a != b {
                match (rank(LAYERS, a), rank(LAYERS, b)) {
                    (Some(ra), Some(rb)) if rb < ra => {}
                    (None, _) | (_, None) => {
                        wrong.push(format!("{a} or {b} has no layer in LAYERS"));
                    }
                    _ => wrong.push(format!(
                        "{} imports {} (`{}`): not a lower layer",
                        from.join("::"),
                        to.join("::"),
                        path.join("::")
                    )),
                }
            } else if a == "routes" && from.len() <= 2 && to.len() == 2 {
                let name = |m: &Module| m.get(1).cloned().unwrap_or_else(|| "mod".into());
                let (fa, fb) = (name(&from), name(&to));
                match (rank(ROUTE_LAYERS, &fa), rank(ROUTE_LAYERS, &fb)) {
                    (Some(ra), Some(rb)) if rb < ra => {}
                    _ => wrong.push(format!(
                        "routes::{fa} imports routes::{fb}: an area imports only the shared files"
                    )),
                }
            }
        }
    }
    for m in &modules {
        assert!(
            rank(LAYERS, &m[0]).is_some(),
            "module {} has no layer in LAYERS",
            m[0]
        );
        if m[0] == "routes" && m.len() == 2 {
            assert!(
                rank(ROUTE_LAYERS, &m[1]).is_some(),
                "routes::{} has no place in ROUTE_LAYERS",
                m[1]
            );
        }
    }
    wrong.sort();
    wrong.dedup();
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));

    // And no cycle among files at all (within a folder too): a depth-first search.
    fn visit<'a>(
        m: &'a Module,
        edges: &'a BTreeMap<Module, BTreeSet<Module>>,
        state: &mut BTreeMap<&'a Module, bool>,
        stack: &mut Vec<&'a Module>,
    ) {
        match state.get(m) {
            Some(true) => return,
            Some(false) => {
                let cycle: Vec<String> = stack.iter().map(|m| m.join("::")).collect();
                panic!("import cycle: {} -> {}", cycle.join(" -> "), m.join("::"));
            }
            None => {}
        }
        state.insert(m, false);
        stack.push(m);
        for n in edges.get(m).into_iter().flatten() {
            visit(n, edges, state, stack);
        }
        stack.pop();
        state.insert(m, true);
    }
    let mut state = BTreeMap::new();
    for m in &modules {
        visit(m, &edges, &mut state, &mut Vec::new());
    }
    // The check itself must see the imports it judges.
    let seen: usize = edges.values().map(BTreeSet::len).sum();
    assert!(
        seen > 50,
        "only {seen} imports found: the scanner is broken"
    );
}

#[test]
fn the_scanner_reads_grouped_and_nested_paths() {
    let got = paths("use crate::{a::{b, c::D}, e};\nlet x = super::f::g();\nfoo_crate::x;");
    let got: Vec<String> = got.iter().map(|p| p.join("::")).collect();
    assert_eq!(
        got,
        ["crate::a::b", "crate::a::c::D", "crate::e", "super::f::g"]
    );
    let code = production_code("use crate::a; // crate::b\n#[cfg(test)]\nmod tests {\n    use crate::c;\n}\nuse crate::d;\n");
    let got: Vec<String> = paths(&code).iter().map(|p| p.join("::")).collect();
    assert_eq!(got, ["crate::a", "crate::d"]);
}

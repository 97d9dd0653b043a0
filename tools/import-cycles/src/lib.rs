//! Import cycles between the modules of a crate.
//!
//! The module tree is read from the crate root the way rustc reads it (`mod x;` is `x.rs` or
//! `x/mod.rs` beside the parent's file, inline `mod x { .. }` is a module too), and every path a
//! module names is resolved against that tree: `use` trees, paths in code and types, and paths
//! inside macro calls. A path resolves to the deepest module it names (`crate::a::b::Item` to
//! `a::b`); paths into other crates, and names the tree does not know (glob imports, items
//! re-exported under another module), are left out.
//!
//! A reference from module `m` to module `n` counts at the level of their lowest common
//! ancestor `l`: it is an edge from the child of `l` holding `m` to the child of `l` holding `n`.
//! At every level the edges between siblings must form no cycle. References between a module
//! and its ancestors (a child using its parent's items, a parent re-exporting a child's) are
//! how the module system is meant to be used and do not count.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// Why a crate could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A source file could not be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the file system said.
        #[source]
        source: std::io::Error,
    },
    /// A source file is not Rust that syn parses.
    #[error("parsing {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What syn said.
        #[source]
        source: syn::Error,
    },
    /// `mod name;` names neither `name.rs` nor `name/mod.rs`.
    #[error("module {name} of {parent}: neither {name}.rs nor {name}/mod.rs in {dir}")]
    MissingModule {
        /// The module's name.
        name: String,
        /// The file declaring it.
        parent: PathBuf,
        /// Where its file was looked for.
        dir: PathBuf,
    },
}

/// A path one module names, where it names it.
#[derive(Debug, Clone)]
struct Reference {
    segments: Vec<String>,
    line: usize,
}

/// One module of the tree.
#[derive(Debug)]
struct Module {
    /// `crate`, `crate::a`, `crate::a::b`, ...
    name: String,
    file: PathBuf,
    parent: Option<usize>,
    children: BTreeMap<String, usize>,
    /// Names `use` brought in, with the path they stand for.
    aliases: BTreeMap<String, Vec<String>>,
    references: Vec<Reference>,
}

/// The modules of one crate, from its root file.
#[derive(Debug)]
pub struct Crate {
    modules: Vec<Module>,
}

/// A cycle between sibling modules, with one reference behind each of its edges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cycle {
    /// The siblings in cycle order, the first repeated at the end: `crate::a -> crate::b -> crate::a`.
    pub modules: Vec<String>,
    /// For each edge: which module names which, in which file and line.
    pub evidence: Vec<String>,
}

impl Crate {
    /// Reads the module tree from `root` (a `lib.rs`, `main.rs` or other crate root).
    pub fn load(root: &Path) -> Result<Self, Error> {
        let mut krate = Self {
            modules: Vec::new(),
        };
        let items = parse(root)?;
        let dir = root.parent().unwrap_or(Path::new(".")).to_path_buf();
        krate.add_module("crate".to_owned(), root, &dir, &items, None)?;
        Ok(krate)
    }

    /// How many modules the crate has.
    pub fn len(&self) -> usize {
        self.modules.len()
    }

    /// Whether the crate has no module (never: the root is one).
    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }

    fn add_module(
        &mut self,
        name: String,
        file: &Path,
        dir: &Path,
        items: &[syn::Item],
        parent: Option<usize>,
    ) -> Result<usize, Error> {
        let index = self.modules.len();
        let mut collector = Collector::default();
        for item in items {
            collector.visit_item(item);
        }
        self.modules.push(Module {
            name: name.clone(),
            file: file.to_path_buf(),
            parent,
            children: BTreeMap::new(),
            aliases: collector.aliases,
            references: collector.references,
        });
        for item in items {
            let syn::Item::Mod(module) = item else {
                continue;
            };
            let child_name = module.ident.to_string();
            let child_dir = dir.join(&child_name);
            let child = match &module.content {
                Some((_, inline)) => self.add_module(
                    format!("{name}::{child_name}"),
                    file,
                    &child_dir,
                    inline,
                    Some(index),
                )?,
                None => {
                    let (child_file, grandchildren) = module_file(dir, &child_name, file)?;
                    let child_items = parse(&child_file)?;
                    self.add_module(
                        format!("{name}::{child_name}"),
                        &child_file,
                        &grandchildren,
                        &child_items,
                        Some(index),
                    )?
                }
            };
            self.modules[index].children.insert(child_name, child);
        }
        Ok(index)
    }

    /// The module a path names from module `from`, if it names one of this crate's.
    fn resolve(&self, from: usize, segments: &[String], depth: usize) -> Option<usize> {
        let first = segments.first()?;
        let (mut current, rest) = match first.as_str() {
            "crate" => (0, &segments[1..]),
            "self" => (from, &segments[1..]),
            "super" => {
                let mut current = from;
                let mut used = 0;
                while segments.get(used).map(String::as_str) == Some("super") {
                    current = self.modules[current].parent?;
                    used += 1;
                }
                (current, &segments[used..])
            }
            name => {
                let module = &self.modules[from];
                if let Some(&child) = module.children.get(name) {
                    (child, &segments[1..])
                } else if let Some(target) = module.aliases.get(name) {
                    if depth > 8 || target.first() == Some(first) {
                        return None;
                    }
                    let mut full = target.clone();
                    full.extend_from_slice(&segments[1..]);
                    return self.resolve(from, &full, depth + 1);
                } else {
                    return None;
                }
            }
        };
        for segment in rest {
            match self.modules[current].children.get(segment) {
                Some(&child) => current = child,
                None => break,
            }
        }
        Some(current)
    }

    /// The chain from the root to `module`, the root first.
    fn ancestry(&self, module: usize) -> Vec<usize> {
        let mut chain = vec![module];
        while let Some(parent) = self.modules[*chain.last().unwrap_or(&0)].parent {
            chain.push(parent);
        }
        chain.reverse();
        chain
    }

    /// Every cycle between sibling modules, at every level of the tree.
    pub fn cycles(&self) -> Vec<Cycle> {
        // (parent, from child, to child) -> the first reference behind the edge.
        let mut edges: BTreeMap<(usize, usize, usize), String> = BTreeMap::new();
        for (from, module) in self.modules.iter().enumerate() {
            for reference in &module.references {
                let Some(to) = self.resolve(from, &reference.segments, 0) else {
                    continue;
                };
                let (a, b) = (self.ancestry(from), self.ancestry(to));
                let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
                // One is the other's ancestor (or itself): not an edge between siblings.
                let (Some(&from_child), Some(&to_child)) = (a.get(common), b.get(common)) else {
                    continue;
                };
                edges
                    .entry((a[common - 1], from_child, to_child))
                    .or_insert_with(|| {
                        format!(
                            "{} names {} ({}:{})",
                            module.name,
                            self.modules[to].name,
                            module.file.display(),
                            reference.line
                        )
                    });
            }
        }
        let mut by_parent: BTreeMap<usize, BTreeMap<usize, BTreeSet<usize>>> = BTreeMap::new();
        for &(parent, from, to) in edges.keys() {
            by_parent
                .entry(parent)
                .or_default()
                .entry(from)
                .or_default()
                .insert(to);
        }
        let mut cycles = Vec::new();
        for (parent, graph) in &by_parent {
            for component in strongly_connected(graph) {
                let path = cycle_through(graph, &component);
                let evidence = path
                    .windows(2)
                    .map(|w| edges[&(*parent, w[0], w[1])].clone())
                    .collect();
                cycles.push(Cycle {
                    modules: path.iter().map(|&m| self.modules[m].name.clone()).collect(),
                    evidence,
                });
            }
        }
        cycles
    }
}

fn parse(path: &Path) -> Result<Vec<syn::Item>, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let file = syn::parse_file(&text).map_err(|source| Error::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(file.items)
}

/// The file of `mod name;` declared in a module whose children live in `dir`, and the
/// directory of that module's own children.
fn module_file(dir: &Path, name: &str, parent: &Path) -> Result<(PathBuf, PathBuf), Error> {
    let flat = dir.join(format!("{name}.rs"));
    if flat.is_file() {
        return Ok((flat, dir.join(name)));
    }
    let nested = dir.join(name).join("mod.rs");
    if nested.is_file() {
        return Ok((nested, dir.join(name)));
    }
    Err(Error::MissingModule {
        name: name.to_owned(),
        parent: parent.to_path_buf(),
        dir: dir.to_path_buf(),
    })
}

/// The paths one module's own items name (not those of its child modules).
#[derive(Default)]
struct Collector {
    aliases: BTreeMap<String, Vec<String>>,
    references: Vec<Reference>,
}

impl Collector {
    fn add_use(&mut self, tree: &syn::UseTree, prefix: &mut Vec<String>) {
        match tree {
            syn::UseTree::Path(path) => {
                prefix.push(path.ident.to_string());
                self.add_use(&path.tree, prefix);
                prefix.pop();
            }
            syn::UseTree::Name(name) => {
                let ident = name.ident.to_string();
                let mut segments = prefix.clone();
                if ident != "self" {
                    segments.push(ident.clone());
                }
                let alias = if ident == "self" {
                    prefix.last().cloned()
                } else {
                    Some(ident)
                };
                self.add_reference(segments, name.ident.span().start().line, alias);
            }
            syn::UseTree::Rename(rename) => {
                let mut segments = prefix.clone();
                if rename.ident != "self" {
                    segments.push(rename.ident.to_string());
                }
                let line = rename.ident.span().start().line;
                self.add_reference(segments, line, Some(rename.rename.to_string()));
            }
            syn::UseTree::Glob(glob) => {
                let line = glob.star_token.spans[0].start().line;
                self.add_reference(prefix.clone(), line, None);
            }
            syn::UseTree::Group(group) => {
                for tree in &group.items {
                    self.add_use(tree, prefix);
                }
            }
        }
    }

    fn add_reference(&mut self, segments: Vec<String>, line: usize, alias: Option<String>) {
        if segments.is_empty() {
            return;
        }
        if let Some(alias) = alias.filter(|a| a != "_") {
            self.aliases.insert(alias, segments.clone());
        }
        self.references.push(Reference { segments, line });
    }

    /// Paths in a macro's tokens: `a::b::c` sequences.
    fn add_tokens(&mut self, tokens: proc_macro2::TokenStream) {
        let mut current: Vec<String> = Vec::new();
        let mut line = 0;
        let mut colons = 0;
        let flush = |current: &mut Vec<String>, line: usize, this: &mut Self| {
            if current.len() >= 2 {
                this.references.push(Reference {
                    segments: std::mem::take(current),
                    line,
                });
            }
            current.clear();
        };
        for token in tokens {
            match token {
                proc_macro2::TokenTree::Ident(ident) => {
                    if current.is_empty() || colons != 2 {
                        flush(&mut current, line, self);
                        line = ident.span().start().line;
                    }
                    current.push(ident.to_string());
                    colons = 0;
                }
                proc_macro2::TokenTree::Punct(punct) if punct.as_char() == ':' => colons += 1,
                proc_macro2::TokenTree::Group(group) => {
                    flush(&mut current, line, self);
                    colons = 0;
                    self.add_tokens(group.stream());
                }
                _ => {
                    flush(&mut current, line, self);
                    colons = 0;
                }
            }
        }
        flush(&mut current, line, self);
    }
}

impl<'ast> Visit<'ast> for Collector {
    fn visit_item_mod(&mut self, _: &'ast syn::ItemMod) {
        // A child module is a module of its own.
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        self.add_use(&item.tree, &mut Vec::new());
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        if path.segments.len() >= 2 {
            let segments = path.segments.iter().map(|s| s.ident.to_string()).collect();
            let line = path.segments[0].ident.span().start().line;
            self.references.push(Reference { segments, line });
        }
        syn::visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.add_tokens(mac.tokens.clone());
        syn::visit::visit_macro(self, mac);
    }
}

/// The strongly connected components of more than one node (Tarjan's algorithm).
fn strongly_connected(graph: &BTreeMap<usize, BTreeSet<usize>>) -> Vec<BTreeSet<usize>> {
    struct State<'g> {
        graph: &'g BTreeMap<usize, BTreeSet<usize>>,
        index: BTreeMap<usize, usize>,
        low: BTreeMap<usize, usize>,
        stack: Vec<usize>,
        on_stack: BTreeSet<usize>,
        found: Vec<BTreeSet<usize>>,
    }
    fn visit(state: &mut State<'_>, node: usize) {
        let number = state.index.len();
        state.index.insert(node, number);
        state.low.insert(node, number);
        state.stack.push(node);
        state.on_stack.insert(node);
        let graph = state.graph;
        for &next in graph.get(&node).into_iter().flatten() {
            if !state.index.contains_key(&next) {
                visit(state, next);
                let low = state.low[&node].min(state.low[&next]);
                state.low.insert(node, low);
            } else if state.on_stack.contains(&next) {
                let low = state.low[&node].min(state.index[&next]);
                state.low.insert(node, low);
            }
        }
        if state.low[&node] == state.index[&node] {
            let mut component = BTreeSet::new();
            while let Some(member) = state.stack.pop() {
                state.on_stack.remove(&member);
                component.insert(member);
                if member == node {
                    break;
                }
            }
            if component.len() > 1 {
                state.found.push(component);
            }
        }
    }
    let mut state = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for &node in graph.keys() {
        if !state.index.contains_key(&node) {
            visit(&mut state, node);
        }
    }
    state.found
}

/// One cycle through the smallest node of `component`, that node repeated at the end
/// (a shortest one, by breadth-first search inside the component).
fn cycle_through(
    graph: &BTreeMap<usize, BTreeSet<usize>>,
    component: &BTreeSet<usize>,
) -> Vec<usize> {
    let Some(&start) = component.first() else {
        return Vec::new();
    };
    let mut came_from: BTreeMap<usize, usize> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(node) = queue.pop_front() {
        for &next in graph.get(&node).into_iter().flatten() {
            if !component.contains(&next) {
                continue;
            }
            if next == start {
                let mut path = vec![start, node];
                let mut at = node;
                while at != start {
                    at = came_from[&at];
                    path.push(at);
                }
                path.reverse();
                return path;
            }
            if let std::collections::btree_map::Entry::Vacant(entry) = came_from.entry(next) {
                entry.insert(node);
                queue.push_back(next);
            }
        }
    }
    vec![start]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A crate written into a fresh directory: `(relative path, text)` pairs, `src/lib.rs`
    /// among them.
    fn krate(files: &[(&str, &str)]) -> (PathBuf, Crate) {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "import-cycles-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        for (path, text) in files {
            let path = dir.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let krate = Crate::load(&dir.join("src/lib.rs")).unwrap();
        (dir, krate)
    }

    fn cycles(files: &[(&str, &str)]) -> Vec<Vec<String>> {
        let (dir, krate) = krate(files);
        std::fs::remove_dir_all(dir).unwrap();
        krate.cycles().into_iter().map(|c| c.modules).collect()
    }

    #[test]
    fn one_direction_is_no_cycle() {
        let found = cycles(&[
            ("src/lib.rs", "mod a; mod b;"),
            ("src/a.rs", "use crate::b::Thing; fn f(_: Thing) {}"),
            ("src/b.rs", "pub struct Thing;"),
        ]);
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn two_modules_importing_each_other_are_a_cycle_with_its_evidence() {
        let (dir, krate) = krate(&[
            ("src/lib.rs", "mod a;\nmod b;"),
            ("src/a.rs", "use crate::b::Thing;\npub struct Other;"),
            (
                "src/b.rs",
                "pub struct Thing;\nfn f() -> crate::a::Other { todo!() }",
            ),
        ]);
        let found = krate.cycles();
        assert_eq!(
            found.iter().map(|c| c.modules.clone()).collect::<Vec<_>>(),
            [["crate::a", "crate::b", "crate::a"]]
        );
        assert_eq!(
            found[0].evidence,
            [
                format!(
                    "crate::a names crate::b ({}:1)",
                    dir.join("src/a.rs").display()
                ),
                format!(
                    "crate::b names crate::a ({}:2)",
                    dir.join("src/b.rs").display()
                ),
            ]
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_parent_and_its_children_may_name_each_other() {
        let found = cycles(&[
            ("src/lib.rs", "mod story;"),
            (
                "src/story/mod.rs",
                "mod play; pub use play::play; pub struct Shop;",
            ),
            (
                "src/story/play.rs",
                "use super::Shop; pub fn play(_: Shop) {} #[cfg(test)] mod tests { use super::*; }",
            ),
        ]);
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn references_from_deep_inside_count_between_the_siblings_holding_them() {
        let found = cycles(&[
            ("src/lib.rs", "mod issuer; mod proxy;"),
            ("src/issuer/mod.rs", "mod mint;"),
            ("src/issuer/mint.rs", "fn f() { crate::proxy::body(); }"),
            (
                "src/proxy.rs",
                "pub fn body() {} mod inner { use crate::issuer; }",
            ),
        ]);
        assert_eq!(found, [["crate::issuer", "crate::proxy", "crate::issuer"]]);
    }

    #[test]
    fn paths_through_an_imported_module_and_inside_macros_count() {
        let found = cycles(&[
            ("src/lib.rs", "mod a; mod b; mod c;"),
            ("src/a.rs", "use crate::b; fn f() { b::g(); }"),
            ("src/b.rs", "pub fn g() { println!(\"{}\", crate::c::X); }"),
            (
                "src/c.rs",
                "pub const X: u8 = 1; mod d { fn h() { let _ = super::super::a::f; } }",
            ),
        ]);
        assert_eq!(found, [["crate::a", "crate::b", "crate::c", "crate::a"]]);
    }

    #[test]
    fn other_crates_and_unknown_names_are_left_out() {
        let found = cycles(&[
            ("src/lib.rs", "mod a; mod b;"),
            (
                "src/a.rs",
                "use std::collections::BTreeMap; use serde::Serialize; use b_crate::x;",
            ),
            ("src/b.rs", "use super::*; fn f() { a_crate::y(); }"),
        ]);
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn a_missing_module_file_is_an_error_naming_it() {
        let dir =
            std::env::temp_dir().join(format!("import-cycles-missing-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("src")).unwrap();
        std::fs::write(dir.join("src/lib.rs"), "mod gone;").unwrap();
        let err = Crate::load(&dir.join("src/lib.rs")).unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(err.to_string().contains("module gone of"), "{err}");
    }
}

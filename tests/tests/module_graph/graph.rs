//! The module graphs of one source root, and what is wrong with them. Finds the `.rs` files,
//! sorts them into crates (the lib, `src/main.rs` with the modules it declares, each
//! `src/bin/<name>`), names each file's module from its path, drops test-only files, and keeps,
//! for every pair of modules, the first place one imports the other. The report lists each group
//! of modules that import each other with a shortest loop through it. Reading paths out of a file
//! is `paths`'s work; finding loops in a graph is `cycles`'s.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use crate::cycles::{shortest_loop, strongly_connected};
use crate::paths::{ModPath, Parsed, parse, resolve};

/// Where one module first names another.
struct Site {
    file: String,
    line: usize,
    code: String,
}

pub struct Graph {
    label: String,
    /// Display names, sorted by module path: `crate` for the root.
    pub names: Vec<String>,
    /// `(from, to)` to the first place `from` names `to`.
    edges: BTreeMap<(usize, usize), Site>,
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn rs_files(dir: &Path, files: &mut Vec<PathBuf>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rs_files(&path, files);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
}

/// The module a file is, from its path below the crate's directory (`root_stem.rs` is the root).
fn module_path(relative: &Path, root_stem: &str) -> ModPath {
    let mut parts: Vec<String> = relative
        .components()
        .map(|part| part.as_os_str().to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.strip_suffix(".rs").unwrap_or(&last).to_string();
    if stem != "mod" && !(parts.is_empty() && stem == root_stem) {
        parts.push(stem);
    }
    parts
}

/// The modules a crate root declares at its top level, outside `#[cfg(test)]`; none if there is
/// no such file.
fn top_level_children(root: &Path) -> BTreeSet<String> {
    if !root.is_file() {
        return BTreeSet::new();
    }
    let parsed = parse(&read(root));
    let test: BTreeSet<&(ModPath, String)> = parsed.test_children.iter().collect();
    parsed
        .children
        .iter()
        .filter(|child| child.0.is_empty() && !test.contains(child))
        .map(|(_, name)| name.clone())
        .collect()
}

/// One graph per crate under `source_root` (relative to `workspace`), sorted by label.
pub fn crate_graphs(workspace: &Path, source_root: &str) -> Vec<Graph> {
    let dir = workspace.join(source_root);
    let mut files = Vec::new();
    rs_files(&dir, &mut files);
    files.sort();
    let lib = dir.join("lib.rs");
    let main = dir.join("main.rs");
    let lib_children = top_level_children(&lib);
    let main_children = top_level_children(&main);
    let lib_label = format!("{source_root} (lib crate)");
    let main_label = format!("{source_root}/main.rs (bin crate)");
    let mut groups: BTreeMap<String, Vec<(ModPath, PathBuf)>> = BTreeMap::new();
    let mut add = |label: &str, module: ModPath, file: &Path| {
        let members = groups.entry(label.to_string()).or_default();
        members.push((module, file.to_path_buf()));
    };
    for file in &files {
        let relative = file.strip_prefix(&dir).expect("below the source root");
        if relative.starts_with("bin") && relative.components().count() > 1 {
            let bin = relative.strip_prefix("bin").expect("below bin/");
            let mut bin_parts = bin.components();
            let name = bin_parts.next().expect("a file below bin/").as_os_str();
            let name = name.to_string_lossy().trim_end_matches(".rs").to_string();
            let label = format!("{source_root}/bin/{name} (bin crate)");
            let module = match bin_parts.as_path().as_os_str().is_empty() {
                true => Vec::new(), // src/bin/<name>.rs
                false => module_path(bin_parts.as_path(), "main"),
            };
            add(&label, module, file);
        } else if *file == main {
            add(&main_label, Vec::new(), file);
        } else {
            let module = module_path(relative, "lib");
            let first = module.first();
            let in_main = main.is_file()
                && (!lib.is_file() || first.is_some_and(|first| main_children.contains(first)));
            let in_lib = !in_main || first.is_some_and(|first| lib_children.contains(first));
            if in_main {
                add(&main_label, module.clone(), file);
            }
            if in_lib {
                add(&lib_label, module, file);
            }
        }
    }
    groups
        .into_iter()
        .map(|(label, members)| build_graph(workspace, label, members))
        .collect()
}

fn build_graph(workspace: &Path, label: String, members: Vec<(ModPath, PathBuf)>) -> Graph {
    let mut sources: BTreeMap<ModPath, (PathBuf, String, Parsed)> = BTreeMap::new();
    for (module, file) in members {
        let source = read(&file);
        let parsed = parse(&source);
        sources.insert(module, (file, source, parsed));
    }
    // Files that a `#[cfg(test)] mod name;` declares are test code, with all below them.
    let test_only: Vec<ModPath> = sources
        .iter()
        .flat_map(|(module, (_, _, parsed))| {
            parsed.test_children.iter().map(move |(scope, name)| {
                let mut path = module.clone();
                path.extend(scope.iter().cloned());
                path.push(name.clone());
                path
            })
        })
        .collect();
    sources.retain(|module, _| !test_only.iter().any(|test| module.starts_with(test)));

    let index: BTreeMap<ModPath, usize> = sources
        .keys()
        .enumerate()
        .map(|(ix, module)| (module.clone(), ix))
        .collect();
    let mut edges = BTreeMap::new();
    for (from, (module, (file, source, parsed))) in sources.iter().enumerate() {
        let shown = file.strip_prefix(workspace).unwrap_or(file).display();
        let lines: Vec<&str> = source.lines().collect();
        for path in &parsed.paths {
            let Some(to) = resolve(module, path, &parsed.children, &index) else {
                continue;
            };
            if to != from {
                edges.entry((from, to)).or_insert_with(|| Site {
                    file: shown.to_string(),
                    line: path.line,
                    code: lines.get(path.line - 1).unwrap_or(&"").trim().to_string(),
                });
            }
        }
    }
    let names = sources.keys().map(|module| match module.is_empty() {
        true => "crate".to_string(),
        false => module.join("::"),
    });
    Graph {
        label,
        names: names.collect(),
        edges,
    }
}

impl Graph {
    fn adjacency(&self) -> Vec<Vec<usize>> {
        let mut adjacency = vec![Vec::new(); self.names.len()];
        for &(from, to) in self.edges.keys() {
            adjacency[from].push(to);
        }
        adjacency
    }

    /// One aligned line per import: `from -> to  file:line  code`.
    fn imports_table(&self, report: &mut String, pairs: &[(usize, usize)]) {
        let rows: Vec<[String; 3]> = pairs
            .iter()
            .map(|&(from, to)| {
                let site = &self.edges[&(from, to)];
                [
                    format!("{} -> {}", self.names[from], self.names[to]),
                    format!("{}:{}", site.file, site.line),
                    site.code.clone(),
                ]
            })
            .collect();
        let arrows = rows.iter().map(|row| row[0].len()).max().unwrap_or(0);
        let places = rows.iter().map(|row| row[1].len()).max().unwrap_or(0);
        for [arrow, place, code] in rows {
            let _ = writeln!(report, "      {arrow:arrows$}  {place:places$}  {code}");
        }
    }

    /// Empty when the graph has no loop; else every component of more than one module, each with
    /// a shortest loop through it and every import inside it.
    pub fn loops_report(&self) -> String {
        let adjacency = self.adjacency();
        let components: Vec<Vec<usize>> = strongly_connected(&adjacency)
            .into_iter()
            .filter(|component| component.len() > 1)
            .collect();
        let mut report = String::new();
        if components.is_empty() {
            return report;
        }
        let names = |nodes: &[usize]| -> Vec<&str> {
            nodes.iter().map(|&n| self.names[n].as_str()).collect()
        };
        let groups = match components.len() {
            1 => "1 group".to_string(),
            n => format!("{n} groups"),
        };
        let _ = writeln!(
            report,
            "{}: {groups} of modules importing each other",
            self.label
        );
        for component in &components {
            let _ = writeln!(
                report,
                "  {} modules: {}",
                component.len(),
                names(component).join(", ")
            );
            let cycle = shortest_loop(&adjacency, component);
            let _ = writeln!(report, "    a loop: {}", names(&cycle).join(" -> "));
            let steps: Vec<(usize, usize)> =
                cycle.windows(2).map(|pair| (pair[0], pair[1])).collect();
            self.imports_table(&mut report, &steps);
            let inside: BTreeSet<usize> = component.iter().copied().collect();
            let internal: Vec<(usize, usize)> = self
                .edges
                .keys()
                .copied()
                .filter(|(from, to)| inside.contains(from) && inside.contains(to))
                .collect();
            let _ = writeln!(
                report,
                "    all {} imports between these modules:",
                internal.len()
            );
            self.imports_table(&mut report, &internal);
        }
        report.push('\n');
        report
    }
}

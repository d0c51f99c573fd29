//! Inside each crate, no module imports a module that imports it back, directly or around a loop.
//!
//! Imports run one way inside a crate too: shared state lives in a module of its own below the
//! handlers; the router sits on top; nothing imports the router. Rust compiles loops between
//! modules without a word, so this test is what keeps them out: a loop (`server` uses `page`,
//! `page` uses `server::Edge`) means neither module can be read, tested or moved without the
//! other, and it is how a handler ends up reaching up into the router for its state.
//!
//! How it works, without `syn`: every `.rs` file under `shared/src`, `broker/src`, `demo/src`,
//! `edge/src` and `tests/src` is one module node, named from its path (`lib.rs` is the crate root,
//! `foo.rs` and `foo/mod.rs` are `foo`, `foo/bar.rs` is `foo::bar`). `src/main.rs` with the modules
//! it declares, and each `src/bin/<name>/`, is a crate graph of its own, apart from the lib's. A
//! small tokenizer drops comments, string and char literals, and every `#[cfg(test)]` item; what
//! is left is scanned for paths. A path is an edge to the module it lands in: `crate::x::y::Z` to
//! the longest prefix that is a module (`crate::Z` to the root), `self::` and `super::` relative to
//! the file (and to inline `mod` blocks in it), and `child::…` for a child the file declares. Use
//! trees with braces yield one edge per leaf. Declaring `mod x;` is not an edge; paths into other
//! crates are ignored. A `pub use x::Y` in the root is an edge from the root to `x` like any
//! other, so a module that takes `Y` as `crate::Y` depends on the root, which depends on `x`: the
//! roundabout import shows up as the loop it is.
//! Strongly connected components (Tarjan) of more than one module fail the test, each with a
//! shortest loop and the `file:line` behind every import in it.
//!
//! `graph` finds the files, builds one graph per crate and reports its loops, which `cycles`
//! finds; `paths` reads the child modules and paths out of a file and resolves each path to a
//! module; `tokens` turns a file into the tokens of its non-test code. Each uses only modules
//! named after it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test: a failed expectation is a failed test"
)]

mod cycles;
mod graph;
mod paths;
mod tokens;

use std::path::Path;

use graph::crate_graphs;

/// The source roots checked, relative to the workspace root.
const SOURCE_ROOTS: [&str; 5] = [
    "shared/src",
    "broker/src",
    "demo/src",
    "edge/src",
    "tests/src",
];

#[test]
fn no_module_imports_a_module_that_imports_it_back() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut report = String::new();
    for root in SOURCE_ROOTS {
        let graphs = crate_graphs(&workspace, root);
        assert!(
            graphs.iter().any(|graph| !graph.names.is_empty()),
            "no Rust files found under {root}: has the crate moved? Update SOURCE_ROOTS."
        );
        for graph in &graphs {
            report.push_str(&graph.loops_report());
        }
    }
    if !report.is_empty() {
        panic!(
            "modules import each other in a loop. Imports run one way inside a crate: shared state \
             lives in a module of its own below the handlers; the router sits on top; nothing \
             imports the router. Move one `use` of each loop below (or move what it imports into \
             a module of its own).\n\n{report}"
        );
    }
}

//! From a file's tokens to the modules it names: the child modules it declares (`mod x;`,
//! `mod x { … }`, and which of them are `#[cfg(test)]`), every path of two segments or more
//! written in it (one per leaf of a `use` tree), and where each path lands in the crate. It knows
//! nothing of files or of which modules exist until it is handed them; finding files and building
//! the graph is `graph`'s work.

use std::collections::{BTreeMap, BTreeSet};

use crate::tokens::{TEST_MOD, Token, skip_balanced, text, tokenize};

/// A module path from the crate root: empty for the root, `["foo", "bar"]` for `foo::bar`.
pub type ModPath = Vec<String>;

#[derive(Debug, Default)]
pub struct Parsed {
    /// `mod name;` and `mod name { … }`, with the inline module they are declared in.
    pub children: BTreeSet<(ModPath, String)>,
    /// `#[cfg(test)] mod name;`: that child's file is test code.
    pub test_children: Vec<(ModPath, String)>,
    /// Paths of two segments or more, including each leaf of a `use` tree.
    pub paths: Vec<PathRef>,
}

#[derive(Debug)]
pub struct PathRef {
    /// The inline modules (`mod name { … }`) the path is written in, outermost first.
    pub scope: ModPath,
    pub segments: Vec<String>,
    pub line: usize,
}

pub fn parse(source: &str) -> Parsed {
    let tokens = tokenize(source);
    let t = tokens.as_slice();
    let mut parsed = Parsed::default();
    // Inline modules we are in, each with the brace depth just inside it.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let scope = |inline: &[(String, usize)]| -> ModPath {
        inline.iter().map(|(name, _)| name.clone()).collect()
    };
    let mut opening_mod: Option<String> = None;
    let mut depth: usize = 0;
    let mut i = 0;
    while i < t.len() {
        match text(t, i) {
            TEST_MOD => {
                let name = t[i + 1].name().to_string();
                parsed.test_children.push((scope(&inline), name));
                i += 2;
                continue;
            }
            "mod"
                if t.get(i + 1).is_some_and(Token::is_ident)
                    && matches!(text(t, i + 2), ";" | "{") =>
            {
                let name = t[i + 1].name().to_string();
                if text(t, i + 2) == "{" {
                    opening_mod = Some(name.clone());
                }
                parsed.children.insert((scope(&inline), name));
                i += 2;
                continue;
            }
            "{" => {
                depth += 1;
                if let Some(name) = opening_mod.take() {
                    inline.push((name, depth));
                }
            }
            "}" => {
                if inline.last().is_some_and(|(_, inside)| *inside == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            // `pub(crate)`, `pub(super)`, `pub(in crate::x)` say who may see, not what is used.
            "pub" if text(t, i + 1) == "(" => {
                i = skip_balanced(t, i + 1);
                continue;
            }
            "use" => {
                i += 1;
                let mut leaves = Vec::new();
                parse_use_tree(t, &mut i, &mut Vec::new(), &mut leaves);
                let scope = scope(&inline);
                parsed
                    .paths
                    .extend(leaves.into_iter().map(|(segments, line)| {
                        let scope = scope.clone();
                        PathRef {
                            scope,
                            segments,
                            line,
                        }
                    }));
                continue;
            }
            _ if t[i].is_ident() && (i == 0 || text(t, i - 1) != "::") => {
                let line = t[i].line;
                let mut segments = vec![t[i].name().to_string()];
                i += 1;
                while text(t, i) == "::" && t.get(i + 1).is_some_and(Token::is_ident) {
                    segments.push(t[i + 1].name().to_string());
                    i += 2;
                }
                if segments.len() > 1 {
                    let scope = scope(&inline);
                    parsed.paths.push(PathRef {
                        scope,
                        segments,
                        line,
                    });
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    parsed
}

/// One `use` tree from `i`, pushing the full path of every leaf (`*` and `self` kept as segments).
fn parse_use_tree(
    t: &[Token],
    i: &mut usize,
    prefix: &mut Vec<String>,
    leaves: &mut Vec<(Vec<String>, usize)>,
) {
    let outer = prefix.len();
    if text(t, *i) == "::" {
        prefix.push("::".to_string()); // `use ::other_crate::…`: never resolves
        *i += 1;
    }
    while let Some(token) = t.get(*i) {
        if token.text == "{" {
            *i += 1;
            while *i < t.len() && !matches!(text(t, *i), "}" | ";") {
                let before = *i;
                parse_use_tree(t, i, prefix, leaves);
                if text(t, *i) == "," || *i == before {
                    *i += 1;
                }
            }
            if text(t, *i) == "}" {
                *i += 1;
            }
            break;
        }
        if token.text == "*" {
            prefix.push("*".to_string());
            leaves.push((prefix.clone(), token.line));
            *i += 1;
            break;
        }
        if !token.is_ident() {
            break;
        }
        prefix.push(token.name().to_string());
        *i += 1;
        if text(t, *i) == "::" {
            *i += 1;
            continue;
        }
        if text(t, *i) == "as" {
            *i += 2;
        }
        leaves.push((prefix.clone(), token.line));
        break;
    }
    prefix.truncate(outer);
}

/// The module (its index in `modules`) that `path`, written in the file of `module` that declares
/// `children`, lands in; `None` for paths into other crates, locals, types and the like.
pub fn resolve(
    module: &[String],
    path: &PathRef,
    children: &BTreeSet<(ModPath, String)>,
    modules: &BTreeMap<ModPath, usize>,
) -> Option<usize> {
    let absolute = absolute(module, path, children)?;
    // The longest prefix that is a module.
    (0..=absolute.len())
        .rev()
        .find_map(|len| modules.get(&absolute[..len]).copied())
}

/// The path from the crate root that `path`, written in `module`, names.
fn absolute(
    module: &[String],
    path: &PathRef,
    children: &BTreeSet<(ModPath, String)>,
) -> Option<ModPath> {
    let segments = path.segments.as_slice();
    if segments.len() < 2 {
        return None;
    }
    let here: ModPath = module.iter().chain(&path.scope).cloned().collect();
    let (mut base, rest) = match segments[0].as_str() {
        "crate" => (Vec::new(), &segments[1..]),
        "self" | "super" => {
            let mut base = here;
            let mut k = 0;
            while let Some(segment @ ("self" | "super")) = segments.get(k).map(String::as_str) {
                if segment == "super" {
                    base.pop()?;
                }
                k += 1;
            }
            (base, &segments[k..])
        }
        first if children.contains(&(path.scope.clone(), first.to_string())) => (here, segments),
        _ => return None,
    };
    // `use x::{self}` names `x`.
    base.extend(rest.iter().filter(|segment| *segment != "self").cloned());
    Some(base)
}

// ---------------------------------------------------------------------------------------------
// Tests, on small inline sources.

/// The modules `source`, written as `module`, imports (sorted), given the modules that exist.
fn imports(source: &str, module: &str, modules: &[&str]) -> Vec<String> {
    let path = |name: &str| -> ModPath {
        match name {
            "crate" => Vec::new(),
            _ => name.split("::").map(str::to_string).collect(),
        }
    };
    let index: BTreeMap<ModPath, usize> = modules
        .iter()
        .enumerate()
        .map(|(ix, name)| (path(name), ix))
        .collect();
    let module = path(module);
    let parsed = parse(source);
    let found: BTreeSet<String> = parsed
        .paths
        .iter()
        .filter_map(|p| resolve(&module, p, &parsed.children, &index))
        .filter(|&ix| ix != index[&module])
        .map(|ix| modules[ix].to_string())
        .collect();
    found.into_iter().collect()
}

#[test]
fn use_trees_with_braces_yield_an_edge_per_leaf() {
    let source = "use crate::{a, b::B, c::{d::D, self}, e::{}};\nuse crate::f::*;\n";
    let modules = ["crate", "a", "b", "c", "c::d", "e", "f", "x"];
    assert_eq!(imports(source, "x", &modules), ["a", "b", "c", "c::d", "f"]);
    let parsed = parse("pub(crate) use crate::{\n    a,\n    b::{C, D as E},\n};\n");
    let lines: Vec<(String, usize)> = parsed
        .paths
        .iter()
        .map(|p| (p.segments.join("::"), p.line))
        .collect();
    let expected = [("crate::a", 2), ("crate::b::C", 3), ("crate::b::D", 3)];
    let expected: Vec<(String, usize)> = expected
        .iter()
        .map(|(path, line)| (path.to_string(), *line))
        .collect();
    assert_eq!(lines, expected);
}

#[test]
fn crate_paths_land_in_the_longest_module_prefix() {
    let source = "fn f() -> crate::x::y::Z { crate::x::Other::new(); crate::Root::default() }";
    let modules = ["crate", "x", "x::y", "w"];
    assert_eq!(imports(source, "w", &modules), ["crate", "x", "x::y"]);
    // Other crates, locals and types are not modules of this one.
    let source = "use std::sync::Arc;\nuse ::x::Y;\nfn f(x: X) { deskbroker_shared::x::f(); x::g(); Self::h(); self.y(); }";
    assert_eq!(imports(source, "w", &modules), Vec::<String>::new());
}

#[test]
fn super_and_self_are_relative_to_the_file() {
    // foo/mod.rs: `self` is `foo`, `super` is the root.
    let modules = ["crate", "bar", "foo", "foo::baz", "foo::qux"];
    let source = "use super::bar::X;\nuse self::baz::Y;\nuse super::Top;\n";
    assert_eq!(
        imports(source, "foo", &modules),
        ["bar", "crate", "foo::baz"]
    );
    // foo/qux.rs
    let source = "use super::baz::Z;\nuse super::super::bar;\nuse super::*;\n";
    assert_eq!(
        imports(source, "foo::qux", &modules),
        ["bar", "foo", "foo::baz"]
    );
    // Inside an inline module, `super` is the file first.
    let source = "mod inner {\n    use super::super::bar::X;\n    use super::Here;\n}\n";
    assert_eq!(imports(source, "foo", &modules), ["bar"]);
    // Visibility is not an import.
    let source = "pub(super) fn f() {}\npub(in crate::bar) fn g() {}\npub(crate) struct S;";
    assert_eq!(imports(source, "foo::qux", &modules), Vec::<String>::new());
}

#[test]
fn paths_through_declared_children_are_edges_and_declarations_are_not() {
    let modules = ["crate", "tunnel", "quiet", "other"];
    let source = "mod tunnel;\npub mod quiet;\npub use tunnel::{HttpTunnel, Other};\n\
                  fn f() { tunnel::open(); other::g(); let tunnel = 1; }\n";
    assert_eq!(imports(source, "crate", &modules), ["tunnel"]);
    let parsed = parse(source);
    let children: Vec<&str> = parsed.children.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(children, ["quiet", "tunnel"]);
    // `tunnel` is the root's child, not `quiet`'s.
    assert_eq!(
        imports("fn f() { tunnel::open() }", "quiet", &modules),
        Vec::<String>::new()
    );
    // A `#[cfg(test)]` child is a test child, of the inline module it is declared in.
    let parsed = parse("#[cfg(test)]\nmod more;\nmod inner {\n    #[cfg(test)]\n    mod t;\n}\n");
    let inner = vec!["inner".to_string()];
    let expected = [
        (Vec::new(), "more".to_string()),
        (inner.clone(), "t".into()),
    ];
    assert_eq!(parsed.test_children, expected);
    assert_eq!(
        parsed.children,
        BTreeSet::from([(Vec::new(), "inner".into())])
    );
}

//! The tokens of a Rust file's non-test code: identifiers, numbers, lifetimes, `::` and single
//! punctuation, each with its line. Comments, string, byte-string, raw-string and char literals
//! are dropped, so nothing inside them reads as a path; so is every `#[cfg(test)]` item and the
//! rest of any block that says `#![cfg(test)]`. What the tokens mean (modules, paths, `use`
//! trees) is the parser's business, not this module's.

#[derive(Clone, Debug)]
pub struct Token {
    pub text: String,
    pub line: usize,
}

impl Token {
    pub fn is_ident(&self) -> bool {
        self.text.starts_with(is_ident_start)
    }

    /// The identifier without the `r#` of a raw identifier.
    pub fn name(&self) -> &str {
        self.text.strip_prefix("r#").unwrap_or(&self.text)
    }
}

/// What is left of `#[cfg(test)] mod name;`: this token, then `name`. The parser needs it to know
/// that the file `name` is test code. Never the text of a token that is in the source.
pub const TEST_MOD: &str = "#[cfg(test)] mod";

/// The text of `t[i]`, or `""` past the end.
pub fn text(t: &[Token], i: usize) -> &str {
    t.get(i).map_or("", |token| token.text.as_str())
}

/// Whether the tokens from `i` are `pattern`.
pub fn starts_with(t: &[Token], i: usize, pattern: &[&str]) -> bool {
    pattern
        .iter()
        .enumerate()
        .all(|(k, expected)| text(t, i + k) == *expected)
}

/// The tokens of `source` outside test code.
pub fn tokenize(source: &str) -> Vec<Token> {
    without_test_code(&lex(source))
}

// ---------------------------------------------------------------------------------------------
// Lexing: characters to tokens.

fn is_ident_start(c: char) -> bool {
    c.is_alphabetic() || c == '_'
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn char_at(chars: &[char], i: usize) -> char {
    chars.get(i).copied().unwrap_or('\0')
}

/// The index just after the identifier characters from `i`.
fn word_end(chars: &[char], mut i: usize) -> usize {
    while is_ident_char(char_at(chars, i)) {
        i += 1;
    }
    i
}

fn lex(source: &str) -> Vec<Token> {
    let chars: Vec<char> = source.chars().collect();
    let at = |i: usize| char_at(&chars, i);
    let mut tokens = Vec::new();
    let mut line = 1;
    let mut push = |text: String, line: usize| tokens.push(Token { text, line });
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '/' && at(i + 1) == '/' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && at(i + 1) == '*' {
            i = skip_block_comment(&chars, i, &mut line);
        } else if c == '"' {
            i = skip_quoted(&chars, i + 1, '"', &mut line);
        } else if c == '\'' {
            if at(i + 1) == '\\' {
                i = skip_quoted(&chars, i + 1, '\'', &mut line);
            } else if at(i + 2) == '\'' {
                i += 3; // 'x', also '"'
            } else {
                // A lifetime or a label: kept as one token that is not an identifier.
                let start = i;
                i = word_end(&chars, i + 1);
                push(chars[start..i].iter().collect(), line);
            }
        } else if is_ident_start(c) {
            let start = i;
            i = word_end(&chars, i);
            let word: String = chars[start..i].iter().collect();
            let raw_string = match word.as_str() {
                "r" | "br" | "cr" => skip_raw_string(&chars, i, &mut line),
                _ => None,
            };
            if let Some(end) = raw_string {
                i = end;
            } else if matches!(word.as_str(), "b" | "c") && at(i) == '"' {
                i = skip_quoted(&chars, i + 1, '"', &mut line);
            } else if word == "b" && at(i) == '\'' {
                i = skip_quoted(&chars, i + 1, '\'', &mut line);
            } else if word == "r" && at(i) == '#' && is_ident_start(at(i + 1)) {
                let start = i + 1;
                i = word_end(&chars, start);
                let name: String = chars[start..i].iter().collect();
                push(format!("r#{name}"), line);
            } else {
                push(word, line);
            }
        } else if c.is_ascii_digit() {
            let start = i;
            i = word_end(&chars, i);
            push(chars[start..i].iter().collect(), line);
        } else if c == ':' && at(i + 1) == ':' {
            push("::".to_string(), line);
            i += 2;
        } else {
            push(c.to_string(), line);
            i += 1;
        }
    }
    tokens
}

/// From `/*` to its matching `*/`; block comments nest.
fn skip_block_comment(chars: &[char], mut i: usize, line: &mut usize) -> usize {
    let mut depth = 0;
    while i < chars.len() {
        if chars[i] == '/' && char_at(chars, i + 1) == '*' {
            depth += 1;
            i += 2;
        } else if chars[i] == '*' && char_at(chars, i + 1) == '/' {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            if chars[i] == '\n' {
                *line += 1;
            }
            i += 1;
        }
    }
    i
}

/// From just after the opening quote to just after the closing one, over `\` escapes.
fn skip_quoted(chars: &[char], mut i: usize, quote: char, line: &mut usize) -> usize {
    while i < chars.len() {
        match chars[i] {
            '\\' => {
                if char_at(chars, i + 1) == '\n' {
                    *line += 1;
                }
                i += 2;
            }
            '\n' => {
                *line += 1;
                i += 1;
            }
            c if c == quote => return i + 1,
            _ => i += 1,
        }
    }
    i
}

/// `i` is just after an `r` (or `br`, `cr`): `#…#"…"#…#` or `"…"`. `None` if no string starts here.
fn skip_raw_string(chars: &[char], i: usize, line: &mut usize) -> Option<usize> {
    let mut j = i;
    while char_at(chars, j) == '#' {
        j += 1;
    }
    if char_at(chars, j) != '"' {
        return None;
    }
    let hashes = j - i;
    j += 1;
    while j < chars.len() {
        if chars[j] == '\n' {
            *line += 1;
        }
        if chars[j] == '"' && (1..=hashes).all(|k| char_at(chars, j + k) == '#') {
            return Some(j + 1 + hashes);
        }
        j += 1;
    }
    Some(j)
}

// ---------------------------------------------------------------------------------------------
// Test code: `#[cfg(test)]` items and `#![cfg(test)]` blocks, dropped from the tokens.

const CFG_TEST: [&str; 7] = ["#", "[", "cfg", "(", "test", ")", "]"];
const INNER_CFG_TEST: [&str; 8] = ["#", "!", "[", "cfg", "(", "test", ")", "]"];

fn without_test_code(t: &[Token]) -> Vec<Token> {
    let mut kept = Vec::with_capacity(t.len());
    let mut i = 0;
    while i < t.len() {
        if starts_with(t, i, &CFG_TEST) {
            let (end, test_mod) = skip_cfg_test_item(t, i + CFG_TEST.len());
            if let Some(name) = test_mod {
                let line = t[i].line;
                kept.push(Token {
                    text: TEST_MOD.to_string(),
                    line,
                });
                kept.push(name.clone());
            }
            i = end;
        } else if starts_with(t, i, &INNER_CFG_TEST) {
            i = skip_item(t, i + INNER_CFG_TEST.len(), ItemEnd::EnclosingBlock);
        } else {
            kept.push(t[i].clone());
            i += 1;
        }
    }
    kept
}

/// Where a skipped item ends.
#[derive(Clone, Copy, PartialEq)]
enum ItemEnd {
    /// At a `;` outside brackets.
    Semicolon,
    /// At a `;` or the `}` of a block outside brackets.
    Block,
    /// At a `;` or `,` outside brackets: a field, a match arm, a statement.
    Comma,
    /// Only at the closer of the block it is in.
    EnclosingBlock,
}

/// From `i`, past the end of the item; never past a closer of the block around it.
fn skip_item(t: &[Token], mut i: usize, end: ItemEnd) -> usize {
    let mut depth = 0;
    while i < t.len() {
        match text(t, i) {
            "(" | "[" | "{" => depth += 1,
            closer @ (")" | "]" | "}") => {
                if depth == 0 {
                    return i;
                }
                depth -= 1;
                if depth == 0 && closer == "}" && end == ItemEnd::Block {
                    return i + 1;
                }
            }
            ";" if depth == 0 && end != ItemEnd::EnclosingBlock => return i + 1,
            "," if depth == 0 && end == ItemEnd::Comma => return i + 1,
            _ => {}
        }
        i += 1;
    }
    i
}

/// `t[i]` opens a bracket; the index after its matching closer.
pub fn skip_balanced(t: &[Token], i: usize) -> usize {
    (skip_item(t, i + 1, ItemEnd::EnclosingBlock) + 1).min(t.len())
}

/// `i` is just after `#[cfg(test)]`: skips the attributes and the item that follow. Returns where
/// scanning resumes, and the name of a `mod name;` skipped this way.
fn skip_cfg_test_item(t: &[Token], mut i: usize) -> (usize, Option<&Token>) {
    while starts_with(t, i, &["#", "["]) {
        i = skip_balanced(t, i + 1);
    }
    let mut j = i;
    if text(t, j) == "pub" {
        j += 1;
        if text(t, j) == "(" {
            j = skip_balanced(t, j);
        }
    }
    let head: Vec<&str> = t
        .get(j..)
        .unwrap_or_default()
        .iter()
        .take_while(|token| token.is_ident())
        .take(4)
        .map(|token| token.text.as_str())
        .collect();
    let test_mod = (head.first() == Some(&"mod") && text(t, j + 2) == ";").then(|| &t[j + 1]);
    let end = match head.first().copied() {
        Some("use" | "const" | "static" | "let" | "type") if !head.contains(&"fn") => {
            ItemEnd::Semicolon
        }
        Some(
            "fn" | "mod" | "impl" | "struct" | "enum" | "trait" | "union" | "extern" | "unsafe"
            | "async" | "const" | "macro_rules" | "default" | "auto",
        ) => ItemEnd::Block,
        _ if text(t, j) == "{" => ItemEnd::Block,
        _ => ItemEnd::Comma,
    };
    (skip_item(t, i, end), test_mod)
}

// ---------------------------------------------------------------------------------------------
// Tests, on small inline sources.

/// Every `crate::name` left in `source`'s tokens, as `name` and its line.
fn crate_paths(source: &str) -> Vec<(String, usize)> {
    let t = tokenize(source);
    (0..t.len())
        .filter(|&i| starts_with(&t, i, &["crate", "::"]))
        .map(|i| (text(&t, i + 2).to_string(), t[i].line))
        .collect()
}

#[test]
fn comments_strings_and_chars_hide_nothing_real() {
    let source = r####"
        //! Uses crate::x::X, see `crate::y`.
        /* crate::z /* nested crate::w */ crate::v */
        fn f<'a>(s: &'a str) -> (&'static str, char, char, char, u8) {
            let _ = "crate::x::Y \" crate::y::Z";
            let _ = r#"crate::z "quoted" crate::w"#;
            let _ = br##"crate::v"#"##;
            let _ = b"crate::x";
            ('"', '\'', 'x', '{', b'"');
            crate::real::f();
            'outer: loop { break 'outer; }
            crate::later::g()
        }
    "####;
    let names: Vec<String> = crate_paths(source).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["real", "later"]);
    // No brace inside a char literal is left to throw off the nesting.
    let tokens = tokenize(source);
    let count = |brace: &str| tokens.iter().filter(|t| t.text == brace).count();
    assert_eq!((count("{"), count("}")), (2, 2));
    // Line numbers survive multi-line literals and comments.
    let source = "/*\n\n*/ let s = \"a\nb\"; let r = r#\"\n\"#;\ncrate::x::f();\n";
    assert_eq!(crate_paths(source), [("x".to_string(), 6)]);
}

#[test]
fn cfg_test_items_are_skipped_even_in_the_middle() {
    let source = "use crate::a::A;\n\
                  #[cfg(test)]\n#[allow(dead_code)]\nmod tests {\n    use crate::b::B;\n    fn t() { crate::c::f() }\n}\n\
                  #[cfg(test)]\nuse crate::e::{E, F};\n\
                  #[cfg(test)]\nmod more;\n\
                  struct S { #[cfg(test)] probe: crate::f::Probe, real: u8 }\n\
                  fn g() { crate::d::g(); }\n";
    let kept = |name: &str, line: usize| (name.to_string(), line);
    assert_eq!(crate_paths(source), [kept("a", 1), kept("d", 13)]);
    // `#[cfg(test)] mod more;` leaves its name, marked.
    let tokens = tokenize(source);
    let marked: Vec<&str> = (0..tokens.len())
        .filter(|&i| text(&tokens, i) == TEST_MOD)
        .map(|i| text(&tokens, i + 1))
        .collect();
    assert_eq!(marked, ["more"]);
    assert!(
        !tokens
            .iter()
            .any(|t| t.text == "probe" || t.text == "tests")
    );
    // `#![cfg(test)]` makes the rest of the file, or of the block it is in, test code.
    assert!(tokenize("#![cfg(test)]\nuse crate::a::A;\n").is_empty());
    let source = "mod m {\n#![cfg(test)]\nuse crate::a::A;\n}\nuse crate::b::B;\n";
    assert_eq!(crate_paths(source), [kept("b", 5)]);
}

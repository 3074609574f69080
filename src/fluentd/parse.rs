//! A parser for fluentd's configuration syntax, as EMR on EKS uses it.
//!
//! Directives are `<name [arg]> ... </name>` sections holding `key value` parameters and nested
//! sections. Values are unquoted (the rest of the line, up to a ` #` comment), single-quoted
//! (literal) or double-quoted (escapes, may span lines, and Ruby-style `#{ENV['NAME']}`
//! interpolation, the only Ruby expression accepted). `@include PATH` includes another file,
//! relative to the including one. Every error names the file, line and column.

use std::path::{Path, PathBuf};

/// Where something is in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pos {
    /// The file (an `@include` can make it another than the one given).
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
}

impl std::fmt::Display for Pos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Line 0: the file as a whole (it cannot be read), no position inside it.
        if self.line == 0 {
            return write!(f, "{}", self.file.display());
        }
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.col)
    }
}

/// A parse error, with its position.
#[derive(Debug, thiserror::Error)]
#[error("{pos}: {message}")]
pub struct ParseError {
    /// Where.
    pub pos: Pos,
    /// What.
    pub message: String,
}

/// One `key value` parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// The key (`@type`, `path`, ...).
    pub key: String,
    /// The value, unquoted and interpolated.
    pub value: String,
    /// Where the key is.
    pub pos: Pos,
}

/// A `<name arg>` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    /// `source`, `match`, `buffer`, ...
    pub name: String,
    /// The text after the name (`@label` of `<label @x>`, a pattern, chunk keys, a worker id).
    pub arg: String,
    /// Its parameters, in order.
    pub params: Vec<Param>,
    /// Nested sections, in order.
    pub children: Vec<Element>,
    /// Where it starts.
    pub pos: Pos,
}

impl Element {
    /// The value of a parameter.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .rev()
            .find(|p| p.key == key)
            .map(|p| p.value.as_str())
    }

    /// The parameter itself (for its position).
    pub fn param(&self, key: &str) -> Option<&Param> {
        self.params.iter().rev().find(|p| p.key == key)
    }

    /// Nested sections with this name.
    pub fn sections<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }
}

/// Where `#{ENV['NAME']}` gets its values (the process environment, or a map in tests).
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Variables that may be missing without an error (they become empty, with a warning): the
/// sidecar's environment often lacks the application id, and the event-log source then finds it
/// in the directory.
const MAY_BE_MISSING: &[&str] = &[crate::config::contract::SPARK_APPLICATION_ID];

/// Parses a configuration file (and what it includes) into a root element named `ROOT`.
pub fn parse_file(path: &Path, env: EnvLookup) -> Result<Element, ParseError> {
    let text = std::fs::read_to_string(path).map_err(|e| ParseError {
        pos: Pos {
            file: path.to_path_buf(),
            line: 0,
            col: 0,
        },
        message: format!("cannot read: {e}"),
    })?;
    parse_str(&text, path, env, 0)
}

/// Parses configuration text; `file` names it in errors and anchors `@include`.
pub fn parse_str(text: &str, file: &Path, env: EnvLookup, depth: usize) -> Result<Element, ParseError> {
    let mut p = Parser {
        chars: text.chars().collect(),
        i: 0,
        line: 1,
        col: 1,
        file: file.to_path_buf(),
        env,
        depth,
    };
    let pos = p.pos();
    let mut root = Element {
        name: "ROOT".into(),
        arg: String::new(),
        params: Vec::new(),
        children: Vec::new(),
        pos,
    };
    p.body(&mut root, None)?;
    Ok(root)
}

struct Parser<'a> {
    chars: Vec<char>,
    i: usize,
    line: usize,
    col: usize,
    file: PathBuf,
    env: EnvLookup<'a>,
    depth: usize,
}

impl Parser<'_> {
    fn pos(&self) -> Pos {
        Pos {
            file: self.file.clone(),
            line: self.line,
            col: self.col,
        }
    }

    fn err<T>(&self, pos: Pos, message: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError {
            pos,
            message: message.into(),
        })
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.i).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.chars.get(self.i).copied()?;
        self.i += 1;
        if c == '\n' {
            self.line += 1;
            self.col = 1;
        } else {
            self.col += 1;
        }
        Some(c)
    }

    fn skip_blank(&mut self) {
        while let Some(c) = self.peek() {
            if c == ' ' || c == '\t' || c == '\r' {
                self.bump();
            } else {
                break;
            }
        }
    }

    fn skip_to_eol(&mut self) {
        while let Some(c) = self.peek() {
            if c == '\n' {
                break;
            }
            self.bump();
        }
    }

    /// Reads the contents of a section (or the file) until `</end>` (or the end of the text).
    fn body(&mut self, el: &mut Element, end: Option<&str>) -> Result<(), ParseError> {
        loop {
            // Whitespace, empty lines, comments.
            loop {
                self.skip_blank();
                match self.peek() {
                    Some('\n') => {
                        self.bump();
                    }
                    Some('#') => self.skip_to_eol(),
                    _ => break,
                }
            }
            let pos = self.pos();
            let Some(c) = self.peek() else {
                return match end {
                    Some(name) => self.err(el.pos.clone(), format!("<{name}> is never closed (expected </{name}>)")),
                    None => Ok(()),
                };
            };
            if c == '<' {
                self.bump();
                if self.peek() == Some('/') {
                    self.bump();
                    let name: String = self.take_while(|c| c != '>' && c != '\n').trim().to_string();
                    if self.bump() != Some('>') {
                        return self.err(pos, "unterminated closing tag (missing '>')");
                    }
                    self.rest_of_line_is_empty()?;
                    return match end {
                        Some(open) if open == name => Ok(()),
                        Some(open) => self.err(pos, format!("</{name}> closes <{open}>")),
                        None => self.err(pos, format!("</{name}> without an opening <{name}>")),
                    };
                }
                let head: String = self.take_while(|c| c != '>' && c != '\n');
                if self.bump() != Some('>') {
                    return self.err(pos, "unterminated section tag (missing '>')");
                }
                self.rest_of_line_is_empty()?;
                let head = head.trim();
                let (name, arg) = head.split_once(char::is_whitespace).unwrap_or((head, ""));
                if name.is_empty() {
                    return self.err(pos, "empty section name");
                }
                let mut child = Element {
                    name: name.to_string(),
                    arg: arg.trim().to_string(),
                    params: Vec::new(),
                    children: Vec::new(),
                    pos,
                };
                self.body(&mut child, Some(name))?;
                el.children.push(child);
                continue;
            }
            // key value
            let key: String = self.take_while(|c| !c.is_whitespace());
            self.skip_blank();
            let value = self.value()?;
            if key == "@include" {
                self.include(el, &value, pos)?;
                continue;
            }
            el.params.push(Param { key, value, pos });
        }
    }

    fn include(&mut self, el: &mut Element, target: &str, pos: Pos) -> Result<(), ParseError> {
        if self.depth > 16 {
            return self.err(pos, "@include nested too deeply (a loop?)");
        }
        let base = self.file.parent().unwrap_or(Path::new("."));
        let pattern = base.join(target);
        let pattern = pattern.to_string_lossy();
        let mut files: Vec<PathBuf> = match glob::glob(&pattern) {
            Ok(paths) => paths.flatten().collect(),
            Err(e) => return self.err(pos, format!("bad @include pattern {target:?}: {e}")),
        };
        files.sort();
        if files.is_empty() {
            return self.err(
                pos,
                format!("@include {target:?}: no such file (relative to {})", base.display()),
            );
        }
        for f in files {
            let text = std::fs::read_to_string(&f).map_err(|e| ParseError {
                pos: pos.clone(),
                message: format!("@include {}: {e}", f.display()),
            })?;
            let inc = parse_str(&text, &f, self.env, self.depth + 1)?;
            el.params.extend(inc.params);
            el.children.extend(inc.children);
        }
        Ok(())
    }

    fn rest_of_line_is_empty(&mut self) -> Result<(), ParseError> {
        self.skip_blank();
        match self.peek() {
            None | Some('\n') => Ok(()),
            Some('#') => {
                self.skip_to_eol();
                Ok(())
            }
            Some(c) => self.err(self.pos(), format!("unexpected {c:?} after a section tag")),
        }
    }

    fn take_while(&mut self, f: impl Fn(char) -> bool) -> String {
        let mut s = String::new();
        while let Some(c) = self.peek() {
            if !f(c) {
                break;
            }
            s.push(c);
            self.bump();
        }
        s
    }

    fn value(&mut self) -> Result<String, ParseError> {
        match self.peek() {
            Some('"') => {
                let v = self.double_quoted()?;
                self.rest_of_line_is_empty()?;
                Ok(v)
            }
            Some('\'') => {
                let start = self.pos();
                self.bump();
                let mut s = String::new();
                loop {
                    match self.bump() {
                        None => return self.err(start, "unterminated single-quoted string"),
                        Some('\\') if matches!(self.peek(), Some('\'') | Some('\\')) => {
                            s.push(self.bump().expect("peeked"))
                        }
                        Some('\'') => break,
                        Some(c) => s.push(c),
                    }
                }
                self.rest_of_line_is_empty()?;
                Ok(s)
            }
            _ => {
                // Unquoted: to the end of the line, a comment starting at " #".
                let mut s = String::new();
                while let Some(c) = self.peek() {
                    if c == '\n' || (c == '#' && s.ends_with([' ', '\t'])) {
                        break;
                    }
                    s.push(c);
                    self.bump();
                }
                self.skip_to_eol();
                Ok(s.trim().to_string())
            }
        }
    }

    fn double_quoted(&mut self) -> Result<String, ParseError> {
        let start = self.pos();
        self.bump();
        let mut s = String::new();
        loop {
            let here = self.pos();
            match self.bump() {
                None => return self.err(start, "unterminated double-quoted string"),
                Some('"') => return Ok(s),
                Some('\\') => match self.bump() {
                    Some('n') => s.push('\n'),
                    Some('t') => s.push('\t'),
                    Some('r') => s.push('\r'),
                    Some('\n') => {}
                    Some(c) => s.push(c),
                    None => return self.err(start, "unterminated double-quoted string"),
                },
                Some('#') if self.peek() == Some('{') => {
                    self.bump();
                    let expr = self.take_while(|c| c != '}' && c != '\n');
                    if self.bump() != Some('}') {
                        return self.err(here, "unterminated #{...}");
                    }
                    s.push_str(&self.interpolate(expr.trim(), here)?);
                }
                Some(c) => s.push(c),
            }
        }
    }

    /// `ENV['NAME']` / `ENV["NAME"]` / `ENV.fetch('NAME')`; anything else is refused.
    fn interpolate(&self, expr: &str, pos: Pos) -> Result<String, ParseError> {
        let name = expr
            .strip_prefix("ENV[")
            .and_then(|r| r.strip_suffix(']'))
            .or_else(|| expr.strip_prefix("ENV.fetch(").and_then(|r| r.strip_suffix(')')))
            .map(|n| n.trim().trim_matches(|c| c == '\'' || c == '"'));
        let Some(name) = name.filter(|n| !n.is_empty()) else {
            return self.err(
                pos,
                format!("unsupported Ruby expression #{{{expr}}}: only #{{ENV['NAME']}} is evaluated"),
            );
        };
        match (self.env)(name) {
            Some(v) => Ok(v),
            None if MAY_BE_MISSING.contains(&name) => {
                tracing::warn!(%pos, variable = name, "environment variable is not set; using an empty value");
                Ok(String::new())
            }
            None => self.err(
                pos,
                format!("environment variable {name} is not set (used as #{{{expr}}})"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Element, ParseError> {
        let env = |n: &str| match n {
            "DIR" => Some("/var/log/spark/apps".to_string()),
            _ => None,
        };
        parse_str(text, Path::new("fluent.conf"), &env, 0)
    }

    #[test]
    fn sections_params_quotes_and_env() {
        let root = parse(
            r##"
# a comment
<system>
  workers 1
</system>
<worker 0>
  <source>
    @type tail   # trailing comment
    path "#{ENV['DIR']}/a.inprogress,#{ENV["DIR"]}/b"
    tag 'single #{x}'
    multi "line one
line two"
    <parse>
      @type none
    </parse>
  </source>
</worker>
"##,
        )
        .unwrap();
        let w = &root.children[1];
        assert_eq!((w.name.as_str(), w.arg.as_str()), ("worker", "0"));
        let s = &w.children[0];
        assert_eq!(s.get("@type"), Some("tail"));
        assert_eq!(
            s.get("path"),
            Some("/var/log/spark/apps/a.inprogress,/var/log/spark/apps/b")
        );
        assert_eq!(s.get("tag"), Some("single #{x}"));
        assert_eq!(s.get("multi"), Some("line one\nline two"));
        assert_eq!(s.sections("parse").next().unwrap().get("@type"), Some("none"));
        assert_eq!(s.param("path").unwrap().pos.line, 9);
    }

    #[test]
    fn errors_name_line_and_column() {
        let e = parse("<source>\n  @type tail\n").unwrap_err();
        assert_eq!((e.pos.line, e.pos.col), (1, 1));
        assert!(e.message.contains("never closed"), "{e}");
        let e = parse("<source>\n</match>\n").unwrap_err();
        assert!(
            e.to_string().starts_with("fluent.conf:2:1:") && e.message.contains("closes <source>"),
            "{e}"
        );
        let e = parse("<match x>\n  path \"#{ENV['NOPE']}\"\n</match>\n").unwrap_err();
        assert_eq!((e.pos.line, e.pos.col), (2, 9));
        assert!(e.message.contains("NOPE"), "{e}");
        let e = parse("x \"#{`rm -rf /`}\"\n").unwrap_err();
        assert!(e.message.contains("unsupported Ruby"), "{e}");
        let e = parse("x \"open\n").unwrap_err();
        assert!(e.message.contains("unterminated"), "{e}");
    }

    #[test]
    fn missing_application_id_is_empty() {
        let root = parse("path \"a/#{ENV['SPARK_APPLICATION_ID']}.inprogress\"\n").unwrap();
        assert_eq!(root.get("path"), Some("a/.inprogress"));
    }

    #[test]
    fn include_is_relative_to_the_including_file() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("conf.d")).unwrap();
        std::fs::write(
            d.path().join("conf.d/out.conf"),
            "<match **>\n  @type stdout\n</match>\n",
        )
        .unwrap();
        std::fs::write(d.path().join("fluent.conf"), "@include conf.d/*.conf\n").unwrap();
        let env = |_: &str| None;
        let root = parse_file(&d.path().join("fluent.conf"), &env).unwrap();
        assert_eq!(root.children[0].name, "match");
        let e = parse_str("@include nope.conf\n", &d.path().join("fluent.conf"), &env, 0).unwrap_err();
        assert!(e.message.contains("nope.conf"), "{e}");
    }
}

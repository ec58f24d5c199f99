//! A hand-written parser for the OData subset pinejs speaks, over the plain text
//! [`super::pinejs_url`] makes of the raw URL: the resource path (`device(12)`,
//! `device(uuid='x')`, `device/$count`), the query options (`$select`, `$filter`, `$expand`
//! with nested options, `$orderby`, `$top`, `$skip`) and the `$filter` expression grammar (a
//! tokenizer plus a recursive-descent parser).
//!
//! Everything here works on names only; [`super::query`] binds the names to the schema. Every
//! failure is an [`ODataError`]: a syntax error here is pinejs's 400 "Malformed url", a name
//! the schema does not know (from [`super::query`]) a 400 with the reason.

use std::fmt;

/// The deepest nesting (parentheses, `not`, lambdas, function calls, nested `$expand`) accepted.
/// Deeper input is refused instead of risking the stack.
pub const MAX_DEPTH: usize = 64;

/// Why a URL could not be understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ODataError {
    UnexpectedChar {
        pos: usize,
        ch: char,
    },
    UnterminatedString {
        pos: usize,
    },
    BadNumber {
        pos: usize,
        text: String,
    },
    UnexpectedEnd {
        expected: &'static str,
    },
    Unexpected {
        pos: usize,
        found: String,
        expected: &'static str,
    },
    TooDeep,
    Unbalanced(String),
    UnknownOption(String),
    DuplicateOption(String),
    BadOptionValue {
        option: String,
        value: String,
    },
    BadResourcePath(String),
    UnknownField {
        resource: &'static str,
        field: String,
    },
    NotANavigation {
        resource: &'static str,
        name: String,
    },
    TypeMismatch(String),
    NotBoolean(String),
    UnknownFunction(String),
    BadArguments(String),
}

impl fmt::Display for ODataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ODataError::*;
        match self {
            UnexpectedChar { pos, ch } => write!(f, "Unexpected character {ch:?} at {pos}"),
            UnterminatedString { pos } => {
                write!(f, "Unterminated string literal starting at {pos}")
            }
            BadNumber { pos, text } => write!(f, "Invalid number {text:?} at {pos}"),
            UnexpectedEnd { expected } => write!(f, "Unexpected end of input, expected {expected}"),
            Unexpected {
                pos,
                found,
                expected,
            } => {
                write!(f, "Unexpected {found:?} at {pos}, expected {expected}")
            }
            TooDeep => write!(f, "Expression nested deeper than {MAX_DEPTH} levels"),
            Unbalanced(s) => write!(f, "Unbalanced parentheses or quotes in {s:?}"),
            UnknownOption(o) => write!(f, "Unknown query option {o:?}"),
            DuplicateOption(o) => write!(f, "Query option {o:?} given more than once"),
            BadOptionValue { option, value } => write!(f, "Invalid value {value:?} for {option}"),
            BadResourcePath(p) => write!(f, "Invalid resource path {p:?}"),
            UnknownField { resource, field } => {
                write!(
                    f,
                    "Unknown field or navigation {field:?} of resource {resource:?}"
                )
            }
            NotANavigation { resource, name } => {
                write!(f, "{name:?} is not a navigation of resource {resource:?}")
            }
            TypeMismatch(s) => write!(f, "Type mismatch: {s}"),
            NotBoolean(s) => write!(f, "Expected a boolean expression, got {s}"),
            UnknownFunction(s) => write!(f, "Unknown function {s:?}"),
            BadArguments(s) => write!(f, "Bad arguments for function {s:?}"),
        }
    }
}

impl std::error::Error for ODataError {}

// ---------------------------------------------------------------------------------------------
// Splitting
// ---------------------------------------------------------------------------------------------

/// Splits `s` on `sep` where it is outside parentheses and string literals.
pub fn split_top_level(s: &str, sep: char) -> Result<Vec<&str>, ODataError> {
    let mut parts = Vec::new();
    let mut depth: usize = 0;
    let mut in_string = false;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        if in_string {
            // A doubled quote inside a literal toggles twice, which is what we want.
            if c == '\'' {
                in_string = false;
            }
            continue;
        }
        match c {
            '\'' => in_string = true,
            '(' => depth += 1,
            ')' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| ODataError::Unbalanced(s.into()))?;
            }
            c if c == sep && depth == 0 => {
                parts.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    if in_string || depth != 0 {
        return Err(ODataError::Unbalanced(s.into()));
    }
    parts.push(&s[start..]);
    Ok(parts)
}

/// Splits `name(inner)` into `("name", Some("inner"))`; `name` alone into `("name", None)`.
/// The parenthesis must close at the very end.
fn split_call(s: &str) -> Result<(&str, Option<&str>), ODataError> {
    let Some(open) = s.find(['(', '\'']) else {
        return Ok((s, None));
    };
    if s.as_bytes()[open] != b'(' || !s.ends_with(')') {
        return Err(ODataError::BadOptionValue {
            option: "$expand".into(),
            value: s.into(),
        });
    }
    let inner = &s[open + 1..s.len() - 1];
    // `split_top_level` rejects an inner text whose parentheses do not balance, which also
    // catches `a(b)c(d)`.
    split_top_level(inner, ';')?;
    Ok((&s[..open], Some(inner)))
}

// ---------------------------------------------------------------------------------------------
// Tokenizer
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tok {
    LParen,
    RParen,
    Comma,
    Slash,
    Colon,
    Equals,
    Ident(String),
    Str(String),
    /// A typed literal such as `datetime'2024-01-01T00:00:00Z'`.
    TypedStr(String, String),
    Int(i64),
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::LParen => write!(f, "("),
            Tok::RParen => write!(f, ")"),
            Tok::Comma => write!(f, ","),
            Tok::Slash => write!(f, "/"),
            Tok::Colon => write!(f, ":"),
            Tok::Equals => write!(f, "="),
            Tok::Ident(s) => write!(f, "{s}"),
            Tok::Str(s) => write!(f, "'{}'", s.replace('\'', "''")),
            Tok::TypedStr(t, s) => write!(f, "{t}'{}'", s.replace('\'', "''")),
            Tok::Int(n) => write!(f, "{n}"),
        }
    }
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == '$' || c == '@'
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '$' || c == '@'
}

/// Splits decoded text into tokens, each with its byte offset.
pub fn tokenize(s: &str) -> Result<Vec<(usize, Tok)>, ODataError> {
    let mut toks = Vec::new();
    let mut chars = s.char_indices().peekable();
    while let Some(&(pos, c)) = chars.peek() {
        match c {
            ' ' | '\t' | '\r' | '\n' => {
                chars.next();
            }
            '(' | ')' | ',' | '/' | ':' | '=' => {
                chars.next();
                let t = match c {
                    '(' => Tok::LParen,
                    ')' => Tok::RParen,
                    ',' => Tok::Comma,
                    '/' => Tok::Slash,
                    ':' => Tok::Colon,
                    _ => Tok::Equals,
                };
                toks.push((pos, t));
            }
            '\'' => {
                chars.next();
                toks.push((pos, Tok::Str(read_string(&mut chars, pos)?)));
            }
            // `+` is a sign only when the URL spelled it `%2B` (a raw `+` is a space).
            c if c.is_ascii_digit() || c == '-' || c == '+' => {
                let mut text = String::new();
                while let Some(&(_, d)) = chars.peek() {
                    if d.is_ascii_alphanumeric() || matches!(d, '-' | '+' | '.') {
                        text.push(d);
                        chars.next();
                    } else {
                        break;
                    }
                }
                let n: i64 = text
                    .parse()
                    .map_err(|_| ODataError::BadNumber { pos, text })?;
                toks.push((pos, Tok::Int(n)));
            }
            c if is_ident_start(c) => {
                let mut ident = String::new();
                while let Some(&(_, d)) = chars.peek() {
                    if is_ident_char(d) {
                        ident.push(d);
                        chars.next();
                    } else {
                        break;
                    }
                }
                if let Some(&(qpos, '\'')) = chars.peek() {
                    chars.next();
                    let value = read_string(&mut chars, qpos)?;
                    toks.push((pos, Tok::TypedStr(ident, value)));
                } else {
                    toks.push((pos, Tok::Ident(ident)));
                }
            }
            ch => return Err(ODataError::UnexpectedChar { pos, ch }),
        }
    }
    Ok(toks)
}

/// Reads the rest of a string literal whose opening quote (at `start`) was consumed.
fn read_string(
    chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>,
    start: usize,
) -> Result<String, ODataError> {
    let mut value = String::new();
    loop {
        match chars.next() {
            None => return Err(ODataError::UnterminatedString { pos: start }),
            Some((_, '\'')) => {
                if let Some(&(_, '\'')) = chars.peek() {
                    chars.next();
                    value.push('\'');
                } else {
                    return Ok(value);
                }
            }
            Some((_, c)) => value.push(c),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// $filter AST and parser
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Null,
    Bool(bool),
    Int(i64),
    Str(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

impl CmpOp {
    fn from_ident(s: &str) -> Option<CmpOp> {
        Some(match s {
            "eq" => CmpOp::Eq,
            "ne" => CmpOp::Ne,
            "gt" => CmpOp::Gt,
            "ge" => CmpOp::Ge,
            "lt" => CmpOp::Lt,
            "le" => CmpOp::Le,
            _ => return None,
        })
    }
}

/// A boolean `$filter` expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// Two or more alternatives (n-ary, so a long chain does not nest deeply).
    Or(Vec<Expr>),
    /// Two or more conditions that must all hold.
    And(Vec<Expr>),
    Not(Box<Expr>),
    Cmp(CmpOp, Operand, Operand),
    In(Operand, Vec<Literal>),
    /// An operand used as a condition: a lambda, a boolean function, `true`/`false`.
    Bool(Operand),
}

/// A value inside a `$filter` expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Lit(Literal),
    /// `a/b/c` (the first segment may be a lambda variable).
    Path(Vec<String>),
    /// `a/b/any(x: ...)` or `a/b/all(x: ...)`; `body` is `None` for `any()`.
    Lambda {
        path: Vec<String>,
        all: bool,
        var: String,
        body: Option<Box<Expr>>,
    },
    Call(String, Vec<Operand>),
}

struct Parser {
    toks: Vec<(usize, Tok)>,
    pos: usize,
    depth: usize,
}

impl Parser {
    fn new(s: &str) -> Result<Parser, ODataError> {
        Ok(Parser {
            toks: tokenize(s)?,
            pos: 0,
            depth: 0,
        })
    }

    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|(_, t)| t)
    }

    fn peek_at(&self, n: usize) -> Option<&Tok> {
        self.toks.get(self.pos + n).map(|(_, t)| t)
    }

    fn peek_ident(&self) -> Option<&str> {
        match self.peek() {
            Some(Tok::Ident(s)) => Some(s),
            _ => None,
        }
    }

    fn next(&mut self) -> Option<(usize, Tok)> {
        let t = self.toks.get(self.pos).cloned();
        if t.is_some() {
            self.pos += 1;
        }
        t
    }

    fn unexpected(&self, expected: &'static str) -> ODataError {
        match self.toks.get(self.pos) {
            Some((pos, t)) => ODataError::Unexpected {
                pos: *pos,
                found: t.to_string(),
                expected,
            },
            None => ODataError::UnexpectedEnd { expected },
        }
    }

    fn expect(&mut self, tok: Tok, expected: &'static str) -> Result<(), ODataError> {
        if self.peek() == Some(&tok) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.unexpected(expected))
        }
    }

    fn expect_ident(&mut self, expected: &'static str) -> Result<String, ODataError> {
        match self.peek() {
            Some(Tok::Ident(s)) => {
                let s = s.clone();
                self.pos += 1;
                Ok(s)
            }
            _ => Err(self.unexpected(expected)),
        }
    }

    fn expect_end(&self) -> Result<(), ODataError> {
        if self.pos < self.toks.len() {
            Err(self.unexpected("end of expression"))
        } else {
            Ok(())
        }
    }

    fn enter(&mut self) -> Result<(), ODataError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            Err(ODataError::TooDeep)
        } else {
            Ok(())
        }
    }

    fn leave(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    fn parse_or(&mut self) -> Result<Expr, ODataError> {
        let mut terms = vec![self.parse_and()?];
        while self.peek_ident() == Some("or") {
            self.pos += 1;
            terms.push(self.parse_and()?);
        }
        Ok(if terms.len() == 1 {
            terms.remove(0)
        } else {
            Expr::Or(terms)
        })
    }

    fn parse_and(&mut self) -> Result<Expr, ODataError> {
        let mut terms = vec![self.parse_unary()?];
        while self.peek_ident() == Some("and") {
            self.pos += 1;
            terms.push(self.parse_unary()?);
        }
        Ok(if terms.len() == 1 {
            terms.remove(0)
        } else {
            Expr::And(terms)
        })
    }

    fn parse_unary(&mut self) -> Result<Expr, ODataError> {
        self.enter()?;
        let e = if self.peek_ident() == Some("not") {
            self.pos += 1;
            Expr::Not(Box::new(self.parse_unary()?))
        } else if self.peek() == Some(&Tok::LParen) {
            self.pos += 1;
            let e = self.parse_or()?;
            self.expect(Tok::RParen, "')'")?;
            e
        } else {
            self.parse_comparison()?
        };
        self.leave();
        Ok(e)
    }

    fn parse_comparison(&mut self) -> Result<Expr, ODataError> {
        let lhs = self.parse_operand()?;
        let op = self.peek_ident().map(|s| (CmpOp::from_ident(s), s == "in"));
        match op {
            Some((Some(op), _)) => {
                self.pos += 1;
                let rhs = self.parse_operand()?;
                Ok(Expr::Cmp(op, lhs, rhs))
            }
            Some((None, true)) => {
                self.pos += 1;
                self.expect(Tok::LParen, "'(' after 'in'")?;
                let mut list = Vec::new();
                loop {
                    match self.parse_operand()? {
                        Operand::Lit(l) => list.push(l),
                        _ => return Err(self.unexpected("a literal in the 'in' list")),
                    }
                    match self.next() {
                        Some((_, Tok::Comma)) => continue,
                        Some((_, Tok::RParen)) => break,
                        _ => {
                            self.pos = self.pos.saturating_sub(1);
                            return Err(self.unexpected("',' or ')'"));
                        }
                    }
                }
                Ok(Expr::In(lhs, list))
            }
            _ => Ok(Expr::Bool(lhs)),
        }
    }

    fn parse_operand(&mut self) -> Result<Operand, ODataError> {
        self.enter()?;
        let operand = self.parse_operand_inner();
        self.leave();
        operand
    }

    fn parse_operand_inner(&mut self) -> Result<Operand, ODataError> {
        let Some((pos, tok)) = self.next() else {
            return Err(ODataError::UnexpectedEnd {
                expected: "a value or a field",
            });
        };
        match tok {
            Tok::Str(s) | Tok::TypedStr(_, s) => Ok(Operand::Lit(Literal::Str(s))),
            Tok::Int(n) => Ok(Operand::Lit(Literal::Int(n))),
            Tok::Ident(id) => match id.as_str() {
                "null" => Ok(Operand::Lit(Literal::Null)),
                "true" => Ok(Operand::Lit(Literal::Bool(true))),
                "false" => Ok(Operand::Lit(Literal::Bool(false))),
                "and" | "or" | "not" | "eq" | "ne" | "gt" | "ge" | "lt" | "le" | "in" => {
                    Err(ODataError::Unexpected {
                        pos,
                        found: id,
                        expected: "a value or a field",
                    })
                }
                _ if self.peek() == Some(&Tok::LParen) => {
                    self.pos += 1;
                    let mut args = Vec::new();
                    if self.peek() == Some(&Tok::RParen) {
                        self.pos += 1;
                    } else {
                        loop {
                            args.push(self.parse_operand()?);
                            match self.next() {
                                Some((_, Tok::Comma)) => continue,
                                Some((_, Tok::RParen)) => break,
                                _ => {
                                    self.pos = self.pos.saturating_sub(1);
                                    return Err(self.unexpected("',' or ')'"));
                                }
                            }
                        }
                    }
                    Ok(Operand::Call(id, args))
                }
                _ => self.parse_path(id),
            },
            other => Err(ODataError::Unexpected {
                pos,
                found: other.to_string(),
                expected: "a value or a field",
            }),
        }
    }

    fn parse_path(&mut self, first: String) -> Result<Operand, ODataError> {
        let mut path = vec![first];
        while self.peek() == Some(&Tok::Slash) {
            self.pos += 1;
            let seg = self.expect_ident("a field or navigation name after '/'")?;
            let is_lambda = (seg == "any" || seg == "all") && self.peek() == Some(&Tok::LParen);
            if !is_lambda {
                path.push(seg);
                continue;
            }
            self.pos += 1;
            let all = seg == "all";
            if !all && self.peek() == Some(&Tok::RParen) {
                self.pos += 1;
                return Ok(Operand::Lambda {
                    path,
                    all,
                    var: String::new(),
                    body: None,
                });
            }
            let var = self.expect_ident("a lambda variable")?;
            self.expect(Tok::Colon, "':' after the lambda variable")?;
            let body = self.parse_or()?;
            self.expect(Tok::RParen, "')' closing the lambda")?;
            return Ok(Operand::Lambda {
                path,
                all,
                var,
                body: Some(Box::new(body)),
            });
        }
        Ok(Operand::Path(path))
    }
}

/// Parses a complete `$filter` value (already percent-decoded).
pub fn parse_filter(s: &str) -> Result<Expr, ODataError> {
    let mut p = Parser::new(s)?;
    if p.toks.is_empty() {
        return Err(ODataError::UnexpectedEnd {
            expected: "a filter expression",
        });
    }
    let e = p.parse_or()?;
    p.expect_end()?;
    Ok(e)
}

// ---------------------------------------------------------------------------------------------
// Query options
// ---------------------------------------------------------------------------------------------

/// The OData options of one query level, by name (not yet checked against the schema).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawOptions {
    pub select: Option<Vec<String>>,
    pub filter: Option<Expr>,
    pub expand: Vec<RawExpand>,
    /// Property paths with `true` for descending.
    pub orderby: Vec<(Vec<String>, bool)>,
    pub top: Option<usize>,
    pub skip: Option<usize>,
}

/// One item of `$expand`: a navigation, optionally `/$count`, with its nested options.
#[derive(Debug, Clone, PartialEq)]
pub struct RawExpand {
    pub nav: String,
    pub count: bool,
    pub options: RawOptions,
}

impl RawOptions {
    /// Sets one option from its decoded name and value. `seen` catches duplicates.
    fn set(&mut self, name: &str, value: &str, depth: usize) -> Result<(), ODataError> {
        let bad = || ODataError::BadOptionValue {
            option: name.into(),
            value: value.into(),
        };
        match name {
            "$select" => self.select = Some(parse_select(value)?),
            "$filter" => self.filter = Some(parse_filter(value)?),
            "$expand" => self.expand = parse_expand(value, depth + 1)?,
            "$orderby" => self.orderby = parse_orderby(value)?,
            "$top" => self.top = Some(value.trim().parse().map_err(|_| bad())?),
            "$skip" => self.skip = Some(value.trim().parse().map_err(|_| bad())?),
            other => return Err(ODataError::UnknownOption(other.into())),
        }
        Ok(())
    }
}

fn parse_select(value: &str) -> Result<Vec<String>, ODataError> {
    let mut fields = Vec::new();
    for item in value.split(',') {
        let item = item.trim();
        let ok = item == "*"
            || (item.chars().next().is_some_and(is_ident_start) && item.chars().all(is_ident_char));
        if !ok {
            return Err(ODataError::BadOptionValue {
                option: "$select".into(),
                value: value.into(),
            });
        }
        fields.push(item.to_string());
    }
    Ok(fields)
}

fn parse_orderby(value: &str) -> Result<Vec<(Vec<String>, bool)>, ODataError> {
    let mut out = Vec::new();
    for item in split_top_level(value, ',')? {
        let mut p = Parser::new(item)?;
        let mut path = vec![p.expect_ident("a field to order by")?];
        while p.peek() == Some(&Tok::Slash) {
            p.pos += 1;
            path.push(p.expect_ident("a field after '/'")?);
        }
        let desc = match p.peek_ident() {
            Some("asc") => {
                p.pos += 1;
                false
            }
            Some("desc") => {
                p.pos += 1;
                true
            }
            _ => false,
        };
        p.expect_end()?;
        out.push((path, desc));
    }
    Ok(out)
}

fn parse_expand(value: &str, depth: usize) -> Result<Vec<RawExpand>, ODataError> {
    if depth > MAX_DEPTH {
        return Err(ODataError::TooDeep);
    }
    let mut items = Vec::new();
    for item in split_top_level(value, ',')? {
        let (head, inner) = split_call(item.trim())?;
        let head = head.trim();
        let (nav, count) = match head.strip_suffix("/$count") {
            Some(nav) => (nav.trim(), true),
            None => (head, false),
        };
        let valid =
            nav.chars().next().is_some_and(is_ident_start) && nav.chars().all(is_ident_char);
        if !valid {
            return Err(ODataError::BadOptionValue {
                option: "$expand".into(),
                value: value.into(),
            });
        }
        let mut options = RawOptions::default();
        if let Some(inner) = inner {
            let mut seen = Vec::new();
            for opt in split_top_level(inner, ';')? {
                let opt = opt.trim();
                if opt.is_empty() {
                    continue;
                }
                let (name, v) = opt
                    .split_once('=')
                    .ok_or_else(|| ODataError::BadOptionValue {
                        option: "$expand".into(),
                        value: opt.into(),
                    })?;
                let name = name.trim();
                if seen.contains(&name) {
                    return Err(ODataError::DuplicateOption(name.into()));
                }
                seen.push(name);
                options.set(name, v, depth)?;
            }
        }
        items.push(RawExpand {
            nav: nav.to_string(),
            count,
            options,
        });
    }
    Ok(items)
}

/// Parses the decoded query pairs (see [`super::pinejs_url`]) into options. `apikey` and parameters that do not start
/// with `$` are not OData options and are skipped; `$format` is accepted and ignored.
pub fn parse_options(pairs: &[(String, String)]) -> Result<RawOptions, ODataError> {
    let mut opts = RawOptions::default();
    for (name, value) in pairs {
        if !name.starts_with('$') || name == "$format" {
            continue;
        }
        // A repeated option replaces the earlier one, as pinejs's parser keeps the last.
        opts.set(name, value, 0)?;
    }
    Ok(opts)
}

// ---------------------------------------------------------------------------------------------
// Resource path
// ---------------------------------------------------------------------------------------------

/// How a single row is addressed in the path.
#[derive(Debug, Clone, PartialEq)]
pub enum Key {
    /// `device(12)`
    Id(i64),
    /// `device(uuid='abc')`, `device_tag(device=1,tag_key='x')`
    Alternate(Vec<(String, Literal)>),
}

/// The part of the path after `/v7/`.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourcePath {
    pub resource: String,
    pub key: Option<Key>,
    /// `device/$count`
    pub count: bool,
}

/// The resource name from a raw path after the version prefix, without validating anything
/// else (used to record and to match faults before the request is parsed).
pub fn resource_name_of(rest: &str) -> &str {
    let end = rest.find(['(', '/', '%']).unwrap_or(rest.len());
    &rest[..end]
}

/// Parses the decoded path after the version prefix.
pub fn parse_resource_path(rest: &str) -> Result<ResourcePath, ODataError> {
    let bad = || ODataError::BadResourcePath(rest.into());
    let end = rest.find(['(', '/']).unwrap_or(rest.len());
    let resource = &rest[..end];
    if resource.is_empty() || !resource.chars().all(is_ident_char) {
        return Err(bad());
    }
    let mut tail = &rest[end..];
    let mut key = None;
    if tail.starts_with('(') {
        // Find the closing parenthesis outside string literals.
        let mut in_string = false;
        let mut close = None;
        for (i, c) in tail.char_indices().skip(1) {
            match c {
                '\'' => in_string = !in_string,
                ')' if !in_string => {
                    close = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let close = close.ok_or_else(bad)?;
        key = Some(parse_key(&tail[1..close])?);
        tail = &tail[close + 1..];
    }
    let count = match tail {
        "" | "/" => false,
        "/$count" | "/$count/" => true,
        _ => return Err(bad()),
    };
    Ok(ResourcePath {
        resource: resource.to_string(),
        key,
        count,
    })
}

fn parse_key(s: &str) -> Result<Key, ODataError> {
    let mut p = Parser::new(s)?;
    if let Some(Tok::Int(n)) = p.peek() {
        let n = *n;
        p.pos += 1;
        p.expect_end()?;
        return Ok(Key::Id(n));
    }
    let mut pairs = Vec::new();
    loop {
        let name = p.expect_ident("a key field name")?;
        p.expect(Tok::Equals, "'='")?;
        let lit = match p.next() {
            Some((_, Tok::Int(n))) => Literal::Int(n),
            Some((_, Tok::Str(s))) | Some((_, Tok::TypedStr(_, s))) => Literal::Str(s),
            Some((_, Tok::Ident(id))) if id == "null" => Literal::Null,
            _ => {
                p.pos = p.pos.saturating_sub(1);
                return Err(p.unexpected("a key value"));
            }
        };
        pairs.push((name, lit));
        match p.peek_at(0) {
            None => break,
            Some(Tok::Comma) => p.pos += 1,
            _ => return Err(p.unexpected("',' or end of key")),
        }
    }
    Ok(Key::Alternate(pairs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &[&str]) -> Operand {
        Operand::Path(p.iter().map(|s| s.to_string()).collect())
    }

    fn s(v: &str) -> Operand {
        Operand::Lit(Literal::Str(v.into()))
    }

    #[test]
    fn parses_precedence() {
        let e = parse_filter("device eq 1 and (name eq 'A' or name eq 'B')").unwrap();
        let expected = Expr::And(vec![
            Expr::Cmp(CmpOp::Eq, path(&["device"]), Operand::Lit(Literal::Int(1))),
            Expr::Or(vec![
                Expr::Cmp(CmpOp::Eq, path(&["name"]), s("A")),
                Expr::Cmp(CmpOp::Eq, path(&["name"]), s("B")),
            ]),
        ]);
        assert_eq!(e, expected);
        // and binds tighter than or
        let e = parse_filter("a eq 1 or b eq 2 and c eq 3").unwrap();
        let Expr::Or(terms) = e else { panic!("{e:?}") };
        assert!(matches!(terms.as_slice(), [Expr::Cmp(..), Expr::And(_)]));
        // A long chain is flat, not deep.
        let long = vec!["a eq 1"; 20_000].join(" and ");
        assert!(matches!(parse_filter(&long), Ok(Expr::And(t)) if t.len() == 20_000));
    }

    #[test]
    fn parses_literals_with_doubled_quotes() {
        let e = parse_filter("name eq 'it''s (a) /,; \u{1F600}'").unwrap();
        assert_eq!(
            e,
            Expr::Cmp(CmpOp::Eq, path(&["name"]), s("it's (a) /,; \u{1F600}"))
        );
        let e = parse_filter("name eq 'x'' or 1 eq 1'").unwrap();
        assert_eq!(e, Expr::Cmp(CmpOp::Eq, path(&["name"]), s("x' or 1 eq 1")));
    }

    #[test]
    fn parses_lambda_and_in() {
        let e = parse_filter("installs__service/any(s:s/service_name eq 'main')").unwrap();
        let Expr::Bool(Operand::Lambda {
            path: nav,
            all,
            var,
            body,
        }) = e
        else {
            panic!()
        };
        assert_eq!(nav, vec!["installs__service"]);
        assert!(!all);
        assert_eq!(var, "s");
        assert!(body.is_some());
        let e = parse_filter("name in ('A', 'B')").unwrap();
        assert_eq!(
            e,
            Expr::In(
                path(&["name"]),
                vec![Literal::Str("A".into()), Literal::Str("B".into())]
            )
        );
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "(",
            "name eq 'x",
            "name eq 'x' or 1 eq 1'",
            "name eq",
            "eq 'x'",
            "name eq 'a' and",
            "((name eq 'a')",
            "name eq 'a')",
            "name in 'a'",
            "name in ('a' 'b')",
            "name eq 1.5",
            "name eq #",
            "a/any(x x/b eq 1)",
            "not",
        ] {
            assert!(parse_filter(bad).is_err(), "{bad:?} parsed");
        }
        let deep = "(".repeat(10_000) + "a eq 1" + &")".repeat(10_000);
        assert_eq!(parse_filter(&deep), Err(ODataError::TooDeep));
        let nots = "not ".repeat(10_000) + "a eq 1";
        assert_eq!(parse_filter(&nots), Err(ODataError::TooDeep));
    }

    #[test]
    fn parses_expand_with_nested_options() {
        let pairs = vec![(
            "$expand".to_string(),
            "a($select=id,name;$filter=name eq 'x;y)' or name eq 'z';$expand=b($select=id)),c/$count"
                .to_string(),
        )];
        let o = parse_options(&pairs).unwrap();
        assert_eq!(o.expand.len(), 2);
        assert_eq!(o.expand[0].nav, "a");
        assert_eq!(
            o.expand[0].options.select,
            Some(vec!["id".into(), "name".into()])
        );
        assert!(o.expand[0].options.filter.is_some());
        assert_eq!(o.expand[0].options.expand[0].nav, "b");
        assert_eq!(o.expand[1].nav, "c");
        assert!(o.expand[1].count);
        for bad in [
            "a(",
            "a)",
            "a($select=id",
            "a($bogus=1)",
            "a(x)",
            "a($top=x)",
            "a(b)c",
            "'a'",
        ] {
            let pairs = vec![("$expand".to_string(), bad.to_string())];
            assert!(parse_options(&pairs).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn parses_resource_paths() {
        let p = parse_resource_path("device(12)").unwrap();
        assert_eq!(p.key, Some(Key::Id(12)));
        let p = parse_resource_path("device(uuid='a)b''c')").unwrap();
        assert_eq!(
            p.key,
            Some(Key::Alternate(vec![(
                "uuid".into(),
                Literal::Str("a)b'c".into())
            )]))
        );
        let p = parse_resource_path("device/$count").unwrap();
        assert!(p.count);
        for bad in [
            "",
            "device(",
            "device(1)x",
            "device(uuid=)",
            "dev ice",
            "device/x",
        ] {
            assert!(parse_resource_path(bad).is_err(), "{bad:?} parsed");
        }
    }
}

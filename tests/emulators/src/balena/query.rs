//! Binds parsed OData options to the schema (unknown names and type mismatches are errors
//! here, before any row is looked at), evaluates `$filter` on rows and renders rows with
//! `$select` and `$expand`.
//!
//! Everything a key reaches through a navigation, in a filter or an expansion, is limited to
//! what that key can see, as pinejs applies permissions to every level of a query.

use std::cmp::Ordering;

use serde_json::{Map, Value, json};

use super::odata::{CmpOp, Expr, Key, Literal, ODataError, Operand, RawOptions};
use super::schema::{Kind, Nav, Res};
use super::store::{Row, Store, Viewer, int_field};

/// Where a property path starts: the row being filtered (`$it`) or a lambda variable (an index
/// into the stack of enclosing lambdas, outermost first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    It,
    Var(usize),
}

#[derive(Debug, Clone)]
pub enum Terminal {
    Field(&'static str),
    /// `nav/$count` over a to-many navigation.
    Count(Nav),
}

/// A property path resolved against the schema: follow `hops` (foreign keys) from `start`,
/// then read `terminal`.
#[derive(Debug, Clone)]
pub struct BPath {
    start: Start,
    hops: Vec<Nav>,
    terminal: Terminal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Func {
    StartsWith,
    EndsWith,
    Contains,
    SubstringOf,
    ToLower,
    ToUpper,
    Length,
}

#[derive(Debug, Clone)]
pub enum BOperand {
    Lit(Value),
    Path(BPath),
    Lambda {
        start: Start,
        hops: Vec<Nav>,
        all: bool,
        body: Option<Box<BExpr>>,
    },
    Call(Func, Vec<BOperand>),
}

#[derive(Debug, Clone)]
pub enum BExpr {
    Or(Vec<BExpr>),
    And(Vec<BExpr>),
    Not(Box<BExpr>),
    Cmp(CmpOp, BOperand, BOperand),
    In(BOperand, Vec<Value>),
    Bool(BOperand),
}

/// The static type of an operand, to refuse comparisons pinejs would refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Int,
    Text,
    Bool,
    Null,
}

impl Ty {
    fn of_kind(kind: Kind) -> Ty {
        match kind {
            Kind::Int | Kind::Fk(_) => Ty::Int,
            Kind::Text | Kind::Timestamp => Ty::Text,
        }
    }

    fn of_value(v: &Value) -> Ty {
        match v {
            Value::Bool(_) => Ty::Bool,
            Value::Number(_) => Ty::Int,
            Value::String(_) => Ty::Text,
            _ => Ty::Null,
        }
    }

    fn compatible(self, other: Ty) -> bool {
        self == other || self == Ty::Null || other == Ty::Null
    }
}

fn literal_value(l: &Literal) -> Value {
    match l {
        Literal::Null => Value::Null,
        Literal::Bool(b) => json!(b),
        Literal::Int(n) => json!(n),
        Literal::Str(s) => json!(s),
    }
}

/// The lambda variables in scope while binding: name and resource, outermost first.
struct Env<'a> {
    it: Res,
    vars: &'a mut Vec<(String, Res)>,
}

impl Env<'_> {
    /// Resolves the start of a path; returns it, the resource there and the rest of the path.
    fn start<'p>(&self, path: &'p [String]) -> (Start, Res, &'p [String]) {
        if let Some(first) = path.first()
            && let Some(i) = self.vars.iter().rposition(|(name, _)| name == first)
        {
            return (Start::Var(i), self.vars[i].1, &path[1..]);
        }
        (Start::It, self.it, path)
    }
}

/// Follows the to-one navigations in `segs`; every segment must be a foreign key.
fn bind_hops(mut res: Res, segs: &[String]) -> Result<(Res, Vec<Nav>), ODataError> {
    let mut hops = Vec::with_capacity(segs.len());
    for seg in segs {
        match res.navigation(seg) {
            Some(nav @ Nav::ToOne { target, .. }) => {
                hops.push(nav);
                res = target;
            }
            Some(Nav::ToMany { .. }) => {
                return Err(ODataError::TypeMismatch(format!(
                    "{seg:?} is a to-many navigation; use {seg}/any(x: ...) or {seg}/all(x: ...)"
                )));
            }
            None if res.field(seg).is_some() => {
                return Err(ODataError::NotANavigation {
                    resource: res.name(),
                    name: seg.clone(),
                });
            }
            None => {
                return Err(ODataError::UnknownField {
                    resource: res.name(),
                    field: seg.clone(),
                });
            }
        }
    }
    Ok((res, hops))
}

fn bind_path(env: &Env<'_>, path: &[String]) -> Result<(BPath, Ty), ODataError> {
    let (start, res, rest) = env.start(path);
    let Some((last, init)) = rest.split_last() else {
        return Err(ODataError::TypeMismatch(format!(
            "{:?} is an entity, not a value",
            path.join("/")
        )));
    };
    if last == "$count" {
        let Some((nav_name, init)) = init.split_last() else {
            return Err(ODataError::TypeMismatch(
                "$count needs a navigation before it".into(),
            ));
        };
        let (res, hops) = bind_hops(res, init)?;
        return match res.navigation(nav_name) {
            Some(nav @ Nav::ToMany { .. }) => Ok((
                BPath {
                    start,
                    hops,
                    terminal: Terminal::Count(nav),
                },
                Ty::Int,
            )),
            _ => Err(ODataError::NotANavigation {
                resource: res.name(),
                name: nav_name.clone(),
            }),
        };
    }
    let (res, hops) = bind_hops(res, init)?;
    match res.field(last) {
        Some(field) => Ok((
            BPath {
                start,
                hops,
                terminal: Terminal::Field(field.name),
            },
            Ty::of_kind(field.kind),
        )),
        None if res.reverse(last).is_some() => Err(ODataError::TypeMismatch(format!(
            "{last:?} is a to-many navigation; use {last}/any(x: ...)"
        ))),
        None => Err(ODataError::UnknownField {
            resource: res.name(),
            field: last.clone(),
        }),
    }
}

fn bind_operand(env: &mut Env<'_>, op: &Operand) -> Result<(BOperand, Ty), ODataError> {
    match op {
        Operand::Lit(l) => {
            let v = literal_value(l);
            let ty = Ty::of_value(&v);
            Ok((BOperand::Lit(v), ty))
        }
        Operand::Path(path) => {
            let (p, ty) = bind_path(env, path)?;
            Ok((BOperand::Path(p), ty))
        }
        Operand::Lambda {
            path,
            all,
            var,
            body,
        } => {
            let (start, res, rest) = env.start(path);
            let Some((nav_name, init)) = rest.split_last() else {
                return Err(ODataError::TypeMismatch(
                    "any/all needs a navigation before it".into(),
                ));
            };
            let (res, mut hops) = bind_hops(res, init)?;
            let nav = res
                .navigation(nav_name)
                .ok_or_else(|| ODataError::NotANavigation {
                    resource: res.name(),
                    name: nav_name.clone(),
                })?;
            hops.push(nav);
            let body = match body {
                None => None,
                Some(body) => {
                    env.vars.push((var.clone(), nav.target()));
                    let bound = bind_expr(env, body);
                    env.vars.pop();
                    Some(Box::new(bound?))
                }
            };
            Ok((
                BOperand::Lambda {
                    start,
                    hops,
                    all: *all,
                    body,
                },
                Ty::Bool,
            ))
        }
        Operand::Call(name, args) => {
            let (func, arity, ret) = match name.as_str() {
                "startswith" => (Func::StartsWith, 2, Ty::Bool),
                "endswith" => (Func::EndsWith, 2, Ty::Bool),
                "contains" => (Func::Contains, 2, Ty::Bool),
                "substringof" => (Func::SubstringOf, 2, Ty::Bool),
                "tolower" => (Func::ToLower, 1, Ty::Text),
                "toupper" => (Func::ToUpper, 1, Ty::Text),
                "length" => (Func::Length, 1, Ty::Int),
                _ => return Err(ODataError::UnknownFunction(name.clone())),
            };
            if args.len() != arity {
                return Err(ODataError::BadArguments(name.clone()));
            }
            let mut bound = Vec::with_capacity(arity);
            for arg in args {
                let (b, ty) = bind_operand(env, arg)?;
                if !ty.compatible(Ty::Text) {
                    return Err(ODataError::BadArguments(name.clone()));
                }
                bound.push(b);
            }
            Ok((BOperand::Call(func, bound), ret))
        }
    }
}

fn bind_expr(env: &mut Env<'_>, e: &Expr) -> Result<BExpr, ODataError> {
    Ok(match e {
        Expr::Or(terms) => BExpr::Or(
            terms
                .iter()
                .map(|t| bind_expr(env, t))
                .collect::<Result<_, _>>()?,
        ),
        Expr::And(terms) => BExpr::And(
            terms
                .iter()
                .map(|t| bind_expr(env, t))
                .collect::<Result<_, _>>()?,
        ),
        Expr::Not(a) => BExpr::Not(Box::new(bind_expr(env, a)?)),
        Expr::Cmp(op, a, b) => {
            let (a, ta) = bind_operand(env, a)?;
            let (b, tb) = bind_operand(env, b)?;
            if !ta.compatible(tb) {
                return Err(ODataError::TypeMismatch(format!(
                    "cannot compare {ta:?} with {tb:?}"
                )));
            }
            BExpr::Cmp(*op, a, b)
        }
        Expr::In(a, list) => {
            let (a, ta) = bind_operand(env, a)?;
            let values: Vec<Value> = list.iter().map(literal_value).collect();
            if let Some(v) = values.iter().find(|v| !ta.compatible(Ty::of_value(v))) {
                return Err(ODataError::TypeMismatch(format!(
                    "cannot compare {ta:?} with {v}"
                )));
            }
            BExpr::In(a, values)
        }
        Expr::Bool(op) => {
            let (b, ty) = bind_operand(env, op)?;
            if ty != Ty::Bool {
                return Err(ODataError::NotBoolean(format!("{op:?}")));
            }
            BExpr::Bool(b)
        }
    })
}

/// Binds a `$filter` expression for rows of `res`.
pub fn bind_filter(res: Res, e: &Expr) -> Result<BExpr, ODataError> {
    let mut vars = Vec::new();
    bind_expr(
        &mut Env {
            it: res,
            vars: &mut vars,
        },
        e,
    )
}

/// Turns a key in the path (`device(12)`, `device(uuid='x')`) into a filter.
pub fn bind_key(res: Res, key: &Key) -> Result<BExpr, ODataError> {
    let pairs: Vec<(String, Literal)> = match key {
        Key::Id(id) => vec![("id".into(), Literal::Int(*id))],
        Key::Alternate(pairs) => pairs.clone(),
    };
    if pairs.is_empty() {
        return Err(ODataError::BadResourcePath("empty key".into()));
    }
    let terms = pairs
        .into_iter()
        .map(|(name, lit)| Expr::Cmp(CmpOp::Eq, Operand::Path(vec![name]), Operand::Lit(lit)))
        .collect();
    bind_filter(res, &Expr::And(terms))
}

/// One bound `$expand` item.
#[derive(Debug, Clone)]
pub struct BExpand {
    name: &'static str,
    nav: Nav,
    count: bool,
    options: Options,
}

/// The options of one query level, bound to a resource.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `None` means every field.
    select: Option<Vec<&'static str>>,
    pub filter: Option<BExpr>,
    expand: Vec<BExpand>,
    orderby: Vec<(BPath, bool)>,
    top: Option<usize>,
    skip: Option<usize>,
}

impl Options {
    /// Adds a condition (the path's key) to the filter.
    pub fn and_filter(&mut self, extra: BExpr) {
        self.filter = Some(match self.filter.take() {
            None => extra,
            Some(f) => BExpr::And(vec![extra, f]),
        });
    }
}

/// Binds the options of one query level for rows of `res`.
pub fn bind_options(res: Res, raw: &RawOptions) -> Result<Options, ODataError> {
    let select = match &raw.select {
        None => None,
        Some(items) if items.iter().any(|i| i == "*") => None,
        Some(items) => {
            let mut fields = Vec::with_capacity(items.len());
            for item in items {
                match res.field(item) {
                    Some(f) => fields.push(f.name),
                    None if res.reverse(item).is_some() => {
                        return Err(ODataError::TypeMismatch(format!(
                            "{item:?} is a navigation; $expand it instead of $select"
                        )));
                    }
                    None => {
                        return Err(ODataError::UnknownField {
                            resource: res.name(),
                            field: item.clone(),
                        });
                    }
                }
            }
            Some(fields)
        }
    };
    let filter = raw
        .filter
        .as_ref()
        .map(|f| bind_filter(res, f))
        .transpose()?;
    let mut expand = Vec::with_capacity(raw.expand.len());
    for item in &raw.expand {
        let nav = res.navigation(&item.nav).ok_or_else(|| {
            if res.field(&item.nav).is_some() {
                ODataError::NotANavigation {
                    resource: res.name(),
                    name: item.nav.clone(),
                }
            } else {
                ODataError::UnknownField {
                    resource: res.name(),
                    field: item.nav.clone(),
                }
            }
        })?;
        let name = res
            .def()
            .fields
            .iter()
            .map(|f| f.name)
            .chain(res.def().reverse.iter().map(|r| r.name))
            .find(|n| *n == item.nav)
            .unwrap_or(res.name());
        let o = &item.options;
        if item.count && (o.select.is_some() || !o.expand.is_empty() || !o.orderby.is_empty()) {
            return Err(ODataError::BadOptionValue {
                option: "$expand".into(),
                value: format!("{}/$count allows only $filter", item.nav),
            });
        }
        let options = bind_options(nav.target(), o)?;
        expand.push(BExpand {
            name,
            nav,
            count: item.count,
            options,
        });
    }
    let mut orderby = Vec::with_capacity(raw.orderby.len());
    {
        let mut vars = Vec::new();
        let env = Env {
            it: res,
            vars: &mut vars,
        };
        for (path, desc) in &raw.orderby {
            let (p, _) = bind_path(&env, path)?;
            orderby.push((p, *desc));
        }
    }
    Ok(Options {
        select,
        filter,
        expand,
        orderby,
        top: raw.top,
        skip: raw.skip,
    })
}

/// Evaluates bound queries against a store, for one viewer.
pub struct Eval<'a> {
    pub store: &'a Store,
    pub viewer: &'a Viewer,
}

impl<'a> Eval<'a> {
    /// The row reached by following `hops` from `row`, if the viewer can see it.
    fn follow(&self, mut row: &'a Row, hops: &[Nav]) -> Option<&'a Row> {
        for hop in hops {
            let Nav::ToOne { fk, target } = *hop else {
                return None;
            };
            row = self
                .store
                .visible_row(self.viewer, target, int_field(row, fk)?)?;
        }
        Some(row)
    }

    fn start_row(&self, start: Start, it: &'a Row, vars: &[&'a Row]) -> Option<&'a Row> {
        match start {
            Start::It => Some(it),
            Start::Var(i) => vars.get(i).copied(),
        }
    }

    fn path_value(&self, p: &BPath, it: &'a Row, vars: &[&'a Row]) -> Value {
        let Some(row) = self
            .start_row(p.start, it, vars)
            .and_then(|r| self.follow(r, &p.hops))
        else {
            return Value::Null;
        };
        match &p.terminal {
            Terminal::Field(f) => row.get(*f).cloned().unwrap_or(Value::Null),
            Terminal::Count(nav) => json!(self.store.navigate(self.viewer, row, *nav).len()),
        }
    }

    fn operand(&self, op: &BOperand, it: &'a Row, vars: &mut Vec<&'a Row>) -> Value {
        match op {
            BOperand::Lit(v) => v.clone(),
            BOperand::Path(p) => self.path_value(p, it, vars),
            BOperand::Lambda {
                start,
                hops,
                all,
                body,
            } => {
                let Some((last, init)) = hops.split_last() else {
                    return Value::Null;
                };
                let Some(row) = self
                    .start_row(*start, it, vars)
                    .and_then(|r| self.follow(r, init))
                else {
                    return json!(*all);
                };
                let targets = self.store.navigate(self.viewer, row, *last);
                let Some(body) = body else {
                    return json!(!targets.is_empty());
                };
                let mut test = |target: &'a Row| {
                    vars.push(target);
                    let r = self.expr(body, it, vars);
                    vars.pop();
                    r
                };
                json!(if *all {
                    targets.into_iter().all(&mut test)
                } else {
                    targets.into_iter().any(&mut test)
                })
            }
            BOperand::Call(func, args) => {
                let vals: Vec<Value> = args.iter().map(|a| self.operand(a, it, vars)).collect();
                let s = |i: usize| vals.get(i).and_then(Value::as_str);
                let pair = || Some((s(0)?, s(1)?));
                match func {
                    Func::StartsWith => {
                        pair().map_or(Value::Null, |(a, b)| json!(a.starts_with(b)))
                    }
                    Func::EndsWith => pair().map_or(Value::Null, |(a, b)| json!(a.ends_with(b))),
                    Func::Contains => pair().map_or(Value::Null, |(a, b)| json!(a.contains(b))),
                    Func::SubstringOf => pair().map_or(Value::Null, |(a, b)| json!(b.contains(a))),
                    Func::ToLower => s(0).map_or(Value::Null, |a| json!(a.to_lowercase())),
                    Func::ToUpper => s(0).map_or(Value::Null, |a| json!(a.to_uppercase())),
                    Func::Length => s(0).map_or(Value::Null, |a| json!(a.chars().count())),
                }
            }
        }
    }

    /// Evaluates a condition on `it`.
    pub fn expr(&self, e: &BExpr, it: &'a Row, vars: &mut Vec<&'a Row>) -> bool {
        match e {
            BExpr::Or(terms) => terms.iter().any(|t| self.expr(t, it, vars)),
            BExpr::And(terms) => terms.iter().all(|t| self.expr(t, it, vars)),
            BExpr::Not(a) => !self.expr(a, it, vars),
            BExpr::Cmp(op, a, b) => {
                let a = self.operand(a, it, vars);
                let b = self.operand(b, it, vars);
                compare(*op, &a, &b)
            }
            BExpr::In(a, list) => {
                let a = self.operand(a, it, vars);
                list.iter().any(|v| compare(CmpOp::Eq, &a, v))
            }
            BExpr::Bool(op) => self.operand(op, it, vars) == Value::Bool(true),
        }
    }

    fn matches(&self, filter: Option<&BExpr>, row: &'a Row) -> bool {
        filter.is_none_or(|f| self.expr(f, row, &mut Vec::new()))
    }

    /// The rows among `candidates` the viewer sees and the options select, in order.
    pub fn select_rows(
        &self,
        res: Res,
        candidates: impl IntoIterator<Item = &'a Row>,
        opts: &Options,
    ) -> Vec<&'a Row> {
        let mut rows: Vec<&'a Row> = candidates
            .into_iter()
            .filter(|r| {
                self.store.visible(self.viewer, res, r) && self.matches(opts.filter.as_ref(), r)
            })
            .collect();
        if !opts.orderby.is_empty() {
            rows.sort_by(|a, b| {
                for (path, desc) in &opts.orderby {
                    let ord = order(
                        &self.path_value(path, a, &[]),
                        &self.path_value(path, b, &[]),
                    );
                    let ord = if *desc { ord.reverse() } else { ord };
                    if ord != Ordering::Equal {
                        return ord;
                    }
                }
                Ordering::Equal
            });
        }
        let skip = opts.skip.unwrap_or(0);
        let top = opts.top.unwrap_or(usize::MAX);
        rows.into_iter().skip(skip).take(top).collect()
    }

    /// A row as pinejs returns it: the selected fields, foreign keys as `{"__id": n}` unless
    /// expanded, expansions as arrays of rows (or a number for `/$count`).
    pub fn render(&self, res: Res, row: &'a Row, opts: &Options) -> Value {
        let mut out = Map::new();
        let all_fields: Vec<&'static str>;
        let fields: &[&'static str] = match &opts.select {
            Some(fields) => fields,
            None => {
                all_fields = res.def().fields.iter().map(|f| f.name).collect();
                &all_fields
            }
        };
        for name in fields {
            let value = row.get(*name).cloned().unwrap_or(Value::Null);
            let is_fk = res
                .field(name)
                .is_some_and(|f| matches!(f.kind, Kind::Fk(_)));
            let value = match value {
                Value::Number(n) if is_fk => json!({ "__id": n }),
                v => v,
            };
            out.insert((*name).to_string(), value);
        }
        for ex in &opts.expand {
            let target = ex.nav.target();
            let reached = self.store.navigate(self.viewer, row, ex.nav);
            let rows = self.select_rows(target, reached, &ex.options);
            let value = if ex.count {
                json!(rows.len())
            } else {
                Value::Array(
                    rows.into_iter()
                        .map(|r| self.render(target, r, &ex.options))
                        .collect(),
                )
            };
            out.insert(ex.name.to_string(), value);
        }
        Value::Object(out)
    }
}

/// Comparison with SQL-ish null handling: `eq`/`ne` treat null as a value (`x eq null` is
/// `IS NULL`), ordering comparisons with a null are false.
fn compare(op: CmpOp, a: &Value, b: &Value) -> bool {
    match op {
        CmpOp::Eq => values_equal(a, b),
        CmpOp::Ne => !values_equal(a, b),
        _ => {
            if a.is_null() || b.is_null() {
                return false;
            }
            let ord = order(a, b);
            match op {
                CmpOp::Gt => ord == Ordering::Greater,
                CmpOp::Ge => ord != Ordering::Less,
                CmpOp::Lt => ord == Ordering::Less,
                _ => ord != Ordering::Greater,
            }
        }
    }
}

fn values_equal(a: &Value, b: &Value) -> bool {
    match (a.as_i64(), b.as_i64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// A total order for sorting: null first, then booleans, numbers, strings.
fn order(a: &Value, b: &Value) -> Ordering {
    fn rank(v: &Value) -> u8 {
        match v {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Number(_) => 2,
            Value::String(_) => 3,
            _ => 4,
        }
    }
    match (a, b) {
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Number(_), Value::Number(_)) => a.as_i64().cmp(&b.as_i64()),
        (Value::String(x), Value::String(y)) => x.cmp(y),
        _ => rank(a).cmp(&rank(b)),
    }
}

#[cfg(test)]
mod tests {
    use super::super::odata::{parse_filter, parse_options};
    use super::*;

    fn bind(res: Res, f: &str) -> Result<BExpr, ODataError> {
        bind_filter(res, &parse_filter(f)?)
    }

    #[test]
    fn binds_known_paths_and_rejects_unknown() {
        assert!(
            bind(
                Res::ServiceInstall,
                "installs__service/any(s:s/service_name eq 'x')"
            )
            .is_ok()
        );
        assert!(bind(Res::ServiceInstall, "installs__service/service_name eq 'x'").is_ok());
        assert!(
            bind(
                Res::Device,
                "device_tag/any(t:t/tag_key eq 'x' and t/device/uuid eq 'u')"
            )
            .is_ok()
        );
        assert!(bind(Res::Device, "device_tag/$count gt 0").is_ok());
        assert!(bind(Res::DeviceServiceEnvVar, "service_install/any(si:si/device eq 1 and si/installs__service/any(is:is/service_name eq 'main'))").is_ok());
        for bad in [
            "bogus eq 1",
            "device_tag eq 1",
            "device_tag/tag_key eq 'x'",
            "uuid/x eq 1",
            "id eq 'x'",
            "uuid eq 1",
            "uuid",
            "uuid in (1, 2)",
            "frobnicate(uuid, 'x')",
            "startswith(uuid)",
            "x/any(y: y eq 1)",
            "device_tag/any(t: t/bogus eq 1)",
            "device_tag/any(t: u/tag_key eq 1)",
        ] {
            assert!(bind(Res::Device, bad).is_err(), "{bad:?} bound");
        }
    }

    #[test]
    fn binds_options() {
        let pairs = vec![
            ("$select".to_string(), "id,uuid".to_string()),
            (
                "$expand".to_string(),
                "device_environment_variable($select=name),belongs_to__application".to_string(),
            ),
            (
                "$orderby".to_string(),
                "belongs_to__application/app_name desc,id".to_string(),
            ),
        ];
        assert!(bind_options(Res::Device, &parse_options(&pairs).unwrap()).is_ok());
        for (k, v) in [
            ("$select", "bogus"),
            ("$select", "device_tag"),
            ("$expand", "uuid"),
            ("$expand", "bogus"),
            ("$expand", "device_tag($select=bogus)"),
            ("$orderby", "bogus"),
        ] {
            let raw = parse_options(&[(k.to_string(), v.to_string())]).unwrap();
            assert!(bind_options(Res::Device, &raw).is_err(), "{k}={v} bound");
        }
    }

    #[test]
    fn null_semantics() {
        assert!(compare(CmpOp::Eq, &Value::Null, &Value::Null));
        assert!(compare(CmpOp::Ne, &json!("a"), &Value::Null));
        assert!(!compare(CmpOp::Gt, &json!(1), &Value::Null));
        assert!(compare(CmpOp::Le, &json!("a"), &json!("b")));
    }
}

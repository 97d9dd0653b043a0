//! `when` conditions: a CEL expression over the verified token's claims and the request,
//! compiled once when a config loads (or when the operator's admission webhook checks a
//! policy) and evaluated on the request path.
//!
//! The variables are `claims` (the token's claims, as JSON maps, lists and values),
//! `request.method`, `request.path`, `request.headers` (only the headers an expression names
//! literally, lower-case, and only when the request carries exactly one of it) and
//! `source.address` (the client address, as text). Everything that is not a clean `true`
//! refuses: an error, a missing claim or header, a non-boolean result, a claim list too long
//! to iterate within the cost bound. CEL's own semantics apply inside the expression: `==`
//! and `!=` between values of different types are false and true (compare a boolean claim
//! as `claims.x == true`, never `claims.x != false`: an IdP may send the string "false"),
//! and `||` / `&&` absorb an error when the other side decides (`error || true` is true).
//!
//! CEL has no loops of its own, only the comprehension macros (`all`, `exists`,
//! `exists_one`, `map`, `filter`), so the cost of an expression is bounded before it runs:
//! every node counts once, a comprehension's body counts [`MAX_ITERATED`] times, and
//! `matches` (which compiles its pattern on each call) counts [`MATCHES_COST`]. An expression
//! over [`MAX_COST`] is refused at compile time; at run time a list or map longer than
//! [`MAX_ITERATED`] in the claims refuses the request if the expression iterates at all.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue, operators};
use cel::common::types::{CelMap, CelMapKey, CelString};
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;
use cel::objects::Key;
use cel::{Context, Env, Program, Value};

use crate::claims::KeptClaims;

use crate::names::{SIDECAR_REWRITTEN_HEADERS, folded_header_name};

/// Longest expression accepted, in bytes.
pub const MAX_SOURCE_LEN: usize = 2048;
/// Deepest expression tree accepted (every operator, call, selection and literal a level).
pub const MAX_DEPTH: usize = 32;
/// Stack of the thread an expression is compiled on: enough for the parser's recursion over
/// any expression of [`MAX_SOURCE_LEN`] bytes.
const COMPILE_STACK_BYTES: usize = 256 * 1024 * 1024;
/// Most bytes of conditions one policy may hold in all (each is compiled at every review,
/// render and reload).
pub const MAX_POLICY_SOURCE_LEN: usize = 16 * 1024;
/// The cost bound an expression must stay under (see the module documentation).
pub const MAX_COST: u64 = 20_000;
/// Iterations a comprehension is costed at, and the longest claim list or map an iterating
/// expression accepts.
pub const MAX_ITERATED: usize = 64;
/// Cost of one `matches` call.
pub const MATCHES_COST: u64 = 64;
/// What `+` counts: it copies its operands, and a chain of them grows what it copies.
pub const ADD_COST: u64 = 256;
/// Longest claim string an evaluation reads, in bytes: with [`ADD_COST`] this bounds the
/// copying of any chain of `+`.
pub const MAX_STRING_BYTES: usize = 4096;

/// Functions an expression may call besides the operators.
const FUNCTIONS: &[&str] = &[
    "size",
    "contains",
    "startsWith",
    "endsWith",
    "matches",
    "string",
    "int",
    "uint",
    "double",
];

/// Operators, as the parser names their calls.
const OPERATORS: &[&str] = &[
    operators::CONDITIONAL,
    operators::LOGICAL_AND,
    operators::LOGICAL_OR,
    operators::LOGICAL_NOT,
    operators::SUBSTRACT,
    operators::ADD,
    operators::MULTIPLY,
    operators::DIVIDE,
    operators::MODULO,
    operators::EQUALS,
    operators::NOT_EQUALS,
    operators::GREATER_EQUALS,
    operators::LESS_EQUALS,
    operators::GREATER,
    operators::LESS,
    operators::NEGATE,
    operators::INDEX,
    operators::IN,
    operators::NOT_STRICTLY_FALSE,
];

/// Headers an expression may never read: they carry credentials.
const SECRET_HEADERS: &[&str] = &["authorization", "cookie", "proxy-authorization"];

/// Why an expression was refused when it was compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    /// Longer than [`MAX_SOURCE_LEN`].
    #[error("the expression is {len} bytes long; at most {MAX_SOURCE_LEN} are accepted")]
    TooLong {
        /// Its length.
        len: usize,
    },
    /// Not CEL.
    #[error("not a valid CEL expression: {0}")]
    Syntax(String),
    /// Nested deeper than [`MAX_DEPTH`].
    #[error(
        "the expression nests more than {MAX_DEPTH} levels deep (operators, calls, selections, brackets)"
    )]
    TooDeep,
    /// A name that is none of the variables.
    #[error(
        "unknown variable {0:?}: an expression may read claims, request.method, request.path, request.headers and source.address"
    )]
    UnknownVariable(String),
    /// A function outside the allowed set.
    #[error("function {name:?} is not available; use one of: {}", FUNCTIONS.join(", "))]
    UnknownFunction {
        /// The function's name.
        name: String,
    },
    /// A header read with a computed name: the sidecar passes only headers named literally.
    #[error(
        "request.headers may only be read with a literal lower-case name, e.g. request.headers[\"x-tenant\"]"
    )]
    HeaderNotLiteral,
    /// A credential-carrying header.
    #[error("request.headers[{0:?}] carries credentials and cannot be read by an expression")]
    SecretHeader(String),
    /// A header the sidecar removes or rebuilds before the app sees it.
    #[error(
        "request.headers[{0:?}] is removed or rebuilt by the sidecar: the app never gets the value the expression would judge"
    )]
    RewrittenHeader(String),
    /// A comprehension over something other than claims or request headers.
    #[error(
        "all, exists, exists_one, map and filter may only iterate over claims or request.headers (write `x in [...]` to test membership in a list)"
    )]
    LoopOverLiteral,
    /// Over the cost bound.
    #[error(
        "the expression may cost {cost} steps, over the limit of {MAX_COST} (a comprehension counts its body {MAX_ITERATED} times; nest fewer of them)"
    )]
    TooCostly {
        /// Its bounded cost.
        cost: u64,
    },
}

/// Why an evaluation did not produce `true` or `false`. Each is a refusal.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvalError {
    /// The expression failed (a missing claim or header, a type mismatch, a division by zero).
    #[error("the condition failed: {0}")]
    Failed(String),
    /// The expression produced something other than a boolean.
    #[error("the condition produced {0}, not a boolean")]
    NotBoolean(String),
    /// A claim list or map too long for an iterating expression's cost bound, or a claim
    /// string longer than [`MAX_STRING_BYTES`].
    #[error(
        "a claim holds more than {MAX_ITERATED} entries to iterate, or a string of more than {MAX_STRING_BYTES} bytes"
    )]
    InputTooLarge,
}

/// The request as a condition sees it.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// The method, as received.
    pub method: &'a str,
    /// The normalised path the rule matched.
    pub path: &'a str,
    /// The request's headers (any case); only those the condition names are read.
    pub headers: &'a http::HeaderMap,
    /// The client address the sidecar derived (trusted proxies applied).
    pub source: Option<IpAddr>,
}

/// The variables of one evaluation: the claims borrowed, `request` and `source` built for it.
struct Inputs<'a> {
    claims: &'a dyn Val,
    request: Option<Box<dyn Val>>,
    source: Option<Box<dyn Val>>,
}

impl VariableResolver for Inputs<'_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        match variable {
            "claims" => Some(CowVal::Borrowed(self.claims)),
            "request" => self.request.as_deref().map(CowVal::Borrowed),
            "source" => self.source.as_deref().map(CowVal::Borrowed),
            _ => None,
        }
    }
}

/// The fields of `request` an expression reads: only those are built for an evaluation.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct RequestParts {
    method: bool,
    path: bool,
    headers: bool,
}

impl RequestParts {
    /// `request` read as a whole.
    const ALL: RequestParts = RequestParts {
        method: true,
        path: true,
        headers: true,
    };

    /// Records `request.<field>`; false for a field `request` does not have (it is then
    /// walked as a whole, and the evaluation fails as it should).
    fn add(&mut self, field: &str) -> bool {
        match field {
            "method" => self.method = true,
            "path" => self.path = true,
            "headers" => self.headers = true,
            _ => return false,
        }
        true
    }
}

/// A compiled `when` condition.
#[derive(Debug)]
pub struct Condition {
    program: Program,
    headers: BTreeSet<String>,
    /// The top-level claims the expression names, or `None` when it uses `claims` as a
    /// whole: only these are converted for an evaluation.
    claims: Option<BTreeSet<String>>,
    iterates: bool,
    /// The fields of `request` it reads (none: `request` is not bound).
    request: RequestParts,
    reads_source: bool,
    cost: u64,
}

fn environment() -> &'static Arc<Env> {
    static ENV: OnceLock<Arc<Env>> = OnceLock::new();
    ENV.get_or_init(|| Arc::new(Env::stdlib()))
}

impl Condition {
    /// Compiles `source`, checking its variables, functions, header names and cost.
    pub fn compile(source: &str) -> Result<Self, CompileError> {
        if source.len() > MAX_SOURCE_LEN {
            return Err(CompileError::TooLong { len: source.len() });
        }
        // The parser and the checks below recurse once per level of the expression: they run
        // on a thread whose stack holds any expression of MAX_SOURCE_LEN bytes, and what is
        // deeper than MAX_DEPTH is refused, so that evaluating it on a request thread never
        // recurses deeply either.
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("cel-compile".into())
                .stack_size(COMPILE_STACK_BYTES)
                .spawn_scoped(scope, || Self::compile_here(source))
                .map_err(|e| CompileError::Syntax(format!("no thread to compile on: {e}")))?
                .join()
                .map_err(|_| CompileError::Syntax("the compiler failed".into()))?
        })
    }

    fn compile_here(source: &str) -> Result<Self, CompileError> {
        let program = environment()
            .compile(source)
            .map_err(|e| CompileError::Syntax(e.to_string()))?;
        let mut walk = Walk::default();
        let cost = walk.cost(program.expression(), &mut Vec::new())?;
        if cost > MAX_COST {
            return Err(CompileError::TooCostly { cost });
        }
        let reads_source = program.references().has_variable("source");
        Ok(Self {
            request: walk.request,
            reads_source,
            program,
            claims: (!walk.whole_claims).then_some(walk.claims),
            headers: walk.headers,
            iterates: walk.iterates,
            cost,
        })
    }

    /// The bounded cost (see the module documentation).
    pub fn cost(&self) -> u64 {
        self.cost
    }

    /// The top-level claims the condition reads (`None`: it reads `claims` as a whole).
    pub fn claim_names(&self) -> Option<&BTreeSet<String>> {
        self.claims.as_ref()
    }

    /// Whether the condition reads `source.address`.
    pub fn reads_source(&self) -> bool {
        self.reads_source
    }

    /// The header names (lower-case) the condition reads.
    pub fn headers(&self) -> &BTreeSet<String> {
        &self.headers
    }

    /// Evaluates the condition: `Ok(true)` lets the rule's other checks decide, anything
    /// else refuses.
    pub fn evaluate(
        &self,
        claims: &KeptClaims,
        request: &RequestFacts<'_>,
    ) -> Result<bool, EvalError> {
        // Only the claims the expression names are judged for size (all, when it reads
        // `claims` as a whole); every claim is bound, borrowed from their CEL form, which is
        // converted once per token.
        let named: Vec<&serde_json::Value> = match &self.claims {
            Some(names) => names.iter().filter_map(|name| claims.get(name)).collect(),
            None => claims.values().collect(),
        };
        if self.iterates && (named.len() > MAX_ITERATED || named.iter().copied().any(too_large)) {
            return Err(EvalError::InputTooLarge);
        }
        if named.iter().copied().any(too_long) {
            return Err(EvalError::InputTooLarge);
        }
        // Only what the expression names is built.
        let inputs = Inputs {
            claims: claims.cel().ok_or(EvalError::InputTooLarge)?,
            request: match self.request != RequestParts::default() {
                true => self.request_value(request)?.try_into().ok(),
                false => None,
            },
            source: self.reads_source.then(|| {
                let address = request.source.map(|a| a.to_string()).unwrap_or_default();
                Box::new(CelMap::from(HashMap::from([(
                    CelMapKey::from("address"),
                    Box::new(CelString::from(address)) as Box<dyn Val>,
                )]))) as Box<dyn Val>
            }),
        };
        let mut context = Context::with_env(Arc::clone(environment()));
        context.set_variable_resolver(&inputs);
        match self.program.execute(&context) {
            Ok(Value::Bool(verdict)) => Ok(verdict),
            Ok(other) => Err(EvalError::NotBoolean(format!("{:?}", other.type_of()))),
            Err(e) => Err(EvalError::Failed(e.to_string())),
        }
    }

    fn request_value(&self, request: &RequestFacts<'_>) -> Result<Value, EvalError> {
        let mut fields: HashMap<Key, Value> = HashMap::with_capacity(3);
        let text = |value: &str| Value::String(Arc::new(value.to_owned()));
        if self.request.method {
            fields.insert(Key::from("method"), text(request.method));
        }
        if self.request.path {
            fields.insert(Key::from("path"), text(request.path));
        }
        if self.request.headers {
            fields.insert(Key::from("headers"), self.headers_value(request.headers)?);
        }
        Ok(Value::Map(cel::objects::Map {
            map: Arc::new(fields),
        }))
    }

    /// The headers the condition names, each once. One the client sent twice, or also in
    /// another spelling a CGI-style server reads as the same name, refuses the evaluation: a
    /// check of one value (or of its absence) would pass while the app may read another.
    /// One the client has the sidecar drop (named in `Connection`) is absent, as for the app.
    fn headers_value(&self, headers: &http::HeaderMap) -> Result<Value, EvalError> {
        let mut named: HashMap<Key, Value> = HashMap::with_capacity(self.headers.len());
        for name in &self.headers {
            let other_spelling =
                (headers.keys()).any(|k| k.as_str() != name && same_folded(k.as_str(), name));
            let mut values = headers.get_all(name.as_str()).iter();
            let first = values.next();
            if other_spelling || values.next().is_some() {
                return Err(EvalError::Failed(format!(
                    "header {name} came more than once, or in two spellings"
                )));
            }
            if dropped_by_connection(headers, name) {
                continue;
            }
            let Some(value) = first.and_then(|v| v.to_str().ok()) else {
                continue;
            };
            named.insert(
                Key::from(name.as_str()),
                Value::String(Arc::new(value.to_owned())),
            );
        }
        Ok(Value::Map(cel::objects::Map {
            map: Arc::new(named),
        }))
    }
}

/// Whether a value holds a list or map longer than [`MAX_ITERATED`], at any depth.
/// Whether two lower-case header names are one to a CGI-style server (`_` read as `-`),
/// without allocating: this runs per request header.
fn same_folded(a: &str, b: &str) -> bool {
    let fold = |c: u8| if c == b'_' { b'-' } else { c };
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| fold(x) == fold(y))
}

/// Whether the request's `Connection` header names `name` (in any case or spelling): the
/// sidecar then removes it as hop-by-hop, and the app never gets what was judged.
fn dropped_by_connection(headers: &http::HeaderMap, name: &str) -> bool {
    (headers.get_all(http::header::CONNECTION).iter())
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|token| same_folded(&token.trim().to_ascii_lowercase(), name))
}

/// Whether a string longer than [`MAX_STRING_BYTES`] is in `value`.
fn too_long(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(text) => text.len() > MAX_STRING_BYTES,
        serde_json::Value::Array(items) => items.iter().any(too_long),
        serde_json::Value::Object(map) => map.values().any(too_long),
        _ => false,
    }
}

fn too_large(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Array(items) => {
            items.len() > MAX_ITERATED || items.iter().any(too_large)
        }
        serde_json::Value::Object(map) => map.len() > MAX_ITERATED || map.values().any(too_large),
        _ => false,
    }
}

/// One pass over the expression: checks it and bounds its cost.
#[derive(Default)]
struct Walk {
    headers: BTreeSet<String>,
    claims: BTreeSet<String>,
    whole_claims: bool,
    request: RequestParts,
    iterates: bool,
    /// The level of the node being walked.
    depth: usize,
}

impl Walk {
    /// The bounded cost of `node`; `bound` holds the comprehension variables in scope.
    fn cost(&mut self, node: &IdedExpr, bound: &mut Vec<String>) -> Result<u64, CompileError> {
        if self.depth >= MAX_DEPTH {
            return Err(CompileError::TooDeep);
        }
        self.depth += 1;
        let cost = self.node_cost(node, bound);
        self.depth -= 1;
        cost
    }

    fn node_cost(&mut self, node: &IdedExpr, bound: &mut Vec<String>) -> Result<u64, CompileError> {
        let children = match &node.expr {
            Expr::Ident(name) => {
                if name == "claims" && !bound.contains(name) {
                    self.whole_claims = true;
                }
                if name == "request" && !bound.contains(name) {
                    self.request = RequestParts::ALL;
                }
                if !["claims", "request", "source"].contains(&name.as_str())
                    && !bound.contains(name)
                {
                    return Err(CompileError::UnknownVariable(name.clone()));
                }
                0
            }
            Expr::Literal(_) => 0,
            Expr::Select(select) if is_claims(&select.operand, bound) => {
                self.claims.insert(select.field.clone());
                1
            }
            Expr::Select(select)
                if is_request(&select.operand, bound) && self.request.add(&select.field) =>
            {
                1
            }
            Expr::Select(select) => {
                self.check_header_select(&select.operand, &select.field)?;
                self.cost(&select.operand, bound)?
            }
            Expr::Call(call) => self.call_cost(call, bound)?,
            Expr::List(list) => self.sum(&list.elements, bound)?,
            Expr::Map(map) => {
                let mut total = 0;
                for entry in &map.entries {
                    if let EntryExpr::MapEntry(entry) = &entry.expr {
                        total += self.cost(&entry.key, bound)? + self.cost(&entry.value, bound)?;
                    }
                }
                total
            }
            Expr::Comprehension(loop_) => {
                self.iterates = true;
                // Only claims (at most MAX_ITERATED entries, checked at run time) and the
                // named headers are iterated: a literal list could hold many more elements
                // than the cost counts.
                if !is_rooted_in_input(&loop_.iter_range, bound) {
                    return Err(CompileError::LoopOverLiteral);
                }
                let outer =
                    self.cost(&loop_.iter_range, bound)? + self.cost(&loop_.accu_init, bound)?;
                let scope = bound.len();
                bound.push(loop_.iter_var.clone());
                bound.extend(loop_.iter_var2.clone());
                bound.push(loop_.accu_var.clone());
                let body =
                    self.cost(&loop_.loop_cond, bound)? + self.cost(&loop_.loop_step, bound)?;
                let result = self.cost(&loop_.result, bound)?;
                bound.truncate(scope);
                outer + body.saturating_mul(MAX_ITERATED as u64) + result
            }
            Expr::Struct(_) | Expr::Unspecified => {
                return Err(CompileError::Syntax(
                    "message construction is not supported".to_owned(),
                ));
            }
        };
        Ok(children.saturating_add(1))
    }

    fn sum(&mut self, nodes: &[IdedExpr], bound: &mut Vec<String>) -> Result<u64, CompileError> {
        let mut total: u64 = 0;
        for node in nodes {
            total = total.saturating_add(self.cost(node, bound)?);
        }
        Ok(total)
    }

    fn call_cost(
        &mut self,
        call: &cel::common::ast::CallExpr,
        bound: &mut Vec<String>,
    ) -> Result<u64, CompileError> {
        let name = call.func_name.as_str();
        if !OPERATORS.contains(&name) && !FUNCTIONS.contains(&name) {
            return Err(CompileError::UnknownFunction {
                name: name.to_owned(),
            });
        }
        match (name, call.args.as_slice()) {
            (operators::INDEX, [operand, key]) if is_claims(operand, bound) => match &key.expr {
                Expr::Literal(LiteralValue::String(claim)) => {
                    self.claims.insert(claim.to_string());
                    return Ok(2);
                }
                _ => self.whole_claims = true,
            },
            (operators::INDEX, [operand, key]) => self.check_header_index(operand, key)?,
            (operators::IN, [key, operand]) => self.check_header_index(operand, key)?,
            _ => {}
        }
        let own = match name {
            "matches" => MATCHES_COST,
            // `+` may join strings: its work grows with the operands' length.
            operators::ADD => ADD_COST,
            _ => 0,
        };
        let target = match &call.target {
            Some(target) => self.cost(target, bound)?,
            None => 0,
        };
        Ok(own + target + self.sum(&call.args, bound)?)
    }

    /// `request.headers.name`: a literal name, recorded.
    fn check_header_select(&mut self, operand: &IdedExpr, field: &str) -> Result<(), CompileError> {
        if is_request_headers(operand) {
            self.record_header(field)?;
        }
        Ok(())
    }

    /// `request.headers["name"]`: a literal name, recorded; anything else is refused.
    fn check_header_index(
        &mut self,
        operand: &IdedExpr,
        key: &IdedExpr,
    ) -> Result<(), CompileError> {
        if !is_request_headers(operand) {
            return Ok(());
        }
        match &key.expr {
            Expr::Literal(LiteralValue::String(name)) => self.record_header(name.as_ref()),
            _ => Err(CompileError::HeaderNotLiteral),
        }
    }

    fn record_header(&mut self, name: &str) -> Result<(), CompileError> {
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(CompileError::HeaderNotLiteral);
        }
        let folded = folded_header_name(name);
        if SECRET_HEADERS.contains(&folded.as_str()) {
            return Err(CompileError::SecretHeader(name.to_owned()));
        }
        if SIDECAR_REWRITTEN_HEADERS.contains(&folded.as_str()) {
            return Err(CompileError::RewrittenHeader(name.to_owned()));
        }
        self.headers.insert(name.to_owned());
        Ok(())
    }
}

/// Whether `node` is `claims` or `request.headers`, or a field or index below them (not a
/// comprehension variable that shadows them).
fn is_rooted_in_input(node: &IdedExpr, bound: &[String]) -> bool {
    match &node.expr {
        Expr::Ident(name) => name == "claims" && !bound.iter().any(|b| b == "claims"),
        Expr::Select(select) if !select.test => {
            is_request_headers(node) || is_rooted_in_input(&select.operand, bound)
        }
        Expr::Call(call) if call.func_name == operators::INDEX => call
            .args
            .first()
            .is_some_and(|operand| is_rooted_in_input(operand, bound)),
        _ => false,
    }
}

/// The `request` variable itself (not a comprehension variable that shadows it).
fn is_request(node: &IdedExpr, bound: &[String]) -> bool {
    matches!(&node.expr, Expr::Ident(name) if name == "request" && !bound.iter().any(|b| b == "request"))
}

/// The `claims` variable itself (not a comprehension variable that shadows it).
fn is_claims(node: &IdedExpr, bound: &[String]) -> bool {
    matches!(&node.expr, Expr::Ident(name) if name == "claims" && !bound.iter().any(|b| b == "claims"))
}

fn is_request_headers(node: &IdedExpr) -> bool {
    matches!(&node.expr, Expr::Select(s) if s.field == "headers"
        && matches!(&s.operand.expr, Expr::Ident(root) if root == "request"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(value: serde_json::Value) -> KeptClaims {
        KeptClaims::new(value.as_object().cloned().unwrap_or_default())
    }

    fn run(expr: &str, token: serde_json::Value) -> Result<bool, EvalError> {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-env", http::HeaderValue::from_static("prod"));
        headers.insert(
            "authorization",
            http::HeaderValue::from_static("Bearer secret"),
        );
        let request = RequestFacts {
            method: "POST",
            path: "/tenants/acme/orders",
            headers: &headers,
            source: "10.0.0.7".parse().ok(),
        };
        Condition::compile(expr)
            .unwrap_or_else(|e| panic!("{expr}: {e}"))
            .evaluate(&claims(token), &request)
    }

    #[test]
    fn a_header_sent_twice_or_in_two_spellings_is_never_absent() {
        // `!("x-debug" in request.headers)` must not pass while the app reads a debug header.
        let condition = Condition::compile(r#"!("x-debug" in request.headers)"#).unwrap();
        let decide = |pairs: &[(&'static str, &'static str)]| {
            let mut headers = http::HeaderMap::new();
            for (name, value) in pairs {
                headers.append(*name, http::HeaderValue::from_static(value));
            }
            let request = RequestFacts {
                method: "GET",
                path: "/",
                headers: &headers,
                source: None,
            };
            condition.evaluate(&claims(json!({})), &request)
        };
        assert_eq!(decide(&[]), Ok(true));
        assert_eq!(decide(&[("x-debug", "1")]), Ok(false));
        assert!(decide(&[("x_debug", "1")]).is_err());
        assert!(decide(&[("x-debug", "1"), ("x-debug", "2")]).is_err());
    }

    #[test]
    fn request_reads_the_same_whether_built_in_part_or_whole() {
        // Only the fields an expression names are built; reading `request` as a whole, or a
        // field it does not have, still sees it all and fails as before.
        for (expr, expected) in [
            (r#"request.path == "/tenants/acme/orders""#, Ok(true)),
            (
                r#"has(request.method) && request.method == "POST""#,
                Ok(true),
            ),
            (r#"request.headers["x-env"] == "prod""#, Ok(true)),
            (
                r#""headers" in request && "method" in request && "path" in request"#,
                Ok(true),
            ),
            (r#"size(request) == 3"#, Ok(true)),
            (r#"request["method"] == "POST""#, Ok(true)),
            (r#"[request][0].path == "/tenants/acme/orders""#, Ok(true)),
            (
                r#"claims.groups.exists(request, request == "admins") && request.path != """#,
                Ok(true),
            ),
        ] {
            assert_eq!(run(expr, json!({"groups": ["admins"]})), expected, "{expr}");
        }
        assert!(matches!(
            run("request.nope == 1", json!({})),
            Err(EvalError::Failed(_))
        ));
        // Only the path: the method is not there to be read.
        let path_only = Condition::compile(r#"request.path != """#).unwrap();
        assert_eq!(
            path_only.request,
            RequestParts {
                path: true,
                ..RequestParts::default()
            }
        );
    }

    #[test]
    fn the_documented_examples_decide() {
        let alice = json!({
            "sub": "alice", "email": "alice@example.com", "tenant": "acme",
            "groups": ["team-orders", "admins"], "org": {"id": "acme"}
        });
        for (expr, expected) in [
            (r#""admins" in claims.groups"#, true),
            (r#""auditors" in claims.groups"#, false),
            (r#"claims.email.endsWith("@example.com")"#, true),
            (
                r#"request.path.startsWith("/tenants/" + claims.tenant + "/")"#,
                true,
            ),
            (r#"claims.org.id == "acme""#, true),
            (
                r#"request.method == "POST" && request.headers["x-env"] == "prod""#,
                true,
            ),
            (r#""x-env" in request.headers"#, true),
            (r#"source.address == "10.0.0.7""#, true),
            (r#"claims.groups.exists(g, g.startsWith("team-"))"#, true),
            (r#"claims.groups.all(g, g.matches("^[a-z-]+$"))"#, true),
            (r#"has(claims.admin) && claims.admin"#, false),
            // claims as a whole: every claim is there.
            (r#"claims.exists(k, k == "tenant")"#, true),
            (
                r#"claims[claims.tenant == "acme" ? "sub" : "email"] == "alice""#,
                true,
            ),
        ] {
            assert_eq!(run(expr, alice.clone()), Ok(expected), "{expr}");
        }
        // x_env names the x-env the request carries, as a CGI-style app reads it: neither
        // present nor absent, refused.
        assert!(run(r#"has(request.headers.x_env)"#, alice).is_err());
    }

    #[test]
    fn anything_but_a_boolean_refuses() {
        let token = json!({"sub": "alice", "groups": "admins,users", "n": 0, "flag": "true"});
        for expr in [
            // A missing claim.
            r#"claims.role == "admin""#,
            // A string where a list was expected: `in` has no string overload.
            r#""admins" in claims.groups"#,
            // Not a boolean.
            "claims.sub",
            "1 / claims.n > 0",
            // A missing header (x_env is not x-env).
            r#"request.headers.x_env == "prod""#,
            r#"request.headers["x-tenant"] == "acme""#,
        ] {
            let outcome = run(expr, token.clone());
            assert!(outcome.is_err(), "{expr} gave {outcome:?}");
        }
    }

    #[test]
    fn a_boolean_claim_sent_as_a_string_is_not_true_and_a_repeated_header_is_not_read() {
        let token = json!({"flag": "true"});
        assert_eq!(run("claims.flag == true", token.clone()), Ok(false));
        let condition = Condition::compile(r#"request.headers["x-tenant"] == "acme""#).unwrap();
        let mut headers = http::HeaderMap::new();
        headers.append("x-tenant", http::HeaderValue::from_static("acme"));
        let verdict = |headers: &http::HeaderMap| {
            let request = RequestFacts {
                method: "GET",
                path: "/",
                headers,
                source: None,
            };
            condition.evaluate(&claims(token.clone()), &request)
        };
        assert_eq!(verdict(&headers), Ok(true));
        headers.append("x-tenant", http::HeaderValue::from_static("victim"));
        assert!(verdict(&headers).is_err());
    }

    #[test]
    fn long_claim_lists_refuse_iterating_conditions_only() {
        let groups: Vec<String> = (0..=MAX_ITERATED).map(|i| format!("g{i}")).collect();
        let token = json!({"groups": groups});
        assert_eq!(
            run(r#"claims.groups.exists(g, g == "g1")"#, token.clone()),
            Err(EvalError::InputTooLarge)
        );
        assert_eq!(run(r#""g1" in claims.groups"#, token), Ok(true));
    }

    #[test]
    fn bad_expressions_are_refused_when_compiled() {
        let refused = |expr: &str| Condition::compile(expr).expect_err(expr);
        assert!(matches!(refused("claims.sub =="), CompileError::Syntax(_)));
        assert_eq!(
            refused("token.sub == 'x'"),
            CompileError::UnknownVariable("token".to_owned())
        );
        assert!(matches!(
            refused("claims.sub.lowerAscii() == 'x'"),
            CompileError::UnknownFunction { .. }
        ));
        assert_eq!(
            refused(r#"request.headers["authorization"] != """#),
            CompileError::SecretHeader("authorization".to_owned())
        );
        assert_eq!(
            refused(r#"request.headers.cookie != """#),
            CompileError::SecretHeader("cookie".to_owned())
        );
        for expr in [
            r#"request.headers["Authorization"] != """#,
            r#"request.headers[claims.h] != """#,
        ] {
            assert_eq!(refused(expr), CompileError::HeaderNotLiteral, "{expr}");
        }
        assert_eq!(
            refused("[1, 2, 3].exists(x, x == 2)"),
            CompileError::LoopOverLiteral
        );
        assert_eq!(
            refused("(claims.a + [1, 2]).exists(x, x == 2)"),
            CompileError::LoopOverLiteral
        );
        // Nested loops: 64 x 64 bodies.
        assert!(matches!(
            refused("claims.a.all(x, claims.b.all(y, claims.c.all(z, x == y && y == z)))"),
            CompileError::TooCostly { .. }
        ));
        assert!(matches!(
            refused(&format!("{}true", "true && ".repeat(400))),
            CompileError::TooLong { .. }
        ));
    }

    #[test]
    fn one_loop_fits_the_budget_and_the_cost_counts_it() {
        let single = Condition::compile("claims.groups.exists(g, g == 'a')").unwrap();
        let plain = Condition::compile("'a' in claims.groups").unwrap();
        assert!(
            single.cost() > plain.cost() * 10,
            "{} vs {}",
            single.cost(),
            plain.cost()
        );
        assert!(single.cost() <= MAX_COST);
    }

    #[test]
    fn deep_expressions_are_refused_and_never_overflow_a_stack() {
        let fill = |unit: &str, tail: &str| {
            let mut text = String::new();
            while text.len() + unit.len() + tail.len() <= MAX_SOURCE_LEN {
                text.push_str(unit);
            }
            text.push_str(tail);
            text
        };
        for deep in [
            fill("[", "1"),
            fill("{1:", "1"),
            format!("claims{} == 1", ".b".repeat(900)),
            format!("claims.a{} == 1", "[0]".repeat(600)),
        ] {
            let refused = Condition::compile(&deep).err();
            assert!(
                matches!(
                    refused,
                    Some(CompileError::TooDeep | CompileError::Syntax(_))
                ),
                "{deep:.24}: {refused:?}"
            );
        }
        // Operator runs the parser may fold or balance: whatever the answer, the stack holds.
        for folded in [
            fill("!", "true"),
            fill("-", "1 == 1"),
            fill("claims.a || ", "true"),
            fill("1 + ", "1 == 2"),
            fill("true ? true : ", "false"),
        ] {
            let _ = Condition::compile(&folded);
        }
        // Grouping is no level: parentheses, and strings holding brackets, compile.
        let grouped = format!("{}true{}", "(".repeat(40), ")".repeat(40));
        assert!(Condition::compile(&grouped).is_ok());
        assert!(Condition::compile(r#"claims.a == "[[[[((((!!!!----""#).is_ok());
        let balanced = "(claims.a == 1 || claims.b == 2) && (claims.c == 3 || claims.d == 4)";
        assert!(Condition::compile(balanced).is_ok());
    }

    #[test]
    fn a_header_the_app_may_read_in_another_spelling_is_absent() {
        let condition = Condition::compile(r#"request.headers["x-tenant"] == "acme""#).unwrap();
        let decide = |pairs: &[(&str, &str)]| {
            let mut headers = http::HeaderMap::new();
            for (name, value) in pairs {
                headers.append(
                    http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    http::HeaderValue::from_str(value).unwrap(),
                );
            }
            let request = RequestFacts {
                method: "GET",
                path: "/",
                headers: &headers,
                source: None,
            };
            condition.evaluate(&claims(json!({})), &request)
        };
        assert_eq!(decide(&[("x-tenant", "acme")]), Ok(true));
        // CGI, WSGI, Rack and PHP read x_tenant as X-Tenant: the app might get "victim".
        assert!(decide(&[("x-tenant", "acme"), ("x_tenant", "victim")]).is_err());
        assert!(decide(&[("x_tenant", "acme")]).is_err());
    }

    #[test]
    fn headers_the_sidecar_rewrites_cannot_be_judged() {
        for name in [
            "x-forwarded-for",
            "x_forwarded_proto",
            "forwarded",
            "x-original-url",
            "te",
        ] {
            let expr = format!(r#"request.headers["{name}"] == "x""#);
            assert_eq!(
                Condition::compile(&expr).err(),
                Some(CompileError::RewrittenHeader(name.into())),
                "{name}"
            );
        }
        assert_eq!(
            Condition::compile(r#"request.headers["proxy_authorization"] != """#).err(),
            Some(CompileError::SecretHeader("proxy_authorization".into()))
        );
    }

    #[test]
    fn string_work_is_bounded_by_cost_and_claim_length() {
        let chain = format!("{} == \"\"", vec!["claims.s"; 80].join(" + "));
        assert!(matches!(
            Condition::compile(&chain).err(),
            Some(CompileError::TooCostly { .. } | CompileError::TooDeep)
        ));
        // Each `+` counts ADD_COST: a few of them are fine, eighty are not.
        let few = Condition::compile(r#"claims.a + claims.b + "x" == "abx""#).unwrap();
        assert!(few.cost() >= 2 * ADD_COST);
        let condition = Condition::compile(r#"claims.s.startsWith("a")"#).unwrap();
        let headers = http::HeaderMap::new();
        let request = RequestFacts {
            method: "GET",
            path: "/",
            headers: &headers,
            source: None,
        };
        let long = claims(json!({"s": "a".repeat(MAX_STRING_BYTES + 1)}));
        assert_eq!(
            condition.evaluate(&long, &request),
            Err(EvalError::InputTooLarge)
        );
        let fits = claims(json!({"s": "a".repeat(MAX_STRING_BYTES)}));
        assert_eq!(condition.evaluate(&fits, &request), Ok(true));
    }

    #[test]
    fn a_header_the_client_has_the_sidecar_drop_is_absent() {
        let condition = Condition::compile(r#"request.headers["x-tenant"] == "acme""#).unwrap();
        let mut headers = http::HeaderMap::new();
        headers.insert("x-tenant", http::HeaderValue::from_static("acme"));
        let request = |headers: &http::HeaderMap| {
            condition.evaluate(
                &claims(json!({})),
                &RequestFacts {
                    method: "GET",
                    path: "/",
                    headers,
                    source: None,
                },
            )
        };
        assert_eq!(request(&headers), Ok(true));
        for connection in ["x-tenant", "keep-alive, X-Tenant", "x_tenant"] {
            let mut dropped = headers.clone();
            dropped.insert("connection", http::HeaderValue::from_static(connection));
            assert!(request(&dropped).is_err(), "{connection}");
        }
        for name in ["host", "upgrade"] {
            let expr = format!(r#"request.headers["{name}"] == "x""#);
            assert_eq!(
                Condition::compile(&expr).err(),
                Some(CompileError::RewrittenHeader(name.into()))
            );
        }
    }
}

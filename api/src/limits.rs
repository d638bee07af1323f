//! Protections that run before anything executes: rate limits (per token,
//! per client address for anonymous callers, a stricter budget for sign-in
//! and registration, and failed sign-ins per email), and query limits
//! (depth, complexity weighted by page sizes, aliases, root fields, batch
//! size, query and variables size), plus automatic persisted queries.

use std::cell::Cell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, Hash};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_graphql::parser::types::{ExecutableDocument, Field, OperationType, Selection, SelectionSet};
use async_graphql::{Positioned, Value, Variables};
use async_graphql_value::ConstValue;

/// A rate: `per_second` sustained, bursts up to `burst`. Zero: unlimited.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// Requests per second, sustained.
    pub per_second: f64,
    /// Requests allowed at once after a quiet spell.
    pub burst: f64,
}

impl Rate {
    /// `count` requests per `period`, all of them allowed at once.
    pub fn per(count: u32, period: Duration) -> Rate {
        Rate { per_second: f64::from(count) / period.as_secs_f64(), burst: f64::from(count) }
    }

    /// No limit.
    pub fn unlimited() -> Rate {
        Rate { per_second: 0.0, burst: 0.0 }
    }

    fn is_unlimited(&self) -> bool {
        self.per_second <= 0.0
    }
}

/// Whole seconds to wait before a retry can pass: `wait` rounded up, at
/// least 1 (what a refusal's message and its Retry-After header both say).
pub fn retry_seconds(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// Most keys one limiter tracks; beyond, keys no longer limited are dropped.
const TRACKED_KEYS_MAX: usize = 100_000;
const SHARDS: usize = 16;

/// A GCRA (generic cell rate) limiter over many keys: each key has a
/// theoretical arrival time; a request is allowed while that time is at most
/// `burst` intervals ahead of now.
pub struct RateLimiter {
    rate: Rate,
    started: Instant,
    hasher: foldhash::quality::RandomState,
    shards: Vec<Mutex<HashMap<u64, f64>>>,
}

impl RateLimiter {
    /// A limiter allowing `rate` per key.
    pub fn new(rate: Rate) -> RateLimiter {
        RateLimiter {
            rate,
            started: Instant::now(),
            hasher: foldhash::quality::RandomState::default(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// Takes one request of `key`'s budget, or says how long to wait.
    pub fn check(&self, key: impl Hash) -> Result<(), Duration> {
        self.take(key, 1)
    }

    /// Takes `count` requests of `key`'s budget at once, or none of them
    /// and says how long to wait until all would pass.
    pub fn check_many(&self, key: impl Hash, count: u32) -> Result<(), Duration> {
        self.take(key, count)
    }

    /// Takes `count` requests of `key`'s budget at once, as `check_many`,
    /// but at most the whole burst: more than the burst (a batch under a
    /// low rate) passes once the budget is full, instead of never. Not for
    /// budgets that bound a cost per unit (sign-ins).
    pub fn check_up_to_burst(&self, key: impl Hash, count: u32) -> Result<(), Duration> {
        self.take(key, count.min(self.rate.burst.max(1.0) as u32))
    }

    /// How long `key` must wait before its next request would be allowed,
    /// without taking anything (for budgets spent only on failures).
    pub fn blocked(&self, key: impl Hash) -> Option<Duration> {
        self.take(key, 0).err()
    }

    /// Takes `count` requests (0: only looks whether one would pass).
    fn take(&self, key: impl Hash, count: u32) -> Result<(), Duration> {
        if self.rate.is_unlimited() {
            return Ok(());
        }
        let hash = self.hasher.hash_one(key);
        let now = self.started.elapsed().as_secs_f64();
        let interval = 1.0 / self.rate.per_second;
        let tolerance = interval * (self.rate.burst - 1.0).max(0.0);
        let mut shard = self.shards[(hash as usize) % SHARDS].lock().expect("rate limiter lock poisoned");
        if shard.len() >= TRACKED_KEYS_MAX / SHARDS {
            shard.retain(|_, arrival| *arrival > now);
        }
        let arrival = shard.get(&hash).copied().unwrap_or(now).max(now);
        // The last of `count` requests arrives (count - 1) intervals after
        // the first. (A billionth of an interval of slack: a full burst on
        // a full budget sits exactly at the tolerance, and rounding put it
        // past about one time in four.)
        let last = arrival + interval * f64::from(count.saturating_sub(1));
        if last - now > tolerance + interval * 1e-9 {
            return Err(Duration::from_secs_f64(last - now - tolerance));
        }
        if count > 0 {
            shard.insert(hash, last + interval);
        }
        Ok(())
    }
}

/// Query limits, checked before execution.
#[derive(Clone, Debug)]
pub struct QueryLimits {
    /// Deepest field nesting (introspection fields are not counted).
    pub depth_max: usize,
    /// Most fields, list fields weighted by their page size.
    pub complexity_max: u64,
    /// Most aliased fields in one operation.
    pub aliases_max: usize,
    /// Most root fields in one operation.
    pub root_fields_max: usize,
    /// Most operations in one batch (a JSON array).
    pub batch_max: usize,
    /// Longest query text, bytes.
    pub query_bytes_max: usize,
    /// Largest variables object, bytes of JSON.
    pub variables_bytes_max: usize,
}

impl Default for QueryLimits {
    fn default() -> QueryLimits {
        QueryLimits {
            depth_max: 12,
            complexity_max: 100_000,
            aliases_max: 30,
            root_fields_max: 20,
            batch_max: 10,
            query_bytes_max: 16 * 1024,
            variables_bytes_max: 64 * 1024,
        }
    }
}

/// What the analysis of an operation found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cost {
    /// Deepest nesting.
    pub depth: usize,
    /// Weighted field count.
    pub complexity: u64,
    /// Aliased fields.
    pub aliases: usize,
    /// Root fields.
    pub root_fields: usize,
    /// The operation's type: a mutation.
    pub mutation: bool,
    /// The operation's type: a subscription.
    pub subscription: bool,
    /// Root fields by name (to find sign-in and registration).
    pub root_names: Vec<String>,
    /// The operation's name, when it has one.
    pub operation_name: Option<String>,
    /// Whether a variable gave a page size: then the measure holds for
    /// these variables only, otherwise for any request of the operation.
    pub reads_variables: bool,
}

/// Page sizes of list fields: (field, argument holding the page size,
/// its default or the list's most entries).
const LIST_WEIGHTS: &[(&str, Option<&str>, u64)] = &[
    ("events", Some("first"), 20),
    ("myEvents", Some("first"), 20),
    ("friendsGoing", Some("first"), 20),
    ("whosGoing", Some("first"), 20),
    ("recommendedEvents", Some("first"), 10),
    ("notifications", Some("first"), 20),
    ("webhookDeliveries", Some("first"), 20),
    ("myBookings", None, 100),
    ("ticketTypes", None, 50),
    ("byTicketType", None, 50),
    ("tickets", None, 50),
    ("salesOverTime", None, 100),
    ("webhooks", None, 20),
];

/// The largest page size any field accepts.
const PAGE_SIZE_MAX: u64 = 100;

/// Why a request was refused before execution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TooComplex(pub String);

/// Measures the operation a request would run.
pub fn analyze(
    document: &ExecutableDocument,
    operation_name: Option<&str>,
    variables: &Variables,
) -> Result<Cost, TooComplex> {
    let operation = match operation_name {
        Some(name) => document.operations.iter().find(|(n, _)| n.is_some_and(|n| n.as_str() == name)),
        None => document.operations.iter().next(),
    };
    // An unknown or missing operation is for validation to report.
    let Some((name, operation)) = operation else { return Ok(Cost::default()) };
    let mut walker = Walker {
        document,
        variables,
        aliases: 0,
        measured: 0,
        visiting: HashSet::new(),
        read_variables: Cell::new(false),
    };
    let root = walker.fields(&operation.node.selection_set)?;
    let mut cost = Cost {
        mutation: operation.node.ty == OperationType::Mutation,
        subscription: operation.node.ty == OperationType::Subscription,
        root_fields: root.len(),
        root_names: root.iter().map(|f| f.node.name.node.to_string()).collect(),
        operation_name: name.map(|n| n.to_string()),
        ..Cost::default()
    };
    for field in &root {
        let (depth, complexity) = walker.measure(field, 1)?;
        cost.depth = cost.depth.max(depth);
        cost.complexity = cost.complexity.saturating_add(complexity);
    }
    cost.aliases = walker.aliases;
    cost.reads_variables = walker.read_variables.get();
    Ok(cost)
}

/// Deepest nesting of braces, brackets and parentheses a query's text may
/// have. A list or object literal nested some 1,700 deep (3.5 KB, well
/// under the text's size limit) overflowed a request thread's stack after
/// parsing and aborted the server; the depth limit counts selections only.
/// The deepest honest query, an introspection of nested types, nests about
/// 15.
pub const NESTING_MAX: usize = 64;

/// Refuses a query text nested deeper than [`NESTING_MAX`], by a scan of
/// its characters (strings, block strings and comments skipped), before
/// anything recursive sees it.
pub fn check_nesting(query: &str) -> Result<(), TooComplex> {
    let bytes = query.as_bytes();
    let (mut depth, mut at) = (0usize, 0usize);
    while at < bytes.len() {
        match bytes[at] {
            b'#' => {
                while at < bytes.len() && bytes[at] != b'\n' && bytes[at] != b'\r' {
                    at += 1;
                }
            }
            b'"' if bytes[at..].starts_with(b"\"\"\"") => {
                at += 3;
                while at < bytes.len() && !bytes[at..].starts_with(b"\"\"\"") {
                    at += if bytes[at..].starts_with(b"\\\"\"\"") { 4 } else { 1 };
                }
                at += 2;
            }
            b'"' => {
                at += 1;
                while at < bytes.len() && bytes[at] != b'"' {
                    at += if bytes[at] == b'\\' { 2 } else { 1 };
                }
            }
            b'{' | b'[' | b'(' => {
                depth += 1;
                if depth > NESTING_MAX {
                    return Err(TooComplex(format!("the query nests more than {NESTING_MAX} levels deep")));
                }
            }
            b'}' | b']' | b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
        at += 1;
    }
    Ok(())
}

/// Parsed queries by their text: clients send the same few queries over and
/// over with other variables, and parsing is the costliest step of a small
/// request. Bounded; the oldest go first.
///
/// Each keeps the measures of its operations that no variable changes, so
/// a known operation is not measured again (about 1,800 instructions of a
/// booking's 126,000).
pub struct ParsedQueries {
    /// Documents by text.
    inner: Mutex<Bounded<Arc<str>, Parsed>>,
}

/// A parsed query and the measures that hold for any of its requests.
struct Parsed {
    document: Arc<ExecutableDocument>,
    /// By operation name (`None`: the request named none).
    costs: Vec<(Option<String>, Arc<Cost>)>,
}

/// Measures kept per document, at most (a document holds few operations;
/// a client naming ever new ones that do not exist gets no more).
const COSTS_PER_DOCUMENT_MAX: usize = 8;

/// A map of at most a given number of entries: adding one more drops the
/// oldest.
pub(crate) struct Bounded<K, V> {
    entries_max: usize,
    entries: HashMap<K, V>,
    /// The keys, oldest first.
    order: VecDeque<K>,
}

impl<K: Hash + Eq + Clone, V> Bounded<K, V> {
    pub(crate) fn new(entries_max: usize) -> Bounded<K, V> {
        Bounded { entries_max, entries: HashMap::new(), order: VecDeque::new() }
    }

    pub(crate) fn get<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: std::borrow::Borrow<Q>,
    {
        self.entries.get(key)
    }

    pub(crate) fn get_mut<Q: Hash + Eq + ?Sized>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: std::borrow::Borrow<Q>,
    {
        self.entries.get_mut(key)
    }

    /// Adds an entry unless `key` has one.
    pub(crate) fn insert(&mut self, key: K, value: V) {
        if self.entries.contains_key(&key) {
            return;
        }
        if self.entries.len() >= self.entries_max {
            if let Some(oldest) = self.order.pop_front() {
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(key.clone(), value);
        self.order.push_back(key);
    }
}

impl ParsedQueries {
    /// A cache of up to `entries_max` parsed queries.
    pub fn new(entries_max: usize) -> ParsedQueries {
        ParsedQueries { inner: Mutex::new(Bounded::new(entries_max)) }
    }

    /// Gives `request` its parsed query from the cache, or parses it and
    /// keeps the result (queries that do not parse are not kept). Returns
    /// the measure of the request's operation when one is kept (see
    /// [`ParsedQueries::remember`]).
    ///
    /// A text nested deeper than [`NESTING_MAX`] is refused before it is
    /// parsed.
    pub fn attach(&self, request: &mut async_graphql::Request) -> Result<Option<Arc<Cost>>, TooComplex> {
        if let Some(parsed) = self.inner.lock().expect("parsed queries lock poisoned").get(request.query.as_str()) {
            request.set_parsed_query(ExecutableDocument::clone(&parsed.document));
            let name = request.operation_name.as_deref();
            return Ok(parsed.costs.iter().find(|(n, _)| n.as_deref() == name).map(|(_, cost)| cost.clone()));
        }
        check_nesting(&request.query)?;
        let Ok(document) = request.parsed_query() else { return Ok(None) };
        let parsed = Parsed { document: Arc::new(document.clone()), costs: Vec::new() };
        let text: Arc<str> = request.query.as_str().into();
        self.inner.lock().expect("parsed queries lock poisoned").insert(text, parsed);
        Ok(None)
    }

    /// The parsed document of `query`, if it is kept.
    pub fn document(&self, query: &str) -> Option<Arc<ExecutableDocument>> {
        self.inner.lock().expect("parsed queries lock poisoned").get(query).map(|parsed| parsed.document.clone())
    }

    /// Keeps `cost`, measured on `request`, for the next requests of its
    /// document and operation, unless a variable went into it.
    pub fn remember(&self, request: &async_graphql::Request, cost: &Arc<Cost>) {
        if cost.reads_variables {
            return;
        }
        let mut inner = self.inner.lock().expect("parsed queries lock poisoned");
        let Some(parsed) = inner.get_mut(request.query.as_str()) else { return };
        let name = request.operation_name.as_deref();
        if parsed.costs.len() < COSTS_PER_DOCUMENT_MAX && !parsed.costs.iter().any(|(n, _)| n.as_deref() == name) {
            parsed.costs.push((request.operation_name.clone(), cost.clone()));
        }
    }
}

/// Checks one request before it runs: query text and variables within
/// their bounds, then its operation measured (unless `known` is its
/// measure, from [`ParsedQueries::attach`]) and checked. A query that does
/// not parse passes (execution reports the syntax error with its position).
pub fn inspect(
    request: &mut async_graphql::Request,
    limits: &QueryLimits,
    known: Option<Arc<Cost>>,
) -> Result<Option<Arc<Cost>>, TooComplex> {
    if request.query.len() > limits.query_bytes_max {
        let why =
            format!("the query is {} bytes, more than the {} allowed", request.query.len(), limits.query_bytes_max);
        return Err(TooComplex(why));
    }
    if let Some(variables) = variables_over(&request.variables, limits.variables_bytes_max) {
        let why = format!("the variables are {variables} bytes, more than the {} allowed", limits.variables_bytes_max);
        return Err(TooComplex(why));
    }
    let cost = match known {
        Some(cost) => cost,
        None => {
            check_nesting(&request.query)?;
            let operation_name = request.operation_name.clone();
            // Out of the request while its document is borrowed, and back after.
            let variables = std::mem::take(&mut request.variables);
            let cost =
                request.parsed_query().ok().map(|document| analyze(document, operation_name.as_deref(), &variables));
            request.variables = variables;
            let Some(cost) = cost.transpose()? else { return Ok(None) };
            Arc::new(cost)
        }
    };
    check(&cost, limits)?;
    Ok(Some(cost))
}

/// The size of `variables` as JSON when it is more than `max` bytes.
///
/// Writing them out to count (about 1,300 instructions for a booking's
/// input) is needed only when a cheap upper bound is over `max`: the bound
/// never undercounts, so a request under it is under `max` too.
fn variables_over(variables: &Variables, max: usize) -> Option<usize> {
    if object_bytes_at_most(variables.iter()) <= max {
        return None;
    }
    let exact = json_bytes(&**variables);
    (exact > max).then_some(exact)
}

/// An upper bound of the bytes serde_json writes for `value`, with its
/// separators (a comma after every item, where JSON has one fewer).
fn json_bytes_at_most(value: &ConstValue) -> usize {
    match value {
        ConstValue::Null => 4,
        ConstValue::Boolean(_) => 5,
        ConstValue::String(text) => quoted_at_most(text),
        ConstValue::Enum(name) => quoted_at_most(name),
        ConstValue::List(items) => {
            items.iter().fold(2usize, |bytes, item| bytes.saturating_add(json_bytes_at_most(item)).saturating_add(1))
        }
        ConstValue::Object(fields) => object_bytes_at_most(fields.iter()),
        // A number's length depends on its digits: written out (itoa or
        // ryu, a few dozen instructions); bytes never come from JSON.
        ConstValue::Number(_) | ConstValue::Binary(_) => json_bytes(value),
    }
}

/// An upper bound of a JSON object's bytes: its braces, and per field its
/// quoted name, a colon, its value and a comma.
fn object_bytes_at_most<'a>(fields: impl Iterator<Item = (&'a async_graphql::Name, &'a ConstValue)>) -> usize {
    fields.fold(2usize, |bytes, (name, value)| {
        bytes.saturating_add(quoted_at_most(name)).saturating_add(2).saturating_add(json_bytes_at_most(value))
    })
}

/// An upper bound of a quoted JSON string's bytes: the quotes, and each
/// byte at most six (a control character as `\u00XX`; other characters
/// are written as they are, or escaped in two).
fn quoted_at_most(text: &str) -> usize {
    text.len().saturating_mul(6).saturating_add(2)
}

/// The bytes serde_json writes for `value` (`usize::MAX` if it cannot).
fn json_bytes<T: serde::Serialize + ?Sized>(value: &T) -> usize {
    let mut size = JsonSize(0);
    match serde_json::to_writer(&mut size, value) {
        Ok(()) => size.0,
        Err(_) => usize::MAX,
    }
}

/// Counts the bytes of JSON written to it, keeping none.
struct JsonSize(usize);

impl std::io::Write for JsonSize {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0 += bytes.len();
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Checks a measured operation against the limits.
pub fn check(cost: &Cost, limits: &QueryLimits) -> Result<(), TooComplex> {
    let over = |what: &str, value: u64, max: u64| TooComplex(format!("{what} is {value}, more than the {max} allowed"));
    if cost.depth > limits.depth_max {
        return Err(over("query depth", cost.depth as u64, limits.depth_max as u64));
    }
    if cost.complexity > limits.complexity_max {
        return Err(over("query complexity", cost.complexity, limits.complexity_max));
    }
    if cost.aliases > limits.aliases_max {
        return Err(over("the number of aliases", cost.aliases as u64, limits.aliases_max as u64));
    }
    if cost.root_fields > limits.root_fields_max {
        return Err(over("the number of root fields", cost.root_fields as u64, limits.root_fields_max as u64));
    }
    Ok(())
}

/// Introspection's list fields, and what each weighs in the complexity (a
/// nominal length: this schema's lists of types and fields are tens long).
const INTROSPECTION_LISTS: &[&str] =
    &["types", "fields", "args", "inputFields", "interfaces", "possibleTypes", "enumValues", "directives"];
const INTROSPECTION_LIST_WEIGHT: u64 = 10;

/// Most fields one selection may expand to (fragments included), so that
/// even measuring a hostile query stays cheap.
const EXPANDED_FIELDS_MAX: usize = 10_000;
/// Deepest nesting measured at all (above any configurable depth limit): a
/// fragment that spreads itself inside a field would otherwise recurse
/// without end.
const MEASURED_DEPTH_MAX: usize = 128;
/// Most fields measured in one operation, whatever the nesting.
const MEASURED_FIELDS_MAX: usize = 200_000;

struct Walker<'a> {
    document: &'a ExecutableDocument,
    variables: &'a Variables,
    aliases: usize,
    /// Fields measured so far.
    measured: usize,
    /// Fragments being expanded (a cycle is refused, not followed).
    visiting: HashSet<&'a str>,
    /// Whether a variable gave a page size.
    read_variables: Cell<bool>,
}

impl<'a> Walker<'a> {
    /// The fields of a selection set with fragments expanded.
    fn fields(&mut self, set: &'a Positioned<SelectionSet>) -> Result<Vec<&'a Positioned<Field>>, TooComplex> {
        let mut fields = Vec::new();
        self.collect(set, &mut fields)?;
        Ok(fields)
    }

    fn collect(
        &mut self,
        set: &'a Positioned<SelectionSet>,
        out: &mut Vec<&'a Positioned<Field>>,
    ) -> Result<(), TooComplex> {
        for selection in &set.node.items {
            if out.len() > EXPANDED_FIELDS_MAX {
                return Err(TooComplex(format!("the query expands to more than {EXPANDED_FIELDS_MAX} fields")));
            }
            match &selection.node {
                Selection::Field(field) => {
                    if field.node.alias.is_some() {
                        self.aliases += 1;
                    }
                    out.push(field);
                }
                Selection::InlineFragment(fragment) => self.collect(&fragment.node.selection_set, out)?,
                Selection::FragmentSpread(spread) => {
                    let name = spread.node.fragment_name.node.as_str();
                    let Some(fragment) = self.document.fragments.get(&spread.node.fragment_name.node) else { continue };
                    if !self.visiting.insert(name) {
                        return Err(TooComplex(format!("fragment {name} spreads itself")));
                    }
                    self.collect(&fragment.node.selection_set, out)?;
                    self.visiting.remove(name);
                }
            }
        }
        Ok(())
    }

    /// (depth, complexity) of a field and everything below it.
    fn measure(&mut self, field: &'a Positioned<Field>, depth: usize) -> Result<(usize, u64), TooComplex> {
        let name = field.node.name.node.as_str();
        if name == "__typename" {
            return Ok((0, 1));
        }
        if name.starts_with("__") {
            return Ok((0, self.measure_introspection(field, depth)?));
        }
        self.count_measured(depth)?;
        let mut deepest = depth;
        let mut below: u64 = 0;
        for child in self.fields(&field.node.selection_set)? {
            let (child_depth, child_cost) = self.measure(child, depth + 1)?;
            deepest = deepest.max(child_depth);
            below = below.saturating_add(child_cost);
        }
        let weight = self.weight(&field.node);
        Ok((deepest, 1u64.saturating_add(below.saturating_mul(weight))))
    }

    /// Counts one more field measured at `depth`, within what is measured
    /// at all.
    fn count_measured(&mut self, depth: usize) -> Result<(), TooComplex> {
        self.measured += 1;
        if depth > MEASURED_DEPTH_MAX {
            return Err(TooComplex(format!("the query nests deeper than {MEASURED_DEPTH_MAX} levels")));
        }
        if self.measured > MEASURED_FIELDS_MAX {
            return Err(TooComplex(format!("the query expands to more than {MEASURED_FIELDS_MAX} fields")));
        }
        Ok(())
    }

    /// The complexity of an introspection field (`__schema`, `__type`) and
    /// everything below it: each field 1, each list of the schema's types,
    /// fields, arguments and the like weighing [`INTROSPECTION_LIST_WEIGHT`].
    /// Not counted in the depth (graphql-js' introspection query nests type
    /// references 9 deep), but in the complexity, so that fragments nesting
    /// lists in lists (a 2 KB query asking for 18 MB) are refused;
    /// graphql-js' query weighs about 49,400 (51,900 with every option).
    fn measure_introspection(&mut self, field: &'a Positioned<Field>, depth: usize) -> Result<u64, TooComplex> {
        self.count_measured(depth)?;
        let mut below: u64 = 0;
        for child in self.fields(&field.node.selection_set)? {
            below = below.saturating_add(self.measure_introspection(child, depth + 1)?);
        }
        let name = field.node.name.node.as_str();
        let weight = if INTROSPECTION_LISTS.contains(&name) { INTROSPECTION_LIST_WEIGHT } else { 1 };
        Ok(1u64.saturating_add(below.saturating_mul(weight)))
    }

    /// How many times a field's selection may repeat.
    fn weight(&self, field: &Field) -> u64 {
        let name = field.name.node.as_str();
        let Some(&(_, argument, default)) = LIST_WEIGHTS.iter().find(|(n, _, _)| *n == name) else { return 1 };
        let Some(argument) = argument else { return default };
        let given = field.arguments.iter().find(|(n, _)| n.node.as_str() == argument).map(|(_, v)| &v.node);
        let value = given.and_then(|v| {
            v.clone()
                .into_const_with(|name| {
                    self.read_variables.set(true);
                    self.variables.get(&name).cloned().ok_or(())
                })
                .ok()
        });
        // A page size beyond the API's maximum is refused by the field
        // itself with a clearer message; here it weighs as the maximum.
        match value {
            Some(Value::Number(n)) => n.as_u64().unwrap_or(default).clamp(1, PAGE_SIZE_MAX),
            _ => default,
        }
    }
}

/// Automatic persisted queries: a client sends a query's SHA-256 instead of
/// its text once the server has seen the text. Bounded; the oldest go first.
pub struct PersistedQueries {
    /// Texts by hash.
    inner: Mutex<Bounded<String, Arc<str>>>,
}

impl PersistedQueries {
    /// A cache of up to `entries_max` queries.
    pub fn new(entries_max: usize) -> PersistedQueries {
        PersistedQueries { inner: Mutex::new(Bounded::new(entries_max)) }
    }

    /// The query stored under `hash`.
    pub fn get(&self, hash: &str) -> Option<Arc<str>> {
        self.inner.lock().expect("persisted queries lock poisoned").get(hash).cloned()
    }

    /// Stores `query` under its hash.
    pub fn put(&self, hash: String, query: &str) {
        self.inner.lock().expect("persisted queries lock poisoned").insert(hash, query.into());
    }
}

/// Lower-case hex SHA-256 of a query text.
pub fn query_hash(query: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(query.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cost(query: &str, variables: serde_json::Value) -> Result<Cost, TooComplex> {
        let document = async_graphql::parser::parse_query(query).unwrap();
        analyze(&document, None, &Variables::from_json(variables))
    }

    /// The variables' size is their JSON's; the request keeps its
    /// variables whatever the outcome.
    #[test]
    fn inspect_measures_the_variables_and_leaves_them_in_the_request() {
        let limits = QueryLimits::default();
        let query = "query($n: Int, $s: String) { events(first: $n) { nodes { id } } me { name } }";
        let small = serde_json::json!({"n": 3, "s": "é\"x"});
        let mut request = async_graphql::Request::new(query).variables(Variables::from_json(small.clone()));
        let found = inspect(&mut request, &limits, None).unwrap().expect("the query parses");
        assert_eq!(found.complexity, 1 + 3 * 2 + 2);
        assert_eq!(request.variables, Variables::from_json(small));

        let text = "x".repeat(limits.variables_bytes_max);
        let large = Variables::from_json(serde_json::json!({ "s": text }));
        let size = serde_json::to_vec(&large).unwrap().len();
        let mut request = async_graphql::Request::new(query).variables(large.clone());
        let TooComplex(why) = inspect(&mut request, &limits, None).unwrap_err();
        assert!(why.starts_with(&format!("the variables are {size} bytes")), "{why}");
        assert_eq!(request.variables, large);

        let mut broken =
            async_graphql::Request::new("{ me {").variables(Variables::from_json(serde_json::json!({"n": 1})));
        assert!(inspect(&mut broken, &limits, None).unwrap().is_none());
        assert_eq!(broken.variables, Variables::from_json(serde_json::json!({"n": 1})));
    }

    /// The cheap bound of the variables' size never counts fewer bytes than
    /// serde_json writes, so the check refuses exactly what writing them
    /// out would refuse.
    #[test]
    fn the_variables_bound_never_undercounts() {
        let samples = [
            serde_json::json!({}),
            serde_json::json!({"a": null, "b": true, "c": false}),
            serde_json::json!({"s": "plain", "q": "\"quoted\" \\ back", "u": "é ü 🎟 日本"}),
            serde_json::json!({"control": "\u{0}\u{1}\u{1f}\n\t\r\u{8}\u{c}\u{7f}"}),
            serde_json::json!({"n": [0, -1, 18446744073709551615u64, -9223372036854775808i64, 1.5, -2.2250738585072014e-308, 1e300]}),
            serde_json::json!({"input": {"ticketTypeId": "12", "quantity": 1, "hold": false, "idempotencyKey": "k-1-000000000042"}}),
            serde_json::json!({"deep": [[[], {}], {"x": [{"y": []}]}], "empty": "", "\u{1}key\"": 1}),
        ];
        let mut variables: Vec<Variables> = samples.into_iter().map(Variables::from_json).collect();
        let mut with_enum = Variables::default();
        with_enum.insert(async_graphql::Name::new("role"), ConstValue::Enum(async_graphql::Name::new("ORGANIZER")));
        with_enum.insert(async_graphql::Name::new("bytes"), ConstValue::Binary(vec![0u8, 7, 255].into()));
        variables.push(with_enum);
        for variables in &variables {
            let exact = serde_json::to_vec(variables).unwrap().len();
            for max in exact.saturating_sub(3)..exact + 3 {
                let over = variables_over(variables, max);
                assert_eq!(over, (exact > max).then_some(exact), "{variables:?} with max {max}");
            }
        }
    }

    /// A measure that no variable changes is kept with the parsed query
    /// and served for its operation again, one per operation name; one that
    /// a variable gave a page size to is measured on every request; and a
    /// kept measure is still held to the limits.
    #[test]
    fn nesting_is_counted_outside_strings_and_comments() {
        let nested =
            |depth: usize| format!("{{ __type(name: {}1{}) {{ name }} }}", "[".repeat(depth), "]".repeat(depth));
        assert!(check_nesting(&nested(NESTING_MAX - 3)).is_ok());
        let refused = check_nesting(&nested(2_000)).unwrap_err();
        assert!(refused.0.contains("nests more than 64 levels"), "{}", refused.0);
        assert!(check_nesting(&format!("{{ a(b: {{c: {}1{}}}) }}", "{c: ".repeat(100), "}".repeat(100))).is_err());
        // Brackets in strings, block strings and comments do not count.
        let quiet = "[".repeat(500);
        for text in [
            format!("{{ a(s: \"{quiet}\") }}"),
            format!("{{ a(s: \"\\\"{quiet}\") }}"),
            format!("{{ a(s: \"\"\"{quiet} \\\"\"\" {quiet}\"\"\") }}"),
            format!("# {quiet}\n{{ a }}"),
        ] {
            assert!(check_nesting(&text).is_ok(), "{text}");
        }
        // Honest deep queries pass: selections twelve deep with arguments.
        let deep = format!("{}{}", "{ a(x: [{y: 1}]) ".repeat(12), "}".repeat(12));
        assert!(check_nesting(&deep).is_ok());
    }

    #[test]
    fn a_measure_no_variable_changes_is_kept_per_operation() {
        let limits = QueryLimits::default();
        let parsed = ParsedQueries::new(16);
        let query = "query Fixed { events(first: 5) { nodes { id } } } \
                     query Paged($n: Int) { events(first: $n) { nodes { id } } } \
                     query Deep { me { id } }";
        let request = |operation: &str, n: u64| {
            async_graphql::Request::new(query)
                .operation_name(operation)
                .variables(Variables::from_json(serde_json::json!({ "n": n })))
        };
        let run = |operation: &str, n: u64, limits: &QueryLimits| {
            let mut request = request(operation, n);
            let known = parsed.attach(&mut request)?;
            let was_known = known.is_some();
            let cost = inspect(&mut request, limits, known)?.expect("the query parses");
            if !was_known {
                parsed.remember(&request, &cost);
            }
            Ok::<_, TooComplex>((cost, was_known))
        };

        let (first, was_known) = run("Fixed", 1, &limits).unwrap();
        assert!(!was_known && !first.reads_variables);
        assert_eq!(first.complexity, 1 + 5 * 2);
        let (again, was_known) = run("Fixed", 2, &limits).unwrap();
        assert!(was_known, "measured once, then kept");
        assert!(Arc::ptr_eq(&first, &again));

        let (paged, was_known) = run("Paged", 3, &limits).unwrap();
        assert!(!was_known && paged.reads_variables);
        assert_eq!(paged.complexity, 1 + 3 * 2);
        let (paged, was_known) = run("Paged", 7, &limits).unwrap();
        assert!(!was_known, "a page size from a variable is measured each time");
        assert_eq!(paged.complexity, 1 + 7 * 2);

        let (deep, was_known) = run("Deep", 0, &limits).unwrap();
        assert!(!was_known && deep.depth == 2, "another operation of the same query has its own measure");
        assert!(run("Deep", 0, &limits).unwrap().1);
        let strict = QueryLimits { depth_max: 1, ..QueryLimits::default() };
        let TooComplex(why) = run("Deep", 0, &strict).unwrap_err();
        assert!(why.starts_with("query depth is 2"), "{why}");
    }

    #[test]
    fn depth_aliases_and_root_fields_are_counted() {
        let found =
            cost("{ a: me { id } b: me { id } events { nodes { organizer { name } } } }", serde_json::json!({}))
                .unwrap();
        assert_eq!(found.aliases, 2);
        assert_eq!(found.root_fields, 3);
        assert_eq!(found.depth, 4);
        assert!(!found.mutation);
    }

    #[test]
    fn page_sizes_weigh_on_complexity() {
        let small = cost("{ events(first: 1) { nodes { id } } }", serde_json::json!({})).unwrap();
        let large =
            cost("query($n: Int) { events(first: $n) { nodes { id } } }", serde_json::json!({"n": 100})).unwrap();
        assert_eq!(small.complexity, 1 + 1 + 1);
        assert_eq!(large.complexity, 1 + 100 * 2);
    }

    #[test]
    fn fragments_are_expanded_and_cycles_refused() {
        let spread = cost("{ ...F } fragment F on Query { a: me { id } b: me { id } }", serde_json::json!({})).unwrap();
        assert_eq!((spread.root_fields, spread.aliases), (2, 2));
        let cyclic = cost("{ ...A } fragment A on Query { ...B } fragment B on Query { ...A }", serde_json::json!({}));
        assert!(cyclic.is_err());
    }

    /// Found by fuzzing (api/fuzz, graphql_request): a fragment spreading
    /// itself inside a field recursed until the stack overflowed.
    #[test]
    fn regression_fragment_spreading_itself_inside_a_field_is_refused() {
        let nested = cost("{ ...F } fragment F on Query { me { ...F } }", serde_json::json!({}));
        assert!(nested.is_err());
        let doubling = cost("{ ...F } fragment F on Query { a: me { ...F } b: me { ...F } }", serde_json::json!({}));
        assert!(doubling.is_err(), "an exponential expansion is cut off too");
    }

    #[test]
    fn introspection_is_not_counted_against_depth() {
        let query = "{ __schema { types { fields { type { ofType { ofType { ofType { ofType { ofType { ofType { name } } } } } } } } } } }";
        let found = cost(query, serde_json::json!({})).unwrap();
        assert!(check(&found, &QueryLimits::default()).is_ok());
    }

    /// graphql-js' `getIntrospectionQuery()` (v16) with every option on, as
    /// IDEs and code generators send it.
    const STANDARD_INTROSPECTION: &str = "query IntrospectionQuery { __schema { description queryType { name }
        mutationType { name } subscriptionType { name } types { ...FullType }
        directives { name description isRepeatable locations args(includeDeprecated: true) { ...InputValue } } } }
      fragment FullType on __Type { kind name description specifiedByURL
        fields(includeDeprecated: true) { name description args(includeDeprecated: true) { ...InputValue }
          type { ...TypeRef } isDeprecated deprecationReason }
        inputFields(includeDeprecated: true) { ...InputValue } interfaces { ...TypeRef }
        enumValues(includeDeprecated: true) { name description isDeprecated deprecationReason } possibleTypes { ...TypeRef } }
      fragment InputValue on __InputValue { name description type { ...TypeRef } defaultValue isDeprecated deprecationReason }
      fragment TypeRef on __Type { kind name ofType { kind name ofType { kind name ofType { kind name ofType { kind name
        ofType { kind name ofType { kind name ofType { kind name ofType { kind name ofType { kind name } } } } } } } } } }";

    #[test]
    fn introspection_weighs_in_the_complexity_but_the_standard_query_passes() {
        let standard = cost(STANDARD_INTROSPECTION, serde_json::json!({})).unwrap();
        assert!(check(&standard, &QueryLimits::default()).is_ok(), "{standard:?}");
        assert!((40_000..60_000).contains(&standard.complexity), "{}", standard.complexity);
        // Lists of types nested in fragments: 2 KB of query that asked for
        // 18 MB of answer.
        let mut bomb = String::from("fragment F0 on __Type { name kind description }");
        for level in 1..=4 {
            let below = level - 1;
            bomb.push_str(&format!(
                " fragment F{level} on __Type {{ name fields {{ name type {{ ...F{below} }} args {{ name type {{ ...F{below} }} }} }} \
                 inputFields {{ name type {{ ...F{below} }} }} possibleTypes {{ ...F{below} }} interfaces {{ ...F{below} }} }}"
            ));
        }
        let roots: String = (0..19).map(|n| format!(" a{n}: __schema {{ types {{ ...F4 }} }}")).collect();
        let bomb = format!("{{{roots} }} {bomb}");
        let measured = cost(&bomb, serde_json::json!({})).unwrap();
        let TooComplex(why) = check(&measured, &QueryLimits::default()).unwrap_err();
        assert!(why.contains("complexity"), "{why}");
        // One type's fields, their types' fields and so on, five lists
        // deep, weigh what they would answer too.
        let nested = "{ __type(name: \"Query\") { fields { type { fields { type { fields { type { fields { type { fields { name } } } } } } } } } } }";
        assert!(check(&cost(nested, serde_json::json!({})).unwrap(), &QueryLimits::default()).is_err());
    }

    #[test]
    fn limiter_allows_a_burst_then_refuses_until_time_passes() {
        let limiter = RateLimiter::new(Rate { per_second: 10.0, burst: 3.0 });
        for _ in 0..3 {
            assert!(limiter.check("a").is_ok());
        }
        let wait = limiter.check("a").unwrap_err();
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        assert!(limiter.check("b").is_ok(), "keys are separate");
        std::thread::sleep(wait + Duration::from_millis(5));
        assert!(limiter.check("a").is_ok());
        assert!(RateLimiter::new(Rate::unlimited()).check("a").is_ok());
        let failures = RateLimiter::new(Rate::per(2, Duration::from_secs(60)));
        assert_eq!(failures.blocked("x"), None, "looking takes nothing");
        assert_eq!(failures.blocked("x"), None);
        failures.check("x").unwrap();
        failures.check("x").unwrap();
        assert!(failures.blocked("x").is_some());
    }

    /// A full burst at once on a full budget passes, every time (rounding
    /// refused it about one time in four); more than the burst at once is
    /// charged the burst, so it passes once the budget is full again
    /// instead of never.
    #[test]
    fn a_full_burst_passes_and_a_bigger_one_waits_for_a_full_budget() {
        for (per_second, burst) in [(5.0, 10u32), (10.0, 20), (50.0, 100), (3.0, 7)] {
            let limiter = RateLimiter::new(Rate { per_second, burst: f64::from(burst) });
            for key in 0..2_000 {
                assert!(limiter.check_many(key, burst).is_ok(), "{per_second}/s, burst {burst}, key {key}");
            }
        }
        let limiter = RateLimiter::new(Rate { per_second: 100.0, burst: 4.0 });
        assert!(limiter.check_many("strict", 9).is_err(), "a budget per unit (sign-ins) never takes more at once");
        assert!(limiter.check_up_to_burst("a", 9).is_ok(), "more than the burst, on a full budget");
        let wait = limiter.check_up_to_burst("a", 9).unwrap_err();
        assert!(wait <= Duration::from_millis(40), "waits for the whole burst back: {wait:?}");
        std::thread::sleep(wait + Duration::from_millis(5));
        assert!(limiter.check_up_to_burst("a", 9).is_ok(), "and then passes");
    }

    #[test]
    fn persisted_queries_are_bounded() {
        let cache = PersistedQueries::new(2);
        for query in ["{ a }", "{ b }", "{ c }"] {
            cache.put(query_hash(query), query);
        }
        assert!(cache.get(&query_hash("{ a }")).is_none(), "the oldest went first");
        assert_eq!(cache.get(&query_hash("{ c }")).as_deref(), Some("{ c }"));
    }
}

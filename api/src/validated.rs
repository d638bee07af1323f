//! Operations known to be valid. Clients send the same few documents over
//! and over with other variables, and GraphQL validation was among the
//! costliest steps of a small request (about a seventh of a booking's
//! request thread, second only to the kernel's TCP send).
//! A query text and operation name that passed the full validation once
//! run next time on a second schema built with async-graphql's
//! `ValidationMode::Fast` (which checks only fragment cycles, complexity
//! and depth), as long as the request's variables hold values that its
//! arguments accept.
//!
//! Which rules look at the variables: only the check of argument values
//! (every argument that uses a variable, in the operation that runs and in
//! every fragment). Everything else depends on the document and the schema
//! alone. So an entry keeps each such argument with the type it expects,
//! and a request is run as known only when every argument, filled in with
//! its variables, is a value of that type, decided as the validator decides
//! it. Any other request runs on the fully validating schema, which reports
//! the error with its usual message.
//!
//! (An async-graphql extension could skip the rules on one schema, but
//! with any extension installed every field of every response goes through
//! the extension chain: a 50-event listing got 40% dearer.)

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_graphql::parser::types::{Directive, ExecutableDocument, OperationType, Selection, SelectionSet};
use async_graphql::registry::{MetaType, MetaTypeName, Registry, ScalarValidatorFn};
use async_graphql::{InputType, OutputType, Positioned, Request, Response, Variables};
use async_graphql_value::{ConstValue, Value};

use crate::direct::DirectPlan;
use crate::limits::Bounded;

/// Operations that passed validation, shared by every request.
pub struct ValidatedOperations {
    /// The schema's types, for the check of the variables.
    registry: Registry,
    /// By query text: the operation names validated with it.
    documents: Mutex<Bounded<Arc<str>, ByOperation>>,
    /// Requests run as known.
    known: AtomicU64,
    /// Requests run without the executor, by their plans.
    direct: AtomicU64,
}

/// A document's validated operations, by name.
type ByOperation = Vec<(Option<String>, Arc<ArgumentTypes>, Option<Arc<DirectPlan>>)>;

/// The arguments of an operation whose values come from variables, each
/// with the type its value must have, resolved against the registry when
/// the operation was first seen: checking a request's values then looks
/// nothing up by name (the lookups, each a SipHash of a type or field name,
/// were most of what the check of a booking's input cost).
struct ArgumentTypes {
    arguments: Vec<(InputPlan, Value)>,
    /// The named input types the arguments reach, each once: a type that
    /// contains itself refers back to its own index.
    named: Vec<NamedInput>,
}

/// An argument that uses variables, and the type its value must have.
struct VariableArgument {
    ty: String,
    value: Value,
}

/// An input type as written (`[Int!]!`), its named types resolved to
/// indexes into [`ArgumentTypes::named`].
enum InputPlan {
    NonNull(Box<InputPlan>),
    List(Box<InputPlan>),
    Named(usize),
}

/// What a named input type accepts.
enum NamedInput {
    /// Not in the registry: nothing.
    Missing,
    Scalar(Option<ScalarValidatorFn>),
    Enum(Vec<String>),
    InputObject {
        oneof: bool,
        fields: Vec<InputField>,
        /// How many of the fields must be given.
        required: usize,
    },
    /// Not an input type: left to the validator, as it leaves it.
    Other,
}

/// A field of an input object.
struct InputField {
    name: String,
    ty: InputPlan,
    /// Non-null without a default: it must be given.
    required: bool,
}

/// What to do with one request.
pub enum Check {
    /// Validated before, and its variables suit: run it on the schema that
    /// skips the rules, or without the executor when it has a plan for
    /// that (see [`crate::direct`]).
    Known(Option<Arc<DirectPlan>>),
    /// Run it on the validating schema, then [`ValidatedOperations::settle`]
    /// the outcome: if it passes, it is known from then on.
    New(Candidate),
    /// Run it on the validating schema (its variables do not suit, or the
    /// document has what this module does not follow).
    Full,
}

/// An operation that will be known if it passes validation.
pub struct Candidate {
    query: Arc<str>,
    operation: Option<String>,
    arguments: ArgumentTypes,
    direct: Option<DirectPlan>,
}

impl ValidatedOperations {
    /// Keeps up to `entries_max` query texts of the schema whose roots are
    /// `Query` and `Mutation` (subscriptions do not come over HTTP).
    pub fn new<Query: OutputType, Mutation: OutputType>(entries_max: usize) -> ValidatedOperations {
        let mut registry = Registry::default();
        // `Int` takes the validator of the first type to register it, and
        // unsigned ones accept 2^63..2^64 where the schema's validation (a
        // signed one's) refuses them: register a signed one first.
        <i64 as InputType>::create_type_info(&mut registry);
        Query::create_type_info(&mut registry);
        Mutation::create_type_info(&mut registry);
        registry.query_type = Query::type_name().into_owned();
        registry.mutation_type = Some(Mutation::type_name().into_owned());
        // The type of `@skip(if:)` and `@include(if:)`.
        <bool as InputType>::create_type_info(&mut registry);
        ValidatedOperations {
            registry,
            documents: Mutex::new(Bounded::new(entries_max)),
            known: AtomicU64::new(0),
            direct: AtomicU64::new(0),
        }
    }

    /// How many requests have run as known.
    pub fn known(&self) -> u64 {
        self.known.load(Ordering::Relaxed)
    }

    /// How many requests have run without the executor (see
    /// [`crate::direct`]).
    pub fn direct(&self) -> u64 {
        self.direct.load(Ordering::Relaxed)
    }

    /// Counts a request run without the executor.
    pub fn ran_direct(&self) {
        self.direct.fetch_add(1, Ordering::Relaxed);
    }

    /// The direct plan of a known operation, if it has one (see
    /// [`crate::direct`]).
    pub fn direct_plan(&self, query: &str, operation: Option<&str>) -> Option<Arc<DirectPlan>> {
        self.known_operation(query, operation)?.1
    }

    /// What was kept of `operation` of the document `query` when it passed
    /// validation (its arguments' types, its direct plan), if it did.
    fn known_operation(
        &self,
        query: &str,
        operation: Option<&str>,
    ) -> Option<(Arc<ArgumentTypes>, Option<Arc<DirectPlan>>)> {
        let documents = self.documents.lock().expect("validated operations lock poisoned");
        let (_, arguments, plan) = documents.get(query)?.iter().find(|(name, _, _)| name.as_deref() == operation)?;
        Some((arguments.clone(), plan.clone()))
    }

    /// Counts a known operation run directly without [`Self::check`].
    pub fn ran_known_directly(&self) {
        self.known.fetch_add(1, Ordering::Relaxed);
        self.direct.fetch_add(1, Ordering::Relaxed);
    }

    /// Decides how `request` runs (its text parsed or not).
    pub fn check(&self, request: &mut Request) -> Check {
        match self.known_operation(request.query.as_str(), request.operation_name.as_deref()) {
            Some((arguments, direct)) if arguments.accept(&request.variables) => {
                self.known.fetch_add(1, Ordering::Relaxed);
                Check::Known(direct)
            }
            Some(_) => Check::Full,
            None => {
                let query: Arc<str> = request.query.as_str().into();
                let operation = request.operation_name.clone();
                let Ok(document) = request.parsed_query() else { return Check::Full };
                match variable_arguments(&self.registry, document, operation.as_deref()) {
                    Some(arguments) => Check::New(Candidate {
                        direct: crate::direct::plan(document, operation.as_deref()),
                        query,
                        operation,
                        arguments: ArgumentTypes::resolve(&self.registry, arguments),
                    }),
                    None => Check::Full,
                }
            }
        }
    }

    /// Keeps a new operation if its response shows it passed validation:
    /// every error, if any, comes from a field (validation errors, like
    /// those of parsing or of picking the operation, have no path).
    pub fn settle(&self, check: Check, response: &Response) {
        let Check::New(Candidate { query, operation, arguments, direct }) = check else { return };
        if response.errors.iter().any(|error| error.path.is_empty()) {
            return;
        }
        let arguments = Arc::new(arguments);
        let direct = direct.map(Arc::new);
        let mut documents = self.documents.lock().expect("validated operations lock poisoned");
        match documents.get_mut(&*query) {
            Some(operations) => {
                if !operations.iter().any(|(name, _, _)| *name == operation) {
                    operations.push((operation, arguments, direct));
                }
            }
            None => documents.insert(query, vec![(operation, arguments, direct)]),
        }
    }
}

impl ArgumentTypes {
    /// Resolves the arguments' types against `registry`.
    fn resolve(registry: &Registry, arguments: Vec<VariableArgument>) -> ArgumentTypes {
        let mut resolver = Resolver { registry, named: Vec::new(), index: HashMap::new() };
        let arguments = arguments.into_iter().map(|argument| (resolver.plan(&argument.ty), argument.value)).collect();
        ArgumentTypes { arguments, named: resolver.named }
    }

    /// Whether every argument, filled in with `variables`, has a value of
    /// its type. An argument whose variable is not given is left to
    /// execution, as the validator leaves it.
    fn accept(&self, variables: &Variables) -> bool {
        self.arguments.iter().all(|(ty, value)| {
            // The usual argument is one variable: its value is checked where
            // it is, not copied (a booking's input, copied, cost as much as
            // the check itself).
            if let Value::Variable(name) = value {
                return variables.get(name).is_none_or(|value| self.is_input_of_type(ty, value));
            }
            match value.clone().into_const_with(|name| variables.get(&name).cloned().ok_or(())) {
                Ok(value) => self.is_input_of_type(ty, &value),
                Err(()) => true,
            }
        })
    }

    /// Whether `value` is a valid input of type `ty`: the validator's rule
    /// for argument values (async-graphql's `is_valid_input_value`),
    /// answering only yes or no.
    fn is_input_of_type(&self, ty: &InputPlan, value: &ConstValue) -> bool {
        match ty {
            InputPlan::NonNull(inner) => !matches!(value, ConstValue::Null) && self.is_input_of_type(inner, value),
            InputPlan::List(item) => match value {
                ConstValue::List(items) => items.iter().all(|value| self.is_input_of_type(item, value)),
                ConstValue::Null => true,
                single => self.is_input_of_type(item, single),
            },
            InputPlan::Named(index) => {
                if matches!(value, ConstValue::Null) {
                    return true;
                }
                match &self.named[*index] {
                    NamedInput::Missing => false,
                    NamedInput::Scalar(is_valid) => is_valid.as_ref().is_none_or(|is_valid| is_valid(value)),
                    NamedInput::Enum(names) => match value {
                        ConstValue::Enum(name) => names.iter().any(|known| known == name.as_str()),
                        ConstValue::String(name) => names.iter().any(|known| known == name),
                        _ => false,
                    },
                    NamedInput::InputObject { oneof, fields, required } => {
                        let ConstValue::Object(given) = value else { return true };
                        if *oneof && (given.len() != 1 || given.values().any(|v| matches!(v, ConstValue::Null))) {
                            return false;
                        }
                        // Every field given is declared and valid; the
                        // required ones are all among them (a map's names
                        // are distinct).
                        let mut required_given = 0;
                        for (name, value) in given {
                            let Some(field) = fields.iter().find(|field| field.name == name.as_str()) else {
                                return false;
                            };
                            if !self.is_input_of_type(&field.ty, value) {
                                return false;
                            }
                            required_given += usize::from(field.required);
                        }
                        required_given == *required
                    }
                    NamedInput::Other => true,
                }
            }
        }
    }
}

/// Resolves input types against a registry, each named type once.
struct Resolver<'a> {
    registry: &'a Registry,
    named: Vec<NamedInput>,
    index: HashMap<String, usize>,
}

impl Resolver<'_> {
    fn plan(&mut self, ty: &str) -> InputPlan {
        match MetaTypeName::create(ty) {
            MetaTypeName::NonNull(inner) => InputPlan::NonNull(Box::new(self.plan(inner))),
            MetaTypeName::List(item) => InputPlan::List(Box::new(self.plan(item))),
            MetaTypeName::Named(name) => InputPlan::Named(self.named(name)),
        }
    }

    fn named(&mut self, name: &str) -> usize {
        if let Some(&index) = self.index.get(name) {
            return index;
        }
        let index = self.named.len();
        // Taken before its fields are resolved, so a field of its own type
        // finds it.
        self.named.push(NamedInput::Other);
        self.index.insert(name.to_string(), index);
        let resolved = match self.registry.types.get(name) {
            None => NamedInput::Missing,
            Some(MetaType::Scalar { is_valid, .. }) => NamedInput::Scalar(is_valid.clone()),
            Some(MetaType::Enum { enum_values, .. }) => NamedInput::Enum(enum_values.keys().cloned().collect()),
            Some(MetaType::InputObject { input_fields, oneof, .. }) => {
                let fields: Vec<InputField> = input_fields
                    .values()
                    .map(|field| InputField {
                        name: field.name.clone(),
                        ty: self.plan(&field.ty),
                        required: MetaTypeName::create(&field.ty).is_non_null() && field.default_value.is_none(),
                    })
                    .collect();
                let required = fields.iter().filter(|field| field.required).count();
                NamedInput::InputObject { oneof: *oneof, fields, required }
            }
            Some(_) => NamedInput::Other,
        };
        self.named[index] = resolved;
        index
    }
}

/// The arguments that use variables in the operation that runs (all of
/// them when no name picks one) and in every fragment, with their types;
/// None when the document has what this does not follow (a directive on an
/// operation or a variable definition, a directive other than `@skip` and
/// `@include`, a name the registry lacks, introspection), so that it is
/// always validated in full.
fn variable_arguments(
    registry: &Registry,
    document: &ExecutableDocument,
    operation_name: Option<&str>,
) -> Option<Vec<VariableArgument>> {
    let mut found = Vec::new();
    for fragment in document.fragments.values() {
        let on = registry.types.get(fragment.node.type_condition.node.on.node.as_str())?;
        walk(registry, on, &fragment.node.selection_set.node, &mut found)?;
    }
    for (name, operation) in document.operations.iter() {
        if operation_name.zip(name).is_some_and(|(picked, name)| picked != name.as_str()) {
            continue;
        }
        let operation = &operation.node;
        if !operation.directives.is_empty()
            || operation.variable_definitions.iter().any(|d| !d.node.directives.is_empty())
        {
            return None;
        }
        let root = match operation.ty {
            OperationType::Query => Some(&registry.query_type),
            OperationType::Mutation => registry.mutation_type.as_ref(),
            OperationType::Subscription => None,
        };
        let root = registry.types.get(root?.as_str())?;
        walk(registry, root, &operation.selection_set.node, &mut found)?;
    }
    Some(found)
}

fn walk(registry: &Registry, parent: &MetaType, set: &SelectionSet, found: &mut Vec<VariableArgument>) -> Option<()> {
    for selection in &set.items {
        match &selection.node {
            Selection::Field(field) => {
                let field = &field.node;
                directive_arguments(&field.directives, found)?;
                if field.name.node == "__typename" {
                    continue;
                }
                let meta = parent.field_by_name(field.name.node.as_str())?;
                for (name, value) in &field.arguments {
                    let argument = meta.args.get(name.node.as_str())?;
                    keep_if_variable(&argument.ty, &value.node, found);
                }
                if !field.selection_set.node.items.is_empty() {
                    let child = registry.concrete_type_by_name(&meta.ty)?;
                    walk(registry, child, &field.selection_set.node, found)?;
                }
            }
            Selection::FragmentSpread(spread) => directive_arguments(&spread.node.directives, found)?,
            Selection::InlineFragment(inline) => {
                let inline = &inline.node;
                directive_arguments(&inline.directives, found)?;
                let on = match &inline.type_condition {
                    Some(condition) => registry.types.get(condition.node.on.node.as_str())?,
                    None => parent,
                };
                walk(registry, on, &inline.selection_set.node, found)?;
            }
        }
    }
    Some(())
}

/// `@skip(if:)` and `@include(if:)`; None for any other directive.
fn directive_arguments(directives: &[Positioned<Directive>], found: &mut Vec<VariableArgument>) -> Option<()> {
    for directive in directives {
        let directive = &directive.node;
        if !matches!(directive.name.node.as_str(), "skip" | "include") {
            return None;
        }
        for (name, value) in &directive.arguments {
            if name.node != "if" {
                return None;
            }
            keep_if_variable("Boolean!", &value.node, found);
        }
    }
    Some(())
}

fn keep_if_variable(ty: &str, value: &Value, found: &mut Vec<VariableArgument>) {
    fn uses_variable(value: &Value) -> bool {
        match value {
            Value::Variable(_) => true,
            Value::List(items) => items.iter().any(uses_variable),
            Value::Object(fields) => fields.values().any(uses_variable),
            _ => false,
        }
    }
    if uses_variable(value) {
        found.push(VariableArgument { ty: ty.to_string(), value: value.clone() });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use async_graphql::{EmptySubscription, Enum, InputObject, Object, OneofObject, Schema, ValidationMode};

    use super::{Check, ValidatedOperations};

    #[derive(Enum, Clone, Copy, PartialEq, Eq)]
    enum Colour {
        Red,
        Blue,
    }

    #[derive(InputObject)]
    struct Order {
        name: String,
        #[graphql(default = 1)]
        quantity: i32,
        colour: Option<Colour>,
        tags: Option<Vec<String>>,
        /// An input type that contains itself.
        parts: Option<Vec<Order>>,
    }

    #[derive(OneofObject)]
    enum Pick {
        Id(i32),
        Name(String),
    }

    struct Query;

    #[Object]
    impl Query {
        async fn echo(&self, order: Order, times: Option<i32>) -> String {
            format!("{} x{} {}", order.name, order.quantity * times.unwrap_or(1), order.tags.unwrap_or_default().len())
        }

        async fn shade(&self, colour: Colour) -> bool {
            colour == Colour::Red
        }

        async fn pick(&self, pick: Pick) -> String {
            match pick {
                Pick::Id(id) => format!("#{id}"),
                Pick::Name(name) => name,
            }
        }
    }

    /// Adds up what the mutations added (shared by the two schemas of a
    /// front end, as the app is in the server).
    #[derive(Default)]
    struct Mutation(Arc<AtomicU64>);

    #[Object]
    impl Mutation {
        async fn add(&self, n: i32) -> u64 {
            self.0.fetch_add(n as u64, Ordering::Relaxed) + n as u64
        }
    }

    type TestSchema = Schema<Query, Mutation, EmptySubscription>;

    /// The two schemas and the operations known, run as the HTTP front end
    /// runs them.
    struct Front {
        full: TestSchema,
        known: TestSchema,
        validated: ValidatedOperations,
    }

    impl Front {
        fn new() -> Front {
            let total = Arc::new(AtomicU64::new(0));
            let full = Schema::build(Query, Mutation(total.clone()), EmptySubscription).finish();
            let known =
                Schema::build(Query, Mutation(total), EmptySubscription).validation_mode(ValidationMode::Fast).finish();
            Front { full, known, validated: ValidatedOperations::new::<Query, Mutation>(10) }
        }

        async fn run(&self, query: &str, name: Option<&str>, variables: serde_json::Value) -> serde_json::Value {
            let mut request = request(query, name, variables);
            let check = self.validated.check(&mut request);
            let schema = if matches!(check, Check::Known(_)) { &self.known } else { &self.full };
            let response = schema.execute(request).await;
            self.validated.settle(check, &response);
            serde_json::to_value(response).unwrap()
        }
    }

    fn request(query: &str, name: Option<&str>, variables: serde_json::Value) -> async_graphql::Request {
        let mut request = async_graphql::Request::new(query).variables(async_graphql::Variables::from_json(variables));
        if let Some(name) = name {
            request = request.operation_name(name);
        }
        request
    }

    /// A fully validating schema, answering what the front end must answer.
    async fn reference(query: &str, name: Option<&str>, variables: serde_json::Value) -> serde_json::Value {
        let schema = Schema::build(Query, Mutation::default(), EmptySubscription).finish();
        serde_json::to_value(schema.execute(request(query, name, variables)).await).unwrap()
    }

    const QUERY: &str = "query Q($order: Order!, $times: Int, $with: Boolean!, $c: Colour!) {
        echo(order: $order, times: $times) @include(if: $with)
        ...F
    }
    fragment F on Query { shade(colour: $c) }
    query Other { shade(colour: RED) }";

    /// Requests of an operation known to be valid, with good and bad
    /// variables, are answered exactly as by a schema that validates every
    /// request in full; only the good ones run as known.
    #[tokio::test]
    async fn a_known_operation_answers_as_a_validated_one_and_only_for_values_its_arguments_accept() {
        let front = Front::new();
        let good =
            serde_json::json!({"order": {"name": "a", "tags": ["x", "y"]}, "times": 3, "with": true, "c": "RED"});
        let first = front.run(QUERY, Some("Q"), good.clone()).await;
        assert_eq!(first, reference(QUERY, Some("Q"), good.clone()).await);
        assert_eq!(first["data"]["echo"], "a x3 2");
        assert_eq!(front.validated.known(), 0, "the first request validates in full");

        let cases = [
            (true, serde_json::json!({"order": {"name": "b", "quantity": 2}, "with": false, "c": "BLUE"})),
            (true, serde_json::json!({"order": {"name": "c", "tags": "one"}, "times": null, "with": true, "c": "RED"})),
            // Validation does not look at an Int's range; execution refuses it.
            (true, serde_json::json!({"order": {"name": "d"}, "times": 2147483648u64, "with": true, "c": "RED"})),
            // A variable not given is left to execution by both.
            (true, serde_json::json!({"order": {"name": "e"}, "c": "RED"})),
            (false, serde_json::json!({"order": {"name": "e"}, "with": true, "c": "GREEN"})),
            (false, serde_json::json!({"order": {"quantity": 2}, "with": true, "c": "RED"})),
            (false, serde_json::json!({"order": {"name": "f", "size": 2}, "with": true, "c": "RED"})),
            (false, serde_json::json!({"order": null, "with": true, "c": "RED"})),
            (false, serde_json::json!({"order": {"name": "g", "tags": [1]}, "with": true, "c": "RED"})),
            (false, serde_json::json!({"order": {"name": "h", "colour": "red"}, "with": "yes", "c": "RED"})),
        ];
        for (known, variables) in cases {
            let before = front.validated.known();
            let answer = front.run(QUERY, Some("Q"), variables.clone()).await;
            assert_eq!(answer, reference(QUERY, Some("Q"), variables.clone()).await, "variables {variables}");
            assert_eq!(front.validated.known() - before, known as u64, "variables {variables}: {answer}");
            if !known {
                assert_eq!(answer["data"], serde_json::Value::Null, "variables {variables}: nothing runs: {answer}");
            }
        }

        // The other operation of the same text is kept apart.
        let other = front.run(QUERY, Some("Other"), serde_json::json!({})).await;
        assert_eq!(other["data"]["shade"], true);
        let before = front.validated.known();
        front.run(QUERY, Some("Other"), serde_json::json!({})).await;
        assert_eq!(front.validated.known(), before + 1);
    }

    /// Values of an input type that contains itself, nested, and of a
    /// oneof input are accepted and refused as the validator does.
    #[tokio::test]
    async fn nested_and_oneof_inputs_are_checked_as_the_validator_checks_them() {
        let front = Front::new();
        let query = "query($o: Order!, $p: Pick!) { echo(order: $o) pick(pick: $p) }";
        let good = serde_json::json!({"o": {"name": "a", "parts": [{"name": "b", "parts": []}]}, "p": {"id": 1}});
        front.run(query, None, good).await;
        let cases = [
            (
                true,
                serde_json::json!({"o": {"name": "c", "parts": [{"name": "d", "parts": [{"name": "e"}]}]}, "p": {"name": "x"}}),
            ),
            (true, serde_json::json!({"o": {"name": "f", "parts": {"name": "g"}}, "p": {"id": 2}})),
            (true, serde_json::json!({"o": {"name": "h", "parts": null}, "p": {"id": 3}})),
            (false, serde_json::json!({"o": {"name": "i", "parts": [{"quantity": 2}]}, "p": {"id": 4}})),
            (false, serde_json::json!({"o": {"name": "j", "parts": [{"name": "k", "size": 1}]}, "p": {"id": 5}})),
            (
                false,
                serde_json::json!({"o": {"name": "l", "parts": [{"name": "m", "parts": [{"name": 7}]}]}, "p": {"id": 6}}),
            ),
            (false, serde_json::json!({"o": {"name": "n"}, "p": {"id": 1, "name": "y"}})),
            (false, serde_json::json!({"o": {"name": "o"}, "p": {"id": null}})),
            (false, serde_json::json!({"o": {"name": "p"}, "p": {}})),
            (false, serde_json::json!({"o": {"name": "q"}, "p": {"colour": "RED"}})),
        ];
        for (known, variables) in cases {
            let before = front.validated.known();
            let answer = front.run(query, None, variables.clone()).await;
            assert_eq!(answer, reference(query, None, variables.clone()).await, "variables {variables}");
            assert_eq!(front.validated.known() - before, known as u64, "variables {variables}: {answer}");
        }
    }

    /// A mutation whose second field gets a bad value runs neither field,
    /// known or not.
    #[tokio::test]
    async fn a_bad_value_for_a_known_mutation_runs_nothing() {
        let front = Front::new();
        let mutation = "mutation($a: Int!, $b: Int!) { first: add(n: $a) second: add(n: $b) }";
        front.run(mutation, None, serde_json::json!({"a": 1, "b": 2})).await;
        front.run(mutation, None, serde_json::json!({"a": 1, "b": 2})).await;
        assert_eq!(front.validated.known(), 1);
        let answer = front.run(mutation, None, serde_json::json!({"a": 5, "b": "x"})).await;
        assert!(answer["errors"][0]["message"].as_str().unwrap().contains("Invalid value"), "{answer}");
        let known = front.run(mutation, None, serde_json::json!({"a": 0, "b": 0})).await;
        assert_eq!(known["data"]["second"], 6, "the known run adds on the fast schema's own root: {known}");
        let full = front.run(mutation, None, serde_json::json!({"a": 1, "b": "y"})).await;
        assert_eq!(full["data"], serde_json::Value::Null, "{full}");
    }

    /// A document that fails validation is never kept, nor one that asks
    /// for what this does not follow.
    #[tokio::test]
    async fn documents_that_fail_validation_or_use_other_directives_are_not_kept() {
        let front = Front::new();
        for query in
            ["{ shade(colour: RED) nope }", "{ shade(colour: RED) @deprecated }", "{ __schema { queryType { name } } }"]
        {
            for _ in 0..2 {
                let answer = front.run(query, None, serde_json::json!({})).await;
                assert_eq!(answer, reference(query, None, serde_json::json!({})).await);
            }
        }
        assert_eq!(front.validated.known(), 0);
    }
}

//! Validated documents: a query text (with its operation name) that passed
//! GraphQL validation once passes it again without the whole set of rules
//! running, as long as the request's variables hold values its arguments
//! accept. Clients send the same few documents over and over with other
//! variables, and validation was the costliest step of a booking's request
//! after the network.
//!
//! Which rules look at the variables: only the check of argument values
//! (every argument that uses a variable, in the operation that runs and in
//! every fragment). Everything else depends on the document and the schema
//! alone. So an entry keeps each such argument with the type it expects,
//! and a request reuses the entry only when every argument, filled in with
//! its variables, is a value of that type, decided as the validator
//! decides it. Any other request runs the full validation, which reports
//! the error with its usual message.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextParseQuery, NextPrepareRequest, NextValidation,
};
use async_graphql::parser::types::{Directive, ExecutableDocument, OperationType, Selection, SelectionSet};
use async_graphql::registry::{MetaType, MetaTypeName, Registry};
use async_graphql::{Positioned, Request, ServerError, ServerResult, ValidationResult, Variables};
use async_graphql_value::{ConstValue, Value};

use crate::limits::Bounded;

/// Documents that passed validation, shared by every request (install with
/// `SchemaBuilder::extension`). The schema must not set its own complexity
/// or depth limits: a reused result skips those checks too (Marquee's
/// limits run before the schema, see [`crate::limits`]).
#[derive(Clone)]
pub struct ValidatedDocuments {
    shared: Arc<Shared>,
}

struct Shared {
    /// By query text: the operation names validated with it.
    documents: Mutex<Bounded<Arc<str>, ByOperation>>,
    /// Requests that reused a validation.
    reused: AtomicU64,
}

/// A document's validated operations, by name.
type ByOperation = Vec<(Option<String>, Arc<Validated>)>;

/// What validating one operation of a document found.
struct Validated {
    result: ValidationResult,
    /// The arguments whose values come from variables.
    arguments: Vec<VariableArgument>,
}

/// An argument that uses variables, and the type its value must have.
struct VariableArgument {
    ty: String,
    value: Value,
}

impl ValidatedDocuments {
    /// Keeps up to `entries_max` query texts.
    pub fn new(entries_max: usize) -> ValidatedDocuments {
        let shared = Shared { documents: Mutex::new(Bounded::new(entries_max)), reused: AtomicU64::new(0) };
        ValidatedDocuments { shared: Arc::new(shared) }
    }

    /// How many requests have reused a validation.
    pub fn reused(&self) -> u64 {
        self.shared.reused.load(Ordering::Relaxed)
    }
}

impl ExtensionFactory for ValidatedDocuments {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(ValidatedRequest { shared: self.shared.clone(), state: Mutex::new(RequestState::default()) })
    }
}

/// One request's pass through the cache.
struct ValidatedRequest {
    shared: Arc<Shared>,
    state: Mutex<RequestState>,
}

#[derive(Default)]
enum RequestState {
    #[default]
    Started,
    Named(Option<String>),
    /// A validated entry accepts this request.
    Reused(ValidationResult),
    /// Not in the cache: kept if validation passes.
    Candidate {
        query: Arc<str>,
        operation: Option<String>,
        arguments: Vec<VariableArgument>,
    },
    Done,
}

#[async_graphql::async_trait::async_trait]
impl Extension for ValidatedRequest {
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        let request = next.run(ctx, request).await?;
        *self.state.lock().expect("validation state lock poisoned") =
            RequestState::Named(request.operation_name.clone());
        Ok(request)
    }

    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let document = next.run(ctx, query, variables).await?;
        let mut state = self.state.lock().expect("validation state lock poisoned");
        let RequestState::Named(operation) = std::mem::take(&mut *state) else { return Ok(document) };
        let registry = &ctx.schema_env.registry;
        let found = {
            let documents = self.shared.documents.lock().expect("validated documents lock poisoned");
            documents.get(query).and_then(|operations| {
                operations.iter().find(|(name, _)| *name == operation).map(|(_, validated)| validated.clone())
            })
        };
        *state = match found {
            Some(validated) if validated.accepts(registry, variables) => RequestState::Reused(validated.result),
            Some(_) => RequestState::Done,
            None => match variable_arguments(registry, &document, operation.as_deref()) {
                Some(arguments) => RequestState::Candidate { query: query.into(), operation, arguments },
                None => RequestState::Done,
            },
        };
        Ok(document)
    }

    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        let state =
            std::mem::replace(&mut *self.state.lock().expect("validation state lock poisoned"), RequestState::Done);
        if let RequestState::Reused(result) = state {
            self.shared.reused.fetch_add(1, Ordering::Relaxed);
            return Ok(result);
        }
        let validated = next.run(ctx).await?;
        if let RequestState::Candidate { query, operation, arguments } = state {
            let entry = Arc::new(Validated { result: validated, arguments });
            let mut documents = self.shared.documents.lock().expect("validated documents lock poisoned");
            match documents.get_mut(&*query) {
                Some(operations) => {
                    if !operations.iter().any(|(name, _)| *name == operation) {
                        operations.push((operation, entry));
                    }
                }
                None => documents.insert(query, vec![(operation, entry)]),
            }
        }
        Ok(validated)
    }
}

impl Validated {
    /// Whether every argument, filled in with `variables`, has a value of
    /// its type. An argument whose variable is not given is left to
    /// execution, as the validator leaves it.
    fn accepts(&self, registry: &Registry, variables: &Variables) -> bool {
        self.arguments.iter().all(|argument| {
            match argument.value.clone().into_const_with(|name| variables.get(&name).cloned().ok_or(())) {
                Ok(value) => is_input_of_type(registry, &argument.ty, &value),
                Err(()) => true,
            }
        })
    }
}

/// Whether `value` is a valid input of type `ty`: the validator's rule for
/// argument values, answering only yes or no.
fn is_input_of_type(registry: &Registry, ty: &str, value: &ConstValue) -> bool {
    match MetaTypeName::create(ty) {
        MetaTypeName::NonNull(inner) => !matches!(value, ConstValue::Null) && is_input_of_type(registry, inner, value),
        MetaTypeName::List(item) => match value {
            ConstValue::List(items) => items.iter().all(|value| is_input_of_type(registry, item, value)),
            ConstValue::Null => true,
            single => is_input_of_type(registry, item, single),
        },
        MetaTypeName::Named(name) => {
            if matches!(value, ConstValue::Null) {
                return true;
            }
            match registry.types.get(name) {
                None => false,
                Some(MetaType::Scalar { is_valid, .. }) => is_valid.as_ref().is_none_or(|is_valid| is_valid(value)),
                Some(MetaType::Enum { enum_values, .. }) => match value {
                    ConstValue::Enum(name) => enum_values.contains_key(name.as_str()),
                    ConstValue::String(name) => enum_values.contains_key(name.as_str()),
                    _ => false,
                },
                Some(MetaType::InputObject { input_fields, oneof, .. }) => {
                    let ConstValue::Object(fields) = value else { return true };
                    if *oneof && (fields.len() != 1 || fields.values().any(|v| matches!(v, ConstValue::Null))) {
                        return false;
                    }
                    let known = fields.keys().all(|name| input_fields.contains_key(name.as_str()));
                    known
                        && input_fields.values().all(|field| match fields.get(field.name.as_str()) {
                            Some(value) => is_input_of_type(registry, &field.ty, value),
                            None => !MetaTypeName::create(&field.ty).is_non_null() || field.default_value.is_some(),
                        })
                }
                Some(_) => true,
            }
        }
    }
}

/// The arguments that use variables in the operation that runs (all of
/// them when no name picks one) and in every fragment, with their types;
/// None when the document has what this does not follow (a directive on an
/// operation or a variable definition, a name the schema lacks), so that
/// it is always validated in full.
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
            OperationType::Subscription => registry.subscription_type.as_ref(),
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
                directive_arguments(registry, &field.directives, found)?;
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
            Selection::FragmentSpread(spread) => directive_arguments(registry, &spread.node.directives, found)?,
            Selection::InlineFragment(inline) => {
                let inline = &inline.node;
                directive_arguments(registry, &inline.directives, found)?;
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

fn directive_arguments(
    registry: &Registry,
    directives: &[Positioned<Directive>],
    found: &mut Vec<VariableArgument>,
) -> Option<()> {
    for directive in directives {
        let meta = registry.directives.get(directive.node.name.node.as_str())?;
        for (name, value) in &directive.node.arguments {
            keep_if_variable(&meta.args.get(name.node.as_str())?.ty, &value.node, found);
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

    use async_graphql::{EmptySubscription, Enum, InputObject, Object, Schema};

    use super::ValidatedDocuments;

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
    }

    /// Counts the mutations that ran.
    #[derive(Default)]
    struct Mutation(AtomicU64);

    #[Object]
    impl Mutation {
        async fn add(&self, n: i32) -> u64 {
            self.0.fetch_add(n as u64, Ordering::Relaxed) + n as u64
        }
    }

    fn schema(cache: Option<&ValidatedDocuments>) -> Schema<Query, Mutation, EmptySubscription> {
        let builder = Schema::build(Query, Mutation::default(), EmptySubscription);
        match cache {
            Some(cache) => builder.extension(cache.clone()).finish(),
            None => builder.finish(),
        }
    }

    const QUERY: &str = "query Q($order: Order!, $times: Int, $with: Boolean!, $c: Colour!) {
        echo(order: $order, times: $times) @include(if: $with)
        ...F
    }
    fragment F on Query { shade(colour: $c) }
    query Other { shade(colour: RED) }";

    const MUTATION: &str = "mutation($a: Int!, $b: Int!) { first: add(n: $a) second: add(n: $b) }";

    /// Requests of a document whose validation is kept, with good and bad
    /// variables, are answered exactly as by a schema that validates every
    /// request in full; only the good ones reuse the validation, and a bad
    /// one runs nothing.
    #[tokio::test]
    async fn a_kept_validation_answers_as_a_full_one_and_only_for_values_its_arguments_accept() {
        let cache = ValidatedDocuments::new(10);
        let cached = schema(Some(&cache));
        let full = schema(None);
        let run = |schema: &Schema<Query, Mutation, EmptySubscription>,
                   query: &str,
                   name: Option<&str>,
                   vars: serde_json::Value| {
            let mut request = async_graphql::Request::new(query).variables(async_graphql::Variables::from_json(vars));
            if let Some(name) = name {
                request = request.operation_name(name);
            }
            let schema = schema.clone();
            async move { serde_json::to_value(schema.execute(request).await).unwrap() }
        };
        let good =
            serde_json::json!({"order": {"name": "a", "tags": ["x", "y"]}, "times": 3, "with": true, "c": "RED"});
        let first = run(&cached, QUERY, Some("Q"), good.clone()).await;
        assert_eq!(first, run(&full, QUERY, Some("Q"), good.clone()).await);
        assert_eq!(first["data"]["echo"], "a x3 2");
        assert_eq!(cache.reused(), 0, "the first request validates in full");

        let cases = [
            (true, serde_json::json!({"order": {"name": "b", "quantity": 2}, "with": false, "c": "BLUE"})),
            (true, serde_json::json!({"order": {"name": "c", "tags": "one"}, "times": null, "with": true, "c": "RED"})),
            // Validation does not look at an Int's range; execution refuses it.
            (true, serde_json::json!({"order": {"name": "d"}, "times": 2147483648u64, "with": true, "c": "RED"})),
            (false, serde_json::json!({"order": {"name": "e"}, "with": true, "c": "GREEN"})),
            (false, serde_json::json!({"order": {"quantity": 2}, "with": true, "c": "RED"})),
            (false, serde_json::json!({"order": {"name": "f", "size": 2}, "with": true, "c": "RED"})),
            (false, serde_json::json!({"order": null, "with": true, "c": "RED"})),
            (false, serde_json::json!({"order": {"name": "g", "tags": [1]}, "with": true, "c": "RED"})),
            (false, serde_json::json!({"order": {"name": "h", "colour": "red"}, "with": "yes", "c": "RED"})),
        ];
        for (reused, variables) in cases {
            let before = cache.reused();
            let answer = run(&cached, QUERY, Some("Q"), variables.clone()).await;
            assert_eq!(answer, run(&full, QUERY, Some("Q"), variables.clone()).await, "variables {variables}");
            assert_eq!(cache.reused() - before, reused as u64, "variables {variables}: {answer}");
            if !reused {
                assert_eq!(answer["data"], serde_json::Value::Null, "variables {variables}: nothing runs: {answer}");
            }
        }

        // The other operation of the same text is kept apart.
        let other = run(&cached, QUERY, Some("Other"), serde_json::json!({})).await;
        assert_eq!(other["data"]["shade"], true);
        let before = cache.reused();
        run(&cached, QUERY, Some("Other"), serde_json::json!({})).await;
        assert_eq!(cache.reused(), before + 1);

        // A mutation whose second field gets a bad value runs neither.
        let mutations = schema(Some(&cache));
        run(&mutations, MUTATION, None, serde_json::json!({"a": 1, "b": 2})).await;
        let answer = run(&mutations, MUTATION, None, serde_json::json!({"a": 5, "b": "x"})).await;
        assert!(answer["errors"][0]["message"].as_str().unwrap().contains("Invalid value"), "{answer}");
        let after = run(&mutations, MUTATION, None, serde_json::json!({"a": 0, "b": 0})).await;
        assert_eq!(after["data"]["second"], 3, "only the first request's additions ran: {after}");
    }

    /// A document that does not validate is never kept.
    #[tokio::test]
    async fn a_document_that_fails_validation_is_not_kept() {
        let cache = ValidatedDocuments::new(10);
        let cached = schema(Some(&cache));
        for _ in 0..2 {
            let response = cached.execute("{ shade(colour: RED) nope }").await;
            assert_eq!(response.errors.len(), 1, "{:?}", response.errors);
        }
        assert_eq!(cache.reused(), 0);
    }
}

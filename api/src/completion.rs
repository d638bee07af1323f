//! Two places where async-graphql departs from the GraphQL spec, mended
//! around it: failed fields, and variables that were not sent.
//!
//! **Failed fields.** async-graphql leaves a field whose resolver failed
//! out of its object, and keeps the object. The spec (Handling Field
//! Errors) wants the field present as null; when the field's type is
//! non-null, the null moves up to the nearest nullable field, or makes
//! `data` null. Typed clients (generated code, normalised caches) rely on
//! every selected field being there, and on non-null meaning non-null.
//! [`FieldTypes::complete`] follows each error's path through the document
//! and the schema's types and does just that. It runs only on responses
//! with errors, so a request that succeeds pays nothing for it.
//!
//! **Variables not sent.** async-graphql runs an operation whose required
//! variable is missing (or null), and fails only the fields that use it, so
//! a mutation could half run. [`unusable_variable`] finds such a variable
//! first, and the request is refused as a whole, as the spec's coercion of
//! variable values does: a request error, and nothing runs.
//!
//! The schema has no interfaces or unions, so every fragment in a
//! selection applies to the object it selects on; a response key names the
//! same field wherever it appears in one selection (validation sees to it).

use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, OperationDefinition, OperationType, Selection, SelectionSet,
};
use async_graphql::registry::Registry;
use async_graphql::{Name, PathSegment, Positioned, Response, ServerError, Value, Variables};

/// Fragments nest at most this deep on the way to a field (the query
/// limits refuse deeper documents long before).
const FRAGMENT_DEPTH_MAX: usize = 64;

/// The output types of the schema's fields, for completing responses.
pub struct FieldTypes {
    registry: Registry,
}

impl FieldTypes {
    /// The field types of the served schema.
    pub fn of_schema() -> FieldTypes {
        use async_graphql::{OutputType, SubscriptionType};
        let mut registry = Registry::default();
        registry.query_type = crate::schema::Query::create_type_info(&mut registry);
        registry.mutation_type = Some(crate::schema::Mutation::create_type_info(&mut registry));
        registry.subscription_type = Some(crate::schema::SubscriptionRoot::create_type_info(&mut registry));
        FieldTypes { registry }
    }

    /// Gives every failed field of `response` its null, moved up past
    /// non-null types as far as the spec says (see the module's notes).
    /// `document` is the one `response` ran, `operation_name` picked the
    /// operation.
    pub fn complete(&self, document: &ExecutableDocument, operation_name: Option<&str>, response: &mut Response) {
        if response.errors.iter().all(|error| error.path.is_empty()) {
            return;
        }
        let Some(operation) = operation(document, operation_name) else { return };
        let root = match operation.node.ty {
            OperationType::Query => Some(self.registry.query_type.as_str()),
            OperationType::Mutation => self.registry.mutation_type.as_deref(),
            OperationType::Subscription => self.registry.subscription_type.as_deref(),
        };
        let Some(root) = root else { return };
        let walker = Walker { registry: &self.registry, document };
        let paths: Vec<Vec<PathSegment>> =
            response.errors.iter().filter(|error| !error.path.is_empty()).map(|error| error.path.clone()).collect();
        let root_selection = [&operation.node.selection_set];
        // First every failed field gets its null: async-graphql makes an
        // object whose every field failed null (`data` included), so a null
        // met on an error's way is such an object, to be opened again.
        for path in &paths {
            walker.place(&mut response.data, root, &root_selection, path);
        }
        // Then nulls move up past non-null types.
        for path in &paths {
            if walker.follow(&mut response.data, root, &root_selection, path) {
                response.data = Value::Null;
                return;
            }
        }
    }
}

/// The operation of `document` that `operation_name` picks, as
/// async-graphql picks it (none when the request names none and there are
/// several).
fn operation<'d>(
    document: &'d ExecutableDocument,
    operation_name: Option<&str>,
) -> Option<&'d Positioned<OperationDefinition>> {
    match (&document.operations, operation_name) {
        (DocumentOperations::Single(operation), None) => Some(operation),
        (DocumentOperations::Single(_), Some(_)) => None,
        (DocumentOperations::Multiple(operations), Some(name)) => operations.get(name),
        (DocumentOperations::Multiple(operations), None) if operations.len() == 1 => operations.values().next(),
        (DocumentOperations::Multiple(_), None) => None,
    }
}

/// The first variable of the operation to run that has no usable value: a
/// non-null one that was not sent (and has no default), or was sent as
/// null. Its error is a request error: nothing may run.
pub fn unusable_variable(
    document: &ExecutableDocument,
    operation_name: Option<&str>,
    variables: &Variables,
) -> Option<ServerError> {
    let operation = operation(document, operation_name)?;
    operation.node.variable_definitions.iter().find_map(|variable| {
        let definition = &variable.node;
        let ty = &definition.var_type.node;
        if ty.nullable {
            return None;
        }
        let name = &definition.name.node;
        let message = match variables.get(name.as_str()) {
            None if definition.default_value.is_none() => {
                format!("Variable \"${name}\" of required type \"{ty}\" was not provided.")
            }
            Some(async_graphql::Value::Null) => {
                format!("Variable \"${name}\" of non-null type \"{ty}\" must not be null.")
            }
            _ => return None,
        };
        Some(ServerError::new(message, Some(variable.pos)))
    })
}

/// [`unusable_variable`] of `request`'s operation (its document parsed
/// now if it is not yet; a document that does not parse has none).
pub fn unusable_variable_of(request: &mut async_graphql::Request) -> Option<ServerError> {
    // Out of the request while its document is borrowed, and back after.
    let (operation_name, variables) = (request.operation_name.take(), std::mem::take(&mut request.variables));
    let unusable = request
        .parsed_query()
        .ok()
        .and_then(|document| unusable_variable(document, operation_name.as_deref(), &variables));
    (request.operation_name, request.variables) = (operation_name, variables);
    unusable
}

/// Whether the operation `operation_name` picks is a subscription.
pub fn is_subscription(document: &ExecutableDocument, operation_name: Option<&str>) -> bool {
    operation(document, operation_name).is_some_and(|operation| operation.node.ty == OperationType::Subscription)
}

/// Follows error paths through one document and the schema's types.
struct Walker<'a> {
    registry: &'a Registry,
    document: &'a ExecutableDocument,
}

impl<'a> Walker<'a> {
    /// Puts a null where the field at the end of `path` below `value` (of
    /// type `ty`, with `selections`) failed, opening on the way the objects
    /// async-graphql made null because all their fields failed.
    fn place(&self, value: &mut Value, ty: &str, selections: &[&'a Positioned<SelectionSet>], path: &[PathSegment]) {
        let Some((step, rest)) = path.split_first() else { return };
        if let (PathSegment::Field(_), Value::Null) = (step, &*value) {
            *value = Value::Object(Default::default());
        }
        match (step, value) {
            (PathSegment::Index(index), Value::List(items)) => {
                if let (Some(item_ty), Some(item)) = (item_type(ty), items.get_mut(*index)) {
                    self.place(item, item_ty, selections, rest);
                }
            }
            (PathSegment::Field(key), Value::Object(fields)) => {
                let Some((field_ty, below)) = self.field(ty, selections, key) else { return };
                match fields.get_mut(key.as_str()) {
                    Some(child) => self.place(child, field_ty, &below, rest),
                    // The failed field (or one that failed as a whole before
                    // its own fields could): back in its place, as null.
                    None => {
                        let at = self.position_among(selections, key, fields.keys().map(Name::as_str));
                        fields.shift_insert(at, Name::new(key), Value::Null);
                    }
                }
            }
            _ => {}
        }
    }

    /// Follows `path` into `value`, of type `ty`, whose selections (when it
    /// is an object) are `selections`, once every failed field has its
    /// null (see [`Walker::place`]). Returns whether `value` itself must
    /// become null: a non-null field below it failed.
    fn follow(
        &self,
        value: &mut Value,
        ty: &str,
        selections: &[&'a Positioned<SelectionSet>],
        path: &[PathSegment],
    ) -> bool {
        let Some((step, rest)) = path.split_first() else { return false };
        match (step, value) {
            (PathSegment::Index(index), Value::List(items)) => match (item_type(ty), items.get_mut(*index)) {
                (Some(item_ty), Some(item)) => self.settle(item, item_ty, selections, rest),
                _ => false,
            },
            (PathSegment::Field(key), Value::Object(fields)) => {
                match (self.field(ty, selections, key), fields.get_mut(key.as_str())) {
                    (Some((field_ty, below)), Some(child)) => self.settle(child, field_ty, &below, rest),
                    _ => false,
                }
            }
            _ => false,
        }
    }

    /// The type of the field that answers to `key` on an object of type
    /// `ty` (`!` allowed) selected by `selections`, and the selections made
    /// on its value.
    fn field(
        &self,
        ty: &str,
        selections: &[&'a Positioned<SelectionSet>],
        key: &str,
    ) -> Option<(&'a str, Vec<&'a Positioned<SelectionSet>>)> {
        let mut below = Vec::new();
        let name = self.field_name(selections, key, &mut below)?;
        let object = self.registry.types.get(ty.strip_suffix('!').unwrap_or(ty))?;
        Some((object.field_by_name(name)?.ty.as_str(), below))
    }

    /// Follows the rest of the path into `value` (a field's value or a
    /// list's item, of type `ty`), nulls it when a non-null field below
    /// failed, and returns whether it is then null against its non-null type
    /// (so its parent must be null in turn).
    fn settle(
        &self,
        value: &mut Value,
        ty: &str,
        selections: &[&'a Positioned<SelectionSet>],
        rest: &[PathSegment],
    ) -> bool {
        if self.follow(value, ty, selections, rest) {
            *value = Value::Null;
        }
        *value == Value::Null && is_non_null(ty)
    }

    /// The name of the field that answers to `key` in `selections`, and
    /// (into `below`) the selections made on its value.
    fn field_name(
        &self,
        selections: &[&'a Positioned<SelectionSet>],
        key: &str,
        below: &mut Vec<&'a Positioned<SelectionSet>>,
    ) -> Option<&'a str> {
        let mut name = None;
        for selection in selections {
            self.gather(selection, key, 0, &mut name, below);
        }
        name
    }

    fn gather(
        &self,
        selection: &'a Positioned<SelectionSet>,
        key: &str,
        depth: usize,
        name: &mut Option<&'a str>,
        below: &mut Vec<&'a Positioned<SelectionSet>>,
    ) {
        if depth > FRAGMENT_DEPTH_MAX {
            return;
        }
        for item in &selection.node.items {
            match &item.node {
                Selection::Field(field) => {
                    if field.node.response_key().node.as_str() == key {
                        name.get_or_insert(field.node.name.node.as_str());
                        below.push(&field.node.selection_set);
                    }
                }
                Selection::FragmentSpread(spread) => {
                    if let Some(fragment) = self.document.fragments.get(&spread.node.fragment_name.node) {
                        self.gather(&fragment.node.selection_set, key, depth + 1, name, below);
                    }
                }
                Selection::InlineFragment(inline) => {
                    self.gather(&inline.node.selection_set, key, depth + 1, name, below);
                }
            }
        }
    }

    /// Where `key` goes among the keys already in an object, so that keys
    /// keep the order of the selections.
    fn position_among<'k>(
        &self,
        selections: &[&'a Positioned<SelectionSet>],
        key: &str,
        present: impl Iterator<Item = &'k str>,
    ) -> usize {
        let mut order = Vec::new();
        for selection in selections {
            self.response_keys(selection, 0, &mut order);
        }
        let rank = |k: &str| order.iter().position(|o| *o == k).unwrap_or(usize::MAX);
        let own = rank(key);
        present.filter(|k| rank(k) < own).count()
    }

    fn response_keys(&self, selection: &'a Positioned<SelectionSet>, depth: usize, order: &mut Vec<&'a str>) {
        if depth > FRAGMENT_DEPTH_MAX {
            return;
        }
        for item in &selection.node.items {
            match &item.node {
                Selection::Field(field) => {
                    let key = field.node.response_key().node.as_str();
                    if !order.contains(&key) {
                        order.push(key);
                    }
                }
                Selection::FragmentSpread(spread) => {
                    if let Some(fragment) = self.document.fragments.get(&spread.node.fragment_name.node) {
                        self.response_keys(&fragment.node.selection_set, depth + 1, order);
                    }
                }
                Selection::InlineFragment(inline) => self.response_keys(&inline.node.selection_set, depth + 1, order),
            }
        }
    }
}

/// The item type of a list type as the registry writes it (`[User!]!`
/// gives `User!`); none for a type that is no list.
fn item_type(ty: &str) -> Option<&str> {
    ty.strip_suffix('!').unwrap_or(ty).strip_prefix('[')?.strip_suffix(']')
}

/// Whether a type, as the registry writes it (`[User!]!`), is non-null.
fn is_non_null(ty: &str) -> bool {
    ty.ends_with('!')
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_graphql::parser::parse_query;
    use async_graphql::{EmptySubscription, Object, Schema};

    struct Query;

    struct Parent;

    #[Object]
    impl Parent {
        async fn id(&self) -> i32 {
            1
        }
        async fn fails(&self) -> async_graphql::Result<i32> {
            Err("no".into())
        }
        async fn fails_nullable(&self) -> async_graphql::Result<Option<i32>> {
            Err("no".into())
        }
        async fn children(&self) -> Vec<Parent> {
            vec![Parent, Parent]
        }
    }

    #[Object]
    impl Query {
        async fn ok(&self) -> i32 {
            7
        }
        async fn parent(&self) -> Option<Parent> {
            Some(Parent)
        }
        async fn required_parent(&self) -> Parent {
            Parent
        }
        async fn needs(&self, id: i32) -> i32 {
            id
        }
    }

    struct Mutation;

    #[Object]
    impl Mutation {
        async fn touch(&self) -> i32 {
            1
        }
    }

    fn field_types() -> FieldTypes {
        use async_graphql::OutputType;
        let mut registry = Registry::default();
        registry.query_type = Query::create_type_info(&mut registry);
        registry.mutation_type = Some(Mutation::create_type_info(&mut registry));
        FieldTypes { registry }
    }

    /// Runs `query` on the test schema and completes the response; its JSON
    /// text (objects in the order written).
    fn run_text(query: &str) -> String {
        let schema = Schema::new(Query, Mutation, EmptySubscription);
        let mut response = futures_executor(schema.execute(query));
        let document = parse_query(query).expect("parses");
        field_types().complete(&document, None, &mut response);
        serde_json::to_string(&response).expect("serialises")
    }

    fn run(query: &str) -> serde_json::Value {
        serde_json::from_str(&run_text(query)).expect("JSON")
    }

    fn futures_executor<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().expect("runtime").block_on(future)
    }

    #[test]
    fn a_failed_nullable_field_is_null_in_its_place() {
        let response = run("{ ok parent { id failsNullable children { id } } }");
        let parent = &response["data"]["parent"];
        assert_eq!(parent["failsNullable"], serde_json::Value::Null, "{response}");
        assert_eq!(parent["id"], 1);
        let text = run_text("{ ok parent { id failsNullable children { id } } }");
        assert!(
            text.contains(r#""parent":{"id":1,"failsNullable":null,"children":"#),
            "the keys keep the selection's order: {text}"
        );
        assert_eq!(response["errors"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn a_failed_non_null_field_nulls_the_nearest_nullable_parent() {
        let response = run("{ ok renamed: parent { id fails } }");
        assert_eq!(response["data"]["renamed"], serde_json::Value::Null, "{response}");
        assert_eq!(response["data"]["ok"], 7);
    }

    #[test]
    fn the_null_moves_through_lists_and_fragments_to_the_nearest_nullable_field() {
        let response = run("{ ok parent { id children { ...F } } } fragment F on Parent { id fails }");
        // children is [Parent!]!: a failed item nulls the list, which nulls parent.
        assert_eq!(response["data"]["parent"], serde_json::Value::Null, "{response}");
        assert_eq!(response["data"]["ok"], 7);
    }

    #[test]
    fn a_failed_field_with_no_nullable_parent_nulls_data() {
        let response = run("{ ok requiredParent { fails } }");
        assert_eq!(response["data"], serde_json::Value::Null, "{response}");
        assert_eq!(response["errors"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn an_object_whose_every_field_failed_is_opened_again() {
        // async-graphql answers this with data null: every root field failed.
        let response = run("{ parent { failsNullable } }");
        assert_eq!(response["data"], serde_json::json!({ "parent": { "failsNullable": null } }), "{response}");
        let response = run("{ parent { fails } }");
        assert_eq!(response["data"], serde_json::json!({ "parent": null }), "{response}");
        let response = run("{ requiredParent { fails } }");
        assert_eq!(response["data"], serde_json::Value::Null, "{response}");
    }

    #[test]
    fn a_response_without_errors_is_left_alone() {
        let response = run("{ ok parent { id } }");
        assert_eq!(response["data"], serde_json::json!({ "ok": 7, "parent": { "id": 1 } }));
    }

    #[test]
    fn a_required_variable_must_be_sent_and_not_null() {
        let document =
            parse_query("query Q($id: Int!, $maybe: Int, $fallback: Int! = 3) { needs(id: $id) }").expect("parses");
        let missing = unusable_variable(&document, None, &Variables::default()).expect("refused");
        assert_eq!(missing.message, "Variable \"$id\" of required type \"Int!\" was not provided.");
        assert_eq!(missing.locations, [async_graphql::Pos { line: 1, column: 9 }]);
        let null = Variables::from_json(serde_json::json!({ "id": null }));
        let refused = unusable_variable(&document, Some("Q"), &null).expect("refused");
        assert_eq!(refused.message, "Variable \"$id\" of non-null type \"Int!\" must not be null.");
        let sent = Variables::from_json(serde_json::json!({ "id": 1 }));
        assert!(unusable_variable(&document, None, &sent).is_none(), "$maybe is nullable, $fallback has a default");
        assert!(unusable_variable(&document, Some("Other"), &Variables::default()).is_none(), "no such operation");
    }
}

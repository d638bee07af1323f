//! Operations run without the GraphQL executor. At a peak on-sale nearly
//! every request is the same `bookTickets` document with another input,
//! and async-graphql's execution of it (its request preparation, the
//! validation pass it still makes for a known operation, a boxed future
//! per field, the context and path bookkeeping) cost more than the booking
//! itself: about 37,000 of a booking's 127,000 instructions, against 2,000
//! in the ledger.
//!
//! A known operation (see [`crate::validated`]: it passed every validation
//! rule before) whose shape this module follows gets a [`DirectPlan`] when
//! it is first validated, and its later requests run the plan: a POST
//! body is read once into its members ([`PostBody`]) and the input
//! straight from its JSON, with no async-graphql request made; the same
//! booking function as the resolver's books; and the response is written
//! field by field from the values the resolvers give, with errors given
//! the locations and paths async-graphql gives them. (A request that
//! reaches the executor's path anyway, when its body is not read that
//! way, with `extensions`, a byte order mark, a key twice or a variable
//! the operation does not use, is run by the plan from there, its input
//! read from async-graphql's variables.)
//! The answer is the one the executor gives, byte for byte; the
//! end-to-end tests hold each shape to it by sending the same request
//! through both.
//!
//! The shape followed: a mutation with one variable, `$name: BookInput!`
//! (no default), selecting `bookTickets(input: $name)` alone (an alias is
//! fine), with any of the `Booking` fields that are not objects, and
//! `tickets` with any of its fields but `ticketType`. No directives, no
//! fragments, no response key twice in one selection. Anything else (and
//! an input this module would read otherwise than async-graphql does: a
//! field it does not know, a value of another type) runs on the executor
//! as before.

use std::borrow::Cow;
use std::sync::Arc;

use async_graphql::parser::types::{
    BaseType, DocumentOperations, ExecutableDocument, Field, OperationDefinition, OperationType, Selection,
    SelectionSet,
};
use async_graphql::{Name, PathSegment, Pos, Positioned, Request, Response, ServerError, Value as ConstValue};
use async_graphql_value::Value;
use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::auth::Viewer;
use crate::completion::FieldTypes;
use crate::schema::bookings::{self, BookArguments, BookingObject, DirectBooking};
use crate::validated::ValidatedOperations;
use crate::App;

/// How to run one known operation without the executor.
pub struct DirectPlan {
    /// What the metrics and the access log call the operation: its name,
    /// else its field's (as the query limits' measure names it).
    label: String,
    /// The variable that holds `bookTickets`' input.
    variable: Name,
    /// The mutation field's response key (its alias, else `bookTickets`).
    key: Name,
    /// Where the field is in the document, for its errors' `locations`.
    pos: Pos,
    /// The booking's fields, in the document's order.
    selection: Vec<Selected<BookingField>>,
}

/// One field of a selection: its response key, where it is written, and
/// what it selects.
pub(crate) struct Selected<F> {
    pub key: Name,
    pub pos: Pos,
    pub field: F,
}

/// The `Booking` fields a plan serves.
pub(crate) enum BookingField {
    Typename,
    Id,
    Status,
    Quantity,
    TotalCents,
    TotalCentsExact,
    CreatedAt,
    ExpiresAt,
    ConfirmedAt,
    Tickets(Vec<Selected<TicketField>>),
}

/// The `Ticket` fields a plan serves.
pub(crate) enum TicketField {
    Typename,
    Id,
    Code,
    CheckedInAt,
}

/// The plan for the operation `operation_name` picks in `document` (as
/// async-graphql picks it), if its shape is one this module follows.
pub(crate) fn plan(document: &ExecutableDocument, operation_name: Option<&str>) -> Option<DirectPlan> {
    let (name, operation) = picked_operation(document, operation_name)?;
    let operation = &operation.node;
    if operation.ty != OperationType::Mutation || !operation.directives.is_empty() {
        return None;
    }
    let [definition] = operation.variable_definitions.as_slice() else { return None };
    let definition = &definition.node;
    let ty = &definition.var_type.node;
    let is_book_input = matches!(&ty.base, BaseType::Named(name) if name.as_str() == "BookInput") && !ty.nullable;
    if !is_book_input || definition.default_value.is_some() || !definition.directives.is_empty() {
        return None;
    }
    let [root] = operation.selection_set.node.items.as_slice() else { return None };
    let Selection::Field(field) = &root.node else { return None };
    let book = &field.node;
    if book.name.node.as_str() != "bookTickets" || !book.directives.is_empty() {
        return None;
    }
    let [(argument, value)] = book.arguments.as_slice() else { return None };
    match &value.node {
        Value::Variable(variable) if argument.node.as_str() == "input" && *variable == definition.name.node => {}
        _ => return None,
    }
    Some(DirectPlan {
        label: name.map_or_else(|| book.name.node.to_string(), |name| name.to_string()),
        variable: definition.name.node.clone(),
        key: book.response_key().node.clone(),
        pos: field.pos,
        selection: selection(&book.selection_set.node, booking_field)?,
    })
}

/// The operation async-graphql runs for `operation_name`, and its name.
fn picked_operation<'a>(
    document: &'a ExecutableDocument,
    operation_name: Option<&str>,
) -> Option<(Option<&'a Name>, &'a Positioned<OperationDefinition>)> {
    match (&document.operations, operation_name) {
        (DocumentOperations::Multiple(operations), Some(name)) => {
            operations.get_key_value(name).map(|(n, o)| (Some(n), o))
        }
        (DocumentOperations::Single(operation), None) => Some((None, operation)),
        (DocumentOperations::Multiple(operations), None) if operations.len() == 1 => {
            operations.iter().next().map(|(n, o)| (Some(n), o))
        }
        _ => None,
    }
}

/// The fields of `set`, each read by `field_of`; `None` if any is not a
/// plain field (a fragment, a directive, an argument), is one `field_of`
/// does not serve, or repeats a response key.
fn selection<F>(set: &SelectionSet, field_of: fn(&Field) -> Option<F>) -> Option<Vec<Selected<F>>> {
    let mut fields: Vec<Selected<F>> = Vec::with_capacity(set.items.len());
    for item in &set.items {
        let Selection::Field(field) = &item.node else { return None };
        let node = &field.node;
        if !node.directives.is_empty() || !node.arguments.is_empty() {
            return None;
        }
        let key = node.response_key().node.clone();
        if fields.iter().any(|seen| seen.key == key) {
            return None;
        }
        fields.push(Selected { key, pos: field.pos, field: field_of(node)? });
    }
    Some(fields)
}

fn booking_field(field: &Field) -> Option<BookingField> {
    let leaf = field.selection_set.node.items.is_empty();
    Some(match field.name.node.as_str() {
        "tickets" => BookingField::Tickets(selection(&field.selection_set.node, ticket_field)?),
        _ if !leaf => return None,
        "__typename" => BookingField::Typename,
        "id" => BookingField::Id,
        "status" => BookingField::Status,
        "quantity" => BookingField::Quantity,
        "totalCents" => BookingField::TotalCents,
        "totalCentsExact" => BookingField::TotalCentsExact,
        "createdAt" => BookingField::CreatedAt,
        "expiresAt" => BookingField::ExpiresAt,
        "confirmedAt" => BookingField::ConfirmedAt,
        _ => return None,
    })
}

fn ticket_field(field: &Field) -> Option<TicketField> {
    if !field.selection_set.node.items.is_empty() {
        return None;
    }
    Some(match field.name.node.as_str() {
        "__typename" => TicketField::Typename,
        "id" => TicketField::Id,
        "code" => TicketField::Code,
        "checkedInAt" => TicketField::CheckedInAt,
        _ => return None,
    })
}

impl DirectPlan {
    /// The booking's input in `request`'s variables, if it is one this
    /// module reads exactly as async-graphql would: an object of the
    /// input's fields and no other, each of the type it coerces without a
    /// question (an `ID` as a string or an integer, `quantity` an integer,
    /// `hold` a boolean, null or absent).
    pub(crate) fn input(&self, request: &Request) -> Option<BookArguments> {
        let ConstValue::Object(fields) = request.variables.get(&self.variable)? else { return None };
        let (mut ticket_type_id, mut quantity, mut idempotency_key, mut hold) = (None, None, None, false);
        for (name, value) in fields {
            match (name.as_str(), value) {
                ("ticketTypeId", ConstValue::String(id)) => ticket_type_id = Some(id.clone()),
                ("ticketTypeId", ConstValue::Number(id)) if id.is_i64() => ticket_type_id = Some(id.to_string()),
                ("quantity", ConstValue::Number(count)) => quantity = Some(count.as_i64()?),
                ("idempotencyKey", ConstValue::String(key)) => idempotency_key = Some(key.clone()),
                ("hold", ConstValue::Boolean(held)) => hold = *held,
                ("hold", ConstValue::Null) => hold = false,
                _ => return None,
            }
        }
        Some(BookArguments {
            ticket_type_id: ticket_type_id?,
            quantity: quantity?,
            idempotency_key: idempotency_key?,
            hold,
        })
    }

    /// What the metrics and the access log call the operation.
    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    /// Books for `viewer` and answers as the executor would have answered
    /// the request of `query` and `operation_name`.
    pub(crate) async fn run(
        &self,
        app: &Arc<App>,
        viewer: &Viewer,
        input: BookArguments,
        query: &str,
        operation_name: Option<&str>,
        field_types: &FieldTypes,
    ) -> DirectAnswer {
        let root_error = |error: crate::ApiError| {
            let path = vec![PathSegment::Field(self.key.to_string())];
            ServerError { path, ..async_graphql::Error::from(error).into_server_error(self.pos) }
        };
        let errors = match bookings::book(app, viewer, input).await {
            Ok(booking) => {
                let booking = BookingObject(booking);
                let failed = booking.failed_fields(&self.selection, &self.key);
                if !failed.is_empty() {
                    // A failed field is non-null in a non-null `Booking`,
                    // itself the non-null root field: the executor's answer,
                    // completed, has `data` null and these errors.
                    failed
                } else {
                    let written = Written {
                        key: &self.key,
                        booking: DirectBooking { booking: &booking, selection: &self.selection },
                    };
                    match serde_json::to_vec(&written) {
                        Ok(body) => return DirectAnswer::Written(body),
                        Err(error) => {
                            tracing::error!(%error, "a booking's answer did not serialise");
                            vec![root_error(crate::ApiError::Internal)]
                        }
                    }
                }
            }
            Err(error) => vec![root_error(error)],
        };
        let mut response = Response::from_errors(errors);
        if !response.errors.is_empty() {
            // The kept parse of the text (a SOLD_OUT in a rush comes here).
            let document =
                app.parsed.document(query).or_else(|| async_graphql::parser::parse_query(query).ok().map(Arc::new));
            if let Some(document) = document {
                field_types.complete(&document, operation_name, &mut response);
            }
        }
        DirectAnswer::Response(response)
    }
}

/// A POST body read for a direct run, without an async-graphql request:
/// the operation's text and name, its plan, and the booking's input.
pub(crate) struct DirectRequest<'a> {
    pub query: Cow<'a, str>,
    pub operation_name: Option<Cow<'a, str>>,
    pub plan: Arc<DirectPlan>,
    pub input: BookArguments,
}

/// A POST body of one operation, its variables left unread until it is
/// known whether the operation runs directly. A body with any other
/// member (`extensions`: a persisted query) is not read this way.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PostBody<'a> {
    #[serde(borrow)]
    query: Cow<'a, str>,
    #[serde(borrow, default, rename = "operationName")]
    operation_name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    variables: Option<&'a RawValue>,
}

impl<'a> PostBody<'a> {
    /// `body` as one operation, if it is a JSON object of the members
    /// `query`, `operationName` and `variables` alone.
    pub(crate) fn read(body: &'a [u8]) -> Option<PostBody<'a>> {
        serde_json::from_slice(body).ok()
    }

    /// This body as a direct run, when it is one: an operation with a plan
    /// (known, see [`ValidatedOperations::direct_plan`]) and variables of
    /// no more than `variables_bytes_max` bytes that hold exactly its
    /// input, read as [`DirectPlan::input`] reads it. Otherwise the body
    /// back, nothing done.
    pub(crate) fn direct(
        self,
        validated: &ValidatedOperations,
        variables_bytes_max: usize,
    ) -> Result<DirectRequest<'a>, PostBody<'a>> {
        let Some(variables) = self.variables else { return Err(self) };
        // Their text is at least as long as they are written out, which is
        // what the query limits measure.
        if variables.get().len() > variables_bytes_max {
            return Err(self);
        }
        let Some(plan) = validated.direct_plan(&self.query, self.operation_name.as_deref()) else { return Err(self) };
        let mut reader = serde_json::Deserializer::from_str(variables.get());
        let read = VariablesOf { variable: plan.variable.as_str() }.deserialize(&mut reader);
        match read.and_then(|input| reader.end().map(|()| input)) {
            Ok(input) => Ok(DirectRequest { query: self.query, operation_name: self.operation_name, plan, input }),
            Err(_) => Err(self),
        }
    }

    /// This body as async-graphql's request, as async-graphql reads the
    /// same JSON; `None` if its variables are not what it reads (the body
    /// is then read as usual, which says why).
    pub(crate) fn into_request(self) -> Option<Request> {
        let mut request = Request::new(self.query.into_owned());
        request.operation_name = self.operation_name.map(Cow::into_owned);
        if let Some(variables) = self.variables {
            request.variables = serde_json::from_str(variables.get()).ok()?;
        }
        Some(request)
    }
}

/// The variables of a plan, as JSON: an object holding its variable and no
/// other, the input as [`StrictInput`] reads it.
struct VariablesOf<'v> {
    variable: &'v str,
}

impl<'de> DeserializeSeed<'de> for VariablesOf<'_> {
    type Value = BookArguments;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<BookArguments, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for VariablesOf<'_> {
    type Value = BookArguments;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(formatter, "an object holding ${} alone", self.variable)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<BookArguments, A::Error> {
        let mut input = None;
        while let Some(name) = map.next_key::<Cow<'de, str>>()? {
            if name != self.variable || input.is_some() {
                return Err(A::Error::custom("another variable, or the input twice"));
            }
            input = Some(map.next_value::<StrictInput>()?);
        }
        let input = input.ok_or_else(|| A::Error::custom("no input"))?;
        Ok(BookArguments {
            ticket_type_id: input.ticket_type_id.0,
            quantity: input.quantity,
            idempotency_key: input.idempotency_key,
            hold: input.hold.unwrap_or(false),
        })
    }
}

/// `BookInput` as JSON, read only where async-graphql reads it the same
/// way: its four fields and no other, none twice, each of its own JSON
/// type (`quantity` an integer that fits 64 bits, as async-graphql's
/// `Int` parse of it needs; `hold` absent or null meaning false).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct StrictInput {
    ticket_type_id: IdOf,
    quantity: i64,
    idempotency_key: String,
    #[serde(default)]
    hold: Option<bool>,
}

/// A GraphQL `ID` as JSON: a string, or an integer that fits an i64
/// (written in decimal), as async-graphql reads one.
struct IdOf(String);

impl<'de> serde::Deserialize<'de> for IdOf {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<IdOf, D::Error> {
        struct IdVisitor;
        impl Visitor<'_> for IdVisitor {
            type Value = IdOf;
            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("a string or an integer")
            }
            fn visit_str<E: serde::de::Error>(self, id: &str) -> Result<IdOf, E> {
                Ok(IdOf(id.to_string()))
            }
            fn visit_string<E: serde::de::Error>(self, id: String) -> Result<IdOf, E> {
                Ok(IdOf(id))
            }
            fn visit_i64<E: serde::de::Error>(self, id: i64) -> Result<IdOf, E> {
                Ok(IdOf(id.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, id: u64) -> Result<IdOf, E> {
                i64::try_from(id).map(|id| IdOf(id.to_string())).map_err(|_| E::custom("past an i64"))
            }
        }
        deserializer.deserialize_any(IdVisitor)
    }
}

/// What a direct run answers.
pub(crate) enum DirectAnswer {
    /// The booking was made and every field served: the response's body,
    /// `{"data":{key:booking}}` as async-graphql's response serialises.
    Written(Vec<u8>),
    /// Anything else: the executor's response.
    Response(Response),
}

/// `{"data":{key:booking}}`.
struct Written<'a> {
    key: &'a Name,
    booking: DirectBooking<'a>,
}

impl serde::Serialize for Written<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        struct Data<'a>(&'a Written<'a>);
        impl serde::Serialize for Data<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry(self.0.key.as_str(), &self.0.booking)?;
                map.end()
            }
        }
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry("data", &Data(self))?;
        map.end()
    }
}

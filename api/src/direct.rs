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
//! it is first validated, and its later requests run the plan: the input
//! read straight from the variables, the same booking function as the
//! resolver, and the response built field by field from the resolvers'
//! own methods, with errors given the locations and paths async-graphql
//! gives them. The answer is the one the executor gives, byte for byte;
//! the end-to-end tests hold each shape to it by sending the same request
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

use std::sync::Arc;

use async_graphql::parser::types::{
    BaseType, DocumentOperations, ExecutableDocument, Field, OperationDefinition, OperationType, Selection,
    SelectionSet,
};
use async_graphql::{Name, PathSegment, Pos, Positioned, Request, Response, ServerError, Value as ConstValue};
use async_graphql_value::Value;

use crate::auth::Viewer;
use crate::completion::FieldTypes;
use crate::schema::bookings::{self, BookArguments, BookingObject, DirectBooking};
use crate::App;

/// How to run one known operation without the executor.
pub struct DirectPlan {
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
    let operation = &picked_operation(document, operation_name)?.node;
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
        variable: definition.name.node.clone(),
        key: book.response_key().node.clone(),
        pos: field.pos,
        selection: selection(&book.selection_set.node, booking_field)?,
    })
}

/// The operation async-graphql runs for `operation_name`.
fn picked_operation<'a>(
    document: &'a ExecutableDocument,
    operation_name: Option<&str>,
) -> Option<&'a Positioned<OperationDefinition>> {
    match (&document.operations, operation_name) {
        (DocumentOperations::Multiple(operations), Some(name)) => operations.get(name),
        (DocumentOperations::Single(operation), None) => Some(operation),
        (DocumentOperations::Multiple(operations), None) if operations.len() == 1 => operations.values().next(),
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

    /// Books for `viewer` and answers as the executor would have answered
    /// `request` (whose document is parsed: a known operation's is).
    pub(crate) async fn run(
        &self,
        app: &Arc<App>,
        viewer: &Viewer,
        input: BookArguments,
        request: &mut Request,
        field_types: &FieldTypes,
    ) -> DirectAnswer {
        let mut errors = Vec::new();
        let data = match bookings::book(app, viewer, input).await {
            Ok(booking) => {
                let booking = BookingObject(booking);
                if booking.serves_all(&self.selection) {
                    let written = Written {
                        key: &self.key,
                        booking: DirectBooking { booking: &booking, selection: &self.selection },
                    };
                    if let Ok(body) = serde_json::to_vec(&written) {
                        return DirectAnswer::Written(body);
                    }
                }
                let value = booking.direct_value(&self.selection, &self.key, &mut errors);
                let mut data = async_graphql::indexmap::IndexMap::with_capacity(1);
                data.insert(self.key.clone(), value);
                ConstValue::Object(data)
            }
            Err(error) => {
                let path = vec![PathSegment::Field(self.key.to_string())];
                errors.push(ServerError { path, ..async_graphql::Error::from(error).into_server_error(self.pos) });
                ConstValue::Null
            }
        };
        let mut response = Response::new(data);
        response.errors = errors;
        if !response.errors.is_empty() {
            let operation_name = request.operation_name.clone();
            if let Ok(document) = request.parsed_query() {
                field_types.complete(document, operation_name.as_deref(), &mut response);
            }
        }
        DirectAnswer::Response(response)
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

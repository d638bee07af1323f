//! Scalars of the contract beyond GraphQL's own.

use async_graphql::{InputValueError, InputValueResult, Scalar, ScalarType, Value};
use chrono::{SecondsFormat, TimeZone, Utc};

/// RFC 3339 in UTC on output ("2026-12-31T20:00:00Z"); any RFC 3339 offset
/// on input. Held as unix milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DateTime(pub i64);

impl DateTime {
    /// The RFC 3339 UTC text of this time.
    pub fn to_rfc3339(self) -> String {
        match self.to_value() {
            Value::String(text) => text,
            _ => format!("{} ms since the epoch", self.0),
        }
    }
}

/// RFC 3339, UTC, e.g. "2026-12-31T20:00:00Z"; milliseconds when not zero
/// ("2026-12-31T20:00:00.250Z"). Input takes any RFC 3339 offset.
#[Scalar(name = "DateTime", specified_by_url = "https://www.rfc-editor.org/rfc/rfc3339")]
impl ScalarType for DateTime {
    /// Checked when the request is validated, so that a variable that is
    /// no date-time refuses the whole request (HTTP 400 with
    /// graphql-response+json), as any value that does not coerce does,
    /// instead of failing only its field while the others run.
    fn is_valid(value: &Value) -> bool {
        matches!(value, Value::String(text) if chrono::DateTime::parse_from_rfc3339(text).is_ok())
    }

    fn parse(value: Value) -> InputValueResult<Self> {
        let Value::String(text) = &value else {
            return Err(InputValueError::expected_type(value));
        };
        let parsed = chrono::DateTime::parse_from_rfc3339(text).map_err(|_| {
            InputValueError::custom(format!("{text:?} is not an RFC 3339 date-time like 2026-12-31T20:00:00Z"))
        })?;
        Ok(DateTime(parsed.timestamp_millis()))
    }

    fn to_value(&self) -> Value {
        match Utc.timestamp_millis_opt(self.0).single() {
            Some(at) => Value::String(at.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
            None => Value::Null,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_times_are_rfc3339_utc() {
        let parsed = DateTime::parse(Value::String("2026-12-31T22:00:00+02:00".into())).unwrap();
        assert_eq!(parsed.to_value(), Value::String("2026-12-31T20:00:00Z".into()));
        let millis = DateTime::parse(Value::String("2026-12-31T20:00:00.250Z".into())).unwrap();
        assert_eq!(millis.to_value(), Value::String("2026-12-31T20:00:00.250Z".into()));
        assert!(DateTime::parse(Value::String("tomorrow".into())).is_err());
        assert!(DateTime::parse(Value::Number(5.into())).is_err());
    }
}

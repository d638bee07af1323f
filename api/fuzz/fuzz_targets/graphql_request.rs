//! The GraphQL request entry, before anything executes: any body is parsed
//! as a request or batch, each request's sizes are checked, its query parsed
//! and its operation measured against the limits. Nothing may panic, and
//! measuring must stay cheap whatever the input.
#![no_main]

use api::limits::{inspect, QueryLimits};
use async_graphql::BatchRequest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let limits = QueryLimits::default();
    let Ok(batch) = serde_json::from_slice::<BatchRequest>(bytes) else { return };
    let requests = match batch {
        BatchRequest::Single(request) => vec![request],
        BatchRequest::Batch(requests) => requests,
    };
    for mut request in requests.into_iter().take(limits.batch_max) {
        if let Ok(Some(cost)) = inspect(&mut request, &limits, None) {
            assert!(cost.depth <= limits.depth_max);
            assert!(cost.complexity <= limits.complexity_max);
        }
    }
    // The query text alone, as the parser sees it.
    if let Ok(text) = std::str::from_utf8(bytes) {
        let mut request = async_graphql::Request::new(text);
        let _ = inspect(&mut request, &limits, None);
    }
});

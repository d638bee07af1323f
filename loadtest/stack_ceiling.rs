//! stack_ceiling: the ceiling of the HTTP + GraphQL stack Marquee is built
//! on, measured beside Marquee by loadtest/compare-postgres.sh and
//! loadtest/compare-graph.sh. A bare async-graphql schema served by axum on
//! hyper and tokio with mimalloc: Marquee's crates and nothing else (no
//! auth, query limits, access log, storage or log readers). What it answers
//! per second on a machine bounds what any server of this stack answers
//! there, Marquee included.
//!
//! Usage: `stack_ceiling ADDR` with ADDR a loopback address and port (port 0
//! picks a free one); prints `listening on http://ADDR` once it accepts
//! connections, and serves until it is killed.
//!
//! Schema: `{ __typename }`, `{ hello }`, and `mutation { book(quantity: Int!) }`,
//! which returns the quantity.

use std::net::SocketAddr;

use async_graphql::{EmptySubscription, Object, Schema};
use async_graphql_axum::{GraphQLRequest, GraphQLResponse};
use axum::extract::State;
use axum::routing::post;
use axum::Router;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Query;

#[Object]
impl Query {
    async fn hello(&self) -> &'static str {
        "hello"
    }
}

struct Mutation;

#[Object]
impl Mutation {
    async fn book(&self, quantity: i32) -> i32 {
        quantity
    }
}

type Bare = Schema<Query, Mutation, EmptySubscription>;

async fn graphql(State(schema): State<Bare>, request: GraphQLRequest) -> GraphQLResponse {
    schema.execute(request.into_inner()).await.into()
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(addr), None) = (args.next(), args.next()) else {
        eprintln!("usage: stack_ceiling ADDR (a loopback address and port, e.g. 127.0.0.1:0)");
        std::process::exit(2);
    };
    let addr: SocketAddr = match addr.parse() {
        Ok(addr) => addr,
        Err(error) => {
            eprintln!("stack_ceiling: {addr:?} is not an address and port: {error}");
            std::process::exit(2);
        }
    };
    if !addr.ip().is_loopback() {
        eprintln!("stack_ceiling: {addr} is not a loopback address; it only serves this machine");
        std::process::exit(2);
    }
    let schema = Schema::build(Query, Mutation, EmptySubscription).finish();
    let app = Router::new().route("/graphql", post(graphql)).with_state(schema);
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("stack_ceiling: cannot listen on {addr}: {error}");
            std::process::exit(1);
        }
    };
    let bound = listener.local_addr().expect("a bound listener has an address");
    println!("listening on http://{bound}");
    if let Err(error) = axum::serve(listener, app).await {
        eprintln!("stack_ceiling: {error}");
        std::process::exit(1);
    }
}

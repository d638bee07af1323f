// rush.js: a peak on-sale ("the doors open at 10:00").
//
// Measures: how fast many buyers booking one hot ticket type at the same
// moment are served, and that the ledger never oversells while doing it.
// Endpoint:  POST $MARQUEE_URL/graphql, mutation bookTickets (hold: false).
// Target:    p99 of bookTickets < 500 ms: with 500 buyers in flight on 2
//            cores shared with k6 (which takes about 1.3 of them) the wait
//            is mostly queueing (500 in flight / ~3k served a second is
//            ~170 ms); zero unexpected errors, sold <= capacity, sold equal
//            to the sum of the quantities k6 saw confirmed, available equal
//            to capacity - sold.
//
// Run:  k6 run loadtest/rush.js          (or loadtest/rush.sh, which starts
//                                          a server on a temp data dir)
// Env:  MARQUEE_URL     server base URL            [http://127.0.0.1:8080]
//       CAPACITY        seats of the hot type       [5000]
//       BUYERS          registered buyers           [300]
//       VUS             concurrent virtual users    [500]
//       PER_USER_LIMIT  per-user limit, unset/empty = none
//       REGISTER_PARALLEL  registrations in flight during setup [8]
//       MAX_DURATION    bound on the rush phase     [120s]
//       P99_MS          p99 threshold in ms         [500]
//       SUMMARY_JSON    optional path: key figures also written as JSON
//
// Each VU is a buyer (VU n uses buyer n mod BUYERS) who keeps booking 1-4
// seats with a fresh idempotency key until the event is sold out to them:
// after a SOLD_OUT for q > 1 seats it asks for fewer; a SOLD_OUT for one
// seat means nothing is left (seats never come back: no holds, no
// cancellations), so the VU stops. With a per-user limit, LIMIT_EXCEEDED
// for one seat means this buyer is done.

import http from 'k6/http';
import { check, fail, sleep } from 'k6';
import { Counter, Gauge, Rate, Trend } from 'k6/metrics';

// ---------------------------------------------------------------- settings

const BASE_URL = (__ENV.MARQUEE_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');
const GRAPHQL_URL = `${BASE_URL}/graphql`;
const CAPACITY = intEnv('CAPACITY', 5000);
const BUYERS = intEnv('BUYERS', 300);
const VUS = intEnv('VUS', 500);
const PER_USER_LIMIT = __ENV.PER_USER_LIMIT ? intEnv('PER_USER_LIMIT', 0) : null;
const REGISTER_PARALLEL = intEnv('REGISTER_PARALLEL', 8);
const MAX_DURATION = __ENV.MAX_DURATION || '120s';
const P99_MS = intEnv('P99_MS', 500);
const QUANTITY_MAX = 4;
const PASSWORD = 'rush-password-0123';

function intEnv(name, fallback) {
  const raw = __ENV[name];
  if (raw === undefined || raw === '') return fallback;
  const value = parseInt(raw, 10);
  if (!Number.isInteger(value) || String(value) !== raw.trim()) {
    throw new Error(`${name} must be an integer, got "${raw}"`);
  }
  return value;
}

// ---------------------------------------------------------------- metrics

// Successful bookings and the seats they confirmed, as k6 saw them.
const bookingsConfirmed = new Counter('bookings_confirmed');
const seatsConfirmed = new Counter('seats_confirmed');
// Clean refusals.
const soldOutRejections = new Counter('sold_out_rejections');
const limitRejections = new Counter('limit_rejections');
// Any answer that is neither a correct confirmation nor a clean refusal.
const unexpectedErrors = new Rate('unexpected_errors');
// bookTickets requests and their latency (the same numbers as
// http_req_duration{name:bookTickets}, easier to read in handleSummary).
const bookRequests = new Counter('book_requests');
const bookLatency = new Trend('book_latency', true);
// +quantity for every confirmation k6 saw, minus the server's final `sold`
// in teardown: it must end at exactly 0 (a threshold enforces it, so a
// mismatch fails the run).
const seatDiscrepancy = new Counter('seat_discrepancy');
// Final state, read once in teardown.
const finalSold = new Gauge('final_sold');
const finalAvailable = new Gauge('final_available');
const finalCapacity = new Gauge('final_capacity');
const oversold = new Gauge('oversold_seats');
const rushSeconds = new Gauge('rush_seconds');

// ---------------------------------------------------------------- options

export const options = {
  setupTimeout: '300s',
  teardownTimeout: '60s',
  scenarios: {
    rush: {
      // Every VU starts together right after setup, runs one long iteration
      // (its buyer's booking loop) and ends when the stock is gone.
      executor: 'per-vu-iterations',
      vus: VUS,
      iterations: 1,
      maxDuration: MAX_DURATION,
      gracefulStop: '10s',
    },
  },
  thresholds: {
    [`http_req_duration{name:bookTickets}`]: [`p(99)<${P99_MS}`],
    unexpected_errors: ['rate==0'],
    checks: ['rate==1'],
    seat_discrepancy: ['count==0'],
    oversold_seats: ['value==0'],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'p(95)', 'p(99)', 'max'],
};

// ---------------------------------------------------------------- GraphQL

const REGISTER = `mutation($email: String!, $password: String!, $name: String!, $role: Role) {
  register(email: $email, password: $password, name: $name, role: $role) { token user { id } } }`;
const CREATE_EVENT = `mutation($i: CreateEventInput!) { createEvent(input: $i) { id } }`;
const ADD_TICKET_TYPE = `mutation($e: ID!, $t: TicketTypeInput!) { addTicketType(eventId: $e, input: $t) { id } }`;
const PUBLISH = `mutation($id: ID!) { publishEvent(id: $id) { id } }`;
const BOOK = `mutation($input: BookInput!) { bookTickets(input: $input) { id status quantity tickets { code } } }`;
const FINAL_STATE = `query($id: ID!) { event(id: $id) { ticketTypes { id sold available capacity } } }`;

function gqlRequest(query, variables, token, name) {
  const headers = { 'Content-Type': 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  return {
    method: 'POST',
    url: GRAPHQL_URL,
    body: JSON.stringify({ query, variables }),
    params: { headers, tags: { name }, timeout: '30s' },
  };
}

// One setup/teardown call that must succeed; stops the test otherwise.
function gqlMust(query, variables, token, name) {
  const r = gqlRequest(query, variables, token, name);
  const res = http.request(r.method, r.url, r.body, r.params);
  const body = parseBody(res);
  if (res.status !== 200 || !body || body.errors || !body.data) {
    fail(`${name} failed: HTTP ${res.status} ${String(res.body).slice(0, 300)}`);
  }
  return body.data;
}

function parseBody(res) {
  try {
    return JSON.parse(res.body);
  } catch (_) {
    return null;
  }
}

function errorCode(body) {
  if (!body || !Array.isArray(body.errors) || body.errors.length === 0) return null;
  const ext = body.errors[0].extensions;
  return (ext && ext.code) || 'NO_CODE';
}

// ---------------------------------------------------------------- setup

export function setup() {
  const runId = `${Date.now().toString(36)}${Math.floor(Math.random() * 1e6).toString(36)}`;

  const organizer = gqlMust(REGISTER, {
    email: `organizer-${runId}@rush.example`,
    password: PASSWORD,
    name: 'Rush Organizer',
    role: 'ORGANIZER',
  }, null, 'register').register.token;

  const eventId = gqlMust(CREATE_EVENT, {
    i: { title: `Rush ${runId}`, startsAt: '2097-06-01T20:00:00Z', city: 'Berlin' },
  }, organizer, 'createEvent').createEvent.id;

  const ticketTypeId = gqlMust(ADD_TICKET_TYPE, {
    e: eventId,
    t: { name: 'Hot GA', priceCents: 4900, currency: 'EUR', capacity: CAPACITY, perUserLimit: PER_USER_LIMIT },
  }, organizer, 'addTicketType').addTicketType.id;

  gqlMust(PUBLISH, { id: eventId }, organizer, 'publishEvent');

  // Buyers: argon2id makes each registration cost tens of ms of CPU, so a
  // few at a time (http.batch runs a chunk in parallel). Registration is
  // anonymous, so the per-address rate limit applies: a refusal (429) is
  // retried after the Retry-After it names, as a well-behaved client does.
  const tokens = [];
  const started = Date.now();
  for (let first = 0; first < BUYERS; first += REGISTER_PARALLEL) {
    let chunk = [];
    for (let i = first; i < Math.min(first + REGISTER_PARALLEL, BUYERS); i++) {
      const r = gqlRequest(REGISTER, {
        email: `buyer-${i}-${runId}@rush.example`,
        password: PASSWORD,
        name: `Buyer ${i}`,
      }, null, 'register');
      chunk.push([r.method, r.url, r.body, r.params]);
    }
    for (let attempt = 1; chunk.length > 0; attempt++) {
      const refused = [];
      let wait = 0;
      http.batch(chunk).forEach((res, n) => {
        const body = parseBody(res);
        if (res.status === 429 && attempt < 30) {
          refused.push(chunk[n]);
          wait = Math.max(wait, Number(res.headers['Retry-After']) || 1);
          return;
        }
        if (res.status !== 200 || !body || body.errors || !body.data) {
          fail(`registering a buyer failed: HTTP ${res.status} ${String(res.body).slice(0, 300)}`);
        }
        tokens.push(body.data.register.token);
      });
      if (refused.length > 0) sleep(wait);
      chunk = refused;
    }
  }
  console.log(`setup: event ${eventId}, ticket type ${ticketTypeId} (capacity ${CAPACITY}, ` +
    `per-user limit ${PER_USER_LIMIT === null ? 'none' : PER_USER_LIMIT}), ` +
    `${tokens.length} buyers registered in ${((Date.now() - started) / 1000).toFixed(1)} s, ${VUS} VUs`);

  return { runId, organizer, eventId, ticketTypeId, tokens, rushStartedMs: Date.now() };
}

// ---------------------------------------------------------------- the rush

export default function (data) {
  const token = data.tokens[(__VU - 1) % data.tokens.length];
  let attempt = 0;
  let maxQuantity = QUANTITY_MAX;
  let unexpectedSeen = 0;

  for (;;) {
    attempt += 1;
    const quantity = 1 + Math.floor(Math.random() * maxQuantity);
    // Unique per booking per user: run, VU, attempt.
    const idempotencyKey = `rush-${data.runId}-${__VU}-${attempt}`;
    const r = gqlRequest(BOOK, {
      input: { ticketTypeId: data.ticketTypeId, quantity, idempotencyKey, hold: false },
    }, token, 'bookTickets');
    const res = http.request(r.method, r.url, r.body, r.params);
    bookRequests.add(1);
    bookLatency.add(res.timings.duration);

    const body = parseBody(res);
    const code = errorCode(body);
    const booking = body && body.data && body.data.bookTickets;

    if (res.status === 200 && booking && !code) {
      const ok = check(booking, {
        'booking is CONFIRMED': (b) => b.status === 'CONFIRMED',
        'booking quantity is the one asked for': (b) => b.quantity === quantity,
        'one ticket per seat': (b) => Array.isArray(b.tickets) && b.tickets.length === quantity,
      });
      unexpectedErrors.add(!ok);
      // Count what the server confirmed even if a check failed: the seats
      // are gone either way, and the final comparison must see them.
      if (booking.status === 'CONFIRMED') {
        bookingsConfirmed.add(1);
        seatsConfirmed.add(booking.quantity);
        seatDiscrepancy.add(booking.quantity);
      }
      continue;
    }

    if (res.status === 200 && code === 'SOLD_OUT') {
      check(code, { 'refusal is a clean SOLD_OUT or LIMIT_EXCEEDED': () => true });
      unexpectedErrors.add(false);
      soldOutRejections.add(1);
      if (quantity === 1) return; // nothing left at all
      maxQuantity = quantity - 1; // fewer seats left than asked: ask for fewer
      continue;
    }

    if (res.status === 200 && code === 'LIMIT_EXCEEDED' && PER_USER_LIMIT !== null) {
      check(code, { 'refusal is a clean SOLD_OUT or LIMIT_EXCEEDED': () => true });
      unexpectedErrors.add(false);
      limitRejections.add(1);
      if (quantity === 1) return; // this buyer has all they may have
      maxQuantity = quantity - 1;
      continue;
    }

    // Anything else: a transport error, another status, another code, or a
    // malformed answer.
    check(code, { 'refusal is a clean SOLD_OUT or LIMIT_EXCEEDED': () => false });
    unexpectedErrors.add(true);
    console.error(`VU ${__VU}: unexpected answer to bookTickets: status ${res.status} ` +
      `error "${res.error || ''}" body ${String(res.body).slice(0, 300)}`);
    // Do not hammer a broken server forever: this VU gives up after a
    // handful of unexpected answers.
    unexpectedSeen += 1;
    if (unexpectedSeen >= 5) return;
  }
}

// ---------------------------------------------------------------- teardown

export function teardown(data) {
  rushSeconds.add((Date.now() - data.rushStartedMs) / 1000);

  const event = gqlMust(FINAL_STATE, { id: data.eventId }, data.organizer, 'finalState').event;
  const tt = event.ticketTypes.find((t) => t.id === data.ticketTypeId);
  if (!tt) fail(`ticket type ${data.ticketTypeId} missing from the final state`);

  finalSold.add(tt.sold);
  finalAvailable.add(tt.available);
  finalCapacity.add(tt.capacity);
  oversold.add(Math.max(0, tt.sold - tt.capacity));
  seatDiscrepancy.add(-tt.sold);

  check(tt, {
    'final: capacity is the one created': (t) => t.capacity === CAPACITY,
    'final: sold <= capacity (nothing oversold)': (t) => t.sold <= t.capacity,
    'final: available == capacity - sold': (t) => t.available === t.capacity - t.sold,
    'final: available is never negative': (t) => t.available >= 0,
  });
  // sold == sum of confirmed quantities is enforced by the seat_discrepancy
  // threshold (k6 counters are per VU, so teardown cannot read the sum).
  console.log(`teardown: sold ${tt.sold}, available ${tt.available}, capacity ${tt.capacity}`);
}

// ---------------------------------------------------------------- summary

function metric(data, name, stat, fallback = 0) {
  const m = data.metrics[name];
  if (!m || !m.values || m.values[stat] === undefined) return fallback;
  return m.values[stat];
}

function thresholdsOk(data) {
  const failed = [];
  for (const [name, m] of Object.entries(data.metrics)) {
    for (const [expr, t] of Object.entries(m.thresholds || {})) {
      if (!t.ok) failed.push(`${name} ${expr}`);
    }
  }
  return failed;
}

export function handleSummary(data) {
  const rush = metric(data, 'rush_seconds', 'value', 0);
  const bookings = metric(data, 'bookings_confirmed', 'count');
  const seats = metric(data, 'seats_confirmed', 'count');
  const sold = metric(data, 'final_sold', 'value', NaN);
  const available = metric(data, 'final_available', 'value', NaN);
  const capacity = metric(data, 'final_capacity', 'value', NaN);
  const soldOut = metric(data, 'sold_out_rejections', 'count');
  const limited = metric(data, 'limit_rejections', 'count');
  const requests = metric(data, 'book_requests', 'count');
  const unexpected = Math.round(metric(data, 'unexpected_errors', 'passes') || 0);
  const checksFailed = metric(data, 'checks', 'fails');
  const failedThresholds = thresholdsOk(data);
  const ms = (stat) => metric(data, 'book_latency', stat, NaN).toFixed(1);
  const perSecond = (n) => (rush > 0 ? (n / rush).toFixed(0) : 'n/a');
  // Unknown when the run ended before the final state was read.
  const finalRead = !Number.isNaN(sold) && !Number.isNaN(capacity);
  const oversoldNow = finalRead ? sold > capacity : null;

  const figures = {
    capacity, sold, available, seatsConfirmedByK6: seats, bookingsConfirmed: bookings,
    bookRequests: requests, soldOutRejections: soldOut, limitRejections: limited,
    unexpectedErrors: unexpected, checksFailed, rushSeconds: rush,
    bookingsPerSecond: rush > 0 ? bookings / rush : null,
    latencyMs: { p50: Number(ms('med')), p95: Number(ms('p(95)')), p99: Number(ms('p(99)')), max: Number(ms('max')) },
    oversold: oversoldNow, soldMatchesConfirmed: sold === seats, soldOut: available === 0,
    failedThresholds, passed: failedThresholds.length === 0,
  };

  const lines = [
    '',
    '==================== Marquee rush (peak on-sale) ====================',
    `  server                 ${BASE_URL}`,
    `  VUs / buyers           ${VUS} / ${BUYERS}   per-user limit: ${PER_USER_LIMIT === null ? 'none' : PER_USER_LIMIT}`,
    `  rush phase             ${rush.toFixed(2)} s (setup end to teardown)`,
    `  bookTickets requests   ${requests}  (${perSecond(requests)} req/s)`,
    `  bookings confirmed     ${bookings}  (${perSecond(bookings)} bookings/s, ${perSecond(seats)} seats/s)`,
    `  seats sold             ${sold} of ${capacity}  (available ${available}${available === 0 ? ', SOLD OUT' : ''})`,
    `  seats k6 saw confirmed ${seats}  (${sold === seats ? 'equals' : 'DIFFERS FROM'} server sold)`,
    `  sold-out rejections    ${soldOut}`,
    PER_USER_LIMIT === null ? null : `  limit rejections       ${limited}`,
    `  unexpected errors      ${unexpected}   failed checks: ${checksFailed}`,
    `  latency bookTickets    p50 ${ms('med')} ms   p95 ${ms('p(95)')} ms   p99 ${ms('p(99)')} ms   max ${ms('max')} ms`,
    `  oversold               ${oversoldNow === null ? 'unknown (the final state was not read)' : oversoldNow ? 'YES' : 'no'}`,
    `  thresholds             ${failedThresholds.length === 0 ? 'all passed' : 'FAILED: ' + failedThresholds.join('; ')}`,
    '======================================================================',
    '',
  ].filter((l) => l !== null);

  const out = { stdout: lines.join('\n') };
  if (__ENV.SUMMARY_JSON) out[__ENV.SUMMARY_JSON] = JSON.stringify(figures, null, 2);
  return out;
}

-- book.lua: wrk script that books one seat of one hot ticket type per request.
--
-- Measures: raw bookTickets throughput and latency of the HTTP + GraphQL +
--           ledger path (used by compare-postgres.sh, which derives the
--           throughput from the server's `sold` count, not from wrk's req/s).
-- Endpoint: POST /graphql, mutation bookTickets (quantity 1, hold: false).
-- Target:   see compare-postgres.sh: >= 10x PostgreSQL's bookings/s, >= 50%
--           of the `{ __typename }` ceiling, p99 < 20 ms at 64 connections.
--
-- Usage:
--   MARQUEE_TOKENS_FILE=tokens.txt MARQUEE_TICKET_TYPE=2 \
--     wrk -t2 -c64 -d15s --latency -s loadtest/book.lua http://127.0.0.1:PORT/graphql
-- Env:
--   MARQUEE_TOKENS_FILE  buyers' bearer tokens, one a line (required)
--   MARQUEE_TICKET_TYPE  id of the ticket type to book (required)
--   MARQUEE_KEY_PREFIX   idempotency key prefix, unique per run
--                        (default: the start time, so reruns never replay)
--
-- Every request uses a new idempotency key (prefix-thread-counter, the
-- counter 12 digits wide) and the next buyer token (round-robin, the
-- threads interleaved). Each token's request head is built once, so a
-- request costs wrk about what a fixed one does (28-29 µs of CPU here,
-- against 36-38 when every request went through wrk.format), CPU that the
-- server, on the same two cores, would otherwise lose. At the end it
-- prints one line:
--   book.lua: requests=N confirmed=N sold_out=N other_errors=N non_200=N
-- where other_errors counts any error but SOLD_OUT (all should be 0), and
-- one more with latency percentiles in microseconds, for pooling runs:
--   book.lua: latency_us 90=V 95=V ... 99.9=V 100=V

local tokens_file = os.getenv("MARQUEE_TOKENS_FILE")
local ticket_type = os.getenv("MARQUEE_TICKET_TYPE")
local key_prefix = os.getenv("MARQUEE_KEY_PREFIX") or tostring(os.time())

-- Main state: give each thread its number, keep the threads for done().
local threads = {}
local thread_count = 0

function setup(thread)
   thread:set("thread_id", thread_count)
   thread_count = thread_count + 1
   table.insert(threads, thread)
end

-- Thread state: each thread runs its own Lua state. The counts are globals
-- so that done() can read them with thread:get(); thread_id is set above.
local tokens = {}
local counter = 0
local first_token = 0
local body_head, body_tail
local heads = {}
confirmed, sold_out, other_errors, non_200 = 0, 0, 0, 0

function init(args)
   if not tokens_file or tokens_file == "" then
      error("book.lua: set MARQUEE_TOKENS_FILE to a file of bearer tokens, one a line")
   end
   if not ticket_type or not ticket_type:match("^%w+$") then
      error("book.lua: set MARQUEE_TICKET_TYPE to the ticket type id")
   end
   local file = assert(io.open(tokens_file, "r"), "book.lua: cannot read " .. tokens_file)
   for line in file:lines() do
      local token = line:match("^%s*(%S+)%s*$")
      if token then table.insert(tokens, token) end
   end
   file:close()
   if #tokens == 0 then error("book.lua: no tokens in " .. tokens_file) end
   -- Threads start at different places in the list so they do not walk it
   -- in step.
   first_token = (thread_id * 7919) % #tokens

   -- The request body around the idempotency key, built once.
   body_head = '{"query":"mutation($input: BookInput!) { bookTickets(input: $input) '
      .. '{ id status quantity tickets { code } } }","variables":{"input":{'
      .. '"ticketTypeId":"' .. ticket_type .. '","quantity":1,"hold":false,'
      .. '"idempotencyKey":"' .. key_prefix .. '-' .. thread_id .. '-'
   body_tail = '"}}}'
   local sample = body_head .. string.format("%012d", 0) .. body_tail
   for i, token in ipairs(tokens) do
      local full = wrk.format("POST", nil, {
         ["Content-Type"] = "application/json",
         ["Authorization"] = "Bearer " .. token,
      }, sample)
      heads[i] = full:sub(1, #full - #sample)
   end
end

function request()
   counter = counter + 1
   -- Round-robin over the buyers' tokens; the head (request line and
   -- headers, Content-Length included) is built once per token, and the
   -- key's counter has a fixed width so that every body has one length.
   local index = (first_token + counter) % #tokens + 1
   return heads[index] .. body_head .. string.format("%012d", counter) .. body_tail
end

function response(status, headers, body)
   if status ~= 200 then
      non_200 = non_200 + 1
   elseif body:find('"SOLD_OUT"', 1, true) then
      sold_out = sold_out + 1
   elseif body:find('"errors"', 1, true) then
      other_errors = other_errors + 1
   elseif body:find('"CONFIRMED"', 1, true) then
      confirmed = confirmed + 1
   else
      other_errors = other_errors + 1
   end
end

function done(summary, latency, requests)
   local totals = { confirmed = 0, sold_out = 0, other_errors = 0, non_200 = 0 }
   for _, thread in ipairs(threads) do
      for name in pairs(totals) do
         totals[name] = totals[name] + (thread:get(name) or 0)
      end
   end
   io.write(string.format(
      "book.lua: requests=%d confirmed=%d sold_out=%d other_errors=%d non_200=%d\n",
      summary.requests, totals.confirmed, totals.sold_out, totals.other_errors, totals.non_200))
   local percentiles = {}
   for _, p in ipairs({ 90, 95, 97, 98, 98.5, 99, 99.25, 99.5, 99.75, 99.9 }) do
      table.insert(percentiles, string.format("%g=%d", p, latency:percentile(p)))
   end
   -- (percentile(100) reads 0 here: the maximum instead.)
   table.insert(percentiles, string.format("100=%d", latency.max))
   io.write("book.lua: latency_us " .. table.concat(percentiles, " ") .. "\n")
end

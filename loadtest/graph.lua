-- graph.lua: wrk script for loadtest/compare-graph.sh. Measures Marquee's
-- social-graph queries over GraphQL/HTTP (POST /graphql), one query kind per
-- run, cycling through the dataset's 2,000 parameter draws (queries.csv):
--   q1  event(id: E) { friendsGoing(first: 20) { id } }           as U
--   q2  recommendedEvents(first: 10) { id }                        as U
--   q3  socialDistance(userId: V)                                  as U
--   q4  event(id: E) { attendeeCount whosGoing(first: 20) { ... } } as admin
-- Throughput targets (set in compare-graph.sh, Marquee / better of FalkorDB
-- and PostgreSQL at 16 clients): >= 3x on Q1 and Q2, >= 20x on Q3 and Q4.
--
-- Env: GRAPH_QUERY (q1..q4), GRAPH_DRAWS (file of "draw user event user2
-- token" lines: token = U's bearer token), GRAPH_ADMIN_TOKEN (for q4).
-- Every response is checked: a non-200 status or a body with "errors" counts
-- as bad; done() prints "graph.lua: requests=N bad=M".

local kind = os.getenv("GRAPH_QUERY") or "q1"
local draws_file = os.getenv("GRAPH_DRAWS")
local admin = os.getenv("GRAPH_ADMIN_TOKEN") or ""

local documents = {
  q1 = 'query($e: ID!) { event(id: $e) { friendsGoing(first: 20) { id } } }',
  q2 = '{ recommendedEvents(first: 10) { id } }',
  q3 = 'query($v: ID!) { socialDistance(userId: $v) }',
  q4 = 'query($e: ID!) { event(id: $e) { attendeeCount whosGoing(first: 20) { id followerCount } } }',
}

local threads = {}
local thread_no = 0

function setup(thread)
  thread_no = thread_no + 1
  thread:set("thread_no", thread_no)
  table.insert(threads, thread)
end

local requests = {}
local next_draw = 1
bad = 0

function init(args)
  local doc = documents[kind]
  if doc == nil then error("graph.lua: GRAPH_QUERY must be q1..q4, not " .. tostring(kind)) end
  if draws_file == nil then error("graph.lua: set GRAPH_DRAWS") end
  for line in io.lines(draws_file) do
    local _, user, event, user2, token = line:match("^(%d+) (%d+) (%d+) (%d+) (%S+)$")
    if user ~= nil then
      local vars
      if kind == "q1" or kind == "q4" then
        vars = '{"e":"' .. event .. '"}'
      elseif kind == "q3" then
        vars = '{"v":"' .. user2 .. '"}'
      else
        vars = '{}'
      end
      local bearer = (kind == "q4") and admin or token
      local body = '{"query":"' .. doc:gsub('"', '\\"') .. '","variables":' .. vars .. '}'
      local headers = {
        ["Content-Type"] = "application/json",
        ["Authorization"] = "Bearer " .. bearer,
      }
      table.insert(requests, wrk.format("POST", "/graphql", headers, body))
    end
  end
  if #requests == 0 then error("graph.lua: no draws in " .. draws_file) end
  -- Threads start at different draws so they do not ask the same thing in step.
  local me = tonumber(wrk.thread:get("thread_no")) or 1
  next_draw = ((me - 1) * 997) % #requests + 1
end

function request()
  local r = requests[next_draw]
  next_draw = next_draw % #requests + 1
  return r
end

function response(status, headers, body)
  if status ~= 200 or body:find('"errors"', 1, true) then bad = bad + 1 end
end

function done(summary, latency, reqs)
  local total = 0
  for _, thread in ipairs(threads) do total = total + (tonumber(thread:get("bad")) or 0) end
  io.write(string.format("graph.lua: requests=%d bad=%d\n", summary.requests, total))
end

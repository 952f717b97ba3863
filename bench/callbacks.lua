-- wrk script for bench/run.sh. It sends provider callbacks to POST /webhook and counts the
-- bridge's responses by outcome.
--
--   wrk -t2 -c64 -d30s -s bench/callbacks.lua http://127.0.0.1:18080/webhook -- \
--       RUN_ID REDELIVERY_PERCENT FAILED_PERCENT
--
-- Task ids are "<RUN_ID>-t<thread>-<sequence>". The connections of one wrk thread share
-- that thread's Lua state, so the per-thread sequence never repeats within a thread and the
-- thread number keeps threads apart. About REDELIVERY_PERCENT of requests (default 10) repeat
-- an event that the bridge already accepted, picked at random from the thread's last
-- ACCEPTED_RING_SIZE accepted events. FAILED_PERCENT of new events (default 20) are failed
-- callbacks and the rest are completed ones.
--
-- done() prints one "SUMMARY key=value ..." line that bench/run.sh parses. Its latency
-- percentiles cover every response: accepted, duplicate and error.

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

-- Number of accepted events each thread remembers as candidates for a re-delivery.
local ACCEPTED_RING_SIZE = 4096

local threads = {}

function setup(thread)
   table.insert(threads, thread)
   thread:set("thread_number", #threads)
end

function init(args)
   run_id = args[1] or "bench"
   redelivery_percent = tonumber(args[2] or "10")
   failed_percent = tonumber(args[3] or "20")
   math.randomseed(os.time() * 1000 + thread_number)

   sequence = 0
   accepted_ring_ids = {}
   accepted_ring_statuses = {}
   accepted_ring_total = 0

   -- Read by done() through thread:get, so these are globals of the thread's state.
   new_sent = 0
   redeliveries_sent = 0
   accepted = 0
   duplicate = 0
   other = 0
end

local function callback_request(task_id, status)
   local body
   if status == "failed" then
      body = string.format(
         '{"task_id":"%s","status":"failed","error_message":"Content policy violation"}',
         task_id)
   else
      body = string.format(
         '{"task_id":"%s","status":"completed","data":{"video_url":"https://cdn.example.com/o/%s.mp4"}}',
         task_id, task_id)
   end
   return wrk.format(nil, nil, nil, body)
end

function request()
   if accepted_ring_total > 0 and math.random(100) <= redelivery_percent then
      local slot = math.random(math.min(accepted_ring_total, ACCEPTED_RING_SIZE))
      redeliveries_sent = redeliveries_sent + 1
      return callback_request(accepted_ring_ids[slot], accepted_ring_statuses[slot])
   end

   sequence = sequence + 1
   new_sent = new_sent + 1
   local task_id = string.format("%s-t%d-%d", run_id, thread_number, sequence)
   local status = "completed"
   if math.random(100) <= failed_percent then
      status = "failed"
   end
   return callback_request(task_id, status)
end

-- Stores an accepted event in the ring, overwriting the oldest entry once the ring is full.
local function remember(task_id, status)
   local slot = accepted_ring_total % ACCEPTED_RING_SIZE + 1
   accepted_ring_ids[slot] = task_id
   accepted_ring_statuses[slot] = status
   accepted_ring_total = accepted_ring_total + 1
end

function response(status, headers, body)
   if status ~= 200 then
      other = other + 1
      return
   end
   local outcome = body:match('"status":"(%a+)"')
   if outcome == "accepted" then
      accepted = accepted + 1
      -- The event id is "<task_id>:<status>", and the greedy match splits it at the last colon.
      local task_id, event_status = body:match('"event_id":"([^"]+):(%a+)"')
      if task_id then
         remember(task_id, event_status)
      end
   elseif outcome == "duplicate" then
      duplicate = duplicate + 1
   else
      other = other + 1
   end
end

function done(summary, latency, requests)
   local totals = { new_sent = 0, redeliveries_sent = 0, accepted = 0, duplicate = 0, other = 0 }
   for _, thread in ipairs(threads) do
      for name, _ in pairs(totals) do
         totals[name] = totals[name] + thread:get(name)
      end
   end

   local seconds = summary.duration / 1e6
   local errors = summary.errors
   local socket_errors = errors.connect + errors.read + errors.write + errors.timeout
   io.write(string.format(
      "SUMMARY requests=%d accepted=%d duplicate=%d other=%d new_sent=%d redeliveries_sent=%d"
         .. " socket_errors=%d seconds=%.3f requests_per_sec=%.1f accepted_per_sec=%.1f"
         .. " p50_ms=%.3f p99_ms=%.3f max_ms=%.3f\n",
      summary.requests, totals.accepted, totals.duplicate, totals.other, totals.new_sent,
      totals.redeliveries_sent, socket_errors, seconds, summary.requests / seconds,
      totals.accepted / seconds, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
      latency.max / 1000))
end

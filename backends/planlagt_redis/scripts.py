"""Lua scripts of the Redis backend, one per atomic operation.

Each script runs atomically on the server. Every expiry is set with ``PX``/``PEXPIRE``
and every instant comes from ``redis.call('TIME')``, so no client clock takes part in a
decision. Scripts that call ``TIME`` and then write rely on effect replication, the
default since Redis 5.0.

JSON with fencing tokens is assembled as text, because Redis's ``cjson.encode`` writes
numbers with 14 significant digits and tokens have 16. Tokens stay below 2^53, so
``cjson.decode`` and Lua numbers hold them exactly.

Each script is ``HELPERS`` followed by its body; each body is headed by a comment stating
its KEYS, ARGV and return value.
"""

from __future__ import annotations

__all__ = [
    "ACQUIRE",
    "BEGIN_ATTEMPT",
    "FINISH_FIRE",
    "HEARTBEAT",
    "LIST_INSTANCES",
    "LIST_JOB_DEFINITIONS",
    "RECORD_RUN",
    "RELEASE",
    "RENEW",
    "TRIM_RUNS",
]

HELPERS = """
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function integer_text(value)
  if value == nil or value == cjson.null then return 'null' end
  return string.format('%d', value)
end

local function string_json(value)
  if value == nil or value == cjson.null then return 'null' end
  return cjson.encode(value)
end

-- True when the lease stored under lease_key has this owner and token. A lease kept
-- after release stores owner null, so it never matches.
local function is_held(lease_key, owner, token)
  local stored = redis.call('GET', lease_key)
  if not stored then return false end
  local lease = cjson.decode(stored)
  return lease.owner == owner and lease.token == tonumber(token)
end

local function has_outcome(state)
  return state.outcome ~= nil and state.outcome ~= cjson.null
end

-- Field order matches FireState.to_json (sorted keys).
local function fire_state_json(attempts, instance_id, outcome, token_text)
  return '{"attempts":' .. integer_text(attempts) .. ',"instance_id":' .. string_json(instance_id)
    .. ',"outcome":' .. string_json(outcome) .. ',"token":' .. token_text .. '}'
end

-- Run a command taking many arguments in batches, below Lua's limit on unpack().
local function call_batched(command, key, items)
  local batch = 1000
  for first = 1, #items, batch do
    redis.call(command, key, unpack(items, first, math.min(first + batch - 1, #items)))
  end
end

-- Append a run record to the job's history and the all-jobs history. The member starts
-- with a zero-padded sequence number so records of equal fire time sort by insertion.
local function append_run(job_runs, all_runs, run_jobs, run_seq, fire_time, record_json, job)
  local seq = redis.call('INCR', run_seq)
  local member = '{"seq":"' .. string.format('%020d', seq) .. '","record":' .. record_json .. '}'
  redis.call('ZADD', job_runs, fire_time, member)
  redis.call('ZADD', all_runs, fire_time, member)
  redis.call('SADD', run_jobs, job)
end

-- Delete members whose expiry (ms, server time) is not after now_ms, with their entries
-- in the instances hash and their job registry hashes.
local function drop_expired_members(members, instances, jobs_prefix, now_ms)
  local expired = redis.call('ZRANGEBYSCORE', members, '-inf', now_ms)
  for _, instance_id in ipairs(expired) do
    redis.call('ZREM', members, instance_id)
    redis.call('HDEL', instances, instance_id)
    redis.call('DEL', jobs_prefix .. instance_id)
  end
end

-- Return the instances hash values of members whose expiry is after now_ms.
local function live_instances(members, instances, now_ms)
  local ids = redis.call('ZRANGEBYSCORE', members, '(' .. now_ms, '+inf')
  local values = {}
  local batch = 1000
  for first = 1, #ids, batch do
    local found = redis.call('HMGET', instances, unpack(ids, first, math.min(first + batch - 1, #ids)))
    for _, value in ipairs(found) do table.insert(values, value) end
  end
  return values
end
"""

ACQUIRE = (
    HELPERS
    + """
-- KEYS[1] lease key, KEYS[2] fencing token counter of that key (never expires)
-- ARGV[1] owner, ARGV[2] holder, ARGV[3] TTL in ms
-- Returns the new fencing token, or nil when the key is held or kept after release.
-- The token is max(last token + 1, server time in microseconds), so it keeps growing
-- after a restart that lost the counter, as long as the server clock did not step back.
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
local token = math.max(last + 1, now_us())
local token_text = integer_text(token)
redis.call('SET', KEYS[2], token_text)
local lease = '{"holder":' .. string_json(ARGV[2]) .. ',"owner":' .. string_json(ARGV[1])
  .. ',"token":' .. token_text .. '}'
redis.call('SET', KEYS[1], lease, 'PX', ARGV[3])
return token
"""
)

RENEW = (
    HELPERS
    + """
-- KEYS[1] lease key
-- ARGV[1] owner, ARGV[2] token, ARGV[3] TTL in ms
-- Returns 1 when the lease was held and its TTL restarted, 0 when not (the key is untouched).
if not is_held(KEYS[1], ARGV[1], ARGV[2]) then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""
)

RELEASE = (
    HELPERS
    + """
-- KEYS[1] lease key
-- ARGV[1] owner, ARGV[2] token, ARGV[3] keep time in ms ('0' deletes the key),
-- ARGV[4] the value kept meanwhile (lease JSON with owner null and released true)
-- Returns 1 when the lease was held and is now released, 0 when not (the key is untouched).
if not is_held(KEYS[1], ARGV[1], ARGV[2]) then return 0 end
if tonumber(ARGV[3]) > 0 then
  redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[3])
else
  redis.call('DEL', KEYS[1])
end
return 1
"""
)

BEGIN_ATTEMPT = (
    HELPERS
    + """
-- KEYS[1] lease key of the job, KEYS[2] fire state key
-- ARGV[1] owner, ARGV[2] token, ARGV[3] holder (instance id), ARGV[4] max attempts,
-- ARGV[5] keep time of the fire state in ms
-- Returns {0} when the lease is not held (nothing written), else {1, fire state JSON}:
-- unchanged when the fire time has an outcome or max attempts began, else one more attempt.
if not is_held(KEYS[1], ARGV[1], ARGV[2]) then return {0} end
local stored = redis.call('GET', KEYS[2])
local attempts = 0
if stored then
  local state = cjson.decode(stored)
  attempts = tonumber(state.attempts) or 0
  if has_outcome(state) or attempts >= tonumber(ARGV[4]) then return {1, stored} end
end
local begun = fire_state_json(attempts + 1, ARGV[3], nil, ARGV[2])
redis.call('SET', KEYS[2], begun, 'PX', ARGV[5])
return {1, begun}
"""
)

FINISH_FIRE = (
    HELPERS
    + """
-- KEYS[1] lease key of the job (read only when fenced), KEYS[2] fire state key,
-- KEYS[3] run history of the job, KEYS[4] run history of all jobs,
-- KEYS[5] set of jobs with history, KEYS[6] run sequence counter
-- ARGV[1] '1' when fenced else '0', ARGV[2] owner, ARGV[3] token, ARGV[4] outcome,
-- ARGV[5] instance id, ARGV[6] keep time of the fire state in ms, ARGV[7] RunRecord JSON,
-- ARGV[8] fire time (Unix seconds, the history score), ARGV[9] job name
-- Returns -1 when fenced and the lease is not held, 0 when the fire time already has an
-- outcome (or, unfenced, an attempt has begun), 1 when this call closed it. Only 1 writes.
local fenced = ARGV[1] == '1'
if fenced and not is_held(KEYS[1], ARGV[2], ARGV[3]) then return -1 end
local stored = redis.call('GET', KEYS[2])
local attempts = 0
local token_text = 'null'
if stored then
  local state = cjson.decode(stored)
  if has_outcome(state) then return 0 end
  attempts = tonumber(state.attempts) or 0
  if not fenced and attempts > 0 then return 0 end
  token_text = integer_text(state.token)
end
if fenced then token_text = ARGV[3] end
redis.call('SET', KEYS[2], fire_state_json(attempts, ARGV[5], ARGV[4], token_text), 'PX', ARGV[6])
append_run(KEYS[3], KEYS[4], KEYS[5], KEYS[6], ARGV[8], ARGV[7], ARGV[9])
return 1
"""
)

RECORD_RUN = (
    HELPERS
    + """
-- KEYS[1] run history of the job, KEYS[2] run history of all jobs,
-- KEYS[3] set of jobs with history, KEYS[4] run sequence counter
-- ARGV[1] fire time (Unix seconds), ARGV[2] RunRecord JSON, ARGV[3] job name
-- Returns 1.
append_run(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], ARGV[3])
return 1
"""
)

TRIM_RUNS = (
    HELPERS
    + """
-- KEYS[1] run history of one job, KEYS[2] run history of all jobs, KEYS[3] set of jobs
-- with history
-- ARGV[1] records kept per job, ARGV[2] max age in seconds (fire time before server time
-- minus this is deleted), ARGV[3] job name
-- Returns the number of records deleted.
local cutoff = now_us() / 1000000 - tonumber(ARGV[2])
local doomed = {}
local seen = {}
local function add_all(members)
  for _, member in ipairs(members) do
    if not seen[member] then
      seen[member] = true
      table.insert(doomed, member)
    end
  end
end
add_all(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. string.format('%.6f', cutoff)))
add_all(redis.call('ZRANGE', KEYS[1], 0, -(tonumber(ARGV[1]) + 1)))
call_batched('ZREM', KEYS[1], doomed)
call_batched('ZREM', KEYS[2], doomed)
if redis.call('ZCARD', KEYS[1]) == 0 then redis.call('SREM', KEYS[3], ARGV[3]) end
return #doomed
"""
)

HEARTBEAT = (
    HELPERS
    + """
-- KEYS[1] members (sorted set: instance id scored by expiry, ms server time),
-- KEYS[2] instances (hash: instance id to {"info": InstanceInfo, "last_heartbeat": s})
-- ARGV[1] instance id, ARGV[2] InstanceInfo JSON, ARGV[3] TTL in ms,
-- ARGV[4] key prefix of job registry hashes (the instance id follows it)
-- Returns the instances hash values of every live member, this one included.
local now = now_us()
local now_ms = math.floor(now / 1000)
drop_expired_members(KEYS[1], KEYS[2], ARGV[4], now_ms)
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[3]), ARGV[1])
local stamp = string.format('%d.%06d', math.floor(now / 1000000), now % 1000000)
redis.call('HSET', KEYS[2], ARGV[1], '{"info":' .. ARGV[2] .. ',"last_heartbeat":' .. stamp .. '}')
return live_instances(KEYS[1], KEYS[2], now_ms)
"""
)

LIST_INSTANCES = (
    HELPERS
    + """
-- KEYS[1] members, KEYS[2] instances (as for the heartbeat script)
-- Returns the instances hash values of every live member. Read-only.
return live_instances(KEYS[1], KEYS[2], math.floor(now_us() / 1000))
"""
)

LIST_JOB_DEFINITIONS = (
    HELPERS
    + """
-- KEYS[1] members (as for the heartbeat script)
-- ARGV[1] key prefix of job registry hashes
-- Returns {instance id, {name, definition JSON, ...}, ...} for every live member. Read-only.
local now_ms = math.floor(now_us() / 1000)
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now_ms, '+inf')
local result = {}
for _, instance_id in ipairs(ids) do
  table.insert(result, instance_id)
  table.insert(result, redis.call('HGETALL', ARGV[1] .. instance_id))
end
return result
"""
)

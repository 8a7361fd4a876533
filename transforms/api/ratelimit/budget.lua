-- One rate-limit budget shared by every worker, kept in one Redis hash and
-- changed atomically (transforms/ratelimit/shared.py, RedisRateLimiter).
--
-- KEYS[1]: the hash holding one shared budget. Fields: <dim>:l level,
--   <dim>:t time of that level, <dim>:c tokens taken so far (by everyone),
--   <dim>:lim limit learned from headers, 'blocked' end of a 429 pause,
--   'seen' set once any worker has seen a limit header.
-- ARGV: op, ttl_ms, extra, n, then n bucket specs of 9 fields:
--   name, configured limit ('-' = none), learn (0/1), period_s, burst_s,
--   then a, b, c, d whose meaning depends on op ('-' = none):
--   acquire/peek: a = amount;  adjust: a = delta (+ refund, - debit);
--   observe: a = header limit (already times share), b = remaining,
--            c = tokens taken up to the reservation, d = its grant time;
--   penalize: extra = seconds;  levels: nothing.
-- Numbers travel as strings ('%.17g'): Lua numbers returned as integers would
-- be truncated.
local KEY = KEYS[1]
local op = ARGV[1]
local ttl = tonumber(ARGV[2])
local extra = tonumber(ARGV[3]) or 0
local n = tonumber(ARGV[4])
local STRIDE = 9
local EPS = 1e-9
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000

local function fmt(x) return string.format('%.17g', x) end
local function hget(field) return redis.call('HGET', KEY, field) end

if op == 'observe' then
  -- learn first, so this very call already uses the new limits
  for i = 1, n do
    local o = 5 + (i - 1) * STRIDE
    local hl = tonumber(ARGV[o + 5])
    if hl and hl > 0 and ARGV[o + 2] == '1' then
      redis.call('HSET', KEY, ARGV[o] .. ':lim', fmt(hl))
    end
  end
end

local specs = {}
for i = 1, n do
  local o = 5 + (i - 1) * STRIDE
  local s = {name = ARGV[o], cfg = tonumber(ARGV[o + 1]), learn = (ARGV[o + 2] == '1'),
             period = tonumber(ARGV[o + 3]), burst = tonumber(ARGV[o + 4]),
             a = tonumber(ARGV[o + 5]), b = tonumber(ARGV[o + 6]),
             c = tonumber(ARGV[o + 7]), d = tonumber(ARGV[o + 8])}
  local lim = s.cfg
  if s.learn then
    local stored = tonumber(hget(s.name .. ':lim'))
    if stored and (not lim or stored < lim) then lim = stored end
  end
  if lim and lim > 0 then
    s.limit = lim
    s.rate = lim / s.period
    s.cap = s.rate * s.burst
  end
  specs[i] = s
end

local function level_of(s)
  local l = tonumber(hget(s.name .. ':l'))
  if not l then return s.cap end
  local ts = tonumber(hget(s.name .. ':t')) or now
  if now > ts and l < s.cap then l = l + (now - ts) * s.rate end
  if l > s.cap then l = s.cap end
  return l
end

local function store(s, level)
  redis.call('HSET', KEY, s.name .. ':l', fmt(level), s.name .. ':t', fmt(now))
end

local function seen() if hget('seen') then return 1 end return 0 end

if op == 'acquire' or op == 'peek' then
  local wait = 0
  local blocked = tonumber(hget('blocked'))
  if blocked and blocked > now then wait = blocked - now end
  local levels = {}
  for i, s in ipairs(specs) do
    if s.rate and s.a and s.a > 0 then
      local l = level_of(s)
      levels[i] = l
      local need = math.min(s.a, s.cap)
      if l < need - EPS * math.max(1, need) then
        local w = (need - l) / s.rate
        if w > wait then wait = w end
      end
    end
  end
  if wait > 0 or op == 'peek' then
    return {0, fmt(wait), fmt(now), seen()}
  end
  local out = {1, '0', fmt(now), seen()}
  for i, s in ipairs(specs) do
    if levels[i] then store(s, levels[i] - s.a) end
    out[#out + 1] = redis.call('HINCRBYFLOAT', KEY, s.name .. ':c', fmt(s.a or 0))
  end
  redis.call('PEXPIRE', KEY, ttl)
  return out
elseif op == 'adjust' then
  for _, s in ipairs(specs) do
    if s.rate and s.a and s.a ~= 0 then
      local l = level_of(s) + s.a
      if l > s.cap then l = s.cap end
      store(s, l)
    end
  end
  redis.call('PEXPIRE', KEY, ttl)
  return {1}
elseif op == 'observe' then
  local lowered = 0
  local any_limit = false
  for _, s in ipairs(specs) do
    if s.a and s.a > 0 then any_limit = true end
    if s.rate and s.b then
      local est = s.b
      if s.c and s.d then
        local cum = tonumber(hget(s.name .. ':c')) or 0
        est = s.b - (cum - s.c) + s.rate * math.max(0, now - s.d)
        est = math.max(est, math.min(s.b, 0))
      end
      if est < level_of(s) then
        store(s, est)
        lowered = lowered + 1
      end
    end
  end
  if any_limit then redis.call('HSET', KEY, 'seen', '1') end
  redis.call('PEXPIRE', KEY, ttl)
  return {lowered, fmt(now)}
elseif op == 'penalize' then
  local till = now + math.max(0, extra)
  local blocked = tonumber(hget('blocked'))
  if blocked and blocked > till then till = blocked end
  redis.call('HSET', KEY, 'blocked', fmt(till))
  for _, s in ipairs(specs) do
    if s.rate and level_of(s) > 0 then store(s, 0) end
  end
  redis.call('PEXPIRE', KEY, ttl)
  return {fmt(till - now)}
elseif op == 'levels' then
  local out = {fmt(now), fmt(tonumber(hget('blocked')) or 0), seen()}
  for _, s in ipairs(specs) do
    out[#out + 1] = s.limit and fmt(s.limit) or '-'
    out[#out + 1] = s.rate and fmt(level_of(s)) or '-'
    out[#out + 1] = fmt(tonumber(hget(s.name .. ':c')) or 0)
  end
  return out
end
return redis.error_reply('unknown op ' .. tostring(op))

-- Argo CD health check for coupons.fcfs.dev/CouponEvent (docs/gitops.md says how to install it).
--
-- Reads what the operator writes: status.observedGeneration (defaulted to 0 by the CRD until
-- the operator first looks at the event), the kstatus conditions Stalled and Reconciling, and
-- Ready. Written for Argo CD's default Lua environment: base and table libraries only, no
-- string library, so messages are built with `..` alone.

local function text(value)
  if value == nil then
    return ""
  end
  return tostring(value)
end

local function say(status, message)
  return { status = status, message = message }
end

if obj.metadata ~= nil and obj.metadata.deletionTimestamp ~= nil then
  return say("Progressing", "being deleted: the operator waits until every issued coupon is written to SQL")
end

local status = obj.status
if status == nil or obj.metadata == nil then
  return say("Progressing", "the operator has not looked at this event yet")
end

local conditions = {}
if status.conditions ~= nil then
  for _, condition in ipairs(status.conditions) do
    if condition.type ~= nil then
      conditions[condition.type] = condition
    end
  end
end

local function holds(type)
  return conditions[type] ~= nil and conditions[type].status == "True"
end

local function because(condition)
  return text(condition.reason) .. ": " .. text(condition.message)
end

local generation = obj.metadata.generation
local observed = status.observedGeneration
if generation ~= nil and observed ~= generation then
  -- The operator writes only its conditions when it cannot act (Redis or Kafka out of
  -- reach, an outdated CRD), each marked with the generation it looked at: they say why.
  local function about_this_generation(type)
    return holds(type) and conditions[type].observedGeneration == generation
  end
  if about_this_generation("Stalled") then
    return say("Degraded", because(conditions["Stalled"]))
  end
  if about_this_generation("Reconciling") then
    return say("Progressing", because(conditions["Reconciling"]))
  end
  return say("Progressing", "the operator has not yet acted on generation " .. text(generation)
    .. " (it last reported on generation " .. text(observed) .. ")")
end

if holds("Stalled") then
  return say("Degraded", because(conditions["Stalled"]))
end

if holds("Reconciling") then
  return say("Progressing", because(conditions["Reconciling"]))
end

local ready = conditions["Ready"]
-- A paused sale is the spec in effect: Healthy, saying so. (Not Suspended: Argo CD moves a
-- sync past a resource only once it is Healthy, and a paused event would hold it for ever.)
-- Ready=True since the kstatus conditions came, Ready=False before.
if ready ~= nil and ready.reason == "Paused" then
  return say("Healthy", "paused: " .. text(ready.message))
end

if ready ~= nil and ready.status == "True" then
  local limit = ""
  if obj.spec ~= nil and obj.spec.limit ~= nil then
    limit = " of " .. text(obj.spec.limit)
  end
  return say("Healthy", "phase " .. text(status.phase) .. ", " .. text(status.issued) .. limit .. " coupons issued")
end

-- An operator older than the Stalled and Reconciling conditions: Ready alone says it.
if ready ~= nil then
  return say("Progressing", because(ready))
end
return say("Progressing", "the operator has not reported readiness yet")

-- Argo CD health check for samp.dev/QuantizedModel (Lua 5.1, as Argo CD's gopher-lua runs it).
-- Install: resource.customizations.health.samp.dev_QuantizedModel in argocd-cm
-- (see argocd-cm.yaml beside this file). Every phase the operator writes is mapped; a phase
-- this script does not know shows Unknown rather than a guess.
local hs = {}

local function condition(obj, ctype)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end

local function message_of(obj, fallback)
  local ready = condition(obj, "Ready")
  if ready ~= nil and ready.message ~= nil and ready.message ~= "" then
    return ready.message
  end
  if obj.status ~= nil and obj.status.message ~= nil and obj.status.message ~= "" then
    return obj.status.message
  end
  return fallback
end

if obj.status == nil or obj.status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to pick up this QuantizedModel"
  return hs
end

local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local phase = obj.status.phase
local progressing = {
  Pending = true, Calibrating = true, Scoring = true, Planning = true,
  Exporting = true, Evaluating = true, Evaluated = true, CanaryProgressing = true,
}

-- The canary passed every step and waits for the samp.dev/promote annotation (promotion:
-- manual): a person must act, as Argo Rollouts' paused rollout, so Suspended.
local awaiting = condition(obj, "Promoted")
local ready = condition(obj, "Ready")

if phase == "CanaryProgressing" and awaiting ~= nil and awaiting.status == "False"
    and awaiting.reason == "AwaitingPromotion" then
  hs.status = "Suspended"
  hs.message = awaiting.message or "Waiting for manual promotion"
elseif phase == "Evaluated" and ready ~= nil and ready.status == "True" then
  -- Ready at Evaluated: the operator runs without canaries (--no-canary) and this is
  -- where the resource rests; with canaries on, the same write moves it on.
  hs.status = "Healthy"
  hs.message = message_of(obj, "Quantized and evaluated")
elseif phase == "Promoted" then
  hs.status = "Healthy"
  hs.message = message_of(obj, "Promoted: the quantized model serves all traffic")
elseif phase == "RolledBack" then
  local rolled = condition(obj, "RolledBack")
  hs.status = "Degraded"
  if rolled ~= nil and rolled.message ~= nil and rolled.message ~= "" then
    hs.message = rolled.message
  else
    hs.message = message_of(obj, "Rolled back")
  end
elseif phase == "Failed" then
  hs.status = "Degraded"
  hs.message = message_of(obj, "Failed")
elseif phase == "Paused" or phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = message_of(obj, phase)
elseif progressing[phase] then
  hs.status = "Progressing"
  hs.message = message_of(obj, phase)
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. tostring(phase)
end
return hs

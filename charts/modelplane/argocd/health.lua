-- Argo CD health of a ModelDeployment (modelplane.io), from the conditions the operator writes.
-- Healthy: Ready=True; Suspended: spec.suspend; Degraded: a failure reason on Ready, or an
-- autoscaler that cannot scale; Progressing: anything on its way (creating, starting, rolling out,
-- a status not yet written for the current generation).
local failures = {
  InsufficientGPU = true, Unschedulable = true, ImagePullBackOff = true, CrashLoopBackOff = true,
  OOMKilled = true, CreateContainerConfigError = true, StartupTimeout = true, InvalidSpec = true,
}

local function condition(status, kind)
  if status == nil or status.conditions == nil then
    return nil
  end
  for _, item in ipairs(status.conditions) do
    if item.type == kind then
      return item
    end
  end
  return nil
end

local function said(item)
  local reason = item.reason or ""
  if item.message ~= nil and item.message ~= "" then
    return reason .. ": " .. item.message
  end
  return reason
end

local hs = {}
local status = obj.status
local generation = obj.metadata.generation
if status == nil or status.observedGeneration == nil
    or (generation ~= nil and status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local ready = condition(status, "Ready")
if ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Ready condition"
  return hs
end

if ready.status == "True" then
  if ready.reason == "Suspended" then
    hs.status = "Suspended"
    hs.message = said(ready)
    return hs
  end
  local autoscaler = condition(status, "AutoscalerReady")
  if autoscaler ~= nil and autoscaler.status == "False" then
    hs.status = "Degraded"
    hs.message = "Serving, but the autoscaler cannot scale: " .. said(autoscaler)
    return hs
  end
  hs.status = "Healthy"
  hs.message = said(ready)
  return hs
end

if ready.status == "False" and failures[ready.reason] then
  hs.status = "Degraded"
else
  hs.status = "Progressing"
end
hs.message = said(ready)
return hs

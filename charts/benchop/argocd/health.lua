-- Argo CD health check for benchop.io/BenchmarkRun and benchop.io/Experiment.
-- Healthy: Succeeded=True. Degraded: Failed=True (the operator writes it with Succeeded=False)
-- or Succeeded=False (objects written before Failed existed). Progressing: anything else,
-- including a status the operator wrote for an older generation of the spec.
local hs = {}
local gen = obj.metadata and obj.metadata.generation
local st = obj.status
if st == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the operator"
  return hs
end
if gen ~= nil and (st.observedGeneration == nil or st.observedGeneration < gen) then
  hs.status = "Progressing"
  hs.message = string.format("waiting for the operator to observe generation %d", gen)
  return hs
end
-- The condition of this type, unless it is stamped with an older generation (then it says
-- nothing about the current spec).
local function current(type)
  if st.conditions == nil then
    return nil
  end
  local found = nil
  for _, c in ipairs(st.conditions) do
    if c.type == type then
      found = c
    end
  end
  if found ~= nil and gen ~= nil and found.observedGeneration ~= nil
      and found.observedGeneration < gen then
    return nil
  end
  return found
end
local function degraded(c)
  hs.status = "Degraded"
  local reason = c.reason or "Failed"
  if c.message ~= nil and c.message ~= "" then
    hs.message = reason .. ": " .. c.message
  else
    hs.message = reason
  end
  return hs
end
local succeeded = current("Succeeded")
local failed = current("Failed")
if failed ~= nil and failed.status == "True" then
  return degraded(failed)
end
if succeeded ~= nil and succeeded.status == "True" then
  hs.status = "Healthy"
  hs.message = succeeded.message or "succeeded"
  return hs
end
if succeeded ~= nil and succeeded.status == "False" then
  return degraded(succeeded)
end
-- No usable Succeeded condition: fall back to the phase.
if st.phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = "phase Succeeded"
  return hs
end
if st.phase == "Failed" then
  hs.status = "Degraded"
  hs.message = "phase Failed"
  return hs
end
hs.status = "Progressing"
if st.phase ~= nil then
  hs.message = "phase " .. st.phase
else
  hs.message = "waiting for the operator"
end
return hs

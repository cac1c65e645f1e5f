-- Argo CD health check for benchop.io/BenchmarkRun and benchop.io/Experiment.
-- Healthy: Succeeded=True. Degraded: Succeeded=False. Progressing: anything else, including
-- a status the operator wrote for an older generation of the spec.
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
local succeeded = nil
if st.conditions ~= nil then
  for _, c in ipairs(st.conditions) do
    if c.type == "Succeeded" then
      succeeded = c
    end
  end
end
-- A condition stamped with an older generation says nothing about the current spec.
if succeeded ~= nil and gen ~= nil and succeeded.observedGeneration ~= nil
    and succeeded.observedGeneration < gen then
  succeeded = nil
end
if succeeded ~= nil and succeeded.status == "True" then
  hs.status = "Healthy"
  hs.message = succeeded.message or "succeeded"
  return hs
end
if succeeded ~= nil and succeeded.status == "False" then
  hs.status = "Degraded"
  local reason = succeeded.reason or "Failed"
  if succeeded.message ~= nil and succeeded.message ~= "" then
    hs.message = reason .. ": " .. succeeded.message
  else
    hs.message = reason
  end
  return hs
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

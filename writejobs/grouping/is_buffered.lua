-- KEYS: buf   ARGV: op_id, unsent, namespace
-- 1 when the op id is in its group's buffer or in any claimed-but-unsent batch.
-- One script, so a claim cannot slip between the two looks.
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 1 end
for _, batch_key in ipairs(redis.call('ZRANGE', ARGV[2], 0, -1)) do
  local members = redis.call('HGET', batch_key, 'members')
  if members and string.find(',' .. members .. ',', ',' .. ARGV[1] .. ',', 1, true) then
    return 1
  end
end
return 0

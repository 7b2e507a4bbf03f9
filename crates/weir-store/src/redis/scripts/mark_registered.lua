-- After the queue's name is in the registry: mark the queue so that later
-- enqueues skip registering it. KEYS[1]: the queue's meta hash.
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'reg', 1) end
return 1

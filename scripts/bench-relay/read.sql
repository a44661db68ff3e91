SELECT pos, event FROM answer_events WHERE stream_id = md5(:client_id::text)::uuid AND pos >= 1000000 ORDER BY pos LIMIT 256;

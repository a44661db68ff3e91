\set p random(1, 200000000)
WITH w AS (INSERT INTO answer_events (stream_id, pos, event) SELECT md5(:client_id::text)::uuid, :p * 8 + g, '{"event":"delta","seq":' || g || ',"text":" refunds take five"}' FROM generate_series(0,7) g ON CONFLICT DO NOTHING) UPDATE answer_streams SET finished_at = clock_timestamp() WHERE stream_id = md5(:client_id::text)::uuid AND false;

-- `answer_events` rows were checked against `answer_streams` one by one: a foreign key costs an
-- index lookup and a row lock per event, and an offline answer relays about a hundred events
-- (a delta per word). The check bought nothing: a publisher writes events only for a stream
-- whose row the question's own statement wrote, and the relay's sweep deletes a stream's events
-- in the statement that deletes the stream.
ALTER TABLE answer_events DROP CONSTRAINT answer_events_stream_id_fkey;

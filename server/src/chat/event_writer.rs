//! One writer of `answer_events` for the whole instance.
//!
//! Every answer asked on a socket has a publisher (see [`relay`](super::relay)) that copies its
//! events into `answer_events` in batches of up to ~50 ms. With many answers streaming at once,
//! a statement per publisher per batch is most of the database's work: at 1,000 answers, about
//! fifteen statements per answer against two for its question and one for its end, each taking
//! a pooled connection that an arriving question then waits for. So publishers do not write
//! themselves: they hand their batch to this writer and wait for its verdict. The writer takes
//! the first batch waiting and every other one already queued behind it (up to [`MAX_ROWS`]
//! events), and writes them all in one statement: group commit. The publishers hand their
//! batches over on a shared grid of ticks, so those of the answers streaming at once arrive
//! together; the writer itself adds no wait beyond letting them queue (a lone batch is written
//! at once), and batches arriving while a statement is in flight go into the next one.
//!
//! Bounded: each publisher has at most one batch waiting, so the queue never holds more batches
//! than there are answers streaming (the channel's capacity bounds it further); one statement at
//! a time uses one pooled connection.

use std::sync::Arc;

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

/// Most events written by one statement.
const MAX_ROWS: usize = 4096;
/// Batches that may wait for the writer before a publisher's hand-over waits too.
const QUEUE: usize = 1024;

/// The statement that writes the events of several answers' batches, and marks the answers
/// whose batch holds their end as finished.
pub(crate) const WRITE_EVENTS_SQL: &str = "WITH written AS ( \
               INSERT INTO answer_events (stream_id, pos, event) \
               SELECT s, p, e FROM unnest($1::uuid[], $2::int4[], $3::text[]) AS t(s, p, e) \
               ON CONFLICT DO NOTHING) \
             UPDATE answer_streams SET finished_at = clock_timestamp() \
             WHERE stream_id = ANY($4::uuid[])";

/// A failed write, shared by every batch of the statement.
pub(crate) type WriteError = Arc<anyhow::Error>;

/// One answer's batch: its events from `first_pos` on, serialised.
struct Batch {
    stream_id: Uuid,
    first_pos: i32,
    events: Vec<String>,
    ended: bool,
    verdict: oneshot::Sender<Result<(), WriteError>>,
}

/// The handle publishers write through. Cheap to clone.
#[derive(Clone)]
pub(crate) struct EventWriter {
    queue: mpsc::Sender<Batch>,
}

impl EventWriter {
    /// Starts the writer task on the current runtime. It ends when every handle is dropped.
    pub(crate) fn start(db: Pool) -> Self {
        let (queue, batches) = mpsc::channel(QUEUE);
        tokio::spawn(run(db, batches));
        Self { queue }
    }

    /// Writes one answer's events, `first_pos` the position of the first; with `ended`, the
    /// answer is marked finished in the same statement. Returns once the statement committed
    /// (or failed: the caller retries the same batch, which `ON CONFLICT DO NOTHING` makes
    /// harmless if the failure was only heard and the write did commit).
    pub(crate) async fn write(
        &self,
        stream_id: Uuid,
        first_pos: i32,
        events: Vec<String>,
        ended: bool,
    ) -> Result<(), WriteError> {
        let (verdict, heard) = oneshot::channel();
        let batch = Batch {
            stream_id,
            first_pos,
            events,
            ended,
            verdict,
        };
        let stopped = || Arc::new(anyhow::anyhow!("the event writer has stopped"));
        self.queue.send(batch).await.map_err(|_| stopped())?;
        heard.await.unwrap_or_else(|_| Err(stopped()))
    }
}

/// Takes the batches waiting, writes them in one statement, tells each how it went.
async fn run(db: Pool, mut batches: mpsc::Receiver<Batch>) {
    while let Some(first) = batches.recv().await {
        let mut rows = first.events.len();
        let mut taken = vec![first];
        while rows < MAX_ROWS {
            match batches.try_recv() {
                Ok(batch) => {
                    rows += batch.events.len();
                    taken.push(batch);
                }
                Err(_) => break,
            }
        }
        let verdict = write_all(&db, &mut taken).await.map_err(Arc::new);
        for batch in taken {
            // A publisher that stopped waiting (its task was dropped) needs no answer.
            let _ = batch.verdict.send(verdict.clone());
        }
    }
}

/// Writes `batches` in one statement. Their event texts are moved out (the verdict is all that
/// goes back).
async fn write_all(db: &Pool, batches: &mut [Batch]) -> anyhow::Result<()> {
    let rows: usize = batches.iter().map(|b| b.events.len()).sum();
    let mut streams = Vec::with_capacity(rows);
    let mut positions = Vec::with_capacity(rows);
    let mut texts = Vec::with_capacity(rows);
    let mut finished = Vec::new();
    for batch in batches.iter_mut() {
        for (pos, text) in (batch.first_pos..).zip(std::mem::take(&mut batch.events)) {
            streams.push(batch.stream_id);
            positions.push(pos);
            texts.push(text);
        }
        if batch.ended {
            finished.push(batch.stream_id);
        }
    }
    let client = db.get().await?;
    // The CTE's insert runs whether or not the outer statement reads it.
    let stmt = client.prepare_cached(WRITE_EVENTS_SQL).await?;
    client
        .execute(&stmt, &[&streams, &positions, &texts, &finished])
        .await?;
    Ok(())
}

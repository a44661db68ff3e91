//! Request counters shared by every instance, in PostgreSQL (`rate_limits`): signups per
//! client address, login failures per (username, address) and per address.
//!
//! Fixed windows: a key's hits are counted in the window `[n·w, (n+1)·w)` of the database clock.
//! A hit is one upsert that counts and answers the new total in the same statement, so N
//! parallel requests get N distinct totals and only the first `max` pass: checking and
//! recording cannot be raced apart. (A fixed window lets a client spend two windows' worth
//! around a boundary; for limits measured in handfuls per minutes that is an accepted cost of
//! a single statement per check.)
//!
//! Asks per minute per user use a sliding log instead ([`sliding_hit`], table `rate_logs`), also
//! one statement per check.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;

use crate::error::ApiError;

/// One limit: at most `max` hits under `key` per `window_secs`.
#[derive(Debug, Clone)]
pub struct Limit {
    pub key: String,
    pub max: u32,
    pub window_secs: u64,
}

/// A hit that was counted, so it can be taken back (a login that turned out to succeed).
#[derive(Debug, Clone)]
pub struct Counted {
    key: String,
    window_end: DateTime<Utc>,
}

/// The outcome of [`hit`].
#[derive(Debug)]
pub enum Verdict {
    /// Under every limit; the hits were counted.
    Allowed(Vec<Counted>),
    /// Over at least one limit: try again in this many seconds.
    Limited { retry_after_secs: u64 },
}

/// Counts one hit under each limit (atomically per key) and says whether all are still within
/// their maximum. Hits over a limit are counted too: hammering a locked key keeps it locked
/// until its window ends, no longer.
pub async fn hit(db: &impl GenericClient, limits: &[Limit]) -> Result<Verdict, ApiError> {
    if limits.is_empty() {
        return Ok(Verdict::Allowed(Vec::new()));
    }
    // Keys in a fixed order, so two requests locking the same rows cannot deadlock.
    let mut limits: Vec<&Limit> = limits.iter().collect();
    limits.sort_by(|a, b| a.key.cmp(&b.key));
    let keys: Vec<&str> = limits.iter().map(|l| l.key.as_str()).collect();
    let windows: Vec<f64> = limits.iter().map(|l| l.window_secs.max(1) as f64).collect();
    let statement = db
        .prepare_cached(
            "INSERT INTO rate_limits AS r (key, window_end, hits)
             SELECT k, to_timestamp((floor(extract(epoch FROM clock_timestamp()) / w) + 1) * w), 1
             FROM unnest($1::text[], $2::float8[]) WITH ORDINALITY AS t(k, w, i)
             ORDER BY i
             ON CONFLICT (key, window_end) DO UPDATE SET hits = r.hits + 1
             RETURNING key, window_end, hits,
                       greatest(1, ceil(extract(epoch FROM window_end - clock_timestamp())))::bigint",
        )
        .await?;
    let rows = db.query(&statement, &[&keys, &windows]).await?;
    let mut counted = Vec::with_capacity(rows.len());
    let mut wait: Option<u64> = None;
    for row in rows {
        let key: String = row.try_get(0)?;
        let window_end: DateTime<Utc> = row.try_get(1)?;
        let hits: i32 = row.try_get(2)?;
        let left: i64 = row.try_get(3)?;
        let max = limits
            .iter()
            .find(|l| l.key == key)
            .map_or(u32::MAX, |l| l.max);
        if u32::try_from(hits).unwrap_or(u32::MAX) > max {
            wait = wait.max(Some(left.unsigned_abs()));
        }
        counted.push(Counted { key, window_end });
    }
    Ok(match wait {
        Some(retry_after_secs) => Verdict::Limited { retry_after_secs },
        None => Verdict::Allowed(counted),
    })
}

/// Takes back one counted hit.
pub async fn undo(db: &impl GenericClient, counted: &Counted) -> Result<(), ApiError> {
    let statement = db
        .prepare_cached(
            "UPDATE rate_limits SET hits = hits - 1
             WHERE key = $1 AND window_end = $2 AND hits > 0",
        )
        .await?;
    db.execute(&statement, &[&counted.key, &counted.window_end])
        .await?;
    Ok(())
}

/// Forgets every hit under `key` (a successful login clears its failures).
pub async fn clear(db: &impl GenericClient, key: &str) -> Result<(), ApiError> {
    let statement = db
        .prepare_cached("DELETE FROM rate_limits WHERE key = $1")
        .await?;
    db.execute(&statement, &[&key]).await?;
    Ok(())
}

impl Counted {
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// The upsert of [`sliding_hit`], as a literal so other statements can fold it in (`concat!`)
/// as a CTE: `$1` the key, `$2` the most hits per window (`NULL`: count nothing, the rows
/// come back empty), `$3` the window in seconds. Its row: `counted` (this hit was counted)
/// and `retry_after` (whole seconds until the oldest hit leaves the window).
macro_rules! sliding_hit_sql {
    () => {
        "INSERT INTO rate_logs AS r (key, hits) \
         SELECT $1::text, CASE WHEN $2::bigint > 0 THEN ARRAY[statement_timestamp()] \
                               ELSE '{}'::timestamptz[] END \
         WHERE $2::bigint IS NOT NULL \
         ON CONFLICT (key) DO UPDATE SET hits = ( \
           SELECT coalesce(array_agg(t ORDER BY t), '{}'::timestamptz[]) \
                  || CASE WHEN count(*) < $2::bigint THEN ARRAY[statement_timestamp()] \
                          ELSE '{}'::timestamptz[] END \
           FROM unnest(r.hits) AS t \
           WHERE t > statement_timestamp() - make_interval(secs => $3::float8)) \
         RETURNING coalesce(hits[cardinality(hits)] = statement_timestamp(), false) AS counted, \
                   greatest(1, ceil(extract(epoch FROM \
                     hits[1] + make_interval(secs => $3::float8) - statement_timestamp())))::bigint \
                     AS retry_after"
    };
}
pub(crate) use sliding_hit_sql;

/// [`sliding_hit`]'s statement.
pub(crate) const SLIDING_HIT_SQL: &str = sliding_hit_sql!();

/// Counts one hit under `key` in a sliding window of `window_secs` (the `rate_logs` table,
/// shared by every instance) unless `max` hits are already in it: `Ok(())` when counted,
/// `Err(retry_after_secs)` when over the limit (until the oldest hit in the window leaves it).
///
/// One upsert that checks and appends under the row's lock, so parallel hits on several
/// instances cannot slip past the limit together. Unlike [`hit`]'s fixed windows there is no
/// boundary at which a client may spend two windows' worth: this matches the per-instance
/// sliding limit it replaces (asks per minute). The row holds at most `max` timestamps.
pub async fn sliding_hit(
    db: &impl GenericClient,
    key: &str,
    max: u32,
    window_secs: u64,
) -> Result<Result<(), u64>, ApiError> {
    let statement = db.prepare_cached(SLIDING_HIT_SQL).await?;
    let max = i64::from(max);
    let window = window_secs.max(1) as f64;
    let row = db.query_one(&statement, &[&key, &max, &window]).await?;
    sliding_verdict(&row, window_secs)
}

/// The verdict of a row whose first two columns are [`sliding_hit_sql`]'s `counted` and
/// `retry_after` (its own, or a statement's that folds it in): `Ok(())` when counted,
/// `Err(retry_after_secs)` otherwise.
pub(crate) fn sliding_verdict(
    row: &tokio_postgres::Row,
    window_secs: u64,
) -> Result<Result<(), u64>, ApiError> {
    if row.try_get::<_, bool>(0)? {
        return Ok(Ok(()));
    }
    let retry: Option<i64> = row.try_get(1)?;
    Ok(Err(retry.map_or(window_secs.max(1), i64::unsigned_abs)))
}

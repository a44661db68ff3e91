//! Password hashing: argon2id with the OWASP parameters (m = 19 MiB, t = 2, p = 1), on a
//! fixed set of hashing workers behind one bounded gate.
//!
//! A hash costs 19 MiB and tens of milliseconds of CPU. Run on the shared blocking pool, a
//! flood of signups or logins would start hundreds of threads, each allocating its own 19 MiB
//! (which the allocator then keeps per thread), and starve the embedder and FAISS of that
//! pool. Instead every password operation is a job for one of [`HashGate`]'s workers: as many
//! threads as cores, each reusing its memory blocks from job to job and running at a lower CPU
//! priority than the async workers (answers keep streaming during a login flood). Jobs wait in
//! a bounded queue; past it the caller gets a 503 with `Retry-After` at once. A burst costs
//! queueing, never memory.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use argon2::password_hash::phc::{Output, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};

use crate::error::ApiError;
use crate::sync::lock;

/// Accepted password lengths, in bytes.
pub const MIN_LEN: usize = 8;
pub const MAX_LEN: usize = 1024;

/// A PHC string with the same parameters as real hashes and a random salt and output, so no
/// known password matches it. A login for an unknown user is verified against it, so it costs
/// as much as a wrong password does.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$n3yUe4HgVhM4ALiHQI8h3A$VdFfKw1UFhSp2c+VUyIOJWm1qGHrvQ2o5N6n5w2jtGo";

/// Memory cost of new hashes, in KiB (= 1 KiB blocks).
const M_COST: u32 = 19 * 1024;
/// Stored hashes asking for more memory than this are refused rather than computed.
const MAX_M_COST: u32 = 256 * 1024;
/// A worker idle this long gives its memory blocks back.
const RELEASE_AFTER: Duration = Duration::from_secs(30);
/// Jobs waiting for a worker when nothing else says how many.
pub const DEFAULT_QUEUE: usize = 128;

fn params() -> Result<Params, argon2::Error> {
    Params::new(M_COST, 2, 1, None)
}

fn argon2() -> Result<Argon2<'static>, ApiError> {
    let params =
        params().map_err(|e| ApiError::Internal(anyhow::anyhow!("argon2 parameters: {e}")))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// A worker's memory: the blocks of one hash with the house parameters, reused call after call.
pub struct Memory(Vec<Block>);

impl Memory {
    fn new() -> Self {
        Self(vec![Block::new(); M_COST as usize])
    }
}

type Job = Box<dyn FnOnce(&mut Memory) + Send>;

/// The jobs waiting for a worker. Idle workers wait on the condition variable, which lets go of
/// the lock, so each can time out on its own and give its memory back.
struct Queue {
    jobs: Mutex<VecDeque<Job>>,
    ready: Condvar,
    capacity: usize,
    /// Workers holding their memory blocks now.
    holding: AtomicUsize,
    release_after: Duration,
}

/// The bounded gate in front of the hashing workers (see the module doc).
pub struct HashGate {
    queue: Arc<Queue>,
    workers: usize,
}

impl HashGate {
    /// Starts `workers` hashing threads (at least one) behind a queue of `queue` jobs.
    pub fn start(workers: usize, queue: usize) -> std::io::Result<Self> {
        Self::start_releasing_after(workers, queue, RELEASE_AFTER)
    }

    fn start_releasing_after(
        workers: usize,
        capacity: usize,
        release_after: Duration,
    ) -> std::io::Result<Self> {
        let workers = workers.max(1);
        // One queue for all workers: whoever is free takes the next job.
        let queue = Arc::new(Queue {
            jobs: Mutex::new(VecDeque::with_capacity(capacity)),
            ready: Condvar::new(),
            // At least one job may wait (for a worker about to take it).
            capacity: capacity.max(1),
            holding: AtomicUsize::new(0),
            release_after,
        });
        for n in 0..workers {
            let queue = Arc::clone(&queue);
            std::thread::Builder::new()
                .name(format!("argon2-{n}"))
                .spawn(move || work(&queue))?;
        }
        Ok(Self { queue, workers })
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Workers holding their 19 MiB of blocks at this moment.
    pub fn workers_holding_memory(&self) -> usize {
        self.queue.holding.load(Ordering::Acquire)
    }

    /// Runs `f` on a hashing worker with its memory; `Overloaded` (503) at once if the queue
    /// is full.
    pub async fn run<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Memory) -> T + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |memory| {
            let _ = reply.send(f(memory));
        });
        {
            let mut jobs = lock(&self.queue.jobs);
            if jobs.len() >= self.queue.capacity {
                metrics::counter!("auth_hash_rejected_total").increment(1);
                return Err(ApiError::Overloaded(
                    "too many sign-ups and logins at once; try again in a moment",
                ));
            }
            jobs.push_back(job);
        }
        self.queue.ready.notify_one();
        answer
            .await
            .map_err(|_| ApiError::Internal(anyhow::anyhow!("a hashing job panicked")))
    }
}

fn work(queue: &Queue) {
    lower_priority();
    // Taken at the first job, not at start (an idle server holds none of it), and given back
    // after `release_after` without work: a 19 MiB allocation is its own mapping, which
    // dropping unmaps.
    let mut memory: Option<Memory> = None;
    loop {
        // The lock is held only to take a job, never while hashing or waiting.
        let job = {
            let mut jobs = lock(&queue.jobs);
            loop {
                if let Some(job) = jobs.pop_front() {
                    break job;
                }
                if memory.is_some() {
                    let (guard, waited) = queue
                        .ready
                        .wait_timeout(jobs, queue.release_after)
                        .unwrap_or_else(PoisonError::into_inner);
                    jobs = guard;
                    if waited.timed_out() && jobs.is_empty() {
                        memory = None;
                        queue.holding.fetch_sub(1, Ordering::AcqRel);
                    }
                } else {
                    jobs = queue
                        .ready
                        .wait(jobs)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            }
        };
        let memory = memory.get_or_insert_with(|| {
            queue.holding.fetch_add(1, Ordering::AcqRel);
            Memory::new()
        });
        // A panicking job loses its reply (the caller gets a 500), not the worker.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(memory)));
    }
}

/// Hashing yields the CPU to the async workers: a login flood slows logins, not answers.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority only reads its integer arguments; on Linux `who = 0` with
    // PRIO_PROCESS names the calling thread, whose nice value is all it changes.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
}

/// The process's gate: tests start several servers in one process, and they share it, as the
/// cores are shared. [`configure`] sizes it at start; otherwise it has a worker per core.
static GATE: OnceLock<HashGate> = OnceLock::new();

/// Sizes the process's gate, if it has not started yet (the first caller wins).
pub fn configure(workers: Option<usize>, queue: usize) -> std::io::Result<()> {
    if GATE.get().is_none() {
        let gate = HashGate::start(workers.unwrap_or_else(cores), queue)?;
        let _ = GATE.set(gate);
    }
    Ok(())
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn gate() -> Result<&'static HashGate, ApiError> {
    if let Some(gate) = GATE.get() {
        return Ok(gate);
    }
    configure(None, DEFAULT_QUEUE)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("starting the hashing workers: {e}")))?;
    GATE.get()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("no hashing workers")))
}

fn hash_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(anyhow::anyhow!("hashing a password: {e}"))
}

/// Hashes `password` to a PHC string with a fresh random salt, in `memory`.
fn hash_in(memory: &mut Memory, password: &[u8]) -> Result<String, ApiError> {
    let salt: [u8; 16] = rand::random();
    let mut out = [0u8; 32];
    argon2()?
        .hash_password_into_with_memory(password, &salt, &mut out, &mut memory.0[..])
        .map_err(hash_error)?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: (&params().map_err(hash_error)?)
            .try_into()
            .map_err(hash_error)?,
        salt: Some(Salt::new(&salt).map_err(hash_error)?),
        hash: Some(Output::new(&out).map_err(hash_error)?),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches the argon2 PHC string `phc`, computed in `memory` (or in memory of
/// its own when the hash was made with other parameters). Output comparison is constant-time.
fn verify_in(memory: &mut Memory, password: &[u8], phc: &str) -> Result<bool, ApiError> {
    let stored = |e: &dyn std::fmt::Display| {
        ApiError::Internal(anyhow::anyhow!("stored password hash: {e}"))
    };
    let parsed = PasswordHash::new(phc).map_err(|e| stored(&e))?;
    let algorithm = Algorithm::try_from(parsed.algorithm.as_str()).map_err(|e| stored(&e))?;
    let version = match parsed.version {
        Some(v) => Version::try_from(v).map_err(|e| stored(&e))?,
        None => Version::default(),
    };
    let params = Params::try_from(&parsed).map_err(|e| stored(&e))?;
    let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
        return Err(stored(&"no salt or hash"));
    };
    if params.m_cost() > MAX_M_COST {
        return Err(stored(&"memory cost too high"));
    }
    let needed = params.block_count();
    let mut own;
    let blocks = if needed <= memory.0.len() {
        &mut memory.0[..needed]
    } else {
        own = vec![Block::new(); needed];
        &mut own[..]
    };
    let mut out = vec![0u8; expected.len()];
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password, salt.as_ref(), &mut out, blocks)
        .map_err(|e| stored(&e))?;
    let computed = Output::new(&out).map_err(|e| stored(&e))?;
    // `Output`'s equality is constant-time.
    Ok(computed == *expected)
}

/// Hashes `password` to a PHC string with a fresh random salt.
pub async fn hash(password: String) -> Result<String, ApiError> {
    gate()?
        .run(move |memory| hash_in(memory, password.as_bytes()))
        .await?
}

/// Whether `password` matches `phc`; with `None` (no such user) it checks against a dummy hash
/// and answers `false`, taking about as long as a real check.
pub async fn verify(password: String, phc: Option<String>) -> Result<bool, ApiError> {
    gate()?
        .run(move |memory| match phc {
            // Imported from the Django prototype; login then replaces it with argon2id.
            Some(phc) if super::django::is_django_hash(&phc) => {
                Ok(super::django::verify_for_login(&password, &phc))
            }
            Some(phc) => verify_in(memory, password.as_bytes(), &phc),
            None => {
                let _ = verify_in(memory, password.as_bytes(), DUMMY_HASH);
                Ok(false)
            }
        })
        .await?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_then_verify() {
        let phc = hash("correct horse battery".into()).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(
            verify("correct horse battery".into(), Some(phc.clone()))
                .await
                .unwrap()
        );
        assert!(
            !verify("wrong horse battery".into(), Some(phc))
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn unknown_user_never_verifies() {
        assert!(!verify("anything at all".into(), None).await.unwrap());
    }

    #[test]
    fn dummy_hash_uses_the_real_parameters() {
        // Same cost as a real verification, or the timing would tell unknown users apart.
        assert!(DUMMY_HASH.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        let parsed = PasswordHash::new(DUMMY_HASH).unwrap();
        assert_eq!(parsed.hash.map(|h| h.len()), Some(32));
        // It parses and is really computed against: a mismatch, not a format error.
        let outcome = verify_in(&mut Memory::new(), b"anything at all", DUMMY_HASH);
        assert!(matches!(outcome, Ok(false)), "{outcome:?}");
    }

    #[test]
    fn hashes_interoperate_with_the_reference_implementation() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let mut memory = Memory::new();
        // Ours verifies with the crate's own verifier...
        let ours = hash_in(&mut memory, b"correct horse battery").unwrap();
        argon2()
            .unwrap()
            .verify_password(b"correct horse battery", ours.as_str())
            .unwrap();
        // ...and the crate's hashes (also with other parameters) verify with ours, twice in the
        // same memory.
        let theirs = argon2()
            .unwrap()
            .hash_password(b"correct horse battery")
            .unwrap()
            .to_string();
        let small = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(64, 1, 1, None).unwrap(),
        )
        .hash_password(b"correct horse battery")
        .unwrap()
        .to_string();
        for phc in [&theirs, &small, &theirs] {
            assert!(verify_in(&mut memory, b"correct horse battery", phc).unwrap());
            assert!(!verify_in(&mut memory, b"correct horse batterY", phc).unwrap());
        }
    }

    #[tokio::test]
    async fn idle_workers_take_their_memory_only_for_work_and_give_it_back() {
        use std::time::{Duration, Instant};
        let gate: &'static HashGate = Box::leak(Box::new(
            HashGate::start_releasing_after(2, 4, Duration::from_millis(200)).unwrap(),
        ));
        assert_eq!(
            gate.workers_holding_memory(),
            0,
            "nothing held before any work"
        );
        // Two jobs at once, each waiting for the other to start: both workers take memory.
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let jobs = (0..2).map(|_| {
            let barrier = Arc::clone(&barrier);
            gate.run(move |memory| {
                barrier.wait();
                memory.0.len()
            })
        });
        for blocks in futures::future::join_all(jobs).await {
            assert_eq!(blocks.unwrap(), M_COST as usize);
        }
        assert_eq!(gate.workers_holding_memory(), 2);
        // Idle past the release time, every worker gives its memory back, not just one.
        let deadline = Instant::now() + Duration::from_secs(10);
        while gate.workers_holding_memory() > 0 {
            assert!(Instant::now() < deadline, "memory still held");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // And takes it again for the next job.
        assert_eq!(
            gate.run(|memory| memory.0.len()).await.unwrap(),
            M_COST as usize
        );
    }

    #[tokio::test]
    async fn a_full_gate_refuses_at_once_and_recovers() {
        use std::time::Duration;

        use futures::FutureExt;
        let gate: &'static HashGate = Box::leak(Box::new(HashGate::start(1, 1).unwrap()));
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = tokio::sync::oneshot::channel();
        // The only worker is held busy...
        let busy = tokio::spawn(gate.run(move |_| {
            let _ = started_tx.send(());
            let _ = hold.recv();
            1
        }));
        started.await.unwrap();
        // ...one job waits in the queue (polled once: queued, its answer no longer awaited)...
        assert!(gate.run(|_| 2).now_or_never().is_none());
        // ...and the next is refused at once with a 503 that says when to retry.
        let refused = gate.run(|_| 3).await.unwrap_err();
        assert_eq!(
            refused.status(),
            axum::http::StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(refused.body().error.retry_after, Some(1));
        release.send(()).unwrap();
        assert_eq!(busy.await.unwrap().unwrap(), 1);
        // Once the queued job has been taken, the gate accepts work again.
        let mut accepted = None;
        for _ in 0..500 {
            if let Ok(n) = gate.run(|_| 4).await {
                accepted = Some(n);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(accepted, Some(4));
    }
}

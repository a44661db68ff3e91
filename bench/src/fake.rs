//! A fake Gemini on loopback speaking the real wire format (`streamGenerateContent?alt=sse`,
//! `generateContent`, `batchEmbedContents`). Each streamed chunk carries the time it was handed
//! to the network (`[t:<µs since the bench started>]`), so a client that notes when the matching
//! delta arrives knows exactly what the server added.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::stats::now_us;

/// Delays and length of the streamed answers; changed between scenarios. Also counts the
/// embedding requests it answered, and the texts in them.
#[derive(Default)]
pub struct FakeSettings {
    pub first_chunk_ms: AtomicU64,
    pub chunk_ms: AtomicU64,
    pub chunks: AtomicU64,
    embed_requests: AtomicU64,
    embed_texts: AtomicU64,
}

impl FakeSettings {
    pub fn set(&self, first_chunk_ms: u64, chunk_ms: u64, chunks: u64) {
        self.first_chunk_ms.store(first_chunk_ms, Ordering::Relaxed);
        self.chunk_ms.store(chunk_ms, Ordering::Relaxed);
        self.chunks.store(chunks.max(1), Ordering::Relaxed);
    }

    /// Embedding requests answered so far, and the texts they held.
    pub fn embeddings(&self) -> (u64, u64) {
        (
            self.embed_requests.load(Ordering::Relaxed),
            self.embed_texts.load(Ordering::Relaxed),
        )
    }

    fn count_embeddings(&self, texts: usize) {
        self.embed_requests.fetch_add(1, Ordering::Relaxed);
        self.embed_texts.fetch_add(texts as u64, Ordering::Relaxed);
    }
}

/// Starts the fake on a free loopback port; returns its base URL.
pub async fn start(settings: Arc<FakeSettings>) -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().fallback(move |uri: Uri, body: Bytes| {
        let settings = Arc::clone(&settings);
        async move { handle(uri, body, &settings).await }
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(format!("http://{addr}"))
}

async fn handle(uri: Uri, body: Bytes, settings: &FakeSettings) -> Response {
    let path = uri.path();
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "bad json").into_response();
    };
    if path.ends_with(":batchEmbedContents") {
        let empty = Vec::new();
        let requests = request["requests"].as_array().unwrap_or(&empty);
        settings.count_embeddings(requests.len());
        let embeddings: Vec<Value> = requests
            .iter()
            .map(|r| {
                let text = r["content"]["parts"][0]["text"].as_str().unwrap_or("");
                let dim = r["outputDimensionality"].as_u64().unwrap_or(768) as usize;
                json!({ "values": bag_of_words(text, dim) })
            })
            .collect();
        return axum::Json(json!({ "embeddings": embeddings })).into_response();
    }
    if path.ends_with(":embedContent") {
        settings.count_embeddings(1);
        let text = request["content"]["parts"][0]["text"]
            .as_str()
            .unwrap_or("");
        let dim = request["outputDimensionality"].as_u64().unwrap_or(768) as usize;
        return axum::Json(json!({ "embedding": { "values": bag_of_words(text, dim) } }))
            .into_response();
    }
    let first = settings.first_chunk_ms.load(Ordering::Relaxed);
    let gap = settings.chunk_ms.load(Ordering::Relaxed);
    let chunks = settings.chunks.load(Ordering::Relaxed).max(1);
    if path.ends_with(":streamGenerateContent") {
        let stream = futures::stream::unfold(0u64, move |i| async move {
            if i >= chunks {
                return None;
            }
            let delay = if i == 0 { first } else { gap };
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            let last = i + 1 == chunks;
            let text = format!("[t:{}] word{i} ", now_us());
            let event = event_json(&text, last, i + 1);
            Some((
                Ok::<_, std::io::Error>(Bytes::from(format!("data: {event}\r\n\r\n"))),
                i + 1,
            ))
        });
        return Response::builder()
            .header(header::CONTENT_TYPE, "text/event-stream")
            .body(Body::from_stream(stream))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    }
    if path.ends_with(":generateContent") {
        tokio::time::sleep(Duration::from_millis(first + gap * (chunks - 1))).await;
        let text: String = (0..chunks).map(|i| format!("word{i} ")).collect();
        return axum::Json(event_json(&text, true, chunks)).into_response();
    }
    (StatusCode::NOT_FOUND, "unknown path").into_response()
}

fn event_json(text: &str, last: bool, tokens: u64) -> Value {
    let mut candidate = json!({
        "content": {"parts": [{"text": text}], "role": "model"},
        "index": 0
    });
    if last {
        candidate["finishReason"] = json!("STOP");
    }
    json!({
        "candidates": [candidate],
        "usageMetadata": {"promptTokenCount": 50, "candidatesTokenCount": tokens, "totalTokenCount": 50 + tokens},
        "modelVersion": "gemini-2.5-flash",
        "responseId": "bench"
    })
}

/// A deterministic vector: word counts hashed into `dim` buckets, L2-normalised. Texts that
/// share words are similar, which is all retrieval needs to pick passages.
pub fn bag_of_words(text: &str, dim: usize) -> Vec<f32> {
    let mut v = vec![0f32; dim.max(1)];
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        let mut h: u64 = 0xcbf29ce484222325;
        for b in word.to_lowercase().bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
        }
        let bucket = (h % v.len() as u64) as usize;
        v[bucket] += 1.0;
    }
    // Never the zero vector: one fixed component keeps every text comparable.
    v[0] += 0.1;
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

/// The send stamps found in a delta's text, in µs.
pub fn stamps(text: &str) -> Vec<u64> {
    text.split("[t:")
        .skip(1)
        .filter_map(|rest| rest.split(']').next()?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_read_back() {
        assert_eq!(stamps("[t:12] a [t:345] b"), vec![12, 345]);
        assert!(stamps("no stamp").is_empty());
    }

    #[test]
    fn shared_words_make_similar_vectors() {
        let a = bag_of_words("refund policy for orders", 64);
        let b = bag_of_words("what is the refund policy", 64);
        let c = bag_of_words("xylophone quartz", 64);
        let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| p * q).sum::<f32>();
        assert!(dot(&a, &b) > dot(&a, &c));
    }
}

//! The metrics step: what every ended answer adds to the service's counters and histograms.

use std::time::Duration;

use protocol::chat::FinishReason;

/// Counts an answer by how it ended and records its latency and time to first token.
pub(super) fn answer_ended(
    finish_reason: FinishReason,
    latency: Duration,
    first_token: Option<Duration>,
) {
    metrics::counter!("chat_answers_total", "finish_reason" => finish_reason_label(finish_reason))
        .increment(1);
    metrics::histogram!("chat_answer_seconds").record(latency.as_secs_f64());
    if let Some(first) = first_token {
        metrics::histogram!("chat_first_token_seconds").record(first.as_secs_f64());
    }
}

fn finish_reason_label(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Cancelled => "cancelled",
        FinishReason::Error => "error",
    }
}

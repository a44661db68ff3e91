//! Clocks, percentiles and a process's memory and CPU from `/proc`.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Instant;

use serde_json::{Value, json};

static START: OnceLock<Instant> = OnceLock::new();

/// Microseconds since the bench started: the clock shared by the fake provider's send stamps
/// and the clients' receive times (one process, one monotonic clock).
pub fn now_us() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// Nearest-rank percentile, `p` in 0..=100; 0 for no values.
pub fn pct(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Rounded to two decimals for the JSON lines.
pub fn r2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Memory and CPU of the server, read from `/proc/<pid>`, and beside it the CPU of the rest of
/// the machine: on two cores the bench's clients and PostgreSQL compete with the server, and a
/// latency figure means little without them.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    pub rss_kib: u64,
    pub hwm_kib: u64,
    /// User + system CPU, seconds.
    pub cpu_s: f64,
    /// This bench process (clients and fake provider), seconds.
    pub bench_cpu_s: f64,
    /// Every living `postgres` process, seconds.
    pub postgres_cpu_s: f64,
    /// Every CPU's time not idle (`/proc/stat`), seconds.
    pub machine_busy_s: f64,
}

/// A process's memory and CPU (the machine's fields left at zero).
pub fn sample(pid: u32) -> ProcSample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    ProcSample {
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
        cpu_s: process_cpu(&format!("/proc/{pid}/stat")).map_or(0.0, |(_, cpu)| cpu),
        ..ProcSample::default()
    }
}

/// The server's figures (none without a pid), and the bench's, PostgreSQL's and the machine's
/// CPU beside them. Reads every process's `stat`: for the ends of a scenario, not a poll loop.
pub fn sample_with_machine(pid: Option<u32>) -> ProcSample {
    ProcSample {
        bench_cpu_s: process_cpu("/proc/self/stat").map_or(0.0, |(_, cpu)| cpu),
        postgres_cpu_s: postgres_cpu(),
        machine_busy_s: machine_busy(),
        ..pid.map(sample).unwrap_or_default()
    }
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

/// A process's command name and user + system CPU in seconds, from its `stat` file.
fn process_cpu(stat_path: &str) -> Option<(String, f64)> {
    let stat = std::fs::read_to_string(stat_path).ok()?;
    // The command name may hold spaces; it sits inside the outermost parentheses.
    let (head, after) = stat.rsplit_once(')')?;
    let name = head.split_once('(').map_or("", |(_, name)| name).to_owned();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> f64 { fields.get(i).and_then(|v| v.parse().ok()).unwrap_or(0.0) };
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    Some((name, (ticks(11) + ticks(12)) / ticks_per_second()))
}

/// CPU of every `postgres` process alive now (one that ended took its figure with it; the
/// server's pooled connections live as long as the run).
fn postgres_cpu() -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| process_cpu(&format!("{}/stat", e.path().display())))
        .filter(|(name, _)| name == "postgres")
        .map(|(_, cpu)| cpu)
        .sum()
}

/// All CPUs' time not idle (neither `idle` nor `iowait`), from the `cpu` line of `/proc/stat`.
fn machine_busy() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let values: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .take(8) // user nice system idle iowait irq softirq steal
        .filter_map(|v| v.parse().ok())
        .collect();
    let busy: f64 = values
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    busy / ticks_per_second()
}

/// The 1-minute load average, for the record.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// The server's histograms whose means, over a scenario, say where an ask's time to its
/// first delta went: (name in the output, the series' name without `_sum`/`_count`).
pub const STAGES: [(&str, &str); 5] = [
    ("limit", "chat_ask_stage_seconds{stage=\"limit\"}"),
    ("store", "chat_ask_stage_seconds{stage=\"store\"}"),
    ("retrieval", "rag_retrieval_seconds"),
    (
        "model_first_chunk",
        "chat_ask_stage_seconds{stage=\"model_first_chunk\"}",
    ),
    ("first_token", "chat_first_token_seconds"),
];

/// The samples of a Prometheus text exposition: series (name and labels) → value.
pub fn prometheus_samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.trim().rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The mean of each of [`STAGES`] over the observations made between two scrapes, in ms
/// (absent when none were made).
pub fn stage_means_ms(before: &HashMap<String, f64>, after: &HashMap<String, f64>) -> Value {
    let delta = |series: String| {
        after.get(&series).copied().unwrap_or(0.0) - before.get(&series).copied().unwrap_or(0.0)
    };
    let suffixed = |series: &str, suffix: &str| match series.split_once('{') {
        Some((name, labels)) => format!("{name}{suffix}{{{labels}"),
        None => format!("{series}{suffix}"),
    };
    let mut means = serde_json::Map::new();
    for (name, series) in STAGES {
        let count = delta(suffixed(series, "_count"));
        if count > 0.0 {
            let mean = delta(suffixed(series, "_sum")) / count * 1000.0;
            means.insert(name.to_owned(), json!(r2(mean)));
        }
    }
    Value::Object(means)
}

/// Raises this process's soft open-file limit to the hard one; returns the limit.
pub fn raise_open_files() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct handed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            return raised.rlim_cur;
        }
    }
    limit.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_means_come_from_the_difference_of_two_scrapes() {
        let before = prometheus_samples(
            "# TYPE chat_ask_stage_seconds summary\n\
             chat_ask_stage_seconds_sum{stage=\"store\"} 1.5\n\
             chat_ask_stage_seconds_count{stage=\"store\"} 10\n\
             rag_retrieval_seconds_sum 0.25\n\
             rag_retrieval_seconds_count 5\n",
        );
        let after = prometheus_samples(
            "chat_ask_stage_seconds_sum{stage=\"store\"} 2.5\n\
             chat_ask_stage_seconds_count{stage=\"store\"} 14\n\
             chat_ask_stage_seconds_bucket{stage=\"store\",le=\"0.5\"} 14\n\
             rag_retrieval_seconds_sum 0.25\n\
             rag_retrieval_seconds_count 5\n\
             chat_first_token_seconds_sum 0.9\n\
             chat_first_token_seconds_count 3\n",
        );
        let means = stage_means_ms(&before, &after);
        // (2.5 - 1.5) s over 4 new observations; 0.9 s over 3; nothing new for retrieval.
        assert_eq!(means, json!({"store": 250.0, "first_token": 300.0}));
    }

    #[test]
    fn percentiles_and_own_process() {
        let v = [5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(pct(&v, 50.0), 3.0);
        assert_eq!(pct(&v, 100.0), 5.0);
        assert_eq!(pct(&[], 50.0), 0.0);
        let me = sample(std::process::id());
        assert!(me.rss_kib > 0 && me.hwm_kib >= me.rss_kib);
        // Burn CPU until both the bench's own figure and the machine's have moved (they count
        // in clock ticks, and a busy machine may give this thread few of them): a reading
        // that never moves fails after 10 s.
        let before = sample_with_machine(None);
        let t = Instant::now();
        let mut x = 0u64;
        let mut after = before;
        while t.elapsed().as_secs() < 10
            && (after.bench_cpu_s <= before.bench_cpu_s
                || after.machine_busy_s <= before.machine_busy_s)
        {
            for _ in 0..1_000_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            after = sample_with_machine(None);
        }
        assert!(
            after.bench_cpu_s > before.bench_cpu_s,
            "{before:?} {after:?}"
        );
        assert!(
            after.machine_busy_s > before.machine_busy_s,
            "{before:?} {after:?}"
        );
        assert_eq!(after.rss_kib, 0);
    }
}

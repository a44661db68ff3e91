//! `chat-server import-django --from <URL>`: moves the Django prototype's users and chat
//! history into this service.
//!
//! - Users (`auth_user`) become accounts with their username, email, `date_joined` and Django
//!   password hash, which keeps working ([`crate::auth::django`]) until the first login
//!   replaces it with argon2id. `is_staff` gives the admin role only with `--admins`.
//! - Each user's history rows (`chatbot_api_chathistory`) become conversations, split where a
//!   day or more passes between two rows; each row a question and its complete answer, both
//!   with the row's original time.
//! - Idempotent: the Django ids of what was imported are recorded (`django_user_imports`,
//!   `django_history_imports`), and a second run copies only what is new.
//! - Batches of users, each in one transaction, so a failure never leaves a user half
//!   imported; rows are streamed from the source and written with binary `COPY`.
//!
//! # Layout
//! - [`plan`]: the pure decisions (which users, which rows, where conversations split).
//! - [`source`]: reading the Django database.
//! - [`target`]: writing here.
//!
//! Why one file: the import run itself (options, batches, one transaction per user batch, the
//! report); reading the source, planning and writing the target are already rooms of their own.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{TimeDelta, Utc};
use futures::TryStreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use protocol::auth::Role;
use uuid::Uuid;

use crate::auth::django;
use crate::config::{Config, ImportDjangoArgs};

pub mod plan;
pub mod source;
pub mod target;

use plan::{RowFate, RowSkip, UserDecision, UserSkip};

/// How an import runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Read and decide everything, write nothing.
    pub dry_run: bool,
    /// `is_staff` → the admin role.
    pub admins: bool,
    /// Import rows older than `retention_days` too.
    pub keep_old: bool,
    /// `HISTORY_RETENTION_DAYS`.
    pub retention_days: u32,
    /// Users per transaction.
    pub batch_users: usize,
    /// History rows per `COPY`.
    pub chunk_rows: usize,
    /// Draw a progress bar on the terminal (stderr).
    pub progress: bool,
}

impl Options {
    pub fn new(args: &ImportDjangoArgs, retention_days: u32) -> Self {
        Self {
            dry_run: args.dry_run,
            admins: args.admins,
            keep_old: args.keep_old,
            retention_days,
            batch_users: 500,
            chunk_rows: 5_000,
            progress: true,
        }
    }
}

/// At most this many example users are named per kind of problem in the report.
const EXAMPLES: usize = 10;

/// What an import did (or, dry, would do).
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub dry_run: bool,
    pub users_read: u64,
    pub users_imported: u64,
    pub users_already: u64,
    pub admins: u64,
    pub placeholder_emails: u64,
    pub users_skipped: BTreeMap<UserSkip, u64>,
    /// Password hashes of the imported users, by Django hasher.
    pub hashes: BTreeMap<&'static str, u64>,
    /// Imported users who cannot log in here, by reason (unusable, unsupported hasher...).
    pub cannot_log_in: BTreeMap<String, u64>,
    /// Names of some skipped users and of some who cannot log in, with the reason.
    pub examples: Vec<String>,
    pub rows_read: u64,
    pub rows_imported: u64,
    pub rows_already: u64,
    pub conversations: u64,
    pub rows_skipped: BTreeMap<RowSkip, u64>,
    /// Rows of users who were skipped (or not found).
    pub rows_of_skipped_users: u64,
    /// Rows whose `user_id` names no Django user.
    pub orphan_rows: u64,
    pub elapsed: Duration,
}

impl Report {
    pub fn users_skipped_total(&self) -> u64 {
        self.users_skipped.values().sum()
    }

    pub fn rows_skipped_total(&self) -> u64 {
        self.rows_skipped.values().sum()
    }

    fn example(&mut self, user: &plan::DjangoUser, why: &str) {
        if self.examples.len() < EXAMPLES * 2 {
            self.examples
                .push(format!("#{} {:?}: {why}", user.id, user.username));
        }
    }
}

fn join_counts<K>(counts: &BTreeMap<K, u64>, name: impl Fn(&K) -> String) -> String {
    counts
        .iter()
        .map(|(k, n)| format!("{n} {}", name(k)))
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let title = if self.dry_run {
            "Django import, dry run (nothing was written)"
        } else {
            "Django import"
        };
        writeln!(f, "{title}")?;
        writeln!(
            f,
            "users:     {} read, {} imported ({} admins), {} imported before, {} skipped",
            self.users_read,
            self.users_imported,
            self.admins,
            self.users_already,
            self.users_skipped_total()
        )?;
        if !self.users_skipped.is_empty() {
            writeln!(
                f,
                "           skipped: {}",
                join_counts(&self.users_skipped, |k| k.describe().to_owned())
            )?;
        }
        if self.placeholder_emails > 0 {
            writeln!(
                f,
                "           {} without an email got <username>@users.invalid",
                self.placeholder_emails
            )?;
        }
        if !self.hashes.is_empty() {
            writeln!(
                f,
                "passwords: {}",
                join_counts(&self.hashes, |k| (*k).to_owned())
            )?;
        }
        if !self.cannot_log_in.is_empty() {
            writeln!(
                f,
                "           cannot log in here: {}",
                join_counts(&self.cannot_log_in, Clone::clone)
            )?;
        }
        for example in &self.examples {
            writeln!(f, "           e.g. {example}")?;
        }
        writeln!(
            f,
            "history:   {} rows read, {} imported into {} conversations, {} imported before",
            self.rows_read, self.rows_imported, self.conversations, self.rows_already
        )?;
        if !self.rows_skipped.is_empty() {
            writeln!(
                f,
                "           skipped: {}",
                join_counts(&self.rows_skipped, |k| k.describe().to_owned())
            )?;
        }
        if self.rows_of_skipped_users > 0 || self.orphan_rows > 0 {
            writeln!(
                f,
                "           not read: {} rows of skipped users, {} rows without a user",
                self.rows_of_skipped_users, self.orphan_rows
            )?;
        }
        write!(f, "time:      {:.1} s", self.elapsed.as_secs_f64())
    }
}

/// The `import-django` command: prepares this service's database, imports, prints the report.
pub async fn run(config: &Config, args: &ImportDjangoArgs) -> anyhow::Result<()> {
    crate::db::ensure_database(&config.database_url).await?;
    crate::db::migrate(&config.database_url).await?;
    let options = Options::new(args, config.history_retention_days);
    let report = import(args.from.expose(), &config.database_url, &options).await?;
    println!("{report}");
    Ok(())
}

/// Imports from the Django database at `source_url` into the (migrated) database at
/// `target_url`.
pub async fn import(
    source_url: &str,
    target_url: &str,
    options: &Options,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let source = source::Source::connect(source_url).await?;
    let mut target = crate::db::connect(target_url)
        .await
        .context("connecting to this service's database")?;
    if !target::try_lock(&target).await? {
        anyhow::bail!("another import-django is running against this database");
    }
    let totals = source.totals().await?;
    let progress = progress_bar(options.progress, totals.rows);
    let mut report = Report {
        dry_run: options.dry_run,
        orphan_rows: totals.orphan_rows,
        ..Report::default()
    };
    let cutoff = (!options.keep_old)
        .then(|| Utc::now() - TimeDelta::days(i64::from(options.retention_days)));
    let mut taken = plan::TakenKeys::default();
    let batch = i64::try_from(options.batch_users.max(1)).unwrap_or(500);
    let mut after = i64::MIN;
    loop {
        let users = source.users_after(after, batch).await?;
        let Some(last) = users.last() else { break };
        after = last.id;
        let ids: Vec<i64> = users.iter().map(|u| u.id).collect();
        let known = target::known_users(&target, &ids).await?;
        target::add_taken_keys(&target, &users, &mut taken).await?;
        let decisions = plan::decide_users(&users, &known, &mut taken, options.admins);
        import_batch(
            &source,
            &mut target,
            &users,
            decisions,
            cutoff,
            options,
            &mut report,
            &progress,
        )
        .await
        .with_context(|| {
            format!(
                "importing the Django users {}..={} (earlier batches are committed; running \
                 again resumes)",
                ids[0], after
            )
        })?;
        progress.set_message(format!("{}/{} users", report.users_read, totals.users));
    }
    progress.finish_and_clear();
    report.elapsed = started.elapsed();
    Ok(report)
}

fn progress_bar(show: bool, rows: u64) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    // Draws on stderr, and only when it is a terminal.
    let bar = ProgressBar::new(rows);
    if let Ok(style) = ProgressStyle::with_template(
        "{elapsed_precise} [{wide_bar}] {human_pos}/{human_len} history rows ({per_sec}, {eta} left) {msg}",
    ) {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// One batch of users in one transaction: their accounts, then their history.
#[allow(clippy::too_many_arguments)]
async fn import_batch(
    source: &source::Source,
    target: &mut tokio_postgres::Client,
    users: &[plan::DjangoUser],
    mut decisions: Vec<UserDecision>,
    cutoff: Option<chrono::DateTime<Utc>>,
    options: &Options,
    report: &mut Report,
    progress: &ProgressBar,
) -> anyhow::Result<()> {
    // Rows an earlier run imported (read before the transaction: the import lock keeps other
    // imports out meanwhile).
    let existing: Vec<i64> = users
        .iter()
        .zip(&decisions)
        .filter(|(_, d)| matches!(d, UserDecision::Existing(_)))
        .map(|(u, _)| u.id)
        .collect();
    let already = target::imported_rows(&*target, &existing).await?;

    let tx = if options.dry_run {
        None
    } else {
        Some(target.transaction().await?)
    };

    // Accounts. One taken meanwhile (a signup racing the import) is skipped, not an error.
    let new: Vec<(&plan::DjangoUser, &plan::NewUser)> = users
        .iter()
        .zip(&decisions)
        .filter_map(|(u, d)| match d {
            UserDecision::New(n) => Some((u, n)),
            _ => None,
        })
        .collect();
    if let Some(tx) = &tx {
        let inserted = target::insert_users(tx, &new).await?;
        for decision in &mut decisions {
            if let UserDecision::New(n) = decision
                && !inserted.contains(&n.id)
            {
                *decision = UserDecision::Skip(UserSkip::TakenMeanwhile);
            }
        }
    }

    // Whose history to read.
    let mut accounts: HashMap<i64, Uuid> = HashMap::new();
    let mut skipped = Vec::new();
    for (user, decision) in users.iter().zip(&decisions) {
        report.users_read += 1;
        match decision {
            UserDecision::New(n) => {
                accounts.insert(user.id, n.id);
                report.users_imported += 1;
                report.admins += u64::from(n.role == Role::Admin);
                report.placeholder_emails += u64::from(n.placeholder_email);
                match django::identify(&user.password) {
                    Ok(hasher) => *report.hashes.entry(hasher.name()).or_default() += 1,
                    Err(why) => {
                        *report.cannot_log_in.entry(why.to_string()).or_default() += 1;
                        report.example(user, &format!("cannot log in: {why}"));
                    }
                }
            }
            UserDecision::Existing(id) => {
                accounts.insert(user.id, *id);
                report.users_already += 1;
            }
            UserDecision::Skip(why) => {
                skipped.push(user.id);
                *report.users_skipped.entry(*why).or_default() += 1;
                report.example(user, &format!("skipped: {}", why.describe()));
            }
        }
    }
    let not_read = source.count_rows(&skipped).await?;
    report.rows_of_skipped_users += not_read;
    progress.inc(not_read);

    // History, streamed by user and time, written a chunk at a time.
    let mut read: Vec<i64> = accounts.keys().copied().collect();
    read.sort_unstable();
    let rows = source.rows_of(&read).await?;
    futures::pin_mut!(rows);
    let mut splitter = plan::Splitter::default();
    let mut chunk = target::Chunk::default();
    while let Some(row) = rows.try_next().await? {
        report.rows_read += 1;
        progress.inc(1);
        match plan::classify_row(&row, cutoff, &already) {
            RowFate::AlreadyImported => report.rows_already += 1,
            RowFate::Skip(why) => *report.rows_skipped.entry(why).or_default() += 1,
            RowFate::Import => {
                let Some(&user_id) = accounts.get(&row.user_id) else {
                    continue;
                };
                let (conversation_id, starts) = splitter.place(row.user_id, row.created_at);
                let (question_id, answer_id) = plan::exchange_ids();
                chunk.push(
                    target::Exchange {
                        django_id: row.id,
                        django_user_id: row.user_id,
                        question_id,
                        answer_id,
                        conversation_id,
                        user_id,
                        question: row.user_message,
                        answer: row.ai_response,
                        at: row.created_at,
                    },
                    starts,
                );
                if chunk.len() >= options.chunk_rows {
                    flush(tx.as_ref(), &mut chunk, report).await?;
                }
            }
        }
    }
    flush(tx.as_ref(), &mut chunk, report).await?;
    if let Some(tx) = tx {
        tx.commit().await?;
    }
    Ok(())
}

/// Writes (unless dry) and counts a chunk, leaving it empty.
async fn flush(
    tx: Option<&tokio_postgres::Transaction<'_>>,
    chunk: &mut target::Chunk,
    report: &mut Report,
) -> anyhow::Result<()> {
    if chunk.is_empty() {
        return Ok(());
    }
    if let Some(tx) = tx {
        target::write_chunk(tx, chunk).await?;
    }
    report.rows_imported += chunk.len() as u64;
    report.conversations += chunk.conversations.len() as u64;
    *chunk = target::Chunk::default();
    Ok(())
}

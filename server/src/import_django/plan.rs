//! The import's decisions, as pure functions: which Django users become accounts (and why the
//! others do not), which history rows are copied, and where conversations split.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, TimeDelta, Utc};
use protocol::auth::Role;
use uuid::Uuid;

/// A row of Django's `auth_user`.
#[derive(Debug, Clone)]
pub struct DjangoUser {
    pub id: i64,
    pub username: String,
    pub email: String,
    /// Django's encoded password hash.
    pub password: String,
    pub is_staff: bool,
    pub is_active: bool,
    pub date_joined: DateTime<Utc>,
}

/// A row of the prototype's `chatbot_api_chathistory`.
#[derive(Debug, Clone)]
pub struct HistoryRow {
    pub id: i64,
    pub user_id: i64,
    pub user_message: String,
    pub ai_response: String,
    pub created_at: DateTime<Utc>,
}

/// Why a Django user is not imported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum UserSkip {
    /// Django refuses them a login; so would we.
    Inactive,
    EmptyUsername,
    /// The username (in any letter case) belongs to an account here or an earlier Django user.
    DuplicateUsername,
    /// The email (in any letter case) belongs to an account here or an earlier Django user.
    DuplicateEmail,
    /// Imported before, and the account has since been deleted here.
    DeletedHere,
    /// Someone signed up with the same name or email while the import ran.
    TakenMeanwhile,
}

impl UserSkip {
    pub fn describe(self) -> &'static str {
        match self {
            Self::Inactive => "inactive in Django",
            Self::EmptyUsername => "empty username",
            Self::DuplicateUsername => "duplicate username (letter case ignored)",
            Self::DuplicateEmail => "duplicate email (letter case ignored)",
            Self::DeletedHere => "imported before, since deleted here",
            Self::TakenMeanwhile => "name or email taken during the import",
        }
    }
}

/// A new account to create for a Django user.
#[derive(Debug, Clone, PartialEq)]
pub struct NewUser {
    pub id: Uuid,
    pub role: Role,
    pub email: String,
    /// The Django user had no email; `email` is a placeholder under the reserved `.invalid`.
    pub placeholder_email: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum UserDecision {
    New(NewUser),
    /// Imported by an earlier run: only history rows not yet imported are copied.
    Existing(Uuid),
    Skip(UserSkip),
}

/// Lower-cased usernames and emails that are taken: by accounts here, or by Django users
/// decided earlier in this run (the lowest Django id wins, as the batches go in id order).
#[derive(Debug, Default)]
pub struct TakenKeys {
    pub usernames: HashSet<String>,
    pub emails: HashSet<String>,
}

/// The placeholder address of a Django user without an email: unique with the username, and
/// under `.invalid` (RFC 2606), so no mail is ever delivered to it.
pub fn placeholder_email(username: &str) -> String {
    format!("{}@users.invalid", username.to_lowercase())
}

/// Decides each user of a batch, in the batch's order (ascending Django id). `known` maps the
/// Django ids imported before to their account and whether it still exists; `taken` holds the
/// keys used here, and receives the keys of every user decided `New` or `Existing`.
pub fn decide_users(
    users: &[DjangoUser],
    known: &HashMap<i64, (Uuid, bool)>,
    taken: &mut TakenKeys,
    admins: bool,
) -> Vec<UserDecision> {
    users
        .iter()
        .map(|user| {
            let username = user.username.trim();
            let name_key = username.to_lowercase();
            let email = user.email.trim();
            let (email, placeholder) = if email.is_empty() {
                (placeholder_email(username), true)
            } else {
                (email.to_owned(), false)
            };
            let email_key = email.to_lowercase();
            if let Some(&(id, exists)) = known.get(&user.id) {
                if !exists {
                    return UserDecision::Skip(UserSkip::DeletedHere);
                }
                taken.usernames.insert(name_key);
                taken.emails.insert(email_key);
                return UserDecision::Existing(id);
            }
            if !user.is_active {
                return UserDecision::Skip(UserSkip::Inactive);
            }
            if username.is_empty() {
                return UserDecision::Skip(UserSkip::EmptyUsername);
            }
            if taken.usernames.contains(&name_key) {
                return UserDecision::Skip(UserSkip::DuplicateUsername);
            }
            if taken.emails.contains(&email_key) {
                return UserDecision::Skip(UserSkip::DuplicateEmail);
            }
            taken.usernames.insert(name_key);
            taken.emails.insert(email_key);
            UserDecision::New(NewUser {
                id: Uuid::new_v4(),
                role: if admins && user.is_staff {
                    Role::Admin
                } else {
                    Role::User
                },
                email,
                placeholder_email: placeholder,
            })
        })
        .collect()
}

/// Why a history row is not copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RowSkip {
    /// Older than `HISTORY_RETENTION_DAYS` (the cleanup would delete it); `--keep-old` keeps it.
    Old,
    EmptyQuestion,
    EmptyAnswer,
}

impl RowSkip {
    pub fn describe(self) -> &'static str {
        match self {
            Self::Old => "older than HISTORY_RETENTION_DAYS (--keep-old imports them)",
            Self::EmptyQuestion => "empty user_message",
            Self::EmptyAnswer => "empty ai_response",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowFate {
    Import,
    AlreadyImported,
    Skip(RowSkip),
}

/// What becomes of one history row. `cutoff`: rows created before it are old (`None` with
/// `--keep-old`).
pub fn classify_row(
    row: &HistoryRow,
    cutoff: Option<DateTime<Utc>>,
    already: &HashSet<i64>,
) -> RowFate {
    if already.contains(&row.id) {
        RowFate::AlreadyImported
    } else if row.user_message.trim().is_empty() {
        RowFate::Skip(RowSkip::EmptyQuestion)
    } else if row.ai_response.trim().is_empty() {
        RowFate::Skip(RowSkip::EmptyAnswer)
    } else if cutoff.is_some_and(|cutoff| row.created_at < cutoff) {
        RowFate::Skip(RowSkip::Old)
    } else {
        RowFate::Import
    }
}

/// A pause longer than this between two of a user's rows starts a new conversation.
pub const CONVERSATION_GAP: TimeDelta = TimeDelta::days(1);

/// Assigns rows, fed in `(user, created_at)` order, to conversations: a user's rows share one
/// until a gap longer than [`CONVERSATION_GAP`].
#[derive(Debug, Default)]
pub struct Splitter {
    /// The conversation rows are going to: its user, id and latest row time.
    current: Option<(i64, Uuid, DateTime<Utc>)>,
}

impl Splitter {
    /// The conversation of a row of `user` at `at`, and whether it starts there.
    pub fn place(&mut self, user: i64, at: DateTime<Utc>) -> (Uuid, bool) {
        match &mut self.current {
            Some((current_user, id, last))
                if *current_user == user && at - *last <= CONVERSATION_GAP =>
            {
                *last = at.max(*last);
                (*id, false)
            }
            _ => {
                let id = Uuid::new_v4();
                self.current = Some((user, id, at));
                (id, true)
            }
        }
    }
}

/// Ids for a question and its answer such that the answer's is the greater: both keep the
/// Django row's timestamp, and message lists order by `(created_at, id)`, so the answer then
/// always lists after its question.
pub fn exchange_ids() -> (Uuid, Uuid) {
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    if a < b { (a, b) } else { (b, a) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: i64, username: &str, email: &str) -> DjangoUser {
        DjangoUser {
            id,
            username: username.into(),
            email: email.into(),
            password: "pbkdf2_sha256$1$s$x".into(),
            is_staff: false,
            is_active: true,
            date_joined: Utc::now(),
        }
    }

    #[test]
    fn duplicates_by_case_lose_to_the_earlier_user() {
        let mut taken = TakenKeys::default();
        taken.usernames.insert("carol".into());
        let mut staff = user(1, "Alice", "alice@example.com");
        staff.is_staff = true;
        let mut inactive = user(6, "frank", "frank@example.com");
        inactive.is_active = false;
        let users = vec![
            staff,
            user(2, "alice", "other@example.com"),
            user(3, "bob", "ALICE@example.com"),
            user(4, "Carol", "carol@example.com"),
            user(5, "dave", ""),
            inactive,
            user(7, "  ", "x@example.com"),
        ];
        let decisions = decide_users(&users, &HashMap::new(), &mut taken, true);
        match &decisions[0] {
            UserDecision::New(new) => {
                assert_eq!(new.role, Role::Admin);
                assert!(!new.placeholder_email);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            decisions[1],
            UserDecision::Skip(UserSkip::DuplicateUsername)
        );
        assert_eq!(decisions[2], UserDecision::Skip(UserSkip::DuplicateEmail));
        assert_eq!(
            decisions[3],
            UserDecision::Skip(UserSkip::DuplicateUsername)
        );
        match &decisions[4] {
            UserDecision::New(new) => {
                assert_eq!(new.email, "dave@users.invalid");
                assert!(new.placeholder_email);
                assert_eq!(new.role, Role::User);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(decisions[5], UserDecision::Skip(UserSkip::Inactive));
        assert_eq!(decisions[6], UserDecision::Skip(UserSkip::EmptyUsername));
    }

    #[test]
    fn staff_are_admins_only_when_asked() {
        let mut staff = user(1, "boss", "boss@example.com");
        staff.is_staff = true;
        let decisions = decide_users(&[staff], &HashMap::new(), &mut TakenKeys::default(), false);
        assert!(matches!(&decisions[0], UserDecision::New(n) if n.role == Role::User));
    }

    #[test]
    fn known_users_continue_or_are_skipped_when_deleted() {
        let id = Uuid::new_v4();
        let known = HashMap::from([(1, (id, true)), (2, (Uuid::new_v4(), false))]);
        let mut taken = TakenKeys::default();
        // Their own keys are taken here already: that is no duplicate.
        taken.usernames.insert("alice".into());
        let users = [
            user(1, "alice", "alice@example.com"),
            user(2, "bob", "b@example.com"),
        ];
        let decisions = decide_users(&users, &known, &mut taken, false);
        assert_eq!(decisions[0], UserDecision::Existing(id));
        assert_eq!(decisions[1], UserDecision::Skip(UserSkip::DeletedHere));
    }

    fn row(id: i64, q: &str, a: &str, at: DateTime<Utc>) -> HistoryRow {
        HistoryRow {
            id,
            user_id: 1,
            user_message: q.into(),
            ai_response: a.into(),
            created_at: at,
        }
    }

    #[test]
    fn rows_are_classified() {
        let now = Utc::now();
        let cutoff = Some(now - TimeDelta::days(30));
        let already = HashSet::from([9]);
        let fate = |r: &HistoryRow, c| classify_row(r, c, &already);
        assert_eq!(fate(&row(1, "q", "a", now), cutoff), RowFate::Import);
        assert_eq!(
            fate(&row(2, " ", "a", now), cutoff),
            RowFate::Skip(RowSkip::EmptyQuestion)
        );
        assert_eq!(
            fate(&row(3, "q", "", now), cutoff),
            RowFate::Skip(RowSkip::EmptyAnswer)
        );
        let old = row(4, "q", "a", now - TimeDelta::days(31));
        assert_eq!(fate(&old, cutoff), RowFate::Skip(RowSkip::Old));
        assert_eq!(fate(&old, None), RowFate::Import);
        assert_eq!(
            fate(&row(9, "q", "a", now), cutoff),
            RowFate::AlreadyImported
        );
    }

    #[test]
    fn conversations_split_at_gaps_over_a_day_and_per_user() {
        let t0 = Utc::now();
        let mut s = Splitter::default();
        let (a, new_a) = s.place(1, t0);
        assert!(new_a);
        assert_eq!(s.place(1, t0 + TimeDelta::hours(23)), (a, false));
        // Exactly a day after the previous row: still the same conversation.
        assert_eq!(s.place(1, t0 + TimeDelta::hours(47)), (a, false));
        let (b, new_b) = s.place(1, t0 + TimeDelta::hours(72));
        assert!(new_b && b != a);
        let (c, new_c) = s.place(2, t0 + TimeDelta::hours(72));
        assert!(new_c && c != b);
    }

    #[test]
    fn answers_sort_after_their_questions() {
        for _ in 0..100 {
            let (q, a) = exchange_ids();
            assert!(q < a);
        }
    }
}

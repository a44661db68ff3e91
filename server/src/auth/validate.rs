//! Input rules for accounts. Every broken rule is reported, each under its field.

use protocol::error::FieldError;

use super::password;

pub const USERNAME_MIN: usize = 3;
pub const USERNAME_MAX: usize = 32;
pub const EMAIL_MAX: usize = 254;

pub fn username(value: &str) -> Option<String> {
    let len = value.chars().count();
    if !(USERNAME_MIN..=USERNAME_MAX).contains(&len) {
        return Some(format!(
            "must be {USERNAME_MIN} to {USERNAME_MAX} characters long"
        ));
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Some("may contain only letters, digits, '_', '.' and '-'".into());
    }
    None
}

/// A practical address check: one `@`, a plausible local part, and a domain of at least two
/// DNS labels. Whether the mailbox exists is for the welcome mail to find out.
pub fn email(value: &str) -> Option<String> {
    const INVALID: &str = "must be a valid email address";
    if value.len() > EMAIL_MAX {
        return Some(format!("must be at most {EMAIL_MAX} characters long"));
    }
    let Some((local, domain)) = value.split_once('@') else {
        return Some(INVALID.into());
    };
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~.-".contains(c));
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && labels.iter().all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if local_ok && domain_ok {
        None
    } else {
        Some(INVALID.into())
    }
}

pub fn password(value: &str) -> Option<String> {
    let len = value.len();
    if !(password::MIN_LEN..=password::MAX_LEN).contains(&len) {
        return Some(format!(
            "must be {} to {} bytes long",
            password::MIN_LEN,
            password::MAX_LEN
        ));
    }
    None
}

/// Collects the problems of a signup, field by field.
pub fn signup(username_value: &str, email_value: &str, password_value: &str) -> Vec<FieldError> {
    [
        ("username", username(username_value)),
        ("email", email(email_value)),
        ("password", password(password_value)),
    ]
    .into_iter()
    .filter_map(|(field, problem)| {
        problem.map(|message| FieldError {
            field: field.to_owned(),
            message,
        })
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        for ok in ["bob", "alice_01", "a.b-c", &"x".repeat(32)] {
            assert_eq!(username(ok), None, "{ok}");
        }
        for bad in [
            "",
            "ab",
            &"x".repeat(33),
            "has space",
            "émile",
            "semi;colon",
            "a@b",
        ] {
            assert!(username(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn emails() {
        for ok in [
            "a@example.com",
            "first.last+tag@mail.example.co.uk",
            "x_y@a-b.io",
        ] {
            assert_eq!(email(ok), None, "{ok}");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        for bad in [
            "",
            "plain",
            "@example.com",
            "a@",
            "a@localhost",
            "a@@example.com",
            "a@b@example.com",
            "a b@example.com",
            ".a@example.com",
            "a..b@example.com",
            "a@-example.com",
            "a@example..com",
            long.as_str(),
        ] {
            assert!(email(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn passwords_are_measured_in_bytes() {
        assert!(password("1234567").is_some());
        assert_eq!(password("12345678"), None);
        assert_eq!(password(&"x".repeat(1024)), None);
        assert!(password(&"x".repeat(1025)).is_some());
        // Four two-byte characters are eight bytes.
        assert_eq!(password("éééé"), None);
    }

    #[test]
    fn every_problem_is_reported() {
        let fields: Vec<String> = signup("x", "nope", "short")
            .into_iter()
            .map(|f| f.field)
            .collect();
        assert_eq!(fields, ["username", "email", "password"]);
        assert!(signup("alice", "alice@example.com", "long enough").is_empty());
    }
}

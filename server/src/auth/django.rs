//! Password hashes imported from the Django prototype (`chat-server import-django`), as Django
//! encodes them: `<algorithm>$<fields>`. Pure functions, CPU-bound: callers run [`verify`] on
//! the blocking pool (`password::verify` does), and at login a hash that verifies is replaced
//! by an argon2id one, so an account leaves these formats at its first login.
//!
//! Verified: `pbkdf2_sha256` (Django's default), `argon2` (argon2id/argon2i PHC behind the
//! prefix), `bcrypt_sha256` and `bcrypt`. Recognised but never matching: unusable passwords
//! (`!...`, accounts without a password) and the other, older hashers (`pbkdf2_sha1`, `sha1`,
//! `md5`, `scrypt`, ...), which the import reports.

use argon2::password_hash::PasswordVerifier;
use argon2::password_hash::phc::PasswordHash;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::Digest as _;
use subtle::ConstantTimeEq as _;

/// Django's PBKDF2 output length: the SHA-256 digest size.
const PBKDF2_LEN: usize = 32;

/// Largest PBKDF2 iteration count verified (Django 5.2 uses 1 000 000). A hash asking for
/// more would cost seconds of CPU per login attempt.
pub const MAX_PBKDF2_ITERATIONS: u32 = 10_000_000;

/// Largest argon2 memory cost verified, in KiB (Django's default is 102 400, 100 MiB).
pub const MAX_ARGON2_MEMORY_KIB: u32 = 256 * 1024;

/// Largest argon2 time cost verified.
pub const MAX_ARGON2_TIME_COST: u32 = 16;

/// A Django hasher this server can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hasher {
    Pbkdf2Sha256,
    Argon2,
    BcryptSha256,
    Bcrypt,
}

impl Hasher {
    pub fn name(self) -> &'static str {
        match self {
            Self::Pbkdf2Sha256 => "pbkdf2_sha256",
            Self::Argon2 => "argon2",
            Self::BcryptSha256 => "bcrypt_sha256",
            Self::Bcrypt => "bcrypt",
        }
    }
}

/// Why a Django-encoded hash can never match.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unverifiable {
    /// Django's `make_password(None)`: the account has no password (e.g. single sign-on).
    #[error("unusable password (the account has none)")]
    Unusable,
    /// A Django hasher without a maintained Rust implementation here.
    #[error("unsupported hasher {0}")]
    Unsupported(String),
    /// Parameters beyond the limits above.
    #[error("{0} cost above this server's limit")]
    TooCostly(&'static str),
    #[error("malformed {0} hash")]
    Malformed(&'static str),
}

/// Whether `encoded` is in Django's format rather than this server's PHC strings (which all
/// start with `$`). This is the dispatch `password::verify` does.
pub fn is_django_hash(encoded: &str) -> bool {
    !encoded.starts_with('$')
}

/// What kind of Django hash `encoded` is, checking its fields and costs without hashing: the
/// import reports accounts that could never log in.
pub fn identify(encoded: &str) -> Result<Hasher, Unverifiable> {
    if encoded.starts_with('!') {
        return Err(Unverifiable::Unusable);
    }
    let Some((algorithm, rest)) = encoded.split_once('$') else {
        // Django's oldest formats: a bare unsalted MD5 hex digest, or nothing at all.
        return Err(Unverifiable::Unsupported(if encoded.is_empty() {
            "(empty)".into()
        } else {
            "unsalted_md5".into()
        }));
    };
    match algorithm {
        "pbkdf2_sha256" => parse_pbkdf2(rest).map(|_| Hasher::Pbkdf2Sha256),
        "argon2" => parse_argon2(rest).map(|_| Hasher::Argon2),
        "bcrypt_sha256" => parse_bcrypt(rest, "bcrypt_sha256").map(|_| Hasher::BcryptSha256),
        "bcrypt" => parse_bcrypt(rest, "bcrypt").map(|_| Hasher::Bcrypt),
        other => Err(Unverifiable::Unsupported(
            other.chars().take(32).collect::<String>(),
        )),
    }
}

/// Checks `password` against a Django-encoded hash, as Django's `check_password` does. The
/// comparison of the derived key is constant-time (bcrypt's and argon2's own verifiers are).
pub fn verify(password: &str, encoded: &str) -> Result<bool, Unverifiable> {
    let hasher = identify(encoded)?;
    // `identify` succeeded, so the split exists.
    let rest = encoded.split_once('$').map_or("", |(_, rest)| rest);
    match hasher {
        Hasher::Pbkdf2Sha256 => {
            let (iterations, salt, expected) = parse_pbkdf2(rest)?;
            let derived = pbkdf2_sha256_raw(password, salt, iterations);
            Ok(derived.ct_eq(&expected).into())
        }
        Hasher::Argon2 => {
            // Django writes `argon2` followed by argon2-cffi's PHC string (`$argon2id$...`).
            let phc = &encoded["argon2".len()..];
            let mut parsed =
                PasswordHash::new(phc).map_err(|_| Unverifiable::Malformed("argon2"))?;
            // argon2-cffi's hashes from before version 1.3 carry no `v=`: they are version 1.0.
            parsed.version = parsed.version.or(Some(0x10));
            match argon2::Argon2::default().verify_password(password.as_bytes(), &parsed) {
                Ok(()) => Ok(true),
                Err(argon2::password_hash::Error::PasswordInvalid) => Ok(false),
                Err(_) => Err(Unverifiable::Malformed("argon2")),
            }
        }
        Hasher::BcryptSha256 => {
            // Django feeds bcrypt the hex SHA-256 of the password, so long passwords are not
            // truncated at bcrypt's 72 bytes.
            let prehash = hex::encode(sha2::Sha256::digest(password.as_bytes()));
            bcrypt::verify(prehash, rest).map_err(|_| Unverifiable::Malformed("bcrypt_sha256"))
        }
        Hasher::Bcrypt => {
            bcrypt::verify(password.as_bytes(), rest).map_err(|_| Unverifiable::Malformed("bcrypt"))
        }
    }
}

/// [`verify`] for a login: a hash that can never match is a mismatch, logged with its reason
/// (never the hash).
pub fn verify_for_login(password: &str, encoded: &str) -> bool {
    verify(password, encoded).unwrap_or_else(|reason| {
        tracing::warn!(%reason, "stored Django password hash cannot be verified");
        false
    })
}

/// `make_password(password, salt, "pbkdf2_sha256")` with an explicit iteration count: what
/// Django stores. Used by tests and fixtures that build a Django database.
pub fn make_pbkdf2_sha256(password: &str, salt: &str, iterations: u32) -> String {
    let derived = pbkdf2_sha256_raw(password, salt, iterations);
    format!(
        "pbkdf2_sha256${iterations}${salt}${}",
        STANDARD.encode(derived)
    )
}

fn pbkdf2_sha256_raw(password: &str, salt: &str, iterations: u32) -> [u8; PBKDF2_LEN] {
    pbkdf2::pbkdf2_hmac_array::<pbkdf2::sha2::Sha256, PBKDF2_LEN>(
        password.as_bytes(),
        salt.as_bytes(),
        iterations,
    )
}

/// `<iterations>$<salt>$<base64 hash>` → its parts.
fn parse_pbkdf2(rest: &str) -> Result<(u32, &str, Vec<u8>), Unverifiable> {
    const MALFORMED: Unverifiable = Unverifiable::Malformed("pbkdf2_sha256");
    let mut fields = rest.splitn(3, '$');
    let (Some(iterations), Some(salt), Some(hash)) = (fields.next(), fields.next(), fields.next())
    else {
        return Err(MALFORMED);
    };
    let iterations: u32 = iterations.parse().map_err(|_| MALFORMED)?;
    if iterations == 0 || salt.is_empty() {
        return Err(MALFORMED);
    }
    if iterations > MAX_PBKDF2_ITERATIONS {
        return Err(Unverifiable::TooCostly("pbkdf2_sha256"));
    }
    let hash = STANDARD.decode(hash).map_err(|_| MALFORMED)?;
    if hash.len() != PBKDF2_LEN {
        return Err(MALFORMED);
    }
    Ok((iterations, salt, hash))
}

/// `$argon2id$v=19$m=..,t=..,p=..$salt$hash` (after the `argon2` prefix): parses and bounds
/// the costs, since a verification allocates `m` KiB.
fn parse_argon2(rest: &str) -> Result<(), Unverifiable> {
    const MALFORMED: Unverifiable = Unverifiable::Malformed("argon2");
    let phc = format!("${rest}");
    let parsed = PasswordHash::new(&phc).map_err(|_| MALFORMED)?;
    if !matches!(
        parsed.algorithm.as_str(),
        "argon2id" | "argon2i" | "argon2d"
    ) {
        return Err(MALFORMED);
    }
    let params = argon2::Params::try_from(&parsed).map_err(|_| MALFORMED)?;
    if params.m_cost() > MAX_ARGON2_MEMORY_KIB || params.t_cost() > MAX_ARGON2_TIME_COST {
        return Err(Unverifiable::TooCostly("argon2"));
    }
    if parsed.hash.is_none() || parsed.salt.is_none() {
        return Err(MALFORMED);
    }
    Ok(())
}

/// Django's bcrypt hashers store `<algorithm>$<bcrypt hash>`; bcrypt hashes start with `$`, so
/// the stored text is `bcrypt$$2b$12$...` and `hash` is what follows the first `$`.
fn parse_bcrypt(hash: &str, name: &'static str) -> Result<(), Unverifiable> {
    let ok = hash.len() == 60
        && ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p))
        && hash[4..6].bytes().all(|b| b.is_ascii_digit())
        && &hash[6..7] == "$";
    if !ok {
        return Err(Unverifiable::Malformed(name));
    }
    let cost: u32 = hash[4..6]
        .parse()
        .map_err(|_| Unverifiable::Malformed(name))?;
    if cost > 16 {
        return Err(Unverifiable::TooCostly(name));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Django's own test vector (tests/auth_tests/test_hashers.py, `test_pbkdf2`, Django 4.1:
    /// `make_password("lètmein", "seasalt", "pbkdf2_sha256")` with 390 000 iterations).
    const DJANGO_PBKDF2: &str =
        "pbkdf2_sha256$390000$seasalt$8xBlGd3jVgvJ+92hWPxi5ww0uuAuAnKgC45eudxro7c=";

    #[test]
    fn pbkdf2_matches_djangos_test_vector() {
        assert_eq!(
            make_pbkdf2_sha256("lètmein", "seasalt", 390_000),
            DJANGO_PBKDF2
        );
        assert_eq!(verify("lètmein", DJANGO_PBKDF2), Ok(true));
        assert_eq!(verify("lètmeinz", DJANGO_PBKDF2), Ok(false));
        assert_eq!(identify(DJANGO_PBKDF2), Ok(Hasher::Pbkdf2Sha256));
    }

    #[test]
    fn pbkdf2_low_iterations_from_django_5() {
        // Django 5.2: get_hasher("pbkdf2_sha256").encode("lètmein", "seasalt", 1000).
        let encoded = "pbkdf2_sha256$1000$seasalt$JgZryXe2Ga8ysg6XbzkLpTdyPQrHqsinbL9BnnhgX4A=";
        assert_eq!(make_pbkdf2_sha256("lètmein", "seasalt", 1000), encoded);
        assert_eq!(verify("lètmein", encoded), Ok(true));
        assert_eq!(verify("", encoded), Ok(false));
    }

    #[test]
    fn malformed_and_costly_pbkdf2_never_verify() {
        for bad in [
            "pbkdf2_sha256$abc$seasalt$JgZryXe2Ga8ysg6XbzkLpTdyPQrHqsinbL9BnnhgX4A=",
            "pbkdf2_sha256$1000$seasalt$not-base64!",
            "pbkdf2_sha256$1000$seasalt$AAAA",
            "pbkdf2_sha256$1000$seasalt",
            "pbkdf2_sha256$0$seasalt$JgZryXe2Ga8ysg6XbzkLpTdyPQrHqsinbL9BnnhgX4A=",
        ] {
            assert_eq!(
                verify("lètmein", bad),
                Err(Unverifiable::Malformed("pbkdf2_sha256")),
                "{bad}"
            );
        }
        let costly =
            "pbkdf2_sha256$4000000000$seasalt$JgZryXe2Ga8ysg6XbzkLpTdyPQrHqsinbL9BnnhgX4A=";
        assert_eq!(
            verify("lètmein", costly),
            Err(Unverifiable::TooCostly("pbkdf2_sha256"))
        );
    }

    #[test]
    fn argon2_from_djangos_tests() {
        // tests/auth_tests/test_hashers.py, `test_argon2`: an argon2i hash with a version.
        let encoded = "argon2$argon2i$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$YC9+jJCrQhs5R6db7LlN8Q";
        assert_eq!(identify(encoded), Ok(Hasher::Argon2));
        assert_eq!(verify("secret", encoded), Ok(true));
        assert_eq!(verify("wrong", encoded), Ok(false));
        // The same test's old hash without a version (argon2 1.0, 64-byte output).
        let encoded = "argon2$argon2i$m=8,t=1,p=1$c29tZXNhbHQ$gwQOXSNhxiOxPOA0+PY10P9QFO4NAYysnqRt1GSQLE55m+2GYDt9FEjPMHhP2Cuf0nOEXXMocVrsJAtNSsKyfg";
        assert_eq!(verify("secret", encoded), Ok(true));
        assert_eq!(verify("wrong", encoded), Ok(false));
        // Django 5.2's argon2id (memory and time lowered to keep the test quick).
        let encoded = "argon2$argon2id$v=19$m=1024,t=1,p=2$YWJjZGVmZ2hpams$g71U2WBDA3Q4QJOSbHxBiaT3+pPvVZ/e+06n/InWNUY";
        assert_eq!(verify("lètmein", encoded), Ok(true));
        assert_eq!(verify("lètmeinz", encoded), Ok(false));
        // Django's default costs (100 MiB) are accepted; 1 GiB is not.
        assert_eq!(
            identify(
                "argon2$argon2id$v=19$m=102400,t=2,p=8$Y041dExhNkljRUUy$TMa6A8fPJhCAUXRhJXCXdw"
            ),
            Ok(Hasher::Argon2)
        );
        assert_eq!(
            identify(
                "argon2$argon2id$v=19$m=1048576,t=2,p=8$Y041dExhNkljRUUy$TMa6A8fPJhCAUXRhJXCXdw"
            ),
            Err(Unverifiable::TooCostly("argon2"))
        );
    }

    #[test]
    fn bcrypt_hashers_made_by_django() {
        // Django 5.2 with bcrypt's rounds lowered to 4.
        let sha = "bcrypt_sha256$$2b$04$iwYiAjj83hJMoxYc4aFtUu.Za.fzRN5hQTCE522dyOUaQb7wZtNz6";
        assert_eq!(identify(sha), Ok(Hasher::BcryptSha256));
        assert_eq!(verify("lètmein", sha), Ok(true));
        assert_eq!(verify("lètmeinz", sha), Ok(false));
        let plain = "bcrypt$$2b$04$WhjHME3ia53qn9PJ6Z7K5ucmIpPpaC7rcnkmYK6lvXSEuvzjuSFJG";
        assert_eq!(identify(plain), Ok(Hasher::Bcrypt));
        assert_eq!(verify("lètmein", plain), Ok(true));
        assert_eq!(verify("lètmeinz", plain), Ok(false));
    }

    #[test]
    fn unusable_and_unsupported_are_reported() {
        assert_eq!(
            identify("!IuV6dxTqp6AJBW7njok5xsi35GEeRgzvtWNzq2LA"),
            Err(Unverifiable::Unusable)
        );
        assert_eq!(
            verify("x", "md5$seasalt$3f86d0d3d465b7b458c231bf3555c0e3"),
            Err(Unverifiable::Unsupported("md5".into()))
        );
        assert_eq!(
            identify("88a434c88cca4e900f7874cd98123f43"),
            Err(Unverifiable::Unsupported("unsalted_md5".into()))
        );
    }

    #[test]
    fn our_own_hashes_are_not_djangos() {
        assert!(!is_django_hash("$argon2id$v=19$m=19456,t=2,p=1$abc$def"));
        assert!(is_django_hash(DJANGO_PBKDF2));
        assert!(is_django_hash("!unusable"));
    }
}

//! Webhook signatures as the Standard Webhooks specification describes
//! them: `webhook-id`, `webhook-timestamp` (seconds since the epoch) and
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`,
//! the key being the base64 part of a `whsec_…` secret. A signature header
//! may list several space-separated signatures (during a secret rotation);
//! one match is enough. Comparison is constant-time (`Mac::verify_slice`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// How far a delivery's timestamp may be from the server's clock, either
/// way (the specification's suggestion): an older one is a replay.
pub const TOLERANCE_SECS: i64 = 5 * 60;
/// Signatures of one delivery compared at most.
const MAX_SIGNATURES: usize = 8;

/// A hook's signing key.
#[derive(Clone)]
pub struct HookSecret(Vec<u8>);

impl std::fmt::Debug for HookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HookSecret(…)")
    }
}

impl HookSecret {
    /// `whsec_` followed by base64 (at least 16 bytes of key).
    pub fn parse(text: &str) -> Result<HookSecret, String> {
        let Some(encoded) = text.trim().strip_prefix("whsec_") else {
            return Err("a webhook secret starts with `whsec_` (then base64)".into());
        };
        let key = STANDARD
            .decode(encoded)
            .map_err(|e| format!("the part after `whsec_` is not base64 ({e})"))?;
        if key.len() < 16 {
            return Err(format!(
                "the secret's key is {} bytes; use at least 16 (e.g. `factory hook secret`)",
                key.len()
            ));
        }
        Ok(HookSecret(key))
    }

    /// A new random secret, as text.
    pub fn generate() -> String {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).expect("the operating system's random source");
        format!("whsec_{}", STANDARD.encode(key))
    }

    fn mac(&self, id: &str, timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0)
            .expect("HMAC takes keys of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `webhook-signature` value for a delivery.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self
            .mac(id, &timestamp.to_string(), body)
            .finalize()
            .into_bytes();
        format!("v1,{}", STANDARD.encode(tag))
    }
}

/// Why a delivery is refused (all are 401: nothing is stored).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("the `{0}` header is missing")]
    MissingHeader(&'static str),
    #[error("`webhook-timestamp` is not a whole number of seconds since the epoch")]
    BadTimestamp,
    #[error(
        "`webhook-timestamp` is {0} s away from the server's clock; at most {TOLERANCE_SECS} s are accepted"
    )]
    OutsideTolerance(i64),
    #[error("no `v1` signature in `webhook-signature` matches the body with this hook's secret")]
    BadSignature,
}

impl Rejected {
    pub fn code(&self) -> &'static str {
        match self {
            Rejected::MissingHeader(_) => "missing_signature_header",
            Rejected::BadTimestamp | Rejected::OutsideTolerance(_) => "stale_timestamp",
            Rejected::BadSignature => "bad_signature",
        }
    }
}

/// Checks a delivery's headers against its body at `now` (seconds).
pub fn verify(
    secret: &HookSecret,
    id: Option<&str>,
    timestamp: Option<&str>,
    signatures: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<(), Rejected> {
    let id = id
        .filter(|s| !s.is_empty())
        .ok_or(Rejected::MissingHeader("webhook-id"))?;
    let timestamp = timestamp.ok_or(Rejected::MissingHeader("webhook-timestamp"))?;
    let signatures = signatures.ok_or(Rejected::MissingHeader("webhook-signature"))?;
    let seconds: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| Rejected::BadTimestamp)?;
    if seconds.abs_diff(now) > TOLERANCE_SECS as u64 {
        return Err(Rejected::OutsideTolerance(seconds.saturating_sub(now)));
    }
    // The body is hashed once, whatever the header lists; only the first
    // few well-formed candidates are compared (a rotation lists two).
    let mac = secret.mac(id, timestamp.trim(), body);
    let candidates = signatures
        .split_whitespace()
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|encoded| STANDARD.decode(encoded).ok())
        .filter(|tag| tag.len() == 32)
        .take(MAX_SIGNATURES);
    for tag in candidates {
        if mac.clone().verify_slice(&tag).is_ok() {
            return Ok(());
        }
    }
    Err(Rejected::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example of the Standard Webhooks specification's README.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const EXPECTED: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn signs_like_the_specification() {
        let secret = HookSecret::parse(SECRET).unwrap();
        assert_eq!(secret.sign(ID, TIMESTAMP, BODY), EXPECTED);
    }

    #[test]
    fn verifies_good_and_refuses_the_rest() {
        let secret = HookSecret::parse(SECRET).unwrap();
        let ts = TIMESTAMP.to_string();
        let ok = |sig: &str, now: i64| verify(&secret, Some(ID), Some(&ts), Some(sig), BODY, now);
        assert_eq!(ok(EXPECTED, TIMESTAMP), Ok(()));
        // One of several signatures (rotation), and unknown versions skipped.
        assert_eq!(
            ok(&format!("v1a,xyz v1,AAAA {EXPECTED}"), TIMESTAMP + 299),
            Ok(())
        );
        assert_eq!(
            ok(EXPECTED, TIMESTAMP + 301),
            Err(Rejected::OutsideTolerance(-301))
        );
        assert_eq!(
            ok(EXPECTED, TIMESTAMP - 301),
            Err(Rejected::OutsideTolerance(301))
        );
        assert_eq!(ok("v1,AAAA", TIMESTAMP), Err(Rejected::BadSignature));
        let tampered = verify(
            &secret,
            Some(ID),
            Some(&ts),
            Some(EXPECTED),
            b"{}",
            TIMESTAMP,
        );
        assert_eq!(tampered, Err(Rejected::BadSignature));
        let other_id = verify(
            &secret,
            Some("msg_2"),
            Some(&ts),
            Some(EXPECTED),
            BODY,
            TIMESTAMP,
        );
        assert_eq!(other_id, Err(Rejected::BadSignature));
        assert_eq!(
            verify(&secret, None, Some(&ts), Some(EXPECTED), BODY, TIMESTAMP),
            Err(Rejected::MissingHeader("webhook-id"))
        );
        assert_eq!(
            verify(
                &secret,
                Some(ID),
                Some("soon"),
                Some(EXPECTED),
                BODY,
                TIMESTAMP
            ),
            Err(Rejected::BadTimestamp)
        );
    }

    #[test]
    fn hostile_headers_cost_one_hash_and_never_panic() {
        let secret = HookSecret::parse(SECRET).unwrap();
        let ts = TIMESTAMP.to_string();
        // The most negative timestamp neither panics nor wraps into range.
        let lowest = i64::MIN.to_string();
        assert!(matches!(
            verify(
                &secret,
                Some(ID),
                Some(&lowest),
                Some(EXPECTED),
                BODY,
                TIMESTAMP
            ),
            Err(Rejected::OutsideTolerance(_))
        ));
        // Many empty candidates are skipped without hashing anything again.
        let many = format!("{}{EXPECTED}", "v1, ".repeat(100_000));
        assert_eq!(
            verify(&secret, Some(ID), Some(&ts), Some(&many), BODY, TIMESTAMP),
            Ok(())
        );
        // Only the first eight well-formed signatures are compared.
        let wrong = format!("v1,{} ", STANDARD.encode([7u8; 32])).repeat(8);
        let late = format!("{wrong}{EXPECTED}");
        assert_eq!(
            verify(&secret, Some(ID), Some(&ts), Some(&late), BODY, TIMESTAMP),
            Err(Rejected::BadSignature)
        );
        let few = format!("v1,AAAA {EXPECTED}");
        assert_eq!(
            verify(&secret, Some(ID), Some(&ts), Some(&few), BODY, TIMESTAMP),
            Ok(())
        );
    }

    #[test]
    fn secrets_are_checked_and_generated() {
        assert!(HookSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(HookSecret::parse("whsec_!!!").is_err());
        assert!(
            HookSecret::parse("whsec_c2hvcnQ=")
                .unwrap_err()
                .contains("bytes")
        );
        let fresh = HookSecret::generate();
        assert!(HookSecret::parse(&fresh).is_ok());
        assert_ne!(fresh, HookSecret::generate());
    }
}

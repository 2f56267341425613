//! Stripe webhook signature verification, exactly as Stripe's SDKs do it: HMAC-SHA256
//! over `"{t}.{raw body}"` keyed by the whole `whsec_…` string; any `v1` may match
//! (secret rotation); `v0` ignored; constant-time comparison; timestamp tolerance.

use hmac::{Hmac, Mac};
use sha2::Sha256;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("Stripe-Signature header has no timestamp")]
    NoTimestamp,
    #[error("Stripe-Signature header has no v1 signature")]
    NoSignature,
    #[error("webhook timestamp is outside the tolerance of {0} s")]
    Stale(u64),
    #[error("no v1 signature matches the payload")]
    Mismatch,
}

/// Verifies `header` for `body` at time `now` (unix seconds). `tolerance_secs` 0 turns the
/// age check off.
pub fn verify(
    header: &str,
    body: &[u8],
    secret: &str,
    tolerance_secs: u64,
    now: i64,
) -> Result<(), SignatureError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let Some((k, v)) = part.trim().split_once('=') else {
            continue;
        };
        match k {
            "t" => timestamp = v.parse::<i64>().ok(),
            "v1" => {
                if let Ok(bytes) = hex::decode(v) {
                    signatures.push(bytes);
                }
            }
            _ => {}
        }
    }
    let t = timestamp.ok_or(SignatureError::NoTimestamp)?;
    if signatures.is_empty() {
        return Err(SignatureError::NoSignature);
    }
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|_| SignatureError::Mismatch)?;
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let valid = signatures
        .iter()
        .any(|sig| mac.clone().verify_slice(sig).is_ok());
    if !valid {
        return Err(SignatureError::Mismatch);
    }
    if tolerance_secs > 0 && now.saturating_sub(t) > tolerance_secs as i64 {
        return Err(SignatureError::Stale(tolerance_secs));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &[u8] = include_bytes!("../../tests/fixtures/stripe/event_test_signature.json");
    const HEADER: &str =
        "t=1533204620,v1=2220f87ef101a04665f11cdf770523143f875572008577fa0f20882ddb9cc3c7";

    #[test]
    fn stripes_own_fixture_verifies_with_age_check_off() {
        assert_eq!(FIXTURE.len(), 484);
        assert_eq!(
            verify(HEADER, FIXTURE, "webhook_secret", 0, 2_000_000_000),
            Ok(())
        );
    }

    #[test]
    fn stripes_own_fixture_is_stale_with_default_tolerance() {
        assert_eq!(
            verify(HEADER, FIXTURE, "webhook_secret", 300, 2_000_000_000),
            Err(SignatureError::Stale(300))
        );
        assert_eq!(
            verify(HEADER, FIXTURE, "webhook_secret", 300, 1_533_204_620 + 300),
            Ok(())
        );
    }

    #[test]
    fn any_v1_may_match_and_v0_is_ignored() {
        let header = "t=1533204620,v0=2220f87ef101a04665f11cdf770523143f875572008577fa0f20882ddb9cc3c7,v1=00,v1=2220f87ef101a04665f11cdf770523143f875572008577fa0f20882ddb9cc3c7";
        assert_eq!(verify(header, FIXTURE, "webhook_secret", 0, 0), Ok(()));
        let only_v0 =
            "t=1533204620,v0=2220f87ef101a04665f11cdf770523143f875572008577fa0f20882ddb9cc3c7";
        assert_eq!(
            verify(only_v0, FIXTURE, "webhook_secret", 0, 0),
            Err(SignatureError::NoSignature)
        );
    }

    #[test]
    fn one_changed_byte_or_secret_fails() {
        let mut body = FIXTURE.to_vec();
        body[10] ^= 1;
        assert_eq!(
            verify(HEADER, &body, "webhook_secret", 0, 0),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(HEADER, FIXTURE, "whsec_other", 0, 0),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify("v1=abc", FIXTURE, "webhook_secret", 0, 0),
            Err(SignatureError::NoTimestamp)
        );
    }
}

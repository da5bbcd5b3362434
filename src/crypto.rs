//! The challenge and its signature: ed25519 over the 32 raw challenge bytes, as fledger signs it.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand_core::CryptoRngCore;

use crate::error::ProtocolError;
use crate::protocol::U256;

/// 256 fresh bits from a CSPRNG.
pub(crate) fn new_challenge(rng: &mut impl CryptoRngCore) -> U256 {
    let mut bytes = [0; 32];
    rng.fill_bytes(&mut bytes);
    U256(bytes)
}

/// Signs a challenge the way a fledger node does: the 32 raw bytes, no prefix, no hashing.
pub fn sign_challenge(key: &SigningKey, challenge: &U256) -> [u8; 64] {
    key.sign(challenge.as_bytes()).to_bytes()
}

/// Checks `signature` over `challenge` with `verify_strict`, which also rejects weak keys and
/// non-canonical signatures.
///
/// # Errors
///
/// [`ProtocolError::InvalidPublicKey`] when `pubkey` is not a point on the curve,
/// [`ProtocolError::BadSignature`] when the signature does not verify.
pub fn verify_challenge(
    pubkey: &[u8; 32],
    challenge: &U256,
    signature: &[u8; 64],
) -> Result<(), ProtocolError> {
    verify(pubkey, challenge.as_bytes(), signature)
}

/// Checks `signature` over `bytes` as [`verify_challenge`] does.
pub(crate) fn verify(pubkey: &[u8; 32], bytes: &[u8], signature: &[u8; 64]) -> Result<(), ProtocolError> {
    let key = VerifyingKey::from_bytes(pubkey).map_err(|_| ProtocolError::InvalidPublicKey)?;
    // `verify_strict` refuses weak keys itself; telling them apart only costs on failure.
    key.verify_strict(bytes, &Signature::from_bytes(signature)).map_err(|_| {
        if key.is_weak() {
            ProtocolError::InvalidPublicKey
        } else {
            ProtocolError::BadSignature
        }
    })
}

//! Signed checkpoints: a signature over (seq, head hash, time) so that cutting or rewriting the log up to a
//! checkpoint is detectable by anyone holding the public key.
//!
//! A hash chain alone proves only internal consistency: whoever can write the file can rewrite it and
//! recompute every hash. A checkpoint stored outside the log (and signed with a key the log writer's file
//! access does not grant) pins the chain at a point in time.
//!
//! The signed message is exactly these bytes, with `seq` in decimal ASCII without leading zeros and no
//! trailing newline:
//!
//! ```text
//! agentiam-audit-checkpoint/v1\n<seq>\n<head>\n<time>
//! ```
//!
//! `head` must be 64 lowercase hex digits and `time` must not contain a newline, so the message cannot be
//! read two ways. The algorithm is ECDSA P-256 with SHA-256, fixed-width (r‖s, 64 bytes) signatures,
//! encoded base64url without padding.

use std::fmt;

use aws_lc_rs::digest;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, UnparsedPublicKey,
};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};

/// Domain separation prefix of the signed message, so a checkpoint signature can never be replayed as a
/// signature over anything else made with the same key.
pub const CHECKPOINT_DOMAIN: &[u8] = b"agentiam-audit-checkpoint/v1\n";

/// Number of hex digits of the SPKI hash kept as the key id: 64 bits tells keys apart for rotation; it is a
/// label, not a security boundary (the signature check is).
const KEY_ID_HEX_LEN: usize = 16;

/// A signed statement that record `seq` of the log has hash `head`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Checkpoint {
    /// The sequence number of the last record covered; 0 pins the empty log.
    pub seq: u64,
    /// Hash of record `seq` (lowercase hex), or the all-zero hash for seq 0.
    pub head: String,
    /// When the checkpoint was made (RFC 3339).
    pub time: String,
    /// [`key_id`] of the signing key. Not signed: it only says which key to try.
    pub key_id: String,
    /// ECDSA P-256 fixed-width signature over the message described in the module docs, base64url, no pad.
    pub signature: String,
}

/// Why a checkpoint could not be made or verified. Messages never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The crypto library failed to create a key.
    #[error("failed to generate checkpoint signing key")]
    Generate,
    /// The PKCS#8 bytes are not an ECDSA P-256 private key.
    #[error("checkpoint signing key rejected: {0}")]
    KeyRejected(&'static str),
    /// The public key could not be encoded as SubjectPublicKeyInfo.
    #[error("failed to encode checkpoint public key")]
    PublicKey,
    /// The crypto library failed to sign.
    #[error("failed to sign checkpoint")]
    Sign,
    /// A field would make the signed message ambiguous.
    #[error("malformed checkpoint: {0}")]
    Malformed(&'static str),
    /// The signature field is not base64url.
    #[error("checkpoint signature is not base64url")]
    SignatureEncoding,
    /// The checkpoint names a different key than the one given.
    #[error("checkpoint was signed by key {found}, not by key {expected}")]
    KeyMismatch {
        /// Key id of the key the verifier holds.
        expected: String,
        /// Key id the checkpoint names.
        found: String,
    },
    /// The signature does not match the message: forged, altered, or made with another key.
    #[error("checkpoint signature does not verify: forged or altered")]
    BadSignature,
    /// The PEM text is not a `PUBLIC KEY` block.
    #[error("public key is not a PEM-encoded SubjectPublicKeyInfo")]
    Pem,
}

/// A PKCS#8 private key document. Debug is redacted so it cannot end up in a log line by accident.
pub struct Pkcs8Key(Vec<u8>);

impl Pkcs8Key {
    /// The DER bytes, e.g. to store in a Kubernetes Secret.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Pkcs8Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pkcs8Key(<redacted>)")
    }
}

/// Signs checkpoints with an ECDSA P-256 key.
pub struct CheckpointSigner {
    key_pair: EcdsaKeyPair,
    spki_der: Vec<u8>,
    key_id: String,
}

impl fmt::Debug for CheckpointSigner {
    // By hand: the derived form would be one refactor away from printing the private key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckpointSigner")
            .field("key_id", &self.key_id)
            .field("private_key", &"<redacted>")
            .finish()
    }
}

impl CheckpointSigner {
    /// Creates a new key. Returns the signer and its PKCS#8 document for storage.
    ///
    /// # Errors
    /// [`CheckpointError::Generate`] if the crypto library fails.
    pub fn generate() -> Result<(Self, Pkcs8Key), CheckpointError> {
        let document = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .map_err(|_| CheckpointError::Generate)?;
        let pkcs8 = Pkcs8Key(document.as_ref().to_vec());
        Ok((Self::from_pkcs8(pkcs8.as_bytes())?, pkcs8))
    }

    /// Loads a key from a PKCS#8 v1 or v2 DER document.
    ///
    /// # Errors
    /// [`CheckpointError::KeyRejected`] if it is not a P-256 private key.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, CheckpointError> {
        let key_pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8)
            .map_err(|e| CheckpointError::KeyRejected(e.description_()))?;
        let spki_der =
            key_pair.public_key().as_der().map_err(|_| CheckpointError::PublicKey)?.as_ref().to_vec();
        let key_id = key_id(&spki_der);
        Ok(Self { key_pair, spki_der, key_id })
    }

    /// The public key as DER SubjectPublicKeyInfo: what verifiers need.
    pub fn public_key_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// The public key as a PEM `PUBLIC KEY` block.
    pub fn public_key_pem(&self) -> String {
        let encoded = STANDARD.encode(&self.spki_der);
        let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
        // PEM lines are 64 characters (RFC 7468); base64 output is ASCII, so byte chunks are whole chars.
        for chunk in encoded.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(chunk));
            pem.push('\n');
        }
        pem.push_str("-----END PUBLIC KEY-----\n");
        pem
    }

    /// See [`key_id`].
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Signs the statement "record `seq` has hash `head`" made at `time`.
    ///
    /// # Errors
    /// [`CheckpointError::Malformed`] if `head` is not 64 lowercase hex digits or `time` contains a newline;
    /// [`CheckpointError::Sign`] if the crypto library fails.
    pub fn sign(&self, seq: u64, head: &str, time: &str) -> Result<Checkpoint, CheckpointError> {
        let message = checkpoint_message(seq, head, time)?;
        let signature =
            self.key_pair.sign(&SystemRandom::new(), &message).map_err(|_| CheckpointError::Sign)?;
        Ok(Checkpoint {
            seq,
            head: head.to_owned(),
            time: time.to_owned(),
            key_id: self.key_id.clone(),
            signature: URL_SAFE_NO_PAD.encode(signature.as_ref()),
        })
    }
}

/// The key id of a public key: the first 16 hex digits (64 bits) of SHA-256 over its DER
/// SubjectPublicKeyInfo.
pub fn key_id(spki_der: &[u8]) -> String {
    let mut id = hex::encode(digest::digest(&digest::SHA256, spki_der));
    id.truncate(KEY_ID_HEX_LEN);
    id
}

/// The exact bytes that are signed (see the module docs).
///
/// # Errors
/// [`CheckpointError::Malformed`] if a field would make the message ambiguous.
pub fn checkpoint_message(seq: u64, head: &str, time: &str) -> Result<Vec<u8>, CheckpointError> {
    let hex_ok = head.len() == 64 && head.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !hex_ok {
        return Err(CheckpointError::Malformed("head is not 64 lowercase hex digits"));
    }
    if time.contains('\n') {
        return Err(CheckpointError::Malformed("time contains a newline"));
    }
    let mut message = CHECKPOINT_DOMAIN.to_vec();
    message.extend_from_slice(format!("{seq}\n{head}\n{time}").as_bytes());
    Ok(message)
}

/// Checks that `checkpoint` was signed by the key whose DER SubjectPublicKeyInfo is `public_key_spki_der`.
///
/// # Errors
/// [`CheckpointError::KeyMismatch`] if it names another key, [`CheckpointError::BadSignature`] if the
/// signature does not verify, [`CheckpointError::Malformed`] or [`CheckpointError::SignatureEncoding`] if
/// it cannot even be checked.
pub fn verify_checkpoint(checkpoint: &Checkpoint, public_key_spki_der: &[u8]) -> Result<(), CheckpointError> {
    let expected = key_id(public_key_spki_der);
    if checkpoint.key_id != expected {
        return Err(CheckpointError::KeyMismatch { expected, found: checkpoint.key_id.clone() });
    }
    let message = checkpoint_message(checkpoint.seq, &checkpoint.head, &checkpoint.time)?;
    let signature =
        URL_SAFE_NO_PAD.decode(&checkpoint.signature).map_err(|_| CheckpointError::SignatureEncoding)?;
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, public_key_spki_der)
        .verify(&message, &signature)
        .map_err(|_| CheckpointError::BadSignature)
}

/// Decodes a PEM `PUBLIC KEY` block into DER SubjectPublicKeyInfo.
///
/// # Errors
/// [`CheckpointError::Pem`] if the text is not one such block.
pub fn public_key_from_pem(pem: &str) -> Result<Vec<u8>, CheckpointError> {
    let body = pem
        .trim()
        .strip_prefix("-----BEGIN PUBLIC KEY-----")
        .and_then(|rest| rest.strip_suffix("-----END PUBLIC KEY-----"))
        .ok_or(CheckpointError::Pem)?;
    let joined: String = body.split_whitespace().collect();
    STANDARD.decode(joined).map_err(|_| CheckpointError::Pem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::ZERO_HASH;

    const HEAD: &str = "3f0a5c1e9b7d2468ace013579bdf02468ace13579bdf02468ace13579bdf0246";
    const TIME: &str = "2026-01-02T03:04:05.000000006Z";

    #[test]
    fn sign_and_verify_round_trip() {
        let (signer, _) = CheckpointSigner::generate().unwrap();
        let checkpoint = signer.sign(7, HEAD, TIME).unwrap();
        assert_eq!(checkpoint.key_id, signer.key_id());
        verify_checkpoint(&checkpoint, signer.public_key_der()).unwrap();
        let json = serde_json::to_string(&checkpoint).unwrap();
        assert!(json.contains(r#""keyId":"#), "{json}");
        assert!(!checkpoint.signature.contains(['=', '+', '/']));
    }

    #[test]
    fn empty_log_checkpoint_is_valid() {
        let (signer, _) = CheckpointSigner::generate().unwrap();
        let checkpoint = signer.sign(0, ZERO_HASH, TIME).unwrap();
        verify_checkpoint(&checkpoint, signer.public_key_der()).unwrap();
    }

    #[test]
    fn pkcs8_reload_gives_the_same_key() {
        let (signer, pkcs8) = CheckpointSigner::generate().unwrap();
        let reloaded = CheckpointSigner::from_pkcs8(pkcs8.as_bytes()).unwrap();
        assert_eq!(reloaded.key_id(), signer.key_id());
        let checkpoint = reloaded.sign(1, HEAD, TIME).unwrap();
        verify_checkpoint(&checkpoint, signer.public_key_der()).unwrap();
        assert_eq!(signer.key_id().len(), 16);
        assert!(CheckpointSigner::from_pkcs8(b"not a key").is_err());
    }

    #[test]
    fn altered_checkpoints_fail() {
        let (signer, _) = CheckpointSigner::generate().unwrap();
        let good = signer.sign(7, HEAD, TIME).unwrap();
        let key = signer.public_key_der();
        let mut seq = good.clone();
        seq.seq = 8;
        let mut head = good.clone();
        head.head = ZERO_HASH.into();
        let mut time = good.clone();
        time.time = "2027-01-02T03:04:05.000000006Z".into();
        for forged in [seq, head, time] {
            assert!(matches!(verify_checkpoint(&forged, key), Err(CheckpointError::BadSignature)));
        }
        let mut garbled = good.clone();
        garbled.signature = "!!".into();
        assert!(matches!(verify_checkpoint(&garbled, key), Err(CheckpointError::SignatureEncoding)));
    }

    #[test]
    fn other_keys_fail() {
        let (signer, _) = CheckpointSigner::generate().unwrap();
        let (attacker, _) = CheckpointSigner::generate().unwrap();
        let forged = attacker.sign(7, HEAD, TIME).unwrap();
        let err = verify_checkpoint(&forged, signer.public_key_der()).unwrap_err();
        assert!(matches!(err, CheckpointError::KeyMismatch { .. }), "{err}");
        // Claiming the right key id does not help without the right private key.
        let mut relabelled = forged;
        relabelled.key_id = signer.key_id().to_owned();
        let err = verify_checkpoint(&relabelled, signer.public_key_der()).unwrap_err();
        assert!(matches!(err, CheckpointError::BadSignature), "{err}");
    }

    #[test]
    fn ambiguous_messages_are_refused() {
        let (signer, _) = CheckpointSigner::generate().unwrap();
        assert!(signer.sign(1, "ABC", TIME).is_err());
        assert!(signer.sign(1, &HEAD.to_uppercase(), TIME).is_err());
        assert!(signer.sign(1, HEAD, "a\nb").is_err());
        let message = checkpoint_message(12, HEAD, TIME).unwrap();
        let expected = format!("agentiam-audit-checkpoint/v1\n12\n{HEAD}\n{TIME}");
        assert_eq!(message, expected.as_bytes());
    }

    #[test]
    fn pem_round_trip() {
        let (signer, _) = CheckpointSigner::generate().unwrap();
        let pem = signer.public_key_pem();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        assert!(pem.lines().all(|line| line.len() <= 64));
        assert_eq!(public_key_from_pem(&pem).unwrap(), signer.public_key_der());
        assert!(public_key_from_pem("-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----").is_err());
    }

    #[test]
    fn debug_never_shows_key_material() {
        let (signer, pkcs8) = CheckpointSigner::generate().unwrap();
        let shown = format!("{signer:?} {pkcs8:?}");
        assert!(shown.contains("redacted"));
        assert!(!shown.contains(&hex::encode(pkcs8.as_bytes())));
        assert!(!shown.contains(&format!("{:?}", pkcs8.as_bytes())));
    }
}

//! Persisting the key set in the operator's Secret: one JSON document, validated strictly on load because a
//! corrupted or edited Secret must stop the operator rather than have it sign with a key nobody can verify.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use super::{KeyError, KeyRole, KeySet, RetiredKey, SigningKey};

/// The Secret data key holding the key set document.
pub const SECRET_KEY: &str = "keyset.json";
/// The version of the key set document this code writes and reads.
const FORMAT_VERSION: u32 = 1;

impl KeySet {
    /// The Secret data persisting this set: one JSON document under [`SECRET_KEY`] with each key's role,
    /// timestamps and base64 PKCS#8. The caller must store it only in a Secret.
    pub fn to_secret_data(&self) -> Result<BTreeMap<String, Vec<u8>>, KeyError> {
        let mut keys = vec![
            StoredKey::new(KeyRole::Next, &self.next, None, None, None),
            StoredKey::new(KeyRole::Current, &self.current, Some(self.current_activated_at), None, None),
        ];
        keys.extend(self.previous.iter().map(|p| {
            StoredKey::new(
                KeyRole::Previous,
                &p.key,
                Some(p.activated_at),
                Some(p.retired_at),
                Some(p.publish_until),
            )
        }));
        let doc = KeySetDoc { version: FORMAT_VERSION, keys };
        // Sized up front so the buffer holding key material is not reallocated, leaving stale copies behind.
        let mut out = Vec::with_capacity(512 * (doc.keys.len() + 1));
        serde_json::to_writer(&mut out, &doc).map_err(|e| KeyError::Encode(e.to_string()))?;
        Ok(BTreeMap::from([(SECRET_KEY.to_owned(), out)]))
    }

    /// Loads a set from Secret data written by [`KeySet::to_secret_data`], checking that there is exactly one
    /// current and one next key, that every key parses, and that every stored ID is the key's thumbprint.
    pub fn from_secret_data(data: &BTreeMap<String, Vec<u8>>) -> Result<Self, KeyError> {
        let bytes = data.get(SECRET_KEY).ok_or(KeyError::MissingEntry(SECRET_KEY))?;
        // serde_json only quotes values it rejects; pkcs8 is a string field that accepts any string, so key
        // material cannot end up in this message.
        let doc: KeySetDoc = serde_json::from_slice(bytes).map_err(|e| KeyError::Malformed(e.to_string()))?;
        if doc.version != FORMAT_VERSION {
            return Err(KeyError::Version(doc.version));
        }
        let mut seen = BTreeSet::new();
        let (mut next, mut current, mut previous) = (Vec::new(), Vec::new(), Vec::new());
        for stored in &doc.keys {
            let key = Arc::new(stored.load()?);
            if !seen.insert(key.kid().to_owned()) {
                return Err(KeyError::DuplicateKid(key.kid().to_owned()));
            }
            match stored.role {
                KeyRole::Next => next.push(key),
                KeyRole::Current => current.push((key, stored.require(stored.activated_at, "activatedAt")?)),
                KeyRole::Previous => previous.push(RetiredKey {
                    key,
                    activated_at: stored.require(stored.activated_at, "activatedAt")?,
                    retired_at: stored.require(stored.retired_at, "retiredAt")?,
                    publish_until: stored.require(stored.publish_until, "publishUntil")?,
                }),
            }
        }
        let next = exactly_one(next, KeyRole::Next)?;
        let (current, current_activated_at) = exactly_one(current, KeyRole::Current)?;
        previous.sort_by_key(|p| p.retired_at);
        Ok(Self { next, current, current_activated_at, previous })
    }
}

/// The persisted form of a key set.
#[derive(Serialize, Deserialize)]
struct KeySetDoc {
    version: u32,
    keys: Vec<StoredKey>,
}

/// One persisted key. The base64 PKCS#8 copy is wiped when the value is dropped.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredKey {
    role: KeyRole,
    kid: String,
    created_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    activated_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retired_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    publish_until: Option<Timestamp>,
    pkcs8: String,
}

impl StoredKey {
    fn new(
        role: KeyRole,
        key: &SigningKey,
        activated_at: Option<Timestamp>,
        retired_at: Option<Timestamp>,
        publish_until: Option<Timestamp>,
    ) -> Self {
        Self {
            role,
            kid: key.kid().to_owned(),
            created_at: key.created_at(),
            activated_at,
            retired_at,
            publish_until,
            pkcs8: STANDARD.encode(key.pkcs8()),
        }
    }

    fn load(&self) -> Result<SigningKey, KeyError> {
        let invalid = || KeyError::Pkcs8 { kid: self.kid.clone() };
        let der = Zeroizing::new(STANDARD.decode(&self.pkcs8).map_err(|_| invalid())?);
        let key = SigningKey::from_pkcs8(&der, self.created_at).map_err(|_| invalid())?;
        if key.kid() != self.kid {
            return Err(KeyError::KidMismatch { stored: self.kid.clone(), computed: key.kid().to_owned() });
        }
        Ok(key)
    }

    fn require(&self, value: Option<Timestamp>, field: &'static str) -> Result<Timestamp, KeyError> {
        value.ok_or_else(|| KeyError::MissingTimestamp { kid: self.kid.clone(), role: self.role, field })
    }
}

impl Drop for StoredKey {
    fn drop(&mut self) {
        self.pkcs8.zeroize();
    }
}

/// The single element of `v`, or the error saying how many keys had `role`.
fn exactly_one<T>(mut v: Vec<T>, role: KeyRole) -> Result<T, KeyError> {
    match (v.pop(), v.is_empty()) {
        (Some(only), true) => Ok(only),
        (last, _) => Err(KeyError::RoleCount { role, found: v.len() + usize::from(last.is_some()) }),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::identity::keys::RotationPolicy;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_750_000_000 + secs).unwrap()
    }

    fn rotated_set() -> KeySet {
        let mut set = KeySet::generate(t(0)).unwrap();
        let policy =
            RotationPolicy { rotation_period: Duration::from_secs(600), ..RotationPolicy::default() };
        set.rotate_if_due(t(600), &policy).unwrap();
        set.rotate_if_due(t(1200), &policy).unwrap();
        set
    }

    fn doc(set: &KeySet) -> serde_json::Value {
        serde_json::from_slice(set.to_secret_data().unwrap().get(SECRET_KEY).unwrap()).unwrap()
    }

    fn load(v: &serde_json::Value) -> Result<KeySet, KeyError> {
        KeySet::from_secret_data(&BTreeMap::from([(SECRET_KEY.to_owned(), serde_json::to_vec(v).unwrap())]))
    }

    #[test]
    fn round_trip_keeps_roles_keys_and_timestamps() {
        let set = rotated_set();
        let data = set.to_secret_data().unwrap();
        assert_eq!(data.keys().collect::<Vec<_>>(), [SECRET_KEY]);
        let back = KeySet::from_secret_data(&data).unwrap();
        assert_eq!(back.current().kid(), set.current().kid());
        assert_eq!(back.next().kid(), set.next().kid());
        assert_eq!(back.current_activated_at(), t(1200));
        let summary = |s: &KeySet| -> Vec<_> {
            s.previous()
                .iter()
                .map(|p| (p.key().kid().to_owned(), p.activated_at(), p.retired_at(), p.publish_until()))
                .collect()
        };
        assert_eq!(summary(&back), summary(&set));
        assert_eq!(back.previous().len(), 2);
        // The loaded keys sign, and their signatures verify under the original published point.
        let sig = back.current().sign(b"m").unwrap();
        let mut point = vec![0x04];
        point.extend(base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(set.current().x()).unwrap());
        point.extend(base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(set.current().y()).unwrap());
        aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED, point)
            .verify(b"m", &sig)
            .unwrap();
    }

    #[test]
    fn document_shape() {
        let v = doc(&rotated_set());
        assert_eq!(v["version"], 1);
        let keys = v["keys"].as_array().unwrap();
        let roles: Vec<&str> = keys.iter().map(|k| k["role"].as_str().unwrap()).collect();
        assert_eq!(roles, ["next", "current", "previous", "previous"]);
        assert_eq!(keys[1]["activatedAt"], "2025-06-15T15:26:40Z");
        assert!(keys[0].get("activatedAt").is_none());
        assert!(keys[2]["publishUntil"].is_string());
    }

    #[test]
    fn edited_kid_is_rejected() {
        let mut v = doc(&rotated_set());
        v["keys"][1]["kid"] = "not-the-thumbprint".into();
        assert!(
            matches!(load(&v), Err(KeyError::KidMismatch { stored, .. }) if stored == "not-the-thumbprint")
        );
    }

    #[test]
    fn swapped_key_material_is_rejected() {
        let mut v = doc(&rotated_set());
        v["keys"][1]["pkcs8"] = v["keys"][0]["pkcs8"].clone();
        assert!(matches!(load(&v), Err(KeyError::KidMismatch { .. })));
    }

    #[test]
    fn missing_or_repeated_roles_are_rejected() {
        let mut v = doc(&rotated_set());
        v["keys"].as_array_mut().unwrap().remove(1);
        assert_eq!(load(&v).err(), Some(KeyError::RoleCount { role: KeyRole::Current, found: 0 }));

        let mut v = doc(&rotated_set());
        v["keys"][2]["role"] = "next".into();
        assert_eq!(load(&v).err(), Some(KeyError::RoleCount { role: KeyRole::Next, found: 2 }));

        let mut v = doc(&rotated_set());
        let dup = v["keys"][2].clone();
        v["keys"].as_array_mut().unwrap().push(dup);
        assert!(matches!(load(&v), Err(KeyError::DuplicateKid(_))));

        let mut v = doc(&rotated_set());
        v["keys"][2].as_object_mut().unwrap().remove("publishUntil");
        assert!(matches!(load(&v), Err(KeyError::MissingTimestamp { field: "publishUntil", .. })));
    }

    #[test]
    fn garbage_is_rejected_without_echoing_key_material() {
        let missing = KeySet::from_secret_data(&BTreeMap::new());
        assert_eq!(missing.err(), Some(KeyError::MissingEntry(SECRET_KEY)));
        let garbage = BTreeMap::from([(SECRET_KEY.to_owned(), b"\x00not json".to_vec())]);
        assert!(matches!(KeySet::from_secret_data(&garbage), Err(KeyError::Malformed(_))));

        let mut v = doc(&rotated_set());
        v["version"] = 2.into();
        assert_eq!(load(&v).err(), Some(KeyError::Version(2)));

        let mut v = doc(&rotated_set());
        let real = v["keys"][1]["pkcs8"].as_str().unwrap().to_owned();
        let corrupted = format!("{}!!", &real[..real.len() - 2]);
        v["keys"][1]["pkcs8"] = corrupted.clone().into();
        let err = load(&v).err().unwrap();
        assert!(matches!(err, KeyError::Pkcs8 { .. }));
        assert!(!err.to_string().contains(&real[..40]) && !err.to_string().contains(&corrupted[..40]));

        let mut v = doc(&rotated_set());
        v["keys"][1]["pkcs8"] = base64::engine::general_purpose::STANDARD.encode(b"not a key").into();
        assert!(matches!(load(&v), Err(KeyError::Pkcs8 { .. })));
    }
}

//! Secrets at rest: AES-256-GCM under a data key; data keys are stored
//! wrapped (AES-256-GCM) by the master key, which never enters the database;
//! each ciphertext records its key id. Fingerprints are HMAC-SHA256 under a
//! key derived from the master key, so a database dump alone neither reveals
//! nor confirms a secret.

use std::{collections::HashMap, fmt, sync::Mutex};

use aes_gcm::{aead::Aead, Aes256Gcm, KeyInit, Nonce};
use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use crate::{Result, StoreError};

const NONCE_LEN: usize = 12;

/// The 32-byte key that wraps the data keys. `Debug` never shows it.
#[derive(Clone)]
pub struct MasterKey([u8; 32]);

impl MasterKey {
    /// From 64 hex characters (e.g. `LEAKSCAN_MASTER_KEY` or a key file).
    pub fn from_hex(text: &str) -> Result<MasterKey> {
        let bytes = hex::decode(text.trim())
            .map_err(|_| StoreError::Invalid("the master key must be 64 hex characters".into()))?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| {
            StoreError::Invalid("the master key must be 64 hex characters (32 bytes)".into())
        })?;
        Ok(MasterKey(key))
    }

    pub fn generate() -> MasterKey {
        MasterKey(rand::rng().random())
    }

    /// Reads a key file (64 hex digits; surrounding whitespace ignored).
    pub fn from_file(path: &std::path::Path) -> Result<MasterKey> {
        let text = std::fs::read_to_string(path).map_err(|error| {
            StoreError::Invalid(format!("master key file {}: {error}", path.display()))
        })?;
        MasterKey::from_hex(text.trim())
    }

    /// Reads the key file, or makes one (mode 0600) when it does not exist:
    /// for one-machine setups such as `leakscan up`.
    pub fn load_or_create(path: &std::path::Path) -> Result<MasterKey> {
        if path.exists() {
            return MasterKey::from_file(path);
        }
        let key = MasterKey::generate();
        let write = || -> std::io::Result<()> {
            use std::io::Write as _;
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(path)?;
            writeln!(file, "{}", key.to_hex())
        };
        write().map_err(|error| {
            StoreError::Invalid(format!("master key file {}: {error}", path.display()))
        })?;
        Ok(key)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// A key for another purpose, derived from this one.
    fn derive(&self, purpose: &str) -> [u8; 32] {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        mac.update(purpose.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

fn seal(key: &[u8; 32], plaintext: &[u8]) -> Vec<u8> {
    let cipher = <Aes256Gcm as KeyInit>::new_from_slice(key).expect("32-byte key");
    let nonce: [u8; NONCE_LEN] = rand::rng().random();
    let ciphertext = cipher
        .encrypt(Nonce::from_slice(&nonce), plaintext)
        .expect("AES-GCM encryption of an in-memory buffer does not fail");
    let mut sealed = nonce.to_vec();
    sealed.extend_from_slice(&ciphertext);
    sealed
}

fn open(key: &[u8; 32], sealed: &[u8], what: &str) -> Result<Vec<u8>> {
    if sealed.len() < NONCE_LEN {
        return Err(StoreError::Invalid(format!("{what}: ciphertext too short")));
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
    <Aes256Gcm as KeyInit>::new_from_slice(key)
        .expect("32-byte key")
        .decrypt(Nonce::from_slice(nonce), ciphertext)
        .map_err(|_| {
            StoreError::Invalid(format!(
                "{what}: cannot decrypt (wrong master key or damaged data)"
            ))
        })
}

/// A data key, unwrapped: what [`SecretBox::active_key`] gives a writer.
/// `Debug` never shows the key.
#[derive(Clone)]
pub struct DataKey {
    id: i32,
    key: [u8; 32],
}

impl DataKey {
    /// The id every ciphertext sealed with this key records.
    pub fn id(&self) -> i32 {
        self.id
    }

    /// Nonce (12 bytes) followed by the AES-256-GCM ciphertext.
    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        seal(&self.key, plaintext)
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DataKey({})", self.id)
    }
}

/// Encrypts, decrypts and fingerprints secrets. Cheap to share (`Arc`).
///
/// It caches no active key: a writer asks [`SecretBox::active_key`] inside
/// its transaction, which also holds the key row against a rotation until
/// the writer commits. So once a rotation has switched keys, no write under
/// the old key can still be in flight, and its re-encryption pass misses
/// nothing, whichever process rotated.
pub struct SecretBox {
    master: MasterKey,
    fingerprint_key: [u8; 32],
    /// Unwrapped data keys by id.
    keys: Mutex<HashMap<i32, [u8; 32]>>,
}

impl SecretBox {
    /// Checks the active data key opens under `master`, making the first
    /// one if there is none. A master key that does not open the stored
    /// keys is an error here, before anything is written under it.
    pub async fn load(pool: &PgPool, master: MasterKey) -> Result<SecretBox> {
        let active: Option<(i32, Vec<u8>)> =
            sqlx::query_as("select id, wrapped_key from secret_keys where state = 'active'")
                .fetch_optional(pool)
                .await?;
        let (id, wrapped) = match active {
            Some(active) => active,
            None => {
                let data_key: [u8; 32] = rand::rng().random();
                let wrapped = seal(&master.0, &data_key);
                // Two processes starting at once: the unique index keeps one.
                sqlx::query(
                    "insert into secret_keys (wrapped_key) values ($1) on conflict do nothing",
                )
                .bind(&wrapped)
                .execute(pool)
                .await?;
                sqlx::query_as("select id, wrapped_key from secret_keys where state = 'active'")
                    .fetch_one(pool)
                    .await?
            }
        };
        let data_key = unwrap_key(&master, id, &wrapped)?;
        Ok(SecretBox {
            fingerprint_key: master.derive("leakscan fingerprint v1"),
            master,
            keys: Mutex::new(HashMap::from([(id, data_key)])),
        })
    }

    /// The active data key, share-locked until `connection`'s transaction
    /// ends (a rotation waits for it). Call it inside the transaction that
    /// writes the ciphertexts.
    pub async fn active_key(&self, connection: &mut PgConnection) -> Result<DataKey> {
        // A rotation committing while this waits for the row leaves this
        // statement's snapshot without an active row: ask again.
        for _ in 0..3 {
            let active: Option<(i32, Vec<u8>)> = sqlx::query_as(
                "select id, wrapped_key from secret_keys where state = 'active' for share",
            )
            .fetch_optional(&mut *connection)
            .await?;
            if let Some((id, wrapped)) = active {
                let key = self.key_from(id, &wrapped)?;
                return Ok(DataKey { id, key });
            }
        }
        Err(StoreError::Invalid(
            "no active secret key (is a key rotation failing?)".into(),
        ))
    }

    /// Makes a new active key in `transaction` (the caller has made the
    /// old one inactive); returns its id.
    pub(crate) async fn add_active_key(
        &self,
        transaction: &mut Transaction<'_, Postgres>,
    ) -> Result<i32> {
        let data_key: [u8; 32] = rand::rng().random();
        let id: i32 =
            sqlx::query_scalar("insert into secret_keys (wrapped_key) values ($1) returning id")
                .bind(seal(&self.master.0, &data_key))
                .fetch_one(&mut **transaction)
                .await?;
        self.keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, data_key);
        Ok(id)
    }

    /// Data key `id`, whatever its state.
    pub async fn key(&self, pool: &PgPool, id: i32) -> Result<DataKey> {
        let key = match self.cached(id) {
            Some(key) => key,
            None => {
                let wrapped: Vec<u8> =
                    sqlx::query_scalar("select wrapped_key from secret_keys where id = $1")
                        .bind(id)
                        .fetch_optional(pool)
                        .await?
                        .ok_or_else(|| StoreError::NotFound(format!("secret key {id}")))?;
                self.key_from(id, &wrapped)?
            }
        };
        Ok(DataKey { id, key })
    }

    fn cached(&self, id: i32) -> Option<[u8; 32]> {
        self.keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .copied()
    }

    fn key_from(&self, id: i32, wrapped: &[u8]) -> Result<[u8; 32]> {
        if let Some(key) = self.cached(id) {
            return Ok(key);
        }
        let key = unwrap_key(&self.master, id, wrapped)?;
        self.keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, key);
        Ok(key)
    }

    pub async fn decrypt(&self, pool: &PgPool, key_id: i32, sealed: &[u8]) -> Result<Vec<u8>> {
        let key = self.key(pool, key_id).await?;
        open(&key.key, sealed, &format!("secret under key {key_id}"))
    }

    /// Keyed hash of rule and secret, hex (the findings' `fingerprint`).
    pub fn fingerprint(&self, rule_id: &str, secret: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.fingerprint_key)
            .expect("HMAC takes a key of any length");
        mac.update(rule_id.as_bytes());
        mac.update(&[0]);
        mac.update(secret);
        hex::encode(mac.finalize().into_bytes())
    }

    /// Keyed hash of the secret alone, hex: what reviews match, whatever
    /// rule found the secret. (Rule ids are never empty, so this cannot
    /// equal a fingerprint.)
    pub fn secret_hash(&self, secret: &[u8]) -> String {
        self.fingerprint("", secret)
    }

    /// The key the fingerprints are made with, for components that compute
    /// them themselves (the engine's `Secret::fingerprint` gives the same).
    pub fn fingerprint_key(&self) -> &[u8; 32] {
        &self.fingerprint_key
    }
}

fn unwrap_key(master: &MasterKey, id: i32, wrapped: &[u8]) -> Result<[u8; 32]> {
    let key = open(&master.0, wrapped, &format!("data key {id}"))?;
    key.try_into()
        .map_err(|_| StoreError::Invalid(format!("data key {id} has the wrong length")))
}

pub use leakscan_engine::secret::redact;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealing_round_trips_and_detects_the_wrong_key() {
        let key = [7u8; 32];
        let sealed = seal(&key, b"ghp_secret");
        assert_ne!(&sealed[NONCE_LEN..], b"ghp_secret");
        assert_eq!(open(&key, &sealed, "t").unwrap(), b"ghp_secret");
        let error = open(&[8u8; 32], &sealed, "t").unwrap_err();
        assert!(error.to_string().contains("cannot decrypt"), "{error}");
        assert!(open(&key, b"short", "t").is_err());
    }

    #[test]
    fn master_keys_parse_from_hex_only() {
        let key = MasterKey::generate();
        assert_eq!(MasterKey::from_hex(&key.to_hex()).unwrap().0, key.0);
        assert!(MasterKey::from_hex("abcd").is_err());
        assert!(MasterKey::from_hex(&"zz".repeat(32)).is_err());
        assert_eq!(format!("{key:?}"), "MasterKey(..)");
    }
}

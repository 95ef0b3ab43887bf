//! The client side of SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802, RFC 7677), as Kafka uses it
//! (KIP-84): no channel binding, the username escaped, the password sent through PBKDF2.
//!
//! Owns: [`Scram`] (one user's credentials and the salted password it derived last) and
//! [`Exchange`] (one authentication: client-first, client-final, the server's signature
//! checked).
//!
//! Invariants:
//! - The server's nonce must extend ours, its iteration count lie within Kafka's bounds
//!   ([`MIN_ITERATIONS`]..=[`MAX_ITERATIONS`]: a hostile broker cannot make us spend unbounded
//!   CPU, nor weaken the proof with few iterations), and its final signature must match the one
//!   computed from the password: otherwise the exchange fails, naming why.
//! - The salted password (PBKDF2, milliseconds of CPU) is derived once per salt and iteration
//!   count and kept: reconnections and re-authentications with the same salt reuse it.
//! - The password is never put in an error or a log.
//!
//! The primitives (HMAC, SHA-2, PBKDF2, the nonce's randomness) are ring's, the crypto library
//! rustls already links.

use std::num::NonZeroU32;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use parking_lot::Mutex;
use ring::{digest, hmac, pbkdf2};

use super::secret::Secret;

/// The fewest iterations accepted (Kafka's minimum for SCRAM credentials).
pub(crate) const MIN_ITERATIONS: u32 = 4096;
/// The most iterations accepted (Kafka's maximum for SCRAM credentials).
pub(crate) const MAX_ITERATIONS: u32 = 16384;

/// The hash function of a SCRAM mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hash {
    /// SCRAM-SHA-256.
    Sha256,
    /// SCRAM-SHA-512.
    Sha512,
    /// SCRAM-SHA-1, only to check the implementation against RFC 5802's example.
    #[cfg(test)]
    Sha1,
}

impl Hash {
    fn hmac(self) -> hmac::Algorithm {
        match self {
            Hash::Sha256 => hmac::HMAC_SHA256,
            Hash::Sha512 => hmac::HMAC_SHA512,
            #[cfg(test)]
            Hash::Sha1 => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        }
    }

    fn digest(self) -> &'static digest::Algorithm {
        match self {
            Hash::Sha256 => &digest::SHA256,
            Hash::Sha512 => &digest::SHA512,
            #[cfg(test)]
            Hash::Sha1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
        }
    }

    fn pbkdf2(self) -> pbkdf2::Algorithm {
        match self {
            Hash::Sha256 => pbkdf2::PBKDF2_HMAC_SHA256,
            Hash::Sha512 => pbkdf2::PBKDF2_HMAC_SHA512,
            #[cfg(test)]
            Hash::Sha1 => pbkdf2::PBKDF2_HMAC_SHA1,
        }
    }

    fn len(self) -> usize {
        self.digest().output_len()
    }
}

/// A salted password and what it was derived with.
struct Salted {
    salt: Vec<u8>,
    iterations: u32,
    password: Vec<u8>,
}

/// One user's SCRAM credentials.
pub(crate) struct Scram {
    hash: Hash,
    username: String,
    password: Secret,
    salted: Mutex<Option<Salted>>,
}

impl std::fmt::Debug for Scram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scram")
            .field("hash", &self.hash)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl Scram {
    pub(crate) fn new(hash: Hash, username: String, password: Secret) -> Self {
        Scram { hash, username, password, salted: Mutex::new(None) }
    }

    /// Starts an exchange with a fresh random nonce.
    ///
    /// # Errors
    ///
    /// When the system's random source fails.
    pub(crate) fn start(&self) -> Result<Exchange<'_>, String> {
        let mut bytes = [0u8; 24];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .map_err(|_| "the system's random source failed".to_owned())?;
        Ok(self.start_with_nonce(BASE64.encode(bytes)))
    }

    fn start_with_nonce(&self, nonce: String) -> Exchange<'_> {
        let username = self.username.replace('=', "=3D").replace(',', "=2C");
        let first_bare = format!("n={username},r={nonce}");
        Exchange { scram: self, nonce, first_bare, server_signature: None }
    }

    /// The salted password for `salt` and `iterations`, derived once and kept.
    fn salted_password(&self, salt: &[u8], iterations: NonZeroU32) -> Vec<u8> {
        let mut kept = self.salted.lock();
        if let Some(salted) = kept.as_ref()
            && salted.salt == salt
            && salted.iterations == iterations.get()
        {
            return salted.password.clone();
        }
        let mut password = vec![0u8; self.hash.len()];
        pbkdf2::derive(
            self.hash.pbkdf2(),
            iterations,
            salt,
            self.password.expose().as_bytes(),
            &mut password,
        );
        *kept = Some(Salted {
            salt: salt.to_vec(),
            iterations: iterations.get(),
            password: password.clone(),
        });
        password
    }
}

/// One SCRAM authentication in progress.
pub(crate) struct Exchange<'a> {
    scram: &'a Scram,
    nonce: String,
    first_bare: String,
    /// The signature the server must send in its final message.
    server_signature: Option<Vec<u8>>,
}

impl Exchange<'_> {
    /// The client-first message: `n,,n=<user>,r=<nonce>` (no channel binding, no authzid).
    pub(crate) fn client_first(&self) -> Vec<u8> {
        format!("n,,{}", self.first_bare).into_bytes()
    }

    /// Answers the server-first message with the client-final one (carrying the proof).
    ///
    /// # Errors
    ///
    /// When the server's message is malformed, its nonce does not extend ours, or its
    /// iteration count is out of bounds.
    pub(crate) fn client_final(&mut self, server_first: &[u8]) -> Result<Vec<u8>, String> {
        let server_first = std::str::from_utf8(server_first)
            .map_err(|_| "the server-first message is not UTF-8".to_owned())?;
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for attribute in server_first.split(',') {
            match attribute.split_once('=') {
                Some(("r", value)) => nonce = Some(value),
                Some(("s", value)) => salt = Some(value),
                Some(("i", value)) => iterations = Some(value),
                Some(("m", _)) => {
                    return Err("the server asks for a SCRAM extension (m=) we do not know".into());
                }
                Some(("e", value)) => return Err(format!("the server refused: {value}")),
                _ => {}
            }
        }
        let nonce = nonce.ok_or("the server-first message has no nonce (r=)")?;
        if nonce.len() <= self.nonce.len() || !nonce.starts_with(&self.nonce) {
            return Err("the server's nonce does not extend ours".into());
        }
        let salt = salt
            .and_then(|s| BASE64.decode(s).ok())
            .filter(|s| !s.is_empty())
            .ok_or("the server-first message has no valid salt (s=)")?;
        let iterations = iterations
            .and_then(|i| i.parse::<u32>().ok())
            .ok_or("the server-first message has no valid iteration count (i=)")?;
        let iterations = NonZeroU32::new(iterations)
            .filter(|i| (MIN_ITERATIONS..=MAX_ITERATIONS).contains(&i.get()))
            .ok_or_else(|| {
                format!(
                    "the server asks for {iterations} iterations; {MIN_ITERATIONS} to \
                     {MAX_ITERATIONS} are accepted (Kafka's bounds)"
                )
            })?;
        let hash = self.scram.hash;
        let salted = self.scram.salted_password(&salt, iterations);
        let salted_key = hmac::Key::new(hash.hmac(), &salted);
        let client_key = hmac::sign(&salted_key, b"Client Key");
        let stored_key = digest::digest(hash.digest(), client_key.as_ref());
        // c=biws: the GS2 header `n,,` in base64.
        let final_without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{final_without_proof}", self.first_bare);
        let client_signature =
            hmac::sign(&hmac::Key::new(hash.hmac(), stored_key.as_ref()), auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .as_ref()
            .iter()
            .zip(client_signature.as_ref())
            .map(|(key, signature)| key ^ signature)
            .collect();
        let server_key = hmac::sign(&salted_key, b"Server Key");
        let server_signature =
            hmac::sign(&hmac::Key::new(hash.hmac(), server_key.as_ref()), auth_message.as_bytes());
        self.server_signature = Some(server_signature.as_ref().to_vec());
        Ok(format!("{final_without_proof},p={}", BASE64.encode(proof)).into_bytes())
    }

    /// Checks the server-final message: the server proves it knows the password.
    ///
    /// # Errors
    ///
    /// When the server reports an error (`e=`), or its signature is missing or wrong.
    pub(crate) fn verify(&self, server_final: &[u8]) -> Result<(), String> {
        let server_final = std::str::from_utf8(server_final)
            .map_err(|_| "the server-final message is not UTF-8".to_owned())?;
        if let Some(error) = server_final.strip_prefix("e=") {
            return Err(format!("the broker refused the credentials: {error}"));
        }
        let expected = self.server_signature.as_deref().ok_or("no client-final was sent")?;
        let signature = server_final
            .split(',')
            .find_map(|a| a.strip_prefix("v="))
            .and_then(|v| BASE64.decode(v).ok())
            .ok_or("the server-final message has no signature (v=)")?;
        let equal = signature.len() == expected.len()
            && signature.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
        if equal {
            Ok(())
        } else {
            Err("the server's signature is wrong: it does not know this user's credentials".into())
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Runs an exchange with a fixed client nonce against the server's messages, returning the
    /// client-first and client-final messages and whether the server-final verified.
    fn run(hash: Hash, user: &str, password: &str, nonce: &str, first: &str, last: &str) -> String {
        let scram = Scram::new(hash, user.into(), Secret::new(password));
        let mut exchange = scram.start_with_nonce(nonce.into());
        let client_first = String::from_utf8(exchange.client_first()).unwrap();
        let client_final = String::from_utf8(exchange.client_final(first.as_bytes()).unwrap());
        exchange.verify(last.as_bytes()).unwrap();
        format!("{client_first}\n{}", client_final.unwrap())
    }

    /// RFC 5802 section 5 (SCRAM-SHA-1): the same algorithm with another hash.
    #[test]
    fn rfc_5802_example() {
        let messages = run(
            Hash::Sha1,
            "user",
            "pencil",
            "fyko+d2lbbFgONRv9qkxdawL",
            "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
            "v=rmF9pqV8S7suAoZWja4dJRkFsKQ=",
        );
        assert_eq!(
            messages,
            "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL\n\
             c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
        );
    }

    /// RFC 7677 section 3 (SCRAM-SHA-256).
    #[test]
    fn rfc_7677_example() {
        let messages = run(
            Hash::Sha256,
            "user",
            "pencil",
            "rOprNGfwEbeRWgbNEkqO",
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,\
             i=4096",
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
        );
        assert_eq!(
            messages,
            "n,,n=user,r=rOprNGfwEbeRWgbNEkqO\n\
             c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
             p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
    }

    /// SCRAM-SHA-512 has no RFC example: this one was computed with Python's hashlib and hmac
    /// (an independent implementation) from the RFC 7677 inputs.
    #[test]
    fn sha_512_against_an_independent_computation() {
        let messages = run(
            Hash::Sha512,
            "user",
            "pencil",
            "rOprNGfwEbeRWgbNEkqO",
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,\
             i=4096",
            SHA512_SERVER_FINAL,
        );
        assert_eq!(
            messages,
            format!(
                "n,,n=user,r=rOprNGfwEbeRWgbNEkqO\n\
                 c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p={SHA512_PROOF}"
            )
        );
    }

    const SHA512_PROOF: &str = concat!(
        "gMGXRcevScNtxZ6/8lQYpGtnsNAc3mGcmNomv+xnoOMw+3R2",
        "xNJdMNnzMlTN8PPC6wdp6dybEmDYXYTxwnYPJQ=="
    );
    const SHA512_SERVER_FINAL: &str = concat!(
        "v=ZQnYEgWQMFmmsM8aQMF0nDDCy/AgCzkwk8CmMZYcMg0vSVlK",
        "DanekLtifDSeVGT4+5ZxXnJq199RVG2rR7N7Zw=="
    );

    #[test]
    fn usernames_are_escaped_and_a_wrong_server_signature_fails() {
        let scram = Scram::new(Hash::Sha256, "a=b,c".into(), Secret::new("pw"));
        let mut exchange = scram.start_with_nonce("abc".into());
        assert_eq!(exchange.client_first(), b"n,,n=a=3Db=2Cc,r=abc");
        exchange.client_final(b"r=abcdef,s=c2FsdA==,i=4096").unwrap();
        let wrong = exchange.verify(b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").unwrap_err();
        assert!(wrong.contains("signature is wrong"), "{wrong}");
        assert!(exchange.verify(b"e=invalid-proof").unwrap_err().contains("invalid-proof"));
    }

    #[test]
    fn hostile_server_first_messages_are_refused() {
        let scram = Scram::new(Hash::Sha256, "u".into(), Secret::new("pw"));
        let refused =
            |first: &str| scram.start_with_nonce("abc".into()).client_final(first.as_bytes());
        // Our nonce not extended, or not at all.
        assert!(refused("r=xyz123,s=c2FsdA==,i=4096").unwrap_err().contains("nonce"));
        assert!(refused("r=abc,s=c2FsdA==,i=4096").unwrap_err().contains("nonce"));
        // Iterations out of Kafka's bounds (CPU for ever, or a weak proof), or not a number.
        for i in ["4095", "16385", "4294967295", "0", "-1", "x"] {
            let error = refused(&format!("r=abcd,s=c2FsdA==,i={i}")).unwrap_err();
            assert!(error.contains("iteration"), "{i}: {error}");
        }
        assert!(refused("r=abcd,s=!!,i=4096").unwrap_err().contains("salt"));
        assert!(refused("m=ext,r=abcd,s=c2FsdA==,i=4096").unwrap_err().contains("extension"));
    }

    #[test]
    fn the_salted_password_is_derived_once_per_salt() {
        let scram = Scram::new(Hash::Sha256, "u".into(), Secret::new("pw"));
        let one = NonZeroU32::new(4096).unwrap();
        let first = scram.salted_password(b"salt", one);
        assert_eq!(scram.salted_password(b"salt", one), first);
        assert_ne!(scram.salted_password(b"other", one), first);
        assert!(!format!("{scram:?}").contains("pw\""));
    }
}

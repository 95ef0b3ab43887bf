//! OAUTHBEARER (RFC 7628, KIP-255): the user's token provider, the token cache that refreshes
//! before expiry, and the client's message.
//!
//! Owns: [`TokenProvider`] (a user-supplied async function returning an [`OAuthBearerToken`]),
//! `TokenSource` (the cache one bus holds) and `initial_response` (the SASL message).
//!
//! Invariants:
//! - A token is used only until [`REFRESH_AT`] of its lifetime has passed since it was
//!   obtained (Kafka's `sasl.login.refresh.window.factor`); after that the next connection or
//!   re-authentication asks the provider for a new one. The provider is called from the
//!   future that opens the connection (no task of its own), one call at a time.
//! - When the provider fails while the cached token has not expired, the cached token is used
//!   (and the failure logged); an expired token is never sent.
//! - Every wait for a token is bounded by its caller's deadline (the authentication's, within
//!   `request_timeout`): a provider that never answers costs each connection attempt that
//!   deadline, never more, and holds nothing up past it (its call is dropped; the next caller
//!   asks again). The cache is read without waiting for a call in progress.
//! - The token is a [`Secret`]: never logged, never in `Debug`.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::secret::Secret;

/// The share of a token's lifetime after which it is refreshed.
pub(crate) const REFRESH_AT: f64 = 0.8;

/// An OAuth 2 bearer token for OAUTHBEARER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthBearerToken {
    /// The token (a JWT, usually).
    pub value: Secret,
    /// How long from now the token is valid.
    pub lifetime: Duration,
    /// SASL extensions sent with the token (KIP-342; for example Confluent Cloud's
    /// `logicalCluster` and `identityPoolId`).
    pub extensions: BTreeMap<String, String>,
}

impl OAuthBearerToken {
    /// A token valid for `lifetime` from now, without extensions.
    pub fn new(value: impl Into<Secret>, lifetime: Duration) -> Self {
        OAuthBearerToken { value: value.into(), lifetime, extensions: BTreeMap::new() }
    }
}

/// The error a token provider returns.
pub type TokenError = Box<dyn std::error::Error + Send + Sync>;

/// The future a token provider returns.
pub type TokenFuture = Pin<Box<dyn Future<Output = Result<OAuthBearerToken, TokenError>> + Send>>;

/// Where OAUTHBEARER tokens come from: an async function the bus calls when it needs a token
/// (the first connection, and when the token in use has passed 80% of its lifetime).
#[derive(Clone)]
pub struct TokenProvider(Arc<dyn Fn() -> TokenFuture + Send + Sync>);

impl TokenProvider {
    /// A provider calling `fetch` for each new token.
    pub fn new<F, Fut>(fetch: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<OAuthBearerToken, TokenError>> + Send + 'static,
    {
        TokenProvider(Arc::new(move || Box::pin(fetch()) as TokenFuture))
    }

    fn fetch(&self) -> TokenFuture {
        (self.0)()
    }
}

impl std::fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenProvider")
    }
}

/// Two providers are equal when they are the same provider (clones of one another).
impl PartialEq for TokenProvider {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for TokenProvider {}

/// A token and when it was obtained.
struct Cached {
    token: OAuthBearerToken,
    refresh_at: Instant,
    expires_at: Instant,
}

/// The tokens of one bus: the provider and the token in use.
pub(crate) struct TokenSource {
    provider: TokenProvider,
    /// The token in use (read without waiting for a call of the provider).
    cached: parking_lot::Mutex<Option<Cached>>,
    /// Held while the provider is called: one call at a time.
    fetching: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource").finish_non_exhaustive()
    }
}

impl TokenSource {
    pub(crate) fn new(provider: TokenProvider) -> Self {
        TokenSource {
            provider,
            cached: parking_lot::Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    /// A token to send now: the cached one before its refresh point, else a new one from the
    /// provider, asked by `deadline` (else the cached one, while it has not expired).
    ///
    /// # Errors
    ///
    /// Why no unexpired token could be had by `deadline`.
    pub(crate) async fn token(&self, deadline: Instant) -> Result<OAuthBearerToken, String> {
        if let Some(token) = self.cached_until(|c| c.refresh_at) {
            return Ok(token);
        }
        let fetched = tokio::time::timeout_at(deadline, async {
            let _one_at_a_time = self.fetching.lock().await;
            // Another caller may have refreshed it while this one waited.
            if let Some(token) = self.cached_until(|c| c.refresh_at) {
                return Ok(token);
            }
            match self.provider.fetch().await {
                Ok(token) if token.lifetime.is_zero() => {
                    Err("the token provider returned a token with no lifetime left".to_owned())
                }
                Ok(token) => {
                    let now = Instant::now();
                    let refresh_at = now + token.lifetime.mul_f64(REFRESH_AT);
                    let expires_at = now + token.lifetime;
                    *self.cached.lock() =
                        Some(Cached { token: token.clone(), refresh_at, expires_at });
                    Ok(token)
                }
                Err(error) => Err(format!("the token provider failed: {error}")),
            }
        })
        .await
        .unwrap_or_else(|_| {
            Err("the token provider did not answer in time (the connection's request_timeout)"
                .to_owned())
        });
        match fetched {
            Ok(token) => Ok(token),
            Err(error) => match self.cached_until(|c| c.expires_at) {
                Some(current) => {
                    tracing::warn!(
                        %error,
                        "no new OAUTHBEARER token; using the current one until it expires"
                    );
                    Ok(current)
                }
                None => Err(error),
            },
        }
    }

    /// The cached token, if now is before the instant `until` picks (its refresh point or its
    /// expiry).
    fn cached_until(&self, until: impl Fn(&Cached) -> Instant) -> Option<OAuthBearerToken> {
        let cached = self.cached.lock();
        cached.as_ref().filter(|c| Instant::now() < until(c)).map(|c| c.token.clone())
    }
}

/// The client's first (and only) message: `n,,` `\x01auth=Bearer <token>` then each extension
/// `\x01key=value`, then `\x01\x01` (RFC 7628 section 3.1, Kafka's KIP-255 and KIP-342).
pub(crate) fn initial_response(token: &OAuthBearerToken) -> Vec<u8> {
    let mut message = format!("n,,\x01auth=Bearer {}", token.value.expose());
    for (key, value) in &token.extensions {
        message.push('\x01');
        message.push_str(key);
        message.push('=');
        message.push_str(value);
    }
    message.push_str("\x01\x01");
    message.into_bytes()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[test]
    fn the_message_carries_the_token_and_extensions_as_rfc_7628_says() {
        let mut token = OAuthBearerToken::new("eyJ.abc.def", Duration::from_secs(60));
        assert_eq!(initial_response(&token), b"n,,\x01auth=Bearer eyJ.abc.def\x01\x01");
        token.extensions.insert("logicalCluster".into(), "lkc-1".into());
        assert_eq!(
            initial_response(&token),
            b"n,,\x01auth=Bearer eyJ.abc.def\x01logicalCluster=lkc-1\x01\x01"
        );
        assert!(!format!("{token:?}").contains("eyJ"));
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_are_refreshed_after_80_percent_of_their_lifetime_and_kept_on_failure() {
        let calls = Arc::new(AtomicU32::new(0));
        let counter = Arc::clone(&calls);
        let provider = TokenProvider::new(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 2 {
                    return Err("identity provider down".into());
                }
                Ok(OAuthBearerToken::new(format!("token-{n}"), Duration::from_secs(100)))
            }
        });
        let source = TokenSource::new(provider);
        assert_eq!(source.token(soon()).await.unwrap().value.expose(), "token-0");
        tokio::time::advance(Duration::from_secs(79)).await;
        assert_eq!(source.token(soon()).await.unwrap().value.expose(), "token-0");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(source.token(soon()).await.unwrap().value.expose(), "token-1");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // Past the refresh point, the provider fails: the unexpired token stays in use...
        tokio::time::advance(Duration::from_secs(81)).await;
        assert_eq!(source.token(soon()).await.unwrap().value.expose(), "token-1");
        // ...and the next call gets a new one.
        assert_eq!(source.token(soon()).await.unwrap().value.expose(), "token-3");
        // A failure with the token expired is an error.
        let failing = TokenSource::new(TokenProvider::new(|| async {
            Err::<OAuthBearerToken, _>("down".into())
        }));
        assert!(failing.token(soon()).await.unwrap_err().contains("down"));
    }

    /// A deadline a second from now.
    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(1)
    }

    /// A provider that never answers costs each caller its deadline, not more; the unexpired
    /// token stays in use meanwhile, and an expired one is never sent.
    #[tokio::test(start_paused = true)]
    async fn a_provider_that_never_answers_is_given_up_at_the_callers_deadline() {
        let calls = Arc::new(AtomicU32::new(0));
        let counter = Arc::clone(&calls);
        let provider = TokenProvider::new(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                if n > 0 {
                    std::future::pending::<()>().await;
                }
                Ok(OAuthBearerToken::new("token-0", Duration::from_secs(100)))
            }
        });
        let source = TokenSource::new(provider);
        assert_eq!(source.token(soon()).await.unwrap().value.expose(), "token-0");
        // Past the refresh point: the provider hangs, the current token is used at the deadline.
        tokio::time::advance(Duration::from_secs(81)).await;
        let asked = Instant::now();
        assert_eq!(source.token(soon()).await.unwrap().value.expose(), "token-0");
        assert_eq!(asked.elapsed(), Duration::from_secs(1), "waited exactly the deadline");
        // Expired: the caller gets an error naming the provider, at its deadline.
        tokio::time::advance(Duration::from_secs(20)).await;
        let error = source.token(soon()).await.unwrap_err();
        assert!(error.contains("did not answer in time"), "{error}");
        assert_eq!(calls.load(Ordering::SeqCst), 3, "each caller asked the provider anew");
    }
}

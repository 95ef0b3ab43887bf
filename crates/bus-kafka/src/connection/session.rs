//! A connection's SASL session (KIP-368): what authenticated it ([`Authenticate`], the bus's
//! `security` authenticator, seen only through this trait so that the connection knows nothing
//! of SASL), when to authenticate again ([`reauthenticate_at`]), and doing so between two
//! requests.
//!
//! Invariants: a connection re-authenticates between 85% and 95% of the session lifetime (the
//! Java client's window, randomised so that connections opened together do not re-authenticate
//! together), only between two requests; a failed re-authentication poisons it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Connection;
use super::error::RequestError;

/// An authentication's future: the session lifetime the broker set, if any.
pub(crate) type Authentication<'a> =
    Pin<Box<dyn Future<Output = Result<Option<Duration>, RequestError>> + Send + 'a>>;

/// One authentication of one connection (SASL): implemented by the `security` module's
/// authenticator.
pub(crate) trait Authenticate: std::fmt::Debug + Send + Sync {
    /// The mechanism's name, for logs.
    fn mechanism_name(&self) -> String;

    /// Authenticates `connection` (its versions negotiated), each request bounded by what is
    /// left until `deadline`; the connection is poisoned when it fails.
    fn authenticate<'a>(
        &'a self,
        connection: &'a mut Connection,
        deadline: Instant,
    ) -> Authentication<'a>;
}

/// A connection's SASL session: how to authenticate again, and when.
#[derive(Debug)]
pub(super) struct Session {
    authenticator: Arc<dyn Authenticate>,
    /// When to re-authenticate (none: the broker set no session lifetime).
    reauthenticate_at: Option<Instant>,
}

impl Connection {
    /// Authenticates with `authenticator` within `deadline` and records the session.
    ///
    /// # Errors
    ///
    /// [`RequestError::Auth`] when the broker refuses; the transport's errors otherwise.
    pub(crate) async fn authenticate(
        &mut self,
        authenticator: Arc<dyn Authenticate>,
        deadline: Instant,
    ) -> Result<(), RequestError> {
        let start = Instant::now();
        let lifetime = authenticator.authenticate(self, deadline).await?;
        let reauthenticate_at = lifetime.map(|lifetime| reauthenticate_at(start, lifetime));
        tracing::debug!(
            broker = %self.broker, mechanism = %authenticator.mechanism_name(), ?lifetime,
            "authenticated"
        );
        self.session = Some(Session { authenticator, reauthenticate_at });
        Ok(())
    }

    /// Re-authenticates (KIP-368) when the session's re-authentication time has come, within
    /// `timeout`.
    pub(super) async fn reauthenticate_if_due(
        &mut self,
        timeout: Duration,
    ) -> Result<(), RequestError> {
        let due = self
            .session
            .as_ref()
            .filter(|s| s.reauthenticate_at.is_some_and(|at| Instant::now() >= at))
            .map(|s| Arc::clone(&s.authenticator));
        if let Some(authenticator) = due {
            tracing::debug!(broker = %self.broker, "re-authenticating (session lifetime)");
            self.authenticate(authenticator, Instant::now() + timeout).await?;
        }
        Ok(())
    }
}

/// When to re-authenticate a session that began at `start` and lasts `lifetime`: at a random
/// point between 85% and 95% of it.
pub(crate) fn reauthenticate_at(start: Instant, lifetime: Duration) -> Instant {
    let mut byte = [0u8; 1];
    // A failing random source only loses the spread, not the bound.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut byte);
    let share = 0.85 + 0.10 * f64::from(byte[0]) / 255.0;
    start + lifetime.mul_f64(share)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reauthentication_falls_between_85_and_95_percent_of_the_lifetime() {
        let start = Instant::now();
        let lifetime = Duration::from_secs(100);
        for _ in 0..100 {
            let at = reauthenticate_at(start, lifetime) - start;
            assert!(at >= Duration::from_secs(85) && at <= Duration::from_secs(95), "{at:?}");
        }
    }
}

//! [`BoxFuture`], the boxed future the backend traits and the dispatch's process function
//! return (so that they can be trait objects). Nothing else.

use std::future::Future;
use std::pin::Pin;

/// A boxed, sendable future: what the backend traits return, so that they can be used as trait
/// objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

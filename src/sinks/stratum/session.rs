//! One Stratum session per unit context.
//!
//! Stratum keeps the selected unit in the session (cookie), and `UnitID` may never be sent in a
//! body, so every unit gets its own HTTP client with its own cookie jar and selects its context
//! once. Two units' writes therefore never share a session, and no write depends on another
//! unit's context switch landing first.

use std::sync::atomic::{AtomicBool, Ordering};

pub(crate) struct UnitSession {
    /// Own cookie jar and connection pool.
    pub http: reqwest::Client,
    /// Fast path: the context is selected (checked without taking `selecting`).
    ready: AtomicBool,
    /// Held while selecting, so concurrent first writes select once.
    pub selecting: tokio::sync::Mutex<Option<u32>>,
}

impl UnitSession {
    pub fn new(http: reqwest::Client) -> UnitSession {
        UnitSession { http, ready: AtomicBool::new(false), selecting: tokio::sync::Mutex::new(None) }
    }
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release)
    }
}

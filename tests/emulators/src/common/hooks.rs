//! The test hooks both HTTP emulators offer: a record of every request, injected faults and
//! latency. An emulator keeps a [`Hooks`] in its state and exposes it with [`test_hooks!`].

use std::time::Duration;

use super::fault::{self, Rule};

/// The request log, the pending faults and the latency of one emulator.
#[derive(Debug)]
pub(crate) struct Hooks<R> {
    requests: Vec<R>,
    /// Every request ever recorded, kept when `requests` is cleared (for the secret audit).
    all: Vec<R>,
    faults: Vec<Rule>,
    latency: Duration,
}

impl<R> Default for Hooks<R> {
    fn default() -> Hooks<R> {
        Hooks {
            requests: Vec::new(),
            all: Vec::new(),
            faults: Vec::new(),
            latency: Duration::ZERO,
        }
    }
}

impl<R: Clone> Hooks<R> {
    /// Every request recorded so far, in order.
    pub(crate) fn requests(&self) -> Vec<R> {
        self.requests.clone()
    }

    /// Every request recorded since the emulator started, `clear_requests` or not.
    pub(crate) fn all_requests(&self) -> Vec<R> {
        self.all.clone()
    }

    pub(crate) fn clear_requests(&mut self) {
        self.requests.clear();
    }

    pub(crate) fn record(&mut self, request: R) {
        self.all.push(request.clone());
        self.requests.push(request);
    }

    pub(crate) fn inject_fault(&mut self, fault: impl Into<Rule>) {
        self.faults.push(fault.into());
    }

    pub(crate) fn clear_faults(&mut self) {
        self.faults.clear();
    }

    /// The fault that answers this request, if any (see [`fault::take`]).
    pub(crate) fn take_fault(&mut self, method: &str, target: &str) -> Option<Rule> {
        fault::take(&mut self.faults, method, target)
    }

    pub(crate) fn latency(&self) -> Duration {
        self.latency
    }

    pub(crate) fn set_latency(&mut self, latency: Duration) {
        self.latency = latency;
    }
}

/// Waits out an emulator's latency.
pub(crate) async fn delay(latency: Duration) {
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
}

/// The public test-hook methods of an emulator (`requests`, `clear_requests`, `inject_fault`,
/// `clear_faults`, `set_latency`), expanded inside its `impl` block. The emulator needs a
/// `fn state(&self)` whose guard has a `hooks: Hooks<$request>` field.
macro_rules! test_hooks {
    ($request:ty, $fault:ty) => {
        /// Every request served so far, in arrival order.
        pub fn requests(&self) -> Vec<$request> {
            self.state().hooks.requests()
        }

        /// Every request since the emulator started, `clear_requests` or not.
        pub fn all_requests(&self) -> Vec<$request> {
            self.state().hooks.all_requests()
        }

        pub fn clear_requests(&self) {
            self.state().hooks.clear_requests();
        }

        /// Adds a fault; faults are tried in the order they were added.
        pub fn inject_fault(&self, fault: $fault) {
            self.state().hooks.inject_fault(fault);
        }

        pub fn clear_faults(&self) {
            self.state().hooks.clear_faults();
        }

        /// Delays every answer by `d` (default zero).
        pub fn set_latency(&self, d: std::time::Duration) {
            self.state().hooks.set_latency(d);
        }
    };
}

pub(crate) use test_hooks;

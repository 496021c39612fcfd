//! Operations held up on their way (a transaction stalled in the network):
//! each is a future that stays pending until the harness releases it. The
//! log stalls transactions with them, the store checkpoints' commits.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

/// The gates of the operations stalled, in stall order.
#[derive(Debug, Default)]
pub(super) struct Stalls {
    /// A dropped operation's gate is held here only.
    gates: Vec<Arc<AtomicBool>>,
}

impl Stalls {
    /// A new stalled operation: the future it awaits before it goes on.
    pub(super) fn hold(&mut self) -> Stalled {
        let gate = Arc::new(AtomicBool::new(false));
        self.gates.push(gate.clone());
        Stalled(gate)
    }

    /// Operations stalled and still awaited by someone.
    pub(super) fn pending(&mut self) -> usize {
        // Released, or dropped with the future that awaited it (a crashed instance's).
        self.gates.retain(|gate| Arc::strong_count(gate) > 1 && !gate.load(Ordering::Relaxed));
        self.gates.len()
    }

    /// Lets the `k`th stalled operation ([`pending`](Self::pending)) go on when next polled.
    pub(super) fn release(&mut self, k: usize) {
        self.gates.remove(k).store(true, Ordering::Relaxed);
    }
}

/// An operation held up: pending until released.
pub(super) struct Stalled(Arc<AtomicBool>);

impl Future for Stalled {
    type Output = ();

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        if self.0.load(Ordering::Relaxed) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

//! A strictly first-come-first-served turn (a ticket lock) for one shard's tasks.
//!
//! Why not glommio's `Semaphore`: its `acquire` lets a newcomer take a free permit whenever the
//! waiter list is empty, and a released permit removes the woken waiter from that list before
//! the waiter runs. A task arriving in between takes the permit first, and the woken waiter
//! queues again at the back: arrival order is not kept. Appends must keep it (a connection's
//! requests take effect in the order they arrived), so the partition's turn is a ticket lock.
//!
//! Invariants:
//! - The ticket is taken when [`Turn::ticket`] is called (synchronously), not when the returned
//!   future is first polled: the caller's order of calls is the order of service.
//! - Tickets are served in increasing order, one at a time; a ticket whose future is dropped
//!   before being served is skipped, so an abandoned waiter never blocks the ones behind it.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// A FIFO turn: one holder at a time, served in the order tickets were taken.
#[derive(Debug, Default)]
pub struct Turn {
    next_ticket: Cell<u64>,
    /// The ticket being served (held, or woken and about to run).
    serving: Cell<u64>,
    /// Wakers of tickets waiting for their turn.
    waiting: RefCell<BTreeMap<u64, Waker>>,
    /// Tickets given up before their turn came: skipped when reached.
    abandoned: RefCell<BTreeSet<u64>>,
}

impl Turn {
    pub fn new() -> Turn {
        Turn::default()
    }

    /// Takes the next ticket now; the future resolves once every earlier ticket is done.
    pub fn ticket(self: &Rc<Self>) -> Ticket {
        let ticket = self.next_ticket.get();
        self.next_ticket.set(ticket + 1);
        Ticket {
            turn: self.clone(),
            ticket,
            served: false,
        }
    }

    /// Tickets taken and not yet done (held or waiting).
    pub fn queued(&self) -> u64 {
        self.next_ticket.get() - self.serving.get()
    }

    /// Ends the current turn and hands it to the next live ticket.
    fn advance(&self) {
        let mut next = self.serving.get() + 1;
        {
            let mut abandoned = self.abandoned.borrow_mut();
            while abandoned.remove(&next) {
                next += 1;
            }
        }
        self.serving.set(next);
        if let Some(waker) = self.waiting.borrow_mut().remove(&next) {
            waker.wake();
        }
    }
}

/// A place in a [`Turn`]'s queue; resolves to the [`TurnGuard`] that holds the turn.
#[must_use = "a ticket holds a place in the queue; drop it to give the place up"]
pub struct Ticket {
    turn: Rc<Turn>,
    ticket: u64,
    served: bool,
}

impl Future for Ticket {
    type Output = TurnGuard;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<TurnGuard> {
        let turn = self.turn.clone();
        if turn.serving.get() == self.ticket {
            turn.waiting.borrow_mut().remove(&self.ticket);
            self.served = true;
            return Poll::Ready(TurnGuard { turn });
        }
        turn.waiting
            .borrow_mut()
            .insert(self.ticket, cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.served {
            return;
        }
        self.turn.waiting.borrow_mut().remove(&self.ticket);
        if self.turn.serving.get() == self.ticket {
            // Our turn came but we will not take it: pass it on.
            self.turn.advance();
        } else {
            self.turn.abandoned.borrow_mut().insert(self.ticket);
        }
    }
}

/// Holds the turn until dropped.
pub struct TurnGuard {
    turn: Rc<Turn>,
}

impl Drop for TurnGuard {
    fn drop(&mut self) {
        self.turn.advance();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The case glommio's semaphore gets wrong: a holder releases while a waiter is queued and a
    /// newcomer asks before the waiter runs. The waiter must still go first.
    #[test]
    fn a_newcomer_does_not_overtake_a_woken_waiter() {
        glommio::LocalExecutor::default().run(async {
            let turn = Rc::new(Turn::new());
            let order = Rc::new(RefCell::new(Vec::new()));
            let held = turn.ticket().await;
            let waiter = {
                let (turn, order) = (turn.clone(), order.clone());
                glommio::spawn_local(async move {
                    let _g = turn.ticket().await;
                    order.borrow_mut().push("waiter");
                })
            };
            glommio::executor().yield_task_queue_now().await; // the waiter is queued
            drop(held);
            // A newcomer arrives before the woken waiter has run.
            let newcomer = {
                let (turn, order) = (turn.clone(), order.clone());
                glommio::spawn_local(async move {
                    let _g = turn.ticket().await;
                    order.borrow_mut().push("newcomer");
                })
            };
            waiter.await;
            newcomer.await;
            assert_eq!(*order.borrow(), ["waiter", "newcomer"]);
        });
    }

    #[test]
    fn tickets_are_served_in_the_order_taken_not_polled() {
        glommio::LocalExecutor::default().run(async {
            let turn = Rc::new(Turn::new());
            let first = turn.ticket();
            let second = turn.ticket();
            // Poll the second first: it must wait for the first.
            let mut second = Box::pin(second);
            assert!(futures::poll!(second.as_mut()).is_pending());
            let g1 = first.await;
            assert!(futures::poll!(second.as_mut()).is_pending());
            drop(g1);
            let _g2 = second.await;
            assert_eq!(turn.queued(), 1);
        });
    }

    #[test]
    fn an_abandoned_ticket_is_skipped() {
        glommio::LocalExecutor::default().run(async {
            let turn = Rc::new(Turn::new());
            let g0 = turn.ticket().await;
            let t1 = turn.ticket();
            let t2 = turn.ticket();
            drop(t1);
            drop(g0);
            let g2 = t2.await;
            // A ticket dropped just as its turn came passes the turn on.
            let t3 = turn.ticket();
            let t4 = turn.ticket();
            drop(g2);
            drop(t3);
            let _g4 = t4.await;
            assert_eq!(turn.queued(), 1);
        });
    }
}

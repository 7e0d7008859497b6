//! Keepalive: KEEPALIVE(R) sent every interval by the client, answered by
//! the peer, and the connection closed (or, when resumable, its transport
//! dropped for a resume) when nothing was received for the max lifetime.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::debug;

use super::Connection;
use crate::error::ConnectionError;
use crate::frame::{Frame, Keepalive};

/// Keepalive settings of an established connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeepaliveParams {
    /// Send KEEPALIVE(R) this often (`None`: this side does not send).
    pub(crate) send_interval: Option<Duration>,
    /// Close when nothing was received for this long.
    pub(crate) max_lifetime: Duration,
}

impl Connection {
    /// The earlier of the next KEEPALIVE to send and the end of the max
    /// lifetime.
    pub(super) fn keepalive_deadline(&self) -> Instant {
        let dead = self.last_received + self.keepalive.max_lifetime;
        self.next_keepalive.map_or(dead, |k| k.min(dead))
    }

    /// Called on every tick, before the timers run.
    pub(super) fn keepalive_tick(&mut self, now: Instant) {
        if self.inflight_oneway >= self.config.max_concurrent_inbound_streams {
            // Reading is paused by our own handlers: what the peer sent
            // waits unread, so its silence proves nothing (the peer, whose
            // KEEPALIVEs go unanswered meanwhile, may judge us dead).
            self.last_received = now;
        }
    }

    /// Nothing received for the max lifetime: the connection fails, or a
    /// resumable one marks its transport lost. True when it did either.
    pub(super) fn keepalive_expired(&mut self, now: Instant) -> bool {
        if now < self.last_received + self.keepalive.max_lifetime {
            return false;
        }
        if self.resumable() {
            // Resumption replaces the transport instead of ending the
            // connection.
            debug!("keepalive expired; the transport is considered lost");
            self.link_lost = true;
            self.last_received = now;
            return true;
        }
        self.fail(ConnectionError::KeepaliveTimeout);
        true
    }

    /// Sends KEEPALIVE(R) when the interval is up.
    pub(super) fn keepalive_send(&mut self, now: Instant) {
        let (Some(next), Some(interval)) = (self.next_keepalive, self.keepalive.send_interval)
        else {
            return;
        };
        if now >= next {
            self.push_control(Frame::Keepalive(Keepalive {
                respond: true,
                last_received_position: 0,
                data: Bytes::new(),
            }));
            self.next_keepalive = Some(now + interval);
        }
    }

    /// A KEEPALIVE arrived: answered when it asks for it (its position was
    /// taken by the resume state already).
    pub(super) fn on_keepalive(&mut self, k: Keepalive) {
        // Periodic and rare: a good time to give back a burst's memory.
        self.streams.shrink_if_sparse();
        if k.respond {
            self.push_control(Frame::Keepalive(Keepalive {
                respond: false,
                last_received_position: 0,
                data: k.data,
            }));
        }
    }
}

//! Attach tickets: single-use, short-lived credentials for one session's terminal, for
//! clients that cannot send an `Authorization` header on a WebSocket upgrade (browsers).
//!
//! A ticket is issued to a caller that holds an API token, names one session, works once and
//! only for [`TICKET_LIFETIME`]; it goes in the attach URL, where the API token must never go
//! (URLs end up in proxy logs and browser history). Only its SHA-256 digest is kept.

use std::collections::HashMap;
use std::io::Read as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use super::{SessionId, lock};

/// How long a ticket works: long enough to open a socket right after asking for it.
pub const TICKET_LIFETIME: Duration = Duration::from_secs(60);
/// Random bytes in a ticket (hex-encoded in the URL).
const TICKET_BYTES: usize = 32;

/// The tickets issued and not yet used or expired.
#[derive(Default)]
pub struct Tickets {
    issued: Mutex<HashMap<[u8; 32], (SessionId, Instant)>>,
}

/// Why a ticket could not be issued.
#[derive(Debug, thiserror::Error)]
#[error("failed to read random bytes for a ticket: {0}")]
pub struct TicketError(#[from] std::io::Error);

impl Tickets {
    /// A new ticket for `session`.
    pub fn issue(&self, session: SessionId) -> Result<String, TicketError> {
        let mut random = [0u8; TICKET_BYTES];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut random)?;
        let ticket = hex::encode(random);
        let now = Instant::now();
        let mut issued = lock(&self.issued);
        issued.retain(|_, (_, at)| now.duration_since(*at) < TICKET_LIFETIME);
        issued.insert(digest(&ticket), (session, now));
        Ok(ticket)
    }

    /// Uses up `ticket`: true when it was issued for `session` and has not expired. A ticket
    /// presented for another session is used up too, so it cannot be tried twice.
    pub fn redeem(&self, session: SessionId, ticket: &str) -> bool {
        let found = lock(&self.issued).remove(&digest(ticket));
        found
            .is_some_and(|(issued_for, at)| issued_for == session && at.elapsed() < TICKET_LIFETIME)
    }
}

fn digest(ticket: &str) -> [u8; 32] {
    Sha256::digest(ticket.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_works_once_and_only_for_its_session() {
        let tickets = Tickets::default();
        let (mine, other) = (SessionId::new(), SessionId::new());
        let ticket = tickets.issue(mine).expect("a ticket");
        assert_eq!(ticket.len(), 2 * TICKET_BYTES);
        assert!(tickets.redeem(mine, &ticket));
        assert!(!tickets.redeem(mine, &ticket), "used up");

        let ticket = tickets.issue(mine).expect("a ticket");
        assert!(!tickets.redeem(other, &ticket));
        assert!(!tickets.redeem(mine, &ticket), "used up by the wrong try");
        assert!(!tickets.redeem(mine, "not-a-ticket"));
    }
}

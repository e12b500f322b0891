//! One socket per address family, shared by every check of a kind and opened at first use
//! (a process without such targets opens none), then again once the one in use broke: the
//! slots of [`super::icmp_socket::IcmpSockets`] and [`super::dns_socket::DnsSockets`].

use std::io;
use std::sync::{Arc, Mutex};

/// A shared socket that can tell it is no longer usable.
pub trait Shared {
    /// Whether its demultiplexer gave up on it: the next round opens another.
    fn broken(&self) -> bool;
}

pub struct PerFamily<S> {
    v4: Mutex<Option<Arc<S>>>,
    v6: Mutex<Option<Arc<S>>>,
}

impl<S> Default for PerFamily<S> {
    fn default() -> Self {
        Self {
            v4: Mutex::new(None),
            v6: Mutex::new(None),
        }
    }
}

impl<S: Shared> PerFamily<S> {
    /// The socket of the family (`v4` or not): the one open unless it broke, else one
    /// `open` makes (and keeps). A failed `open` keeps nothing: the next call tries again.
    pub fn get(&self, v4: bool, open: impl FnOnce() -> io::Result<S>) -> io::Result<Arc<S>> {
        let slot = if v4 { &self.v4 } else { &self.v6 };
        let mut slot = slot.lock().expect("socket slot lock");
        if let Some(s) = slot.as_ref()
            && !s.broken()
        {
            return Ok(s.clone());
        }
        let socket = Arc::new(open()?);
        *slot = Some(socket.clone());
        Ok(socket)
    }

    /// The sockets open now, of both families.
    pub fn open(&self) -> impl Iterator<Item = Arc<S>> {
        [&self.v4, &self.v6]
            .into_iter()
            .filter_map(|slot| slot.lock().expect("socket slot lock").clone())
    }
}

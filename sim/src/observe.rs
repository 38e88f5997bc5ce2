//! What crosses the links, reported by the world to whoever watches.
//!
//! The world ([`crate::world`]) reports every frame with its ground truth: which user and
//! relay, what it carried. It is the [`Observer`]'s job to look only at what its adversary
//! may see (`crate::attack` applies those rules in one place); the world never decides what is
//! observable. Times are simulation milliseconds: an upstream frame at the moment the client
//! sends it, a downstream or relay-to-relay frame at the moment the relay sends it.

/// What a client → relay frame carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Up {
    /// A cover frame (DROP): a paced tick with nothing waiting, or additive cover.
    Cover,
    /// A SEND of message `msg` into a queue on this relay.
    Send(u32),
    /// A FWD of message `msg`, to be forwarded to its queue's relay.
    Fwd(u32),
    /// Only acknowledgements (and other small commands).
    Ack,
}

/// What a relay → client frame carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Down {
    /// A cover frame.
    Cover,
    /// Message `msg`, pushed on the client's subscription.
    Msg(u32),
    /// Only answers to the client's commands.
    Answer,
}

/// A message, as the world knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsgInfo {
    /// Message id (unique among messages alive at once; ids are reused after deletion).
    pub id: u32,
    /// Author.
    pub from: u32,
    /// Recipient (the author itself for a loop).
    pub to: u32,
    /// A loop (cover) rather than a message to a contact.
    pub is_loop: bool,
    /// When the author wrote it (ms).
    pub written_at: u64,
}

/// Receives everything the world does, in non-decreasing time order.
pub trait Observer {
    /// A client → relay frame.
    fn up(&mut self, t: u64, user: u32, relay: u32, what: Up);
    /// A relay → client frame.
    fn down(&mut self, t: u64, user: u32, relay: u32, what: Down);
    /// A forwarded message on a relay → relay link.
    fn relay_link(&mut self, t: u64, from: u32, to: u32, msg: &MsgInfo);
    /// Ground truth: a message left its author (in the frame reported just before).
    fn sent(&mut self, t: u64, msg: &MsgInfo);
    /// Ground truth: a message reached its recipient for the first time.
    fn delivered(&mut self, t: u64, msg: &MsgInfo);
    /// A user's client connected (`true`) or disconnected.
    fn session(&mut self, t: u64, user: u32, online: bool);
}

//! The profile's settings: the relays it knows (the first is the default receive relay)
//! and their create passwords, the relay it sends through (FWD, so that contacts' relays see
//! that relay instead of this client's address), and its SOCKS5 proxy.
//!
//! It does not connect to anything: it only reads and changes the profile, and tells the
//! sending side which relay to forward through (`Agent::through_for`; with a traffic policy
//! and no relay chosen, the default relay).

use sotto_protocol::RelayAddress;

use super::state::StateError;
use super::{Agent, AgentError};

impl Agent {
    /// Known relays; the first is the default receive relay.
    ///
    /// # Errors
    /// Store errors.
    pub fn relays(&self) -> Result<Vec<RelayAddress>, AgentError> {
        let st = self.store.read()?;
        st.relays
            .iter()
            .map(|r| {
                r.parse()
                    .map_err(|_| AgentError::State(StateError("relay address")))
            })
            .collect()
    }

    /// Adds a relay (no-op if known). The first relay added is the default.
    ///
    /// # Errors
    /// [`AgentError::BadRelayAddress`], store errors.
    pub fn add_relay(&self, addr: &str) -> Result<RelayAddress, AgentError> {
        self.add_relay_with_password(addr, None)
    }

    /// Adds a relay as [`Agent::add_relay`] does and, for a private relay, sets the create
    /// password its queues need (`None` keeps any password set before).
    ///
    /// # Errors
    /// As [`Agent::add_relay`].
    pub fn add_relay_with_password(
        &self,
        addr: &str,
        create_password: Option<&str>,
    ) -> Result<RelayAddress, AgentError> {
        let a = parse_relay(addr)?;
        let text = a.to_string();
        self.store.update(|st| {
            if !st.relays.contains(&text) {
                st.relays.push(text.clone());
            }
            if let Some(p) = create_password {
                st.create_passwords.insert(text.clone(), p.to_owned());
            }
            Ok::<_, AgentError>(())
        })?;
        Ok(a)
    }

    /// Removes a relay from the list (queues on it keep working until rotated away).
    ///
    /// # Errors
    /// [`AgentError::UnknownRelay`], store errors.
    pub fn remove_relay(&self, spec: &str) -> Result<RelayAddress, AgentError> {
        let a = self.resolve_relay(Some(spec))?;
        let text = a.to_string();
        self.store.update(|st| {
            let before = st.relays.len();
            st.relays.retain(|r| *r != text);
            if st.relays.len() == before {
                return Err(AgentError::UnknownRelay(spec.to_owned()));
            }
            Ok(())
        })?;
        Ok(a)
    }

    /// A relay from a `--via`-style argument: a full address, or a known relay named by its
    /// address, `host:port` or host. `None`: the default relay.
    ///
    /// # Errors
    /// [`AgentError::NoRelay`], [`AgentError::UnknownRelay`],
    /// [`AgentError::BadRelayAddress`].
    pub fn resolve_relay(&self, spec: Option<&str>) -> Result<RelayAddress, AgentError> {
        let known = self.relays()?;
        let Some(spec) = spec else {
            return known.into_iter().next().ok_or(AgentError::NoRelay);
        };
        if spec.starts_with(sotto_protocol::address::SCHEME) {
            return parse_relay(spec);
        }
        let matches: Vec<RelayAddress> = known
            .into_iter()
            .filter(|r| r.host_port() == spec || r.host.to_string() == spec)
            .collect();
        match <[RelayAddress; 1]>::try_from(matches) {
            Ok([one]) => Ok(one),
            Err(_) => Err(AgentError::UnknownRelay(spec.to_owned())),
        }
    }

    /// The relay this profile sends through by default (FWD, `docs/protocol.md` § 10a):
    /// messages and contact set-up go to the contact's relay through it, so that relay
    /// sees it instead of this client's address. `None`: sent directly.
    ///
    /// # Errors
    /// Store errors, a damaged stored address.
    pub fn send_through(&self) -> Result<Option<RelayAddress>, AgentError> {
        let st = self.store.read()?;
        st.send_through
            .as_deref()
            .map(|r| {
                r.parse()
                    .map_err(|_| AgentError::State(StateError("send-through relay")))
            })
            .transpose()
    }

    /// Sets the profile's default relay to send through (`spec` as for `--via`), or with
    /// `None` sends directly again. Applies to this agent at once.
    ///
    /// # Errors
    /// As [`Agent::resolve_relay`], store errors.
    pub fn set_send_through(
        &mut self,
        spec: Option<&str>,
    ) -> Result<Option<RelayAddress>, AgentError> {
        let relay = spec.map(|s| self.resolve_relay(Some(s))).transpose()?;
        let text = relay.as_ref().map(ToString::to_string);
        self.store.update(|st| {
            st.send_through = text.clone();
            Ok::<_, AgentError>(())
        })?;
        self.through = relay.clone();
        Ok(relay)
    }

    /// The profile's SOCKS5 proxy (Tor), through which every relay connection goes (over
    /// TCP, with relay host names resolved by the proxy), if one is set.
    ///
    /// # Errors
    /// Store errors, a damaged stored proxy address.
    pub fn socks5(&self) -> Result<Option<crate::transport::Socks5Proxy>, AgentError> {
        let st = self.store.read()?;
        st.socks5
            .as_deref()
            .map(|p| {
                p.parse()
                    .map_err(|_| AgentError::State(StateError("SOCKS5 proxy")))
            })
            .transpose()
    }

    /// Sets (or with `None` removes) the profile's SOCKS5 proxy. It applies to connections
    /// made by agents opened from now on.
    ///
    /// # Errors
    /// Store errors.
    pub fn set_socks5(
        &mut self,
        proxy: Option<&crate::transport::Socks5Proxy>,
    ) -> Result<(), AgentError> {
        let text = proxy.map(ToString::to_string);
        self.store.update(|st| {
            st.socks5 = text.clone();
            Ok::<_, AgentError>(())
        })?;
        Ok(())
    }

    /// Sends through `spec` (as for `--via`) for the rest of this agent's life, whatever
    /// the profile's default (the CLI's `--through`).
    ///
    /// # Errors
    /// As [`Agent::resolve_relay`].
    pub fn override_send_through(&mut self, spec: &str) -> Result<RelayAddress, AgentError> {
        let relay = self.resolve_relay(Some(spec))?;
        self.through = Some(relay.clone());
        Ok(relay)
    }

    /// The relay to forward a SEND/SKEY for a queue on `dest` through, if any. A queue on
    /// the forwarding relay itself is written to directly (a relay does not forward to
    /// itself).
    pub(super) fn through_for(&self, dest: &RelayAddress) -> Option<RelayAddress> {
        self.effective_through().filter(|t| t.key != dest.key)
    }

    /// The relay SENDs and SKEYs go through: the one chosen (profile or `--through`), or,
    /// with a traffic policy, the profile's default relay — so that every send leaves on a
    /// paced link the agent holds anyway (`docs/client.md` § Traffic policy).
    pub(super) fn effective_through(&self) -> Option<RelayAddress> {
        if self.through.is_some() || self.opts.traffic.send.is_none() {
            return self.through.clone();
        }
        self.resolve_relay(None).ok()
    }
}

/// A relay address as given by the person (surrounding spaces ignored).
fn parse_relay(text: &str) -> Result<RelayAddress, AgentError> {
    text.trim()
        .parse()
        .map_err(|source| AgentError::BadRelayAddress {
            text: text.to_owned(),
            source,
        })
}

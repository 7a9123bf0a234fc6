//! The per-page ownership record: 4 bytes per page of RAM.
//!
//! Encoding of the `u32`:
//!
//! | bits  | field |
//! |-------|-------|
//! | 11:0  | owner: 0 = host, 1 = engine, 2 + n = VM slot n |
//! | 13:12 | state: 0 = owned, 1 = shared, 2 = pool |
//! | 27:16 | peer, encoded like the owner: the borrower of a shared page, or the VM whose pool holds a pool page |
//!
//! Invariants: `Shared` pages are owned by the host (peer: a VM) or by a VM
//! (peer: the host); `Pool` pages are owned by the engine (peer: a VM). The
//! owner of an `Owned` page has no peer (peer field zero).

// A record names its owner and peer in 12 bits each: host, engine, and
// every VM slot the VM table can hold.
const _: () = assert!(crate::vm::MAX_SLOTS + 2 <= 0xfff);

/// Who owns a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Owner {
    /// The untrusted hypervisor at EL1.
    Host,
    /// The engine itself (its reserve, VM pools, host Stage-2 tables).
    Engine,
    /// The VM in this slot of the VM table.
    Vm(u16),
}

impl Owner {
    const fn encode(self) -> u32 {
        match self {
            Owner::Host => 0,
            Owner::Engine => 1,
            Owner::Vm(n) => (n as u32).wrapping_add(2) & 0xfff,
        }
    }

    const fn decode(v: u32) -> Owner {
        match v & 0xfff {
            0 => Owner::Host,
            1 => Owner::Engine,
            n => Owner::Vm(n.wrapping_sub(2) as u16),
        }
    }
}

/// The state of a page in its owner's hands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PageState {
    /// Only the owner may access it.
    Owned,
    /// The owner has shared it with the peer; both may access it. From the
    /// peer's side the page is *borrowed*.
    Shared,
    /// An engine page in the donated pool of the VM named by the peer.
    Pool,
}

/// One page's ownership record (4 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(transparent)]
pub struct PageRecord(u32);

impl core::fmt::Debug for PageRecord {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:?}/{:?}/{:?}", self.owner(), self.state(), self.peer())
    }
}

impl PageRecord {
    /// A host-owned page: what every page of RAM starts as.
    pub const HOST: PageRecord = PageRecord(0);
    /// An engine-owned page outside any VM pool.
    pub const ENGINE: PageRecord = PageRecord(1);

    /// A page owned outright by `owner`.
    pub const fn owned(owner: Owner) -> Self {
        Self(owner.encode())
    }

    /// A page of `owner` shared with `peer`.
    pub const fn shared(owner: Owner, peer: Owner) -> Self {
        Self(owner.encode() | (1 << 12) | (peer.encode() << 16))
    }

    /// A page in VM slot `vm`'s pool.
    pub const fn pool(vm: u16) -> Self {
        Self(Owner::Engine.encode() | (2 << 12) | (Owner::Vm(vm).encode() << 16))
    }

    /// The owner.
    pub const fn owner(self) -> Owner {
        Owner::decode(self.0)
    }

    /// The state.
    pub const fn state(self) -> PageState {
        match (self.0 >> 12) & 3 {
            1 => PageState::Shared,
            2 => PageState::Pool,
            _ => PageState::Owned,
        }
    }

    /// The borrower of a shared page, or the VM of a pool page.
    pub const fn peer(self) -> Option<Owner> {
        match self.state() {
            PageState::Owned => None,
            _ => Some(Owner::decode(self.0 >> 16)),
        }
    }

    /// Whether the host may access the page (owns it, or borrows it).
    pub fn host_accessible(self) -> bool {
        match self.owner() {
            Owner::Host => true,
            Owner::Vm(_) => self.state() == PageState::Shared && self.peer() == Some(Owner::Host),
            Owner::Engine => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_prints_owner_state_and_peer() {
        let r = PageRecord::shared(Owner::Vm(7), Owner::Host);
        assert_eq!(std::format!("{r:?}"), "Vm(7)/Shared/Some(Host)");
    }

    #[test]
    fn record_is_four_bytes_and_round_trips() {
        assert_eq!(core::mem::size_of::<PageRecord>(), 4);
        for owner in [
            Owner::Host,
            Owner::Engine,
            Owner::Vm(0),
            Owner::Vm(crate::vm::MAX_SLOTS as u16 - 1),
        ] {
            let r = PageRecord::owned(owner);
            assert_eq!(
                (r.owner(), r.state(), r.peer()),
                (owner, PageState::Owned, None)
            );
        }
        let s = PageRecord::shared(Owner::Vm(7), Owner::Host);
        assert_eq!(
            (s.owner(), s.state(), s.peer()),
            (Owner::Vm(7), PageState::Shared, Some(Owner::Host))
        );
        assert!(s.host_accessible());
        let h = PageRecord::shared(Owner::Host, Owner::Vm(3));
        assert!(h.host_accessible());
        let p = PageRecord::pool(9);
        assert_eq!(
            (p.owner(), p.state(), p.peer()),
            (Owner::Engine, PageState::Pool, Some(Owner::Vm(9)))
        );
        assert!(!p.host_accessible());
        assert!(!PageRecord::owned(Owner::Vm(1)).host_accessible());
        assert_eq!(PageRecord::default(), PageRecord::HOST);
    }
}

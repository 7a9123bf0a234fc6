//! Handing a page from one side to another: the one place that decides what
//! the hardware must be told when a page's owner, or the set of worlds that
//! may access it, changes.
//!
//! Every transition of `docs/ownership.md` names itself as a [`Transition`];
//! [`plan`] turns it, with the CPU's [`CachePolicy`], into a [`Plan`]; and
//! `Engine::settle` (in `engine.rs`, above this module) carries the plan out, always in the same order, between
//! the moment the losing side's Stage-2 entries are gone (their CPU TLBI
//! complete) and the moment the gaining side's entries are written:
//!
//! 1. the host's DMA view forgets the pages and the IOMMU confirms it
//!    (`CMD_SYNC`), if the host lost them: the IOMMU walks the host's own
//!    Stage-2, so the entries are already gone, but its TLB may still hold
//!    them;
//! 2. the pages are zeroed, if their contents reach a world that did not own
//!    them (a scrub);
//! 3. their data-cache lines are cleaned and invalidated to the point of
//!    coherency, if the side that gains them (or keeps them alone) may
//!    access them non-cacheably: that is, unless `HCR_EL2.FWB` is set while
//!    that side runs and its Stage-2 leaves of RAM use the forced
//!    write-back encoding (then every access it makes sees the same lines
//!    as every other cacheable access, and nothing stale can be seen or
//!    written back over what it writes);
//! 4. their instruction-cache lines are invalidated to the point of
//!    unification, if the gaining side may execute them and `CTR_EL0.DIC` is
//!    0 (with the data first cleaned to the PoU where step 3 did not already
//!    clean it and `CTR_EL0.IDC` is 0);
//! 5. one `dsb ish` completes all of it.
//!
//! Nothing else in the engine issues cache maintenance or a DMA invalidation
//! for a transition, so what each transition gets can be read in one table
//! ([`plan`]) and checked per transition on the recorded request log
//! (`tests/engine/handover.rs`).
//!
//! Why the data-cache clean is needed where the gaining side may access
//! non-cacheably (a guest with its MMU off, a Linux DMA-coherent buffer on
//! the host): a dirty line the old side left could be read by it as stale
//! memory (for a page scrubbed through the engine's cacheable map: the old
//! owner's data, the zeros still in the cache), or, worse, be evicted later
//! and overwrite what it wrote after the old side lost the page: an
//! integrity break with no instruction of the old side after the handover.
//! A side whose every access is forced write-back cannot be hurt that way:
//! its accesses hit the old side's lines (data caches are physically
//! tagged), and an eviction writes back what it wrote. So the clean depends
//! on the *gaining* side's FWB ([`CachePolicy`]): guests always run with
//! FWB where the CPU has it (only the CPU walks a VM's Stage-2), the host
//! only where no other walker of its tables (the SMMU, for its DMA) would
//! misread the FWB encoding. Pages moving into a VM's pool are the
//! exception: only the engine uses them, always through its cacheable EL2
//! map and the cacheable Stage-2 walker, so a dirty line the host left is
//! simply the line the engine's own accesses hit. They leave the pool
//! scrubbed, like every page whose contents change hands.
//!
//! What the losing side left is its own business: stale *clean* lines it
//! kept while it wrote through a non-cacheable alias of its own page can
//! show the gaining side an older version of the losing side's data, never
//! anybody else's (every page that leaves a guest or the pool is scrubbed
//! and cleaned before the host gets it, so no line of a former owner
//! survives into the next).

/// How the CPU's caches behave, read once at boot, and so what the engine
/// must do about them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CachePolicy {
    /// Guests run with `HCR_EL2.FWB` (the CPU has FEAT_S2FWB) and every VM's
    /// Stage-2 leaves of RAM use the forced write-back encoding: no guest
    /// can access its memory non-cacheably. Only the CPU walks a VM's
    /// Stage-2, so this needs nothing of any other agent.
    pub fwb_guest: bool,
    /// The host runs with `HCR_EL2.FWB` too and its Stage-2 leaves of RAM
    /// use the forced encoding: only where every other walker of the host's
    /// tables (the SMMU, which translates the host's DMA through them)
    /// honours it. Implies [`CachePolicy::fwb_guest`] on a real CPU (the
    /// same feature), though [`plan`] needs no such assumption.
    pub fwb_host: bool,
    /// `CTR_EL0.DIC`: instruction-cache invalidation to the PoU is not needed
    /// for data to be seen by instruction fetches.
    pub dic: bool,
    /// `CTR_EL0.IDC`: data-cache cleaning to the PoU is not needed for data
    /// to be seen by instruction fetches.
    pub idc: bool,
}

impl CachePolicy {
    /// A CPU that needs every kind of maintenance: no FWB, `DIC` and `IDC`
    /// clear. The default of test machines.
    pub const MAINTAIN_ALL: CachePolicy = CachePolicy {
        fwb_guest: false,
        fwb_host: false,
        dic: false,
        idc: false,
    };
}

impl Default for CachePolicy {
    fn default() -> Self {
        Self::MAINTAIN_ALL
    }
}

/// Every way a page changes hands (owner, or who may access it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// `Share`: a host page is lent to a VM (`exec`: it may execute it).
    HostLends {
        /// The VM's mapping is executable.
        exec: bool,
    },
    /// `Donate`: host pages become a VM's.
    HostDonates {
        /// The VM's mapping is executable.
        exec: bool,
    },
    /// `VmCreate`, `VmTopup`: host pages become the engine's (a VM's pool).
    HostToPool,
    /// `Unshare`, or `VmDestroy` of a lent page: the VM loses a page the host
    /// lent it; the host never lost it.
    LendEnds,
    /// Guest `Share`: the host gains access to a guest page.
    GuestShares,
    /// Guest `Unshare`, or `VmDestroy` of a page the guest shared: the host
    /// loses access to a guest page.
    GuestUnshares,
    /// `Relinquish`, `Reclaim`, or a `Donate` undone after the VM could see
    /// its pages: a VM page goes back to the host, scrubbed.
    VmToHost,
    /// `VmDestroy`: a pool page (tables, contexts, free pages) goes back to
    /// the host, scrubbed.
    PoolToHost,
    /// A `Donate`, `VmCreate` or `VmTopup` undone before any other world
    /// could see the pages: the host gets back its own pages, unchanged.
    HostTakesBack,
}

/// What a transition needs, in the order `Engine::settle` does it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// The host lost the pages: its DMA view forgets them, completed.
    pub dma_invalidate: bool,
    /// Zero the pages: their contents reach a world that did not own them.
    pub zero: bool,
    /// Clean and invalidate the data cache to the PoC.
    pub clean_poc: bool,
    /// Clean the data cache to the PoU (only where no PoC clean is done and
    /// the instruction cache is invalidated).
    pub clean_pou: bool,
    /// Invalidate the instruction cache to the PoU.
    pub icache: bool,
}

impl Plan {
    /// Whether the plan asks for nothing.
    pub const fn is_empty(&self) -> bool {
        !(self.dma_invalidate || self.zero || self.clean_poc || self.clean_pou || self.icache)
    }
}

/// The maintenance `t` needs on a CPU whose caches behave as `p` says. The
/// whole policy of the engine is this table; see the module docs for why.
pub const fn plan(t: Transition, p: CachePolicy) -> Plan {
    /// Who gains the pages, or keeps them alone after another side lost
    /// access: the side whose accesses the clean protects.
    enum Gainer {
        Guest,
        Host,
        /// The engine alone (a pool), or nobody new (the host's own pages
        /// back unchanged).
        Engine,
    }
    // (the host loses access, contents are scrubbed, who gains, the gaining
    // side may execute)
    let (host_loses, zero, gainer, gains_exec) = match t {
        Transition::HostLends { exec } => (false, false, Gainer::Guest, exec),
        Transition::HostDonates { exec } => (true, false, Gainer::Guest, exec),
        Transition::HostToPool => (true, false, Gainer::Engine, false),
        // The host keeps alone a page the guest may have written.
        Transition::LendEnds => (false, false, Gainer::Host, false),
        // The host's Stage-2 maps everything it may access executable.
        Transition::GuestShares => (false, false, Gainer::Host, true),
        // The guest keeps alone a page the host may have written.
        Transition::GuestUnshares => (true, false, Gainer::Guest, false),
        Transition::VmToHost | Transition::PoolToHost => (false, true, Gainer::Host, true),
        Transition::HostTakesBack => (false, false, Gainer::Engine, false),
    };
    let clean_poc = match gainer {
        Gainer::Guest => !p.fwb_guest,
        Gainer::Host => !p.fwb_host,
        Gainer::Engine => false,
    };
    let icache = gains_exec && !p.dic;
    let plan = Plan {
        dma_invalidate: host_loses,
        zero,
        clean_poc,
        clean_pou: icache && !clean_poc && !p.idc,
        icache,
    };
    planted(t, plan)
}

/// The planted bugs of this module (cargo features, never for real builds):
/// one transition loses its maintenance, so the per-transition checks and
/// the spec's DMA view can be shown failing.
#[allow(
    unused_variables,
    clippy::needless_return,
    reason = "without a planted-bug feature the body is only `plan`"
)]
const fn planted(t: Transition, plan: Plan) -> Plan {
    #[cfg(feature = "planted-bug-guest-unshare-skips-maintenance")]
    if matches!(t, Transition::GuestUnshares) {
        return Plan {
            dma_invalidate: false,
            zero: false,
            clean_poc: false,
            clean_pou: false,
            icache: false,
        };
    }
    #[cfg(feature = "planted-bug-donate-keeps-dma-view")]
    if matches!(t, Transition::HostDonates { .. }) {
        return Plan {
            dma_invalidate: false,
            ..plan
        };
    }
    plan
}

/// Above this many pages one `ic ialluis` replaces the per-line
/// invalidation (64 `ic ivau` a page): the whole instruction cache refills
/// at a cost bounded by its size, not by the run's.
pub const ICACHE_ALL_ABOVE: u64 = 8;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const ALL: [Transition; 11] = [
        Transition::HostLends { exec: false },
        Transition::HostLends { exec: true },
        Transition::HostDonates { exec: false },
        Transition::HostDonates { exec: true },
        Transition::HostToPool,
        Transition::LendEnds,
        Transition::GuestShares,
        Transition::GuestUnshares,
        Transition::VmToHost,
        Transition::PoolToHost,
        Transition::HostTakesBack,
    ];

    #[test]
    fn no_plan_cleans_to_both_points() {
        // A clean to PoC covers PoU: a plan asks for one or the other.
        for bits in 0u8..16 {
            let p = CachePolicy {
                fwb_guest: bits & 1 != 0,
                fwb_host: bits & 2 != 0,
                dic: bits & 4 != 0,
                idc: bits & 8 != 0,
            };
            for t in ALL {
                let q = plan(t, p);
                assert!(!(q.clean_poc && q.clean_pou), "{t:?} {p:?}");
                // And PoU only for the instruction cache's sake.
                assert!(!q.clean_pou || q.icache, "{t:?} {p:?}");
            }
        }
    }

    #[test]
    fn without_fwb_every_transition_between_worlds_cleans_to_poc() {
        let p = CachePolicy::MAINTAIN_ALL;
        for t in ALL {
            let want = !matches!(t, Transition::HostToPool | Transition::HostTakesBack);
            assert_eq!(plan(t, p).clean_poc, want, "{t:?}");
        }
    }

    #[test]
    fn with_fwb_for_guests_only_what_reaches_the_host_is_cleaned() {
        let p = CachePolicy {
            fwb_guest: true,
            fwb_host: false,
            dic: true,
            idc: true,
        };
        for t in ALL {
            let want = matches!(
                t,
                Transition::LendEnds
                    | Transition::GuestShares
                    | Transition::VmToHost
                    | Transition::PoolToHost
            );
            assert_eq!(plan(t, p).clean_poc, want, "{t:?}");
        }
    }

    #[test]
    fn with_fwb_no_transition_cleans_and_scrubs_still_zero() {
        let p = CachePolicy {
            fwb_guest: true,
            fwb_host: true,
            dic: true,
            idc: true,
        };
        for t in ALL {
            let pl = plan(t, p);
            assert!(!pl.clean_poc && !pl.clean_pou && !pl.icache, "{t:?}");
            assert_eq!(
                pl.zero,
                matches!(t, Transition::VmToHost | Transition::PoolToHost)
            );
        }
    }

    #[test]
    fn the_icache_follows_execute_permission_and_dic() {
        let cases = [
            (Transition::HostDonates { exec: true }, true),
            (Transition::HostDonates { exec: false }, false),
            (Transition::HostLends { exec: true }, true),
            (Transition::VmToHost, true),
            (Transition::PoolToHost, true),
            (Transition::GuestShares, true),
            (Transition::LendEnds, false),
            (Transition::GuestUnshares, false),
            (Transition::HostToPool, false),
        ];
        for (t, exec) in cases {
            for dic in [false, true] {
                for (fwb_guest, fwb_host) in [(false, false), (true, false), (true, true)] {
                    let p = CachePolicy {
                        fwb_guest,
                        fwb_host,
                        dic,
                        idc: false,
                    };
                    let pl = plan(t, p);
                    assert_eq!(pl.icache, exec && !dic, "{t:?} dic {dic}");
                    // Instruction fetches must see the data: cleaned to the
                    // PoC or, under FWB with IDC clear, to the PoU.
                    if pl.icache {
                        assert!(pl.clean_poc || pl.clean_pou, "{t:?} {p:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_plan_is_empty_only_without_any_step() {
        assert!(Plan::default().is_empty());
        let steps = [
            Plan {
                dma_invalidate: true,
                ..Plan::default()
            },
            Plan {
                zero: true,
                ..Plan::default()
            },
            Plan {
                clean_poc: true,
                ..Plan::default()
            },
            Plan {
                clean_pou: true,
                ..Plan::default()
            },
            Plan {
                icache: true,
                ..Plan::default()
            },
        ];
        for p in steps {
            assert!(!p.is_empty(), "{p:?}");
        }
    }

    #[test]
    fn the_dma_view_loses_exactly_what_the_host_loses() {
        for t in ALL {
            let want = matches!(
                t,
                Transition::HostDonates { .. } | Transition::HostToPool | Transition::GuestUnshares
            );
            assert_eq!(
                plan(t, CachePolicy::MAINTAIN_ALL).dma_invalidate,
                want,
                "{t:?}"
            );
        }
    }
}

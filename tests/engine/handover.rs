//! Every ownership transition, checked on the recorded request log: the
//! losing side's Stage-2 entry and its TLBI, the host's DMA view invalidated
//! when the host loses a page, the scrub, the data-cache clean to the PoC
//! (unless the side that gains the page runs with FWB: guests where the CPU
//! has it, the host only where its DMA's walker honours it too), the
//! gaining side's leaf in the memory-attribute encoding its `HCR_EL2.FWB`
//! reads, the instruction-cache invalidation when the page becomes
//! executable for its new side (unless `CTR_EL0.DIC`), one barrier, and only
//! then the gaining side's mapping.
//!
//! The expectations are written here, per transition, independently of
//! `isola::handover::plan`, so a transition that loses its maintenance (the
//! feature `planted-bug-guest-unshare-skips-maintenance`) fails here:
//! `cargo test -p isola --features planted-bug-guest-unshare-skips-maintenance --test engine handover`.

use isola::addr::PhysAddr;
use isola::arch::{ArchEvent, RecordingArch, check_break_before_make};
use isola::engine::Engine;
use isola::handover::CachePolicy;
use isola::hypercall::{GuestExitAction, HostCallOutcome, LoadedVcpu};
use isola::testing::MachineSpec;
use isola_abi::{Exit, GuestCall, HostCall, Status, perms};

const GUEST_RAM: u64 = 0x8000_0000;
const OA: u64 = 0x0000_ffff_ffff_f000;

struct Machine {
    spec: MachineSpec,
    engine: Engine<RecordingArch>,
}

impl Machine {
    fn new(caches: CachePolicy) -> Self {
        let spec = MachineSpec {
            caches,
            ..MachineSpec::default()
        };
        Machine {
            engine: spec.build(RecordingArch::new()),
            spec,
        }
    }

    fn page(&self, i: u64) -> u64 {
        self.spec.page(i).raw()
    }

    fn call(&self, call: HostCall, args: [u64; 5]) -> [u64; 3] {
        let mut regs = [call as u64, args[0], args[1], args[2], args[3], args[4], 0];
        assert_eq!(self.engine.host_call(0, &mut regs), HostCallOutcome::Done);
        assert_eq!(regs[0], Status::Success.raw(), "{call:?}{args:x?}");
        [regs[1], regs[2], regs[3]]
    }

    /// A VM with a 16-page pool at page 16 and one vCPU.
    fn vm(&self) -> u64 {
        let [vm, ..] = self.call(HostCall::VmCreate, [self.page(16), 16, 1, 0, 0]);
        self.call(HostCall::VcpuCreate, [vm, 0, GUEST_RAM, 0, 0]);
        vm
    }

    fn run(&self, vm: u64) -> LoadedVcpu {
        let mut regs = [HostCall::VcpuRun as u64, vm, 0, 0, 0, 0, 0];
        match self.engine.host_call(1, &mut regs) {
            HostCallOutcome::Run(l) => l,
            HostCallOutcome::Done => panic!("VcpuRun: {:?}", Status::from_raw(regs[0] as i64)),
        }
    }

    fn guest(&self, l: &LoadedVcpu, call: GuestCall, ipa: u64) {
        let a = self.engine.guest_hvc(l, [call as u64, ipa, 0, 0, 0, 0, 0]);
        assert_eq!(a, GuestExitAction::Resume, "{call:?}");
        assert_eq!(l.context().x(self.engine.mem(), 0), Status::Success.raw());
    }

    fn stop(&self, l: LoadedVcpu) {
        let mut regs = [0; 7];
        self.engine.finish_run(l, Exit::WFI, &mut regs);
    }

    /// Runs `f` with an empty log and returns what it recorded.
    fn log(&self, f: impl FnOnce()) -> Vec<ArchEvent> {
        self.engine.arch().clear();
        f();
        assert!(!self.engine.arch().overflowed(), "log overflowed");
        let mut ev = Vec::new();
        self.engine.arch().for_each(|e| ev.push(e));
        check_break_before_make(ev.iter().copied()).unwrap();
        ev
    }

    fn host_maps(&self, pa: u64) -> bool {
        self.engine.host_translate(PhysAddr::new(pa)).is_some()
    }
}

/// Who had the page's mapping before: its entry's removal must come first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    /// Nobody loses a mapping here.
    Nobody,
    /// The host's Stage-2 entry (or the block holding it) goes.
    Host,
    /// The VM's level-3 entry for the page goes.
    Vm,
}

/// What one transition must show for one page.
#[derive(Clone, Copy, Debug)]
struct Want {
    loser: Side,
    gainer: Side,
    dma: bool,
    zero: bool,
    clean_poc: bool,
    icache: bool,
}

fn pos(ev: &[ArchEvent], f: impl Fn(&ArchEvent) -> bool) -> Option<usize> {
    ev.iter().position(f)
}

fn covers(pa: u64, first: PhysAddr, pages: u64) -> bool {
    (first.raw()..first.raw() + pages * 4096).contains(&pa)
}

/// Stage-2 MemAttr (bits 5:2) of a RAM leaf: Normal write-back as read with
/// `HCR_EL2.FWB = 0`, and forced write-back as read with `FWB = 1`.
const MEMATTR: u64 = 0b1111 << 2;
const MEMATTR_WB: u64 = 0b1111 << 2;
const MEMATTR_FORCED_WB: u64 = 0b0110 << 2;

/// The MemAttr a RAM leaf of `side`'s Stage-2 must carry under `p`: the
/// encoding that side's `HCR_EL2.FWB` reads as write-back.
fn memattr(side: Side, p: CachePolicy) -> Option<u64> {
    let forced = match side {
        Side::Nobody => return None,
        Side::Host => p.fwb_host,
        Side::Vm => p.fwb_guest,
    };
    Some(if forced {
        MEMATTR_FORCED_WB
    } else {
        MEMATTR_WB
    })
}

/// Checks `ev` for page `pa` against `w` (see the module docs for the order)
/// on a machine with policy `p`.
fn check(ev: &[ArchEvent], pa: u64, w: Want, p: CachePolicy, what: &str) {
    let is = |e: &ArchEvent, v: bool| {
        matches!(*e, ArchEvent::PteWrite { old, new, .. }
        if if v { old & 1 == 0 && new & 1 == 1 && new & OA == pa }
           else { old & 1 == 1 && new & 1 == 0 && (old & OA == pa || (old & OA) <= pa && pa < (old & OA) + 0x20_0000 && old & 2 == 0) })
    };
    // The losing side's entry goes first, then a DSB, a TLBI and a DSB (the
    // BBM checker ran on the whole log already).
    let lost = match w.loser {
        Side::Nobody => None,
        _ => Some(pos(ev, |e| is(e, false)).unwrap_or_else(|| {
            panic!("{what}: the losing side's entry of {pa:#x} is not removed: {ev:?}")
        })),
    };
    let tlbi_done = lost.map(|l| {
        let t = l + pos(&ev[l..], |e| {
            matches!(e, ArchEvent::TlbiIpa { .. } | ArchEvent::TlbiVmid(_))
        })
        .unwrap_or_else(|| panic!("{what}: no TLBI after the unmap of {pa:#x}: {ev:?}"));
        t + pos(&ev[t..], |e| *e == ArchEvent::DsbIsh).unwrap()
    });
    let dma = pos(
        ev,
        |e| matches!(*e, ArchEvent::DmaInvalidate { pa: f, pages } if covers(pa, f, pages)),
    );
    let clean = pos(ev, |e| *e == ArchEvent::CleanDcache(PhysAddr::new(pa)));
    let ic = pos(ev, |e| {
        *e == ArchEvent::InvalIcache(PhysAddr::new(pa)) || *e == ArchEvent::InvalIcacheAll
    });
    let gained = match w.gainer {
        Side::Nobody => None,
        _ => Some(
            ev.iter()
                .rposition(|e| is(e, true))
                .unwrap_or_else(|| panic!("{what}: the gaining side never maps {pa:#x}: {ev:?}")),
        ),
    };
    if let (Some(g), Some(want)) = (gained, memattr(w.gainer, p))
        && let ArchEvent::PteWrite { new, .. } = ev[g]
    {
        assert_eq!(
            new & MEMATTR,
            want,
            "{what}: {pa:#x} mapped for {:?} with MemAttr {:#b} under {p:?}",
            w.gainer,
            (new & MEMATTR) >> 2
        );
    }
    let after_loss = |at: usize, name: &str| {
        if let Some(t) = tlbi_done {
            assert!(
                at > t,
                "{what}: {name} of {pa:#x} before the loser's TLBI completed"
            );
        }
        if let Some(g) = gained {
            assert!(
                at < g,
                "{what}: {name} of {pa:#x} after the gainer's mapping"
            );
            assert!(
                ev[at..g].contains(&ArchEvent::DsbIsh),
                "{what}: no DSB completes the {name} of {pa:#x} before it is mapped"
            );
        }
    };
    match (w.dma, dma) {
        (true, Some(d)) => after_loss(d, "DMA-view invalidation"),
        (true, None) => panic!("{what}: {pa:#x} stays in the host's DMA view: {ev:?}"),
        (false, Some(_)) => panic!("{what}: needless DMA-view invalidation of {pa:#x}"),
        (false, None) => {}
    }
    match (w.clean_poc, clean) {
        (true, Some(c)) => {
            after_loss(c, "clean");
            assert_eq!(
                ev.iter()
                    .filter(|e| **e == ArchEvent::CleanDcache(PhysAddr::new(pa)))
                    .count(),
                1,
                "{what}: {pa:#x} cleaned once"
            );
        }
        (true, None) => panic!("{what}: {pa:#x} changes hands without its clean to PoC: {ev:?}"),
        (false, Some(_)) => panic!("{what}: needless clean of {pa:#x} (FWB, or engine only)"),
        (false, None) => {}
    }
    match (w.icache, ic) {
        (true, Some(i)) => {
            after_loss(i, "I-cache invalidation");
            if let Some(c) = clean {
                assert!(
                    c < i,
                    "{what}: I-cache invalidated before the data is cleaned"
                );
            }
        }
        (true, None) => panic!("{what}: {pa:#x} becomes executable with no I-cache invalidation"),
        (false, Some(_)) => panic!("{what}: needless I-cache invalidation for {pa:#x}"),
        (false, None) => {}
    }
    if w.zero {
        // Zeroing happens in memory (not logged): the page reads zero.
    }
}

const ALL: CachePolicy = CachePolicy::MAINTAIN_ALL;
/// FWB everywhere: no SMMU walks the host's Stage-2 (or it honours S2FWB).
const FWB: CachePolicy = CachePolicy {
    fwb_guest: true,
    fwb_host: true,
    dic: true,
    idc: true,
};
const FWB_NO_DIC: CachePolicy = CachePolicy {
    fwb_guest: true,
    fwb_host: true,
    dic: false,
    idc: false,
};
/// FWB for guests only: the SMMU walks the host's Stage-2 and would misread
/// the forced encoding, so the host runs without it (QEMU virt's machine).
const FWB_GUESTS: CachePolicy = CachePolicy {
    fwb_guest: true,
    fwb_host: false,
    dic: true,
    idc: true,
};
const FWB_GUESTS_NO_DIC: CachePolicy = CachePolicy {
    fwb_guest: true,
    fwb_host: false,
    dic: false,
    idc: false,
};

#[test]
fn every_transition_gets_its_maintenance() {
    for p in [ALL, FWB, FWB_NO_DIC, FWB_GUESTS, FWB_GUESTS_NO_DIC] {
        let m = Machine::new(p);
        // The clean protects the side that gains a page (or keeps it alone)
        // from the other side's lines: needed unless every access of that
        // side is forced write-back.
        let to_guest = !p.fwb_guest;
        let to_host = !p.fwb_host;
        let vm = m.vm();

        // Share, not executable, then executable.
        let lent = m.page(40);
        let ev = m.log(|| {
            m.call(
                HostCall::Share,
                [vm, lent, GUEST_RAM, perms::R | perms::W, 0],
            );
        });
        let w = Want {
            loser: Side::Nobody,
            gainer: Side::Vm,
            dma: false,
            zero: false,
            clean_poc: to_guest,
            icache: false,
        };
        check(&ev, lent, w, p, "Share RW");
        let lent_x = m.page(41);
        let ev = m.log(|| {
            m.call(
                HostCall::Share,
                [vm, lent_x, GUEST_RAM + 0x1000, perms::R | perms::X, 0],
            );
        });
        check(
            &ev,
            lent_x,
            Want {
                icache: !p.dic,
                ..w
            },
            p,
            "Share RX",
        );

        // Unshare (host): the VM loses it, the host never did.
        let ev = m.log(|| {
            m.call(HostCall::Unshare, [vm, lent, GUEST_RAM, 0, 0]);
        });
        let w = Want {
            loser: Side::Vm,
            gainer: Side::Nobody,
            dma: false,
            zero: false,
            clean_poc: to_host,
            icache: false,
        };
        check(&ev, lent, w, p, "host Unshare");

        // Donate: one executable page, then a batch of four.
        let d = m.page(44);
        let ev = m.log(|| {
            m.call(HostCall::Donate, [vm, d, GUEST_RAM + 0x2000, perms::ALL, 0]);
        });
        let w = Want {
            loser: Side::Host,
            gainer: Side::Vm,
            dma: true,
            zero: false,
            clean_poc: to_guest,
            icache: !p.dic,
        };
        check(&ev, d, w, p, "Donate RWX");
        assert!(!m.host_maps(d));
        let ev = m.log(|| {
            m.call(
                HostCall::Donate,
                [vm, m.page(48), GUEST_RAM + 0x4000, perms::R, 4],
            );
        });
        for i in 48..52 {
            check(&ev, m.page(i), Want { icache: false, ..w }, p, "Donate x4");
        }
        assert_eq!(
            ev.iter()
                .filter(|e| matches!(e, ArchEvent::DmaInvalidate { .. }))
                .count(),
            1,
            "one DMA-view invalidation for the batch"
        );

        // The guest shares a page, unshares it, relinquishes another.
        let l = m.run(vm);
        let ev = m.log(|| m.guest(&l, GuestCall::Share, GUEST_RAM + 0x2000));
        let w = Want {
            loser: Side::Nobody,
            gainer: Side::Host,
            dma: false,
            zero: false,
            clean_poc: to_host,
            icache: !p.dic,
        };
        check(&ev, d, w, p, "guest Share");
        assert!(
            m.host_maps(d),
            "the host's Stage-2 (its DMA view) maps it at once"
        );
        let ev = m.log(|| m.guest(&l, GuestCall::Unshare, GUEST_RAM + 0x2000));
        let w = Want {
            loser: Side::Host,
            gainer: Side::Nobody,
            dma: true,
            zero: false,
            clean_poc: to_guest,
            icache: false,
        };
        check(&ev, d, w, p, "guest Unshare");
        assert!(!m.host_maps(d));
        let r = m.page(48);
        m.engine.mem().write_u64(PhysAddr::new(r), 0x5ec2e7);
        let ev = m.log(|| m.guest(&l, GuestCall::Relinquish, GUEST_RAM + 0x4000));
        let w = Want {
            loser: Side::Vm,
            gainer: Side::Host,
            dma: false,
            zero: true,
            clean_poc: to_host,
            icache: !p.dic,
        };
        check(&ev, r, w, p, "Relinquish");
        assert_eq!(m.engine.mem().page_is_zero(PhysAddr::new(r)), Some(true));
        assert!(m.host_maps(r), "a relinquished page is the host's at once");
        // One more shared page, so destroy has one of each kind.
        m.guest(&l, GuestCall::Share, GUEST_RAM + 0x5000);
        m.stop(l);

        // VmDestroy: the lent page back, the shared page private, the pool
        // scrubbed back to the host.
        let shared = m.page(49);
        let ev = m.log(|| {
            m.call(HostCall::VmDestroy, [vm, 0, 0, 0, 0]);
        });
        check(
            &ev,
            lent_x,
            Want {
                loser: Side::Nobody,
                gainer: Side::Nobody,
                dma: false,
                zero: false,
                clean_poc: to_host,
                icache: false,
            },
            p,
            "VmDestroy of a lent page",
        );
        check(
            &ev,
            shared,
            Want {
                loser: Side::Host,
                gainer: Side::Nobody,
                dma: true,
                zero: false,
                clean_poc: to_guest,
                icache: false,
            },
            p,
            "VmDestroy of a guest-shared page",
        );
        for i in 16..32 {
            check(
                &ev,
                m.page(i),
                Want {
                    loser: Side::Nobody,
                    gainer: Side::Host,
                    dma: false,
                    zero: true,
                    clean_poc: to_host,
                    icache: !p.dic,
                },
                p,
                "VmDestroy of a pool page",
            );
            assert!(m.host_maps(m.page(i)));
        }

        // Reclaim of the destroyed VM's pages.
        let ev = m.log(|| {
            m.call(HostCall::Reclaim, [d, 0, 0, 0, 0]);
        });
        check(
            &ev,
            d,
            Want {
                loser: Side::Nobody,
                gainer: Side::Host,
                dma: false,
                zero: true,
                clean_poc: to_host,
                icache: !p.dic,
            },
            p,
            "Reclaim",
        );
        assert!(m.host_maps(d));

        // VmCreate: the pool leaves the host (its DMA view too), uncleaned.
        let ev = m.log(|| {
            m.vm();
        });
        for i in 16..32 {
            check(
                &ev,
                m.page(i),
                Want {
                    loser: Side::Host,
                    gainer: Side::Nobody,
                    dma: true,
                    zero: false,
                    clean_poc: false,
                    icache: false,
                },
                p,
                "VmCreate pool",
            );
        }
    }
}

#[test]
fn the_host_stage2_maps_exactly_the_pages_the_host_may_access() {
    let m = Machine::new(ALL);
    let vm = m.vm();
    m.call(HostCall::Donate, [vm, m.page(40), GUEST_RAM, perms::R, 8]);
    m.call(
        HostCall::Share,
        [vm, m.page(60), GUEST_RAM + 0x10_0000, perms::R, 0],
    );
    m.engine.for_each_page(|pa, rec| {
        assert_eq!(
            m.engine.host_translate(pa).is_some(),
            rec.host_accessible(),
            "{pa:?}: {rec:?}"
        );
    });
}

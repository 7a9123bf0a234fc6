//! The engine's SMMUv3 on QEMU virt: the `isola-smmu` driver over the
//! SMMU's register page (volatile MMIO, `dsb` around doorbells) and the
//! engine memory holding its stream table and queues, behind one ticket
//! lock; the core reaches it through `Arch::dma_invalidate_host` and
//! `Arch::dma_faults` (`arch.rs`).
//!
//! Invariants:
//! - Brought up once, by the boot CPU, before any CPU enters the host; the
//!   stream table and queues are engine memory (the carve-out, never given
//!   to the host), and the SMMU's registers are mapped only at EL2.
//! - Every method that talks to the SMMU holds [`SMMU`]'s lock, which is
//!   innermost: nothing else is locked while it is held. A core transition
//!   calls [`invalidate_host`] holding at most its VM slot and shard locks.
//! - An invalidation the SMMU does not complete never returns (fail
//!   closed): the CPU reports it and waits for ever holding [`SMMU`]'s
//!   lock, so the page it was taking from the host never reaches its new
//!   owner, and no later transition that takes a page from the host
//!   completes either. (`stop::fatal`, which powers the machine off, sits on
//!   a higher layer than the core's architecture boundary that calls this;
//!   see docs/devices.md.)

use core::fmt::Write;

use isola_smmu::{Config, Error, Event, Features, Layout, Memory, Regs, S2Shape, Smmu};
use isola_sync::Mutex;
use isola_sync::atomic::{AtomicU64, Ordering};

/// The SMMU's registers, identity-mapped at EL2 as Device memory.
pub struct Mmio {
    base: u64,
}

impl Regs for Mmio {
    fn read32(&self, off: usize) -> u32 {
        let p = self.base.wrapping_add(off as u64) as *const u32;
        // SAFETY: `base` is the SMMU's register page (128 KiB, both pages),
        // mapped Device at EL2 by `build_map`; `off` is one of the driver's
        // register offsets inside it, 4-byte aligned.
        unsafe { p.read_volatile() }
    }

    fn write32(&self, off: usize, value: u32) {
        let p = self.base.wrapping_add(off as u64) as *mut u32;
        // SAFETY: as for `read32`; the SMMU is the engine's alone.
        unsafe { p.write_volatile(value) }
    }

    fn write64(&self, off: usize, value: u64) {
        let p = self.base.wrapping_add(off as u64) as *mut u64;
        // SAFETY: as for `read32`, 8-byte aligned 64-bit registers.
        unsafe { p.write_volatile(value) }
    }

    fn publish(&self) {
        // SAFETY: a barrier: earlier stores (commands, table entries) are
        // complete before the next register write.
        unsafe { core::arch::asm!("dsb st", options(nostack, preserves_flags)) };
    }

    fn acquire(&self) {
        // SAFETY: a barrier: the register read is complete before later
        // loads of the event queue.
        unsafe { core::arch::asm!("dsb ld", options(nostack, preserves_flags)) };
    }
}

/// Engine memory (the carve-out, identity-mapped read-write at EL2).
pub struct Ram;

impl Memory for Ram {
    fn read_u64(&self, pa: u64) -> u64 {
        // SAFETY: the driver reads only its own structures (stream table,
        // queues), which `init`'s caller placed in the engine's carve-out,
        // identity-mapped and 8-byte aligned.
        unsafe { (pa as *const u64).read_volatile() }
    }

    fn write_u64(&self, pa: u64, value: u64) {
        // SAFETY: as for `read_u64`; nothing else writes these structures.
        unsafe { (pa as *mut u64).write_volatile(value) }
    }
}

/// The driver, once brought up.
static SMMU: Mutex<Option<Smmu<Mmio, Ram>>> = Mutex::new(None);
/// Groups of events already reported on the console.
static REPORTED: AtomicU64 = AtomicU64::new(0);
/// Groups printed; later ones are only counted.
const PRINTED_GROUPS: u64 = 64;

/// Consecutive events of one StreamID, type and direction on one page: a
/// failed DMA of a page faults once per access the device makes.
#[derive(Clone, Copy)]
struct Group {
    sid: u32,
    kind: u8,
    name: &'static str,
    read: bool,
    page: u64,
    count: u64,
}

impl Group {
    fn of(e: &Event) -> Group {
        Group {
            sid: e.sid,
            kind: e.kind,
            name: e.name(),
            read: e.read,
            page: e.addr & !0xfff,
            count: 1,
        }
    }

    fn same(&self, e: &Event) -> bool {
        self.sid == e.sid
            && self.kind == e.kind
            && self.read == e.read
            && self.page == e.addr & !0xfff
    }

    fn report(&self) {
        if REPORTED.fetch_add(1, Ordering::Relaxed) >= PRINTED_GROUPS {
            return;
        }
        let mut what = Line::new();
        if self.kind >= 0x10 {
            let _ = write!(
                what,
                ", {} of page {:#x}",
                if self.read { "read" } else { "write" },
                self.page
            );
        }
        crate::console::say!(
            "SMMU: blocked {} DMA access(es) from StreamID {:#x} ({}{})",
            self.count,
            self.sid,
            self.name,
            what.as_str()
        );
    }
}

/// Reads and checks the features of the SMMU whose registers are at `base`.
pub fn probe(base: u64) -> Result<Features, Error> {
    Smmu::<Mmio, Ram>::probe(&Mmio { base })
}

/// What [`init`] sets up.
pub struct Setup<'a> {
    /// Register page.
    pub base: u64,
    /// Where its structures go.
    pub layout: Layout,
    /// The host Stage-2 (`VTCR_EL2` shape, root).
    pub shape: S2Shape,
    /// The host Stage-2 root.
    pub root: u64,
    /// StreamIDs that translate (the PCI functions found on bus 0).
    pub streams: &'a [u32],
    /// Set `S2FWB` (the CPU runs with `HCR_EL2.FWB`).
    pub fwb: bool,
}

/// Brings the SMMU up: every StreamID in `streams` translates through the
/// host's Stage-2 (VMID 0), every other one aborts.
pub fn init(s: &Setup<'_>) -> Result<(), Error> {
    let cfg = Config {
        layout: s.layout,
        shape: s.shape,
        root: s.root,
        vmid: 0,
        streams: s.streams,
        fwb: s.fwb,
    };
    let smmu = Smmu::init(Mmio { base: s.base }, Ram, &cfg)?;
    *SMMU.lock() = Some(smmu);
    Ok(())
}

/// The host lost `[pa, pa + pages)`: the SMMU's TLBs forget them, completed.
/// Without an SMMU (no PCIe given to the host) there is nothing to do.
/// Out of line: transitions inline their whole path, and this one's
/// registers need not weigh on theirs.
#[inline(never)]
pub fn invalidate_host(pa: u64, pages: u64) {
    let mut g = SMMU.lock();
    let Some(smmu) = g.as_mut() else {
        return;
    };
    if let Err(e) = smmu.invalidate(pa, pages) {
        crate::console::say!(
            "SMMU invalidation of {pages} page(s) at {pa:#x} failed: {e}; \
             no page leaves the host any more"
        );
        // The guard stays alive: every later invalidation waits here too.
        loop {
            isola_sync::spin_hint();
        }
    }
}

/// Drains the SMMU's events and reports them (consecutive events of one
/// StreamID on one page as one line; the first [`PRINTED_GROUPS`] lines),
/// and returns `[events, StreamID of the last, address of the last]`.
/// Cold and out of line: the hypercall dispatcher inlines `Accounting`,
/// and the drain's registers must not weigh on every call's prologue.
#[cold]
#[inline(never)]
pub fn faults() -> [u64; 3] {
    let mut g = SMMU.lock();
    let Some(smmu) = g.as_mut() else {
        return [0; 3];
    };
    let overflows = smmu.count().overflows;
    let mut group: Option<Group> = None;
    let count = smmu.drain(|e| match group.as_mut() {
        Some(gr) if gr.same(&e) => gr.count = gr.count.saturating_add(1),
        _ => {
            if let Some(done) = group.replace(Group::of(&e)) {
                done.report();
            }
        }
    });
    drop(g);
    if let Some(done) = group {
        done.report();
    }
    if count.overflows > overflows {
        crate::console::say!(
            "SMMU: the event queue overflowed; some refused accesses were not recorded"
        );
    }
    let last = count.last.map_or((0, 0), |e| (u64::from(e.sid), e.addr));
    [count.events, last.0, last.1]
}

/// A short formatted line without an allocator.
struct Line {
    buf: [u8; 64],
    len: usize,
}

impl Line {
    const fn new() -> Self {
        Self {
            buf: [0; 64],
            len: 0,
        }
    }

    fn as_str(&self) -> &str {
        core::str::from_utf8(self.buf.get(..self.len).unwrap_or(&[])).unwrap_or("")
    }
}

impl Write for Line {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        // Byte by byte: `copy_from_slice` keeps a length-mismatch panic
        // path the compiler cannot drop here.
        for &b in s.as_bytes() {
            let slot = self.buf.get_mut(self.len).ok_or(core::fmt::Error)?;
            *slot = b;
            self.len = self.len.saturating_add(1);
        }
        Ok(())
    }
}

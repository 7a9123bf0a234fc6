//! The DMA test (`isola.test=dma`, part of `all`): the host drives a PCI
//! device that can master the bus (QEMU's `edu`, with a 4 KiB buffer and a
//! DMA engine) and a device that writes memory past any IOMMU (fw_cfg), and
//! aims them at what it must not reach: a guest's private page, engine pages
//! (a VM's pool: its Stage-2 tables, vCPU context and free list), another
//! VM's page, a page donated a moment before, and the GIC's LPI table bases.
//! Each attack prints its outcome; the pages are then checked byte for byte
//! (a guest copies its page into one the host lent it). Positive controls
//! show the device really does reach host memory, before and after a page
//! goes to a guest and comes back. docs/security.md lists the attacks.

use core::arch::{asm, global_asm};
use core::fmt;

use isola_abi::{Accounting, Exit, GuestCall, HostCall, Status, perms};
use isola_fdt::devices;
use isola_sync::atomic::Ordering;

use crate::calls::hvc;
use crate::console::{fail, failures, line};
use crate::entry::SEA_FAR;

/// How the test prints a line.
type Print = fn(fmt::Arguments<'_>);

/// The test's host memory (unused by the other tests).
const BASE: u64 = 0x6000_0000;
const PAGE: u64 = 4096;
/// Pool pages of each VM.
const POOL_PAGES: u64 = 16;
/// Guest IPAs: code, the private data page, the page the host lends.
const CODE_IPA: u64 = 0x4000_0000;
const DATA_IPA: u64 = 0x4010_0000;
const LENT_IPA: u64 = DATA_IPA + 0x1_0000;

/// QEMU's `edu` device (vendor 0x1234, device 0x11e8): BAR0 registers.
const EDU_ID: u32 = 0x11e8_1234;
const EDU_SRC: u64 = 0x80;
const EDU_DST: u64 = 0x88;
const EDU_CNT: u64 = 0x90;
const EDU_CMD: u64 = 0x98;
/// `EDU_CMD`: start; direction: device buffer to RAM.
const EDU_RUN: u64 = 1;
const EDU_TO_RAM: u64 = 2;
/// The device's buffer, as its DMA engine addresses it.
const EDU_BUF: u64 = 0x4_0000;

/// fw_cfg's DMA address register (QEMU virt: 0x0902_0000 + 16).
const FW_CFG_DMA: u64 = 0x0902_0010;
/// The engine's image (docs/boot.md).
const ENGINE_PA: u64 = 0x4020_0000;

/// GICv3 redistributor registers (RD_base frame).
const GICR_CTLR: u64 = 0x0;
const GICR_PROPBASER: u64 = 0x70;
const GICR_PENDBASER: u64 = 0x78;

/// The test's pages, handed out in order.
struct Pages(u64);

impl Pages {
    fn take(&mut self, n: u64) -> u64 {
        let p = self.0;
        self.0 = self.0.wrapping_add(n.wrapping_mul(PAGE));
        p
    }

    /// `n` pages aligned to `align` bytes.
    fn take_aligned(&mut self, n: u64, align: u64) -> u64 {
        self.0 = self.0.wrapping_add(align.wrapping_sub(1)) & !align.wrapping_sub(1);
        self.take(n)
    }
}

fn call(c: HostCall, a: [u64; 4]) -> [u64; 4] {
    hvc(c as u64, a[0], a[1], a[2], a[3])
}

fn ok(r: [u64; 4]) -> bool {
    r[0] == Status::Success.raw()
}

fn write64(pa: u64, v: u64) {
    // SAFETY: `pa` is host RAM or a device register the host's stage-1
    // maps (devices below 1 GiB, RAM above); the test owns it.
    unsafe { core::ptr::write_volatile(pa as *mut u64, v) }
}

fn read64(pa: u64) -> u64 {
    // SAFETY: as for `write64`.
    unsafe { core::ptr::read_volatile(pa as *const u64) }
}

fn read32(pa: u64) -> u32 {
    // SAFETY: as for `write64`.
    unsafe { core::ptr::read_volatile(pa as *const u32) }
}

fn write32(pa: u64, v: u32) {
    // SAFETY: as for `write64`.
    unsafe { core::ptr::write_volatile(pa as *mut u32, v) }
}

/// Cleans and invalidates a page to the point of coherency (a guest with
/// its MMU off, and the device, see memory, not the host's cache).
fn flush(pa: u64) {
    let mut a = pa;
    while a < pa.wrapping_add(PAGE) {
        // SAFETY: cache maintenance of host RAM the test owns.
        unsafe { asm!("dc civac, {}", in(reg) a, options(nostack)) };
        a = a.wrapping_add(64);
    }
    // SAFETY: a barrier.
    unsafe { asm!("dsb sy", options(nostack)) };
}

/// The address of word `i` of the page at `pa`.
fn word(pa: u64, i: u64) -> u64 {
    pa.wrapping_add(i.wrapping_mul(8))
}

/// Fills a page with a pattern: word `i` is `seed ^ i * 0x0101_0101_0101_0101`.
fn fill(pa: u64, seed: u64) {
    for i in 0..PAGE / 8 {
        write64(word(pa, i), seed ^ i.wrapping_mul(0x0101_0101_0101_0101));
    }
    flush(pa);
}

/// Whether a page holds `fill(_, seed)`'s pattern, byte for byte.
fn holds(pa: u64, seed: u64) -> bool {
    flush(pa);
    (0..PAGE / 8).all(|i| read64(word(pa, i)) == seed ^ i.wrapping_mul(0x0101_0101_0101_0101))
}

/// Zeroes a page.
fn clear(pa: u64) {
    for i in 0..PAGE / 8 {
        write64(word(pa, i), 0);
    }
    flush(pa);
}

/// Whether every byte of a page is zero.
fn zero(pa: u64) -> bool {
    flush(pa);
    (0..PAGE / 8).all(|i| read64(word(pa, i)) == 0)
}

/// The `edu` device, its BAR0 placed by the host.
struct Edu {
    bar: u64,
}

impl Edu {
    /// One DMA of `PAGE` bytes: `to_ram` from the device's buffer to `pa`,
    /// else from `pa` into the buffer. Waits for the device (its engine
    /// runs 100 ms of virtual time after the command).
    fn dma(&self, pa: u64, to_ram: bool) {
        let (src, dst) = if to_ram { (EDU_BUF, pa) } else { (pa, EDU_BUF) };
        write64(self.bar.wrapping_add(EDU_SRC), src);
        write64(self.bar.wrapping_add(EDU_DST), dst);
        write64(self.bar.wrapping_add(EDU_CNT), PAGE);
        write64(
            self.bar.wrapping_add(EDU_CMD),
            EDU_RUN | if to_ram { EDU_TO_RAM } else { 0 },
        );
        while read64(self.bar.wrapping_add(EDU_CMD)) & EDU_RUN != 0 {
            core::hint::spin_loop();
        }
    }

    /// The device writes `pattern` (staged through host page `stage`) to `pa`.
    fn write_page(&self, stage: u64, seed: u64, pa: u64) {
        fill(stage, seed);
        self.dma(stage, false);
        self.dma(pa, true);
    }
}

/// The host's view of bus 0's config space, and the windows to place BARs.
struct Pci {
    ecam: u64,
    mem32: u64,
}

/// The host's scan of its tree (a static: too big for its 16 KiB stack).
struct Scan(core::cell::UnsafeCell<devices::Devices>);
// SAFETY: used by the boot CPU alone, in `find_pci`, once.
unsafe impl Sync for Scan {}
static SCAN: Scan = Scan(core::cell::UnsafeCell::new(devices::Devices::EMPTY));

fn find_pci(tree: &isola_fdt::Fdt<'_>) -> Option<Pci> {
    // SAFETY: only the boot CPU runs the DMA test, once (see `Scan`).
    let d = unsafe { &mut *SCAN.0.get() };
    d.scan(tree).ok()?;
    let n = d.find(devices::Kind::Pcie)?;
    let ecam = n.ranges().first()?.base;
    // The 32-bit memory window: the largest window below 4 GiB after the
    // ECAM (the I/O window is 64 KiB).
    let mem32 = n
        .ranges()
        .iter()
        .skip(1)
        .filter(|r| r.size > 0x1_0000)
        .map(|r| r.base)
        .next()?;
    Some(Pci { ecam, mem32 })
}

/// Finds the `edu` function on bus 0, places its BAR0 at the start of the
/// 32-bit window and turns on memory decoding and bus mastering.
fn edu(pci: &Pci, print: Print) -> Option<Edu> {
    for devfn in 0..256u64 {
        let cfg = pci.ecam.wrapping_add(devfn << 12);
        if read32(cfg) != EDU_ID {
            continue;
        }
        write32(cfg.wrapping_add(0x10), pci.mem32 as u32);
        // Command: memory space, bus master.
        write32(cfg.wrapping_add(0x4), 0x6);
        let bar = u64::from(read32(cfg.wrapping_add(0x10)) & !0xf);
        print(format_args!(
            "dma: edu at 00:{:02x}.{} (StreamID {devfn:#x}), BAR0 at {bar:#x}, bus master on",
            devfn >> 3,
            devfn & 7
        ));
        return Some(Edu { bar });
    }
    None
}

// The DMA test's guest: copies its private page (the IPA in x0) into the
// page the host lent it (x0 + 64 KiB), word by word, then exits with
// `GuestCall::HostCall`; run again, it does it again.
global_asm!(
    r#"
.section .rodata.dma_guest, "a"
.balign 4
.global dma_guest_start
.global dma_guest_end
dma_guest_start:
    mov x5, x0
0:  mov x1, x5
    add x2, x5, #0x10, lsl #12
    mov x3, #512
1:  ldr x4, [x1], #8
    str x4, [x2], #8
    subs x3, x3, #1
    b.ne 1b
    movz x0, #{LO}
    movk x0, #{HI}, lsl #16
    hvc #0
    b 0b
dma_guest_end:
"#,
    LO = const GuestCall::HostCall as u32 & 0xffff,
    HI = const GuestCall::HostCall as u32 >> 16,
);

unsafe extern "C" {
    static dma_guest_start: u8;
    static dma_guest_end: u8;
}

/// A VM whose guest copies its private page into a page the host lent it.
struct Vm {
    handle: u64,
    pool: u64,
    code: u64,
    data: u64,
    lent: u64,
}

impl Vm {
    /// Creates it: pool, code page, private page filled with `seed`'s
    /// pattern, lent page, one vCPU.
    fn new(pages: &mut Pages, seed: u64) -> Result<Vm, &'static str> {
        let data = pages.take(1);
        fill(data, seed);
        Self::with_data(pages, data, || {}, || {})
    }

    /// Creates it around `data` (its private page, as the host left it);
    /// `before_donate` runs right before `Donate` of that page (every other
    /// call that takes pages from the host already made), `after_donate`
    /// right after it returns.
    fn with_data(
        pages: &mut Pages,
        data: u64,
        before_donate: impl FnOnce(),
        after_donate: impl FnOnce(),
    ) -> Result<Vm, &'static str> {
        let pool = pages.take_aligned(POOL_PAGES, 16 * PAGE);
        let r = call(HostCall::VmCreate, [pool, POOL_PAGES, 2, 0]);
        if !ok(r) {
            return Err("VmCreate");
        }
        let handle = r[1];
        let code = pages.take(1);
        let start = &raw const dma_guest_start as u64;
        let end = &raw const dma_guest_end as u64;
        let mut off = 0;
        while start.wrapping_add(off) < end {
            // SAFETY: the code above in the payload's rodata.
            let w = unsafe { core::ptr::read_volatile(start.wrapping_add(off) as *const u32) };
            write32(code.wrapping_add(off), w);
            off = off.wrapping_add(4);
        }
        flush(code);
        let lent = pages.take(1);
        clear(lent);
        let code_in = call(
            HostCall::Donate,
            [handle, code, CODE_IPA, perms::R | perms::X],
        );
        before_donate();
        let data_in = call(
            HostCall::Donate,
            [handle, data, DATA_IPA, perms::R | perms::W],
        );
        after_donate();
        let steps = [
            code_in,
            data_in,
            call(
                HostCall::Share,
                [handle, lent, LENT_IPA, perms::R | perms::W],
            ),
            call(HostCall::VcpuCreate, [handle, 0, CODE_IPA, DATA_IPA]),
        ];
        if steps.iter().any(|r| !ok(*r)) {
            return Err("setting up the VM");
        }
        Ok(Vm {
            handle,
            pool,
            code,
            data,
            lent,
        })
    }

    /// Runs the guest once: it copies its page into the lent one. Whether
    /// the lent page then holds `seed`'s pattern, byte for byte.
    fn page_holds(&self, seed: u64) -> bool {
        clear(self.lent);
        let r = call(HostCall::VcpuRun, [self.handle, 0, 0, 0]);
        let exit = Exit::decode([r[1], r[2], r[3]]);
        ok(r) && matches!(exit, Some(Exit::HostCall { .. })) && holds(self.lent, seed)
    }

    /// Destroys it and takes back every page.
    fn destroy(&self) -> bool {
        ok(call(HostCall::VmDestroy, [self.handle, 0, 0, 0]))
            && [self.code, self.data]
                .iter()
                .all(|&p| ok(call(HostCall::Reclaim, [p, 0, 0, 0])))
    }
}

/// The engine's count of refused DMA: `(faults, StreamID of the last,
/// address of the last)`.
fn faults() -> (u64, u64, u64) {
    let r = call(HostCall::Accounting, [Accounting::Dma as u64, 0, 0, 0]);
    (r[1], r[2], r[3])
}

fn attack(print: Print, name: &str, outcome: fmt::Arguments<'_>) {
    print(format_args!("attack {name}: {outcome}"));
}

/// The DMA test. `tree` is the host's device tree, `gicr` its first
/// redistributor.
pub fn main(tree: &isola_fdt::Fdt<'_>, gicr: Option<u64>) -> bool {
    let print: Print = line;
    let failed_before = failures();
    let Some(pci) = find_pci(tree) else {
        fail(format_args!("dma: no PCIe host bridge in the device tree"));
        return false;
    };
    let Some(edu) = edu(&pci, print) else {
        fail(format_args!("dma: no edu device on bus 0"));
        return false;
    };
    let mut pages = Pages(BASE);
    let (a, b) = (pages.take(1), pages.take(1));

    // Control: the device copies a host page to another.
    fill(a, 0xc0de);
    edu.dma(a, false);
    clear(b);
    edu.dma(b, true);
    if holds(b, 0xc0de) && faults().0 == 0 {
        print(format_args!(
            "dma: control: the device copied a host page into another, byte for byte"
        ));
    } else {
        fail(format_args!(
            "dma: control: the device did not copy a host page"
        ));
    }

    // fw_cfg's DMA interface writes physical memory past any IOMMU: the
    // engine withholds it, so the host cannot even reach its registers.
    SEA_FAR.store(0, Ordering::Relaxed);
    let pool_link = BASE + 0x10_0000;
    write64(FW_CFG_DMA, pool_link.swap_bytes());
    match SEA_FAR.load(Ordering::Relaxed) {
        far if far == FW_CFG_DMA => attack(
            print,
            "fw-cfg-dma-into-engine",
            format_args!("refused (SEA at {far:#x}: fw_cfg is not mapped for the host)"),
        ),
        far => fail(format_args!(
            "fw_cfg's DMA register was reachable (SEA at {far:#x})"
        )),
    }

    // Two VMs whose guests copy their private page out on demand.
    let vm_a = match Vm::new(&mut pages, 0xa11ce) {
        Ok(v) => v,
        Err(e) => {
            fail(format_args!("dma: VM A: {e}"));
            return false;
        }
    };
    let vm_b = match Vm::new(&mut pages, 0xb0b) {
        Ok(v) => v,
        Err(e) => {
            fail(format_args!("dma: VM B: {e}"));
            return false;
        }
    };
    if !vm_a.page_holds(0xa11ce) || !vm_b.page_holds(0xb0b) {
        fail(format_args!("dma: the guests did not copy their pages out"));
    }

    // A guest's private page, read by the device: it gets nothing of it.
    let before = faults().0;
    fill(a, 0x5a5a);
    edu.dma(a, false);
    edu.dma(vm_a.data, false);
    fill(b, 0x1);
    edu.dma(b, true);
    let (n, _, at) = faults();
    let leaked = (0..PAGE / 8)
        .any(|i| read64(word(b, i)) == 0xa11ce ^ i.wrapping_mul(0x0101_0101_0101_0101));
    let got = if zero(b) {
        "zeros"
    } else if holds(b, 0x5a5a) {
        "its old buffer"
    } else {
        "something else"
    };
    if !leaked && n > before && at & !0xfff == vm_a.data {
        attack(
            print,
            "dma-read-guest-private-page",
            format_args!(
                "refused (the device read {got}, no byte of the guest's page; the SMMU recorded the faults at that page)"
            ),
        );
    } else {
        fail(format_args!(
            "dma: reading a guest page: leaked {leaked}, faults {before} -> {n}, last at {at:#x}"
        ));
    }

    // Engine pages: every page of VM A's pool (its Stage-2 root and tables,
    // its vCPU context, the pool's free list). The pattern's first word is
    // a host page: were the free-list link overwritten, the next VcpuCreate
    // would put vCPU 1's registers there.
    let bait = pages.take(1);
    clear(bait);
    clear(a);
    write64(a, bait);
    flush(a);
    edu.dma(a, false);
    // One page at a time, the engine's record of each checked (a refused
    // page of DMA is up to 1024 faults: the record is read after each).
    let refused = (0..POOL_PAGES).all(|p| {
        let before = faults().0;
        let page = vm_a.pool.wrapping_add(p.wrapping_mul(PAGE));
        edu.dma(page, true);
        let (n, _, at) = faults();
        n > before && at & !0xfff == page
    });
    let created = ok(call(
        HostCall::VcpuCreate,
        [vm_a.handle, 1, CODE_IPA, DATA_IPA],
    ));
    if refused && created && zero(bait) && vm_a.page_holds(0xa11ce) {
        attack(
            print,
            "dma-write-engine-pages",
            format_args!(
                "refused (all {POOL_PAGES} pool pages; VM A's Stage-2, vCPU context and pool free list intact: vCPU 1 not placed in the bait page, which reads zero byte for byte)"
            ),
        );
    } else {
        fail(format_args!(
            "dma: writing the pool: refused {refused}, VcpuCreate {created}, bait zero {}",
            zero(bait)
        ));
    }

    // Another VM's private page.
    let before = faults().0;
    edu.write_page(a, 0xbad, vm_b.data);
    let (n, _, at) = faults();
    if n > before && at & !0xfff == vm_b.data && vm_b.page_holds(0xb0b) {
        attack(
            print,
            "dma-write-other-vm-page",
            format_args!("refused (VM B's page unchanged, byte for byte)"),
        );
    } else {
        fail(format_args!(
            "dma: writing VM B's page: faults {before} -> {n}"
        ));
    }

    // A page donated a moment before: the device wrote it a moment ago (the
    // IOMMU may have cached that translation), then it becomes VM C's
    // private page, and the device tries again as soon as Donate returns.
    let d = pages.take(1);
    let mut warm = false;
    let mut counts = (0, 0, 0);
    let vm_c = Vm::with_data(
        &mut pages,
        d,
        || {
            edu.write_page(a, 0xd0d0, d);
            warm = holds(d, 0xd0d0);
        },
        || {
            counts.0 = faults().0;
            edu.write_page(a, 0xbad2, d);
            (counts.1, _, counts.2) = faults();
        },
    );
    match vm_c {
        Ok(vm_c)
            if warm && counts.1 > counts.0 && counts.2 & !0xfff == d && vm_c.page_holds(0xd0d0) =>
        {
            attack(
                print,
                "dma-into-page-donated-a-moment-before",
                format_args!(
                    "refused (the IOMMU dropped its cached translation before Donate returned; the page unchanged, byte for byte)"
                ),
            );
            // Control: the page comes back, and the device reaches it again.
            if vm_c.destroy() {
                edu.write_page(a, 0xbac5, d);
            }
            if holds(d, 0xbac5) {
                print(format_args!(
                    "dma: control: the device wrote a page before it went to a guest and after it came back (Reclaim), byte for byte"
                ));
            } else {
                fail(format_args!(
                    "dma: the device could not write the reclaimed page"
                ));
            }
        }
        other => fail(format_args!(
            "dma: the page donated a moment before: warm {warm}, faults {} -> {}, VM {}",
            counts.0,
            counts.1,
            other.is_ok()
        )),
    }

    // The GIC's LPI tables: the redistributor's RD_base frame is read-only
    // to the host, so its table bases cannot point anywhere.
    if let Some(rd) = gicr {
        SEA_FAR.store(0, Ordering::Relaxed);
        write64(rd.wrapping_add(GICR_PROPBASER), ENGINE_PA | 0x7 << 56 | 0xf);
        write64(
            rd.wrapping_add(GICR_PENDBASER),
            (ENGINE_PA | 0x1_0000) | 0x7 << 56,
        );
        write32(rd.wrapping_add(GICR_CTLR), 1);
        let (prop, pend, ctlr) = (
            read64(rd.wrapping_add(GICR_PROPBASER)),
            read64(rd.wrapping_add(GICR_PENDBASER)),
            read32(rd.wrapping_add(GICR_CTLR)),
        );
        let sea = SEA_FAR.load(Ordering::Relaxed);
        if prop & 0x000f_ffff_ffff_f000 != ENGINE_PA
            && pend & 0x000f_ffff_ffff_0000 != ENGINE_PA + 0x1_0000
            && ctlr & 1 == 0
            && sea == 0
        {
            attack(
                print,
                "gic-lpi-tables-into-engine",
                format_args!(
                    "refused (writes ignored: GICR_PROPBASER {prop:#x}, GICR_PENDBASER {pend:#x}, GICR_CTLR.EnableLPIs 0)"
                ),
            );
        } else {
            fail(format_args!(
                "dma: GIC: PROPBASER {prop:#x}, PENDBASER {pend:#x}, CTLR {ctlr:#x}, SEA {sea:#x}"
            ));
        }
    }

    if !vm_a.destroy() || !vm_b.destroy() {
        fail(format_args!("dma: destroying the VMs"));
    }
    let (n, sid, at) = faults();
    if n > 0 {
        print(format_args!(
            "dma: Accounting(Dma): the engine counted the refused accesses, the last from StreamID {sid:#x} to page {:#x}",
            at & !0xfff
        ));
    } else {
        fail(format_args!("dma: the engine counted no refused DMA"));
    }
    failures() == failed_before
}

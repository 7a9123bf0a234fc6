//! Making one Linux guest: its memory from the Linux pool, the kernel,
//! initramfs and device tree copied in where the VMM's loader plans them,
//! `VmCreate`, every page of guest RAM donated, vCPU 0 created at the
//! kernel's entry and the others off, and the host's reads of the donated
//! RAM shown refused.

use alloc::vec::Vec;

use isola_abi::{HostCall, PAGE_SIZE, Status, features, perms, vcpu_flags};
use isola_layout::{
    GUEST_INITRD_MAX, GUEST_INITRD_STAGE, GUEST_KERNEL_MAX, GUEST_KERNEL_STAGE, LINUX_POOL_BASE,
    LINUX_POOL_END,
};
use isola_sync::Mutex;
use isola_sync::atomic::{AtomicBool, AtomicU64, Ordering};
use isola_vmm::fdt::{self, Chosen};
use isola_vmm::layout::{Layout, RAM_BASE};
use isola_vmm::loader;
use isola_vmm::vm::Vm;

use super::guest::{self, Console, FREE, Guest, Outcome, State, VCPUS};
use super::{INITRD_LEN, KERNEL_LEN};
use crate::calls::{St, call};
use crate::console::say;
use crate::vms::probe::{clean_page, probe_read};
use crate::vms::tally::is_sea;

/// Guest RAM: 128 MiB.
pub(super) const RAM_BYTES: u64 = 128 << 20;
/// Pool pages given at `VmCreate`: the Stage-2 root (up to 16 concatenated
/// tables), the tables for 128 MiB of 4 KiB pages (64 last-level, a few
/// above), 4 vCPU contexts, and room.
pub(super) const POOL_PAGES: u64 = 160;
/// Alignment of a VM pool (its Stage-2 root may be 16 concatenated tables).
const POOL_ALIGN: u64 = 16 * PAGE_SIZE;

/// The kernel command line: the console on the VMM's PL011 (early too, so
/// a boot that stops before the driver still shows where), the initramfs's
/// init, no address randomisation (the same boot each time), a panic
/// resets at once (PSCI `SYSTEM_RESET`: the host sees it).
fn bootargs(uart: u64, console: Console) -> alloc::string::String {
    let quiet = if console == Console::InitOnly {
        " quiet"
    } else {
        ""
    };
    alloc::format!(
        "console=ttyAMA0 earlycon=pl011,mmio32,{uart:#x} rdinit=/init nokaslr panic=-1{quiet}"
    )
}

/// Next free byte of the Linux pool (bump allocation, never reused).
static NEXT: AtomicU64 = AtomicU64::new(LINUX_POOL_BASE);

/// `n` pages of the Linux pool aligned to `align` bytes.
fn alloc(n: u64, align: u64) -> Option<u64> {
    let mask = align.checked_sub(1)?;
    let start = NEXT.load(Ordering::Relaxed).checked_add(mask)? & !mask;
    let end = start.checked_add(n.checked_mul(PAGE_SIZE)?)?;
    if end > LINUX_POOL_END {
        return None;
    }
    NEXT.store(end, Ordering::Relaxed);
    Some(start)
}

/// The staged bytes QEMU's loader put at `base`, `len` of them (at most
/// `max`).
fn staged(base: u64, len: u64, max: u64) -> Option<&'static [u8]> {
    if len == 0 || len > max {
        return None;
    }
    // SAFETY: host RAM reserved by the memory plan for this staging area,
    // mapped Normal by the host's stage-1 map, written only by QEMU's
    // loader before the run and never by the host.
    Some(unsafe { core::slice::from_raw_parts(base as *const u8, len as usize) })
}

/// Copies `bytes` into guest RAM (host memory at `ram`) at guest address
/// `ipa`, and cleans them to the point of coherency: the guest starts with
/// its MMU and caches off.
fn copy_in(ram: u64, ipa: u64, bytes: &[u8]) {
    let dst = ram.wrapping_add(ipa.wrapping_sub(RAM_BASE));
    // SAFETY: `dst..dst + len` lies in the guest RAM just taken from the
    // Linux pool (the loader's plan keeps every part inside the layout's
    // RAM), still the host's and used by nothing else.
    unsafe {
        core::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            core::ptr::with_exposed_provenance_mut(dst as usize),
            bytes.len(),
        );
    }
    let mut page = dst & !(PAGE_SIZE - 1);
    while page < dst.wrapping_add(bytes.len() as u64) {
        clean_page(page);
        page = page.wrapping_add(PAGE_SIZE);
    }
}

/// The engine's list-register count (`Version`'s feature word).
fn list_registers() -> usize {
    let r = call(HostCall::Version, [0; 6]);
    features::list_registers(r[2])
}

/// Makes guest `k` (boot CPU, alone); `None` after printing why not.
pub(super) fn create(k: usize, console: Console) -> Option<&'static Guest> {
    let kernel = staged(
        GUEST_KERNEL_STAGE,
        KERNEL_LEN.load(Ordering::Relaxed),
        GUEST_KERNEL_MAX,
    );
    let initrd = staged(
        GUEST_INITRD_STAGE,
        INITRD_LEN.load(Ordering::Relaxed),
        GUEST_INITRD_MAX,
    );
    let (Some(kernel), Some(initrd)) = (kernel, initrd) else {
        say!("linux{k}: FAIL the staged kernel or initramfs is missing or too big");
        return None;
    };
    let fail = |what: core::fmt::Arguments<'_>| {
        say!("linux{k}: FAIL {what}");
        crate::vms::tally::count_failure();
    };
    let layout = Layout::new(RAM_BYTES, VCPUS).ok()?;
    let plan = match loader::parse_header(kernel)
        .and_then(|h| loader::plan(&layout, &h, kernel.len() as u64, initrd.len() as u64))
    {
        Ok(p) => p,
        Err(e) => {
            fail(format_args!("the staged kernel cannot be loaded: {e:?}"));
            return None;
        }
    };
    let chosen = Chosen {
        bootargs: bootargs(layout.uart().0, console),
        initrd: plan.initrd,
    };
    let Ok(dtb) = fdt::build(&layout, &chosen) else {
        fail(format_args!("the VMM could not build the device tree"));
        return None;
    };
    let ram_pages = RAM_BYTES / PAGE_SIZE;
    let (Some(pool), Some(ram)) = (alloc(POOL_PAGES, POOL_ALIGN), alloc(ram_pages, 2 << 20)) else {
        fail(format_args!(
            "the Linux pool is too small for another guest"
        ));
        return None;
    };

    // Everything in place while the pages are still the host's.
    copy_in(ram, plan.kernel, kernel);
    if let Some((start, _)) = plan.initrd {
        copy_in(ram, start, initrd);
    }
    copy_in(ram, plan.dtb, &dtb);
    drop(dtb);

    let t_create = crate::irq::now();
    let i_create = guest::instructions();
    let r = call(
        HostCall::VmCreate,
        [pool, POOL_PAGES, VCPUS as u64, 0, 0, 0],
    );
    if r[0] != Status::Success.raw() {
        fail(format_args!("VmCreate: {}", St(r[0])));
        return None;
    }
    let handle = r[1];
    let mut done = 0u64;
    while done < ram_pages {
        let n = ram_pages
            .wrapping_sub(done)
            .min(isola_abi::DONATE_MAX_PAGES);
        let off = done.wrapping_mul(PAGE_SIZE);
        let ipa = RAM_BASE.wrapping_add(off);
        let r = call(
            HostCall::Donate,
            [handle, ram.wrapping_add(off), ipa, perms::ALL, n, 0],
        );
        if r[0] != Status::Success.raw() {
            fail(format_args!(
                "donating {n} pages at IPA {ipa:#x}: {}",
                St(r[0])
            ));
            return None;
        }
        done = done.wrapping_add(n);
    }
    let (pc, x0) = plan.entry();
    for v in 0..VCPUS as u64 {
        let (pc, x0, flags) = if v == 0 {
            (pc, x0, 0)
        } else {
            (0, 0, vcpu_flags::OFF)
        };
        let r = call(HostCall::VcpuCreate, [handle, v, pc, x0, flags, 0]);
        if r[0] != Status::Success.raw() {
            fail(format_args!("VcpuCreate {v}: {}", St(r[0])));
            return None;
        }
    }
    let owned = call(
        HostCall::Accounting,
        [isola_abi::Accounting::Vm as u64, handle, 0, 0, 0, 0],
    )[1];
    say!(
        "linux{k}: Debian's kernel, its initramfs and device tree in {} MiB of guest RAM, all {ram_pages} pages donated (the VM owns {owned}); {VCPUS} vCPUs, 1 on",
        RAM_BYTES >> 20
    );
    // The host can no longer read any of it: the first (kernel), a middle
    // and the last page.
    let probes = [
        ram,
        ram.wrapping_add(RAM_BYTES / 2),
        ram.wrapping_add(RAM_BYTES - PAGE_SIZE),
    ];
    let refused = probes.iter().all(|&pa| probe_read(pa).is_err_and(is_sea));
    if refused {
        say!("linux{k}: host reads of its RAM (first, middle, last page): refused (SEA)");
    } else {
        fail(format_args!("the host could read donated guest RAM"));
    }

    let vm = Vm::new(layout, list_registers());
    guest::add(Guest {
        k,
        handle,
        ram_pa: ram,
        ram_pages,
        pool_pa: pool,
        pool_pages: POOL_PAGES,
        console,
        done: AtomicBool::new(false),
        state: Mutex::new(State {
            vm,
            claim: [FREE; VCPUS],
            next: 0,
            runs: [0; VCPUS],
            last_exit: [0; VCPUS],
            value: [0; VCPUS],
            engine_lrs: [[0; isola_abi::lr::SLOTS]; VCPUS],
            line: Vec::new(),
            exits: [0; guest::KINDS.len()],
            interrupt_calls: 0,
            t_create,
            t_first_line: None,
            t_end: None,
            t_output: t_create,
            i_create,
            i_first_line: None,
            i_end: None,
            error_esr: None,
            outcome: Outcome::Running,
            user_lines: 0,
            failures: u32::from(!refused),
        }),
    })
}

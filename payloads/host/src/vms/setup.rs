//! Setting up: reading the guest image, creating every VM with its memory
//! and vCPUs, and the host's attacks that need no running vCPU.

use isola_abi::{GuestCall, HostCall, PAGE_SIZE, Status, perms};
use isola_guest_payload::{self as guest, Behaviour, ImageHeader, layout};
use isola_sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::pages::{POOL_ALIGN, alloc, alloc_aligned, fill};
use super::plan::{
    ATTACKER, ATTACKER_VM, BEYOND_IPA, ENGINE_PA, GICD_IPA, HOLD, HOLD_VM, MAX_VMS, ORDINARY,
    POOL_PAGES, POWER, POWER_VM, RESET, RESET_VM, Role, VCPUS,
};
use super::probe::{probe_exec, probe_read, probe_write};
use super::records::{READY, RESERVED, Vm, WORLD, seed_of};
use super::run::enlist;
use super::tally::{attack, attack_probe, check, count_failure, totals};
use crate::calls::call;
use crate::calls::{St, hvc6};
use crate::console::say;

/// Ordinary VMs in use (records `0..VM_COUNT`).
pub(super) static VM_COUNT: AtomicUsize = AtomicUsize::new(0);

pub(super) static BEFORE: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];

/// CPU 0: reads the image, creates every VM, makes the attacks that need no
/// running vCPU.
pub(super) fn setup(cpus: usize) -> Option<()> {
    for (b, v) in BEFORE.iter().zip(totals()) {
        b.store(v, Ordering::Relaxed);
    }
    let words =
        [0u64, 8, 16, 24].map(|o| probe_read(layout::IMAGE_LOAD_PA.wrapping_add(o)).unwrap_or(0));
    let Some(header) = ImageHeader::parse(words) else {
        say!(
            "vms: FAIL no guest image at {:#x} (load it with -device loader)",
            layout::IMAGE_LOAD_PA
        );
        count_failure();
        return None;
    };
    say!("vms: guest image found at {:#x}", layout::IMAGE_LOAD_PA);
    // VMs 0 and 1 first (the attacks need two), then the attacker and the
    // power VM, then as many more as wanted and the engine's table holds.
    let wanted = cpus.saturating_mul(2).clamp(4, MAX_VMS);
    for k in 0..2 {
        create_vm(&header, k, &ORDINARY).ok()?;
    }
    create_vm(&header, ATTACKER_VM, &ATTACKER).ok()?;
    create_vm(&header, POWER_VM, &POWER).ok()?;
    create_vm(&header, RESET_VM, &RESET).ok()?;
    create_vm(&header, HOLD_VM, HOLD.get(..cpus.min(HOLD.len()))?).ok()?;
    let mut n = 2;
    while n < wanted {
        match create_vm(&header, n, &ORDINARY) {
            Ok(()) => n = n.wrapping_add(1),
            Err(Some(Status::NoMemory)) if n >= 4 => break,
            Err(_) => return None,
        }
    }
    VM_COUNT.store(n, Ordering::Relaxed);
    say!(
        "vms: created {n} VMs of {VCPUS} vCPUs, an attacker VM of {} vCPUs, two power VMs and a hold VM of {} vCPUs",
        ATTACKER.len(),
        cpus.min(HOLD.len()),
    );
    host_attacks();
    Some(())
}

/// `x0` for a vCPU of `role` in VM `k` (the attacker needs VM 0's data page).
fn x0_for(role: Role, seed: u64) -> u64 {
    let vm0_data = WORLD
        .vms
        .first()
        .map_or(0, |v| v.data_pa.load(Ordering::Relaxed));
    match role {
        Role::Checksum => Behaviour::Checksum.x0(0),
        Role::Mmio => Behaviour::Mmio.x0(0),
        Role::Share => Behaviour::Share.x0(0),
        Role::Demand => Behaviour::Demand.x0(0),
        Role::Attack => Behaviour::Attack.x0(seed),
        Role::ProbeOtherVm => Behaviour::Probe.x0(vm0_data),
        Role::ProbeEngineWrite => Behaviour::Probe.x0(ENGINE_PA | 1),
        Role::ProbeBeyond => Behaviour::Probe.x0(BEYOND_IPA),
        Role::ProbeGic => Behaviour::Probe.x0(GICD_IPA),
        Role::Spin => Behaviour::Spin.x0(0),
        Role::Registers => Behaviour::Registers.x0(0),
        Role::SystemOff => Behaviour::SystemOff.x0(0),
        Role::SystemReset => Behaviour::SystemReset.x0(0),
        Role::HoldMasked => Behaviour::Hold.x0(0),
        Role::HoldVectors => Behaviour::Hold.x0(1),
        Role::VirtualIrq => Behaviour::VirtualIrq.x0(super::plan::VIRQ_TICKS),
        Role::El0 => Behaviour::El0.x0(super::plan::EL0_PASSES),
    }
}

/// Donates `pages` pages from `pa` at `ipa` onwards, as few `Donate`s of
/// up to `DONATE_MAX_PAGES` pages each; checks each succeeds.
fn donate_run(k: usize, handle: u64, pa: u64, ipa: u64, pages: u64, p: u64) -> Option<()> {
    let mut done = 0u64;
    while done < pages {
        let n = pages.wrapping_sub(done).min(isola_abi::DONATE_MAX_PAGES);
        let off = done.wrapping_mul(PAGE_SIZE);
        let r = call(
            HostCall::Donate,
            [handle, pa.wrapping_add(off), ipa.wrapping_add(off), p, n, 0],
        );
        if !check(
            r[0] == Status::Success.raw(),
            format_args!(
                "vm{k}: donate of {n} pages at {:#x}: {}",
                ipa.wrapping_add(off),
                St(r[0])
            ),
        ) {
            return None;
        }
        done = done.wrapping_add(n);
    }
    Some(())
}

/// Creates VM record `k` with one vCPU per role; `Err(Some(NoMemory))` if
/// the engine's VM table is full (not a failure: the caller stops there).
fn create_vm(header: &ImageHeader, k: usize, roles: &[Role]) -> Result<(), Option<Status>> {
    let vm = WORLD.vms.get(k).ok_or(None)?;
    let pool = alloc_aligned(POOL_PAGES, POOL_ALIGN).ok_or(None)?;
    for i in 0..POOL_PAGES {
        fill(pool.wrapping_add(i.wrapping_mul(PAGE_SIZE)), |_| 0);
    }
    let r = call(
        HostCall::VmCreate,
        [pool, POOL_PAGES, roles.len() as u64, 0, 0, 0],
    );
    if k >= 4 && r[0] == Status::NoMemory.raw() {
        return Err(Some(Status::NoMemory));
    }
    if !check(
        r[0] == Status::Success.raw(),
        format_args!("vm{k}: VmCreate: {}", St(r[0])),
    ) {
        return Err(None);
    }
    fill_vm(header, k, vm, pool, r[1], roles).ok_or(None)
}

/// Gives a created VM its memory and vCPUs.
fn fill_vm(
    header: &ImageHeader,
    k: usize,
    vm: &Vm,
    pool: u64,
    handle: u64,
    roles: &[Role],
) -> Option<()> {
    let seed = seed_of(k);
    vm.handle.store(handle, Ordering::Relaxed);
    vm.pool_pa.store(pool, Ordering::Relaxed);
    vm.vcpus.store(roles.len(), Ordering::Relaxed);

    // The image, zero-padded to its memory size (bss and stacks).
    let pages = header.pages();
    let image = alloc(pages)?;
    let image_words = header.image_bytes().div_ceil(8);
    for p in 0..pages {
        let page = image.wrapping_add(p.wrapping_mul(PAGE_SIZE));
        fill(page, |i| {
            let word = p.wrapping_mul(PAGE_SIZE / 8).wrapping_add(i);
            if word < image_words {
                probe_read(layout::IMAGE_LOAD_PA.wrapping_add(word.wrapping_mul(8))).unwrap_or(0)
            } else {
                0
            }
        });
    }
    vm.image_pa.store(image, Ordering::Relaxed);
    donate_run(k, handle, image, layout::IPA_BASE, pages, perms::ALL)?;

    // The private data the checksum covers.
    let data = alloc(layout::DATA_PAGES)?;
    for p in 0..layout::DATA_PAGES {
        let base = p.wrapping_mul(PAGE_SIZE / 8);
        fill(data.wrapping_add(p.wrapping_mul(PAGE_SIZE)), |i| {
            guest::pattern(seed, base.wrapping_add(i))
        });
    }
    vm.data_pa.store(data, Ordering::Relaxed);
    donate_run(
        k,
        handle,
        data,
        layout::DATA_IPA,
        layout::DATA_PAGES,
        perms::R | perms::W,
    )?;

    // One share page per vCPU, owned by the guest.
    let share = alloc(roles.len() as u64)?;
    for p in 0..roles.len() as u64 {
        fill(share.wrapping_add(p.wrapping_mul(PAGE_SIZE)), |_| 0);
    }
    vm.share_pa.store(share, Ordering::Relaxed);
    donate_run(
        k,
        handle,
        share,
        layout::SHARE_IPA,
        roles.len() as u64,
        perms::R | perms::W,
    )?;

    // A page the host lends: the guest may use it but not give it away.
    let borrow = alloc(1)?;
    fill(borrow, |i| i);
    vm.borrow_pa.store(borrow, Ordering::Relaxed);
    let r = call(
        HostCall::Share,
        [
            handle,
            borrow,
            layout::BORROW_IPA,
            perms::R | perms::W,
            0,
            0,
        ],
    );
    check(
        r[0] == Status::Success.raw(),
        format_args!("vm{k}: share borrow page: {}", St(r[0])),
    );

    for (i, role) in roles.iter().enumerate() {
        let r = call(
            HostCall::VcpuCreate,
            [
                handle,
                i as u64,
                layout::IPA_BASE,
                x0_for(*role, seed),
                0,
                0,
            ],
        );
        if !check(
            r[0] == Status::Success.raw(),
            format_args!("vm{k}.{i}: VcpuCreate: {}", St(r[0])),
        ) {
            return None;
        }
        let slot = vm.slot(i)?;
        // SAFETY: setup runs on CPU 0 before the first barrier; no other CPU
        // looks at any slot yet.
        let d = unsafe { &mut *slot.data.get() };
        d.role = *role;
        let reserved = matches!(role, Role::Spin | Role::HoldMasked | Role::HoldVectors);
        let state = if reserved { RESERVED } else { READY };
        if state == READY {
            enlist(k, i);
        }
        slot.state.store(state, Ordering::Release);
    }
    Some(())
}

/// The host's attacks on pages and handles, with VMs created but not run.
fn host_attacks() {
    let (Some(vm0), Some(vm1)) = (WORLD.vms.first(), WORLD.vms.get(1)) else {
        return;
    };
    let (h0, h1) = (vm0.handle(), vm1.handle());
    let image0 = vm0.image_pa.load(Ordering::Relaxed);
    let data0 = vm0.data_pa.load(Ordering::Relaxed);
    let rw = perms::R | perms::W;
    let spare = layout::DEMAND_IPA.wrapping_add(0x10_0000);

    attack_probe("host-read-guest-page", probe_read(data0).map(|_| ()));
    attack_probe("host-write-guest-page", probe_write(data0, 0xbad));
    attack_probe("host-exec-guest-page", probe_exec(image0));
    attack(
        "donate-guest-page-to-second-vm",
        call(HostCall::Donate, [h1, data0, spare, rw, 0, 0])[0],
    );
    attack(
        "share-guest-page-with-second-vm",
        call(HostCall::Share, [h1, data0, spare, rw, 0, 0])[0],
    );
    attack(
        "donate-already-donated-page",
        call(HostCall::Donate, [h0, data0, spare, rw, 0, 0])[0],
    );
    attack(
        "donate-engine-page",
        call(HostCall::Donate, [h0, ENGINE_PA, spare, rw, 0, 0])[0],
    );
    attack(
        "donate-mmio-address",
        call(HostCall::Donate, [h0, 0x0900_0000, spare, rw, 0, 0])[0],
    );
    attack(
        "donate-wild-address",
        call(HostCall::Donate, [h0, 0xffff_ffff_f000, spare, rw, 0, 0])[0],
    );
    if let Some(page) = alloc(1) {
        attack(
            "donate-unaligned-address",
            call(HostCall::Donate, [h0, page | 8, spare, rw, 0, 0])[0],
        );
        attack(
            "donate-without-permissions",
            call(HostCall::Donate, [h0, page, spare, 0, 0, 0])[0],
        );
        attack(
            "donate-onto-mapped-ipa",
            call(HostCall::Donate, [h0, page, layout::IPA_BASE, rw, 0, 0])[0],
        );
    }
    attack(
        "reclaim-page-of-live-vm",
        call(HostCall::Reclaim, [data0, 0, 0, 0, 0, 0])[0],
    );
    attack(
        "unshare-donated-page",
        call(HostCall::Unshare, [h0, data0, layout::DATA_IPA, 0, 0, 0])[0],
    );
    attack(
        "create-vcpu-beyond-count",
        call(HostCall::VcpuCreate, [h0, 7, layout::IPA_BASE, 0, 0, 0])[0],
    );
    attack(
        "create-vcpu-twice",
        call(HostCall::VcpuCreate, [h0, 0, layout::IPA_BASE, 0, 0, 0])[0],
    );
    attack(
        "run-vcpu-of-unknown-vm",
        call(HostCall::VcpuRun, [0xdead_0000_00fe, 0, 0, 0, 0, 0])[0],
    );
    attack(
        "guest-call-from-host",
        hvc6(GuestCall::Share as u64, [layout::DATA_IPA, 0, 0, 0, 0, 0])[0],
    );
}

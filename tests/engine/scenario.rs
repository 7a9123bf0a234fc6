//! Stories a reviewer can follow: a host builds a VM, gives it memory, runs
//! it, shares pages both ways, tears it down and takes its memory back, and
//! at every step the ownership accounting and the page contents are exactly
//! what the ABI promises.

use isola::addr::{Ipa, PhysAddr};
use isola::arch::{ArchEvent, RecordingArch, Vmid, check_break_before_make};
use isola::engine::{Engine, HostAbortAction};
use isola::hypercall::{GuestExitAction, HostCallOutcome, LoadedVcpu, Trap};
use isola::ownership::{Owner, PageRecord, PageState};
use isola::stage2::Perms;
use isola::testing::{GUEST_MMIO, MachineSpec};
use isola_abi::{Accounting, Exit, GuestCall, HostCall, Status, perms};

struct Host {
    spec: MachineSpec,
    engine: Engine<RecordingArch>,
}

impl Host {
    fn new() -> Self {
        let spec = MachineSpec::default();
        Host {
            engine: spec.build(RecordingArch::new()),
            spec,
        }
    }

    fn page(&self, i: u64) -> u64 {
        self.spec.page(i).raw()
    }

    /// Issues a host call; returns `(status, [x1, x2, x3])`.
    fn call(&self, call: HostCall, args: [u64; 4]) -> (Status, [u64; 3]) {
        let mut regs = [call as u64, args[0], args[1], args[2], args[3], 0, 0];
        match self.engine.host_call(0, &mut regs) {
            HostCallOutcome::Done => {}
            HostCallOutcome::Run(_) => panic!("use run() for VcpuRun"),
        }
        (
            Status::from_raw(regs[0] as i64).unwrap(),
            [regs[1], regs[2], regs[3]],
        )
    }

    fn ok(&self, call: HostCall, args: [u64; 4]) -> [u64; 3] {
        let (s, r) = self.call(call, args);
        assert_eq!(s, Status::Success, "{call:?}{args:x?}");
        r
    }

    fn run(&self, h: u64, vcpu: u64, value: u64) -> LoadedVcpu {
        let mut regs = [HostCall::VcpuRun as u64, h, vcpu, value, 0, 0, 0];
        match self.engine.host_call(1, &mut regs) {
            HostCallOutcome::Run(l) => l,
            HostCallOutcome::Done => {
                panic!("VcpuRun failed: {:?}", Status::from_raw(regs[0] as i64))
            }
        }
    }

    /// Ends the run with `exit`; returns what `VcpuRun` gives the host.
    fn finish(&self, l: LoadedVcpu, exit: Exit) -> Exit {
        let mut regs = [0; 7];
        self.engine.finish_run(l, exit, &mut regs);
        assert_eq!(regs[0], Status::Success.raw());
        Exit::decode([regs[1], regs[2], regs[3]]).unwrap()
    }

    fn totals(&self) -> [u64; 3] {
        self.ok(HostCall::Accounting, [Accounting::Totals as u64, 0, 0, 0])
    }

    fn host_reads(&self, pa: u64) -> Option<u64> {
        let p = PhysAddr::new(pa);
        if self.engine.host_translate(p).is_none() {
            let esr = isola::abort::data_abort_esr(8, false, 0, false, true, 0b000111);
            if self.engine.host_abort(0, esr, pa, (pa >> 12) << 4) != HostAbortAction::Retry {
                return None;
            }
        }
        self.engine
            .host_translate(p)
            .map(|t| self.engine.mem().read_u64(t.pa).unwrap())
    }
}

const GUEST_RAM: u64 = 0x8000_0000;

#[test]
fn a_vm_lifecycle_from_creation_to_reclaim() {
    let host = Host::new();
    let total = host.spec.ram_pages;
    assert_eq!(
        host.totals(),
        [total - 8, 8, 0],
        "engine keeps its 8 pages; the host owns the rest"
    );

    // The host writes a secret into a page, then donates it to a new VM.
    let secret = host.page(40);
    assert!(
        host.engine
            .mem()
            .write_bytes(PhysAddr::new(secret), &0x5ec2e7u64.to_le_bytes())
    );
    assert_eq!(
        host.host_reads(secret),
        Some(0x5ec2e7),
        "host can touch its own page"
    );

    let [vm, ..] = host.ok(HostCall::VmCreate, [host.page(16), 8, 2, 0]);
    host.ok(HostCall::VcpuCreate, [vm, 0, GUEST_RAM, 0x1234]);
    host.ok(
        HostCall::Donate,
        [vm, secret, GUEST_RAM, perms::R | perms::W | perms::X],
    );
    assert_eq!(
        host.host_reads(secret),
        None,
        "after Donate the host cannot read it"
    );
    assert_eq!(host.totals(), [total - 8 - 8 - 1, 8 + 8, 1]);
    assert_eq!(
        host.ok(HostCall::Accounting, [Accounting::Vm as u64, vm, 0, 0]),
        [1, 0, 8]
    );

    // The guest runs: it sees its entry state, asks who it is, and reads the page.
    let l = host.run(vm, 0, 0);
    let ctx = l.context();
    let mem = host.engine.mem();
    assert_eq!((ctx.pc(mem), ctx.x(mem, 0)), (GUEST_RAM, 0x1234));
    assert_eq!(
        host.engine
            .guest_hvc(&l, [GuestCall::Info as u64, 0, 0, 0, 0, 0, 0]),
        GuestExitAction::Resume
    );
    assert_eq!(
        [ctx.x(mem, 0), ctx.x(mem, 1), ctx.x(mem, 2), ctx.x(mem, 3)],
        [0, 1 << 16, 0, 2]
    );
    assert_eq!(
        host.engine
            .guest_access(&l, Ipa::new(GUEST_RAM), 8, false, 5),
        GuestExitAction::Resume
    );
    assert_eq!(
        ctx.x(mem, 5),
        0x5ec2e7,
        "the guest sees the donated contents"
    );

    // An access to unmapped guest RAM exits to the host as a MemFault.
    let fault = host
        .engine
        .guest_access(&l, Ipa::new(GUEST_RAM + 0x1008), 4, true, 5);
    assert_eq!(
        fault,
        GuestExitAction::ExitToHost(Exit::MemFault {
            ipa: GUEST_RAM + 0x1000
        })
    );
    assert_eq!(
        host.finish(
            l,
            Exit::MemFault {
                ipa: GUEST_RAM + 0x1000
            }
        ),
        Exit::MemFault {
            ipa: GUEST_RAM + 0x1000
        }
    );

    // The host shares a page with the guest; both can use it.
    let shared = host.page(41);
    host.ok(
        HostCall::Share,
        [vm, shared, GUEST_RAM + 0x1000, perms::R | perms::W],
    );
    assert_eq!(
        host.ok(HostCall::Accounting, [Accounting::Sharing as u64, 0, 0, 0]),
        [1, 0, 0]
    );
    let l = host.run(vm, 0, 0);
    host.engine
        .guest_hvc(&l, [GuestCall::HostCall as u64, 7, 8, 0, 0, 0, 0]);
    l.context().set_x(mem, 6, 0xfeed);
    assert_eq!(
        host.engine
            .guest_access(&l, Ipa::new(GUEST_RAM + 0x1010), 8, true, 6),
        GuestExitAction::Resume
    );
    assert_eq!(
        host.finish(l, Exit::HostCall { args: [7, 8] }),
        Exit::HostCall { args: [7, 8] }
    );
    assert_eq!(
        host.host_reads(shared + 0x10),
        Some(0xfeed),
        "the host sees the guest's write"
    );

    // The guest shares its own page back, the host reads it, the guest unshares it.
    let l = host.run(vm, 0, 99);
    assert_eq!(l.context().x(mem, 1), 99, "the host's reply arrives in x1");
    assert_eq!(l.context().x(mem, 0), 0);
    host.engine
        .guest_hvc(&l, [GuestCall::Share as u64, GUEST_RAM, 0, 0, 0, 0, 0]);
    assert_eq!(l.context().x(mem, 0), 0);
    assert_eq!(host.host_reads(secret), Some(0x5ec2e7));
    assert_eq!(
        host.ok(HostCall::Accounting, [Accounting::Sharing as u64, 0, 0, 0]),
        [1, 1, 0]
    );
    host.engine
        .guest_hvc(&l, [GuestCall::Unshare as u64, GUEST_RAM, 0, 0, 0, 0, 0]);
    assert_eq!(l.context().x(mem, 0), 0);
    assert_eq!(
        host.host_reads(secret),
        None,
        "unshared: the host lost access again"
    );

    // Destroy with the vCPU loaded is refused; after the exit it works.
    assert_eq!(
        host.call(HostCall::VmDestroy, [vm, 0, 0, 0]).0,
        Status::Busy
    );
    host.finish(l, Exit::WFI);
    host.engine.arch().clear();
    host.ok(HostCall::VmDestroy, [vm, 0, 0, 0]);
    let mut tlbi = false;
    host.engine
        .arch()
        .for_each(|e| tlbi |= e == ArchEvent::TlbiVmid(Vmid(1)));
    assert!(tlbi, "destroy invalidates the VM's VMID");
    assert_eq!(
        host.call(HostCall::VcpuRun, [vm, 0, 0, 0]).0,
        Status::NotFound,
        "stale handle"
    );
    assert_eq!(
        host.call(HostCall::Accounting, [Accounting::Vm as u64, vm, 0, 0])
            .0,
        Status::NotFound
    );

    // Pool pages came back scrubbed; the borrowed page came back with its data;
    // the VM's own page awaits reclaim.
    assert_eq!(host.totals(), [total - 8 - 1, 8, 1]);
    assert_eq!(
        host.ok(HostCall::Accounting, [Accounting::Sharing as u64, 0, 0, 0]),
        [0, 0, 1]
    );
    for i in 16..24 {
        assert_eq!(
            host.engine.mem().page_is_zero(PhysAddr::new(host.page(i))),
            Some(true),
            "pool page {i}"
        );
    }
    assert_eq!(host.host_reads(shared + 0x10), Some(0xfeed));
    assert_eq!(host.host_reads(secret), None);

    // Reclaim: the secret page comes back zeroed, and the slot is free again.
    assert_eq!(
        host.call(HostCall::Reclaim, [shared, 0, 0, 0]).0,
        Status::NotOwner
    );
    host.ok(HostCall::Reclaim, [secret, 0, 0, 0]);
    assert_eq!(host.host_reads(secret), Some(0));
    assert_eq!(
        host.engine.mem().page_is_zero(PhysAddr::new(secret)),
        Some(true)
    );
    assert_eq!(host.totals(), [total - 8, 8, 0]);
    assert_eq!(
        host.ok(HostCall::Accounting, [Accounting::Sharing as u64, 0, 0, 0]),
        [0, 0, 0]
    );
    let mut pages = 0;
    host.engine.for_each_page(|_, r| {
        pages += 1;
        assert!(matches!(r.owner(), Owner::Host | Owner::Engine));
        assert_eq!(r.state(), PageState::Owned);
    });
    assert_eq!(pages, total);
}

#[test]
fn donating_a_page_inside_a_host_block_splits_it_break_before_make() {
    // Pages 512..1024 of this machine form a 2 MiB block that is all the
    // host's (the engine's pages are in the first block).
    let spec = MachineSpec {
        ram_pages: 1024,
        ..MachineSpec::default()
    };
    let big = Host {
        engine: spec.build(RecordingArch::new()),
        spec,
    };
    let in_block = big.page(600);
    assert_eq!(big.host_reads(in_block), Some(0));
    let t = big.engine.host_translate(PhysAddr::new(in_block)).unwrap();
    assert_eq!(
        t.level, 2,
        "pages 512..1024 are all the host's: a 2 MiB block"
    );
    let [vm, ..] = big.ok(HostCall::VmCreate, [big.page(16), 8, 1, 0]);
    big.engine.arch().clear();
    big.ok(HostCall::Donate, [vm, in_block, GUEST_RAM, perms::R]);
    let mut ev = Vec::new();
    big.engine.arch().for_each(|e| ev.push(e));
    check_break_before_make(ev.iter().copied()).unwrap();
    let host_tlbi = ev.iter().position(|e| {
        *e == ArchEvent::TlbiIpa {
            vmid: Vmid::HOST,
            ipa: Ipa::new(in_block),
        }
    });
    let guest_map = ev.iter().position(|e| matches!(e, ArchEvent::PteWrite { old: 0, new, .. } if new & !0xfff & 0xffff_ffff_f000 == in_block));
    assert!(
        host_tlbi.unwrap() < guest_map.unwrap(),
        "the host loses the page before the guest gets it"
    );
    assert_eq!(big.engine.host_translate(PhysAddr::new(in_block)), None);
    let n = big
        .engine
        .host_translate(PhysAddr::new(in_block + 0x1000))
        .unwrap();
    assert_eq!(
        (n.level, n.desc.perms()),
        (3, Perms::RWX),
        "the rest of the block stays mapped"
    );
}

#[test]
fn mmio_reads_and_writes_carry_exactly_one_register() {
    let host = Host::new();
    let [vm, ..] = host.ok(HostCall::VmCreate, [host.page(16), 4, 1, 0]);
    host.ok(HostCall::VcpuCreate, [vm, 0, GUEST_RAM, 0]);
    let l = host.run(vm, 0, 0);
    // The world switch loads the VM's own translation: its VMID and root.
    let root = host.engine.vm_summary(vm).unwrap().root.unwrap();
    let vmid = isola::vm::vmid_of(isola::vm::VmHandle(vm).slot());
    assert_eq!(l.vttbr(), u64::from(vmid.0) << 48 | root.raw());
    let mem = host.engine.mem();
    for r in 0..31 {
        l.context()
            .set_x(mem, r, 0x1111_1111_1111_1111 * u64::from(r % 15 + 1));
    }
    let pc = l.context().pc(mem);
    let uart = isola::testing::HOST_UART + 0x18;
    let w = host.engine.guest_access(&l, Ipa::new(uart), 2, true, 3);
    assert_eq!(
        w,
        GuestExitAction::ExitToHost(Exit::Mmio {
            ipa: uart,
            size: 2,
            write: true,
            value: 0x4444
        })
    );
    assert_eq!(l.context().pc(mem), pc + 4, "a store completes at the exit");
    host.finish(
        l,
        Exit::Mmio {
            ipa: uart,
            size: 2,
            write: true,
            value: 0x4444,
        },
    );
    let l = host.run(vm, 0, 0);
    let r = host.engine.guest_access(&l, Ipa::new(uart), 4, false, 9);
    assert_eq!(
        r,
        GuestExitAction::ExitToHost(Exit::Mmio {
            ipa: uart,
            size: 4,
            write: false,
            value: 0
        })
    );
    host.finish(
        l,
        Exit::Mmio {
            ipa: uart,
            size: 4,
            write: false,
            value: 0,
        },
    );
    let l = host.run(vm, 0, 0xaaaa_bbbb_cccc_dddd);
    assert_eq!(
        l.context().x(mem, 9),
        0xcccc_dddd,
        "value truncated to the access size, into x9 only"
    );
    assert_eq!(
        l.context().x(mem, 8),
        0x1111_1111_1111_1111 * 9,
        "x8 untouched"
    );
    assert_eq!(l.context().pc(mem), pc + 8);
    // A syndrome without ISV cannot be emulated: Error, and the vCPU stops.
    let esr = isola::abort::data_abort_esr(4, false, 0, false, true, 0b000111) & !(1 << 24);
    let e = host.engine.guest_exit(
        &l,
        Trap::Sync {
            esr,
            far: uart,
            hpfar: (uart >> 12) << 4,
        },
    );
    assert_eq!(e, GuestExitAction::ExitToHost(Exit::Error { esr }));
    host.finish(l, Exit::Error { esr });
    assert_eq!(
        host.call(HostCall::VcpuRun, [vm, 0, 0, 0]).0,
        Status::Denied
    );
}

#[test]
fn records_are_four_bytes_and_vm_slots_small() {
    assert_eq!(std::mem::size_of::<PageRecord>(), 4);
    let slot = std::mem::size_of::<isola::vm::VmSlot>();
    let shard = std::mem::size_of::<isola::ownership::Shard>();
    println!(
        "PageRecord: 4 bytes/page; Shard: {shard} bytes/shard; VmSlot: {slot} bytes/VM; vCPU context: 1 pool page"
    );
    assert!(
        shard <= 512,
        "shard is {shard} bytes (lock padded to cache lines)"
    );
    assert!(slot <= 512, "VM slot is {slot} bytes");
}

#[test]
fn a_host_share_ends_with_unshare_and_the_guest_loses_the_page() {
    let host = Host::new();
    let [vm, ..] = host.ok(HostCall::VmCreate, [host.page(16), 8, 1, 0]);
    let page = host.page(40);
    host.ok(HostCall::Share, [vm, page, GUEST_RAM + 0x3000, perms::R]);
    assert_eq!(
        host.ok(HostCall::Accounting, [Accounting::Vm as u64, vm, 0, 0]),
        [0, 1, 8]
    );
    assert_eq!(
        host.call(
            HostCall::Unshare,
            [vm, host.page(41), GUEST_RAM + 0x3000, 0]
        )
        .0,
        Status::NotOwner
    );
    assert_eq!(
        host.call(HostCall::Unshare, [vm, page, GUEST_RAM + 0x4000, 0])
            .0,
        Status::NotMapped,
        "the IPA must be where the page was lent"
    );
    assert_eq!(
        host.call(HostCall::Donate, [vm, page, GUEST_RAM, perms::R])
            .0,
        Status::NotOwner
    );
    host.engine.arch().clear();
    host.ok(HostCall::Unshare, [vm, page, GUEST_RAM + 0x3000, 0]);
    let mut ev = Vec::new();
    host.engine.arch().for_each(|e| ev.push(e));
    check_break_before_make(ev.iter().copied()).unwrap();
    assert!(ev.contains(&ArchEvent::TlbiIpa {
        vmid: Vmid(1),
        ipa: Ipa::new(GUEST_RAM + 0x3000)
    }));
    assert_eq!(
        host.engine
            .vm_translate(vm, Ipa::new(GUEST_RAM + 0x3000))
            .unwrap(),
        None
    );
    assert_eq!(
        host.ok(HostCall::Accounting, [Accounting::Vm as u64, vm, 0, 0]),
        [0, 0, 8]
    );
    assert_eq!(
        host.engine.page(PhysAddr::new(page)),
        Some(PageRecord::HOST)
    );
}

#[test]
fn the_host_faults_in_only_what_it_may_touch() {
    let host = Host::new();
    let esr = isola::abort::data_abort_esr(8, true, 0, false, true, 0b000111);
    let fault = |pa: u64| host.engine.host_abort(0, esr, pa, (pa >> 12) << 4);
    // The engine's own pages (host Stage-2 tables) and memory that is neither
    // RAM nor a device the host was given: an external abort.
    assert_eq!(fault(host.page(0)), HostAbortAction::InjectSea);
    assert_eq!(fault(host.page(7) + 0x10), HostAbortAction::InjectSea);
    assert_eq!(fault(0x1_0000_0000), HostAbortAction::InjectSea);
    assert_eq!(
        fault(isola::testing::HOST_UART + 0x1000),
        HostAbortAction::InjectSea
    );
    // Its device: mapped as Device memory, one page.
    assert_eq!(
        fault(isola::testing::HOST_UART + 0x18),
        HostAbortAction::Retry
    );
    let t = host
        .engine
        .host_translate(PhysAddr::new(isola::testing::HOST_UART))
        .unwrap();
    assert_eq!(
        (t.level, t.desc.mem_type()),
        (3, isola::stage2::MemType::Device)
    );
    // A permission fault is never "fixed" by mapping more.
    let perm = isola::abort::data_abort_esr(8, true, 0, false, true, 0b001111);
    assert_eq!(
        host.engine
            .host_abort(0, perm, host.page(40), (host.page(40) >> 12) << 4),
        HostAbortAction::InjectSea
    );
    // A VM's page: refused, before and after the VM is destroyed, until reclaimed.
    let [vm, ..] = host.ok(HostCall::VmCreate, [host.page(16), 8, 1, 0]);
    host.ok(HostCall::Donate, [vm, host.page(40), GUEST_RAM, perms::R]);
    assert_eq!(fault(host.page(40)), HostAbortAction::InjectSea);
    assert_eq!(
        fault(host.page(16)),
        HostAbortAction::InjectSea,
        "pool pages are the engine's"
    );
    host.ok(HostCall::VmDestroy, [vm, 0, 0, 0]);
    assert_eq!(fault(host.page(40)), HostAbortAction::InjectSea);
    assert_eq!(
        host.call(HostCall::Reclaim, [host.page(41), 0, 0, 0]).0,
        Status::NotOwner
    );
    host.ok(HostCall::Reclaim, [host.page(40), 0, 0, 0]);
    assert_eq!(fault(host.page(40)), HostAbortAction::Retry);
}

#[test]
fn failures_roll_back_and_slots_are_reused_only_after_reclaim() {
    let spec = MachineSpec {
        vm_slots: 1,
        ..MachineSpec::default()
    };
    let host = Host {
        engine: spec.build(RecordingArch::new()),
        spec,
    };
    let [a, ..] = host.ok(HostCall::VmCreate, [host.page(16), 4, 1, 0]);
    // A run that crosses a VM's page: NotOwner, and the pages before it stay the host's.
    host.ok(HostCall::Donate, [a, host.page(33), GUEST_RAM, perms::R]);
    let before = host.totals();
    assert_eq!(
        host.call(HostCall::VmTopup, [a, host.page(30), 4, 0]).0,
        Status::NotOwner
    );
    assert_eq!(host.totals(), before);
    for i in 30..33 {
        assert_eq!(
            host.engine.page(PhysAddr::new(host.page(i))),
            Some(PageRecord::HOST)
        );
    }
    // The table is full while `a` lives, and while its page awaits reclaim.
    assert_eq!(
        host.call(HostCall::VmCreate, [host.page(20), 4, 1, 0]).0,
        Status::NoMemory
    );
    assert_eq!(
        host.call(HostCall::Reclaim, [host.page(33), 0, 0, 0]).0,
        Status::Denied,
        "live VM"
    );
    host.ok(HostCall::VmDestroy, [a, 0, 0, 0]);
    assert_eq!(
        host.call(HostCall::VmCreate, [host.page(20), 4, 1, 0]).0,
        Status::NoMemory
    );
    host.ok(HostCall::Reclaim, [host.page(33), 0, 0, 0]);
    let [b, ..] = host.ok(HostCall::VmCreate, [host.page(20), 4, 1, 0]);
    assert_ne!(a, b, "same slot, new generation");
    assert_eq!(b & 0xffff, a & 0xffff);
    assert_eq!(
        host.call(HostCall::VcpuCreate, [a, 0, 0, 0]).0,
        Status::NotFound,
        "stale handle"
    );
    host.ok(HostCall::VcpuCreate, [b, 0, 0, 0]);
    // vCPU checks: index beyond max, twice, pool exhaustion.
    assert_eq!(
        host.call(HostCall::VcpuCreate, [b, 1, 0, 0]).0,
        Status::NotFound
    );
    assert_eq!(
        host.call(HostCall::VcpuCreate, [b, 0, 0, 0]).0,
        Status::Denied
    );
    // Pool: 4 pages = root + context + 2 free; a donation needs 3 tables.
    let before = host.totals();
    assert_eq!(
        host.call(HostCall::Donate, [b, host.page(40), GUEST_RAM, perms::R])
            .0,
        Status::NoMemory
    );
    assert_eq!(host.totals(), before);
    assert_eq!(
        host.engine.vm_usage(b).unwrap(),
        [0, 0, 4, 2, 1],
        "nothing allocated by the failure"
    );
    host.ok(HostCall::VmTopup, [b, host.page(30), 1, 0]);
    host.ok(HostCall::Donate, [b, host.page(40), GUEST_RAM, perms::R]);
    assert_eq!(host.engine.vm_usage(b).unwrap(), [1, 0, 5, 0, 4]);
    assert_eq!(
        host.call(HostCall::Donate, [b, host.page(41), GUEST_RAM, perms::R])
            .0,
        Status::AlreadyMapped
    );
    // Destroy returns every pool page: root, tables, context.
    host.ok(HostCall::VmDestroy, [b, 0, 0, 0]);
    assert_eq!(host.totals(), [spec.ram_pages - 8 - 1, 8, 1]);
}

#[test]
fn the_host_stage2_reserve_covers_every_split() {
    // 4 MiB: host pages in blocks, then every other page donated, so every
    // block is split; the reserve is exactly what host_s2_pages_needed says.
    let ram = [(PhysAddr::new(0x4000_0000), 1024)];
    let needed = Engine::<RecordingArch>::host_s2_pages_needed(
        isola::stage2::S2Config::DEFAULT,
        &ram,
        &[(PhysAddr::new(isola::testing::HOST_UART), 1)],
    );
    let spec = MachineSpec {
        ram_pages: 1024,
        engine_pages: needed,
        ..MachineSpec::default()
    };
    let host = Host {
        engine: spec.build(RecordingArch::new()),
        spec,
    };
    let first = needed + 64;
    for i in first..1024 {
        assert!(host.host_reads(host.page(i)).is_some());
    }
    let [vm, ..] = host.ok(HostCall::VmCreate, [host.page(needed), 64, 1, 0]);
    for (n, i) in (first..1024).step_by(2).enumerate() {
        host.ok(
            HostCall::Donate,
            [vm, host.page(i), GUEST_RAM + n as u64 * 4096, perms::R],
        );
    }
    for i in first..1024 {
        let mapped = host
            .engine
            .host_translate(PhysAddr::new(host.page(i)))
            .is_some();
        assert_eq!(mapped, (i - first) % 2 == 1, "page {i}: split, not dropped");
    }
}

#[test]
fn a_batched_donate_maps_every_page_or_none() {
    let host = Host::new();
    let [vm, ..] = host.ok(HostCall::VmCreate, [host.page(16), 8, 1, 0]);
    let donate = |pa: u64, ipa: u64, pages: u64| {
        let mut regs = [HostCall::Donate as u64, vm, pa, ipa, perms::R, pages, 0];
        assert_eq!(host.engine.host_call(0, &mut regs), HostCallOutcome::Done);
        Status::from_raw(regs[0] as i64).unwrap()
    };
    let usage = || host.engine.vm_usage(vm).unwrap();
    // Root 1 page, 7 free; the share builds the level-1, -2 and -3 tables.
    host.ok(
        HostCall::Share,
        [vm, host.page(43), GUEST_RAM + 0x10_0000, perms::R],
    );
    assert_eq!(usage(), [0, 1, 8, 4, 4]);
    let before = (host.totals(), usage());
    let unchanged = |what: &str| assert_eq!((host.totals(), usage()), before, "{what}");
    assert_eq!(
        donate(host.page(44), GUEST_RAM, isola_abi::DONATE_MAX_PAGES + 1),
        Status::InvalidArgument
    );
    assert_eq!(
        donate(host.page(44), GUEST_MMIO.0 - 0x1000, 2),
        Status::InvalidArgument,
        "the run's second page is in the guest MMIO window"
    );
    assert_eq!(
        donate(host.page(40), GUEST_RAM, 4),
        Status::NotOwner,
        "its last page is lent"
    );
    unchanged("NotOwner");
    assert_eq!(
        donate(host.page(44), GUEST_RAM + 0x10_0000 - 0x2000, 4),
        Status::AlreadyMapped,
        "its third IPA is mapped"
    );
    unchanged("AlreadyMapped");
    for i in 44..48 {
        assert_eq!(
            host.engine.page(PhysAddr::new(host.page(i))),
            Some(PageRecord::HOST)
        );
    }

    // Four pages across a 2 MiB IPA boundary: the second level-3 table is
    // built; the VM's entries go from invalid to valid, so no TLBI for it.
    let base = GUEST_RAM + 0x20_0000 - 0x2000;
    host.engine.arch().clear();
    assert_eq!(donate(host.page(44), base, 4), Status::Success);
    let mut ev = Vec::new();
    host.engine.arch().for_each(|e| ev.push(e));
    check_break_before_make(ev.iter().copied()).unwrap();
    assert!(
        !ev.iter().any(|e| matches!(
            e,
            ArchEvent::TlbiIpa { vmid: Vmid(1), .. } | ArchEvent::TlbiVmid(Vmid(1))
        )),
        "{ev:?}"
    );
    for i in 0..4 {
        let t = host
            .engine
            .vm_translate(vm, Ipa::new(base + i * 0x1000))
            .unwrap()
            .unwrap();
        assert_eq!(t.pa.raw(), host.page(44 + i));
        assert_eq!(
            host.engine.page(PhysAddr::new(host.page(44 + i))),
            Some(PageRecord::owned(Owner::Vm(0)))
        );
    }
    assert_eq!(usage(), [4, 1, 8, 3, 5]);

    // Across a 1 GiB boundary: a level-3 table on one side, a level-2 and a
    // level-3 table on the other: exactly the 3 pages left. Then nothing is
    // left for another region, and that fails whole.
    assert_eq!(
        donate(host.page(50), 0xc000_0000 - 0x1000, 2),
        Status::Success
    );
    assert_eq!(usage(), [6, 1, 8, 0, 8]);
    let before = (host.totals(), usage());
    assert_eq!(donate(host.page(52), 0x1_0000_0000, 2), Status::NoMemory);
    assert_eq!((host.totals(), usage()), before, "NoMemory");
    // `pages == 0` is one page.
    assert_eq!(donate(host.page(52), base + 0x4000, 0), Status::Success);
    assert_eq!(usage()[0], 7);
}

#[test]
fn a_batched_donate_across_two_shards_moves_both_parts_or_neither() {
    // RAM starts 48 pages below a 2 MiB boundary: pages 0..48 are one
    // shard, 48.. the next.
    let spec = MachineSpec {
        ram_base: 0x4020_0000 - 48 * 0x1000,
        ..MachineSpec::default()
    };
    let host = Host {
        engine: spec.build(RecordingArch::new()),
        spec,
    };
    assert_eq!(host.engine.db().shard_count(), 2);
    let [vm, ..] = host.ok(HostCall::VmCreate, [host.page(16), 8, 1, 0]);
    let donate = |pa: u64, ipa: u64, pages: u64| {
        let mut regs = [HostCall::Donate as u64, vm, pa, ipa, perms::R, pages, 0];
        assert_eq!(host.engine.host_call(0, &mut regs), HostCallOutcome::Done);
        Status::from_raw(regs[0] as i64).unwrap()
    };
    // The host touches pages on both sides, so both shards are host-mapped.
    for i in [44, 50, 53] {
        assert!(host.host_reads(host.page(i)).is_some());
    }
    host.ok(
        HostCall::Share,
        [vm, host.page(51), GUEST_RAM + 0x10_0000, perms::R],
    );
    let before = (host.totals(), host.engine.vm_usage(vm).unwrap());
    assert_eq!(
        donate(host.page(44), GUEST_RAM, 8),
        Status::NotOwner,
        "page 51, in the second shard, is lent"
    );
    assert_eq!((host.totals(), host.engine.vm_usage(vm).unwrap()), before);
    assert!(
        host.host_reads(host.page(44)).is_some(),
        "the host keeps its pages"
    );

    host.engine.arch().clear();
    assert_eq!(donate(host.page(44), GUEST_RAM, 7), Status::Success);
    let mut ev = Vec::new();
    host.engine.arch().for_each(|e| ev.push(e));
    check_break_before_make(ev.iter().copied()).unwrap();
    for i in 0..7 {
        let pa = host.page(44 + i);
        assert_eq!(host.engine.host_translate(PhysAddr::new(pa)), None);
        assert_eq!(host.host_reads(pa), None, "page {i} of the run");
        let t = host
            .engine
            .vm_translate(vm, Ipa::new(GUEST_RAM + i * 0x1000))
            .unwrap()
            .unwrap();
        assert_eq!(t.pa.raw(), pa);
    }
    assert!(
        host.host_reads(host.page(53)).is_some(),
        "the rest stays the host's"
    );
    assert_eq!(host.engine.vm_usage(vm).unwrap()[0], 7);
}

#[test]
fn a_host_fault_maps_a_whole_shard_block_only_while_every_page_is_the_hosts() {
    // Pages 512..1024 are one 2 MiB shard: the fault decides the block from
    // the shard's counts.
    let spec = MachineSpec {
        ram_pages: 1024,
        ..MachineSpec::default()
    };
    let big = Host {
        engine: spec.build(RecordingArch::new()),
        spec,
    };
    let [vm, ..] = big.ok(HostCall::VmCreate, [big.page(16), 8, 1, 0]);
    big.ok(HostCall::Donate, [vm, big.page(1000), GUEST_RAM, perms::R]);
    assert_eq!(big.host_reads(big.page(700)), Some(0));
    let t = big
        .engine
        .host_translate(PhysAddr::new(big.page(700)))
        .unwrap();
    assert_eq!(t.level, 3, "page 1000 is the VM's: no block over it");
    assert_eq!(big.host_reads(big.page(1000)), None);
    // Once the VM is gone and the page reclaimed, the shard is all the
    // host's again and a fault elsewhere in it maps the 2 MiB block.
    big.ok(HostCall::VmDestroy, [vm, 0, 0, 0]);
    big.ok(HostCall::Reclaim, [big.page(1000), 0, 0, 0]);
    assert_eq!(big.host_reads(big.page(1000)), Some(0));
    let t = big
        .engine
        .host_translate(PhysAddr::new(big.page(1000)))
        .unwrap();
    assert_eq!(
        t.level, 3,
        "the table made for page 700 stays: the page maps alone"
    );
    let fresh = MachineSpec {
        ram_pages: 1024,
        ..MachineSpec::default()
    };
    let clean = Host {
        engine: fresh.build(RecordingArch::new()),
        spec: fresh,
    };
    assert_eq!(clean.host_reads(clean.page(700)), Some(0));
    let t = clean
        .engine
        .host_translate(PhysAddr::new(clean.page(700)))
        .unwrap();
    assert_eq!(
        t.level, 2,
        "an untouched shard all the host's: one 2 MiB block"
    );
}

/// Two CPUs donate overlapping runs that cross a shard boundary to two VMs,
/// on real threads, many times: both runs move their pages shard by shard in
/// ascending order, so whoever takes the shared pages of the first shard
/// wins and the other fails `NotOwner` having changed nothing (its undo, if
/// it got that far, put every page back). Not a model check (loom cannot
/// run this many pages); it checks the outcome of whatever interleavings the
/// scheduler produces.
#[test]
fn racing_batched_donations_across_shards_leave_exactly_one_winner() {
    use isola::arch::NoopArch;
    use std::sync::Barrier;
    let spec = MachineSpec {
        ram_base: 0x4020_0000 - 48 * 0x1000,
        ..MachineSpec::default()
    };
    let mut wins = [0u32; 2];
    for _ in 0..200 {
        let e = spec.build(NoopArch);
        let call = |cpu: u32, regs: [u64; 7]| {
            let mut r = regs;
            assert_eq!(e.host_call(cpu, &mut r), HostCallOutcome::Done);
            (Status::from_raw(r[0] as i64).unwrap(), r[1])
        };
        let create = |pool: u64| {
            let (s, h) = call(
                0,
                [
                    HostCall::VmCreate as u64,
                    spec.page(pool).raw(),
                    8,
                    1,
                    0,
                    0,
                    0,
                ],
            );
            assert_eq!(s, Status::Success);
            h
        };
        let (a, b) = (create(16), create(24));
        let totals = |e: &Engine<NoopArch>| {
            let mut r = [HostCall::Accounting as u64, 0, 0, 0, 0, 0, 0];
            let _ = e.host_call(0, &mut r);
            [r[1], r[2], r[3]]
        };
        let before = totals(&e);
        let go = Barrier::new(2);
        let donate = |cpu: u32, vm: u64, first: u64| {
            go.wait();
            let regs = [
                HostCall::Donate as u64,
                vm,
                spec.page(first).raw(),
                GUEST_RAM,
                perms::R,
                8,
                0,
            ];
            call(cpu, regs).0
        };
        let (sa, sb) = std::thread::scope(|s| {
            let t = s.spawn(|| donate(1, a, 44));
            let sb = donate(2, b, 46);
            (t.join().unwrap(), sb)
        });
        let (winner, first) = match (sa, sb) {
            (Status::Success, Status::NotOwner) => {
                wins[0] += 1;
                (0u16, 44)
            }
            (Status::NotOwner, Status::Success) => {
                wins[1] += 1;
                (1u16, 46)
            }
            other => panic!("not exactly one winner: {other:?}"),
        };
        for i in 40..60 {
            let want = if (first..first + 8).contains(&i) {
                PageRecord::owned(Owner::Vm(winner))
            } else {
                PageRecord::HOST
            };
            assert_eq!(e.page(spec.page(i)), Some(want), "page {i}");
        }
        let after = totals(&e);
        assert_eq!(after, [before[0] - 8, before[1], before[2] + 8]);
        assert_eq!(e.vm_usage(a).unwrap()[0], if winner == 0 { 8 } else { 0 });
        assert_eq!(e.vm_usage(b).unwrap()[0], if winner == 1 { 8 } else { 0 });
    }
    println!("wins (a, b): {wins:?}");
    assert_eq!(wins[0] + wins[1], 200, "{wins:?}");
}

/// Checks a donate's log for the cache maintenance its pages need (HCR_EL2.FWB
/// is 0, so the guest may read them non-cacheably): every page of `pas`
/// leaves the host Stage-2 (its entry invalidated, then its TLBI, by IPA for
/// one page or by VMID for a batch, then a DSB) before any is cleaned; the cleans of the run come in a row with no barrier
/// between them; exactly one DSB follows them; and only then does the VM's
/// Stage-2 get a leaf naming any of the pages.
fn check_donate_cleans(ev: &[ArchEvent], pas: &[u64]) {
    let addr = |d: u64| d & 0x0000_ffff_ffff_f000;
    let clean_at: Vec<usize> = pas
        .iter()
        .map(|&p| {
            let hits: Vec<usize> = ev
                .iter()
                .enumerate()
                .filter(|(_, e)| **e == ArchEvent::CleanDcache(PhysAddr::new(p)))
                .map(|(i, _)| i)
                .collect();
            assert_eq!(hits.len(), 1, "page {p:#x} cleaned once: {ev:?}");
            hits[0]
        })
        .collect();
    let first = *clean_at.iter().min().unwrap();
    let last = *clean_at.iter().max().unwrap();
    assert_eq!(
        last - first + 1,
        pas.len(),
        "the cleans come in a row: {ev:?}"
    );
    assert_eq!(
        ev.get(last + 1),
        Some(&ArchEvent::DsbIsh),
        "one DSB ends them"
    );
    for &p in pas {
        let unmap = ev
            .iter()
            .position(|e| matches!(*e, ArchEvent::PteWrite { old, new, .. } if old & 1 == 1 && new & 1 == 0 && addr(old) == p))
            .unwrap_or_else(|| panic!("host entry of {p:#x} invalidated: {ev:?}"));
        let tlbi = unmap
            + ev[unmap..]
                .iter()
                .position(|e| {
                    *e == ArchEvent::TlbiIpa {
                        vmid: Vmid::HOST,
                        ipa: Ipa::new(p),
                    } || *e == ArchEvent::TlbiVmid(Vmid::HOST)
                })
                .unwrap();
        assert!(
            unmap < tlbi && tlbi < first,
            "{p:#x}: unmap, TLBI, then clean"
        );
        assert!(
            ev[tlbi..first].contains(&ArchEvent::DsbIsh),
            "{p:#x}: the host's TLBI completes before the clean"
        );
        let map = ev
            .iter()
            .rposition(|e| matches!(*e, ArchEvent::PteWrite { old, new, .. } if old & 1 == 0 && new & 1 == 1 && addr(new) == p))
            .unwrap();
        assert!(
            map > last + 1,
            "{p:#x}: mapped in the VM after the clean's DSB"
        );
        assert_eq!(
            ev[first..map]
                .iter()
                .filter(|e| **e == ArchEvent::DsbIsh)
                .count(),
            1,
            "one DSB for the whole run"
        );
    }
}

#[test]
fn donated_pages_are_cleaned_to_poc_after_the_host_loses_them_and_before_the_vm_maps_them() {
    let host = Host::new();
    let [vm, ..] = host.ok(HostCall::VmCreate, [host.page(16), 8, 1, 0]);
    let pas: Vec<u64> = (40..45).map(|i| host.page(i)).collect();
    for &p in &pas {
        assert_eq!(host.host_reads(p), Some(0), "the host maps {p:#x} first");
    }
    // One page: the unbatched path.
    host.engine.arch().clear();
    host.ok(HostCall::Donate, [vm, pas[0], GUEST_RAM, perms::R]);
    let mut ev = Vec::new();
    host.engine.arch().for_each(|e| ev.push(e));
    check_break_before_make(ev.iter().copied()).unwrap();
    check_donate_cleans(&ev, &pas[..1]);
    // Four pages: one run, one DSB after its cleans.
    host.engine.arch().clear();
    let mut regs = [
        HostCall::Donate as u64,
        vm,
        pas[1],
        GUEST_RAM + 0x1000,
        perms::R,
        4,
        0,
    ];
    assert_eq!(host.engine.host_call(0, &mut regs), HostCallOutcome::Done);
    assert_eq!(regs[0], Status::Success.raw());
    let mut ev = Vec::new();
    host.engine.arch().for_each(|e| ev.push(e));
    assert!(!host.engine.arch().overflowed());
    check_break_before_make(ev.iter().copied()).unwrap();
    check_donate_cleans(&ev, &pas[1..]);
}

#[test]
fn a_read_only_device_page_is_mapped_for_reads_and_its_writes_are_ignored() {
    use isola::testing::HOST_GICR_RD;
    let host = Host::new();
    let read = isola::abort::data_abort_esr(4, false, 1, false, false, 0b000111);
    let hpfar = (HOST_GICR_RD >> 12) << 4;
    assert_eq!(
        host.engine.host_abort(0, read, HOST_GICR_RD + 0x70, hpfar),
        HostAbortAction::Retry
    );
    let t = host
        .engine
        .host_translate(PhysAddr::new(HOST_GICR_RD))
        .unwrap();
    assert_eq!(
        t.desc.perms(),
        Perms {
            r: true,
            w: false,
            x: false
        }
    );
    assert_eq!(t.desc.mem_type(), isola::stage2::MemType::Device);
    // The store (say, to GICR_PROPBASER) now faults on permission: skipped.
    let write = isola::abort::data_abort_esr(8, true, 1, false, true, 0b001111);
    assert_eq!(
        host.engine.host_abort(0, write, HOST_GICR_RD + 0x70, hpfar),
        HostAbortAction::SkipWrite
    );
    // A read-write device page is not treated so.
    let uart = isola::testing::HOST_UART;
    assert_eq!(
        host.engine.host_abort(0, write, uart, (uart >> 12) << 4),
        HostAbortAction::InjectSea,
        "a permission fault on a read-write device is no skip"
    );
}

#[test]
fn a_redistributors_sgi_frame_stays_writable() {
    use isola::testing::HOST_GICR_RD;
    let host = Host::new();
    let sgi = HOST_GICR_RD + 0x10000 + 0x100;
    let write = isola::abort::data_abort_esr(4, true, 1, false, false, 0b000111);
    assert_eq!(
        host.engine.host_abort(0, write, sgi, (sgi >> 12) << 4),
        HostAbortAction::Retry
    );
    let t = host.engine.host_translate(PhysAddr::new(sgi)).unwrap();
    assert_eq!(t.desc.perms(), Perms::RW);
}

/// What the engine does not switch or emulate is UNDEFINED to the guest, as
/// on a CPU without it: a trapped system register it does not know, and SVE
/// and SME (which the guest's ID registers say are absent). The guest takes
/// an Undefined Instruction exception at its own vector and goes on; the
/// exception is counted; nothing reaches the host.
#[test]
fn what_the_engine_does_not_give_a_guest_is_undefined_to_it() {
    use isola::vcpu::SysReg;
    let host = Host::new();
    let [vm, ..] = host.ok(HostCall::VmCreate, [host.page(16), 4, 1, 0]);
    host.ok(HostCall::VcpuCreate, [vm, 0, GUEST_RAM, 0]);
    // On CPU 2, not the CPU `Host::run` uses: the counts must follow the
    // CPU the vCPU is loaded on.
    let mut regs = [HostCall::VcpuRun as u64, vm, 0, 0, 0, 0, 0];
    let HostCallOutcome::Run(l) = host.engine.host_call(2, &mut regs) else {
        panic!("VcpuRun failed: {:?}", Status::from_raw(regs[0] as i64));
    };
    assert_eq!(l.cpu(), 2);
    let mem = host.engine.mem();
    l.context().set_sysreg(mem, SysReg::VbarEl1, 0x8000_8000);
    let impdef = isola::sysreg::Access {
        op0: 3,
        op1: 0,
        crn: 15,
        crm: 2,
        op2: 1,
        rt: 4,
        read: true,
    }
    .esr();
    for esr in [impdef, 0x19 << 26 | 1 << 25, 0x1d << 26 | 1 << 25] {
        let pc = l.context().pc(mem);
        let e = host.engine.guest_exit(
            &l,
            Trap::Sync {
                esr,
                far: 0,
                hpfar: 0,
            },
        );
        assert_eq!(e, GuestExitAction::Resume, "{esr:#x}");
        assert_eq!(l.context().sysreg(mem, SysReg::EsrEl1), 1 << 25, "EC 0, IL");
        assert_eq!(l.context().sysreg(mem, SysReg::ElrEl1), pc);
        assert_eq!(l.context().pc(mem), 0x8000_8200, "current EL, SP_EL1");
        // The guest returns from its handler past the instruction.
        l.context().set_pc(mem, pc + 4);
        l.context().set_pstate(mem, isola::vcpu::INITIAL_PSTATE);
    }
    let undefined = isola_abi::counter::GUEST_UNDEFINED;
    let count = |cpu: u64| {
        host.call(
            HostCall::Accounting,
            [
                isola_abi::Accounting::Counter as u64,
                undefined | cpu << 32,
                0,
                0,
            ],
        )
    };
    assert_eq!(
        (count(2).0, count(2).1[0], count(1).1[0]),
        (Status::Success, 3, 0),
        "counted on the guest's CPU, and only there"
    );
    host.finish(
        l,
        Exit::Wfx {
            wfe: false,
            deadline: None,
        },
    );
}

/// A VM that powered itself off (PSCI `SYSTEM_OFF`) is over: the host can
/// no longer queue an external abort for a vCPU's pending MMIO access; the
/// VM can only be destroyed.
#[test]
fn a_vm_that_powered_off_takes_no_injected_abort() {
    let host = Host::new();
    let [vm, ..] = host.ok(HostCall::VmCreate, [host.page(16), 4, 2, 0]);
    host.ok(HostCall::VcpuCreate, [vm, 0, GUEST_RAM, 0]);
    host.ok(HostCall::VcpuCreate, [vm, 1, GUEST_RAM, 0]);
    let uart = isola::testing::HOST_UART;
    let mmio = Exit::Mmio {
        ipa: uart,
        size: 4,
        write: true,
        value: 0,
    };
    // vCPU 0 starts vCPU 1, then stores to MMIO and exits with it pending.
    let l = host.run(vm, 0, 0);
    let psci = |id: u32| u64::from(id);
    let on = [psci(isola_abi::psci::CPU_ON), 1, GUEST_RAM, 0, 0, 0, 0];
    assert_eq!(host.engine.guest_hvc(&l, on), GuestExitAction::Resume);
    let w = host.engine.guest_access(&l, Ipa::new(uart), 4, true, 31);
    assert_eq!(w, GuestExitAction::ExitToHost(mmio));
    host.finish(l, mmio);
    // vCPU 1 powers the VM off.
    let l = host.run(vm, 1, 0);
    assert_eq!(l.index(), 1);
    let off = [psci(isola_abi::psci::SYSTEM_OFF), 0, 0, 0, 0, 0, 0];
    assert_eq!(
        host.engine.guest_hvc(&l, off),
        GuestExitAction::ExitToHost(Exit::SystemOff)
    );
    host.finish(l, Exit::SystemOff);
    assert_eq!(
        host.call(HostCall::VcpuInjectAbort, [vm, 0, 0, 0]).0,
        Status::Denied
    );
    host.ok(HostCall::VmDestroy, [vm, 0, 0, 0]);
}

/// The host lends a VM two pages, then tries to end the first loan at the
/// IPA of the second. The engine refuses: the mapping there is lent, but
/// not this page. Nothing changes: both loans stand, and ending each at its
/// own IPA works. (Had it taken the second page's mapping away and handed
/// the first page back, the VM would keep a host page mapped.)
#[test]
fn a_loan_ends_only_at_the_ipa_it_was_made_at() {
    let host = Host::new();
    let [vm, ..] = host.ok(HostCall::VmCreate, [host.page(16), 8, 1, 0]);
    let (a, b) = (host.page(40), host.page(41));
    let (ia, ib) = (GUEST_RAM + 0x3000, GUEST_RAM + 0x4000);
    host.ok(HostCall::Share, [vm, a, ia, perms::R]);
    host.ok(HostCall::Share, [vm, b, ib, perms::R]);
    assert_eq!(
        host.call(HostCall::Unshare, [vm, a, ib, 0]).0,
        Status::NotMapped
    );
    for (pa, ipa) in [(a, ia), (b, ib)] {
        let t = host
            .engine
            .vm_translate(vm, Ipa::new(ipa))
            .unwrap()
            .unwrap();
        assert_eq!(t.pa, PhysAddr::new(pa));
        assert_eq!(
            host.engine.page(PhysAddr::new(pa)),
            Some(PageRecord::shared(Owner::Host, Owner::Vm(0)))
        );
    }
    host.ok(HostCall::Unshare, [vm, a, ia, 0]);
    host.ok(HostCall::Unshare, [vm, b, ib, 0]);
    host.ok(HostCall::VmDestroy, [vm, 0, 0, 0]);
}

/// A guest's store replaces exactly the bytes it covers: a byte stored as
/// 0xff and then as 0 reads back 0, and its neighbours are untouched.
#[test]
fn a_guest_store_replaces_the_bytes_it_covers() {
    let host = Host::new();
    let [vm, ..] = host.ok(HostCall::VmCreate, [host.page(16), 8, 1, 0]);
    host.ok(
        HostCall::Donate,
        [vm, host.page(40), GUEST_RAM, perms::R | perms::W],
    );
    host.ok(HostCall::VcpuCreate, [vm, 0, GUEST_RAM, 0]);
    let l = host.run(vm, 0, 0);
    let mem = host.engine.mem();
    let at = Ipa::new(GUEST_RAM + 3);
    for v in [0xff, 0] {
        l.context().set_x(mem, 5, v);
        let w = host.engine.guest_access(&l, at, 1, true, 5);
        assert_eq!(w, GuestExitAction::Resume);
    }
    let r = host
        .engine
        .guest_access(&l, Ipa::new(GUEST_RAM), 8, false, 6);
    assert_eq!(r, GuestExitAction::Resume);
    assert_eq!(l.context().x(mem, 6), 0, "the word holds only zeroes");
    host.finish(
        l,
        Exit::Wfx {
            wfe: false,
            deadline: None,
        },
    );
}

/// A vCPU the VM may have but the host never created has no list
/// registers to fill: `VcpuInterrupts` says `NotFound` and writes nothing.
#[test]
fn interrupts_for_a_vcpu_never_created_are_refused() {
    let host = Host::new();
    let [vm, ..] = host.ok(HostCall::VmCreate, [host.page(16), 8, 2, 0]);
    host.ok(HostCall::VcpuCreate, [vm, 0, GUEST_RAM, 0]);
    let none = [0; isola_abi::lr::SLOTS];
    assert_eq!(host.engine.vcpu_interrupts(vm, 0, none), Ok([0; 3]));
    assert_eq!(
        host.engine.vcpu_interrupts(vm, 1, none),
        Err(Status::NotFound)
    );
    host.ok(HostCall::VmDestroy, [vm, 0, 0, 0]);
}

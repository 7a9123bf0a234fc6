//! The story of a Linux guest's boot on the host side, told twice.
//!
//! First with Debian's own arm64 kernel (`target/linux/Image`, fetched by
//! `cargo xtask linux`, with its initramfs): its header is read, kernel,
//! initramfs and device tree are placed in a 512 MiB, 4-vCPU guest, and the
//! device tree is read back with the engine's own FDT reader
//! (`isola-fdt`), which must find exactly the RAM, CPUs, GIC and
//! UART the VMM laid out. Then with the real engine core on the host: the
//! VMM's vCPU 0 starts vCPU 1 through PSCI, vCPU 1 prints on the UART and
//! sends an SGI, and the engine accepts the list registers the VMM builds.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    reason = "an integration test, not engine code: its helpers stop on a broken expectation, which is a failed test (clippy.toml exempts only `#[test]` functions, and no arithmetic)"
)]

use isola_fdt as boot_fdt;

use isola::addr::{Ipa, PAGE_SIZE};
use isola::arch::NoopArch;
use isola::hypercall::{GuestExitAction, HostCallOutcome, LoadedVcpu, Trap};
use isola::sysreg::Access;
use isola::testing::{GUEST_MMIO, MachineSpec};
use isola_abi::{Exit, HostCall, Status, lr, psci, vcpu_flags};
use isola_vmm::fdt::{self, Chosen};
use isola_vmm::layout::{Layout, RAM_BASE};
use isola_vmm::loader::{self, DTB_MAX};
use isola_vmm::vm::{Action, Vm};

const BOOTARGS: &str = "console=ttyAMA0 earlycon=pl011,mmio32,0xc0200000 rdinit=/init";

#[test]
fn debians_kernel_gets_a_layout_and_a_device_tree_the_engine_can_read() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/linux");
    let Ok(image) = std::fs::read(format!("{dir}/Image")) else {
        eprintln!("no {dir}/Image (run `cargo xtask linux` once): skipped");
        return;
    };
    let initrd = std::fs::read(format!("{dir}/initramfs.cpio")).unwrap_or_default();
    // The header says where the kernel goes and how much room it needs.
    let h = loader::parse_header(&image).expect("an arm64 Image");
    assert_eq!(h.flags & 1, 0, "little-endian");
    assert!(h.image_size >= image.len() as u64, "BSS included");
    let layout = Layout::new(512 << 20, 4).unwrap();
    let plan = loader::plan(&layout, &h, image.len() as u64, initrd.len() as u64).unwrap();
    assert_eq!(plan.kernel, RAM_BASE + h.text_offset);
    // Kernel, initramfs, device tree: in order, apart, all in RAM.
    let mut end = plan.kernel + plan.kernel_size;
    if let Some((start, stop)) = plan.initrd {
        assert!(start >= end && stop - start == initrd.len() as u64);
        end = stop;
    }
    assert!(plan.dtb >= end && plan.dtb.is_multiple_of(2 << 20));
    assert!(plan.dtb + DTB_MAX <= layout.ram_end());
    let (pc, x0) = plan.entry();
    assert_eq!((pc, x0), (plan.kernel, plan.dtb));

    let dtb = fdt::build(
        &layout,
        &Chosen {
            bootargs: BOOTARGS.into(),
            initrd: plan.initrd,
        },
    )
    .unwrap();
    assert!(dtb.len() as u64 <= DTB_MAX);
    // The engine's reader sees what the VMM laid out.
    let tree = boot_fdt::Fdt::new(&dtb).expect("a valid DTB");
    let mut p = boot_fdt::Platform::empty();
    boot_fdt::parse_platform(&tree, &mut p).unwrap();
    assert_eq!(p.ram().len(), 1);
    assert_eq!((p.ram()[0].base, p.ram()[0].size), (RAM_BASE, 512 << 20));
    assert_eq!(
        p.cpus(),
        [0, 1, 2, 3],
        "MPIDR Aff0 = vCPU index, as the engine sets it"
    );
    assert_eq!(p.psci, Some(boot_fdt::PsciConduit::Hvc));
    let gicd = p.gicd.unwrap();
    assert_eq!((gicd.base, gicd.size), layout.gicd());
    assert_eq!((p.gicr()[0].base, p.gicr()[0].size), layout.gicr());
    let uart = p.uart.unwrap();
    assert_eq!((uart.base, uart.size), layout.uart());
    assert_eq!(boot_fdt::bootargs(&tree).unwrap(), Some(BOOTARGS));
}

/// The engine under test and the host's calls to it.
struct Host {
    e: isola::engine::Engine<NoopArch>,
    spec: MachineSpec,
}

impl Host {
    fn call(&self, c: HostCall, args: [u64; 6]) -> (Status, [u64; 3]) {
        let mut r = [
            c as u64, args[0], args[1], args[2], args[3], args[4], args[5],
        ];
        match self.e.host_call(0, &mut r) {
            HostCallOutcome::Done => (Status::from_raw(r[0] as i64).unwrap(), [r[1], r[2], r[3]]),
            HostCallOutcome::Run(_) => panic!("{c:?} ran a vCPU"),
        }
    }

    fn run(&self, vm: u64, vcpu: u64, value: u64) -> LoadedVcpu {
        let mut r = [HostCall::VcpuRun as u64, vm, vcpu, value, 0, 0, 0];
        match self.e.host_call(0, &mut r) {
            HostCallOutcome::Run(l) => l,
            HostCallOutcome::Done => panic!("VcpuRun: {:#x}", r[0]),
        }
    }

    /// Ends a run with the guest's exception; the host's `x1..x3`.
    fn exit(&self, l: LoadedVcpu, a: GuestExitAction) -> [u64; 3] {
        let GuestExitAction::ExitToHost(x) = a else {
            panic!("expected an exit")
        };
        let mut r = [0; 7];
        self.e.finish_run(l, x, &mut r);
        assert_eq!(r[0], 0);
        [r[1], r[2], r[3]]
    }
}

#[test]
fn the_vmm_drives_the_engine_through_psci_the_uart_and_an_sgi() {
    let spec = MachineSpec::default();
    let mut e = spec.build(NoopArch);
    e.set_list_registers(4);
    let host = Host { e, spec };
    let (st, [_, features, _]) = host.call(HostCall::Version, [0; 6]);
    assert_eq!(st, Status::Success);
    let list_regs = isola_abi::features::list_registers(features);
    assert_eq!(list_regs, 4);

    // A 2-vCPU guest whose devices sit in the test machine's MMIO window.
    let layout = Layout::with_window(2 << 20, 2, GUEST_MMIO).unwrap();
    let mut vm = Vm::new(layout, list_regs);
    let (st, [h, ..]) = host.call(
        HostCall::VmCreate,
        [host.spec.page(16).raw(), 8, 2, 0, 0, 0],
    );
    assert_eq!(st, Status::Success);
    // One page of "kernel" at RAM_BASE; vCPU 0 starts there, vCPU 1 is off.
    let (st, _) = host.call(
        HostCall::Donate,
        [
            h,
            host.spec.page(40).raw(),
            RAM_BASE,
            isola_abi::perms::ALL,
            1,
            0,
        ],
    );
    assert_eq!(st, Status::Success);
    assert_eq!(
        host.call(HostCall::VcpuCreate, [h, 0, RAM_BASE, 0, 0, 0]).0,
        Status::Success
    );
    let off = [h, 1, 0, 0, vcpu_flags::OFF, 0];
    assert_eq!(host.call(HostCall::VcpuCreate, off).0, Status::Success);
    assert_eq!(vm.runnable(0), [0]);

    // vCPU 0 asks PSCI to start vCPU 1 at the kernel's secondary entry.
    let l = host.run(h, 0, 0);
    let entry = RAM_BASE + 0x100;
    let a = host.e.guest_hvc(
        &l,
        [
            u64::from(psci::CPU_ON),
            psci::mpidr(1),
            entry,
            0x5eed,
            0,
            0,
            0,
        ],
    );
    let x = host.exit(l, a);
    assert_eq!(Exit::decode(x), Some(Exit::CpuOn { vcpu: 1 }));
    assert_eq!(vm.exit(0, x), Action::Run { value: 0 });
    assert_eq!(vm.runnable(0), [0, 1]);

    // vCPU 1 starts where it was told, with the context id in x0.
    let lrs = vm.list_registers(1);
    let mut regs = [0; 6];
    regs[0] = h;
    regs[1] = 1;
    regs[2..6].copy_from_slice(&lrs);
    assert_eq!(host.call(HostCall::VcpuInterrupts, regs).0, Status::Success);
    let l = host.run(h, 1, 0);
    let mem = host.e.mem();
    assert_eq!(
        (l.context().pc(mem), l.context().x(mem, 0)),
        (entry, 0x5eed)
    );

    // It prints "hi" on the PL011: each store an Mmio exit, each handled.
    let dr = Ipa::new(layout.uart().0);
    let mut l = l;
    for b in *b"hi" {
        l.context().set_x(mem, 3, u64::from(b));
        let a = host.e.guest_access(&l, dr, 1, true, 3);
        let x = host.exit(l, a);
        assert_eq!(vm.exit(1, x), Action::Run { value: 0 });
        l = host.run(h, 1, 0);
    }
    assert_eq!(vm.uart.output, b"hi");

    // It turns on group 1 at the distributor and sends SGI 5 to vCPU 0.
    let ctlr = Ipa::new(layout.gicd().0);
    l.context().set_x(mem, 4, 2);
    let a = host.e.guest_access(&l, ctlr, 4, true, 4);
    let x = host.exit(l, a);
    assert_eq!(vm.exit(1, x), Action::Run { value: 0 });
    let igroupr0 = layout.gicr().0 + 0x1_0080;
    vm.gic.write(igroupr0, 4, 0xffff); // (vCPU 0's own setup, done here for brevity)
    let l = host.run(h, 1, 0);
    l.context().set_x(mem, 7, 5 << 24 | 1);
    let sgi1r = Access {
        op0: 3,
        op1: 0,
        crn: 12,
        crm: 11,
        op2: 5,
        rt: 7,
        read: false,
    };
    let a = host.e.guest_exit(
        &l,
        Trap::Sync {
            esr: sgi1r.esr(),
            far: 0,
            hpfar: 0,
        },
    );
    let x = host.exit(l, a);
    assert_eq!(
        Exit::decode(x),
        Some(Exit::Sgi {
            targets: 1,
            intid: 5
        })
    );
    assert_eq!(vm.exit(1, x), Action::Run { value: 0 });

    // The VMM puts it in vCPU 0's list registers; the engine takes them and
    // reports the interrupt pending at vCPU 0's next exit.
    let lrs = vm.list_registers(0);
    assert_eq!(lrs[0], lr::pending(5, 0, false));
    let mut regs = [0; 6];
    regs[0] = h;
    regs[2..6].copy_from_slice(&lrs);
    assert_eq!(host.call(HostCall::VcpuInterrupts, regs).0, Status::Success);
    let l = host.run(h, 0, 0);
    let x = host.exit(l, GuestExitAction::ExitToHost(Exit::Irq));
    let status = isola_abi::ExitStatus::from_word(x[0]);
    assert_eq!(status.lrs[0], isola_abi::LrState::Pending);
    assert_eq!(vm.exit(0, x), Action::Run { value: 0 });

    // An access where no device is: the VMM answers with an abort, which the
    // engine delivers at the guest's vector.
    let l = host.run(h, 0, 0);
    let nowhere = Ipa::new(GUEST_MMIO.0 + 0x80_0000);
    let a = host.e.guest_access(&l, nowhere, 4, false, 2);
    let x = host.exit(l, a);
    assert_eq!(vm.exit(0, x), Action::InjectAbort);
    assert_eq!(
        host.call(HostCall::VcpuInjectAbort, [h, 0, 0, 0, 0, 0]).0,
        Status::Success
    );
    let l = host.run(h, 0, 0);
    assert_eq!(
        l.context().pc(mem),
        0x200,
        "VBAR_EL1 + 0x200: current EL, SPx"
    );
    let _ = PAGE_SIZE;
}

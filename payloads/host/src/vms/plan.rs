//! What the VM test makes: the host memory it donates from, how many VMs
//! with which vCPUs, and what each vCPU is for.

/// First byte of the host RAM this test donates from (see docs/guests.md).
pub(super) const POOL_BASE: u64 = 0x8000_0000;

/// End (exclusive) of that RAM: 768 MiB.
pub(super) const POOL_END: u64 = 0xb000_0000;

/// vCPUs of each ordinary VM: checksum, MMIO, share, demand, EL0.
pub(super) const VCPUS: usize = 5;

/// Most ordinary VMs (the engine's table has 255 slots; four more VMs are
/// the attacker, the two power VMs and the hold VM).
pub(super) const MAX_VMS: usize = 250;

/// Record index of the attacker VM.
pub(super) const ATTACKER_VM: usize = MAX_VMS;

/// Record index of the VM that powers itself off.
pub(super) const POWER_VM: usize = MAX_VMS + 1;

/// Record index of the VM that resets itself.
pub(super) const RESET_VM: usize = MAX_VMS + 2;

/// Record index of the VM whose vCPUs never exit by themselves.
pub(super) const HOLD_VM: usize = MAX_VMS + 3;

/// VM records: the ordinary VMs, then the four above.
pub(super) const VM_RECORDS: usize = MAX_VMS + 4;

/// Pool pages donated at `VmCreate` (metadata, contexts, Stage-2 tables).
pub(super) const POOL_PAGES: u64 = 32;

/// Random host calls each CPU makes while guests run.
pub(super) const STORM_PER_CPU: u32 = 64;

/// A physical address inside the engine's carve-out (docs/boot.md): 8 MiB
/// below its end.
pub(super) const ENGINE_PA: u64 = isola_layout::CARVEOUT_END - 0x80_0000;

/// Where the host's GIC distributor is: a guest access there is only MMIO.
pub(super) const GICD_IPA: u64 = 0x0800_0000;

/// An IPA far beyond any guest's IPA space.
pub(super) const BEYOND_IPA: u64 = 1 << 46;

/// The attacker VM's vCPUs, by index (and one that takes virtual
/// interrupts).
pub(super) const ATTACKER: [Role; 8] = [
    Role::Attack,
    Role::ProbeOtherVm,
    Role::ProbeEngineWrite,
    Role::ProbeBeyond,
    Role::ProbeGic,
    Role::Spin,
    Role::Registers,
    Role::VirtualIrq,
];

/// Timer interrupts the [`Role::VirtualIrq`] vCPU waits for.
pub(super) const VIRQ_TICKS: u64 = 3;

/// The attacker's vCPU that spins for the running-vCPU attacks.
pub(super) const SPIN_INDEX: usize = 5;

/// The power VMs' vCPUs: one each, since after `SYSTEM_OFF` (or
/// `SYSTEM_RESET`) the engine runs no vCPU of that VM again.
pub(super) const POWER: [Role; 1] = [Role::SystemOff];

pub(super) const RESET: [Role; 1] = [Role::SystemReset];

/// The hold VM's vCPUs: one per CPU that takes part (at most 8, the
/// engine's limit), half spinning with interrupts masked, half looping in
/// their own vectors. Each CPU runs one of them once, with its tick on: the
/// run must end with `Exit::Irq`, at the host's own deadline.
pub(super) const HOLD: [Role; 8] = [
    Role::HoldMasked,
    Role::HoldVectors,
    Role::HoldMasked,
    Role::HoldVectors,
    Role::HoldMasked,
    Role::HoldVectors,
    Role::HoldMasked,
    Role::HoldVectors,
];

/// An ordinary VM's vCPUs.
pub(super) const ORDINARY: [Role; VCPUS] = [
    Role::Checksum,
    Role::Mmio,
    Role::Share,
    Role::Demand,
    Role::El0,
];

/// Times the [`Role::El0`] vCPU hashes its data at EL0: long enough that
/// the host's tick ends some of its runs there.
pub(super) const EL0_PASSES: u64 = 4;

/// Most vCPUs any VM here has.
pub(super) const MAX_VCPUS: usize = 8;

/// Most demand-backed pages one VM may get.
pub(super) const MAX_DEMAND: usize = 16;

/// What a vCPU is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Role {
    Checksum,
    Mmio,
    Share,
    Demand,
    Attack,
    ProbeOtherVm,
    ProbeEngineWrite,
    ProbeBeyond,
    ProbeGic,
    Spin,
    Registers,
    SystemOff,
    SystemReset,
    HoldMasked,
    HoldVectors,
    VirtualIrq,
    El0,
}

impl Role {
    pub(super) fn name(self) -> &'static str {
        match self {
            Role::Checksum => "checksum",
            Role::Mmio => "mmio",
            Role::Share => "share",
            Role::Demand => "demand",
            Role::Attack => "attack",
            Role::ProbeOtherVm => "probe-other-vm",
            Role::ProbeEngineWrite => "probe-engine",
            Role::ProbeBeyond => "probe-beyond",
            Role::ProbeGic => "probe-gic",
            Role::Spin => "spin",
            Role::Registers => "registers",
            Role::SystemOff => "system-off",
            Role::SystemReset => "system-reset",
            Role::HoldMasked => "hold-masked",
            Role::HoldVectors => "hold-vectors",
            Role::VirtualIrq => "virtual-irq",
            Role::El0 => "el0",
        }
    }
}

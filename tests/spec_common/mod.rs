//! Shared harness of the spec property tests: the `System` both the model and
//! the engine implement, the random operation generator, and the checkers
//! that run a sequence and report the first counterexample.
//!
//! Operations are generated as raw random choices ([`Op`]) and turned into a
//! concrete [`Event`] only when they run, against the state at that moment:
//! "a live handle", "a page the host owns", "an IPA this VM maps", or
//! deliberately a wrong one (a random handle, an unaligned or out-of-RAM
//! address, an engine page, another VM's page). So long sequences stay
//! meaningful, and proptest still shrinks a failure to a short one.
#![allow(
    dead_code,
    reason = "included by every spec test crate, each of which uses a part"
)]

pub mod engine;
pub mod explore;

use isola::spec::{Config, Cpu, Event, Model, Outcome, Owner, PageState, RunState, State};
use isola::sysreg::Access;
use isola_abi::{GuestCall, HostCall, PAGE_SIZE, lr, perms, psci, vcpu_flags};
use proptest::prelude::*;

/// Something that takes events and can be observed through the abstraction.
pub trait System {
    /// Performs `event`; `Outcome::Inapplicable` if it cannot happen now.
    fn step(&mut self, event: &Event) -> Outcome;
    /// The abstract state.
    fn observe(&self) -> State;
    /// Test backdoor for planting bugs: stores `value` at the 8-byte aligned
    /// `pa` of RAM, bypassing every check.
    fn poke(&mut self, pa: u64, value: u64);
    /// The RAM pages the host's Stage-2 maps right now (the host can touch
    /// them without a fault), in address order.
    fn host_mapped(&self) -> Vec<u64>;
    /// The RAM pages a device of the host can reach by DMA right now (the
    /// IOMMU's view: the host Stage-2 it walks and what its TLB caches), in
    /// address order.
    fn dma_view(&self) -> Vec<u64>;
    /// Test backdoor for noninterference twins: sets register `reg` of
    /// vCPU `vcpu` of live VM `vm`, bypassing every check.
    fn set_reg(&mut self, vm: u64, vcpu: u64, reg: u8, value: u64);
    /// Whether the architecture requests since the last call kept
    /// break-before-make (and forgets them). Systems that make no such
    /// requests (the model) have nothing to check.
    fn arch_check(&mut self) -> Result<(), String> {
        Ok(())
    }
}

impl System for Model {
    fn step(&mut self, event: &Event) -> Outcome {
        self.apply(event)
    }
    fn observe(&self) -> State {
        self.state.clone()
    }
    fn host_mapped(&self) -> Vec<u64> {
        self.state
            .pages
            .keys()
            .copied()
            .filter(|&pa| self.state.host_may_access(pa))
            .collect()
    }
    fn dma_view(&self) -> Vec<u64> {
        self.host_mapped()
    }
    fn poke(&mut self, pa: u64, value: u64) {
        let page = pa & !(PAGE_SIZE - 1);
        if let Some(c) = self
            .state
            .pages
            .get_mut(&page)
            .and_then(|p| p.contents.as_mut())
        {
            let word = ((pa - page) / 8) as u16;
            if value == 0 {
                c.remove(&word);
            } else {
                c.insert(word, value);
            }
        }
    }
    fn set_reg(&mut self, vm: u64, vcpu: u64, reg: u8, value: u64) {
        if let Some(r) = self
            .state
            .vms
            .get_mut(&vm)
            .and_then(|v| v.vcpus.get_mut(&vcpu))
            .and_then(|v| v.regs.get_mut(usize::from(reg)))
        {
            *r = value;
        }
    }
}

/// One random operation, before it meets a state.
#[derive(Clone, Debug)]
pub struct Op {
    /// Which physical CPU.
    pub cpu: u8,
    /// Which kind of operation (interpreted modulo the menu for the CPU's mode).
    pub kind: u8,
    /// Choices among candidates (handles, pages, IPAs, vCPU indices...).
    pub pick: [u16; 4],
    /// Raw values (register contents, written data, wild arguments).
    pub raw: [u64; 3],
}

/// Proptest settings with `n` cases, or `PROPTEST_CASES` when set (for
/// deeper runs), and bounded shrinking so a failure is reported in seconds.
pub fn cases(n: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(n);
    ProptestConfig {
        cases,
        max_shrink_iters: 256,
        ..ProptestConfig::default()
    }
}

/// Settings for the planted-bug tests: `n` cases, no shrinking (one
/// counterexample is all they need to show).
pub fn planted_cases(n: u32) -> ProptestConfig {
    ProptestConfig {
        cases: n,
        max_shrink_iters: 0,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// The runner of a planted-bug test: [`planted_cases`] with a fixed seed,
/// so whether the checker finds the bug does not vary from run to run.
pub fn planted_runner(n: u32) -> proptest::test_runner::TestRunner {
    use proptest::test_runner::{RngAlgorithm, TestRng, TestRunner};
    TestRunner::new_with_rng(
        planted_cases(n),
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    )
}

/// Runs `holds` on an engine with `bug` planted, over `n` fixed-seed cases
/// of 150 to 400 operations ([`planted_runner`]): `Err` with the shrunk
/// counterexample once `holds` fails, `Ok` if the bug went unnoticed. The
/// caller says what the failure must name.
pub fn planted_run(
    n: u32,
    bug: Bug,
    holds: impl Fn(&mut dyn System, &[Op]) -> Result<(), String>,
) -> Result<(), proptest::test_runner::TestError<Vec<Op>>> {
    planted_runner(n).run(&ops(150..400), |ops| {
        let r = holds(&mut Planted::new(engine::Engine::boot(), bug), &ops);
        prop_assert!(r.is_ok(), "{}", r.unwrap_err());
        Ok(())
    })
}

/// A strategy for sequences of `len` operations.
pub fn ops(len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<Op>> {
    let op = (
        any::<u8>(),
        any::<u8>(),
        any::<[u16; 4]>(),
        any::<[u64; 3]>(),
    )
        .prop_map(|(cpu, kind, pick, raw)| Op {
            cpu,
            kind,
            pick,
            raw,
        });
    proptest::collection::vec(op, len)
}

/// The machine the spec tests use: the engine's test machine, as the model sees it.
pub fn config() -> Config {
    engine::config()
}

/// IPAs guests use: a handful, so that mappings collide and faults repeat.
const IPAS: [u64; 6] = [
    0x8000_0000,
    0x8000_1000,
    0x8000_2000,
    0x8020_0000,
    0x1_0000_0000,
    0x1000,
];

/// `items[pick % len]`, or `default` when empty.
fn choose<T: Copy>(items: &[T], pick: u16, default: T) -> T {
    if items.is_empty() {
        default
    } else {
        items[usize::from(pick) % items.len()]
    }
}

/// A physical address argument: mostly a page of a useful kind, sometimes wrong.
fn pick_pa(s: &State, c: &Config, pick: u16, raw: u64) -> u64 {
    let host: Vec<u64> = s
        .pages
        .iter()
        .filter(|(_, p)| p.owner == Owner::Host && p.state == PageState::Owned)
        .map(|(&pa, _)| pa)
        .collect();
    let all: Vec<u64> = s.pages.keys().copied().collect();
    let end = c.ram_base + c.ram_pages * PAGE_SIZE;
    match pick % 16 {
        0..=8 => choose(&host, pick / 16, c.ram_base),
        9..=12 => choose(&all, pick / 16, c.ram_base),
        13 => choose(&all, pick / 16, c.ram_base) + 8 * u64::from(pick % 7 + 1),
        14 => [
            c.ram_base - PAGE_SIZE,
            end,
            end - 8,
            0,
            raw & !0xfff,
            !0xfff,
        ][usize::from(pick / 16) % 6],
        _ => raw,
    }
}

/// Where the host touches memory: half the time a page it may not touch (a
/// VM's, a pool's, the engine's), since that is where isolation is tested.
fn pick_host_access(s: &State, c: &Config, pick: u16, raw: u64) -> u64 {
    let forbidden: Vec<u64> = s
        .pages
        .keys()
        .copied()
        .filter(|&pa| !s.host_may_access(pa))
        .collect();
    let offset = u64::from(pick / 16 % 512) * 8;
    match pick % 4 {
        0 | 1 => choose(&forbidden, pick / 4, c.ram_base) + offset,
        _ => pick_pa(s, c, pick, raw) & !7,
    }
}

/// A VM handle argument: mostly live, sometimes stale or random.
fn pick_handle(s: &State, pick: u16, raw: u64) -> u64 {
    let live: Vec<u64> = s.vms.keys().copied().collect();
    match pick % 8 {
        0..=5 => choose(&live, pick / 8, 1),
        6 => u64::from(pick / 8 % 8),
        _ => raw,
    }
}

/// An IPA argument for VM `h`: mostly one of [`IPAS`] or already mapped,
/// sometimes MMIO, unaligned or beyond the IPA space.
fn pick_ipa(s: &State, c: &Config, h: u64, pick: u16, raw: u64) -> u64 {
    let mapped: Vec<u64> = s
        .vms
        .get(&h)
        .map(|vm| vm.map.keys().copied().collect())
        .unwrap_or_default();
    match pick % 16 {
        0..=7 => choose(&IPAS, pick / 16, 0),
        8..=11 => choose(&mapped, pick / 16, IPAS[0]),
        12 => c.mmio_base + u64::from(pick / 16 % 4) * PAGE_SIZE,
        13 => IPAS[0] + 8,
        14 => 1 << c.ipa_bits,
        _ => raw,
    }
}

/// A perms argument: mostly valid, sometimes empty or with unknown bits.
fn pick_perms(pick: u16, raw: u64) -> u64 {
    match pick % 12 {
        0..=8 => [
            perms::R,
            perms::R | perms::W,
            perms::ALL,
            perms::R | perms::X,
        ][usize::from(pick / 12) % 4],
        9 => 0,
        10 => perms::ALL | 8,
        _ => raw,
    }
}

/// The concrete event for `op` in state `s`. One in sixteen is a DMA by the
/// host's device, whatever the CPUs run.
pub fn event(op: &Op, s: &State, c: &Config) -> Event {
    let cpu = usize::from(op.cpu) % c.cpus;
    let [p0, p1, p2, p3] = op.pick;
    let [r0, r1, r2] = op.raw;
    if op.kind >= 0xf0 {
        // Mostly the first words of a page, where the warm-up and the
        // confidentiality harness put their values.
        let page = pick_host_access(s, c, p1, r1) & !(PAGE_SIZE - 1);
        let pa = if p2.is_multiple_of(4) {
            pick_host_access(s, c, p1, r1) & !7
        } else {
            page + 8 * u64::from(p3 % 4)
        };
        return if op.kind.is_multiple_of(2) {
            Event::DmaRead { pa }
        } else {
            Event::DmaWrite { pa, value: r2 }
        };
    }
    match s.cpus[cpu] {
        Cpu::Host => host_event(cpu, op.kind, [p0, p1, p2, p3], [r0, r1, r2], s, c),
        Cpu::Guest { vm, .. } => {
            guest_event(cpu, vm, op.kind, [p0, p1, p2, p3], [r0, r1, r2], s, c)
        }
    }
}

fn hvc(cpu: usize, call: HostCall, args: [u64; 4]) -> Event {
    Event::HostHvc {
        cpu,
        regs: [call as u64, args[0], args[1], args[2], args[3], 0, 0],
    }
}

fn host_event(cpu: usize, kind: u8, p: [u16; 4], r: [u64; 3], s: &State, c: &Config) -> Event {
    let h = pick_handle(s, p[0], r[0]);
    let idx = u64::from(p[1] % 6);
    // Mostly a vCPU that exists, so that guests get to run.
    let some_vcpu = || {
        let vcpus: Vec<(u64, u64)> = s
            .vms
            .iter()
            .flat_map(|(&h, vm)| vm.vcpus.keys().map(move |&i| (h, i)))
            .collect();
        if p[3].is_multiple_of(8) {
            (h, idx)
        } else {
            choose(&vcpus, p[2], (h, idx))
        }
    };
    match kind % 40 {
        0 | 1 => {
            let pages = if p[2].is_multiple_of(8) {
                r[1] % 16
            } else {
                c.vm_pages + u64::from(p[2] % 4)
            };
            let pa = pick_pa(s, c, p[1], r[2]);
            hvc(cpu, HostCall::VmCreate, [pa, pages, u64::from(p[3] % 6), 0])
        }
        2 if p[3].is_multiple_of(3) => hvc(cpu, HostCall::VmDestroy, [h, 0, 0, 0]),
        3 => hvc(
            cpu,
            HostCall::VmTopup,
            [h, pick_pa(s, c, p[1], r[1]), u64::from(p[2] % 3), 0],
        ),
        4 | 5 => hvc(cpu, HostCall::VcpuCreate, [h, idx, r[1], r[2]]),
        2 | 6..=11 | 25..=28 | 36..=39 => {
            let (h, idx) = some_vcpu();
            hvc(cpu, HostCall::VcpuRun, [h, idx, r[1], 0])
        }
        32 | 33 => {
            let (h, idx) = some_vcpu();
            let word = |k: u16, raw: u64| -> u64 {
                let intid = [1u32, 27, 33, 40][usize::from(k % 4)];
                match k / 4 % 16 {
                    0..=5 => lr::pending(intid, (k / 64) as u8, k.is_multiple_of(3)),
                    6..=8 => lr::ACTIVE | lr::GROUP1 | lr::EOI | u64::from(intid),
                    9..=11 => 0,
                    12 => lr::PENDING | 8192,
                    13 => lr::PENDING | lr::HW | u64::from(intid) | u64::from(intid) << 32,
                    14 => lr::EOI | u64::from(intid),
                    _ => raw,
                }
            };
            let lrs = [
                word(p[0], r[0]),
                word(p[1].rotate_left(3), r[1]),
                if p[3].is_multiple_of(4) {
                    word(p[2], r[2])
                } else {
                    0
                },
                if p[3] % 16 == 1 { word(p[3], r[2]) } else { 0 },
            ];
            Event::HostHvc {
                cpu,
                regs: [
                    HostCall::VcpuInterrupts as u64,
                    h,
                    idx,
                    lrs[0],
                    lrs[1],
                    lrs[2],
                    lrs[3],
                ],
            }
        }
        34 => {
            let (h, idx) = some_vcpu();
            hvc(cpu, HostCall::VcpuInjectAbort, [h, idx, 0, 0])
        }
        35 => {
            let flags = if p[2].is_multiple_of(4) {
                r[1]
            } else {
                vcpu_flags::OFF
            };
            let mut e = hvc(cpu, HostCall::VcpuCreate, [h, idx, r[1], r[2]]);
            if let Event::HostHvc { regs, .. } = &mut e {
                regs[5] = flags;
            }
            e
        }
        12..=15 => {
            let ipa = pick_ipa(s, c, h, p[2], r[2]);
            // x5, the page count: mostly one page (0 or 1), sometimes a
            // short run, rarely one past the limit.
            let pages = match p[3] / 16 % 16 {
                0..=4 => 0,
                5..=9 => 1,
                10..=14 => u64::from(p[3] / 256 % 6) + 2,
                _ => isola_abi::DONATE_MAX_PAGES + 1,
            };
            let mut e = hvc(
                cpu,
                HostCall::Donate,
                [h, pick_pa(s, c, p[1], r[1]), ipa, pick_perms(p[3], r[0])],
            );
            if let Event::HostHvc { regs, .. } = &mut e {
                regs[5] = pages;
            }
            e
        }
        16..=18 => {
            let ipa = pick_ipa(s, c, h, p[2], r[2]);
            hvc(
                cpu,
                HostCall::Share,
                [h, pick_pa(s, c, p[1], r[1]), ipa, pick_perms(p[3], r[0])],
            )
        }
        19 => {
            let lent: Vec<u64> = s
                .pages
                .iter()
                .filter(|(_, pg)| {
                    pg.owner == Owner::Host && matches!(pg.state, PageState::Shared { .. })
                })
                .map(|(&pa, _)| pa)
                .collect();
            let pa = if p[2].is_multiple_of(4) {
                pick_pa(s, c, p[1], r[1])
            } else {
                choose(&lent, p[1], c.ram_base)
            };
            // Mostly where `h` maps that page (if it does), else any IPA.
            let at = s
                .vms
                .get(&h)
                .and_then(|vm| vm.map.iter().find(|(_, m)| m.pa == pa).map(|(&ipa, _)| ipa));
            let ipa = match at {
                Some(ipa) if !p[3].is_multiple_of(5) => ipa,
                _ => pick_ipa(s, c, h, p[3], r[2]),
            };
            hvc(cpu, HostCall::Unshare, [h, pa, ipa, 0])
        }
        20 | 21 => {
            let dead: Vec<u64> = s
                .pages
                .iter()
                .filter(|(_, pg)| matches!(pg.owner, Owner::Vm(v) if !s.vms.contains_key(&v)))
                .map(|(&pa, _)| pa)
                .collect();
            let pa = if p[2].is_multiple_of(3) {
                pick_pa(s, c, p[1], r[1])
            } else {
                choose(&dead, p[1], c.ram_base)
            };
            hvc(cpu, HostCall::Reclaim, [pa, 0, 0, 0])
        }
        22 => {
            // Selectors 0..=5 (5 unknown); a counter: a defined one,
            // one beyond the last, any CPU up to one beyond the last.
            let selector = u64::from(p[1] % 6);
            let handle = if selector == isola_abi::Accounting::Counter as u64 {
                let counter = [
                    isola_abi::counter::host_calls(isola_abi::Status::Success),
                    isola_abi::counter::host_calls(isola_abi::Status::NotFound),
                    isola_abi::counter::exits(isola_abi::ExitReason::HostCall),
                    isola_abi::counter::GUEST_CALLS,
                    isola_abi::counter::GUEST_SYSREGS,
                    isola_abi::counter::GUEST_UNDEFINED,
                    isola_abi::counter::HOST_ABORTS,
                    isola_abi::counter::GUEST_ABORTS,
                    isola_abi::counter::COUNT,
                    r[1] & 0xffff_ffff,
                ][usize::from(p[2] % 10)];
                counter | (u64::from(p[3]) % (c.cpus as u64 + 1)) << 32
            } else {
                h
            };
            hvc(cpu, HostCall::Accounting, [selector, handle, 0, 0])
        }
        23 => hvc(cpu, HostCall::Version, [0; 4]),
        24 => {
            let id = [
                r[1],
                GuestCall::Share as u64,
                HostCall::Accounting as u64 + 1,
                u64::from(psci::VERSION),
            ][usize::from(p[1] % 4)];
            Event::HostHvc {
                cpu,
                regs: [id, r[0], r[1], r[2], r[0], r[1], r[2]],
            }
        }
        29 | 30 => Event::HostRead {
            cpu,
            pa: pick_host_access(s, c, p[1], r[1]),
        },
        _ => Event::HostWrite {
            cpu,
            pa: pick_host_access(s, c, p[1], r[1]),
            value: r[2],
        },
    }
}

fn guest_event(
    cpu: usize,
    h: u64,
    kind: u8,
    p: [u16; 4],
    r: [u64; 3],
    s: &State,
    c: &Config,
) -> Event {
    let reg = (p[1] % 31) as u8;
    let ipa = pick_ipa(s, c, h, p[2], r[1]);
    let call = |id: u64, a: u64, b: u64| Event::GuestHvc {
        cpu,
        regs: [id, a, b, r[0], r[1], r[2], r[0]],
    };
    // A PSCI target: often a vCPU of this VM that is off or on-pending.
    let waking: Vec<u16> = s.vms[&h]
        .vcpus
        .iter()
        .filter(|(_, v)| matches!(v.run, RunState::Off | RunState::OnPending))
        .map(|(&i, _)| i as u16)
        .collect();
    let mpidr = |k: u16| match k % 8 {
        0..=2 => psci::mpidr(choose(&waking, k / 8, k % 5)),
        3..=5 => psci::mpidr(k % 5),
        6 => u64::from(k % 4),
        _ => u64::from(k) << 8,
    };
    match kind % 32 {
        0..=3 => Event::GuestSetReg {
            cpu,
            reg,
            value: r[0],
        },
        4..=8 | 21 | 22 => {
            let size = [8u8, 4, 2, 1][usize::from(p[3] % 4)];
            let off = (u64::from(p[3] / 4) * u64::from(size)) % PAGE_SIZE;
            let ipa = (ipa & !(PAGE_SIZE - 1)) + off;
            if kind.is_multiple_of(2) {
                Event::GuestWrite {
                    cpu,
                    ipa,
                    reg,
                    size,
                }
            } else {
                Event::GuestRead {
                    cpu,
                    ipa,
                    reg,
                    size,
                }
            }
        }
        9 => call(GuestCall::Info as u64, r[0], r[1]),
        10 | 11 => call(GuestCall::Share as u64, ipa, 0),
        12 => call(GuestCall::Unshare as u64, ipa, 0),
        13 => call(GuestCall::Relinquish as u64, ipa, 0),
        14 | 15 => call(GuestCall::HostCall as u64, r[1], r[2]),
        16 => {
            // Rare: a VM that powers off or stops is no longer interesting.
            let ids = [
                u64::from(psci::CPU_OFF),
                u64::from(psci::SYSTEM_OFF),
                u64::from(psci::SYSTEM_RESET),
            ];
            match (p[3] % 2, p[0] % 4) {
                (0, 3) => Event::GuestUndefined { cpu },
                (0, k) => call(ids[usize::from(k)], 0, 0),
                _ => Event::GuestWfi { cpu },
            }
        }
        17 => call(
            [
                r[0],
                HostCall::Donate as u64,
                GuestCall::HostCall as u64 + 1,
            ][usize::from(p[0] % 3)],
            r[1],
            r[2],
        ),
        18 | 19 => Event::GuestWfi { cpu },
        24 => {
            let asked = [
                u64::from(psci::CPU_ON),
                0xC400_0012, /* SYSTEM_RESET2: not implemented */
                r[1],
            ][usize::from(p[0] % 3)];
            match p[3] % 8 {
                0 => call(u64::from(psci::VERSION), 0, 0),
                1 => call(u64::from(psci::FEATURES), asked, 0),
                // CPU_OFF here too: off vCPUs are what CPU_ON starts.
                2 if p[2].is_multiple_of(2) => call(u64::from(psci::CPU_OFF), 0, 0),
                2 => call(u64::from(psci::MIGRATE_INFO_TYPE), 0, 0),
                3 => call(u64::from(psci::CPU_SUSPEND), 0, 0),
                4 | 5 => call(u64::from(psci::AFFINITY_INFO32), mpidr(p[0]), 0),
                _ => call(
                    u64::from(psci::AFFINITY_INFO),
                    mpidr(p[0]),
                    u64::from(p[2].is_multiple_of(3)),
                ),
            }
        }
        25 | 26 => {
            let entry = match p[3] % 8 {
                0..=5 => 0x8000_0000 + u64::from(p[2] % 16) * 4,
                6 => 0x8000_0002,
                _ => 1 << c.ipa_bits,
            };
            let id = if p[2].is_multiple_of(5) {
                psci::CPU_ON32
            } else {
                psci::CPU_ON
            };
            Event::GuestHvc {
                cpu,
                regs: [u64::from(id), mpidr(p[0]), entry, r[0], r[1], r[2], r[0]],
            }
        }
        27 => {
            let rt = (p[0] % 8) as u8;
            let sgi = Access {
                op0: 3,
                op1: 0,
                crn: 12,
                crm: 11,
                op2: 5,
                rt,
                read: false,
            };
            let raz = |op0, op1, crn, crm, op2, read| Access {
                op0,
                op1,
                crn,
                crm,
                op2,
                rt,
                read,
            };
            match p[3] % 10 {
                // A well-formed SGI value in x<rt>, for the next write.
                0..=2 => Event::GuestSetReg {
                    cpu,
                    reg: rt,
                    value: u64::from(p[2] % 16) << 24
                        | if p[2].is_multiple_of(7) {
                            1 << 40
                        } else {
                            r[1] & 0xffff
                        },
                },
                3..=5 => Event::GuestSysReg { cpu, access: sgi },
                6 => Event::GuestSysReg {
                    cpu,
                    access: raz(2, 0, 0, 2, 2, true),
                },
                7 => Event::GuestSysReg {
                    cpu,
                    access: raz(2, 0, 1, 0, 4, false),
                },
                8 => Event::GuestSysReg {
                    cpu,
                    access: raz(3, 3, 9, 14, 0, p[2].is_multiple_of(2)),
                },
                _ => Event::GuestSysReg {
                    cpu,
                    access: raz(3, 0, 15, 0, 0, true),
                },
            }
        }
        28 => Event::GuestTimer {
            cpu,
            ctl: [0, 1, 0b101, 0b111, 0b011, r[1] & 7][usize::from(p[3] % 6)],
            cval: r[2],
        },
        29 | 30 => {
            // Mostly an interrupt this vCPU's list registers hold.
            let held: Vec<u64> = match s.cpus[cpu] {
                Cpu::Guest { vm, vcpu } => s.vms[&vm].vcpus[&vcpu]
                    .lrs
                    .iter()
                    .filter(|&&w| w != 0)
                    .map(|&w| w & 0xffff_ffff)
                    .collect(),
                Cpu::Host => Vec::new(),
            };
            let intid = if p[2].is_multiple_of(4) {
                [1, 27, 33, 40][usize::from(p[3] % 4)]
            } else {
                choose(&held, p[3], 33)
            };
            if kind % 32 == 29 {
                Event::GuestIntAck { cpu, intid }
            } else {
                Event::GuestIntEoi { cpu, intid }
            }
        }
        _ => Event::Irq { cpu },
    }
}

/// A scripted start so random sequences begin with something to break:
/// three VMs with two vCPUs each, a few pages donated and shared.
pub fn warm_up(sys: &mut dyn System, c: &Config) {
    let free_host = |s: &State, n: usize| -> Vec<u64> {
        s.pages
            .iter()
            .filter(|(_, p)| p.owner == Owner::Host && p.state == PageState::Owned)
            .map(|(&pa, _)| pa)
            .take(n)
            .collect()
    };
    for _ in 0..3 {
        let s = sys.observe();
        // Root, three vCPU contexts and the tables for the first IPAs.
        let pool = free_host(&s, (c.vm_pages + 3 + c.table_shifts.len() as u64) as usize);
        let out = sys.step(&hvc(
            0,
            HostCall::VmCreate,
            [pool[0], pool.len() as u64, 3, 0],
        ));
        let Outcome::HostReturn([0, h, ..]) = out else {
            panic!("warm-up VmCreate: {out:?}")
        };
        for i in 0..2 {
            let out = sys.step(&hvc(
                0,
                HostCall::VcpuCreate,
                [h, i, 0x8000_0000, h * 16 + i],
            ));
            assert_eq!(out, Outcome::HostReturn([0; 4]), "warm-up VcpuCreate");
        }
        // A third vCPU, powered off, for the guests' CPU_ON.
        let mut off = hvc(0, HostCall::VcpuCreate, [h, 2, 0, 0]);
        if let Event::HostHvc { regs, .. } = &mut off {
            regs[5] = vcpu_flags::OFF;
        }
        assert_eq!(
            sys.step(&off),
            Outcome::HostReturn([0; 4]),
            "warm-up off vCPU"
        );
        for (k, ipa) in IPAS[..3].iter().enumerate() {
            let pa = free_host(&sys.observe(), 1)[0];
            sys.step(&Event::HostWrite {
                cpu: 0,
                pa,
                value: pa ^ 0x1111,
            });
            // The host's device reads it first: the IOMMU caches the
            // translation, which Donate must then take away.
            assert_eq!(
                sys.step(&Event::DmaRead { pa }),
                Outcome::DmaLoaded(pa ^ 0x1111),
                "warm-up DMA"
            );
            let call = if k == 2 {
                HostCall::Share
            } else {
                HostCall::Donate
            };
            let out = sys.step(&hvc(0, call, [h, pa, *ipa, perms::R | perms::W]));
            assert_eq!(out, Outcome::HostReturn([0; 4]), "warm-up {call:?}");
        }
    }
}

/// Runs `ops` on `sys` after the warm-up, calling `check(before, event,
/// outcome, after, sys)` after every applicable step; the first `Err` is the
/// counterexample, with the step number.
pub fn run(
    sys: &mut dyn System,
    c: &Config,
    ops: &[Op],
    mut check: impl FnMut(&State, &Event, &Outcome, &State, &mut dyn System) -> Result<(), String>,
) -> Result<(), String> {
    warm_up(sys, c);
    let mut before = sys.observe();
    for (n, op) in ops.iter().enumerate() {
        let e = event(op, &before, c);
        let out = sys.step(&e);
        if out == Outcome::Inapplicable {
            continue;
        }
        let after = sys.observe();
        check(&before, &e, &out, &after, &mut *sys)
            .map_err(|m| format!("step {n}: {e:?} -> {out:?}: {m}"))?;
        before = after;
    }
    Ok(())
}

/// A bug planted on purpose, to show each property test can fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    /// Pages that pass from a VM to the host (reclaim, relinquish) keep
    /// their contents instead of being zeroed.
    SkipScrub,
    /// `Donate` forgets to unmap the page from the host's Stage-2: the host
    /// can still read and write it.
    KeepHostMappingOnDonate,
    /// `Wfx` and `Irq` exits carry the guest's `x9` in `x3`.
    LeakRegisterIntoExit,
    /// `Donate` leaves the page in the host's DMA view (the IOMMU's TLB is
    /// not invalidated): the host's device can still read and write it.
    LeaveDonatedPageInDmaView,
}

/// A system with a bug planted: every step goes to `inner`, then the bug
/// corrupts the effect the way the real mistake in the engine would.
pub struct Planted<S> {
    /// The correct system.
    pub inner: S,
    /// The bug.
    pub bug: Bug,
    /// Pages donated while the host kept its mapping.
    leaked: Vec<u64>,
}

impl<S: System> Planted<S> {
    /// `inner` with `bug`.
    pub fn new(inner: S, bug: Bug) -> Self {
        Self {
            inner,
            bug,
            leaked: Vec::new(),
        }
    }

    fn word(s: &State, pa: u64) -> u64 {
        let page = pa & !(PAGE_SIZE - 1);
        s.page(page)
            .and_then(|p| p.contents.as_ref())
            .and_then(|c| c.get(&(((pa - page) / 8) as u16)).copied())
            .unwrap_or(0)
    }
}

impl<S: System> System for Planted<S> {
    fn step(&mut self, event: &Event) -> Outcome {
        let before = self.inner.observe();
        if self.bug == Bug::LeaveDonatedPageInDmaView {
            match *event {
                Event::DmaRead { pa } if self.leaked.contains(&(pa & !(PAGE_SIZE - 1))) => {
                    return Outcome::DmaLoaded(Self::word(&before, pa));
                }
                Event::DmaWrite { pa, value } if self.leaked.contains(&(pa & !(PAGE_SIZE - 1))) => {
                    self.inner.poke(pa, value);
                    return Outcome::DmaStored;
                }
                _ => {}
            }
        }
        if self.bug == Bug::KeepHostMappingOnDonate {
            match *event {
                Event::HostRead { pa, .. }
                    if self.leaked.contains(&(pa & !(PAGE_SIZE - 1)))
                        && before.cpus[event.cpu()] == Cpu::Host =>
                {
                    return Outcome::HostLoaded(Self::word(&before, pa));
                }
                Event::HostWrite { pa, value, .. }
                    if self.leaked.contains(&(pa & !(PAGE_SIZE - 1)))
                        && before.cpus[event.cpu()] == Cpu::Host =>
                {
                    self.inner.poke(pa, value);
                    return Outcome::HostStored;
                }
                _ => {}
            }
        }
        let out = self.inner.step(event);
        match self.bug {
            Bug::SkipScrub => {
                let after = self.inner.observe();
                for (&pa, p) in &before.pages {
                    let to_host = after.page(pa).is_some_and(|q| q.owner == Owner::Host);
                    if let (Owner::Vm(_), true, Some(c)) = (p.owner, to_host, &p.contents) {
                        for (&w, &v) in c {
                            self.inner.poke(pa + u64::from(w) * 8, v);
                        }
                    }
                }
            }
            Bug::KeepHostMappingOnDonate | Bug::LeaveDonatedPageInDmaView => {
                if let (Event::HostHvc { regs, .. }, Outcome::HostReturn([0, ..])) = (event, out)
                    && regs[0] == HostCall::Donate as u64
                {
                    for i in 0..regs[5].max(1) {
                        self.leaked.push(regs[2] + i * PAGE_SIZE);
                    }
                }
                let after = self.inner.observe();
                self.leaked
                    .retain(|&pa| after.page(pa).is_some_and(|p| p.owner != Owner::Host));
            }
            Bug::LeakRegisterIntoExit => {
                if let (Outcome::Exit([w, 0, 0]), Cpu::Guest { vm, vcpu }) =
                    (out, before.cpus[event.cpu()])
                    && (w == 4 || w == 5)
                {
                    let after = self.inner.observe();
                    let x9 = after
                        .vms
                        .get(&vm)
                        .and_then(|v| v.vcpus.get(&vcpu))
                        .map_or(0, |c| c.regs[9]);
                    return Outcome::Exit([w, 0, x9]);
                }
            }
        }
        out
    }
    fn observe(&self) -> State {
        self.inner.observe()
    }
    fn poke(&mut self, pa: u64, value: u64) {
        self.inner.poke(pa, value);
    }
    fn set_reg(&mut self, vm: u64, vcpu: u64, reg: u8, value: u64) {
        self.inner.set_reg(vm, vcpu, reg, value);
    }
    fn arch_check(&mut self) -> Result<(), String> {
        self.inner.arch_check()
    }
    fn host_mapped(&self) -> Vec<u64> {
        let mut v = self.inner.host_mapped();
        if self.bug == Bug::KeepHostMappingOnDonate {
            v.extend(self.leaked.iter().copied());
        }
        v.sort_unstable();
        v.dedup();
        v
    }
    fn dma_view(&self) -> Vec<u64> {
        let mut v = self.inner.dma_view();
        if self.bug == Bug::LeaveDonatedPageInDmaView {
            v.extend(self.leaked.iter().copied());
        }
        v.sort_unstable();
        v.dedup();
        v
    }
}

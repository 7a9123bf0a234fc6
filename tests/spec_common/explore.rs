//! Exhaustive bounded exploration of the engine against the model.
//!
//! From a start state (boot, or boot followed by a scripted prefix), every
//! sequence of events up to a depth is run on the engine and on the model,
//! breadth first, and every step is checked: refinement (same outcome, same
//! abstract state), the state invariants, the host Stage-2 mapping only
//! what the host may touch, integrity, break-before-make in the engine's
//! `Arch` requests, and — on a twin of every explored state whose one VM's
//! secrets differ — noninterference for that step.
//!
//! # What "every sequence" ranges over
//!
//! Events are drawn from small domains computed from the state ([`events`]):
//! every call of both sides, with arguments that are valid (live handles,
//! the host's free pages, the guest IPAs of [`IPAS`]) and each error class
//! and boundary (stale and out-of-table handles, unaligned, out-of-RAM and
//! wrapping addresses, pages of every other owner and state, MMIO and
//! out-of-space IPAs, zero and unknown permissions, over-long runs, unknown
//! function ids), plus host loads of every page of RAM and stores to every
//! page the host may not touch. Values (what the host stores, what a guest
//! puts in a register) come from one fixed value per actor (and one SGI
//! value). See
//! `docs/security-properties.md` for the table.
//!
//! # Canonical form
//!
//! States are deduplicated by a canonical form of the *model* (its abstract
//! state plus the hidden bookkeeping that decides statuses: each VM's
//! Stage-2 tables and the VM table's slots), quotiented by two symmetries:
//!
//! - **handle generations**: a handle is renamed to (slot, how many
//!   generations it is behind the slot's next one), so a VM created in a slot
//!   for the second time is the same as the first one;
//! - **physical CPUs**: the CPUs are interchangeable (the engine keeps
//!   nothing per CPU but which vCPU is loaded there), so the form is the
//!   least over the permutations of CPUs.
//!
//! Page identities are *not* quotiented: runs (`VmCreate`, `VmTopup`,
//! multi-page `Donate`) make page order matter. Instead, page arguments
//! that would all do the same to the model take one representative: of the
//! pages that share owner, state, contents and mappings, the lowest.
//!
//! Deduplicating by the model's state assumes that engines in the same
//! abstract state behave alike. The one concrete difference known to the
//! exploration is which host pages the host Stage-2 maps yet (it fills in
//! on host aborts); events that change nothing abstract are checked one
//! after the other on a single engine, so they meet both kinds of host
//! Stage-2 (a page mapped already, and not yet).
#![allow(
    clippy::too_many_lines,
    reason = "the event domains read best as one table per side, in one function each"
)]

use std::collections::{BTreeMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use isola::spec::props::{integrity, invariants, low_equivalent};
use isola::spec::{
    Config, Cpu, Event, Handle, Model, Outcome, Owner, PageState, Pending, RunState, State,
};
use isola::sysreg::Access;
use isola_abi::{DONATE_MAX_PAGES, GuestCall, HostCall, PAGE_SIZE, lr, perms, psci, vcpu_flags};

use super::System;

/// Guest RAM IPAs: `A` and `B` share their last-level table, `C` needs a
/// new one, `TOP` is the last page of the 40-bit IPA space (three new tables,
/// and a two-page run from it leaves the space).
pub const IPA_A: u64 = 0x8000_0000;
/// Next to [`IPA_A`].
pub const IPA_B: u64 = 0x8000_1000;
/// Another 2 MiB region.
pub const IPA_C: u64 = 0x8020_0000;
/// Last page of the IPA space.
pub const IPA_TOP: u64 = (1 << 40) - PAGE_SIZE;
/// The guest RAM IPAs a guest touches and shares.
pub const IPAS: [u64; 3] = [IPA_A, IPA_B, IPA_C];

/// Entry point given to every vCPU.
const ENTRY: u64 = 0x8000_0000;
/// What the host stores.
const HOST_VALUE: u64 = 0x4855_0000_0000_0001;
/// What the host's device writes by DMA.
const DMA_VALUE: u64 = 0x444d_4100_0000_0001;
/// What the host passes to `VcpuRun` (the reply to a guest `HostCall`, or the
/// value of a pending MMIO load).
const RUN_VALUE: u64 = 0x5255_0000_0000_00f1;
/// What the host's `Share`/`Donate` runs of two pages use.
const RUN_PAGES: u64 = 2;

/// A guest's value: distinct per VM slot and vCPU, so a leak says whose.
fn guest_value(h: Handle, vcpu: u64) -> u64 {
    0x4755_0000_0000_0000 | (h & 0xffff) << 8 | vcpu << 4 | 0x7
}

/// What a secret becomes in the twin: some other non-zero value.
fn secret(pa_or_reg: u64, word: u64) -> u64 {
    0x5ec0_0000_0000_0000 | pa_or_reg << 12 | word << 1 | 1
}

/// The registers a noninterference twin changes: the ones no generated
/// event writes or stores from (those, x0..=x6 and x1/x30, carry what the
/// guest itself declassifies in the same step: call arguments, stored values).
const SECRET_REGS: std::ops::RangeInclusive<u8> = 7..=29;

/// The register the guest's SGI writes take their value from, and that
/// value: SGI 3 to every vCPU but the writer (`IRM`).
const SGI_REG: u8 = 2;
/// See [`SGI_REG`].
const SGI_ALL_BUT_ME: u64 = 1 << 40 | 3 << 24;

/// Guest access shapes: (offset in page, size, register).
const SHAPES: [(u64, u8, u8); 2] = [(0, 8, 1), (PAGE_SIZE - 1, 1, 30)];

/// Where an exploration starts and how far it goes.
pub struct Setup {
    /// A name for reports.
    pub name: &'static str,
    /// The model's view of the machine.
    pub config: Config,
    /// Scripted events from boot to the start state (checked like any step).
    pub start: Vec<Event>,
    /// Events explored after the start.
    pub depth: usize,
    /// Whether to check noninterference on twins of every state.
    pub noninterference: bool,
    /// Worker threads.
    pub threads: usize,
}

/// What a completed exploration saw.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Distinct canonical states, the start included, per depth.
    pub states_per_depth: Vec<u64>,
    /// Transitions checked (applicable events run on engine and model).
    pub transitions: u64,
    /// Events the domain offered that cannot happen in the state (a guest
    /// event on a CPU running the host...), skipped.
    pub inapplicable: u64,
    /// Noninterference steps checked (pairs of runs).
    pub twin_steps: u64,
    /// Engine boots (each replays a path).
    pub boots: u64,
    /// Wall time in seconds.
    pub seconds: f64,
    /// How often each kind of outcome was checked ([`label`]).
    pub coverage: BTreeMap<String, u64>,
}

impl Report {
    /// Distinct states.
    pub fn states(&self) -> u64 {
        self.states_per_depth.iter().sum()
    }
}

/// A property that failed, with the sequence that makes it fail.
#[derive(Debug, Clone)]
pub struct Failure {
    /// Which check.
    pub property: &'static str,
    /// Every event from boot, the failing one last.
    pub events: Vec<Event>,
    /// How many of `events` are the scripted start.
    pub start_len: usize,
    /// For noninterference: whose secrets the twin changed.
    pub secret: Option<Handle>,
    /// The checker's message.
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} fails; shortest failing sequence ({} events after a start of {}):",
            self.property,
            self.events.len() - self.start_len,
            self.start_len
        )?;
        for (n, e) in self.events.iter().enumerate() {
            let mark = if n < self.start_len { "  start" } else { "" };
            writeln!(f, "  {:>2}. {}{mark}", n + 1, show(e))?;
        }
        if let Some(s) = self.secret {
            writeln!(
                f,
                "  (twin run: VM {s:#x}'s private page words and registers x7..=x29 changed before the last event)"
            )?;
        }
        write!(f, "  {}", self.message)
    }
}

/// A system under test, booted fresh.
pub type Boot<'a> = &'a (dyn Fn() -> Box<dyn System> + Sync);

/// One explored state: its parent in the previous level and the event that led here.
#[derive(Clone)]
struct Node {
    parent: u32,
    event: Option<Event>,
}

/// Explores `setup` on systems from `boot`; the first failure, found at
/// the least depth, is the counterexample.
pub fn explore(setup: &Setup, boot: Boot<'_>) -> Result<Report, Box<Failure>> {
    let t = Instant::now();
    let c = &setup.config;
    let stats = Stats::default();
    // The scripted start, checked step by step.
    let mut model = Model::new(c.clone());
    let mut sys = boot();
    sys.arch_check()
        .map_err(|m| failure("break-before-make", &[], 0, None, format!("at boot: {m}")))?;
    check_initial(c, &model, &mut *sys, &setup.start)?;
    for (n, e) in setup.start.iter().enumerate() {
        let before = model.state.clone();
        let (want, next) = model.step(e);
        assert_ne!(want, Outcome::Inapplicable, "start event {n}: {e:?}");
        check_step(c, &mut *sys, &before, e, want, &next.state)
            .map_err(|(p, m)| failure(p, &setup.start[..=n], n + 1, None, m))?;
        model = next;
    }
    drop(sys);

    let visited = Mutex::new(HashSet::new());
    visited.lock().unwrap().insert(canonical(&model));
    let mut levels: Vec<Vec<Node>> = vec![vec![Node {
        parent: 0,
        event: None,
    }]];
    let mut report = Report {
        states_per_depth: vec![1],
        ..Report::default()
    };
    for depth in 0..setup.depth {
        let frontier = levels.last().unwrap();
        let next: Mutex<Vec<(u128, Node)>> = Mutex::new(Vec::new());
        let found: Mutex<Option<Failure>> = Mutex::new(None);
        let stop = AtomicBool::new(false);
        let cursor = AtomicU64::new(0);
        let expand_children = depth + 1 < setup.depth;
        std::thread::scope(|s| {
            for _ in 0..setup.threads.max(1) {
                s.spawn(|| {
                    loop {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let i = cursor.fetch_add(1, Ordering::Relaxed) as usize;
                        if i >= frontier.len() {
                            return;
                        }
                        let path = path_of(&levels, &setup.start, levels.len() - 1, i);
                        match visit(setup, boot, &path, &stats) {
                            Ok(children) => {
                                let mut fresh = Vec::new();
                                {
                                    let mut v = visited.lock().unwrap();
                                    for (key, e) in children {
                                        if v.insert(key) {
                                            fresh.push((
                                                key,
                                                Node {
                                                    parent: i as u32,
                                                    event: Some(e),
                                                },
                                            ));
                                        }
                                    }
                                }
                                // The last level's children are counted but
                                // not kept: nothing expands them.
                                let mut n = next.lock().unwrap();
                                if expand_children {
                                    n.extend(fresh);
                                } else {
                                    n.extend(fresh.into_iter().map(|(k, _)| {
                                        (
                                            k,
                                            Node {
                                                parent: 0,
                                                event: None,
                                            },
                                        )
                                    }));
                                }
                            }
                            Err(f) => {
                                stop.store(true, Ordering::Relaxed);
                                let mut slot = found.lock().unwrap();
                                if slot.is_none() {
                                    *slot = Some(*f);
                                }
                                return;
                            }
                        }
                    }
                });
            }
        });
        if let Some(f) = found.into_inner().unwrap() {
            return Err(Box::new(shortest(setup, boot, f)));
        }
        let mut next = next.into_inner().unwrap();
        // Deterministic order (threads finish in any order), so a run's
        // figures and its first failure do not vary.
        next.sort_unstable_by_key(|(k, n)| (n.parent, *k));
        report.states_per_depth.push(next.len() as u64);
        levels.push(next.into_iter().map(|(_, n)| n).collect());
        if levels.last().is_some_and(Vec::is_empty) {
            break;
        }
    }
    report.transitions = stats.transitions.load(Ordering::Relaxed);
    report.inapplicable = stats.inapplicable.load(Ordering::Relaxed);
    report.twin_steps = stats.twin_steps.load(Ordering::Relaxed);
    report.boots = stats.boots.load(Ordering::Relaxed);
    report.coverage = stats.coverage.into_inner().unwrap();
    report.seconds = t.elapsed().as_secs_f64();
    Ok(report)
}

/// Counters shared by the workers.
#[derive(Default)]
struct Stats {
    transitions: AtomicU64,
    inapplicable: AtomicU64,
    twin_steps: AtomicU64,
    boots: AtomicU64,
    coverage: Mutex<BTreeMap<String, u64>>,
}

/// The events from boot to node `i` of level `level`.
fn path_of(levels: &[Vec<Node>], start: &[Event], level: usize, i: usize) -> Vec<Event> {
    let mut rev = Vec::new();
    let (mut l, mut i) = (level, i);
    while l > 0 {
        let n = &levels[l][i];
        rev.push(n.event.clone().unwrap());
        i = n.parent as usize;
        l -= 1;
    }
    let mut path = start.to_vec();
    path.extend(rev.into_iter().rev());
    path
}

fn failure(
    property: &'static str,
    events: &[Event],
    start_len: usize,
    secret: Option<Handle>,
    message: String,
) -> Box<Failure> {
    Box::new(Failure {
        property,
        events: events.to_vec(),
        start_len,
        secret,
        message,
    })
}

/// The initial state's checks: the engine boots into the model's state.
fn check_initial(
    c: &Config,
    model: &Model,
    sys: &mut dyn System,
    start: &[Event],
) -> Result<(), Box<Failure>> {
    let s = sys.observe();
    let fail = |p, m| failure(p, &start[..0], 0, None, m);
    if s != model.state {
        return Err(fail(
            "refinement",
            "the booted engine is not the model's initial state".into(),
        ));
    }
    invariants(c, &s).map_err(|m| fail("invariants", m))?;
    Ok(())
}

/// A fresh system replaying `path`, with the model's state after it.
fn replay(c: &Config, boot: Boot<'_>, path: &[Event], stats: &Stats) -> (Box<dyn System>, Model) {
    stats.boots.fetch_add(1, Ordering::Relaxed);
    let mut sys = boot();
    let mut model = Model::new(c.clone());
    for e in path {
        let want = model.apply(e);
        let got = sys.step(e);
        assert_eq!(
            got, want,
            "replay diverged at {e:?}: the engine is not deterministic"
        );
    }
    // Checked when the path was first explored.
    let _ = sys.arch_check();
    (sys, model)
}

/// Runs `e` on `sys` (in `before`) and checks every per-step property
/// against the model's outcome `want` and next state `next`.
fn check_step(
    c: &Config,
    sys: &mut dyn System,
    before: &State,
    e: &Event,
    want: Outcome,
    next: &State,
) -> Result<State, (&'static str, String)> {
    let got = sys.step(e);
    if got != want {
        return Err(("refinement", format!("engine {got:?}, model {want:?}")));
    }
    let after = sys.observe();
    if after != *next {
        return Err(("refinement", diff(next, &after)));
    }
    invariants(c, &after).map_err(|m| ("invariants", m))?;
    // The host's Stage-2, and what its devices reach through the IOMMU,
    // are exactly the pages the host may touch.
    let accessible: Vec<u64> = after
        .pages
        .keys()
        .copied()
        .filter(|&pa| after.host_may_access(pa))
        .collect();
    for (what, view) in [
        ("host Stage-2 maps", sys.host_mapped()),
        ("the DMA view reaches", sys.dma_view()),
    ] {
        if view != accessible {
            let extra: Vec<_> = view
                .iter()
                .filter(|pa| !after.host_may_access(**pa))
                .collect();
            let missing: Vec<_> = accessible.iter().filter(|pa| !view.contains(pa)).collect();
            return Err((
                "invariants",
                format!("{what} {extra:x?}, which the host may not touch, and misses {missing:x?}"),
            ));
        }
    }
    integrity(before, &after, e).map_err(|m| ("integrity", m))?;
    sys.arch_check().map_err(|m| ("break-before-make", m))?;
    Ok(after)
}

/// The first differing part of two states, for a readable counterexample.
pub fn diff(want: &State, got: &State) -> String {
    for (pa, p) in &want.pages {
        if got.pages.get(pa) != Some(p) {
            return format!("page {pa:#x}: engine {:?}, model {p:?}", got.pages.get(pa));
        }
    }
    for (h, vm) in &want.vms {
        if got.vms.get(h) != Some(vm) {
            return format!("VM {h:#x}: engine {:?}, model {vm:?}", got.vms.get(h));
        }
    }
    format!("engine {got:?}, model {want:?}")
}

/// Explores one node: every event of its domain, checked; returns the
/// canonical keys of the states its events lead to.
fn visit(
    setup: &Setup,
    boot: Boot<'_>,
    path: &[Event],
    stats: &Stats,
) -> Result<Vec<(u128, Event)>, Box<Failure>> {
    let c = &setup.config;
    let start_len = setup.start.len();
    let (mut shared, model) = replay(c, boot, path, stats);
    let before = model.state.clone();
    let mut shared_history: Vec<Event> = path.to_vec();
    // Twins for the events that change nothing abstract (run one after
    // the other, like `shared`): one per secret.
    let secrets = if setup.noninterference {
        secrets(&before)
    } else {
        Vec::new()
    };
    let mut twins: Vec<(Handle, Box<dyn System>)> = Vec::new();
    for &v in &secrets {
        let (mut b, _) = replay(c, boot, path, stats);
        perturb(&mut *b, &before, v);
        twins.push((v, b));
    }
    let mut children = Vec::new();
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    // The shared engine's model: the node's, plus the DMA faults of the
    // events run on it so far.
    let mut chain = model.clone();
    for e in events(c, &model) {
        let (want, next) = model.step(&e);
        if want == Outcome::Inapplicable {
            stats.inapplicable.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        stats.transitions.fetch_add(1, Ordering::Relaxed);
        *seen.entry(label(&e, want)).or_default() += 1;
        if same_but_bookkeeping(&next, &model) {
            // Nothing abstract changes but perhaps the DMA fault record or
            // the counters:
            // run on the shared engine and twins, against the chain's model.
            let (want, next) = chain.step(&e);
            shared_history.push(e.clone());
            let a_after = check_step(c, &mut *shared, &chain.state, &e, want, &next.state)
                .map_err(|(p, m)| failure(p, &shared_history, start_len, None, m))?;
            chain = next;
            for (v, b) in &mut twins {
                stats.twin_steps.fetch_add(1, Ordering::Relaxed);
                twin_step(&a_after, want, &mut **b, &e, *v).map_err(|m| {
                    failure("noninterference", &shared_history, start_len, Some(*v), m)
                })?;
            }
            continue;
        }
        let (mut sys, _) = replay(c, boot, path, stats);
        let mut history = path.to_vec();
        history.push(e.clone());
        let a_after = check_step(c, &mut *sys, &before, &e, want, &next.state)
            .map_err(|(p, m)| failure(p, &history, start_len, None, m))?;
        for &v in &secrets {
            stats.twin_steps.fetch_add(1, Ordering::Relaxed);
            let (mut b, _) = replay(c, boot, path, stats);
            perturb(&mut *b, &before, v);
            twin_step(&a_after, want, &mut *b, &e, v)
                .map_err(|m| failure("noninterference", &history, start_len, Some(v), m))?;
        }
        children.push((canonical(&next), e));
    }
    let mut cov = stats.coverage.lock().unwrap();
    for (k, n) in seen {
        *cov.entry(k).or_default() += n;
    }
    Ok(children)
}

/// What kind of outcome `e` had: `host VmCreate NotOwner`, `guest Share
/// Success`, `exit Mmio`, `guest store RAM`, `host load fault`...
pub fn label(e: &Event, out: Outcome) -> String {
    let status = |r: u64| {
        isola_abi::Status::from_raw(r as i64)
            .map_or_else(|| format!("{r:#x}"), |s| format!("{s:?}"))
    };
    match (e, out) {
        (_, Outcome::Exit(x)) => {
            let exit = isola_abi::Exit::decode(x).map_or("?".into(), |x| format!("{x:?}"));
            let kind = exit.split([' ', '{']).next().unwrap_or("?").to_string();
            format!("exit {kind}")
        }
        (Event::HostHvc { regs, .. }, Outcome::HostReturn(r)) => {
            match HostCall::from_id(regs[0] & 0xffff_ffff) {
                Some(call) => format!("host {call:?} {}", status(r[0])),
                None => format!("host unknown id {}", status(r[0])),
            }
        }
        (Event::HostHvc { .. }, Outcome::Entered) => "host VcpuRun Entered".into(),
        (Event::GuestHvc { regs, .. }, Outcome::GuestReturn(r)) => {
            match GuestCall::from_id(regs[0] & 0xffff_ffff) {
                Some(call) => format!("guest {call:?} {}", status(r[0])),
                None => match psci_name(regs[0]) {
                    Some(n) => format!("guest PSCI {n} {}", r[0] as i64),
                    None => format!("guest unknown id {}", status(r[0])),
                },
            }
        }
        (Event::GuestSysReg { access, .. }, Outcome::GuestDone) => {
            format!("guest sysreg op0 {} done", access.op0)
        }
        (Event::GuestTimer { .. }, Outcome::GuestDone) => "guest timer".into(),
        (Event::GuestIntAck { .. }, Outcome::GuestDone) => "guest interrupt ack".into(),
        (Event::GuestIntEoi { .. }, Outcome::GuestDone) => "guest interrupt EOI".into(),
        (Event::DmaRead { .. }, Outcome::DmaLoaded(_)) => "DMA load".into(),
        (Event::DmaWrite { .. }, Outcome::DmaStored) => "DMA store".into(),
        (Event::DmaRead { .. } | Event::DmaWrite { .. }, Outcome::DmaFault) => "DMA fault".into(),
        (Event::HostRead { .. }, Outcome::HostLoaded(_)) => "host load".into(),
        (Event::HostWrite { .. }, Outcome::HostStored) => "host store".into(),
        (Event::HostRead { .. }, Outcome::HostFault) => "host load fault".into(),
        (Event::HostWrite { .. }, Outcome::HostFault) => "host store fault".into(),
        (Event::GuestRead { .. }, Outcome::GuestDone) => "guest load RAM".into(),
        (Event::GuestWrite { .. }, Outcome::GuestDone) => "guest store RAM".into(),
        (Event::GuestSetReg { .. }, Outcome::GuestDone) => "guest register write".into(),
        (e, o) => format!("{e:?} {o:?}"),
    }
}

/// Whether `a` is `b` but for bookkeeping no other event depends on: the
/// record of refused DMAs (a count and the last address), which only
/// `Accounting(Dma)` reports, and the per-CPU event counters, which only
/// `Accounting(Counter)` reports. Such events run on the node's shared
/// engine against the chain's model, which keeps both exact.
fn same_but_bookkeeping(a: &Model, b: &Model) -> bool {
    if a.state.dma == b.state.dma {
        return a.same_but_counters(b);
    }
    let mut a = a.clone();
    a.state.dma = b.state.dma;
    a.same_but_counters(b)
}

/// Re-checks a failure on a fresh engine from its node's shortest path
/// plus the failing event alone, and reports that if it still fails (the
/// failure found may have come after other, state-preserving events).
fn shortest(setup: &Setup, boot: Boot<'_>, f: Failure) -> Failure {
    let c = &setup.config;
    let stats = Stats::default();
    let Some((last, _)) = f.events.split_last() else {
        return f;
    };
    // The failing event after the shortest prefix of the history that
    // still fails (the history may hold state-preserving events `visit`
    // ran before it on the same engine).
    for cut in f.start_len..f.events.len() {
        let path = &f.events[..cut];
        let (mut sys, model) = replay(c, boot, path, &stats);
        let (want, next) = model.step(last);
        if want == Outcome::Inapplicable {
            continue;
        }
        let result = if let Some(v) = f.secret {
            check_step(c, &mut *sys, &model.state, last, want, &next.state)
                .map_err(|(_, m)| m)
                .and_then(|a_after| {
                    let (mut b, _) = replay(c, boot, path, &stats);
                    perturb(&mut *b, &model.state, v);
                    twin_step(&a_after, want, &mut *b, last, v)
                })
        } else {
            check_step(c, &mut *sys, &model.state, last, want, &next.state)
                .map(|_| ())
                .map_err(|(_, m)| m)
        };
        if let Err(message) = result {
            let mut events = path.to_vec();
            events.push(last.clone());
            return Failure {
                events,
                message,
                ..f
            };
        }
    }
    f
}

// ---- Noninterference twins ----

/// VMs with something to keep secret: private pages (a live VM's, or a
/// destroyed one's awaiting reclaim) or vCPUs.
fn secrets(s: &State) -> Vec<Handle> {
    let mut v: Vec<Handle> = s
        .pages
        .values()
        .filter_map(|p| match (p.owner, p.state) {
            (Owner::Vm(h), PageState::Owned) => Some(h),
            _ => None,
        })
        .chain(
            s.vms
                .iter()
                .filter(|(_, vm)| !vm.vcpus.is_empty())
                .map(|(&h, _)| h),
        )
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Makes `b` (in state `s`) differ from it only in `v`'s secrets: the
/// first and last word of each of its private pages, and its vCPUs'
/// registers x7..=x29.
fn perturb(b: &mut dyn System, s: &State, v: Handle) {
    for (&pa, p) in &s.pages {
        if p.owner == Owner::Vm(v) && p.state == PageState::Owned {
            for w in [0, PAGE_SIZE / 8 - 1] {
                b.poke(pa + 8 * w, secret(pa >> 12, w));
            }
        }
    }
    if let Some(vm) = s.vms.get(&v) {
        for &i in vm.vcpus.keys() {
            for r in SECRET_REGS {
                b.set_reg(v, i, r, secret(u64::from(r), i));
            }
        }
    }
}

/// Runs `e` on twin `b` and compares it with run A's outcome and state
/// after the same event: everyone but `secret` must see the same.
fn twin_step(
    a_after: &State,
    a_out: Outcome,
    b: &mut dyn System,
    e: &Event,
    secret: Handle,
) -> Result<(), String> {
    let b_out = b.step(e);
    if b_out != a_out {
        return Err(format!("run A {a_out:?}, twin {b_out:?}"));
    }
    low_equivalent(a_after, &b.observe(), secret)
}

// ---- Canonical form ----

/// A 128-bit digest of the canonical form of `m` (the least encoding over
/// CPU permutations, with handles renamed by slot and generation distance,
/// and without the record of refused DMAs, which changes on every refusal
/// and matters to nothing but the `Accounting(Dma)` answer).
pub fn canonical(m: &Model) -> u128 {
    let n = m.state.cpus.len();
    let mut best: Option<Vec<u64>> = None;
    for perm in permutations(n) {
        let enc = encode(m, &perm);
        if best.as_ref().is_none_or(|b| enc < *b) {
            best = Some(enc);
        }
    }
    let enc = best.unwrap_or_default();
    let mut h1 = std::hash::DefaultHasher::new();
    let mut h2 = std::hash::DefaultHasher::new();
    0xa5u8.hash(&mut h2);
    enc.hash(&mut h1);
    enc.hash(&mut h2);
    u128::from(h1.finish()) << 64 | u128::from(h2.finish())
}

/// Every permutation of `0..n` (n is 2 or 3 here).
fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n <= 1 {
        return vec![(0..n).collect()];
    }
    let mut out = Vec::new();
    for p in permutations(n - 1) {
        for pos in 0..=p.len() {
            let mut q = p.clone();
            q.insert(pos, n - 1);
            out.push(q);
        }
    }
    out
}

/// The model as numbers, CPU `i` renamed `perm[i]`, handles renamed by
/// [`canon_handle`].
fn encode(m: &Model, perm: &[usize]) -> Vec<u64> {
    let gens: Vec<(u64, bool)> = m.slots().collect();
    let h = |h: Handle| canon_handle(&gens, h);
    let owner = |o: Owner| match o {
        Owner::Engine => 0,
        Owner::Host => 1,
        Owner::Vm(v) => 2 + h(v),
    };
    let cpu = |c: usize| perm.get(c).copied().unwrap_or(c) as u64;
    let mut e = Vec::with_capacity(256);
    for &(_, taken) in &gens {
        e.push(u64::from(taken));
    }
    for (&pa, p) in &m.state.pages {
        e.push(pa);
        e.push(owner(p.owner));
        match p.state {
            PageState::Owned => e.push(0),
            PageState::Shared { with } => e.extend([1, owner(with)]),
            PageState::Pool { vm } => e.extend([2, h(vm)]),
        }
        match &p.contents {
            None => e.push(u64::MAX),
            Some(c) => {
                e.push(c.len() as u64);
                for (&w, &v) in c {
                    e.extend([u64::from(w), v]);
                }
            }
        }
    }
    let mut vms: Vec<(u64, Handle)> = m.state.vms.keys().map(|&v| (h(v), v)).collect();
    vms.sort_unstable();
    for (ch, v) in vms {
        let vm = &m.state.vms[&v];
        e.extend([ch, vm.max_vcpus, u64::from(vm.off), vm.pool_free]);
        e.push(vm.map.len() as u64);
        for (&ipa, mp) in &vm.map {
            e.extend([ipa, mp.pa, mp.perms]);
        }
        e.push(vm.vcpus.len() as u64);
        for (&i, c) in &vm.vcpus {
            e.push(i);
            e.extend(c.regs);
            e.extend([c.pc, c.pstate, c.el1.elr, c.el1.spsr, c.el1.esr, c.el1.far]);
            e.extend(c.lrs);
            e.extend([c.timer.0, c.timer.1]);
            e.push(match c.run {
                RunState::Ready => 0,
                RunState::Loaded { cpu: n } => 1 + cpu(n),
                RunState::Off => 100,
                RunState::OnPending => 101,
                RunState::Stopped => 102,
            });
            match c.pending {
                Pending::None => e.push(0),
                Pending::HostReply => e.push(1),
                Pending::MmioRead { reg, size, far } => {
                    e.extend([2, u64::from(reg), u64::from(size), far]);
                }
                Pending::MmioWrite { far } => e.extend([3, far]),
                Pending::MemFault { far, write, fetch } => {
                    e.extend([4, far, u64::from(write), u64::from(fetch)]);
                }
            }
        }
        let tables = m.tables().get(&v);
        e.push(tables.map_or(0, |t| t.len() as u64));
        for &(s, i) in tables.into_iter().flatten() {
            e.extend([u64::from(s), i]);
        }
    }
    let mut cpus = vec![0u64; m.state.cpus.len()];
    for (i, c) in m.state.cpus.iter().enumerate() {
        let slot = cpus.get_mut(cpu(i) as usize).unwrap();
        *slot = match *c {
            Cpu::Host => u64::MAX,
            Cpu::Guest { vm, vcpu } => h(vm) << 8 | vcpu,
        };
    }
    e.extend(cpus);
    e
}

/// A handle as (slot, generations behind the slot's next one): 0 for the
/// slot's live VM, 1 for the destroyed one awaiting reclaim.
fn canon_handle(gens: &[(u64, bool)], h: Handle) -> u64 {
    let slot = h & 0xffff;
    let g = h >> 16;
    let next = gens.get(slot as usize).map_or(0, |s| s.0);
    slot << 8 | next.wrapping_sub(g) & 0xff
}

// ---- The event domains ----

/// The handles worth trying in `m`: every live one, then the error
/// classes: for each slot the previous generation (a destroyed VM's, or
/// generation 0 that no VM ever has) and, for a slot without a live VM,
/// the handle its next VM will get; a slot beyond the table; all ones.
fn handles(m: &Model) -> (Vec<Handle>, Vec<Handle>) {
    let live: Vec<Handle> = m.state.vms.keys().copied().collect();
    let mut bad = Vec::new();
    for (s, (g, _)) in m.slots().enumerate() {
        let s = s as u64;
        bad.push(g.wrapping_sub(1) << 16 | s);
        let next = g << 16 | s;
        if !m.state.vms.contains_key(&next) {
            bad.push(next);
        }
    }
    bad.push(1 << 16 | m.config.max_vms as u64);
    bad.push(u64::MAX);
    (live, bad)
}

/// Page arguments: the lowest page of each class of free host pages (by
/// contents), the highest free host page, and the lowest page of every
/// other class of (owner, state, contents, mappings); then addresses that
/// are not pages of RAM.
struct Pages {
    free: Vec<u64>,
    highest_free: Option<u64>,
    other: Vec<u64>,
    not_ram: Vec<u64>,
}

fn pages(c: &Config, s: &State) -> Pages {
    let mut mapped: BTreeMap<u64, Vec<(Handle, u64, u64)>> = BTreeMap::new();
    for (&h, vm) in &s.vms {
        for (&ipa, mp) in &vm.map {
            mapped.entry(mp.pa).or_default().push((h, ipa, mp.perms));
        }
    }
    let mut seen = Vec::new();
    let mut free = Vec::new();
    let mut other = Vec::new();
    let mut highest_free = None;
    for (&pa, p) in &s.pages {
        let class = (
            p.owner,
            p.state,
            p.contents.clone(),
            mapped.get(&pa).cloned(),
        );
        let is_free = p.owner == Owner::Host && p.state == PageState::Owned;
        if is_free {
            highest_free = Some(pa);
        }
        if seen.contains(&class) {
            continue;
        }
        seen.push(class);
        if is_free {
            free.push(pa)
        } else {
            other.push(pa)
        }
    }
    let end = c.ram_base + c.ram_pages * PAGE_SIZE;
    Pages {
        free,
        highest_free,
        other,
        not_ram: vec![
            c.ram_base + 8,
            c.ram_base - PAGE_SIZE,
            end,
            !(PAGE_SIZE - 1),
        ],
    }
}

fn hvc(cpu: usize, call: HostCall, args: [u64; 5]) -> Event {
    Event::HostHvc {
        cpu,
        regs: [call as u64, args[0], args[1], args[2], args[3], args[4], 0],
    }
}

fn ghvc(cpu: usize, id: u64, a: u64, b: u64) -> Event {
    Event::GuestHvc {
        cpu,
        regs: [id, a, b, 0, 0, 0, 0],
    }
}

/// Every event the exploration tries in `m`.
pub fn events(c: &Config, m: &Model) -> Vec<Event> {
    let s = &m.state;
    let mut out = Vec::new();
    let host_cpus: Vec<usize> = (0..s.cpus.len())
        .filter(|&i| s.cpus[i] == Cpu::Host)
        .collect();
    // Host calls other than `VcpuRun` do not depend on the CPU: they go on
    // the first CPU running the host. `VcpuRun` goes on every one.
    if let Some(&cpu) = host_cpus.first() {
        host_events(c, m, cpu, &mut out);
    }
    let (live, bad) = handles(m);
    for &cpu in &host_cpus {
        for &h in &live {
            for i in 0..3 {
                out.push(hvc(cpu, HostCall::VcpuRun, [h, i, RUN_VALUE, 0, 0]));
            }
        }
        if let Some(&cpu0) = host_cpus.first()
            && cpu == cpu0
        {
            for &h in &bad {
                out.push(hvc(cpu, HostCall::VcpuRun, [h, 0, RUN_VALUE, 0, 0]));
            }
        }
    }
    for (cpu, st) in s.cpus.iter().enumerate() {
        if let Cpu::Guest { vm, vcpu } = *st {
            guest_events(c, cpu, vm, vcpu, &mut out);
        }
    }
    dma_events(c, m, &mut out);
    out
}

/// The host's device, by DMA through the IOMMU, whatever the CPUs run:
/// loads of the first word of every page of RAM, of the page after it and
/// of an unaligned address; stores to every page the host may not touch,
/// to one page of each class it may, and after RAM.
fn dma_events(c: &Config, m: &Model, out: &mut Vec<Event>) {
    let s = &m.state;
    let pg = pages(c, s);
    let end = c.ram_base + c.ram_pages * PAGE_SIZE;
    for &pa in s.pages.keys().chain(&[end, c.ram_base + 4]) {
        out.push(Event::DmaRead { pa });
    }
    let forbidden = s.pages.keys().copied().filter(|&pa| !s.host_may_access(pa));
    let allowed = pg
        .free
        .iter()
        .chain(&pg.other)
        .copied()
        .filter(|&pa| s.host_may_access(pa));
    for pa in forbidden.chain(allowed).chain([end]) {
        out.push(Event::DmaWrite {
            pa,
            value: DMA_VALUE,
        });
    }
}

fn host_events(c: &Config, m: &Model, cpu: usize, out: &mut Vec<Event>) {
    let s = &m.state;
    let (live, bad) = handles(m);
    let pg = pages(c, s);
    let free0 = pg.free.first().copied().unwrap_or(c.ram_base);
    let wrong_pages: Vec<u64> = pg.other.iter().chain(&pg.not_ram).copied().collect();
    let h0 = live.first().copied().unwrap_or(1 << 16);
    let rw = perms::R | perms::W;
    let call = |call: HostCall, args: [u64; 5]| hvc(cpu, call, args);

    // Version, and function ids that are not host calls.
    out.push(call(HostCall::Version, [0; 5]));
    for id in [
        0,
        GuestCall::Share as u64,
        HostCall::Accounting as u64 + 1,
        u64::from(psci::VERSION),
    ] {
        out.push(Event::HostHvc {
            cpu,
            regs: [id, 0, 0, 0, 0, 0, 0],
        });
    }
    // SMCCC: the upper half of x0 is ignored.
    out.push(Event::HostHvc {
        cpu,
        regs: [1 << 32 | HostCall::Version as u64, 0, 0, 0, 0, 0, 0],
    });

    // VmCreate(pa, pages, max vcpus): a root alone, or a root, a vCPU and
    // the three tables of a first mapping; one or two vCPUs allowed.
    for &pa in &pg.free {
        for pages in [1, 5] {
            for maxv in [1, 2] {
                out.push(call(HostCall::VmCreate, [pa, pages, maxv, 0, 0]));
            }
        }
    }
    if let Some(hi) = pg.highest_free {
        out.push(call(HostCall::VmCreate, [hi, 1, 1, 0, 0]));
        out.push(call(HostCall::VmCreate, [hi, 2, 1, 0, 0]));
    }
    for pages in [0, c.ram_pages + 1] {
        out.push(call(HostCall::VmCreate, [free0, pages, 2, 0, 0]));
    }
    for maxv in [0, c.max_vcpus + 1] {
        out.push(call(HostCall::VmCreate, [free0, 1, maxv, 0, 0]));
    }
    for &pa in &wrong_pages {
        out.push(call(HostCall::VmCreate, [pa, 1, 1, 0, 0]));
    }

    // VmDestroy(h).
    for &h in live.iter().chain(&bad) {
        out.push(call(HostCall::VmDestroy, [h, 0, 0, 0, 0]));
    }

    // VmTopup(h, pa, pages).
    for &h in &live {
        for &pa in &pg.free {
            for pages in [1, 3] {
                out.push(call(HostCall::VmTopup, [h, pa, pages, 0, 0]));
            }
        }
    }
    out.push(call(HostCall::VmTopup, [h0, free0, 0, 0, 0]));
    for &pa in &wrong_pages {
        out.push(call(HostCall::VmTopup, [h0, pa, 1, 0, 0]));
    }
    for &h in &bad {
        out.push(call(HostCall::VmTopup, [h, free0, 1, 0, 0]));
    }

    // VcpuCreate(h, index, pc, x0, flags): indices 0, 1 and 2 (beyond
    // either `max vcpus`), on or powered off; one index far out of range;
    // an unknown flag.
    for &h in &live {
        for i in [0, 1, 2] {
            for flags in [0, vcpu_flags::OFF] {
                out.push(call(HostCall::VcpuCreate, [h, i, ENTRY, 0x10 + i, flags]));
            }
        }
    }
    out.push(call(HostCall::VcpuCreate, [h0, u64::MAX, ENTRY, 0, 0]));
    out.push(call(HostCall::VcpuCreate, [h0, 0, ENTRY, 0, 1 << 1]));
    for &h in &bad {
        out.push(call(HostCall::VcpuCreate, [h, 0, ENTRY, 0, 0]));
    }

    // VcpuInterrupts(h, index, lr0..=lr3): clear them, one pending
    // interrupt whose EOI the host wants to hear of, another without; then
    // words the engine must refuse (a vINTID past 1019, the HW bit, one
    // vINTID twice, EOI with neither pending nor active).
    let lrs_valid: [[u64; 4]; 3] = [
        [0; 4],
        [lr::pending(33, 0, true), 0, 0, 0],
        [lr::pending(27, 0, false), 0, 0, 0],
    ];
    for &h in &live {
        for i in [0, 1, 2] {
            for l in lrs_valid {
                out.push(Event::HostHvc {
                    cpu,
                    regs: [
                        HostCall::VcpuInterrupts as u64,
                        h,
                        i,
                        l[0],
                        l[1],
                        l[2],
                        l[3],
                    ],
                });
            }
        }
    }
    for l in [
        [lr::PENDING | 1020, 0, 0, 0],
        [lr::PENDING | lr::HW | 33 | 33 << 32, 0, 0, 0],
        [lr::pending(33, 0, false), lr::pending(33, 0, false), 0, 0],
        [lr::EOI | 33, 0, 0, 0],
    ] {
        out.push(Event::HostHvc {
            cpu,
            regs: [
                HostCall::VcpuInterrupts as u64,
                h0,
                0,
                l[0],
                l[1],
                l[2],
                l[3],
            ],
        });
    }
    for &h in &bad {
        out.push(Event::HostHvc {
            cpu,
            regs: [HostCall::VcpuInterrupts as u64, h, 0, 0, 0, 0, 0],
        });
    }

    // VcpuInjectAbort(h, index).
    for &h in &live {
        for i in [0, 1, 2] {
            out.push(call(HostCall::VcpuInjectAbort, [h, i, 0, 0, 0]));
        }
    }
    for &h in &bad {
        out.push(call(HostCall::VcpuInjectAbort, [h, 0, 0, 0, 0]));
    }

    // Donate(h, pa, ipa, perms, pages) and Share(h, pa, ipa, perms).
    for &h in &live {
        for &pa in &pg.free {
            for ipa in [IPA_A, IPA_B, IPA_C, IPA_TOP] {
                for p in [rw, perms::R] {
                    out.push(call(HostCall::Donate, [h, pa, ipa, p, 0]));
                }
            }
            for ipa in IPAS {
                for p in [rw, perms::R] {
                    out.push(call(HostCall::Share, [h, pa, ipa, p, 0]));
                }
            }
            // Two pages: within the IPA space, and running off its end.
            for ipa in [IPA_A, IPA_TOP] {
                out.push(call(HostCall::Donate, [h, pa, ipa, rw, RUN_PAGES]));
            }
        }
    }
    for lend in [HostCall::Donate, HostCall::Share] {
        let mut variants = Vec::new();
        if lend == HostCall::Donate {
            // 1 means the same as 0; one more than the most is refused.
            variants.push([h0, free0, IPA_A, rw, 1]);
            variants.push([h0, free0, IPA_A, rw, DONATE_MAX_PAGES + 1]);
            // A run longer than the free pages from the highest one.
            if let Some(hi) = pg.highest_free {
                variants.push([h0, hi, IPA_A, rw, RUN_PAGES]);
            }
        }
        for &pa in &wrong_pages {
            variants.push([h0, pa, IPA_A, rw, 0]);
        }
        for ipa in [c.mmio_base, IPA_A + 8, 1 << c.ipa_bits] {
            variants.push([h0, free0, ipa, rw, 0]);
        }
        for p in [0, rw | 8] {
            variants.push([h0, free0, IPA_A, p, 0]);
        }
        for &h in &bad {
            variants.push([h, free0, IPA_A, rw, 0]);
        }
        for v in variants {
            out.push(call(lend, v));
        }
    }

    // Unshare(h, pa, ipa): every lent page with the right VM and IPA, with
    // another VM, at another IPA; then wrong pages, IPAs and handles.
    let mut lent0 = None;
    for (&pa, p) in &s.pages {
        if let (Owner::Host, PageState::Shared { with: Owner::Vm(b) }) = (p.owner, p.state) {
            let at = s.vms.get(&b).and_then(|vm| {
                vm.map
                    .iter()
                    .find(|(_, mp)| mp.pa == pa)
                    .map(|(&ipa, _)| ipa)
            });
            let Some(at) = at else { continue };
            lent0.get_or_insert((b, pa, at));
            out.push(call(HostCall::Unshare, [b, pa, at, 0, 0]));
            for &h in &live {
                if h != b {
                    out.push(call(HostCall::Unshare, [h, pa, at, 0, 0]));
                }
            }
            for ipa in IPAS {
                if ipa != at {
                    out.push(call(HostCall::Unshare, [b, pa, ipa, 0, 0]));
                }
            }
        }
    }
    let (ub, upa, uipa) = lent0.unwrap_or((h0, free0, IPA_A));
    for &pa in pg.free.iter().chain(&wrong_pages) {
        out.push(call(HostCall::Unshare, [ub, pa, uipa, 0, 0]));
    }
    for ipa in [c.mmio_base, uipa + 8, 1 << c.ipa_bits] {
        out.push(call(HostCall::Unshare, [ub, upa, ipa, 0, 0]));
    }
    for &h in &bad {
        out.push(call(HostCall::Unshare, [h, upa, uipa, 0, 0]));
    }

    // Reclaim(pa): one page of every class, and non-pages.
    for &pa in pg.free.iter().chain(&wrong_pages) {
        out.push(call(HostCall::Reclaim, [pa, 0, 0, 0, 0]));
    }

    // Accounting(selector, h): every selector (`Counter` reading CPU 0's
    // first counter) and the first that is none.
    for sel in [0, 1, 3, 4, 5] {
        out.push(call(HostCall::Accounting, [sel, 0, 0, 0, 0]));
    }
    for &h in live.iter().chain(&bad) {
        out.push(call(HostCall::Accounting, [2, h, 0, 0, 0]));
    }

    // Host loads: the first word of every page of RAM (and just outside
    // it), the last word of one page per class.
    for &pa in s
        .pages
        .keys()
        .chain(&[c.ram_base - PAGE_SIZE, pg.not_ram[2]])
    {
        out.push(Event::HostRead { cpu, pa });
    }
    for &pa in pg.free.iter().chain(&pg.other) {
        out.push(Event::HostRead {
            cpu,
            pa: pa + PAGE_SIZE - 8,
        });
    }
    // Host stores: every page it may not touch, one page per class of the
    // pages it may (and the page after RAM).
    for (&pa, _) in s.pages.iter().filter(|(pa, _)| !s.host_may_access(**pa)) {
        out.push(Event::HostWrite {
            cpu,
            pa,
            value: HOST_VALUE,
        });
    }
    for &pa in pg.free.iter().chain(&pg.other) {
        if s.host_may_access(pa) {
            out.push(Event::HostWrite {
                cpu,
                pa,
                value: HOST_VALUE,
            });
        }
    }
    out.push(Event::HostWrite {
        cpu,
        pa: pg.not_ram[2],
        value: HOST_VALUE,
    });
}

fn guest_events(c: &Config, cpu: usize, vm: Handle, vcpu: u64, out: &mut Vec<Event>) {
    let value = guest_value(vm, vcpu);
    for (_, _, reg) in SHAPES {
        out.push(Event::GuestSetReg { cpu, reg, value });
    }
    let access_ipas = [IPA_A, IPA_B, IPA_C, c.mmio_base, 1 << c.ipa_bits];
    for ipa in access_ipas {
        for (off, size, reg) in SHAPES {
            let ipa = ipa + off;
            out.push(Event::GuestRead {
                cpu,
                ipa,
                reg,
                size,
            });
            out.push(Event::GuestWrite {
                cpu,
                ipa,
                reg,
                size,
            });
        }
    }
    out.push(ghvc(cpu, GuestCall::Info as u64, 0, 0));
    out.push(ghvc(cpu, 1 << 32 | GuestCall::Info as u64, 0, 0));
    for op in [GuestCall::Share, GuestCall::Unshare, GuestCall::Relinquish] {
        for ipa in IPAS
            .into_iter()
            .chain([c.mmio_base, IPA_A + 8, 1 << c.ipa_bits])
        {
            out.push(ghvc(cpu, op as u64, ipa, 0));
        }
    }
    out.push(ghvc(cpu, GuestCall::HostCall as u64, value, 0x4843));
    for id in [psci::CPU_OFF, psci::SYSTEM_OFF, psci::SYSTEM_RESET] {
        out.push(ghvc(cpu, u64::from(id), 0, 0));
    }
    // PSCI beyond those: the queries; CPU_SUSPEND; AFFINITY_INFO of each
    // vCPU index and of a target in another cluster, and at another level;
    // CPU_ON of each index at the entry point, a misaligned one and one
    // outside the IPA space, and of a target in another cluster.
    out.push(ghvc(cpu, u64::from(psci::VERSION), 0, 0));
    out.push(ghvc(cpu, u64::from(psci::MIGRATE_INFO_TYPE), 0, 0));
    out.push(ghvc(
        cpu,
        u64::from(psci::FEATURES),
        u64::from(psci::CPU_ON),
        0,
    ));
    out.push(ghvc(cpu, u64::from(psci::FEATURES), 0xC400_0012, 0));
    out.push(ghvc(cpu, u64::from(psci::CPU_SUSPEND), 0, 0));
    let other_cluster = psci::mpidr(0) | 1 << 8;
    for i in [0u16, 1, 2] {
        out.push(ghvc(cpu, u64::from(psci::AFFINITY_INFO), psci::mpidr(i), 0));
    }
    out.push(ghvc(
        cpu,
        u64::from(psci::AFFINITY_INFO32),
        other_cluster,
        0,
    ));
    out.push(ghvc(cpu, u64::from(psci::AFFINITY_INFO), psci::mpidr(0), 1));
    for i in [0u16, 1, 2] {
        out.push(Event::GuestHvc {
            cpu,
            regs: [
                u64::from(psci::CPU_ON),
                psci::mpidr(i),
                ENTRY,
                0x20,
                0,
                0,
                0,
            ],
        });
    }
    for (target, entry) in [
        (psci::mpidr(1), ENTRY + 2),
        (psci::mpidr(1), 1 << c.ipa_bits),
        (other_cluster, ENTRY),
    ] {
        out.push(Event::GuestHvc {
            cpu,
            regs: [u64::from(psci::CPU_ON32), target, entry, 0x20, 0, 0, 0],
        });
    }
    // Trapped system registers: an SGI to the vCPUs x2 names (x2 is set to
    // "all but me, SGI 3" just before), or to those x1's value names; a
    // debug and a PMU register (read as zero); the implementation-defined
    // space (the vCPU stops).
    out.push(Event::GuestSetReg {
        cpu,
        reg: SGI_REG,
        value: SGI_ALL_BUT_ME,
    });
    let access = |op0, op1, crn, crm, op2, rt, read| Access {
        op0,
        op1,
        crn,
        crm,
        op2,
        rt,
        read,
    };
    for access in [
        access(3, 0, 12, 11, 5, SGI_REG, false),
        access(3, 0, 12, 11, 5, 1, false),
        access(2, 0, 0, 2, 2, 1, true),
        access(3, 3, 9, 14, 0, 1, true),
        access(3, 0, 15, 0, 0, 1, true),
    ] {
        out.push(Event::GuestSysReg { cpu, access });
    }
    // The virtual timer: armed and fired, armed and not yet.
    for ctl in [0b101, 0b001] {
        out.push(Event::GuestTimer {
            cpu,
            ctl,
            cval: 0x1000,
        });
    }
    // The virtual CPU interface: acknowledge and deactivate the two
    // interrupts `VcpuInterrupts` offers.
    for intid in [33, 27] {
        out.push(Event::GuestIntAck { cpu, intid });
        out.push(Event::GuestIntEoi { cpu, intid });
    }
    for id in [
        0,
        HostCall::Donate as u64,
        GuestCall::HostCall as u64 + 1,
        u64::from(psci::VERSION),
    ] {
        out.push(ghvc(cpu, id, 0, 0));
    }
    out.push(Event::GuestWfi { cpu });
    out.push(Event::GuestUndefined { cpu });
    out.push(Event::Irq { cpu });
}

// ---- Printing ----

/// The name of a PSCI function id.
fn psci_name(id: u64) -> Option<&'static str> {
    [
        (psci::VERSION, "VERSION"),
        (psci::CPU_SUSPEND32, "CPU_SUSPEND32"),
        (psci::CPU_SUSPEND, "CPU_SUSPEND"),
        (psci::CPU_OFF, "CPU_OFF"),
        (psci::CPU_ON32, "CPU_ON32"),
        (psci::CPU_ON, "CPU_ON"),
        (psci::AFFINITY_INFO32, "AFFINITY_INFO32"),
        (psci::AFFINITY_INFO, "AFFINITY_INFO"),
        (psci::MIGRATE_INFO_TYPE, "MIGRATE_INFO_TYPE"),
        (psci::SYSTEM_OFF, "SYSTEM_OFF"),
        (psci::SYSTEM_RESET, "SYSTEM_RESET"),
        (psci::FEATURES, "FEATURES"),
    ]
    .iter()
    .find(|(i, _)| u64::from(*i) == id)
    .map(|(_, n)| *n)
}

/// An event as a person reads it: `cpu0 host VmCreate(pa=0x…, …)`.
pub fn show(e: &Event) -> String {
    match e {
        Event::HostHvc { cpu, regs } => {
            let name = HostCall::from_id(regs[0] & 0xffff_ffff)
                .filter(|_| regs[0] >> 32 == 0)
                .map(|c| format!("{c:?}"));
            let args = |names: &[&str]| -> String {
                names
                    .iter()
                    .enumerate()
                    .map(|(i, n)| format!("{n}={:#x}", regs[i + 1]))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let a = match HostCall::from_id(regs[0] & 0xffff_ffff) {
                Some(HostCall::VmCreate) => args(&["pa", "pages", "max_vcpus"]),
                Some(HostCall::VmDestroy) => args(&["h"]),
                Some(HostCall::VmTopup) => args(&["h", "pa", "pages"]),
                Some(HostCall::VcpuCreate) => args(&["h", "index", "pc", "x0", "flags"]),
                Some(HostCall::VcpuInterrupts) => args(&["h", "index", "lr0", "lr1", "lr2", "lr3"]),
                Some(HostCall::VcpuInjectAbort) => args(&["h", "index"]),
                Some(HostCall::VcpuRun) => args(&["h", "index", "value"]),
                Some(HostCall::Donate) => args(&["h", "pa", "ipa", "perms", "pages"]),
                Some(HostCall::Share) => args(&["h", "pa", "ipa", "perms"]),
                Some(HostCall::Unshare) => args(&["h", "pa", "ipa"]),
                Some(HostCall::Reclaim) => args(&["pa"]),
                Some(HostCall::Accounting) => args(&["selector", "h"]),
                _ => String::new(),
            };
            match name {
                Some(n) => format!("cpu{cpu} host  {n}({a})"),
                None => format!("cpu{cpu} host  hvc x0={:#x}", regs[0]),
            }
        }
        Event::HostRead { cpu, pa } => format!("cpu{cpu} host  load  [{pa:#x}]"),
        Event::HostWrite { cpu, pa, value } => {
            format!("cpu{cpu} host  store [{pa:#x}] = {value:#x}")
        }
        Event::GuestSetReg { cpu, reg, value } => format!("cpu{cpu} guest x{reg} = {value:#x}"),
        Event::GuestHvc { cpu, regs } => {
            let name = GuestCall::from_id(regs[0] & 0xffff_ffff)
                .map(|c| format!("{c:?}"))
                .or_else(|| psci_name(regs[0]).map(|n| format!("PSCI {n}")))
                .unwrap_or_else(|| format!("hvc x0={:#x}", regs[0]));
            format!(
                "cpu{cpu} guest {name}(x1={:#x}, x2={:#x})",
                regs[1], regs[2]
            )
        }
        Event::GuestRead {
            cpu,
            ipa,
            reg,
            size,
        } => format!("cpu{cpu} guest load{} x{reg} <- [{ipa:#x}]", size * 8),
        Event::GuestWrite {
            cpu,
            ipa,
            reg,
            size,
        } => format!("cpu{cpu} guest store{} [{ipa:#x}] <- x{reg}", size * 8),
        Event::GuestWfi { cpu } => format!("cpu{cpu} guest WFI"),
        Event::GuestUndefined { cpu } => format!("cpu{cpu} guest undefined instruction"),
        Event::Irq { cpu } => format!("cpu{cpu} IRQ"),
        Event::GuestSysReg { cpu, access: a } => format!(
            "cpu{cpu} guest {} S{}_{}_C{}_C{}_{} x{}",
            if a.read { "mrs" } else { "msr" },
            a.op0,
            a.op1,
            a.crn,
            a.crm,
            a.op2,
            a.rt
        ),
        Event::GuestTimer { cpu, ctl, cval } => {
            format!("cpu{cpu} guest timer ctl={ctl:#x} cval={cval:#x}")
        }
        Event::DmaRead { pa } => format!("     DMA   load  [{pa:#x}]"),
        Event::DmaWrite { pa, value } => format!("     DMA   store [{pa:#x}] = {value:#x}"),
        Event::GuestIntAck { cpu, intid } => format!("cpu{cpu} guest acknowledge vINTID {intid}"),
        Event::GuestIntEoi { cpu, intid } => format!("cpu{cpu} guest deactivate vINTID {intid}"),
    }
}

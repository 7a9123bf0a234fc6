//! The security properties as checkers over abstract states.
//!
//! Each checker takes states (the model's, or an implementation's seen
//! through its abstraction function) and returns `Err(counterexample)` when
//! the property does not hold. They are independent of the transition
//! function in the parent module: the tests apply them to the
//! implementation directly, so a bug shared by model and implementation
//! still shows up here.

use super::alloc::format;
use super::alloc::string::String;
use super::alloc::vec::Vec;

use isola_abi::{HostCall, perms};

use super::state::{Cpu, Handle, Owner, PageState, RunState, State, Vcpu};
use super::{Config, Event, page_addr};

/// Who caused an event: the host, or the VM whose vCPU runs on the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Actor {
    /// The host.
    Host,
    /// A guest of this VM (its calls, accesses, and interrupts while it runs).
    Vm(Handle),
}

/// Who acts for `event` in `state` (the state before the event).
pub fn actor(state: &State, event: &Event) -> Actor {
    if event.is_dma() {
        return Actor::Host;
    }
    match state.cpus.get(event.cpu()) {
        Some(&Cpu::Guest { vm, .. }) if !event.is_host() => Actor::Vm(vm),
        _ => Actor::Host,
    }
}

/// The state invariants: one owner per page of RAM; every Stage-2 mapping of
/// a live VM points at a page that VM owns or borrows, with non-empty known
/// permissions; a page the VM owns is mapped there exactly once and a page
/// it borrows exactly once; engine, pool and reclaim-pending pages are
/// mapped nowhere; contents are described exactly for pages outside the
/// engine; vCPU load states agree with the CPUs.
pub fn invariants(config: &Config, s: &State) -> Result<(), String> {
    let ram: Vec<u64> = (0..config.ram_pages)
        .map(|i| page_addr(config.ram_base, i))
        .collect();
    if s.pages.keys().copied().collect::<Vec<_>>() != ram {
        return Err(format!(
            "pages are not exactly RAM: {} recorded, {} in RAM",
            s.pages.len(),
            ram.len()
        ));
    }
    for (&pa, p) in &s.pages {
        if p.contents.is_some() == (p.owner == Owner::Engine) {
            return Err(format!(
                "page {pa:#x} ({:?}) has contents described: {}",
                p.owner,
                p.contents.is_some()
            ));
        }
        let ok = match (p.owner, p.state) {
            (Owner::Engine, PageState::Owned) => true,
            (Owner::Engine, PageState::Pool { vm }) => s.vms.contains_key(&vm),
            (Owner::Host, PageState::Owned) => true,
            (Owner::Host, PageState::Shared { with: Owner::Vm(b) }) => mapped_times(s, b, pa) == 1,
            (Owner::Vm(h), PageState::Owned) => {
                !s.vms.contains_key(&h) || mapped_times(s, h, pa) == 1
            }
            (Owner::Vm(h), PageState::Shared { with: Owner::Host }) => mapped_times(s, h, pa) == 1,
            _ => false,
        };
        if !ok {
            return Err(format!(
                "page {pa:#x}: owner {:?} state {:?} is not a reachable combination",
                p.owner, p.state
            ));
        }
    }
    for (&h, vm) in &s.vms {
        for (&ipa, m) in &vm.map {
            if m.perms == 0 || m.perms & !perms::ALL != 0 {
                return Err(format!("VM {h} maps {ipa:#x} with perms {:#x}", m.perms));
            }
            let owned_or_borrowed = s.page(m.pa).is_some_and(|p| match (p.owner, p.state) {
                (Owner::Vm(o), PageState::Owned | PageState::Shared { with: Owner::Host }) => {
                    o == h
                }
                (Owner::Host, PageState::Shared { with }) => with == Owner::Vm(h),
                _ => false,
            });
            if !owned_or_borrowed {
                return Err(format!(
                    "VM {h} maps {ipa:#x} -> {:#x}, a page it neither owns nor borrows",
                    m.pa
                ));
            }
        }
        for (&i, v) in &vm.vcpus {
            if let RunState::Loaded { cpu } = v.run
                && s.cpus.get(cpu) != Some(&Cpu::Guest { vm: h, vcpu: i })
            {
                return Err(format!(
                    "vCPU {h}/{i} loaded on CPU {cpu}, which runs {:?}",
                    s.cpus.get(cpu)
                ));
            }
        }
    }
    for (cpu, c) in s.cpus.iter().enumerate() {
        if let Cpu::Guest { vm, vcpu } = *c {
            let v = s.vms.get(&vm).and_then(|v| v.vcpus.get(&vcpu));
            if v.map(|v| v.run) != Some(RunState::Loaded { cpu }) {
                return Err(format!("CPU {cpu} runs vCPU {vm}/{vcpu}, which is {v:?}"));
            }
        }
    }
    Ok(())
}

/// How many IPAs of live VM `h` map `pa`.
fn mapped_times(s: &State, h: Handle, pa: u64) -> usize {
    s.vms
        .get(&h)
        .map_or(0, |vm| vm.map.values().filter(|m| m.pa == pa).count())
}

/// Integrity: `event`, taken by `actor` from `before` to `after`, changed
/// nothing of any *other* VM (its private pages' owner, state and contents,
/// its mappings, its vCPUs) nor of the host's unshared pages, except what the
/// ABI lets the host do to a VM explicitly: give it a page (`Donate`,
/// `Share`), take back a lent one (`Unshare`), run one of its vCPUs
/// (`VcpuRun`, which delivers the pending reply) and destroy it (its pages
/// then wait, untouched, for `Reclaim`).
pub fn integrity(before: &State, after: &State, event: &Event) -> Result<(), String> {
    let actor = actor(before, event);
    let host_call = match (actor, event) {
        (Actor::Host, Event::HostHvc { regs, .. }) => {
            HostCall::from_id(regs[0]).map(|c| (c, regs[1], regs[2]))
        }
        _ => None,
    };
    for (&v, vm) in &before.vms {
        if actor == Actor::Vm(v) {
            continue;
        }
        let destroyed = !after.vms.contains_key(&v);
        if destroyed && host_call.map(|c| (c.0, c.1)) != Some((HostCall::VmDestroy, v)) {
            return Err(format!("VM {v} disappeared on {event:?}"));
        }
        // Its private pages: same owner, same contents; still private unless destroyed.
        for (&pa, p) in &before.pages {
            if p.owner != Owner::Vm(v) || p.state != PageState::Owned {
                continue;
            }
            let q = after.page(pa);
            if q.map(|q| (q.owner, &q.contents)) != Some((p.owner, &p.contents))
                || q.map(|q| q.state) != Some(p.state)
            {
                return Err(format!(
                    "{actor:?} changed VM {v}'s private page {pa:#x}: {p:?} -> {q:?}"
                ));
            }
        }
        if destroyed {
            continue;
        }
        let Some(vm_after) = after.vms.get(&v) else {
            continue;
        };
        // Its mappings: none changed or removed, except the host's `Unshare` of that page.
        for (ipa, m) in &vm.map {
            let kept = vm_after.map.get(ipa) == Some(m);
            let unshared = host_call == Some((HostCall::Unshare, v, m.pa));
            if !kept && !unshared {
                return Err(format!(
                    "{actor:?} changed VM {v}'s mapping {ipa:#x} -> {m:?} on {event:?}"
                ));
            }
        }
        // New mappings only by the host's `Donate` (its `x5` pages, 0
        // meaning 1) or `Share` (one) to it.
        let added = vm_after
            .map
            .keys()
            .filter(|ipa| !vm.map.contains_key(ipa))
            .count();
        let run = match event {
            Event::HostHvc { regs, .. } => usize::try_from(regs[5].max(1)).unwrap_or(usize::MAX),
            _ => 0,
        };
        let gives = match host_call {
            Some((HostCall::Donate, h, _)) if h == v => run,
            Some((HostCall::Share, h, _)) if h == v => 1,
            _ => 0,
        };
        if added > gives {
            return Err(format!(
                "{actor:?} added {added} mappings to VM {v} on {event:?}"
            ));
        }
        // Its vCPUs: unchanged, except the one the host runs, gives
        // interrupts to (its list registers only) or answers with an
        // abort (its PC, PSTATE, EL1 exception registers and pending
        // access only).
        for (i, c) in &vm.vcpus {
            let named = |call: HostCall| {
                matches!(event, Event::HostHvc { regs, .. }
                    if host_call.map(|c| c.0) == Some(call) && regs[1] == v && regs[2] == *i)
            };
            let c_after = vm_after.vcpus.get(i);
            let allowed = if named(HostCall::VcpuRun) {
                true
            } else if named(HostCall::VcpuInterrupts) {
                c_after
                    .map(|a| Vcpu {
                        lrs: c.lrs,
                        ..a.clone()
                    })
                    .as_ref()
                    == Some(c)
            } else if named(HostCall::VcpuInjectAbort) {
                c_after
                    .map(|a| Vcpu {
                        pc: c.pc,
                        pstate: c.pstate,
                        el1: c.el1,
                        pending: c.pending,
                        ..a.clone()
                    })
                    .as_ref()
                    == Some(c)
            } else {
                c_after == Some(c)
            };
            if !allowed {
                return Err(format!(
                    "{actor:?} changed VM {v}'s vCPU {i} on {event:?}: {c:?} -> {c_after:?}"
                ));
            }
        }
    }
    // A guest never changes the host's unshared pages.
    if let Actor::Vm(_) = actor {
        for (&pa, p) in &before.pages {
            if p.owner == Owner::Host && p.state == PageState::Owned && after.page(pa) != Some(p) {
                return Err(format!(
                    "{actor:?} changed the host's page {pa:#x} on {event:?}"
                ));
            }
        }
    }
    Ok(())
}

/// Confidentiality: `a` and `b` look the same to the host and to every VM
/// other than `secret`. They may differ only in what `secret` keeps to
/// itself: the contents of its pages (owned, and those it shares, whose
/// differing contents it declassified itself), and its vCPUs' registers.
/// Everything else — owners, states, mappings, pools, vCPU states, other
/// contents and registers — must be equal.
pub fn low_equivalent(a: &State, b: &State, secret: Handle) -> Result<(), String> {
    if a.cpus != b.cpus {
        return Err(format!("CPU states differ: {:?} vs {:?}", a.cpus, b.cpus));
    }
    if a.dma != b.dma {
        return Err(format!("refused DMA differs: {:?} vs {:?}", a.dma, b.dma));
    }
    for ((&pa, p), (&pb, q)) in a.pages.iter().zip(b.pages.iter()) {
        if pa != pb || p.owner != q.owner || p.state != q.state {
            return Err(format!(
                "page {pa:#x}: {:?}/{:?} vs {pb:#x}: {:?}/{:?}",
                p.owner, p.state, q.owner, q.state
            ));
        }
        if p.owner != Owner::Vm(secret) && p.contents != q.contents {
            return Err(format!(
                "page {pa:#x} ({:?}) differs: {:?} vs {:?}",
                p.owner, p.contents, q.contents
            ));
        }
    }
    if a.vms.keys().ne(b.vms.keys()) {
        return Err(format!(
            "VM sets differ: {:?} vs {:?}",
            a.vms.keys(),
            b.vms.keys()
        ));
    }
    for ((&h, x), y) in a.vms.iter().zip(b.vms.values()) {
        if x.map != y.map
            || x.pool_free != y.pool_free
            || x.off != y.off
            || x.max_vcpus != y.max_vcpus
        {
            return Err(format!("VM {h} differs outside its vCPUs"));
        }
        for ((&i, u), w) in x.vcpus.iter().zip(y.vcpus.values()) {
            // The secret's general registers are its own; everything else
            // of its vCPUs (PC, run and pending state, PSTATE, exception
            // registers, list registers, timer) follows from public events.
            let same = if h == secret {
                Vcpu {
                    regs: w.regs,
                    ..u.clone()
                } == *w
            } else {
                u == w
            };
            if !same {
                return Err(format!("vCPU {h}/{i} differs: {u:?} vs {w:?}"));
            }
        }
        if x.vcpus.len() != y.vcpus.len() {
            return Err(format!("VM {h} has different vCPUs"));
        }
    }
    Ok(())
}

//! One guest on the host's side: each exit in, what the host does next out.
//!
//! The host loop is: pick a runnable vCPU, `VcpuInterrupts` with
//! [`Vm::list_registers`], `VcpuRun` with the value of the last
//! [`Action::Run`], and feed the exit to [`Vm::exit`]:
//!
//! | exit | the VMM |
//! |---|---|
//! | `Mmio` | emulates the UART or the GIC; an address with no device: [`Action::InjectAbort`] |
//! | `MemFault` | all guest RAM is donated at start, so a fault is outside RAM: [`Action::InjectAbort`] |
//! | `Wfx` | `WFE`, or an interrupt waiting: run again; else [`Action::Wait`] until the timer deadline or an interrupt |
//! | `Irq`, `Eoi`, `HostCall` | run again (the states were already folded in) |
//! | `CpuOn` | the named vCPU becomes runnable ([`Vm::runnable`]) |
//! | `CpuOff`, `Error` | the vCPU is done ([`Action::Stop`]) |
//! | `Sgi` | the SGI is pending at its targets, which wake |
//! | `SystemOff`, `SystemReset` | [`Action::PowerOff`] |
//!
//! Every exit also carries the list-register states and the timer's level
//! ([`isola_abi::ExitStatus`]): they go to the GIC before anything else.

use alloc::vec;
use alloc::vec::Vec;
use isola_abi::{Exit, ExitStatus, lr, vgic};

use crate::gic::Gic;
use crate::layout::{Layout, UART_SPI};
use crate::pl011::Pl011;

/// SPIs the guest's GIC has.
const SPIS: usize = 32;

/// Where a vCPU is, for the host's scheduler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuState {
    /// Powered off (PSCI), or stopped by the engine.
    Off,
    /// Runnable.
    Ready,
    /// In `WFI`: runnable again at the deadline (the guest's timer, in the
    /// counter's ticks) or when an interrupt arrives.
    Waiting(Option<u64>),
}

/// What the host does after an exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Run the vCPU again; `value` goes in `VcpuRun`'s `x3` (an MMIO read's result).
    Run {
        /// For `x3`.
        value: u64,
    },
    /// `VcpuInjectAbort`, then run it again: no device there.
    InjectAbort,
    /// Do not run it until [`Vm::runnable`] says so.
    Wait {
        /// The guest timer's deadline, if armed.
        deadline: Option<u64>,
    },
    /// The vCPU is off or stopped.
    Stop,
    /// The guest powered off (`reset`: asked for a reset).
    PowerOff {
        /// `SYSTEM_RESET` rather than `SYSTEM_OFF`.
        reset: bool,
    },
    /// An exit word the ABI does not define.
    Malformed,
}

/// One guest's devices and vCPU states.
#[derive(Clone, Debug)]
pub struct Vm {
    /// The memory map.
    pub layout: Layout,
    /// The console.
    pub uart: Pl011,
    /// The interrupt controller.
    pub gic: Gic,
    vcpus: Vec<VcpuState>,
}

impl Vm {
    /// A guest whose vCPU 0 is ready and the others off (created with
    /// `vcpu_flags::OFF`), on an engine with `list_regs` list registers.
    pub fn new(layout: Layout, list_regs: usize) -> Self {
        let mut vcpus = vec![VcpuState::Off; layout.vcpus];
        if let Some(v) = vcpus.first_mut() {
            *v = VcpuState::Ready;
        }
        Self {
            layout,
            uart: Pl011::new(),
            gic: Gic::new(&layout, SPIS, list_regs),
            vcpus,
        }
    }

    /// vCPU `v`'s state.
    pub fn state(&self, v: usize) -> Option<VcpuState> {
        self.vcpus.get(v).copied()
    }

    /// The vCPUs the host may run now. A waiting vCPU with an interrupt
    /// to take is ready again; `now` (counter ticks) ends expired waits.
    pub fn runnable(&mut self, now: u64) -> Vec<usize> {
        for (v, s) in self.vcpus.iter_mut().enumerate() {
            if let VcpuState::Waiting(d) = *s
                && (self.gic.has_pending(v) || d.is_some_and(|d| d <= now))
            {
                *s = VcpuState::Ready;
            }
        }
        (0..self.vcpus.len())
            .filter(|&v| self.vcpus.get(v) == Some(&VcpuState::Ready))
            .collect()
    }

    /// Whether vCPU `v`, if it is running now, should be made to exit to
    /// see an interrupt its list registers do not hold ([`Gic::undelivered`]).
    pub fn needs_kick(&self, v: usize) -> bool {
        self.gic.undelivered(v)
    }

    /// What to hand `VcpuInterrupts` before running vCPU `v`.
    pub fn list_registers(&mut self, v: usize) -> [u64; lr::SLOTS] {
        self.gic.flush(v)
    }

    fn set(&mut self, v: usize, s: VcpuState) {
        if let Some(x) = self.vcpus.get_mut(v) {
            *x = s;
        }
    }

    /// vCPU `v`'s `VcpuRun` returned `(word, x2, x3)`.
    pub fn exit(&mut self, v: usize, regs: [u64; 3]) -> Action {
        let status = ExitStatus::from_word(regs[0]);
        self.gic.sync(v, &status);
        self.gic.set_level(v, vgic::VTIMER_INTID, status.vtimer);
        let Some(exit) = Exit::decode(regs) else {
            return Action::Malformed;
        };
        let run = Action::Run { value: 0 };
        match exit {
            Exit::Mmio {
                ipa,
                size,
                write,
                value,
            } => self.mmio(ipa, size, write, value),
            Exit::MemFault { .. } => Action::InjectAbort,
            Exit::Wfx { wfe: true, .. } => run,
            Exit::Wfx { deadline, .. } => {
                if self.gic.has_pending(v) {
                    run
                } else {
                    self.set(v, VcpuState::Waiting(deadline));
                    Action::Wait { deadline }
                }
            }
            Exit::Irq | Exit::Eoi | Exit::HostCall { .. } => run,
            Exit::CpuOn { vcpu } => {
                self.set(usize::from(vcpu), VcpuState::Ready);
                run
            }
            Exit::CpuOff | Exit::Error { .. } => {
                self.set(v, VcpuState::Off);
                Action::Stop
            }
            Exit::Sgi { targets, intid } => {
                self.gic.send_sgi(targets, intid);
                run
            }
            Exit::SystemOff | Exit::SystemReset => {
                for s in self.vcpus.iter_mut() {
                    *s = VcpuState::Off;
                }
                Action::PowerOff {
                    reset: exit == Exit::SystemReset,
                }
            }
        }
    }

    fn mmio(&mut self, ipa: u64, size: u8, write: bool, value: u64) -> Action {
        let (uart, uart_size) = self.layout.uart();
        let value = if (uart..uart.wrapping_add(uart_size)).contains(&ipa) {
            let off = ipa.wrapping_sub(uart);
            let v = if write {
                self.uart.write(off, value);
                0
            } else {
                self.uart.read(off)
            };
            let line = self.uart.irq();
            self.gic.set_level(0, 32 + UART_SPI, line);
            v
        } else if self.gic.claims(ipa) {
            if write {
                self.gic.write(ipa, size, value);
                0
            } else {
                self.gic.read(ipa, size)
            }
        } else {
            return Action::InjectAbort;
        };
        Action::Run { value }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use isola_abi::ExitReason;

    const UART: u64 = 0xC020_0000;
    const GICD: u64 = 0xC000_0000;
    const GICR: u64 = 0xC010_0000;

    fn vm() -> Vm {
        Vm::new(Layout::new(64 << 20, 2).unwrap(), 4)
    }

    #[test]
    fn psci_starts_and_stops_vcpus() {
        let mut m = vm();
        assert_eq!(m.runnable(0), [0]);
        let on = Exit::CpuOn { vcpu: 1 }.encode();
        assert_eq!(m.exit(0, on), Action::Run { value: 0 });
        assert_eq!(m.runnable(0), [0, 1]);
        assert_eq!(m.exit(1, Exit::CpuOff.encode()), Action::Stop);
        assert_eq!(m.runnable(0), [0]);
        assert_eq!(
            m.exit(0, Exit::SystemReset.encode()),
            Action::PowerOff { reset: true }
        );
        assert!(m.runnable(0).is_empty());
    }

    #[test]
    fn the_console_and_missing_devices() {
        let mut m = vm();
        for b in b"ok\n" {
            let w = Exit::Mmio {
                ipa: UART,
                size: 1,
                write: true,
                value: u64::from(*b),
            };
            assert_eq!(m.exit(0, w.encode()), Action::Run { value: 0 });
        }
        assert_eq!(m.uart.output, b"ok\n");
        let fr = Exit::Mmio {
            ipa: UART + 0x18,
            size: 4,
            write: false,
            value: 0,
        };
        assert_eq!(m.exit(0, fr.encode()), Action::Run { value: 0x90 });
        let nothing = Exit::Mmio {
            ipa: 0xd000_0000,
            size: 4,
            write: false,
            value: 0,
        };
        assert_eq!(m.exit(0, nothing.encode()), Action::InjectAbort);
        assert_eq!(m.exit(0, [0xff, 0, 0]), Action::Malformed);
    }

    #[test]
    fn wfi_waits_for_the_timer_or_an_sgi() {
        let mut m = vm();
        m.exit(0, Exit::CpuOn { vcpu: 1 }.encode());
        let wfi = Exit::Wfx {
            wfe: false,
            deadline: Some(500),
        };
        assert_eq!(
            m.exit(1, wfi.encode()),
            Action::Wait {
                deadline: Some(500)
            }
        );
        assert_eq!(m.runnable(499), [0]);
        assert_eq!(m.runnable(500), [0, 1], "the deadline passed");
        m.exit(1, wfi.encode());
        // Group 1 on, SGIs in group 1 at vCPU 1: an SGI wakes it.
        m.gic.write(GICD, 4, 2);
        m.gic
            .write(GICR + crate::layout::GICR_STRIDE + 0x1_0080, 4, 0xffff);
        let sgi = Exit::Sgi {
            targets: 0b10,
            intid: 1,
        };
        assert_eq!(m.exit(0, sgi.encode()), Action::Run { value: 0 });
        assert_eq!(m.runnable(0), [0, 1]);
        assert_eq!(m.list_registers(1)[0], lr::pending(1, 0, false));
        // WFE never waits.
        let wfe = Exit::Wfx {
            wfe: true,
            deadline: None,
        };
        assert_eq!(m.exit(0, wfe.encode()), Action::Run { value: 0 });
    }

    #[test]
    fn the_timer_level_rides_on_every_exit() {
        let mut m = vm();
        m.gic.write(GICD, 4, 2);
        let sgi_frame = GICR + 0x1_0000;
        m.gic.write(sgi_frame + 0x80, 4, 1 << 27);
        m.gic.write(sgi_frame + 0x100, 4, 1 << 27);
        let irq = ExitReason::Irq as u64 | isola_abi::EXIT_VTIMER;
        assert_eq!(m.exit(0, [irq, 0, 0]), Action::Run { value: 0 });
        assert_eq!(m.list_registers(0)[0], lr::pending(27, 0, true));
    }
}

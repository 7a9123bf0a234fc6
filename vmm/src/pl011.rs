//! An emulated PL011 UART (Arm DDI 0183): what Linux's `amba-pl011` driver
//! and `earlycon=pl011` use. Transmission is instant: a byte written to `DR`
//! is out at once (appended to [`Pl011::output`]), so the TX FIFO is always
//! empty and the transmit interrupt, once unmasked, stays raised until the
//! guest clears it. Received bytes ([`Pl011::receive`]) wait in a FIFO.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

const DR: u64 = 0x000;
const RSR: u64 = 0x004;
const FR: u64 = 0x018;
const IBRD: u64 = 0x024;
const FBRD: u64 = 0x028;
const LCR_H: u64 = 0x02c;
const CR: u64 = 0x030;
const IFLS: u64 = 0x034;
const IMSC: u64 = 0x038;
const RIS: u64 = 0x03c;
const MIS: u64 = 0x040;
const ICR: u64 = 0x044;
const DMACR: u64 = 0x048;

/// `FR`: receive FIFO empty, transmit FIFO empty.
const FR_RXFE: u32 = 1 << 4;
const FR_TXFE: u32 = 1 << 7;
/// Interrupt bits: receive, transmit, receive timeout.
const INT_RX: u32 = 1 << 4;
const INT_TX: u32 = 1 << 5;
const INT_RT: u32 = 1 << 6;

/// Peripheral and PrimeCell ids at 0xfe0..0xffc, one byte per word.
const ID: [u8; 8] = [0x11, 0x10, 0x14, 0x00, 0x0d, 0xf0, 0x05, 0xb1];

/// The UART's state.
#[derive(Clone, Debug, Default)]
pub struct Pl011 {
    regs: [u32; 8], // IBRD FBRD LCR_H CR IFLS IMSC DMACR (and one spare)
    ris: u32,
    rx: VecDeque<u8>,
    /// Every byte the guest transmitted.
    pub output: Vec<u8>,
}

fn slot(off: u64) -> Option<usize> {
    Some(match off {
        IBRD => 0,
        FBRD => 1,
        LCR_H => 2,
        CR => 3,
        IFLS => 4,
        IMSC => 5,
        DMACR => 6,
        _ => return None,
    })
}

impl Pl011 {
    /// A UART after reset (`CR` = TX and RX enabled, as firmware leaves it
    /// for an early console).
    pub fn new() -> Self {
        let mut u = Self::default();
        if let Some(cr) = u.regs.get_mut(3) {
            *cr = 0x301;
        }
        u
    }

    /// A guest load of `offset` (any size; the registers are 32-bit).
    pub fn read(&mut self, offset: u64) -> u64 {
        let v = match offset {
            DR => {
                let b = self.rx.pop_front().map_or(0, u32::from);
                self.update_rx();
                b
            }
            RSR => 0,
            FR => FR_TXFE | if self.rx.is_empty() { FR_RXFE } else { 0 },
            RIS => self.ris,
            MIS => self.ris & self.imsc(),
            0xfe0..=0xffc if offset.is_multiple_of(4) => {
                let i = usize::try_from(offset.wrapping_sub(0xfe0) / 4).unwrap_or(usize::MAX);
                ID.get(i).copied().map_or(0, u32::from)
            }
            _ => slot(offset)
                .and_then(|s| self.regs.get(s))
                .copied()
                .unwrap_or(0),
        };
        u64::from(v)
    }

    /// A guest store of `value` at `offset`.
    pub fn write(&mut self, offset: u64, value: u64) {
        let v = value as u32;
        match offset {
            DR => {
                self.output.push(v as u8);
                self.ris |= INT_TX;
            }
            ICR => self.ris &= !v,
            _ => {
                if let Some(r) = slot(offset).and_then(|s| self.regs.get_mut(s)) {
                    *r = v;
                }
                if offset == IMSC && v & INT_TX != 0 {
                    // An empty FIFO is below any trigger level.
                    self.ris |= INT_TX;
                }
            }
        }
    }

    /// Bytes arriving on the line.
    pub fn receive(&mut self, bytes: &[u8]) {
        self.rx.extend(bytes.iter().copied());
        self.update_rx();
    }

    /// The interrupt line: any unmasked raw interrupt.
    pub fn irq(&self) -> bool {
        self.ris & self.imsc() != 0
    }

    fn imsc(&self) -> u32 {
        self.regs.get(5).copied().unwrap_or(0)
    }

    fn update_rx(&mut self) {
        if self.rx.is_empty() {
            self.ris &= !(INT_RX | INT_RT);
        } else {
            self.ris |= INT_RX | INT_RT;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transmit_receive_and_the_interrupt_line() {
        let mut u = Pl011::new();
        assert_eq!(u.read(0xfe0), 0x11);
        assert_eq!(u.read(0xff0), 0x0d);
        u.write(DR, u64::from(b'h'));
        u.write(DR, 0x169); // only the low byte is data
        assert_eq!(u.output, b"hi");
        assert!(!u.irq(), "masked");
        u.write(IMSC, u64::from(INT_TX | INT_RX));
        assert!(u.irq());
        u.write(ICR, u64::from(INT_TX));
        assert!(!u.irq());
        assert_eq!(u.read(FR) as u32 & FR_RXFE, FR_RXFE);
        u.receive(b"ok");
        assert!(u.irq());
        assert_eq!((u.read(DR), u.read(DR)), (u64::from(b'o'), u64::from(b'k')));
        assert!(!u.irq());
        assert_eq!(u.read(0x800), 0, "unknown offsets read as zero");
    }
}

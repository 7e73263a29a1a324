//! Decoding a guest instruction that trapped on the xAPIC page (NPT fault at
//! 0xFEE0_0000) into the access the engine's MMIO path serves.
//!
//! The decoding is iced-x86's (no_std, decoder only); this module only maps
//! its result onto the few shapes an APIC register access can take: Linux's
//! `native_apic_mem_read` is a 32-bit `mov reg, [mem]`, `native_apic_mem_write`
//! a 32-bit `mov [mem], reg` (or `xchg` on CPUs with the 11AP erratum), and a
//! compiler may store a constant as `mov dword [mem], imm32`.

use iced_x86::{Decoder, DecoderOptions, Mnemonic, OpKind, Register};

/// Longest x86 instruction (Intel SDM vol. 2 §2.3.11).
pub const MAX_INSN_LEN: usize = 15;

/// A general-purpose register operand, as the VMCB/GPR save order numbers
/// them (0 = RAX, 1 = RCX, 2 = RDX, 3 = RBX, 4 = RSP, 5 = RBP, 6 = RSI,
/// 7 = RDI, 8-15 = R8-R15).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gpr {
    /// Register number (see above).
    pub index: u8,
    /// Operand size in bytes (1, 2, 4, 8).
    pub size: u8,
    /// AH, CH, DH or BH: bits 15:8 of register `index`.
    pub high8: bool,
}

impl Gpr {
    /// The register's new 64-bit value after writing `value` to this operand
    /// of a register that held `old` (Intel SDM vol. 1 §3.4.1.1: a 32-bit
    /// write zero-extends, 8/16-bit writes merge).
    pub fn merge(&self, old: u64, value: u64) -> u64 {
        match (self.size, self.high8) {
            (1, true) => (old & !0xFF00) | ((value & 0xFF) << 8),
            (1, false) => (old & !0xFF) | (value & 0xFF),
            (2, _) => (old & !0xFFFF) | (value & 0xFFFF),
            (4, _) => value & 0xFFFF_FFFF,
            _ => value,
        }
    }

    /// The operand's value in a register holding `full`.
    pub fn read(&self, full: u64) -> u64 {
        match (self.size, self.high8) {
            (1, true) => (full >> 8) & 0xFF,
            (1, false) => full & 0xFF,
            (2, _) => full & 0xFFFF,
            (4, _) => full & 0xFFFF_FFFF,
            _ => full,
        }
    }
}

/// What the instruction does to memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// `mov`/`movzx reg, [mem]`: read `size` bytes into `dest` (zero-extended
    /// to the register's size for movzx).
    Read {
        /// Destination register.
        dest: Gpr,
    },
    /// `mov [mem], reg`.
    WriteReg {
        /// Source register.
        src: Gpr,
    },
    /// `mov [mem], imm`.
    WriteImm {
        /// The immediate, sign-extended to the access size as the CPU does.
        value: u64,
    },
    /// `xchg [mem], reg`: write the register, then load the old memory
    /// value into it.
    Exchange {
        /// The register exchanged with memory.
        reg: Gpr,
    },
}

/// One decoded memory access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioInsn {
    /// Access width in bytes (of the memory operand).
    pub size: u8,
    /// What it does.
    pub access: Access,
    /// Instruction length: the harness advances RIP by it (no NRIP on QEMU).
    pub len: u8,
}

/// Why an instruction is not served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Not a valid instruction (or cut short by the bytes given).
    Invalid,
    /// Valid, but not one of the forms above (string ops, RMW arithmetic,
    /// vector moves, ...): the harness treats it as a guest error.
    Unsupported,
}

/// Decodes the 64-bit mode instruction at the start of `bytes`.
pub fn decode(bytes: &[u8]) -> Result<MmioInsn, DecodeError> {
    let mut decoder = Decoder::new(64, bytes, DecoderOptions::NONE);
    let insn = decoder.decode();
    if insn.is_invalid() {
        return Err(DecodeError::Invalid);
    }
    let len = u8::try_from(insn.len()).map_err(|_| DecodeError::Invalid)?;
    let size = u8::try_from(insn.memory_size().size()).map_err(|_| DecodeError::Unsupported)?;
    if !matches!(size, 1 | 2 | 4 | 8) {
        return Err(DecodeError::Unsupported);
    }
    let kinds = (insn.op0_kind(), insn.op1_kind());
    let access = match (insn.mnemonic(), kinds) {
        (Mnemonic::Mov | Mnemonic::Movzx, (OpKind::Register, OpKind::Memory)) => Access::Read {
            dest: gpr(insn.op0_register())?,
        },
        (Mnemonic::Mov, (OpKind::Memory, OpKind::Register)) => Access::WriteReg {
            src: gpr(insn.op1_register())?,
        },
        (
            Mnemonic::Mov,
            (
                OpKind::Memory,
                OpKind::Immediate8
                | OpKind::Immediate16
                | OpKind::Immediate32
                | OpKind::Immediate32to64,
            ),
        ) => Access::WriteImm {
            value: insn.immediate(1),
        },
        (Mnemonic::Xchg, (OpKind::Memory, OpKind::Register)) => Access::Exchange {
            reg: gpr(insn.op1_register())?,
        },
        (Mnemonic::Xchg, (OpKind::Register, OpKind::Memory)) => Access::Exchange {
            reg: gpr(insn.op0_register())?,
        },
        _ => return Err(DecodeError::Unsupported),
    };
    Ok(MmioInsn { size, access, len })
}

/// The GPR number and width of a general-purpose register operand.
fn gpr(reg: Register) -> Result<Gpr, DecodeError> {
    use Register as R;
    let (index, size, high8) = match reg {
        R::AH => (0, 1, true),
        R::CH => (1, 1, true),
        R::DH => (2, 1, true),
        R::BH => (3, 1, true),
        _ => {
            let full = reg.full_register();
            let index = (full as u32).checked_sub(R::RAX as u32);
            let size = reg.size();
            match index {
                Some(i @ 0..=15) if reg.is_gpr() => (i as u8, size as u8, false),
                _ => return Err(DecodeError::Unsupported),
            }
        }
    };
    Ok(Gpr { index, size, high8 })
}
